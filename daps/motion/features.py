"""Per-frame motion features of the H1 (version :data:`FEATURE_VERSION`) and their exact inverse back to poses.

Each frame becomes :data:`NUM_FEATURES` floats laid out as :data:`FEATURE_LAYOUT` (docs/motion.md has the table).
The root's horizontal position and heading are not features: the root is described by its height, its tilt
(orientation with the heading removed), and its planar velocity and yaw rate in its own heading frame, so a
window of features looks the same wherever and whichever way the motion happens. :func:`features_to_poses`
integrates velocity and yaw rate from a given first-frame position and heading and recovers the poses exactly
(up to float error). The joint velocities, key points and contacts are redundant given the angles: the inverse
does not read them; they are there for the model to fit.

Velocities are backward differences (frame ``t`` minus frame ``t - 1``, times the frame rate); the first frame of a
clip, which has no predecessor, copies the second frame's velocities.

Bump :data:`FEATURE_VERSION` whenever any feature changes: the on-disk cache is keyed by it.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from daps.motion.h1 import (
    END_POINTS,
    FOOT_BODIES,
    H1,
    JOINT_NAMES,
    JOINTS,
    POSE_DIM,
    ROOT_POS,
    ROOT_QUAT,
    Point,
    forward_kinematics,
    points_world,
    sole_points,
)
from daps.motion.rotations import (
    heading,
    mat_to_quat,
    quat_conj,
    quat_mul,
    quat_to_mat,
    rot6d_to_mat,
    rotate_z,
    wrap_angle,
    yaw_quat,
)

__all__ = [
    "CONTACT_HEIGHT",
    "CONTACT_SPEED",
    "FEATURE_LAYOUT",
    "FEATURE_VERSION",
    "KEY_POINTS",
    "NUM_FEATURES",
    "feature_names",
    "features_to_poses",
    "foot_heights_and_speeds",
    "poses_to_features",
    "root_anchor",
]

FEATURE_VERSION = 1

KEY_POINTS: tuple[Point, ...] = (
    Point("left_knee", "left_knee_link"),
    Point("right_knee", "right_knee_link"),
    Point("left_ankle", "left_ankle_link"),
    Point("right_ankle", "right_ankle_link"),
    END_POINTS[0],  # left_toe
    END_POINTS[1],  # right_toe
    Point("left_shoulder", "left_shoulder_roll_link"),
    Point("right_shoulder", "right_shoulder_roll_link"),
    Point("left_elbow", "left_elbow_link_ball_hand"),
    Point("right_elbow", "right_elbow_link_ball_hand"),
    END_POINTS[2],  # left_hand
    END_POINTS[3],  # right_hand
)
"""Points whose positions relative to the pelvis are features (body frame origins sit at the joints)."""

CONTACT_HEIGHT = 0.03
"""A foot touches the floor when its lowest sole corner is below this height (m). The retargeted ground truth sinks
centimetres into the floor at times (running clips), so the threshold is measured from z = 0, not from a fitted
floor."""
CONTACT_SPEED = 0.5
"""... and, for the contact *feature*, its sole centre moves horizontally slower than this (m/s)."""


class Field(NamedTuple):
    """One named block of the feature vector."""

    name: str
    size: int
    unit: str
    description: str


FIELDS = (
    Field("root_height", 1, "m", "pelvis origin height above the floor (z)"),
    Field("root_tilt", 6, "-", "pelvis rotation with the heading removed, 6D (first two matrix columns)"),
    Field("root_velocity", 2, "m/s", "pelvis planar velocity in the heading frame (forward, left)"),
    Field("yaw_rate", 1, "rad/s", "rate of change of the heading"),
    Field("joint_angles", len(JOINT_NAMES), "rad", "the 19 hinge angles, qpos order"),
    Field("joint_velocities", len(JOINT_NAMES), "rad/s", "their backward differences"),
    Field("key_points", 3 * len(KEY_POINTS), "m", "KEY_POINTS minus the pelvis origin, in the heading frame"),
    Field("foot_contacts", len(FOOT_BODIES), "0/1", "left, right foot on the floor (low and slow)"),
)


def _layout() -> dict[str, slice]:
    out, start = {}, 0
    for f in FIELDS:
        out[f.name] = slice(start, start + f.size)
        start += f.size
    return out


FEATURE_LAYOUT: dict[str, slice] = _layout()
"""Name -> columns of each block of the feature vector."""
NUM_FEATURES = sum(f.size for f in FIELDS)


def feature_names() -> list[str]:
    """One name per feature column, e.g. ``joint_angles/left_knee_joint`` or ``key_points/left_hand.z``."""
    axes = {
        "root_height": ["z"],
        "root_tilt": ["c1.x", "c1.y", "c1.z", "c2.x", "c2.y", "c2.z"],
        "root_velocity": ["forward", "left"],
        "yaw_rate": ["z"],
        "joint_angles": list(JOINT_NAMES),
        "joint_velocities": list(JOINT_NAMES),
        "key_points": [f"{p.name}.{a}" for p in KEY_POINTS for a in "xyz"],
        "foot_contacts": ["left", "right"],
    }
    return [f"{f.name}/{a}" for f in FIELDS for a in axes[f.name]]


# --------------------------------------------------------------------------------------------------
# Poses -> features


def _backward_diff(x: np.ndarray, fps: float, axis: int = 0) -> np.ndarray:
    """``(x[t] - x[t-1]) * fps`` along ``axis`` (the time axis); entry 0 copies entry 1."""
    d = np.diff(x, axis=axis) * fps
    return np.concatenate([np.take(d, [0], axis=axis), d], axis=axis)


def foot_heights_and_speeds(pos: np.ndarray, rot: np.ndarray, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """Per frame and foot: height of the lowest sole corner (m) and horizontal speed of the sole centre (m/s).

    Args:
        pos, rot: :func:`~daps.motion.h1.forward_kinematics` output for ``(..., T)`` frames (T >= 2).

    Returns:
        ``heights (..., T, 2)`` and ``speeds (..., T, 2)`` for :data:`~daps.motion.h1.FOOT_BODIES` (left, right).
    """
    heights, speeds = [], []
    for foot in FOOT_BODIES:
        corners = points_world(pos, rot, sole_points(foot))  # (..., T, 4, 3)
        heights.append(corners[..., 2].min(axis=-1))  # (..., T)
        centre = corners.mean(axis=-2)[..., :2]  # (..., T, 2)
        speeds.append(np.linalg.norm(_backward_diff(centre, fps, axis=-2), axis=-1))  # (..., T)
    return np.stack(heights, axis=-1), np.stack(speeds, axis=-1)


def root_anchor(poses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Planar position ``(..., 2)`` (m) and heading ``(...)`` (rad) of the first frame of ``poses (..., T, 26)``:
    what :func:`features_to_poses` needs besides the features."""
    first = np.asarray(poses, dtype=np.float64)[..., 0, :]
    return first[..., 0:2], heading(first[..., ROOT_QUAT])


