"""LAFAN1 on the Unitree H1 (daps.motion): the CSV-to-model mapping checked on real clips, features and their exact
inverse, windows and split, standardization, bad inputs, metrics known answers, rendering.

Real-data tests read ``$DAPS_DATA_DIR`` (``lafan1_h1_unitree/`` and ``unitree_h1_mjcf/``) and skip when it is unset.
Several tests carry a negative control (a deliberately wrong mapping that the same check must reject), so each
check is shown to be able to fail.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from daps.errors import UserError  # noqa: E402
from daps.motion.h1 import import_mujoco  # noqa: E402

try:  # through daps, so that MUJOCO_GL defaults to a headless backend before mujoco is first imported
    import_mujoco()
except UserError as e:
    pytest.skip(str(e), allow_module_level=True)
from daps.motion import features as F  # noqa: E402
from daps.motion.dataset import NEAR_CONSTANT_VARIANCE, Standardizer, fit_standardizer, load_motion_data  # noqa: E402
from daps.motion.h1 import (  # noqa: E402
    FOOT_BODIES,
    JOINT_NAMES,
    POSE_DIM,
    SOLE_Z,
    forward_kinematics,
    load_h1,
)
from daps.motion.lafan import CSV_COLUMNS, FPS, VAL_CLIPS, find_source, parse_csv, read_clips  # noqa: E402
from daps.motion.metrics import (  # noqa: E402
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
from daps.motion.rotations import heading  # noqa: E402

REAL_DIR = os.environ.get("DAPS_DATA_DIR")
pytestmark = pytest.mark.skipif(not REAL_DIR, reason="DAPS_DATA_DIR not set (these tests read real LAFAN1 H1 data)")

WALK = "walk1_subject1"
LYING = "fallAndGetUp1_subject1"  # lies on the floor: the heading must survive a pelvis pointing up or down


@pytest.fixture(scope="module")
def h1():
    return load_h1(REAL_DIR)


@pytest.fixture(scope="module")
def motion():
    """All 40 clips (features built once per session into the temporary cache, then read from it)."""
    return load_motion_data(REAL_DIR)


def csv_text(poses: np.ndarray) -> str:
    """Poses back to the CSV layout (quaternion x, y, z, w)."""
    rows = np.concatenate([poses[:, 0:3], poses[:, [4, 5, 6, 3]], poses[:, 7:]], axis=1)
    return "\n".join(",".join(f"{v:.6f}" for v in row) for row in rows) + "\n"


def raw_quaternion_order(poses: np.ndarray) -> np.ndarray:
    """The mistake to catch: the CSV's x, y, z, w copied straight into MuJoCo's w, x, y, z slots."""
    wrong = poses.copy()
    wrong[:, 3:7] = poses[:, [4, 5, 6, 3]]
    return wrong


def lowest_foot_points(h1, poses: np.ndarray) -> np.ndarray:
    heights, _ = F.foot_heights_and_speeds(*forward_kinematics(h1, poses), FPS)
    return heights  # (T, 2)


def feet_on_floor(h1, poses: np.ndarray) -> bool:
    """Walking: the lower foot is within 2 cm of the floor in the median frame and within 5 cm in 95 % of frames,
    and each foot is on the floor (below 1 cm) at least a quarter of the time."""
    heights = lowest_foot_points(h1, poses)
    lower = heights.min(axis=1)
    return bool(
        abs(np.median(lower)) < 0.02
        and np.percentile(np.abs(lower), 95) < 0.05
        and ((heights < 0.01).mean(axis=0) > 0.25).all()
    )


# --------------------------------------------------------------------------------------------------
# The model and the CSV mapping


def test_model_joint_order_is_the_csv_order(h1):
    mujoco = import_mujoco()
    m = h1.model
    hinges = sorted(
        (int(m.jnt_qposadr[j]), mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_JOINT, j))
        for j in range(m.njnt)
        if m.jnt_type[j] == mujoco.mjtJoint.mjJNT_HINGE
    )
    assert [name for _, name in hinges[:19]] == list(JOINT_NAMES)
    assert [adr for adr, _ in hinges[:19]] == list(range(7, 26))
    assert hinges[19] == (26, "not_use_joint")  # the dummy hinge after the 19 real ones, always 0 here


def test_forward_kinematics_known_answer_at_the_default_pose(h1):
    """qpos0 (pelvis at 1.1 m, straight legs): body positions are the sums of the XML offsets."""
    pose = np.zeros(POSE_DIM)
    pose[2], pose[3] = 1.1, 1.0
    pos, _ = forward_kinematics(h1, pose)
    assert np.allclose(pos[h1.body_index("pelvis")], [0, 0, 1.1])
    # hip yaw (0, .0875, -.1742) + hip roll (.039468, 0, 0) + hip pitch (0, .11536, 0) + knee + ankle (0, 0, -.4) each
    assert np.allclose(pos[h1.body_index("left_ankle_link")], [0.039468, 0.20286, 1.1 - 0.1742 - 0.8], atol=1e-9)
    assert np.allclose(pos[h1.body_index("right_ankle_link")], [0.039468, -0.20286, 0.1258], atol=1e-9)
    # the soles float 5.6 cm above the floor, so standing straight-legged puts the pelvis at 1.044 m
    lowest = lowest_foot_points(h1, np.stack([pose, pose]))[0]
    assert np.allclose(lowest, 0.0558, atol=1e-3)
    assert 0.95 < 1.1 - lowest.min() < 1.10


def test_sole_constants_match_the_foot_mesh(h1):
    """The sole corners sit on the foot mesh's lowest vertices (ankle frame)."""
    mujoco = import_mujoco()
    m = h1.model
    foot = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, FOOT_BODIES[0])
    geom = next(g for g in range(m.ngeom) if m.geom_bodyid[g] == foot and m.geom_dataid[g] >= 0)
    mesh = m.geom_dataid[geom]
    verts = m.mesh_vert[m.mesh_vertadr[mesh] : m.mesh_vertadr[mesh] + m.mesh_vertnum[mesh]]
    rot = np.zeros(9)
    mujoco.mju_quat2Mat(rot, m.geom_quat[geom])
    local = m.geom_pos[geom] + verts @ rot.reshape(3, 3).T  # (V, 3) in the ankle frame
    assert abs(local[:, 2].min() - SOLE_Z) < 1e-3
    sole = local[local[:, 2] < SOLE_Z + 0.002]
    assert sole[:, 0].min() < -0.09 and sole[:, 0].max() > 0.19  # heel and toe of the flat sole


