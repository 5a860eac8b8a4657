"""Known answers for behaviour that a mutation sweep of the prior's training script (daps/prior/run.py) found no
test guarding: the held-out file's class names and the gradient clip and weight decay the training loop applies.
Each test names the slip it fails on; the references are hand-worked cases (one optimizer step of a linear model
whose update is known in closed form, tiny codes files written here).
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from daps.codes import CodeSet, load_codes, save_codes
from daps.errors import UserError

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny, latency-bound models


def _codes_file(path: Path, codes: list[list[int]], labels: list[int], class_names: list[str]) -> str:
    """A codes file of one code per input (K = 1) over V = 4, from the tokenizer ``x``."""
    meta = {"format": 1, "vocab_size": 4, "num_tokens": len(codes[0]), "class_names": class_names,
            "model_sha256": "x"}
    save_codes(CodeSet(torch.tensor(codes)[:, None], torch.tensor(labels), meta), path)
    return str(path)


def test_held_out_codes_with_other_class_names_are_refused(tmp_path):
    """``val_codes`` whose header names the classes ``a, c`` against the training file's ``a, b`` (same V, T and
    tokenizer) are refused naming class_names: label 1 would mean another class in each file. The same classes
    pass, and the held-out set is that file. Fails on: class_names left out of the compared header keys."""
    from daps.prior.run import PriorConfig, split_codes

    train = _codes_file(tmp_path / "train.safetensors", [[0, 1], [2, 3], [1, 1]], [0, 1, 0], ["a", "b"])
    same = _codes_file(tmp_path / "same.safetensors", [[3, 2], [0, 0]], [1, 0], ["a", "b"])
    other = _codes_file(tmp_path / "other.safetensors", [[3, 2], [0, 0]], [1, 0], ["a", "c"])
    _, val = split_codes(PriorConfig(codes=train, val_codes=same), load_codes(train))
    assert val.codes[:, 0].tolist() == [[3, 2], [0, 0]] and val.labels.tolist() == [1, 0]
    with pytest.raises(UserError, match=r"do not come from the tokenizer of .*train\.safetensors \(class_names "
                                        r"differs\)"):
        split_codes(PriorConfig(codes=train, val_codes=other), load_codes(train))


def _one_step(tmp_path: Path, grad_clip: float) -> torch.Tensor:
    """The change of the weights ``w (1, 3)`` (zero at the start) after one ``run_steps`` step of plain SGD at
    lr 1 on the loss ``10 * sum(w)``, whose gradient is ``(10, 10, 10)`` (norm 10 sqrt 3)."""
    from daps.prior.run import run_steps

    tmp_path.mkdir()
    model = torch.nn.Linear(3, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    cfg = SimpleNamespace(steps=1, grad_clip=grad_clip, log_every=1, eval_every=10**6, ckpt_every=10**6,
                          keep_checkpoints=1, progress=False)
    run_steps(tmp_path, model, torch.optim.SGD(model.parameters(), lr=1.0), torch.Generator(), {}, cfg, 0,
              lambda: model(torch.full((1, 3), 10.0)).sum(), dict, "test")
    return model.weight.detach()[0].clone()


def test_the_training_loop_clips_the_gradient_to_the_settings_norm(tmp_path):
    """One SGD step (lr 1) on a gradient of norm 10 sqrt 3 ~ 17.3 clipped to ``grad_clip`` 0.5 moves the weights by
    exactly 0.5 along -(1, 1, 1) / sqrt 3; a clip of 100, above the norm, leaves the gradient whole (a step of -10 in
    each weight). Fails on: a fixed clip of 1 in place of ``cfg.grad_clip`` (a step of norm 1 at 0.5; clipped to 1
    at 100)."""
    step = _one_step(tmp_path / "a", 0.5)
    assert float(step.norm()) == pytest.approx(0.5, rel=1e-5)
    assert torch.allclose(step, torch.full((3,), -0.5 / math.sqrt(3)), rtol=1e-5)
    assert torch.allclose(_one_step(tmp_path / "b", 100.0), torch.full((3,), -10.0), rtol=1e-6)


def test_a_code_models_optimizer_decays_the_weights_by_the_settings_weight_decay(tmp_path):
    """``start_training`` gives AdamW at ``lr`` with ``weight_decay``: one step on a zero gradient leaves Adam's own
    update at 0 and multiplies each weight by exactly 1 - lr * weight_decay = 1 - 0.1 * 0.5 = 0.95 (decoupled
    decay). Fails on: the optimizer built without the setting's weight_decay (weights unchanged)."""
    from daps.prior.run import run_steps, start_training

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in model.parameters()]
    cfg = SimpleNamespace(steps=1, grad_clip=1.0, log_every=1, eval_every=10**6, ckpt_every=10**6,
                          keep_checkpoints=1, progress=False, lr=0.1, weight_decay=0.5, seed=0)
    optimizer, generator, start, streak = start_training(model, cfg, None, torch.device("cpu"), tmp_path)
    assert (start, streak) == (0, 0)
    run_steps(tmp_path, model, optimizer, generator, {}, cfg, start,
              lambda: model(torch.ones(1, 3)).sum() * 0.0, dict, "test")
    for p, p0 in zip(model.parameters(), before):
        assert torch.allclose(p.detach(), p0 * 0.95, rtol=1e-6, atol=0)

