"""Known answers for behaviour that a mutation sweep of the metrics (daps/metrics/image.py, codes.py, fid.py,
evaluate.py) and the motion helpers (daps/motion/features.py, metrics.py, rotations.py) found no test guarding:
SSIM's clipping of the reference, and the first frame's velocities and the wrapped yaw rate of the motion features.
Each test names the slip it fails on; the references are closed forms and hand-worked cases. Motion tests need
mujoco and DAPS_DATA_DIR (the H1 model), as tests/test_motion_data.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

# --------------------------------------------------------------------------- image metrics


def test_ssim_clips_a_reference_just_below_zero_before_scoring():
    """The reference ``x`` may lie up to half an 8-bit level (1/510) outside [0, 1]; SSIM clips it to [0, 1] as
    it clips ``x_hat``. A flat reference at -0.0019 against a black reconstruction is, after clipping, two
    identical black images: SSIM exactly 1. Unclipped, the luminance term is c1 / (0.0019^2 + c1) = 0.965.
    Fails on: SSIM leaving the reference unclipped (``b = x.to(dtype)``)."""
    from daps.metrics.image import ssim_per_image

    x = torch.full((2, 3, 12, 12), -0.0019)
    x_hat = torch.zeros_like(x)
    torch.testing.assert_close(ssim_per_image(x_hat, x), torch.ones(2), rtol=0, atol=1e-7)
    top = torch.full((1, 1, 11, 11), 1.0019)  # and above 1: both read white
    torch.testing.assert_close(ssim_per_image(torch.ones_like(top), top), torch.ones(1), rtol=0, atol=1e-7)


# --------------------------------------------------------------------------- motion features and metrics


@pytest.fixture(scope="module")
def h1(h1_model):
    return h1_model


def _standing(height: float, frames: int = 2) -> np.ndarray:
    """``frames`` copies of the default upright pose, pelvis at ``height`` (m), heading 0."""
    from daps.motion.h1 import POSE_DIM

    pose = np.zeros(POSE_DIM)
    pose[2], pose[3] = height, 1.0
    return np.repeat(pose[None], frames, axis=0)


def test_the_first_frame_copies_the_second_frames_velocities(h1):
    """Velocities are backward differences; frame 0 has no predecessor and copies frame 1's (module docstring). A
    clip walking forward 0.1 m per frame at 30 fps (heading 0) while its left knee bends 0.05 rad per frame has root
    velocity (3, 0) m/s and left-knee velocity 1.5 rad/s in every frame, the first included; its feet, moving with
    the pelvis, have speed 3 m/s from frame 0 on. Fails on: frame 0's velocities set to zero."""
    from daps.motion.features import FEATURE_LAYOUT as LAY
    from daps.motion.features import foot_heights_and_speeds, poses_to_features
    from daps.motion.h1 import forward_kinematics

    clip = _standing(1.0, frames=3)
    clip[:, 0] = [0.0, 0.1, 0.2]
    clip[:, 7 + 3] = [0.3, 0.35, 0.4]  # left_knee_joint
    x = poses_to_features(h1, clip, 30.0)
    np.testing.assert_allclose(x[:, LAY["root_velocity"]], [[3.0, 0.0]] * 3, atol=1e-9)
    np.testing.assert_allclose(x[:, LAY["joint_velocities"]][:, 3], [1.5] * 3, atol=1e-9)
    walk = _standing(1.0, frames=3)
    walk[:, 0] = [0.0, 0.1, 0.2]
    _, speeds = foot_heights_and_speeds(*forward_kinematics(h1, walk), 30.0)
    np.testing.assert_allclose(speeds, np.full((3, 2), 3.0), atol=1e-9)


def test_the_yaw_rate_is_wrapped_across_the_half_turn(h1):
    """A clip turning left at 1.5 rad/s (0.05 rad per frame at 30 fps) through the heading pi: headings 3.1,
    3.15 (read as 3.15 - 2 pi) and 3.2 (3.2 - 2 pi). Each step is 0.05 rad once wrapped, so the yaw rate is 1.5
    rad/s in every frame, not a jump of -2 pi per frame (-187 rad/s). Fails on: the heading differences left
    unwrapped (the round trip to poses still passes, as it wraps the steps again)."""
    from daps.motion.features import FEATURE_LAYOUT, poses_to_features

    clip = _standing(1.0, frames=3)
    psi = np.array([3.1, 3.15, 3.2])
    clip[:, 3], clip[:, 6] = np.cos(psi / 2), np.sin(psi / 2)
    rate = poses_to_features(h1, clip, 30.0)[:, FEATURE_LAYOUT["yaw_rate"]][:, 0]
    np.testing.assert_allclose(rate, [1.5] * 3, atol=1e-9)
