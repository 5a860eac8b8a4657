"""Optimizer wiring: clipping units per layer type, per-group settings, non-finite updates skipped."""

from __future__ import annotations

import torch
import torch.nn as nn

from daps import get_preset, parse_overrides
from daps.methods import build_method
from daps.optim import Optimizers, OptimizerSpec, unit_dims


def test_unit_dims_per_layer_type():
    model = nn.ModuleDict(
        {
            "linear": nn.Linear(3, 4),
            "embed": nn.Embedding(10, 4),
            "conv": nn.Conv2d(2, 5, 3),
            "deconv": nn.ConvTranspose2d(2, 5, 4),
            "norm": nn.LayerNorm(4),
        }
    )
    dims = unit_dims(model)
    assert dims[model["linear"].weight] == (1,)  # (out, in): one unit per output feature
    assert dims[model["embed"].weight] == (0,)  # (V, E): one unit per embedding feature
    assert dims[model["conv"].weight] == (1, 2, 3)  # (out, in, kh, kw)
    assert dims[model["deconv"].weight] == (0, 2, 3)  # (in, out, kh, kw)
    assert len(dims) == 4  # LayerNorm weight and biases: whole-tensor norms (not listed)


def daps_model():
    cfg = parse_overrides(get_preset("mnist"), ["encoder.width=16", "encoder.num_heads=2", "encoder.vocab_size=16"])
    torch.manual_seed(0)
    return build_method(cfg, (1, 28, 28)), cfg


def test_daps_groups_settings():
    model, cfg = daps_model()
    specs = {s.name: s for s in model.optimizer_specs(cfg.optim.lr, cfg.optim.grad_clip)}
    assert len(specs["eta"].params) == 1 and specs["eta"].params[0] is model.log_eta
    assert specs["eta"].grad_clip == 0 and specs["eta"].lr == 1e-3
    assert all(p is not model.log_eta for p in specs["vae"].params)
    assert len(specs["vae"].params) == len(list(model.parameters())) - 1
    opts = Optimizers(model, list(specs.values()), cfg.optim.weight_decay)
    for opt in opts.optimizers.values():
        group = opt.param_groups[0]
        assert group["betas"] == (0.9, 0.999) and group["eps"] == 1e-8 and group["weight_decay"] == 1e-4


def test_non_finite_gradient_skips_only_that_optimizer():
    a, b = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2))
    holder = nn.ParameterList([a, b])
    opts = Optimizers(holder, [OptimizerSpec("a", [a], 0.1, 0.0), OptimizerSpec("b", [b], 0.1, 0.0)], 0.0)
    a.grad, b.grad = torch.ones(3), torch.ones(2)
    opts.step()  # a normal step creates Adam state for both
    a_before, b_before = a.detach().clone(), b.detach().clone()
    state_before = {k: v.clone() for k, v in opts.optimizers["a"].state[a].items()}
    a.grad, b.grad = torch.tensor([1.0, float("nan"), 1.0]), torch.ones(2)
    norms = opts.step()
    assert torch.equal(a.detach(), a_before)  # skipped: parameters untouched ...
    for k, v in opts.optimizers["a"].state[a].items():
        assert torch.equal(v, state_before[k]), k  # ... and Adam's moments and step too
    assert not torch.equal(b.detach(), b_before)  # the other optimizer still stepped
    assert opts.skipped == {"a": 1, "b": 0}
    assert not torch.isfinite(torch.tensor(norms["a"]))


def test_clipping_is_applied_before_adam():
    """With clipping, a huge gradient on a unit moves that unit like a gradient of norm |W_unit|."""
    w = nn.Parameter(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))  # unit norms 5 and 0 (bound eps = 1e-3)
    layer = nn.Linear(2, 2, bias=False)
    layer.weight = w
    opts = Optimizers(layer, [OptimizerSpec("vae", [w], 0.1, 1.0)], 0.0)
    w.grad = torch.tensor([[300.0, 400.0], [0.0, 1.0]])
    seen = {}
    original = opts.optimizers["vae"].step

    def spy(*args, **kwargs):
        seen["grad"] = w.grad.clone()
        return original(*args, **kwargs)

    opts.optimizers["vae"].step = spy
    opts.step()
    torch.testing.assert_close(seen["grad"], torch.tensor([[3.0, 4.0], [0.0, 1e-3]]))