def test_feet_stay_on_the_floor_when_walking(h1, motion):
    """Right quaternion order: the lower foot's median height is a few mm. Copying the CSV's x, y, z, w into
    MuJoCo's w, x, y, z slots tilts the robot whenever its heading is not 0, and the same check fails."""
    walk = motion.poses[WALK]
    assert feet_on_floor(h1, walk)
    assert not feet_on_floor(h1, raw_quaternion_order(walk))
    assert np.median(lowest_foot_points(h1, raw_quaternion_order(walk)).min(axis=1)) > 0.2
    assert 0.95 < np.median(walk[:, 2]) < 1.1  # pelvis height while walking


def test_walking_goes_the_way_the_pelvis_faces(motion):
    """The heading from the CSV quaternion agrees with the direction of travel (forward velocity > 0 most of the
    time); with the raw quaternion order it does not."""
    walk = motion.poses[WALK]
    for poses, expect in ((walk, True), (raw_quaternion_order(walk), False)):
        psi = heading(poses[1:, 3:7])  # (T-1,)
        step = np.diff(poses[:, :2], axis=0)
        forward = np.cos(psi) * step[:, 0] + np.sin(psi) * step[:, 1]
        assert (np.mean(forward > 0) > 0.7) == expect


def test_joint_angles_stay_within_the_model_limits(h1, motion):
    """Over all 40 clips every hinge stays in its range except the shoulder yaws (1.7 % / 0.5 % of frames, by at
    most 0.2 rad). Swapping the hip roll and pitch columns puts over half of the hip roll values out of range."""
    q = np.concatenate([p[:, 7:] for p in motion.poses.values()])  # (N, 19)
    lo, hi = h1.joint_range[:, 0], h1.joint_range[:, 1]

    def out_of_range(angles: np.ndarray, tol: float) -> np.ndarray:
        return ((angles < lo - tol) | (angles > hi + tol)).mean(axis=0)

    out = out_of_range(q, 0.01)
    yaws = [JOINT_NAMES.index(n) for n in ("left_shoulder_yaw_joint", "right_shoulder_yaw_joint")]
    others = [j for j in range(19) if j not in yaws]
    assert (out[others] == 0).all(), dict(zip(np.array(JOINT_NAMES)[others], out[others]))
    assert (out[yaws] < 0.03).all() and (out_of_range(q, 0.25)[yaws] == 0).all()
    swapped = q.copy()
    for a, b in ((1, 2), (6, 7)):  # left / right hip roll <-> hip pitch
        swapped[:, [a, b]] = swapped[:, [b, a]]
    assert out_of_range(swapped, 0.01)[[1, 6]].min() > 0.3


# --------------------------------------------------------------------------------------------------
# Features


def test_feature_layout_is_contiguous_and_named():
    starts = sorted((s.start, s.stop) for s in F.FEATURE_LAYOUT.values())
    assert starts[0][0] == 0 and starts[-1][1] == F.NUM_FEATURES
    assert all(a[1] == b[0] for a, b in zip(starts, starts[1:]))
    names = F.feature_names()
    assert len(names) == len(set(names)) == F.NUM_FEATURES
    assert names[F.FEATURE_LAYOUT["joint_angles"].start + 3] == "joint_angles/left_knee_joint"


