"""Mutation sweep 20: known answers for the change that cut the kernels of a DAPS step (969c5d4: the sampling loop's
in-place rows, ``sample_probs``'s ``uniforms=`` / ``out=``, the one-token step's fused q/k/v weight, the encoder's
conditioning computed once), found no test guarding: a NaN row drawn past the last code (the clamp out of place, so
the row written in place keeps the unclamped index, or the clamp at V), the sampler rebuilding each layer's fused
q/k/v weight at every position instead of once per call or copying the previous codes without gradients, and DAPS
with resampling recomputing the encoder's memory for its teacher-forced pass. Each test names the slip it fails on
(each checked against its mutant).
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from daps.config_io import applicable_overrides, parse_overrides
from daps.functional import sample_probs
from daps.methods import build_method
from daps.nets.ar_encoder import ARTransformerEncoder
from daps.nets.sampling import sample_autoregressive
from daps.presets import get_preset

TINY = ["encoder.width=16", "encoder.num_heads=2", "encoder.vocab_size=16", "encoder.num_tokens=4",
        "decoder.embed_dim=8", "decoder.hidden=16,16", "daps.num_samples=4", "train.batch_size=8"]


class Results(TorchDispatchMode):
    """The aten operations dispatched inside it, by name, with the shape of their (first) result."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, tuple[int, ...] | None]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
        self.calls.append((func.__name__.split(".")[0], shape))
        return out


def test_a_nan_row_draws_the_last_code_in_the_token_returned_and_in_the_row_written():
    """A row of NaN probabilities (a diverged encoder) draws the last code V - 1, never V: in the token
    ``sample_probs`` returns, in the ``out`` row it writes in place (the same memory), and in the codes of
    ``sample_autoregressive``, so the decoder's embedding still gets an index in range and the NaN shows in the loss.
    Fails on: the clamp out of place (``clamp_max``: the written row keeps V) or at V (``clamp_max_(V)``)."""
    nan = float("nan")
    probs = torch.tensor([[0.2, nan, 0.3], [0.5, 0.5, 0.0], [nan, nan, nan]])  # (3, V=3)
    uniforms = torch.full((3, 1), 0.5)
    out = torch.full((3,), -1)
    token = sample_probs(probs, uniforms=uniforms, out=out)
    assert token.tolist() == [2, 1, 2] and out.tolist() == [2, 1, 2] and token.data_ptr() == out.data_ptr()
    assert sample_probs(probs, uniforms=uniforms).tolist() == [2, 1, 2]

    b, k, t, v = 2, 3, 4, 5
    logits = torch.randn(t, v, generator=torch.Generator().manual_seed(0))  # (T, V) by position
    logits[1] = nan

    def step(indices: torch.Tensor, pos: int) -> torch.Tensor:
        return logits[pos].expand(indices.shape[0], v)  # (B*K, V)

    s = sample_autoregressive(step, b, k, t, torch.device("cpu"), torch.Generator().manual_seed(1))
    assert s.indices.min() >= 0 and s.indices.max() == v - 1
    assert s.indices[..., 1].eq(v - 1).all() and s.token_log_q[..., 1].isnan().all()


def test_the_sampler_builds_each_layers_fused_q_k_v_weight_once_per_call():
    """``sample`` and ``sample_scored`` stack each decoder layer's q, k and v weights into the fused ``(3E, E)``
    weight once per call (``_cached_step``), not once per position: with 2 layers and T = 6, two stacks of that
    shape; without gradients each step reads the previous codes as a view of the sampler's row (no clone); the
    codes equal the recomputing sampler's. Fails on: ``_decode_one`` called without the prebuilt weights (each
    block's ``step`` rebuilds its weight: T stacks per layer), ``_previous_tokens`` cloning without gradients."""
    torch.manual_seed(0)
    width, heads, t = 16, 2, 6
    enc = ARTransformerEncoder((1, 12, 12), num_tokens=t, vocab_size=8, width=width, num_layers=2,
                               num_heads=heads, mlp_ratio=2).eval()
    x = torch.rand(2, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    fused = (heads, 3, width // heads, width)  # the stack before its (3E, E) view
    with Results() as ops:
        s = enc.sample(x, 3, torch.Generator().manual_seed(2))
    assert sum(shape == fused for name, shape in ops.calls if name == "stack") == 2
    assert ("clone", (6,)) not in ops.calls  # each step reads the previous codes (B*K,) as a view
    with Results() as ops:
        scored = enc.sample_scored(x, 3, torch.Generator().manual_seed(2))
    assert sum(shape == fused for name, shape in ops.calls if name == "stack") == 2
    reference = enc.sample(x, 3, torch.Generator().manual_seed(2), use_cache=False)
    assert torch.equal(s.indices, reference.indices) and torch.equal(scored.indices, reference.indices)


def test_resampled_daps_computes_the_encoder_memory_once_and_changes_no_value(monkeypatch):
    """DAPS with resampling (``daps.resample=2``) teacher-forces the m picked codes from the memory it sampled from
    (computed once, with gradients); the loss and every gradient equal those of the step that encodes the images
    again for the teacher-forced pass. Fails on: the resampled ``log_prob`` without ``conditioning`` (two image
    encoder passes)."""
    cfg = get_preset("mnist", "daps")
    cfg = parse_overrides(cfg, applicable_overrides(cfg, [*TINY, "daps.resample=2"]))
    torch.manual_seed(0)
    model = build_method(cfg, tuple(cfg.data.image_shape))
    x = (torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(3)) > 0.8).float()
    calls: Counter[str] = Counter()
    original = ARTransformerEncoder.memory

    def counted(self, *args, **kwargs):
        calls["memory"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ARTransformerEncoder, "memory", counted)
    params = [p for p in model.parameters() if p.requires_grad]
    out = model(x, 0, generator=torch.Generator().manual_seed(4))
    assert calls["memory"] == 1
    grads = torch.autograd.grad(out.loss, params, allow_unused=True)
    monkeypatch.setattr(ARTransformerEncoder, "conditioning", lambda self, x: None)
    calls.clear()
    again = model(x, 0, generator=torch.Generator().manual_seed(4))
    assert calls["memory"] == 2 and torch.equal(out.loss, again.loss)
    regrads = torch.autograd.grad(again.loss, params, allow_unused=True)
    assert any(g is not None for g in grads)
    for a, b in zip(grads, regrads):
        assert (a is None and b is None) or torch.equal(a, b)
