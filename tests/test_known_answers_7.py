"""Known answers for behaviour that a seventh mutation sweep found no test guarding: ``robot eval``'s rows (the
speeds it sweeps, its per-window velocity error, novelty and judge columns), the tokenizer's velocity ceiling, the
report's table and files, the policy examples' velocity ranges and commands file, the loggers' choice, switch-off
and W&B calls, the model card's numbers and the Hub upload, the figures' pixels and curves, and the physics
summaries and balance checks. Each test names the plausible slip it fails on (each checked against its mutant)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

REAL_DIR = os.environ.get("DAPS_DATA_DIR")
needs_data = pytest.mark.skipif(not REAL_DIR, reason="DAPS_DATA_DIR not set (reads the H1 model)")


def _md_cells(line: str) -> list[str]:
    """The cells of a Markdown table row."""
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def _walk(speeds: list[float], window: int, fps: float) -> np.ndarray:
    """Poses ``(W * window, 26)`` of a root facing +x that moves at ``speeds[w]`` m/s (frame to frame) within window
    ``w``, joints at 0: each window's velocity is its speed exactly (distance over ``window - 1`` frame steps)."""
    poses = np.zeros((len(speeds) * window, 26))
    poses[:, 3] = 1.0  # identity orientation: heading 0
    x = 0.0
    for w, v in enumerate(speeds):
        for i in range(window):
            if i > 0:
                x += v / fps
            poses[w * window + i, 0] = x
        x += 0.1  # a jump across the border does not enter any window's velocity
    return poses


# --------------------------------------------------------------------------------------------------
# robot eval: the rows, with every heavy part replaced by a stand-in


class _FakePlanner:
    """A planner whose rollouts are known: rollout b moves at (request + 0.2) m/s in even windows and
    (request - 0.2) in odd ones, its codes are set by the test, and its standardized windows tell the judge which
    kind to predict (feature 0 of frame 0)."""

    window, fps, device = 4, 30.0, torch.device("cpu")
    class_names = ["dance", "fall", "fight", "jump", "run", "walk"]
    quartiles = [[0.5, 0.1, 0.01], [1.0, 0.2, 0.02], [1.5, 0.3, 0.03]]  # rows: 25th, 50th, 75th percentile
    codes = None  # (rollouts, windows, T), set by the test
    predicted = None  # (rollouts, windows) the judge's kind for each planned window

    def __init__(self, policy_run, device="cpu", tokenizer=None):
        self.cfg = SimpleNamespace(label_dropout=0.1)
        self.meta = {"velocity_ranges": {"walk": {"quartiles": self.quartiles}}, "tokenizer": "tok", "method": "m"}
        self.data_dir = "nowhere"
        self.window_seconds = self.window / self.fps
        self.requests = []

    def request(self, motion, velocity):
        self.requests.append(np.array(velocity))
        return self.class_names.index(motion), np.array(velocity)

    def check_blend(self, blend):
        from daps.robot.plan import Planner

        Planner.check_blend(self, blend)  # the real rule, on this window length

    def rollout(self, labels, velocity, guidance, temperature, generator, blend):
        b, w, _ = velocity.shape
        speeds = [[v + (0.2 if k % 2 == 0 else -0.2) for k, v in enumerate(velocity[i, :, 0])] for i in range(b)]
        poses = np.stack([_walk(s, self.window, self.fps) for s in speeds])
        windows = np.zeros((b, w, self.window, 3), np.float32)
        windows[:, :, 0, 0] = self.predicted
        return SimpleNamespace(poses=poses, velocity=velocity, codes=torch.as_tensor(self.codes),
                               windows=windows, labels=labels)


