"""The H1 command space (``daps.robot``): requests, the conditional policy, stitching, physics checks, the CLI.

The real-data tests read ``$DAPS_DATA_DIR`` (``lafan1_h1_unitree/``, ``unitree_h1_mjcf/``) and skip without it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from daps.cli import main
from daps.errors import UserError
from daps.robot.commands import (
    clamp_velocity,
    motion_from_prompt,
    parse_velocity,
    read_velocity_schedule,
    window_velocity,
)
from daps.robot.data import CommandSet
from daps.robot.physics import _hull, distance_outside
from daps.robot.run import RobotConfig, load_policy, train_policy

REAL_DIR = os.environ.get("DAPS_DATA_DIR")
needs_data = pytest.mark.skipif(not REAL_DIR, reason="DAPS_DATA_DIR not set (reads the real LAFAN1 H1 clips)")


# --------------------------------------------------------------------------------------------------
# Requests


def test_prompts_map_to_one_kind_by_keywords():
    assert motion_from_prompt("A person jogging along the beach") == "run"
    assert motion_from_prompt("walks slowly") == "walk"
    assert motion_from_prompt("Dance!") == "dance"
    assert motion_from_prompt("hops over a puddle") == "jump"
    with pytest.raises(UserError, match="names no kind"):
        motion_from_prompt("sings a song")
    with pytest.raises(UserError, match="several kinds"):
        motion_from_prompt("walk, then run")
    # inflections: a final e dropped, -es plurals, doubled consonants
    for prompt, kind in (("racing", "run"), ("danced", "dance"), ("marches", "walk"), ("boxes", "fight"),
                         ("collapsed and stumbled", "fall"), ("hopping", "jump"), ("striding", "walk"),
                         ("running", "run"), ("dancing", "dance"), ("boxing", "fight")):
        assert motion_from_prompt(prompt) == kind, prompt


def test_velocity_parsing_schedule_and_clamping(tmp_path, capsys):
    assert parse_velocity("1.5").tolist() == [1.5, 0.0, 0.0]
    assert parse_velocity("1,0.2,-0.3").tolist() == [1.0, 0.2, -0.3]
    for bad in ("fast", "1,2", "nan"):
        with pytest.raises(UserError, match="--velocity"):
            parse_velocity(bad)
    # walking backwards: argparse takes "-0.5,0,0" for an option (only a lone number like -0.5 passes as a value),
    # and said no more than "expected one argument"; the refusal says how to write it, and that form is read
    argv = ["robot", "plan", "POLICY", "--motion", "walk", "--out", str(tmp_path / "w.mp4")]
    with pytest.raises(SystemExit) as exit:
        main([*argv, "--velocity", "-0.5,0,0"])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and "a value that starts with '-' is joined to its flag: --velocity=-..." in err, err
    from daps.cli import _parser

    assert _parser().parse_args([*argv, "--velocity=-0.5,0,0"]).velocity == "-0.5,0,0"
    f = tmp_path / "v.txt"
    f.write_text("# t vx vy yaw\n0 1.0 0 0\n2.0, 0.5, 0, 0.3\n")
    got = read_velocity_schedule(str(f), 4, 1.0667)  # windows start at 0, 1.07, 2.13, 3.2 s
    assert got.tolist() == [[1.0, 0, 0], [1.0, 0, 0], [0.5, 0, 0.3], [0.5, 0, 0.3]]
    f.write_text("1 1 0 0\n")
    with pytest.raises(UserError, match="start at time 0"):
        read_velocity_schedule(str(f), 2, 1.0)
    f.write_text("0 1 0\n")
    with pytest.raises(UserError, match="line 1"):
        read_velocity_schedule(str(f), 2, 1.0)
    for empty in ("", "# comments only\n\n"):
        f.write_text(empty)
        with pytest.raises(UserError, match="v.txt: no rows"):
            read_velocity_schedule(str(f), 2, 1.0)
    v, notes = clamp_velocity(np.array([[5.0, 0.0, 0.0]]), np.array([0, -1, -1.0]), np.array([2, 1, 1.0]))
    assert v.tolist() == [[2.0, 0.0, 0.0]] and len(notes) == 1 and "forward_m_s 5" in notes[0]


def test_window_velocity_known_answers():
    fps, t = 30.0, 31
    time = np.arange(t) / fps
    poses = np.zeros((t, 26))
    poses[:, 3] = 1.0
    # heading +90 deg (facing +y) while moving along +y at 1.2 m/s: forward 1.2, left 0
    psi = np.pi / 2
    poses[:, 3:7] = [np.cos(psi / 2), 0, 0, np.sin(psi / 2)]
    poses[:, 1] = 1.2 * time
    assert window_velocity(poses, fps) == pytest.approx([1.2, 0.0, 0.0], abs=1e-9)
    # turning at 0.5 rad/s on the spot across the +-pi seam
    psi = np.pi - 0.2 + 0.5 * time
    poses[:, 1] = 0
    poses[:, 3:7] = np.stack([np.cos(psi / 2), 0 * psi, 0 * psi, np.sin(psi / 2)], 1)
    assert window_velocity(poses, fps) == pytest.approx([0.0, 0.0, 0.5], abs=1e-9)


def test_ground_truth_segments_start_anywhere_in_a_clip_even_at_its_last_frames():
    """Segments of F frames of a clip of F + 1 frames start at 0 or 1, both drawn; a clip of exactly F frames is
    one segment (it was refused as too short, and the last start was never drawn)."""
    from types import SimpleNamespace

    from daps.data.motion import MOTION_TYPES
    from daps.robot.evaluate import ground_truth_segments

    frames, walk = 6, MOTION_TYPES.index("walk")
    poses = {"walk1_subject1": np.arange(frames + 1, dtype=float)[:, None].repeat(26, 1)}
    motion = SimpleNamespace(poses=poses, features={k: v[:, :3] for k, v in poses.items()}, fps=30.0)
    segments, _ = ground_truth_segments(motion, walk, frames, 200, seed=0)
    assert set(segments[:, 0, 0]) == {0.0, 1.0}
    exact = SimpleNamespace(poses={k: v[:frames] for k, v in poses.items()},
                            features={k: v[:frames, :3] for k, v in poses.items()}, fps=30.0)
    segments, _ = ground_truth_segments(exact, walk, frames, 3, seed=0)
    assert segments.shape == (3, frames, 26) and np.all(segments[:, 0, 0] == 0.0)
    with pytest.raises(UserError, match="has 7 frames"):
        ground_truth_segments(exact, walk, frames + 1, 1, seed=0)


def test_support_hull_and_distance():
    square = _hull(np.array([[0, 0], [1, 0], [1, 1], [0, 1], [0.5, 0.5]], dtype=float))
    assert len(square) == 4
    assert distance_outside(np.array([0.5, 0.5]), square) == 0.0
    assert distance_outside(np.array([1.5, 0.5]), square) == pytest.approx(0.5)
    assert distance_outside(np.array([2.0, 2.0]), square) == pytest.approx(np.sqrt(2))


# --------------------------------------------------------------------------------------------------
# The policy on a synthetic code distribution


def _synthetic(n: int, seed: int, shuffle_context: bool = False) -> tuple[dict[str, CommandSet], dict]:
    """Codes of 3 tokens over V=6 decided by the context: token 0 = 2 * label + (forward > 0), token 1 copies the
    previous window's token 0 (5 at the start), token 2 is noise. ``shuffle_context`` trains on the same codes
    with labels and velocities permuted across examples (the negative control)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(3, (n,), generator=g)
    forward = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0) * (0.5 + torch.rand(n, generator=g))
    velocity = torch.stack([forward, 0.1 * torch.randn(n, generator=g), 0.1 * torch.randn(n, generator=g)], 1)
    start = torch.rand(n, generator=g) < 0.2
    prev = torch.randint(6, (n, 3), generator=g)
    prev[start] = 6
    codes = torch.stack([2 * labels + (forward > 0).long(), torch.where(start, 5, prev[:, 0]),
                         torch.randint(6, (n,), generator=g)], 1)
    if shuffle_context:
        perm = torch.randperm(n, generator=g)
        labels, velocity = labels[perm], velocity[perm]
    s = CommandSet(codes, prev, labels, velocity, torch.arange(n))
    meta = {"num_tokens": 3, "vocab_size": 6, "class_names": ["a", "b", "c"], "method": "synthetic",
            "velocity_std": velocity.std(0).tolist(), "velocity_ranges": {}, "fps": 30.0, "window": 32}
    return {"train": s, "val": s.subset(torch.arange(500))}, meta


