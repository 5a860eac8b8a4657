"""Optimizer wiring: clipping units per layer type, per-group settings, non-finite updates skipped, and the
batched step (fused AdamW, stacked unit-wise clip) against the per-parameter one."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from daps import get_preset, parse_overrides
from daps.functional import adaptive_grad_clip
from daps.methods import build_method
from daps.optim import Optimizers, OptimizerSpec, UnitClip, unit_dims
from daps.presets import configured


def test_unit_dims_per_layer_type():
    model = nn.ModuleDict(
        {
            "linear": nn.Linear(3, 4),
            "embed": nn.Embedding(10, 4),
            "conv": nn.Conv2d(2, 5, 3),
            "deconv": nn.ConvTranspose2d(2, 5, 4),
            "conv1d": nn.Conv1d(2, 5, 4),
            "deconv1d": nn.ConvTranspose1d(2, 5, 4),
            "norm": nn.LayerNorm(4),
        }
    )
    dims = unit_dims(model)
    assert dims[model["linear"].weight] == (1,)  # (out, in): one unit per output feature
    assert dims[model["embed"].weight] == (0,)  # (V, E): one unit per embedding feature
    assert dims[model["conv"].weight] == (1, 2, 3)  # (out, in, kh, kw)
    assert dims[model["deconv"].weight] == (0, 2, 3)  # (in, out, kh, kw)
    # 1-D kernels are 3-D in Flax, (k, in, out), reduced over axis 0: one unit per channel pair, over the taps.
    assert dims[model["conv1d"].weight] == (2,)  # (out, in, k)
    assert dims[model["deconv1d"].weight] == (2,)  # (in, out, k)
    assert len(dims) == 6  # LayerNorm weight and biases: whole-tensor norms (not listed)


def test_conv1d_clipping_units_are_channel_pairs():
    """Against a hand computation: a gradient on one (in, out) pair of a 1-D kernel is clipped to that pair's
    parameter norm, whatever the other pairs of the same output channel hold."""
    conv = nn.Conv1d(4, 3, 4)
    with torch.no_grad():
        conv.weight.fill_(0.01)  # every pair's norm over its 4 taps: 0.02
        conv.weight[1, 2] = 1.0  # a large pair in the same output channel as the gradient below
    grad = torch.zeros_like(conv.weight)
    grad[1, 0] = 0.5  # pair (out 1, in 0): norm 1.0, far above its parameter norm 0.02
    clipped = adaptive_grad_clip(grad, conv.weight, unit_dims(conv)[conv.weight], 1.0)
    assert torch.linalg.vector_norm(clipped[1, 0]).item() == pytest.approx(0.02, rel=1e-5)
    assert torch.equal(clipped[[0, 2]], grad[[0, 2]])


def test_vqvae_codebook_is_clipped_per_feature_like_an_embedding_table():
    cfg = configured("mnist", "vqvae", ["encoder.width=16", "encoder.num_heads=2", "encoder.vocab_size=16"])
    model = build_method(cfg, (1, 28, 28))
    assert unit_dims(model)[model.codebook] == (0,)  # (V, E): over the vocabulary, per feature


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


@pytest.mark.parametrize("batched", [True, False])
def test_non_finite_gradient_skips_only_that_optimizer(batched):
    a, b = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2))
    holder = nn.ParameterList([a, b])
    specs = [OptimizerSpec("a", [a], 0.1, 0.0), OptimizerSpec("b", [b], 0.1, 0.0)]
    opts = Optimizers(holder, specs, 0.0, batched)
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
    restored = Optimizers(holder, specs, 0.0, batched)  # the skip count travels with the checkpoint's state
    restored.load_state_dict(opts.state_dict())
    assert restored.skipped == {"a": 1, "b": 0}


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


def _layers() -> nn.Module:
    """One of every layer type the unit-wise clip distinguishes, plus a bare 2-d parameter (whole-tensor norm)."""
    torch.manual_seed(0)
    model = nn.ModuleDict(
        {
            "linear": nn.Linear(5, 4),
            "linear2": nn.Linear(5, 3),  # same fan-in as "linear": stacked with it
            "embed": nn.Embedding(6, 5),
            "conv": nn.Conv2d(2, 3, 3),
            "deconv": nn.ConvTranspose2d(3, 2, 2),
            "norm": nn.LayerNorm(5),
        }
    )
    model.register_parameter("table", nn.Parameter(torch.randn(3, 4)))
    return model


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_batched_unit_clip_equals_the_per_parameter_clip(scale):
    model = _layers()
    params = list(model.parameters())
    dims = unit_dims(model)
    grads = [torch.randn_like(p) * scale for p in params]
    expected = [adaptive_grad_clip(g, p, dims.get(p), 0.5) for g, p in zip(grads, params)]
    clipped = [g.clone() for g in grads]
    UnitClip(params, dims, 0.5)(params, clipped)
    for got, want in zip(clipped, expected):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    if scale == 1e3:  # the clip was active, so a wrong unit layout could not pass
        assert all(not torch.equal(g, c) for g, c in zip(grads, clipped))
        wrong = [g.clone() for g in grads]
        UnitClip(params, {}, 0.5)(params, wrong)  # every tensor as one unit
        assert any(not torch.allclose(w, e) for w, e in zip(wrong, expected))


def _train(batched: bool, steps: int, grad_scale: float) -> tuple[nn.Module, Optimizers]:
    model, cfg = daps_model()
    opts = Optimizers(model, model.optimizer_specs(1e-2, cfg.optim.grad_clip), cfg.optim.weight_decay, batched=batched)
    x = (torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(1)) > 0.8).float()
    generator = torch.Generator().manual_seed(2)
    for step in range(steps):
        out = model(x, step, generator=generator)
        opts.zero_grad()
        (out.loss * grad_scale).backward()
        opts.step()
    return model, opts


@pytest.mark.parametrize("grad_scale", [1.0, 1e4])
def test_batched_step_follows_the_per_parameter_step(grad_scale):
    """Fused AdamW + batched clipping = torch's AdamW after the per-parameter clip, over several DAPS steps."""
    batched, _ = _train(True, 4, grad_scale)
    reference, _ = _train(False, 4, grad_scale)
    start, _ = daps_model()
    moved = 0.0
    for (name, p), q, p0 in zip(batched.named_parameters(), reference.parameters(), start.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)
        moved = max(moved, (q - p0).abs().max().item())
    assert moved > 1e-2  # the parameters did move: equal because the updates agree, not because none happened


