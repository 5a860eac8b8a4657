"""Known answers for behaviour that a second mutation sweep (2026-12-05) found no test guarding: the estimator
lab's statistics and objective, compare's standard errors, speed column and intervals, the motion features'
velocities, tilt, invariance and contacts, the LAFAN1 split and quaternion check, the H1's sole, toe and hand points,
the near-constant threshold, the physics checks (reference velocities, rotation vectors, support force, fall time,
centre of pressure, friction), the centre of mass and its agreement with the root, the policy's training examples,
the prior's Frechet statistics and balanced subsets, SSIM of flat images, and the scales evaluate measures on. Each
test names the plausible bug it fails on (its negative control, each checked). Motion tests need mujoco and
DAPS_DATA_DIR (the H1 model), as tests/test_motion_data.py.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

# --------------------------------------------------------------------------------------------------
# gradlab: the statistics of the estimator lab, by hand


def test_summarize_draws_known_answer():
    """Two draws, worked by hand. Fails on: SNR not squared, the bias z-score's sign flipped, the mean single-draw
    cosine replaced by the cosine of the mean, chi or the standard error missing their 1/n."""
    from daps.gradlab import summarize_draws

    draws = torch.tensor([[1.0, 1.0], [3.0, -1.0]], dtype=torch.float64)
    exact = torch.tensor([1.0, 0.0], dtype=torch.float64)
    s = summarize_draws(draws, exact)
    # mean (2, 0); E|draw - mean|^2 = 2; along the exact gradient: (1, 3), sample std sqrt(2), se = sqrt(2)/sqrt(2)
    assert s["num_draws"] == 2
    assert s["cos_mean_exact"] == pytest.approx(1.0)
    assert s["norm_ratio"] == pytest.approx(2.0)
    assert s["mean_cos_draw_exact"] == pytest.approx((1 / math.sqrt(2) + 3 / math.sqrt(10)) / 2)
    assert s["snr"] == pytest.approx(4.0 / 2.0)
    # the unbiased covariance S has trace 2 * 2 / (2 - 1) = 4; |mean|^2 less trace(S) / n = 4 - 2, over trace(S)
    assert s["snr_unbiased"] == pytest.approx((4.0 - 4.0 / 2) / 4.0)
    assert s["bias_z"] == pytest.approx(+1.0)  # the mean overshoots the exact gradient: positive
    assert s["chi"] == pytest.approx(1.0 / (2.0 / 2))


def test_compare_draws_known_answer():
    """Two estimators of one expectation, worked by hand. Fails on: the projection onto the estimator's own mean
    instead of the reference's, the z-score's sign flipped, the variance ratio inverted."""
    from daps.gradlab import compare_draws

    reference = torch.tensor([[1.0, 0.0], [3.0, 0.0]], dtype=torch.float64)  # mean (2, 0), E|d - mean|^2 = 1
    draws = torch.tensor([[2.0, 2.0], [4.0, 0.0]], dtype=torch.float64)  # mean (3, 1), E|d - mean|^2 = 2
    c = compare_draws(draws, reference)
    # along (1, 0): draws (2, 4), reference (1, 3), both of sample variance 2: se = sqrt(2/2 + 2/2)
    assert c["bias_z_vs"] == pytest.approx((3 - 2) / math.sqrt(2))
    assert c["rel_diff_vs"] == pytest.approx(math.sqrt(2) / 2)
    assert c["var_ratio_vs"] == pytest.approx(2.0)


def test_exact_objective_is_the_expected_log_likelihood_minus_beta_kl_to_uniform():
    """J(beta) = E_q log p - beta KL(q || U) with U uniform over all V^T codes: J(beta) - J(0) = -beta KL, KL from
    the enumerated q in numpy. Fails on: log U counted once instead of per token (KL off by (T-1) log V, and
    negative for a spread-out q)."""
    from daps.gradlab import _build, _constant_schedules, exact_gradient

    model = _build("daps", _constant_schedules(0.5, 1.0), seed=3)
    x = (torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    t, v = model.encoder.num_tokens, model.encoder.vocab_size
    codes = torch.tensor(list(itertools.product(range(v), repeat=t)))
    with torch.no_grad():
        log_q = model.encoder.log_prob(x, codes[:, None].expand(-1, 3, -1)).sum(-1).double().numpy()  # (V^T, B)
    q = np.exp(log_q)
    kl = (q * (log_q + t * np.log(v))).sum(0).mean()  # mean over the batch of KL(q(.|x_b) || U)
    assert kl >= 0
    j0 = exact_gradient(model, x, 0.0)[1]
    for beta in (0.5, 2.0):
        assert exact_gradient(model, x, beta)[1] == pytest.approx(j0 - beta * kl, rel=1e-5, abs=1e-4)


# --------------------------------------------------------------------------------------------------
# compare: the table's standard errors and speed column


def test_compare_mean_and_standard_error_over_seeds():
    """Fails on: the population variance (n) instead of the sample variance (n - 1), or the standard deviation
    reported as the standard error (no 1/sqrt(n))."""
    from daps.compare import _mean_se

    mean, se = _mean_se([1.0, 2.0, 6.0])  # mean 3, sample variance (4 + 1 + 9) / 2 = 7
    assert mean == pytest.approx(3.0) and se == pytest.approx(math.sqrt(7 / 3))
    mean, se = _mean_se([5.0])
    assert mean == 5.0 and math.isnan(se)


def test_compare_speed_is_the_median_without_the_warm_up_window(tmp_path):
    """The first training window includes warm-up (compilation, caches) and is left out. Fails on: keeping it."""
    import json

    from daps.compare import Run, _steps_per_s

    cfg = parse_cfg(tmp_path)
    rows = [{"split": "train", "step": 1, "steps_per_s": 100.0}, {"split": "val", "step": 1, "steps_per_s": 0.0}]
    rows += [{"split": "train", "step": s, "steps_per_s": v} for s, v in ((2, 3.0), (3, 1.0), (4, 2.0))]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert _steps_per_s(Run("daps", 0, cfg)) == 2.0  # median of 3, 1, 2
    rows.append({"split": "train", "step": 5, "steps_per_s": 4.0})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert _steps_per_s(Run("daps", 0, cfg)) == 2.5  # median of 3, 1, 2, 4: the mean of the middle two
    (tmp_path / "metrics.jsonl").write_text(json.dumps(rows[0]) + "\n")  # one window: it is all there is
    assert _steps_per_s(Run("daps", 0, cfg)) == 100.0


def parse_cfg(out_dir):
    from daps import get_preset, parse_overrides

    return parse_overrides(get_preset("mnist", "daps"), [f"train.out_dir={out_dir}"])


def test_compare_intervals_scale_with_the_budget(tmp_path):
    """Evaluation every tenth of the budget, checkpoints every quarter, logs every fiftieth but at most every 50
    steps, and at least every step. Fails on: another fraction."""
    from daps.compare import plan_runs

    for steps, (eval_every, ckpt_every, log_every) in {40: (4, 10, 1), 5000: (500, 1250, 50), 3: (1, 1, 1)}.items():
        (run,) = plan_runs("mnist", ["daps"], steps, [0], tmp_path, [])
        c = run.cfg.train
        assert (c.eval_every, c.ckpt_every, c.log_every) == (eval_every, ckpt_every, log_every), steps


# --------------------------------------------------------------------------------------------------
# motion features: velocities of a synthetic clip, by hand


@pytest.fixture(scope="module")
def h1(h1_model):
    return h1_model


def turning_clip(psi: np.ndarray, xy: np.ndarray, knee: np.ndarray) -> np.ndarray:
    """Poses ``(T, 26)``: the default pose at planar positions ``xy``, headings ``psi`` (upright) and left knee
    angles ``knee``."""
    from daps.motion.h1 import POSE_DIM

    poses = np.zeros((len(psi), POSE_DIM))
    poses[:, :2] = xy
    poses[:, 2] = 1.0
    poses[:, 3], poses[:, 6] = np.cos(psi / 2), np.sin(psi / 2)  # w, z: a turn about the vertical
    poses[:, 7 + 3] = knee  # left_knee_joint
    return poses


def test_feature_velocities_known_answer(h1):
    """Backward differences at 30 fps; frame 0 copies frame 1; the root velocity in the frame's own heading frame;
    the yaw rate wrapped across +-pi. Fails on: frame 0 copying the last frame (root, joint or yaw velocity), an
    unwrapped heading step, a velocity rotated the wrong way."""
    from daps.motion.features import FEATURE_LAYOUT as LAY
    from daps.motion.features import poses_to_features

    fps = 30.0
    psi = np.array([3.0, 3.1, -3.1, -2.9, -2.6])  # steps 0.1, 2 pi - 6.2, 0.2, 0.3 rad
    xy = np.array([[0.0, 0.0], [0.1, 0.0], [0.1, 0.05], [0.0, 0.05], [0.0, 0.0]])
    knee = np.array([0.0, 0.01, 0.03, 0.06, 0.10])
    x = poses_to_features(h1, turning_clip(psi, xy, knee), fps)

    yaw = np.array([0.1, 0.1, 2 * np.pi - 6.2, 0.2, 0.3]) * fps
    np.testing.assert_allclose(x[:, LAY["yaw_rate"]][:, 0], yaw, atol=1e-9)
    knee_velocity = np.array([0.01, 0.01, 0.02, 0.03, 0.04]) * fps
    np.testing.assert_allclose(x[:, LAY["joint_velocities"]][:, 3], knee_velocity, atol=1e-9)
    assert not x[:, LAY["joint_velocities"]][:, [0, 1, 2, 4]].any()
    world = np.array([[0.1, 0.0], [0.1, 0.0], [0.0, 0.05], [-0.1, 0.0], [0.0, -0.05]]) * fps  # frame 0 = frame 1
    c, s = np.cos(psi), np.sin(psi)
    forward = c * world[:, 0] + s * world[:, 1]  # the world velocity seen from the pelvis's heading
    left = -s * world[:, 0] + c * world[:, 1]
    np.testing.assert_allclose(x[:, LAY["root_velocity"]], np.stack([forward, left], 1), atol=1e-9)
    np.testing.assert_allclose(x[:, LAY["root_height"]][:, 0], 1.0)


def test_root_tilt_is_the_first_two_columns_of_the_tilt_matrix(h1):
    """A pelvis pitched by ``a`` about its own x axis, at any heading: tilt = R_x(a), whose first two columns are
    (1, 0, 0) and (0, cos a, sin a). Fails on: rows stored instead of columns (the inverse tilt; the round trip
    of tests/test_motion_data.py compares quaternions component by component up to sign, which cannot see it)."""
    from daps.motion.features import FEATURE_LAYOUT as LAY
    from daps.motion.features import features_to_poses, poses_to_features, root_anchor
    from daps.motion.rotations import quat_mul, quat_to_mat, yaw_quat

    a, psi = 0.2, np.array([0.7, 0.75, 0.8])
    poses = turning_clip(psi, np.zeros((3, 2)), np.zeros(3))
    poses[:, 3:7] = quat_mul(yaw_quat(psi), np.array([np.cos(a / 2), np.sin(a / 2), 0.0, 0.0]))
    x = poses_to_features(h1, poses, 30.0)
    np.testing.assert_allclose(x[:, LAY["root_tilt"]], [[1, 0, 0, 0, np.cos(a), np.sin(a)]] * 3, atol=1e-12)
    back = features_to_poses(x, *root_anchor(poses), 30.0)
    np.testing.assert_allclose(quat_to_mat(back[:, 3:7]), quat_to_mat(poses[:, 3:7]), atol=1e-12)


def test_features_do_not_change_when_the_whole_clip_is_turned_and_moved(h1):
    """The features are the same wherever and whichever way a motion happens (module doc of
    daps.motion.features). Fails on: key points left in the world frame instead of the heading frame."""
    import os

    from daps.motion.features import poses_to_features
    from daps.motion.lafan import find_source, read_clips
    from daps.motion.rotations import quat_mul, rotate_z, yaw_quat

    poses = read_clips(find_source(os.environ["DAPS_DATA_DIR"]), ["walk1_subject1"])["walk1_subject1"][100:130]
    turn = 1.0
    moved = poses.copy()
    moved[:, :3] = rotate_z(poses[:, :3], turn) + np.array([3.0, -2.0, 0.0])
    moved[:, 3:7] = quat_mul(yaw_quat(np.full(len(poses), turn)), poses[:, 3:7])
    np.testing.assert_allclose(poses_to_features(h1, moved, 30.0), poses_to_features(h1, poses, 30.0), atol=1e-9)


def test_foot_contact_needs_a_low_and_slow_foot(h1):
    """Soles 1 cm above the floor: contact when still, none when sliding at 1 m/s; soles 10 cm up: none. Fails on:
    low *or* slow, or thresholds far from 3 cm and 0.5 m/s."""
    from daps.motion.features import FEATURE_LAYOUT as LAY
    from daps.motion.features import poses_to_features

    def contacts(height: float, speed: float) -> np.ndarray:
        poses = turning_clip(np.zeros(4), np.stack([np.arange(4) * speed / 30.0, np.zeros(4)], 1), np.zeros(4))
        poses[:, 2] = 1.1 - 0.0558 + height  # the default pose's soles are 5.58 cm below the pelvis's 1.1 m
        return poses_to_features(h1, poses, 30.0)[:, LAY["foot_contacts"]]

    assert (contacts(0.01, 0.0) == 1).all()
    assert (contacts(0.01, 1.0) == 0).all()
    assert (contacts(0.01, 0.4) == 1).all() and (contacts(0.01, 0.6) == 0).all()
    assert (contacts(0.10, 0.0) == 0).all()
    assert (contacts(0.025, 0.0) == 1).all() and (contacts(0.035, 0.0) == 0).all()


# --------------------------------------------------------------------------------------------------
# LAFAN1 H1: the split and the quaternion check


def test_validation_clips_are_the_papers_four():
    """The original code's split: four held-out clips, one each of dance, fight, run and walk. Fails on: a clip
    dropped from (or added to) VAL_CLIPS (the existing split test compares the split with VAL_CLIPS itself)."""
    from daps.motion.lafan import VAL_CLIPS, split_clips

    assert sorted(VAL_CLIPS) == ["dance2_subject2", "fight1_subject2", "run2_subject1", "walk2_subject4"]
    names = ["walk1_subject1", "run2_subject1", "walk2_subject4", "fight1_subject2", "dance2_subject2",
             "jumps1_subject1"]
    assert split_clips(names) == (["jumps1_subject1", "walk1_subject1"],
                                  ["dance2_subject2", "fight1_subject2", "run2_subject1", "walk2_subject4"])


def test_csv_quaternion_norm_is_checked_to_one_percent():
    """Within 1 % of unit norm a CSV quaternion is renormalized; further off (a corrupt or mis-ordered file) it is an
    error naming the line. Fails on: a looser tolerance."""
    from daps.errors import UserError
    from daps.motion.lafan import csv_rows_to_poses

    rows = np.zeros((3, 26))
    rows[:, 6] = 1.0  # x, y, z, w = 0, 0, 0, 1
    rows[1, 6] = 1.005
    poses = csv_rows_to_poses(rows, "clip.csv")
    np.testing.assert_allclose(poses[:, 3:7], [[1, 0, 0, 0]] * 3)
    rows[2, 6] = 1.05
    with pytest.raises(UserError, match="clip.csv: line 3: root quaternion has norm 1.0500"):
        csv_rows_to_poses(rows, "clip.csv")
    rows[2, 6] = 0.95
    with pytest.raises(UserError, match="line 3"):
        csv_rows_to_poses(rows, "clip.csv")


def test_sole_corners_are_the_four_corners_of_the_sole_box():
    """Heel and toe, each on both sides of the foot's midline. Fails on: two corners on one side (a zero-width
    sole, which moves the foot's centre, lowest point and support hull)."""
    from daps.motion.h1 import FOOT_BODIES, sole_points

    for foot in FOOT_BODIES:
        corners = sole_points(foot)
        assert {p.body for p in corners} == {foot}
        assert sorted(p.offset for p in corners) == [
            (-0.095, -0.0125, -0.07), (-0.095, 0.0125, -0.07), (0.195, -0.0125, -0.07), (0.195, 0.0125, -0.07)
        ]


