"""The four-pattern toy problem of the learning tests, and what a code-ignoring decoder can reach on it.

Four fixed binary 28x28 patterns, trained on with a Bernoulli likelihood. A decoder that ignores the code
can do no better than predicting the per-pixel mean of the patterns, so the average log-likelihood any such
decoder reaches is bounded by ``sum_j m_j log m_j + (1 - m_j) log(1 - m_j)`` (``m_j`` the pixel mean; about
-350 nats here). Training that beats this bound by a wide margin, with reconstructions that tell the
patterns apart, shows that the encoder's code carries information. The helpers are plain functions (not
fixtures) so that both ``test_contract.py`` and ``test_methods.py`` use the same problem.
"""

from __future__ import annotations

import torch

# Gain over the code-ignoring bound (nats per image) that a learning test asks for. With the encoder frozen at
# its random initialization the stochastic-encoder methods end at most ~56 nats above the bound (the NA
# encoders' random categorical heads already depend a little on x); a code that separates even one of the
# four patterns from the others gains ~120 nats and separating all four gains ~350 (log p -> 0).
MARGIN_NATS = 100.0


def toy_patterns(generator: torch.Generator) -> torch.Tensor:
    """Four binary patterns ``(4, 1, 28, 28)`` with ~30% of pixels on."""
    return (torch.rand(4, 1, 28, 28, generator=generator) > 0.7).float()


def code_ignoring_bound(patterns: torch.Tensor) -> float:
    """The best mean log-likelihood (nats) of ``patterns (N, *data)`` under independent Bernoulli pixels whose
    probabilities do not depend on the code: the per-pixel mean fit, computed exactly in float64."""
    m = patterns.double().mean(0)  # (*data)
    return float((torch.special.xlogy(m, m) + torch.special.xlogy(1 - m, 1 - m)).sum())


def identified_patterns(x_hat: torch.Tensor, patterns: torch.Tensor) -> int:
    """How many patterns have a reconstruction nearer (L2) to themselves than to any other pattern. A decoder
    that ignores the code gives every pattern the same reconstruction, so this is at most 1 for it."""
    dist = torch.cdist(x_hat.flatten(1).double(), patterns.flatten(1).double())  # (N, N)
    return int((dist.argmin(1) == torch.arange(len(patterns))).sum())
