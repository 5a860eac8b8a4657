"""``encoder.share_prefixes``: the autoregressive encoder's sampling and teacher-forced passes computed once per
distinct (input, prefix) pair among the K codes of an input (:mod:`daps.nets.prefixes`). A speed option only: the
same codes, log q and gradients as the whole pass, checked here against it (``share_prefixes="off"``) with float64
networks (only the softmax over V is float32, as everywhere in the encoder: so agreement to float32 rounding, where
a misplaced node or a lost gradient path differs at the percent level), and the node bookkeeping against a
brute-force enumeration."""

from __future__ import annotations

import itertools

import pytest
import torch

from daps import get_preset, parse_overrides
from daps.errors import UserError
from daps.methods import build_method
from daps.nets import ar_encoder
from daps.nets.ar_encoder import ARTransformerEncoder
from daps.nets.layers import DecoderBlock
from daps.nets.prefixes import prefix_nodes

K = 6


def _codes(b: int, k: int, t: int, v: int, seed: int) -> torch.Tensor:
    """b-major codes ``(B*K, T)`` over a small vocabulary (so prefixes repeat), where input 1 repeats input 0's codes
    exactly (a node is an (input, prefix) pair: equal codes of different inputs are different nodes)."""
    codes = torch.randint(v, (b, k, t), generator=torch.Generator().manual_seed(seed))
    codes[1] = codes[0]
    return codes.reshape(b * k, t)


@pytest.mark.parametrize(("b", "k", "t", "v", "seed"), [(4, 6, 5, 3, 0), (3, 8, 3, 2, 1), (2, 1, 4, 5, 2),
                                                        (5, 4, 1, 7, 3)])