def _fake_eval(monkeypatch, tmp_path, codes, predicted, train_codes, real_kinds):
    import daps.motion.classifier
    import daps.motion.dataset
    import daps.motion.h1
    import daps.motion.metrics
    import daps.robot.data
    import daps.robot.evaluate as ev

    _FakePlanner.codes, _FakePlanner.predicted = codes, predicted
    made = []

    class Planner(_FakePlanner):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self)

    def judge(x):  # logits: one-hot at the kind stored in feature 0 of frame 0
        return torch.nn.functional.one_hot(x[:, 0, 0].long(), 6).float()

    monkeypatch.setattr(ev, "Planner", Planner)
    monkeypatch.setattr(daps.motion.h1, "load_h1", lambda d: "h1")
    monkeypatch.setattr(daps.motion.dataset, "load_motion_data", lambda *a, **k: "motion")
    monkeypatch.setattr(daps.motion.classifier, "load_classifier", lambda: judge)
    monkeypatch.setattr(daps.motion.metrics, "foot_skating_m_s", lambda h1, poses, fps: 0.0)
    monkeypatch.setattr(daps.motion.metrics, "foot_float_mm", lambda h1, poses: 0.0)
    monkeypatch.setattr(ev, "resolve_checkpoint", lambda p: tmp_path / "run" / "checkpoints" / "step_1")
    monkeypatch.setattr(daps.robot.data, "load_commands",
                        lambda path: ({"train": SimpleNamespace(codes=torch.tensor(train_codes))}, {}))
    truth = np.stack([_walk([1.0, 1.0], 4, 30.0)] * 2)
    monkeypatch.setattr(ev, "ground_truth_segments", lambda *a: (truth, np.zeros((2, 8, 3))))
    monkeypatch.setattr(ev, "reconstruction_velocity_error", lambda planner, feats: np.zeros(3))
    monkeypatch.setattr(ev, "com_agreement", lambda *a: {})
    real = torch.zeros(len(real_kinds), 4, 3)
    real[:, 0, 0] = torch.tensor(real_kinds, dtype=torch.float32)
    monkeypatch.setattr(ev, "real_windows", lambda motion, kind: real)
    result = ev.evaluate("policy", ["walk"], rollouts=2, windows=2, physics_rollouts=0, classifier=True)
    return result, made[0]


def test_eval_rows_sweep_the_forward_quartiles_and_score_each_window(monkeypatch, tmp_path):
    """Stand-in planner, 2 rollouts of 2 windows per request. The three rows request the 25th, 50th and 75th
    percentile *forward* speeds (0.5, 1.0, 1.5: the first column of the quartiles, sideways and yaw 0). Each
    planned window is 0.2 m/s off its request (+ in even, - in odd windows), so the mean |error| per window is 0.2
    although the windows' mean speed is the request. Codes (1,2) (1,2) | (3,4) (7,8) with training codes (1,2)
    and (3,4): 3 distinct of 4 windows (unique 0.75) and 3 of 4 found in training (copies 0.75). The judge gets
    3 of the 4 planned windows right (0.75) and 1 of 4 real windows (0.25). Fails on: the sweep reading a row of
    the quartiles instead of the forward column, the error of the windows' mean speed, copies counted as the
    codes *not* in training, distinct codes divided by the rollouts, the real accuracy as its complement."""
    walk = 5
    codes = [[[1, 2], [1, 2]], [[3, 4], [7, 8]]]
    predicted = [[walk, walk], [walk, 0]]
    result, planner = _fake_eval(monkeypatch, tmp_path, codes, predicted, [[1, 2], [3, 4]], [walk, 0, 1, 2])
    rows = result["rows"]
    assert [r["percentile"] for r in rows] == [25, 50, 75]
    assert [r["requested_forward_m_s"] for r in rows] == pytest.approx([0.5, 1.0, 1.5])
    for req in planner.requests:
        assert req.shape == (2, 3) and np.all(req[:, 1:] == 0.0)
    for r in rows:
        assert r["abs_error_forward_m_s"] == pytest.approx(0.2, abs=1e-9)
        assert r["abs_error_left_m_s"] == pytest.approx(0.0, abs=1e-9)
        assert r["achieved_forward_m_s"] == pytest.approx(r["requested_forward_m_s"], abs=1e-9)
        assert r["unique_fraction"] == pytest.approx(0.75) and r["copy_fraction"] == pytest.approx(0.75)
        assert r["kind_accuracy"] == pytest.approx(0.75) and r["gt_kind_accuracy"] == pytest.approx(0.25)
    assert result["settings"]["physics_rollouts"] == 0 and "support_force_bw" not in rows[0]


def test_reconstruction_ceiling_is_the_velocity_error_of_the_decoded_windows():
    """A stand-in tokenizer that decodes every frame 0.3 m/s faster forward (and 0.1 m/s more to the left) than it
    was: ground truth walks straight at 1 m/s, so the reconstruction's windows move at 1.3 / 0.1 m/s and the mean
    |error| per window is (0.3, 0.1, 0) (constant velocities: each window's velocity is the frames' own). Fails on:
    the ground truth stitched from the reconstruction (a ceiling of 0 whatever the codes lose)."""
    from daps.motion.features import FEATURE_LAYOUT, NUM_FEATURES
    from daps.robot.evaluate import reconstruction_velocity_error

    window, r, w = 5, 2, 3
    feats = np.zeros((r, w * window, NUM_FEATURES))
    feats[..., FEATURE_LAYOUT["root_height"]] = 1.0
    feats[..., FEATURE_LAYOUT["root_tilt"]] = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]  # upright
    feats[..., FEATURE_LAYOUT["root_velocity"]] = [1.0, 0.0]
    shift = torch.zeros(NUM_FEATURES)
    shift[FEATURE_LAYOUT["root_velocity"]] = torch.tensor([0.3, 0.1])
    identity = SimpleNamespace(normalize=lambda a: a, denormalize=lambda a: a)
    tokenizer = SimpleNamespace(encode=lambda x, g: x, decode=lambda z: z + shift)
    planner = SimpleNamespace(window=window, fps=30.0, device=torch.device("cpu"), stats=identity, tokenizer=tokenizer)
    got = reconstruction_velocity_error(planner, feats)
    np.testing.assert_allclose(got, [0.3, 0.1, 0.0], atol=1e-5)