@pytest.mark.parametrize("clip", [WALK, LYING])
def test_features_to_poses_round_trip_on_whole_clips(h1, motion, clip):
    poses = motion.poses[clip]
    feats = F.poses_to_features(h1, poses, FPS)
    xy, psi = F.root_anchor(poses)
    back = F.features_to_poses(feats, xy, psi, FPS)
    # q and -q are one rotation: the sign is chosen per quaternion (per component, it would hide a conjugate)
    quat_err = np.minimum(np.abs(back[:, 3:7] - poses[:, 3:7]).max(-1),
                          np.abs(back[:, 3:7] + poses[:, 3:7]).max(-1)).max()
    assert np.abs(back[:, :3] - poses[:, :3]).max() < 1e-6  # thousands of integrated steps, still exact
    assert quat_err < 1e-6
    assert np.abs(back[:, 7:] - poses[:, 7:]).max() < 1e-9
    # negative control: without the yaw rate the integrated root drifts far away
    broken = feats.copy()
    broken[:, F.FEATURE_LAYOUT["yaw_rate"]] = 0.0
    assert np.abs(F.features_to_poses(broken, xy, psi, FPS)[:, :2] - poses[:, :2]).max() > 1.0


def test_drop_twist_leaves_data_alone_and_removes_a_decoded_twist(h1, motion):
    """A tilt made from data has no twist about the vertical: dropping it changes nothing. A tilt twisted by 10
    degrees (as a decoder might give) shifts the poses' heading by 10 degrees, unless the twist is dropped."""
    from daps.motion.rotations import heading, mat_to_quat, quat_mul, quat_to_mat, rot6d_to_mat, wrap_angle, yaw_quat

    poses = motion.poses[WALK][:200]
    feats = F.poses_to_features(h1, poses, FPS)
    xy, psi = F.root_anchor(poses)
    kept, dropped = (F.features_to_poses(feats, xy, psi, FPS, drop_twist=d) for d in (False, True))
    assert np.abs(kept - dropped).max() < 1e-9
    twisted = feats.copy()
    tilt = mat_to_quat(rot6d_to_mat(feats[:, F.FEATURE_LAYOUT["root_tilt"]]))
    matrix = quat_to_mat(quat_mul(yaw_quat(np.full(len(tilt), np.radians(10.0))), tilt))
    twisted[:, F.FEATURE_LAYOUT["root_tilt"]] = np.concatenate([matrix[..., 0], matrix[..., 1]], axis=-1)
    shift = [np.degrees(wrap_angle(heading(F.features_to_poses(twisted, xy, psi, FPS, drop_twist=d)[:, 3:7])
                             - heading(poses[:, 3:7]))) for d in (False, True)]
    assert np.allclose(shift[0], 10.0, atol=1e-6) and np.abs(shift[1]).max() < 1e-6


def test_cached_windows_turn_back_into_their_poses(motion):
    """float32 standardized windows -> poses through MotionData.to_poses: max error < 1e-4."""
    idx = torch.arange(0, len(motion.val), 97)
    back = motion.to_poses("val", idx, motion.val[idx])
    truth = motion.window_poses("val", idx)
    assert back.shape == truth.shape == (len(idx), 32, POSE_DIM)
    quat_err = np.minimum(np.abs(back[..., 3:7] - truth[..., 3:7]).max(-1),
                          np.abs(back[..., 3:7] + truth[..., 3:7]).max(-1)).max()  # one sign per quaternion
    assert np.abs(back[..., :3] - truth[..., :3]).max() < 1e-4
    assert quat_err < 1e-4
    assert np.abs(back[..., 7:] - truth[..., 7:]).max() < 1e-4


def test_contacts_follow_the_gait(motion):
    walk = motion.features[WALK][:, F.FEATURE_LAYOUT["foot_contacts"]]
    assert set(np.unique(walk)) <= {0.0, 1.0}
    assert 0.4 < walk.mean() < 0.9  # each foot is down most of a walking cycle, but not always
    assert (walk.sum(axis=1) == 0).mean() < 0.2  # walking (not running): rarely both feet in the air


# --------------------------------------------------------------------------------------------------
# Windows, split, standardization


