"""``daps.one_pass`` (and ``reinforce.one_pass``): the K codes scored while they are sampled (``sample_scored``),
instead of by a second, teacher-forced pass. A speed option only: the same codes, losses and gradients as the
default step, checked here against the teacher-forced pass (``log_prob``) as the independent reference."""

from __future__ import annotations

import json

import pytest
import torch

from daps import get_preset, parse_overrides
from daps.errors import UserError
from daps.methods import build_method

TINY = ["encoder.width=16", "encoder.num_heads=2", "encoder.vocab_size=8", "encoder.num_tokens=5",
        "decoder.embed_dim=8", "decoder.hidden=16,16"]
OWN = {"daps": ["daps.num_samples=6", "daps.init_eta=1.0"], "dapsna": ["daps.num_samples=6", "daps.init_eta=1.0"],
       "reinforce": ["reinforce.num_samples=6"]}
SECTION = {"daps": "daps", "dapsna": "daps", "reinforce": "reinforce"}


def _model(method: str, extra: list[str]):
    torch.manual_seed(0)
    return build_method(parse_overrides(get_preset("mnist", method), [*TINY, *OWN[method], *extra]), (1, 28, 28))


def _images(n: int = 4) -> torch.Tensor:
    return (torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(1)) > 0.5).float()


@pytest.mark.parametrize("method", ["daps", "dapsna"])
def test_sample_scored_draws_the_same_codes_and_scores_them_as_teacher_forcing(method, single_thread):
    encoder = _model(method, []).encoder
    x = _images()
    reference = encoder.sample(x, 6, torch.Generator().manual_seed(2))
    scored = encoder.sample_scored(x, 6, torch.Generator().manual_seed(2))
    assert torch.equal(scored.indices, reference.indices)
    assert torch.allclose(scored.token_entropy, reference.token_entropy, atol=1e-6)
    assert scored.token_log_q.requires_grad and not reference.token_log_q.requires_grad
    assert not scored.token_entropy.requires_grad  # only log q carries a graph: the draws and entropies never do
    teacher = encoder.log_prob(x, scored.indices)  # (K, B, T), the independent reference
    assert torch.allclose(scored.token_log_q, teacher, atol=1e-5)

    weights = torch.rand(6, 4, generator=torch.Generator().manual_seed(3))  # any weighting of the K codes

    def grads(log_q: torch.Tensor) -> torch.Tensor:
        encoder.zero_grad(set_to_none=True)
        (weights * log_q.sum(-1)).sum().backward()
        return torch.cat([p.grad.flatten() for p in encoder.parameters() if p.grad is not None])

    one_pass, teacher_forced = grads(scored.token_log_q), grads(encoder.log_prob(x, scored.indices))
    assert teacher_forced.norm() > 0
    assert (one_pass - teacher_forced).norm() / teacher_forced.norm() < 1e-5
    # Under no_grad it is the plain sampler (DAPS-NA's sample is this very function).
    with torch.no_grad():
        quiet = encoder.sample_scored(x, 6, torch.Generator().manual_seed(2))
    assert not quiet.token_log_q.requires_grad and torch.equal(quiet.indices, reference.indices)


def test_sample_scored_refuses_the_masked_teacher_forcing():
    encoder = _model("daps", ["encoder.mask_token0=true"]).encoder
    with pytest.raises(ValueError, match="mask_token0"):
        encoder.sample_scored(_images(), 2)


@pytest.mark.parametrize(("method", "logged"), [
    ("daps", ("loss", "log_p", "log_q", "ess", "eta_loss", "kl")),
    ("dapsna", ("loss", "log_p", "log_q", "ess", "eta_loss", "kl")),
    ("reinforce", ("loss", "log_p", "log_q", "kl", "reward_std")),
])
def test_a_one_pass_step_is_the_teacher_forced_step(method, logged, single_thread):
    x = _images(8)
    one_pass = [f"{SECTION[method]}.one_pass=true"]

    def step(extra: list[str], seed: int = 5):
        model = _model(method, extra)
        out = model(x, step=3, generator=torch.Generator().manual_seed(seed))
        out.loss.backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        return out, grads

    (base, base_grads), (fused, fused_grads) = step([]), step(one_pass)
    assert torch.equal(fused.indices, base.indices)
    assert set(fused_grads) == set(base_grads) and any(n.startswith("encoder.") for n in base_grads)
    assert ("log_eta" in base_grads) == (method != "reinforce")
    for key in logged:
        assert torch.allclose(fused.logs[key], base.logs[key], rtol=1e-5, atol=1e-5), key
    for name, grad in base_grads.items():
        assert torch.allclose(fused_grads[name], grad, rtol=1e-4, atol=1e-6), name
    # The comparison can fail: another draw of codes gives another encoder gradient.
    _, other = step(one_pass, seed=6)
    encoder = [name for name in base_grads if name.startswith("encoder.")]
    assert any(not torch.allclose(other[name], base_grads[name], rtol=1e-4, atol=1e-6) for name in encoder)