# --------------------------------------------------------------------------------------------------
# robot eval: the report's table and files


def _report():
    row = {"motion": "walk", "percentile": 25, "requested_forward_m_s": 1.0, "achieved_forward_m_s": 0.9,
           "abs_error_forward_m_s": 0.123, "recon_abs_error_forward_m_s": 0.046, "abs_error_left_m_s": 0.05,
           "abs_error_yaw_rad_s": 0.01, "border_joint_accel": 300.0, "within_joint_accel": 100.0,
           "gt_border_joint_accel": 200.0, "foot_skating_m_s": 0.2, "gt_foot_skating_m_s": 0.1,
           "unique_fraction": 1.0, "copy_fraction": 0.0}
    return {"policy": "p", "settings": {}, "rows": [row]}


def test_eval_table_cells_carry_their_references_in_parentheses():
    """Hand-made row, cells in the order of the columns present: the forward error cell shows the tokenizer's
    ceiling ``0.12 (0.05)`` (recon_ before gt_), the border cell ``300 (100; 200)`` is (within; data) as its header
    says, skating ``0.20 (0.10)``; every row has as many cells as the header, whose ``|err|`` names escape their
    bars. Fails on: within and data swapped in the border cell, the ceiling dropped from the error cell, bare bars
    in the header (16 header cells over 10 columns: not a Markdown table)."""
    from daps.robot.evaluate import table

    lines = table(_report()).splitlines()
    assert _md_cells(lines[2]) == ["walk", "1.00", "0.90", "0.12 (0.05)", "0.05", "0.01", "300 (100; 200)",
                                   "0.20 (0.10)", "1.00", "0.00"]
    assert [len(_md_cells(line)) for line in lines] == [10, 10, 10]
    assert _md_cells(lines[0])[3:6] == ["\\|err\\| fwd (recon)", "\\|err\\| left (recon)",
                                        "\\|err\\| yaw rad/s (recon)"]
    # with its settings, the table says first what was evaluated and how
    report = {**_report(), "method": "daps", "settings": {"rollouts": 8, "windows": 6, "physics_rollouts": 2,
                                                          "seed": 3, "guidance": 1.5, "blend": 0,
                                                          "window_seconds": 32 / 30}}
    first, blank, header = table(report).splitlines()[:3]
    assert first.startswith("Policy p (daps codes): 8 rollouts of 6 windows (1.07 s each) per request, 2 of them "
                            "tracked in physics, seed 3, guidance 1.5, blend 0.")
    assert blank == "" and header.startswith("| motion |")


def test_eval_report_paths_take_an_upper_case_suffix_off():
    """``--out runs/eval.JSON`` names the pair ``runs/eval.json`` / ``runs/eval.md``, like ``eval.json`` (the
    docstring's rule, suffixes compared case-blind). Fails on: a case-sensitive suffix (``eval.JSON.json``)."""
    from daps.robot.evaluate import report_paths

    assert report_paths(Path("runs/eval.JSON")) == (Path("runs/eval.json"), Path("runs/eval.md"))
    assert report_paths(Path("runs/eval.Md")) == (Path("runs/eval.json"), Path("runs/eval.md"))


def test_eval_report_replaces_its_files_atomically_and_ends_the_table_with_a_newline(tmp_path):
    """Writing over an earlier report replaces both files by rename (a hard link to the old table keeps the old
    text: an in-place write would change it through the link, and a reader could see a half-written table), and
    the table is ``table(result)`` plus a final newline. Fails on: the table written in place."""
    from daps.robot.evaluate import table, write_report

    stem = tmp_path / "eval"
    write_report(_report(), stem)
    old = (tmp_path / "eval.md").read_text()
    os.link(tmp_path / "eval.md", tmp_path / "old.md")
    new = _report()
    new["rows"][0]["motion"] = "run"
    write_report(new, stem, overwrite=True)
    assert (tmp_path / "old.md").read_text() == old
    assert (tmp_path / "eval.md").read_text() == table(new) + "\n"
    assert json.loads((tmp_path / "eval.json").read_text())["rows"][0]["motion"] == "run"


