"""Log-likelihoods log p(x | decoder output), summed over all data dimensions, in nats.

A likelihood object tells a method how many output channels the decoder needs (``param_shape``), how to
score data (``log_prob``) and what the reconstruction is (``mean``); methods never look inside.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from daps.functional import FLOAT32_EPS

# Probabilities are clamped to [eps, 1 - eps] before taking logs (original: distributions/bernoulli.py): logits to
# +-15.94.
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
    """Independent Bernoulli pixels; the decoder outputs one logit per pixel (binarized MNIST, original:
    distributions/bernoulli.py)."""

    name = "bernoulli"

    def param_shape(self, image_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(image_shape)

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``params (*extra, N, C, H, W)``, ``x (N, C, H, W)`` -> ``(*extra, N)``."""
        return bernoulli_log_prob(params, x)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return bernoulli_mean(params)


def gaussian_log_prob(mean: torch.Tensor, log_var: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``log N(x; mean, diag exp(log_var))`` summed over the data dims (original: distributions/diagonal_gaussian.py).

    ``x (N, *data)``; ``mean`` and ``log_var`` ``(*extra, N, *data)`` (x is broadcast). Returns ``(*extra, N)``.
    """
    mean, log_var = mean.float(), log_var.float()
    nll = 0.5 * (math.log(2 * math.pi) + log_var + (x.float() - mean).square() * torch.exp(-log_var))
    return -nll.flatten(-(x.dim() - 1)).sum(-1)


class Gaussian:
    """Diagonal Gaussian pixels with a learned variance: the decoder outputs ``2C`` channels, the mean and
    the log-variance, which is hard-clipped to ``[log min_var, log max_var]`` (zero gradient outside; paper Sec. 4).

    NOTE(paper): the paper states a variance range of [0.01, 1]; the original code applies it on ImageNet
    only and leaves CIFAR-10 unclipped (``min_var`` = float32 eps, ``max_var`` = inf), the ``variance_clip=none``
    setting of :class:`daps.config.DecoderConfig`.
    """

    name = "gaussian"

    def __init__(self, min_var: float = 0.01, max_var: float = 1.0):
        if not 0 < min_var <= max_var:
            raise ValueError(f"need 0 < min_var <= max_var, got {min_var} and {max_var}")
        self.min_log_var, self.max_log_var = math.log(min_var), math.log(max_var)

    def param_shape(self, image_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (2 * image_shape[0], *image_shape[1:])

    def split(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``params (..., 2C, H, W)`` -> mean and clipped log-variance, ``(..., C, H, W)`` each."""
        mean, log_var = params.chunk(2, dim=-3)
        return mean, log_var.clamp(self.min_log_var, self.max_log_var)

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``params (*extra, N, 2C, H, W)``, ``x (N, C, H, W)`` -> ``(*extra, N)``."""
        mean, log_var = self.split(params)
        return gaussian_log_prob(mean, log_var, x)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return params.chunk(2, dim=-3)[0].float()


class FixedGaussian:
    """Diagonal Gaussian with one fixed variance for every dimension: the decoder outputs only the mean (paper
    App. F: motion features, variance 0.25). ``log p`` sums over all dimensions, as for images."""

    name = "gaussian-fixed"

    def __init__(self, variance: float = 0.25):
        if not variance > 0:
            raise ValueError(f"variance must be positive, got {variance}")
        self.log_var = math.log(variance)

    def param_shape(self, image_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(image_shape)

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``params (*extra, N, *data)`` (the mean), ``x (N, *data)`` -> ``(*extra, N)``."""
        return gaussian_log_prob(params, torch.full_like(params, self.log_var, dtype=torch.float32), x)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return params.float()
