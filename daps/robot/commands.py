"""What a user asks the robot for: a kind of motion (by name or by a text prompt) and a root velocity per window.

**Motion kinds** are the clip kinds of LAFAN1 (:data:`daps.data.motion.MOTION_TYPES`: dance, fall, fight, jump,
run, walk). No text encoder can be downloaded on our machines, so a prompt maps to a kind by the keywords in
:data:`PROMPT_KEYWORDS` (whole words, case-insensitive, with the endings of ``docs/robot.md``: "s", "es", "ing", "ed"
or "er", the keyword's last letter doubled or its final "e" dropped before it); a prompt naming no
kind or two kinds is refused with the list of keywords.

**Window velocity** (:func:`window_velocity`): over a window of T frames, the pelvis's planar displacement from the
first to the last frame, turned into the heading frame of the first frame (x forward, y left) and divided by the
window's duration ``(T - 1) / fps``, and the heading change over the window (each frame's step wrapped to +-pi)
divided by the same duration: ``(forward m/s, left m/s, yaw rate rad/s)``. The paper conditions on the centre of
mass; :func:`com_window_velocity` computes the same three numbers from the centre of mass so the two can be
compared (``docs/robot.md`` states how closely they agree on the data).
"""

from __future__ import annotations

import re

import numpy as np

from daps.data.motion import MOTION_TYPES
from daps.errors import UserError
from daps.motion.h1 import H1, ROOT_QUAT, import_mujoco
from daps.motion.rotations import heading, rotate_z, wrap_angle

VELOCITY_NAMES = ("forward_m_s", "left_m_s", "yaw_rad_s")

PROMPT_KEYWORDS: dict[str, tuple[str, ...]] = {
    "walk": ("walk", "stroll", "march", "wander", "stride", "pace"),
    "run": ("run", "jog", "sprint", "dash", "race"),
    "dance": ("dance", "groove", "twirl", "boogie"),
    "jump": ("jump", "hop", "leap", "bounce", "skip"),
    "fight": ("fight", "punch", "kick", "box", "spar", "strike"),
    "fall": ("fall", "collapse", "stumble", "tumble", "getup", "fallen"),
}
"""Keywords of each motion kind for text prompts (the kind's own name included)."""


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def _matches(word: str, key: str) -> bool:
    """``word`` is ``key`` or an inflection: +s/es/ing/ed/er, the last letter doubled (running), a final e
    dropped (dancing, raced)."""
    stems = {key, key + key[-1]} | ({key[:-1]} if key.endswith("e") else set())
    return word == key or any(word == stem + end for stem in stems for end in ("s", "es", "ing", "ed", "er"))


def motion_from_prompt(prompt: str) -> str:
    """The motion kind a text prompt asks for (see the module docstring), or UserError."""
    found = {kind for word in _words(prompt) for kind, keys in PROMPT_KEYWORDS.items()
             if any(_matches(word, k) for k in keys)}
    if len(found) != 1:
        listing = "; ".join(f"{kind}: {', '.join(keys)}" for kind, keys in PROMPT_KEYWORDS.items())
        what = "names no kind of motion" if not found else f"names several kinds ({', '.join(sorted(found))})"
        raise UserError(f"the prompt {prompt!r} {what}; use one kind's keywords ({listing})")
    return found.pop()


def motion_index(name: str, class_names: list[str] | tuple[str, ...] = MOTION_TYPES, hint: str = "") -> int:
    """Index of motion kind ``name`` among ``class_names``, or UserError listing them (and ``hint``)."""
    if name not in class_names:
        raise UserError(f"unknown motion {name!r}; choose one of: {', '.join(class_names)}{hint}")
    return list(class_names).index(name)


def window_velocity(poses: np.ndarray, fps: float) -> np.ndarray:
    """``(forward, left, yaw rate)`` of windows of poses ``(..., T, 26)`` (T >= 2): ``(..., 3)`` in m/s and rad/s."""
    poses = np.asarray(poses, dtype=np.float64)
    if poses.ndim < 2 or poses.shape[-2] < 2:
        raise ValueError(f"window velocity needs windows of at least 2 frames, got {poses.shape}")
    duration = (poses.shape[-2] - 1) / fps
    psi = heading(poses[..., ROOT_QUAT])  # (..., T)
    move = poses[..., -1, :2] - poses[..., 0, :2]  # (..., 2)
    local = rotate_z(move, -psi[..., 0]) / duration
    yaw = wrap_angle(np.diff(psi, axis=-1)).sum(axis=-1) / duration
    return np.concatenate([local, yaw[..., None]], axis=-1)