# --------------------------------------------------------------------------------------------------
# robot data: velocity ranges and the commands file


def _command_set(velocity, labels):
    from daps.robot.data import CommandSet

    n = len(labels)
    return CommandSet(torch.arange(2 * n).reshape(n, 2), torch.arange(2 * n).reshape(n, 2) + 100,
                      torch.as_tensor(labels), torch.as_tensor(velocity, dtype=torch.float32), torch.arange(n))


def test_velocity_ranges_are_the_1st_99th_and_quartile_percentiles_per_kind():
    """101 walk windows whose forward speeds are 0, 0.01, ..., 1 m/s (sideways = -speed, yaw = 2 speed) and 3 run
    windows at 5 m/s: walk's 1st / 99th percentiles are 0.01 / 0.99, its quartiles 0.25 / 0.5 / 0.75 (of each
    column), counted 101 windows; ``all`` holds the 104; kinds with no window (dance, ...) are absent. Fails on:
    ``high`` read at the low percentile, defaults other than 1 / 99, quartiles across the columns, a kind counted
    with every window, the first kind given all windows."""
    from daps.data.motion import MOTION_TYPES
    from daps.robot.data import velocity_ranges

    s = np.linspace(0.0, 1.0, 101)
    walk, run = MOTION_TYPES.index("walk"), MOTION_TYPES.index("run")
    velocity = np.concatenate([np.stack([s, -s, 2 * s], 1), np.tile([5.0, 0.0, 0.0], (3, 1))])
    out = velocity_ranges(_command_set(velocity, [walk] * 101 + [run] * 3), list(MOTION_TYPES))
    assert set(out) == {"walk", "run", "all"}
    w = out["walk"]
    np.testing.assert_allclose(w["low"], [0.01, -0.99, 0.02], atol=1e-6)
    np.testing.assert_allclose(w["high"], [0.99, -0.01, 1.98], atol=1e-6)
    np.testing.assert_allclose(w["quartiles"], [[q, -(1 - q), 2 * q] for q in (0.25, 0.5, 0.75)], atol=1e-6)
    assert w["windows"] == 101 and out["run"]["windows"] == 3 and out["all"]["windows"] == 104
    np.testing.assert_allclose(out["run"]["quartiles"], [[5.0, 0.0, 0.0]] * 3, atol=1e-6)


def test_commands_file_round_trips_each_field_under_its_name(tmp_path):
    """Two splits saved and loaded give back each tensor under its own name (codes are not prev) and the header;
    saving again replaces the header. Fails on: the fields read back in another order."""
    from daps.robot.data import load_commands, save_commands

    sets = {"train": _command_set(np.ones((3, 3)), [0, 1, 2]), "val": _command_set(np.zeros((2, 3)), [3, 4])}
    path = tmp_path / "commands.safetensors"
    save_commands(path, sets, {"window": 32})
    loaded, meta = load_commands(path)
    assert meta == {"window": 32} and sorted(loaded) == ["train", "val"]
    for split, s in sets.items():
        for name in ("codes", "prev", "labels", "velocity", "window_ids"):
            assert torch.equal(getattr(loaded[split], name), getattr(s, name)), (split, name)
    save_commands(path, {"train": sets["val"]}, {"window": 16})
    assert load_commands(path)[1] == {"window": 16}


def test_a_cut_commands_file_and_damaged_motion_statistics_are_one_user_error_each(tmp_path):
    """A commands file cut short (its header unreadable: safetensors' own error type) and a motion_stats.json that
    is not JSON are one line naming the file (``robot train --resume``, ``robot plan``, ``robot eval``), not a
    traceback. Fails on: SafetensorError or JSONDecodeError escaping."""
    from daps.data.motion import read_run_stats
    from daps.errors import UserError
    from daps.robot.data import load_commands, save_commands

    path = tmp_path / "commands.safetensors"
    save_commands(path, {"train": _command_set(np.ones((3, 3)), [0, 1, 2])}, {"window": 32})
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(UserError, match="commands.safetensors: not a daps commands file"):
        load_commands(path)
    stats = tmp_path / "motion_stats.json"
    stats.write_text("{bad")
    with pytest.raises(UserError, match="motion_stats.json: not readable motion statistics"):
        read_run_stats(stats)


