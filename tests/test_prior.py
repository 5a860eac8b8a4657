"""Codes export and the priors over codes: file round trip, the discrete-flow-matching path and Euler step against
hand-computed cases, an AR prior that recovers a known code distribution (by KL, with an untrained negative
control), classifier-free guidance at 0 and 1, exact resume, and bad inputs (one line, exit code 2)."""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import load_file as load_numpy

from daps.checkpoint import load_model
from daps.cli import main
from daps.codes import CodeSet, export_codes, load_codes, save_codes
from daps.data import dataset_spec, labelled_split
from daps.errors import UserError
from daps.prior.nets import ARPrior, DFMPrior, corrupt, euler_jump_probability, euler_step, guide
from daps.prior.run import PriorConfig, train_prior

pytestmark = pytest.mark.usefixtures("offline")
SHARED_DATA = os.environ.get("DAPS_DATA_DIR")  # read before the offline fixture hides it


@pytest.fixture(scope="module")
def vq_run(tmp_path_factory, tiny_overrides_for):
    """A tiny VQ-VAE run (deterministic codes), trained once for this module."""
    out = tmp_path_factory.mktemp("vq") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("DAPS_DATA_DIR", raising=False)
        assert main(["train", "--method", "vqvae", *tiny_overrides_for("vqvae"), "encoder.vocab_size=8",
                     f"train.out_dir={out}"]) == 0
    return out


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    """Train and test codes of the tiny DAPS run (2 codes per input)."""
    folder = tmp_path_factory.mktemp("codes")
    paths = {}
    for split in ("train", "test"):
        paths[split] = folder / f"{split}.safetensors"
        save_codes(export_codes(trained_run, split, samples_per_input=2, seed=3), paths[split])
    return paths


# -- export ---------------------------------------------------------------------------------------------


def test_daps_codes_round_trip_and_are_the_encoders_draws(trained_run, exported):
    codes = load_codes(exported["test"])
    model = load_model(trained_run)
    data = labelled_split(model.config.data, "test")
    assert codes.codes.shape == (len(data.labels), 2, model.config.encoder.num_tokens)
    assert torch.equal(codes.labels, data.labels)
    # the same draws, in the same order, as encoding the split batch by batch with the same generator
    x = dataset_spec(model.config.data.name).standardize(data.examples[:500])
    g = torch.Generator().manual_seed(3)
    first, second = model.encode(x, g), model.encode(x, g)
    assert torch.equal(codes.codes[:, 0], first) and torch.equal(codes.codes[:, 1], second)
    meta = codes.meta
    assert meta["method"] == "daps" and meta["stochastic"] and meta["step"] == 6 and len(meta["model_sha256"]) == 64
    # readable without daps: NumPy tensors and the JSON header
    arrays = load_numpy(str(exported["test"]))
    assert arrays["codes"].shape == tuple(codes.codes.shape) and arrays["labels"].dtype.kind == "i"
    with safe_open(str(exported["test"]), "np") as f:
        assert json.loads(f.metadata()["daps_codes"])["vocab_size"] == 16


def test_quantizer_codes_decode_to_the_reconstructions(vq_run, tmp_path):
    path = tmp_path / "vq.safetensors"
    save_codes(export_codes(vq_run, "test", max_inputs=64), path)
    codes = load_codes(path)
    assert codes.codes.shape[:2] == (64, 1) and not codes.meta["stochastic"]
    model = load_model(vq_run)
    data = labelled_split(model.config.data, "test")
    subset = torch.randperm(len(data.labels), generator=torch.Generator().manual_seed(0))[:64].sort().values
    x = dataset_spec(model.config.data.name).standardize(data.examples[subset])
    torch.testing.assert_close(model.decode(codes.codes[:, 0]), model.reconstruct(x).x_hat)
    assert torch.equal(codes.labels, data.labels[subset])


# -- discrete flow matching: the path and the Euler step --------------------------------------------------


def test_mixture_path_marginals():
    n, v = 200_000, 5
    x1 = torch.full((n, 1), 2)
    g = torch.Generator().manual_seed(0)
    for t_value in (0.0, 0.3, 0.75):
        t = torch.full((n,), t_value)
        kept = (corrupt(x1, t, v, "uniform", g) == 2).float().mean().item()
        expected = t_value + (1 - t_value) / v  # kept, or a uniform draw that hits x1
        assert kept == pytest.approx(expected, abs=4 * math.sqrt(expected * (1 - expected) / n))
        masked = (corrupt(x1, t, v, "mask", g) == v).float().mean().item()
        assert masked == pytest.approx(1 - t_value, abs=4 * math.sqrt(t_value * (1 - t_value) / n) + 1e-9)


def test_euler_jump_probabilities_reproduce_the_path_schedule():
    assert [euler_jump_probability(i, 4) for i in range(4)] == [1 / 4, 1 / 3, 1 / 2, 1.0]
    for n in (1, 3, 8, 32):
        never_jumped = 1.0
        for i in range(n):  # the share of tokens still from the source at t_i must be 1 - kappa(t_i) = 1 - i/n
            assert never_jumped == pytest.approx(1 - i / n)
            never_jumped *= 1 - euler_jump_probability(i, n)
        assert never_jumped == 0.0


