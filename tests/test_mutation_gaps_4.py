"""Known answers for behaviour that a mutation sweep of the robot code (daps/robot/: the tracker, physics checks,
planning, requests, examples, policy, evaluation and command line) found no test guarding. Each test names the
slip it fails on; the references are closed forms, hand-worked cases and round trips.

The simulation tests read the H1 model from ``$DAPS_DATA_DIR`` and skip without it.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

REAL_DIR = os.environ.get("DAPS_DATA_DIR")
needs_data = pytest.mark.skipif(not REAL_DIR, reason="DAPS_DATA_DIR not set (reads the H1 model)")
FPS = 30.0
WINDOW = 8


@pytest.fixture(scope="module")
def h1():
    if not REAL_DIR:
        pytest.skip("DAPS_DATA_DIR not set (reads the H1 model)")
    from daps.motion.h1 import load_h1

    return load_h1(REAL_DIR)


def _cfg(**changes):
    from daps.robot.tracker import TrackerConfig

    base = dict(envs=1, horizon=8, epochs=1, minibatch=8, hidden=16, progress=False, episode_seconds=10.0)
    return TrackerConfig(**{**base, **changes})


def _standing(h1, frames: int):
    """The H1 standing still in its default pose (soles on the floor) for ``frames`` frames."""
    from daps.robot.tracker import References, end_points

    poses = np.zeros((frames, 26))
    poses[:, 2], poses[:, 3] = 1.044, 1.0
    return References(["stand"], [poses], [np.zeros((frames, 25))], [end_points(h1, poses)],
                      [np.zeros((max(1, frames // WINDOW), 4), dtype=np.int64)], WINDOW)


# --------------------------------------------------------------------------------------------------
# The tracker's evaluation


@needs_data
def test_an_evaluation_that_reaches_the_references_end_standing_counts_no_fall(h1):
    """The PD servos alone keep the H1 standing on a 6-frame standing reference: the one start (frame 0) tracks 5
    frames and ends with the reference (a truncation, not a fall): survival 5/30 s, the whole of the time it had,
    and a fall fraction of 0. Fails on: the reference's end counted as a fall (fell = terminated or truncated)."""
    from daps.robot.tracker import evaluate_tracker

    result = evaluate_tracker(None, h1, _standing(h1, 6), _cfg(), FPS, seconds=1.0, starts_per_clip=1)
    assert result["episodes"] == 1.0
    assert result["survival_s"] == pytest.approx(5 / FPS)
    assert result["survival_fraction"] == pytest.approx(1.0)
    assert result["fall_fraction"] == 0.0



@needs_data
def test_evaluation_starts_are_the_window_starts_nearest_an_even_spread(h1, monkeypatch):
    """A 39-frame reference, 0.2 s (6 frames) per start, windows of 8 frames: the window starts that leave 6 frames
    of reference are windows 0..4 ((39 - 1 - 6) // 8 = 4). Four starts spread evenly over them are windows 0, 4/3,
    8/3 and 4, to the nearest window 0, 1, 3 and 4: frames 0, 8, 24 and 32. Fails on: the spread rounded down
    (windows 0, 1, 2, 4: the later part of the clip under-sampled)."""
    import daps.robot.tracker as tracker

    starts = []
    reset = tracker.TrackingEnvs.reset

    def recorded(self, i, clip=None, frame=None):
        if clip is not None:
            starts.append((clip, frame))
        return reset(self, i, clip, frame)

    monkeypatch.setattr(tracker.TrackingEnvs, "reset", recorded)
    result = tracker.evaluate_tracker(None, h1, _standing(h1, 39), _cfg(), FPS, seconds=0.2, starts_per_clip=4)
    assert starts == [(0, 0), (0, 8), (0, 24), (0, 32)]
    assert result["episodes"] == 4.0


# --------------------------------------------------------------------------------------------------
# Tracking with a support wrench