def _mesh_in_body_frame(h1, body: str) -> np.ndarray:
    """Vertices ``(V, 3)`` of ``body``'s mesh geoms, in the body's frame (m)."""
    from daps.motion.h1 import import_mujoco

    mujoco = import_mujoco()
    m = h1.model
    bid = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, body)
    out = []
    for g in range(m.ngeom):
        if m.geom_bodyid[g] != bid or m.geom_dataid[g] < 0:
            continue
        mesh = m.geom_dataid[g]
        verts = m.mesh_vert[m.mesh_vertadr[mesh] : m.mesh_vertadr[mesh] + m.mesh_vertnum[mesh]]
        rot = np.zeros(9)
        mujoco.mju_quat2Mat(rot, m.geom_quat[g])
        out.append(m.geom_pos[g] + verts @ rot.reshape(3, 3).T)
    return np.concatenate(out)


def test_toe_and_hand_points_sit_on_the_meshes(h1):
    """The toe point is the front of the flat sole; the hand point is the centre of the ball hand (the bounding box
    of the elbow link's vertices beyond x = 0.25 m). Fails on: the toe put at the heel, the hand centre mirrored
    above the forearm's axis."""
    from daps.motion.h1 import END_POINTS

    for point in END_POINTS:
        verts = _mesh_in_body_frame(h1, point.body)
        if "toe" in point.name:
            sole = verts[verts[:, 2] < verts[:, 2].min() + 0.002]
            np.testing.assert_allclose(point.offset, [sole[:, 0].max(), 0.0, verts[:, 2].min()], atol=0.01)
        else:
            ball = verts[verts[:, 0] > 0.25]
            centre = (ball.min(0) + ball.max(0)) / 2
            np.testing.assert_allclose(point.offset, centre, atol=0.01)