def _tiny_policy(tmp_path: Path, name: str, commands) -> Path:
    cfg = RobotConfig(width=32, num_layers=1, num_heads=2, steps=300, batch_size=64, lr=3e-3, eval_every=300,
                      ckpt_every=300, log_every=100, progress=False, out_dir=str(tmp_path / name))
    return train_policy(cfg, commands=commands)


def test_policy_reproduces_how_label_velocity_and_previous_codes_decide_the_codes(tmp_path, single_thread):
    """The trained policy's samples follow the rule (token 0 from label and velocity sign, token 1 from the
    previous codes); trained on the same codes with the context shuffled (negative control), it cannot."""
    commands = _synthetic(4000, 0)
    run = _tiny_policy(tmp_path, "policy", commands)
    control = _tiny_policy(tmp_path, "control", _synthetic(4000, 0, shuffle_context=True))
    test_sets, _ = _synthetic(600, 1)
    t = test_sets["train"]

    def accuracy(path: Path) -> tuple[float, float]:
        model, _, _ = load_policy(path)
        z = model.generate(t.labels, t.velocity, t.prev, generator=torch.Generator().manual_seed(0))
        return float((z[:, 0] == t.codes[:, 0]).float().mean()), float((z[:, 1] == t.codes[:, 1]).float().mean())

    first, second = accuracy(run)
    assert first > 0.9 and second > 0.9, (first, second)
    shuffled_first, _ = accuracy(control)
    assert shuffled_first < 0.4, shuffled_first  # chance is 1/6 .. 1/2 (the velocity sign is still in the codes)
    summary = json.loads((run / "summary.json").read_text())
    # held out: every input carries information, so taking one away costs bits
    assert summary["bits_per_token_null_label"] > summary["bits_per_token"] + 0.1
    assert summary["bits_per_token_shuffled_velocity"] > summary["bits_per_token"] + 0.1
    assert summary["bits_per_token_no_prev"] > summary["bits_per_token"] + 0.1


