"""Fréchet Inception Distance (Heusel et al. 2017) on Inception-v3 pool3 features (Szegedy et al. 2016).

Pure functions: preprocessing to the FID network's input, a streaming float64 mean / covariance accumulator,
the Fréchet distance between two Gaussians, and an ``.npz`` format for reference statistics. The network
itself (TF "2015-12-05" FID graph) lives in :mod:`daps.nets.inception`.

Protocol, as in the TTUR / pytorch-fid code: images are quantised to uint8 (truncation), mapped to [-1, 1],
resized to 299x299 (bilinear, no antialiasing), and the 2048-d pool3 features are summarised by their mean
and unbiased covariance.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from daps.data.paths import NPZ_ERRORS
from daps.errors import UserError
from daps.runfolder import atomic_path, check_output_file

logger = logging.getLogger(__name__)

FID_SIZE = 299
ArrayLike = np.ndarray | torch.Tensor


LEVEL_TOLERANCE = 1e-4
"""How far below a level ``k`` (in levels) a float32/64 value is still read as ``k`` before truncation: a stored
pixel's round trip through a dataset's standardization, ``((k - mean) / std * std + mean) / 255`` in float32, lands
up to 2e-5 levels below ``k`` (9 of the 768 ImageNet channel levels, 1 of CIFAR-10's), and would otherwise
become ``k - 1``, so a perfect reconstruction would not quantise like its original."""


FLOAT_RANGE = (-0.5, 1.5)
"""The float values :func:`fid_preprocess` takes (clipped to [0, 1]); outside, the images are on another scale."""


def off_unit_scale(images: torch.Tensor) -> tuple[float, float] | None:
    """The lowest and highest value of float images meant for the [0, 1] scale when they reach beyond
    :data:`FLOAT_RANGE` (or hold NaN): images on another scale (0-255, [-1, 1], standardized). None when they are
    within it, or empty."""
    if not images.numel():
        return None
    low, high = torch.stack(torch.aminmax(images.detach())).tolist()
    return None if FLOAT_RANGE[0] <= low <= high <= FLOAT_RANGE[1] else (low, high)  # NaN fails every comparison


def fid_preprocess(images: torch.Tensor) -> torch.Tensor:
    """FID network input: ``(N, 3, H, W)`` uint8 in 0..255 or float on the [0, 1] scale -> float32
    ``(N, 3, 299, 299)`` in [-1, 1]. Floats are quantised like saved images (``x*255``, clipped, truncated
    to uint8) so generated samples and real images go through the same path; a value is first read as the highest
    level within :data:`LEVEL_TOLERANCE` of it (half a step of its type for half precision: ``k/255`` in float16 is
    level ``k``, not ``k-1``).
    ``(N, 1, H, W)`` grayscale is repeated to 3 channels. Floats a little outside [0, 1] are clipped (a decoder
    mean may overshoot); beyond :data:`FLOAT_RANGE` they are refused, as images on another scale (0-255 floats
    would all read white)."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise UserError(f"expected images (N, 3, H, W) or (N, 1, H, W), got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        u8 = images
    elif images.is_floating_point():
        off = off_unit_scale(images)
        if off is not None:
            raise UserError(f"FID takes float images on the [0, 1] scale, got values from {off[0]:g} to {off[1]:g}: "
                            "divide 0-255 pixels by 255, and map [-1, 1] or standardized images back to [0, 1] first")
        if images.dtype in (torch.float16, torch.bfloat16):
            # a half type cannot hold k/255 (float16 stores about half the levels just below it): each value is
            # read as the highest level within half a step of its type, so that k/255 in any half type is level k
            step = torch.nextafter(images, torch.full_like(images, 2.0)) - images
            x = images.float() + step.float() / 2
        else:
            x = images if images.dtype == torch.float64 else images.float()  # float64 keeps its precision
            x = x + LEVEL_TOLERANCE / 255
        u8 = (x * 255).clamp(0, 255).to(torch.uint8)  # cast truncates toward zero
    else:
        raise UserError(f"images must be uint8 or floating point, got {images.dtype}")
    if u8.shape[1] == 1:
        u8 = u8.expand(-1, 3, -1, -1)
    x = u8.to(torch.float32) / 255 * 2 - 1
    if tuple(x.shape[-2:]) != (FID_SIZE, FID_SIZE):
        x = F.interpolate(x, size=(FID_SIZE, FID_SIZE), mode="bilinear", align_corners=False, antialias=False)
    return x


class FeatureStats:
    """Streaming mean / covariance of features ``(n, D)``, accumulated in float64.

    Keeps the sum and the sum of outer products of ``features - shift`` (``shift`` = mean of the first batch,
    so the covariance does not suffer from cancellation when the mean is large), never the features.
    """

    def __init__(self, dim: int | None = None) -> None:
        self.dim = dim
        self._num = 0
        # (shift, sum of x - shift, sum of outer products of x - shift), from the first update on
        self._moments: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def update(self, features: ArrayLike) -> FeatureStats:
        """Add a batch of features ``(n, D)``; returns self."""
        x = torch.as_tensor(features, device="cpu").detach().to(torch.float64)  # accumulated on the host
        if x.dim() != 2:
            raise UserError(f"features must be (n, D), got shape {tuple(x.shape)}")
        if self.dim is None:
            self.dim = x.shape[1]
        if x.shape[1] != self.dim:
            raise UserError(f"features have dimension {x.shape[1]}, expected {self.dim}")
        if x.shape[0] == 0:
            return self
        if not torch.isfinite(x).all():
            raise UserError("features contain NaN or inf")
        if self._moments is None:
            d = x.shape[1]
            total = torch.zeros(d, dtype=torch.float64, device="cpu")  # as x: float64 on the host
            self._moments = (x.mean(0), total, torch.zeros(d, d, dtype=torch.float64, device="cpu"))
        shift, total, outer = self._moments
        xc = x - shift
        total += xc.sum(0)
        outer += xc.T @ xc
        self._num += x.shape[0]
        return self

    @property
    def num(self) -> int:
        """Number of feature vectors seen."""
        return self._num

    @property
    def mu(self) -> np.ndarray:
        """Mean ``(D,)`` float64."""
        if self._moments is None or self._num == 0:
            raise UserError("FeatureStats is empty: call update() first")
        shift, total, _ = self._moments
        return (shift + total / self._num).numpy()

    @property
    def sigma(self) -> np.ndarray:
        """Unbiased covariance ``(D, D)`` float64 (divides by N - 1)."""
        if self._moments is None or self._num < 2:
            raise UserError(f"the covariance needs at least 2 feature vectors, got {self._num}")
        _, total, outer = self._moments
        m = total / self._num
        cov = (outer - self._num * torch.outer(m, m)) / (self._num - 1)
        return ((cov + cov.T) / 2).numpy()


def _net_device(net: nn.Module) -> torch.device:
    param = next(net.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _batches_of(images: torch.Tensor, batch_size: int) -> Iterable[torch.Tensor]:
    for start in range(0, images.shape[0], batch_size):
        yield images[start:start + batch_size]


@torch.no_grad()
def inception_features(net: nn.Module, images: torch.Tensor, batch_size: int = 50) -> torch.Tensor:
    """Pool3 features ``(N, 2048)`` float32 on CPU of images ``(N, 3, H, W)`` (uint8 or [0, 1] floats),
    run ``batch_size`` at a time on the net's device."""
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    device = _net_device(net)
    out = [net(fid_preprocess(b.to(device))).float().cpu() for b in _batches_of(images, batch_size)]
    if not out:
        return torch.zeros(0, 2048, device="cpu")
    return torch.cat(out)


def stats_of_images(net: nn.Module, batches: Iterable[torch.Tensor | tuple | list], batch_size: int = 50,
                    num_images: int | None = None) -> FeatureStats:
    """:class:`FeatureStats` of the pool3 features of a stream of image batches ``(n, 3, H, W)`` (uint8 or
    [0, 1] floats; a ``(images, labels, ...)`` tuple uses its first item). Stops after ``num_images``
    images if given (ValueError if the stream is shorter)."""
    stats = FeatureStats()
    for batch in batches:
        if isinstance(batch, (tuple, list)):
            batch = batch[0]
        if num_images is not None:
            batch = batch[: num_images - stats.num]
        stats.update(inception_features(net, batch, batch_size))
        if num_images is not None and stats.num >= num_images:
            break
    if num_images is not None and stats.num < num_images:
        raise UserError(f"asked for {num_images} images but the batches held only {stats.num}")
    logger.debug("FID stats over %d images", stats.num)
    return stats


def _as_float64(a: Any, name: str) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    a = np.asarray(a, dtype=np.float64)
    if not np.isfinite(a).all():
        raise UserError(f"{name} contains NaN or inf")
    return a


def _check_mu_sigma(mu: np.ndarray, sigma: np.ndarray, name: str) -> None:
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise UserError(f"{name}: mu must be (D,) and sigma (D, D); got {mu.shape} and {sigma.shape}")


def _check_stored_stats(mu: np.ndarray, sigma: np.ndarray, name: str) -> None:
    """Statistics read from a file: ``mu`` and ``sigma`` finite, ``sigma`` symmetric and positive semidefinite up to
    rounding (a damaged sigma gave a negative "FID")."""
    _check_mu_sigma(mu, sigma, name)
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise UserError(f"{name}: mu and sigma must be finite")
    scale = max(float(np.abs(sigma).max(initial=0.0)), 1e-300)
    if np.abs(sigma - sigma.T).max(initial=0.0) > 1e-6 * scale:
        raise UserError(f"{name}: sigma is not symmetric, so it is not a covariance matrix")
    if np.linalg.eigvalsh(sigma).min(initial=0.0) < -1e-6 * scale:
        raise UserError(f"{name}: sigma has negative eigenvalues, so it is not a covariance matrix")


def _psd_factor(a: np.ndarray) -> np.ndarray:
    """A factor ``F`` with ``F F^T = a`` for symmetric PSD ``a``: Cholesky (fast), or the symmetric square
    root from ``eigh`` when ``a`` is singular, tiny negative eigenvalues (rounding) clamped to 0."""
    try:
        return np.linalg.cholesky(a)
    except np.linalg.LinAlgError:
        w, v = np.linalg.eigh(a)
        return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike,
                     eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, S1) and N(mu2, S2), with ``S = sigma + eps*I``:
    ``||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr(sqrt(S1 S2))``. Means ``(D,)``, covariances ``(D, D)``.

    ``eps`` regularises singular covariances (fewer samples than dimensions); it enters all three trace terms,
    so identical statistics give 0 and the result stays a distance between two Gaussians. Uses
    ``tr sqrt(S1 S2) = sum sqrt(eig(F^T S2 F))`` with ``F F^T = S1`` (Cholesky, or ``S1^1/2`` from ``eigh``
    when S1 is singular) in float64: a symmetric eigenproblem, no ``sqrtm`` and its complex round-off.
    """
    m1, m2 = _as_float64(mu1, "mu1"), _as_float64(mu2, "mu2")
    s1, s2 = _as_float64(sigma1, "sigma1"), _as_float64(sigma2, "sigma2")
    _check_mu_sigma(m1, s1, "first statistics")
    _check_mu_sigma(m2, s2, "second statistics")
    if m1.shape != m2.shape:
        raise UserError(f"feature dimensions differ: {m1.shape[0]} vs {m2.shape[0]}")
    if eps < 0:
        raise UserError(f"eps must be >= 0, got {eps}")
    eye = np.eye(m1.shape[0])
    a = (s1 + s1.T) / 2 + eps * eye
    b = (s2 + s2.T) / 2 + eps * eye
    # With a = F F^T, F^T b F is symmetric PSD and has the eigenvalues of a b, so
    # tr sqrt(a b) = sum sqrt(eig(F^T b F)) (F = a^1/2 or the Cholesky factor, ~20x cheaper than eigh).
    fa = _psd_factor(a)
    m = fa.T @ b @ fa
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = m1 - m2
    return float(diff @ diff + np.trace(a) + np.trace(b) - 2 * tr_sqrt)


def check_stats_out(path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse ``path`` as the output of FID statistics unless it is new, or ``overwrite`` and it already holds FID
    statistics (never a user's other file, a folder or a link); it must end in ``.npz``."""
    return check_output_file(Path(path), ".npz", overwrite, "--out", _holds_fid_stats,
                             "a file of FID statistics daps wrote")


DAPS_STATS_KEYS = frozenset({"mu", "sigma", "num_images", "meta"})
"""The arrays of a statistics file daps writes (:func:`save_fid_stats`), and nothing else."""


def _holds_fid_stats(path: Path) -> bool:
    """Whether ``path`` is a statistics file daps wrote: readable, with exactly :data:`DAPS_STATS_KEYS` (an ADM
    reference batch, which :func:`load_fid_stats` also reads, holds its images too and is not replaced)."""
    try:
        with zipfile.ZipFile(path) as z:  # the names first: a foreign archive's arrays are never read
            if {name.removesuffix(".npy") for name in z.namelist()} != DAPS_STATS_KEYS:
                return False
        load_fid_stats(path)
    except (UserError, *NPZ_ERRORS):
        return False
    return True


def save_fid_stats(path: str | os.PathLike, stats_or_mu_sigma: FeatureStats | tuple[ArrayLike, ArrayLike],
                   num_images: int | None = None, meta: dict | None = None, overwrite: bool = False) -> Path:
    """Write ``mu`` (D,), ``sigma`` (D, D) float64, ``num_images`` and ``meta`` (JSON string: dataset, split,
    weights, protocol, ...) to an ``.npz``, atomically (:func:`daps.runfolder.atomic_path`).
    ``num_images`` defaults to ``stats.num`` for a :class:`FeatureStats`. Raises FileExistsError unless
    ``overwrite``, and replaces only a file of FID statistics (:func:`check_stats_out`)."""
    path = Path(path)
    if isinstance(stats_or_mu_sigma, FeatureStats):
        stats = stats_or_mu_sigma
        if num_images is not None and num_images != stats.num:
            raise UserError(f"num_images={num_images} but the stats hold {stats.num} images")
        mu, sigma, num_images = stats.mu, stats.sigma, stats.num
    else:
        mu, sigma = (_as_float64(a, name) for a, name in zip(stats_or_mu_sigma, ("mu", "sigma")))
    _check_mu_sigma(mu, sigma, str(path))
    if num_images is None or num_images < 2:
        raise UserError(f"num_images must be an int >= 2, got {num_images}")
    meta_json = json.dumps(meta or {}, sort_keys=True)  # raises TypeError on non-JSON values, before writing
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    if path.exists() or path.is_symlink():
        check_stats_out(path, overwrite)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, mu=mu, sigma=sigma, num_images=np.int64(num_images), meta=np.array(meta_json))
    return path