@needs_data
def test_the_physics_trackers_joint_torque_damps_toward_the_reference_velocity(h1, monkeypatch):
    """The PD torque of :func:`daps.robot.physics.track` is kp (q_ref - q) + kd (qdot_ref - qdot). A reference whose
    left knee stays at 0 for two frames and reaches 0.1 rad at the third, tracked at one physics step per frame:
    the first step starts in frame 0's state (knee at 0, at frame 0's one-sided velocity 0) toward frame 1 (knee
    at 0, central-difference velocity 0.1 / (2/30) = 1.5 rad/s), so the knee's command is the damping alone,
    kd 6 x 1.5 = 9 Nm, and every other hinge's is 0. Fails on: the damping term dropped (a command of 0)."""
    from daps.motion.h1 import import_mujoco
    from daps.robot.physics import track

    mujoco = import_mujoco()
    poses = np.zeros((3, 26))
    poses[:, 2], poses[:, 3] = 1.1 - 0.0558 + 0.01, 1.0
    poses[2, 7 + 3] = 0.1  # left_knee_joint
    commands = []
    step = mujoco.mj_step

    def recorded(model, data, *args):
        commands.append((model, data.ctrl.copy()))
        return step(model, data, *args)

    monkeypatch.setattr(mujoco, "mj_step", recorded)
    track(h1, poses, FPS, substeps=1)
    model, ctrl = commands[0]
    for a in range(model.nu):
        name = mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_JOINT, model.actuator_trnid[a, 0])
        want = 6.0 * 1.5 if name == "left_knee_joint" else 0.0
        assert ctrl[a] == pytest.approx(want, abs=1e-9), name

# --------------------------------------------------------------------------------------------------
# Inverse-dynamics balance


@needs_data
@pytest.mark.parametrize("accel", [1.5, -1.5])
def test_the_centre_of_pressure_of_a_robot_accelerating_forward_moves_back(h1, accel):
    """The H1 in its default pose, both soles just above the floor, moving rigidly along x with acceleration
    ``accel`` (x = accel t^2 / 2). For a rigid body in translation (no change of angular momentum) the ground
    wrench has no moment about the centre of mass c, so its centre of pressure is the zero-moment point
    c_xy - c_z (accel, 0) / g: behind the centre of mass when speeding up, ahead of it when braking. The centre of
    mass is much nearer the heels than the toes, so speeding up at 1.5 m/s^2 puts the pressure point behind the
    soles (cop_outside_m its distance, not balanced) and braking keeps it on them (balanced). Fails on: the centre
    of pressure's x taken with the force's moment about the pelvis the wrong way round (m_y - p_z f_x)."""
    from daps.motion.h1 import FOOT_BODIES, forward_kinematics, points_world, sole_points
    from daps.robot.commands import centre_of_mass
    from daps.robot.physics import _hull, balance_check, distance_outside

    n = 5
    t = np.arange(n) / FPS
    poses = np.zeros((n, 26))
    poses[:, 3] = 1.0
    poses[:, 2] = 1.1 - 0.0558 + 0.01  # soles 1 cm above the floor
    poses[:, 0] = 0.5 * accel * t**2
    distances = []
    for pose in poses[1:-1]:  # balance_check's frames: those with a central second difference
        com = centre_of_mass(h1, pose)
        pos, rot = forward_kinematics(h1, pose)
        corners = np.concatenate([points_world(pos, rot, sole_points(f)) for f in FOOT_BODIES])
        zmp = com[:2] - com[2] * np.array([accel, 0.0]) / 9.81  # MuJoCo's gravity
        distances.append(distance_outside(zmp, _hull(corners[corners[:, 2] < 0.05][:, :2])))
    got = balance_check(h1, poses, FPS)
    assert got["pulling_fraction"] == 0.0
    assert got["cop_outside_m"] == pytest.approx(float(np.mean(distances)), abs=1e-6)
    if accel > 0:
        assert min(distances) > 0.05 and got["balanced_fraction"] == 0.0
    else:
        assert max(distances) == 0.0 and got["balanced_fraction"] == 1.0



@needs_data
def test_a_nearly_weightless_frame_adds_no_centre_of_pressure(h1):
    """The same rigid H1, soles at the floor, dropping at 0.97 g while speeding up forward at 2 m/s^2: the ground
    would have to push with (2/g, 0, 0.03) of the weight (root_force_bw the norm of that), a vertical force under
    the 5 % of the weight below which a frame counts as in flight. Such a frame is not balanced (the wrench is not
    negligible) and its centre of pressure, metres away from a division by the tiny vertical force, is not part of
    cop_outside_m (0 here: no frame has one). Fails on: the flight threshold taken as f_z <= 0 (the mean then
    holds a pressure point ~7 m behind the feet)."""
    from daps.robot.physics import balance_check

    g, ax, az = 9.81, 2.0, -0.97 * 9.81
    n = 5
    t = np.arange(n) / FPS
    poses = np.zeros((n, 26))
    poses[:, 3] = 1.0
    poses[:, 0] = 0.5 * ax * t**2
    poses[:, 2] = 1.1 - 0.0558 + 0.01 + 0.5 * az * t**2
    got = balance_check(h1, poses, FPS)
    assert got["root_force_bw"] == pytest.approx(np.hypot(ax / g, 1 + az / g), rel=1e-6)
    assert got["balanced_fraction"] == 0.0 and got["pulling_fraction"] == 0.0
    assert got["cop_outside_m"] == 0.0