def test_policy_training_resumes_exactly(tmp_path, single_thread):
    commands = _synthetic(1000, 0)
    base = dict(width=32, num_layers=1, num_heads=2, steps=20, batch_size=32, eval_every=10, ckpt_every=10,
                log_every=5, progress=False)
    full = train_policy(RobotConfig(**base, out_dir=str(tmp_path / "full")), commands=commands)
    part = RobotConfig(**{**base, "steps": 10}, out_dir=str(tmp_path / "part"))
    train_policy(part, commands=commands)
    leftovers = [tmp_path / "part" / ".metrics.tmp-99999.jsonl", tmp_path / "part/checkpoints/.step_00000020.tmp-99"]
    leftovers[0].write_text("half")  # what a kill leaves: removed on the next start
    leftovers[1].mkdir()
    resumed = train_policy(RobotConfig(**base, out_dir=str(tmp_path / "part")), resume=True)
    assert not any(p.exists() for p in leftovers)
    a, _, _ = load_policy(full)
    b, _, _ = load_policy(resumed)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name

    from daps.robot.run import ENTRIES
    from daps.runfolder import LOCK, MARKER

    assert {p.name for p in full.iterdir()} == {*ENTRIES, MARKER, LOCK}  # what --overwrite deletes: all of it
    (full / "NOTES.md").write_text("mine")  # ... and nothing else
    train_policy(RobotConfig(**{**base, "steps": 10}, out_dir=str(full)), commands=commands, overwrite=True)
    assert (full / "NOTES.md").read_text() == "mine" and not (full / "checkpoints/step_00000020").exists()


def test_a_policy_killed_at_its_end_is_finished_by_resume(tmp_path, single_thread, end_of_run_rule):
    """Its figure and summary come back after a kill between the two; a finished policy is left alone (the slips:
    the summary written before the figure, taken as the mark of a finished run; or a resume that rewrites them)."""
    cfg = RobotConfig(width=32, num_layers=1, num_heads=2, steps=4, batch_size=32, eval_every=2, ckpt_every=2,
                      log_every=2, progress=False, out_dir=str(tmp_path / "policy"))
    end_of_run_rule(train_policy(cfg, commands=_synthetic(500, 0)), lambda: train_policy(cfg, resume=True))


def test_a_policy_run_killed_before_its_first_step_can_be_resumed(tmp_path, single_thread, monkeypatch):
    import daps.robot.run as robot_run

    commands = _synthetic(600, 0)
    cfg = RobotConfig(width=16, num_layers=1, num_heads=2, steps=4, batch_size=16, eval_every=2, ckpt_every=2,
                      progress=False, out_dir=str(tmp_path / "p"))

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as a kill while the model is built or moved to the device

    with monkeypatch.context() as m:
        m.setattr(robot_run, "start_training", killed)
        with pytest.raises(KeyboardInterrupt):
            train_policy(cfg, commands=commands)
    resumed = train_policy(cfg, resume=True)  # the commands and config were saved: nothing to encode again
    assert (resumed / "checkpoints" / "latest").read_text().strip().endswith("4")


@pytest.mark.parametrize("writer", ["save_commands", "write_json_atomic"])
def test_a_policy_run_killed_while_it_writes_its_first_files_can_be_resumed(tmp_path, single_thread, monkeypatch,
                                                                             writer):
    """Killed while the commands or the config are written: whichever of the two is there, ``--resume`` goes on."""
    import daps.robot.run as robot_run

    commands = _synthetic(600, 0)
    cfg = RobotConfig(width=16, num_layers=1, num_heads=2, steps=4, batch_size=16, eval_every=2, ckpt_every=2,
                      progress=False, out_dir=str(tmp_path / "p"))

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(robot_run, writer, killed)
        with pytest.raises(KeyboardInterrupt):
            train_policy(cfg, commands=commands)
    resumed = train_policy(cfg, resume=True, commands=commands)
    assert (resumed / "checkpoints" / "latest").read_text().strip().endswith("4")


# --------------------------------------------------------------------------------------------------
# Stitching and physics on real clips


@pytest.fixture(scope="module")
def clips():
    if not REAL_DIR:
        pytest.skip("DAPS_DATA_DIR not set (reads the real LAFAN1 H1 clips)")
    from daps.motion.dataset import load_clip_features
    from daps.motion.h1 import load_h1

    return load_clip_features(REAL_DIR), load_h1(REAL_DIR)


def test_stitched_ground_truth_windows_are_the_clip(clips):
    """Cut a real clip's features into windows and stitch them: the result is the whole clip integrated at once
    (root position and heading carried across every border), i.e. the clip itself moved to the origin."""
    from daps.motion.features import features_to_poses
    from daps.robot.plan import stitch_windows, transition_jumps

    arrays, _ = clips
    feats = arrays.features["walk1_subject1"][100 : 100 + 4 * 32].astype(np.float64)
    stitched = stitch_windows(feats.reshape(1, 4, 32, -1), 30.0)[0]
    whole = features_to_poses(feats, np.zeros(2), np.zeros(()), 30.0)
    assert np.abs(stitched - whole).max() < 1e-9
    # decoded features have tilts that twist about the vertical: the heading must still be carried as integrated
    # (reading it back from the last quaternion would add each window's twist; the reviewer's counterexample)
    from daps.motion.features import FEATURE_LAYOUT

    noisy = feats.copy()
    noisy[:, FEATURE_LAYOUT["root_tilt"]] += np.random.default_rng(0).normal(0, 0.05, (len(feats), 6))
    a = stitch_windows(noisy.reshape(1, 4, 32, -1), 30.0)[0]
    b = features_to_poses(noisy, np.zeros(2), np.zeros(()), 30.0)
    assert np.abs(a[:, :2] - b[:, :2]).max() < 1e-9
    # the clip's own joint accelerations are no larger at the borders than within windows
    jumps = transition_jumps(stitched[None], 32, 30.0)
    assert jumps["border_joint_accel"] < 2 * jumps["within_joint_accel"]
    # windows from different places of the clip: the root stays continuous, the joints jump at the borders
    mixed = np.stack([arrays.features["walk1_subject1"][s : s + 32] for s in (100, 900, 2000, 3100)])
    poses = stitch_windows(mixed[None].astype(np.float64), 30.0)[0]
    steps = np.linalg.norm(np.diff(poses[:, :2], axis=0), axis=1)
    assert steps.max() < 4.0 / 30  # no root step faster than 4 m/s anywhere, borders included
    assert transition_jumps(poses[None], 32, 30.0)["border_joint_accel"] > 3 * jumps["border_joint_accel"]


