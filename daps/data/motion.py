"""The ``lafan1-h1`` dataset in the library's terms: motion windows as one-channel "images" ``(1, frames, F)``.

:mod:`daps.motion` reads LAFAN1 on the Unitree H1, computes the per-frame features and their standardization
(from the training clips only). Here those windows become what training and evaluation consume: an indexable
:class:`WindowImages` (gathered on demand from the shared frames, never materialized for all windows), per-window
motion metrics for :func:`daps.metrics.evaluate` (:class:`MotionMetrics`), and the statistics a run saves.

``data.image_shape = (1, T, F)`` sets the window length T; ``data.window_stride`` the frames between the starts of
consecutive training and validation windows. Training draws windows uniformly with replacement, like the original.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from daps.data.paths import check_split
from daps.errors import UserError

if TYPE_CHECKING:
    from daps.config import DataConfig
    from daps.motion.dataset import MotionData, MotionWindows

MOTION_TYPES = ("dance", "fall", "fight", "jump", "run", "walk")
"""The kinds of motion in LAFAN1, from the clip names (``walk2_subject4`` is a walk)."""

CLIP_KINDS = {
    "dance": "dance", "fallAndGetUp": "fall", "fight": "fight", "fightAndSports": "fight", "jumps": "jump",
    "run": "run", "sprint": "run", "walk": "walk",
}
"""Clip name prefix -> kind of motion: sprints count as runs and "fight and sports" as fights (the same movements
at another intensity)."""

log = logging.getLogger(__name__)


def motion_type(clip: str) -> int:
    """Index in :data:`MOTION_TYPES` of a clip's kind of motion."""
    match = re.match(r"[A-Za-z]+", clip)
    name = match.group(0) if match else ""
    if name not in CLIP_KINDS:
        raise UserError(f"clip {clip!r}: unknown kind of motion {name!r}; known: {', '.join(CLIP_KINDS)}")
    return MOTION_TYPES.index(CLIP_KINDS[name])


@functools.lru_cache(maxsize=2)
def _cached(data_dir: str, window: int, stride: int) -> MotionData:
    from daps.motion.dataset import load_motion_data

    return load_motion_data(data_dir or None, window=window, stride=stride)


def motion_data(data: DataConfig) -> MotionData:
    """The :class:`~daps.motion.dataset.MotionData` of a data config (loaded once per process)."""
    from daps.motion.features import NUM_FEATURES

    channels, window, features = data.image_shape
    if channels != 1 or features != NUM_FEATURES:
        raise UserError(f"data.image_shape must be (1, T, {NUM_FEATURES}) for {data.name}, got {data.image_shape}")
    return _cached(data.data_dir, window, data.window_stride)


def window_kinds(windows: MotionWindows) -> torch.Tensor:
    """The kind of motion (index in :data:`MOTION_TYPES`) of each window ``(N,)``, from its clip's name."""
    if not len(windows.clips):
        return torch.zeros(0, dtype=torch.long, device="cpu")
    kinds = torch.tensor([motion_type(c) for c in windows.clips], dtype=torch.long, device="cpu")
    return kinds[windows.clip_ids]


class WindowImages:
    """Windows of one split as ``(B, 1, T, F)`` float32 batches on ``device``: ``images[idx]`` for a tensor of
    window indices; ``len(images)`` windows; ``labels`` the kind of motion of each window, an index into
    ``class_names``."""

    def __init__(self, windows: MotionWindows, device: torch.device | str = "cpu") -> None:
        self.windows = windows.to(device)
        self.labels = window_kinds(windows)
        self.class_names: tuple[str, ...] = MOTION_TYPES

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        return self.windows[index][:, None]  # (B, 1, T, F)

    def to(self, device: torch.device | str) -> WindowImages:
        return WindowImages(self.windows, device)


def lafan_windows(split: str, data: DataConfig) -> WindowImages:
    """Split ``train`` or ``test`` (the original's four validation clips) of ``lafan1-h1`` as windows."""
    check_split(split)
    motion = motion_data(data)
    return WindowImages(motion.train if split == "train" else motion.val)


class MotionMetrics:
    """Per-window motion metrics of reconstructions for :func:`daps.metrics.evaluate`: standardized windows ``x,
    x_hat (B, 1, T, F)`` -> features -> poses (both anchored at the origin, facing +x: the anchor does not change
    any of these errors) -> MuJoCo forward kinematics -> the metrics of
    :func:`daps.motion.metrics.motion_metrics_per_window` (docs/motion.md): ``mpjpe_mm``, ``mpjpe_global_mm``,
    ``joint_error_deg``, ``root_velocity_error_m_s``, ``foot_skating_m_s``, ``ground_penetration_mm``,
    ``foot_float_mm`` and the ground truth's own ``gt_foot_skating_m_s``, ``gt_ground_penetration_mm`` and
    ``gt_foot_float_mm``, one value per window. Skating is weighted by each window's contact frames
    (:attr:`weighted_by`), so the evaluation pools it over all contact frames whatever the batch size."""

    def __init__(self, data: DataConfig) -> None:
        from daps.motion.h1 import load_h1
        from daps.motion.metrics import RATIO_WEIGHTS

        self.motion = motion_data(data)
        self.h1 = load_h1(data.data_dir or None)
        self.weighted_by = dict(RATIO_WEIGHTS)

    def poses(self, x: torch.Tensor) -> np.ndarray:
        """Standardized windows ``(B, 1, T, F)`` -> poses ``(B, T, 26)`` starting at the origin."""
        from daps.motion.features import features_to_poses

        raw = self.motion.stats.denormalize(x[:, 0].detach().double().cpu().numpy())  # (B, T, F)
        b = raw.shape[0]
        return features_to_poses(raw, np.zeros((b, 2)), np.zeros(b), self.motion.fps)

    def __call__(self, x: torch.Tensor, x_hat: torch.Tensor) -> dict[str, torch.Tensor]:
        from daps.motion.metrics import motion_metrics_per_window

        values = motion_metrics_per_window(self.h1, self.poses(x_hat), self.poses(x), self.motion.fps)
        return {k: torch.from_numpy(np.asarray(v, dtype=np.float64)) for k, v in values.items()}  # host values (B,)


