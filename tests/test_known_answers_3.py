"""Known answers for a run's bookkeeping: which rows a run logs at its end, when a resumed run counts as finished,
and the data and codes a run is fed (each test pins a behaviour that a plausible slip would change silently)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from daps.cli import main

REAL_DIR = os.environ.get("DAPS_DATA_DIR")
offline = pytest.mark.usefixtures("offline")


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@offline
def test_a_run_not_a_multiple_of_log_every_logs_its_last_steps(tmp_path, tiny_overrides, no_plots):
    run = tmp_path / "run"
    assert main(["train", *tiny_overrides, "train.steps=5", f"train.out_dir={run}"]) == 0
    # log_every=2, eval_every=3, ckpt_every=3 (a window ends at a checkpoint too): the last train row averages the
    # one step after step 4, then the final validation
    got = [(r["split"], r["step"], r.get("num_steps")) for r in rows(run)]
    assert got == [("train", 2, 2), ("train", 3, 1), ("val", 3, None), ("train", 4, 1), ("train", 5, 1),
                   ("val", 5, None)]
    assert json.loads((run / "summary.json").read_text())["step"] == 5


@offline
def test_resume_rewrites_a_summary_of_another_step(copy_run, trained_run, tiny_overrides, no_plots):
    # As a run stopped at step 3, resumed to 6 and killed after its final checkpoint leaves it: every end-of-run
    # file is there, but summary.json is of step 3. The run is not finished until the summary is of step 6.
    run = copy_run()
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "step": 3, "elbo": 0.0}))
    assert main(["train", *tiny_overrides, f"train.out_dir={run}", "--resume"]) == 0
    assert json.loads((run / "summary.json").read_text()) == json.loads((trained_run / "summary.json").read_text())


def record_training_logs(monkeypatch) -> list[dict[str, float]]:
    """The logs of every training step of the next run, in order (validation passes left out)."""
    import daps.train

    seen: list[dict[str, float]] = []
    real_build = daps.train.build_method

    def build(*args, **kwargs):
        model = real_build(*args, **kwargs)
        real_forward = model.forward

        def forward(*a, **k):
            out = real_forward(*a, **k)
            if model.training:
                seen.append({key: float(value) for key, value in out.logs.items()})
            return out

        model.forward = forward
        return model

    monkeypatch.setattr(daps.train, "build_method", build)
    return seen


@offline
def test_train_rows_average_the_logs_of_their_steps(tmp_path, tiny_overrides, no_plots, monkeypatch):
    seen = record_training_logs(monkeypatch)
    run = tmp_path / "run"
    assert main(["train", *tiny_overrides, "train.steps=4", f"train.out_dir={run}"]) == 0
    assert len(seen) == 4
    train = [r for r in rows(run) if r["split"] == "train"]
    assert [r["step"] for r in train] == [2, 3, 4]  # log_every=2, and the checkpoint at step 3 ends a window
    for row, steps in zip(train, (seen[0:2], seen[2:3], seen[3:4])):
        assert row["num_steps"] == len(steps)
        for key in steps[0]:
            assert row[key] == pytest.approx(sum(s[key] for s in steps) / len(steps), rel=1e-6, abs=1e-9), key
    assert any(seen[0][key] != seen[1][key] for key in seen[0])  # else the test could not tell a mean from a step


MOTION_TINY = [
    "encoder.width=32", "encoder.num_heads=2", "encoder.vocab_size=16", "encoder.num_layers=1",
    "decoder.embed_dim=32", "decoder.transformer_heads=2", "decoder.transformer_layers=1", "daps.num_samples=2",
    "train.batch_size=8", "train.steps=2", "train.log_every=2", "train.eval_every=2", "train.ckpt_every=2",
    "train.eval_examples=16", "train.eval_batch_size=8", "train.progress=false", "train.logger=none",
]


@pytest.mark.skipif(not REAL_DIR, reason="DAPS_DATA_DIR not set (reads the real LAFAN1 H1 clips)")
def test_overwrite_replaces_a_motion_run_whose_statistics_changed(tmp_path, single_thread, no_plots):
    # --resume refuses a run whose saved feature statistics differ from today's data; --overwrite replaces the run,
    # so the old statistics are not checked, and the new ones are today's.
    run = tmp_path / "run"
    argv = ["train", "--preset", "lafan1-h1", *MOTION_TINY, f"data.data_dir={REAL_DIR}", f"train.out_dir={run}"]
    assert main(argv) == 0
    stats_file = run / "motion_stats.json"
    today = stats_file.read_text()
    stats = json.loads(today)
    stats_file.write_text(json.dumps({**stats, "mean": (np.asarray(stats["mean"]) + 1.0).tolist()}))
    assert main([*argv, "--overwrite"]) == 0
    assert json.loads(stats_file.read_text()) == json.loads(today)


@offline
def test_cosine_learning_rate_starts_at_the_full_rate_and_follows_train_steps(tmp_path, tiny_overrides, no_plots,
                                                                              monkeypatch):
    from daps.optim import Optimizers

    factors: list[float] = []
    real_scale = Optimizers.scale_lr

    def scale_lr(self, factor):
        factors.append(factor)
        return real_scale(self, factor)

    monkeypatch.setattr(Optimizers, "scale_lr", scale_lr)
    run = tmp_path / "run"
    argv = ["train", *tiny_overrides, "optim.lr_schedule=cosine", "optim.lr_final=0.1", "train.steps=4",
            "train.stop_after=3", f"train.out_dir={run}"]
    assert main(argv) == 0
    # 0.1 + 0.9 * (1 + cos(pi * step / 4)) / 2 at steps 0, 1, 2: the schedule spans train.steps, not stop_after
    assert factors == pytest.approx([1.0, 0.1 + 0.45 * (1 + 0.5**0.5), 0.55], abs=1e-12)


@offline
def test_export_leaves_out_the_metrics_of_another_step(copy_run, tmp_path):
    import daps.hub

    run = copy_run()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["step"] == 6
    card = (daps.hub.export_run(run, tmp_path / "same") / "README.md").read_text()
    assert "## Validation" in card and f"| elbo | {summary['elbo']:.6g} |" in card
    # the summary of an earlier length of the run (resumed to more steps past it): not this checkpoint's numbers;
    # the validation logged at this checkpoint's step instead, where there is one
    (run / "summary.json").write_text(json.dumps({**summary, "step": 3, "elbo": -1234.5}))
    card = (daps.hub.export_run(run, tmp_path / "other") / "README.md").read_text()
    assert "-1234.5" not in card
    logged = [json.loads(line) for line in open(run / "metrics.jsonl") if '"val"' in line]
    at_step = [r for r in logged if r["step"] == 6]
    if at_step:
        assert f"| elbo | {at_step[-1]['elbo']:.6g} |" in card
    else:
        assert "## Validation" not in card and "| elbo |" not in card
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in logged if r["step"] != 6))
    card = (daps.hub.export_run(run, tmp_path / "third") / "README.md").read_text()
    assert "## Validation" not in card and "| elbo |" not in card


# --------------------------------------------------------------------------------------------------
# What counts as a run folder


def _legacy_run(folder: Path, *entries: str) -> Path:
    """A training run from before the marker: a daps config.json and the given files (``name/`` a folder)."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"method": "daps", "train": {}, "data": {}}))
    for name in entries:
        if name.endswith("/"):
            (folder / name).mkdir()
        else:
            (folder / name).write_text("")
    return folder


