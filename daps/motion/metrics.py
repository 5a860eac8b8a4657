"""Motion metrics on H1 poses, and two trivial baselines to read them against.

All functions take poses ``(..., T, 26)`` (:mod:`daps.motion.h1`; any leading batch axes, T frames) and return
a float averaged over everything. Units are in the names: ``_mm`` millimetres, ``_deg`` degrees, ``_m_s`` metres per
second. Positions come from MuJoCo forward kinematics of the H1 at :data:`METRIC_POINTS`: the origins (joint
centres) of the robot's bodies except the pelvis and ``torso_link`` (whose origin is the pelvis origin), plus the
toes and hands (:data:`~daps.motion.h1.END_POINTS`).

The retargeted ground truth itself slides and sinks its feet (a few millimetres into the floor on average,
centimetres at times in running clips; feet sliding in part of the walking frames), so report
:func:`foot_skating_m_s`, :func:`ground_penetration_mm` and :func:`foot_float_mm` of a reconstruction next to the
same numbers of its ground truth (:func:`motion_metrics` returns both). Skating alone rewards floating (a foot above
the contact height never counts as touching): read it with the float measure.
"""

from __future__ import annotations

import numpy as np

from daps.motion.features import CONTACT_HEIGHT, foot_heights_and_speeds
from daps.motion.h1 import (
    BODY_NAMES,
    END_POINTS,
    H1,
    JOINTS,
    POSE_DIM,
    ROOT_POS,
    ROOT_QUAT,
    Point,
    forward_kinematics,
    points_world,
)
from daps.motion.rotations import quat_nlerp

__all__ = [
    "METRIC_POINTS",
    "RATIO_WEIGHTS",
    "foot_float_mm",
    "foot_skating_m_s",
    "ground_penetration_mm",
    "hold_first_pose",
    "interpolate_keyframes",
    "joint_error_deg",
    "motion_metrics",
    "motion_metrics_per_window",
    "mpjpe_global_mm",
    "mpjpe_mm",
    "pool_windows",
    "root_velocity_error_m_s",
]

METRIC_POINTS: tuple[Point, ...] = tuple(Point(b, b) for b in BODY_NAMES if b not in ("pelvis", "torso_link")) + (
    END_POINTS
)
"""The 22 points of the position errors: 18 body origins and the 2 toes and 2 hands."""


def _check(poses: np.ndarray) -> np.ndarray:
    p = np.asarray(poses, dtype=np.float64)
    if p.ndim < 2 or p.shape[-1] != POSE_DIM:
        raise ValueError(f"poses must be (..., T, {POSE_DIM}), got {p.shape}")
    return p


class _Kin:
    """Forward kinematics of a pose array, computed once and shared by the metrics."""

    def __init__(self, h1: H1, poses: np.ndarray) -> None:
        self.poses = _check(poses)
        self.pos, self.rot = forward_kinematics(h1, self.poses)  # (..., T, 20, 3), (..., T, 20, 3, 3)
        self.points = points_world(self.pos, self.rot, METRIC_POINTS)  # (..., T, P, 3)
        self.root = self.poses[..., ROOT_POS]  # (..., T, 3)


def _pair(h1: H1, pred: np.ndarray, target: np.ndarray) -> tuple[_Kin, _Kin]:
    p, t = _check(pred), _check(target)
    if p.shape != t.shape:
        raise ValueError(f"pred and target shapes differ: {p.shape} vs {t.shape}")
    return _Kin(h1, p), _Kin(h1, t)


def _window_mean(values: np.ndarray, axes: int) -> np.ndarray:
    """The mean over the last ``axes`` axes: one value per window (the leading axes)."""
    return values.reshape(*values.shape[: values.ndim - axes], -1).mean(-1)


def _mpjpe(a: _Kin, b: _Kin) -> np.ndarray:
    da = a.points - a.root[..., None, :]  # (..., T, P, 3)
    db = b.points - b.root[..., None, :]
    return _window_mean(np.linalg.norm(da - db, axis=-1), 2) * 1000


def _mpjpe_global(a: _Kin, b: _Kin) -> np.ndarray:
    pa = np.concatenate([a.root[..., None, :], a.points], axis=-2)  # (..., T, 1 + P, 3)
    pb = np.concatenate([b.root[..., None, :], b.points], axis=-2)
    return _window_mean(np.linalg.norm(pa - pb, axis=-1), 2) * 1000


