"""Known answers for behaviour that a fourteenth mutation sweep, of the tracker (daps/robot/tracker.py), the readers of
one's own ``arrays`` and ``sequences`` files, the data paths and the distributed helpers, found no test guarding:
the tracker's settings and update count, its random starts, PD servos, frame length, clipped and remembered
actions, the pelvis offset the critic sees, the orientation error's sign-blind quaternion, the time limit, the
input clamp, the first policy and its spread, the separate code embeddings of actor and critic, a PPO update's
sampling, observations after a reset, statistics, KL, step size and logged rates, and the evaluation's figures;
the readers' and the paths' checks; the backend, timeout and device checks of ``dist.setup``. Each test names the
plausible slip it fails on (each checked against its mutant).

The simulation tests read the H1 model from ``$DAPS_DATA_DIR`` and skip without it.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from daps.config import DataConfig
from daps.errors import UserError
from daps.robot.tracker import (
    References,
    RunningNorm,
    Tracker,
    TrackerConfig,
    TrackingEnvs,
    end_points,
    evaluate_tracker,
    ppo_update,
)

pytestmark = pytest.mark.usefixtures("single_thread")

REAL_DIR = os.environ.get("DAPS_DATA_DIR")
FPS = 30.0
WINDOW = 8


def _cfg(**changes) -> TrackerConfig:
    base = dict(envs=1, horizon=8, epochs=1, minibatch=8, hidden=16, progress=False, episode_seconds=10.0)
    return TrackerConfig(**{**base, **changes})


# --------------------------------------------------------------------------------------------------
# The tracker's settings and its network (no simulation)


def test_tracker_settings_take_their_documented_bounds_and_round_frames_up_to_whole_updates():
    """gamma = lam = 1 (no discount: the plain return) and target_kl = 0 (a fixed step size) are valid; a zero step
    size, scale or distance is not. 17 frames of 16 per update are 2 updates. Fails on: [0, 1) for gamma, >= 0 for
    the positive settings, or frames rounded down."""
    _cfg(gamma=1.0, lam=1.0, target_kl=0.0, value_coef=0.0).validate()
    for name in ("lr", "action_scale", "terminate_distance", "clip"):
        with pytest.raises(UserError, match=f"{name} must be a positive number, got 0"):
            _cfg(**{name: 0.0}).validate()
    with pytest.raises(UserError, match="gamma must be in"):
        _cfg(gamma=1.01).validate()
    assert TrackerConfig(frames=17, envs=2, horizon=8).updates == 2
    assert TrackerConfig(frames=16, envs=2, horizon=8).updates == 1


def test_the_first_policy_acts_near_zero_with_the_configured_spread_and_inputs_are_clamped():
    """A new tracker's actions are Gaussian with standard deviation ``init_std`` (log_std = log 0.3) around a mean of
    almost nothing (the actor's last layer scaled by 0.01: the PD servos alone start on the reference); the
    standardized inputs are clamped to +-5. Fails on: log_std = init_std, the last layer left at its default
    scale, or the clamp dropped."""
    torch.manual_seed(0)
    model = Tracker(4, 3, _cfg(hidden=16, init_std=0.3))
    n = 5
    g = torch.Generator().manual_seed(0)
    obs = (torch.randn(n, 63, generator=g), torch.rand(n, 1, generator=g), torch.randint(0, 3, (n, 4), generator=g),
           torch.randn(n, 26, generator=g))
    dist, _ = model(*obs)
    torch.testing.assert_close(dist.stddev, torch.full((n, 19), 0.3))
    # torch's default Linear init bounds a weight by 1 / sqrt(fan_in); the last layer is a hundredth of that
    assert float(model.actor[-1].weight.detach().abs().max()) <= 0.01 / math.sqrt(16) and not model.actor[-1].bias.any()
    norm = RunningNorm(3)  # mean 0, variance 1: the inputs themselves, clamped
    torch.testing.assert_close(norm(torch.tensor([[7.0, -9.0, 2.5]])), torch.tensor([[5.0, -5.0, 2.5]]))


def test_the_actor_and_the_critic_each_embed_the_codes_their_own_way():
    """The actor's mean depends on the codes through ``embed`` only and the value through ``critic_embed`` only: a
    shared embedding would let the value loss move the actor's input. Fails on: the actor mixing in the critic's
    embedded codes."""
    torch.manual_seed(0)
    model = Tracker(4, 3, _cfg())
    with torch.no_grad():
        model.actor[-1].weight.normal_()  # a first layer of 0.01 scale still passes gradients; make them plain
    obs = (torch.randn(2, 63), torch.rand(2, 1), torch.tensor([[0, 1, 2, 1], [2, 2, 0, 1]]), torch.randn(2, 26))
    dist, value = model(*obs)
    actor_grads = torch.autograd.grad(dist.mean.sum(), [model.embed.weight, model.critic_embed.weight],
                                      allow_unused=True)
    critic_grads = torch.autograd.grad(value.sum(), [model.embed.weight, model.critic_embed.weight],
                                       allow_unused=True)
    assert actor_grads[0] is not None and actor_grads[0].abs().sum() > 0
    assert actor_grads[1] is None or not actor_grads[1].any()
    assert critic_grads[0] is None or not critic_grads[0].any()
    assert critic_grads[1] is not None and critic_grads[1].abs().sum() > 0


# --------------------------------------------------------------------------------------------------
# The simulation


@pytest.fixture(scope="module")
def h1():
    if not REAL_DIR:
        pytest.skip("DAPS_DATA_DIR not set (reads the H1 model)")
    from daps.motion.h1 import load_h1

    return load_h1(REAL_DIR)


def _standing(h1, frames: int, shift_from_1: float = 0.0) -> References:
    """The H1 standing still (the default pose, soles on the floor) for ``frames`` frames, its pelvis moved
    ``shift_from_1`` metres forward from frame 1 on (a reference that leaves the robot at once)."""
    poses = np.zeros((frames, 26))
    poses[:, 2], poses[:, 3] = 1.044, 1.0
    poses[1:, 0] += shift_from_1
    return References(["stand"], [poses], [np.zeros((frames, 25))], [end_points(h1, poses)],
                      [np.zeros((max(1, frames // WINDOW), 4), dtype=np.int64)], WINDOW)


@pytest.mark.skipif(not REAL_DIR, reason="DAPS_DATA_DIR not set")
def test_random_starts_leave_a_frame_to_track(h1):
    """An episode starts at a random frame that has a next frame to track (0..N-2 of N), each of them drawn.
    Fails on: a start drawn from 0..N-1 (its first step reads past the reference)."""
    envs = TrackingEnvs(h1, _standing(h1, 3), 1, _cfg(), FPS, np.random.default_rng(0))
    starts = set()
    for _ in range(60):
        envs.reset(0)
        starts.add(int(envs.frame[0]))
    assert starts == {0, 1}


@pytest.mark.skipif(not REAL_DIR, reason="DAPS_DATA_DIR not set")
def test_servos_are_clipped_pd_controllers_and_a_frame_is_a_thirtieth_of_a_second(h1):
    """Each hinge's motor gives kp (target - q) - kd qdot (the gains of JOINT_GAINS by the joint's name), clipped
    to the motor's range (the model's ctrlrange), and one step advances the simulation by exactly 1/30 s. Fails on:
    no damping, no torque limit, or the time step left at 2 ms (17 x 2 ms = 34 ms a frame)."""
    from daps.motion.h1 import import_mujoco
    from daps.robot.physics import JOINT_GAINS

    mujoco = import_mujoco()
    envs = TrackingEnvs(h1, _standing(h1, 4), 1, _cfg(), FPS, np.random.default_rng(0))
    envs.reset(0, 0, 0)
    envs.step(np.zeros((1, 19)))
    d = envs.data[0]
    assert d.time == pytest.approx(1 / FPS, abs=1e-12)
    model = envs.model
    hinges = []  # (actuator, qpos index, dof index, kp, kd, motor range) of each servo, by the joint's name
    for a in range(model.nu):
        joint = model.actuator_trnid[a, 0]
        name = mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_JOINT, joint)
        gains = [g for key, g in JOINT_GAINS.items() if key in name]
        if gains:
            hinges.append((a, model.jnt_qposadr[joint], model.jnt_dofadr[joint], *gains[0],
                           h1.model.actuator_ctrlrange[a]))
    assert len(hinges) == 19
    for offset, speed in ((0.05, 0.5), (2.0, -3.0)):  # within every motor's range; beyond it
        mujoco.mj_resetData(model, d)
        d.qpos[2], d.qpos[3] = 1.044, 1.0
        for a, q, v, _, _, _ in hinges:
            d.ctrl[a], d.qpos[q], d.qvel[v] = 0.1, 0.1 + offset, speed
        mujoco.mj_forward(model, d)
        for a, _, _, kp, kd, (lo, hi) in hinges:
            want = min(max(kp * -offset - kd * speed, lo), hi)
            assert d.actuator_force[a] == pytest.approx(want, rel=1e-9, abs=1e-9), (a, offset)


@pytest.mark.skipif(not REAL_DIR, reason="DAPS_DATA_DIR not set")
def test_actions_are_clipped_remembered_and_forgotten_at_a_reset(h1):
    """An action of 10 is clipped to action_clip = 4: each servo's target is the next frame's joint angle plus 0.25 x
    4 rad, and the observation's previous action is 4; a reset starts with a previous action of 0. Fails on: the
    actions applied unclipped, the unclipped action remembered, or the previous action kept over a reset."""
    refs = _standing(h1, 6)
    envs = TrackingEnvs(h1, refs, 1, _cfg(), FPS, np.random.default_rng(0))
    envs.reset(0, 0, 0)
    envs.step(np.full((1, 19), 10.0))
    d, model = envs.data[0], envs.model
    hinges = [a for a in range(model.nu) if 7 <= model.jnt_qposadr[model.actuator_trnid[a, 0]] < 26]
    assert len(hinges) == 19
    for a in hinges:
        assert d.ctrl[a] == pytest.approx(refs.poses[0][1][model.jnt_qposadr[model.actuator_trnid[a, 0]]] + 1.0)
    proprio = envs.observe()[0]
    assert np.array_equal(proprio[0, 44:63], np.full(19, 4.0))
    envs.reset(0, 0, 2)
    assert not envs.observe()[0][0, 44:63].any()


@pytest.mark.skipif(not REAL_DIR, reason="DAPS_DATA_DIR not set")
def test_the_critic_sees_the_pelvis_offset_from_the_reference_as_pelvis_minus_reference(h1):
    """Moved 10 cm forward and 5 cm right of the reference's pelvis, the critic's offset reads (0.1, -0.05, 0).
    Fails on: the offset taken as reference minus pelvis."""
    envs = TrackingEnvs(h1, _standing(h1, 6), 1, _cfg(), FPS, np.random.default_rng(0))
    envs.reset(0, 0, 2)
    envs.data[0].qpos[0] += 0.1
    envs.data[0].qpos[1] -= 0.05
    np.testing.assert_allclose(envs.observe()[3][0, 19:22], [0.1, -0.05, 0.0], atol=1e-12)


@pytest.mark.skipif(not REAL_DIR, reason="DAPS_DATA_DIR not set")
def test_a_reference_quaternion_of_the_other_sign_is_the_same_orientation(h1):
    """q and -q are one rotation: a reference whose pelvis quaternions are negated (from frame 1 on) scores exactly
    as the original. Fails on: the angle taken from the signed dot product (a turn of 2 pi: the pose term ~0)."""
    refs = _standing(h1, 6)
    flipped = _standing(h1, 6)
    flipped.poses[0][1:, 3:7] *= -1
    rewards = []
    for reference in (refs, flipped):
        envs = TrackingEnvs(h1, reference, 1, _cfg(), FPS, np.random.default_rng(0))
        envs.reset(0, 0, 0)
        rewards.append([float(envs.step(np.zeros((1, 19)))[0][0]) for _ in range(4)])
    assert rewards[0] == rewards[1] and min(rewards[0]) > 0.9


@pytest.mark.skipif(not REAL_DIR, reason="DAPS_DATA_DIR not set")
def test_the_time_limit_truncates_after_exactly_its_frames(h1):
    """episode_seconds = 0.1 at 30 fps is 3 frames: the third step truncates the episode with length 3 (a time
    limit, not a fall), the two before it do not. Fails on: age > max_frames (one frame late)."""
    envs = TrackingEnvs(h1, _standing(h1, 20), 1, _cfg(episode_seconds=0.1), FPS, np.random.default_rng(0))
    envs.reset(0, 0, 0)
    for frame in range(1, 4):
        _, terminated, truncated, info = envs.step(np.zeros((1, 19)))
        assert not terminated[0] and truncated[0] == (frame == 3) and info["length"][0] == (3 if frame == 3 else 0)


@pytest.mark.skipif(not REAL_DIR, reason="DAPS_DATA_DIR not set")
def test_a_simulations_state_carries_its_episode_counters_and_last_action(h1):
    """What a checkpoint keeps of the simulations, set into fresh ones: the same reference frame, episode age and
    previous action, so the same observations and the same time limit. Fails on: the age or the previous action
    left at the fresh simulations' own."""
    refs = _standing(h1, 20)
    first = TrackingEnvs(h1, refs, 2, _cfg(), FPS, np.random.default_rng(0))
    first.reset(0, 0, 2)
    first.reset(1, 0, 5)
    for _ in range(3):
        first.step(np.full((2, 19), 0.5))
    again = TrackingEnvs(h1, refs, 2, _cfg(), FPS, np.random.default_rng(1))
    again.set_state(first.get_state())
    assert again.frame.tolist() == [5, 8] and again.age.tolist() == [3, 3]
    assert np.array_equal(again.prev_action, np.full((2, 19), 0.5))
    for a, b in zip(again.observe(), first.observe()):
        assert np.array_equal(a, b)


