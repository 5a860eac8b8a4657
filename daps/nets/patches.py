"""Images as a grid of flattened patches, the token inputs of the vision transformers.

As the original's ``jadex/data/utils/image_patcher.py`` and ``jadex/utils/__init__.py::get_closest_square``
(paper Figure 1 and Appendix F): T patches in a near-square grid, each padded up to an even size, row-major.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


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
    return x.reshape(b, rows * cols, ph * pw * c)  # (B, T, ph*pw*C)