def test_windows_and_split(motion):
    assert len(motion.poses) == 40
    assert motion.val.clips == tuple(sorted(VAL_CLIPS))
    assert set(motion.train.clips) == set(motion.poses) - set(VAL_CLIPS)
    lengths = {c: len(p) for c, p in motion.poses.items()}
    assert sum(lengths.values()) == 264_705
    assert len(motion.train) == sum(lengths[c] - 31 for c in motion.train.clips)
    assert len(motion.val) == sum(lengths[c] - 31 for c in VAL_CLIPS)
    i = 12_345
    clip, start = motion.train.location(i)
    expect = motion.stats.normalize(motion.features[clip][start : start + 32].astype(np.float64))
    assert torch.allclose(motion.train[i], torch.from_numpy(expect).float(), atol=1e-5)
    assert motion.train[torch.tensor([i, i + 1])].shape == (2, 32, F.NUM_FEATURES)
    # the last window of each clip ends on the clip's last frame
    last = [k for k in range(len(motion.val)) if motion.val.location(k)[0] == "walk2_subject4"][-1]
    assert motion.val.location(last) == ("walk2_subject4", lengths["walk2_subject4"] - 32)


def test_stride_counts_windows(motion):
    strided = load_motion_data(REAL_DIR, window=16, stride=8, val_stride=16)
    lengths = {c: len(p) for c, p in motion.poses.items()}
    assert len(strided.train) == sum((lengths[c] - 16) // 8 + 1 for c in strided.train.clips)
    assert len(strided.val) == sum((lengths[c] - 16) // 16 + 1 for c in VAL_CLIPS)
    assert strided.train[0].shape == (16, F.NUM_FEATURES)
    assert np.allclose(strided.stats.mean, motion.stats.mean)  # statistics do not depend on the windowing


def write_clips(folder: Path, poses: dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, p in poses.items():
        (folder / f"{name}.csv").write_text(csv_text(p))
    return folder


def test_statistics_come_from_training_clips_only(motion, tmp_path):
    """Changing a validation clip leaves the statistics alone; changing a training clip does not (control)."""
    clips = {c: motion.poses[c][:300] for c in ("walk1_subject1", "run1_subject2", "walk2_subject4")}
    base = load_motion_data(REAL_DIR, source=write_clips(tmp_path / "a", clips))
    assert base.train.clips == ("run1_subject2", "walk1_subject1") and base.val.clips == ("walk2_subject4",)
    train_frames = np.concatenate([base.features[c] for c in base.train.clips])
    assert np.allclose(base.stats.mean, train_frames.astype(np.float64).mean(axis=0))
    std = base.train.frames.double()
    scaled = torch.from_numpy(~base.stats.near_constant)  # 300-frame clips leave a few tilt features near-constant
    assert std.mean(0).abs().max() < 1e-5 and (std.std(0, unbiased=False) - 1)[scaled].abs().max() < 1e-4

    changed_val = dict(clips, walk2_subject4=clips["walk2_subject4"] + np.r_[0, 0, 0.3, np.zeros(23)])
    other = load_motion_data(REAL_DIR, source=write_clips(tmp_path / "b", changed_val))
    assert np.array_equal(other.stats.mean, base.stats.mean) and np.array_equal(other.stats.scale, base.stats.scale)
    assert not torch.equal(other.val.frames, base.val.frames)

    changed_train = dict(clips, walk1_subject1=clips["walk1_subject1"] + np.r_[0, 0, 0.3, np.zeros(23)])
    control = load_motion_data(REAL_DIR, source=write_clips(tmp_path / "c", changed_train))
    assert not np.allclose(control.stats.mean, base.stats.mean)


def test_near_constant_features_are_centred_not_scaled():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, F.NUM_FEATURES)) * 3 + 1
    x[:, 0] = 0.7  # constant
    x[:, 1] = 2.0 + rng.normal(size=1000) * 1e-3  # variance 1e-6 < NEAR_CONSTANT_VARIANCE
    stats = fit_standardizer(x)
    assert stats.near_constant.tolist()[:3] == [True, True, False] and stats.near_constant.sum() == 2
    assert 1e-6 < NEAR_CONSTANT_VARIANCE
    z = stats.normalize(x)
    assert np.allclose(z[:, 0], 0) and np.allclose(z[:, 1], x[:, 1] - x[:, 1].mean())  # centred, scale 1
    assert np.allclose(z[:, 2:].std(axis=0), 1) and np.allclose(stats.denormalize(z), x)
    restored = Standardizer.from_dict(json.loads(json.dumps(stats.to_dict())))
    assert np.array_equal(restored.mean, stats.mean) and np.array_equal(restored.near_constant, stats.near_constant)
    zt = restored.normalize(torch.from_numpy(x).float())
    assert zt.dtype == torch.float32 and torch.allclose(zt, torch.from_numpy(z).float(), atol=1e-4)
    with pytest.raises(UserError, match="feature version"):
        Standardizer.from_dict(dict(stats.to_dict(), feature_version=F.FEATURE_VERSION + 1))


# --------------------------------------------------------------------------------------------------
# Bad inputs


def test_wrong_column_count_names_file_and_line(motion, tmp_path):
    lines = csv_text(motion.poses[WALK][:10]).splitlines()
    lines[2] = lines[2].rsplit(",", 1)[0]  # 25 columns on line 3
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "walk9_subject9.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"walk9_subject9\.csv: line 3 has 25 columns, expected 26"):
        read_clips(folder)
    with pytest.raises(UserError, match="line 2"):
        parse_csv("1" + ",0" * (CSV_COLUMNS - 1) + "\n" + "x" + ",0" * (CSV_COLUMNS - 1), "t.csv")
    (folder / "walk9_subject9.csv").write_text(",".join(["0.9"] * CSV_COLUMNS) + "\n")  # quaternion norm 1.8
    with pytest.raises(UserError, match=r"line 1: root quaternion has norm 1\.8"):
        read_clips(folder)


def test_truncated_archive_is_a_user_error(tmp_path):
    archive = find_source(REAL_DIR)
    assert archive.name.endswith(".tar.xz")
    cut = tmp_path / archive.name
    cut.write_bytes(archive.read_bytes()[: 1 << 20])
    with pytest.raises(UserError, match="corrupt or truncated archive"):
        read_clips(cut)
    cut.write_bytes(b"not an xz file at all")
    with pytest.raises(UserError, match="corrupt or truncated archive"):
        load_motion_data(REAL_DIR, source=cut)


def test_unknown_clip_lists_the_valid_ones(motion):
    with pytest.raises(UserError, match=r"unknown motion clip 'walk9_subject9'; valid clips: dance1_subject1, .*walk4"):
        load_motion_data(REAL_DIR, clips=["walk1_subject1", "walk9_subject9"])


def test_missing_data_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match="lafan1_h1_csv.tar.xz"):
        find_source(tmp_path)


