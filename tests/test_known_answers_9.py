"""Known answers for behaviour that a ninth mutation sweep found no test guarding: config differences between
methods, the lafan1-h1 preset's README row, what makes a source revision dirty, ``save_images`` refusing to write
over earlier images, the longest step timeout under torchrun, the layout of motion videos, the settings, held-out
split, loop and evaluation of priors, the robot policy's settings, held-out rows and command-line checks, and the
``daps`` command's seed, device and exit-code rules. Each test names the plausible slips it fails on (checked
against the mutant for each slip no earlier test caught)."""

from __future__ import annotations

import subprocess
from types import SimpleNamespace

import pytest
import torch

from daps.errors import UserError

# --------------------------------------------------------------------------------------------------
# Configs and provenance


def test_config_differences_pair_a_key_only_one_config_has_with_none():
    """Configs of two methods: each method's own settings appear, paired with None on the side that lacks them, in
    both directions (``daps.num_samples``: (8, None); ``fsq.levels``: (None, (8, 6, 5))). Fails on: keys collected
    from ``a`` only (the second method's settings vanish)."""
    from daps.config_io import config_differences
    from daps.presets import get_preset

    a, b = get_preset("mnist", "daps"), get_preset("mnist", "fsq")
    diffs = config_differences(a, b)
    assert diffs["daps.num_samples"] == (8, None)
    assert diffs["fsq.levels"] == (None, (8, 6, 5))
    assert config_differences(b, a)["fsq.levels"] == ((8, 6, 5), None)


@pytest.mark.parametrize("method", ["daps", "fsq"])
def test_the_lafan1_preset_is_the_readme_row(method):
    """The README's ``lafan1-h1`` row: windows of 32 frames x 86 features, T=64 tokens of V=1024, E=128, the window
    embedded over time, a 2-layer transformer decoder with the fixed variance 0.25, B=256, 250k steps, validation on
    10,000 windows; for every method (its settings come after the dataset's). Fails on: another validation size,
    the time embedding dropped."""
    from daps.presets import get_preset

    cfg = get_preset("lafan1-h1", method)
    assert cfg.data.image_shape == (1, 32, 86)
    assert (cfg.encoder.num_tokens, cfg.encoder.vocab_size, cfg.encoder.width, cfg.encoder.embed) == (64, 1024, 128,
                                                                                                      "time")
    assert (cfg.decoder.kind, cfg.decoder.transformer_layers, cfg.decoder.fixed_variance) == ("transformer", 2, 0.25)
    assert (cfg.train.batch_size, cfg.train.steps, cfg.train.eval_examples) == (256, 250_000, 10_000)


def _git(repo, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=u", "-c", "user.email=u@x", *args], check=True,
                   capture_output=True)


def test_a_revision_is_dirty_for_changed_tracked_files_not_for_untracked_ones(tmp_path):
    """A clean checkout is its commit; a new untracked file (a run folder, a plot) leaves it clean; an unstaged
    edit of a tracked file makes it ``<commit>+dirty``. Fails on: untracked files counted, only staged changes
    counted."""
    from daps.provenance import source_revision

    _git(tmp_path, "init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    _git(tmp_path, "add", "code.py")
    _git(tmp_path, "commit", "-qm", "x")
    commit = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert source_revision(tmp_path) == commit
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "metrics.jsonl").write_text("{}\n")
    assert source_revision(tmp_path) == commit
    (tmp_path / "code.py").write_text("x = 2\n")
    assert source_revision(tmp_path) == commit + "+dirty"


# --------------------------------------------------------------------------------------------------
# Image files out


def _model(name: str, shape: tuple[int, int, int]) -> SimpleNamespace:
    """What save_images reads of a model: its input shape and its dataset's name."""
    return SimpleNamespace(input_spec=SimpleNamespace(image_shape=shape), config=SimpleNamespace(
        data=SimpleNamespace(name=name)))


