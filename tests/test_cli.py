"""End-to-end tests of the ``daps`` command (in-process through ``daps.cli.main``), on a tiny config and
a synthetic offline dataset (see conftest.py)."""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from daps.cli import main
from daps.config_io import config_from_dict, config_to_dict
from daps.errors import UserError
from daps.methods import METHODS
from daps.presets import PRESETS, get_preset

pytestmark = pytest.mark.usefixtures("offline")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EVAL_KEYS = {
    "elbo", "beta_elbo", "log_p", "kl", "l2", "mse", "psnr",
    "codebook_utilization", "code_perplexity", "token_entropy", "num_images",
}
MNIST5K_TEST_SIZE = 500
TINY_K = 4  # daps.num_samples of the tiny config


def strict_json(text: str):
    """json.loads that rejects NaN / Infinity (not valid JSON)."""

    def bad(const):
        raise ValueError(f"non-standard JSON constant {const}")

    return json.loads(text, parse_constant=bad)


def read_rows(path: Path) -> list[dict]:
    return [strict_json(line) for line in path.read_text().splitlines() if line.strip()]


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """relative path -> (mtime_ns, bytes) of every file, plus the set of folders."""
    out: dict[str, tuple[int, bytes]] = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        out[rel] = (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else b"<dir>")
    return out


def error_line(capsys, command: str) -> str:
    """The single non-empty stderr line of a failed command; checks its prefix."""
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got: {err!r}"
    assert lines[0].startswith(f"daps {command}: error: "), lines[0]
    assert "Traceback" not in err
    return lines[0]


def check_png(path: Path) -> None:
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 50 and height > 50
    import matplotlib.image

    img = matplotlib.image.imread(path)  # decodes: a valid PNG
    assert img.shape[:2] == (height, width)


# --------------------------------------------------------------------------------------------------
# train + eval


def test_train_writes_a_complete_run_folder(trained_run):
    run = trained_run
    for name in ["config.json", "metrics.jsonl", "summary.json", "reconstructions.png", "curves.png"]:
        assert (run / name).is_file(), name
    ckpts = run / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step_00000006"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_00000003", "step_00000006"]  # no temp leftovers
    for step in ("step_00000003", "step_00000006"):
        for name in ["model.safetensors", "config.json", "state.pt"]:
            assert (ckpts / step / name).stat().st_size > 0
    check_png(run / "reconstructions.png")
    check_png(run / "curves.png")
    cfg = strict_json((run / "config.json").read_text())
    assert cfg["train"]["steps"] == 6 and cfg["encoder"]["width"] == 16 and cfg["data"]["name"] == "mnist5k"
    assert cfg["train"]["out_dir"] == str(run)


def test_metrics_jsonl_rows(trained_run):
    rows = read_rows(trained_run / "metrics.jsonl")
    train = [r for r in rows if r.get("split") == "train"]
    val = [r for r in rows if r.get("split") == "val"]
    assert len(train) + len(val) == len(rows)
    assert [r["step"] for r in train] == [2, 3, 4, 6]  # log_every=2, and at the checkpoint of step 3
    assert [r["step"] for r in val] == [3, 6]  # eval_every=3 plus the final evaluation
    for r in train:
        for key in ("log_p", "ess", "eta", "beta", "loss", "kl", "elbo"):
            assert isinstance(r[key], float) and math.isfinite(r[key]), (key, r)
        assert 1.0 / TINY_K - 1e-6 <= r["ess"] <= 1.0 + 1e-6  # ESS / K
        assert r["eta"] > 0 and r["log_p"] < 0
        assert r["skipped_vae"] == 0 and r["skipped_eta"] == 0
    assert train[0]["beta"] > train[-1]["beta"] > 0  # beta decays
    for r in val:
        assert r["num_images"] == 40  # train.eval_examples
        for key in EVAL_KEYS - {"num_images"}:
            assert math.isfinite(r[key]), (key, r)
    summary = strict_json((trained_run / "summary.json").read_text())
    assert summary["step"] == 6
    assert summary.pop("dataset") == "mnist5k" and "note" not in summary  # only lossy / sample data carry a note
    beta = strict_json((trained_run / "config.json").read_text())["daps"]["beta"]
    assert summary.pop("final_beta") == beta["end"] != beta["init"]  # the beta-ELBO's β (daps compare's column)
    assert {k: v for k, v in val[-1].items() if k != "split"} == summary


