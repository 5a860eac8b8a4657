"""The low-level tracker (``daps.robot.tracker``): advantages, input statistics, the simulation's reward and
episode ends against known answers, exact resume, and the commands.

The simulation tests read the H1 model and LAFAN1 clips from ``$DAPS_DATA_DIR`` and skip without them.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import torch

from daps.cli import main
from daps.robot.tracker import (
    CONTACT_GRACE,
    References,
    RunningNorm,
    TrackerConfig,
    TrackingEnvs,
    advantages_and_returns,
    clipped_step,
    end_points,
    gae,
    load_tracker,
    next_step_size,
    ppo_loss,
    tracking_errors,
    train_tracker,
)

REAL_DIR = os.environ.get("DAPS_DATA_DIR")
needs_data = pytest.mark.skipif(not REAL_DIR, reason="DAPS_DATA_DIR not set (reads the H1 model and LAFAN1 clips)")
FPS = 30.0


def test_gae_with_lambda_one_is_the_discounted_return_minus_the_value():
    """lambda = 1: the advantage is the discounted sum of rewards to the episode's end, plus the discounted value
    after a time limit (nothing after a fall), minus V. Two environments, one falling at step 1 and one truncated
    at step 2 and then starting a new episode."""
    g = 0.9
    r = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]])
    v = torch.tensor([[0.5, 0.1], [0.2, 0.3], [0.4, 0.6], [0.7, 0.8]])
    # V after each step: the next step's V inside an episode (the same observation), 9 after the fall (unused), the
    # truncated episode's last observation (10) and the rollout's last (11, 12)
    nv = torch.tensor([[0.2, 0.3], [9.0, 0.6], [0.7, 10.0], [11.0, 12.0]])
    term = torch.tensor([[False, False], [True, False], [False, False], [False, False]])
    fin = torch.tensor([[False, False], [True, False], [False, True], [False, False]])
    adv = gae(r, v, nv, term, fin, g, 1.0)
    # env 0: episode of steps 0-1 ends in a fall; steps 2-3 a new episode bootstrapped with nv[3] = 11
    want0 = [1 + g * 3 - 0.5, 3 - 0.2, 5 + g * 7 + g * g * 11 - 0.4, 7 + g * 11 - 0.7]
    # env 1: steps 0-2 end by the time limit, bootstrapped with nv[2] = 10; step 3 alone, bootstrapped with 12
    want1 = [2 + g * 4 + g * g * 6 + g ** 3 * 10 - 0.1, 4 + g * 6 + g * g * 10 - 0.3, 6 + g * 10 - 0.6,
             8 + g * 12 - 0.8]
    torch.testing.assert_close(adv, torch.tensor([want0, want1]).T)
    # lambda = 0: one-step residuals
    adv0 = gae(r, v, nv, term, fin, g, 0.0)
    torch.testing.assert_close(adv0, r + g * nv * (~term) - v)


def test_returns_are_the_bootstrapped_discounted_rewards_and_advantages_their_normalized_excess():
    """With lambda = 1 and no episode end the value targets are the discounted rewards plus the discounted value
    after the last step (by hand); the policy's advantages are those targets minus the values, normalized over the
    rollout (so a negated or unnormalized advantage, or a target without the value, shows)."""
    gamma = 0.9
    rewards = torch.tensor([[1.0, 0.0], [0.5, 2.0], [-1.0, 1.0]])  # (H, N)
    values = torch.tensor([[0.2, -0.4], [1.0, 0.3], [0.0, 0.7]])
    next_values = torch.cat([values[1:], torch.tensor([[2.0, -1.0]])])
    never = torch.zeros(3, 2, dtype=torch.bool)
    adv, ret = advantages_and_returns(rewards, values, next_values, never, never, gamma, lam=1.0)
    expected = torch.stack([
        sum(gamma**k * rewards[h + k] for k in range(3 - h)) + gamma ** (3 - h) * torch.tensor([2.0, -1.0])
        for h in range(3)
    ])
    torch.testing.assert_close(ret, expected.flatten())
    excess = (expected - values).flatten()
    torch.testing.assert_close(adv, (excess - excess.mean()) / excess.std(), rtol=1e-5, atol=1e-6)


def test_ppo_loss_known_answer_and_where_its_gradient_vanishes():
    """Ratios 1, e^0.5 and e^-0.5 with advantages 1, 1, -1 and clip 0.2: surrogate -(1 + 1.2 - 0.8)/3, value term
    0.5 * mean(1, 4, 9); the gradient pushes the unclipped action's log-probability up (-1/3) and is zero for the
    two whose ratio is clipped in the direction of their advantage."""
    log_prob = torch.tensor([0.0, 0.5, -0.5], requires_grad=True)
    loss, ratio = ppo_loss(log_prob, torch.zeros(3), torch.tensor([1.0, 1.0, -1.0]), torch.tensor([1.0, 2.0, 3.0]),
                           torch.zeros(3), clip=0.2, value_coef=0.5)
    assert float(loss.detach()) == pytest.approx(-(1 + 1.2 - 0.8) / 3 + 0.5 * 14 / 3, rel=1e-6)
    torch.testing.assert_close(ratio.detach(), torch.tensor([0.0, 0.5, -0.5]).exp())
    loss.backward()
    torch.testing.assert_close(log_prob.grad, torch.tensor([-1 / 3, 0.0, 0.0]))


def test_the_step_size_follows_the_kl_of_the_last_update_and_the_update_is_clipped():
    assert next_step_size(3e-4, kl=0.05, target_kl=0.01) == pytest.approx(2e-4)  # moved too far: smaller
    assert next_step_size(3e-4, kl=0.001, target_kl=0.01) == pytest.approx(4.5e-4)  # barely moved: larger
    assert next_step_size(3e-4, kl=0.01, target_kl=0.01) == 3e-4
    assert next_step_size(3e-4, kl=1.0, target_kl=0.0) == 3e-4  # no target: fixed
    assert next_step_size(1e-2, kl=0.0, target_kl=0.01) == 1e-2 and next_step_size(1e-6, 1.0, 0.01) == 1e-6
    model = torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in model.parameters()]
    loss = 1e6 * sum(p.sum() for p in model.parameters())  # a gradient of norm ~2e6
    clipped_step(model, torch.optim.SGD(model.parameters(), lr=1.0), loss, max_norm=0.5)
    moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    assert float(moved.norm()) == pytest.approx(0.5, rel=1e-4)


def test_tracking_errors_are_in_degrees_and_millimetres():
    joints, ends = np.zeros(19), np.zeros((4, 3))
    offset_ends = ends.copy()
    offset_ends[0, 0], offset_ends[1] = 0.01, [0.0, 0.03, 0.04]  # 1 cm and 5 cm
    joint_deg, end_mm = tracking_errors(joints + 0.1, joints, offset_ends, ends)
    assert joint_deg == pytest.approx(np.degrees(0.1)) and end_mm == pytest.approx((10 + 50) / 4)


def test_running_statistics_are_those_of_all_batches_seen():
    norm = RunningNorm(3)
    rng = np.random.default_rng(0)
    batches = [rng.normal(loc=[1, -2, 5], scale=[0.5, 2, 10], size=(n, 3)) for n in (7, 50, 3)]
    for b in batches:
        norm.update(torch.from_numpy(b))
    both = np.concatenate(batches)
    np.testing.assert_allclose(norm.mean.numpy(), both.mean(0), rtol=1e-12)
    np.testing.assert_allclose(norm.var.numpy(), both.var(0), rtol=1e-10)
    x = torch.from_numpy(both[:4])
    np.testing.assert_allclose(norm(x).numpy(), ((both[:4] - both.mean(0)) / both.std(0)).clip(-5, 5), rtol=1e-5)


def test_a_damaged_reference_file_is_refused_in_one_line(tmp_path):
    """Cut short, or with any one bit changed, references.npz is a UserError (not a traceback) or, where the bit
    is one no reader checks (a zip header's date), reads back the same."""
    from daps.errors import UserError
    from daps.robot.tracker import load_references, save_references

    rng = np.random.default_rng(0)
    refs = References(["a"], [rng.normal(size=(64, 26))], [rng.normal(size=(64, 25))], [rng.normal(size=(64, 4, 3))],
                      [np.zeros((2, 4), dtype=np.int64)], 32)
    path = tmp_path / "references.npz"
    save_references(path, {"train": refs, "val": refs})
    whole = path.read_bytes()
    assert np.array_equal(load_references(path)["val"].qvel[0], refs.qvel[0].astype(np.float32))
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(UserError, match="is not a readable tracker reference file"):
        load_references(path)
    refused = 0
    for at in range(0, len(whole), 41):
        path.write_bytes(whole[:at] + bytes([whole[at] ^ 1]) + whole[at + 1:])
        try:
            back = load_references(path)["train"]
        except UserError as err:
            assert "is not a readable tracker reference file" in str(err)
            refused += 1
            continue
        pairs = zip(back.poses + back.qvel, refs.poses + refs.qvel)
        assert all(np.array_equal(a, b.astype(np.float32)) for a, b in pairs)
    assert refused > 0.8 * len(range(0, len(whole), 41))


@pytest.fixture(scope="module")
def h1_and_clip():
    if not REAL_DIR:
        pytest.skip("DAPS_DATA_DIR not set (reads the H1 model and LAFAN1 clips)")
    from daps.motion.dataset import load_clip_features
    from daps.motion.h1 import load_h1
    from daps.robot.physics import reference_velocities

    h1 = load_h1(REAL_DIR)
    clips = load_clip_features(REAL_DIR)
    name = sorted(n for n in clips.poses if n.startswith("walk"))[0]
    poses = clips.poses[name][:96].astype(np.float64)
    refs = References([name], [poses], [reference_velocities(h1.model, poses, FPS)], [end_points(h1, poses)],
                      [np.zeros((3, 4), dtype=np.int64)], 32)
    return h1, refs


def _cfg(**changes) -> TrackerConfig:
    base = dict(envs=2, horizon=8, epochs=1, minibatch=8, hidden=16, eval_every=2, ckpt_every=1, progress=False,
                frames=64, episode_seconds=10.0)
    return TrackerConfig(**{**base, **changes})


@needs_data
def test_tracking_the_simulations_own_motion_scores_one_at_every_frame(h1_and_clip):
    """Record the H1 under zero actions on a walking clip; a second simulation told to reach the same joint targets
    along that recording (actions = the first run's targets minus the recording's, over action_scale) follows it
    exactly, so every reward term is exp(0): the reward is 1 at every frame. A mapping of actions to the wrong
    motors, or a reward term read from the wrong frame, breaks it."""
    h1, refs = h1_and_clip
    cfg = _cfg(action_scale=50.0)
    first = TrackingEnvs(h1, refs, 1, cfg, FPS, np.random.default_rng(0))
    first.reset(0, 0, 0)
    poses, qvel, ends = [refs.poses[0][0].copy()], [refs.qvel[0][0].copy()], [refs.ends[0][0].copy()]
    frames = 12
    for _ in range(frames):
        first.step(np.zeros((1, 19)))
        d = first.data[0]
        poses.append(d.qpos[:26].copy())
        qvel.append(d.qvel[:25].copy())
        ends.append(first._ends(d))
    recorded = References(["rec"], [np.array(poses)], [np.array(qvel)], [np.array(ends)], [refs.codes[0]], 32)
    second = TrackingEnvs(h1, recorded, 1, cfg, FPS, np.random.default_rng(0))
    second.reset(0, 0, 0)
    for t in range(frames):
        action = (refs.poses[0][t + 1][7:26] - recorded.poses[0][t + 1][7:26]) / cfg.action_scale
        reward, terminated, truncated, info = second.step(action[None])
        assert reward[0] == pytest.approx(1.0, abs=1e-9), t
        assert not terminated[0]
        assert truncated[0] == (t == frames - 1) and info["length"][0] == (frames if t == frames - 1 else 0)
    # The same recording with zero actions (targets the recording's own joint angles): not the first run's
    # motion, so its reward drops below 1.
    third = TrackingEnvs(h1, recorded, 1, cfg, FPS, np.random.default_rng(0))
    third.reset(0, 0, 0)
    assert min(third.step(np.zeros((1, 19)))[0][0] for _ in range(frames)) < 0.99


@needs_data
def test_an_episode_ends_when_the_pelvis_leaves_the_reference_and_observations_are_proprioceptive(h1_and_clip):
    h1, refs = h1_and_clip
    far = References(["far"], [refs.poses[0].copy()], refs.qvel, refs.ends, refs.codes, 32)
    far.poses[0][1:, 0] += 0.31  # from frame 1 on, 31 cm ahead: the first step is already too far
    envs = TrackingEnvs(h1, far, 1, _cfg(), FPS, np.random.default_rng(0))
    envs.reset(0, 0, 0)
    _, terminated, truncated, info = envs.step(np.zeros((1, 19)))
    assert terminated[0] and not truncated[0] and info["length"][0] == 1
    refs = References(refs.names, refs.poses, refs.qvel, refs.ends, [np.arange(12).reshape(3, 4)], 32)  # 3 windows
    envs = TrackingEnvs(h1, refs, 1, _cfg(), FPS, np.random.default_rng(0))
    envs.reset(0, 0, 40)
    proprio, phase, codes, privileged = envs.observe()
    d = envs.data[0]
    rot = d.xmat[envs.pelvis].reshape(3, 3)
    # the phase and codes of the target frame (41: the second window), not of the frame the robot is in
    assert np.array_equal(proprio[0, :19], refs.poses[0][40][7:26]) and phase[0, 0] == 9 / 32
    assert np.array_equal(proprio[0, 19:38], refs.qvel[0][40][6:25]) and np.array_equal(codes[0], refs.codes[0][1])
    assert np.array_equal(proprio[0, 38:41], d.qvel[3:6])  # the pelvis's angular velocity, in its own frame
    np.testing.assert_allclose(proprio[0, 41:44], rot.T @ [0, 0, -1.0])
    assert np.array_equal(privileged[0, :19], refs.poses[0][41][7:26]) and np.all(privileged[0, 19:22] == 0)
    np.testing.assert_allclose(privileged[0, 22:25], rot.T @ refs.qvel[0][40][:3])  # the pelvis's own frame
    assert privileged[0, 25] == refs.poses[0][40][2]
    envs.reset(0, 0, 31)  # the last frame of the first window: its target starts the second
    _, phase, codes, _ = envs.observe()
    assert phase[0, 0] == 0 and np.array_equal(codes[0], refs.codes[0][1])


def _record_zero_actions(h1, refs: References, cfg: TrackerConfig, frames: int) -> tuple[list, list, list]:
    """The H1 under zero actions from frame 0 of the first reference: poses, velocities and end points of the
    start and of each of ``frames`` frames after it (a recording to follow exactly)."""
    first = TrackingEnvs(h1, refs, 1, cfg, FPS, np.random.default_rng(0))
    first.reset(0, 0, 0)
    poses, qvel, ends = [refs.poses[0][0].copy()], [refs.qvel[0][0].copy()], [refs.ends[0][0].copy()]
    for _ in range(frames):
        first.step(np.zeros((1, 19)))
        d = first.data[0]
        poses.append(d.qpos[:26].copy())
        qvel.append(d.qvel[:25].copy())
        ends.append(first._ends(d))
    return poses, qvel, ends


@needs_data
def test_the_pelvis_orientation_and_angular_velocity_count_as_deepmimic_root_terms(h1_and_clip):
    """Following a recording of itself exactly, against a reference whose pelvis is turned by theta about the
    vertical and spins delta faster (from frame 1 on, so the start is the recording's): the pose term becomes
    exp(-2 theta^2), the velocity term exp(-0.1 delta^2), the others stay 1. A reward blind to the pelvis's
    orientation (the joints alone) scores 1."""
    h1, refs = h1_and_clip
    cfg = _cfg(action_scale=50.0)
    poses, qvel, ends = _record_zero_actions(h1, refs, cfg, 6)
    theta, delta = 0.3, 0.5
    turned, spun = np.array(poses), np.array(qvel)
    half = np.array([np.cos(theta / 2), 0, 0, np.sin(theta / 2)])  # w, x, y, z about the vertical
    for f in range(1, len(turned)):
        w, v = turned[f, 3], turned[f, 4:7]
        hw, hv = half[0], half[1:]
        turned[f, 3:7] = [hw * w - hv @ v, *(hw * v + w * hv + np.cross(hv, v))]
    spun[1:, 3] += delta
    reference = References(["rec"], [turned], [spun], [np.array(ends)], [refs.codes[0]], 32)
    follower = TrackingEnvs(h1, reference, 1, cfg, FPS, np.random.default_rng(0))
    follower.reset(0, 0, 0)
    follower.data[0].qpos[3:7] = poses[0][3:7]  # the recording's start (frame 0 is not turned anyway)
    expect = 0.65 * np.exp(-2 * theta**2) + 0.1 * np.exp(-0.1 * delta**2) + 0.25
    for t in range(5):
        action = (refs.poses[0][t + 1][7:26] - turned[t + 1][7:26]) / cfg.action_scale
        reward, terminated, _, _ = follower.step(action[None])
        assert reward[0] == pytest.approx(expect, abs=1e-6), t
        assert not terminated[0]


@needs_data
def test_the_pelvis_height_and_the_end_points_count_with_their_deepmimic_scales(h1_and_clip):
    """Following a recording of itself exactly, against a reference whose pelvis is h higher and whose first end
    point is d further forward (from frame 1 on): the end-point term becomes exp(-40 d^2), the root term
    exp(-10 h^2), the others stay 1. A term of the wrong sign, or a root error blind to height, shows. The
    simulation's end points are those :func:`end_points` gives for the same poses."""
    h1, refs = h1_and_clip
    cfg = _cfg(action_scale=50.0)
    first = TrackingEnvs(h1, refs, 1, cfg, FPS, np.random.default_rng(0))
    for frame in (0, 17, 40):  # the end points of the simulation in a reference pose, against the independent ones
        first.reset(0, 0, frame)
        np.testing.assert_allclose(first._ends(first.data[0]), refs.ends[0][frame], atol=1e-9)
    poses, qvel, ends = _record_zero_actions(h1, refs, cfg, 6)
    h, dist = 0.2, 0.1
    higher, moved = np.array(poses), np.array(ends)
    higher[1:, 2] += h
    moved[1:, 0, 0] += dist
    reference = References(["rec"], [higher], [np.array(qvel)], [moved], [refs.codes[0]], 32)
    follower = TrackingEnvs(h1, reference, 1, cfg, FPS, np.random.default_rng(0))
    follower.reset(0, 0, 0)
    expect = 0.65 + 0.1 + 0.15 * np.exp(-40 * dist**2) + 0.1 * np.exp(-10 * h**2)
    for t in range(5):
        action = (refs.poses[0][t + 1][7:26] - higher[t + 1][7:26]) / cfg.action_scale
        reward, terminated, _, _ = follower.step(action[None])
        assert reward[0] == pytest.approx(expect, abs=1e-6), t
        assert not terminated[0]


@needs_data
def test_the_references_own_floor_contacts_are_marked_within_the_grace(h1_and_clip):
    """A reference standing (feet only on the floor) but for one frame k sunk into it: exactly the frames within
    CONTACT_GRACE of k are marked, by the bodies that touch there."""
    h1, refs = h1_and_clip
    envs = TrackingEnvs(h1, refs, 1, _cfg(), FPS, np.random.default_rng(0))
    stand = np.zeros(26)
    stand[2], stand[3] = 1.044, 1.0  # the default pose with the soles on the floor
    poses = np.repeat(stand[None], 20, axis=0)
    k = 9
    poses[k, 2] = 0.3  # the pelvis 30 cm up: the legs through the floor
    marked = envs._reference_contacts(poses)
    assert set(np.flatnonzero(marked)) == set(range(k - CONTACT_GRACE, k + CONTACT_GRACE + 1))
    assert len(set(marked[marked != 0].tolist())) == 1  # the same bodies, spread over the grace


@needs_data
def test_a_body_on_the_floor_is_a_fall_only_where_the_reference_is_not_on_it(h1_and_clip):
    """Lying as a get-up clip lies, the reference's own floor contacts (hands, knees, pelvis) do not end the
    episode; the same contacts against a reference standing there do."""
    from daps.motion.dataset import load_clip_features
    from daps.robot.physics import reference_velocities

    h1, _ = h1_and_clip
    clips = load_clip_features(REAL_DIR)
    name = sorted(n for n in clips.poses if n.startswith("fallAndGetUp"))[0]
    poses = clips.poses[name].astype(np.float64)
    lying = References([name], [poses], [reference_velocities(h1.model, poses, FPS)], [end_points(h1, poses)],
                       [np.zeros((len(poses) // 32, 4), dtype=np.int64)], 32)
    envs = TrackingEnvs(h1, lying, 1, _cfg(), FPS, np.random.default_rng(0))
    on = lying.grounded[0] != 0
    # frames well inside a stretch on the floor (so the reference itself touches it at the next frame)
    down = np.flatnonzero([on[f - CONTACT_GRACE:f + CONTACT_GRACE + 2].all() for f in range(len(on))])
    assert len(down) > 0.05 * len(poses)  # a get-up clip spends a good part of its time on the floor
    starts = down[:: max(1, len(down) // 20)][:20]
    ended = []
    for first in starts:
        envs.reset(0, 0, int(first))
        ended.append(bool(envs.step(np.zeros((1, 19)))[1][0]))
    assert np.mean(ended) < 0.2, np.mean(ended)
    lying.grounded = [np.zeros_like(lying.grounded[0])]  # the same frames, as if the reference stood there
    ended = []
    for first in starts:
        envs.reset(0, 0, int(first))
        ended.append(bool(envs.step(np.zeros((1, 19)))[1][0]))
    assert np.mean(ended) > 0.8, np.mean(ended)


@needs_data
def test_a_negative_seed_trains_as_torch_takes_it(h1_and_clip, tmp_path, single_thread):
    """``track-train seed=-1`` (a seed the settings accept) raised NumPy's "expected non-negative integer" traceback
    after writing the folder's config; it now seeds NumPy modulo 2^64, as torch."""
    h1, refs = h1_and_clip
    meta = {"num_tokens": 4, "vocab_size": 3, "fps": FPS, "window": 32, "data_dir": REAL_DIR}
    run = train_tracker(_cfg(out_dir=str(tmp_path / "neg"), frames=16, seed=-1),
                        references=({"train": refs, "val": refs}, meta), h1=h1)
    assert json.loads((run / "summary.json").read_text())["step"] == 1
    from daps.config import numpy_seed

    assert numpy_seed(-1) == torch.Generator().manual_seed(-1).initial_seed() == 2**64 - 1  # torch's reading of -1


@needs_data
def test_training_resumes_exactly_and_the_folder_holds_what_it_says(h1_and_clip, tmp_path, single_thread,
                                                                      monkeypatch, end_of_run_rule, captured):
    h1, refs = h1_and_clip
    meta = {"num_tokens": 4, "vocab_size": 3, "fps": FPS, "window": 32, "data_dir": REAL_DIR}
    sets = {"train": refs, "val": refs}
    whole = train_tracker(_cfg(out_dir=str(tmp_path / "whole")), references=(sets, meta), h1=h1)
    part = tmp_path / "part"
    train_tracker(_cfg(out_dir=str(part), frames=32), references=(sets, meta), h1=h1)
    train_tracker(_cfg(out_dir=str(part)), resume=True, h1=h1)  # references and header read back from the folder
    from safetensors.torch import load_file

    a = load_file(str(whole / "checkpoints" / "step_00000004" / "model.safetensors"))
    b = load_file(str(part / "checkpoints" / "step_00000004" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def rows(run):
        out = [json.loads(line) for line in open(run / "metrics.jsonl")]
        return [{k: v for k, v in r.items() if k != "frames_per_s"} for r in out]

    assert rows(whole) == rows(part) and [r["step"] for r in rows(whole) if r["split"] == "train"] == [1, 2, 3, 4]
    from daps.provenance import read_jobs

    assert [job["from_step"] for job in read_jobs(part)] == [0, 2]  # the two jobs that trained it
    summary = json.loads((whole / "summary.json").read_text())
    assert {"survival_s", "fall_fraction", "joint_error_deg", "end_error_mm"} <= summary["baseline"].keys()
    assert (whole / "curves.png").stat().st_size > 0
    assert captured[0]._suptitle.get_text() == f"tracker (whole): {_cfg().frames:,} frames, {_cfg().envs} environments"
    # Every entry of the folder is one --overwrite may delete (and nothing else of the user's is touched).
    from daps.robot.tracker import ENTRIES
    from daps.runfolder import LOCK, MARKER

    assert {p.name for p in whole.iterdir()} <= ENTRIES | {MARKER, LOCK}
    # A finished run resumed: nothing to do, no job recorded; resumed past its end: refused.
    jobs = read_jobs(whole)
    before = {p: p.stat().st_mtime_ns for p in whole.rglob("*") if p.is_file() and p.name != ".lock"}
    assert train_tracker(_cfg(out_dir=str(whole)), resume=True, h1=h1) == whole and read_jobs(whole) == jobs
    assert {p: p.stat().st_mtime_ns for p in whole.rglob("*") if p.is_file() and p.name != ".lock"} == before
    end_of_run_rule(whole, lambda: train_tracker(_cfg(out_dir=str(whole)), resume=True, h1=h1))
    assert read_jobs(whole) == jobs  # writing the end-of-run files again trains nothing: no job
    from daps.errors import UserError

    with pytest.raises(UserError, match="cannot resume .* at update 4: frames=32 ends it at update 2"):
        train_tracker(_cfg(out_dir=str(whole), frames=32), resume=True, h1=h1)
    model, cfg, header, loaded = load_tracker(whole)
    assert cfg.hidden == 16 and header["num_tokens"] == 4
    # kept (and trained on) at float32 precision, so that a resumed run tracks the same numbers
    assert np.array_equal(loaded["train"].poses[0], refs.poses[0].astype(np.float32).astype(np.float64))
    assert loaded["val"].names == refs.names and np.array_equal(loaded["train"].codes[0], refs.codes[0])
    # A run of another tracker version (other observations and reward) is neither evaluated nor resumed: here the
    # code moves on to a version 3.
    from daps.robot import tracker

    monkeypatch.setattr(tracker, "VERSION", tracker.VERSION + 1)
    with pytest.raises(UserError, match="is a tracker of version 2, made by an earlier daps"):
        load_tracker(whole)
    with pytest.raises(UserError, match="is a tracker of version 2, made by an earlier daps"):
        train_tracker(_cfg(out_dir=str(whole)), resume=True, h1=h1)


@needs_data
def test_commands_refuse_bad_input_in_one_line(trained_run, tmp_path, capsys):
    for command, says in (
        (["robot", "track-train", str(trained_run), "--out", str(tmp_path / "t")], "was trained on mnist5k"),
        (["robot", "track-train", str(trained_run), "--out", str(tmp_path / "t"), "reference=mocap"],
         "reference must be decoded or ground-truth"),
        (["robot", "track-train", str(trained_run), "--out", str(tmp_path / "t"), "envs=0"], "envs must be at least 1"),
        (["robot", "track-eval", str(tmp_path / "none")], "none"),
    ):
        assert main(command) == 2, command
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and says in err, err
    assert not (tmp_path / "t").exists()


@needs_data
def test_an_update_that_changes_no_weight_leaves_the_policy_as_it_sampled(h1_and_clip, single_thread):
    """With a zero learning rate the ratios of new to old action probabilities are exactly 1 in every minibatch:
    nothing else (such as the input statistics taking in the rollout before the epochs) changes the policy that
    the rollout's log-probabilities were computed under."""
    from daps.robot.tracker import Tracker, ppo_update

    h1, refs = h1_and_clip
    cfg = _cfg()
    torch.manual_seed(0)
    model = Tracker(4, 3, cfg)
    envs = TrackingEnvs(h1, refs, cfg.envs, cfg, FPS, np.random.default_rng(0))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    for _ in range(2):  # the second update runs on statistics the first one updated
        row = ppo_update(model, optimizer, envs, cfg, torch.Generator().manual_seed(0))
        assert abs(row["approx_kl"]) < 1e-6 and row["clip_fraction"] == 0.0, row  # float rounding of batching
    assert model.norm.count.item() == 2 * cfg.envs * cfg.horizon


@needs_data
def test_evaluation_stops_each_simulation_at_its_references_end(h1_and_clip):
    """A reference shorter than the stretch evaluated ends its simulation (not a fall) while the others go on; none
    is stepped past its reference's end. Starts leave the stretch's length of reference where the clip has it."""
    from daps.robot.tracker import evaluate_tracker

    h1, refs = h1_and_clip
    short = 16
    two = References(["short", "long"], [refs.poses[0][:short], refs.poses[0]], [refs.qvel[0][:short], refs.qvel[0]],
                     [refs.ends[0][:short], refs.ends[0]], [refs.codes[0][:1], refs.codes[0]], 32)
    stiff = TrackerConfig(**{**_cfg().__dict__, "terminate_distance": 100.0})  # only the end of a reference stops
    result = evaluate_tracker(None, h1, two, stiff, FPS, seconds=2.0, starts_per_clip=2)
    assert result["episodes"] == 3.0  # the short clip's frame 0; the long clip's 0 and 32 ((96 - 1 - 60) // 32 = 1)
    assert 0 < result["survival_s"] <= (short - 1 + 60 + 60) / 3 / FPS + 1e-9
    assert 0 < result["survival_fraction"] <= 1.0


@needs_data
def test_track_eval_prints_the_tracker_against_the_pd_servos(h1_and_clip, tmp_path, capsys, single_thread):
    h1, refs = h1_and_clip
    meta = {"num_tokens": 4, "vocab_size": 3, "fps": FPS, "window": 32, "data_dir": REAL_DIR}
    run = train_tracker(_cfg(out_dir=str(tmp_path / "t"), frames=16), references=({"train": refs, "val": refs}, meta),
                        h1=h1)
    (tmp_path / "t" / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(["robot", "track-eval", str(run), "--seconds", "1", "--starts", "2"]) == 0
    out = capsys.readouterr().out
    assert "step_00000001 at update 1 (16 frames): " in out
    assert "starts on the validation references (decoded), up to 1 s each" in out
    assert out.splitlines()[2].startswith("tracker") and out.splitlines()[3].startswith("PD servos only")
    assert main(["robot", "track-eval", str(run), "--seconds", "1", "--starts", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["pd_only"]["episodes"] == result["tracker"]["episodes"] and result["seconds"] == 1.0
    assert {"machine", "torch", "code"} <= result.keys()
    # what was evaluated: the checkpoint, its update and frames, and the jobs that trained it
    assert result["update"] == 1 and result["frames"] == 16 and result["checkpoint"].endswith("step_00000001")
    assert [job["from_step"] for job in result["trained_by"]] == [0]
    # --overwrite replaces the tracker's own files, never the user's
    train_tracker(_cfg(out_dir=str(tmp_path / "t"), frames=16), overwrite=True,
                  references=({"train": refs, "val": refs}, meta), h1=h1)
    assert (tmp_path / "t" / "notes.txt").read_text() == "mine"


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    if not REAL_DIR:
        pytest.skip("DAPS_DATA_DIR not set (reads the real LAFAN1 H1 clips)")
    from test_robot import TINY_TOKENIZER  # the robot tests' tiny motion tokenizer

    out = tmp_path_factory.mktemp("tok") / "run"
    torch.set_num_threads(1)
    assert main(["train", "--preset", "lafan1-h1", *TINY_TOKENIZER, f"data.data_dir={REAL_DIR}",
                 f"train.out_dir={out}"]) == 0
    return out


@needs_data
def test_track_train_decodes_references_from_a_tokenizer(tiny_tokenizer, tmp_path, single_thread):
    """From a motion tokenizer run: every clip's whole windows, encoded once and decoded into stitched poses (or the
    clip itself with reference=ground-truth), with one code sequence per window; the run trains on them."""
    from daps.motion.dataset import load_clip_features

    clips = load_clip_features(REAL_DIR)
    tiny = ["frames=16", "envs=2", "horizon=8", "epochs=1", "minibatch=8", "hidden=16", "progress=false"]
    for reference in ("decoded", "ground-truth"):
        out = tmp_path / reference
        assert main(["robot", "track-train", str(tiny_tokenizer), "--out", str(out), f"reference={reference}",
                     *tiny]) == 0
        _, cfg, meta, refs = load_tracker(out)
        assert cfg.reference == reference and meta["num_tokens"] == 16 and meta["vocab_size"] == 16
        train = refs["train"]
        assert len(train) == 36 and len(refs["val"]) == 4  # the original's split: four validation clips
        for i in (0, len(train) - 1):
            name, poses, codes = train.names[i], train.poses[i], train.codes[i]
            windows = len(clips.poses[name]) // 32
            assert poses.shape == (windows * 32, 26) and codes.shape == (windows, 16) and codes.max() < 16
            truth = clips.poses[name][: windows * 32]
            if reference == "ground-truth":
                np.testing.assert_allclose(poses, truth, rtol=1e-6, atol=1e-6)  # float32 rounding only
            else:
                assert np.abs(poses[0, :2]).max() < 1e-6 and not np.allclose(poses, truth, atol=1e-3)  # from the origin
        assert json.loads((out / "summary.json").read_text())["step"] == 1


def test_the_curves_title_names_the_tokenizers_run_also_when_given_a_checkpoint(tmp_path, captured):
    """``track-train`` of ``tok/checkpoints/step_N`` titles its curves with the run ``tok``, not ``step_N``."""
    from daps.robot.tracker import _finish

    run = tmp_path / "trk"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"split": "train", "step": 1, "frames": 64, "reward": 0.5,
                                                   "episode_s": 1.0}) + "\n")
    baseline = {"survival_s": 1.0, "seconds": 5.0}
    for tokenizer in ("runs/tok/checkpoints/step_00000100", "runs/tok"):
        _finish(run, _cfg(tokenizer=tokenizer), baseline)
        assert captured[-1]._suptitle.get_text() == "tracker of tok's codes (trk): 64 frames, 2 environments"


def test_a_minibatch_larger_than_a_rollout_is_warned_about(caplog):
    """``minibatch=100000`` with 16 environments x 256 frames took the whole rollout as one minibatch without a word;
    it is warned about (and allowed: small ``envs=`` runs keep the default 1024), before any work."""
    from daps.errors import UserError
    from daps.robot.tracker import train_tracker

    with caplog.at_level(logging.WARNING, logger="daps"):
        for minibatch in (16, 17):  # _cfg: 2 environments x 8 frames
            with pytest.raises(UserError):  # an empty --out: refused right after the settings' checks
                train_tracker(_cfg(minibatch=minibatch, out_dir=""))
    assert caplog.text.count("is more than a rollout") == 1
    assert "minibatch 17 is more than a rollout's 16 frames (envs 2 x horizon 8)" in caplog.text
