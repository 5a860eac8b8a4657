"""Autoregressive encoder q_theta(z | x): an encoder-decoder transformer over image patches (SPEC 5.1-5.3).

The encoder stack reads the patches of x; the decoder stack generates T discrete tokens, each attending
to the earlier tokens (causal self-attention) and to the encoded patches (cross-attention). Pre-LN blocks,
LayerNorm eps 1e-6, four bias-free attention projections, no dropout.

Two things make sampling K codes per input cheap:
- the patch encoder and each layer's cross-attention keys/values run once per input, and the K samples of
  an input attend to them as K extra query rows (no copy of the memory per sample);
- self-attention keys/values live in a preallocated cache written by position, so each new token costs one
  query against the keys so far.

Sample layout: tensors of codes are ``(K, B, T)`` at the interface. Internally the K samples of input b are
rows ``b*K ... b*K + K - 1`` of a flat ``(B*K, ...)`` batch, which is what lets cross-attention group them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from daps.functional import categorical_log_probs, clamp_log_prob, sample_probs

LN_EPS = 1e-6


# --------------------------------------------------------------------------------------------------
# Initializers (the original uses Flax defaults; see SPEC 5 "General layer conventions")


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


# --------------------------------------------------------------------------------------------------
# Positions and patches


def sinusoidal_table(length: int, width: int) -> torch.Tensor:
    """Fixed positional table ``(length, width)``: sin half then cos half (SPEC 5.2 step 2).

    Frequencies ``exp(-i ln(10000) / (width/2 - 1))`` for ``i = 0 .. width/2 - 1``.
    """
    half = width // 2
    div = torch.exp(-torch.arange(half, dtype=torch.float64) * math.log(10000.0) / max(half - 1, 1))
    angles = torch.arange(length, dtype=torch.float64)[:, None] * div[None, :]  # (length, half)
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()  # (length, width)


def patch_grid(num_patches: int) -> tuple[int, int]:
    """Rows x cols of the patch grid: rows = the divisor of ``num_patches`` closest to floor(sqrt)."""
    target = math.isqrt(num_patches)
    divisors = [d for d in range(1, num_patches + 1) if num_patches % d == 0]
    rows = min(divisors, key=lambda d: (abs(d - target), d))
    return rows, num_patches // rows


def patch_shape(image_shape: tuple[int, int, int], num_patches: int) -> tuple[int, int]:
    """Patch height and width: ceil(H / rows) and ceil(W / cols), each rounded up to an even number."""
    _, height, width = image_shape
    rows, cols = patch_grid(num_patches)
    ph, pw = -(-height // rows), -(-width // cols)
    return ph + ph % 2, pw + pw % 2


def patchify(x: torch.Tensor, num_patches: int) -> torch.Tensor:
    """Cut images into a row-major grid of flattened patches, zero-padding the image centrally.

    ``(B, C, H, W) -> (B, num_patches, ph * pw * C)``; features in (h, w, c) order.
    """
    b, c, h, w = x.shape
    rows, cols = patch_grid(num_patches)
    ph, pw = patch_shape((c, h, w), num_patches)
    pad_h, pad_w = rows * ph - h, cols * pw - w
    x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))  # (B, C, rows*ph, cols*pw)
    x = x.reshape(b, c, rows, ph, cols, pw).permute(0, 2, 4, 3, 5, 1)  # (B, rows, cols, ph, pw, C)
    return x.reshape(b, rows * cols, ph * pw * c)


# --------------------------------------------------------------------------------------------------
# Building blocks


def _masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention where masked scores are *replaced* by the most negative float (the original's rule):
    a query with every key masked attends uniformly to all keys."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (..., Lq, Lk)
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return scores.softmax(-1) @ v


class Attention(nn.Module):
    """Multi-head attention with four bias-free Xavier-initialized projections."""

    def __init__(self, width: int, num_heads: int):
        super().__init__()
        if width % num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (dense(width, width, bias=False) for _ in range(4))

    def split(self, x: torch.Tensor) -> torch.Tensor:
        n, length, width = x.shape
        return x.view(n, length, self.num_heads, width // self.num_heads).transpose(1, 2)  # (N, h, L, d)

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        n, heads, length, d = x.shape
        return self.o(x.transpose(1, 2).reshape(n, length, heads * d))  # (N, L, E)

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, L, E) -> k, v`` each ``(N, h, L, d)``."""
        return self.split(self.k(x)), self.split(self.v(x))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        """Self-attention over ``x (N, L, E)``; ``mask (N, 1, L, L)`` bool, True = may attend."""
        q, (k, v) = self.split(self.q(x)), self.keys_values(x)
        if mask is not None:
            return self.merge(_masked_attention(q, k, v, mask))
        return self.merge(F.scaled_dot_product_attention(q, k, v, is_causal=causal))

    def attend_grouped(
        self,
        x: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        num_samples: int,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Cross-attention of ``x (B*K, L, E)`` to per-input memory ``k, v (B, h, P, d)``.

        The K samples of one input share its memory, so their queries are stacked as ``K*L`` rows.
        ``mask`` (optional): ``(B, 1, K*L, P)`` bool.
        """
        n, length, width = x.shape
        b, heads, d = n // num_samples, self.num_heads, width // self.num_heads
        q = self.q(x).view(b, num_samples * length, heads, d).transpose(1, 2)  # (B, h, K*L, d)
        if mask is not None:
            out = _masked_attention(q, k, v, mask)
        else:
            out = F.scaled_dot_product_attention(q, k, v)  # (B, h, K*L, d)
        out = out.transpose(1, 2).reshape(n, length, width)  # (B*K, L, E)
        return self.o(out)


class MLP(nn.Sequential):
    def __init__(self, width: int, mlp_ratio: int):
        super().__init__(dense(width, mlp_ratio * width), nn.ReLU(), dense(mlp_ratio * width, width))


class EncoderBlock(nn.Module):
    """Pre-LN bidirectional block: ``x += MHA(LN x); x += MLP(LN x)``."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(width, eps=LN_EPS), nn.LayerNorm(width, eps=LN_EPS)
        self.attn = Attention(width, num_heads)
        self.mlp = MLP(width, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


@dataclass
class KVCache:
    """Preallocated self-attention keys and values of one decoder layer, each ``(N, h, T, d)``, written in
    place by position (no gradient)."""

    k: torch.Tensor
    v: torch.Tensor

    def update(self, k: torch.Tensor, v: torch.Tensor, pos: int) -> tuple[torch.Tensor, torch.Tensor, None]:
        """Store position ``pos``'s ``k, v (N, h, 1, d)``; return the keys and values so far ``(N, h, pos+1, d)``
        (and no mask: every returned key may be attended)."""
        self.k[:, :, pos : pos + 1] = k
        self.v[:, :, pos : pos + 1] = v
        return self.k[:, :, : pos + 1], self.v[:, :, : pos + 1], None


def cache_buckets(length: int, smallest: int = 16) -> list[int]:
    """The static cache lengths of the compiled sampler: powers of two from ``smallest``, capped at ``length``
    (which is always the last). Position p reads the smallest bucket > p, so early tokens do not attend over all
    T keys, at the price of one compiled graph per bucket (7 for T = 1024). ``smallest`` grows with T so there
    are never more than 7 buckets (torch.compile's default recompile limit is 8)."""
    buckets, size = [], max(smallest, length >> 6)
    while size < length:
        buckets.append(size)
        size *= 2
    return [*buckets, length]


@dataclass
class StaticKVCache:
    """Like :class:`KVCache`, but with static shapes for ``torch.compile``: written at a 0-d tensor position and
    returned whole (a bucket of :func:`cache_buckets`, a view of the full cache), with a mask of the positions
    not written yet. The caches must start zeroed: a masked key gets weight 0, and 0 times uninitialized memory
    (possibly NaN) would still be NaN."""

    k: torch.Tensor
    v: torch.Tensor

    def update(
        self, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.k.index_copy_(2, pos.view(1), k)
        self.v.index_copy_(2, pos.view(1), v)
        later = torch.arange(self.k.shape[2], device=pos.device) > pos  # (T,) True = not to be attended
        return self.k, self.v, later


@dataclass
class GrowingKVCache:
    """Self-attention keys and values kept by concatenation, so gradients flow through them (used when
    backpropagating through the sampling chain, e.g. Gumbel-Softmax)."""

    k: torch.Tensor | None = None
    v: torch.Tensor | None = None

    def update(self, k: torch.Tensor, v: torch.Tensor, pos: int) -> tuple[torch.Tensor, torch.Tensor, None]:
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)  # (N, h, pos+1, d)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        return self.k, self.v, None


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
        """Teacher-forced pass over whole sequences ``y (B*K, T, E)``."""
        y = y + self.self_attn(self.ln1(y), mask=self_mask, causal=self_mask is None)
        y = y + self.cross_attn.attend_grouped(self.ln2(y), *memory_kv, num_samples, mask=cross_mask)
        return y + self.mlp(self.ln3(y))

    def step(
        self,
        y: torch.Tensor,
        memory_kv: tuple[torch.Tensor, torch.Tensor],
        num_samples: int,
        cache: KVCache | GrowingKVCache | StaticKVCache,
        pos: int | torch.Tensor,
    ) -> torch.Tensor:
        """One new token ``y (B*K, 1, E)`` at position ``pos``, reading and extending ``cache``."""
        attn = self.self_attn
        a = self.ln1(y)
        k, v = attn.keys_values(a)  # (N, h, 1, d)
        keys, values, masked = cache.update(k, v, pos)  # (N, h, L, d): L = pos+1, or the bucket length for a static cache
        q = attn.split(attn.q(a))  # (N, h, 1, d)
        # One query over a few keys: plain matmuls beat the fused kernel's overhead here (CPU, ~2x).
        scores = (q @ keys.transpose(-2, -1)) * (q.shape[-1] ** -0.5)  # (N, h, 1, L)
        if masked is not None:
            scores = scores.masked_fill(masked, float("-inf"))
        y = y + attn.merge(scores.softmax(-1) @ values)
        y = y + self.cross_attn.attend_grouped(self.ln2(y), *memory_kv, num_samples)
        return y + self.mlp(self.ln3(y))


# --------------------------------------------------------------------------------------------------
# The autoregressive encoder


@dataclass
class Samples:
    """K codes per input drawn from q_theta, with per-token statistics of the sampling pass."""

    indices: torch.Tensor  # (K, B, T) int64
    token_log_q: torch.Tensor  # (K, B, T) log q(z_t | z_<t, x), float32
    token_entropy: torch.Tensor  # (K, B, T) entropy of q(. | z_<t, x) in nats, float32

    @property
    def log_q(self) -> torch.Tensor:
        return self.token_log_q.sum(-1)  # (K, B)


class ARTransformerEncoder(nn.Module):
    """q_theta(z | x) over ``num_tokens`` codes of ``vocab_size`` (SPEC 5.2).

    Args:
        image_shape: ``(C, H, W)`` of the inputs.
        num_tokens: T, the number of latent tokens (also the number of image patches).
        vocab_size: V.
        width: E.
        num_layers: blocks in each of the encoder and decoder stacks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / E.
        mask_token0: reproduce the original code's teacher-forcing masks, which treat code 0 as padding
            (SPEC 5.3). Off by default: then teacher-forced log q equals the sampling log-probabilities.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_tokens: int,
        vocab_size: int,
        width: int,
        num_layers: int,
        num_heads: int,
        mlp_ratio: int,
        mask_token0: bool = False,
    ):
        super().__init__()
        self.num_tokens, self.vocab_size, self.mask_token0 = num_tokens, vocab_size, mask_token0
        ph, pw = patch_shape(image_shape, num_tokens)
        self.patch_embed = dense(ph * pw * image_shape[0], width, init="lecun")
        self.register_buffer("pos", sinusoidal_table(num_tokens, width), persistent=False)  # (T, E)
        self.encoder_blocks = nn.ModuleList(EncoderBlock(width, num_heads, mlp_ratio) for _ in range(num_layers))
        self.encoder_ln = nn.LayerNorm(width, eps=LN_EPS)
        self.token_embed = nn.Embedding(vocab_size, width)
        nn.init.normal_(self.token_embed.weight, std=1.0)
        self.decoder_blocks = nn.ModuleList(DecoderBlock(width, num_heads, mlp_ratio) for _ in range(num_layers))
        self.decoder_ln = nn.LayerNorm(width, eps=LN_EPS)
        self.head = dense(width, vocab_size)
        self._static_step_fn: Callable | None = None  # set by compile_sampler
        self._smallest_bucket = 16

    def compile_sampler(self, compile: bool = True, smallest_bucket: int = 16, **compile_kwargs) -> None:
        """Sample through the static-shape one-token step :meth:`static_step`, compiled with
        ``torch.compile(**compile_kwargs)`` (one graph per cache length of :func:`cache_buckets`, shared by all
        positions of that bucket: the position is a tensor), or eager with ``compile=False``.
        ``smallest_bucket >= T`` reads the whole cache at every position (one graph). Samples equal the default path's under
        the same generator, up to float rounding in the compiled kernels."""
        self._smallest_bucket = int(smallest_bucket)
        if compile:
            # One specialized graph per cache bucket (dynamic=False): static shapes are what CUDA graphs need.
            compile_kwargs.setdefault("dynamic", False)
            self._static_step_fn = torch.compile(self.static_step, **compile_kwargs)
        else:
            self._static_step_fn = self.static_step

    def static_step(
        self,
        token: torch.Tensor,
        pos: torch.Tensor,
        memory_kv: list[tuple[torch.Tensor, torch.Tensor]],
        k_caches: list[torch.Tensor],
        v_caches: list[torch.Tensor],
        num_samples: int,
    ) -> torch.Tensor:
        """Logits ``(B*K, V)`` of the token after ``token (B*K,)`` at the 0-d position ``pos``."""
        y = self.token_embed(token)[:, None] + self.pos.index_select(0, pos.view(1))  # (B*K, 1, E)
        for block, kv, kc, vc in zip(self.decoder_blocks, memory_kv, k_caches, v_caches):
            y = block.step(y, kv, num_samples, StaticKVCache(kc, vc), pos)
        return self.head(self.decoder_ln(y[:, 0]))  # (B*K, V)

    def memory(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Encode ``x (B, C, H, W)`` and return each decoder layer's cross-attention ``(k, v)``, ``(B, h, P, d)``."""
        h = self.patch_embed(patchify(x, self.num_tokens)) + self.pos  # (B, P, E)
        for block in self.encoder_blocks:
            h = block(h)
        h = self.encoder_ln(h)
        return [block.cross_attn.keys_values(h) for block in self.decoder_blocks]

    def _teacher_forced_logits(
        self, memory_kv: list, indices: torch.Tensor, num_samples: int, mask_token0: bool = False
    ) -> torch.Tensor:
        """Logits for flat b-major codes ``indices (B*K, T)`` -> ``(B*K, T, V)``."""
        n, t = indices.shape
        inputs = F.pad(indices[:, :-1], (1, 0))  # (B*K, T): start token 0, then z_<T
        y = self.token_embed(inputs) + self.pos[:t]  # (B*K, T, E)
        self_mask = cross_mask = None
        if mask_token0:
            valid = indices > 0  # (B*K, T), computed on the *unshifted* targets, as in the original
            causal = torch.ones(t, t, dtype=torch.bool, device=indices.device).tril()
            self_mask = (causal & valid[:, :, None] & valid[:, None, :])[:, None]  # (B*K, 1, T, T)
            b = n // num_samples
            p = memory_kv[0][0].shape[2]
            cross_mask = valid.reshape(b, 1, num_samples * t, 1).expand(b, 1, num_samples * t, p)
        for block, kv in zip(self.decoder_blocks, memory_kv):
            y = block(y, kv, num_samples, self_mask, cross_mask)
        return self.head(self.decoder_ln(y))

    def _teacher_forced(self, x: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``indices (K, B, T)`` -> flat b-major codes ``(B*K, T)`` and their logits ``(B*K, T, V)``."""
        k, b, t = indices.shape
        flat = indices.transpose(0, 1).reshape(b * k, t)  # (B*K, T) b-major
        return flat, self._teacher_forced_logits(self.memory(x), flat, k, self.mask_token0)

    def log_probs(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Teacher-forced, clamped log-probabilities of every code at every position.

        ``x (B, C, H, W)``, ``indices (K, B, T)`` -> ``(K, B, T, V)`` float32, with gradients.
        """
        k, b, t = indices.shape
        _, logits = self._teacher_forced(x, indices)  # (B*K, T, V)
        return categorical_log_probs(logits).view(b, k, t, -1).transpose(0, 1)  # (K, B, T, V)

    def log_prob(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Teacher-forced ``log q(z_t | z_<t, x)`` of given codes, with gradients (what DAPS trains on).

        ``x (B, C, H, W)``, ``indices (K, B, T)`` int64 -> ``token_log_q (K, B, T)`` float32; sum over T for
        ``log q(z | x)``.
        """
        k, b, t = indices.shape
        flat, logits = self._teacher_forced(x, indices)  # (B*K, T), (B*K, T, V)
        # Clamp only the gathered entries: the values of categorical_log_probs, without an elementwise
        # clamp (and its backward) over all V logits.
        log_probs = F.log_softmax(logits.float(), dim=-1)  # (B*K, T, V)
        token_log_q = clamp_log_prob(log_probs.gather(-1, flat[..., None]).squeeze(-1))  # (B*K, T)
        return token_log_q.view(b, k, t).transpose(0, 1)

    @torch.no_grad()
    def sample(
        self,
        x: torch.Tensor,
        num_samples: int = 1,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
    ) -> Samples:
        """Draw ``num_samples`` codes per input by ancestral sampling at temperature 1.

        With ``use_cache=False`` every step recomputes the whole prefix (a slow reference path that
        must give identical codes under the same generator).
        """
        b, k, t = x.shape[0], num_samples, self.num_tokens
        n = b * k
        memory_kv = self.memory(x)
        indices = torch.zeros(n, t, dtype=torch.long, device=x.device)  # (B*K, T)
        token_log_q = torch.zeros(n, t, device=x.device)
        token_entropy = torch.zeros(n, t, device=x.device)
        if use_cache:
            k_mem = memory_kv[0][0]
            cache_shape = (n, k_mem.shape[1], t, k_mem.shape[3])  # (B*K, h, T, d)
            caches = [
                KVCache(k_mem.new_empty(cache_shape), k_mem.new_empty(cache_shape)) for _ in self.decoder_blocks
            ]
            token = torch.zeros(n, dtype=torch.long, device=x.device)  # start token
        static = use_cache and self._static_step_fn is not None
        if static:  # zeroed: see StaticKVCache
            for c in caches:
                c.k.zero_(), c.v.zero_()
            positions = torch.arange(t, device=x.device)
            bucket_views = {  # length -> per-layer views (B*K, h, length, d) of the full caches
                size: ([c.k[:, :, :size] for c in caches], [c.v[:, :, :size] for c in caches])
                for size in cache_buckets(t, self._smallest_bucket)
            }
            bucket_of = [min(size for size in bucket_views if size > pos) for pos in range(t)]
        for pos in range(t):
            if static:
                k_caches, v_caches = bucket_views[bucket_of[pos]]
                logits = self._static_step_fn(token, positions[pos], memory_kv, k_caches, v_caches, k)  # (B*K, V)
            elif use_cache:
                y = self.token_embed(token)[:, None] + self.pos[pos]  # (B*K, 1, E)
                for block, kv, cache in zip(self.decoder_blocks, memory_kv, caches):
                    y = block.step(y, kv, k, cache, pos)
                logits = self.head(self.decoder_ln(y[:, 0]))  # (B*K, V)
            else:
                prefix = indices[:, : pos + 1]  # the last entry is a placeholder, shifted out
                logits = self._teacher_forced_logits(memory_kv, prefix, k)[:, pos]  # (B*K, V)
            log_probs = categorical_log_probs(logits)  # (B*K, V)
            probs = log_probs.exp()
            token = sample_probs(probs, generator)  # (B*K,)
            indices[:, pos] = token
            token_log_q[:, pos] = log_probs.gather(-1, token[:, None]).squeeze(-1)
            token_entropy[:, pos] = -(probs * log_probs).sum(-1)

        def unflatten(a: torch.Tensor) -> torch.Tensor:
            return a.view(b, k, t).transpose(0, 1)  # (K, B, T)

        return Samples(unflatten(indices), unflatten(token_log_q), unflatten(token_entropy))

    def sample_relaxed(
        self, x: torch.Tensor, relax: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One code per input, differentiable through the whole sampling chain (backprop through time).

        At each position ``relax(log_probs (B, V))`` returns the sampled ``index (B,)`` and a
        straight-through one-hot ``(B, V)``; the one-hot's embedding (``onehot @ table``) is the next input,
        so gradients reach every earlier position (SPEC 3.1). Returns ``indices (B, T)``, the one-hots
        ``(B, T, V)`` and the clamped log-probabilities ``(B, T, V)`` of each step, all with gradients.
        """
        b, t = x.shape[0], self.num_tokens
        memory_kv = self.memory(x)
        caches = [GrowingKVCache() for _ in self.decoder_blocks]
        table = self.token_embed.weight  # (V, E)
        y = table[0].expand(b, 1, -1) + self.pos[0]  # (B, 1, E): start token 0
        indices, onehots, log_probs_all = [], [], []
        for pos in range(t):
            for block, kv, cache in zip(self.decoder_blocks, memory_kv, caches):
                y = block.step(y, kv, 1, cache, pos)
            log_probs = categorical_log_probs(self.head(self.decoder_ln(y[:, 0])))  # (B, V)
            index, onehot = relax(log_probs)
            indices.append(index)
            onehots.append(onehot)
            log_probs_all.append(log_probs)
            if pos + 1 < t:
                y = (onehot @ table)[:, None] + self.pos[pos + 1]  # (B, 1, E)
        return torch.stack(indices, 1), torch.stack(onehots, 1), torch.stack(log_probs_all, 1)


class NATransformerEncoder(nn.Module):
    """Bidirectional transformer over image patches with one output vector per token (SPEC 5.4).

    patches -> Dense(E) + positions -> ``num_layers`` pre-LN blocks -> LayerNorm -> Dense(E) -> head.
    The head is ``Dense(out_dim)`` (logits for the *na methods, FSQ's latent dims) or absent
    (``out_dim=None``: the VQ-VAE's ``z_e``).
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_tokens: int,
        width: int,
        num_layers: int,
        num_heads: int,
        mlp_ratio: int,
        out_dim: int | None,
    ):
        super().__init__()
        self.num_tokens = num_tokens
        ph, pw = patch_shape(image_shape, num_tokens)
        self.patch_embed = dense(ph * pw * image_shape[0], width, init="lecun")
        self.register_buffer("pos", sinusoidal_table(num_tokens, width), persistent=False)  # (T, E)
        self.blocks = nn.ModuleList(EncoderBlock(width, num_heads, mlp_ratio) for _ in range(num_layers))
        self.ln = nn.LayerNorm(width, eps=LN_EPS)
        self.proj = dense(width, width)
        self.head = dense(width, out_dim, init="lecun") if out_dim else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, T, out_dim or E)``."""
        h = self.patch_embed(patchify(x, self.num_tokens)) + self.pos  # (B, T, E)
        for block in self.blocks:
            h = block(h)
        return self.head(self.proj(self.ln(h)))


class NACategoricalEncoder(nn.Module):
    """q_theta(z | x) = prod_t Cat(z_t; logits_t(x)): the bidirectional transformer with a V-way head
    (SPEC 1.10, 3.3). Same sampling interface as :class:`ARTransformerEncoder`; the network runs once per
    input and the K samples are independent draws from its per-token distributions."""

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_tokens: int,
        vocab_size: int,
        width: int,
        num_layers: int,
        num_heads: int,
        mlp_ratio: int,
    ):
        super().__init__()
        self.num_tokens, self.vocab_size = num_tokens, vocab_size
        self.net = NATransformerEncoder(image_shape, num_tokens, width, num_layers, num_heads, mlp_ratio, vocab_size)

    def token_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """Clamped per-token log-probabilities ``(B, T, V)``."""
        return categorical_log_probs(self.net(x))

    def log_probs(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """``(K, B, T, V)``, the same for every sample (the codes do not condition anything)."""
        return self.token_log_probs(x).expand(indices.shape[0], -1, -1, -1)

    def log_prob(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """``indices (K, B, T)`` -> ``token_log_q (K, B, T)`` with gradients."""
        log_probs = self.log_probs(x, indices)  # (K, B, T, V)
        return log_probs.gather(-1, indices[..., None]).squeeze(-1)

    @torch.no_grad()
    def sample(
        self, x: torch.Tensor, num_samples: int = 1, generator: torch.Generator | None = None, use_cache: bool = True
    ) -> Samples:
        """``num_samples`` independent codes per input (``use_cache`` is accepted for interface parity)."""
        log_probs = self.token_log_probs(x)  # (B, T, V)
        probs = log_probs.exp()
        b, t, v = probs.shape
        flat = probs[None].expand(num_samples, b, t, v).reshape(-1, v)  # (K*B*T, V)
        indices = sample_probs(flat, generator).view(num_samples, b, t)  # (K, B, T)
        token_log_q = log_probs[None].expand(num_samples, -1, -1, -1).gather(-1, indices[..., None]).squeeze(-1)
        entropy = -(probs * log_probs).sum(-1)  # (B, T)
        return Samples(indices, token_log_q, entropy[None].expand(num_samples, -1, -1).contiguous())

    def sample_relaxed(
        self, x: torch.Tensor, relax: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One relaxed code per input, every token at once: ``indices (B, T)``, one-hots ``(B, T, V)``,
        log-probabilities ``(B, T, V)``."""
        log_probs = self.token_log_probs(x)  # (B, T, V)
        indices, onehots = relax(log_probs)
        return indices, onehots, log_probs