@pytest.mark.parametrize("max_images", [25, 0])
def test_eval_json(trained_run, capsys, max_images):
    argv = ["eval", str(trained_run), "--json", "--split", "test"]
    if max_images:
        argv += ["--max-images", str(max_images)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.endswith("\n")
    metrics = strict_json(out)
    assert isinstance(metrics, dict)
    assert EVAL_KEYS <= set(metrics)
    for key in EVAL_KEYS:
        assert isinstance(metrics[key], (int, float)) and math.isfinite(metrics[key]), key
    assert metrics["num_images"] == (max_images or MNIST5K_TEST_SIZE)
    assert 0 < metrics["codebook_utilization"] <= 1
    assert 1 <= metrics["code_perplexity"] <= 16  # V = 16
    assert 0 <= metrics["token_entropy"] <= math.log(16) + 1e-6
    # PSNR is the mean of per-image -10 log10(mse_i) on the [0, 1] scale: by Jensen at least -10 log10(mean mse),
    # and within a few dB of it (a 0..255 peak would add 48 dB).
    psnr_of_mean = -10 * math.log10(metrics["mse"])
    assert psnr_of_mean - 1e-3 <= metrics["psnr"] < psnr_of_mean + 10
    assert metrics["elbo"] == pytest.approx(metrics["log_p"] - metrics["kl"], rel=1e-6)  # float32 per image
    # beta-ELBO uses the schedule's final beta (0.01 in the mnist preset); the AR code's KL to uniform is
    # sum_t (log V - H_t) = T (log V - mean token entropy) with T = 4, V = 16.
    assert metrics["beta_elbo"] == pytest.approx(metrics["log_p"] - 0.01 * metrics["kl"], rel=1e-6)
    assert metrics["kl"] == pytest.approx(4 * (math.log(16) - metrics["token_entropy"]), rel=1e-4, abs=1e-4)


def test_eval_is_deterministic_and_accepts_a_checkpoint_folder(trained_run, capsys):
    ckpt = trained_run / "checkpoints" / "step_00000006"
    assert main(["eval", str(trained_run), "--json", "--max-images", "30"]) == 0
    a = strict_json(capsys.readouterr().out)
    assert main(["eval", str(ckpt), "--json", "--max-images", "30"]) == 0
    b = strict_json(capsys.readouterr().out)
    a.pop("run"), b.pop("run")
    assert a == b
    assert main(["eval", str(trained_run / "checkpoints" / "step_00000003"), "--json", "--max-images", "30"]) == 0
    c = strict_json(capsys.readouterr().out)
    assert c["log_p"] != a["log_p"]  # a different checkpoint really was loaded


def test_commands_over_a_dataset_show_a_bar_on_a_terminal_only(trained_run, capsys, monkeypatch, tmp_path):
    """eval and export-codes draw a progress bar when standard error is a terminal, advanced over every input,
    and print nothing extra otherwise; the numbers are the same either way, and --json output stays one line."""
    import tqdm

    bars = []

    class Recorded(tqdm.tqdm):
        def close(self):
            if not self.disable:  # a drawn bar (a disabled one keeps no description)
                bars.append((self.desc, self.n, self.total))
            super().close()

    monkeypatch.setattr(tqdm, "tqdm", Recorded)
    argv = ["eval", str(trained_run), "--json", "--max-images", "30"]
    assert main(argv) == 0
    quiet = capsys.readouterr()
    assert "evaluating" not in quiet.err
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(argv) == 0
    shown = capsys.readouterr()
    assert "evaluating" in shown.err
    assert strict_json(shown.out) == strict_json(quiet.out)
    assert main(["export-codes", str(trained_run), "--out", str(tmp_path / "c.safetensors"), "--max-inputs",
                 "40"]) == 0
    assert "encoding train" in capsys.readouterr().err
    assert bars[-2:] == [("evaluating", 30, 30), ("encoding train", 40, 40)]  # each bar went all the way


def test_eval_human_readable(trained_run, capsys):
    assert main(["eval", str(trained_run), "--max-images", "20"]) == 0
    out = capsys.readouterr().out
    # what was evaluated: the newest checkpoint of the 6-step run, the seed and batch of the codes drawn
    assert "mnist5k test split, checkpoint step 6, seed 0, batch 500, 20 images:" in out
    assert "ELBO" in out and "PSNR" in out
    assert main(["eval", str(trained_run / "checkpoints" / "step_00000003"), "--max-images", "20", "--split", "train",
                 "--seed", "4", "--batch-size", "10", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["step"], result["seed"], result["batch_size"]) == (3, 4, 10)
    assert result["checkpoint"].endswith("step_00000003")
    assert main(["eval", str(trained_run), "--max-images", "20", "--split", "train"]) == 0
    assert "mnist5k train split, checkpoint step 6" in capsys.readouterr().out  # never "validation" here


def test_eval_names_the_dataset_note_and_refuses_unused_fid_flags(trained_run, capsys, tmp_path):
    from daps.data import dataset_spec

    assert main(["eval", str(trained_run), "--max-images", "8", "--json"]) == 0
    note = dataset_spec("mnist5k").note
    assert strict_json(capsys.readouterr().out).get("note") == (note or None)
    for argv, message in ((["--fid-ref", str(tmp_path / "s.npz")], "--fid-ref is read only with --fid reference"),
                          (["--fid-weights", str(tmp_path)], "--fid-weights is used only"),
                          # grey images: refused before the weights are looked for (a missing file would be named)
                          (["--fid", "val-pairs", "--fid-weights", str(tmp_path / "none.pt")], "needs RGB images"),
                          (["--fid", "reference", "--fid-ref", str(tmp_path / "s.npz")], "s.npz: no such file")):
        assert main(["eval", str(trained_run), *argv]) == 2
        assert message in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# user errors: exit 2, one line on stderr, nothing written


def test_unknown_preset(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--preset", "imagenet", f"train.out_dir={out}"]) == 2
    line = error_line(capsys, "train")
    assert "unknown preset 'imagenet'" in line and "mnist" in line
    assert not out.exists()


def test_unknown_override_key_lists_valid_keys(tmp_path, capsys):
    assert main(["train", "train.stepz=5", f"train.out_dir={tmp_path / 'run'}"]) == 2
    line = error_line(capsys, "train")
    assert "train.stepz" in line and "valid keys" in line
    for key in ("train.steps", "encoder.width", "daps.beta.init", "data.data_dir"):
        assert key in line


def test_wrong_type(tmp_path, capsys):
    assert main(["train", "train.steps=abc", f"train.out_dir={tmp_path / 'run'}"]) == 2
    line = error_line(capsys, "train")
    assert "train.steps" in line and "integer" in line and "'abc'" in line
    assert not (tmp_path / "run").exists()


def test_malformed_override(tmp_path, capsys):
    assert main(["train", "train.steps", f"train.out_dir={tmp_path / 'run'}"]) == 2
    line = error_line(capsys, "train")
    assert "'train.steps'" in line and "key=value" in line


def test_invalid_value(tmp_path, capsys):
    assert main(["train", "daps.ess_target=1.5", f"train.out_dir={tmp_path / 'run'}"]) == 2
    assert "daps.ess_target" in error_line(capsys, "train")


@pytest.mark.parametrize("env", ["unset", "empty_dir"])
def test_missing_data(tmp_path, capsys, monkeypatch, env, tiny_overrides):
    empty = tmp_path / "empty"
    empty.mkdir()
    if env == "empty_dir":
        (tmp_path / "env_empty").mkdir()
        monkeypatch.setenv("DAPS_DATA_DIR", str(tmp_path / "env_empty"))
    out = tmp_path / "run"
    overrides = [o for o in tiny_overrides if not o.startswith("data.")]
    argv = ["train", *overrides, "data.name=mnist", f"data.data_dir={empty}", "data.download=false",
            f"train.out_dir={out}"]
    assert main(argv) == 2
    line = error_line(capsys, "train")
    assert "not found" in line and "MNIST" in line
    assert str(empty) in line and "download disabled" in line
    assert "data.data_dir=" in line  # the key train takes (train has no --data-dir flag)
    if env == "empty_dir":
        assert str(tmp_path / "env_empty") not in line  # the explicit folder replaces $DAPS_DATA_DIR
    assert not out.exists()  # nothing written before the data check


def test_existing_run_folder_is_refused_and_untouched(copy_run, capsys, tiny_overrides):
    run = copy_run()
    before = snapshot(run)
    assert main(["train", *tiny_overrides, f"train.out_dir={run}"]) == 2
    line = error_line(capsys, "train")
    assert str(run) in line and "--resume" in line and "--overwrite" in line
    assert snapshot(run) == before


def test_resume_and_overwrite_together_refused(copy_run, capsys, tiny_overrides):
    run = copy_run()
    before = snapshot(run)
    assert main(["train", *tiny_overrides, f"train.out_dir={run}", "--resume", "--overwrite"]) == 2
    assert "--resume" in error_line(capsys, "train")
    assert snapshot(run) == before


def test_resume_with_a_different_architecture_is_refused(trained_run, capsys, tiny_overrides):
    before = snapshot(trained_run)
    argv = ["train", *tiny_overrides, "encoder.width=32", f"train.out_dir={trained_run}", "--resume"]
    assert main(argv) == 2
    line = error_line(capsys, "train")
    assert "cannot resume" in line and "encoder.width" in line and "16" in line and "32" in line
    assert snapshot(trained_run) == before


@pytest.mark.parametrize("steps", ["2", "100"])
def test_resume_with_another_method_names_the_runs_method(trained_run, capsys, tiny_overrides_for, steps):
    """Resuming a daps run with --method vqvae says so, whether or not the step count also differs (not 'set to
    stop at step 2', nor a list of every setting of the two methods)."""
    before = snapshot(trained_run)
    argv = ["train", "--method", "vqvae", *tiny_overrides_for("vqvae"), f"train.steps={steps}",
            f"train.out_dir={trained_run}", "--resume"]
    assert main(argv) == 2
    line = error_line(capsys, "train")
    assert "its method is daps, and this command's is vqvae; resume it with --method daps" in line, line
    assert snapshot(trained_run) == before


def test_train_given_out_names_the_key_it_takes(tmp_path, capsys, tiny_overrides):
    """``daps train --out DIR`` (every other command's flag): one line naming ``train.out_dir=DIR``, nothing made."""
    assert main(["train", *tiny_overrides, "--out", str(tmp_path / "run")]) == 2
    assert f"train.out_dir={tmp_path / 'run'}, not --out" in error_line(capsys, "train")
    assert not (tmp_path / "run").exists()


def test_resume_of_a_folder_that_is_not_a_run_is_refused(tmp_path, capsys, tiny_overrides):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("not a run\n")
    assert main(["train", *tiny_overrides, f"train.out_dir={run}", "--resume"]) == 2
    assert "not a daps run folder" in error_line(capsys, "train")
    assert sorted(os.listdir(run)) == ["notes.txt"]


def test_overwrite_replaces_the_run(copy_run, trained_run, capsys, tiny_overrides, no_plots):
    run = copy_run()
    (run / "notes.txt").write_text("the user's\n")  # kept: replacing deletes only what a run writes
    (run / "checkpoints" / "step_00000099").mkdir()
    argv = ["train", *tiny_overrides, "train.seed=1", "train.keep_checkpoints=1", f"train.out_dir={run}",
            "--overwrite"]
    assert main(argv) == 0
    assert f"run folder: {run}" in capsys.readouterr().out
    assert (run / "notes.txt").read_text() == "the user's\n"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_00000006"]  # keep=1
    assert strict_json((run / "config.json").read_text())["train"]["seed"] == 1
    rows = read_rows(run / "metrics.jsonl")
    assert [r["step"] for r in rows if r["split"] == "train"] == [2, 3, 4, 6]  # old rows are gone
    new = (run / "checkpoints" / "step_00000006" / "model.safetensors").read_bytes()
    old = (trained_run / "checkpoints" / "step_00000006" / "model.safetensors").read_bytes()
    assert new != old  # a different seed: really retrained


def test_overwrite_with_missing_data_keeps_the_old_run(copy_run, tmp_path, capsys, tiny_overrides):
    run = copy_run()
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    (tmp_path / "empty").mkdir()
    argv = ["train", *tiny_overrides, f"data.data_dir={tmp_path / 'empty'}", "data.name=mnist",
            "data.download=false", f"train.out_dir={run}", "--overwrite"]
    assert main(argv) == 2
    assert "not found" in error_line(capsys, "train")
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_eval_without_a_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(config_to_dict(get_preset("mnist"))))
    assert main(["eval", str(run), "--json"]) == 2
    line = error_line(capsys, "eval")
    assert f"{run} has no checkpoint yet" in line and "finish it with --resume" in line
    assert capsys.readouterr().out == ""
    assert main(["eval", str(tmp_path / "does_not_exist"), "--json"]) == 2
    assert f"{tmp_path / 'does_not_exist'} does not exist" in error_line(capsys, "eval")


def test_eval_with_missing_data(trained_run, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["eval", str(trained_run), "--json", "--data-dir", str(tmp_path / "empty")]) == 2
    line = error_line(capsys, "eval")
    assert "mnist_5k.csv.gz" in line and "not found" in line


def test_zero_heads_is_a_user_error(tmp_path, capsys):
    assert main(["train", "encoder.num_heads=0", f"train.out_dir={tmp_path / 'run'}"]) == 2
    assert "encoder.num_heads" in error_line(capsys, "train")


def test_flags_between_overrides(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "train.steps=abc", "--overwrite", f"train.out_dir={out}"]) == 2
    assert "train.steps" in error_line(capsys, "train")


# --------------------------------------------------------------------------------------------------
# presets


def test_python_m_daps_presets():
    proc = subprocess.run(
        [sys.executable, "-m", "daps", "presets"], capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    entries = [ln.split(maxsplit=1) for ln in proc.stdout.splitlines() if ln.strip() and not ln.startswith(" ")]
    assert [name for name, _ in entries] == sorted(PRESETS)
    # Each description is the first paragraph of the preset's doc, whole (continued on indented lines), not cut
    # off at the doc's first line break.
    text = " ".join(proc.stdout.split())
    for name, fn in PRESETS.items():
        first_paragraph = " ".join(inspect.cleandoc(fn.__doc__).split("\n\n")[0].split())
        assert f"{name} {first_paragraph}" in text, name


def test_presets_name_all_prints_the_full_config(capsys):
    assert main(["presets", "mnist", "--all"]) == 0
    printed = strict_json(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(config_to_dict(get_preset("mnist"))))
    assert config_from_dict(printed) == get_preset("mnist")
    assert main(["presets", "nope"]) == 2
    assert "unknown preset 'nope'" in error_line(capsys, "presets")
    assert main(["presets", "mnist", "--method", "vqvae"]) == 0
    assert strict_json(capsys.readouterr().out)["method"] == "vqvae"
    assert main(["presets", "--method", "vqvae"]) == 2  # the list has no method's defaults: name the preset
    assert "name the preset" in error_line(capsys, "presets")
    assert main(["presets", "--all"]) == 2
    assert "name the preset" in error_line(capsys, "presets")


def _dotted(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_dotted(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.mark.parametrize("method", sorted(METHODS))
def test_presets_name_prints_exactly_the_settings_train_takes(method, capsys):
    """Without ``--all``, ``daps presets NAME`` prints the settings that preset and method read, with their values:
    every key of the full config except those ``daps train`` refuses as overrides because the run would not read
    them (``decoder.resnet_width`` of an MLP decoder, ``train.fid_reference`` without FID, ...). Fails on: the
    ignored settings printed (the README promises "every key you can override"), or a read one left out."""
    from daps.config_io import ignored_settings, refuse_ignored

    for name in sorted(PRESETS):
        try:
            cfg = get_preset(name, method)
        except UserError:  # a method made for other data (the Gaussian VAE is MNIST-only)
            continue
        assert main(["presets", name, "--method", method]) == 0
        printed = _dotted(strict_json(capsys.readouterr().out))
        full = _dotted(json.loads(json.dumps(config_to_dict(cfg))))
        ignored = set(ignored_settings(cfg))
        assert ignored, name  # every preset has settings it does not read, so the check below can fail
        assert printed == {k: v for k, v in full.items() if k not in ignored}, name
        refuse_ignored(cfg, [f"{k}=1" for k in printed])  # none of the printed keys is refused


def test_a_bug_keeps_its_traceback(monkeypatch, tiny_overrides, tmp_path):
    """Only user errors become one line: an internal ValueError (a bug) propagates with its traceback."""
    import daps.train

    def broken(*args, **kwargs):
        raise ValueError("internal invariant broken")

    monkeypatch.setattr(daps.train, "train", broken)
    with pytest.raises(ValueError, match="internal invariant broken"):
        main(["train", *tiny_overrides, f"train.out_dir={tmp_path / 'run'}"])


def test_the_readme_command_block_lists_every_flag():
    """Each ``daps ...`` line of README's Commands block names exactly the flags its parser has (``--device``,
    ``--help`` and ``--[no-]keep-freed-memory`` are described once for all, below the block; the last one on exactly
    the commands with ``--device`` or ``--threads``), and every command has its line. (That each flag shown anywhere
    exists is tests/test_doc_commands.py, which reads the lines.)"""
    import re

    from test_doc_commands import REPO, command_parser, commands_in, subparsers

    from daps.cli import _parser

    readme = REPO / "README.md"
    text = readme.read_text()
    first = text[: text.index("## Commands\n\n```bash\n")].count("\n") + 4  # the block's first line
    last = first + text.split("## Commands\n\n```bash\n", 1)[1].split("```", 1)[0].count("\n")
    entries = [c for c in commands_in(readme) if c.block and first <= c.line < last and c.kind == "daps"]
    seen = set()
    for entry in entries:
        name, command, _ = command_parser(entry.words)
        documented = set(re.findall(r"(--[a-z][a-z0-9-]*)", entry.text))
        options = {o for a in command._actions if a.help != argparse.SUPPRESS  # not hidden ones (train's --out)
                   for o in a.option_strings if o.startswith("--")}
        actual = options - {"--help", "--device"}
        memory = {"--keep-freed-memory", "--no-keep-freed-memory"}
        assert (memory <= actual) == bool({"--threads", "--device"} & options) and not memory & documented, name
        assert documented - {"--device"} == actual - memory, (name, sorted(documented ^ (actual - memory)))
        seen.add(name)
    groups = subparsers(_parser())
    commands = {f"{group} {name}" if subparsers(p) else group
                for group, p in groups.items() for name in (subparsers(p) or [group])}
    assert seen == commands  # every command and subcommand has its line
    below = text[text.index("```", text.index("## Commands\n\n```bash\n") + 20):]
    assert "`--no-keep-freed-memory`" in below.split("\n## ", 1)[0]


def test_eval_table_says_how_many_unreadable_files_were_replaced():
    from daps.train import summarize

    table = summarize({"elbo": -90.0, "num_images": 100, "skipped_files": 2}, "imagenet256 test split")
    assert "  skipped: 2 unreadable file(s), each replaced by another image" in table.splitlines()
    assert "skipped" not in summarize({"elbo": -90.0, "num_images": 100, "skipped_files": 0})
    lines = summarize({"elbo": -90.0, "ssim": 0.5, "num_images": 3}).splitlines()
    assert lines[1:] == ["  ELBO" + " " * 21 + "-90.0000 nats", "  SSIM" + " " * 23 + "0.5000"]  # no blank at the end


def test_help_names_the_default_of_every_option_that_has_one():
    """README: ``--help`` on any command lists its flags with their defaults."""
    from daps.cli import _parser

    def commands(parser, name=""):
        sub = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not sub:
            yield name, parser
        for action in sub:
            for child, p in action.choices.items():
                yield from commands(p, f"{name} {child}".strip())

    checked = 0
    for name, command in commands(_parser()):
        text = command.format_help().split("options:", 1)[1]
        for action in command._actions:
            if not action.option_strings or action.nargs == 0 or action.default in (None, "", [], argparse.SUPPRESS):
                continue
            option = action.option_strings[-1]
            block = text[text.index(f"  {option}"):].split("\n  -")[0]  # the option's own lines of the help
            assert "default" in " ".join(block.split()), (name, option, block)
            checked += 1
    assert checked > 40


def test_help_lists_the_settings_of_the_commands_that_take_them(capsys):
    """``prior train``, ``robot train`` and ``robot track-train --help`` list every key=value setting with its
    default, as the settings dataclass has it (the slips: a setting left out, another default shown)."""
    import dataclasses

    from daps.prior.run import FLAG_SETTINGS, PriorConfig
    from daps.robot.run import RobotConfig
    from daps.robot.tracker import TrackerConfig

    for command, cfg in ((["prior", "train"], PriorConfig()), (["robot", "train"], RobotConfig()),
                         (["robot", "track-train"], TrackerConfig())):
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        listed = text.split("settings (key=value), with their defaults: ", 1)[1].split(" (docs/", 1)[0]
        shown = dict(item.split("=", 1) for item in listed.split(", "))
        expected = {f.name: str(getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if f.name not in FLAG_SETTINGS}
        assert shown == expected and len(shown) > 10


def test_every_flag_of_every_command_says_what_it_does():
    """``--help`` lists each flag with what it does (README, Commands): `--device` of eval, compare, the prior and
    robot commands, ... used to show bare."""
    from daps.cli import _parser

    def flags(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from flags(sub, (*path, name))
            elif action.option_strings and not isinstance(action, argparse._HelpAction):
                yield " ".join(path), action

    every = list(flags(_parser()))
    assert len({command for command, _ in every}) >= 15  # the walk reaches the prior and robot commands
    assert [(command, action.option_strings[0]) for command, action in every if not action.help] == []


def test_ctrl_c_is_one_line_with_exit_code_130(monkeypatch, capsys, tiny_overrides, tmp_path):
    """An interrupt prints one line (not a traceback), saying for a run that --resume continues it."""
    import daps.cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(daps.cli, "_eval", interrupted)
    assert main(["eval", str(tmp_path)]) == 130
    assert capsys.readouterr().err.strip() == "daps eval: interrupted"
    monkeypatch.setattr(daps.cli, "_train", interrupted)
    assert main(["train", *tiny_overrides, f"train.out_dir={tmp_path / 'run'}"]) == 130
    assert capsys.readouterr().err.strip() == (
        "daps train: interrupted; --resume continues from the last checkpoint (or starts again if there is none)")
    monkeypatch.setattr(daps.cli, "_compare", lambda args, rest: interrupted(args))
    assert main(["compare", "--methods", "daps", "--steps", "2", "--out", str(tmp_path / "c")]) == 130
    assert capsys.readouterr().err.strip() == "daps compare: interrupted; the same command continues the comparison"


def test_python_warnings_of_a_command_go_through_logging(monkeypatch, capsys):
    """After ``main`` sets up logging, a Python warning (torch's loader-worker warning, say) is a log record, which
    a progress bar prints above itself; before, it was written to standard error directly, glued to the bar."""
    import logging
    import warnings

    monkeypatch.setattr(logging, "_warnings_showwarning", None)  # undone by captureWarnings(False) below
    try:
        assert main(["presets"]) == 0
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            records = []
            handler = logging.Handler()
            handler.emit = records.append
            logging.getLogger("py.warnings").addHandler(handler)
            try:
                warnings.warn("a loader warning", UserWarning, stacklevel=1)
            finally:
                logging.getLogger("py.warnings").removeHandler(handler)
        assert len(records) == 1 and "a loader warning" in records[0].getMessage()
    finally:
        logging.captureWarnings(False)


def test_steps_per_s_leaves_out_evaluation_and_checkpoints(monkeypatch, tiny_overrides, tmp_path, single_thread):
    """Each logged speed is of training steps only: a slow evaluation (1 s here) in a window of 2 fast steps would
    otherwise show as under 2 steps/s. Also for the models over codes (a prior here)."""
    import time as time_mod

    import daps.prior.run
    import daps.train
    from daps.plots import read_metrics

    real_eval = daps.train._evaluate
    monkeypatch.setattr(daps.train, "_evaluate", lambda s, fid=None: (time_mod.sleep(1.0), real_eval(s, fid))[1])
    run = tmp_path / "run"
    assert main(["train", *tiny_overrides, "train.log_every=2", "train.eval_every=2", f"train.out_dir={run}"]) == 0
    speeds = [r["steps_per_s"] for r in read_metrics(run / "metrics.jsonl") if r["split"] == "train"]
    assert len(speeds) == 4 and min(speeds[1:]) > 4, speeds  # rows at steps 2, 3 (a checkpoint), 4 and 6

    from daps.codes import export_codes, save_codes

    save_codes(export_codes(run, "train", samples_per_input=1), tmp_path / "codes.safetensors")
    real_prior_eval = daps.prior.run.evaluate_prior
    monkeypatch.setattr(daps.prior.run, "evaluate_prior",
                        lambda *a, **k: (time_mod.sleep(1.0), real_prior_eval(*a, **k))[1])
    prior = tmp_path / "prior"
    assert main(["prior", "train", str(tmp_path / "codes.safetensors"), "--out", str(prior), "steps=6", "width=16",
                 "num_heads=2", "log_every=2", "eval_every=2", "progress=false"]) == 0
    speeds = [r["steps_per_s"] for r in read_metrics(prior / "metrics.jsonl") if r["split"] == "train"]
    assert len(speeds) == 3 and min(speeds[1:]) > 4, speeds


def test_a_folder_of_another_kind_says_what_it_is(trained_run, tmp_path, capsys):
    """Each command that takes a daps folder names the kind it was given and the kind it needs, in one line."""
    for command, says in (
        (["robot", "plan", str(trained_run), "--motion", "walk", "--out", str(tmp_path / "w.mp4")],
         "is a training run (daps train): use daps eval / render / export-codes, not a robot policy"),
        (["robot", "eval", str(trained_run)], "not a robot policy (daps robot train)"),
        (["prior", "sample", str(trained_run), "--out", str(tmp_path / "g.png")], "not a prior (daps prior train)"),
        (["prior", "eval", str(trained_run)], "not a prior (daps prior train)"),
        (["robot", "track-eval", str(trained_run)], "not a tracker (daps robot track-train)"),
        (["prior", "train", str(trained_run), "--out", str(tmp_path / "p")], "is a folder, not a codes file"),
    ):
        assert main(command) == 2, command
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and says in err and "KeyError" not in err, err
    assert not any(tmp_path.iterdir())


def test_a_reader_that_stops_reading_ends_the_command_quietly():
    """``daps presets | head -c 0``: standard output's reader has gone before anything is written; the command
    stops with the shell's code for it (141) and no error line, as shell tools do."""
    import subprocess

    proc = subprocess.Popen([sys.executable, "-m", "daps", "presets"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the command writes (it takes a second to start)
    err = proc.stderr.read().decode()
    assert proc.wait() == 141 and "Broken pipe" not in err and "error" not in err, err


def test_under_torchrun_only_rank_0_reports_progress(monkeypatch, caplog, capsys):
    """Other ranks log warnings and errors only: their progress lines would repeat rank 0's."""
    import logging

    caplog.set_level(logging.INFO)  # the root logger's level, as the command line's basicConfig sets it
    daps_log = logging.getLogger("daps")
    before = daps_log.level
    try:
        for rank, shown in (("1", False), ("0", True)):
            monkeypatch.setenv("RANK", rank)
            daps_log.setLevel(logging.NOTSET)  # each rank is a process of its own
            caplog.clear()
            main(["presets"])
            daps_log.info("a progress line")
            daps_log.warning("a warning")
            messages = [r.getMessage() for r in caplog.records]
            assert ("a progress line" in messages) == shown and "a warning" in messages
    finally:
        daps_log.setLevel(before)
    capsys.readouterr()


def test_options_are_taken_only_as_written_in_full(tmp_path, capsys):
    """argparse's default prefix matching ran ``daps train --over`` as ``--overwrite`` (which may replace a run
    folder); every daps command, subcommands included, now refuses an abbreviation in one line."""
    for argv, flag in ((["train", "--over", f"train.out_dir={tmp_path / 'run'}"], "--over"),
                       (["eval", str(tmp_path), "--js"], "--js"),
                       (["prior", "sample", str(tmp_path), "--out", str(tmp_path / "a.png"), "--overw"], "--overw"),
                       (["robot", "eval", str(tmp_path), "--out", str(tmp_path / "r"), "--overwr"], "--overwr")):
        with pytest.raises(SystemExit) as exit:
            main(argv)
        assert exit.value.code == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"unrecognized arguments: {flag}" in err, err
    assert not (tmp_path / "run").exists()


def test_a_flag_whose_value_starts_with_a_minus_is_told_how_to_write_it(capsys):
    """argparse reads ``--seed -3x`` as two options and says only "expected one argument"; every flag's refusal
    now says to join such a value to its flag (robot plan's ``--velocity=-0.5,0,0`` is one case)."""
    with pytest.raises(SystemExit):
        main(["eval", "RUN", "--max-images", "-x5"])
    err = capsys.readouterr().err
    assert "argument --max-images: expected one argument; a value that starts with '-' is joined to its flag: " \
           "--max-images=-..." in err, err
    with pytest.raises(SystemExit):  # a value left out: no hint about minus signs
        main(["eval", "RUN", "--max-images"])
    err = capsys.readouterr().err
    assert "argument --max-images: expected one argument (see daps --help)" in err, err