def test_per_parameter_checkpoints_load_into_the_batched_step():
    """Optimizer state saved by the per-parameter step (torch's default AdamW) resumes in the batched one."""
    model, opts = _train(False, 2, 1.0)
    state = opts.state_dict()
    batched = Optimizers(model, model.optimizer_specs(1e-2, 1.0), 1e-4, batched=True)
    batched.load_state_dict(copy.deepcopy(state))
    for opt in batched.optimizers.values():
        assert opt.param_groups[0]["fused"]
        for p_state in opt.state.values():
            assert p_state["step"].item() == 2 and p_state["step"].dtype == torch.float32
    reference = Optimizers(model, model.optimizer_specs(1e-2, 1.0), 1e-4, batched=False)
    reference.load_state_dict(copy.deepcopy(state))
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    saved = [p.detach().clone() for p in model.parameters()]
    batched.step()
    after_batched = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p, s in zip(model.parameters(), saved):
            p.copy_(s)
    reference.step()
    for p, q in zip(after_batched, model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("batched", [True, False])
def test_global_norm_clip(batched):
    w = nn.Parameter(torch.zeros(4))
    opts = Optimizers(nn.ParameterList([w]), [OptimizerSpec("a", [w], 0.1, 1.0, clip="global_norm")], 0.0, batched)
    w.grad = torch.tensor([30.0, 40.0, 0.0, 0.0])
    seen = {}
    original = opts.optimizers["a"].step

    def spy(*args, **kwargs):
        seen["grad"] = w.grad.clone()
        return original(*args, **kwargs)

    opts.optimizers["a"].step = spy
    assert opts.step() == {"a": 50.0}  # the raw norm, before clipping
    torch.testing.assert_close(seen["grad"], torch.tensor([0.6, 0.8, 0.0, 0.0]), rtol=1e-5, atol=0)


def test_batched_clip_takes_non_contiguous_layouts():
    """Channels-last conv weights and a transposed gradient: clipped like the per-parameter clip, no view error."""
    torch.manual_seed(0)
    model = nn.ModuleDict({"conv": nn.Conv2d(2, 3, 3).to(memory_format=torch.channels_last), "lin": nn.Linear(4, 3)})
    model.register_parameter("table", nn.Parameter(torch.randn(4, 3)))
    params = list(model.parameters())
    grads = [torch.randn_like(p) * 100 for p in params]
    table = next(i for i, p in enumerate(params) if p is model.table)
    grads[table] = (torch.randn(3, 4) * 100).t()  # (4, 3), not contiguous
    dims = unit_dims(model)
    expected = [adaptive_grad_clip(g, p, dims.get(p), 1.0) for g, p in zip(grads, params)]
    UnitClip(params, dims, 1.0)(params, grads)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=0)