def test_save_images_refuses_to_write_over_earlier_images(tmp_path):
    """A second ``save_images`` into the same folder with the same prefix is refused, naming the first file that
    exists, and leaves the earlier images as they were; another prefix writes next to them. Fails on: the check
    for existing files dropped (the images are silently replaced)."""
    from daps.inputs import save_images

    model = _model("mnist", (1, 28, 28))
    first = save_images(torch.zeros(2, 1, 28, 28), model, tmp_path)
    before = [p.read_bytes() for p in first]
    with pytest.raises(UserError, match=r"image_0000\.png exists; choose another folder or prefix"):
        save_images(torch.ones(2, 1, 28, 28), model, tmp_path)
    assert [p.read_bytes() for p in first] == before
    assert [p.name for p in save_images(torch.ones(1, 1, 28, 28), model, tmp_path, prefix="b")] == ["b_0000.png"]


# --------------------------------------------------------------------------------------------------
# torchrun settings


def test_the_step_timeout_may_be_exactly_the_seven_days_of_the_wait_group(monkeypatch):
    """``DAPS_DIST_TIMEOUT_S`` is at most 7 days, inclusive: 604800 s is 7 days, 604800.5 s is refused. Fails on:
    the bound exclusive (the documented maximum refused)."""
    from daps import dist

    monkeypatch.setenv("DAPS_DIST_TIMEOUT_S", " 604800 ")
    assert dist._timeout() == dist.WAIT_TIMEOUT
    monkeypatch.setenv("DAPS_DIST_TIMEOUT_S", "604800.5")
    with pytest.raises(UserError, match=r"at most 7 days\), got '604800.5'"):
        dist._timeout()
    monkeypatch.setenv("DAPS_DIST_TIMEOUT_S", "")
    assert dist._timeout() is None


# --------------------------------------------------------------------------------------------------
# Motion videos (the renderer replaced by flat-coloured views: the layout is what is checked)


@pytest.fixture
def flat_views(monkeypatch):
    """``daps.motion.render`` with ``_views`` giving motion i's frames the value 10 (i + 1) and ``_write_mp4``
    keeping its frames: ``calls`` records each view request (motions, follow), ``written`` the frames."""
    import numpy as np

    import daps.motion.render as render

    record = SimpleNamespace(calls=[], written=[])

    def views(h1, motions, follow, colours, width, height, distance):  # per time step, every motion's frame
        record.calls.append(([np.asarray(m) for m in motions], [np.asarray(f) for f in follow]))
        return ([np.full((height, width, 3), 10 * (i + 1), np.uint8) for i in range(len(motions))]
                for _ in range(len(motions[0])))

    def write(frames, path, fps):
        record.written.append(np.stack(list(frames)))
        return path

    monkeypatch.setattr(render, "_views", views)
    monkeypatch.setattr(render, "_write_mp4", write)
    return record


def test_a_grid_of_three_motions_in_two_columns_has_a_black_fourth_tile(flat_views, tmp_path):
    """``render_grid`` of 3 motions, 2 columns, 16-pixel tiles: 2 rows (ceil(3 / 2)), motion 0 top left, 1 top right,
    2 bottom left, a black tile bottom right: frames (T, 32, 32, 3). Fails on: the row count rounded down (the
    third motion dropped), rows and columns swapped."""
    import numpy as np

    from daps.motion.render import render_grid

    render_grid(None, np.zeros((3, 2, 26)), tmp_path / "grid.mp4", columns=2, tile=16)
    (grid,) = flat_views.written
    assert grid.shape == (2, 32, 32, 3)
    assert [int(grid[0, r, c, 0]) for r, c in ((0, 0), (0, 16), (16, 0), (16, 16))] == [10, 20, 30, 0]


def test_a_grid_refuses_tiles_off_the_macroblock_and_captions_of_another_count(flat_views, tmp_path):
    """``render_grid`` checks before rendering: a tile of 24 pixels (not a multiple of 16) and 2 captions for 3
    motions are ValueErrors and nothing is rendered. Fails on: either check dropped."""
    import numpy as np

    from daps.motion.render import render_grid

    motions = np.zeros((3, 2, 26))
    with pytest.raises(ValueError, match="tile must be a multiple of 16"):
        render_grid(None, motions, tmp_path / "grid.mp4", columns=2, tile=24)
    with pytest.raises(ValueError, match="2 captions for 3 motions"):
        render_grid(None, motions, tmp_path / "grid.mp4", columns=2, captions=["a", "b"], tile=16)
    assert flat_views.calls == []


