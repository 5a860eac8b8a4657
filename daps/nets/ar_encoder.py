"""Autoregressive encoder q_theta(z | x): an encoder-decoder transformer over image patches.

Paper Figure 1 and Appendix F ("Vision model architecture"); the original's ``jadex/networks/transformer.py`` and
``recognition_models/transformer_rec.py``. The encoder stack reads the patches of x; the decoder stack generates
T discrete tokens, each attending to the earlier tokens (causal self-attention) and to the encoded patches
(cross-attention). The decoder's first input is the start token 0, which shares its embedding with code 0.

Two things make sampling K codes per input cheap:
- the patch encoder and each layer's cross-attention keys/values run once per input, and the K samples of
  an input attend to them as K extra query rows (no copy of the memory per sample);
- self-attention keys/values live in a preallocated cache written by position, so each new token costs one
  query against the keys so far.

Sample layout: tensors of codes are ``(K, B, T)`` at the interface. Internally the K samples of input b are
rows ``b*K ... b*K + K - 1`` of a flat ``(B*K, ...)`` batch, which is what lets cross-attention group them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from daps.functional import categorical_log_probs, token_log_prob
from daps.nets.embed import token_embed
from daps.nets.kv_cache import GrowingKVCache, KVCache, SelfAttentionCache, StaticKVCache, cache_buckets
from daps.nets.layers import LN_EPS, DecoderBlock, EncoderBlock, dense, sinusoidal_table
from daps.nets.prefixes import PrefixNodes, prefix_nodes
from daps.nets.sampling import Samples, SamplingStep, sample_autoregressive

MemoryKV = list[tuple[torch.Tensor, torch.Tensor]]  # per decoder layer, cross-attention k, v each (B, h, P, d)

SAMPLER_RECOMPILE_LIMIT = 64
"""torch.compile's recompile limit once a sampler is compiled: up to 7 cache buckets for each batch shape the
sampler meets (training, validation, figures) and each encoder (PPO samples with a frozen copy). The limit is
torch's, for the whole process; it is raised, never lowered, and not restored."""


SHARED_STEP_MAX_NODES = 0.75
"""The sampler computes a position once per distinct prefix (:meth:`ARTransformerEncoder._shared_step`) when the
distinct prefixes are at most this fraction of the rows; above it, the gathers cost more than the rows saved
(BENCHMARKS.md, "Shared prefixes")."""
SHARED_PASS_MAX_NODES = 0.9
"""Likewise for the teacher-forced pass (:meth:`ARTransformerEncoder._prefix_log_prob`), over all positions
together: a fresh encoder at T = 8 shares its first position only (89 % distinct) and gains 4 %; at T = 64 (99 %)
the shared pass is 3 % slower than the whole one."""


def _previous_tokens(indices: torch.Tensor, pos: int) -> torch.Tensor:
    """The decoder input at ``pos``: the codes drawn at ``pos - 1``, or the start token 0. ``(N, T) -> (N,)``.

    A view where it can be one (the sampler's buffer is position-major); a copy under gradient mode, where the
    embedding keeps its indices for the backward while the sampler writes later positions into the same buffer.
    """
    if pos == 0:
        return indices.new_zeros(indices.shape[0])  # (N,)
    tokens = indices[:, pos - 1]  # (N,)
    return tokens.clone() if torch.is_grad_enabled() or not tokens.is_contiguous() else tokens