# --------------------------------------------------------------------------------------------------
# Metrics and baselines


def standing(num_frames: int, drop: float = 0.0) -> np.ndarray:
    """The default pose with the soles ``drop`` m below the floor (0: touching it)."""
    pose = np.zeros((num_frames, POSE_DIM))
    pose[:, 2] = 1.1 - 0.0558 - drop
    pose[:, 3] = 1.0
    return pose


def test_metrics_known_answers(h1, motion):
    truth = motion.window_poses("val", [100, 2000])  # (2, 32, 26)
    assert mpjpe_mm(h1, truth, truth) == mpjpe_global_mm(h1, truth, truth) == 0.0
    assert joint_error_deg(truth, truth) == root_velocity_error_m_s(truth, truth, FPS) == 0.0

    moved = truth.copy()
    moved[..., 0] += 0.1  # the whole robot 10 cm along x
    assert mpjpe_mm(h1, moved, truth) < 1e-9
    assert mpjpe_global_mm(h1, moved, truth) == pytest.approx(100.0)
    bent = truth.copy()
    bent[..., 7:] += 0.1
    assert joint_error_deg(bent, truth) == pytest.approx(np.degrees(0.1))
    assert mpjpe_mm(h1, bent, truth) > 10
    ramp = truth.copy()
    ramp[..., 1] += 0.5 * np.arange(32) / FPS  # an extra 0.5 m/s sideways
    assert root_velocity_error_m_s(ramp, truth, FPS) == pytest.approx(0.5)

    assert ground_penetration_mm(h1, standing(4, drop=0.01)) == pytest.approx(10.0, abs=0.2)
    assert ground_penetration_mm(h1, standing(4, drop=-0.01)) == 0.0
    sliding = standing(10)
    sliding[:, 0] = 0.3 * np.arange(10) / FPS  # both feet down, sliding at 0.3 m/s
    assert foot_skating_m_s(h1, sliding, FPS) == pytest.approx(0.3)
    assert foot_skating_m_s(h1, standing(10), FPS) == 0.0
    lifted = sliding.copy()
    lifted[:, 2] += 0.2  # in the air: no contact, no skating
    assert foot_skating_m_s(h1, lifted, FPS) == 0.0
    # ... but it floats: the lower foot's height above the floor
    assert foot_float_mm(h1, lifted) == pytest.approx(200.0, abs=0.2)
    assert foot_float_mm(h1, standing(4, drop=-0.02)) == pytest.approx(20.0, abs=0.2)
    assert foot_float_mm(h1, standing(4, drop=0.01)) == 0.0  # sunk: penetration, not float
    one_up = standing(4)
    one_up[:, 7 + 3] = -0.8  # the left knee bent: the left foot 74 mm up, the right still on the floor
    assert foot_float_mm(h1, one_up) == 0.0
    # penetration is the mean over both feet of how deep each one is: the right 10 mm down, the left up
    lopsided = standing(4, drop=0.01)
    lopsided[:, 7 + 3] = -0.8
    assert ground_penetration_mm(h1, lopsided) == pytest.approx(5.0, abs=0.2)
    # the root velocity error is 3-d, and the joint error the mean of absolute differences
    rising = truth.copy()
    rising[..., 2] += 0.5 * np.arange(32) / FPS
    assert root_velocity_error_m_s(rising, truth, FPS) == pytest.approx(0.5)
    alternating = truth.copy()
    alternating[..., 7:] += 0.1 * (-1.0) ** np.arange(19)
    assert joint_error_deg(alternating, truth) == pytest.approx(np.degrees(0.1))
    # feet bobbing up and down on the spot (soles at 0 and 2 cm) do not skate: sliding is horizontal
    bobbing = standing(10)
    bobbing[:, 2] += 0.01 + 0.01 * (-1.0) ** np.arange(10)
    assert foot_skating_m_s(h1, bobbing, FPS) == 0.0
    contacts = F.poses_to_features(h1, bobbing, FPS)[:, F._layout()["foot_contacts"]]
    assert (contacts == 1).all()