@needs_data
def test_the_root_force_of_swinging_arms_is_the_mass_times_the_centre_of_mass_acceleration(h1):
    """Newton's law for the whole robot: with contacts off, the wrench at the free root is all that moves it, so
    its force is M (a_com - g). Both shoulders pitch with q(t) = 3 t + 30 t^2 (rad), speeding up: the arms' centres
    of mass swing on circles, so a_com holds centripetal terms in qdot^2. The reference differentiates the centre
    of mass of the continuous motion twice (step 1e-4 s). At 30 fps the central differences of a quadratic give
    the exact velocity and acceleration at each frame, so root_force_bw agrees to 1e-6. Fails on: the frame's
    velocity taken as the difference to the next frame (half a frame late: qdot 1 rad/s too fast)."""
    from daps.motion.h1 import JOINT_NAMES
    from daps.robot.commands import centre_of_mass
    from daps.robot.physics import balance_check

    shoulders = [7 + JOINT_NAMES.index(f"{side}_shoulder_pitch_joint") for side in ("left", "right")]

    def pose(t: float) -> np.ndarray:
        p = np.zeros(26)
        p[2], p[3] = 1.1, 1.0
        p[shoulders] = 3.0 * t + 30.0 * t * t
        return p

    poses = np.stack([pose(k / FPS) for k in range(5)])
    h, want = 1e-4, []
    for k in range(1, 4):  # balance_check's frames
        c = [centre_of_mass(h1, pose(k / FPS + d)) for d in (-h, 0.0, h)]
        accel = (c[0] - 2 * c[1] + c[2]) / h**2
        want.append(np.linalg.norm(accel + [0.0, 0.0, 9.81]) / 9.81)  # |M (a - g)| / (M g)
    assert max(want) - min(want) > 0.1  # the swing moves the centre of mass: not the weight alone
    assert balance_check(h1, poses, FPS)["root_force_bw"] == pytest.approx(float(np.mean(want)), rel=1e-6)

# --------------------------------------------------------------------------------------------------
# Planning


def test_blend_may_cover_a_whole_window_but_no_more():
    """``--blend`` moves each window's first frames onto the previous window's path: 0 (none) up to the window
    length (every frame, which blend_borders supports) are accepted, -1 and one frame more than a window are
    refused naming the window length. Fails on: a blend of exactly one window refused (0 <= blend < window)."""
    from daps.errors import UserError
    from daps.robot.plan import Planner

    planner = SimpleNamespace(window=8)
    for blend in (0, 1, 8):
        Planner.check_blend(planner, blend)
    for blend in (-1, 9):
        with pytest.raises(UserError, match=r"window length \(8 frames\), got " + str(blend)):
            Planner.check_blend(planner, blend)


# --------------------------------------------------------------------------------------------------
# A PPO update's exploration