@pytest.mark.parametrize(
    "entries, legacy",
    [
        (("metrics.jsonl",), True),  # stopped before its first checkpoint
        (("checkpoints/",), True),  # metrics.jsonl lost
        (("checkpoints/", "metrics.jsonl", ".summary.tmp-4242.json"), True),  # a temporary of a killed writer
        (("checkpoints/", "metrics.jsonl", "notes.txt"), False),  # a file of the user's
        ((), False),  # a config alone: never started
    ],
)
def test_legacy_run_folders_known_answers(tmp_path, entries, legacy):
    from daps.runfolder import is_output_folder

    folder = _legacy_run(tmp_path / "run", *entries)
    assert is_output_folder(folder, "train") is legacy
    assert not is_output_folder(folder, "compare")  # the legacy rule is for training runs only


def test_a_folder_holding_only_another_kinds_marker_is_marked_anew(tmp_path):
    from daps.runfolder import MARKER, prepare_output_folder, read_marker

    folder = tmp_path / "out"
    folder.mkdir()
    (folder / MARKER).write_text(json.dumps({"kind": "compare", "format": 1}))  # nothing else: no content
    prepare_output_folder(folder, "prior", overwrite=False, entries=())
    assert read_marker(folder) == "prior"
    assert json.loads((folder / MARKER).read_text()) == {"kind": "prior", "format": 1}