def test_near_constant_threshold_is_a_variance_of_1e_5():
    """A feature of variance 1e-4 is scaled by its standard deviation 0.01; one of variance 1e-6 is only centred.
    Fails on: a threshold far from 1e-5 (the original's), which would leave small but real features unscaled."""
    from daps.motion.dataset import fit_standardizer

    signs = np.tile([1.0, -1.0], 50)  # mean 0, variance 1 (population)
    frames = np.stack([1e-2 * signs + 5.0, 1e-3 * signs - 2.0, signs], 1)  # variances 1e-4, 1e-6, 1
    s = fit_standardizer(frames)
    np.testing.assert_allclose(s.mean, [5.0, -2.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(s.scale, [1e-2, 1.0, 1.0], rtol=1e-9)
    assert s.near_constant.tolist() == [False, True, False]


# --------------------------------------------------------------------------------------------------
# robot physics: the reference velocities, by hand


def test_reference_velocities_are_central_differences(h1):
    """A root accelerating along x (x = t^2) and a knee bending at 2 rad/s^2: central differences are exact for a
    quadratic inside the clip (v = 2 t), one-sided at the ends. Fails on: forward differences inside."""
    from daps.robot.physics import reference_velocities

    fps = 30.0
    t = np.arange(6) / fps
    poses = turning_clip(np.zeros(6), np.stack([t**2, np.zeros(6)], 1), t**2)
    v = reference_velocities(h1.model, poses, fps)  # (6, 25): root linear (3), angular (3), 19 hinges
    np.testing.assert_allclose(v[1:-1, 0], 2 * t[1:-1], atol=1e-9)
    np.testing.assert_allclose(v[1:-1, 6 + 3], 2 * t[1:-1], atol=1e-9)
    np.testing.assert_allclose(v[[0, -1], 0], [(t[1] ** 2 - t[0] ** 2) * fps, (t[5] ** 2 - t[4] ** 2) * fps], atol=1e-9)
    assert not np.abs(v[:, [1, 2, 3, 4, 5]]).max() > 1e-9


def test_rotation_vector_known_answers():
    """The support torque's orientation error: angle times unit axis, the short way round. Fails on: the half
    angle, or the long way round for a quaternion with w < 0."""
    from daps.robot.physics import _rotvec

    axis = np.array([0.0, 0.6, 0.8])
    for angle in (0.3, 2.0, -1.0):
        q = np.concatenate([[np.cos(angle / 2)], np.sin(angle / 2) * axis])
        np.testing.assert_allclose(_rotvec(q), angle * axis, atol=1e-12)
        np.testing.assert_allclose(_rotvec(-q), angle * axis, atol=1e-12)  # the same rotation
    q = np.concatenate([[np.cos(3.0)], np.sin(3.0) * axis])  # 6 rad one way = 2 pi - 6 rad the other
    np.testing.assert_allclose(_rotvec(q), (6.0 - 2 * np.pi) * axis, atol=1e-12)
    np.testing.assert_allclose(_rotvec(np.array([1.0, 0, 0, 0])), np.zeros(3), atol=0)


def test_support_force_of_the_first_frame_known_answer(h1):
    """One physics step per frame: the first step pulls the pelvis toward frame 1's reference, from frame 0's state
    moving at the reference velocity: force = kp_pos * 1 cm along x = 40 N, nothing else; frame 0 reports frame 1's
    support. Fails on: the reference taken at the start of the step (frame 0: no force)."""
    from daps.robot.physics import SUPPORT_GAINS, track

    t = np.arange(3) / 30.0
    poses = turning_clip(np.zeros(3), np.stack([0.3 * t, np.zeros(3)], 1), np.zeros(3))  # 0.3 m/s = 1 cm a frame
    poses[:, 2] = 1.1
    result = track(h1, poses, 30.0, substeps=1)
    assert result.physics_steps == 2
    np.testing.assert_allclose(result.support_force[1], [SUPPORT_GAINS["kp_pos"] * 0.01, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(result.support_torque[1], 0.0, atol=1e-6)
    np.testing.assert_allclose(result.support_force[0], result.support_force[1])


def test_fall_time_is_when_the_pelvis_first_drops_below_the_reference(monkeypatch):
    """Seconds until the unsupported pelvis is ``drop`` m below the reference's; inf if never. Fails on: above
    instead of below."""
    import daps.robot.physics as physics

    ref = np.zeros((6, 26))
    ref[:, 2] = 1.0
    sim = ref.copy()
    sim[:, 2] -= [0.0, 0.05, 0.1, 0.2, 0.3, 0.4]
    result = physics.TrackResult(sim, np.zeros((6, 3)), np.zeros((6, 3)), 1.0, 0, np.zeros(6))
    monkeypatch.setattr(physics, "track", lambda *args, **kwargs: result)
    assert physics.fall_time(None, ref, 30.0) == pytest.approx(4 / 30.0)
    assert physics.fall_time(None, ref, 30.0, drop=0.15) == pytest.approx(3 / 30.0)
    assert physics.fall_time(None, ref, 30.0, drop=0.5) == float("inf")


def one_foot_pose(h1, lean_arm: float) -> np.ndarray:
    """Standing on the left foot (soles 1 cm above the floor), the right knee raised, the left arm raised sideways
    by ``lean_arm`` rad (shoulder roll), pelvis at (0.4, 0.3)."""
    from daps.motion.h1 import JOINT_NAMES

    pose = turning_clip(np.zeros(1), np.array([[0.4, 0.3]]), np.zeros(1))[0]
    pose[2] = 1.1 - 0.0558 + 0.01
    pose[7 + JOINT_NAMES.index("right_hip_pitch_joint")] = -1.0
    pose[7 + JOINT_NAMES.index("right_knee_joint")] = 1.5
    pose[7 + JOINT_NAMES.index("left_shoulder_roll_joint")] = lean_arm
    return pose


def test_static_centre_of_pressure_is_below_the_centre_of_mass(h1):
    """A pose held still needs the root wrench that carries its weight, so its centre of pressure is the ground point
    below the centre of mass, and cop_outside_m is that point's distance to the standing sole. Fails on: a sign
    error in the centre of pressure's y (the moment about x entering the wrong way)."""
    from daps.motion.h1 import forward_kinematics, points_world, sole_points
    from daps.robot.commands import centre_of_mass
    from daps.robot.physics import _hull, balance_check, distance_outside

    pose = one_foot_pose(h1, 1.2)
    poses = np.stack([pose] * 4)
    com = centre_of_mass(h1, pose)
    assert abs(com[1] - pose[1]) > 0.005  # the raised arm moves the centre of mass sideways
    pos, rot = forward_kinematics(h1, pose)
    left = points_world(pos, rot, sole_points("left_ankle_link"))
    right = points_world(pos, rot, sole_points("right_ankle_link"))
    assert (left[:, 2] < 0.05).all() and (right[:, 2] > 0.05).all()  # only the left foot is down
    expected = distance_outside(com[:2], _hull(left[:, :2]))
    assert expected > 0.1
    got = balance_check(h1, poses, 30.0)
    assert got["cop_outside_m"] == pytest.approx(expected, abs=1e-3)
    assert got["balanced_fraction"] == 0.0 and got["pulling_fraction"] == 0.0
    assert got["root_force_bw"] == pytest.approx(1.0, abs=1e-6)


def test_centre_of_pressure_of_a_turned_and_tilted_pelvis(h1):
    """The same static one-foot pose with the pelvis turned 1 rad and pitched 0.2 rad: the centre of pressure is
    still the ground point below the centre of mass. Fails on: the root moment left in the pelvis's own frame
    (MuJoCo gives the free joint's angular part in the body frame), which the upright, unturned pose cannot tell."""
    from daps.motion.h1 import forward_kinematics, points_world, sole_points
    from daps.motion.rotations import quat_mul
    from daps.robot.commands import centre_of_mass
    from daps.robot.physics import _hull, balance_check, distance_outside

    pose = one_foot_pose(h1, 1.2)
    yaw = np.array([np.cos(0.5), 0.0, 0.0, np.sin(0.5)])  # 1 rad about z
    pitch = np.array([np.cos(0.1), 0.0, np.sin(0.1), 0.0])  # 0.2 rad about y
    pose[3:7] = quat_mul(yaw, pitch)
    pos, rot = forward_kinematics(h1, pose)
    left = points_world(pos, rot, sole_points("left_ankle_link"))
    pose[2] -= left[:, 2].min() - 0.01  # the lowest left sole corner 1 cm above the floor
    pos, rot = forward_kinematics(h1, pose)
    left = points_world(pos, rot, sole_points("left_ankle_link"))
    right = points_world(pos, rot, sole_points("right_ankle_link"))
    assert (right[:, 2] > 0.05).all()  # only the left foot can carry load
    down = left[left[:, 2] < 0.05]
    com = centre_of_mass(h1, pose)
    expected = distance_outside(com[:2], _hull(down[:, :2]))
    assert expected > 0.05
    got = balance_check(h1, np.stack([pose] * 4), 30.0)
    assert got["cop_outside_m"] == pytest.approx(expected, abs=1e-3)


def test_friction_cone_counts_the_sideways_force(h1):
    """Both feet down, the whole robot accelerating sideways at 1 m/s^2: the floor must push sideways with a tenth
    of the weight. Within a friction coefficient of 1 that is balanced; with 0.05 it is not. Fails on: a friction
    check that looks only at the forward force."""
    from daps.robot.physics import balance_check

    t = np.arange(5) / 30.0
    poses = turning_clip(np.zeros(5), np.stack([np.zeros(5), 0.5 * 1.0 * t**2], 1), np.zeros(5))
    poses[:, 2] = 1.1 - 0.0558 + 0.01
    assert balance_check(h1, poses, 30.0, mu=1.0)["balanced_fraction"] == 1.0
    assert balance_check(h1, poses, 30.0, mu=0.05)["balanced_fraction"] == 0.0
    assert balance_check(h1, poses, 30.0, mu=0.2)["balanced_fraction"] == 1.0


# --------------------------------------------------------------------------------------------------
# robot eval: root vs centre-of-mass agreement


def test_com_agreement_known_answer(h1):
    """Four 2-frame windows: the pelvis walks forward at 1, 0, 2, 0.5 m/s while the arms swing by different
    amounts, so the centre of mass moves otherwise. The report is the mean |root - com| per component and the
    correlation of the forward speeds, from the centres of mass directly. Fails on: a correlation that is always
    1 (the diagonal of the correlation matrix)."""
    from types import SimpleNamespace

    from daps.motion.h1 import JOINT_NAMES
    from daps.robot.commands import centre_of_mass
    from daps.robot.evaluate import com_agreement

    fps, speeds, swings = 30.0, np.array([1.0, 0.0, 2.0, 0.5]), np.array([1.5, -1.5, -1.5, 1.5])
    windows = []
    for v, swing in zip(speeds, swings):
        w = turning_clip(np.zeros(2), np.array([[0.0, 0.0], [v / fps, 0.0]]), np.zeros(2))
        w[1, 7 + JOINT_NAMES.index("left_shoulder_pitch_joint")] = swing
        w[1, 7 + JOINT_NAMES.index("right_shoulder_pitch_joint")] = swing
        windows.append(w)
    windows = np.stack(windows)  # (4, 2, 26)
    motion = SimpleNamespace(train=list(range(4)), fps=fps, window_poses=lambda split, idx: windows[idx])
    com = centre_of_mass(h1, windows)  # (4, 2, 3)
    com_velocity = (com[:, 1, :2] - com[:, 0, :2]) * fps  # heading 0: world x is forward
    root_velocity = np.stack([speeds, np.zeros(4)], 1)
    got = com_agreement(h1, motion, window=2, count=10)
    assert got["windows"] == 4.0
    assert got["root_vs_com_abs_forward_m_s"] == pytest.approx(np.abs(root_velocity - com_velocity)[:, 0].mean())
    assert got["root_vs_com_abs_left_m_s"] == pytest.approx(np.abs(root_velocity - com_velocity)[:, 1].mean())
    expected = np.corrcoef(speeds, com_velocity[:, 0])[0, 1]
    assert expected < 0.99
    assert got["root_vs_com_forward_correlation"] == pytest.approx(expected)


# --------------------------------------------------------------------------------------------------
# robot data: the policy's training examples, by hand


class _FrameCodes(torch.nn.Module):
    """A stand-in tokenizer: the code of each frame is its feature 0 (a global frame number) plus 20 k on the
    k-th call of a batch (so that the K draws of a window differ)."""

    vocab_size = 100

    def __init__(self, samples: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.samples, self.calls = samples, 0

    def encode(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        k = self.calls % self.samples
        self.calls += 1
        return x[:, 0, :, 0].round().long() + 20 * k  # (B, T)


def _two_clips():
    """Motion data of two clips, windows of 4 frames every 2: run1 (8 frames, 6 m/s) then walk1 (6 frames,
    3 m/s); feature 0 of each frame is its global frame number."""
    from daps.motion.dataset import MotionData, clip_windows
    from daps.motion.features import NUM_FEATURES

    clips, lengths, speeds = ["run1_subject2", "walk1_subject1"], [8, 6], [6.0, 3.0]
    frames, poses, first = {}, {}, 0
    for clip, n, v in zip(clips, lengths, speeds):
        frames[clip] = np.zeros((n, NUM_FEATURES), np.float32)
        frames[clip][:, 0] = np.arange(first, first + n)  # global frame number
        first += n
        poses[clip] = turning_clip(np.zeros(n), np.stack([np.arange(n) * v / 30.0, np.zeros(n)], 1), np.zeros(n))
    windows = clip_windows(frames, clips, window=4, stride=2)
    return MotionData(train=windows, val=windows, stats=None, poses=poses, features=frames, window=4)


def test_encoding_reports_its_progress_and_encodes_the_same(caplog):
    """With ``progress`` (not on a terminal) a log line at each tenth of the windows passed, none at the end,
    and the same codes as without it (robot train printed nothing for minutes while encoding). 5 windows, one per
    batch: lines after windows 1-4 (20 %, 40 %, 60 %, 80 %)."""
    from daps.robot.data import encode_split

    plain = encode_split(_FrameCodes(2), _two_clips(), "train", 2, 2, torch.Generator(), batch_size=1)
    with caplog.at_level("INFO", logger="daps.robot.data"):
        shown = encode_split(_FrameCodes(2), _two_clips(), "train", 2, 2, torch.Generator(), batch_size=1,
                             progress=True)
    assert torch.equal(plain.codes, shown.codes) and torch.equal(plain.prev, shown.prev)
    lines = [r.getMessage() for r in caplog.records if r.name == "daps.robot.data"]
    assert [line.split(",")[0] for line in lines] == [f"encoding train: {i} of 5 windows" for i in (1, 2, 3, 4)]


def test_encode_split_pairs_each_window_with_the_one_before_it():
    """Two clips, windows of 4 frames every 2: run1 (8 frames: windows at 0, 2, 4) then walk1 (6 frames: at 0, 2).
    Only run1's window at 4 has a window 4 frames earlier (window 0); the others start from the start symbol V.
    Rows are window-major (the K = 2 draws of a window together), with the window's kind, velocity and index.
    Fails on: the next window taken as the previous one, window 0 never a previous window, labels or window ids
    tiled instead of repeated per draw."""
    from daps.data.motion import MOTION_TYPES
    from daps.robot.data import encode_split

    sets = encode_split(_FrameCodes(2), _two_clips(), "train", stride=2, samples=2, generator=torch.Generator())

    starts = [0, 2, 4, 8, 10]  # global first frame of each window
    codes = [[s + i + 20 * k for i in range(4)] for s in starts for k in range(2)]
    start = [100] * 4
    prev = [start] * 4 + [codes[0], codes[1]] + [start] * 4  # window 2 (run1 at 4) follows window 0 (run1 at 0)
    assert sets.codes.tolist() == codes
    assert sets.prev.tolist() == prev
    run, walk = MOTION_TYPES.index("run"), MOTION_TYPES.index("walk")
    assert sets.labels.tolist() == [run] * 6 + [walk] * 4
    assert sets.window_ids.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    np.testing.assert_allclose(sets.velocity.numpy(), [[6.0, 0, 0]] * 6 + [[3.0, 0, 0]] * 4, atol=1e-5)


def test_centre_of_mass_is_the_mass_weighted_mean_of_all_bodies(h1):
    """The whole robot's centre of mass (not the pelvis link's own), checked against the mass-weighted mean of
    every body's centre of mass from MuJoCo's model, in a pose with the arms raised forward. Fails on: the pelvis
    link's centre of mass."""
    from daps.motion.h1 import JOINT_NAMES, import_mujoco
    from daps.robot.commands import centre_of_mass

    mujoco = import_mujoco()
    pose = turning_clip(np.array([0.4]), np.array([[1.0, -2.0]]), np.zeros(1))[0]
    for name in ("left_shoulder_pitch_joint", "right_shoulder_pitch_joint"):
        pose[7 + JOINT_NAMES.index(name)] = -1.2
    data = mujoco.MjData(h1.model)
    data.qpos[:26] = pose
    mujoco.mj_kinematics(h1.model, data)
    ids = list(h1.body_ids)  # the robot's 20 bodies (not the world, nor the dummy body 20 m up)
    mass = np.array(h1.model.body_mass[ids])
    expected = (mass[:, None] * data.xipos[ids]).sum(0) / mass.sum()
    np.testing.assert_allclose(centre_of_mass(h1, pose), expected, atol=1e-9)
    np.testing.assert_allclose(centre_of_mass(h1, np.stack([pose, pose]))[1], expected, atol=1e-9)


# --------------------------------------------------------------------------------------------------
# prior scores: the Gaussian fit of the Frechet distance


def test_frechet_statistics_use_the_sample_covariance():
    """Mean and covariance (the unbiased, n - 1 estimator, as FID's reference implementations) of three points.
    Fails on: the biased (n) covariance."""
    from daps.prior.scores import stats

    mu, sigma = stats(torch.tensor([[0.0, 0.0], [2.0, 0.0], [1.0, 3.0]], dtype=torch.float64))
    np.testing.assert_allclose(mu, [1.0, 1.0])
    # deviations (-1, -1), (1, -1), (0, 2): sums of products 2, 0, 6, divided by n - 1 = 2
    np.testing.assert_allclose(sigma, [[1.0, 0.0], [0.0, 3.0]])


def test_balanced_training_subset_takes_classes_in_turn_at_random():
    """n indices, classes in turn, distinct, drawn at random within each class (seeded); at most
    classes x (smallest class) of them. Fails on: the first examples of each class every time, or the largest
    class deciding how many balanced examples exist."""
    from types import SimpleNamespace

    from daps.errors import UserError
    from daps.prior.scores import Judge

    labels = torch.tensor([0, 1, 2] * 30 + [1] * 10)  # 30, 40 and 30 examples
    judge = SimpleNamespace(train=SimpleNamespace(labels=labels))
    judge.check_balanced = lambda n, flag="--n": Judge.check_balanced(judge, n, flag)
    picks = [Judge.balanced_train_subset(judge, 60, seed) for seed in (0, 1)]
    for idx in picks:
        assert labels[idx].tolist() == [0, 1, 2] * 20
        assert len(set(idx.tolist())) == 60
    assert picks[0].tolist() != picks[1].tolist()
    assert Judge.balanced_train_subset(judge, 90, 0).numel() == 90  # 3 x 30: every example of the small classes
    with pytest.raises(UserError, match="--n 91: the training split has 30 examples of its smallest class"):
        Judge.check_balanced(judge, 91)


# --------------------------------------------------------------------------------------------------
# image metrics: SSIM of flat images


def test_ssim_of_flat_images_is_the_luminance_term():
    """Flat images have no variance or covariance: SSIM = (2 a b + c1) / (a^2 + b^2 + c1) exactly, with
    c1 = (0.01)^2, whatever the round-off of E[x^2] - E[x]^2 (a variance of -1e-17 must not give NaN). Fails on:
    variances not clamped at eps^2 (NaN where round-off makes one negative)."""
    from daps.metrics.image import ssim_per_image

    levels = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    a = levels[:, None, None, None].expand(19, 1, 16, 16).float()
    b = levels.flip(0)[:, None, None, None].expand(19, 1, 16, 16).float()
    got = ssim_per_image(a, b).double()
    x, y = a[:, 0, 0, 0].double(), b[:, 0, 0, 0].double()
    expected = (2 * x * y + 1e-4) / (x**2 + y**2 + 1e-4)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected.float().double(), atol=1e-6, rtol=0)
    torch.testing.assert_close(ssim_per_image(a, a), torch.ones(19), atol=1e-6, rtol=0)


# --------------------------------------------------------------------------------------------------
# evaluate: the scale of each metric, FID's view of stored pixels, the size of a folder pass


class _ShiftBy(torch.nn.Module):
    """A stand-in method whose reconstruction is its input plus ``shift`` on the model's scale."""

    final_beta = None
    vocab_size = None

    def __init__(self, shift: float) -> None:
        super().__init__()
        self.shift = shift

    def reconstruct(self, x, generator=None):
        from types import SimpleNamespace

        return SimpleNamespace(x_hat=x + self.shift, log_p=torch.zeros(len(x)), kl=None, log_q=None,
                               token_entropy=None, indices=None)


def test_evaluate_measures_l2_on_the_model_scale_and_psnr_on_the_unit_scale():
    """Pixels standardized as (p - 127.5) / 127.5: a reconstruction off by 0.2 on the model's scale is off by 0.1 on
    [0, 1]. L2 (model scale) = 0.2 sqrt(64), MSE (unit) = 0.01, PSNR = 20 dB. Fails on: PSNR / MSE measured on the
    model's scale (13.98 dB), invisible with the identity scale of binarized MNIST."""
    from daps.data import Standardize, TensorEvalSet
    from daps.metrics import evaluate

    raw = torch.randint(60, 190, (5, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    got = evaluate(_ShiftBy(0.2), TensorEvalSet(raw, 2), standardize=Standardize((127.5,), (127.5,)))
    assert got["num_images"] == 5 and "ssim" not in got  # 8x8 < the 11x11 SSIM window
    assert got["l2"] == pytest.approx(0.2 * 8, rel=1e-5)
    assert got["mse"] == pytest.approx(0.01, rel=1e-4)
    assert got["psnr"] == pytest.approx(20.0, abs=1e-3)


def test_fid_sees_stored_pixels_as_they_are():
    """uint8 pixels go to the FID network untouched (a float round trip through the model's scale can lose a level
    to truncation); float data go through the model's scale to [0, 1]. Fails on: uint8 sent through the round
    trip."""
    from daps.data import Standardize
    from daps.metrics.evaluate import _real_images

    s = Standardize((125.3, 123.0, 113.9), (63.0, 62.1, 66.7))
    raw = torch.arange(256, dtype=torch.uint8).repeat(3, 1).reshape(1, 3, 16, 16)
    out = _real_images(raw, s)
    assert out.dtype == torch.uint8 and torch.equal(out, raw)
    binary = (torch.arange(16.0).reshape(1, 1, 4, 4) > 7).float()
    assert torch.equal(_real_images(binary, Standardize()), binary)


def test_folder_eval_set_counts_the_images_of_one_pass():
    """A pass over a folder split is the first ``count`` images, not the whole split. Fails on: the split's size."""
    from daps.data.evalset import FolderEvalSet

    images = FolderEvalSet(list(range(10)), batch_size=4, num_workers=0, count=3, device=torch.device("cpu"))
    assert images.num_images == 3 and images.num_skipped == 0
