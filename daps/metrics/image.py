"""Reconstruction metrics per image (original: utils/dm_pix_metrics.py, data/datasets/base_dataset.py). Inputs ``(N,
...)``; outputs ``(N,)`` float32."""

from __future__ import annotations

import torch

from daps.errors import UserError


def _check_pair(x_hat: torch.Tensor, x: torch.Tensor) -> None:
    """Two batches of the same shape ``(N, ...)`` of floating-point images (uint8 pixels would be clipped to
    [0, 1] and score as perfect)."""
    if x_hat.shape != x.shape or x.dim() < 2:
        raise UserError(f"images must be two batches (N, ...) of the same shape, got {tuple(x_hat.shape)} and "
                        f"{tuple(x.shape)}")
    if not (x_hat.dtype.is_floating_point and x.dtype.is_floating_point):
        raise UserError(f"images must be floating point on the [0, 1] scale, got {x_hat.dtype} and {x.dtype} "
                        "(divide uint8 pixels by 255)")


def _check_unit_scale(x: torch.Tensor, high: float = 1.0) -> None:
    """The reference images ``x`` lie in ``[0, high]``. Both inputs are clipped to that range before scoring, so a
    batch on the 0-255 or the [-1, 1] scale would be scored silently wrong; ``x_hat`` (a decoder mean may overshoot)
    is clipped without a word. Up to half an 8-bit level (``high / 510``) outside is round-off, clipped as well: a
    standardization undone in float32 leaves e.g. -3e-8 or 1 + 3e-8, which is an image on [0, 1]."""
    if x.numel() == 0:
        return
    low, top = torch.stack(torch.aminmax(x.detach())).tolist()  # one host read
    slack = high / 510
    if low < -slack or top > high + slack:
        raise UserError(f"the reference images x must lie in [0, {high:g}], got values from {low:g} to {top:g}: "
                        "divide 0-255 pixels by 255, and map model-scale images (standardized, [-1, 1]) back to "
                        "[0, 1] first")


def l2_distance(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Euclidean distance over all data dims, ``sqrt(sum (x_hat - x)^2)`` (the paper's "L2", Table 1)."""
    _check_pair(x_hat, x)
    return (x_hat.float() - x.float()).flatten(1).square().sum(1).sqrt()


def mse_per_image(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image on the [0, 1] scale (``x_hat`` clipped to [0, 1]; ``x``, the reference, must
    lie there up to round-off: UserError otherwise)."""
    _check_pair(x_hat, x)
    _check_unit_scale(x)
    return (x_hat.float().clamp(0, 1) - x.float().clamp(0, 1)).flatten(1).square().mean(1)


def psnr_per_image(x_hat: torch.Tensor, x: torch.Tensor, min_mse: float = 1e-10) -> torch.Tensor:
    """PSNR in dB per image for data range 1: ``-10 log10(mse)`` of :func:`mse_per_image` (``x`` on [0, 1]);
    ``mse`` floored at ``min_mse`` (a perfect reconstruction reads 100 dB rather than infinity)."""
    return -10.0 * torch.log10(mse_per_image(x_hat, x).clamp_min(min_mse))


def _gaussian_kernel_1d(window: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Normalised 1-D Gaussian taps at offsets ``k - (window - 1) / 2`` (symmetric for odd and even sizes)."""
    offsets = torch.arange(window, dtype=torch.float64, device="cpu") - (window - 1) / 2.0  # float64 on the host
    taps = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return (taps / taps.sum()).to(dtype=dtype, device=device)


def ssim_per_image(
    x_hat: torch.Tensor,
    x: torch.Tensor,
    max_val: float = 1.0,
    window: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Structural similarity per image (the dm_pix formulation, as the original's utils/dm_pix_metrics.py), ``(N, C, H,
    W) -> (N,)`` float32.

    Both inputs are clipped to ``[0, max_val]``; ``x``, the reference, must lie there up to round-off (UserError
    otherwise).
    Local statistics use a separable Gaussian window (``window`` taps, std ``sigma``) with "valid" filtering (no
    padding), per channel; variances are clamped to ``>= eps^2`` (float32 eps) and the covariance to
    ``+-sqrt(var_x * var_y)``. The SSIM map is averaged over its valid positions and the channels of each image.

    The statistics are computed in float64: ``E[x^2] - E[x]^2`` cancels badly in float32 in flat regions, where
    the map is sensitive to variance errors on the scale of ``1 / c2``; float64 removes that round-off
    (agreement with scikit-image's float64 SSIM ~1e-15 instead of ~1e-6), and the cost is negligible here.
    """
    _check_pair(x_hat, x)
    _check_unit_scale(x, max_val)
    if x.dim() != 4:
        raise ValueError(f"ssim_per_image expects (N, C, H, W) images, got shape {tuple(x.shape)}")
    if window < 1:
        raise ValueError(f"ssim_per_image: window must be >= 1, got {window}")
    n, c, h, w = x.shape
    if h < window or w < window:
        raise ValueError(
            f"ssim_per_image: images of size {h}x{w} are smaller than the {window}x{window} SSIM window"
        )
    dtype = torch.float64
    a = x_hat.to(dtype).clamp(0.0, max_val)
    b = x.to(dtype).clamp(0.0, max_val)

    # All five local moments in one separable, depthwise ("valid") filtering pass: (N*5*C, 1, H, W).
    stack = torch.stack([a, b, a * a, b * b, a * b], dim=1).reshape(n * 5 * c, 1, h, w)
    taps = _gaussian_kernel_1d(window, sigma, dtype, x.device)
    filtered = torch.nn.functional.conv2d(stack, taps.view(1, 1, 1, window))  # along W
    filtered = torch.nn.functional.conv2d(filtered, taps.view(1, 1, window, 1))  # along H
    mu_a, mu_b, e_aa, e_bb, e_ab = filtered.reshape(n, 5, c, h - window + 1, w - window + 1).unbind(1)

    eps2 = torch.finfo(torch.float32).eps ** 2
    var_a = (e_aa - mu_a * mu_a).clamp_min(eps2)
    var_b = (e_bb - mu_b * mu_b).clamp_min(eps2)
    cov_ab = e_ab - mu_a * mu_b
    bound = torch.sqrt(var_a * var_b)
    cov_ab = torch.maximum(torch.minimum(cov_ab, bound), -bound)

    c1 = (k1 * max_val) ** 2
    c2 = (k2 * max_val) ** 2
    numer = (2.0 * mu_a * mu_b + c1) * (2.0 * cov_ab + c2)
    denom = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    return (numer / denom).flatten(1).mean(1).float()
