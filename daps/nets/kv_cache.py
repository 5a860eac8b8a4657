"""Self-attention key/value caches of the autoregressive decoder, one per decoder layer.

Each cache's ``update(k, v, pos)`` stores position ``pos``'s keys and values ``(N, h, 1, d)`` and returns the keys
and values to attend over, ``(N, h, L, d)`` each, with a mask of the positions not to attend (or ``None``):

- :class:`KVCache`: preallocated, written in place (no gradient); returns the ``pos + 1`` keys so far.
- :class:`GrowingKVCache`: kept by concatenation, so gradients flow through it (relaxed sampling).
- :class:`StaticKVCache`: static shapes for ``torch.compile``; returns a whole bucket of :func:`cache_buckets`.

The original (``jadex/networks/autoregressive_sampling.py``) grows its cache in segments of ``grow_target_every``
positions so early steps attend over short caches; the buckets of the static cache play that role here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch


class SelfAttentionCache(Protocol):
    """What a decoder block's one-token step needs of a cache (``pos``: an int, or a 0-d tensor for the static
    cache)."""

    def update(
        self, k: torch.Tensor, v: torch.Tensor, pos: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]: ...


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


@dataclass
class GrowingKVCache:
    """Self-attention keys and values kept by concatenation, so gradients flow through them (used when
    backpropagating through the sampling chain, e.g. Gumbel-Softmax)."""

    k: torch.Tensor | None = None
    v: torch.Tensor | None = None

    def update(self, k: torch.Tensor, v: torch.Tensor, pos: int) -> tuple[torch.Tensor, torch.Tensor, None]:
        """Append ``k, v (N, h, 1, d)``; return all keys and values ``(N, h, pos+1, d)`` and no mask."""
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)  # (N, h, pos+1, d)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)  # (N, h, pos+1, d)
        return self.k, self.v, None


def cache_buckets(length: int, smallest: int = 16) -> list[int]:
    """The static cache lengths of the compiled sampler: powers of two from ``smallest``, capped at ``length``
    (which is always the last). Position p reads the smallest bucket > p, so early tokens do not attend over all
    T keys, at the price of one compiled graph per bucket (7 for T = 1024). ``smallest`` grows with T so there
    are never more than 7 buckets per batch shape (the compiled sampler raises torch.compile's recompile limit to
    fit several shapes: :data:`daps.nets.ar_encoder.SAMPLER_RECOMPILE_LIMIT`)."""
    buckets, size = [], max(smallest, length >> 6)
    while size < length:
        buckets.append(size)
        size *= 2
    return [*buckets, length]


@dataclass
class StaticKVCache:
    """Like :class:`KVCache`, but with static shapes for ``torch.compile``: written at a 0-d tensor position and
    returned whole (a bucket of :func:`cache_buckets`, a view ``(N, h, L, d)`` of the full cache), with a mask of
    the positions not written yet. The caches must start zeroed: a masked key gets weight 0, and 0 times
    uninitialized memory (possibly NaN) would still be NaN."""

    k: torch.Tensor
    v: torch.Tensor

    def update(
        self, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Store ``k, v (N, h, 1, d)`` at ``pos``; return the whole bucket and the mask ``(L,)`` of later positions."""
        self.k.index_copy_(2, pos.view(1), k)
        self.v.index_copy_(2, pos.view(1), v)
        later = torch.arange(self.k.shape[2], device=pos.device) > pos  # (L,) True = not to be attended
        return self.k, self.v, later
