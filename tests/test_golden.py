"""Golden-loss regression test: a pinned tiny configuration per method, trained for a few steps on CPU, must
log the same losses as when the values in ``golden_losses.json`` were recorded, so an accidental change of
the math (a sign, a schedule, the ESS target, a likelihood constant, a weight normalization) is caught.

Tolerance: float32 on CPU with one thread; summation order can differ across CPUs and torch builds by a few
ulps per operation, which stays far below ``RTOL`` / ``ATOL`` over these few steps, while the changes this test
is for move the logged values by percent or more.

When the math changes ON PURPOSE, regenerate the stored values and commit them with the change:

    DAPS_REGENERATE_GOLDEN=1 python -m pytest -q tests/test_golden.py

(the run rewrites ``tests/golden_losses.json`` and then skips; run it again without the variable to check).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from daps.methods import build_method
from daps.optim import Optimizers
from daps.presets import configured

GOLDEN = Path(__file__).with_name("golden_losses.json")
RTOL, ATOL = 1e-4, 1e-4
NUM_STEPS = 3
TINY = [
    "encoder.width=16", "encoder.num_heads=2", "encoder.vocab_size=16", "encoder.num_tokens=4",
    "decoder.embed_dim=8", "decoder.hidden=32,32", "daps.num_samples=4", "relaxed.num_rao_samples=5",
    "fsq.levels=4,3", "train.steps=100", "daps.init_eta=1.0",
]
# The logged scalars compared per method (the loss plus the terms that carry each method's math).
KEYS = {
    "daps": ("loss", "log_p", "log_q", "kl", "ess", "eta", "beta", "eta_loss"),
    "gumbel": ("loss", "log_p", "kl"),
    "grmck": ("loss", "log_p", "kl"),
    "fsq": ("loss", "log_p"),
    "reinforce": ("loss", "log_p", "log_q", "kl", "reward_std"),
    "ppo": ("loss", "log_p", "kl", "kl_old_new", "kl_coeff", "value_loss", "clip_frac"),
    "vqvae": ("loss", "log_p", "codebook_loss", "commitment_loss", "perplexity"),
    "vqvae-ema": ("loss", "log_p", "commitment_loss", "perplexity"),
}

pytestmark = pytest.mark.usefixtures("single_thread")


def run_pinned(method: str) -> list[dict[str, float]]:
    """``NUM_STEPS`` optimizer steps of the pinned tiny ``method`` on 16 fixed binary images; the logged values
    of each step (before its update)."""
    cfg = configured("mnist", method, TINY)
    torch.manual_seed(0)
    model = build_method(cfg, (1, 28, 28))
    x = (torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(1)) > 0.7).float()
    optimizers = Optimizers(model, model.optimizer_specs(3e-3, cfg.optim.grad_clip), cfg.optim.weight_decay)
    g = torch.Generator().manual_seed(2)
    rows = []
    for step in range(NUM_STEPS):
        out = model(x, step, generator=g)
        optimizers.zero_grad()
        out.loss.backward()
        optimizers.step()
        rows.append({k: float(out.logs[k]) for k in KEYS[method]})
    return rows


def test_stored_values_cover_every_pinned_method():
    stored = json.loads(GOLDEN.read_text())
    assert sorted(stored) == sorted(KEYS)
    for method, rows in stored.items():
        assert len(rows) == NUM_STEPS and all(sorted(r) == sorted(KEYS[method]) for r in rows), method


@pytest.mark.parametrize("method", sorted(KEYS))
def test_pinned_tiny_run_logs_the_stored_losses(method):
    rows = run_pinned(method)
    if os.environ.get("DAPS_REGENERATE_GOLDEN"):
        stored = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
        stored[method] = rows
        GOLDEN.write_text(json.dumps(dict(sorted(stored.items())), indent=1) + "\n")
        pytest.skip(f"regenerated {GOLDEN.name} for {method}")
    expected = json.loads(GOLDEN.read_text())[method]
    for step, (got, want) in enumerate(zip(rows, expected)):
        for key in KEYS[method]:
            assert got[key] == pytest.approx(want[key], rel=RTOL, abs=ATOL), (method, step, key, got[key], want[key])