def plot_motion_reconstructions(
    data: DataConfig, x: torch.Tensor, x_hat: torch.Tensor, path: Path, title: str
) -> None:
    """A few raw features over time, ground truth against reconstruction, for the first window of ``x`` and
    ``x_hat`` ``(B, 1, T, F)`` (standardized), written atomically to ``path`` (png)."""
    from daps.motion.render import plot_feature_trajectories

    motion = motion_data(data)
    target = motion.stats.denormalize(x[0, 0].detach().double().cpu().numpy())
    pred = motion.stats.denormalize(x_hat[0, 0].detach().double().cpu().numpy())
    plot_feature_trajectories(target, pred, path, fps=motion.fps, title=f"{title}, the first shown" if title else "")


STATS_FILE = "motion_stats.json"
"""The file a ``lafan1-h1`` run saves its training clips' feature statistics in."""


def lafan_run_files(data: DataConfig) -> dict[str, Any]:
    """What a ``lafan1-h1`` run saves beside its checkpoints: the standardization statistics of the training
    clips (``motion_stats.json``), so a reconstruction can be turned back into raw features and poses."""
    return {STATS_FILE: motion_data(data).stats.to_dict()}


def read_run_stats(path: Path) -> Any:
    """The :class:`~daps.motion.dataset.Standardizer` a run saved in ``path`` (``motion_stats.json``); a UserError
    naming the file when it is unreadable, damaged or of another feature version."""
    import json

    from daps.motion.dataset import Standardizer

    try:
        return Standardizer.from_dict(json.loads(Path(path).read_text()))
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, OSError) as err:  # e.g. not an object
        raise UserError(f"{path}: not readable motion statistics ({type(err).__name__}: {err})") from None


def read_saved_stats(run_dir: Path) -> Any:
    """The statistics a ``lafan1-h1`` run saved (:func:`read_run_stats` of its ``motion_stats.json``)."""
    return read_run_stats(Path(run_dir) / STATS_FILE)


def check_run_stats(run_dir: Path, data: DataConfig) -> None:
    """UserError when the statistics a run saved (``motion_stats.json``) differ from the data's: the features or
    clips changed since training, so reconstructions would be read on the wrong scale."""
    path = Path(run_dir) / STATS_FILE
    if not path.is_file():
        log.warning("%s is missing (a run folder copied without it?): the data's own statistics are used, not "
                    "checked against the run's", path)
        return
    saved = read_run_stats(path)
    current = motion_data(data).stats
    if not (np.allclose(saved.mean, current.mean) and np.allclose(saved.scale, current.scale)):
        raise UserError(
            f"{path}: the run was trained on data with other feature statistics than {data.name} has now "
            "(different clips or feature code)"
        )


@torch.no_grad()
def reconstruct_clip(
    model: Any, data: DataConfig, clip: str, start_s: float, seconds: float, generator: torch.Generator | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth poses and the model's reconstruction ``(N, 26)`` of ``seconds`` of ``clip`` from ``start_s``:
    consecutive windows of the run's length, each encoded and decoded on its own and anchored at the ground
    truth's position and heading at the window's first frame (the features carry no absolute position)."""
    from daps.motion.features import features_to_poses, root_anchor

    motion = motion_data(data)
    if clip not in motion.poses:
        raise UserError(f"unknown motion clip {clip!r}; valid clips: {', '.join(sorted(motion.poses))}")
    poses, feats = motion.poses[clip], motion.features[clip]
    t = motion.window
    first = int(round(start_s * motion.fps))
    wanted = max(1, math.ceil(seconds * motion.fps / t - 1e-9))  # windows: seconds rounded up, as robot plan does
    count = min((len(poses) - first) // t, wanted) * t  # as many as the clip has left
    if first < 0 or count < t:
        raise UserError(
            f"--start {start_s} s: {clip} has {len(poses) / motion.fps:.1f} s, so less than one {t}-frame window "
            f"({t / motion.fps:.2f} s) is left after it; choose an earlier --start"
        )
    target = poses[first : first + count]  # (N, 26)
    x = motion.stats.normalize(feats[first : first + count].astype(np.float64)).reshape(-1, 1, t, feats.shape[1])
    device = next(model.parameters()).device
    model.eval()
    x_hat = model.reconstruct(torch.as_tensor(x, dtype=torch.float32, device=device), generator).x_hat
    raw = motion.stats.denormalize(x_hat[:, 0].double().cpu().numpy())  # (W, T, F)
    xy, heading = root_anchor(target.reshape(-1, t, target.shape[-1]))
    pred = features_to_poses(raw, xy, heading, motion.fps).reshape(count, -1)
    return target, pred
