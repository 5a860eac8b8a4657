"""Known answers for behaviour that a mutation sweep (2026-12-05) found no test guarding: relaxed and
independent-token sampling statistics, attention masks, initializer scales, ResNet activations, crop placement,
16-bit pixels, MPJPE and foot skating, quaternion and angle conventions, adaLN blocks, border accelerations, and
which checkpoint a run resumes from. Each test says which plausible bug it fails on (its negative control, each
checked). Motion tests need mujoco and DAPS_DATA_DIR (the H1 model), as tests/test_motion_data.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from daps.functional import sample_probs

# --------------------------------------------------------------------------------------------------
# helpers


def tiny_ar(vocab_size: int = 8, num_tokens: int = 8):
    from daps.nets.ar_encoder import ARTransformerEncoder

    torch.manual_seed(0)
    return ARTransformerEncoder((1, 28, 28), num_tokens=num_tokens, vocab_size=vocab_size, width=32, num_layers=2,
                                num_heads=4, mlp_ratio=2).eval()


def images(b: int = 4, seed: int = 0) -> torch.Tensor:
    return (torch.rand(b, 1, 28, 28, generator=torch.Generator().manual_seed(seed)) > 0.8).float()


def standing(num_frames: int, drop: float = 0.0) -> np.ndarray:
    """The H1 default pose with the soles ``drop`` m below the floor (as tests/test_motion_data.py)."""
    from daps.motion.h1 import POSE_DIM

    pose = np.zeros((num_frames, POSE_DIM))
    pose[:, 2] = 1.1 - 0.0558 - drop
    pose[:, 3] = 1.0
    return pose


@pytest.fixture(scope="module")
def h1(h1_model):
    return h1_model


# --------------------------------------------------------------------------------------------------
# daps/nets


def test_relaxed_sampling_log_probs_equal_teacher_forcing():
    """sample_relaxed's per-step distributions are q(. | z_<t, x) of its own codes (fails with ar_encoder.py
    ``self.pos[pos + 1]`` -> ``self.pos[pos]``; kv_cache.py GrowingKVCache values concatenated in reverse)."""
    enc, x = tiny_ar(), images()
    g = torch.Generator().manual_seed(0)

    def relax(log_probs):
        index = sample_probs(log_probs.exp(), g)
        return index, F.one_hot(index, log_probs.shape[-1]).float()

    with torch.no_grad():
        indices, onehots, log_probs = enc.sample_relaxed(x, relax)
        reference = enc.log_probs(x, indices[None])[0]  # (B, T, V), teacher forced
    assert torch.equal(onehots.argmax(-1), indices)
    torch.testing.assert_close(log_probs, reference, atol=1e-5, rtol=0)


def test_mask_token0_rows_of_code_zero_attend_to_every_position():
    """The original's self mask is causal & valid(query) & valid(key): a row whose own code is 0 has every key
    masked, hence (most-negative-float rule) attends uniformly to all T positions, future ones included (kills:
    ar_encoder.py without ``valid[:, :, None]``)."""
    from daps.nets.ar_encoder import ARTransformerEncoder

    torch.manual_seed(0)
    enc = ARTransformerEncoder((1, 28, 28), num_tokens=8, vocab_size=4, width=32, num_layers=2, num_heads=4,
                               mlp_ratio=2, mask_token0=True).eval()
    x = images(1)
    z = torch.tensor([[[1, 2, 0, 3, 1, 2, 3, 1]]])  # (K=1, B=1, T=8): z_2 = 0
    z2 = z.clone()
    z2[..., 6] = 2  # a later code
    with torch.no_grad():
        a, b = enc.log_probs(x, z), enc.log_probs(x, z2)
    torch.testing.assert_close(a[..., :2, :], b[..., :2, :])  # rows with valid codes stay causal
    assert (a[..., 2, :] - b[..., 2, :]).abs().max() > 1e-4  # the code-0 row sees position 6


def test_encoder_blocks_attend_to_every_patch():
    """The patch encoders are bidirectional: token 0 sees the last patches (fails with layers.py
    ``self.attn(self.ln1(x))`` -> ``self.attn(self.ln1(x), causal=True)``)."""
    from daps.nets.bidirectional import NATransformerEncoder

    torch.manual_seed(0)
    net = NATransformerEncoder((1, 28, 28), 16, 32, 1, 4, 2, out_dim=None).eval()
    x = images(2)
    x2 = x.clone()
    x2[..., 14:, 14:] = 1 - x2[..., 14:, 14:]  # bottom-right quadrant only; token 0 is the top-left patch
    with torch.no_grad():
        a, b = net(x), net(x2)
    assert (a[:, 0] - b[:, 0]).abs().max() > 1e-4


def test_initializer_scales():
    """CodeEmbedding is N(0, 1/E) and lecun_normal_ has variance 1/fan_in after truncation (fails with layers.py
    std=1.0; layers.py without the 0.8796 truncation correction)."""
    from daps.nets.layers import CodeEmbedding, lecun_normal_

    torch.manual_seed(0)
    emb = CodeEmbedding(1000, 64)
    assert emb.weight.std().item() == pytest.approx(1 / 8, rel=0.03)
    w = lecun_normal_(torch.empty(256, 512))
    assert w.std().item() == pytest.approx(1 / math.sqrt(512), rel=0.03)
    assert w.abs().max().item() <= 2 / math.sqrt(512) / 0.87962566103423978 + 1e-6


def test_na_encoder_sample_statistics_match_log_prob():
    """NACategoricalEncoder.sample's token_log_q belongs to the sampled codes (fails with bidirectional.py gather
    with ``indices.flip(0)``)."""
    from daps.nets.bidirectional import NACategoricalEncoder

    torch.manual_seed(0)
    enc = NACategoricalEncoder((1, 28, 28), 16, 4, 32, 1, 4, 2).eval()
    x = images(3)
    s = enc.sample(x, 5, torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(s.token_log_q, enc.log_prob(x, s.indices), atol=1e-6, rtol=0)
        lp = enc.log_probs(x, s.indices)
    torch.testing.assert_close(s.token_entropy, -(lp.exp() * lp).sum(-1), atol=1e-6, rtol=0)


def test_residual_block_relu_before_the_1x1_conv():
    """x + BN(Conv1x1(ReLU(BN(Conv3x3(ReLU(x)))))): with BN1's output forced negative the branch is BN2(conv(0))
    = 0 (fails with resnet.py without the inner ReLU)."""
    from daps.nets.resnet import ResidualBlock

    torch.manual_seed(0)
    block = ResidualBlock(8).eval()
    with torch.no_grad():
        block.norm1.bias.fill_(-1e3)
        x = torch.randn(2, 8, 5, 5)
        torch.testing.assert_close(block(x), x)


def test_resnet_decoder_relu_after_the_blocks():
    """With identity residual blocks and a stem output far below 0, the ReLU after the blocks zeroes everything,
    so the output does not depend on the codes (fails with resnet.py ``h = F.relu(h)`` dropped)."""
    from daps.nets.resnet import ResNetDecoder

    torch.manual_seed(0)
    dec = ResNetDecoder(16, 8, (3, 16, 16), 6, width=16, num_blocks=1, vocab_size=10).eval()
    with torch.no_grad():
        dec.stem.bias.fill_(-1e3)
        for block in dec.blocks:
            block.norm2.weight.zero_()
            block.norm2.bias.zero_()
        a = dec(torch.zeros(2, 16, dtype=torch.long))
        b = dec(torch.randint(10, (2, 16), generator=torch.Generator().manual_seed(1)))
    torch.testing.assert_close(a, b)


# --------------------------------------------------------------------------------------------------
# daps/data/transforms.py


def test_crop_fallback_for_a_tall_strip():
    """The fallback box of a too-tall image clamps the ratio to 3/4 (fails with transforms.py ``width / r_lo`` ->
    ``width * r_lo``)."""
    from daps.data.transforms import sample_crop_box

    g = torch.Generator().manual_seed(0)
    assert sample_crop_box(10, 1000, g) == (0, (1000 - 13) // 2, 10, 13)


def test_crop_placement_reaches_every_edge():
    """Placement is uniform over [0, W - w] x [0, H - h], both ends included (fails with transforms.py upper
    bound ``width - w - 1``)."""
    from daps.data.transforms import sample_crop_box

    g = torch.Generator().manual_seed(0)
    boxes = [sample_crop_box(20, 20, g, scale=(0.25, 0.25), ratio=(1, 1)) for _ in range(400)]
    assert all((w, h) == (10, 10) for _, _, w, h in boxes)
    lefts, tops = {b[0] for b in boxes}, {b[1] for b in boxes}
    assert lefts == set(range(11)) and tops == set(range(11))


def test_sixteen_bit_scaling_is_exactly_1_over_257(tmp_path):
    """65535 -> 255 exactly, so 257 k -> k (fails with transforms.py ``/ 256``; the existing test's 40000 rounds
    to 156 under both)."""
    from daps.data.transforms import pil_to_uint8

    Image.fromarray(np.full((2, 2), 257 * 200, np.uint16)).save(tmp_path / "g.png")
    with Image.open(tmp_path / "g.png") as img:
        assert torch.all(pil_to_uint8(img) == 200)


# --------------------------------------------------------------------------------------------------
# daps/motion


def test_mpjpe_is_a_euclidean_distance(h1):
    """A rigid shift by (3, 4) cm is 50 mm, not 70 (fails with metrics.py with an L1 instead of an L2 norm)."""
    from daps.motion.metrics import mpjpe_global_mm

    truth = standing(4)
    moved = truth.copy()
    moved[:, 0] += 0.03
    moved[:, 1] += 0.04
    assert mpjpe_global_mm(h1, moved, truth) == pytest.approx(50.0)
    # Same root, bent joints: the global error averages the same point errors plus the root's zero error.
    from daps.motion.metrics import METRIC_POINTS, mpjpe_mm

    bent = truth.copy()
    bent[:, 7:] += np.linspace(0.05, 0.3, 19)
    p = len(METRIC_POINTS)
    assert mpjpe_mm(h1, bent, truth) * p / (p + 1) == pytest.approx(mpjpe_global_mm(h1, bent, truth))


def test_foot_skating_needs_contact_in_the_previous_frame(h1):
    """Landing frames do not count: the speed at t needs contact at t-1 and t (fails with metrics.py without
    ``& touch[..., :-1, :]``)."""
    from daps.motion.lafan import FPS
    from daps.motion.metrics import foot_skating_m_s

    poses = standing(10)
    speed = np.r_[np.full(5, 1.0), np.full(4, 0.3)]  # m/s between consecutive frames
    poses[:, 0] = np.r_[0.0, np.cumsum(speed)] / FPS
    poses[:5, 2] += 0.2  # frames 0-4 in the air; frame 5 lands after a 1 m/s step
    assert foot_skating_m_s(h1, poses, FPS) == pytest.approx(0.3)


def test_quat_nlerp_takes_the_short_way():
    """Kills: rotations.py without the sign flip (q and -q are one rotation)."""
    from daps.motion.rotations import quat_nlerp

    a = np.array([1.0, 0.0, 0.0, 0.0])
    b = -np.array([math.cos(0.1), 0.0, 0.0, math.sin(0.1)])
    out = quat_nlerp(a, b, np.array(0.5))
    np.testing.assert_allclose(out, [math.cos(0.05), 0, 0, math.sin(0.05)], atol=1e-12)
    np.testing.assert_allclose(quat_nlerp(a, -a, np.array(0.5)), a, atol=1e-12)


def test_wrap_angle_interval_is_half_open_at_minus_pi():
    """(-pi, pi] as documented (fails with rotations.py rewritten as ``mod(a + pi, 2 pi) - pi``, i.e. [-pi, pi))."""
    from daps.motion.rotations import wrap_angle

    np.testing.assert_allclose(wrap_angle(np.array([np.pi, -np.pi, 0.5, -0.5])), [np.pi, np.pi, 0.5, -0.5])


# --------------------------------------------------------------------------------------------------
# daps/prior/nets.py


def test_adaln_block_with_unit_gates_and_zero_modulation_is_a_plain_pre_ln_block():
    """shift = scale = 0, gates = 1: x + attn(LN x), then + mlp(LN x) (fails with nets.py ``* (1 + scale1)`` ->
    ``* scale1``)."""
    from daps.prior.nets import AdaLNBlock

    torch.manual_seed(0)
    width = 8
    block = AdaLNBlock(width, 2, 2).eval()
    with torch.no_grad():
        bias = torch.zeros(6, width)
        bias[2] = bias[5] = 1.0  # gate1, gate2
        block.modulation.bias.copy_(bias.flatten())
        x, c = torch.randn(2, 5, width), torch.randn(2, width)
        ln = lambda h: F.layer_norm(h, (width,), eps=1e-6)  # noqa: E731
        y = x + block.attn(ln(x))
        expected = y + block.mlp(ln(y))
        torch.testing.assert_close(block(x, c), expected)


# --------------------------------------------------------------------------------------------------
# daps/robot/plan.py


def test_transition_jumps_counts_both_frames_either_side_of_a_border():
    """A step of every joint at frame 4 with windows of 4: second differences of 1 at frames 3 and 4, both border
    frames (fails with plan.py without ``centre % window == window - 1``)."""
    from daps.motion.h1 import JOINTS, POSE_DIM
    from daps.robot.plan import transition_jumps

    poses = np.zeros((1, 8, POSE_DIM))
    poses[:, 4:, JOINTS] = 1.0
    out = transition_jumps(poses, 4, 30.0)
    assert out["border_joint_accel"] == pytest.approx(900.0)
    assert out["within_joint_accel"] == 0.0


# --------------------------------------------------------------------------------------------------
# daps/checkpoint.py


def _save(run, step):
    from daps.checkpoint import save_checkpoint

    torch.manual_seed(step)
    return save_checkpoint(run, step, nn.Linear(2, 2), {"note": "test"}, {"step": step}, keep=5)


def test_latest_may_not_point_outside_its_run(tmp_path):
    """Kills: checkpoint.py without the ``step_`` / ``/`` checks (``latest`` naming another run's checkpoint
    was followed)."""
    from daps.checkpoint import CKPT_DIR, CheckpointError, resolve_checkpoint

    _save(tmp_path / "a", 1)
    _save(tmp_path / "b", 2)
    (tmp_path / "b" / CKPT_DIR / "latest").write_text("../../a/checkpoints/step_00000001\n")
    with pytest.raises(CheckpointError, match="latest"):
        resolve_checkpoint(tmp_path / "b")


def test_find_resumable_prefers_latest_over_a_newer_folder(tmp_path):
    """``latest`` first, as documented (fails with checkpoint.py dropping the reordering)."""
    from daps.checkpoint import CKPT_DIR, find_resumable

    three = _save(tmp_path, 3)
    _save(tmp_path, 6)
    (tmp_path / CKPT_DIR / "latest").write_text("step_00000003\n")
    assert find_resumable(tmp_path, report=False) == three


def test_mask_token0_rows_of_code_zero_attend_uniformly_to_the_image():
    """The original's cross mask hides every image patch from a row whose code is 0, so (most-negative-float rule)
    its cross-attention weights are uniform: they do not depend on the query. With one layer, zeroing the
    cross-attention's query projection leaves that row unchanged, while a row with a valid code changes (fails
    with the cross mask dropped)."""
    from daps.nets.ar_encoder import ARTransformerEncoder

    torch.manual_seed(0)
    enc = ARTransformerEncoder((1, 28, 28), num_tokens=8, vocab_size=4, width=32, num_layers=1, num_heads=4,
                               mlp_ratio=2, mask_token0=True).eval()
    x = images(1)
    z = torch.tensor([[[1, 2, 0, 3, 1, 2, 3, 1]]])  # z_2 = 0
    with torch.no_grad():
        before = enc.log_probs(x, z)
        enc.decoder_blocks[0].cross_attn.q.weight.zero_()
        after = enc.log_probs(x, z)
    torch.testing.assert_close(after[..., 2, :], before[..., 2, :])
    assert (after[..., 1, :] - before[..., 1, :]).abs().max() > 1e-4
