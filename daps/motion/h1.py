"""The Unitree H1 humanoid in MuJoCo: where its model is found, the pose layout, forward kinematics.

A *pose* is one MuJoCo ``qpos`` row without the model's dummy last joint: ``(..., 26)`` float64 =
root position x, y, z (m, world frame, z up) | root quaternion **w, x, y, z** (MuJoCo's order) | the 19 hinge
angles (rad) in :data:`JOINT_NAMES` order, which is the model's own qpos order. The model (``h1.xml`` of
Unitree's ``unitree_mujoco``) has a 27th qpos entry, ``not_use_joint``: a hinge on an empty body 20 m up that
only pads the actuator count; it is always 0 here.

The model is searched for like every dataset (:mod:`daps.data.paths`): ``data_dir``, else ``$DAPS_DATA_DIR``,
then the cache folder; in each, ``unitree_h1_mjcf/h1.xml`` or ``h1.xml``.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np

from daps.data.paths import DATA_DIR_FIX, PathLike, cache_root, dedupe, user_roots
from daps.errors import UserError

__all__ = [
    "BODY_NAMES",
    "END_POINTS",
    "FOOT_BODIES",
    "H1",
    "JOINTS",
    "JOINT_NAMES",
    "MODEL_FILE",
    "MODEL_FOLDER",
    "POSE_DIM",
    "Point",
    "ROOT_POS",
    "ROOT_QUAT",
    "SCENE_FILE",
    "find_model_file",
    "forward_kinematics",
    "import_mujoco",
    "load_h1",
    "points_world",
    "sole_points",
]

MODEL_FOLDER = "unitree_h1_mjcf"
MODEL_FILE = "h1.xml"
SCENE_FILE = "scene.xml"
"""``scene.xml`` next to ``h1.xml`` adds a floor and a light (used for rendering)."""

JOINT_NAMES = (
    "left_hip_yaw_joint", "left_hip_roll_joint", "left_hip_pitch_joint", "left_knee_joint", "left_ankle_joint",
    "right_hip_yaw_joint", "right_hip_roll_joint", "right_hip_pitch_joint", "right_knee_joint", "right_ankle_joint",
    "torso_joint",
    "left_shoulder_pitch_joint", "left_shoulder_roll_joint", "left_shoulder_yaw_joint", "left_elbow_joint",
    "right_shoulder_pitch_joint", "right_shoulder_roll_joint", "right_shoulder_yaw_joint", "right_elbow_joint",
)  # fmt: skip
"""The 19 hinges in qpos order (= the column order of the LAFAN1 H1 CSVs; checked against the model on load)."""

BODY_NAMES = (
    "pelvis",
    "left_hip_yaw_link", "left_hip_roll_link", "left_hip_pitch_link", "left_knee_link", "left_ankle_link",
    "right_hip_yaw_link", "right_hip_roll_link", "right_hip_pitch_link", "right_knee_link", "right_ankle_link",
    "torso_link",
    "left_shoulder_pitch_link", "left_shoulder_roll_link", "left_shoulder_yaw_link", "left_elbow_link_ball_hand",
    "right_shoulder_pitch_link", "right_shoulder_roll_link", "right_shoulder_yaw_link", "right_elbow_link_ball_hand",
)  # fmt: skip
"""The robot's 20 bodies in the model's order (MuJoCo body ids 1..20; 0 is the world, 21 the dummy body)."""

POSE_DIM = 26
ROOT_POS = slice(0, 3)
ROOT_QUAT = slice(3, 7)
JOINTS = slice(7, 26)

FOOT_BODIES = ("left_ankle_link", "right_ankle_link")
"""The H1's feet: the ankle links carry the foot meshes."""
SOLE_Z = -0.07
SOLE_X = (-0.095, 0.195)
SOLE_HALF_WIDTH = 0.0125
"""The flat sole of each foot mesh in its ankle frame (m): z = -0.07, heel x = -0.095, toe x = 0.195, y = +-0.0125
(the mesh's lowest vertices; the corners are rounded, so the box is a little inside the mesh outline)."""
HAND_CENTER = (0.28, 0.0, -0.0185)
"""Centre of the ball hand in the ``*_elbow_link_ball_hand`` frame (m): its mesh ends at x = 0.316, radius ~0.036."""