def test_features_name_each_foot_and_measure_key_points_from_the_pelvis(h1):
    """The left knee bent lifts the left foot: contacts (left, right) read (0, 1). Key points are relative to the
    pelvis origin in the heading frame, whatever the pelvis's height and heading (the default pose's left ankle:
    the sums of the XML offsets). The metric points leave out the pelvis and the torso, whose origin is the
    pelvis's (a point that never errs would dilute the root-relative error)."""
    from daps.motion.metrics import METRIC_POINTS
    from daps.motion.rotations import yaw_quat

    one_up = standing(6)
    one_up[:, 7 + 3] = -0.8
    contacts = F.poses_to_features(h1, one_up, FPS)[:, F._layout()["foot_contacts"]]
    assert (contacts == [0.0, 1.0]).all()
    names = F.feature_names()
    ankle = [names.index(f"key_points/left_ankle.{c}") for c in "xyz"]
    for height in (1.1, 1.5):
        pose = np.zeros((2, POSE_DIM))
        pose[:, 2], pose[:, 3:7] = height, yaw_quat(0.8)
        assert np.allclose(F.poses_to_features(h1, pose, FPS)[:, ankle], [0.039468, 0.20286, -0.9742], atol=1e-9)
    bodies = {p.body for p in METRIC_POINTS}
    assert len(METRIC_POINTS) == 22 and not bodies & {"pelvis", "torso_link"}


def test_the_clips_are_30_frames_per_second_as_the_data_says(motion):
    """The data's README: 264,705 frames, 147 minutes at 30 fps."""
    frames = sum(len(p) for p in motion.poses.values())
    assert FPS == motion.fps == 30.0 and frames == 264_705
    assert frames / FPS / 60 == pytest.approx(147.06, abs=0.01)


def test_a_floating_copy_of_the_data_is_caught_by_the_float_measure(h1, motion):
    """Raising a ground-truth walk 2 cm changes no joint or velocity and makes its feet skate less (they no longer
    count as touching); the float measure rises by about the lift, so floating cannot pass for better contact."""
    truth = motion.window_poses("val", torch.arange(0, len(motion.val), 2800))  # 11 windows across the clips
    lifted = truth.copy()
    lifted[..., 2] += 0.02
    before, after = motion_metrics(h1, truth, truth, FPS), motion_metrics(h1, lifted, truth, FPS)
    # measured: skating 0.38 -> 0.21 m/s, float 2.2 -> 14.4 mm (frames in flight or sunk rise less than 20 mm)
    assert after["foot_skating_m_s"] < 0.7 * before["foot_skating_m_s"]  # what floating buys on skating
    assert after["foot_float_mm"] - before["foot_float_mm"] > 9.0
    assert after["gt_foot_float_mm"] == before["foot_float_mm"] == before["gt_foot_float_mm"]


def test_ground_truth_metrics_and_baselines(h1, motion):
    truth = motion.window_poses("val", torch.arange(0, len(motion.val), 400))  # (72, 32, 26)
    held = hold_first_pose(truth)
    assert (held == truth[:, :1]).all()
    keys = interpolate_keyframes(truth, every=8)
    assert np.allclose(keys[:, [0, 8, 16, 24, 31]], truth[:, [0, 8, 16, 24, 31]])
    line = truth.copy()
    line[..., 7:] = np.linspace(0, 1, 32)[:, None]  # joints linear in time: interpolation is exact
    assert np.allclose(interpolate_keyframes(line)[..., 7:], line[..., 7:])
    gt = motion_metrics(h1, truth, truth, FPS)
    assert 0 < gt["gt_ground_penetration_mm"] < 10 and 0 < gt["gt_foot_skating_m_s"] < 1
    m_hold, m_keys = motion_metrics(h1, held, truth, FPS), motion_metrics(h1, keys, truth, FPS)
    assert m_hold["foot_skating_m_s"] == 0.0  # a frozen pose cannot slide
    for key in ("mpjpe_mm", "mpjpe_global_mm", "joint_error_deg", "root_velocity_error_m_s"):
        assert 0 < m_keys[key] < m_hold[key]


