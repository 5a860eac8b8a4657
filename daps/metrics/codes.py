"""Statistics of the discrete codes used over a dataset. ``indices (N, T)`` int64."""

from __future__ import annotations

import torch


def code_histogram(indices: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Counts of each code over all positions: ``(N, T) -> (V,)``."""
    return torch.bincount(indices.flatten(), minlength=vocab_size)


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
    total = 0.0
    for t in range(indices.shape[1]):
        p = torch.bincount(indices[:, t], minlength=vocab_size).double()
        p = p[p > 0] / p.sum()
        total += float(-(p * p.log()).sum())
    return total / indices.shape[1]
