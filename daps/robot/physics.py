"""Is a motion physically plausible for the H1? Two checks in MuJoCo, both relative to the data's own figures.

1. **Tracking with a support wrench** (:func:`track`). The robot's free-floating base is simulated with the floor
   at the model's time step (2 ms) rounded to a whole number of steps per frame (17 at 30 fps: 1.96 ms). A PD
   controller (gains :data:`JOINT_GAINS`, torques clipped to the motors' ranges) drives the 19 hinges toward the
   reference, and a spring-damper *support* wrench on the pelvis (:data:`SUPPORT_GAINS`) pulls it toward the
   reference position and orientation. On our CPUs a PD tracker alone falls within about a second even on ground
   truth (the learned tracker, :mod:`daps.robot.tracker`, needs a GPU's simulation budget: ``docs/robot.md``), so
   the support is what we measure: the force as a fraction of body weight and the torque it needs to keep the
   pelvis on the reference. A motion the feet and joints can carry needs little of it;
   floating, skating or jerky motion needs more. Compare a generated motion with ground-truth clips of the same
   kind, never with zero: retargeted mocap is not physically exact either.
2. **Inverse dynamics balance** (:func:`balance_check`). For every frame, MuJoCo's ``mj_inverse`` (contacts
   disabled) gives the generalized force the motion needs; its first six entries, at the free root, are the
   external wrench that only the ground contacts could supply. A frame is *balanced* when that wrench can come
   from the feet: the vertical force pushes (not pulls), the horizontal force is within the friction cone
   (``mu``), and the centre of pressure (the ground point about which the wrench has no horizontal moment)
   lies within the convex hull of the sole corners near the floor, widened by ``margin``. A frame with no foot
   near the floor is balanced only if it needs almost no wrench (a flight phase: free fall).

Both need ``mujoco`` (``pip install daps[motion]``). Poses are ``(N, 26)`` at ``fps`` (:mod:`daps.motion.h1`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from daps.errors import UserError
from daps.motion.h1 import (
    FOOT_BODIES,
    H1,
    JOINT_NAMES,
    POSE_DIM,
    SCENE_FILE,
    forward_kinematics,
    import_mujoco,
    points_world,
    sole_points,
)
from daps.motion.render import scene_model
from daps.motion.rotations import quat_conj, quat_mul, quat_nlerp, quat_to_mat

GRAVITY = 9.81

JOINT_GAINS: dict[str, tuple[float, float]] = {
    "hip": (200.0, 5.0), "knee": (300.0, 6.0), "ankle": (40.0, 2.0), "torso": (300.0, 6.0),
    "shoulder": (100.0, 2.0), "elbow": (50.0, 1.0),
}  # fmt: skip
"""PD gains (kp in Nm/rad, kd in Nm s/rad) by the joint's name: of the order of Unitree's own H1 deployment gains
(the H1 configuration of Unitree's ``unitree_rl_gym`` has kp 150 at the hips, 200 at the knees and 40 at the ankles:
these hips and knees are a third to a half stiffer). The torque ``kp (q_ref - q) + kd (qd_ref - qd)`` is clipped to
the motor's range (200-300 Nm at hips and knees, 40 Nm at ankles and shoulders, 18 Nm at the elbows and shoulder
yaws)."""

SUPPORT_GAINS = {"kp_pos": 4000.0, "kd_pos": 700.0, "kp_rot": 800.0, "kd_rot": 80.0}
"""The support wrench on the pelvis: force ``kp_pos (p_ref - p) + kd_pos (v_ref - v)`` (N/m, N s/m; for the
H1's 51.6 kg a damping ratio of 0.77) and torque ``kp_rot * rotvec(q_ref q^-1) + kd_rot (w_ref - w)``
(Nm/rad, Nm s/rad), both in the world frame, acting at the pelvis origin (the point whose error the force
measures). There is no gravity feed-forward: a body the support carries entirely hangs mg / kp_pos = 0.13 m
below the reference."""


def joint_gains() -> tuple[np.ndarray, np.ndarray]:
    """kp and kd of each hinge (:data:`JOINT_GAINS` by the joint's name), in the order of :data:`JOINT_NAMES`."""
    kp, kd = np.zeros(len(JOINT_NAMES)), np.zeros(len(JOINT_NAMES))
    for i, name in enumerate(JOINT_NAMES):
        key = next(k for k in JOINT_GAINS if k in name)
        kp[i], kd[i] = JOINT_GAINS[key]
    return kp, kd


def actuator_joints(model: Any) -> np.ndarray:
    """For each actuator of the H1 ``model``, the hinge (0..18, the order of :data:`JOINT_NAMES`) it drives; other
    numbers for actuators on other joints (the model's extra one)."""
    return np.array([int(model.jnt_qposadr[model.actuator_trnid[a, 0]]) - 7 for a in range(model.nu)])


def _qpos(poses: np.ndarray) -> np.ndarray:
    """Poses ``(N, 26)`` -> MuJoCo qpos ``(N, 27)`` (the dummy joint at 0)."""
    return np.concatenate([poses, np.zeros((len(poses), 1))], axis=1)


def reference_velocities(model: Any, poses: np.ndarray, fps: float) -> np.ndarray:
    """MuJoCo qvel ``(N, 26)`` of a pose sequence by central differences (one-sided at the ends); the root's
    angular velocity in MuJoCo's convention (the pelvis frame)."""
    mujoco = import_mujoco()
    q = _qpos(poses)
    half = np.zeros((len(q) - 1, model.nv))  # velocity between frames t and t+1
    for t in range(len(q) - 1):
        mujoco.mj_differentiatePos(model, half[t], 1.0 / fps, q[t], q[t + 1])
    v = np.empty((len(q), model.nv))
    v[0], v[-1] = half[0], half[-1]
    v[1:-1] = 0.5 * (half[:-1] + half[1:])
    return v[:, :POSE_DIM - 1]


def _rotvec(q: np.ndarray) -> np.ndarray:
    """Rotation vector of a unit quaternion (w, x, y, z), the short way round."""
    q = -q if q[0] < 0 else q
    s = np.linalg.norm(q[1:])
    if s < 1e-12:
        return 2.0 * q[1:]
    return 2.0 * np.arctan2(s, q[0]) * q[1:] / s


@dataclass
class TrackResult:
    """What :func:`track` measured, one row per reference frame.

    Attributes:
        poses: ``(N, 26)`` the simulated robot at the reference's frame times.
        support_force: ``(N, 3)`` N, world frame; support_torque: ``(N, 3)`` Nm (averaged over each frame's
            physics steps).
        weight: the robot's weight (N).
        physics_steps: how many simulation steps were taken.
        pelvis_error: ``(N,)`` distance (m) of the simulated pelvis origin from the reference.
    """

    poses: np.ndarray
    support_force: np.ndarray
    support_torque: np.ndarray
    weight: float
    physics_steps: int
    pelvis_error: np.ndarray

    def summary(self) -> dict[str, float]:
        """Support figures: mean and 95th percentile of |force| / weight, mean |torque| (Nm), and the mean
        distance of the pelvis from the reference (m)."""
        force = np.linalg.norm(self.support_force, axis=1) / self.weight
        torque = np.linalg.norm(self.support_torque, axis=1)
        return {
            "support_force_bw": float(force.mean()),
            "support_force_bw_p95": float(np.percentile(force, 95)),
            "support_torque_nm": float(torque.mean()),
            "pelvis_error_m": float(self.pelvis_error.mean()),
        }


def track(h1: H1, poses: np.ndarray, fps: float, support: bool = True, substeps: int | None = None) -> TrackResult:
    """Simulate the H1 tracking ``poses (N, 26)`` (N >= 2) from the first frame with the PD joint controller and,
    if ``support``, the support wrench on the pelvis (see the module docstring). The reference is interpolated
    between frames (linearly; the root orientation by normalized lerp)."""
    mujoco = import_mujoco()
    poses = np.asarray(poses, dtype=np.float64)
    if poses.ndim != 2 or poses.shape[1] != POSE_DIM or len(poses) < 2:
        raise ValueError(f"poses must be (N >= 2, {POSE_DIM}), got {poses.shape}")
    if not (h1.path.parent / SCENE_FILE).is_file():
        raise UserError(f"{h1.path.parent / SCENE_FILE} (the H1 with a floor) is missing: physics needs the floor")
    model = scene_model(h1)
    data = mujoco.MjData(model)
    dt = float(model.opt.timestep)
    steps_per_frame = substeps or max(1, int(round(1.0 / (fps * dt))))
    model.opt.timestep = 1.0 / (fps * steps_per_frame)
    ref_v = reference_velocities(model, poses, fps)  # (N, 26)
    kp, kd = joint_gains()
    # actuator -> hinge (0..18) and its torque range
    act_joint = actuator_joints(model)
    act_range = np.array(model.actuator_ctrlrange)
    acts = [a for a in range(model.nu) if 0 <= act_joint[a] < len(JOINT_NAMES)]
    pelvis = int(h1.body_ids[0])
    weight = float(model.body_subtreemass[pelvis]) * GRAVITY
    g = SUPPORT_GAINS

    data.qpos[:] = _qpos(poses[:1])[0]
    data.qvel[: POSE_DIM - 1] = ref_v[0]
    mujoco.mj_forward(model, data)
    out_q = np.empty_like(poses)
    forces, torques = np.zeros((len(poses), 3)), np.zeros((len(poses), 3))
    out_q[0] = data.qpos[:POSE_DIM]
    for t in range(len(poses) - 1):
        for s in range(steps_per_frame):
            a = (s + 1) / steps_per_frame
            q_ref = (1 - a) * poses[t] + a * poses[t + 1]
            q_ref[3:7] = quat_nlerp(poses[t, 3:7], poses[t + 1, 3:7], np.asarray(a))
            v_ref = (1 - a) * ref_v[t] + a * ref_v[t + 1]
            q, v = data.qpos, data.qvel
            tau = kp * (q_ref[7:] - q[7:POSE_DIM]) + kd * (v_ref[6:] - v[6 : POSE_DIM - 1])
            for act in acts:
                lo, hi = act_range[act]
                data.ctrl[act] = np.clip(tau[act_joint[act]], lo, hi)
            if support:
                rot = quat_to_mat(q[3:7].copy())
                rot_ref = quat_to_mat(q_ref[3:7])
                force = g["kp_pos"] * (q_ref[:3] - q[:3]) + g["kd_pos"] * (v_ref[:3] - v[:3])
                err = _rotvec(quat_mul(q_ref[3:7], quat_conj(q[3:7].copy())))
                torque = g["kp_rot"] * err + g["kd_rot"] * (rot_ref @ v_ref[3:6] - rot @ v[3:6])
                data.xfrc_applied[pelvis] = wrench_at_com(force, torque, data.xpos[pelvis], data.xipos[pelvis])
                forces[t + 1] += force / steps_per_frame
                torques[t + 1] += torque / steps_per_frame
            mujoco.mj_step(model, data)
        out_q[t + 1] = data.qpos[:POSE_DIM]
    forces[0], torques[0] = forces[1], torques[1]  # frame 0 is the start state: it reports frame 1's support
    error = np.linalg.norm(out_q[:, :3] - poses[:, :3], axis=1)
    return TrackResult(out_q, forces, torques, weight, (len(poses) - 1) * steps_per_frame, error)


def wrench_at_com(force: np.ndarray, torque: np.ndarray, point: np.ndarray, com: np.ndarray) -> np.ndarray:
    """``force`` applied at ``point`` together with ``torque`` (world frame), as MuJoCo's ``xfrc_applied`` row
    ``(6,)``, which acts at the body's centre of mass ``com``: the same force, and the torque plus the force's
    moment about the centre of mass, ``(point - com) x force``."""
    return np.concatenate([force, torque + np.cross(point - com, force)])


def fall_time(h1: H1, poses: np.ndarray, fps: float, drop: float = 0.25) -> float:
    """Seconds until the pelvis, tracked by the PD controller alone (no support), is ``drop`` m below the
    reference's (inf if it never is): how soon an unsupported tracker falls."""
    result = track(h1, poses, fps, support=False)
    low = np.nonzero(result.poses[:, 2] < poses[:, 2] - drop)[0]
    return float(low[0] / fps) if len(low) else float("inf")


# --------------------------------------------------------------------------------------------------
# Inverse dynamics


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """z component of the cross product of 2-d vectors ``(..., 2)``."""
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _hull(points: np.ndarray) -> np.ndarray:
    """Convex hull ``(H, 2)`` counter-clockwise of 2-d points (monotone chain); fewer than 3 distinct points are
    returned as they are."""
    pts = np.unique(np.round(points, 9), axis=0)
    if len(pts) < 3:
        return pts

    def half(seq: np.ndarray) -> list[np.ndarray]:
        chain: list[np.ndarray] = []
        for p in seq:
            while len(chain) >= 2 and _cross(chain[-1] - chain[-2], p - chain[-2]) <= 0:
                chain.pop()
            chain.append(p)
        return chain

    lower, upper = half(pts), half(pts[::-1])
    return np.array(lower[:-1] + upper[:-1])


def distance_outside(point: np.ndarray, hull: np.ndarray) -> float:
    """Distance (same units) from ``point (2,)`` to the convex polygon ``hull`` (counter-clockwise), 0 inside."""
    if len(hull) == 0:
        return float("inf")
    if len(hull) >= 3:
        edges = np.roll(hull, -1, axis=0) - hull
        inside = np.all(_cross(edges, point - hull) >= 0)
        if inside:
            return 0.0
    best = float("inf")
    for a, b in zip(hull, np.roll(hull, -1, axis=0)):
        ab = b - a
        t = 0.0 if not ab.any() else float(np.clip(np.dot(point - a, ab) / np.dot(ab, ab), 0.0, 1.0))
        best = min(best, float(np.linalg.norm(point - (a + t * ab))))
    return best


def balance_check(
    h1: H1, poses: np.ndarray, fps: float, mu: float = 1.0, margin: float = 0.02, contact_height: float = 0.05
) -> dict[str, float]:
    """Inverse-dynamics balance of ``poses (N, 26)`` (N >= 3; see the module docstring).

    Args:
        mu: friction coefficient of the feet on the floor (MuJoCo's default is 1).
        margin: how far (m) the centre of pressure may lie outside the hull of the sole corners.
        contact_height: a sole corner below this height (m) may carry load.

    Returns:
        ``balanced_fraction`` (share of frames whose root wrench the feet could supply), ``cop_outside_m`` (mean
        distance of the centre of pressure outside the support hull, 0 inside, over frames with a pushing
        vertical force and a foot down), ``pulling_fraction`` (frames needing the floor to pull), and
        ``root_force_bw`` (mean |root force| / weight).
    """
    mujoco = import_mujoco()
    poses = np.asarray(poses, dtype=np.float64)
    if poses.ndim != 2 or poses.shape[1] != POSE_DIM or len(poses) < 3:
        raise ValueError(f"poses must be (N >= 3, {POSE_DIM}), got {poses.shape}")
    model = mujoco.MjModel.from_xml_path(str(h1.path))
    model.opt.disableflags |= int(mujoco.mjtDisableBit.mjDSBL_CONTACT)
    data = mujoco.MjData(model)
    q = _qpos(poses)
    half = np.zeros((len(q) - 1, model.nv))
    for t in range(len(q) - 1):
        mujoco.mj_differentiatePos(model, half[t], 1.0 / fps, q[t], q[t + 1])
    pos, rot = forward_kinematics(h1, poses)
    corners = np.concatenate([points_world(pos, rot, sole_points(f)) for f in FOOT_BODIES], axis=-2)  # (N, 8, 3)
    weight = float(model.body_subtreemass[h1.body_ids[0]]) * GRAVITY
    balanced, pulling, outside, forces = 0, 0, [], []
    frames = range(1, len(q) - 1)
    for t in frames:
        data.qpos[:] = q[t]
        data.qvel[:] = 0.5 * (half[t - 1] + half[t])
        data.qacc[:] = (half[t] - half[t - 1]) * fps
        mujoco.mj_inverse(model, data)
        f = np.array(data.qfrc_inverse[:3])
        m = quat_to_mat(q[t, 3:7]) @ np.array(data.qfrc_inverse[3:6])  # about the pelvis origin, world frame
        forces.append(np.linalg.norm(f) / weight)
        # a negligible wrench (force under 10 % of the weight, moment under that force at a 0.1 m lever) needs
        # nothing from the floor: balanced in flight or with the feet down alike
        negligible = np.linalg.norm(f) < 0.1 * weight and np.linalg.norm(m) < 0.01 * weight
        down = corners[t][corners[t, :, 2] < contact_height]
        if f[2] < -0.05 * weight and len(down) > 0:
            pulling += 1  # the floor would have to pull: never balanced
            continue
        if len(down) == 0 or f[2] <= 0.05 * weight:
            balanced += int(negligible)
            continue
        p = q[t, :3]
        cop = np.array([p[0] - (m[1] + p[2] * f[0]) / f[2], p[1] - (p[2] * f[1] - m[0]) / f[2]])
        d = distance_outside(cop, _hull(down[:, :2]))
        outside.append(d)
        friction_ok = np.hypot(f[0], f[1]) <= mu * f[2]
        balanced += int(friction_ok and d <= margin)
    n = len(frames)
    return {
        "balanced_fraction": balanced / n,
        "cop_outside_m": float(np.mean(outside)) if outside else 0.0,
        "pulling_fraction": pulling / n,
        "root_force_bw": float(np.mean(forces)),
    }
