"""The quaternion helpers of :mod:`daps.motion.rotations` against MuJoCo's own (``mju_mulQuat``, ``mju_quat2Mat``,
``mju_mat2Quat``), the independent reference the H1 kinematics are computed with."""

from __future__ import annotations

import numpy as np
import pytest

from daps.motion.rotations import mat_to_quat, quat_mul, quat_to_mat

mujoco = pytest.importorskip("mujoco")


def random_quats(n: int, seed: int) -> np.ndarray:
    q = np.random.default_rng(seed).normal(size=(n, 4))
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def half_turns() -> np.ndarray:
    """180-degree turns about x, y, z and tilted axes near them (w = 0: the x, y and z pivots of the matrix
    conversion), and turns just short of 180 degrees."""
    axes = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0.1, 0.05], [0.1, 1, -0.2], [-0.05, 0.2, 1], [1, 1, 1]]
    out = []
    for axis in axes:
        a = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
        for angle in (np.pi, np.pi - 1e-3, 0.9 * np.pi):
            out.append(np.r_[np.cos(angle / 2), np.sin(angle / 2) * a])
    return np.array(out)


def mj_mat(q: np.ndarray) -> np.ndarray:
    m = np.zeros(9)
    mujoco.mju_quat2Mat(m, q)
    return m.reshape(3, 3)


def test_quaternion_product_and_matrix_are_mujocos():
    a, b = random_quats(200, 0), random_quats(200, 1)
    for qa, qb, ours in zip(a, b, quat_mul(a, b), strict=True):
        ref = np.zeros(4)
        mujoco.mju_mulQuat(ref, qa, qb)
        np.testing.assert_allclose(ours, ref, atol=1e-12)
    np.testing.assert_allclose(quat_to_mat(a), np.stack([mj_mat(q) for q in a]), atol=1e-12)


def test_matrix_to_quaternion_is_mujocos_on_every_pivot():
    """Random rotations (mostly the w pivot) and half turns (the x, y and z pivots, which the data's tilts almost
    never reach): the same rotation as mju_mat2Quat's, up to the sign, with w >= 0."""
    quats = np.concatenate([random_quats(200, 2), half_turns()])
    mats = np.stack([mj_mat(q) for q in quats])
    ours = mat_to_quat(mats)
    assert (ours[:, 0] >= 0).all()
    for q, m in zip(ours, mats, strict=True):
        ref = np.zeros(4)
        mujoco.mju_mat2Quat(ref, m.reshape(-1))
        sign = 1.0 if np.dot(q, ref) >= 0 else -1.0
        np.testing.assert_allclose(q, sign * ref, atol=1e-9)
    np.testing.assert_allclose(quat_to_mat(ours), mats, atol=1e-9)  # and it turns back into the matrix


def test_heading_is_the_yaw_of_the_swing_twist_split():
    """``heading(yaw_quat(psi) * tilt) == psi`` for tilts about horizontal axes up to 170 degrees (the docstring's
    definition); the yaw of the forward axis's projection, a common stand-in, misses by up to pi once the tilt is
    large. Also sign-blind: q and -q are one rotation."""
    from daps.motion.rotations import heading, wrap_angle, yaw_quat

    rng = np.random.default_rng(0)
    psi = rng.uniform(-np.pi, np.pi, 200)
    axis_angle, tilt_angle = rng.uniform(0, 2 * np.pi, 200), rng.uniform(0, np.radians(170), 200)
    tilt = np.stack([np.cos(tilt_angle / 2), np.sin(tilt_angle / 2) * np.cos(axis_angle),
                     np.sin(tilt_angle / 2) * np.sin(axis_angle), np.zeros(200)], axis=-1)
    q = quat_mul(yaw_quat(psi), tilt)
    assert np.abs(wrap_angle(heading(q) - psi)).max() < 1e-9
    assert np.abs(wrap_angle(heading(-q) - psi)).max() < 1e-9
