"""Log-likelihoods log p(x | decoder output), summed over all data dimensions, in nats.

A likelihood object tells a method how many output channels the decoder needs (``param_shape``), how to
score data (``log_prob``) and what the reconstruction is (``mean``); methods never look inside.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from daps.functional import FLOAT32_EPS

# Probabilities are clamped to [eps, 1 - eps] before taking logs (SPEC 4.1): logits to +-15.94.
_MAX_LOGIT = math.log((1.0 - FLOAT32_EPS) / FLOAT32_EPS)


def bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``log p(x | logits)`` of independent Bernoulli pixels, summed over the data dims.

    ``x (N, *data)`` with values in {0, 1}; ``logits (*extra, N, *data)``, e.g. ``(K, B, C, H, W)`` for K
    decodings of each of B images (x is broadcast, not copied). Returns ``(*extra, N)`` float32.
    """
    logits = logits.float().clamp(-_MAX_LOGIT, _MAX_LOGIT)
    nll = F.binary_cross_entropy_with_logits(logits, x.float().expand_as(logits), reduction="none")
    return -nll.flatten(-(x.dim() - 1)).sum(-1)


def bernoulli_mean(logits: torch.Tensor) -> torch.Tensor:
    """Pixel probabilities (the decoder mean) from logits."""
    return torch.sigmoid(logits.float().clamp(-_MAX_LOGIT, _MAX_LOGIT))


class Bernoulli:
    """Independent Bernoulli pixels; the decoder outputs one logit per pixel (binarized MNIST, SPEC 4.1)."""

    name = "bernoulli"

    def param_shape(self, image_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(image_shape)

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``params (*extra, N, C, H, W)``, ``x (N, C, H, W)`` -> ``(*extra, N)``."""
        return bernoulli_log_prob(params, x)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return bernoulli_mean(params)