@offline
def test_export_counts_the_processes_from_the_checkpoints_random_states(trained_run, tmp_path):
    import daps.hub
    from daps.checkpoint import load_model, load_training_state, resolve_checkpoint, save_checkpoint

    ckpt = resolve_checkpoint(trained_run)
    model, state = load_model(ckpt), load_training_state(ckpt)
    assert len(state["rng"]) == 1
    run = tmp_path / "two_ranks"
    save_checkpoint(run, 6, model, model.config, {**state, "rng": state["rng"] * 2}, keep=1)  # as torchrun saves
    card = (daps.hub.export_run(run, tmp_path / "exported") / "README.md").read_text()
    assert "6 optimizer steps at batch size 32 (2 processes of 16)" in card
    assert "--nproc_per_node=2" in card


def test_clearing_a_folder_keeps_the_lock_its_caller_holds(tmp_path):
    from daps.runfolder import LOCK, RUN_ENTRIES, FolderLock, clear_folder, write_marker

    folder = tmp_path / "run"
    with FolderLock(folder):
        lock_inode = (folder / LOCK).stat().st_ino
        write_marker(folder, "train")
        (folder / "metrics.jsonl").write_text("{}\n")
        (folder / "checkpoints").mkdir()
        clear_folder(folder, "train", "--out", RUN_ENTRIES)
        # a new .lock would let a second process take the folder while this one still writes it; the marker stays,
        # so a kill while it is emptied leaves a folder that is still daps's
        assert sorted(p.name for p in folder.iterdir()) == [".daps", LOCK]
        assert (folder / LOCK).stat().st_ino == lock_inode


def test_temporaries_of_both_kinds_are_removed_and_are_not_content(tmp_path):
    from daps.runfolder import has_content, remove_temporaries, write_marker

    folder = tmp_path / "checkpoints"
    aside = folder / ".step_00000006.old-4242"  # a step being rewritten, moved aside by a killed process
    aside.mkdir(parents=True)
    (aside / "model.safetensors").write_bytes(b"old")
    (folder / ".latest.tmp-4242").write_text("step_00000006\n")
    assert has_content(folder)  # without daps's marker, names that look temporary are someone else's
    write_marker(folder, "train")
    assert not has_content(folder)
    (folder / "step_00000003").mkdir()
    removed = remove_temporaries(folder)
    assert sorted(p.name for p in removed) == [".latest.tmp-4242", ".step_00000006.old-4242"]
    assert sorted(p.name for p in folder.iterdir()) == [".daps", "step_00000003"]


# --------------------------------------------------------------------------------------------------
# What the loggers are given


def test_logger_scalars_are_the_numbers_of_a_row_but_its_step():
    from daps.loggers import _scalars

    row = {"split": "val", "step": 3, "elbo": -90.5, "num_images": 40, "flag": True, "note": "text", "kl": None}
    assert _scalars(row) == {"val/elbo": -90.5, "val/num_images": 40.0}
    assert _scalars({"step": 2, "loss": 1}) == {"train/loss": 1.0}  # a row without a split is a train row


def test_tensorboard_histograms_cover_the_first_16_positions(tmp_path):
    import torch

    from daps.loggers import TensorBoardLogger

    logger = TensorBoardLogger(tmp_path, {}, 0)
    calls = []

    class Recorder:
        def add_histogram(self, tag, values, step):
            calls.append((tag, values.tolist(), step))

        def close(self):
            pass

    logger.writer.close()
    logger.writer = Recorder()
    indices = torch.arange(3 * 20).reshape(3, 20)  # 3 codes of 20 positions
    logger.codes(7, indices)
    assert not logger.broken
    assert [tag for tag, _, _ in calls] == [f"codes/position_{t:02d}" for t in range(16)]
    assert calls[5] == ("codes/position_05", [5, 25, 45], 7)


def test_a_dangling_link_at_the_output_path_is_not_a_new_file(tmp_path):
    from daps.errors import UserError
    from daps.runfolder import check_output_file

    link = tmp_path / "codes.safetensors"
    link.symlink_to(tmp_path / "elsewhere.safetensors")  # the target does not exist (yet)
    with pytest.raises(UserError, match="already exists"):
        check_output_file(link, ".safetensors", overwrite=False)
    with pytest.raises(UserError, match="link"):
        check_output_file(link, ".safetensors", overwrite=True, is_ours=lambda p: True)
    new = tmp_path / "new.safetensors"
    assert check_output_file(new, ".safetensors", overwrite=False) == new