def test_a_safetensors_file_without_the_commands_header_is_one_user_error(tmp_path):
    """A valid safetensors file written by someone else (no ``daps_commands`` header) is refused as not a daps
    commands file, not with a KeyError traceback. Fails on: KeyError not caught."""
    from safetensors.torch import save_file

    from daps.errors import UserError
    from daps.robot.data import load_commands

    path = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(path), metadata={"format": "pt"})
    with pytest.raises(UserError, match="not a daps commands file"):
        load_commands(path)


# --------------------------------------------------------------------------------------------------
# loggers: the choice, the switch-off, what W&B is given


def test_auto_logger_is_tensorboard_exactly_when_it_is_installed(monkeypatch):
    """``auto`` resolves to ``tensorboard`` when the package can be found and to ``none`` when it cannot (the
    module docstring). Fails on: the test inverted."""
    import daps.loggers as loggers

    monkeypatch.setattr(loggers.importlib.util, "find_spec", lambda name: object())
    assert loggers.resolve_logger("auto") == "tensorboard"
    monkeypatch.setattr(loggers.importlib.util, "find_spec", lambda name: None)
    assert loggers.resolve_logger("auto") == "none"
    assert loggers.resolve_logger("wandb") == "wandb"


def test_a_failing_logger_warns_once_and_is_not_called_again(caplog):
    """The first error switches the logger off: one warning, and later rows do not reach it (a broken connection
    would otherwise cost a timeout and a warning per row). Fails on: ``broken`` never set."""
    from daps.loggers import RunLogger

    calls = []

    class Failing(RunLogger):
        kind = "test"

        def _row(self, row):
            calls.append(row["step"])
            raise ConnectionError("unreachable")

    logger = Failing()
    with caplog.at_level("WARNING", logger="daps"):
        for step in (1, 2, 3):
            logger.row({"split": "train", "step": step, "loss": 1.0})
    assert calls == [1] and logger.broken
    assert sum("switched off" in m for m in caplog.messages) == 1


class _RecordingWandb:
    """A stand-in ``wandb`` module recording what the logger sends."""

    def __init__(self):
        self.logged = []

    def init(self, **kwargs):
        outer = self

        class Run:
            def log(self, data, step=None):
                outer.logged.append((data, step))

            def finish(self):
                pass

        return Run()

    def Histogram(self, values):  # noqa: N802 - the wandb name
        return ("histogram", list(values))

    def Image(self, path):  # noqa: N802 - the wandb name
        return ("image", path)


def test_wandb_gets_each_positions_codes_and_the_figure_under_its_tag_at_its_step(tmp_path, monkeypatch):
    """Codes ``(3, 20)`` at step 7: one histogram per position 0..15, position t holding column t; a figure under
    the tag it was given, at its step. Fails on: every histogram of position 0, the step left out, the figure
    under a fixed name."""
    import sys

    from daps.loggers import WandbLogger

    fake = _RecordingWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    logger = WandbLogger(tmp_path / "run", {"method": "daps"})
    logger.codes(7, torch.arange(60).reshape(3, 20))
    png = tmp_path / "fig.png"
    png.write_bytes(b"png")
    logger.image("reconstructions", png, 9)
    assert not logger.broken
    (hist, step), (image, image_step) = fake.logged
    assert step == 7 and sorted(hist) == [f"codes/position_{t:02d}" for t in range(16)]
    assert hist["codes/position_05"] == ("histogram", [5, 25, 45])
    assert image == {"reconstructions": ("image", str(png))} and image_step == 9


def test_wandb_ids_kept_up_to_64_characters_and_old_ids_from_the_name_end(tmp_path):
    """A kept id of 64 characters (W&B's limit, the bound the code states) is read back as it is; a run logged
    before ids were kept continues under ``daps-`` + the *last* 50 characters of its folder name, as daps derived
    it then (``[-50:]``, commit 34cc941). Fails on: a 64-character id replaced, the first 50 characters taken."""
    from daps.loggers import WANDB_ID_FILE, wandb_run_id

    run = tmp_path / "kept"
    (run / "wandb").mkdir(parents=True)
    (run / "wandb" / WANDB_ID_FILE).write_text("a" * 64 + "\n")
    assert wandb_run_id(run) == "a" * 64
    name = "x" * 30 + "_seed0_" + "y" * 30
    old = tmp_path / name
    (old / "wandb").mkdir(parents=True)
    assert wandb_run_id(old) == "daps-" + name.replace("_", "-")[-50:]
    assert wandb_run_id(old).endswith("y" * 30)


# --------------------------------------------------------------------------------------------------
# hub: the card's command and numbers, what a folder is loaded as, repo ids