def test_euler_step_transition_law():
    n, v = 100_000, 3
    probs = torch.tensor([0.5, 0.3, 0.2]).expand(n, 1, v)
    xt = torch.full((n, 1), 2)
    nxt = euler_step(xt, probs, 0.25, "uniform", v, torch.Generator().manual_seed(1))
    freq = torch.bincount(nxt[:, 0], minlength=v).double() / n
    expected = torch.tensor([0.25 * 0.5, 0.25 * 0.3, 0.75 + 0.25 * 0.2], dtype=torch.double)
    torch.testing.assert_close(freq, expected, atol=0.006, rtol=0)
    # mask source: unmasked tokens never move, masked ones jump with the given probability
    xt = torch.tensor([[0, 3], [1, 3]]).repeat(n // 2, 1)  # column 1 masked (mask id = V = 3)
    nxt = euler_step(xt, probs.expand(n, 2, v), 0.4, "mask", v, torch.Generator().manual_seed(2))
    assert torch.equal(nxt[:, 0], xt[:, 0])
    assert (nxt[:, 1] != 3).float().mean().item() == pytest.approx(0.4, abs=0.01)


def test_euler_sampler_with_the_exact_posterior_recovers_the_data_law(monkeypatch):
    # One token, data law pi, uniform source: the exact p(x_1 | x_t) is pi(a) (t [a = x_t] + (1 - t) / V),
    # normalized. With it, the Euler sampler on the grid must end at pi (exactly, for one token).
    v, pi = 3, torch.tensor([0.6, 0.3, 0.1])
    model = DFMPrior(1, v, 1, width=8, num_layers=1, num_heads=1)

    def oracle(xt, t, labels):
        onehot = torch.nn.functional.one_hot(xt, v).float()  # (B, 1, V)
        post = pi * (t[:, None, None] * onehot + (1 - t[:, None, None]) / v)
        return post.log()

    monkeypatch.setattr(model, "forward", oracle)
    n = 60_000
    for steps in (1, 4):
        out = model.generate(torch.zeros(n, dtype=torch.long), 1.0, 1.0, torch.Generator().manual_seed(steps), steps)
        freq = torch.bincount(out[:, 0], minlength=v).float() / n
        torch.testing.assert_close(freq, pi, atol=0.008, rtol=0)
    # negative control: a wrong jump schedule (1/N until a half-jump at the end) misses pi, so the check can fail
    import daps.prior.nets as nets

    monkeypatch.setattr(nets, "euler_jump_probability", lambda i, steps: 1 / steps if i < steps - 1 else 0.5)
    out = model.generate(torch.zeros(n, dtype=torch.long), 1.0, 1.0, torch.Generator().manual_seed(4), 4)
    assert (torch.bincount(out[:, 0], minlength=v).float() / n - pi).abs().max() > 0.03


def _joint_posterior(pi: torch.Tensor, seqs: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, source: str
                     ) -> torch.Tensor:
    """The exact log p(x_1,i | x_t) of the mixture path for a data law ``pi`` over the rows of ``seqs (S, T)``."""
    v = int(seqs.max()) + 1
    same = (xt[:, None, :] == seqs[None]).float()  # (B, S, T)
    tt = t[:, None, None]
    if source == "uniform":
        lik = tt * same + (1 - tt) / v
    else:  # masked tokens (index V) say nothing about x_1 beyond the path's (1 - t)
        lik = torch.where(xt[:, None, :] == v, 1 - tt, tt * same)
    w = pi * lik.prod(-1)  # (B, S)
    w = w / w.sum(-1, keepdim=True)
    marginals = torch.stack([w @ torch.nn.functional.one_hot(seqs[:, i], v).float() for i in range(seqs.shape[1])], 1)
    return marginals.clamp_min(1e-30).log()  # (B, T, V)


@pytest.mark.parametrize("source", ["uniform", "mask"])
def test_euler_sampler_recovers_a_correlated_joint_law_over_several_tokens(monkeypatch, source):
    """T = 3 tokens of V = 3 with strongly correlated tokens: with the exact posterior the sampler ends at the
    joint law; a one-step sampler (every token drawn at once, independently) misses it, so the check can fail."""
    v, t_len = 3, 3
    seqs = torch.tensor(list(itertools.product(range(v), repeat=t_len)))  # (27, 3)
    pi = torch.rand(27, generator=torch.Generator().manual_seed(0)) ** 4
    pi[[0, 13, 26]] += 2.0  # (0,0,0), (1,1,1), (2,2,2): tokens that agree
    pi = pi / pi.sum()
    model = DFMPrior(t_len, v, 1, width=8, num_layers=1, num_heads=1, source=source)
    monkeypatch.setattr(model, "forward", lambda xt, t, labels: _joint_posterior(pi, seqs, xt, t, source))
    n, index = 40_000, torch.tensor([9, 3, 1])

    def tv(steps: int) -> float:
        out = model.generate(torch.zeros(n, dtype=torch.long), 1.0, 1.0, torch.Generator().manual_seed(steps), steps)
        freq = torch.bincount((out * index).sum(-1), minlength=27).float() / n
        return float((freq - pi).abs().sum() / 2)

    assert tv(64) < 0.03
    assert tv(1) > 0.15


def test_dfm_guidance_and_temperature_follow_their_formula(monkeypatch):
    """One token, masked source, one Euler step: the sample law is softmax((u + w (c - u)) / tau) of the
    conditional c and unconditional u log-posteriors, exactly. Swapping c and u (anti-guidance) or ignoring tau
    would give other laws, which the tolerance tells apart."""
    v = 4
    cond, uncond = torch.tensor([0.5, 0.3, 0.15, 0.05]).log(), torch.tensor([0.1, 0.2, 0.3, 0.4]).log()
    model = DFMPrior(1, v, 2, width=8, num_layers=1, num_heads=1, source="mask")

    def oracle(xt, t, labels):
        return torch.where((labels == 2)[:, None, None], uncond, cond).expand(xt.shape[0], 1, v)

    monkeypatch.setattr(model, "forward", oracle)
    n, w, tau = 100_000, 2.0, 0.7
    out = model.generate(torch.zeros(n, dtype=torch.long), w, tau, torch.Generator().manual_seed(0), 1)
    freq = torch.bincount(out[:, 0], minlength=v).float() / n
    expected = torch.softmax((uncond + w * (cond - uncond)) / tau, -1)
    torch.testing.assert_close(freq, expected, atol=0.006, rtol=0)
    anti, untempered = (torch.softmax((cond + w * (uncond - cond)) / tau, -1),
                        torch.softmax(uncond + w * (cond - uncond), -1))
    for wrong in (anti, untempered):
        assert (wrong - expected).abs().max() > 0.02


@pytest.mark.parametrize(("scale", "tau", "n", "tolerance", "controls"), [
    (8.0, 0.8, 100_000, 0.01, ("anti-guidance",)),  # peaked, label-dependent conditionals
    (0.3, 0.5, 40_000, 0.02, ("anti-guidance", "untempered")),  # broad ones, where tempering shows
])
def test_ar_guidance_and_temperature_give_the_product_of_guided_conditionals(scale, tau, n, tolerance, controls):
    """Two tokens of V = 3: sampled frequencies match the exact law prod_t softmax((u_t + w (c_t - u_t)) / tau)
    computed from teacher-forced conditionals; anti-guidance (c and u swapped) and, with broad conditionals, the
    untempered law (the guided branch of the sampler leaving out the temperature) are laws the check tells apart
    (with peaked ones the tempered and untempered laws are within its tolerance of each other)."""
    torch.manual_seed(0)
    model = ARPrior(num_tokens=2, vocab_size=3, num_classes=2, width=16, num_layers=1, num_heads=2).eval()
    with torch.no_grad():
        model.head.weight.mul_(scale)
    seqs = torch.tensor(list(itertools.product(range(3), repeat=2)))  # (9, 2)
    w, label = 2.0, 1

    def law(c_weight: float, temperature: float) -> torch.Tensor:
        with torch.no_grad():
            def log_cond(y: int) -> torch.Tensor:
                flat, logits = model._teacher_forced(torch.full((9,), y), seqs[None])
                return torch.log_softmax(logits.double(), -1)  # (9, T, V)
            c, u = log_cond(label), log_cond(2)
            g = torch.log_softmax((u + c_weight * (c - u)) / temperature, -1)
        return g.gather(-1, seqs[..., None]).squeeze(-1).sum(-1).exp()  # (9,)

    out = model.generate(torch.full((n,), label), w, tau, torch.Generator().manual_seed(0))
    freq = torch.bincount(out[:, 0] * 3 + out[:, 1], minlength=9).double() / n
    expected = law(w, tau)
    assert float((freq - expected).abs().sum() / 2) < tolerance
    wrong = {"anti-guidance": law(1 - w, tau), "untempered": law(w, 1.0)}
    for name in controls:
        assert float((wrong[name] - expected).abs().sum() / 2) > 0.05, name


# -- the AR prior learns a known distribution ---------------------------------------------------------------


def _exact_log_probs(model: ARPrior, v: int, t: int, label: int) -> torch.Tensor:
    seqs = torch.tensor(list(itertools.product(range(v), repeat=t)))  # (V^T, T)
    with torch.no_grad():
        return model.token_log_probs(seqs, torch.full((len(seqs),), label)).sum(-1)  # (V^T,)


def _record_training_labels(monkeypatch) -> list[torch.Tensor]:
    """The labels of every training batch of the priors trained from now on (after label dropout), as they come."""
    import daps.prior.run as run_mod

    seen: list[torch.Tensor] = []
    real_loss = run_mod.prior_loss

    def recording_loss(model, codes, labels, generator):
        seen.append(labels.clone())
        return real_loss(model, codes, labels, generator)

    monkeypatch.setattr(run_mod, "prior_loss", recording_loss)
    return seen


def _synthetic_codes(truth: torch.Tensor, seqs: torch.Tensor, folder: Path, g: torch.Generator, n: int = 4000):
    """``n`` codes, classes in turn, drawn from the per-class laws ``truth (C, S)`` over the rows of ``seqs (S, T)``
    and saved as a codes file in ``folder``: (its path, the CodeSet, the labels, the rows drawn)."""
    labels = torch.arange(n) % truth.shape[0]
    draws = torch.stack([torch.multinomial(truth[y], 1, generator=g)[0] for y in labels.tolist()])
    meta = {"format": 1, "vocab_size": int(seqs.max()) + 1, "num_tokens": seqs.shape[1],
            "class_names": [chr(ord("a") + c) for c in range(truth.shape[0])], "model_sha256": "x"}
    codes = CodeSet(seqs[draws][:, None], labels, meta)
    path = folder / "synthetic.safetensors"
    save_codes(codes, path)
    return path, codes, labels, draws


def test_ar_prior_recovers_a_synthetic_code_distribution(tmp_path, single_thread, monkeypatch):
    """Trained end to end on codes of two known laws: its exact distribution is near each class's law (an untrained
    one is far: the negative control) and its sampler draws what it scores. Its training loop drops the label for
    label_dropout of the examples (the null label that guidance and the unconditional bits need)."""
    v, t, classes = 3, 3, 2
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    truth = torch.distributions.Dirichlet(torch.full((v**t,), 0.3)).sample((classes,))  # (2, 27)
    seqs = torch.tensor(list(itertools.product(range(v), repeat=t)))
    path, codes, labels, draws = _synthetic_codes(truth, seqs, tmp_path, g)
    cfg = PriorConfig(kind="ar", codes=str(path), steps=1000, batch_size=128, width=32, num_heads=2, num_layers=1,
                      lr=3e-3, label_dropout=0.1, eval_every=1000, ckpt_every=1000, progress=False,
                      out_dir=str(tmp_path / "prior"))

    def kl(model: ARPrior) -> float:
        total = 0.0
        for y in range(classes):
            p = truth[y]
            log_q = _exact_log_probs(model, v, t, y)
            assert torch.allclose(log_q.exp().sum(), torch.tensor(1.0), atol=1e-4)  # a normalized distribution
            total += float((p * (p.clamp_min(1e-12).log() - log_q)).sum())
        return total / classes

    from daps.prior.run import build_prior, load_prior

    untrained = build_prior(cfg, codes.meta)
    seen = _record_training_labels(monkeypatch)
    run = train_prior(cfg)
    assert float((torch.cat(seen) == classes).float().mean()) == pytest.approx(0.1, abs=0.01)  # 128,000 labels
    model, _, _ = load_prior(run)
    empirical = torch.stack([torch.bincount(draws[labels == y], minlength=v**t).float() for y in range(classes)])
    empirical = empirical / empirical.sum(-1, keepdim=True)
    floor = float((truth * (truth.clamp_min(1e-12).log() - empirical.clamp_min(1e-12).log())).sum(-1).mean())
    assert kl(model) < 0.05, (kl(model), floor)  # the training sample alone is ~0.01 away (floor)
    assert kl(untrained) > 0.5  # negative control: the test fails without learning
    # the KV-cached sampler draws from the distribution the teacher-forced pass scores
    samples = model.generate(torch.zeros(20_000, dtype=torch.long), 1.0, 1.0, torch.Generator().manual_seed(1))
    index = (samples * torch.tensor([v * v, v, 1])).sum(-1)
    freq = torch.bincount(index, minlength=v**t).float() / len(index)
    assert (freq - _exact_log_probs(model, v, t, 0).exp()).abs().sum() < 0.05  # total variation * 2


# -- guidance ----------------------------------------------------------------------------------------------------


def test_ar_prior_log_probs_are_exact_far_below_the_encoders_clamp():
    torch.manual_seed(0)
    model = ARPrior(num_tokens=2, vocab_size=5, num_classes=3, width=16, num_layers=1, num_heads=2)
    with torch.no_grad():
        model.head.bias[3] = -40.0  # token 3 is near-impossible: log p ~ -40, far below log(eps) ~ -15.9
    codes, labels = torch.tensor([[3, 3], [1, 2]]), torch.tensor([0, 2])
    log_p = model.token_log_probs(codes, labels)
    with torch.no_grad():
        flat, logits = model._teacher_forced(labels, codes[None])
        exact = torch.log_softmax(logits.double(), -1).gather(-1, flat[..., None]).squeeze(-1)
    torch.testing.assert_close(log_p.double(), exact, rtol=1e-5, atol=1e-4)
    assert float(log_p[0].detach().max()) < -30
    model.loss(codes[:1], labels[:1]).backward()
    assert float(model.head.bias.grad[3]) < 0  # the loss still pushes the improbable token up


@pytest.mark.parametrize("kind", ["ar", "dfm"])
def test_samples_follow_the_exact_law_of_a_peaked_prior(kind, single_thread):
    """The priors sample the law their likelihood scores: with token 0's logit 30 above the rest (every other
    token's exact probability ~1e-13), 40,000 codes of two tokens hold no other token. Sampling through the encoder's
    clamp (every probability raised to at least 1.2e-7) puts ~10 other tokens in them, which this test catches."""
    torch.manual_seed(0)
    v, n = 1024, 20_000
    if kind == "ar":
        model = ARPrior(num_tokens=2, vocab_size=v, num_classes=1, width=8, num_layers=1, num_heads=1)
    else:
        model = DFMPrior(2, v, 1, width=8, num_layers=1, num_heads=1, source="mask")
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
        model.head.bias[0] = 30.0
    labels = torch.zeros(n, dtype=torch.long)
    others = 0
    for seed in range(2):
        out = (model.generate(labels, 1.0, 1.0, torch.Generator().manual_seed(seed)) if kind == "ar" else
               model.generate(labels, 1.0, 1.0, torch.Generator().manual_seed(seed), num_steps=4))
        others += int((out != 0).sum())
    assert others == 0, f"{others} tokens other than 0 in {2 * n} codes"


def test_guide_algebra():
    c, u = torch.randn(4, 6), torch.randn(4, 6)
    assert torch.equal(guide(c, u, 1.0), c) and torch.equal(guide(c, u, 0.0), u)
    torch.testing.assert_close(guide(c, u, 2.5), u + 2.5 * (c - u))


@pytest.mark.parametrize("kind", ["ar", "dfm"])
def test_guidance_zero_is_the_unconditional_model(kind, single_thread):
    torch.manual_seed(0)
    args = (4, 7, 3, 16, 1, 2)
    model = (ARPrior(*args) if kind == "ar" else DFMPrior(*args)).eval()
    for p in model.parameters():  # a label-sensitive model: the conditional and unconditional laws differ
        torch.nn.init.normal_(p, std=0.2)
    table = model.patch_embed.table if kind == "ar" else model.label_embed
    torch.nn.init.normal_(table.weight, std=5.0)  # labels that matter
    labels = torch.arange(16) % 3
    null = torch.full_like(labels, 3)
    kw = {} if kind == "ar" else {"num_steps": 5}
    zero = model.generate(labels, 0.0, 1.0, torch.Generator().manual_seed(4), **kw)
    uncond = model.generate(null, 1.0, 1.0, torch.Generator().manual_seed(4), **kw)
    cond = model.generate(labels, 1.0, 1.0, torch.Generator().manual_seed(4), **kw)
    assert torch.equal(zero, uncond)
    assert not torch.equal(cond, uncond)  # the check can fail: labels do change the samples
    mixed = model.generate(labels, 1.5, 1.0, torch.Generator().manual_seed(4), **kw)
    assert mixed.shape == (16, 4) and int(mixed.max()) < 7


# -- prior runs: exact resume, and the commands ---------------------------------------------------------------


def test_prior_resume_is_exact(exported, tmp_path, single_thread):
    """The same weights and the same rows (a logging window of 3 steps ends at the checkpoint of step 5 too; the
    slip it fails on: a window that spans it, whose row after the resume averages fewer steps)."""
    base = dict(kind="dfm", codes=str(exported["train"]), width=16, num_heads=2, num_layers=1, batch_size=32,
                eval_every=10, ckpt_every=5, log_every=3, progress=False)
    straight = train_prior(PriorConfig(**base, steps=10, out_dir=str(tmp_path / "a")))
    train_prior(PriorConfig(**base, steps=5, out_dir=str(tmp_path / "b")))
    leftovers = [tmp_path / "b" / ".summary.tmp-99999.json", tmp_path / "b/checkpoints/.step_00000010.tmp-99999"]
    leftovers[0].write_text("half")  # what a kill leaves: removed on the next start
    leftovers[1].mkdir()
    resumed = train_prior(PriorConfig(**base, steps=10, out_dir=str(tmp_path / "b")), resume=True)
    assert not any(p.exists() for p in leftovers)
    from safetensors.torch import load_file

    a = load_file(str(straight / "checkpoints/step_00000010/model.safetensors"))
    b = load_file(str(resumed / "checkpoints/step_00000010/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def rows(run: Path) -> list[dict]:
        return [{k: v for k, v in json.loads(line).items() if k != "steps_per_s"}
                for line in (run / "metrics.jsonl").read_text().splitlines()]

    killed = tmp_path / "killed"  # as the uninterrupted run would be if killed between its checkpoints 5 and 10
    shutil.copytree(straight, killed)
    shutil.rmtree(killed / "checkpoints/step_00000010")
    (killed / "checkpoints/latest").write_text("step_00000005\n")
    train_prior(PriorConfig(**base, steps=10, out_dir=str(killed)), resume=True)
    assert rows(killed) == rows(straight)
    assert [r["step"] for r in rows(straight) if r["split"] == "train"] == [3, 5, 6, 9, 10]

    from daps.prior.run import ENTRIES
    from daps.runfolder import LOCK, MARKER

    assert {p.name for p in straight.iterdir()} == {*ENTRIES, MARKER, LOCK}  # what --overwrite deletes: all of it
    (straight / "NOTES.md").write_text("mine")  # ... and nothing else
    train_prior(PriorConfig(**base, steps=5, out_dir=str(straight)), overwrite=True)
    assert (straight / "NOTES.md").read_text() == "mine" and not (straight / "checkpoints/step_00000010").exists()


def test_a_prior_resumed_on_another_kind_of_device_is_one_user_error(exported, tmp_path, single_thread, monkeypatch):
    """A checkpoint's generator state is the device's own (CUDA: 16 bytes of seed and offset; CPU: a 5,056-byte
    Mersenne Twister), so a prior (or robot policy: the same start) trained on a GPU cannot resume on a CPU, nor the
    reverse. The slip: torch's RuntimeError ("Expected a CPUGeneratorImplState of size 5056 ...") as a traceback,
    where ``daps train`` says it in one line. Simulated on the CPU with a CUDA-sized state in the checkpoint."""
    import daps.prior.run as prior_run

    cfg = PriorConfig(kind="ar", codes=str(exported["train"]), width=16, num_heads=2, num_layers=1, batch_size=32,
                      steps=2, eval_every=2, ckpt_every=2, progress=False, out_dir=str(tmp_path / "p"))
    train_prior(cfg)
    read = prior_run.load_training_state

    def from_a_gpu(ckpt):
        return {**read(ckpt), "generator": torch.zeros(16, dtype=torch.uint8)}  # what CUDA's get_state() returns

    monkeypatch.setattr(prior_run, "load_training_state", from_a_gpu)
    cfg.steps = 4
    with pytest.raises(UserError, match="another kind of device than cpu; resume it there"):
        train_prior(cfg, resume=True)


def test_a_prior_killed_at_its_end_is_finished_by_resume(exported, tmp_path, single_thread, end_of_run_rule):
    """Its figure and summary come back after a kill between the two; a finished prior is left alone (the slips:
    the summary written before the figure, taken as the mark of a finished run; or a resume that rewrites them)."""
    cfg = PriorConfig(kind="ar", codes=str(exported["train"]), width=16, num_heads=2, num_layers=1, batch_size=32,
                      steps=4, eval_every=2, ckpt_every=2, progress=False, out_dir=str(tmp_path / "p"))
    end_of_run_rule(train_prior(cfg), lambda: train_prior(cfg, resume=True))


def test_prior_commands_end_to_end(trained_run, exported, tmp_path, capsys):
    prior = tmp_path / "prior"
    assert main(["prior", "train", str(exported["train"]), "--kind", "ar", "--out", str(prior),
                 "--val-codes", str(exported["test"]), "steps=20", "width=16", "num_heads=2", "eval_every=10",
                 "progress=false"]) == 0
    for name in ("config.json", "metrics.jsonl", "summary.json", "curves.png"):
        assert (prior / name).is_file(), name
    assert main(["prior", "sample", str(prior), "--n", "3", "--cfg", "2", "--out", str(tmp_path / "s.png"),
                 "--codes-out", str(tmp_path / "s.safetensors")]) == 0
    sampled = load_codes(tmp_path / "s.safetensors")
    assert sampled.codes.shape == (30, 1, 4) and sampled.labels.tolist() == [y for y in range(10) for _ in range(3)]
    assert main(["prior", "sample", str(prior), "--label", "7", "--n", "4", "--out", str(tmp_path / "7.png")]) == 0
    capsys.readouterr()
    assert main(["prior", "eval", str(prior), "--n", "50", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["bits_per_token"] > 0 and 0 <= report["copied_fraction"] <= 1 and report["num_codes"] == 1000
    assert main(["decode-random", str(trained_run), "--n", "12", "--out", str(tmp_path / "r.png")]) == 0
    from PIL import Image

    assert Image.open(tmp_path / "r.png").size[0] > 28
    capsys.readouterr()
    assert main(["decode-random", str(trained_run), "--n", "100000", "--out", str(tmp_path / "big.png")]) == 2
    assert "--n must be 1 to 400, got 100000" in capsys.readouterr().err and not (tmp_path / "big.png").exists()
    assert main(["decode-random", str(trained_run), "--n", "4", "--out", str(tmp_path / "v.png"), "--video",
                 str(tmp_path / "v.mp4")]) == 2  # digits have no H1 poses
    assert "--video is for motion tokenizers" in capsys.readouterr().err and not (tmp_path / "v.png").exists()


def test_prior_sample_and_eval_pass_what_they_are_asked_for(exported, tmp_path, capsys, monkeypatch):
    """The commands' wiring, with the samplers replaced by stand-ins that record their arguments: ``prior sample
    --label 7`` asks for label 7 with the run's Euler steps (or ``--euler-steps``), and ``--codes-out`` records them;
    ``prior eval`` counts copies against the codes the prior was trained on (not the held-out ones)."""
    import daps.prior.run as run_mod
    import daps.prior.scores as scores_mod

    prior = tmp_path / "dfm"
    assert main(["prior", "train", str(exported["train"]), "--kind", "dfm", "--out", str(prior), "steps=2",
                 "width=16", "num_heads=2", "eval_every=2", "euler_steps=5", "progress=false"]) == 0
    asked = []

    def generate(model, labels, guidance, temperature, generator, euler_steps):
        asked.append((labels.tolist(), euler_steps))
        return torch.zeros(len(labels), model.num_tokens, dtype=torch.long)

    monkeypatch.setattr(run_mod, "generate", generate)
    import daps.plots

    grids = []
    monkeypatch.setattr(daps.plots, "save_image_grid", lambda images, out, columns, row_labels: grids.append(
        (len(images), columns, row_labels)))
    assert main(["prior", "sample", str(prior), "--label", "7", "--n", "12", "--out", str(tmp_path / "7.png"),
                 "--codes-out", str(tmp_path / "7.safetensors")]) == 0
    assert asked == [([7] * 12, 5)]
    assert grids == [(12, 10, ["7", "7"])]  # ten per row, each row labelled with its class
    assert load_codes(tmp_path / "7.safetensors").meta["euler_steps"] == 5
    assert main(["prior", "sample", str(prior), "--n", "2", "--euler-steps", "3",
                 "--out", str(tmp_path / "a.png")]) == 0
    assert asked[-1] == ([y for y in range(10) for _ in range(2)], 3)
    assert grids[-1] == (20, 2, [str(y) for y in range(10)])  # a row per class, in class order

    given = []
    monkeypatch.setattr(scores_mod, "score_prior", lambda model, steps, train_codes, *a, **k: (
        given.append((steps, train_codes)), {})[1])
    capsys.readouterr()
    assert main(["prior", "eval", str(prior), "--n", "10", "--no-classifier", "--json"]) == 0
    model, cfg, meta = run_mod.load_prior(prior)
    train_set, _ = run_mod.trained_codes(prior, cfg, meta)
    assert given[0][0] == 5 and torch.equal(given[0][1], train_set.flat()[0])


def _error(capsys, argv) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_inputs_give_one_line_and_exit_2(trained_run, vq_run, exported, tmp_path, capsys, monkeypatch):
    vq_codes = tmp_path / "vq.safetensors"
    save_codes(export_codes(vq_run, "test", max_inputs=20), vq_codes)
    prior = tmp_path / "prior"
    assert main(["prior", "train", str(exported["train"]), "--out", str(prior), "steps=2", "width=16",
                 "num_heads=2", "progress=false"]) == 0
    # held-out codes of another tokenizer
    assert "do not come from the tokenizer" in _error(
        capsys, ["prior", "train", str(exported["train"]), "--out", str(tmp_path / "p2"), "--val-codes",
                 str(vq_codes), "steps=2"])
    # the training file itself, by another path or copied, as held-out codes: training figures in disguise
    assert "is the training codes file" in _error(
        capsys, ["prior", "train", str(exported["train"]), "--out", str(tmp_path / "p2"), "--val-codes",
                 str(exported["train"].parent / "." / exported["train"].name), "steps=2"])
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(exported["train"].read_bytes())
    assert "holds the same codes as" in _error(
        capsys, ["prior", "train", str(exported["train"]), "--out", str(tmp_path / "p2"), "--val-codes", str(copy),
                 "steps=2"])
    assert not (tmp_path / "p2").exists()
    assert "is not a class" in _error(capsys, ["prior", "sample", str(prior), "--label", "10", "--out",
                                               str(tmp_path / "x.png")])
    assert "is not a class" in _error(capsys, ["prior", "sample", str(prior), "--label", "cat", "--out",
                                               str(tmp_path / "x.png")])
    # decoding with a tokenizer whose vocabulary differs from the codes'
    assert "tokenizer" in _error(capsys, ["prior", "sample", str(prior), "--tokenizer", str(vq_run), "--out",
                                          str(tmp_path / "x.png")])
    assert "--video is for motion tokenizers" in _error(capsys, ["prior", "sample", str(prior), "--out",
                                                                 str(tmp_path / "x.png"), "--video",
                                                                 str(tmp_path / "x.mp4")])
    for flag, value, message in (("--temperature", "nan", "--temperature must be a positive number"),
                                 ("--temperature", "inf", "--temperature must be a positive number"),
                                 ("--temperature", "0", "--temperature must be a positive number"),
                                 ("--cfg", "nan", "--cfg must be a finite number")):
        assert message in _error(capsys, ["prior", "sample", str(prior), flag, value, "--out", str(tmp_path / "x.png")])
    assert "--cfg must be a finite number" in _error(capsys, ["prior", "eval", str(prior), "--cfg", "inf"])
    assert _error(capsys, ["eval", str(prior)]).endswith(  # a command that takes a training run
        f"error: {prior} is a prior over codes (the first argument of daps prior sample / eval), not a training run")
    # named by its folder, not the checkpoint folder the command resolved it to (nor one given)
    checkpoint = prior / "checkpoints" / "step_00000002"
    assert f"error: {prior} is a prior over codes" in _error(capsys, ["eval", str(checkpoint)])
    assert "is a prior over codes (the first argument of daps prior sample / eval), not a training run" in _error(
        capsys, ["prior", "sample", str(prior), "--tokenizer", str(prior), "--out", str(tmp_path / "t.png")])
    assert "--euler-steps must be at most 100,000, got 100,000,000" in _error(
        capsys, ["prior", "sample", str(prior), "--euler-steps", "100000000", "--out", str(tmp_path / "e.png")])
    train_argv = ["prior", "train", str(exported["train"]), "--out", str(tmp_path / "p4"), "steps=2"]
    assert "not both" in _error(capsys, [*train_argv, "--label-dropout", "0.2", "label_dropout=0.3"])
    assert "source: settings of dfm priors" in _error(capsys, [*train_argv, "source=mask"])  # --kind ar
    assert "euler_steps: settings of dfm priors" in _error(capsys, [*train_argv, "euler_steps=8"])
    assert "val_fraction: read only without --val-codes" in _error(capsys, [*train_argv, "--val-codes",
                                                                            str(exported["train"]), "val_fraction=0.2"])
    unknown = _error(capsys, [*train_argv, "colour=blue"])
    assert "unknown setting 'colour'" in unknown and "val_fraction" in unknown and "out_dir" not in unknown
    assert not (tmp_path / "p4").exists()
    assert "--euler-steps is for dfm priors" in _error(capsys, ["prior", "sample", str(prior), "--euler-steps", "4",
                                                                "--out", str(tmp_path / "x.png")])  # an ar prior
    assert "deterministically" in _error(capsys, ["export-codes", str(vq_run), "--samples-per-input", "3",
                                                  "--out", str(tmp_path / "v.safetensors")])
    not_codes = tmp_path / "notes.safetensors"
    not_codes.write_text("hello")
    assert "not a daps codes file" in _error(capsys, ["prior", "train", str(not_codes), "--out", str(tmp_path / "p3")])
    existing = str(exported["train"])
    assert "exists; pass --overwrite" in _error(capsys, ["export-codes", str(trained_run), "--out", existing])
    # --codes-out: a user's file, or the prior's own training codes, refused before the image is written
    assert "--codes-out" in _error(capsys, ["prior", "sample", str(prior), "--out", str(tmp_path / "x.png"),
                                            "--codes-out", str(not_codes), "--overwrite"])
    training_codes = Path(existing).read_bytes()
    assert "this prior was trained on" in _error(capsys, ["prior", "sample", str(prior), "--out",
                                                          str(tmp_path / "x.png"), "--codes-out", existing,
                                                          "--overwrite"])
    relative = tmp_path / "relative"  # a prior trained on a relative path, sampled from another folder
    monkeypatch.chdir(Path(existing).parent)
    assert main(["prior", "train", Path(existing).name, "--out", str(relative), "steps=2", "width=16",
                 "num_heads=2", "progress=false"]) == 0
    monkeypatch.chdir(tmp_path)
    assert "this prior was trained on" in _error(capsys, ["prior", "sample", str(relative), "--out",
                                                          str(tmp_path / "x.png"), "--codes-out", existing,
                                                          "--overwrite"])
    assert not_codes.read_text() == "hello" and Path(existing).read_bytes() == training_codes
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "x.mp4").exists()


# -- classifier scores ------------------------------------------------------------------------------------------


def test_image_classifier_learns_and_round_trips(tmp_path, single_thread):
    from daps.errors import UserError
    from daps.metrics.classifier import (
        accuracy,
        load_image_classifier,
        save_image_classifier,
        train_image_classifier,
    )

    g = torch.Generator().manual_seed(0)
    labels = torch.randint(10, (1200,), generator=g)
    images = (torch.rand(1200, 1, 28, 28, generator=g) < 0.05).float()
    for c in range(10):  # class c: a bright bar in row band c
        images[labels == c, :, 2 * c + 4 : 2 * c + 6, 4:24] = 1.0
    model = train_image_classifier(images[:1000], labels[:1000], steps=150, batch_size=64)
    assert accuracy(model, images[1000:], labels[1000:]) > 0.9
    shuffled = labels[1000:][torch.randperm(200, generator=g)]
    assert accuracy(model, images[1000:], shuffled) < 0.3  # negative control: wrong labels score at chance
    path = save_image_classifier(model, "mnist", {"test_accuracy": 1.0}, tmp_path / "c.safetensors")
    again = load_image_classifier("mnist", path)
    torch.testing.assert_close(again(images[:5]), model(images[:5]))
    with pytest.raises(UserError, match="not a version-1 cifar10 classifier"):
        load_image_classifier("cifar10", path)
    with pytest.raises(UserError, match="scripts/train_classifier.py"):
        load_image_classifier("mnist", tmp_path / "missing.safetensors")


def test_judge_known_answers(trained_run, single_thread, caplog):
    from daps.metrics.classifier import ImageClassifier
    from daps.prior.scores import Judge, sample_statistics

    torch.manual_seed(0)
    with caplog.at_level("WARNING", logger="daps"):
        judge = Judge(load_model(trained_run), ImageClassifier((1, 28, 28)))
    assert "mnist5k's images are all in the training split of its classifier" in caplog.text
    test = judge._examples(judge.test, torch.arange(judge.num_test))
    assert judge.score(test)["frechet"] == pytest.approx(0.0, abs=1e-4)  # the reference against itself
    refs = judge.references(200)
    assert refs["real_frechet"] < refs["random_frechet"]  # real examples sit nearer the test split than noise
    assert set(refs) == {"real_frechet", "recon_frechet", "recon_accuracy", "random_frechet", "random_top_class"}
    stats = sample_statistics(torch.tensor([[1, 2], [1, 2], [3, 4], [5, 6]]), torch.tensor([[1, 2], [9, 9]]))
    assert stats == {"unique_fraction": 0.75, "copied_fraction": 0.5}
    most = 10 * int(torch.bincount(judge.train.labels).min())  # as many of each class as the smallest has
    assert len(set(judge.balanced_train_subset(most, 0).tolist())) == most
    with pytest.raises(UserError, match=f"at most {most} class-balanced"):
        judge.balanced_train_subset(most + 1, 0)


def test_inception_fid_known_answer(trained_run, monkeypatch, single_thread):
    from daps.metrics.classifier import ImageClassifier
    from daps.prior.scores import Judge, inception_fid

    shared = SHARED_DATA
    if not shared or not (Path(shared) / "fid_inception").exists():
        pytest.skip("needs the FID Inception weights under $DAPS_DATA_DIR/fid_inception")
    weights = str(Path(shared) / "fid_inception")
    judge = Judge(load_model(trained_run), ImageClassifier((1, 28, 28)))
    n = 12
    real = judge._examples(judge.train, judge.balanced_train_subset(n, 0))
    same = inception_fid(judge, real, n, weights=weights)
    assert same["inception_fid"] == pytest.approx(same["inception_fid_real"], rel=1e-9)  # the floor set itself
    noise = inception_fid(judge, torch.rand(n, 1, 28, 28).round(), n, weights=weights)
    assert noise["inception_fid"] > same["inception_fid_real"]


def test_resume_takes_the_same_files_however_they_are_written(exported, tmp_path, capsys, monkeypatch):
    """``--resume`` compares file settings as paths, allows the logging cadence to change, and refuses a damaged
    config.json in one line."""
    monkeypatch.chdir(exported["train"].parent)
    codes = exported["train"].name
    prior = tmp_path / "prior"
    tiny = ["width=16", "num_heads=2", "num_layers=1", "batch_size=16", "ckpt_every=2", "eval_every=2",
            "progress=false"]
    assert main(["prior", "train", codes, "--out", str(prior), "steps=2", *tiny]) == 0
    assert main(["prior", "train", f"./{codes}", "--out", f"{prior}/", "--resume", "steps=4", "log_every=1",
                 *tiny]) == 0
    assert (prior / "checkpoints" / "latest").read_text().strip().endswith("4")
    assert main(["prior", "train", str(exported["train"].resolve()), "--out", str(prior), "--resume", "steps=6",
                 *tiny]) == 0
    assert "settings differ from the run's config.json (lr: 0.001 -> 0.5)" in _error(
        capsys, ["prior", "train", codes, "--out", str(prior), "--resume", "steps=8", *tiny, "lr=0.5"])
    config = (prior / "config.json").read_text()
    assert f"cannot resume {prior} at step 6: the run is set to stop at step 4" in _error(
        capsys, ["prior", "train", codes, "--out", str(prior), "--resume", "steps=4", *tiny])
    assert (prior / "config.json").read_text() == config  # still the steps its checkpoints were trained towards
    (prior / "config.json").write_text("{oops")
    assert "is missing or damaged" in _error(capsys, ["prior", "train", codes, "--out", str(prior), "--resume",
                                                      "steps=8", *tiny])


def test_a_prior_stopped_before_its_first_checkpoint_starts_again_in_place(exported, tmp_path, caplog):
    """A prior folder killed before it wrote config.json (e.g. while --overwrite emptied it), holding only its
    marker and the user's notes: ``--resume`` trains it from the start in place and keeps the notes, as ``daps
    train`` does. Fails on: "config.json is missing or damaged" for a folder that never had one."""
    from daps.runfolder import write_marker

    prior = tmp_path / "prior"
    prior.mkdir()
    write_marker(prior, "prior")
    (prior / "notes.txt").write_text("mine")
    tiny = ["width=16", "num_heads=2", "num_layers=1", "batch_size=16", "ckpt_every=2", "eval_every=2",
            "progress=false", "steps=2"]
    with caplog.at_level("WARNING", logger="daps"):
        assert main(["prior", "train", str(exported["train"]), "--out", str(prior), "--resume", *tiny]) == 0
    assert "stopped before its first checkpoint: starting it again in place" in caplog.text
    assert (prior / "notes.txt").read_text() == "mine" and (prior / "summary.json").is_file()


def test_resume_checks_the_codes_themselves_and_a_refusal_changes_nothing(exported, tmp_path, capsys, monkeypatch):
    import shutil

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    shutil.copy(exported["train"], a / "c.safetensors")
    shutil.copy(exported["test"], b / "c.safetensors")  # same name, other codes (same tokenizer, other split)
    prior = tmp_path / "prior"
    tiny = ["width=16", "num_heads=2", "num_layers=1", "batch_size=16", "ckpt_every=2", "eval_every=2",
            "progress=false"]
    monkeypatch.chdir(a)
    assert main(["prior", "train", "c.safetensors", "--out", str(prior), "steps=2", *tiny]) == 0
    monkeypatch.chdir(b)  # the same file, written from another folder: resumes
    assert main(["prior", "train", "../a/c.safetensors", "--out", str(prior), "--resume", "steps=4", *tiny]) == 0
    config = (prior / "config.json").read_bytes()
    assert f"config.json (codes: '{a / 'c.safetensors'}' -> '{b / 'c.safetensors'}')" in _error(  # another file
        capsys, ["prior", "train", "c.safetensors", "--out", str(prior), "--resume", "steps=6", *tiny])
    save_codes(CodeSet(torch.zeros(4, 1, 4, dtype=torch.long), torch.arange(4),  # re-exported in place
                       {**load_codes(a / "c.safetensors").meta, "model_sha256": "0" * 64}),
               a / "c.safetensors", overwrite=True)
    assert "not the codes the prior was trained on (content_sha256, model_sha256" in _error(
        capsys, ["prior", "train", "../a/c.safetensors", "--out", str(prior), "--resume", "steps=6", *tiny])
    assert (prior / "config.json").read_bytes() == config


def test_empty_codes_are_one_line_and_leave_no_folder(exported, tmp_path, capsys):
    meta = load_codes(exported["test"]).meta
    empty = tmp_path / "empty.safetensors"
    save_codes(CodeSet(torch.zeros(0, 1, 4, dtype=torch.long), torch.zeros(0, dtype=torch.long), meta), empty)
    for argv in ([str(exported["train"]), "--val-codes", str(empty)],
                 [str(empty), "--val-codes", str(exported["test"])]):
        assert "codes are empty" in _error(capsys, ["prior", "train", *argv, "--out", str(tmp_path / "p"), "steps=2"])
        assert not (tmp_path / "p").exists()


def test_prior_eval_reads_the_held_out_codes_it_was_trained_with(exported, tmp_path, capsys, monkeypatch):
    import shutil

    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(exported["test"], home / "va.safetensors")
    monkeypatch.chdir(home)
    prior = tmp_path / "prior"
    assert main(["prior", "train", str(exported["train"]), "--val-codes", "va.safetensors", "--out", str(prior),
                 "steps=2", "width=16", "num_heads=2", "progress=false"]) == 0
    monkeypatch.chdir(tmp_path)  # elsewhere, with no va.safetensors in it
    capsys.readouterr()
    assert main(["prior", "eval", str(prior), "--n", "10", "--no-classifier", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_codes"] == 2 * load_codes(exported["test"]).codes.shape[0]


def test_prior_eval_refuses_a_codes_file_exported_over_since_training(exported, tmp_path, capsys):
    import shutil

    codes = tmp_path / "codes.safetensors"
    shutil.copy(exported["train"], codes)
    prior = tmp_path / "prior"
    assert main(["prior", "train", str(codes), "--out", str(prior), "steps=2", "width=16", "num_heads=2",
                 "progress=false"]) == 0
    capsys.readouterr()
    assert main(["prior", "eval", str(prior), "--n", "10", "--no-classifier", "--json"]) == 0
    shutil.copy(exported["test"], codes)  # another export written over the file: other inputs, same tokenizer
    err = _error(capsys, ["prior", "eval", str(prior), "--n", "10", "--no-classifier"])
    assert "no longer the codes file the prior" in err and "split" in err and str(codes) in err
    codes.rename(tmp_path / "moved.safetensors")  # moved away: says where it must be (not "no such file")
    err = _error(capsys, ["prior", "eval", str(prior), "--n", "10", "--no-classifier"])
    assert f"{codes}, the codes file the prior" in err and "is not there any more" in err


def test_codes_edited_by_hand_under_their_header_are_refused(exported, tmp_path, capsys):
    """Codes changed in place with the header kept (100 codes zeroed in the training file; the held-out file cut to
    10 inputs): eval and --resume refuse each, naming the file. The slip it fails on: checking the headers alone,
    so that the held-out figures and an 'exact' resume silently use other codes."""
    train, val = tmp_path / "train.safetensors", tmp_path / "val.safetensors"
    for path, split in ((train, "train"), (val, "test")):
        save_codes(load_codes(exported[split]), path)
    prior = tmp_path / "prior"
    tiny = ["width=16", "num_heads=2", "batch_size=16", "ckpt_every=2", "progress=false"]
    command = ["prior", "train", str(train), "--val-codes", str(val), "--out", str(prior), *tiny]
    assert main([*command, "steps=2"]) == 0
    capsys.readouterr()
    assert main(["prior", "eval", str(prior), "--n", "10", "--no-classifier", "--json"]) == 0  # as trained: fine
    capsys.readouterr()
    edited, cut = load_codes(train), load_codes(val)
    edited.codes.view(-1)[:100] = 0
    for path, key, codes in ((train, "content_sha256", edited),
                             (val, "val_content_sha256", CodeSet(cut.codes[:10], cut.labels[:10], cut.meta))):
        original = path.read_bytes()
        save_codes(codes, path, overwrite=True)
        err = _error(capsys, ["prior", "eval", str(prior), "--n", "10", "--no-classifier"])
        assert "has the header of the codes file the prior" in err and str(path) in err
        assert f"not the codes the prior was trained on ({key} differ" in _error(capsys, [*command, "--resume",
                                                                                        "steps=4"])
        path.write_bytes(original)
    train.rename(tmp_path / "away.safetensors")  # moved: eval reads the held-out file, but checks it against this
    err = _error(capsys, ["prior", "eval", str(prior), "--n", "10", "--no-classifier"])
    assert f"{train}, the codes file the prior" in err and "the held-out codes are checked against it" in err
    (tmp_path / "away.safetensors").rename(train)
    assert main([*command, "--resume", "steps=4"]) == 0  # the codes as they were: it resumes


def test_a_held_out_codes_file_exported_over_since_training_is_refused(exported, tmp_path, capsys):
    """--val-codes written over after training (same tokenizer, other seed and size): eval and --resume refuse it
    (they used to check the training file's header only and report bits on the new file); a prior trained before
    the held-out header was kept still resumes and evaluates."""
    import shutil

    val = tmp_path / "val.safetensors"
    shutil.copy(exported["test"], val)
    prior = tmp_path / "prior"
    tiny = ["width=16", "num_heads=2", "batch_size=16", "ckpt_every=2", "progress=false"]
    assert main(["prior", "train", str(exported["train"]), "--val-codes", str(val), "--out", str(prior),
                 "steps=2", *tiny]) == 0
    held_out = load_codes(val)
    save_codes(CodeSet(held_out.codes[:3], held_out.labels[:3], {**held_out.meta, "seed": 7}), val, overwrite=True)
    capsys.readouterr()
    err = _error(capsys, ["prior", "eval", str(prior), "--n", "10", "--no-classifier"])
    assert "no longer the codes file the prior" in err and "seed" in err and str(val) in err
    config = (prior / "config.json").read_bytes()
    assert "not the codes the prior was trained on (val_content_sha256, val_header" in _error(
        capsys, ["prior", "train", str(exported["train"]), "--val-codes", str(val), "--out", str(prior), "--resume",
                 "steps=4", *tiny])
    assert (prior / "config.json").read_bytes() == config

    from daps.prior.run import PriorConfig, trained_codes

    record = json.loads(config)  # as a prior trained before the held-out header and the hashes were kept
    for key in ("val_header", "content_sha256", "val_content_sha256"):
        del record["codes"][key]
    _, val_set = trained_codes(prior, PriorConfig(**record["prior"]), record["codes"])  # what eval reads
    assert torch.equal(val_set.codes, held_out.codes[:3])
    (prior / "config.json").write_text(json.dumps(record))
    assert main(["prior", "train", str(exported["train"]), "--val-codes", str(val), "--out", str(prior), "--resume",
                 "steps=4", *tiny]) == 0


def test_decoding_refuses_a_tokenizer_that_did_not_make_the_codes(trained_run, exported, tmp_path, capsys,
                                                                  copy_run):
    prior = tmp_path / "prior"
    assert main(["prior", "train", str(exported["train"]), "--out", str(prior), "steps=2", "width=16",
                 "num_heads=2", "progress=false"]) == 0
    same = copy_run("copied")  # the same weights in another folder: fine
    assert main(["prior", "sample", str(prior), "--tokenizer", str(same), "--n", "1", "--out",
                 str(tmp_path / "ok.png")]) == 0
    from daps.checkpoint import load_training_state, resolve_checkpoint, save_checkpoint

    other = copy_run("trained_on")  # its latest checkpoint rewritten with other weights (as more training would)
    ckpt = resolve_checkpoint(other)
    model = load_model(other)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    state = load_training_state(ckpt)
    save_checkpoint(other, int(state["step"]), model, model.config, state, keep=2)
    assert "is not the checkpoint that made the prior's codes" in _error(
        capsys, ["prior", "sample", str(prior), "--tokenizer", str(other), "--n", "1", "--out",
                 str(tmp_path / "x.png")])


def test_a_pretrained_tokenizer_stands_for_its_run(trained_run, exported, tmp_path, capsys, monkeypatch, caplog,
                                                   single_thread):
    """A pretrained folder (``daps export``) and the same files fetched by Hub id work wherever a tokenizer is read:
    export-codes draws the very codes the run draws (same seed), their headers carry the same weights digest, prior
    sample decodes the run's codes with it, and other weights under the same V and T are refused by that digest; a
    header from before the digest (file checksum only) is decoded with a warning that it cannot be checked. Fails
    on: a pretrained folder refused as a tokenizer, a digest that differs between a checkpoint and its export (the
    file's checksum would), or the digest not compared."""
    import shutil
    import types

    import daps.hub
    from daps.codes import load_code_tokenizer
    from daps.hub import FILES, export_run, save_pretrained

    folder = export_run(trained_run, tmp_path / "exported")
    hub_files = tmp_path / "snapshot"  # what snapshot_download leaves: the files, no .daps marker
    hub_files.mkdir()
    for name in FILES:
        if (folder / name).is_file():
            shutil.copy(folder / name, hub_files / name)
    fetched: list[str] = []

    def snapshot_download(repo_id, **kwargs):
        fetched.append(repo_id)
        return str(hub_files)

    monkeypatch.setattr(daps.hub, "_hub", lambda: types.SimpleNamespace(snapshot_download=snapshot_download))
    runs = export_codes(trained_run, "test", samples_per_input=2, seed=5, max_inputs=12)
    data_dir = load_model(trained_run).config.data.data_dir  # a pretrained folder holds only the folder's name
    for source in (folder, hub_files, "someone/tokenizer"):
        codes = export_codes(source, "test", samples_per_input=2, seed=5, max_inputs=12, data_dir=data_dir)
        assert torch.equal(codes.codes, runs.codes) and torch.equal(codes.labels, runs.labels)
        assert codes.meta["weights_digest"] == runs.meta["weights_digest"] and len(runs.meta["weights_digest"]) == 64
        assert codes.meta["step"] is None and codes.meta["model_sha256"] == ""
    assert codes.meta["run"] == codes.meta["checkpoint"] == "someone/tokenizer" and fetched == ["someone/tokenizer"]
    assert runs.meta["model_sha256"] and runs.meta["step"] == 6

    prior = tmp_path / "prior"  # trained on the run's codes, decoded by the exported folder
    assert main(["prior", "train", str(exported["train"]), "--out", str(prior), "steps=2", "width=16",
                 "num_heads=2", "progress=false"]) == 0
    for source in (folder, "someone/tokenizer"):
        assert main(["prior", "sample", str(prior), "--tokenizer", str(source), "--n", "1", "--out",
                     str(tmp_path / "ok.png"), "--overwrite"]) == 0
    other = load_model(trained_run)  # the same V and T, other weights
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    save_pretrained(other, tmp_path / "other")
    assert "is not the checkpoint that made the prior's codes" in _error(
        capsys, ["prior", "sample", str(prior), "--tokenizer", str(tmp_path / "other"), "--n", "1", "--out",
                 str(tmp_path / "x.png")])
    # a prior's held-out codes may come from the export of its training codes' run, not from other weights
    save_codes(runs, tmp_path / "run-test.safetensors")
    save_codes(codes, tmp_path / "hub-test.safetensors")
    save_codes(export_codes(tmp_path / "other", "test", max_inputs=12, data_dir=data_dir),
               tmp_path / "other-test.safetensors")
    tiny = ["steps=2", "width=16", "num_heads=2", "progress=false"]
    assert main(["prior", "train", str(tmp_path / "run-test.safetensors"), "--val-codes",
                 str(tmp_path / "hub-test.safetensors"), "--out", str(tmp_path / "p2"), *tiny]) == 0
    assert "(weights_digest differs)" in _error(capsys, [
        "prior", "train", str(tmp_path / "run-test.safetensors"), "--val-codes",
        str(tmp_path / "other-test.safetensors"), "--out", str(tmp_path / "p3"), *tiny])
    meta = {k: v for k, v in runs.meta.items() if k != "weights_digest"}  # a header written before the digest
    with caplog.at_level("WARNING"):
        load_code_tokenizer(tmp_path / "other", meta, torch.device("cpu"), "the prior's codes")
    assert "cannot be checked against the checkpoint that made the prior's codes" in caplog.text
    with pytest.raises(UserError, match="is not the checkpoint that made"):  # a run is still checked by its file
        load_code_tokenizer(trained_run, {**meta, "model_sha256": "0" * 64}, torch.device("cpu"), "the codes")


def test_a_diverging_prior_run_stops_and_keeps_good_weights(tmp_path):
    from types import SimpleNamespace

    from daps.prior.run import MAX_SKIPPED_STEPS, run_steps
    from daps.train import TrainingDiverged

    def run(model: torch.nn.Linear, bad_steps: range, steps: int, ckpt_every: int = 10**6) -> None:
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
        cfg = SimpleNamespace(steps=steps, grad_clip=1.0, log_every=5, eval_every=10**6, ckpt_every=ckpt_every,
                              keep_checkpoints=10, progress=False)
        calls = itertools.count()

        def batch_loss() -> torch.Tensor:
            loss = model(torch.ones(4, 3)).square().mean()
            return loss * math.nan if next(calls) in bad_steps else loss

        run_steps(tmp_path, model, optimizer, torch.Generator(), {}, cfg, 0, batch_loss, dict, "test")

    torch.manual_seed(0)
    start = torch.nn.Linear(3, 1)
    diverging = copy.deepcopy(start)
    with pytest.raises(TrainingDiverged, match=f"not finite for {MAX_SKIPPED_STEPS} steps"):
        run(diverging, range(10, 10**6), 200)
    assert all(torch.isfinite(p).all() for p in diverging.parameters())  # the NaN steps changed nothing
    healthy = copy.deepcopy(start)
    (tmp_path / "metrics.jsonl").unlink()
    run(healthy, range(3, 5), 20, ckpt_every=4)  # two bad steps are skipped and the run goes on
    # no checkpoint right after a skipped update (step 4): a resume never starts in the middle of a streak
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*"))
    assert names == ["step_00000008", "step_00000012", "step_00000016", "step_00000020"]
    assert all(torch.isfinite(p).all() for p in healthy.parameters()) and not torch.equal(healthy.weight, start.weight)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["split"] == "train"]
    # rows every 5 steps and at each checkpoint step (every 4th): the bad steps 4 and 5 fall in two windows
    assert [(r["step"], r["skipped"]) for r in rows] == [(4, 1), (5, 1), (8, 0), (10, 0), (12, 0), (15, 0), (16, 0),
                                                         (20, 0)]
    # a window of skipped steps only has no loss to average
    assert [r["loss"] is None for r in rows[:3]] == [False, True, False]  # (step 5 alone in its window)
    assert all(math.isfinite(r["loss"]) for r in rows if r["step"] != 5)


def test_guidance_without_label_dropout_is_warned(exported, tmp_path, caplog):
    prior = tmp_path / "prior"
    assert main(["prior", "train", str(exported["train"]), "--out", str(prior), "steps=2", "width=16",
                 "num_heads=2", "progress=false", "label_dropout=0"]) == 0
    with caplog.at_level("WARNING", logger="daps"):
        assert main(["prior", "sample", str(prior), "--n", "1", "--out", str(tmp_path / "a.png")]) == 0
        assert "null label is untrained" not in caplog.text  # --cfg 1: the conditional model alone
        assert main(["prior", "sample", str(prior), "--n", "1", "--cfg", "2", "--out", str(tmp_path / "b.png")]) == 0
    assert "--cfg 2 uses the unconditional model, but this run was trained with label_dropout=0" in caplog.text


def test_inception_fid_on_grey_digits_is_refused_before_sampling(exported, tmp_path, capsys, monkeypatch):
    import daps.prior.scores as scores

    prior = tmp_path / "prior"
    assert main(["prior", "train", str(exported["train"]), "--out", str(prior), "steps=2", "width=16",
                 "num_heads=2", "progress=false"]) == 0
    import daps.prior.run as prior_run

    monkeypatch.setattr(scores, "score_prior", lambda *a, **k: pytest.fail("sampled before refusing"))
    monkeypatch.setattr(prior_run, "evaluate_prior", lambda *a, **k: pytest.fail("evaluated before refusing"))
    assert "--inception-fid is for tokenizers of RGB images with a classifier (cifar10, cifar10-jpeg); this one is " \
           "of mnist5k" in _error(capsys, ["prior", "eval", str(prior), "--n", "10", "--inception-fid", "10"])
    # options another option switches off: refused before anything is loaded or sampled
    for extra, message in ((["--inception-fid", "10", "--no-classifier"], "--inception-fid needs the classifier"),
                           (["--fid-weights", str(tmp_path)], "--fid-weights is read only with --inception-fid"),
                           (["--tokenizer", str(prior), "--no-classifier"], "--tokenizer is read only for the")):
        assert message in _error(capsys, ["prior", "eval", str(prior), "--n", "10", *extra])
    # a grid of more samples than one PNG holds
    assert "more than one grid holds (400)" in _error(
        capsys, ["prior", "sample", str(prior), "--n", "41", "--out", str(tmp_path / "g.png")])
    assert "--n: 1000000000000 samples is more than one grid holds" in _error(  # refused before the labels exist
        capsys, ["prior", "sample", str(prior), "--label", "3", "--n", "1000000000000", "--out",
                 str(tmp_path / "g.png")])
    assert not (tmp_path / "g.png").exists()


def test_progress_in_a_file_is_a_line_per_logged_row(exported, tmp_path, caplog, capsys):
    """Without a terminal (a job's log file) the bar would be carriage-return spam: a log line per row instead."""
    with caplog.at_level("INFO", logger="daps"):
        train_prior(PriorConfig(kind="ar", codes=str(exported["train"]), width=16, num_heads=2, num_layers=1,
                                steps=4, log_every=2, eval_every=4, out_dir=str(tmp_path / "p")))
    lines = [r.getMessage() for r in caplog.records if "steps/s" in r.getMessage()]
    assert [line.split("  ")[0] for line in lines] == ["prior ar: step 2/4", "prior ar: step 4/4"]
    assert "\r" not in capsys.readouterr().err
    caplog.clear()
    with caplog.at_level("INFO", logger="daps"):  # progress=false: neither bar nor lines
        train_prior(PriorConfig(kind="ar", codes=str(exported["train"]), width=16, num_heads=2, num_layers=1,
                                steps=4, log_every=2, eval_every=4, progress=False, out_dir=str(tmp_path / "q")))
    assert not [r for r in caplog.records if "steps/s" in r.getMessage()]


def test_a_resumed_prior_run_continues_the_streak_of_skipped_steps(tmp_path):
    """The final checkpoint of a run that ended in skipped steps carries their count: resumed with more steps,
    it stops where one uninterrupted run would have, not MAX_SKIPPED_STEPS later."""
    from types import SimpleNamespace

    from daps.checkpoint import load_training_state, resolve_checkpoint
    from daps.prior.run import MAX_SKIPPED_STEPS, run_steps, start_training
    from daps.train import TrainingDiverged

    model = torch.nn.Linear(3, 1)
    calls = itertools.count()

    def batch_loss() -> torch.Tensor:  # every step from the 16th on is non-finite
        loss = model(torch.ones(4, 3)).square().mean()
        return loss * math.nan if next(calls) >= 15 else loss

    def cfg(steps):
        return SimpleNamespace(steps=steps, grad_clip=1.0, log_every=5, eval_every=10**6, ckpt_every=10**6,
                               keep_checkpoints=2, progress=False, lr=0.1, weight_decay=0.0, seed=0)

    optimizer, generator, start, streak = start_training(model, cfg(20), None, torch.device("cpu"), tmp_path)
    run_steps(tmp_path, model, optimizer, generator, {}, cfg(20), start, batch_loss, dict, "test", streak)
    ckpt = resolve_checkpoint(tmp_path)
    assert load_training_state(ckpt)["skipped_streak"] == 5
    optimizer, generator, start, streak = start_training(model, cfg(200), ckpt, torch.device("cpu"), tmp_path)
    assert (start, streak) == (20, 5)
    stops = f"not finite for {MAX_SKIPPED_STEPS} steps in a row \\(up to step 65\\)"  # 15 + 50
    with pytest.raises(TrainingDiverged, match=stops):
        run_steps(tmp_path, model, optimizer, generator, {}, cfg(200), start, batch_loss, dict, "test", streak)


def test_a_tokenizer_with_other_codes_is_refused_naming_v_and_t(trained_run):
    from daps.codes import load_code_tokenizer

    model = load_model(trained_run)
    V, T = model.vocab_size, model.input_spec.num_tokens
    for meta in ({"vocab_size": V, "num_tokens": T + 1}, {"vocab_size": V + 1, "num_tokens": T}):
        with pytest.raises(ValueError, match=f"\\(daps on mnist5k\\) has V={V}, T={T}; the prior's codes have V="):
            load_code_tokenizer(trained_run, meta, torch.device("cpu"), "the prior's codes")
    # a header that says what made the codes: the message names both (a motion policy given an image run)
    made = {"vocab_size": 1024, "num_tokens": 64, "method": "fsq", "dataset": "lafan1-h1"}
    with pytest.raises(ValueError, match="V=1024, T=64, from a fsq tokenizer of lafan1-h1$"):
        load_code_tokenizer(trained_run, made, torch.device("cpu"), "the policy's codes")
    origin = load_code_tokenizer(trained_run, {"vocab_size": V, "num_tokens": T}, torch.device("cpu"), "x")[1]
    assert Path(origin["checkpoint"]).is_dir()


def test_held_out_codes_of_the_training_split_are_warned(trained_run, exported, tmp_path, caplog, single_thread):
    other_draw = tmp_path / "train-seed4.safetensors"
    save_codes(export_codes(trained_run, "train", samples_per_input=1, seed=4, max_inputs=50), other_draw)
    with caplog.at_level("WARNING"):
        assert main(["prior", "train", str(exported["train"]), "--out", str(tmp_path / "p"), "--val-codes",
                     str(other_draw), "steps=2", "width=16", "num_heads=2", "progress=false"]) == 0
    assert "are codes of the training split" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert main(["prior", "train", str(exported["train"]), "--out", str(tmp_path / "q"), "--val-codes",
                     str(exported["test"]), "steps=2", "width=16", "num_heads=2", "progress=false"]) == 0
    assert "training split" not in caplog.text


def test_prior_curves_put_one_unit_on_their_axis(tmp_path, monkeypatch):
    """A likelihood model's training loss (nats) is drawn in bits beside its held-out bits; a dfm prior's losses
    stay in nats."""
    import math

    import daps.prior.run as run_mod

    drawn = {}

    class Axes:
        def plot(self, x, y, *args, label="", **style):  # style: a lone point's marker (daps.plots.plot_line)
            drawn[label] = list(y)

        def __getattr__(self, name):
            return lambda *a, **k: drawn.setdefault(name, a)

    class Fig:
        def tight_layout(self):
            pass

    class Plt:
        def subplots(self, **kwargs):
            return Fig(), Axes()

    monkeypatch.setattr("daps.plots._pyplot", lambda: Plt())
    monkeypatch.setattr("daps.plots.save_figure", lambda fig, path, dpi: None)
    rows = [{"split": "train", "step": 1, "loss": math.log(2) * 3}, {"split": "val", "step": 1, "bits_per_token": 3.5}]
    run_mod.save_prior_curves(rows, tmp_path / "c.png", "ar")
    assert drawn["train loss (bits/token)"] == [pytest.approx(3.0)] and drawn["set_ylabel"] == ("bits/token",)
    drawn.clear()
    rows = [{"split": "train", "step": 1, "loss": 2.0}, {"split": "val", "step": 1, "dfm_loss": 2.5}]
    run_mod.save_prior_curves(rows, tmp_path / "c.png", "dfm")
    assert drawn["train loss (nats/token)"] == [2.0] and drawn["set_ylabel"] == ("nats/token",)


def test_the_masked_nll_bound_of_the_exact_posterior_is_the_data_entropy(monkeypatch):
    """With the exact posterior p(x_1 | x_t) of a correlated law over 3 tokens, the masked-diffusion bound that
    prior eval reports equals the codes' negative log-likelihood (the any-order chain rule), to the noise of the
    times and the masks. The training loss on all tokens (dfm_loss) is not a likelihood: it is far below it, so a
    bound computed without the 1 / (1 - t) weight of the masked tokens would fail here."""
    from daps.prior.run import evaluate_prior

    v, t_len = 3, 3
    seqs = torch.tensor(list(itertools.product(range(v), repeat=t_len)))  # (27, 3)
    pi = torch.rand(27, generator=torch.Generator().manual_seed(0)) ** 4
    pi[[0, 13, 26]] += 2.0
    pi = pi / pi.sum()
    model = DFMPrior(t_len, v, 1, width=8, num_layers=1, num_heads=1, source="mask")
    monkeypatch.setattr(model, "forward", lambda xt, t, labels: _joint_posterior(pi, seqs, xt, t, "mask"))
    draw = torch.multinomial(pi, 20_000, replacement=True, generator=torch.Generator().manual_seed(1))
    codes = seqs[draw]
    nll = float(-pi[draw].log().mean()) / t_len / math.log(2)  # bits per token of these very codes
    out = evaluate_prior(model, codes, torch.zeros(len(codes), dtype=torch.long))
    assert out["nll_bound_bits_per_token"] == pytest.approx(nll, rel=0.01), (out, nll)  # measured +0.6 %
    assert out["dfm_loss"] / math.log(2) < 0.8 * nll
    uniform = DFMPrior(t_len, v, 1, width=8, num_layers=1, num_heads=1, source="uniform")
    monkeypatch.setattr(uniform, "forward", lambda xt, t, labels: _joint_posterior(pi, seqs, xt, t, "uniform"))
    assert "nll_bound_bits_per_token" not in evaluate_prior(uniform, codes[:500], torch.zeros(500, dtype=torch.long))


def test_the_uniform_sources_training_loss_is_no_bound_on_the_entropy(monkeypatch):
    """docs/priors.md: ``dfm_loss`` is not comparable with a likelihood. With the uniform source and the exact
    posterior of a sticky two-state Markov chain over 8 tokens it comes out above the codes' entropy (with the mask
    source, below it: the test above)."""
    from daps.prior.run import evaluate_prior

    t_len = 8
    seqs = torch.tensor(list(itertools.product(range(2), repeat=t_len)))  # (256, 8)
    stays = (seqs[:, 1:] == seqs[:, :-1]).sum(-1)
    pi = 0.5 * 0.95**stays * 0.05 ** (t_len - 1 - stays)
    entropy = float(-(pi * pi.log()).sum()) / t_len / math.log(2)  # 0.376 bits per token
    model = DFMPrior(t_len, 2, 1, width=8, num_layers=1, num_heads=1, source="uniform")
    monkeypatch.setattr(model, "forward", lambda xt, t, labels: _joint_posterior(pi, seqs, xt, t, "uniform"))
    codes = seqs[torch.multinomial(pi, 4000, replacement=True, generator=torch.Generator().manual_seed(0))]
    loss_bits = evaluate_prior(model, codes, torch.zeros(4000, dtype=torch.long))["dfm_loss"] / math.log(2)
    assert loss_bits > 1.2 * entropy, (loss_bits, entropy)  # 0.50 against 0.38 bits


@pytest.mark.parametrize("t_len, codes_n, rel", [(16, 4000, 0.03), (64, 8000, 0.06)])
def test_the_masked_nll_bound_is_unbiased_where_the_integrand_sits_near_t_zero(monkeypatch, t_len, codes_n, rel):
    """Codes of T equal tokens (4 equiprobable sequences: log2(4) / T bits per token): the bound's integrand is
    (1 - t)^(T - 1) times a constant, a mass of width 1 / T at t = 0. Times drawn uniformly in each stratum estimate
    it without bias (measured +0.2 % at T = 16, -3 % at T = 64); the midpoint rule at 8 fixed times read 0.86 and
    0.14 of it."""
    from daps.prior.run import evaluate_prior

    v = 4
    seqs = torch.arange(v)[:, None].repeat(1, t_len)
    pi = torch.full((v,), 1 / v)
    model = DFMPrior(t_len, v, 1, width=8, num_layers=1, num_heads=1, source="mask")
    monkeypatch.setattr(model, "forward", lambda xt, t, labels: _joint_posterior(pi, seqs, xt, t, "mask"))
    codes = seqs[torch.randint(0, v, (codes_n,), generator=torch.Generator().manual_seed(0))]
    out = evaluate_prior(model, codes, torch.zeros(codes_n, dtype=torch.long))
    assert out["nll_bound_bits_per_token"] == pytest.approx(math.log2(v) / t_len, rel=rel), out


def test_dfm_prior_learns_a_synthetic_code_distribution(tmp_path, monkeypatch, single_thread):
    """A masked-source DFM prior trained end to end on codes of two known laws over 3 tokens of 3 symbols: its
    samples follow each class's law, and its held-out bound approaches the codes' true entropy (an untrained one is
    far above it: the negative control). Its training loop drops the label for label_dropout of the examples."""
    from daps.prior.run import build_prior, evaluate_prior, load_prior

    v, t, classes = 3, 3, 2
    g = torch.Generator().manual_seed(0)
    seqs = torch.tensor(list(itertools.product(range(v), repeat=t)))  # (27, 3)
    truth = torch.rand(classes, 27, generator=g) ** 6
    truth[0, [0, 13, 26]] += 1.0  # class 0: tokens that agree; class 1: another law
    truth[1, [5, 7, 19]] += 1.0
    truth = truth / truth.sum(-1, keepdim=True)
    path, codes, labels, draws = _synthetic_codes(truth, seqs, tmp_path, g)
    cfg = PriorConfig(kind="dfm", source="mask", codes=str(path), steps=2000, batch_size=256, width=32, num_heads=2,
                      num_layers=2, lr=3e-3, label_dropout=0.2, eval_every=2000, ckpt_every=2000, euler_steps=16,
                      progress=False, out_dir=str(tmp_path / "prior"))
    seen = _record_training_labels(monkeypatch)
    run = train_prior(cfg)
    dropped = float((torch.cat(seen) == classes).float().mean())
    assert dropped == pytest.approx(0.2, abs=0.01)  # 512,000 labels; 0 if the setting were ignored
    model, _, _ = load_prior(run)
    entropy = float(-(truth * truth.log()).sum(-1).mean()) / t / math.log(2)  # bits per token, classes alike

    def tv(prior) -> float:
        total = 0.0
        for y in range(classes):
            out = prior.generate(torch.full((8000,), y), 1.0, 1.0, torch.Generator().manual_seed(y), num_steps=64)
            freq = torch.bincount((out * torch.tensor([9, 3, 1])).sum(-1), minlength=27).float() / len(out)
            total += float((freq - truth[y]).abs().sum() / 2)
        return total / classes

    held_out = seqs[torch.stack([torch.multinomial(truth[y], 1, generator=g)[0] for y in labels.tolist()])]
    bound = evaluate_prior(model, held_out, labels)["nll_bound_bits_per_token"]
    untrained = build_prior(cfg, codes.meta)
    # the training sample is 0.027 from the laws (its own noise); trained here: 0.055 and 1 % above the entropy
    assert tv(model) < 0.08 and bound == pytest.approx(entropy, rel=0.05), (tv(model), bound, entropy)
    assert evaluate_prior(untrained, held_out, labels)["nll_bound_bits_per_token"] > 1.2 * entropy


def test_the_dfm_network_reads_the_time_and_the_label():
    """adaLN-Zero starts the network blind to (t, y) (its modulations are zero); with every weight drawn at random
    its output moves with t at a fixed label and with the label at a fixed t. Conditioning dropped from the network
    (the time, or the label) fails here, where a mask-source learning test may not notice (with the mask source the
    time can be read off the number of masked tokens)."""
    model = DFMPrior(6, 5, 3, width=16, num_layers=1, num_heads=2, source="uniform")
    torch.manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.3)
    xt = torch.randint(0, 5, (4, 6), generator=torch.Generator().manual_seed(1))
    t, y = torch.full((4,), 0.2), torch.zeros(4, dtype=torch.long)
    base = model(xt, t, y)
    assert (model(xt, torch.full((4,), 0.7), y) - base).abs().max() > 1e-2
    assert (model(xt, t, torch.ones(4, dtype=torch.long)) - base).abs().max() > 1e-2


def test_dfm_training_times_are_uniform(monkeypatch):
    """The training loss draws t ~ U[0, 1) per example: over 4,000 examples the empirical law is within the
    Kolmogorov-Smirnov distance of a uniform sample (0.019 measured; 0.027 is the 0.1 % critical value)."""
    import daps.prior.nets as nets

    drawn = []
    real = nets.corrupt

    def recording(codes, t, *args):
        drawn.append(t.clone())
        return real(codes, t, *args)

    monkeypatch.setattr(nets, "corrupt", recording)
    model = DFMPrior(4, 5, 2, width=8, num_layers=1, num_heads=1, source="uniform")
    codes = torch.randint(0, 5, (4000, 4), generator=torch.Generator().manual_seed(0))
    model.loss(codes, torch.zeros(4000, dtype=torch.long), torch.Generator().manual_seed(1))
    t = torch.cat(drawn).sort().values.double()
    n = len(t)
    ks = float(torch.maximum(torch.arange(1, n + 1) / n - t, t - torch.arange(n) / n).max())
    assert n == 4000 and ks < 0.027, ks


@pytest.mark.parametrize("source", ["uniform", "mask"])
def test_dfm_loss_tells_the_network_the_time_its_tokens_were_corrupted_at(source, monkeypatch):
    """The loss corrupts each example at its time t and gives the network that same t: the share of tokens kept
    follows t (plus, with the uniform source, the 1/V of the others that land on themselves). Giving the network
    1 - t, or corrupting at another time, breaks it."""
    v, t_len, n = 4, 256, 400
    model = DFMPrior(t_len, v, 1, width=8, num_layers=1, num_heads=1, source=source)
    seen = {}

    def recording(xt, t, labels):
        seen.update(xt=xt, t=t)
        return torch.zeros(*xt.shape, v, requires_grad=True)

    monkeypatch.setattr(model, "forward", recording)
    codes = torch.randint(v, (n, t_len), generator=torch.Generator().manual_seed(0))
    model.loss(codes, torch.zeros(n, dtype=torch.long), torch.Generator().manual_seed(1))
    kept = (seen["xt"] == codes).float().mean(-1)  # (n,)
    expected = seen["t"] + (1 - seen["t"]) / v if source == "uniform" else seen["t"]
    assert float((kept - expected).abs().mean()) < 0.03
    assert float(seen["t"].min()) < 0.05 and float(seen["t"].max()) > 0.95  # t ~ U[0, 1)


def test_a_continuous_tokenizer_is_named_as_such(tmp_path, tiny_overrides_for, single_thread):
    """A Gaussian VAE run given as the tokenizer of codes: said to have continuous latents, not 'V=None'."""
    from daps.codes import load_code_tokenizer

    run = tmp_path / "vae"
    assert main(["train", "--method", "vae", *tiny_overrides_for("vae"), "train.steps=2",
                 f"train.out_dir={run}"]) == 0
    with pytest.raises(UserError) as err:
        load_code_tokenizer(run, {"vocab_size": 16, "num_tokens": 4}, torch.device("cpu"), "the prior's codes")
    assert "a vae run with continuous latents, not discrete codes" in str(err.value)
    assert "None" not in str(err.value)


def test_settings_that_cannot_be_built_leave_the_prior_they_would_replace(exported, tmp_path, monkeypatch):
    """``prior train --overwrite`` with settings whose network fails to build (here: a stand-in build that raises,
    as an allocation of width=1e8 does) leaves the existing prior as it was. Fails on: the folder emptied first."""
    import daps.prior.run as prior_run

    prior = tmp_path / "prior"
    tiny = ["width=16", "num_heads=2", "num_layers=1", "batch_size=16", "ckpt_every=2", "eval_every=2",
            "progress=false", "steps=2"]
    assert main(["prior", "train", str(exported["train"]), "--out", str(prior), *tiny]) == 0
    before = sorted(p.relative_to(prior) for p in prior.rglob("*"))

    def cannot_build(*args, **kwargs):
        raise MemoryError("stand-in: can't allocate memory")

    monkeypatch.setattr(prior_run, "build_prior", cannot_build)
    assert main(["prior", "train", str(exported["train"]), "--out", str(prior), "--overwrite", *tiny]) == 2
    assert sorted(p.relative_to(prior) for p in prior.rglob("*")) == before


@pytest.mark.parametrize("bad", [{"vocab_size": "x"}, {"vocab_size": None}, {"class_names": 3},
                                 {"num_tokens": "two"}])
def test_a_codes_header_with_values_of_the_wrong_type_is_one_user_error(tmp_path, bad):
    """load_codes promises a UserError naming the file for a foreign or inconsistent file; a header whose
    vocab_size / num_tokens is not a number or whose class_names is not a list raised ValueError / TypeError
    (``daps prior train`` then showed a traceback and exited with 1)."""
    from safetensors.torch import save_file

    header = {"format": 1, "vocab_size": 4, "num_tokens": 2, "class_names": ["a", "b"], **bad}
    path = tmp_path / "c.safetensors"
    save_file({"codes": torch.zeros(3, 1, 2, dtype=torch.long), "labels": torch.zeros(3, dtype=torch.long)},
              str(path), metadata={"daps_codes": json.dumps(header)})
    with pytest.raises(UserError, match=str(path)):
        load_codes(path)


def test_a_failed_codes_write_keeps_the_earlier_file(tmp_path, monkeypatch):
    """save_codes writes a temporary and renames it: a write that fails half way (disk full, Ctrl-C) leaves the
    codes file that was there, and no temporary."""
    import daps.codes as codes_mod

    meta = {"format": 1, "vocab_size": 4, "num_tokens": 2, "class_names": ["a"]}
    codes = CodeSet(torch.zeros(2, 1, 2, dtype=torch.long), torch.zeros(2, dtype=torch.long), meta)
    path = save_codes(codes, tmp_path / "c.safetensors")
    before = path.read_bytes()

    def failing(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(codes_mod, "save_file", failing)
    with pytest.raises(OSError, match="disk full"):
        save_codes(codes, path, overwrite=True)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["c.safetensors"]


def test_inconsistent_codes_are_refused_before_anything_is_written(tmp_path):
    meta = {"format": 1, "vocab_size": 4, "num_tokens": 2, "class_names": ["a"]}
    bad = CodeSet(torch.full((2, 1, 2), 4, dtype=torch.long), torch.zeros(2, dtype=torch.long), meta)  # code 4 = V
    with pytest.raises(UserError, match=r"the codes to save: codes outside \[0, 4\)"):
        save_codes(bad, tmp_path / "c.safetensors")
    assert os.listdir(tmp_path) == []


def test_a_codes_file_of_another_format_is_refused_by_name(tmp_path):
    from safetensors.torch import save_file

    header = {"format": 2, "vocab_size": 4, "num_tokens": 2, "class_names": ["a"]}
    path = tmp_path / "new.safetensors"
    save_file({"codes": torch.zeros(2, 1, 2, dtype=torch.long), "labels": torch.zeros(2, dtype=torch.long)},
              str(path), metadata={"daps_codes": json.dumps(header)})
    with pytest.raises(UserError, match="codes format 2, this daps reads format 1"):
        load_codes(path)



def test_zero_samples_per_input_is_one_user_error(trained_run):
    """K = 0 draws would reach torch.stack([]) (a RuntimeError: a traceback from export-codes)."""
    with pytest.raises(UserError, match="--samples-per-input must be at least 1, got 0"):
        export_codes(trained_run, "test", samples_per_input=0)


def test_a_tokenizer_moved_since_the_codes_were_made_is_named_with_the_way_out(copy_run, tmp_path, capsys,
                                                                             tiny_overrides):
    """The codes record their tokenizer's path; once that run is moved, sampling said only "no checkpoint found at
    RUN/checkpoints/step_N (expected a run folder with checkpoints/latest)", not that --tokenizer names it."""
    run = copy_run("tokenizer")
    codes, prior = tmp_path / "c.safetensors", tmp_path / "prior"
    save_codes(export_codes(run, "test"), codes)
    assert main(["prior", "train", str(codes), "--out", str(prior), "steps=2", "width=16", "num_heads=2",
                 "progress=false"]) == 0
    moved = run.rename(tmp_path / "moved")
    err = _error(capsys, ["prior", "sample", str(prior), "--n", "1", "--out", str(tmp_path / "s.png")])
    assert f"the tokenizer that made the prior's codes, {run.resolve()}" in err and "moved or deleted?" in err
    assert err.endswith("pass its run folder at its new place as --tokenizer RUN (RUN/checkpoints/step_00000006 if the "
                        "run has trained on since)") and not (tmp_path / "s.png").exists()
    assert main(["prior", "sample", str(prior), "--n", "1", "--tokenizer", str(moved), "--out",
                 str(tmp_path / "s.png")]) == 0
    moved.rename(run)  # back in place, and trained on: the codes' checkpoint is gone from it
    assert main(["train", *tiny_overrides, "train.steps=9", "train.keep_checkpoints=1", f"train.out_dir={run}",
                 "--resume"]) == 0
    err = _error(capsys, ["prior", "sample", str(prior), "--n", "1", "--out", str(tmp_path / "t.png")])
    assert f"step_00000006, is no longer in its run {run.resolve()} (removed as the run trained on" in err


@pytest.mark.parametrize("kind", ["ar", "dfm"])
def test_generate_refuses_bad_arguments_with_one_message_naming_them(kind):
    """``daps.prior.generate`` (public API) with labels out of range, of a float dtype, 2-D or on another device, or a
    NaN temperature, said nothing useful (an embedding's index error, NaN codes) or sampled garbage; the null label
    (``num_classes``) is accepted: it samples unconditionally."""
    from daps.prior import ARPrior, DFMPrior, generate

    net = ARPrior if kind == "ar" else DFMPrior
    model = net(num_tokens=3, vocab_size=5, num_classes=2, width=8, num_layers=1, num_heads=2)
    g = torch.Generator().manual_seed(0)
    codes = generate(model, torch.tensor([0, 1, 2]), 1.5, 1.0, g, 2)
    assert codes.shape == (3, 3) and int(codes.min()) >= 0 and int(codes.max()) < 5
    for labels, words in ((torch.tensor([0, 3]), "classes 0..1 or 2 (the null label), got values 0..3"),
                          (torch.tensor([-1]), "got values -1..-1"),
                          (torch.tensor([0.0, 1.0]), "1-D integer tensor (B,), got a torch.float32 tensor"),
                          (torch.tensor([[0, 1]]), "of shape (1, 2)"),
                          (torch.tensor([], dtype=torch.long), "non-empty"),
                          ([0, 1], "got list"),
                          (torch.tensor([0], device="meta"), "labels is on meta but the model is on cpu")):
        with pytest.raises(ValueError, match=re.escape(words)):
            generate(model, labels, 1.0, 1.0, g, 2)
    with pytest.raises(ValueError, match="temperature must be a positive number, got nan"):
        generate(model, torch.tensor([0]), 1.0, float("nan"), g, 2)
    with pytest.raises(ValueError, match="guidance must be a finite number, got inf"):
        generate(model, torch.tensor([0]), float("inf"), 1.0, g, 2)
    if kind == "dfm":
        with pytest.raises(ValueError, match="euler_steps must be at least 1, got 0"):
            generate(model, torch.tensor([0]), 1.0, 1.0, g, 0)