# --------------------------------------------------------------------------------------------------
# Pictures


def test_render_side_by_side_writes_a_readable_mp4(h1, motion, tmp_path):
    imageio = pytest.importorskip("imageio.v2", reason="rendering needs imageio: pip install imageio imageio-ffmpeg")
    pytest.importorskip("imageio_ffmpeg", reason="rendering needs imageio-ffmpeg")
    from daps.motion.render import render_side_by_side

    truth = np.repeat(motion.window_poses("val", [500])[0, :1], 4, axis=0)  # one pose held for 4 frames
    pred = truth.copy()
    pred[2:, 0] += 0.5  # the reconstruction jumps 0.5 m forward at frame 2
    try:
        out = render_side_by_side(h1, truth, pred, tmp_path / "clip.mp4", width=64, height=64)
    except UserError as e:
        if "no OpenGL backend" in str(e):
            pytest.skip(str(e))
        raise
    reader = imageio.get_reader(out)
    frames = np.stack([f for f in reader]).astype(float)  # (T, H, 2W, 3)
    reader.close()
    assert frames.shape == (4, 64, 128, 3)
    left, right = frames[:, :, :64], frames[:, :, 64:]
    left_change, right_change = (np.abs(np.diff(x, axis=0)).mean(axis=(1, 2, 3)) for x in (left, right))  # (T-1,)
    assert left_change.max() < 1.5 and right_change[[0, 2]].max() < 1.5 and right_change[1] > 3
    left_orange, right_orange = (((x[..., 0] - x[..., 2]) > 80).mean() for x in (left, right))
    assert right_orange > 0.01 > left_orange  # the reconstruction is drawn orange, the ground truth grey
    assert frames.std() > 5  # not a blank image
    assert not list(tmp_path.glob(".*tmp*"))


def test_a_video_is_rendered_frame_by_frame_as_it_is_written(h1, motion, tmp_path, monkeypatch):
    """A long video is never held in memory (an hour of ``robot plan`` at 320 pixels would be ~33 GB): the writer
    gets each time step's frame right after its views are rendered, and the renderer is closed at the end. Fails
    on: every frame rendered into a list before writing."""
    import daps.motion.render as render

    rendered: list = []

    class Counting:  # MuJoCo's renderer, counting its frames
        def update_scene(self, data, camera):
            pass

        def render(self):
            rendered.append("frame")
            return np.zeros((16, 16, 3), np.uint8)

        def close(self):
            rendered.append("closed")

    monkeypatch.setattr(render, "_renderer", lambda model, width, height: Counting())
    seen: list[int] = []

    def write(frames, path, fps):
        for frame in frames:
            assert frame.shape == (16, 32, 3)
            seen.append(rendered.count("frame"))
        return path

    monkeypatch.setattr(render, "_write_mp4", write)
    poses = np.repeat(motion.window_poses("val", [500])[0, :1], 50, axis=0)
    render.render_side_by_side(h1, poses, poses, tmp_path / "clip.mp4", width=16, height=16)
    assert seen == [2 * (t + 1) for t in range(50)] and rendered[-1] == "closed"


def test_render_larger_than_the_default_framebuffer(h1, motion, tmp_path):
    """MuJoCo's offscreen framebuffer is 640 x 640 unless the model says otherwise: larger views must still work
    (they failed as 'no OpenGL backend')."""
    imageio = pytest.importorskip("imageio.v2", reason="rendering needs imageio: pip install imageio imageio-ffmpeg")
    pytest.importorskip("imageio_ffmpeg", reason="rendering needs imageio-ffmpeg")
    from daps.motion.render import render_motion

    poses = motion.window_poses("val", [500])[0, :2]
    try:
        out = render_motion(h1, poses, tmp_path / "big.mp4", width=656, height=672)
    except UserError as e:
        if "no OpenGL backend" in str(e) and "framebuffer" not in repr(e.__cause__):
            pytest.skip(str(e))
        raise
    reader = imageio.get_reader(out)
    frames = np.stack([f for f in reader])
    reader.close()
    assert frames.shape == (2, 672, 656, 3) and frames.std() > 5


def test_plot_feature_trajectories(motion, tmp_path):
    from PIL import Image

    from daps.motion.render import plot_feature_trajectories

    truth = motion.features[WALK][:64]
    out = plot_feature_trajectories(truth, truth + 0.05, tmp_path / "features.png")
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size[0] > 300
    with pytest.raises(UserError, match="unknown feature"):
        plot_feature_trajectories(truth, truth, tmp_path / "x.png", names=["joint_angles/tail"])


