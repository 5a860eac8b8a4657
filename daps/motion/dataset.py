"""The LAFAN1 H1 motion dataset as windows of standardized features, ready for a tokenizer.

:func:`load_motion_data` reads every clip once, computes poses and features (:mod:`daps.motion.features`) and keeps
them in a cache file (``<cache>/lafan1_h1/features-v<version>-<digest>.npz``, keyed by the feature version and the
digests of the clips and of the model file), so later loads take a second or two. The training split is every clip
but :data:`~daps.motion.lafan.VAL_CLIPS`; standardization statistics come from the training clips only.

Standardization rule: per feature, mean and standard deviation over all frames of the training clips
(dataset-wide, float64). A feature whose variance is below :data:`NEAR_CONSTANT_VARIANCE` is *near-constant*: it is
kept and centred but not divided by its tiny standard deviation (scale 1), so it stays near 0 instead of blowing
noise up.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence, TypeVar, Union

import numpy as np
import torch

from daps.data.paths import NPZ_ERRORS, PathLike, cache_root
from daps.errors import UserError
from daps.motion.features import (
    FEATURE_VERSION,
    NUM_FEATURES,
    feature_names,
    features_to_poses,
    poses_to_features,
    root_anchor,
)
from daps.motion.h1 import POSE_DIM, load_h1
from daps.motion.lafan import FPS, find_source, read_clips, source_digest, split_clips
from daps.runfolder import atomic_path, file_digest

__all__ = [
    "CACHE_FOLDER",
    "ClipArrays",
    "NEAR_CONSTANT_VARIANCE",
    "MotionData",
    "MotionWindows",
    "Standardizer",
    "feature_cache_path",
    "fit_standardizer",
    "load_clip_features",
    "load_motion_data",
]

log = logging.getLogger(__name__)

CACHE_FOLDER = "lafan1_h1"
NEAR_CONSTANT_VARIANCE = 1e-5
"""Variance (over the training frames) below which a feature is centred but not scaled (the original's threshold for
dropping a feature)."""
STATS_FORMAT = 1

Array = TypeVar("Array", np.ndarray, torch.Tensor)
Index = Union[int, slice, Sequence[int], np.ndarray, torch.Tensor]


# --------------------------------------------------------------------------------------------------
# Standardization


@dataclass(frozen=True)
class Standardizer:
    """Per-feature affine map to the model's scale: ``x_std = (x - mean) / scale``.

    Attributes:
        mean: ``(F,)`` float64 means over the training frames.
        scale: ``(F,)`` float64 standard deviations, 1 where ``near_constant``.
        near_constant: ``(F,)`` bool, variance below :data:`NEAR_CONSTANT_VARIANCE`.
        feature_version: the :data:`~daps.motion.features.FEATURE_VERSION` the statistics belong to.
    """

    mean: np.ndarray
    scale: np.ndarray
    near_constant: np.ndarray
    feature_version: int = FEATURE_VERSION

    def normalize(self, x: Array) -> Array:
        """Raw features ``(..., F)`` -> standardized (numpy or torch, same floating dtype and device; UserError for
        another F or integers)."""
        mean, scale = self._like(x)
        return (x - mean) / scale

    def denormalize(self, x: Array) -> Array:
        """Standardized features ``(..., F)`` -> raw (numpy or torch, same floating dtype and device; UserError for
        another F or integers)."""
        mean, scale = self._like(x)
        return x * scale + mean

    def _like(self, x: Array) -> tuple[Any, Any]:
        # An integer array would take integer statistics (means and scales truncated) and a last axis of 1 would
        # broadcast to F features: both gave silently wrong features.
        features = self.mean.shape[0]
        if not isinstance(x, (np.ndarray, torch.Tensor)):
            raise UserError(f"features must be a numpy array or torch tensor (..., {features}), got "
                            f"{type(x).__name__}")
        if x.ndim == 0 or x.shape[-1] != features:
            raise UserError(f"features must be (..., F) with this model's F = {features} on the last axis, got "
                            f"shape {tuple(x.shape)}")
        floating = x.is_floating_point() if isinstance(x, torch.Tensor) else np.issubdtype(x.dtype, np.floating)
        if not floating:
            raise UserError(f"features must be floating point, got {x.dtype}: convert them first (e.g. to float32)")
        if isinstance(x, torch.Tensor):
            return (torch.as_tensor(self.mean, dtype=x.dtype, device=x.device),
                    torch.as_tensor(self.scale, dtype=x.dtype, device=x.device))
        return self.mean.astype(x.dtype), self.scale.astype(x.dtype)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (lists of floats; feature names for a human reader)."""
        return {
            "format": STATS_FORMAT,
            "feature_version": self.feature_version,
            "feature_names": feature_names(),
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "near_constant": self.near_constant.astype(bool).tolist(),
        }

    @classmethod
    def from_arrays(cls, d: dict[str, Any]) -> Standardizer:
        """The statistics of a record with ``mean``, ``scale``, ``near_constant`` (lists) and optionally
        ``feature_version``, of any feature count (one's own sequences too); unchecked beyond the conversion."""
        return cls(mean=np.asarray(d["mean"], dtype=np.float64), scale=np.asarray(d["scale"], dtype=np.float64),
                   near_constant=np.asarray(d["near_constant"], dtype=bool),
                   feature_version=int(d.get("feature_version", FEATURE_VERSION)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Standardizer:
        """Inverse of :meth:`to_dict`; UserError when the statistics belong to another feature version."""
        version = d.get("feature_version")
        if version != FEATURE_VERSION:
            raise UserError(
                f"motion statistics are for feature version {version}, this daps computes version {FEATURE_VERSION}"
            )
        stats = cls.from_arrays(d)
        if not stats.mean.shape == stats.scale.shape == stats.near_constant.shape == (NUM_FEATURES,):
            raise UserError(f"motion statistics hold {stats.mean.shape[0]} features, expected {NUM_FEATURES}")
        return stats


def fit_standardizer(frames: np.ndarray) -> Standardizer:
    """Statistics of training frames ``(N, F)`` under the module's rule (mean / std; near-constant: scale 1)."""
    x = np.asarray(frames, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need frames (N >= 2, F), got {x.shape}")
    mean = x.mean(axis=0)
    var = x.var(axis=0)
    near = var < NEAR_CONSTANT_VARIANCE
    scale = np.where(near, 1.0, np.sqrt(var))
    return Standardizer(mean=mean, scale=scale, near_constant=near)


# --------------------------------------------------------------------------------------------------
# Feature cache


def feature_cache_path(source: Path, model_file: Path) -> Path:
    """Cache file of ``source``'s features: keyed by feature version and the digests of the clips and the model."""
    key = hashlib.sha256(f"{source_digest(source)} {file_digest(model_file, 'sha256')} {FPS}".encode()).hexdigest()
    return cache_root() / CACHE_FOLDER / f"features-v{FEATURE_VERSION}-{key[:16]}.npz"


@dataclass(frozen=True)
class ClipArrays:
    """Every clip of a source: ``poses (N, 26)`` float64 and raw ``features (N, F)`` float32 per clip name."""

    poses: dict[str, np.ndarray]
    features: dict[str, np.ndarray]


def _read_cache(path: Path) -> ClipArrays | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            names = [str(n) for n in z["names"]]
            bounds = np.concatenate([[0], np.cumsum(z["lengths"])])
            poses, feats = z["poses"], z["features"]
    except (KeyError, *NPZ_ERRORS) as e:
        log.warning("ignoring unreadable motion feature cache %s (%s); rebuilding it", path, e)
        return None
    if poses.shape[1:] != (POSE_DIM,) or feats.shape[1:] != (NUM_FEATURES,) or bounds[-1] != len(poses):
        log.warning("ignoring motion feature cache %s with unexpected shapes; rebuilding it", path)
        return None
    spans = list(zip(names, bounds[:-1], bounds[1:]))
    return ClipArrays(poses={n: poses[a:b] for n, a, b in spans}, features={n: feats[a:b] for n, a, b in spans})


def _write_cache(path: Path, clips: ClipArrays) -> None:
    names = sorted(clips.poses)
    with atomic_path(path) as tmp:
        np.savez(
            tmp,
            names=np.array(names),
            lengths=np.array([len(clips.poses[n]) for n in names], dtype=np.int64),
            poses=np.concatenate([clips.poses[n] for n in names]),
            features=np.concatenate([clips.features[n] for n in names]),
        )


def load_clip_features(
    data_dir: PathLike | None = None, source: PathLike | None = None, model: PathLike | None = None
) -> ClipArrays:
    """Poses and raw features of every clip of ``source`` (default: :func:`~daps.motion.lafan.find_source`), from the
    cache, or computed (a few seconds) and cached atomically."""
    src = Path(source).expanduser() if source is not None else find_source(data_dir)
    if not src.exists():
        raise FileNotFoundError(f"LAFAN1 H1 source {src} does not exist")
    h1 = load_h1(data_dir, path=model)
    path = feature_cache_path(src, h1.path)
    if path.is_file():
        cached = _read_cache(path)
        if cached is not None:
            return cached
    poses = read_clips(src)
    short = [n for n, p in poses.items() if len(p) < 2]
    if short:
        raise UserError(f"{src}: clip {short[0]} has fewer than 2 frames")
    feats = {n: poses_to_features(h1, p, FPS).astype(np.float32) for n, p in poses.items()}
    clips = ClipArrays(poses=poses, features=feats)
    _write_cache(path, clips)
    log.info("cached features of %d motion clips in %s", len(poses), path)
    return clips


# --------------------------------------------------------------------------------------------------
# Windows


@dataclass(frozen=True)
class MotionWindows:
    """Every window of ``window`` consecutive frames (one split), gathered on demand from the frames it shares.

    ``windows[i]`` is a float32 ``(T, F)`` tensor and ``windows[idx]`` (a tensor, list, array or slice of window
    indices) a ``(B, T, F)`` batch of *standardized* features; :meth:`all` materializes ``(N, T, F)``.

    Attributes:
        frames: ``(total, F)`` float32 standardized features of the split's clips, concatenated.
        starts: ``(N,)`` int64 row of ``frames`` where each window begins.
        clip_ids: ``(N,)`` int64 index into ``clips`` of each window's clip.
        offsets: ``(N,)`` int64 first frame of each window within its clip.
        clips: the split's clip names.
        window: frames per window (T).
    """

    frames: torch.Tensor
    starts: torch.Tensor
    clip_ids: torch.Tensor
    offsets: torch.Tensor
    clips: tuple[str, ...]
    window: int

    def __len__(self) -> int:
        return int(self.starts.shape[0])

    def __getitem__(self, index: Index) -> torch.Tensor:
        if isinstance(index, (int, np.integer)):
            return self[[int(index)]][0]
        rows = self.starts[_as_index(index, len(self)).to(self.starts.device)]  # (B,)
        return self.frames[rows[:, None] + torch.arange(self.window, device=self.frames.device)]  # (B, T, F)

    def to(self, device: torch.device | str) -> MotionWindows:
        """The same windows with their frames and starts on ``device`` (batches are gathered there)."""
        return replace(self, frames=self.frames.to(device), starts=self.starts.to(device))

    def all(self) -> torch.Tensor:
        """All windows ``(N, T, F)`` (a copy: N * T * F * 4 bytes)."""
        return self[torch.arange(len(self), device="cpu")]

    def location(self, i: int) -> tuple[str, int]:
        """``(clip, first frame)`` of window ``i``."""
        return self.clips[int(self.clip_ids[i])], int(self.offsets[i])


def _as_index(index: Index, n: int) -> torch.Tensor:
    """Window indices as a 1-d int64 tensor; a boolean mask over the ``n`` windows picks those it marks (as tensor
    indexing does: not windows 0 and 1)."""
    if isinstance(index, slice):
        return torch.arange(n, device="cpu")[index]
    if isinstance(index, torch.Tensor) and index.dtype != torch.bool:
        return index.to(torch.long).reshape(-1)
    array = index.cpu().numpy() if isinstance(index, torch.Tensor) else np.asarray(index)
    if array.dtype == np.bool_:
        if array.shape != (n,):
            raise IndexError(f"a boolean mask over {n} windows must have shape ({n},), got {array.shape}")
        return torch.as_tensor(np.flatnonzero(array), device="cpu")
    return torch.as_tensor(array.astype(np.int64).reshape(-1), device="cpu")


def clip_windows(frames: dict[str, np.ndarray], clips: list[str], window: int, stride: int) -> MotionWindows:
    """Every window of ``window`` frames starting every ``stride`` frames inside each of ``clips`` (names of
    ``frames``, standardized ``(frames, F)`` arrays), gathered on demand from the clips concatenated."""
    lengths = [len(frames[c]) for c in clips]
    bases = np.concatenate([[0], np.cumsum(lengths)])[:-1].astype(np.int64)
    clip_ids, offsets = [], []
    for k, n in enumerate(lengths):
        off = np.arange(0, n - window + 1, stride, dtype=np.int64)
        clip_ids.append(np.full(len(off), k, dtype=np.int64))
        offsets.append(off)
    ids = np.concatenate(clip_ids) if clip_ids else np.zeros(0, np.int64)
    offs = np.concatenate(offsets) if offsets else np.zeros(0, np.int64)
    cat = np.concatenate([frames[c] for c in clips]) if clips else np.zeros((0, NUM_FEATURES), np.float32)
    return MotionWindows(
        frames=torch.from_numpy(np.ascontiguousarray(cat, dtype=np.float32)),
        starts=torch.from_numpy(bases[ids] + offs) if len(ids) else torch.zeros(0, dtype=torch.long, device="cpu"),
        clip_ids=torch.from_numpy(ids),
        offsets=torch.from_numpy(offs),
        clips=tuple(clips),
        window=window,
    )


@dataclass(frozen=True)
class MotionData:
    """LAFAN1 on the H1 as train / validation windows of standardized features, and the way back to poses.

    Attributes:
        train, val: :class:`MotionWindows` of the two splits.
        stats: :class:`Standardizer` fitted on the training clips (save ``stats.to_dict()`` with a run).
        poses: clip name -> ground-truth poses ``(N, 26)`` float64 (see :mod:`daps.motion.h1`).
        features: clip name -> raw features ``(N, F)`` float32.
        window: frames per window (T); fps: frames per second.
    """

    train: MotionWindows
    val: MotionWindows
    stats: Standardizer
    poses: dict[str, np.ndarray]
    features: dict[str, np.ndarray]
    window: int
    fps: float = FPS

    def split(self, name: str) -> MotionWindows:
        if name not in ("train", "val"):
            raise UserError(f"unknown motion split {name!r}; choose train or val")
        return self.train if name == "train" else self.val

    def window_poses(self, split: str, index: Index) -> np.ndarray:
        """Ground-truth poses ``(B, T, 26)`` of windows ``index`` of ``split``."""
        w = self.split(split)
        idx = _as_index(index, len(w)).reshape(-1)
        return np.stack([self.poses[a][b : b + self.window] for a, b in map(w.location, idx.tolist())])

    def to_poses(self, split: str, index: Index, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """Poses ``(B, T, 26)`` from standardized features ``x (B, T, F)`` (e.g. a reconstruction) of windows
        ``index`` of ``split``, anchored at each window's ground-truth first-frame position and heading."""
        raw = self.stats.denormalize(x.detach().double().cpu().numpy() if isinstance(x, torch.Tensor) else x)
        xy, psi = root_anchor(self.window_poses(split, index))
        return features_to_poses(np.asarray(raw, dtype=np.float64).reshape(len(xy), self.window, -1), xy, psi, self.fps)


def load_motion_data(
    data_dir: PathLike | None = None,
    window: int = 32,
    stride: int = 1,
    val_stride: int | None = None,
    clips: Sequence[str] | None = None,
    source: PathLike | None = None,
    model: PathLike | None = None,
) -> MotionData:
    """Load LAFAN1 on the H1 as :class:`MotionData`.

    Args:
        data_dir: data folder (else ``$DAPS_DATA_DIR``, then the cache; see :mod:`daps.motion.lafan`).
        window: frames per window (T; the paper's LAFAN windows have 32).
        stride: frames between the starts of consecutive training windows (1: every start, as the original samples).
        val_stride: the same for validation windows (default: ``stride``).
        clips: only these clips (default: all); names not in the data raise UserError listing the valid ones.
        source: the archive or CSV folder to read instead of searching ``data_dir``.
        model: the ``h1.xml`` to use instead of searching ``data_dir``.
    """
    if window < 2 or stride < 1 or (val_stride is not None and val_stride < 1):
        raise UserError(f"motion windows need window >= 2 and strides >= 1 (got {window}, {stride}, {val_stride})")
    arrays = load_clip_features(data_dir, source, model)
    available = sorted(arrays.poses)
    names = available if clips is None else list(clips)
    unknown = [n for n in names if n not in arrays.poses]
    if unknown:
        raise UserError(f"unknown motion clip {unknown[0]!r}; valid clips: {', '.join(available)}")
    train_clips, val_clips = split_clips(names)
    if not train_clips:
        raise UserError("no training clips: every selected clip is a validation clip")
    stats = fit_standardizer(np.concatenate([arrays.features[c] for c in train_clips]))
    std = {c: stats.normalize(arrays.features[c].astype(np.float64)).astype(np.float32) for c in names}
    return MotionData(
        train=clip_windows(std, train_clips, window, stride),
        val=clip_windows(std, val_clips, window, val_stride or stride),
        stats=stats,
        poses={c: arrays.poses[c] for c in names},
        features={c: arrays.features[c] for c in names},
        window=window,
    )