@needs_data
def test_a_rollout_explores_with_the_policys_current_spread_per_joint(h1):
    """A policy of mean 0 whose spread was learned away from ``init_std``: joint j has standard deviation
    0.05 (j + 1). Its rollout's actions are those standard deviations times the generator's normal draws, step by
    step (2 frames of 1 simulation). Fails on: the actions drawn with the configured init_std instead of the
    policy's learned log_std (which at initialization, and only then, are the same)."""
    from daps.robot.tracker import Tracker, TrackingEnvs, ppo_update

    cfg = _cfg(envs=1, horizon=2, epochs=1, minibatch=2, init_std=0.3)
    torch.manual_seed(0)
    model = Tracker(4, 3, cfg)
    std = 0.05 * torch.arange(1, 20, dtype=torch.float32)
    with torch.no_grad():
        model.actor[-1].weight.zero_()
        model.actor[-1].bias.zero_()
        model.log_std.copy_(std.log())
    envs = TrackingEnvs(h1, _standing(h1, 12), cfg.envs, cfg, FPS, np.random.default_rng(0))
    envs.reset(0, 0, 0)
    sent = []
    step = envs.step

    def watched_step(actions, active=None):
        sent.append(actions.copy())
        return step(actions, active)

    envs.step = watched_step
    ppo_update(model, torch.optim.SGD(model.parameters(), lr=0.0), envs, cfg, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    assert len(sent) == 2
    for actions in sent:
        want = (std * torch.randn((1, 19), generator=g)).double().numpy()
        np.testing.assert_allclose(actions, want, rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------------------------------
# The command line


def test_track_eval_refuses_zero_starts_before_reading_the_tracker(tmp_path, capsys):
    """``--starts`` counts the starts per validation clip, at least 1: 0 is refused in one line naming the bound
    before the tracker folder is looked at, while 1 passes that check (and the missing folder is what is refused).
    Fails on: --starts 0 let through (an evaluation of no starts: means over nothing)."""
    from daps.cli import main

    missing = str(tmp_path / "no_tracker")
    assert main(["robot", "track-eval", missing, "--starts", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--starts >= 1" in err and "got 5.0 and 0" in err, err
    assert main(["robot", "track-eval", missing, "--starts", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--starts" not in err and "no_tracker" in err, err


# --------------------------------------------------------------------------------------------------
# robot eval, its heavy parts replaced by stand-ins


def test_robot_eval_tracks_and_reports_at_most_the_rollouts_it_made(monkeypatch, tmp_path):
    """``evaluate(rollouts=2, physics_rollouts=5)``: only 2 plans per request exist, so 2 are tracked in physics (and
    2 ground-truth segments), and the report's settings say 2, as the docstring promises ("the report's settings
    say how many were"). Stand-ins: a planner whose plans stand still, physics that records what it tracks.
    Fails on: physics_rollouts not capped at rollouts (the settings then claim 5 tracked plans)."""
    import daps.motion.dataset
    import daps.motion.h1
    import daps.motion.metrics
    import daps.robot.data
    import daps.robot.evaluate as ev
    import daps.robot.physics as physics

    window, windows, rollouts = 4, 2, 2

    class Planner:
        fps, device, class_names = 30.0, torch.device("cpu"), ["dance", "fall", "fight", "jump", "run", "walk"]

        def __init__(self, *args, **kwargs):
            self.window, self.window_seconds, self.data_dir = window, window / 30.0, "nowhere"
            self.cfg = SimpleNamespace(label_dropout=0.1)
            self.meta = {"velocity_ranges": {"walk": {"quartiles": [[0.5, 0, 0], [1.0, 0, 0], [1.5, 0, 0]]}}}

        def check_blend(self, blend):
            pass

        def request(self, motion, velocity):
            return self.class_names.index(motion), np.array(velocity)

        def rollout(self, labels, velocity, guidance, temperature, generator, blend):
            b, w, _ = velocity.shape
            poses = np.zeros((b, w * window, 26))
            poses[..., 3] = 1.0
            return SimpleNamespace(poses=poses, velocity=velocity, codes=torch.zeros(b, w, 2, dtype=torch.long),
                                   windows=np.zeros((b, w, window, 3)), labels=labels)

    tracked = []

    def track(h1, poses, fps):
        tracked.append(poses)
        return SimpleNamespace(summary=lambda: {"support_force_bw": 0.5})

    truth = np.zeros((rollouts, windows * window, 26))
    truth[..., 3] = 1.0
    monkeypatch.setattr(ev, "Planner", Planner)
    monkeypatch.setattr(physics, "track", track)
    monkeypatch.setattr(physics, "balance_check", lambda h1, poses, fps: {"balanced_fraction": 1.0})
    monkeypatch.setattr(daps.motion.h1, "load_h1", lambda d: "h1")
    monkeypatch.setattr(daps.motion.dataset, "load_motion_data", lambda *a, **k: "motion")
    monkeypatch.setattr(daps.motion.metrics, "foot_skating_m_s", lambda h1, poses, fps: 0.0)
    monkeypatch.setattr(daps.motion.metrics, "foot_float_mm", lambda h1, poses: 0.0)
    monkeypatch.setattr(ev, "resolve_checkpoint", lambda p: tmp_path / "run" / "checkpoints" / "step_1")
    monkeypatch.setattr(daps.robot.data, "load_commands",
                        lambda path: ({"train": SimpleNamespace(codes=torch.zeros(1, 2))}, {}))
    monkeypatch.setattr(ev, "ground_truth_segments", lambda *a: (truth, np.zeros((rollouts, windows * window, 3))))
    monkeypatch.setattr(ev, "reconstruction_velocity_error", lambda planner, feats: np.zeros(3))
    monkeypatch.setattr(ev, "com_agreement", lambda *a: {})
    result = ev.evaluate("policy", ["walk"], rollouts=rollouts, windows=windows, physics_rollouts=5,
                         classifier=False)
    assert len(tracked) == rollouts + 3 * rollouts  # the ground truth once, then each of the three requests
    assert result["settings"]["physics_rollouts"] == rollouts
    assert all(r["support_force_bw"] == 0.5 and r["gt_balanced_fraction"] == 1.0 for r in result["rows"])
