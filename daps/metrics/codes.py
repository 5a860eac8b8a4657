"""Statistics of the discrete codes used over a dataset. ``indices (N, T)`` int64."""

from __future__ import annotations

import torch

from daps.errors import UserError
from daps.functional import is_integer_dtype


def _check_codes(indices: torch.Tensor, vocab_size: int) -> None:
    """``indices (N, T)`` of integer codes in ``[0, vocab_size)`` with N, T >= 1; else UserError (a code out of range
    would be counted as a used code, or crash the count)."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        raise UserError(f"vocab_size must be a positive integer, got {vocab_size!r}")
    if indices.dim() != 2 or indices.numel() == 0:
        raise UserError(f"codes must be (N, T) with N, T >= 1, got shape {tuple(indices.shape)}")
    if not is_integer_dtype(indices.dtype):
        raise UserError(f"codes must be integers, got {indices.dtype}")
    low, high = int(indices.min()), int(indices.max())
    if low < 0 or high >= vocab_size:
        raise UserError(f"codes must lie in [0, {vocab_size}), got values from {low} to {high}")


def code_histogram(indices: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Counts of each code over all positions: ``(N, T) -> (V,)``."""
    _check_codes(indices, vocab_size)
    return torch.bincount(indices.flatten().long(), minlength=vocab_size)


def codebook_utilization(indices: torch.Tensor, vocab_size: int) -> float:
    """Fraction of the V codes used at least once anywhere."""
    return float((code_histogram(indices, vocab_size) > 0).sum()) / vocab_size


def code_perplexity(indices: torch.Tensor, vocab_size: int) -> float:
    """``exp(entropy)`` of the empirical code distribution pooled over positions (1 .. V)."""
    p = code_histogram(indices, vocab_size).double()
    p = p[p > 0] / p.sum()
    return float(torch.exp(-(p * p.log()).sum()))


def position_code_entropy(indices: torch.Tensor, vocab_size: int) -> float:
    """Entropy (nats) of the empirical code distribution at each position, averaged over positions."""
    _check_codes(indices, vocab_size)
    total = 0.0
    for t in range(indices.shape[1]):
        p = torch.bincount(indices[:, t], minlength=vocab_size).double()
        p = p[p > 0] / p.sum()
        total += float(-(p * p.log()).sum())
    return total / indices.shape[1]