@offline
def test_training_command_and_card_table_known_answers(trained_run):
    import daps
    from daps.hub import model_card, training_command
    from daps.presets import get_preset

    cfg = get_preset("mnist", "daps")
    cfg.train.progress = not cfg.train.progress  # how a run shows progress does not make another model
    cfg.train.compile = True
    cfg.train.steps = 1234
    assert training_command(cfg) == "daps train --preset mnist --method daps train.compile=true train.steps=1234"
    model = daps.load_model(trained_run)
    card = model_card(model, {"step": 6, "num_images": 40, "elbo": -90.5, "skipped_files": 0, "fid_num_images": 9},
                      step=6)
    table = [line for line in card.splitlines() if line.startswith("| ") and not line.startswith("| metric")]
    assert table == ["| elbo | -90.5 |"]  # counts are not scores
    assert "On 40 test examples" in card


# --------------------------------------------------------------------------------------------------
# Codes files


def test_flat_codes_keep_each_draw_with_the_label_of_its_input():
    import torch

    from daps.codes import CodeSet

    codes = torch.arange(2 * 3 * 4).reshape(2, 3, 4)  # 2 inputs, K = 3 draws of T = 4 tokens
    flat_codes, flat_labels = CodeSet(codes, torch.tensor([7, 1]), {}).flat()
    assert flat_codes.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15], [16, 17, 18, 19],
                                   [20, 21, 22, 23]]
    assert flat_labels.tolist() == [7, 7, 7, 1, 1, 1]


def test_check_codes_bounds_are_half_open():
    import torch

    from daps.codes import CodeSet, check_codes
    from daps.errors import UserError

    meta = {"vocab_size": 5, "num_tokens": 2, "class_names": ["a", "b", "c"]}
    check_codes(CodeSet(torch.tensor([[[0, 4]]]), torch.tensor([2]), meta), "edge")  # the largest valid values
    with pytest.raises(UserError, match=r"codes outside \[0, 5\)"):
        check_codes(CodeSet(torch.tensor([[[0, 5]]]), torch.tensor([2]), meta), "codes")
    with pytest.raises(UserError, match=r"labels outside \[0, 3\)"):
        check_codes(CodeSet(torch.tensor([[[0, 4]]]), torch.tensor([3]), meta), "labels")
    with pytest.raises(UserError, match="3 tokens"):
        check_codes(CodeSet(torch.tensor([[[0, 1, 2]]]), torch.tensor([0]), meta), "tokens")


# --------------------------------------------------------------------------------------------------
# Config text


@pytest.mark.parametrize("text, value", [("16,32", (16, 32)), ("(16, 32,)", (16, 32)), ("[8]", (8,)), ("8,", (8,)),
                                         (" 1_000 , 2 ", (1000, 2))])
def test_tuple_settings_parse_known_answers(text, value):
    from daps.config import Config
    from daps.config_io import parse_setting

    assert parse_setting(Config(), "decoder.hidden", text) == value


# --------------------------------------------------------------------------------------------------
# Robot policy evaluation and the CIFAR-10 JPEG cache key


def test_policy_evaluation_is_bits_per_token_of_each_input_taken_away():
    import math

    import torch

    from daps.robot.data import CommandSet
    from daps.robot.run import evaluate_policy

    n, t = 7, 5

    class Fake:
        """log p of each token: 1/4 with every input, 1/8 with the null label, 1/16 without the previous codes."""

        num_classes, start_symbol = 3, 16

        def eval(self):
            return self

        def train(self, mode=True):
            return self

        def token_log_probs(self, codes, labels, velocity, prev):
            bits = torch.full(codes.shape, 2.0, dtype=torch.float64)
            bits[labels == self.num_classes] = 3.0
            bits[(prev == self.start_symbol).all(1)] = 4.0
            return -bits * math.log(2)

    val = CommandSet(torch.zeros(n, t, dtype=torch.long), torch.ones(n, t, dtype=torch.long),
                     torch.arange(n) % 3, torch.zeros(n, 3), torch.arange(n))
    out = evaluate_policy(Fake(), val, batch_size=3)  # batches of 3, 3 and 1
    assert out["num_examples"] == 7.0
    assert out["bits_per_token"] == pytest.approx(2.0, abs=1e-12)
    assert out["bits_per_token_null_label"] == pytest.approx(3.0, abs=1e-12)
    assert out["bits_per_token_no_prev"] == pytest.approx(4.0, abs=1e-12)
    assert out["bits_per_token_shuffled_velocity"] == pytest.approx(2.0, abs=1e-12)