def test_side_by_side_puts_truth_left_and_both_cameras_on_the_truth(flat_views, tmp_path):
    """``render_side_by_side``: ground truth left, reconstruction right, side by side (frames (T, H, 2W, 3)), both
    cameras following the ground truth's pelvis (so a drifting reconstruction shows); a reconstruction of another
    length is refused. Fails on: the views stacked vertically, the right camera following the reconstruction, the
    shape check dropped."""
    import numpy as np

    from daps.motion.render import render_side_by_side

    truth, pred = np.zeros((3, 26)), np.ones((3, 26))
    render_side_by_side(None, truth, pred, tmp_path / "clip.mp4", width=128, height=32)
    (frames,) = flat_views.written
    assert frames.shape == (3, 32, 256, 3)
    assert int(frames[0, -1, 0, 0]) == 10 and int(frames[0, -1, 128, 0]) == 20  # under the captions
    ((motions, follow),) = flat_views.calls
    assert np.array_equal(motions[1], pred) and all(np.array_equal(f, truth) for f in follow)
    with pytest.raises(ValueError, match="of one shape"):
        render_side_by_side(None, truth, pred[:2], tmp_path / "other.mp4")


def test_side_by_side_views_carry_their_captions(flat_views, tmp_path):
    """Each view of ``render_side_by_side`` has its caption (white text on a dark 16-pixel band) in its top-left
    corner: "ground truth" and "reconstruction" by default, the caller's otherwise (robot plan --physics: "kinematic
    plan", "physics tracking"); the band never spills into the other view. Fails on: views without captions (the mp4
    alone did not say which robot is which)."""
    import numpy as np

    from daps.motion.render import _caption_band, render_side_by_side

    poses = np.zeros((2, 26))
    render_side_by_side(None, poses, poses, tmp_path / "a.mp4", width=128, height=32)
    render_side_by_side(None, poses, poses, tmp_path / "b.mp4", width=128, height=32,
                        captions=("kinematic plan", "physics tracking"))
    render_side_by_side(None, poses, poses, tmp_path / "c.mp4", width=16, height=16)  # a band wider than the view
    default, custom, small = (f[0] for f in flat_views.written)
    expected = ((default, ("ground truth", "reconstruction")), (custom, ("kinematic plan", "physics tracking")))
    for frame, texts in expected:
        for view, text in zip((frame[:, :128], frame[:, 128:]), texts):
            band = _caption_band(text, 128)
            assert np.array_equal(view[:16, : band.shape[1]], band)
            assert (view[:16, : band.shape[1]] > 200).any()  # some text drawn (light on the dark band)
            assert (view[16:] == view[-1, -1]).all()  # the rest is the rendered view
    assert not np.array_equal(default[:16, :128], custom[:16, :128])
    assert small.shape == (16, 32, 3) and int(small[0, 16, 0]) != 10  # right band starts at the right view's edge


# --------------------------------------------------------------------------------------------------
# Priors and the robot policy


def test_prior_settings_parse_booleans_numbers_and_refuse_flags():
    """``key=value`` of ``daps prior train``: ``progress=1`` / ``TRUE`` are true and ``0`` / ``false`` false, ``yes``
    is refused; ``lr=2e-3`` a float, ``steps=7`` an int; ``out_dir=...`` is refused with the flag that sets it; the
    original is not changed. Fails on: ``1`` read as false, the flag check dropped (an out_dir override silently
    beaten by --out)."""
    from daps.prior.run import PriorConfig, apply_overrides

    base = PriorConfig()
    assert apply_overrides(PriorConfig(progress=False), ["progress=1"]).progress is True
    assert apply_overrides(base, ["progress=TRUE"]).progress is True
    assert apply_overrides(base, ["progress=0"]).progress is False
    assert apply_overrides(base, ["progress=false"]).progress is False
    with pytest.raises(UserError, match=r"progress='yes' is not a valid bool"):
        apply_overrides(base, ["progress=yes"])
    cfg = apply_overrides(base, ["lr=2e-3", "steps=7"])
    assert (cfg.lr, cfg.steps, base.lr, base.steps) == (2e-3, 7, 1e-3, 5000)
    with pytest.raises(UserError, match="give out_dir with --out, not as a setting"):
        apply_overrides(base, ["out_dir=elsewhere"])