def _joint_error(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    return np.degrees(_window_mean(np.abs(p[..., JOINTS] - t[..., JOINTS]), 2))


def _root_velocity_error(p: np.ndarray, t: np.ndarray, fps: float) -> np.ndarray:
    if p.shape[-2] < 2:
        raise ValueError(f"root velocity needs at least 2 frames, got {p.shape}")
    dv = np.diff(p[..., ROOT_POS], axis=-2) - np.diff(t[..., ROOT_POS], axis=-2)  # (..., T-1, 3)
    return _window_mean(np.linalg.norm(dv, axis=-1), 1) * fps


def _feet(k: _Kin, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """Foot heights and sole-centre speeds ``(..., T, 2)``."""
    if k.poses.shape[-2] < 2:
        raise ValueError("foot metrics need at least 2 frames")
    return foot_heights_and_speeds(k.pos, k.rot, fps)


def _skating(k: _Kin, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """Per window: the summed sole-centre speed over the frames where a foot touches, and how many there are."""
    heights, speeds = _feet(k, fps)
    touch = heights < CONTACT_HEIGHT  # (..., T, 2)
    both = touch[..., 1:, :] & touch[..., :-1, :]  # the speed at t uses frames t-1 and t
    moving = np.where(both, speeds[..., 1:, :], 0.0)
    return moving.reshape(*moving.shape[:-2], -1).sum(-1), both.reshape(*both.shape[:-2], -1).sum(-1)


def _pooled(parts: tuple[np.ndarray, np.ndarray]) -> float:
    """Skating over all windows: the summed speeds over the contact frames of all windows (0 without contact)."""
    total, count = parts
    return float(total.sum() / count.sum()) if count.sum() else 0.0


def _penetration(k: _Kin) -> np.ndarray:
    heights, _ = _feet(k, 1.0)
    return _window_mean(np.maximum(0.0, -heights), 2) * 1000


def _float(k: _Kin) -> np.ndarray:
    heights, _ = _feet(k, 1.0)
    return _window_mean(np.maximum(0.0, heights.min(axis=-1)), 1) * 1000


def mpjpe_mm(h1: H1, pred: np.ndarray, target: np.ndarray) -> float:
    """Mean per-point position error (mm) with each pose's root position subtracted (the root's orientation is not
    removed, so a wrong heading or tilt counts): ``mean ||(p_i - r) - (p*_i - r*)||`` over points and frames."""
    return float(_mpjpe(*_pair(h1, pred, target)).mean())


def mpjpe_global_mm(h1: H1, pred: np.ndarray, target: np.ndarray) -> float:
    """Mean per-point position error (mm) in the world frame, over the pelvis origin and :data:`METRIC_POINTS`."""
    return float(_mpjpe_global(*_pair(h1, pred, target)).mean())


def joint_error_deg(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean absolute joint angle error (degrees) over the 19 hinges and all frames."""
    p, t = _check(pred), _check(target)
    if p.shape != t.shape:
        raise ValueError(f"pred and target shapes differ: {p.shape} vs {t.shape}")
    return float(_joint_error(p, t).mean())


def root_velocity_error_m_s(pred: np.ndarray, target: np.ndarray, fps: float) -> float:
    """Mean norm of the difference of root (pelvis origin) 3-d velocities (m/s; frame differences times ``fps``)."""
    p, t = _check(pred), _check(target)
    if p.shape != t.shape or p.shape[-2] < 2:
        raise ValueError(f"root velocity needs equal shapes with at least 2 frames, got {p.shape} and {t.shape}")
    return float(_root_velocity_error(p, t, fps).mean())


def foot_skating_m_s(h1: H1, poses: np.ndarray, fps: float) -> float:
    """Mean horizontal speed (m/s) of a foot's sole centre over the frames where the foot touches the floor: its lowest
    sole corner is below :data:`~daps.motion.features.CONTACT_HEIGHT` in this frame and the previous one. 0 when no
    foot ever touches."""
    return _pooled(_skating(_Kin(h1, poses), fps))


def ground_penetration_mm(h1: H1, poses: np.ndarray) -> float:
    """Mean depth (mm) of the feet below the floor: ``max(0, -lowest sole corner height)``, averaged over both feet
    and all frames (frames above the floor count as 0)."""
    return float(_penetration(_Kin(h1, poses)).mean())


def foot_float_mm(h1: H1, poses: np.ndarray) -> float:
    """Mean height (mm) of the lower foot above the floor: ``max(0, lowest sole corner of both feet)`` over all frames.
    The counterpart of :func:`ground_penetration_mm` and the check on :func:`foot_skating_m_s`, which a motion
    floating above the floor improves (its feet never count as touching): flight phases (runs, jumps) raise it in
    the ground truth too, so read it against the data's own figure."""
    return float(_float(_Kin(h1, poses)).mean())


def motion_metrics_per_window(h1: H1, pred: np.ndarray, target: np.ndarray, fps: float) -> dict[str, np.ndarray]:
    """Every metric of this module for each window of a reconstruction ``pred`` of ``target`` (both ``(..., T,
    26)``; one value per leading index), plus the ground truth's own foot skating, penetration and float under
    ``gt_*`` keys. Skating is a ratio (speed summed over contact frames / their count): a window without contact has
    0, and ``foot_contact_frames`` / ``gt_foot_contact_frames`` give the counts that weight windows into the
    pooled figure (:data:`RATIO_WEIGHTS`). Runs forward kinematics once per input."""
    a, b = _pair(h1, pred, target)
    skating, gt_skating = _skating(a, fps), _skating(b, fps)
    return {
        "mpjpe_mm": _mpjpe(a, b),
        "mpjpe_global_mm": _mpjpe_global(a, b),
        "joint_error_deg": _joint_error(a.poses, b.poses),
        "root_velocity_error_m_s": _root_velocity_error(a.poses, b.poses, fps),
        "foot_skating_m_s": skating[0] / np.maximum(skating[1], 1),
        "ground_penetration_mm": _penetration(a),
        "foot_float_mm": _float(a),
        "gt_foot_skating_m_s": gt_skating[0] / np.maximum(gt_skating[1], 1),
        "gt_ground_penetration_mm": _penetration(b),
        "gt_foot_float_mm": _float(b),
        "foot_contact_frames": skating[1].astype(np.float64),
        "gt_foot_contact_frames": gt_skating[1].astype(np.float64),
    }


RATIO_WEIGHTS = {"foot_skating_m_s": "foot_contact_frames", "gt_foot_skating_m_s": "gt_foot_contact_frames"}
"""The per-window metrics that pool by a count rather than average over windows: metric -> its weight's key."""


def motion_metrics(h1: H1, pred: np.ndarray, target: np.ndarray, fps: float) -> dict[str, float]:
    """Every metric of :func:`motion_metrics_per_window` over all windows: skating pooled over all contact frames,
    the others averaged (every window has the same frames and points, so that is their mean over all of them)."""
    return pool_windows(motion_metrics_per_window(h1, pred, target, fps))


def pool_windows(windows: dict[str, np.ndarray]) -> dict[str, float]:
    """Per-window values of :func:`motion_metrics_per_window` (any number of windows, e.g. several batches'
    concatenated) -> one figure each: the :data:`RATIO_WEIGHTS` metrics weighted by their counts (0 without
    contact), the others averaged; the counts themselves are not returned."""
    windows = dict(windows)
    weights = {key: windows.pop(w) for key, w in RATIO_WEIGHTS.items()}
    out = {}
    for key, values in windows.items():
        if key in weights:
            count = weights[key].sum()
            out[key] = float((values * weights[key]).sum() / count) if count else 0.0
        else:
            out[key] = float(values.mean())
    return out


# --------------------------------------------------------------------------------------------------
# Baselines


def hold_first_pose(poses: np.ndarray) -> np.ndarray:
    """Baseline: every frame of each window ``(..., T, 26)`` is the window's first pose."""
    p = _check(poses)
    return np.broadcast_to(p[..., :1, :], p.shape).copy()


def interpolate_keyframes(poses: np.ndarray, every: int = 8) -> np.ndarray:
    """Baseline: keep frames ``0, every, 2 every, ...`` and the last frame of each window ``(..., T, 26)``, and
    interpolate linearly in between (root position and joint angles; root quaternion by normalized lerp)."""
    p = _check(poses)
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    num = p.shape[-2]
    if num < 2:
        return p.copy()
    keys = np.unique(np.r_[np.arange(0, num, every), num - 1])  # (K,)
    frame = np.arange(num)
    right = np.clip(np.searchsorted(keys, frame, side="right"), 1, len(keys) - 1)  # (T,) next key's slot
    k0, k1 = keys[right - 1], keys[right]
    w = np.where(k1 > k0, (frame - k0) / np.maximum(k1 - k0, 1), 0.0)  # (T,)
    a, b = p[..., k0, :], p[..., k1, :]  # (..., T, 26)
    out = (1 - w)[:, None] * a + w[:, None] * b
    out[..., ROOT_QUAT] = quat_nlerp(a[..., ROOT_QUAT], b[..., ROOT_QUAT], np.broadcast_to(w, out.shape[:-1]))
    return out
