"""Fewer operations per training step, the same values: the one-token decoder step's fused products, the
sampling loop's in-place rows, and the encoder's conditioning computed once per DAPS / REINFORCE step
(BENCHMARKS.md, "Kernels per step"). Each test names the change that would break it."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from daps.config_io import applicable_overrides, parse_overrides
from daps.methods import build_method
from daps.nets.ar_encoder import ARTransformerEncoder
from daps.nets.kv_cache import KVCache
from daps.nets.layers import Attention, DecoderBlock, add_projected
from daps.presets import get_preset

TINY = ["encoder.width=16", "encoder.num_heads=2", "encoder.vocab_size=16", "encoder.num_tokens=4",
        "decoder.embed_dim=8", "decoder.hidden=16,16", "daps.num_samples=4", "train.batch_size=8"]


class Ops(TorchDispatchMode):
    """The aten operations dispatched inside it, by name, with the shapes of their tensor arguments."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, list[tuple[int, ...]]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        shapes = [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]
        self.calls.append((func.__name__.split(".")[0], shapes))
        return func(*args, **(kwargs or {}))

    def count(self, *names: str) -> int:
        return sum(name in names for name, _ in self.calls)


def test_one_token_step_makes_q_k_v_in_one_product_and_adds_residuals_in_the_output_projections():
    """``DecoderBlock.step`` dispatches six matrix products (q/k/v; self-attention output; cross-attention query
    and output; the MLP's two), none of them followed by a separate residual addition but the MLP's, and gives the
    values of the same block computed the plain way. Fails on: q, k and v as three products (eight), a residual
    added after its projection (three additions)."""
    torch.manual_seed(0)
    n, width, heads, pos = 6, 16, 2, 2
    block = DecoderBlock(width, heads, mlp_ratio=2).eval()
    memory_kv = block.cross_attn.keys_values(torch.randn(3, 5, width))  # (B, h, P, d): 2 samples per input
    y = torch.randn(n, 1, width)
    keys = torch.randn(n, heads, 4, width // heads)
    cache = KVCache(keys.clone(), keys.clone().neg())
    with torch.no_grad(), Ops() as ops:
        out = block.step(y, memory_kv, 2, cache, pos)
    products = ops.count("mm", "addmm", "bmm", "baddbmm")
    assert ops.count("mm", "addmm") == 6, ops.calls
    assert [shapes for name, shapes in ops.calls if name == "mm"][0] == [(n, width), (width, 3 * width)]
    assert ops.count("add") == 1 and products == 8  # the MLP's residual; the two attention products
    # The plain way: three projections, the residuals added after the output projections.
    attn, a = block.self_attn, block.ln1(y)
    with torch.no_grad():
        q, k, v = (attn.split(layer(a)) for layer in (attn.q, attn.k, attn.v))  # (N, h, 1, d)
        ks = torch.cat([keys[:, :, :pos], k], 2)
        vs = torch.cat([keys.neg()[:, :, :pos], v], 2)
        weights = ((q @ ks.transpose(-2, -1)) / (width // heads) ** 0.5).softmax(-1)
        h = y + attn.o((weights @ vs).transpose(1, 2).reshape(n, 1, width))
        h = h + block.cross_attn.attend_grouped(block.ln2(h), *memory_kv, 2)
        expected = h + block.mlp(block.ln3(h))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(cache.k[:, :, pos : pos + 1], k) and torch.equal(cache.v[:, :, pos : pos + 1], v)


def test_fused_q_k_v_weight_is_head_by_head_and_its_views_flatten_without_a_copy():
    """``Attention.qkv_weight`` holds each head's q, k and v rows together, so that ``project_qkv``'s q, k and v equal
    the three projections and their (N, h) dimensions flatten as views (no copy before the attention's batched
    products). Fails on: the three weights stacked whole (q, k, v of one row then do not flatten as views)."""
    torch.manual_seed(1)
    attn = Attention(24, 3)
    x = torch.randn(5, 1, 24)
    q, k, v = attn.project_qkv(x)
    for got, layer in zip((q, k, v), (attn.q, attn.k, attn.v)):
        torch.testing.assert_close(got, attn.split(layer(x)))
        flat = got.reshape(5 * 3, 1, 8)
        assert flat.data_ptr() == got.data_ptr() and flat._base is not None  # a view of the product
    assert attn.project_qkv(x, attn.qkv_weight())[0].shape == (5, 3, 1, 8)


def test_residual_inside_the_projection_keeps_the_residual_dtype_under_autocast():
    """``add_projected`` is ``residual + layer(x)``: one ``addmm`` in float32, the plain two operations under bf16
    autocast, where the float32 residual stream stays float32 (addmm would round it to bf16), and with a layer that
    has a bias. Fails on: addmm under autocast (a bf16 result), a bias dropped."""
    torch.manual_seed(2)
    layer = torch.nn.Linear(8, 8, bias=False)
    residual, x = torch.randn(4, 3, 8), torch.randn(4, 3, 8)
    with Ops() as ops:
        out = add_projected(residual, x, layer)
    assert ops.count("addmm") == 1 and ops.count("add") == 0
    torch.testing.assert_close(out, residual + layer(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = add_projected(residual, x, layer)
        weight = Attention(8, 2).qkv_weight()
    assert mixed.dtype == torch.float32 and weight.dtype == torch.bfloat16
    torch.testing.assert_close(mixed, residual + layer(x), atol=0.05, rtol=0.05)
    biased = torch.nn.Linear(8, 8)  # a bias is added too (the fused product would drop it)
    torch.testing.assert_close(add_projected(residual, x, biased), residual + biased(x))


def _method(name: str, seed: int = 0):
    cfg = get_preset("mnist", name)
    cfg = parse_overrides(cfg, applicable_overrides(cfg, TINY))
    torch.manual_seed(seed)
    return cfg, build_method(cfg, tuple(cfg.data.image_shape))


@pytest.mark.parametrize("method", ["daps", "reinforce", "dapsna"])
def test_encoder_conditioning_runs_once_per_step_and_changes_no_value(method, monkeypatch):
    """The encoder's conditioning (the autoregressive encoder's memory, DAPS-NA's token log-probabilities) is
    computed once per step, with gradients, for sampling and teacher forcing; the loss and every gradient equal
    those of the step that computed it twice (sampling and ``log_prob`` each on their own). Fails on: a method
    that does not pass it on (two image-encoder passes)."""
    cfg, model = _method(method)
    x = (torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(3)) > 0.8).float()
    encoder = model.encoder
    inner = "memory" if isinstance(encoder, ARTransformerEncoder) else "token_log_probs"
    calls = Counter()
    original = getattr(type(encoder), inner)

    def counted(self, *args, **kwargs):
        calls[inner] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(encoder), inner, counted)
    out = model(x, 0, generator=torch.Generator().manual_seed(4))
    assert calls[inner] == 1
    grads = torch.autograd.grad(out.loss, [p for p in model.parameters() if p.requires_grad], allow_unused=True)
    # The same step with the conditioning recomputed wherever it is read.
    monkeypatch.setattr(type(encoder), "conditioning", lambda self, x: None)
    calls.clear()
    again = model(x, 0, generator=torch.Generator().manual_seed(4))
    assert calls[inner] == 2
    assert torch.equal(out.loss, again.loss)
    regrads = torch.autograd.grad(again.loss, [p for p in model.parameters() if p.requires_grad], allow_unused=True)
    for a, b in zip(grads, regrads):
        assert (a is None and b is None) or torch.equal(a, b)


def test_sampling_loop_draws_once_and_writes_each_position_in_place():
    """The loop draws all its uniforms in one call and writes codes, log q and entropy into their rows in place:
    per position no copy, and one draw in all (the codes equal per-position draws from the same generator:
    tests/test_transformer.py). Fails on: a draw per position, results copied into (B*K, T) columns."""
    from daps.nets.sampling import sample_autoregressive

    b, k, t, v = 2, 3, 5, 7
    table = torch.randn(t, v, generator=torch.Generator().manual_seed(0))  # (T, V) logits by position
    with Ops() as ops:
        s = sample_autoregressive(lambda indices, pos: table[pos].expand(b * k, v), b, k, t, torch.device("cpu"),
                                  torch.Generator().manual_seed(1))
    assert ops.count("rand", "uniform_") == 1
    assert ops.count("copy_") == 0
    assert s.indices.shape == (k, b, t) and s.indices.transpose(0, 1).is_contiguous()  # b-major rows, as before


def test_ppo_encodes_the_images_once_for_its_old_policy_and_changes_no_value(monkeypatch):
    """PPO samples and scores with theta_old from one conditioning (the image encoder once, not twice), and its
    loss and every gradient equal those of the step that encoded twice. Fails on: ``log_probs`` of the old encoder
    without the conditioning (two passes)."""
    cfg, model = _method("ppo")
    x = (torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(3)) > 0.8).float()
    state = {k: v.clone() for k, v in model.state_dict().items()}  # PPO copies theta into theta_old in training
    calls = Counter()
    original = ARTransformerEncoder.memory

    def counted(self, *args, **kwargs):
        calls["old" if self is model.old_encoder else "new"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ARTransformerEncoder, "memory", counted)
    params = [p for p in model.parameters() if p.requires_grad]
    out = model(x, 0, generator=torch.Generator().manual_seed(4))
    assert calls == {"old": 1, "new": 1}
    grads = torch.autograd.grad(out.loss, params, allow_unused=True)
    model.load_state_dict(state)
    monkeypatch.setattr(ARTransformerEncoder, "conditioning", lambda self, x: None)
    calls.clear()
    again = model(x, 0, generator=torch.Generator().manual_seed(4))
    assert calls == {"old": 2, "new": 1}
    assert torch.equal(out.loss, again.loss)
    for a, b in zip(grads, torch.autograd.grad(again.loss, params, allow_unused=True)):
        assert (a is None and b is None) or torch.equal(a, b)