def test_the_held_out_share_is_rounded_and_the_same_split_for_every_seed():
    """``split_codes`` holds out round(N * val_fraction) inputs, at least one: 30 inputs at 5% -> 2 (1.5 rounds to
    2), 10 -> 1; the split is fixed (the same for seeds 0 and 7, so runs of several seeds compare on one held-out
    set), disjoint, in input order and whole inputs (both of an input's K codes on one side). Fails on: the share
    truncated (1 of 30), a split drawn with the run's seed."""
    from daps.codes import CodeSet
    from daps.prior.run import PriorConfig, split_codes

    def split(n: int, seed: int) -> tuple[CodeSet, CodeSet]:
        codes = torch.arange(n)[:, None, None].expand(n, 2, 3)  # (N, K=2, T=3): input i's codes all hold i
        return split_codes(PriorConfig(seed=seed), CodeSet(codes, torch.arange(n) % 3, {}))

    train, val = split(30, 0)
    ids_train, ids_val = train.codes[:, 0, 0].tolist(), val.codes[:, 0, 0].tolist()
    assert len(ids_val) == 2 and sorted(ids_train + ids_val) == list(range(30))
    assert ids_train == sorted(ids_train) and ids_val == sorted(ids_val)
    assert torch.equal(val.labels, torch.tensor(ids_val) % 3) and bool((val.codes == val.codes[:, :1, :1]).all())
    assert split(30, 7)[1].codes[:, 0, 0].tolist() == ids_val
    assert split(10, 0)[1].codes.shape == (1, 2, 3)


def test_a_code_models_last_step_is_checkpointed_even_after_a_skipped_update(tmp_path):
    """``run_steps`` over 4 steps, the 2nd and 4th non-finite, a row and a checkpoint every 2 steps, a loss of 3 on
    the applied steps: each train row's loss is 3 (the mean over the applied steps only) with one skip; step 2 gets
    no checkpoint (right after a skipped update), the final step 4 does, carrying the streak of 1. Fails on: the
    mean taken over all steps of the row (1.5), the final checkpoint withheld after a skipped update (the run
    would end without one)."""
    import json
    import math

    from daps.checkpoint import load_training_state
    from daps.prior.run import run_steps

    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    cfg = SimpleNamespace(steps=4, grad_clip=1.0, log_every=2, eval_every=10**6, ckpt_every=2, keep_checkpoints=5,
                          progress=False)
    losses = iter([3.0, math.nan, 3.0, math.nan])

    def batch_loss() -> torch.Tensor:
        return model(torch.ones(1, 1)).sum() * 0 + next(losses)

    run_steps(tmp_path, model, optimizer, torch.Generator(), {}, cfg, 0, batch_loss, dict, "test")
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [(r["step"], r["loss"], r["skipped"]) for r in rows if r["split"] == "train"]
    assert train == [(2, 3.0, 1), (4, 3.0, 1)]
    ckpts = sorted((tmp_path / "checkpoints").glob("step_*"))
    assert [p.name for p in ckpts] == ["step_00000004"]
    assert load_training_state(ckpts[0])["skipped_streak"] == 1


def test_untrained_null_label_is_warned_for_every_guidance_but_one(caplog):
    """Without label dropout the null label never trained: guidance 0 (the unconditional model alone), 0.5 and 3 use
    it and are warned, naming the flag; guidance 1 (the conditional model alone) and a run with dropout are not.
    Fails on: only guidance above 1 warned."""
    from daps.prior.run import warn_untrained_null

    for guidance in (0.0, 0.5, 3.0):
        caplog.clear()
        with caplog.at_level("WARNING", logger="daps"):
            warn_untrained_null(0.0, guidance, "--guidance")
        assert f"--guidance {guidance:g} uses the unconditional model" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="daps"):
        warn_untrained_null(0.0, 1.0)
        warn_untrained_null(0.1, 0.0)
    assert caplog.text == ""