class ARTransformerEncoder(nn.Module):
    """q_theta(z | x) over ``num_tokens`` codes of ``vocab_size``.

    Args:
        image_shape: ``(C, H, W)`` of the inputs.
        num_tokens: T, the number of latent tokens (also the number of image patches).
        vocab_size: V.
        width: E.
        num_layers: blocks in each of the encoder and decoder stacks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / E.
        mask_token0: reproduce the original code's teacher-forcing masks (``Transformer.decode`` in its
            ``transformer.py``, inherited from Flax's WMT example), which treat code 0 as padding. Off by default:
            then teacher-forced log q equals the sampling log-probabilities.
        embed: the token embedding, ``patches`` (images) or ``time`` (motion windows); see :mod:`daps.nets.embed`.
        input_embed: a module used instead of ``embed`` that maps the conditioning input to ``(B, P, E)`` with
            ``P`` = T or 1 (e.g. a class label for a prior over codes, :class:`daps.prior.nets.ARPrior`).
        share_prefixes: sample and teacher-force (:meth:`log_prob`) the K codes of an input once per distinct
            prefix (:mod:`daps.nets.prefixes`) in eager steps: ``cpu`` (on the CPU), ``on`` (on any device) or
            ``off``; the same values up to float rounding.
    """

    pos: torch.Tensor  # (T, E) sinusoidal table, a buffer

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
        embed: str = "patches",
        input_embed: nn.Module | None = None,
        share_prefixes: str = "cpu",
    ):
        super().__init__()
        self.num_tokens, self.vocab_size, self.mask_token0 = num_tokens, vocab_size, mask_token0
        self.share_prefixes = share_prefixes
        if input_embed is None:
            input_embed = token_embed(embed, image_shape, num_tokens, width)
        self.patch_embed = input_embed
        self.register_buffer("pos", sinusoidal_table(num_tokens, width), persistent=False)  # (T, E)
        self.encoder_blocks = nn.ModuleList(EncoderBlock(width, num_heads, mlp_ratio) for _ in range(num_layers))
        self.encoder_ln = nn.LayerNorm(width, eps=LN_EPS)
        self.token_embed = nn.Embedding(vocab_size, width)
        nn.init.normal_(self.token_embed.weight, std=1.0)
        self.decoder_blocks = cast(  # a ModuleList, typed by its items
            Sequence[DecoderBlock], nn.ModuleList(DecoderBlock(width, num_heads, mlp_ratio) for _ in range(num_layers))
        )
        self.decoder_ln = nn.LayerNorm(width, eps=LN_EPS)
        self.head = dense(width, vocab_size)
        self._static_step_fn: Callable | None = None  # set by compile_sampler
        self._smallest_bucket = 16
        self._static_pool: dict[tuple, tuple] = {}  # the static sampler's caches, see _static_caches

    # ----------------------------------------------------------------------------------------------
    # Encoding and teacher forcing

    def memory(self, x: torch.Tensor) -> MemoryKV:
        """Encode ``x (B, C, H, W)`` and return each decoder layer's cross-attention ``(k, v)``, ``(B, h, P, d)``."""
        h = self.patch_embed(x) + self.pos  # (B, P, E); an input_embed's (B, 1, E) broadcasts to P = T
        for block in self.encoder_blocks:
            h = block(h)
        h = self.encoder_ln(h)
        return [block.cross_attn.keys_values(h) for block in self.decoder_blocks]

    def conditioning(self, x: torch.Tensor) -> MemoryKV:
        """What sampling and teacher forcing both read of ``x``: its :meth:`memory`. Computed once (with gradients)
        and passed to :meth:`sample` and :meth:`log_prob`, the image encoder runs once per training step instead of
        twice; the values are the same."""
        return self.memory(x)

    def _teacher_forced_logits(
        self, memory_kv: MemoryKV, indices: torch.Tensor, num_samples: int, mask_token0: bool = False
    ) -> torch.Tensor:
        """Logits for flat b-major codes ``indices (B*K, T)`` -> ``(B*K, T, V)``."""
        n, t = indices.shape
        inputs = F.pad(indices[:, :-1], (1, 0))  # (B*K, T): start token 0, then z_<T
        y = self.token_embed(inputs) + self.pos[:t]  # (B*K, T, E)
        self_mask = cross_mask = None
        if mask_token0:
            valid = indices > 0  # (B*K, T), computed on the *unshifted* targets, as in the original
            causal = torch.ones(t, t, dtype=torch.bool, device=indices.device).tril()  # (T, T)
            self_mask = (causal & valid[:, :, None] & valid[:, None, :])[:, None]  # (B*K, 1, T, T)
            b = n // num_samples
            p = memory_kv[0][0].shape[2]
            cross_mask = valid.reshape(b, 1, num_samples * t, 1).expand(b, 1, num_samples * t, p)  # (B, 1, K*T, P)
        for block, kv in zip(self.decoder_blocks, memory_kv):
            y = block(y, kv, num_samples, self_mask, cross_mask)
        return self.head(self.decoder_ln(y))  # (B*K, T, V)

    def _shares_prefixes(self, num_samples: int) -> bool:
        """Whether :meth:`log_prob` and :meth:`sample` run once per distinct prefix (:meth:`_prefix_log_prob`,
        :meth:`_shared_step`): with ``share_prefixes`` ``on`` (or ``cpu``, on the CPU), more than one code per input,
        and shapes that may depend on the codes, which is to say not while ``torch.compile`` traces the step nor
        while a CUDA graph records it (those keep the whole pass: its shapes are fixed). Not with ``mask_token0``,
        whose masks read the token *after* each position, so that a position's state is not a function of its
        prefix."""
        device = self.pos.device.type
        if self.share_prefixes != "on" and not (self.share_prefixes == "cpu" and device == "cpu"):
            return False
        if num_samples < 2 or self.mask_token0 or torch.compiler.is_compiling():
            return False
        return not (device == "cuda" and torch.cuda.is_current_stream_capturing())

    def _prefix_log_prob(
        self, memory_kv: MemoryKV, flat: torch.Tensor, num_samples: int, clamp: bool, nodes: PrefixNodes
    ) -> torch.Tensor:
        """:meth:`log_prob`'s ``(B*K, T)`` for flat b-major codes, computed once per distinct (input, prefix) pair:
        the token-wise layers and the softmax over V run on the M ``nodes`` (:func:`prefix_nodes` of ``flat``)
        instead of the B*K*T positions (:meth:`DecoderBlock.forward_nodes`). The same values as the whole pass up
        to float rounding, and the same gradients: a node's gradient sums those of the positions that share it."""
        n, t = flat.shape
        inputs = nodes.pick(F.pad(flat[:, :-1], (1, 0)).reshape(-1))  # (M,): start token 0, then z_<T
        y = self.token_embed(inputs) + self.pos[:t].index_select(0, nodes.first % t)  # (M, E)
        for block, kv in zip(self.decoder_blocks, memory_kv):
            y = block.forward_nodes(y, kv, num_samples, nodes, (n, t))
        logits = self.head(self.decoder_ln(y))  # (M, V)
        return token_log_prob(logits, flat.reshape(-1), clamp, rows=nodes.node_of).view(n, t)  # (B*K, T)

    def _teacher_forced(
        self, x: torch.Tensor, indices: torch.Tensor, conditioning: MemoryKV | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``indices (K, B, T)`` -> flat b-major codes ``(B*K, T)`` and their logits ``(B*K, T, V)``."""
        k, b, t = indices.shape
        flat = indices.transpose(0, 1).reshape(b * k, t)  # (B*K, T) b-major
        memory_kv = self.memory(x) if conditioning is None else conditioning
        return flat, self._teacher_forced_logits(memory_kv, flat, k, self.mask_token0)

    def log_probs(
        self, x: torch.Tensor, indices: torch.Tensor, conditioning: MemoryKV | None = None
    ) -> torch.Tensor:
        """Teacher-forced, clamped log-probabilities of every code at every position.

        ``x (B, C, H, W)``, ``indices (K, B, T)`` -> ``(K, B, T, V)`` float32, with gradients. ``conditioning``:
        :meth:`conditioning` of ``x``, if the caller has it.
        """
        k, b, t = indices.shape
        _, logits = self._teacher_forced(x, indices, conditioning)  # (B*K, T, V)
        return categorical_log_probs(logits).view(b, k, t, -1).transpose(0, 1)  # (K, B, T, V)

    def log_prob(
        self, x: torch.Tensor, indices: torch.Tensor, clamp: bool = True, conditioning: MemoryKV | None = None
    ) -> torch.Tensor:
        """Teacher-forced ``log q(z_t | z_<t, x)`` of given codes, with gradients (what DAPS trains on).

        ``x (B, C, H, W)``, ``indices (K, B, T)`` int64 -> ``token_log_q (K, B, T)`` float32; sum over T for
        ``log q(z | x)``. Computed once per distinct prefix of the K codes of an input (``share_prefixes``,
        :meth:`_prefix_log_prob`) where that applies. ``clamp``: probabilities clamped to ``[eps, 1 - eps]`` as the
        encoder's everywhere (:func:`daps.functional.categorical_log_probs`); the priors over codes train and
        report the exact values. ``conditioning``: :meth:`conditioning` of ``x``, if the caller has it.
        """
        k, b, t = indices.shape
        flat = indices.transpose(0, 1).reshape(b * k, t)  # (B*K, T) b-major
        nodes = prefix_nodes(flat, k, self.vocab_size) if self._shares_prefixes(k) else None
        if nodes is not None and nodes.count <= SHARED_PASS_MAX_NODES * flat.numel():
            memory_kv = self.memory(x) if conditioning is None else conditioning
            token_log_q = self._prefix_log_prob(memory_kv, flat, k, clamp, nodes)  # (B*K, T)
        else:
            flat, logits = self._teacher_forced(x, indices, conditioning)  # (B*K, T), (B*K, T, V)
            token_log_q = token_log_prob(logits, flat, clamp)  # (B*K, T)
        return token_log_q.view(b, k, t).transpose(0, 1)  # (K, B, T)

    # ----------------------------------------------------------------------------------------------
    # Sampling: one loop (daps.nets.sampling), three step functions

    @torch.no_grad()
    def sample(
        self,
        x: torch.Tensor,
        num_samples: int = 1,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
        conditioning: MemoryKV | None = None,
    ) -> Samples:
        """Draw ``num_samples`` codes per input by ancestral sampling at temperature 1: ``(K, B, T)`` codes.

        The step function is the cached one, the static-cache one once :meth:`compile_sampler` has run, or with
        ``use_cache=False`` one that recomputes the whole prefix (a slow reference that gives identical codes under
        the same generator). ``conditioning``: :meth:`conditioning` of ``x``, if the caller has it.
        """
        memory_kv = self.memory(x) if conditioning is None else conditioning
        if not use_cache:
            step = self._recomputing_step(memory_kv, num_samples)
        elif self._static_step_fn is not None:
            step = self._static_cache_step(memory_kv, num_samples)
        elif self._shares_prefixes(num_samples):
            step = self._shared_step(memory_kv, num_samples)
        else:
            step = self._cached_step(memory_kv, num_samples)
        return sample_autoregressive(step, x.shape[0], num_samples, self.num_tokens, x.device, generator)

    def sample_scored(
        self, x: torch.Tensor, num_samples: int = 1, generator: torch.Generator | None = None
    ) -> Samples:
        """:meth:`sample` with the scoring done on the way: ``token_log_q`` keeps its gradient, so training on
        ``log q(z | x)`` needs no teacher-forced pass (:meth:`log_prob`) over the codes afterwards.

        The one-token steps run with gradients through a cache kept by concatenation
        (:class:`~daps.nets.kv_cache.GrowingKVCache`). The codes equal :meth:`sample`'s under the same generator,
        and ``token_log_q`` equals :meth:`log_prob` of them, value and gradient, up to float rounding (the same
        products, grouped by position). Faster than :meth:`sample` + :meth:`log_prob` at short T, no faster at
        T = 64 (BENCHMARKS.md, "One encoder pass"); the graph keeps every step's keys and values, (T + 1) / 2 times
        the teacher-forced pass's. Not with ``mask_token0``, whose teacher-forced log q is not the sampling
        probability.
        """
        if self.mask_token0:
            raise ValueError("sample_scored gives the sampling log q; with mask_token0 training reads the "
                             "teacher-forced one (log_prob), which differs for codes containing 0")
        memory_kv = self.memory(x)
        if self._shares_prefixes(num_samples):
            step = self._shared_step(memory_kv, num_samples, differentiable=True)
        else:
            step = self._cached_step(memory_kv, num_samples, differentiable=True)
        return sample_autoregressive(step, x.shape[0], num_samples, self.num_tokens, x.device, generator,
                                     score=token_log_prob)

    def _recomputing_step(self, memory_kv: MemoryKV, num_samples: int) -> SamplingStep:
        """Teacher-force the whole prefix at every position (no cache)."""

        def step(indices: torch.Tensor, pos: int) -> torch.Tensor:
            prefix = indices[:, : pos + 1]  # (B*K, pos+1): the last entry is a placeholder, shifted out
            return self._teacher_forced_logits(memory_kv, prefix, num_samples)[:, pos]  # (B*K, V)

        return step

    def _sampling_state(
        self, memory_kv: MemoryKV, num_samples: int, differentiable: bool
    ) -> tuple[list[SelfAttentionCache], list[torch.Tensor]]:
        """What one sampling call reuses at every position: each decoder layer's self-attention cache (a
        :class:`KVCache`, or a :class:`GrowingKVCache` when gradients flow through it) and fused q/k/v weight."""
        caches: list[SelfAttentionCache]
        if differentiable:
            caches = [GrowingKVCache() for _ in self.decoder_blocks]
        else:
            caches = [KVCache(k, v) for k, v in self._cache_tensors(memory_kv, num_samples, zeroed=False)]
        return caches, [block.self_attn.qkv_weight() for block in self.decoder_blocks]

    def _cached_step(self, memory_kv: MemoryKV, num_samples: int, differentiable: bool = False) -> SamplingStep:
        """One query per position against the keys so far: in a preallocated :class:`KVCache`, or, with
        ``differentiable``, in a :class:`GrowingKVCache` that gradients flow through."""
        caches, qkv_weights = self._sampling_state(memory_kv, num_samples, differentiable)

        def step(indices: torch.Tensor, pos: int) -> torch.Tensor:
            y = self.token_embed(_previous_tokens(indices, pos))[:, None] + self.pos[pos]  # (B*K, 1, E)
            return self._decode_one(y, memory_kv, num_samples, caches, pos, qkv_weights)  # (B*K, V)

        return step

    def _shared_step(self, memory_kv: MemoryKV, num_samples: int, differentiable: bool = False) -> SamplingStep:
        """:meth:`_cached_step` computed once per distinct prefix among the K rows of an input at each position
        (:meth:`DecoderBlock.step_nodes`); the logits are each row's node's (with ``differentiable``, through a
        :class:`GrowingKVCache`, so that a row's gradient reaches its node). Distinct prefixes only grow in number
        along the code, so from the first position with more than ``SHARED_STEP_MAX_NODES`` of the rows distinct,
        every later one runs over the rows without looking."""
        caches, qkv_weights = self._sampling_state(memory_kv, num_samples, differentiable)
        n = memory_kv[0][0].shape[0] * num_samples
        rows = torch.arange(n, device=self.pos.device)
        state: dict[str, torch.Tensor | None] = {"node_of": None}  # each row's node at the previous position

        def step(indices: torch.Tensor, pos: int) -> torch.Tensor:
            node_of, count = state["node_of"], 0
            if pos == 0:  # the nodes are the inputs
                node_of, count = rows // num_samples, n // num_samples
            elif node_of is not None:
                distinct, node_of = torch.unique(node_of * self.vocab_size + indices[:, pos - 1], return_inverse=True)
                count = distinct.numel()
            if node_of is None or count > SHARED_STEP_MAX_NODES * n:  # the gathers would cost more: every row
                state["node_of"] = None
                y = self.token_embed(_previous_tokens(indices, pos))[:, None] + self.pos[pos]  # (N, 1, E)
                return self._decode_one(y, memory_kv, num_samples, caches, pos, qkv_weights)  # (N, V)
            state["node_of"] = node_of
            first = rows.new_full((count,), n).scatter_reduce_(0, node_of, rows, "amin")  # (M,) each node's first row
            tokens = _previous_tokens(indices, pos).index_select(0, first)  # (M,)
            y = self.token_embed(tokens)[:, None] + self.pos[pos]  # (M, 1, E)
            for block, kv, cache, weight in zip(self.decoder_blocks, memory_kv, caches, qkv_weights):
                y = block.step_nodes(y, kv, num_samples, cache, pos, (node_of, first), weight)  # (M, 1, E)
            return self.head(self.decoder_ln(y[:, 0])).index_select(0, node_of)  # (N, V)

        return step

    def _static_cache_step(self, memory_kv: MemoryKV, num_samples: int) -> SamplingStep:
        """:meth:`static_step` (compiled by :meth:`compile_sampler`) over the cache bucket each position reads."""
        k_views, v_views, bucket_of = self._static_caches(memory_kv, num_samples)
        t = self.num_tokens
        positions = torch.arange(t, device=self.pos.device)  # (T,)
        static_step = self._static_step_fn
        assert static_step is not None

        def step(indices: torch.Tensor, pos: int) -> torch.Tensor:
            bucket = bucket_of[pos]
            token = _previous_tokens(indices, pos)  # (B*K,)
            return static_step(token, positions[pos], memory_kv, k_views[bucket], v_views[bucket], num_samples)

        return step

    def _static_caches(
        self, memory_kv: MemoryKV, num_samples: int
    ) -> tuple[dict[int, list[torch.Tensor]], dict[int, list[torch.Tensor]], list[int]]:
        """The static sampler's caches, owned by the encoder and reused (zeroed) by every call with the same
        shapes: per cache bucket, per-layer views ``(B*K, h, L, d)`` of key and value buffers ``(B*K, h, T, d)``,
        and each position's bucket.

        The compiled step writes into them in place; CUDA graphs (``mode="reduce-overhead"``) accept that only of
        inputs whose address never changes, so the same tensors are passed at every call and marked as static
        addresses. The two most recent shapes are kept (training and validation batches)."""
        mem_k = memory_kv[0][0]  # (B, h, P, d)
        b, heads, _, d = mem_k.shape
        t = self.num_tokens
        key = (b * num_samples, heads, t, d, mem_k.dtype, mem_k.device, self._smallest_bucket)
        entry = self._static_pool.pop(key, None)
        if entry is None:
            caches = self._cache_tensors(memory_kv, num_samples, zeroed=True)
            sizes = cache_buckets(t, self._smallest_bucket)
            k_views = {size: [k[:, :, :size] for k, _ in caches] for size in sizes}
            v_views = {size: [v[:, :, :size] for _, v in caches] for size in sizes}
            for view in [*k_views.values(), *v_views.values()]:
                for tensor in view:
                    torch._dynamo.mark_static_address(tensor)
            bucket_of = [min(size for size in sizes if size > pos) for pos in range(t)]
            entry = (caches, k_views, v_views, bucket_of)
        else:  # zeroed again: a masked key gets weight 0, and 0 times a stale NaN would still be NaN
            for k, v in entry[0]:
                k.zero_()
                v.zero_()
        self._static_pool[key] = entry  # most recent last
        while len(self._static_pool) > 2:
            self._static_pool.pop(next(iter(self._static_pool)))
        return entry[1], entry[2], entry[3]

    def _cache_tensors(
        self, memory_kv: MemoryKV, num_samples: int, zeroed: bool
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per decoder layer, self-attention key and value buffers ``(B*K, h, T, d)``."""
        mem_k = memory_kv[0][0]  # (B, h, P, d)
        b, heads, _, d = mem_k.shape
        shape = (b * num_samples, heads, self.num_tokens, d)  # (B*K, h, T, d)
        new = mem_k.new_zeros if zeroed else mem_k.new_empty
        return [(new(shape), new(shape)) for _ in self.decoder_blocks]

    def _decode_one(
        self,
        y: torch.Tensor,
        memory_kv: MemoryKV,
        num_samples: int,
        caches: Sequence[SelfAttentionCache],
        pos: int | torch.Tensor,
        qkv_weights: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Logits ``(N, V)`` of the next token from the decoder input ``y (N, 1, E)`` at ``pos``, extending
        ``caches``; ``qkv_weights``: each block's fused self-attention projection, if the caller reuses them."""
        weights = qkv_weights if qkv_weights is not None else [None] * len(self.decoder_blocks)
        for block, kv, cache, weight in zip(self.decoder_blocks, memory_kv, caches, weights):
            y = block.step(y, kv, num_samples, cache, pos, weight)  # (N, 1, E)
        return self.head(self.decoder_ln(y[:, 0]))  # (N, V)

    def compile_sampler(self, compile: bool = True, smallest_bucket: int = 16, **compile_kwargs) -> None:
        """Sample through the static-shape one-token step :meth:`static_step`, compiled with
        ``torch.compile(**compile_kwargs)`` (one graph per cache length of :func:`cache_buckets`, shared by all
        positions of that bucket: the position is a tensor), or eager with ``compile=False``.
        ``smallest_bucket >= T`` reads the whole cache at every position (one graph). Samples equal the default
        path's under the same generator, up to float rounding in the compiled kernels."""
        self._smallest_bucket = int(smallest_bucket)
        if compile:
            # One specialized graph per cache bucket (dynamic=False): static shapes are what CUDA graphs need.
            compile_kwargs.setdefault("dynamic", False)
            # Every (bucket, batch shape, encoder) gets its own graph, and all count against one limit per code
            # object (static_step's): training, validation and figure batches, and PPO's two encoders, pass
            # torch's default of 8, past which calls run eagerly without a word. Raised so they stay compiled.
            import torch._dynamo.config as dynamo_config

            dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, SAMPLER_RECOMPILE_LIMIT)
            self._static_step_fn = torch.compile(self.static_step, **compile_kwargs)
        else:
            self._static_step_fn = self.static_step

    def static_step(
        self,
        token: torch.Tensor,
        pos: torch.Tensor,
        memory_kv: MemoryKV,
        k_caches: list[torch.Tensor],
        v_caches: list[torch.Tensor],
        num_samples: int,
    ) -> torch.Tensor:
        """Logits ``(B*K, V)`` of the token after ``token (B*K,)`` at the 0-d position ``pos``; ``k_caches`` and
        ``v_caches`` hold one zero-initialized bucket ``(B*K, h, L, d)`` per decoder layer."""
        y = self.token_embed(token)[:, None] + self.pos.index_select(0, pos.view(1))  # (B*K, 1, E)
        caches = [StaticKVCache(kc, vc) for kc, vc in zip(k_caches, v_caches)]
        return self._decode_one(y, memory_kv, num_samples, caches, pos)  # (B*K, V)

    # ----------------------------------------------------------------------------------------------
    # Relaxed sampling (Gumbel-Softmax, GR-MCK)

    def sample_relaxed(
        self, x: torch.Tensor, relax: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One code per input, differentiable through the whole sampling chain (backprop through time).

        At each position ``relax(log_probs (B, V))`` returns the sampled ``index (B,)`` and a
        straight-through one-hot ``(B, V)``; the one-hot's embedding (``onehot @ table``) is the next input,
        so gradients reach every earlier position (the original's ``algorithms/vae/models/gumbel.py``; the
        Gumbel-Softmax straight-through estimator of paper Section 2). Returns ``indices (B, T)``, the one-hots
        ``(B, T, V)`` and the clamped log-probabilities ``(B, T, V)`` of each step, all with gradients.
        """
        b, t = x.shape[0], self.num_tokens
        memory_kv = self.memory(x)
        caches = [GrowingKVCache() for _ in self.decoder_blocks]
        table = self.token_embed.weight  # (V, E)
        y = table[0].expand(b, 1, -1) + self.pos[0]  # (B, 1, E): start token 0
        indices, onehots, log_probs_all = [], [], []
        for pos in range(t):
            log_probs = categorical_log_probs(self._decode_one(y, memory_kv, 1, caches, pos))  # (B, V)
            index, onehot = relax(log_probs)  # (B,), (B, V)
            indices.append(index)
            onehots.append(onehot)
            log_probs_all.append(log_probs)
            if pos + 1 < t:
                y = (onehot @ table)[:, None] + self.pos[pos + 1]  # (B, 1, E)
        return torch.stack(indices, 1), torch.stack(onehots, 1), torch.stack(log_probs_all, 1)  # (B, T), (B, T, V) x2
