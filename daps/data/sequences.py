"""``sequences``: one's own motion or other multichannel time series from a NumPy ``.npz`` file, cut into windows
like LAFAN1 (``lafan1-h1``), for a tokenizer of robot trajectories, joint logs or any feature stream.

The file (``data.data_dir``) holds one float array ``(frames, F)`` per clip, named ``train/<clip>`` or
``test/<clip>`` (``np.savez(path, **{"train/walk_01": a, "test/walk_07": b})``); every clip has the same F
features. Windows of ``T = data.image_shape[1]`` frames start every ``data.window_stride`` frames inside a clip,
are drawn uniformly with replacement for training, and reach the model as ``(1, T, F)`` inputs: ``data.image_shape``
must be ``1,T,F``. Features are standardized per feature with the training frames' mean and standard deviation
(near-constant features are centred, not scaled), the rule of the motion data, and modelled with the fixed-variance
Gaussian (``decoder.fixed_variance``). Each window is labelled with its clip (``export-codes`` names the clips).

The file is read with ``allow_pickle=False``. A run saves the statistics and the file's SHA-256
(``sequence_data.json``); ``train --resume``, ``eval`` and ``export-codes`` refuse a changed file.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from daps.data.motion import WindowImages
from daps.data.paths import check_recorded_file, check_split, named_npz, read_npz
from daps.errors import UserError, first_few
from daps.motion.dataset import MotionWindows, Standardizer, clip_windows, fit_standardizer
from daps.runfolder import file_digest

if TYPE_CHECKING:
    from daps.config import DataConfig

log = logging.getLogger("daps")

RUN_FILE = "sequence_data.json"
"""What a ``sequences`` run saves about its file: the standardization statistics and the file's SHA-256."""

SPLIT_PREFIX = {"train": "train/", "test": "test/"}


def sequences_file(data_dir: str | Path | None) -> Path:
    """The ``.npz`` file named by ``data_dir`` (see :func:`daps.data.paths.named_npz`)."""
    return named_npz(data_dir, "sequences", "clips")


