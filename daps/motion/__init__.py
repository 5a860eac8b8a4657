"""Motion data for the LAFAN1 tokenizer: LAFAN1 retargeted to the Unitree H1 humanoid (docs/motion.md).

- :mod:`~daps.motion.h1`: the H1 MuJoCo model, the pose layout, forward kinematics.
- :mod:`~daps.motion.lafan`: finding and parsing the clip CSVs, the train / validation split.
- :mod:`~daps.motion.features`: versioned per-frame features and their exact inverse to poses.
- :mod:`~daps.motion.dataset`: cached features, standardization, windows as torch tensors (:class:`MotionData`).
- :mod:`~daps.motion.metrics`: position / joint / root / foot metrics on poses, two trivial baselines.
- :mod:`~daps.motion.render`: side-by-side mp4 on the H1 (MuJoCo offscreen), feature plots.

MuJoCo (``pip install mujoco``) is imported only when a function needs it; rendering also needs imageio-ffmpeg.
"""

from daps.motion.dataset import (
    MotionData,
    MotionWindows,
    Standardizer,
    fit_standardizer,
    load_clip_features,
    load_motion_data,
)
from daps.motion.features import (
    FEATURE_LAYOUT,
    FEATURE_VERSION,
    NUM_FEATURES,
    feature_names,
    features_to_poses,
    poses_to_features,
    root_anchor,
)
from daps.motion.h1 import JOINT_NAMES, POSE_DIM, forward_kinematics, load_h1
from daps.motion.lafan import FPS, VAL_CLIPS, find_source, read_clips
from daps.motion.metrics import (
    foot_float_mm,
    foot_skating_m_s,
    ground_penetration_mm,
    hold_first_pose,
    interpolate_keyframes,
    joint_error_deg,
    motion_metrics,
    mpjpe_global_mm,
    mpjpe_mm,
    root_velocity_error_m_s,
)
from daps.motion.render import plot_feature_trajectories, render_side_by_side

__all__ = [
    "FEATURE_LAYOUT",
    "FEATURE_VERSION",
    "FPS",
    "JOINT_NAMES",
    "MotionData",
    "MotionWindows",
    "NUM_FEATURES",
    "POSE_DIM",
    "Standardizer",
    "VAL_CLIPS",
    "feature_names",
    "features_to_poses",
    "find_source",
    "fit_standardizer",
    "foot_float_mm",
    "foot_skating_m_s",
    "forward_kinematics",
    "ground_penetration_mm",
    "hold_first_pose",
    "interpolate_keyframes",
    "joint_error_deg",
    "load_clip_features",
    "load_h1",
    "load_motion_data",
    "motion_metrics",
    "mpjpe_global_mm",
    "mpjpe_mm",
    "plot_feature_trajectories",
    "poses_to_features",
    "read_clips",
    "render_side_by_side",
    "root_anchor",
    "root_velocity_error_m_s",
]