def _tiny_model(tiny_overrides, extra=()):
    import daps
    from daps.methods import build_method

    cfg = daps.parse_overrides(daps.get_preset("mnist", "daps"), [*tiny_overrides, *extra])
    model = build_method(cfg, tuple(cfg.data.image_shape))
    model.config = cfg
    return model


def test_training_command_lists_its_overrides_sorted():
    """``train.steps`` comes before ``train.batch_size`` in the config's field order; the command lists the
    overrides sorted by key (as its docstring's rebuild relies on a stable text). Fails on: field order."""
    import daps
    from daps.hub import training_command

    cfg = daps.get_preset("mnist", "daps")
    cfg.train.steps, cfg.train.batch_size = 7, 9
    assert training_command(cfg) == "daps train --preset mnist --method daps train.batch_size=9 train.steps=7"


@pytest.mark.usefixtures("offline")
def test_model_card_shows_six_significant_digits_and_the_eval_subset(tiny_overrides):
    """A log p of -90.123456 shows as ``-90.1235`` (``.6g``: six significant digits); the card's ``daps eval``
    flags ask for ``--max-images`` = train.eval_examples (40), not the batch size (8), and name the FID weights
    file a run was validated with. Fails on: fewer digits, the batch size as the subset, the weights dropped."""
    import shlex

    from daps.hub import eval_flags, model_card

    model = _tiny_model(tiny_overrides, ["train.eval_examples=40", "train.eval_batch_size=8"])
    card = model_card(model, {"log_p": -90.123456, "num_images": 40}, step=6)
    assert "| log_p | -90.1235 |" in card
    words = shlex.split(eval_flags(model.config))
    assert words[words.index("--max-images") + 1] == "40" and words[words.index("--batch-size") + 1] == "8"
    import daps

    cfg = daps.parse_overrides(daps.get_preset("cifar10", "daps"),
                               ["train.fid=reference", "train.fid_reference=/r.npz", "train.fid_weights=/w/inc.pth"])
    words = shlex.split(eval_flags(cfg))
    assert words[words.index("--fid-weights") + 1] == "/w/inc.pth"


def test_a_checkpoint_folder_is_loaded_as_a_checkpoint(tmp_path, monkeypatch):
    """A folder with ``checksums.json`` (a checkpoint, no ``checkpoints/``) goes to ``load_model`` as the docstring
    says (run folder or checkpoint), not to the pretrained-folder reader. Fails on: only ``checkpoints/`` looked
    at (the checkpoint refused as a pretrained folder without model.safetensors)."""
    import daps.checkpoint
    from daps.hub import from_pretrained

    seen = []
    monkeypatch.setattr(daps.checkpoint, "load_model", lambda path, device: seen.append(path) or "model")
    ckpt = tmp_path / "step_00000006"
    ckpt.mkdir()
    (ckpt / "checksums.json").write_text("{}")
    assert from_pretrained(ckpt) == "model" and seen == [ckpt]


def test_hub_repo_ids_start_with_a_letter_or_digit():
    """Hub repo ids: ``user/name`` of letters, digits, ``.``, ``_``, ``-``, each part starting with a letter or
    digit; ``.hidden/x`` and ``user/-x`` are refused before any upload. Fails on: any leading character allowed."""
    from daps.errors import UserError
    from daps.hub import REPO_ID, check_push

    assert REPO_ID.match("user-1/my.model_v2")
    for bad in (".hidden/x", "user/-x", "user/.x", "a/b/c", "a"):
        with pytest.raises(UserError, match="not a Hub repo id"):
            check_push(bad)


# --------------------------------------------------------------------------------------------------
# plots: what each figure draws


