"""Transformer layers shared by the encoders: initializers, positions, attention, MLP, encoder and decoder blocks.

The layers follow the original's Flax conventions (``jadex/networks/transformer.py``, ``jadex/networks/nn_utils.py``;
paper Appendix F, "Vision model architecture"): pre-LN blocks, LayerNorm eps 1e-6, four bias-free attention
projections, Xavier-uniform kernels with Normal(0, 1e-6) biases in the transformer, LeCun-normal kernels with
zero biases in heads and MLPs, no dropout.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from daps.nets.kv_cache import SelfAttentionCache
from daps.nets.prefixes import PrefixNodes

LN_EPS = 1e-6  # Flax's default (PyTorch's is 1e-5)


# --------------------------------------------------------------------------------------------------
# Initializers (Flax defaults, as in the original's nn_utils.py)


def lecun_normal_(weight: torch.Tensor) -> torch.Tensor:
    """Truncated normal with variance 1 / fan_in (fan_in = all dims but the first)."""
    fan_in = weight[0].numel()
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978  # undo the variance lost to truncation at 2 std
    return nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


def dense(in_features: int, out_features: int, bias: bool = True, init: str = "xavier") -> nn.Linear:
    """A Linear layer with the original's initializers: xavier (transformer) or lecun (heads, MLPs)."""
    layer = nn.Linear(in_features, out_features, bias=bias)
    if init == "xavier":
        nn.init.xavier_uniform_(layer.weight)
        if bias:
            nn.init.normal_(layer.bias, std=1e-6)
    elif init == "lecun":
        lecun_normal_(layer.weight)
        if bias:
            nn.init.zeros_(layer.bias)
    else:
        raise ValueError(f"unknown init {init!r}")
    return layer


def sinusoidal_table(length: int, width: int) -> torch.Tensor:
    """Fixed positional table ``(length, width)``: sin half then cos half, concatenated (not interleaved), as
    the original's ``transformer.py`` (not learned).

    Frequencies ``exp(-i ln(10000) / (width/2 - 1))`` for ``i = 0 .. width/2 - 1`` (note the ``- 1``).
    """
    half = width // 2
    # a buffer's table: made once on the CPU, moved with its module
    div = torch.exp(-torch.arange(half, dtype=torch.float64, device="cpu") * math.log(10000.0) / max(half - 1, 1))
    angles = torch.arange(length, dtype=torch.float64, device="cpu")[:, None] * div[None, :]  # (length, half)
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()  # (length, width)


# --------------------------------------------------------------------------------------------------
# Attention and MLP


# On the CPU, torch's softmax (forward and backward) is 2-3x slower than four elementwise passes over rows shorter
# than this, and its fused attention kernel at bfloat16 1.7-5.4x slower than plain matmuls up to 128 keys (2.5-6x
# faster from 256 keys): benchmarks/attention.py, BENCHMARKS.md "bf16 on a CPU with bf16 instructions".
SHORT_SOFTMAX_ROWS = 16
PLAIN_ATTENTION_MAX_KEYS = 128


def elementwise_softmax_applies(x: torch.Tensor) -> bool:
    """Whether :func:`softmax` computes ``x``'s softmax elementwise: on the CPU, rows shorter than 16."""
    return x.device.type == "cpu" and x.shape[-1] < SHORT_SOFTMAX_ROWS


def plain_attention_applies(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether :func:`attention` takes :func:`plain_attention`: on the CPU at bfloat16 with at most
    ``PLAIN_ATTENTION_MAX_KEYS`` keys."""
    return q.device.type == "cpu" and q.dtype == torch.bfloat16 and k.shape[-2] <= PLAIN_ATTENTION_MAX_KEYS


def softmax(x: torch.Tensor) -> torch.Tensor:
    """``x.softmax(-1)``; on the CPU over rows shorter than ``SHORT_SOFTMAX_ROWS``, :func:`elementwise_softmax`."""
    return elementwise_softmax(x) if elementwise_softmax_applies(x) else x.softmax(-1)


def elementwise_softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim as max, exp, sum and divide: the same function as ``x.softmax(-1)`` (the subtracted
    row maximum is a constant for autograd, as it is for softmax)."""
    e = (x - x.amax(-1, keepdim=True).detach()).exp()
    return e / e.sum(-1, keepdim=True)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """Softmax attention ``q (..., Lq, d)``, ``k, v (..., Lk, d)`` -> ``(..., Lq, d)``; ``causal``: query i attends
    to keys ``<= i``.

    torch's fused kernel (``scaled_dot_product_attention``), except on the CPU at bfloat16 with at most
    ``PLAIN_ATTENTION_MAX_KEYS`` keys: there :func:`plain_attention`.
    """
    if plain_attention_applies(q, k):
        return plain_attention(q, k, v, causal)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def plain_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """:func:`attention` by matmuls, with the scores and the softmax in at least float32 (as in the fused kernel)."""
    scores = q @ k.transpose(-2, -1)  # (..., Lq, Lk)
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32)) * q.shape[-1] ** -0.5
    if causal:
        keep = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).tril()  # (Lq, Lk)
        scores = scores.masked_fill(~keep, float("-inf"))
    return softmax(scores).to(v.dtype) @ v  # (..., Lq, d)


