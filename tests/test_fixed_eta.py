"""``daps.eta_lr=0``: eta held at ``daps.init_eta`` (the ablation of the paper's ESS adaptation). The encoder's
update is the adaptive one's at the same eta; only eta stops moving, through training and resume."""

from __future__ import annotations

import json
import math

import pytest
import torch

from daps import get_preset, parse_overrides
from daps.errors import UserError
from daps.methods import build_method

TINY = ["encoder.width=16", "encoder.num_heads=2", "encoder.vocab_size=8", "encoder.num_tokens=3",
        "decoder.embed_dim=8", "decoder.hidden=16,16", "daps.num_samples=6", "daps.init_eta=0.7"]


def test_eta_lr_must_not_be_negative_and_zero_is_accepted():
    with pytest.raises(UserError, match=r"daps.eta_lr must be >= 0, got -0.001"):
        parse_overrides(get_preset("mnist"), ["daps.eta_lr=-1e-3"]).options.validate()
    parse_overrides(get_preset("mnist"), ["daps.eta_lr=0"]).options.validate()
    with pytest.raises(UserError, match=r"daps.init_eta must be positive"):
        parse_overrides(get_preset("mnist"), ["daps.init_eta=0"]).options.validate()


def test_a_fixed_eta_changes_only_eta_s_own_gradient(single_thread):
    """Same weights, same codes: the fixed and the learned eta give the same encoder and decoder gradients; the
    learned one alone has a gradient on log eta and an optimizer for it."""
    x = (torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    grads, models = {}, {}
    for eta_lr in ("0", "1e-3"):
        torch.manual_seed(0)
        model = build_method(parse_overrides(get_preset("mnist"), [*TINY, f"daps.eta_lr={eta_lr}"]), (1, 28, 28))
        samples = model.encoder.sample(x, 6, torch.Generator().manual_seed(2))
        model._objective(x, samples.indices, torch.tensor(0.3), samples.log_q, None)[0].backward()
        grads[eta_lr] = {n: p.grad for n, p in model.named_parameters() if n != "log_eta"}
        models[eta_lr] = model
    fixed, learned = models["0"], models["1e-3"]
    assert all(torch.equal(grads["0"][n], grads["1e-3"][n]) for n in grads["0"])
    assert fixed.log_eta.grad is None and not fixed.log_eta.requires_grad
    assert learned.log_eta.grad is not None and learned.log_eta.grad.abs().item() > 0
    assert [s.name for s in fixed.optimizer_specs(1e-3, 1.0)] == ["vae"]
    assert [s.name for s in learned.optimizer_specs(1e-3, 1.0)] == ["vae", "eta"]


@pytest.mark.usefixtures("offline", "no_plots")
def test_a_fixed_eta_run_holds_eta_trains_the_rest_and_resumes_exactly(tmp_path, tiny_overrides):
    from safetensors.torch import load_file

    from daps.train import train

    def run(name: str, eta_lr: str, stop_after: int = 0, resume: bool = False):
        overrides = [*tiny_overrides, "daps.init_eta=0.7", f"daps.eta_lr={eta_lr}", "train.steps=6",
                     "train.log_every=1", f"train.stop_after={stop_after}", f"train.out_dir={tmp_path / name}"]
        return train(parse_overrides(get_preset("mnist"), overrides), resume=resume)

    def final(folder):
        return load_file(str(folder / "checkpoints/step_00000006/model.safetensors"))

    def logged_etas(folder):
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        return [row["eta"] for row in rows if "eta" in row]

    fixed = run("fixed", "0")
    weights = final(fixed)
    assert torch.equal(weights["log_eta"], torch.tensor(math.log(0.7)))  # exactly the initial value, bit for bit
    etas = logged_etas(fixed)
    assert len(etas) == 6 and all(e == pytest.approx(0.7, rel=1e-6) for e in etas)
    # the same run with eta learned (fast, so that 6 steps show it): eta moves, so the checks above can fail
    learned = run("learned", "0.1")
    assert abs(final(learned)["log_eta"].item() - math.log(0.7)) > 0.1
    assert any(abs(e - 0.7) > 0.01 for e in logged_etas(learned))
    # the rest of the model trains under a fixed eta: its weights differ from a run stopped before any step
    start = run("start", "0", stop_after=1)
    first = load_file(str(start / "checkpoints/step_00000001/model.safetensors"))
    assert not torch.equal(first["encoder.head.weight"], weights["encoder.head.weight"])
    # and it resumes exactly
    resumed = run("start", "0", resume=True)
    again = final(resumed)
    assert all(torch.equal(weights[k], again[k]) for k in weights)