def test_comparison_curves_plot_the_seed_mean_over_common_steps_with_a_min_max_band(tmp_path, captured):
    """Three seeds: (1: 1, 2: 2, 3: 3), (1: 3, 2: 4), (1: 5, 2: 9). Only steps 1 and 2 are common; the line is
    the mean (3, 5), not the median (3, 4), and the band spans min..max (1..5, 2..9). With ``log_y``, values
    within a decade (2..9) keep a linear axis, values 1..15 (an axis of 0.3..15.7 with its margins) get a log one.
    Fails on: the first seed's steps, the median, the band's top at the mean,
    a log axis for any spread."""
    from daps.plots import save_comparison_curves

    curves = {"daps": [[(1, 1.0), (2, 2.0), (3, 3.0)], [(1, 3.0), (2, 4.0)], [(1, 5.0), (2, 9.0)]]}
    save_comparison_curves(curves, tmp_path / "c.png")
    ax = captured[0].axes[0]
    (line,) = ax.get_lines()
    assert list(line.get_xdata()) == [1, 2] and list(line.get_ydata()) == pytest.approx([3.0, 5.0])
    (band,) = ax.collections
    ys = band.get_paths()[0].vertices[:, 1]
    assert ys.min() == pytest.approx(1.0) and ys.max() == pytest.approx(9.0)
    xs = band.get_paths()[0].vertices[:, 0]
    assert sorted({round(float(y), 6) for x, y in band.get_paths()[0].vertices if x == 2}) == [2.0, 9.0]
    assert set(xs) == {1.0, 2.0}
    save_comparison_curves({"a": [[(1, 2.0), (2, 9.0)]]}, tmp_path / "d.png", log_y=True)
    assert captured[1].axes[0].get_yscale() == "linear"  # 2..9 spans less than a decade
    save_comparison_curves({"a": [[(1, 1.0), (2, 15.0)]]}, tmp_path / "e.png", log_y=True)
    assert captured[2].axes[0].get_yscale() == "log"
    # 0.1..10 spans two decades, though the axis' margins reach below zero (eta held at 0.1 and at 10)
    save_comparison_curves({"a": [[(1, 0.1), (2, 0.1)]], "b": [[(1, 10.0), (2, 10.0)]]}, tmp_path / "f.png",
                           log_y=True)
    assert captured[3].axes[0].get_yscale() == "log"


def test_schedules_with_a_zero_are_left_off_the_log_panel(tmp_path, captured):
    """The schedules panel is logarithmic: a schedule that reaches 0 (beta annealed from 0) cannot be drawn on it
    and is left off, the others stay. Fails on: ``min > 0`` loosened to ``>= 0``."""
    from daps.plots import save_training_curves

    rows = [{"split": "train", "step": 1, "log_p": -1.0, "eta": 1.0, "beta": 0.0},
            {"split": "train", "step": 2, "log_p": -1.0, "eta": 2.0, "beta": 0.5}]
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    save_training_curves(metrics, tmp_path / "c.png")
    schedules = captured[0].axes[3]
    assert [line.get_label() for line in schedules.get_lines()] == ["eta"]