def test_border_blending_continues_the_previous_window(clips):
    """Windows cut from different places jump at their borders; blending moves each window's first frames onto
    the previous window's path (its first frame lands on the linear extrapolation exactly), leaves the rest of the
    window alone, and lowers the border accelerations; blend 0 changes nothing."""
    from daps.motion.features import FEATURE_LAYOUT
    from daps.robot.plan import blend_borders, stitch_windows, transition_jumps

    arrays, _ = clips
    mixed = np.stack([arrays.features["walk1_subject1"][s : s + 32] for s in (100, 900, 2000, 3100)])[None]
    mixed = mixed.astype(np.float64)
    assert np.array_equal(blend_borders(mixed, 0), mixed)
    blended = blend_borders(mixed, 8)
    joints = FEATURE_LAYOUT["joint_angles"]
    assert np.allclose(blended[0, 1, 0, joints], 2 * mixed[0, 0, -1, joints] - mixed[0, 0, -2, joints])
    assert np.array_equal(blended[:, :, 8:], mixed[:, :, 8:]) and np.array_equal(blended[:, 0], mixed[:, 0])
    raw = transition_jumps(stitch_windows(mixed, 30.0), 32, 30.0)["border_joint_accel"]
    smooth = transition_jumps(stitch_windows(blended, 30.0), 32, 30.0)["border_joint_accel"]
    assert smooth < 0.5 * raw, (smooth, raw)


def test_physics_support_is_small_for_ground_truth_and_large_for_floating_motion(clips):
    """The PD tracker keeps a real walking clip up with a support force below half the body weight on average
    (measured 0.40 over 10 s) and the inverse dynamics finds most frames balanced; the same clip lifted 20 cm
    (negative control: the feet never touch) needs the whole weight and has no balanced frame. Without support
    the tracker falls within 2 s (why the support is the measured quantity)."""
    from daps.robot.physics import balance_check, fall_time, track

    arrays, h1 = clips
    walk = arrays.poses["walk1_subject1"][300:450]  # 5 s
    support = track(h1, walk, 30.0).summary()
    balance = balance_check(h1, walk, 30.0)
    assert support["support_force_bw"] < 0.5, support
    assert balance["balanced_fraction"] > 0.8 and balance["pulling_fraction"] < 0.02, balance
    floating = walk.copy()
    floating[:, 2] += 0.2
    assert track(h1, floating, 30.0).summary()["support_force_bw"] > 0.9
    assert balance_check(h1, floating, 30.0)["balanced_fraction"] < 0.05
    assert fall_time(h1, walk, 30.0) < 2.0


def test_the_support_wrench_acts_as_its_force_at_the_pelvis_origin(clips):
    """MuJoCo applies ``xfrc_applied`` at the body's centre of mass; :func:`wrench_at_com` moves a force applied at
    the pelvis's origin there. Reference: MuJoCo itself, the generalized force of the row written into
    ``xfrc_applied`` (through ``qfrc_smooth``) against ``mj_applyFT`` of the force at the origin. A moment with
    the lever reversed misses by about 2 x 4.5 cm x |F|."""
    import mujoco

    from daps.robot.physics import wrench_at_com

    _, h1 = clips
    model, data = h1.model, mujoco.MjData(h1.model)
    pelvis = int(h1.body_ids[0])
    data.qpos[2], data.qpos[3] = 1.044, 1.0
    data.qpos[7:] = np.random.default_rng(0).uniform(-0.2, 0.2, model.nq - 7)
    mujoco.mj_forward(model, data)
    assert np.linalg.norm(data.xpos[pelvis] - data.xipos[pelvis]) > 0.01  # the lever is there to get wrong
    force, torque = np.array([300.0, -150.0, 500.0]), np.array([20.0, 5.0, -10.0])
    expected = np.zeros(model.nv)
    mujoco.mj_applyFT(model, data, force, torque, data.xpos[pelvis].copy(), pelvis, expected)
    smooth = data.qfrc_smooth.copy()
    data.xfrc_applied[pelvis] = wrench_at_com(force, torque, data.xpos[pelvis], data.xipos[pelvis])
    mujoco.mj_forward(model, data)
    np.testing.assert_allclose(data.qfrc_smooth - smooth, expected, atol=1e-8)


def test_balance_of_a_standing_pose(clips):
    """Known answer: standing still in the model's default pose with the soles on the floor needs exactly the
    body weight from the ground, with the centre of pressure between the feet; the same pose 0.5 m up (no foot
    near the floor) is not balanced."""
    from daps.robot.physics import balance_check

    _, h1 = clips
    pose = np.zeros(26)
    pose[2], pose[3] = 1.044, 1.0
    still = np.repeat(pose[None], 10, axis=0)
    got = balance_check(h1, still, 30.0)
    assert got["root_force_bw"] == pytest.approx(1.0, abs=1e-3)
    assert got["balanced_fraction"] == 1.0 and got["cop_outside_m"] == 0.0
    still[:, 2] += 0.5
    assert balance_check(h1, still, 30.0)["balanced_fraction"] == 0.0