def test_a_flow_priors_held_out_loss_takes_one_time_per_code_in_each_of_eight_strata(monkeypatch):
    """``evaluate_prior`` of a dfm prior scores every code once in each eighth of [0, 1), at a time drawn uniformly
    within it (stratified sampling of t ~ U[0, 1]: unbiased, where fixed midpoints are not); with uniform logits the
    loss is log V exactly; the model is back in training mode afterwards. Fails on: fixed times (the midpoints),
    a code left out of a stratum, the training mode not restored."""
    import math

    from daps.prior.nets import DFMPrior
    from daps.prior.run import evaluate_prior

    model = DFMPrior(num_tokens=3, vocab_size=5, num_classes=2, width=8, num_layers=1, num_heads=2)
    times = []

    def forward(xt, t, labels):
        times.extend(t.tolist())
        return torch.zeros(*xt.shape, 5)

    monkeypatch.setattr(model, "forward", forward)
    out = evaluate_prior(model, torch.randint(5, (6, 3)), torch.tensor([0, 1, 0, 1, 0, 1]), batch_size=4)
    assert len(times) == 8 * 6
    for j in range(8):  # the strata in turn, each over the 6 codes (in batches of 4 and 2)
        assert all(j / 8 <= t < (j + 1) / 8 for t in times[6 * j : 6 * j + 6]), (j, times[6 * j : 6 * j + 6])
    assert len(set(times)) == 48  # drawn, not fixed
    assert out["dfm_loss"] == pytest.approx(math.log(5)) and out["num_codes"] == 6.0
    assert model.training


def test_the_policys_dropout_shares_must_be_below_one():
    """``RobotConfig.validate``: label and previous-window dropout are shares in [0, 1): 0 passes, 1 is refused for
    each, naming it. Fails on: ``prev_dropout`` left unchecked (1 would hide every previous window in training)."""
    from daps.robot.run import RobotConfig

    RobotConfig(label_dropout=0.0, prev_dropout=0.0).validate()
    for name in ("label_dropout", "prev_dropout"):
        with pytest.raises(UserError, match=rf"{name} must be in \[0, 1\), got 1.0"):
            RobotConfig(**{name: 1.0}).validate()


def test_the_policys_held_out_rows_take_away_one_input_each():
    """``evaluate_policy`` with a stand-in policy whose log-probability per token is -ln 2 * (1 + 2 [null label] +
    4 [start symbols as the previous window] + 8 [velocity not the example's own]): the full inputs score 1 bit per
    token, the null label 3, no previous window 5, and velocities shuffled across examples 1 + 8 * (share moved).
    Fails on: a row that does not replace its input (the previous window kept, a real label for the null one)."""
    import math

    from daps.robot.data import CommandSet
    from daps.robot.run import evaluate_policy

    n, start, null = 6, 16, 3
    own = torch.arange(n, dtype=torch.float32)[:, None].expand(n, 3)

    class Policy:
        num_classes, start_symbol, training = null, start, True

        def eval(self):
            self.training = False

        def train(self):
            self.training = True

        def token_log_probs(self, codes, labels, velocity, prev):
            rows = torch.arange(len(codes)) + self.offset
            bits = (1 + 2 * (labels == null) + 4 * (prev == start).all(1)
                    + 8 * (velocity != own[rows]).any(1)).double()
            self.offset = (self.offset + len(codes)) % n
            return -math.log(2) * bits[:, None].expand(codes.shape)

    policy = Policy()
    policy.offset = 0
    val = CommandSet(torch.zeros(n, 2, dtype=torch.long), torch.ones(n, 2, dtype=torch.long),
                     torch.arange(n) % null, own.clone(), torch.arange(n))
    out = evaluate_policy(policy, val, batch_size=4)
    shuffled = val.velocity[torch.randperm(n, generator=torch.Generator().manual_seed(0))]  # the policy's shuffle
    moved = float((shuffled != own).any(1).float().mean())
    assert out["bits_per_token"] == pytest.approx(1.0)
    assert out["bits_per_token_null_label"] == pytest.approx(3.0)
    assert out["bits_per_token_no_prev"] == pytest.approx(5.0)
    assert out["bits_per_token_shuffled_velocity"] == pytest.approx(1.0 + 8 * moved) and moved > 0
    assert out["num_examples"] == 6.0 and policy.training


def _robot(tmp_path, capsys, *args: str) -> tuple[int, str]:
    """``daps robot ...`` in this process on a policy folder that does not exist (every check here comes first):
    the exit code and stderr."""
    from daps.cli import main

    code = main(["robot", *args[:1], str(tmp_path / "no-policy"), *args[1:]])
    return code, capsys.readouterr().err


