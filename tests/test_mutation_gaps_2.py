"""Known answers for behaviour that a mutation sweep of the priors over codes, the motion features, the
autoregressive encoder's sampler and the estimator lab found no test guarding (the AR prior's temperature under
guidance is in tests/test_prior.py): the masked-diffusion bound's unmasked tokens, the key points' per-frame
pelvis, the Gram-Schmidt step of the 6D tilt, and the shared-prefix thresholds (at most 90 % / 75 % distinct).
Each test names the slip it fails on; the references are closed forms, hand-worked cases and QR factorizations.
Motion tests need mujoco and DAPS_DATA_DIR (the H1 model), as tests/test_motion_data.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

# ---------------------------------------------------------------- priors over codes


def test_the_masked_nll_bound_reads_only_the_masked_tokens():
    """Two codes of two tokens, by hand: code 0 at t = 0.5 has token 0 masked (cross-entropy 1.0) and token 1 not
    (cross-entropy 2.0); code 1 at t = 0.25 has none masked and an infinite cross-entropy on an unmasked token. The
    bound sums the masked tokens' cross-entropy over T (1 - t): 1.0 / (2 * 0.5) + 0 = 1.0, finite. Fails on: the
    unmasked tokens' cross-entropies counted too (an imperfect network's copies of the visible tokens would raise
    the reported bound)."""
    from daps.prior.run import masked_nll_bound

    ce = torch.tensor([[1.0, 2.0], [3.0, math.inf]])
    masked = torch.tensor([[True, False], [False, False]])
    t = torch.tensor([0.5, 0.25])
    assert masked_nll_bound(ce, masked, t) == pytest.approx(1.0, abs=1e-12)


# ---------------------------------------------------------------- motion features


@pytest.fixture(scope="module")
def h1(h1_model):
    return h1_model


def _pose(xy: tuple[float, float], height: float, psi: float) -> np.ndarray:
    """The default pose standing upright at planar position ``xy``, pelvis at ``height``, heading ``psi``, with the
    left knee bent (so the key points are not symmetric)."""
    from daps.motion.h1 import POSE_DIM

    pose = np.zeros(POSE_DIM)
    pose[:2], pose[2] = xy, height
    pose[3], pose[6] = np.cos(psi / 2), np.sin(psi / 2)
    pose[7 + 3] = 0.4  # left_knee_joint
    return pose


def test_key_points_are_measured_from_each_frames_own_pelvis(h1):
    """Frame 1 is frame 0's pose moved by (0.6, -0.4, 0.15) m and turned by 1 rad about the vertical: the key points
    (relative to that frame's pelvis, in that frame's heading frame) are the same in both frames. Fails on: the key
    points measured from the first frame's pelvis (invisible to the test that turns and moves a whole clip)."""
    from daps.motion.features import FEATURE_LAYOUT as LAY
    from daps.motion.features import poses_to_features

    poses = np.stack([_pose((0.2, 0.1), 1.0, 0.3), _pose((0.8, -0.3), 1.15, 1.3)])
    key = poses_to_features(h1, poses, 30.0)[:, LAY["key_points"]]  # (2, 36)
    np.testing.assert_allclose(key[1], key[0], atol=1e-9)
    assert np.abs(key[0]).max() > 0.3  # the points are away from the pelvis: the check measures something