class Point(NamedTuple):
    """A point fixed to a body: ``offset`` (m) in the body's frame."""

    name: str
    body: str
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)


END_POINTS = (
    Point("left_toe", "left_ankle_link", (SOLE_X[1], 0.0, SOLE_Z)),
    Point("right_toe", "right_ankle_link", (SOLE_X[1], 0.0, SOLE_Z)),
    Point("left_hand", "left_elbow_link_ball_hand", HAND_CENTER),
    Point("right_hand", "right_elbow_link_ball_hand", HAND_CENTER),
)
"""End effectors that no body frame marks (the toe tip on the sole, the centre of the ball hand)."""


def sole_points(foot: str) -> tuple[Point, ...]:
    """The 4 corners of ``foot``'s sole (heel/toe x inner/outer); the lowest of them is the foot's lowest point."""
    return tuple(
        Point(f"{foot}_sole_{i}", foot, (x, y, SOLE_Z))
        for i, (x, y) in enumerate((x, y) for x in SOLE_X for y in (-SOLE_HALF_WIDTH, SOLE_HALF_WIDTH))
    )


# --------------------------------------------------------------------------------------------------
# MuJoCo


def import_mujoco() -> ModuleType:
    """``import mujoco`` (an optional dependency: ``pip install mujoco``), headless by default.

    MuJoCo picks its OpenGL backend once, at import. On Linux without ``$DISPLAY`` and without ``$MUJOCO_GL`` this
    sets ``MUJOCO_GL=egl`` first, so offscreen rendering works on a machine without a screen (see render.py).
    """
    if platform.system() == "Linux" and not os.environ.get("DISPLAY") and not os.environ.get("MUJOCO_GL"):
        os.environ["MUJOCO_GL"] = "egl"
    try:
        import mujoco
    except ImportError as e:
        raise UserError(f"the H1 motion code needs MuJoCo: pip install mujoco ({e})") from e
    except (AttributeError, RuntimeError, OSError) as e:  # the OpenGL backend MUJOCO_GL names failed to load
        backend = os.environ.get("MUJOCO_GL", "")
        raise UserError(
            f"MuJoCo could not load the OpenGL backend MUJOCO_GL={backend} ({type(e).__name__}: "
            f"{' '.join(str(e).split())[:120]}); use MUJOCO_GL=egl, or install Mesa's libosmesa6 "
            "(apt-get install libosmesa6) for MUJOCO_GL=osmesa"
        ) from None
    return mujoco


def model_search_folders(data_dir: PathLike | None = None) -> list[Path]:
    """Where :func:`find_model_file` looks, in order."""
    folders: list[Path] = []
    for root in user_roots(data_dir) + [cache_root()]:
        folders += [root / MODEL_FOLDER, root]
    return dedupe(folders)


def find_model_file(data_dir: PathLike | None = None) -> Path:
    """``unitree_h1_mjcf/h1.xml`` (or ``h1.xml``) in ``data_dir`` / ``$DAPS_DATA_DIR`` / the cache folder, or
    FileNotFoundError saying where it looked."""
    folders = model_search_folders(data_dir)
    for folder in folders:
        if (folder / MODEL_FILE).is_file():
            return folder / MODEL_FILE
    looked = ", ".join(str(f) for f in folders)
    raise FileNotFoundError(
        f"Unitree H1 model not found: no {MODEL_FOLDER}/{MODEL_FILE} in {looked}. Fix: {DATA_DIR_FIX} to a folder "
        f"holding {MODEL_FOLDER}/ (h1.xml, scene.xml and assets/ of unitree_mujoco's unitree_robots/h1)"
    )


@dataclass(frozen=True)
class H1:
    """A loaded H1 model: MuJoCo's ``MjModel`` and the lookups the motion code needs.

    Attributes:
        model: ``mujoco.MjModel`` of ``h1.xml``.
        path: the ``h1.xml`` it was read from.
        body_ids: MuJoCo body id of each of :data:`BODY_NAMES`.
        joint_range: ``(19, 2)`` lower / upper limit (rad) of each of :data:`JOINT_NAMES`.
    """

    model: Any
    path: Path
    body_ids: tuple[int, ...]
    joint_range: np.ndarray

    def body_index(self, name: str) -> int:
        """Position of body ``name`` in :data:`BODY_NAMES` (the body axis of :func:`forward_kinematics`)."""
        return BODY_NAMES.index(name)