def test_reconstruction_figures_show_gray_on_a_fixed_scale_and_data_first(tmp_path, captured):
    """A gray image of values 0.4..0.6 is drawn on the fixed [0, 1] scale (not stretched to black..white); the
    grid shows up to 16 pairs (20 given: 2 x 16 panels); the comparison figure's first row is the data. Fails on:
    autoscaled gray, 8 pairs, the data row last."""
    from daps.plots import save_comparison_reconstructions, save_reconstruction_grid

    x = 0.4 + 0.2 * torch.rand(20, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    save_reconstruction_grid(x, x, tmp_path / "g.png")
    fig = captured[0]
    assert len(fig.axes) == 32
    assert fig.axes[0].get_images()[0].get_clim() == (0, 1)
    save_comparison_reconstructions(x[:3], {"daps": x[:3], "fsq": x[:3]}, tmp_path / "r.png")
    labels = [ax.get_ylabel() for ax in captured[1].axes if ax.get_ylabel()]
    assert labels == ["data", "daps", "fsq"]


# --------------------------------------------------------------------------------------------------
# robot physics: the summary, the distance to the support, the steps and the flight rule


def test_track_summary_known_answers():
    """Support forces of norms 0, 1, ..., 19 N (alternating axes) on a 2 N robot, torques of 3 N m, pelvis errors
    0.1 .. 2.0 m: mean force 4.75 bw, 95th percentile 9.025 bw (18.05 N by linear interpolation at 0.95 * 19),
    torque 3 N m, pelvis error the mean 1.05 m. Fails on: the 90th percentile, the largest error instead of the
    mean."""
    from daps.robot.physics import TrackResult

    n = np.arange(20.0)
    force = np.zeros((20, 3))
    force[::2, 0], force[1::2, 2] = n[::2], -n[1::2]
    torque = np.tile([0.0, 3.0, 0.0], (20, 1))
    got = TrackResult(np.zeros((20, 26)), force, torque, 2.0, 0, np.arange(1, 21) / 10.0).summary()
    assert got == pytest.approx({"support_force_bw": 4.75, "support_force_bw_p95": 9.025, "support_torque_nm": 3.0,
                                 "pelvis_error_m": 1.05})


def test_distance_outside_a_square_is_to_its_nearest_corner_or_edge():
    """Unit square (0,0)..(1,1): (2, 2) is sqrt(2) from the corner (1, 1), not 1 from the line through an edge;
    (0.5, 3) is 2 above the top edge; (0.5, 0.5) is inside. Fails on: the projection onto an edge not clipped to
    the segment."""
    from daps.robot.physics import distance_outside

    square = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    assert distance_outside(np.array([2.0, 2.0]), square) == pytest.approx(np.sqrt(2.0))
    assert distance_outside(np.array([-3.0, -4.0]), square) == pytest.approx(5.0)
    assert distance_outside(np.array([0.5, 3.0]), square) == pytest.approx(2.0)
    assert distance_outside(np.array([0.5, 0.5]), square) == 0.0


@pytest.fixture
def h1(h1_model):
    return h1_model


@needs_data
def test_track_takes_17_physics_steps_per_frame_at_30_fps(h1):
    """The model's 2 ms step rounded to a whole number per frame: 1 / (30 * 0.002) = 16.7 -> 17 steps a frame (the
    module docstring), so 3 frames take 34. Fails on: 16 steps (truncation)."""
    from daps.robot.physics import track

    poses = np.zeros((3, 26))
    poses[:, 2], poses[:, 3] = 1.1, 1.0
    assert track(h1, poses, 30.0).physics_steps == 34


@needs_data
def test_a_frames_support_torque_is_the_mean_over_its_physics_steps(h1, monkeypatch):
    """Turning in place at 1 rad/s with the simulation frozen (``mj_step`` a no-op: the robot stays at frame 0,
    spinning at the reference rate, so the damping term is 0): at step j of S = 4 the reference has turned
    (j + 1) / S of a frame, so the torque is kp_rot * (j + 1) / (30 S) about z, and frame 1 reports the mean,
    kp_rot / 30 * (S + 1) / (2 S). Fails on: the torques of a frame's steps summed."""
    import mujoco

    from daps.motion.rotations import yaw_quat
    from daps.robot.physics import SUPPORT_GAINS, track

    monkeypatch.setattr(mujoco, "mj_step", lambda model, data: None)
    t = np.arange(3) / 30.0
    poses = np.zeros((3, 26))
    poses[:, 2], poses[:, 3:7] = 1.1, yaw_quat(1.0 * t)
    got = track(h1, poses, 30.0, substeps=4)
    expected = SUPPORT_GAINS["kp_rot"] / 30.0 * 5 / 8
    np.testing.assert_allclose(got.support_torque[1], [0.0, 0.0, expected], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(got.support_force[1], 0.0, atol=1e-9)


def test_support_torque_of_a_turned_pelvis_acts_about_the_world_axis_of_the_error(h1, monkeypatch):
    """The pelvis turned 90 degrees about z while the reference starts tipping about world x (simulation frozen,
    the robot at rest in frame 0's pose): both the proportional and the damping torque point along world x.
    MuJoCo gives the free joint's angular velocity in the body frame; left there, the damping term would point
    along world y for this heading. Fails on: the angular velocities not turned into the world frame."""
    import mujoco

    from daps.motion.rotations import quat_mul
    from daps.robot.physics import track

    monkeypatch.setattr(mujoco, "mj_step", lambda model, data: None)
    theta = np.array([0.0, 0.0, 0.01, 0.04, 0.09])  # tipping faster and faster about world x
    turned = np.array([np.cos(np.pi / 4), 0.0, 0.0, np.sin(np.pi / 4)])
    poses = np.zeros((len(theta), 26))
    poses[:, 2] = 1.1
    for k, a in enumerate(theta):
        poses[k, 3:7] = quat_mul(np.array([np.cos(a / 2), np.sin(a / 2), 0.0, 0.0]), turned)
    torque = track(h1, poses, 30.0, substeps=4).support_torque
    for frame in (2, 3, 4):
        assert abs(torque[frame, 0]) > 1.0
        np.testing.assert_allclose(torque[frame, 1:], 0.0, atol=1e-6 * abs(torque[frame, 0]))


@needs_data
def test_flight_needing_a_small_downward_pull_is_not_pulling_but_balanced(h1):
    """No foot near the floor (0.5 m up), falling at 1.07 g: the wrench is 7 % of the weight, under the 10 %
    that counts as negligible, so the frame is a flight phase: balanced, and not one where the floor would pull
    (there is no floor contact to pull). Fails on: pulling counted without a foot down."""
    from daps.robot.physics import balance_check

    t = (np.arange(3) - 1) / 30.0
    poses = np.zeros((3, 26))
    poses[:, 2], poses[:, 3] = 1.544 - 0.5 * 1.07 * 9.81 * t**2, 1.0
    got = balance_check(h1, poses, 30.0)
    assert got["pulling_fraction"] == 0.0 and got["balanced_fraction"] == 1.0
    assert got["root_force_bw"] == pytest.approx(0.07, abs=1e-3)