def test_balance_refuses_pulling_and_torque_in_flight(clips):
    """Known answers: the standing pose falling faster than gravity (1.07 g) needs the floor to pull with 7 % of the
    weight: pulling, not balanced; in free fall (1 g) it needs nothing: balanced. In flight, spinning up about the
    vertical at 30 rad/s^2 needs a torque nothing in the air supplies: not balanced; the same fall without the spin
    is."""
    from daps.motion.rotations import yaw_quat
    from daps.robot.physics import balance_check

    _, h1 = clips
    fps, t = 30.0, (np.arange(3) - 1) / 30.0
    for g, pulling in ((1.07, 1.0), (1.0, 0.0)):
        poses = np.zeros((3, 26))
        poses[:, 2], poses[:, 3] = 1.044 - 0.5 * g * 9.81 * t**2, 1.0
        got = balance_check(h1, poses, fps)
        assert got["pulling_fraction"] == pulling and got["balanced_fraction"] == 1.0 - pulling, (g, got)
    t = np.arange(12) / fps
    for spin, balanced in ((30.0, 0.0), (0.0, 1.0)):
        poses = np.zeros((12, 26))
        poses[:, 2] = 1.544 + 3.0 * t - 0.5 * 9.81 * t**2  # a ballistic flight, 0.5 m up and higher
        poses[:, 3:7] = yaw_quat(0.5 * spin * t**2)
        assert balance_check(h1, poses, fps)["balanced_fraction"] == balanced, spin


# --------------------------------------------------------------------------------------------------
# The CLI on a tiny tokenizer


TINY_TOKENIZER = [
    "encoder.width=32", "encoder.num_heads=2", "encoder.vocab_size=16", "encoder.num_layers=1",
    "encoder.num_tokens=16", "decoder.embed_dim=32", "decoder.transformer_heads=2", "decoder.transformer_layers=1",
    "daps.num_samples=2", "train.batch_size=8", "train.steps=2", "train.log_every=1", "train.eval_every=2",
    "train.ckpt_every=2", "train.eval_examples=16", "train.eval_batch_size=8", "train.progress=false",
    "train.logger=none",
]
TINY_POLICY = ["width=32", "num_layers=1", "num_heads=2", "steps=4", "batch_size=16", "eval_every=2",
               "ckpt_every=2", "log_every=2", "stride=16", "progress=false"]


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    if not REAL_DIR:
        pytest.skip("DAPS_DATA_DIR not set (reads the real LAFAN1 H1 clips)")
    root = tmp_path_factory.mktemp("robot")
    torch.set_num_threads(1)
    tok = root / "tokenizer"
    assert main(["train", "--preset", "lafan1-h1", *TINY_TOKENIZER, f"data.data_dir={REAL_DIR}",
                 f"train.out_dir={tok}"]) == 0
    policy = root / "policy"
    assert main(["robot", "train", str(tok), "--out", str(policy), *TINY_POLICY]) == 0
    return tok, policy


