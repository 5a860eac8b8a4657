"""Rotation helpers on numpy arrays (float64): quaternions are **w, x, y, z** (MuJoCo's order), z is up.

Heading: a rotation ``q`` splits as ``q = yaw(psi) * tilt`` with ``yaw(psi)`` a rotation about the world z axis and
``tilt`` a rotation about a horizontal axis (its quaternion has z = 0). Then ``psi = 2 atan2(q_z, q_w)`` (a
swing-twist split). Unlike the yaw of the forward axis projected on the floor, this is defined for every
orientation except one turned exactly upside down, so a character lying on its back or front keeps a heading.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "heading",
    "mat_to_quat",
    "quat_conj",
    "quat_mul",
    "quat_nlerp",
    "quat_to_mat",
    "rot6d_to_mat",
    "rotate_z",
    "wrap_angle",
    "yaw_quat",
]


def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product ``a * b`` of ``(..., 4)`` quaternions (rotation ``b`` first, then ``a``)."""
    aw, ax, ay, az = np.moveaxis(a, -1, 0)
    bw, bx, by, bz = np.moveaxis(b, -1, 0)
    return np.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        axis=-1,
    )


def quat_conj(q: np.ndarray) -> np.ndarray:
    """The inverse of unit quaternions ``(..., 4)``."""
    return q * np.array([1.0, -1.0, -1.0, -1.0])


def quat_to_mat(q: np.ndarray) -> np.ndarray:
    """Unit quaternions ``(..., 4)`` -> rotation matrices ``(..., 3, 3)``."""
    w, x, y, z = np.moveaxis(q, -1, 0)
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    return np.stack([np.stack(r, axis=-1) for r in rows], axis=-2)


def mat_to_quat(m: np.ndarray) -> np.ndarray:
    """Rotation matrices ``(..., 3, 3)`` -> unit quaternions ``(..., 4)`` with w >= 0.

    Shepperd's method: of the four ways to solve for the quaternion, each entry uses the one whose pivot
    (``4 w^2``, ``4 x^2``, ...) is largest, so no division is ill-conditioned.
    """
    m = np.asarray(m, dtype=np.float64)
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    trace = m00 + m11 + m22
    # candidate k is 4 * (w, x, y, z) * (component k of the quaternion): use the one with the largest pivot
    cands = np.stack(
        [
            np.stack([1 + trace, m21 - m12, m02 - m20, m10 - m01], axis=-1),
            np.stack([m21 - m12, 1 + 2 * m00 - trace, m01 + m10, m02 + m20], axis=-1),
            np.stack([m02 - m20, m01 + m10, 1 + 2 * m11 - trace, m12 + m21], axis=-1),
            np.stack([m10 - m01, m02 + m20, m12 + m21, 1 + 2 * m22 - trace], axis=-1),
        ],
        axis=-2,
    )  # (..., 4 candidates, 4)
    best = np.argmax(np.stack([trace, m00, m11, m22], axis=-1), axis=-1)  # (...)
    q = np.take_along_axis(cands, best[..., None, None], axis=-2)[..., 0, :]  # (..., 4)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[..., :1] < 0, -q, q)


def heading(q: np.ndarray) -> np.ndarray:
    """Heading angle ``psi`` (rad, in (-pi, pi]) of ``(..., 4)`` quaternions: ``q = yaw_quat(psi) * tilt``."""
    return wrap_angle(2.0 * np.arctan2(q[..., 3], q[..., 0]))


def yaw_quat(psi: np.ndarray) -> np.ndarray:
    """Rotations by ``psi`` (rad) about the world z axis as ``(..., 4)`` quaternions."""
    psi = np.asarray(psi, dtype=np.float64)
    zero = np.zeros_like(psi)
    return np.stack([np.cos(psi / 2), zero, zero, np.sin(psi / 2)], axis=-1)


def wrap_angle(a: np.ndarray) -> np.ndarray:
    """Angles (rad) wrapped to (-pi, pi]."""
    return np.pi - np.mod(np.pi - np.asarray(a), 2 * np.pi)


def rotate_z(v: np.ndarray, psi: np.ndarray) -> np.ndarray:
    """Rotate vectors ``(..., 2)`` or ``(..., 3)`` by ``psi`` (rad, broadcast over the leading axes) about z."""
    c, s = np.cos(psi), np.sin(psi)
    x, y = v[..., 0], v[..., 1]
    out = np.array(v, dtype=np.float64, copy=True)
    out[..., 0] = c * x - s * y
    out[..., 1] = s * x + c * y
    return out


def rot6d_to_mat(r6: np.ndarray) -> np.ndarray:
    """6D rotation representation ``(..., 6)`` (first two matrix columns, concatenated) -> ``(..., 3, 3)``.

    Zhou et al., "On the Continuity of Rotation Representations in Neural Networks" (CVPR 2019): Gram-Schmidt
    on the two columns, the third is their cross product. Exact for an input made of two orthonormal columns;
    any other input maps to the nearest such pair in the Gram-Schmidt sense.
    """
    a1, a2 = r6[..., 0:3], r6[..., 3:6]
    b1 = a1 / np.linalg.norm(a1, axis=-1, keepdims=True)
    b2 = a2 - np.sum(b1 * a2, axis=-1, keepdims=True) * b1
    b2 = b2 / np.linalg.norm(b2, axis=-1, keepdims=True)
    b3 = np.cross(b1, b2)
    return np.stack([b1, b2, b3], axis=-1)


def quat_nlerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Normalized linear interpolation from ``a`` to ``b`` (``(..., 4)``) at fractions ``t`` (``(...)``), taking the
    short way round (``b`` is flipped where ``a . b < 0``). Close to slerp for the small angles between frames."""
    b = np.where(np.sum(a * b, axis=-1, keepdims=True) < 0, -b, b)
    q = (1 - t)[..., None] * a + t[..., None] * b
    return q / np.linalg.norm(q, axis=-1, keepdims=True)