def test_robot_plan_checks_its_arguments_before_reading_the_policy(tmp_path, capsys):
    """``robot plan``: ``--size 8`` is refused (below 16), and so are ``--velocity`` with ``--velocity-schedule``; a
    user's ``OUT_physics.mp4`` next to ``--out`` is refused under that name when ``--physics`` would write it. Each
    is exit 2 naming the problem, before the missing policy folder is noticed. Fails on: a lower size bound, the
    both-velocities check dropped, the physics video named otherwise."""
    out = str(tmp_path / "walk.mp4")
    for size in ("8", "100000"):  # a framebuffer that large fails as if OpenGL were missing
        code, err = _robot(tmp_path, capsys, "plan", "--motion", "walk", "--out", out, "--size", size)
        assert code == 2 and f"--size must be 16 to 4096 pixels, got {size}" in err
    code, err = _robot(tmp_path, capsys, "plan", "--motion", "walk", "--out", out, "--velocity", "1,0,0",
                       "--velocity-schedule", str(tmp_path / "schedule.txt"))
    assert code == 2 and "give --velocity or --velocity-schedule, not both" in err
    (tmp_path / "walk_physics.mp4").write_bytes(b"a user's video")
    code, err = _robot(tmp_path, capsys, "plan", "--motion", "walk", "--out", out, "--physics")
    assert code == 2 and "walk_physics.mp4" in err and "--physics" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["walk_physics.mp4"]


def test_robot_eval_checks_its_counts_before_reading_the_policy(tmp_path, capsys):
    """``robot eval``: one window per rollout (a velocity needs two to be measured), no rollout, ``--blend -1`` and
    a ``--motions`` list of only commas are exit 2 naming the bound, before the missing policy folder is noticed.
    Fails on: ``--windows 1`` accepted, the empty-motions check dropped."""
    for flags, message in ((["--windows", "1"], "--windows must be at least 2, got 1"),
                           (["--rollouts", "0"], "--rollouts must be at least 1, got 0"),
                           (["--blend", "-1"], "--blend must be at least 0, got -1")):
        code, err = _robot(tmp_path, capsys, "eval", *flags)
        assert code == 2 and message in err, flags
    code, err = _robot(tmp_path, capsys, "eval", "--motions", " , ")
    assert code == 2 and "names no kind of motion" in err


def test_a_plan_report_is_a_json_object_with_every_plan_key(tmp_path):
    """What ``robot plan --json --overwrite`` may replace: an object holding motion, seconds, requested and
    achieved (extra keys allowed); an object missing one of them, a list or broken JSON is a user's file. Fails on:
    any JSON object taken for a plan report."""
    import json

    from daps.robot.cli import _is_plan_report

    path = tmp_path / "plan.json"
    full = {"motion": "walk", "seconds": 4.0, "requested": [1, 0, 0], "achieved": [0.9, 0, 0], "physics": {}}
    path.write_text(json.dumps(full))
    assert _is_plan_report(path)
    for data in ({k: v for k, v in full.items() if k != "achieved"}, ["motion", "seconds", "requested", "achieved"]):
        path.write_text(json.dumps(data))
        assert not _is_plan_report(path)
    path.write_text("{")
    assert not _is_plan_report(path)


# --------------------------------------------------------------------------------------------------
# The daps command's own checks


def test_seeds_devices_and_exit_codes_of_the_daps_command(monkeypatch, capsys):
    """``--seed`` takes integers of magnitude below 2^53 (2^53 - 1 passes, 2^53 is refused); ``--device meta`` is
    refused (only cpu and cuda), and ``cuda`` on a machine without CUDA; a run that diverges exits 3, a file the
    user named that cannot be read exits 2, any other error is a bug and propagates. Fails on: the seed bound
    unchecked, a device type or CUDA's absence not checked, divergence or OSError given another exit code."""
    import argparse

    import daps.cli as cli
    from daps.train import TrainingDiverged

    assert cli.seed_arg(str(2**53 - 1)) == 2**53 - 1
    with pytest.raises(argparse.ArgumentTypeError, match="between -2\\^53 and 2\\^53"):
        cli.seed_arg(str(2**53))
    with pytest.raises(UserError, match="only cpu and cuda are supported"):
        cli._device("meta")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="CUDA is not available on this machine"):
        cli._device("cuda:0")
    for error, code in ((TrainingDiverged("loss is nan"), 3), (FileNotFoundError("no such file: x.json"), 2)):
        def fail(args, error=error):
            raise error

        monkeypatch.setattr(cli, "_train", fail)
        assert cli.main(["train"]) == code
        assert f"daps train: error: {error}" in capsys.readouterr().err
    monkeypatch.setattr(cli, "_train", lambda args: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["train"])