def centre_of_mass(h1: H1, poses: np.ndarray) -> np.ndarray:
    """World position ``(..., 3)`` of the robot's centre of mass for poses ``(..., 26)`` (MuJoCo's subtree centre
    of mass of the pelvis, which carries the whole robot)."""
    mujoco = import_mujoco()
    poses = np.asarray(poses, dtype=np.float64)
    flat = poses.reshape(-1, poses.shape[-1])
    data = mujoco.MjData(h1.model)
    root = int(h1.body_ids[0])
    out = np.empty((len(flat), 3))
    for i, q in enumerate(flat):
        data.qpos[: len(q)] = q
        mujoco.mj_kinematics(h1.model, data)
        mujoco.mj_comPos(h1.model, data)
        out[i] = data.subtree_com[root]
    return out.reshape(*poses.shape[:-1], 3)


def com_window_velocity(h1: H1, poses: np.ndarray, fps: float) -> np.ndarray:
    """:func:`window_velocity` with the centre of mass's planar position in place of the pelvis's (the heading is
    still the pelvis's): ``(..., 3)``."""
    com = centre_of_mass(h1, poses)
    moved = np.array(poses, dtype=np.float64, copy=True)
    moved[..., :2] = com[..., :2]
    return window_velocity(moved, fps)


def parse_velocity(text: str) -> np.ndarray:
    """``"vx,vy,yaw"`` (one or three comma-separated numbers; a single number is forward speed) -> ``(3,)``."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) == 1:
        values += [0.0, 0.0]
    if len(values) != 3 or not np.all(np.isfinite(values)):
        raise UserError(f"--velocity {text!r}: give forward[,left,yaw] numbers, e.g. 1.0,0,0 (m/s, m/s, rad/s)")
    return np.array(values)


def read_velocity_schedule(path: str, windows: int, window_seconds: float) -> np.ndarray:
    """A velocity per window ``(windows, 3)`` from a text file of rows ``time_s forward left yaw`` (comma- or
    space-separated, ``#`` comments): each window takes the last row whose time is at or before the window's
    start; rows must start at time 0 and increase."""
    try:
        lines = open(path).read().splitlines()
    except OSError as err:
        raise UserError(f"--velocity-schedule {path}: cannot read it ({err.strerror})") from None
    except UnicodeDecodeError:
        raise UserError(f"--velocity-schedule {path}: not a text file of 'time_s forward left yaw' rows") from None
    rows = []
    for number, line in enumerate(lines, 1):
        line = line.split("#")[0].strip()
        if not line:
            continue
        try:
            row = [float(v) for v in line.replace(",", " ").split()]
        except ValueError:
            row = []
        if len(row) != 4 or not np.all(np.isfinite(row)):
            raise UserError(f"--velocity-schedule {path}, line {number}: expected 'time_s forward left yaw'")
        rows.append(row)
    if not rows:
        raise UserError(f"--velocity-schedule {path}: no rows (expected lines of 'time_s forward left yaw', the first "
                        "at time 0)")
    if rows[0][0] != 0 or any(b[0] <= a[0] for a, b in zip(rows, rows[1:])):
        raise UserError(f"--velocity-schedule {path}: rows must start at time 0 and have increasing times")
    table = np.array(rows)
    starts = np.arange(windows) * window_seconds
    which = np.searchsorted(table[:, 0], starts + 1e-9, side="right") - 1
    return table[which, 1:]


def clamp_velocity(velocity: np.ndarray, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """``velocity (..., 3)`` clamped into ``[low, high] (3,)``, and one message per component that was clamped."""
    clamped = np.clip(velocity, low, high)
    notes = []
    for k, name in enumerate(VELOCITY_NAMES):
        if np.any(clamped[..., k] != velocity[..., k]):
            worst = velocity[..., k].flat[np.argmax(np.abs(clamped[..., k] - velocity[..., k]))]
            notes.append(f"{name} {worst:g} is outside the data's range [{low[k]:.2f}, {high[k]:.2f}]")
    return clamped, notes