def poses_to_features(h1: H1, poses: np.ndarray, fps: float) -> np.ndarray:
    """Features ``(T, NUM_FEATURES)`` float64 of one clip's poses ``(T, 26)`` (T >= 2) at ``fps`` frames per second."""
    poses = np.asarray(poses, dtype=np.float64)
    if poses.ndim != 2 or poses.shape[1] != POSE_DIM or poses.shape[0] < 2:
        raise ValueError(f"poses must be (T >= 2, {POSE_DIM}), got {poses.shape}")
    root, quat, joints = poses[:, ROOT_POS], poses[:, ROOT_QUAT], poses[:, JOINTS]
    psi = heading(quat)  # (T,)
    tilt = quat_to_mat(quat_mul(quat_conj(yaw_quat(psi)), quat))  # (T, 3, 3)
    step = _backward_diff(root[:, :2], fps)  # (T, 2) world frame
    pos, rot = forward_kinematics(h1, poses)  # (T, 20, 3), (T, 20, 3, 3)
    rel = points_world(pos, rot, KEY_POINTS) - root[:, None, :]  # (T, P, 3)
    heights, speeds = foot_heights_and_speeds(pos, rot, fps)  # (T, 2) each
    parts = {
        "root_height": root[:, 2:3],
        "root_tilt": np.concatenate([tilt[:, :, 0], tilt[:, :, 1]], axis=-1),  # (T, 6)
        "root_velocity": rotate_z(step, -psi),  # (T, 2)
        "yaw_rate": _yaw_rate(psi, fps)[:, None],  # (T, 1)
        "joint_angles": joints,
        "joint_velocities": _backward_diff(joints, fps),
        "key_points": rotate_z(rel, -psi[:, None]).reshape(len(poses), -1),  # (T, 3P)
        "foot_contacts": ((heights < CONTACT_HEIGHT) & (speeds < CONTACT_SPEED)).astype(np.float64),
    }
    out = np.concatenate([parts[f.name] for f in FIELDS], axis=-1)  # (T, F)
    assert out.shape[1] == NUM_FEATURES
    return out