def test_jpeg_cache_key_sees_a_change_at_the_end_of_a_large_file(tmp_path):
    from daps.data.paths import file_key

    head = bytes(range(256)) * (3 * 4096)  # 3 MiB
    a, b, c = tmp_path / "a.npz", tmp_path / "b.npz", tmp_path / "c.npz"
    a.write_bytes(head + b"zip directory 1")
    b.write_bytes(head + b"zip directory 2")  # same size, same first MiB: only the tail differs
    c.write_bytes(head + b"zip directory 1")
    assert file_key(a) != file_key(b)
    assert file_key(a) == file_key(c) and len(file_key(a)) == 16


# --------------------------------------------------------------------------------------------------
# Priors: held-out numbers and the training loop's bookkeeping


def test_ar_prior_evaluation_known_answers():
    import math

    import torch

    from daps.prior.nets import ARPrior
    from daps.prior.run import evaluate_prior

    model = ARPrior(4, 8, 3, 16, 1, 2, 2)

    def token_log_probs(codes, labels):  # 2 bits a token given the class, 3 bits given the null label
        bits = torch.where(labels[:, None] == model.num_classes, 3.0, 2.0).expand(codes.shape)
        return -bits.double() * math.log(2)

    model.token_log_probs = token_log_probs
    codes, labels = torch.zeros(7, 4, dtype=torch.long), torch.arange(7) % 3
    out = evaluate_prior(model, codes, labels, batch_size=3)
    assert out == pytest.approx({"num_codes": 7.0, "bits_per_token": 2.0, "bits_per_token_uncond": 3.0}, abs=1e-12)
    assert isinstance(out["num_codes"], int)  # a count: `prior eval` prints 7, not 7.0000


