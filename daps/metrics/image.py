"""Reconstruction metrics per image (SPEC 8.3, 8.5). Inputs ``(N, ...)``; outputs ``(N,)`` float32."""

from __future__ import annotations

import torch


def l2_distance(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Euclidean distance over all data dims, ``sqrt(sum (x_hat - x)^2)`` (the paper's "L2", SPEC 8.5)."""
    return (x_hat.float() - x.float()).flatten(1).square().sum(1).sqrt()


def mse_per_image(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image on the [0, 1] scale (both inputs clipped to [0, 1])."""
    return (x_hat.float().clamp(0, 1) - x.float().clamp(0, 1)).flatten(1).square().mean(1)


def psnr_per_image(x_hat: torch.Tensor, x: torch.Tensor, min_mse: float = 1e-10) -> torch.Tensor:
    """PSNR in dB per image for data range 1: ``-10 log10(mse)``; ``mse`` floored at ``min_mse``
    (a perfect reconstruction reads 100 dB rather than infinity)."""
    return -10.0 * torch.log10(mse_per_image(x_hat, x).clamp_min(min_mse))