def test_the_6d_tilt_is_orthonormalized_by_gram_schmidt():
    """Random 6-vectors (as a decoder outputs, not two orthonormal columns) map to the rotation whose first two
    columns are the Gram-Schmidt (QR, positive diagonal) of the two 3-vectors; features_to_poses turns such a tilt
    into a unit quaternion of that rotation. Fails on: the second column not made orthogonal to the first (the
    matrix is then no rotation, and its quaternion another rotation's)."""
    from daps.motion.features import FEATURE_LAYOUT as LAY
    from daps.motion.features import NUM_FEATURES, features_to_poses
    from daps.motion.rotations import quat_to_mat, rot6d_to_mat

    rng = np.random.default_rng(0)
    r6 = rng.normal(size=(20, 6))
    got = rot6d_to_mat(r6)  # (20, 3, 3)
    for i in range(len(r6)):
        q, r = np.linalg.qr(np.stack([r6[i, :3], r6[i, 3:]], axis=1))  # (3, 2), (2, 2)
        q = q * np.sign(np.diag(r))  # the Gram-Schmidt signs: positive components along a1 and a2's new part
        np.testing.assert_allclose(got[i][:, :2], q, atol=1e-12)
        np.testing.assert_allclose(got[i][:, 2], np.cross(q[:, 0], q[:, 1]), atol=1e-12)
    np.testing.assert_allclose(got @ got.transpose(0, 2, 1), np.broadcast_to(np.eye(3), got.shape), atol=1e-12)

    features = np.zeros((1, len(r6), NUM_FEATURES))
    features[0, :, LAY["root_tilt"]] = r6
    quat = features_to_poses(features, np.zeros((1, 2)), np.zeros(1), 30.0)[0, :, 3:7]  # heading 0, no turning
    np.testing.assert_allclose(np.linalg.norm(quat, axis=-1), 1.0, atol=1e-12)
    np.testing.assert_allclose(quat_to_mat(quat), got, atol=1e-9)


# ---------------------------------------------------------------- shared prefixes: the documented rules


def _label_prior(num_tokens: int):
    from daps.prior.nets import ARPrior

    torch.manual_seed(0)
    return ARPrior(num_tokens=num_tokens, vocab_size=3, num_classes=2, width=16, num_layers=1, num_heads=2).double()


@pytest.mark.parametrize(("second_row", "shared"), [((0, 1), True), ((1, 1), False)])
def test_the_teacher_forced_pass_is_shared_up_to_90_percent_distinct_prefixes(second_row, shared, monkeypatch):
    """Two codes of ten tokens for one input (20 entries), alike up to their first difference. Differing from token
    1 on they have 1 + 1 + 2 * 8 = 18 distinct prefixes, exactly 90 %: shared (SHARED_PASS_MAX_NODES: "at most");
    from token 0 on, 1 + 2 * 9 = 19: the whole pass. Either way log q is each code's own. Fails on: a strict
    "below 90 %", or the rule's constant lost (no pass shared)."""
    model = _label_prior(10)
    calls = []
    original = model._prefix_log_prob
    monkeypatch.setattr(model, "_prefix_log_prob", lambda *a: calls.append(1) or original(*a))
    codes = torch.zeros(2, 1, 10, dtype=torch.long)  # (K, B, T)
    codes[1, 0, :2] = torch.tensor(second_row)
    labels = torch.tensor([1])
    with torch.no_grad():
        got = model.log_prob(labels, codes, clamp=False)  # (K, 1, T)
        assert len(calls) == int(shared)
        for k in range(2):  # one code per input: never shared
            want = model.log_prob(labels, codes[k : k + 1], clamp=False)
            torch.testing.assert_close(got[k], want[0], rtol=0, atol=1e-6)


def test_the_sampler_shares_a_position_up_to_75_percent_distinct_prefixes(monkeypatch):
    """Four rows of one input: at position 0 one prefix (shared), at 1 three distinct of four, exactly 75 % (shared:
    SHARED_STEP_MAX_NODES, "at most"), at 2 four (every row, and every row after). The logits are the row-by-row
    cached step's. Fails on: a strict "below 75 %", or the rule's constant lost (no position shared)."""
    from daps.nets.layers import DecoderBlock

    model = _label_prior(4)
    calls = []
    original = DecoderBlock.step_nodes
    monkeypatch.setattr(DecoderBlock, "step_nodes", lambda self, *a: calls.append(a[4]) or original(self, *a))
    indices = torch.tensor([[0, 0, 0, 0], [1, 0, 0, 0], [2, 0, 0, 0], [2, 1, 0, 0]])  # (K = 4, T)
    with torch.no_grad():
        memory = model.memory(torch.tensor([1]))
        shared, rows = model._shared_step(memory, 4), model._cached_step(memory, 4)
        for pos in range(4):
            torch.testing.assert_close(shared(indices, pos), rows(indices, pos), rtol=0, atol=1e-9)
    assert calls == [0, 1]  # the positions computed once per distinct prefix (one decoder layer)