def _check_layout(mujoco: ModuleType, m: Any, path: Path) -> tuple[tuple[int, ...], np.ndarray]:
    """The model must be the 19-hinge H1 with a free root in qpos[0:7] and the hinges in :data:`JOINT_NAMES` order."""
    obj = mujoco.mjtObj
    if m.nq != POSE_DIM + 1 or m.njnt != len(JOINT_NAMES) + 2:
        raise UserError(f"{path}: not the Unitree H1 model (nq={m.nq}, expected {POSE_DIM + 1})")
    if int(m.jnt_type[0]) != int(mujoco.mjtJoint.mjJNT_FREE):
        raise UserError(f"{path}: the first joint is not the free root joint")
    ranges = []
    for k, name in enumerate(JOINT_NAMES):
        jid = mujoco.mj_name2id(m, obj.mjOBJ_JOINT, name)
        if jid < 0 or int(m.jnt_qposadr[jid]) != JOINTS.start + k:
            raise UserError(f"{path}: joint {name} is missing or not at qpos[{JOINTS.start + k}]")
        ranges.append(np.array(m.jnt_range[jid], dtype=np.float64))
    body_ids = []
    for name in BODY_NAMES:
        bid = mujoco.mj_name2id(m, obj.mjOBJ_BODY, name)
        if bid < 0:
            raise UserError(f"{path}: body {name} is missing")
        body_ids.append(int(bid))
    return tuple(body_ids), np.stack(ranges)


@functools.lru_cache(maxsize=4)
def _load(path: Path) -> H1:
    mujoco = import_mujoco()
    try:
        model = mujoco.MjModel.from_xml_path(str(path))
    except ValueError as e:  # MuJoCo's XML / mesh errors
        raise UserError(f"{path}: MuJoCo cannot load it ({str(e).splitlines()[0] if str(e) else e})") from e
    body_ids, joint_range = _check_layout(mujoco, model, path)
    return H1(model=model, path=path, body_ids=body_ids, joint_range=joint_range)


def load_h1(data_dir: PathLike | None = None, path: PathLike | None = None) -> H1:
    """The H1 model from ``path``, else found by :func:`find_model_file`; loaded once per file and process."""
    file = Path(path).expanduser() if path is not None else find_model_file(data_dir)
    if not file.is_file():
        raise FileNotFoundError(f"H1 model file {file} does not exist")
    return _load(file.resolve())


def forward_kinematics(h1: H1, poses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World position and orientation of every robot body, by MuJoCo's ``mj_kinematics``.

    Args:
        poses: ``(..., 26)`` poses (see the module docstring).

    Returns:
        ``pos (..., 20, 3)`` (m) and ``rot (..., 20, 3, 3)`` (body-to-world rotation matrices) of :data:`BODY_NAMES`.
    """
    mujoco = import_mujoco()
    poses = np.asarray(poses, dtype=np.float64)
    if poses.shape[-1] != POSE_DIM:
        raise ValueError(f"poses must be (..., {POSE_DIM}), got {poses.shape}")
    flat = poses.reshape(-1, POSE_DIM)  # (N, 26)
    ids = list(h1.body_ids)
    pos = np.empty((flat.shape[0], len(ids), 3))  # (N, 20, 3)
    rot = np.empty((flat.shape[0], len(ids), 9))  # (N, 20, 9)
    data = mujoco.MjData(h1.model)
    for i, q in enumerate(flat):
        data.qpos[:POSE_DIM] = q
        mujoco.mj_kinematics(h1.model, data)
        pos[i] = data.xpos[ids]
        rot[i] = data.xmat[ids]
    lead = poses.shape[:-1]
    return pos.reshape(*lead, len(ids), 3), rot.reshape(*lead, len(ids), 3, 3)


def points_world(pos: np.ndarray, rot: np.ndarray, points: tuple[Point, ...]) -> np.ndarray:
    """World positions ``(..., P, 3)`` of body-fixed ``points`` from :func:`forward_kinematics` output."""
    idx = [BODY_NAMES.index(p.body) for p in points]
    offsets = np.array([p.offset for p in points], dtype=np.float64)  # (P, 3)
    return pos[..., idx, :] + np.einsum("...pij,pj->...pi", rot[..., idx, :, :], offsets)  # (..., P, 3)