def test_eval_and_gradlab_bounds_are_checked_before_any_work(tmp_path, monkeypatch, capsys):
    """``daps eval --batch-size 0`` is exit 2 before the run is read; ``daps gradlab`` takes ``--beta 0`` (no
    entropy term) but refuses ``--resample 9`` with K = 8 (a resample of more codes than were drawn), before any
    draw. Fails on: a batch size of 0 accepted, ``--beta 0`` refused, resample sizes above K accepted."""
    import daps.gradlab
    from daps.cli import main

    assert main(["eval", str(tmp_path / "no-run"), "--batch-size", "0"]) == 2
    assert "--batch-size must be at least 1, got 0" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "no-run"), "--max-images", "-3"]) == 2
    assert "--max-images must be at least 0, got -3" in capsys.readouterr().err
    assert main(["compare", "--preset", "mnist", "--steps", "0", "--out", str(tmp_path / "c")]) == 2
    assert "--steps must be at least 1, got 0" in capsys.readouterr().err and not (tmp_path / "c").exists()
    monkeypatch.setattr(daps.gradlab, "run_gradlab", lambda *a, **k: pytest.fail("gradlab drew before its checks"))
    assert main(["gradlab", "--beta", "0", "--num-samples", "8", "--resample", "1,9",
                 "--out", str(tmp_path / "lab")]) == 2
    assert "--resample sizes must be in [1, --num-samples=8]" in capsys.readouterr().err
    assert main(["gradlab", "--num-samples", "8", "--resample", "2,2", "--out", str(tmp_path / "lab")]) == 2
    assert "--resample 2,2: a size is repeated" in capsys.readouterr().err
    assert not (tmp_path / "lab").exists()


def test_flow_sampling_evaluates_at_the_grid_starts_and_guidance_doubles_the_passes(monkeypatch):
    """A dfm prior's 4 Euler steps call the network at t = 0, 1/4, 2/4, 3/4 (each step from i/N to (i+1)/N, never at
    t = 1); guidance 2 doubles each call's batch (conditional and null label), and ``network_evaluations`` counts
    it: 4 passes per sample at guidance 1 or 0, 8 at 2; an ar prior's T = 3 tokens: 3, or 6 with guidance. Fails on:
    the times shifted to the steps' ends, the guided ar count not doubled."""
    from daps.prior.nets import ARPrior, DFMPrior

    model = DFMPrior(num_tokens=3, vocab_size=5, num_classes=2, width=8, num_layers=1, num_heads=2)
    calls = []

    def forward(xt, t, labels):
        calls.append((len(xt), sorted(set(t.tolist()))))
        return torch.zeros(*xt.shape, 5)

    monkeypatch.setattr(model, "forward", forward)
    x = model.generate(torch.tensor([0, 1]), 1.0, 1.0, torch.Generator().manual_seed(0), num_steps=4)
    assert x.shape == (2, 3) and calls == [(2, [i / 4]) for i in range(4)]
    calls.clear()
    model.generate(torch.tensor([0, 1]), 2.0, 1.0, torch.Generator().manual_seed(0), num_steps=4)
    assert calls == [(4, [i / 4]) for i in range(4)]
    assert [model.network_evaluations(g, 4) for g in (0.0, 1.0, 2.0)] == [4, 4, 8]
    ar = ARPrior(num_tokens=3, vocab_size=5, num_classes=2, width=8, num_layers=1, num_heads=2)
    assert [ar.network_evaluations(g) for g in (0.0, 1.0, 0.5)] == [3, 3, 6]


def test_an_ar_prior_near_zero_temperature_samples_greedily():
    """An ar prior sampled without guidance at temperature 1e-6 takes at every position the most probable token
    given the ones before (checked by teacher forcing every alternative token there), for each of 8 labels. Fails
    on: the logits multiplied by the temperature instead of divided (near-uniform draws)."""
    from daps.prior.nets import ARPrior

    torch.manual_seed(0)
    model = ARPrior(num_tokens=3, vocab_size=5, num_classes=2, width=8, num_layers=1, num_heads=2).eval()
    labels = torch.arange(8) % 2
    codes = model.generate(labels, 1.0, 1e-6, torch.Generator().manual_seed(0))  # (8, 3)
    with torch.no_grad():
        for t in range(3):
            options = codes[:, None].repeat(1, 5, 1)  # (8, V, T): token t replaced by each of the V symbols
            options[:, :, t] = torch.arange(5)
            log_p = model.token_log_probs(options.reshape(40, 3), labels.repeat_interleave(5))[:, t].view(8, 5)
            assert torch.equal(log_p.argmax(1), codes[:, t]), t


