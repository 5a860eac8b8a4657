"""Image transforms of the class-folder pipeline, as the original's ``data/utils/transforms.py``: random resized
crop (scale (0.08, 1), ratio (3/4, 4/3), bilinear, ten tries then a center crop), horizontal flip, resize of the
shorter side plus center crop, PIL -> uint8 CHW; and the seeded randomness of the pipeline (per-item generator
seeds and epoch permutations from hashes, no global RNG).
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from daps.errors import UserError

__all__ = [
    "epoch_permutation",
    "hash_seed",
    "pil_to_uint8",
    "random_horizontal_flip",
    "random_resized_crop",
    "resize_center_crop",
    "sample_crop_box",
]



def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator, device=generator.device))


def _randint(generator: torch.Generator, low: int, high: int) -> int:
    """Uniform integer in ``[low, high]`` (inclusive)."""
    return int(torch.randint(low, high + 1, (), generator=generator, device=generator.device))


def _check_range(name: str, pair: Sequence[float]) -> tuple[float, float]:
    lo, hi = float(pair[0]), float(pair[1])
    if not (0 < lo <= hi) or not math.isfinite(hi):
        raise UserError(f"{name} must be (low, high) with 0 < low <= high, got {tuple(pair)}")
    return lo, hi


def sample_crop_box(
    width: int,
    height: int,
    generator: torch.Generator,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    tries: int = 10,
) -> tuple[int, int, int, int]:
    """The box ``(left, top, w, h)`` of a random resized crop of a ``width x height`` image.

    Up to ``tries`` times: area fraction uniform in ``scale``, aspect ratio w/h log-uniform in ``ratio``;
    the first box that fits is placed uniformly. If none fits: the largest centered box whose aspect ratio
    is the image's, clamped to ``ratio``.
    """
    s_lo, s_hi = _check_range("scale", scale)
    r_lo, r_hi = _check_range("ratio", ratio)
    if width < 1 or height < 1:
        raise UserError(f"image size must be positive, got {width}x{height}")
    area = width * height
    log_lo, log_hi = math.log(r_lo), math.log(r_hi)
    for _ in range(tries):
        target = area * _uniform(generator, s_lo, s_hi)
        aspect = math.exp(_uniform(generator, log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = _randint(generator, 0, height - h)
            left = _randint(generator, 0, width - w)
            return left, top, w, h
    aspect = width / height
    if aspect < r_lo:
        w, h = width, max(1, min(height, int(round(width / r_lo))))
    elif aspect > r_hi:
        w, h = max(1, min(width, int(round(height * r_hi)))), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def random_resized_crop(
    img: Image.Image,
    size: int,
    generator: torch.Generator,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    tries: int = 10,
) -> Image.Image:
    """A box from :func:`sample_crop_box`, resized (bilinear) to ``size x size``."""
    left, top, w, h = sample_crop_box(img.width, img.height, generator, scale, ratio, tries)
    # resize(box=...) crops and resizes in one pass (no intermediate crop image).
    return img.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))


def random_horizontal_flip(img: Image.Image, generator: torch.Generator, p: float = 0.5) -> Image.Image:
    """Mirror left-right with probability ``p``."""
    if float(torch.rand((), generator=generator, device=generator.device)) < p:
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return img


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is ``size`` (bilinear), then crop the central ``size x size``."""
    w, h = img.size
    if min(w, h) != size:
        factor = size / min(w, h)
        w, h = (size, max(size, int(round(h * factor)))) if w <= h else (max(size, int(round(w * factor))), size)
        img = img.resize((w, h), Image.Resampling.BILINEAR)
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB. 16-bit grayscale (``I;16*``, and ``I`` holding values above 255) is scaled by
    1/257 first: PIL's own conversion clips it, so that a 16-bit PNG turned almost white. Floating-point
    grayscale (``F``, e.g. a 32-bit TIFF) on [0, 1] is scaled by 255 (PIL rounds it to black), on [0, 255] kept."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        values = np.asarray(img, dtype=np.float64)
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
        if img.mode == "F":
            if values.max(initial=0) <= 1.0:
                values = values * 255.0
        elif img.mode.startswith("I;16") or values.max(initial=0) > 255:
            values = values / 257.0
        img = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
    return img.convert("RGB")


def pil_to_uint8(img: Image.Image) -> torch.Tensor:
    """PIL image -> uint8 tensor ``(3, H, W)`` (converted to RGB first if needed, see :func:`to_rgb`)."""
    img = to_rgb(img)
    # The HWC -> CHW copy is done by numpy, single-threaded: with num_workers=0 items are made in the main
    # process, whose torch intra-op pool would split each 200 KB copy across threads (10x slower on a busy
    # 2-core machine).
    return torch.from_numpy(np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)))


# --------------------------------------------------------------------------- dataset


def hash_seed(tag: bytes, *values: int) -> int:
    """A well-mixed 63-bit seed from non-negative ints (so nearby seeds / indices give unrelated streams)."""
    packed = struct.pack(f"<{len(values)}Q", *(v % 2**64 for v in values))
    digest = hashlib.blake2b(packed, digest_size=8, person=tag).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def fixed_subset(n: int, count: int) -> torch.Tensor:
    """Indices of a fixed random subset of ``count`` of ``n`` items (seed 0, the same in every run), kept in the
    items' order; all ``n`` when ``count`` is 0 or at least ``n``. The splits may be sorted by class, so the first
    ``count`` would not do."""
    if 0 < count < n:
        return torch.randperm(n, generator=torch.Generator().manual_seed(0), device="cpu")[:count].sort().values
    return torch.arange(n, device="cpu")


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The visiting order of epoch ``epoch``: int64 ``(n,)``, a function of ``(seed, epoch)`` only."""
    g = torch.Generator().manual_seed(hash_seed(b"daps-epoch", seed, epoch))
    return torch.randperm(n, generator=g, device=g.device)