def test_prior_loop_skips_non_finite_steps_and_averages_the_applied_ones(tmp_path, monkeypatch):
    import types

    import torch

    import daps.prior.run as prior_run

    monkeypatch.setattr(prior_run, "MAX_SKIPPED_STEPS", 2)  # two non-finite steps in a row stop a run
    values = [1.0, float("nan"), 3.0, 8.0, float("nan"), 2.0, float("nan"), 4.0]  # never two in a row
    model = torch.nn.Linear(2, 1)
    step = iter(range(len(values)))

    def batch_loss():
        return model.weight.sum() * 0.0 + values[next(step)]

    cfg = types.SimpleNamespace(steps=8, progress=False, log_every=4, eval_every=100, ckpt_every=100,
                                keep_checkpoints=1, grad_clip=1.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    prior_run.run_steps(tmp_path, model, optimizer, torch.Generator(), {"prior": {}}, cfg, 0, batch_loss,
                        lambda: {"held_out": 1.0}, "test")
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [(r["step"], r["loss"], r["skipped"]) for r in rows if r["split"] == "train"]
    assert train == [(4, 4.0, 1), (8, 3.0, 2)]  # (1 + 3 + 8) / 3 and (2 + 4) / 2: the skipped steps left out
    assert [(r["step"], r["held_out"]) for r in rows if r["split"] == "val"] == [(8, 1.0)]


def test_a_run_folder_above_the_current_one_is_never_replaceable(tmp_path, monkeypatch):
    from daps.runfolder import OutputFolderError, check_replaceable, prepare_output_folder, write_marker

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    write_marker(run, "train")
    (run / "metrics.jsonl").write_text("{}\n")
    monkeypatch.chdir(run / "checkpoints")  # a shell left inside the run it is about to replace
    for path in ("..", str(run), "../../run"):
        with pytest.raises(OutputFolderError, match="current folder or one of its parents"):
            check_replaceable(path, "train", "train.out_dir")
    with pytest.raises(OutputFolderError, match="current folder or one of its parents"):
        prepare_output_folder(tmp_path, "compare", overwrite=True, entries=())
    assert (run / "metrics.jsonl").is_file()


@pytest.mark.parametrize("key, text, value", [("train.steps", "10_000", 10000), ("train.seed", "-3", -3),
                                              ("optim.lr", "1e-3", 1e-3), ("train.compile", "on", True)])
def test_scalar_settings_parse_known_answers(key, text, value):
    from daps.config import Config
    from daps.config_io import parse_setting

    assert parse_setting(Config(), key, text) == value


def test_choosing_the_preset_by_override_is_refused():
    from daps.config import Config
    from daps.config_io import parse_overrides
    from daps.errors import UserError

    cfg = Config()
    assert parse_overrides(cfg, ["preset=mnist"]).preset == "mnist"  # its own name: nothing changes
    with pytest.raises(UserError, match="--preset"):
        parse_overrides(Config(), ["preset=cifar10"])  # would name cifar10 with mnist's settings


def test_closed_ends_of_config_ranges_are_accepted():
    from daps.config import Config
    from daps.config_io import parse_overrides

    cfg = parse_overrides(Config(), ["optim.lr_schedule=cosine", "optim.lr_final=1.0"])  # no decay at all
    assert cfg.optim.lr_final == 1.0
    cfg = parse_overrides(Config(), ["decoder.min_variance=0.5", "decoder.max_variance=0.5"])  # a fixed variance
    assert cfg.decoder.max_variance == cfg.decoder.min_variance == 0.5


@pytest.mark.parametrize("label, ok", [(9, True), (10, False)])
def test_idx_labels_are_digits(tmp_path, label, ok):
    import struct

    from daps.data.mnist import LABEL_MAGIC, _parse_idx
    from daps.errors import UserError

    path = tmp_path / "labels-idx1-ubyte"
    path.write_bytes(struct.pack(">II", LABEL_MAGIC, 3) + bytes([0, label, 1]))
    if ok:
        assert _parse_idx(path, LABEL_MAGIC).tolist() == [0, 9, 1]
    else:
        with pytest.raises(UserError, match="label value 10 out of range"):
            _parse_idx(path, LABEL_MAGIC)


@pytest.mark.parametrize("name, safe", [
    ("cifar-10-batches-py/data_batch_1", True),
    ("cifar-10-batches-py", True),
    ("cifar-10-batches-py/../../outside", False),  # starts in the folder, then climbs out of it
    ("cifar-10-batches-py/sub/../../../outside", False),
    ("/cifar-10-batches-py/data_batch_1", False),
    ("other/data_batch_1", False),
    ("cifar-10-batches-py\\..\\outside", False),
])
def test_cifar_archive_member_names_known_answers(name, safe):
    from daps.data.cifar import _safe_member_name

    assert _safe_member_name(name) is safe


@offline
def test_a_quantizer_exports_one_code_per_input(tmp_path, tiny_overrides_for):
    from daps.checkpoint import save_checkpoint
    from daps.codes import export_codes
    from daps.config_io import parse_overrides
    from daps.errors import UserError
    from daps.methods import build_method
    from daps.presets import get_preset

    cfg = parse_overrides(get_preset("mnist", "vqvae"), tiny_overrides_for("vqvae"))
    model = build_method(cfg, tuple(cfg.data.image_shape))
    save_checkpoint(tmp_path / "run", 1, model, cfg, {"step": 1, "optimizers": {}, "rng": [{}]}, keep=1)
    with pytest.raises(UserError, match="encodes deterministically"):
        export_codes(tmp_path / "run", samples_per_input=2)



@offline
def test_a_partial_last_window_averages_only_its_own_steps(tmp_path, tiny_overrides, no_plots, monkeypatch):
    """5 steps, log_every=2: the row of step 5 holds the logs of step 5 alone (its one step), not their sum over
    log_every. Fails on: the window's sums divided by train.log_every instead of the steps it holds."""
    seen = record_training_logs(monkeypatch)
    run = tmp_path / "run"
    assert main(["train", *tiny_overrides, "train.steps=5", f"train.out_dir={run}"]) == 0
    last = [r for r in rows(run) if r["split"] == "train"][-1]
    assert (last["step"], last["num_steps"]) == (5, 1) and len(seen) == 5
    for key, value in seen[4].items():
        assert last[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    assert any(abs(v) > 1e-3 for v in seen[4].values())  # else halving could not show


@offline
def test_a_stop_after_beyond_train_steps_stops_at_train_steps(tmp_path, tiny_overrides, no_plots):
    """train.stop_after=9 on a 6-step run: the run ends at step 6 (summary, last checkpoint, last row).
    Fails on: stop_step returning train.stop_after whenever it is set (the run trains past its own end)."""
    from daps.checkpoint import list_checkpoints

    run = tmp_path / "run"
    assert main(["train", *tiny_overrides, "train.stop_after=9", f"train.out_dir={run}"]) == 0
    assert json.loads((run / "summary.json").read_text())["step"] == 6
    assert list_checkpoints(run)[0].name == "step_00000006"
    assert max(r["step"] for r in rows(run)) == 6


@offline
def test_resuming_after_the_final_checkpoint_logs_no_second_final_validation(copy_run, trained_run, tiny_overrides,
                                                                              no_plots, monkeypatch):
    """A run killed after its final checkpoint (summary.json missing): --resume rewrites the summary from the
    validation row already logged at step 6, without evaluating again; metrics.jsonl is unchanged.
    Fails on: the final validation recomputed and logged a second time on such a resume."""
    import daps.train

    calls = []
    real_evaluate = daps.train.evaluate
    monkeypatch.setattr(daps.train, "evaluate", lambda *a, **k: calls.append(1) or real_evaluate(*a, **k))
    run = copy_run()
    (run / "summary.json").unlink()
    assert main(["train", *tiny_overrides, f"train.out_dir={run}", "--resume"]) == 0
    assert calls == []
    assert rows(run) == rows(trained_run)
    assert json.loads((run / "summary.json").read_text()) == json.loads((trained_run / "summary.json").read_text())


@offline
def test_non_finite_final_validation_stops_the_run_without_a_final_checkpoint(tmp_path, tiny_overrides, no_plots,
                                                                              monkeypatch, capsys):
    """The weights stay finite but the final validation's log p is NaN: exit code 3, no step-6 checkpoint (the last
    good one, step 3, stays the newest) and no summary. Fails on: the finiteness of the final metrics not checked
    (or its gathered verdict ignored)."""
    import math

    import daps.train
    from daps.checkpoint import list_checkpoints

    real_evaluate = daps.train.evaluate

    def evaluate(*args, **kwargs):
        metrics = real_evaluate(*args, **kwargs)
        return {**metrics, "log_p": math.nan}

    monkeypatch.setattr(daps.train, "evaluate", evaluate)
    run = tmp_path / "run"
    assert main(["train", *tiny_overrides, f"train.out_dir={run}"]) == 3
    assert "final validation metrics are not finite" in capsys.readouterr().err
    assert [c.name for c in list_checkpoints(run)] == ["step_00000003"]
    assert not (run / "summary.json").exists()


@offline
def test_a_skip_streak_counts_consecutive_skipped_updates_only(tmp_path, tiny_overrides, no_plots, nan_gradients):
    """NaN gradients at steps 2 and 4 (never two in a row), train.max_skipped_steps=2: the run finishes, two updates
    skipped. Fails on: the streak not reset by an applied update (a count of every skip, which reaches 2 at step 4)."""
    calls = nan_gradients(lambda step: step in (2, 4))
    run = tmp_path / "run"
    assert main(["train", *tiny_overrides, "train.max_skipped_steps=2", f"train.out_dir={run}"]) == 0
    assert len(calls) == 6
    last = [r for r in rows(run) if r["split"] == "train"][-1]
    assert last["skipped_vae"] == 2


@offline
def test_a_run_of_another_process_count_is_refused_on_resume(copy_run, tiny_overrides, monkeypatch, capsys):
    """A checkpoint holding the random states of 2 processes, resumed by 1: one line (exit 2) naming the count.
    Fails on: the count not checked (the single process would go on with rank 0's state alone)."""
    import daps.train

    real_load = daps.train.load_training_state

    def load(ckpt):
        state = real_load(ckpt)
        return {**state, "rng": [state["rng"][0], state["rng"][0]]}

    monkeypatch.setattr(daps.train, "load_training_state", load)
    run = copy_run()
    assert main(["train", *tiny_overrides, "train.steps=8", f"train.out_dir={run}", "--resume"]) == 2
    assert "trained by 2 processes" in capsys.readouterr().err
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000006"


@offline
def test_each_process_draws_its_own_batches_and_samples(tmp_path, tiny_overrides, monkeypatch):
    """Under torchrun every rank draws its own data and codes: rank 0 and rank 1 get different training batches and
    sample streams, and a rank's data and sample streams differ (set up as rank 1 in one process).
    Fails on: a seed of the data stream (in-memory generator or folder stream) or of the sampling generator that
    leaves out the rank."""
    import torch

    import daps.train
    from daps import get_preset, parse_overrides

    stream_seeds = []
    real_batches = daps.train.train_batches

    def batches(data, batch_size, seed, *args):
        stream_seeds.append(seed)
        return real_batches(data, batch_size, seed, *args)

    monkeypatch.setattr(daps.train, "train_batches", batches)
    cfg = parse_overrides(get_preset("mnist"), [*tiny_overrides, f"train.out_dir={tmp_path / 'run'}"])
    setups = [daps.train._setup(cfg, None, torch.device("cpu"), rank, 1) for rank in (0, 1)]
    first = [next(s.batches) for s in setups]
    assert not torch.equal(first[0], first[1])
    assert stream_seeds[0] != stream_seeds[1]
    states = [{k: g.get_state() for k, g in s.generators.items()} for s in setups]
    assert not torch.equal(states[0]["sample"], states[1]["sample"])
    draws = {(rank, name): torch.rand(4, generator=g)
             for rank, s in enumerate(setups) for name, g in s.generators.items()}
    assert len({tuple(d.tolist()) for d in draws.values()}) == len(draws)  # four distinct streams


@offline
def test_train_rows_count_the_unreadable_files_replaced_so_far(tmp_path, tiny_overrides, no_plots, monkeypatch):
    """Folder data replace an unreadable image by another and count it: every train row carries the count so far
    (``skipped_files``), in-memory data (none skipped) carry no such key. Fails on: the count left out of the rows."""
    from daps.data import TrainBatches

    run = tmp_path / "run"
    assert main(["train", *tiny_overrides, "train.steps=2", f"train.out_dir={run}"]) == 0
    assert all("skipped_files" not in r for r in rows(run))
    monkeypatch.setattr(TrainBatches, "num_skipped", property(lambda self: 3))
    run = tmp_path / "folder"
    assert main(["train", *tiny_overrides, "train.steps=2", f"train.out_dir={run}"]) == 0
    assert [r["skipped_files"] for r in rows(run) if r["split"] == "train"] == [3]


@offline
def test_steps_per_s_of_each_window_leaves_out_only_its_own_pauses(tmp_path, tiny_overrides, no_plots, monkeypatch):
    """On a clock where every training step takes 1 s and every evaluation 10 s (nothing else takes time), each train
    row of log_every=2, eval_every=2 reads 1 step/s: the evaluation after a row is left out of the next window
    only. Fails on: the pause total not reset with the window (the third row subtracts both evaluations: 1e9/s)."""
    from types import SimpleNamespace

    import daps.train
    from daps.optim import Optimizers

    clock = [100.0]
    monkeypatch.setattr(daps.train, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    real_launch, real_evaluate = Optimizers.launch, daps.train._evaluate

    def launch(self):
        clock[0] += 1.0
        return real_launch(self)

    def evaluate(s, fid=None):
        clock[0] += 10.0
        return real_evaluate(s, fid)

    monkeypatch.setattr(Optimizers, "launch", launch)
    monkeypatch.setattr(daps.train, "_evaluate", evaluate)
    run = tmp_path / "run"
    assert main(["train", *tiny_overrides, "train.eval_every=2", f"train.out_dir={run}"]) == 0
    train = [r for r in rows(run) if r["split"] == "train"]
    assert [r["steps_per_s"] for r in train] == pytest.approx([1.0] * 4)  # rows at 2, 3 (the checkpoint), 4, 6
    assert [r["time"] for r in train] == pytest.approx([2.0, 13.0, 14.0, 26.0])  # since the start, pauses included


@offline
def test_a_job_that_only_finishes_a_run_is_not_recorded_as_training_it(copy_run, trained_run, tiny_overrides,
                                                                       no_plots):
    """provenance.json lists the jobs that trained a run's steps: a --resume after the final checkpoint (summary.json
    missing) rewrites the end-of-run files and trains nothing, so the record still holds the one job from step 0.
    Fails on: a job recorded when it starts at the step it stops at."""
    from daps.provenance import read_jobs

    run = copy_run()
    (run / "summary.json").unlink()
    assert main(["train", *tiny_overrides, f"train.out_dir={run}", "--resume"]) == 0
    assert (run / "summary.json").exists()
    assert [j["from_step"] for j in read_jobs(run)] == [0] and read_jobs(run) == read_jobs(trained_run)