# --------------------------------------------------------------------------------------------------
# One PPO update, watched from outside


@pytest.fixture(scope="module")
def watched_update(h1):
    """One PPO update of 2 simulations x 6 frames in which every step is a fall (terminate_distance ~0: every
    episode is one frame, and every step follows a reset), with a policy whose mean is 0 and an optimizer that moves
    only log_std: what the simulations were given and saw, the forward passes' inputs, the spread after each
    optimizer step, and the returned row."""
    cfg = _cfg(envs=2, horizon=6, epochs=2, minibatch=12, terminate_distance=1e-9, value_coef=0.0)
    torch.manual_seed(0)
    model = Tracker(4, 3, cfg)
    with torch.no_grad():  # a mean of exactly 0 whatever the input
        model.actor[-1].weight.zero_()
        model.actor[-1].bias.zero_()
    envs = TrackingEnvs(h1, _standing(h1, 40), cfg.envs, cfg, FPS, np.random.default_rng(0))
    seen, truth, sent = [], [], []
    model.register_forward_pre_hook(lambda m, args: None if m.training else seen.append([a.clone() for a in args]))
    step = envs.step

    def watched_step(actions, active=None):
        truth.append(envs.observe())  # the state each action is taken from
        sent.append(actions.copy())
        return step(actions, active)

    envs.step = watched_step
    optimizer = torch.optim.SGD([model.log_std], lr=0.5)
    stds = []
    opt_step = optimizer.step

    def watched_opt_step(*args, **kwargs):
        out = opt_step(*args, **kwargs)
        stds.append(model.log_std.detach().exp().double().numpy().copy())
        return out

    optimizer.step = watched_opt_step
    row = ppo_update(model, optimizer, envs, cfg, torch.Generator().manual_seed(7))
    return dict(model=model, seen=seen, truth=truth, sent=sent, stds=stds, row=row)