def _yaw_rate(psi: np.ndarray, fps: float) -> np.ndarray:
    """Backward difference of the heading (rad/s), each step wrapped to (-pi, pi]; row 0 copies row 1."""
    d = wrap_angle(np.diff(psi)) * fps
    return np.concatenate([d[:1], d])


# --------------------------------------------------------------------------------------------------
# Features -> poses


def features_to_poses(
    features: np.ndarray, start_xy: np.ndarray, start_heading: np.ndarray, fps: float, drop_twist: bool = False
) -> np.ndarray:
    """Poses ``(..., T, 26)`` from features ``(..., T, NUM_FEATURES)``, given the first frame's planar position
    ``start_xy (..., 2)`` (m) and heading ``start_heading (...)`` (rad), e.g. from :func:`root_anchor`.

    Heading and planar position are integrated from frame 1 on (frame 0's velocities are not read); height, tilt
    and joint angles are read per frame. Any ``(..., T, F)`` array works, e.g. a decoder's output: the tilt goes
    through Gram-Schmidt, so it always yields a rotation. A tilt made from data has no twist about the vertical
    (the heading took it); a decoded one may, and it then adds to the heading. ``drop_twist`` removes it
    (``benchmarks/heading_twist.py`` measures what it changes).
    """
    x = np.asarray(features, dtype=np.float64)
    lay = FEATURE_LAYOUT
    yaw_rate = x[..., lay["yaw_rate"]][..., 0]  # (..., T)
    steps = wrap_angle(yaw_rate[..., 1:] / fps)  # (..., T-1)
    psi = np.asarray(start_heading, dtype=np.float64)[..., None] + np.concatenate(
        [np.zeros_like(steps[..., :1]), np.cumsum(steps, axis=-1)], axis=-1
    )  # (..., T)
    moves = rotate_z(x[..., lay["root_velocity"]], psi) / fps  # (..., T, 2) world frame
    moves[..., 0, :] = 0.0
    xy = np.asarray(start_xy, dtype=np.float64)[..., None, :] + np.cumsum(moves, axis=-2)  # (..., T, 2)
    tilt = mat_to_quat(rot6d_to_mat(x[..., lay["root_tilt"]]))  # (..., T, 4)
    if drop_twist:  # tilt = yaw(twist) * swing: keep the swing
        tilt = quat_mul(yaw_quat(-heading(tilt)), tilt)
    quat = quat_mul(yaw_quat(psi), tilt)  # (..., T, 4)
    quat = np.where(quat[..., :1] < 0, -quat, quat)
    return np.concatenate([xy, x[..., lay["root_height"]], quat, x[..., lay["joint_angles"]]], axis=-1)