def test_the_policys_batches_drop_the_shares_of_labels_and_previous_windows_asked_for():
    """4,000 examples drawn in a shuffled order: about 10 % of previous windows become the start symbol
    (``prev_dropout``) and 25 % of labels the null label (``label_dropout``), the others are those of the rows
    drawn, as are codes and velocities; the draws come labels first, then previous windows (the order the policy
    was trained with, so runs stay bit-identical). The binomial standard deviation of each share is below 0.007.
    Fails on: the previous-window draw inverted (90 % dropped), none ever dropped, a context taken from another
    row than its codes, the two draws in the other order."""
    from daps.prior.run import drop_labels
    from daps.robot.data import CommandSet
    from daps.robot.run import RobotConfig, training_batch

    n = 4000
    rows = torch.arange(n)
    train = CommandSet(codes=rows[:, None].repeat(1, 3), prev=(rows + 100)[:, None].repeat(1, 3), labels=rows % 6,
                       velocity=rows.float()[:, None].repeat(1, 3), window_ids=rows)
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    cfg = RobotConfig(prev_dropout=0.1, label_dropout=0.25)
    codes, labels, velocity, prev = training_batch(train, idx, cfg, num_classes=6, start_symbol=99,
                                                   generator=torch.Generator().manual_seed(0))
    assert torch.equal(codes[:, 0], idx) and torch.equal(velocity[:, 0], idx.float())
    dropped, null = prev[:, 0] == 99, labels == 6
    assert torch.equal(prev[~dropped], (idx[~dropped] + 100)[:, None].repeat(1, 3)) and (prev[dropped] == 99).all()
    assert torch.equal(labels[~null], idx[~null] % 6)
    assert abs(dropped.float().mean().item() - 0.1) < 0.025 and abs(null.float().mean().item() - 0.25) < 0.025
    g = torch.Generator().manual_seed(0)  # the same draws, in the training loop's order
    assert torch.equal(labels, drop_labels(idx % 6, 0.25, 6, g))
    assert torch.equal(dropped, torch.rand(idx.shape, generator=g) < 0.1)
    _, _, _, kept = training_batch(train, idx, RobotConfig(prev_dropout=0.0, label_dropout=0.0), 6, 99,
                                   torch.Generator().manual_seed(0))
    assert (kept != 99).all()


def test_velocity_scale_and_codes_per_window():
    """The policy's velocity scale is each component's sample standard deviation, at least 1e-3 (a component that
    never varies, here sideways and yaw, would divide by zero); a quantizer tokenizer gives one code per window and
    refuses more (it would only repeat them). Fails on: the clamp dropped (0 for the constant components), samples
    taken from a quantizer."""
    from daps.robot.data import CommandSet
    from daps.robot.run import codes_per_window, velocity_scale

    velocity = torch.tensor([[1.0, 0.5, 2.0], [3.0, 0.5, 2.0], [2.0, 0.5, 2.0]])
    train = CommandSet(codes=torch.zeros(3, 2, dtype=torch.long), prev=torch.zeros(3, 2, dtype=torch.long),
                       labels=torch.zeros(3, dtype=torch.long), velocity=velocity, window_ids=torch.arange(3))
    assert velocity_scale(train) == pytest.approx([1.0, 1e-3, 1e-3])  # std of 1, 3, 2 (n - 1) is 1
    assert [codes_per_window(m, 4) for m in ("daps", "dapsna")] == [4, 4]
    assert [codes_per_window(m, 1) for m in ("fsq", "vqvae", "vqvae-ema")] == [1, 1, 1]
    from daps.errors import UserError

    for method in ("fsq", "vqvae", "vqvae-ema"):
        with pytest.raises(UserError, match="encodes deterministically"):
            codes_per_window(method, 4)