def load_fid_stats(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, int | None, dict]:
    """``(mu (D,), sigma (D, D), num_images or None, meta)`` from our ``.npz`` or an ADM / guided-diffusion
    reference batch (``mu``, ``sigma`` plus ignored arrays such as ``arr_0``, ``mu_s``, ``sigma_s``)."""
    path = Path(path)
    if path.is_file() and not zipfile.is_zipfile(path):  # e.g. a text file: numpy would speak of pickles
        raise UserError(f"{path}: not an .npz archive of FID statistics, or it was cut short")
    try:
        f = np.load(path, allow_pickle=False)  # lazy for .npz: only the arrays read below are decompressed
        if not isinstance(f, np.lib.npyio.NpzFile):
            raise UserError("a single array, not an .npz archive")
        with f:
            keys = list(f.files)
            arrays = {k: f[k] for k in ("mu", "sigma", "num_images", "meta") if k in keys}
    except (KeyError, *NPZ_ERRORS) as err:  # truncated, corrupt or not an npz
        raise UserError(f"{path}: not a readable .npz of FID statistics ({err})") from None
    if "mu" not in arrays or "sigma" not in arrays:
        raise UserError(f"{path}: FID statistics need arrays 'mu' and 'sigma'; found {keys}")
    try:
        mu = np.asarray(arrays["mu"], dtype=np.float64)
        sigma = np.asarray(arrays["sigma"], dtype=np.float64)
        num_images = int(arrays["num_images"]) if "num_images" in arrays else None
    except (TypeError, ValueError) as err:
        raise UserError(f"{path}: mu, sigma and num_images must be numbers ({err})") from None
    try:
        meta = json.loads(str(arrays["meta"])) if "meta" in arrays else {}
    except json.JSONDecodeError:
        meta = {}  # statistics from elsewhere with a free-form 'meta': the arrays are what matters
    _check_stored_stats(mu, sigma, str(path))
    return mu, sigma, num_images, meta