@pytest.mark.parametrize("method", ["daps", "dapsna", "reinforce"])
def test_a_one_pass_step_runs_no_teacher_forced_pass(method, monkeypatch, single_thread):
    """What one_pass is for: the encoder's gradient comes from the sampling pass alone, with no teacher-forced pass
    over the K codes (``log_prob``) and, for the autoregressive encoder, no step that re-reads the whole prefix
    (the one-token steps run against the growing cache). Equal results alone would not show that it is in use."""
    model = _model(method, [f"{SECTION[method]}.one_pass=true"])
    encoder = model.encoder

    def refuse(*args, **kwargs):
        raise AssertionError("a teacher-forced pass ran in a one-pass step")

    monkeypatch.setattr(encoder, "log_prob", refuse)
    if method != "dapsna":
        monkeypatch.setattr(encoder, "_teacher_forced_logits", refuse)
    out = model(_images(), step=0, generator=torch.Generator().manual_seed(5))
    out.loss.backward()
    assert all(p.grad is not None for p in encoder.parameters())
    assert torch.cat([p.grad.flatten() for p in encoder.parameters()]).norm() > 0


@pytest.mark.parametrize("method", ["daps", "dapsna"])
def test_a_one_pass_step_under_bf16_autocast_is_the_teacher_forced_step(method, single_thread):
    """Under ``train.precision=bfloat16`` (autocast) the one-token products round differently from the
    teacher-forced pass's: the same codes, and encoder gradients equal to bf16 rounding (0.7 % apart for DAPS at
    this seed, identical for DAPS-NA), far closer than another draw of codes gives (over 100 % apart)."""
    x = _images(8)

    def step(extra: list[str], seed: int = 5):
        model = _model(method, extra)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x, step=3, generator=torch.Generator().manual_seed(seed))
        out.loss.backward()
        return out, torch.cat([p.grad.flatten() for p in model.encoder.parameters()])  # the decoder's: the same

    (base, base_grad), (fused, fused_grad) = step([]), step(["daps.one_pass=true"])
    assert torch.equal(fused.indices, base.indices)
    assert torch.allclose(fused.loss, base.loss, rtol=1e-5)
    assert (fused_grad - base_grad).norm() / base_grad.norm() < 0.03
    _, other = step(["daps.one_pass=true"], seed=6)
    assert (other - base_grad).norm() / base_grad.norm() > 0.5


@pytest.mark.parametrize(("method", "extra", "named"), [
    ("daps", ["daps.resample=2"], "daps.resample"),
    ("daps", ["encoder.mask_token0=true"], "encoder.mask_token0"),
    ("daps", ["train.compile=true"], "train.compile"),
    ("daps", ["train.cuda_graph=true"], "train.cuda_graph"),
    ("dapsna", ["train.compile=true"], "train.compile"),
    ("dapsna", ["train.cuda_graph=true"], "train.cuda_graph"),
    ("daps", ["encoder.num_tokens=65"], "encoder.num_tokens up to 64"),
    ("reinforce", ["encoder.mask_token0=true"], "encoder.mask_token0"),
    ("reinforce", ["train.cuda_graph=true"], "train.cuda_graph"),
    ("reinforce", ["encoder.num_tokens=65"], "encoder.num_tokens up to 64"),
])
def test_one_pass_refuses_what_it_cannot_go_with(method, extra, named):
    from daps.config import validate

    with pytest.raises(UserError, match=f"^{SECTION[method]}\\.one_pass .*" + named.replace(".", r"\.")):
        parse_overrides(get_preset("mnist", method), [f"{SECTION[method]}.one_pass=true", *extra])
    cfg = parse_overrides(get_preset("mnist", method), extra)  # each alone is fine
    cfg.options.one_pass = True  # and set in Python, validate (as train calls it) refuses the pair
    with pytest.raises(UserError, match=named.replace(".", r"\.")):
        validate(cfg)


def test_dapsna_one_pass_takes_what_its_encoder_does_not_grow_with():
    """DAPS-NA's tokens come from one pass of its network, so neither the token-0 mask nor a long code matters."""
    from daps.config import validate

    validate(parse_overrides(get_preset("mnist", "dapsna"), ["daps.one_pass=true", "encoder.mask_token0=true"]))
    validate(parse_overrides(get_preset("imagenet256", "dapsna"), ["daps.one_pass=true"]))
    parse_overrides(get_preset("mnist", "daps"), ["daps.one_pass=true", "encoder.num_tokens=64"])


@pytest.mark.usefixtures("offline", "no_plots")
def test_a_one_pass_run_trains_as_the_default_and_resumes_exactly(tmp_path, tiny_overrides):
    from safetensors.torch import load_file

    from daps.train import train

    def run(name: str, extra: list[str], stop_after: int = 0, resume: bool = False):
        overrides = [*tiny_overrides, *extra, "train.steps=6", "train.log_every=1", f"train.stop_after={stop_after}",
                     f"train.out_dir={tmp_path / name}"]
        return train(parse_overrides(get_preset("mnist"), overrides), resume=resume)

    def losses(folder) -> list[float]:
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        return [row["loss"] for row in rows if "loss" in row]

    one_pass = ["daps.one_pass=true"]
    straight, default = run("a", one_pass), run("d", [])
    assert json.loads((straight / "config.json").read_text())["daps"]["one_pass"] is True
    first, reference = losses(straight), losses(default)
    assert len(first) == len(reference) == 6
    assert first == pytest.approx(reference, rel=1e-4)
    run("b", one_pass, stop_after=3)
    resumed = run("b", one_pass, resume=True)
    a = load_file(str(straight / "checkpoints/step_00000006/model.safetensors"))
    b = load_file(str(resumed / "checkpoints/step_00000006/model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # How the step runs, not what it computes: a run may switch it when resumed (as train.cuda_graph).
    run("c", [], stop_after=3)
    switched = run("c", one_pass, resume=True)
    assert losses(switched) == pytest.approx(reference, rel=1e-4)
    assert json.loads((switched / "config.json").read_text())["daps"]["one_pass"] is True