def read_clips(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """``{"train": {clip: (frames, F) float64}, "test": {...}}`` of npz ``path``, in the file's order, checked."""
    arrays = read_npz(path, "sequences")
    other = [key for key in arrays if not key.startswith(tuple(SPLIT_PREFIX.values()))]
    if other:
        raise UserError(f"sequences: {path} holds {other[0]!r}; every array must be named train/<clip> or test/<clip>")
    clips: dict[str, dict[str, np.ndarray]] = {}
    for split, prefix in SPLIT_PREFIX.items():
        clips[split] = {key.removeprefix(prefix): arrays[key] for key in arrays if key.startswith(prefix)}
        if not clips[split]:
            raise UserError(f"sequences: {path} has no {prefix}<clip> arrays (it needs clips of both train and test)")
    widths = set()
    for split, named in clips.items():
        for name, clip in named.items():
            where = f"sequences: {path}[{SPLIT_PREFIX[split] + name!r}]"
            if clip.ndim != 2 or clip.dtype.kind not in "fiu":
                raise UserError(f"{where} has shape {clip.shape} and dtype {clip.dtype}; a clip is (frames, F) numbers")
            if not np.isfinite(clip).all():
                raise UserError(f"{where} holds NaN or infinite values")
            widths.add(clip.shape[1])
            named[name] = clip.astype(np.float64)
    if len(widths) > 1:
        raise UserError(f"sequences: the clips of {path} have different feature counts {sorted(widths)}; F must agree")
    return clips


@dataclass(frozen=True)
class SequenceData:
    """The windows of both splits (standardized), the statistics and the file's digest."""

    train: MotionWindows
    test: MotionWindows
    stats: Standardizer
    sha256: str


@functools.lru_cache(maxsize=2)
def _standardized(path: Path, stamp: tuple[int, int]) -> tuple[dict[str, dict[str, np.ndarray]], Standardizer, str]:
    """The file's clips standardized with the training frames' statistics, the statistics and the file's SHA-256
    (read once per process and version of the file: ``stamp`` is its modification time and size)."""
    clips = read_clips(path)
    frames = np.concatenate(list(clips["train"].values()))
    if len(frames) < 2:  # no variance to standardize by (and no window: the check below comes after this one)
        raise UserError(f"sequences: the train clips of {path} hold {len(frames)} frame(s) in all; statistics and "
                        "windows need at least 2 (and at least T = data.image_shape's second value in one clip)")
    stats = fit_standardizer(frames)
    std = {split: {name: stats.normalize(c).astype(np.float32) for name, c in named.items()}
           for split, named in clips.items()}
    return std, stats, file_digest(path, "sha256")


@functools.lru_cache(maxsize=4)
def _windows(path: Path, stamp: tuple[int, int], window: int, stride: int) -> SequenceData:
    std, stats, digest = _standardized(path, stamp)
    short = [f"{SPLIT_PREFIX[split]}{name} ({len(clip)} frames)" for split in ("train", "test")
             for name, clip in std[split].items() if len(clip) < window]
    if short:  # once per process and file (cached)
        log.warning("sequences: %d clip(s) of %s are shorter than a window of %d frames and hold no window: %s",
                    len(short), path, window, first_few(short, 10))
    train, test = (clip_windows(std[split], list(std[split]), window, stride) for split in ("train", "test"))
    return SequenceData(train, test, stats, digest)


def sequence_data(data: DataConfig) -> SequenceData:
    """The windows of ``data`` (``image_shape = (1, T, F)``; the file is read once per process and version)."""
    path = sequences_file(data.data_dir).resolve()
    stat = path.stat()
    stamp = (stat.st_mtime_ns, stat.st_size)
    std, _, _ = _standardized(path, stamp)
    count = next(iter(std["train"].values())).shape[1]
    shape = tuple(data.image_shape)
    if len(shape) != 3 or shape[0] != 1 or shape[2] != count or shape[1] < 1:
        raise UserError(f"sequences: data.image_shape must be (1, T, F) with F = {count}, the clips' feature count, "
                        f"got {shape}; e.g. data.image_shape=1,32,{count} for windows of 32 frames")
    if data.window_stride < 1:
        raise UserError(f"data.window_stride must be >= 1, got {data.window_stride}")
    loaded = _windows(path, stamp, shape[1], data.window_stride)
    for split, windows in (("train", loaded.train), ("test", loaded.test)):
        if len(windows) == 0:
            raise UserError(f"sequences: no {split} clip of {path} is {shape[1]} frames long (data.image_shape's T)")
    return loaded


class SequenceWindows(WindowImages):
    """Windows of one split as ``(B, 1, T, F)`` batches (what training and evaluation index); ``labels``: the clip
    of each window, an index into ``class_names``, every clip of the file (the training clips, then the test
    clips: the same names for either split, so that codes of both splits can be compared)."""

    def __init__(self, windows: MotionWindows, class_names: tuple[str, ...], first_label: int,
                 device: torch.device | str = "cpu") -> None:
        self.windows = windows.to(device)
        self.labels = windows.clip_ids + first_label
        self.class_names = class_names
        self.first_label = first_label

    def to(self, device: torch.device | str) -> SequenceWindows:
        return SequenceWindows(self.windows, self.class_names, self.first_label, device)


def sequence_windows(split: str, data: DataConfig) -> SequenceWindows:
    """Split ``train`` or ``test`` of ``data`` as windows."""
    check_split(split)
    loaded = sequence_data(data)
    names = loaded.train.clips + loaded.test.clips
    if split == "train":
        return SequenceWindows(loaded.train, names, 0)
    return SequenceWindows(loaded.test, names, len(loaded.train.clips))


def sequence_run_files(data: DataConfig) -> dict[str, Any]:
    """What a ``sequences`` run saves: the file, its SHA-256, the statistics and the window counts."""
    loaded = sequence_data(data)
    stats = loaded.stats
    return {RUN_FILE: {
        "file": str(sequences_file(data.data_dir).resolve()), "sha256": loaded.sha256,
        "mean": stats.mean.tolist(), "scale": stats.scale.tolist(), "near_constant": stats.near_constant.tolist(),
        "windows": {"train": len(loaded.train), "test": len(loaded.test)},
    }}


def read_sequence_stats(run_dir: Path) -> Standardizer:
    """The statistics a ``sequences`` run saved in its ``sequence_data.json`` (raises when unreadable)."""
    import json

    return Standardizer.from_arrays(json.loads((Path(run_dir) / RUN_FILE).read_text()))


def check_run_sequences(run_dir: Path, data: DataConfig) -> None:
    """UserError when the file ``data`` names is not the one the run was trained on (another file, or changed)."""
    check_recorded_file(Path(run_dir) / RUN_FILE, sequences_file(data.data_dir))


class SequenceMetrics:
    """Per-window errors of reconstructions ``x, x_hat (B, 1, T, F)`` (standardized): ``mse`` on the standardized
    features, ``explained_variance`` = 1 - the mse over the features that vary in the training frames (the share of
    their variance, 1 per standardized feature, that the reconstruction explains: a still window scores like any
    other; a near-constant feature, only centred, has almost none to explain and would inflate it; absent when no
    feature varies) and ``rmse_raw`` (root mean square error in the file's own units, averaged over features)."""

    def __init__(self, data: DataConfig) -> None:
        self.stats = sequence_data(data).stats
        self.varying = torch.as_tensor(~self.stats.near_constant, dtype=torch.bool)  # (F,)

    def __call__(self, x: torch.Tensor, x_hat: torch.Tensor) -> dict[str, torch.Tensor]:
        error = (x_hat - x)[:, 0].float().pow(2)  # (B, T, F)
        # squared in float64: the file's units may be large (an error of 1e20 squared overflows float32)
        scale = torch.as_tensor(self.stats.scale, dtype=torch.float64, device=x.device)
        raw = ((x_hat - x)[:, 0].double() * scale).pow(2).mean(1).sqrt().mean(1).float()  # (B,): per-feature RMSE
        out = {"mse": error.flatten(1).mean(1), "rmse_raw": raw}
        if bool(self.varying.any()):
            out["explained_variance"] = 1 - error[..., self.varying.to(x.device)].flatten(1).mean(1)
        return out


def plot_sequence_reconstructions(data: DataConfig, x: torch.Tensor, x_hat: torch.Tensor, path: Path,
                                  title: str) -> None:
    """The first window's features over time (up to 6, those that vary most in it), in the file's units, ground
    truth against reconstruction; written atomically to ``path``."""
    from daps.plots import _pyplot, save_figure

    plt = _pyplot()
    stats = sequence_data(data).stats
    t = stats.denormalize(x[0, 0].detach().double().cpu().numpy())
    p = stats.denormalize(x_hat[0, 0].detach().double().cpu().numpy())
    shown = np.argsort(-t.std(axis=0), kind="stable")[: min(6, t.shape[1])]
    fig, axes = plt.subplots(len(shown), 1, figsize=(6, 1.3 * len(shown) + 0.6), sharex=True, squeeze=False)
    for ax, col in zip(axes[:, 0], shown):
        ax.plot(t[:, col], color="black", lw=1.2, label="ground truth")
        ax.plot(p[:, col], color="tab:red", lw=1.0, ls="--", label="reconstruction")
        ax.set_ylabel(f"feature {col}", fontsize=7)
        ax.tick_params(labelsize=7)
    # above the first panel, not over its lines
    axes[0, 0].legend(fontsize=7, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=2, frameon=False)
    axes[-1, 0].set_xlabel("frame", fontsize=8)
    fig.suptitle(title or "reconstruction", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)