def test_nodes_are_the_distinct_input_prefix_pairs(b, k, t, v, seed):
    codes = _codes(b, k, t, v, seed)
    nodes = prefix_nodes(codes, k, v)
    keys = [(r // k, tuple(codes[r, :pos].tolist())) for r, pos in itertools.product(range(b * k), range(t))]
    node_of = nodes.node_of.tolist()
    assert nodes.count == len(set(keys)) < len(keys) or k == 1 and nodes.count == len(keys)
    for (i, key_i), (j, key_j) in itertools.combinations(enumerate(keys), 2):  # the same node iff the same key
        assert (node_of[i] == node_of[j]) == (key_i == key_j)
    for node, entry in enumerate(nodes.first.tolist()):  # each node's first entry
        assert node_of[entry] == node and entry == min(e for e, n in enumerate(node_of) if n == node)
    by_position = nodes.node_of.view(b * k, t)
    assert all(by_position[:, pos].max() < by_position[:, pos + 1].min() for pos in range(t - 1))  # position-major
    assert torch.equal(nodes.gather(nodes.pick(nodes.node_of)), nodes.node_of)


def _encoder(share: str, mask_token0: bool = False) -> ARTransformerEncoder:
    torch.manual_seed(0)
    encoder = ARTransformerEncoder((1, 8, 8), num_tokens=4, vocab_size=3, width=16, num_layers=2, num_heads=2,
                                   mlp_ratio=2, mask_token0=mask_token0, share_prefixes=share)
    return encoder.double()


def _close(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Equal up to float32 rounding, relative to the largest entry."""
    return bool((got - want).abs().max() <= 1e-6 * want.abs().max())


def _log_q_and_grads(encoder: ARTransformerEncoder, x: torch.Tensor, codes: torch.Tensor, clamp: bool = True):
    """``log_prob`` of codes ``(K, B, T)`` and the gradient of a weighted sum of it, over every parameter and x."""
    x = x.clone().requires_grad_(True)
    log_q = encoder.log_prob(x, codes, clamp=clamp)  # (K, B, T)
    weights = torch.rand(log_q.shape[:2], generator=torch.Generator().manual_seed(4), dtype=log_q.dtype)
    grads = torch.autograd.grad((weights * log_q.sum(-1)).sum(), [x, *encoder.parameters()])
    return log_q.detach(), grads


@pytest.mark.parametrize("clamp", [True, False])
def test_shared_prefixes_give_the_whole_pass_values_and_gradients(clamp, monkeypatch):
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    x[1] = x[0] * 0.5  # input 1 has input 0's codes (_codes) but not its image: its nodes must be its own
    codes = _codes(4, K, 4, 3, 6).view(4, K, 4).transpose(0, 1)  # (K, B, T)
    whole = _log_q_and_grads(_encoder(share="off"), x, codes, clamp)
    shared_encoder = _encoder(share="cpu")
    calls = []
    original = shared_encoder._prefix_log_prob
    monkeypatch.setattr(shared_encoder, "_prefix_log_prob", lambda *a: calls.append(1) or original(*a))
    shared = _log_q_and_grads(shared_encoder, x, codes, clamp)
    assert calls, "the shared pass did not run"
    assert prefix_nodes(codes.transpose(0, 1).reshape(-1, 4), K, 3).count < 0.6 * codes.numel()  # work to save
    assert _close(shared[0], whole[0])
    for got, want in zip(shared[1], whole[1]):
        assert want.abs().max() > 0 and _close(got, want)


def test_codes_sampled_by_the_encoder_score_the_same_both_ways():
    encoder = _encoder(share="cpu")
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    samples = encoder.sample(x, 8, torch.Generator().manual_seed(8))
    shared = encoder.log_prob(x, samples.indices)
    encoder.share_prefixes = "off"
    assert _close(shared, encoder.log_prob(x, samples.indices))
    assert _close(shared, samples.token_log_q)  # and the sampler's own log q


@pytest.mark.parametrize("max_nodes", [1.0, 0.75])
def test_the_shared_sampler_draws_the_codes_of_the_row_sampler(max_nodes, monkeypatch):
    """Each position once per distinct prefix (``SHARED_STEP_MAX_NODES`` = 1: at every position; 0.75: where at
    most three quarters of the rows are distinct), against the cached sampler over every row."""
    monkeypatch.setattr(ar_encoder, "SHARED_STEP_MAX_NODES", max_nodes)
    calls = []
    original = DecoderBlock.step_nodes
    monkeypatch.setattr(DecoderBlock, "step_nodes", lambda *a: calls.append(1) or original(*a))
    encoder = _encoder(share="cpu")
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    x[1] = x[0]  # two inputs alike: their rows still sample apart
    shared = encoder.sample(x, 8, torch.Generator().manual_seed(13))
    assert len(calls) >= 2 * (4 if max_nodes == 1.0 else 1)  # two layers, at every position or at least the first
    encoder.share_prefixes = "off"
    rows = encoder.sample(x, 8, torch.Generator().manual_seed(13))
    assert torch.equal(shared.indices, rows.indices) and not torch.equal(shared.indices[:, 0], shared.indices[:, 1])
    assert _close(shared.token_log_q, rows.token_log_q) and _close(shared.token_entropy, rows.token_entropy)


def test_one_pass_shares_its_sampling_pass_with_the_same_values_and_gradients():
    """``sample_scored`` (``daps.one_pass``): the shared sampler with gradients through its growing cache."""
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(15), dtype=torch.float64)
    weights = torch.rand(8, 3, generator=torch.Generator().manual_seed(16), dtype=torch.float64)
    results = []
    for share in ("cpu", "off"):
        encoder = _encoder(share)
        samples = encoder.sample_scored(x, 8, torch.Generator().manual_seed(17))
        grads = torch.autograd.grad((weights * samples.token_log_q.sum(-1)).sum(), list(encoder.parameters()))
        results.append((samples, grads))
    (shared, shared_grads), (whole, whole_grads) = results
    assert torch.equal(shared.indices, whole.indices) and _close(shared.token_log_q, whole.token_log_q)
    for got, want in zip(shared_grads, whole_grads):
        assert want.abs().max() > 0 and _close(got, want)


@pytest.mark.parametrize("case", ["off", "mask_token0", "one code per input", "compiling", "cpu on a GPU",
                                  "mostly distinct"])
def test_the_whole_pass_runs_where_prefixes_are_not_shared(case, monkeypatch):
    encoder = _encoder(share="off" if case == "off" else "cpu", mask_token0=case == "mask_token0")
    if case == "cpu on a GPU":  # "cpu" shares on the CPU only; the device is read from the encoder's buffers
        monkeypatch.setattr(encoder, "pos", torch.empty(0, device="meta"))
        assert not encoder._shares_prefixes(K)
        encoder.share_prefixes = "on"
        assert encoder._shares_prefixes(K)
        return
    if case == "compiling":  # torch.compile traces shapes that must not depend on the codes
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    if case == "mostly distinct":  # more distinct prefixes than the shared passes pay for (here: than 5 %)
        monkeypatch.setattr(ar_encoder, "SHARED_PASS_MAX_NODES", 0.05)
        monkeypatch.setattr(ar_encoder, "SHARED_STEP_MAX_NODES", 0.05)
        monkeypatch.setattr(DecoderBlock, "step_nodes", lambda *a: pytest.fail("the shared sampler ran"))
    k = 1 if case == "one code per input" else K
    monkeypatch.setattr(encoder, "_prefix_log_prob", lambda *a: pytest.fail("the shared pass ran"))
    if case != "mostly distinct":  # there the sampler's step decides by position (never shared at 5 %)
        monkeypatch.setattr(encoder, "_shared_step", lambda *a: pytest.fail("the shared sampler ran"))
    codes = _codes(2, k, 4, 3, 9).view(2, k, 4).transpose(0, 1)
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    log_q = encoder.log_prob(x, codes)
    assert log_q.shape == (k, 2, 4) and bool(torch.isfinite(log_q).all())
    assert encoder.sample(x, k).indices.shape == (k, 2, 4)


@pytest.mark.parametrize("method", ["daps", "reinforce", "daps resample=3 multinomial"])
def test_a_step_with_shared_prefixes_is_the_whole_pass_step(method, monkeypatch):
    section = "reinforce" if method == "reinforce" else "daps"
    tiny = ["encoder.width=16", "encoder.num_heads=2", "encoder.vocab_size=2", "encoder.num_tokens=5",
            "decoder.embed_dim=8", "decoder.hidden=16,16", f"{section}.num_samples=8"]
    if "resample" in method:  # m = 3 codes per input teacher-forced, drawn by their weights: repeats share all
        tiny += ["daps.resample=3", "daps.resample_scheme=multinomial"]
        method = "daps"
    x = (torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(10)) > 0.5).double()

    def step(share: str):
        torch.manual_seed(0)
        cfg = parse_overrides(get_preset("mnist", method), [*tiny, f"encoder.share_prefixes={share}"])
        model = build_method(cfg, (1, 28, 28)).double()
        assert model.encoder.share_prefixes == share
        out = model(x, step=3, generator=torch.Generator().manual_seed(11))
        out.loss.backward()
        return out.loss.detach(), {name: p.grad for name, p in model.named_parameters() if p.grad is not None}

    calls = []
    original = ARTransformerEncoder._prefix_log_prob
    monkeypatch.setattr(ARTransformerEncoder, "_prefix_log_prob", lambda *a: calls.append(1) or original(*a))
    (loss_shared, grads_shared), (loss_whole, grads_whole) = step("cpu"), step("off")
    assert len(calls) == 1
    assert _close(loss_shared, loss_whole)
    assert grads_shared.keys() == grads_whole.keys() and any("encoder" in name for name in grads_whole)
    scale = max(float(g.abs().max()) for g in grads_whole.values())  # a nearly cancelling sum (the output layer's
    for name, want in grads_whole.items():  # bias) rounds at the scale of its terms, not of its result
        assert (grads_shared[name] - want).abs().max() <= 1e-6 * scale, name


def test_the_setting_is_one_of_cpu_on_off():
    assert get_preset("mnist", "daps").encoder.share_prefixes == "cpu"
    with pytest.raises(UserError, match="encoder.share_prefixes must be cpu, on or off, got 'true'"):
        parse_overrides(get_preset("mnist", "daps"), ["encoder.share_prefixes=true"])


def test_codes_out_of_range_are_refused_as_by_the_whole_pass():
    """Out of range, a code would alias another prefix's node (``ids * V + code``); the whole pass raises."""
    encoder, x = _encoder(share="cpu"), torch.rand(2, 1, 8, 8, dtype=torch.float64)
    for bad in (3, -1):
        codes = _codes(2, K, 4, 3, 14).view(2, K, 4).transpose(0, 1).clone()
        codes[0, 0, -1] = bad  # the last position: never embedded, only scored
        with pytest.raises(IndexError, match=r"codes must be in \[0, 3\)"):
            encoder.log_prob(x, codes)
        encoder.share_prefixes = "off"
        with pytest.raises((IndexError, RuntimeError)):
            encoder.log_prob(x, codes)
        encoder.share_prefixes = "cpu"


@pytest.mark.parametrize(("extra", "why"), [
    (["encoder.mask_token0=true"], "not read with encoder.mask_token0=true"),
    (["daps.one_pass=true"], None),  # its sampling pass shares
    ([], None),
])
def test_the_setting_is_refused_where_it_is_not_read(extra, why):
    from daps.config_io import ignored_settings

    cfg = parse_overrides(get_preset("mnist", "daps"), extra)
    reason = ignored_settings(cfg).get("encoder.share_prefixes")
    assert reason is None if why is None else why in reason


def test_a_graphed_step_runs_the_whole_pass():
    """The graph records shapes that must not depend on the codes, and its eager warm-up runs what it records."""
    from daps.graphed import GraphedStep
    from daps.optim import Optimizers

    cfg = parse_overrides(get_preset("mnist", "daps"), ["encoder.width=16", "encoder.num_heads=2",
                                                        "encoder.share_prefixes=on"])
    model = build_method(cfg, (1, 28, 28))
    assert model.encoder.share_prefixes == "on"
    optimizers = Optimizers(model, model.optimizer_specs(1e-3, 1.0), 0.0, capturable=True)
    GraphedStep(model, optimizers, torch.Generator())
    assert model.encoder.share_prefixes == "off"
