"""The CPU's attention and softmax paths (``daps.nets.layers``): the same function as torch's kernels, chosen where
they are slower (benchmarks/attention.py).

References: torch's own ``softmax`` and ``scaled_dot_product_attention`` in float64, and a float64 attention written
out here; the choice of path is checked by recording which torch functions run.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from daps.nets import layers
from daps.nets.layers import PLAIN_ATTENTION_MAX_KEYS, SHORT_SOFTMAX_ROWS, attention, plain_attention, softmax


class _Calls(TorchFunctionMode):
    """Records the names of the torch functions called inside it."""

    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


def _reference(q, k, v, causal):
    """Float64 softmax attention written out: ``softmax(q k^T / sqrt(d) + causal mask) v``."""
    q, k, v = q.double(), k.double(), v.double()
    scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
    if causal:
        lq, lk = scores.shape[-2:]
        above = torch.arange(lk)[None, :] > torch.arange(lq)[:, None]
        scores = scores.masked_fill(above, float("-inf"))
    return torch.softmax(scores, -1) @ v


@pytest.mark.parametrize("length", [1, 2, 3, 8, 15, 16, 17, 64])
def test_softmax_is_torch_softmax_values_and_gradients(length):
    g = torch.Generator().manual_seed(length)
    x = torch.randn(5, 7, length, generator=g, dtype=torch.float64) * 4
    if length > 2:
        x[..., 1] = float("-inf")  # a masked key, as causal attention writes them
    x.requires_grad_(True)
    weights = torch.randn(5, 7, length, generator=g, dtype=torch.float64)
    ours = softmax(x)
    (grad,) = torch.autograd.grad((ours * weights).sum(), x)
    x_ref = x.detach().clone().requires_grad_(True)
    ref = torch.softmax(x_ref, -1)
    (grad_ref,) = torch.autograd.grad((ref * weights).sum(), x_ref)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-13)
    assert torch.allclose(ours.sum(-1), torch.ones(5, 7, dtype=torch.float64))


def test_softmax_takes_the_elementwise_path_only_on_short_cpu_rows():
    for length, fused in [(SHORT_SOFTMAX_ROWS - 1, False), (SHORT_SOFTMAX_ROWS, True)]:
        with _Calls() as calls:
            softmax(torch.randn(4, length))
        assert ("softmax" in calls.names) == fused, (length, calls.names)


def test_softmax_of_huge_scores_stays_finite():
    x = torch.tensor([[1e4, 1e4 - 1.0, -1e4], [-3e38, -3e38, -3e38]])  # float32; the second row all "masked"
    out = softmax(x)
    torch.testing.assert_close(out, torch.softmax(x, -1))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "q_shape, kv_shape, causal",
    [
        ((6, 2, 8, 16), (6, 2, 8, 16), False),
        ((6, 2, 8, 16), (6, 2, 8, 16), True),
        ((3, 4, 64, 16), (3, 4, 8, 16), False),
    ],
)
def test_plain_attention_is_attention(q_shape, kv_shape, causal):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(q_shape, generator=g, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(kv_shape, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    ours = plain_attention(q, k, v, causal)
    ref = _reference(q, k, v, causal)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, is_causal=causal), rtol=1e-10, atol=1e-12)
    weights = torch.randn(ours.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((ours * weights).sum(), (q, k, v))
    grads_ref = torch.autograd.grad((ref * weights).sum(), (q, k, v))
    for ours_g, ref_g in zip(grads, grads_ref):
        torch.testing.assert_close(ours_g, ref_g, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("causal", [False, True])
def test_bf16_attention_on_the_cpu_is_as_close_as_the_fused_kernel(causal):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(64, 4, 8, 16, generator=g) for _ in range(3))
    ref = _reference(q, k, v, causal)
    q16, k16, v16 = (t.bfloat16() for t in (q, k, v))
    with _Calls() as calls:
        ours = attention(q16, k16, v16, causal)
    assert "scaled_dot_product_attention" not in calls.names
    assert ours.dtype == torch.bfloat16
    fused = F.scaled_dot_product_attention(q16, k16, v16, is_causal=causal)
    err, err_fused = ((out.double() - ref).abs().max().item() for out in (ours, fused))
    assert err < 0.02 and err <= 1.5 * err_fused, (err, err_fused)


@pytest.mark.parametrize(
    "dtype, keys", [(torch.float32, 8), (torch.float64, 8), (torch.bfloat16, PLAIN_ATTENTION_MAX_KEYS + 1)]
)
def test_attention_keeps_the_fused_kernel_elsewhere(dtype, keys, monkeypatch):
    q, k, v = (torch.randn(2, 2, keys, 8, dtype=dtype) for _ in range(3))
    seen = []

    def fused(*args, **kwargs):
        seen.append(kwargs.get("is_causal"))
        return torch.zeros_like(args[0])

    monkeypatch.setattr(layers.F, "scaled_dot_product_attention", fused)
    assert torch.equal(attention(q, k, v, causal=True), torch.zeros_like(q))
    assert seen == [True]


def test_bf16_attention_up_to_the_key_limit_is_plain(monkeypatch):
    def fused(*args, **kwargs):
        raise AssertionError("the fused kernel ran")

    monkeypatch.setattr(layers.F, "scaled_dot_product_attention", fused)
    q, k, v = (torch.randn(1, 1, PLAIN_ATTENTION_MAX_KEYS, 8, dtype=torch.bfloat16) for _ in range(3))
    assert attention(q, k, v, causal=True).shape == q.shape


def test_bf16_transformer_step_keeps_float32_logits_close():
    """The encoder's teacher-forced log q under CPU bf16 autocast against float32: the plain path keeps it as close
    as the fused kernel did (measured at this size: 0.015 nats per token at most, the fused kernel 0.014; without the
    causal mask 0.85, with the scores 4x too large 1.06)."""
    from daps.nets.ar_encoder import ARTransformerEncoder

    torch.manual_seed(0)
    enc = ARTransformerEncoder((1, 8, 8), num_tokens=8, vocab_size=16, width=32, num_layers=1, num_heads=4,
                               mlp_ratio=2)
    x = (torch.rand(4, 1, 8, 8) > 0.5).float()
    codes = torch.randint(0, 16, (3, 4, 8))
    ref = enc.log_prob(x, codes)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = enc.log_prob(x, codes)
    assert low.dtype == torch.float32
    assert (low - ref).abs().max().item() < 0.1


# --------------------------------------------------------------------------------------------------
# One query per row: the sampling step's self-attention, with its own backward when a gradient is wanted


def _one_query_inputs(length, dtype=torch.float64, seed=0, rows=5, heads=3, dim=8):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(rows, heads, 1, dim, generator=g, dtype=dtype) * 2
    k, v = (torch.randn(rows, heads, length, dim, generator=g, dtype=dtype) for _ in range(2))
    return [t.requires_grad_(True) for t in (q, k, v)]


@pytest.mark.parametrize("length", [1, 2, 3, 8, 15, 16, 17, 64])
def test_one_query_attention_values_and_gradients_are_the_reference(length):
    """Against attention written out in float64 and differentiated by autograd (the independent reference); the
    custom backward runs (recorded) and gradcheck agrees with it by finite differences."""
    q, k, v = _one_query_inputs(length)
    ours = layers.one_query_attention(q, k, v)
    assert ours.grad_fn is not None and "OneQueryAttention" in type(ours.grad_fn).__name__
    ref = _reference(q, k, v, causal=False)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-14)
    weights = torch.randn(ours.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    grads = torch.autograd.grad((ours * weights).sum(), (q, k, v))
    grads_ref = torch.autograd.grad((ref * weights).sum(), (q, k, v))
    for ours_g, ref_g in zip(grads, grads_ref):
        torch.testing.assert_close(ours_g, ref_g, rtol=1e-10, atol=1e-12)
    small = _one_query_inputs(min(length, 4), rows=2, heads=2, dim=3)
    assert torch.autograd.gradcheck(layers.OneQueryAttention.apply, tuple(small))


def test_one_query_attention_takes_its_backward_only_when_a_gradient_is_wanted():
    """Without gradients, or with a mask (the static cache), the plain path; its values equal the custom path's
    bit for bit (the forward is the same operations), so sampling without gradients draws the same codes."""
    q, k, v = _one_query_inputs(6, dtype=torch.float32)
    with_grad = layers.one_query_attention(q, k, v)
    with torch.no_grad():
        without = layers.one_query_attention(q, k, v)
    detached = layers.one_query_attention(q.detach(), k.detach(), v.detach())
    assert without.grad_fn is None and detached.grad_fn is None
    assert torch.equal(with_grad.detach(), without) and torch.equal(without, detached)
    masked = torch.tensor([False, False, True, False, True, True])
    out = layers.one_query_attention(q, k, v, masked)
    assert "OneQueryAttention" not in type(out.grad_fn).__name__
    keep = ~masked
    torch.testing.assert_close(out, _reference(q, k[:, :, keep], v[:, :, keep], causal=False).float())


@pytest.mark.parametrize("length", [8, 17])
def test_one_query_attention_under_bf16_autocast(length):
    """Under CPU bf16 autocast, over rows shorter than 16 (the elementwise softmax) and longer (torch's softmax; on
    the CPU its weights stay bf16 here, the mixed case is tests/test_known_answers_19.py): gradients in their inputs'
    dtypes, within bf16 rounding of the float64 reference."""
    q, k, v = _one_query_inputs(length, dtype=torch.float32, seed=3, rows=32, heads=4, dim=16)
    x = [t.detach().bfloat16().requires_grad_(True) for t in (q, k, v)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layers.one_query_attention(*x)
        out.float().sum().backward()
    ref = _reference(q, k, v, causal=False)
    ref.sum().backward()
    assert out.dtype == torch.bfloat16
    for low, high in zip(x, (q, k, v)):
        assert low.grad.dtype == torch.bfloat16
        scale = high.grad.abs().max().item()
        assert (low.grad.double() - high.grad).abs().max().item() < 0.03 * scale