@needs_data
def test_robot_train_plan_and_eval_end_to_end(tiny_policy, tmp_path, capsys, monkeypatch, caplog):
    tok, policy = tiny_policy
    config = json.loads((policy / "config.json").read_text())
    meta = config["commands"]
    assert meta["num_tokens"] == 16 and meta["vocab_size"] == 16 and meta["window"] == 32
    ranges = meta["velocity_ranges"]["walk"]
    assert 0.3 < ranges["quartiles"][1][0] < 2.0  # median forward speed of walking windows, m/s
    out = tmp_path / "walk.mp4"
    capsys.readouterr()
    with caplog.at_level("INFO", logger="daps"):
        code = main(["robot", "plan", str(policy), "--prompt", "a slow walk", "--velocity", "1.0", "--seconds", "2",
                     "--size", "32", "--out", str(out), "--physics", "--json", str(tmp_path / "walk.json")])
    err = capsys.readouterr().err
    if code == 2 and "OpenGL" in err:
        pytest.skip(f"no offscreen OpenGL here: {err.strip()}")
    assert code == 0, err
    assert out.stat().st_size > 0 and (tmp_path / "walk_physics.mp4").stat().st_size > 0
    assert f"wrote {tmp_path / 'walk.json'}: " in caplog.text  # every file written is named, the JSON too
    caplog.clear()
    report = json.loads((tmp_path / "walk.json").read_text())
    assert report["motion"] == "walk" and len(report["requested"]) == 2  # 2 s = 2 windows of 1.07 s
    from daps.robot.cli import _is_plan_report

    assert _is_plan_report(tmp_path / "walk.json")  # so --json --overwrite may replace it (and only it)
    assert report["physics"]["support_force_bw"] > 0
    assert 0 < report["physics_ground_truth"]["support_force_bw"] < 1.0  # a real walking segment of the same length
    checkpoint = policy / "checkpoints" / (policy / "checkpoints" / "latest").read_text().strip()
    with caplog.at_level("INFO", logger="daps"):  # a checkpoint names its run
        assert main(["robot", "eval", str(checkpoint), "--rollouts", "1", "--windows", "2", "--no-classifier",
                     "--json", "--motions", "walk", "--out", str(tmp_path / "report")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert f"wrote {tmp_path / 'report.json'} (everything) and {tmp_path / 'report.md'} (the table)" in caplog.text
    assert json.loads((tmp_path / "report.json").read_text())["rows"] == result["rows"]
    caplog.clear()
    assert result["settings"]["physics_rollouts"] == 1  # the default 2, but no more than were planned
    for extra, message in ((["--physics-rollouts", "2"], "--physics-rollouts 2 is more than --rollouts 1"),
                           (["--motions", "walk,walk"], "--motions walk,walk: a kind is repeated")):
        assert main(["robot", "eval", str(checkpoint), "--rollouts", "1", "--windows", "2", "--no-classifier",
                     *extra]) == 2
        assert message in capsys.readouterr().err
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # no trained classifier there
    capsys.readouterr()
    with caplog.at_level("WARNING", logger="daps"):
        assert main(["robot", "eval", str(policy), "--rollouts", "1", "--windows", "2", "--blend", "40"]) == 2
    assert "--blend must be between 0 and the window length" in capsys.readouterr().err
    assert "no kind-of-motion column" not in caplog.text  # refused before the missing classifier is warned about
    caplog.clear()
    with caplog.at_level("WARNING", logger="daps"):
        assert main(["robot", "eval", str(policy), "--rollouts", "1", "--windows", "2", "--physics-rollouts", "0",
                     "--json", "--motions", "walk"]) == 0
    assert "no kind-of-motion column: no motion classifier at" in caplog.text
    assert json.loads(capsys.readouterr().out)["rows"]
    assert [r["percentile"] for r in result["rows"]] == [25, 50, 75]
    row = result["rows"][0]
    for key in ("abs_error_forward_m_s", "recon_abs_error_forward_m_s", "border_joint_accel", "gt_border_joint_accel",
                "foot_skating_m_s", "foot_float_mm", "gt_foot_float_mm",
                "support_force_bw", "gt_support_force_bw", "balanced_fraction", "unique_fraction",
                "copy_fraction"):
        assert np.isfinite(row[key]), key
    assert 0.5 < result["com_agreement"]["root_vs_com_forward_correlation"] <= 1.0
    rows = result["rows"]
    for r in rows:  # a mean of |error| per window: not negative, and at least |mean achieved - requested|
        assert min(r[f"abs_error_{n}"] for n in ("forward_m_s", "left_m_s", "yaw_rad_s")) >= 0
        assert r["abs_error_forward_m_s"] >= abs(r["achieved_forward_m_s"] - r["requested_forward_m_s"]) - 1e-9
    # one set of ground-truth segments serves the three requests
    for key in ("support_force_bw", "balanced_fraction", "foot_skating_m_s", "foot_float_mm"):
        assert len({r[f"gt_{key}"] for r in rows}) == 1, key
    assert all(r["gt_support_force_bw"] != r["support_force_bw"] for r in rows)  # real walking is not the plan
    assert result["commit"]  # where the numbers came from


@needs_data
def test_robot_bad_requests_are_one_line(tiny_policy, tmp_path, capsys, trained_run):
    tok, policy = tiny_policy
    out = str(tmp_path / "a.mp4")
    binary = tmp_path / "schedule.txt"
    binary.write_bytes(b"\xff\xfe\x00\x01")
    retrained = tmp_path / "retrained"  # the tokenizer's latest checkpoint rewritten with other weights (same V, T)
    shutil.copytree(tok, retrained)
    from daps.checkpoint import load_model, load_training_state, resolve_checkpoint, save_checkpoint

    model = load_model(retrained)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    state = load_training_state(resolve_checkpoint(retrained))
    save_checkpoint(retrained, int(state["step"]), model, model.config, state, keep=2)
    cases = [
        (["robot", "plan", str(policy), "--motion", "swim", "--out", out], "unknown motion 'swim'"),
        (["robot", "plan", str(policy), "--motion", "swim", "--out", out], "(or --prompt TEXT)"),
        (["robot", "eval", str(policy), "--motions", "walk,swim"], "dance, fall, fight, jump, run, walk"),
        (["robot", "plan", str(policy), "--prompt", "sing a song", "--out", out], "names no kind"),
        (["robot", "plan", str(policy), "--motion", "walk", "--velocity", "fast", "--out", out], "--velocity"),
        (["robot", "plan", str(policy), "--motion", "walk", "--out", str(tmp_path / "a.gif")], "ending in .mp4"),
        (["robot", "plan", str(tok), "--motion", "walk", "--out", out], "not a robot policy (daps robot train)"),
        (["robot", "train", str(trained_run), "--out", str(tmp_path / "p")], "needs a motion tokenizer"),
        (["robot", "train", str(tok), "--out", str(policy)], "already exists"),
        (["robot", "train", str(tok), "--out", str(tok), "--overwrite"], "is not a daps robot folder"),
        (["robot", "train", str(tok), "--out", str(tmp_path / "p"), "stride=5"], "must divide"),
        (["robot", "train", str(tok), "--out", str(tmp_path / "p"), "colour=blue"], "unknown setting"),
        (["robot", "train", str(tok), "--out", str(tmp_path / "p"), "steps"], "'steps' is not a key=value setting"),
        (["robot", "plan", str(policy), "--motion", "walk", "--seconds", "nan", "--out", out], "--seconds"),
        (["robot", "plan", str(policy), "--motion", "walk", "--seconds", "inf", "--out", out], "--seconds"),
        (["robot", "plan", str(policy), "--motion", "walk", "--temperature", "0", "--out", out], "--temperature"),
        (["robot", "plan", str(policy), "--motion", "walk", "--guidance", "nan", "--out", out], "--guidance"),
        (["robot", "plan", str(policy), "--motion", "walk", "--velocity", "1", "--velocity-schedule", str(binary),
          "--out", out], "not both"),
        (["robot", "plan", str(policy), "--motion", "walk", "--velocity-schedule", str(binary), "--out", out],
         "not a text file"),
        (["robot", "eval", str(policy), "--motions", ","], "names no kind"),
        (["robot", "plan", str(policy), "--motion", "walk", "--blend", "1000", "--out", out], "--blend must be"),
        (["robot", "eval", str(policy), "--out", str(tmp_path / "notes")], "not part of a robot eval"),
        (["robot", "eval", str(policy), "--out", str(tmp_path / "notes"), "--overwrite"], "not part of a robot eval"),
        (["robot", "eval", str(policy), "--out", str(policy / "config"), "--overwrite"], "not part of a robot eval"),
        (["robot", "plan", str(policy), "--motion", "walk", "--out", out, "--json", str(tmp_path / "notes.json"),
          "--overwrite"], "is not an earlier robot plan report"),
        (["robot", "plan", str(policy), "--motion", "walk", "--tokenizer", str(retrained), "--out", out],
         "is not the checkpoint that made the policy's codes"),
    ]
    (tmp_path / "notes.json").write_text('{"mine": 1}')
    (tmp_path / "notes.md").write_text("mine")
    policy_config = (policy / "config.json").read_text()
    capsys.readouterr()
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (argv, err)
        assert argv[1] != "eval" or "--prompt" not in err, err
    assert not (tmp_path / "a.mp4").exists() and not (tmp_path / "p").exists()
    assert (tok / "config.json").is_file() and (tok / "checkpoints").is_dir()  # the tokenizer run was not touched
    assert (tmp_path / "notes.json").read_text() == '{"mine": 1}' and (tmp_path / "notes.md").read_text() == "mine"
    assert (policy / "config.json").read_text() == policy_config


@needs_data
def test_out_of_range_velocity_is_clamped_with_a_warning(tiny_policy, tmp_path, caplog):
    _, policy = tiny_policy
    from daps.robot.plan import Planner, plan_motion

    planner = Planner(policy)
    high = planner.velocity_range("walk")[1]
    with caplog.at_level("WARNING", logger="daps"):
        rollout = plan_motion(planner, "walk", np.array([20.0, 0.0, 0.0]), 1.0)
    assert rollout.velocity[0, 0, 0] == pytest.approx(high[0])
    assert any("forward_m_s 20 is outside the data's range" in r.message for r in caplog.records)


@needs_data
def test_a_pretrained_tokenizer_plans_the_motion_its_run_plans(tiny_policy, tmp_path):
    """``robot plan --tokenizer`` given the motion tokenizer's ``daps export`` folder decodes with the statistics the
    folder carries (standardization.json): the same codes and the same motion as with the run, and the policy's
    header checks its weights by their digest. Fails on: the folder refused, or its statistics not used."""
    from daps.hub import export_run
    from daps.robot.plan import Planner, plan_motion

    tok, policy = tiny_policy
    folder = export_run(tok, tmp_path / "exported")
    by_run, by_folder = Planner(policy), Planner(policy, tokenizer=folder)
    assert np.array_equal(by_folder.stats.scale, by_run.stats.scale)
    a = plan_motion(by_run, "walk", np.zeros(3), 2 * by_run.window_seconds, seed=3)
    b = plan_motion(by_folder, "walk", np.zeros(3), 2 * by_folder.window_seconds, seed=3)
    assert np.array_equal(a.codes, b.codes)
    np.testing.assert_allclose(b.features, a.features, rtol=0, atol=1e-6)
    assert by_run.meta["weights_digest"]  # what makes the exported folder checkable
    # a policy trained on the export's codes: the run's commands, the folder named as their tokenizer
    from daps.robot.data import load_commands
    from daps.robot.run import COMMANDS_FILE

    other = tmp_path / "policy"
    assert main(["robot", "train", str(folder), "--out", str(other), "--data-dir", REAL_DIR, *TINY_POLICY]) == 0
    (mine, meta), (theirs, original) = load_commands(other / COMMANDS_FILE), load_commands(policy / COMMANDS_FILE)
    for split in ("train", "val"):
        assert torch.equal(mine[split].codes, theirs[split].codes)
    assert meta["weights_digest"] == original["weights_digest"] and meta["checkpoint"] == str(folder.resolve())
    assert meta["model_sha256"] == "" and original["model_sha256"]  # (a folder has no checkpoint file's checksum)


def test_blended_rollouts_judge_the_motion_that_is_played(tiny_policy):
    """robot eval's classifier reads ``windows``: with --blend they must be the blended features, standardized."""
    _, policy = tiny_policy
    from daps.robot.plan import Planner, plan_motion

    planner = Planner(policy)
    plain = plan_motion(planner, "walk", np.zeros(3), 3 * planner.window_seconds, seed=1)
    blended = plan_motion(planner, "walk", np.zeros(3), 3 * planner.window_seconds, seed=1, blend=8)
    assert np.array_equal(plain.codes, blended.codes)
    for r in (plain, blended):
        assert np.allclose(r.windows, planner.stats.normalize(r.features))
    assert not np.allclose(plain.windows[:, 1:, :8], blended.windows[:, 1:, :8])  # the borders moved
    assert np.allclose(plain.windows[:, :, 8:], blended.windows[:, :, 8:])


def test_report_stem_replaces_only_an_earlier_report(tmp_path):
    from daps.errors import UserError
    from daps.robot.evaluate import check_report_stem

    stem = tmp_path / "eval"
    check_report_stem(stem, overwrite=False)  # nothing there: fine
    from daps.robot.evaluate import table

    report = {"policy": "p", "method": "vqvae", "rows": [{"motion": "walk", "requested_forward_m_s": 1.0}],
              "settings": {"rollouts": 1, "windows": 2, "window_seconds": 1.07, "physics_rollouts": 0, "seed": 0,
                           "guidance": 1.0, "blend": 0}}
    (tmp_path / "eval.json").write_text(json.dumps(report))
    (tmp_path / "eval.md").write_text(table(report))  # as robot eval writes it: a caption, then the table
    with pytest.raises(UserError, match="--overwrite"):
        check_report_stem(stem, overwrite=False)
    check_report_stem(stem, overwrite=True)  # an earlier report: replaceable
    (tmp_path / "eval.md").write_text("my notes")
    with pytest.raises(UserError, match="not part of a robot eval report"):
        check_report_stem(stem, overwrite=True)
    (tmp_path / "eval.json").unlink()
    (tmp_path / "eval.md").write_text("| my | own table |\n")  # a table alone is not a report
    with pytest.raises(UserError, match="not part of a robot eval report"):
        check_report_stem(stem, overwrite=True)
    from daps.robot.evaluate import report_paths

    assert report_paths(tmp_path / "eval.v2") == (tmp_path / "eval.v2.json", tmp_path / "eval.v2.md")
    assert report_paths(tmp_path / "eval.json") == (tmp_path / "eval.json", tmp_path / "eval.md")
    for folder in (Path("."), tmp_path / ".."):
        with pytest.raises(UserError, match="names a folder"):
            check_report_stem(folder, overwrite=False)


def test_several_codes_per_window_of_a_quantizer_are_refused_not_ignored():
    from daps.robot.run import codes_per_window

    assert codes_per_window("daps", 4) == 4 and codes_per_window("fsq", 1) == 1
    for method in ("fsq", "vqvae"):
        with pytest.raises(UserError, match=f"samples=4: {method} encodes deterministically"):
            codes_per_window(method, 4)


def test_ground_truth_segments_take_a_negative_seed_as_torch_does(clips):
    """``robot eval --seed -1`` (a seed the flag accepts) raised NumPy's "expected non-negative integer" traceback;
    a negative seed is now taken modulo 2^64, as torch takes it."""
    from daps.data.motion import MOTION_TYPES
    from daps.robot.evaluate import ground_truth_segments

    motion, _ = clips
    walk = MOTION_TYPES.index("walk")
    poses, feats = ground_truth_segments(motion, walk, 32, 3, seed=-1)
    same, _ = ground_truth_segments(motion, walk, 32, 3, seed=2**64 - 1)
    other, _ = ground_truth_segments(motion, walk, 32, 3, seed=1)
    assert poses.shape == (3, 32, 26) and np.array_equal(poses, same) and not np.array_equal(poses, other)


def test_the_plan_video_is_captioned_with_each_windows_command_and_the_time(monkeypatch, tmp_path):
    """``robot plan``'s video says what was asked and when: frame f of window w shows the kind, window w's velocity
    and f / fps seconds (two windows of 2 frames at 2 fps: 0, 0.5, 1, 1.5 s); ``render_motion`` draws frame t's
    caption on frame t (the second window's frames differ from the first's), each distinct text drawn once."""
    import daps.motion.render as render
    from daps.robot.cli import plan_captions

    captions = plan_captions("walk", [[1.0, 0.0, 0.3], [0.5, -0.25, -0.04]], window=2, fps=2.0)
    assert captions == ["walk +1.0,+0.0 m/s +0.3 rad/s 0.0 s", "walk +1.0,+0.0 m/s +0.3 rad/s 0.5 s",
                        "walk +0.5,-0.2 m/s +0.0 rad/s 1.0 s", "walk +0.5,-0.2 m/s +0.0 rad/s 1.5 s"]  # not -0.0
    frames: list[np.ndarray] = []
    drawn: list[str] = []
    band = render._caption_band
    monkeypatch.setattr(render, "_views", lambda h1, motions, *a: ([np.zeros((32, 320, 3), np.uint8)]
                                                                    for _ in range(len(motions[0]))))
    monkeypatch.setattr(render, "_write_mp4", lambda it, path, fps: frames.extend(it) or path)
    monkeypatch.setattr(render, "_caption_band", lambda text, width: (drawn.append(text), band(text, width))[1])
    render.render_motion(None, np.zeros((4, 26)), tmp_path / "p.mp4", fps=2.0, captions=captions)
    assert drawn == captions  # every caption differs here (the time), each drawn once
    assert all(f[:16].any() and not f[16:].any() for f in frames)  # the band on top, the view below
    assert not np.array_equal(frames[1], frames[2])
    render.render_motion(None, np.zeros((4, 26)), tmp_path / "q.mp4", captions=["same"] * 4)
    assert drawn[4:] == ["same"]
    with pytest.raises(ValueError, match="3 captions for 4 frames"):
        render.render_motion(None, np.zeros((4, 26)), tmp_path / "r.mp4", captions=["a"] * 3)


def test_a_captioned_video_holds_one_caption_band_at_a_time(monkeypatch, tmp_path):
    """``render_motion`` kept every distinct caption's band until the video was written: robot plan's captions
    change with the time every 0.1 s, so an hour's plan (MAX_SECONDS) held 36,000 bands (about 0.4 GB). A caption
    repeated on consecutive frames is still drawn once. Fails on: a cache of every band."""
    import weakref

    import daps.motion.render as render

    alive: list[weakref.ref] = []
    drawn: list[str] = []
    band = render._caption_band

    def draw(text: str, width: int) -> np.ndarray:
        drawn.append(text)
        image = band(text, width)
        alive.append(weakref.ref(image))
        return image

    held: list[int] = []

    def write(frames, path, fps):
        for _ in frames:
            held.append(sum(ref() is not None for ref in alive))
        return path

    monkeypatch.setattr(render, "_views", lambda h1, motions, *a: ([np.zeros((32, 320, 3), np.uint8)]
                                                                    for _ in range(len(motions[0]))))
    monkeypatch.setattr(render, "_write_mp4", write)
    monkeypatch.setattr(render, "_caption_band", draw)
    captions = [f"{t // 2 / 10:.1f} s" for t in range(40)]  # each caption on two consecutive frames
    render.render_motion(None, np.zeros((40, 26)), tmp_path / "p.mp4", captions=captions)
    assert drawn == captions[::2]
    assert max(held) == 1