def one_query_attention(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, masked: torch.Tensor | None = None
) -> torch.Tensor:
    """Attention of one query per row, ``q (N, h, 1, d)`` over ``keys, values (N, h, L, d)`` -> ``(N, h, 1, d)``;
    ``masked`` (optional, broadcastable to ``(N, h, 1, L)``): True = not to be attended.

    By plain matmuls: with one query over a few keys they beat the fused kernel's overhead (CPU, ~2x). When a
    gradient is wanted (unmasked: the sampling steps of ``one_pass`` and of the relaxed methods), through
    :class:`OneQueryAttention`, whose backward forms the keys' and values' gradients by broadcasting.
    """
    if masked is None and torch.is_grad_enabled() and any(t.requires_grad for t in (q, keys, values)):
        return OneQueryAttention.apply(q, keys, values)
    return one_query_weights(q, keys, masked) @ values


def one_query_weights(q: torch.Tensor, keys: torch.Tensor, masked: torch.Tensor | None) -> torch.Tensor:
    """Softmax weights ``(N, h, 1, L)`` of one query per row over ``keys``, scaled by ``1 / sqrt(d)``."""
    n, heads, _, d = q.shape
    # One batched product with the scale applied in it (baddbmm's alpha; its input is ignored at beta = 0)
    scores = torch.baddbmm(
        q.new_empty(()), q.reshape(n * heads, 1, d), keys.reshape(n * heads, -1, d).transpose(1, 2),
        beta=0, alpha=d**-0.5,
    ).view(n, heads, 1, -1)  # (N, h, 1, L)
    if masked is not None:
        scores = scores.masked_fill(masked, float("-inf"))
    return softmax(scores)


class OneQueryAttention(torch.autograd.Function):
    """:func:`one_query_attention` without a mask, with its backward written out.

    The forward is the same operations as without gradients (so the same values). Autograd's own backward would
    form the keys' and values' gradients, one outer product per row, as batched matmuls with an inner dimension of
    1, which the CPU runs 2-3x slower than a broadcast product (``benchmarks/attention.py --one-query``,
    BENCHMARKS.md "One encoder pass"); here they are broadcast products, and the softmax's backward is one
    expression instead of autograd's pass through each of its operations.
    """

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        weights = one_query_weights(q, keys, None)  # (N, h, 1, L)
        ctx.save_for_backward(q, keys, values, weights)
        return weights @ values  # (N, h, 1, d)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, keys, values, weights = ctx.saved_tensors
        # Under bf16 autocast the weights may be float32 (a long row's softmax) and the rest bf16: compute in the
        # wider type, return each gradient in its input's type; autocast off, for a backward() called inside it.
        dtype = torch.promote_types(weights.dtype, grad_out.dtype)
        with torch.autocast(grad_out.device.type, enabled=False):
            grad_out, weights = grad_out.to(dtype), weights.to(dtype)
            grad_weights = grad_out @ values.to(dtype).transpose(-2, -1)  # (N, h, 1, L)
            grad_values = weights.transpose(-2, -1) * grad_out  # (N, h, L, d): an outer product per row
            grad_scores = weights * (grad_weights - (grad_weights * weights).sum(-1, keepdim=True))  # softmax's
            grad_scores = grad_scores * q.shape[-1] ** -0.5  # (N, h, 1, L)
            grad_q = grad_scores @ keys.to(dtype)  # (N, h, 1, d)
            grad_keys = grad_scores.transpose(-2, -1) * q.to(dtype)  # (N, h, L, d): an outer product per row
        return grad_q.to(q.dtype), grad_keys.to(keys.dtype), grad_values.to(values.dtype)