def test_the_judges_real_reference_is_held_out_where_the_kind_has_a_validation_clip(motion):
    """``robot eval``'s "real" kind accuracy scores windows of held-out clips (walk and run have one), and
    training windows only for kinds without one (jump). Scoring training windows throughout would flatter the judge;
    this path never ran in the end-to-end test (which passes --no-classifier)."""
    from daps.data.motion import MOTION_TYPES, window_kinds
    from daps.robot.evaluate import real_windows

    for name, source in (("walk", motion.val), ("run", motion.val), ("jump", motion.train)):
        kind = MOTION_TYPES.index(name)
        pick = np.nonzero(window_kinds(source).numpy() == kind)[0][:50]
        got = real_windows(motion, kind, limit=50)
        assert len(pick) == 50 and torch.equal(got, source[torch.as_tensor(pick)]), name
    assert MOTION_TYPES.index("jump") not in window_kinds(motion.val).numpy()


def test_a_damaged_feature_cache_is_rebuilt_and_a_one_frame_clip_refused(motion, tmp_path, monkeypatch, caplog):
    """The features of a source are cached by content. A cache file that is not an npz, or whose arrays have other
    shapes (an older feature layout under the same name), is reported and rebuilt from the clips, giving the same
    arrays, and the rebuilt file reads back; a clip of one frame (no velocity) is one line naming it. Fails on: a
    damaged cache read as it is (an exception, or features of the wrong width)."""
    import daps.motion.dataset as ds

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    source = tmp_path / "clips"
    source.mkdir()
    for name, first in (("walk9_subject9", 0), ("run9_subject9", 200)):
        (source / f"{name}.csv").write_text(csv_text(motion.poses[WALK][first:first + 12]))
    fresh = ds.load_clip_features(REAL_DIR, source=source)
    cache = ds.feature_cache_path(source, load_h1(REAL_DIR).path)
    assert cache.is_file() and sorted(fresh.features) == ["run9_subject9", "walk9_subject9"]

    def same(clips):
        return all(np.array_equal(clips.features[n], fresh.features[n]) and np.array_equal(clips.poses[n],
                                                                                         fresh.poses[n])
                   for n in fresh.features)

    for damage, said in ((lambda: cache.write_bytes(b"not an npz"), "ignoring unreadable motion feature cache"),
                         (lambda: np.savez(cache, names=np.array(["walk9_subject9"]), lengths=np.array([12]),
                                           poses=np.zeros((12, POSE_DIM)), features=np.zeros((12, 5))),
                          "with unexpected shapes; rebuilding it")):
        damage()
        caplog.clear()
        with caplog.at_level("WARNING"):
            assert same(ds.load_clip_features(REAL_DIR, source=source))
        assert said in caplog.text
        assert same(ds._read_cache(cache))  # rewritten whole
    (source / "walk9_subject9.csv").write_text(csv_text(motion.poses[WALK][:1]))
    cache.unlink()  # the key is the sources' digest: a changed clip is another cache file anyway
    with pytest.raises(UserError, match="clip walk9_subject9 has fewer than 2 frames"):
        ds.load_clip_features(REAL_DIR, source=source)


ROW = ",".join(["0"] * 3 + ["0", "0", "0", "1"] + ["0"] * (CSV_COLUMNS - 7))  # standing at the origin


@pytest.mark.parametrize("content, message", [
    (b"", "walk9_subject9.csv: empty file, expected rows of 26 comma-separated numbers"),
    (b"\n  \n", "empty file"),
    ((ROW + "\n" + ROW.replace("1", "nan", 1) + "\n").encode(), "walk9_subject9.csv: line 2 holds a non-finite value"),
    ((ROW + "\n" + ROW.replace("1", "inf", 1) + "\n").encode(), "line 2 holds a non-finite value"),
    ((ROW + "\n" + ROW + "\n" + ROW.replace("1", "one", 1) + "\n").encode(), "line 3 is not 26 numbers"),
    (ROW.encode() + b"\n\xff\n", "walk9_subject9.csv: not a text CSV"),
])
def test_each_bad_clip_file_is_one_line_naming_it(tmp_path, content, message):
    """A retargeted clip of one's own that is empty, holds NaN or inf, a word, or bytes that are not text: one line
    naming the file (and the line) rather than features computed from it; a folder without clips too. Fails on: a
    check removed (NaN poses would reach forward kinematics and the statistics)."""
    folder = tmp_path / "clips"
    folder.mkdir()
    (folder / "walk9_subject9.csv").write_bytes(content)
    with pytest.raises(UserError, match=message):
        read_clips(folder)
    (folder / "walk9_subject9.csv").write_text(ROW + "\n" + ROW + "\n")
    assert read_clips(folder)["walk9_subject9"].shape == (2, POSE_DIM)  # the same file with good rows reads
    (folder / "walk9_subject9.csv").unlink()
    (folder / "notes.txt").write_text("no clips here")
    with pytest.raises(UserError, match="holds no <clip>.csv files"):
        read_clips(folder)