def test_each_step_keeps_its_own_adamw_after_loading_the_others_state():
    """torch restores the saved fused flag; the per-parameter reference must stay unfused, and no skip flag is left
    on an optimizer for a later step to read."""
    model, batched = _train(True, 2, 1.0)
    assert not any(hasattr(opt, "found_inf") for opt in batched.optimizers.values())
    reference = Optimizers(model, model.optimizer_specs(1e-2, 1.0), 1e-4, batched=False)
    reference.load_state_dict(copy.deepcopy(batched.state_dict()))
    for opt in reference.optimizers.values():
        assert not opt.param_groups[0]["fused"]
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    reference.step()  # torch's per-parameter AdamW accepts the loaded state



@pytest.mark.parametrize("batched", [True, False])
def test_a_learning_rate_schedule_scales_each_optimizers_own_rate(batched):
    """scale_lr(f) sets every group's rate to f times its spec's rate (0.1 and 0.004 here), again from the spec at
    each call (not compounded), and the step moves by that rate. Fails on: the factor taken as the rate itself."""
    a, b = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(2))
    specs = [OptimizerSpec("a", [a], 0.1, 0.0), OptimizerSpec("b", [b], 0.004, 0.0)]
    opts = Optimizers(nn.ParameterList([a, b]), specs, 0.0, batched)
    opts.scale_lr(0.5)
    opts.scale_lr(0.25)
    assert [opts.optimizers[n].param_groups[0]["lr"] for n in ("a", "b")] == pytest.approx([0.025, 0.001])
    a.grad, b.grad = torch.ones(3), torch.ones(2)
    opts.step()  # Adam's first step moves each coordinate by the rate (its normalized gradient is 1)
    assert torch.allclose(a.detach(), torch.full((3,), -0.025), rtol=0, atol=1e-6)
    assert torch.allclose(b.detach(), torch.full((2,), -0.001), rtol=0, atol=1e-7)


@pytest.mark.parametrize("batched", [True, False])
def test_an_optimizers_gradient_norm_is_over_all_its_parameters_together(batched):
    """Two tensors with gradients (3, 0) and (4,): the optimizer's norm (logged as grad_norm_*, and the one the
    global-norm clip divides by) is 5, the norm of all its gradients together, and clipping to 1 scales both by 1/5.
    Fails on: the sum of the per-tensor norms (7) taken as the group's norm."""
    v, w = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(1))
    opts = Optimizers(nn.ParameterList([v, w]), [OptimizerSpec("a", [v, w], 0.1, 1.0, clip="global_norm")], 0.0,
                      batched)
    v.grad, w.grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])
    seen = {}
    original = opts.optimizers["a"].step

    def spy(*args, **kwargs):
        seen["grads"] = (v.grad.clone(), w.grad.clone())
        return original(*args, **kwargs)

    opts.optimizers["a"].step = spy
    assert opts.step() == {"a": pytest.approx(5.0)}
    torch.testing.assert_close(seen["grads"][0], torch.tensor([0.6, 0.0]), rtol=1e-5, atol=0)
    torch.testing.assert_close(seen["grads"][1], torch.tensor([0.8]), rtol=1e-5, atol=0)