def add_projected(residual: torch.Tensor, x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """``residual + layer(x)``: for a bias-free ``layer``, one matrix product that adds the residual (``addmm``)
    instead of a product and an addition. Under autocast it stays two operations, so that the sum keeps the
    residual's dtype (``addmm`` would compute it in the autocast dtype); so does a layer with a bias."""
    if layer.bias is not None or torch.is_autocast_enabled(x.device.type):
        return residual + layer(x)
    width = residual.shape[-1]
    return torch.addmm(residual.reshape(-1, width), x.reshape(-1, x.shape[-1]), layer.weight.t()).view(residual.shape)


def _masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention where masked scores are *replaced* by the most negative float (the original's rule):
    a query with every key masked attends uniformly to all keys. ``q (..., Lq, d)``, ``k, v (..., Lk, d)``,
    ``mask`` broadcastable to ``(..., Lq, Lk)`` -> ``(..., Lq, d)``."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (..., Lq, Lk)
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return softmax(scores) @ v  # (..., Lq, d)


class Attention(nn.Module):
    """Multi-head attention with four bias-free Xavier-initialized projections (h heads of d = E / h)."""

    def __init__(self, width: int, num_heads: int):
        super().__init__()
        if width % num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (dense(width, width, bias=False) for _ in range(4))

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, L, E) -> (N, h, L, d)``."""
        n, length, width = x.shape
        return x.view(n, length, self.num_heads, width // self.num_heads).transpose(1, 2)  # (N, h, L, d)

    def merge(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``(N, h, L, d) -> (N, L, E)``, through the output projection; plus ``residual (N, L, E)`` if given."""
        n, heads, length, d = x.shape
        merged = x.transpose(1, 2).reshape(n, length, heads * d)  # (N, L, E)
        return self.o(merged) if residual is None else add_projected(residual, merged, self.o)

    def qkv_weight(self) -> torch.Tensor:
        """The q, k and v projections as one weight ``(3E, E)``, ordered head by head (each head's q, k and v
        rows together): one product gives all three, and each one's heads are views that flatten ``(N, h)``
        without a copy (:meth:`project_qkv`). In autocast's dtype when autocast is on (cast once, not per use)."""
        heads, width = self.num_heads, self.q.weight.shape[0]
        weight = torch.stack([w.view(heads, width // heads, -1) for w in (self.q.weight, self.k.weight, self.v.weight)],
                             1).view(3 * width, -1)  # (h, 3, d, E) -> (3E, E)
        device = weight.device.type
        return weight.to(torch.get_autocast_dtype(device)) if torch.is_autocast_enabled(device) else weight

    def project_qkv(
        self, x: torch.Tensor, qkv_weight: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x (N, L, E)`` -> q, k, v each ``(N, h, L, d)`` in one product with :meth:`qkv_weight` (passed in when
        it is reused across calls)."""
        weight = self.qkv_weight() if qkv_weight is None else qkv_weight
        return self.split_qkv(F.linear(x, weight))

    def split_qkv(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The product of :meth:`qkv_weight`, ``(N, L, 3E)`` -> q, k, v each ``(N, h, L, d)`` (views)."""
        n, length, width = qkv.shape
        qkv = qkv.view(n, length, self.num_heads, 3, width // (3 * self.num_heads))  # (N, L, h, 3, d)
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(3))  # each (N, h, L, d)
        return q, k, v

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, L, E) -> k, v`` each ``(N, h, L, d)``."""
        return self.split(self.k(x)), self.split(self.v(x))

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        causal: bool = False,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Self-attention over ``x (N, L, E)`` -> ``(N, L, E)``; ``mask (N, 1, L, L)`` bool, True = may attend;
        plus ``residual (N, L, E)`` if given."""
        q, (k, v) = self.split(self.q(x)), self.keys_values(x)  # each (N, h, L, d)
        if mask is not None:
            return self.merge(_masked_attention(q, k, v, mask), residual)
        return self.merge(attention(q, k, v, causal), residual)

    def attend_grouped(
        self,
        x: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        num_samples: int,
        mask: torch.Tensor | None = None,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Cross-attention of ``x (B*K, L, E)`` to per-input memory ``k, v (B, h, P, d)`` -> ``(B*K, L, E)``, plus
        ``residual (B*K, L, E)`` if given.

        The K samples of one input share its memory, so their queries are stacked as ``K*L`` rows.
        ``mask`` (optional): ``(B, 1, K*L, P)`` bool.
        """
        out = self.grouped_attention(self.q(x), k, v, num_samples, mask)  # (B*K, L, E)
        return self.o(out) if residual is None else add_projected(residual, out, self.o)

    def grouped_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_samples: int, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """:meth:`attend_grouped` from projected queries ``q (B*K, L, E)``, before the output projection ->
        ``(B*K, L, E)``."""
        n, length, width = q.shape
        b, heads, d = n // num_samples, self.num_heads, width // self.num_heads
        q = q.view(b, num_samples * length, heads, d).transpose(1, 2)  # (B, h, K*L, d)
        if mask is not None:
            out = _masked_attention(q, k, v, mask)
        else:
            out = attention(q, k, v)  # (B, h, K*L, d)
        return out.transpose(1, 2).reshape(n, length, width)  # (B*K, L, E)


class MLP(nn.Sequential):
    """``Dense(mlp_ratio * E) -> ReLU -> Dense(E)``."""

    def __init__(self, width: int, mlp_ratio: int):
        super().__init__(dense(width, mlp_ratio * width), nn.ReLU(), dense(mlp_ratio * width, width))


# --------------------------------------------------------------------------------------------------
# Blocks


class EncoderBlock(nn.Module):
    """Pre-LN bidirectional block: ``x += MHA(LN x); x += MLP(LN x)``; ``(N, L, E) -> (N, L, E)``."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(width, eps=LN_EPS), nn.LayerNorm(width, eps=LN_EPS)
        self.attn = Attention(width, num_heads)
        self.mlp = MLP(width, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn(self.ln1(x), residual=x)  # x + MHA(LN x)
        return x + self.mlp(self.ln2(x))


class DecoderBlock(nn.Module):
    """Pre-LN block: causal self-attention, cross-attention to the encoded patches, MLP."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: int):
        super().__init__()
        self.ln1, self.ln2, self.ln3 = (nn.LayerNorm(width, eps=LN_EPS) for _ in range(3))
        self.self_attn = Attention(width, num_heads)
        self.cross_attn = Attention(width, num_heads)
        self.mlp = MLP(width, mlp_ratio)

    def forward(
        self,
        y: torch.Tensor,
        memory_kv: tuple[torch.Tensor, torch.Tensor],
        num_samples: int,
        self_mask: torch.Tensor | None = None,
        cross_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Teacher-forced pass over whole sequences ``y (B*K, T, E)`` -> ``(B*K, T, E)``; ``memory_kv`` each
        ``(B, h, P, d)``."""
        y = self.self_attn(self.ln1(y), mask=self_mask, causal=self_mask is None, residual=y)
        y = self.cross_attn.attend_grouped(self.ln2(y), *memory_kv, num_samples, mask=cross_mask, residual=y)
        return y + self.mlp(self.ln3(y))

    def forward_nodes(
        self, y: torch.Tensor, memory_kv: tuple[torch.Tensor, torch.Tensor], num_samples: int, nodes: PrefixNodes,
        shape: tuple[int, int],
    ) -> torch.Tensor:
        """:meth:`forward` over the distinct prefixes of codes of ``shape`` (N, T) = (B*K, T): ``y (M, E)``, one
        row per node of ``nodes`` (:mod:`daps.nets.prefixes`) -> ``(M, E)``.

        Layer norms, projections and the MLP run once per node. The two attentions run over the rows as in
        :meth:`forward` (each row's keys are its own nodes'), and each node keeps the output at its first entry;
        so the values are :meth:`forward`'s at those entries, and gradients reach each node from every entry that
        reads it."""
        n, t = shape
        width = y.shape[-1]
        attn, cross = self.self_attn, self.cross_attn
        qkv = nodes.gather(F.linear(self.ln1(y), attn.qkv_weight()))  # (N*T, 3E): each node's at its entries
        q, k, v = attn.split_qkv(qkv.view(n, t, -1))  # (N, h, T, d) each
        out = attention(q, k, v, causal=True).transpose(1, 2).reshape(n * t, width)  # (N*T, E)
        y = add_projected(y, nodes.pick(out), attn.o)  # (M, E)
        q = nodes.gather(cross.q(self.ln2(y))).view(n, t, width)  # (N, T, E)
        out = cross.grouped_attention(q, *memory_kv, num_samples).view(n * t, width)  # (N*T, E)
        y = add_projected(y, nodes.pick(out), cross.o)  # (M, E)
        return y + self.mlp(self.ln3(y))

    def step(
        self,
        y: torch.Tensor,
        memory_kv: tuple[torch.Tensor, torch.Tensor],
        num_samples: int,
        cache: SelfAttentionCache,
        pos: int | torch.Tensor,
        qkv_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One new token ``y (B*K, 1, E)`` at position ``pos`` -> ``(B*K, 1, E)``, reading and extending ``cache``;
        ``qkv_weight``: the self-attention's :meth:`Attention.qkv_weight`, when the caller reuses it over positions.

        Written for few operations per token (on a GPU each costs about its launch): q, k and v in one product,
        the residuals added inside the output projections."""
        attn = self.self_attn
        q, k, v = attn.project_qkv(self.ln1(y), qkv_weight)  # (N, h, 1, d) each
        keys, values, masked = cache.update(k, v, pos)  # (N, h, L, d): L = pos+1, or a static cache's length
        y = attn.merge(one_query_attention(q, keys, values, masked), residual=y)  # (N, 1, E)
        y = self.cross_attn.attend_grouped(self.ln2(y), *memory_kv, num_samples, residual=y)
        return y + self.mlp(self.ln3(y))


    def step_nodes(
        self,
        y: torch.Tensor,
        memory_kv: tuple[torch.Tensor, torch.Tensor],
        num_samples: int,
        cache: SelfAttentionCache,
        pos: int,
        rows: tuple[torch.Tensor, torch.Tensor],
        qkv_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """:meth:`step` over the distinct prefixes at ``pos``: ``y (M, 1, E)``, one row per node, and ``rows``
        = (``node_of (N,)``, each row's node; ``first (M,)``, each node's first row) -> ``(M, 1, E)``.

        Layer norms, projections and the MLP run once per node; the cache keeps every row's keys (each node's
        written to its rows), and the cross-attention runs over the rows, grouped by input as in :meth:`step`."""
        node_of, first = rows
        attn, cross = self.self_attn, self.cross_attn
        q, k, v = attn.project_qkv(self.ln1(y), qkv_weight)  # (M, h, 1, d) each
        keys, values, masked = cache.update(k.index_select(0, node_of), v.index_select(0, node_of), pos)  # rows
        keys, values = keys.index_select(0, first), values.index_select(0, first)  # (M, h, L, d): the nodes' own
        y = attn.merge(one_query_attention(q, keys, values, masked), residual=y)  # (M, 1, E)
        q = cross.q(self.ln2(y)).index_select(0, node_of)  # (N, 1, E)
        out = cross.grouped_attention(q, *memory_kv, num_samples).index_select(0, first)  # (M, 1, E)
        y = add_projected(y, out, cross.o)
        return y + self.mlp(self.ln3(y))


class CodeEmbedding(nn.Embedding):
    """The decoders' code embedding ``(V, E)``, initialized N(0, 1/E): integer codes ``(..., T)`` are looked up,
    (relaxed) one-hots ``(..., T, V)`` multiply the table, so gradients reach the relaxations."""

    def __init__(self, vocab_size: int, dim: int):
        super().__init__(vocab_size, dim)
        nn.init.normal_(self.weight, std=1.0 / math.sqrt(dim))

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        if codes.is_floating_point():
            return codes @ self.weight
        return super().forward(codes)



class CodeDecoder(nn.Module):
    """What every decoder of codes shares: an optional :class:`CodeEmbedding` ``embed`` (``None`` when built without
    ``vocab_size``: VQ-VAE, FSQ and the Gaussian VAE feed continuous latents) in front of :meth:`decode_latents`."""

    embed: CodeEmbedding | None

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Integer codes ``(..., T)`` or one-hots ``(..., T, V)`` -> embeddings ``(..., T, token_dim)``."""
        if self.embed is None:
            raise TypeError("this decoder has no code embedding (built without vocab_size)")
        return self.embed(codes)

    def decode_latents(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decode_latents(self.embed_codes(codes))