def _log_normal(a: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Summed log-density of actions ``a (N, 19)`` under N(0, std^2) per joint: ``(N,)``."""
    return (-a**2 / (2 * std**2) - np.log(std) - 0.5 * np.log(2 * np.pi)).sum(-1)


@pytest.mark.skipif(not REAL_DIR, reason="DAPS_DATA_DIR not set")
def test_a_rollout_samples_its_actions_and_acts_on_the_state_after_each_reset(watched_update):
    """The actions are the mean (0) plus init_std times the generator's first normal draws, step by step; the
    policy is given the observation of the state each action is taken from, the reset one after an episode ends.
    Fails on: the mean action sent (no exploration), or the finished episode's last observation used after its
    reset."""
    w = watched_update
    g = torch.Generator().manual_seed(7)
    for h, actions in enumerate(w["sent"]):
        noise = torch.randn((2, 19), generator=g)
        np.testing.assert_allclose(actions, (0.3 * noise).double().numpy(), rtol=1e-6)
        for k in range(4):
            assert torch.equal(w["seen"][2 * h][k], torch.as_tensor(w["truth"][h][k]).to(w["seen"][2 * h][k].dtype))


@pytest.mark.skipif(not REAL_DIR, reason="DAPS_DATA_DIR not set")
def test_an_updates_row_counts_falls_and_seconds_and_its_input_statistics(watched_update):
    """Every step a fall: 12 episodes of one frame, so a fall rate of 1 and episodes of 1/30 s; the input statistics
    then hold the rollout's proprioception and privileged inputs in that order. Fails on: falls counted from the
    time limits, episode lengths in frames, or the statistics fed (privileged, proprio)."""
    w = watched_update
    row = w["row"]
    assert row["episodes"] == 12 and row["fall_rate"] == 1.0
    assert row["episode_s"] == pytest.approx(1 / FPS)
    inputs = np.concatenate([np.concatenate([p, q], -1) for p, _, _, q in w["truth"]]).astype(np.float32)
    norm = w["model"].norm
    assert norm.count.item() == 12
    np.testing.assert_allclose(norm.mean.numpy(), inputs.astype(np.float64).mean(0), rtol=1e-9, atol=1e-9)


@pytest.mark.skipif(not REAL_DIR, reason="DAPS_DATA_DIR not set")
def test_an_updates_kl_clip_fraction_and_next_step_size_are_those_of_its_policies(watched_update):
    """With the mean fixed at 0 only the spread moves: KL(old || new) is the rollout's mean of r - 1 - log r for
    r = N(a; 0, new std) / N(a; 0, 0.3); the clip fraction is the share of |r - 1| > 0.2 per minibatch (0 at the
    first, whose policy is the old one), and the next step size is divided by 1.5 (KL above twice 0.01), multiplied
    by 1.5 up to 1e-2 (below half of it) or kept. Fails on: r - 1 + log r, only ratios above 1.2 clipped, or the
    step size left as it was."""
    w = watched_update
    actions = np.concatenate(w["sent"]).astype(np.float32).astype(np.float64)
    old = _log_normal(actions, np.full(19, 0.3))
    log_r = _log_normal(actions, w["stds"][-1]) - old
    kl = float(np.mean(np.exp(log_r) - 1 - log_r))
    row = w["row"]
    assert kl > 1e-4 and row["approx_kl"] == pytest.approx(kl, rel=1e-3)
    second = np.exp(_log_normal(actions, w["stds"][0]) - old)  # the second minibatch (epoch 2): after one step
    clipped = float(np.mean(np.abs(second - 1) > 0.2))
    assert 0 < clipped and row["clip_fraction"] == pytest.approx((0 + clipped) / 2)
    want = 0.5 / 1.5 if kl > 0.02 else (1e-2 if kl < 0.005 else 0.5)
    assert row["lr"] == pytest.approx(want)


# --------------------------------------------------------------------------------------------------
# Evaluation


@pytest.mark.skipif(not REAL_DIR, reason="DAPS_DATA_DIR not set")
def test_evaluation_of_references_left_at_once_counts_falls_seconds_and_errors(h1):
    """Two references that move the pelvis 31 cm ahead after their first frame (every start falls at its first
    step): 38 frames (window starts with a full second of reference after them: frame 0 only, as (38 - 1 - 30) // 8
    = 0) and 16 frames (0.5 s of reference from frame 0). So 2 episodes, each 1/30 s, both falls; survival
    fractions 1/30 and 1/15 of the time each had; the joint and end-point errors of the one frame each tracked
    (the end points of the references moved 1 cm sideways). Fails on: a start at frame 8 (too little room), the
    fractions over N - first frames, falls taken from the truncations, seconds counted as frames, or the end-point
    error summed rather than averaged."""
    # the simulation after one frame from the standing pose, under zero actions (the PD servos on the reference)
    recorder = TrackingEnvs(h1, _standing(h1, 4), 1, _cfg(), FPS, np.random.default_rng(0))
    recorder.reset(0, 0, 0)
    recorder.step(np.zeros((1, 19)))
    qpos = recorder.data[0].qpos[:26].copy()
    reached_ends = end_points(h1, qpos[None])[0]
    refs = []
    for frames in (38, 16):
        r = _standing(h1, frames, shift_from_1=0.31)
        r.ends[0][1] = reached_ends + [0.0, 0.01, 0.0]
        refs.append(r)
    both = References(["long", "short"], [r.poses[0] for r in refs], [r.qvel[0] for r in refs],
                      [r.ends[0] for r in refs], [r.codes[0] for r in refs], WINDOW)
    result = evaluate_tracker(None, h1, both, _cfg(), FPS, seconds=1.0, starts_per_clip=2)
    assert result["episodes"] == 2.0 and result["fall_fraction"] == 1.0
    assert result["survival_s"] == pytest.approx(1 / FPS)
    assert result["survival_fraction"] == pytest.approx((1 / 30 + 1 / 15) / 2)
    assert result["end_error_mm"] == pytest.approx(10.0, abs=1e-6)
    assert result["joint_error_deg"] == pytest.approx(float(np.degrees(np.abs(qpos[7:26])).mean()), rel=1e-9)


@pytest.mark.skipif(not REAL_DIR, reason="DAPS_DATA_DIR not set")
def test_a_run_evaluates_checkpoints_and_summarizes_its_last_update(h1, tmp_path):
    """Three updates with evaluations and checkpoints every two: both also come at the last update (3), and the
    summary is that last evaluation. Fails on: the last update evaluated or checkpointed only on the period, or the
    summary taken from the first evaluation."""
    import json

    from daps.robot.tracker import train_tracker

    refs = _standing(h1, 40)
    meta = {"num_tokens": 4, "vocab_size": 3, "fps": FPS, "window": WINDOW, "data_dir": REAL_DIR}
    cfg = _cfg(envs=2, frames=48, eval_every=2, ckpt_every=2, keep_checkpoints=5, out_dir=str(tmp_path / "run"))
    run = train_tracker(cfg, references=({"train": refs, "val": refs}, meta), h1=h1)
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    val = [r for r in rows if r["split"] == "val"]
    assert [r["step"] for r in val] == [2, 3]
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir()) == ["step_00000002", "step_00000003"]
    summary = json.loads((run / "summary.json").read_text())
    assert {k: summary[k] for k in val[-1]} == val[-1]


# --------------------------------------------------------------------------------------------------
# dist.setup


def test_setup_picks_the_backend_by_the_training_device_with_the_step_timeout(monkeypatch):
    """Under torchrun (WORLD_SIZE=2) on a machine with CUDA: NCCL for CUDA training (a cuda device, or none given),
    gloo for CPU training, each with ``$DAPS_DIST_TIMEOUT_S``; a plain process may name an indexed device. Fails
    on: the backends swapped, CUDA's presence deciding over the device, the timeout not passed, or an indexed
    device refused outside torchrun."""
    from datetime import timedelta

    import torch.distributed as tdist

    from daps import dist

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert dist.setup(torch.device("cpu", 0)) == (0, 1)  # one plain process: any device of the machine
    calls = []
    monkeypatch.setattr(tdist, "init_process_group", lambda backend, timeout=None: calls.append((backend, timeout)))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("DAPS_DIST_TIMEOUT_S", "30")
    try:
        for device in (torch.device("cpu"), torch.device("cuda"), None):
            assert dist.setup(device) == (0, 2)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        dist.setup(None)
    finally:
        dist.teardown()
    assert calls == [(backend, timedelta(seconds=30)) for backend in ("gloo", "nccl", "nccl", "gloo")]


# --------------------------------------------------------------------------------------------------
# arrays: one's own images


def _gray(n: int, size: int = 4) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 256, (n, size, size), dtype=np.uint8)


def test_arrays_refuses_splits_of_other_channels_or_a_missing_test_split_in_one_line(tmp_path):
    """Train images of 3 channels and test images of 1 (the same height and width) are refused when training
    reads the file, as is a file without a test split, and the header reader names a missing split rather than
    raising KeyError. Fails on: the splits compared from the height on, or the test split assumed present."""
    from daps.data.arrays import image_shape, load_arrays

    path = tmp_path / "a.npz"
    np.savez(path, train=np.zeros((3, 3, 4, 4), np.uint8), test=np.zeros((3, 1, 4, 4), np.uint8))
    with pytest.raises(UserError, match=r"train images of shape \(3, 4, 4\) and test images of shape \(1, 4, 4\)"):
        load_arrays("train", path)
    np.savez(path, train=_gray(3))
    with pytest.raises(UserError, match="has no array 'test' \\(it holds train; needs 'train' and 'test'\\)"):
        load_arrays("train", path)
    with pytest.raises(UserError, match="has no array 'test'"):
        image_shape("test", path)


def test_arrays_class_names_must_be_a_list_of_strings_and_label_values_name_themselves(tmp_path):
    """Without class_names the names are the label values 0..max of both splits ("0", "1", "2"); class_names as
    bytes or as a column are refused; an empty split with its (empty) labels is allowed. Fails on: one name short,
    bytes names read as "b'a'", a 2-D array of names taken whole, or the minimum taken of no labels."""
    from daps.data.arrays import class_names

    path = tmp_path / "a.npz"
    np.savez(path, train=_gray(3), test=_gray(2), train_labels=np.array([0, 2, 1]), test_labels=np.array([1, 1]))
    assert class_names(path) == ("0", "1", "2")
    for names in (np.array([b"a", b"b", b"c"]), np.array([["a"], ["b"], ["c"]])):
        np.savez(path, train=_gray(3), test=_gray(2), train_labels=np.array([0, 2, 1]), class_names=names)
        with pytest.raises(UserError, match=r"\['class_names'\] must be 3 or more strings"):
            class_names(path)
    np.savez(path, train=_gray(3), test=np.zeros((0, 4, 4), np.uint8), train_labels=np.array([0, 1, 1]),
             test_labels=np.zeros(0, np.int64))
    assert class_names(path) == ("0", "1")


def test_arrays_warns_of_labels_in_one_split_naming_the_other_and_not_when_both_have_them(tmp_path, caplog):
    """Labels only for the test split: the warning says every *train* image is labelled 0; labels in both: no
    warning. Fails on: the unlabelled split always called test, or a warning whenever any split has labels."""
    from daps.data.arrays import load_arrays

    path = tmp_path / "a.npz"
    np.savez(path, train=_gray(3), test=_gray(2), test_labels=np.array([1, 0]))
    with caplog.at_level("WARNING"):
        load_arrays("train", path)
    assert "has test_labels but no train_labels: every train image is labelled 0" in caplog.text
    caplog.clear()
    np.savez(path, train=_gray(3), test=_gray(2), train_labels=np.zeros(3, np.int64), test_labels=np.array([1, 0]))
    with caplog.at_level("WARNING"):
        load_arrays("train", path)
    assert "labelled 0" not in caplog.text


# --------------------------------------------------------------------------------------------------
# sequences: one's own time series


def _sequence_config(path, window: int = 4, features: int = 2, stride: int = 1) -> DataConfig:
    return DataConfig(name="sequences", data_dir=str(path), image_shape=(1, window, features), window_stride=stride)


def _ramp(frames: int, features: int = 2, start: float = 0.0) -> np.ndarray:
    return start + np.arange(frames * features, dtype=np.float64).reshape(frames, features) ** 1.5


def test_sequences_read_integer_clips_and_refuse_more_than_two_axes(tmp_path):
    """Integer clips (uint8 sensor counts) are numbers and read as float64; a clip of three axes is refused. Fails
    on: unsigned integers refused, or only fewer than two axes refused."""
    from daps.data.sequences import read_clips

    path = tmp_path / "s.npz"
    counts = np.arange(12, dtype=np.uint8).reshape(6, 2)
    np.savez(path, **{"train/a": counts, "test/b": _ramp(6)})
    clips = read_clips(path)
    assert clips["train"]["a"].dtype == np.float64 and np.array_equal(clips["train"]["a"], counts)
    np.savez(path, **{"train/a": np.zeros((6, 2, 1)), "test/b": _ramp(6)})
    with pytest.raises(UserError, match=r"\['train/a'\] has shape \(6, 2, 1\) .*a clip is \(frames, F\) numbers"):
        read_clips(path)


def test_sequences_window_shape_and_test_windows_are_checked(tmp_path, caplog):
    """data.image_shape must be (1, T, F) with T >= 1 (2 channels or T = 0 refused); a test split of clips all
    shorter than T is refused like the training split; a clip of exactly T frames holds one window and draws no
    warning. Fails on: the channel count or T unchecked, only the training windows counted, or a clip of T frames
    reported as too short."""
    from daps.data.sequences import sequence_data

    path = tmp_path / "s.npz"
    np.savez(path, **{"train/a": _ramp(10), "test/b": _ramp(4)})
    for shape in ((2, 4, 2), (1, 0, 2)):
        with pytest.raises(UserError, match="data.image_shape must be \\(1, T, F\\) with F = 2"):
            sequence_data(DataConfig(name="sequences", data_dir=str(path), image_shape=shape))
    with caplog.at_level("WARNING"):
        loaded = sequence_data(_sequence_config(path))
    assert len(loaded.test) == 1 and "shorter than a window" not in caplog.text
    with pytest.raises(UserError, match="no test clip of .* is 5 frames long"):
        sequence_data(_sequence_config(path, window=5))


def test_sequences_keep_the_files_clip_order_and_record_their_statistics(tmp_path):
    """Clips are labelled in the file's order (b before a), and a run records the training frames' population
    standard deviation as ``scale`` and each split's window count. Fails on: the clips sorted by name, the mean
    recorded as the scale, or the training windows counted for the test split."""
    from daps.data.sequences import sequence_run_files, sequence_windows

    path = tmp_path / "s.npz"
    b, a, c = _ramp(9), _ramp(6, start=3.0), _ramp(5)
    np.savez(path, **{"train/b": b, "train/a": a, "test/c": c})
    data = _sequence_config(path)
    windows = sequence_windows("train", data)
    assert windows.class_names == ("b", "a", "c")
    assert windows.labels.tolist() == [0] * 6 + [1] * 3
    record = sequence_run_files(data)["sequence_data.json"]
    frames = np.concatenate([b, a])
    np.testing.assert_allclose(record["mean"], frames.mean(0), rtol=1e-12)
    np.testing.assert_allclose(record["scale"], frames.std(0), rtol=1e-12)
    assert record["windows"] == {"train": 6 + 3, "test": 2}


def test_sequences_reread_a_file_rewritten_with_the_same_size(tmp_path):
    """A file rewritten in place with other values of the same size (a new modification time) is read again, not
    served from the process's cache. Fails on: the cache keyed by the file's size alone."""
    from daps.data.sequences import sequence_data

    path = tmp_path / "s.npz"
    np.savez(path, **{"train/a": _ramp(10), "test/b": _ramp(6)})
    os.utime(path, ns=(10**18, 10**18))
    first = sequence_data(_sequence_config(path)).stats.mean.copy()
    size = path.stat().st_size
    np.savez(path, **{"train/a": _ramp(10) + 100.0, "test/b": _ramp(6)})
    os.utime(path, ns=(2 * 10**18, 2 * 10**18))
    assert path.stat().st_size == size
    np.testing.assert_allclose(sequence_data(_sequence_config(path)).stats.mean, first + 100.0, rtol=1e-12)


def test_a_sequence_figure_shows_the_six_features_that_vary_most_in_the_window(tmp_path, monkeypatch):
    """Eight features whose swing in the window, in the file's units (amplitude x the training scale), is known:
    the figure's six panels are the six largest, largest first. Fails on: the features sorted the other way (the
    flattest shown)."""
    import daps.plots
    from daps.data.sequences import plot_sequence_reconstructions

    rng = np.random.default_rng(0)
    train = rng.normal(size=(50, 8)) * np.arange(1, 9)  # training scales of about 1..8
    path = tmp_path / "s.npz"
    np.savez(path, **{"train/a": train, "test/b": train[:20]})
    scale = train.std(0)
    amplitude = np.array([8.0, 1.0, 6.0, 0.5, 3.0, 2.0, 7.0, 4.0])
    x = torch.from_numpy(np.sin(np.arange(16) / 3.0)[:, None] * amplitude)[None, None].float()  # (1, 1, T, F)
    labels = []

    def keep_labels(fig, _path, dpi):
        labels.extend(ax.get_ylabel() for ax in fig.axes)
        daps.plots._pyplot().close(fig)

    monkeypatch.setattr(daps.plots, "save_figure", keep_labels)
    plot_sequence_reconstructions(_sequence_config(path, window=16, features=8), x, x, tmp_path / "f.png", "t")
    largest = np.argsort(-(amplitude * scale))[:6]
    assert labels == [f"feature {f}" for f in largest]


# --------------------------------------------------------------------------------------------------
# Data paths


def test_an_empty_data_dir_or_a_padded_variable_falls_back_to_the_environment(tmp_path, monkeypatch):
    """``data_dir=""`` is no folder given ($DAPS_DATA_DIR is used, not the working directory), the variable's
    surrounding spaces are ignored (blank: unset), no folder at all is an empty list, and repeats are dropped in
    order. Fails on: "" taken as the folder ".", the variable taken with its spaces, the cache returned as a
    user folder, or duplicates kept."""
    from daps.data.paths import dedupe, env_root, user_roots

    monkeypatch.setenv("DAPS_DATA_DIR", f"  {tmp_path}  ")
    assert env_root() == tmp_path and user_roots("") == [tmp_path]
    monkeypatch.setenv("DAPS_DATA_DIR", "   ")
    assert env_root() is None and user_roots(None) == []
    a, b = tmp_path / "a", tmp_path / "b"
    assert dedupe([a, b, a, b]) == [a, b]


def test_the_file_key_reads_the_size_and_the_whole_last_mebibyte(tmp_path):
    """Two files of one repeating pattern with the same first and last MiB differ in size only: different keys; a
    byte changed 700 KiB before the end (inside the last MiB) changes the key. Fails on: the size left out, or
    only the last half MiB read."""
    from daps.data.paths import file_key

    pattern = bytes(range(256)) * 4096  # 1 MiB
    three, four = tmp_path / "three", tmp_path / "four"
    three.write_bytes(pattern * 3)
    four.write_bytes(pattern * 4)
    assert file_key(three) != file_key(four)
    changed = bytearray(pattern * 3)
    changed[-700 * 1024] ^= 1
    (tmp_path / "changed").write_bytes(bytes(changed))
    assert file_key(tmp_path / "changed") != file_key(three)


def test_a_damaged_data_record_is_one_user_error(tmp_path):
    """A run's data record that is not JSON, or JSON of another shape, is a UserError naming it. Fails on: a
    ValueError or TypeError traceback."""
    from daps.data.paths import check_recorded_file

    data = tmp_path / "data.npz"
    data.write_bytes(b"x")
    record = tmp_path / "record.json"
    for text in ("{not json", "[1, 2]"):
        record.write_text(text)
        with pytest.raises(UserError, match="not a readable record of the run's data"):
            check_recorded_file(record, data)


def test_teardown_destroys_only_the_groups_setup_made(monkeypatch):
    """In a caller's process group teardown destroys the wait group it added and leaves the caller's group; in its
    own (torchrun) group it destroys the default group, which takes the wait group with it. Fails on: the wait
    group left behind in the caller's process."""
    import torch.distributed as tdist

    from daps import dist

    destroyed = []
    monkeypatch.setattr(tdist, "is_initialized", lambda: True)
    monkeypatch.setattr(tdist, "destroy_process_group", lambda group=None: destroyed.append(group))
    wait = object()
    for own in (False, True):
        monkeypatch.setattr(dist, "_wait_group", wait)
        monkeypatch.setattr(dist, "_own_group", own)
        dist.teardown()
        assert dist._wait_group is None and dist._own_group is False
    assert destroyed == [wait, None]
