"""Tests for checkpoints: file formats, load_model, pruning, crash safety and exact resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file

import daps
from daps import get_preset, parse_overrides
from daps.checkpoint import CKPT_DIR, resolve_checkpoint, save_checkpoint
from daps.cli import main
from daps.config_io import config_from_dict, config_to_dict
from daps.data import load_dataset
from daps.methods import build_method
from daps.plots import read_metrics

pytestmark = pytest.mark.usefixtures("offline")

T, V = 4, 16  # tiny config


def ckpt_dir(run: Path, step: int) -> Path:
    return run / CKPT_DIR / f"step_{step:08d}"


def weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt_dir(run, step) / "model.safetensors"))


def train_state(run: Path, step: int) -> dict:
    return torch.load(ckpt_dir(run, step) / "state.pt", weights_only=True)


def assert_same(a, b, where: str = "") -> None:
    """Exact, recursive equality of nested dicts / lists / tensors / numbers."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"tensors differ at {where}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"keys differ at {where}"
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def expected_config(tiny_overrides, out_dir: Path, *extra: str):
    return parse_overrides(get_preset("mnist"), [*tiny_overrides, *extra, f"train.out_dir={out_dir}"])


def train(tiny_overrides, out_dir: Path, *extra: str) -> None:
    """``daps train`` in-process; ``--flags`` in ``extra`` go first (argparse does not take them between
    the ``key=value`` positionals)."""
    flags = [e for e in extra if e.startswith("--")]
    overrides = [e for e in extra if not e.startswith("--")]
    assert main(["train", *flags, *tiny_overrides, *overrides, f"train.out_dir={out_dir}"]) == 0


# --------------------------------------------------------------------------------------------------
# file formats


@pytest.mark.parametrize("step", [3, 6])
def test_checkpoint_files_load_without_pickle(trained_run, tiny_overrides, step):
    ckpt = ckpt_dir(trained_run, step)
    tensors = load_file(str(ckpt / "model.safetensors"))
    cfg = expected_config(tiny_overrides, trained_run)
    reference = build_method(cfg, tuple(cfg.data.image_shape)).state_dict()
    assert tensors.keys() == reference.keys()
    for k, v in reference.items():
        assert tensors[k].shape == v.shape and tensors[k].dtype == v.dtype, k
        assert torch.isfinite(tensors[k]).all(), k
    with safe_open(str(ckpt / "model.safetensors"), framework="pt") as f:
        assert f.metadata()["step"] == str(step)

    state = torch.load(ckpt / "state.pt", weights_only=True)
    assert state["step"] == step
    assert set(state["optimizers"]["optimizers"]) == {"vae", "eta"}
    for opt in state["optimizers"]["optimizers"].values():
        assert opt["state"], "AdamW moments were saved"
        for s in opt["state"].values():
            assert float(s["step"]) == step
    assert state["optimizers"]["skipped"] == {"vae": 0, "eta": 0}
    assert len(state["rng"]) == 1  # one entry per process
    assert set(state["rng"][0]) == {"data", "sample"}
    assert all(isinstance(g, torch.Tensor) and g.dtype == torch.uint8 for g in state["rng"][0].values())


def test_config_json_round_trips(trained_run, tiny_overrides):
    expected = expected_config(tiny_overrides, trained_run)
    for path in [trained_run / "config.json", ckpt_dir(trained_run, 3) / "config.json",
                 ckpt_dir(trained_run, 6) / "config.json"]:
        data = json.loads(path.read_text())
        cfg = config_from_dict(data)
        assert cfg == expected, path
        assert json.loads(json.dumps(config_to_dict(cfg))) == data


def test_latest_points_to_a_complete_checkpoint(trained_run):
    root = trained_run / CKPT_DIR
    name = (root / "latest").read_text().strip()
    steps = sorted(p.name for p in root.glob("step_*"))
    assert name == steps[-1] == "step_00000006"
    assert {p.name for p in (root / name).iterdir()} == {
        "model.safetensors",
        "config.json",
        "state.pt",
        "checksums.json",
    }
    assert resolve_checkpoint(trained_run) == root / name
    assert not list(root.glob(".*")), "no temp files or folders are left behind"


def test_a_file_given_for_a_run_is_named_as_one(trained_run, capsys):
    """``daps eval RUN/config.json`` says the argument is a file, not that RUN/config.json/checkpoints/latest is
    'not a directory'."""
    for given in (trained_run / "config.json", trained_run / CKPT_DIR / "latest"):
        assert main(["eval", str(given), "--json"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.endswith(f"{given} is a file; give a run folder or one of its checkpoint folders "
                            f"({CKPT_DIR}/step_N)"), err
    weights = trained_run / CKPT_DIR / "step_00000006" / "model.safetensors"
    assert resolve_checkpoint(weights) == weights.parent  # the one file that names a checkpoint


def test_a_missing_run_and_one_stopped_before_its_first_checkpoint_are_told_apart(copy_run, tmp_path, capsys):
    """Both said "no checkpoint found at RUN (expected a run folder with checkpoints/latest)": a mistyped path is
    named as missing, and a run killed before its first checkpoint as one to finish with --resume; a folder holding
    neither a run nor a pretrained model (empty, or weights without their config) names both, as the command takes
    either."""
    stopped = copy_run("stopped")
    shutil.rmtree(stopped / CKPT_DIR)  # a run killed before its first checkpoint: config.json, metrics, marker
    mine, comparison = tmp_path / "mine", tmp_path / "comparison"
    mine.mkdir()
    comparison.mkdir()
    from daps.runfolder import write_marker

    write_marker(comparison, "compare")  # a folder of daps's that never holds checkpoints: not "no checkpoint yet"
    partial = tmp_path / "partial"  # a pretrained folder's download cut short: its weights, no config.json
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"")
    for run, message in ((tmp_path / "typo", f"{tmp_path / 'typo'} does not exist; give a run folder"),
                         (stopped, f"{stopped} has no checkpoint yet: its run stopped (or is still training) before "
                                   "its first one; finish it with --resume"),
                         *((folder, f"no model found at {folder} (expected a run folder with {CKPT_DIR}/latest, or "
                                    "a pretrained folder with config.json and model.safetensors)")
                           for folder in (mine, partial)),
                         (comparison, f"{comparison} is a daps compare folder, not a run with checkpoints; its runs "
                                      "are its METHOD/seedN folders")):
        assert main(["export-codes", str(run), "--out", str(tmp_path / "c.safetensors")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "c.safetensors").exists()


# --------------------------------------------------------------------------------------------------
# load_model


def test_load_model_is_ready_for_encode_decode(trained_run, tiny_overrides, data_dir):
    model = daps.load_model(trained_run)
    assert not model.training and not any(m.training for m in model.modules())
    assert model.config == expected_config(tiny_overrides, trained_run)
    assert_same(dict(model.state_dict()), weights(trained_run, 6))

    x = load_dataset("mnist5k", "test", data_dir).images[:5]
    with torch.no_grad():
        z = model.encode(x, torch.Generator().manual_seed(0))
        z2 = model.encode(x, torch.Generator().manual_seed(0))
        x_hat = model.decode(z)
    assert z.shape == (5, T) and not z.dtype.is_floating_point and z.dtype != torch.bool
    assert int(z.min()) >= 0 and int(z.max()) < V
    assert torch.equal(z, z2)
    assert x_hat.shape == (5, 1, 28, 28) and x_hat.dtype == torch.float32
    assert float(x_hat.min()) >= 0.0 and float(x_hat.max()) <= 1.0


def test_load_model_accepts_run_checkpoint_and_file(trained_run):
    ref = weights(trained_run, 6)
    for path in [trained_run, ckpt_dir(trained_run, 6), ckpt_dir(trained_run, 6) / "model.safetensors",
                 str(trained_run)]:
        assert_same(dict(daps.load_model(path).state_dict()), ref, str(path))
    older = daps.load_model(ckpt_dir(trained_run, 3), device="cpu")
    assert_same(dict(older.state_dict()), weights(trained_run, 3))
    assert any(not torch.equal(v, ref[k]) for k, v in older.state_dict().items())


def test_load_model_without_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="no checkpoint"):  # CheckpointError, a ValueError: the CLI's exit 2
        daps.load_model(tmp_path)


def test_leftover_temp_folder_does_not_break_load_model(copy_run):
    run = copy_run()
    root = run / CKPT_DIR
    # a crash while writing step 9: a half-written temp folder and a temp 'latest'
    tmp = root / ".step_00000009.tmp-123"
    tmp.mkdir()
    (tmp / "model.safetensors").write_bytes((ckpt_dir(run, 6) / "model.safetensors").read_bytes()[:100])
    (root / ".latest.tmp-123").write_text("step_000")
    model = daps.load_model(run)
    assert_same(dict(model.state_dict()), weights(run, 6))


# --------------------------------------------------------------------------------------------------
# pruning


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)


def test_keep_checkpoints_prunes_old_ones(tmp_path):
    cfg, model = get_preset("mnist"), Tiny()
    root = tmp_path / "run" / CKPT_DIR
    for step in (10, 20, 30, 40):
        with torch.no_grad():
            model.lin.weight.fill_(step)
        final = save_checkpoint(tmp_path / "run", step, model, cfg, {"step": step}, keep=2)
        assert final == root / f"step_{step:08d}"
        assert (root / "latest").read_text().strip() == final.name
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000030", "step_00000040"]
    assert float(load_file(str(root / "step_00000040" / "model.safetensors"))["lin.weight"][0, 0]) == 40
    assert torch.load(root / "step_00000030" / "state.pt", weights_only=True) == {"step": 30}


def test_keep_zero_still_keeps_the_newest(tmp_path):
    cfg, model = get_preset("mnist"), Tiny()
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model, cfg, {"step": step}, keep=0)
    root = tmp_path / CKPT_DIR
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000003"]


def test_saving_a_step_again_replaces_it(tmp_path):
    cfg, model = get_preset("mnist"), Tiny()
    save_checkpoint(tmp_path, 5, model, cfg, {"step": 5}, keep=3)
    with torch.no_grad():
        model.lin.weight.fill_(7.0)
    save_checkpoint(tmp_path, 5, model, cfg, {"step": 5, "again": 1}, keep=3)
    root = tmp_path / CKPT_DIR
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000005"]
    assert float(load_file(str(root / "step_00000005" / "model.safetensors"))["lin.weight"][0, 0]) == 7.0
    assert torch.load(root / "step_00000005" / "state.pt", weights_only=True)["again"] == 1


# --------------------------------------------------------------------------------------------------
# resume


def test_resume_after_a_crash_is_exact(tmp_path, tiny_overrides, trained_run, no_plots):
    """Train 6 steps; pretend the process died while writing step 6 (latest still names step 3, a half
    temp folder is left); --resume must end with exactly the weights and optimizer state of the
    uninterrupted run (and of the session's reference run: training is deterministic)."""
    run = tmp_path / "run"
    train(tiny_overrides, run)
    assert_same(weights(run, 6), weights(trained_run, 6))  # same config and seed -> same bits
    assert_same(train_state(run, 6), train_state(trained_run, 6))

    root = run / CKPT_DIR
    partial = (ckpt_dir(run, 6) / "model.safetensors").read_bytes()[:200]
    shutil.rmtree(ckpt_dir(run, 6))
    (run / "summary.json").unlink()
    (root / "latest").write_text("step_00000003\n")
    tmp = root / ".step_00000006.tmp-4242"
    tmp.mkdir()
    (tmp / "model.safetensors").write_bytes(partial)

    train(tiny_overrides, run, "--resume")
    assert (root / "latest").read_text().strip() == "step_00000006"
    assert_same(weights(run, 6), weights(trained_run, 6))
    assert_same(train_state(run, 6), train_state(trained_run, 6))
    summary = json.loads((run / "summary.json").read_text())
    assert summary == json.loads((trained_run / "summary.json").read_text())
    assert_same(dict(daps.load_model(run).state_dict()), weights(trained_run, 6))
    # Rows logged after the step-3 checkpoint were dropped and logged again: no step appears twice.
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    keys = [(r["split"], r["step"]) for r in rows]
    assert len(keys) == len(set(keys)) and ("train", 6) in keys and ("val", 6) in keys

    # resuming a finished run trains nothing and changes nothing
    train(tiny_overrides, run, "--resume")
    assert_same(weights(run, 6), weights(trained_run, 6))
    assert_same(train_state(run, 6), train_state(trained_run, 6))


def test_resume_to_more_steps_with_constant_beta_is_exact(tmp_path, tiny_overrides, no_plots):
    """3 steps, then --resume with train.steps=6 == 6 steps in one go, when nothing depends on the length."""
    const = "daps.beta.kind=constant"
    train(tiny_overrides, tmp_path / "full", const)
    train(tiny_overrides, tmp_path / "split", const, "train.steps=3")
    assert not ckpt_dir(tmp_path / "split", 6).exists()
    train(tiny_overrides, tmp_path / "split", const, "train.steps=6", "--resume")
    assert_same(weights(tmp_path / "split", 6), weights(tmp_path / "full", 6))
    assert_same(train_state(tmp_path / "split", 6), train_state(tmp_path / "full", 6))
    cfg = json.loads((tmp_path / "split" / "config.json").read_text())
    assert cfg["train"]["steps"] == 6


def test_stop_after_then_resume_is_exact(tmp_path, tiny_overrides, trained_run, no_plots, capsys, caplog):
    """N/2 steps (train.stop_after), then --resume to N == N steps in one go, with the default
    (exp_decay, length-dependent) beta schedule."""
    run = tmp_path / "run"
    with caplog.at_level("INFO", logger="daps"):
        train(tiny_overrides, run, "train.stop_after=3")
    assert "validation on" in capsys.readouterr().out  # the summary; where it stopped is logged, once
    assert caplog.text.count("stopped at step 3 of 6 (train.stop_after=3, a step of the run, not a count per job): "
                             "--resume with a larger train.stop_after") == 1
    assert "trained no step" not in caplog.text
    assert not (run / "summary.json").exists()  # its presence means a complete run
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl") if r["split"] == "val"][-1] == 3
    assert not ckpt_dir(run, 6).exists()
    # The same command again (a job script repeating it): nothing to train, and it says why instead of only
    # "continue with --resume" (train.stop_after is a step of the run, not a count per job).
    caplog.clear()
    with caplog.at_level("INFO", logger="daps"):
        train(tiny_overrides, run, "train.stop_after=3", "--resume")
    assert "this job trained no step: the run was already at step 3, where train.stop_after=3" in caplog.text
    assert "with a larger train.stop_after" in caplog.text
    assert not ckpt_dir(run, 6).exists()
    train(tiny_overrides, run, "--resume")
    assert json.loads((run / "summary.json").read_text())["step"] == 6
    assert_same(weights(run, 6), weights(trained_run, 6))
    assert_same(train_state(run, 6), train_state(trained_run, 6))


def test_resume_a_moved_run_folder(copy_run, trained_run, tiny_overrides, capsys, no_plots):
    """A copied run folder resumes (out_dir may differ) and, run to 8 steps, records its new place."""
    run = copy_run("moved")
    assert main(["train", "--resume", *tiny_overrides, f"train.out_dir={run}"]) == 0, capsys.readouterr().err
    assert_same(weights(run, 6), weights(trained_run, 6))  # a finished run: nothing more to train
    assert main(["train", "--resume", *tiny_overrides, "train.steps=8", f"train.out_dir={run}"]) == 0
    assert json.loads((run / "config.json").read_text())["train"]["out_dir"] == str(run)
    assert json.loads((run / "summary.json").read_text())["step"] == 8


def test_resume_names_every_setting_it_changes(copy_run, tiny_overrides, caplog, no_plots):
    """A resume may change the settings of ``RESUMABLE_CHANGES`` (how often to log, evaluate, checkpoint...), and a
    command that does not repeat the run's own values takes the preset's: each change is named in one warning, so
    a run's history does not mix them unseen; the same command with nothing changed warns of nothing."""
    from daps.train import RESUMABLE_CHANGES

    run = copy_run("changed")
    assert "train.eval_examples" in RESUMABLE_CHANGES and "train.ckpt_every" in RESUMABLE_CHANGES
    with caplog.at_level("WARNING", logger="daps"):
        assert main(["train", "--resume", *tiny_overrides, f"train.out_dir={run}"]) == 0
    assert "resuming with settings changed" not in caplog.text
    caplog.clear()
    saved = json.loads((run / "config.json").read_text())["train"]
    with caplog.at_level("WARNING", logger="daps"):
        assert main(["train", "--resume", *tiny_overrides, "train.steps=8", f"train.out_dir={run}",
                     f"train.eval_examples={saved['eval_examples'] + 1}",
                     f"train.ckpt_every={saved['ckpt_every'] + 1}"]) == 0
    (line,) = [r.getMessage() for r in caplog.records if "resuming with settings changed" in r.getMessage()]
    assert f"train.eval_examples: {saved['eval_examples']} -> {saved['eval_examples'] + 1}" in line, line
    assert f"train.ckpt_every: {saved['ckpt_every']} -> {saved['ckpt_every'] + 1}" in line, line
    assert "train.steps" not in line  # its own warning says what it re-times


def test_resume_past_the_end_is_refused(copy_run, tiny_overrides, capsys, caplog):
    run = copy_run("past")
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    with caplog.at_level("WARNING", logger="daps"):
        assert main(["train", "--resume", *tiny_overrides, "train.steps=4", f"train.out_dir={run}"]) == 2
    assert "step 6" in capsys.readouterr().err
    assert "train.steps changed" not in caplog.text  # a refusal is one line: no warning about the change first
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before


def test_resume_skips_a_line_cut_off_by_a_crash(copy_run, tiny_overrides, trained_run, no_plots):
    run = copy_run("cut")
    shutil.rmtree(ckpt_dir(run, 6))
    (run / "checkpoints" / "latest").write_text("step_00000003\n")
    (run / "summary.json").unlink()
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"split": "train", "step": 7, "log_p": -1')  # no closing brace, no newline
    assert main(["train", "--resume", *tiny_overrides, f"train.out_dir={run}"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == [2, 3, 4, 6]  # log_every=2, and each checkpoint
    assert_same(weights(run, 6), weights(trained_run, 6))


def test_rewriting_a_step_never_leaves_latest_naming_a_missing_folder(tmp_path, monkeypatch):
    """A run resumed from an earlier checkpoint writes its steps again; killed between moving the old copy of a step
    aside and renaming the new one in, ``latest`` must still name a checkpoint that exists."""
    import os

    import daps.checkpoint as ckpt_mod
    from daps.checkpoint import find_resumable

    model = nn.Linear(2, 1)
    for step in (3, 6, 9):
        save_checkpoint(tmp_path, step, model, {"prior": {}}, {"step": step}, keep=5)
    real_replace = os.replace

    def killed_when_publishing(src, dst):
        if ".tmp-" in str(src) and str(dst).endswith("step_00000009"):
            raise KeyboardInterrupt  # the moment between the two renames
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt_mod.os, "replace", killed_when_publishing)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 9, model, {"prior": {}}, {"step": 9}, keep=5)
    latest = (tmp_path / CKPT_DIR / "latest").read_text().strip()
    assert latest == "step_00000006"  # the newest other one, which exists
    assert find_resumable(tmp_path) == tmp_path / CKPT_DIR / "step_00000006"


def test_each_damaged_copy_of_a_step_is_kept_under_its_own_name(tmp_path):
    model = nn.Linear(2, 1)
    for round_ in (1, 2, 3):
        ckpt = save_checkpoint(tmp_path, 6, model, {"prior": {}}, {"step": 6}, keep=5)
        if round_ < 3:
            (ckpt / "state.pt").write_bytes(b"damaged")  # as a disk error would, then resumed past it again
    kept = sorted(p.name for p in (tmp_path / CKPT_DIR).iterdir() if p.name.startswith("damaged_"))
    assert kept == ["damaged_step_00000006", "damaged_step_00000006-2"]
    assert all((tmp_path / CKPT_DIR / name / "state.pt").read_bytes() == b"damaged" for name in kept)


def test_weights_that_do_not_fit_their_config_are_refused_naming_the_tensors(trained_run, tmp_path, capsys):
    """A model.safetensors that does not fit its config.json: the one-line error names what differs (torch's own
    message would be cut to its header, "Error(s) in loading state_dict for DAPS:")."""
    from safetensors.torch import save_file

    from daps.checkpoint import CheckpointError

    assert main(["export", str(trained_run), "--out", str(tmp_path / "base")]) == 0
    capsys.readouterr()

    def folder(name: str, config=None, tensors=None) -> Path:
        dest = tmp_path / name
        shutil.copytree(tmp_path / "base", dest)
        if config is not None:
            cfg = json.loads((dest / "config.json").read_text())
            config(cfg)
            (dest / "config.json").write_text(json.dumps(cfg))
        if tensors is not None:
            weights = load_file(str(dest / "model.safetensors"))
            tensors(weights)
            save_file(weights, str(dest / "model.safetensors"))
        return dest

    def error(path: Path) -> str:
        with pytest.raises(CheckpointError, match="does not fit the model of its config.json") as caught:
            daps.from_pretrained(path)
        return str(caught.value)

    vocab = json.loads((tmp_path / "base" / "config.json").read_text())["encoder"]["vocab_size"]
    wider = folder("wider", config=lambda c: c["encoder"].update(vocab_size=vocab * 2))
    assert "shape of encoder.token_embed.weight" in error(wider) and f"({vocab}, " in error(wider)
    extra = folder("extra", tensors=lambda w: w.update(stray=torch.zeros(3)))
    assert error(extra).endswith("(not in the model: stray)")
    names = sorted(load_file(str(tmp_path / "base" / "model.safetensors")))
    fewer = folder("fewer", tensors=lambda w: [w.pop(k) for k in names[:5]])
    listed = error(fewer).split("(missing from the file: ")[1]
    assert listed.endswith(" and 2 more)") and set(listed[: -len(" and 2 more)")].split(", ")) < set(names[:5])


def test_library_calls_name_a_device_they_cannot_use_and_a_file_given_for_a_folder(trained_run, tmp_path,
                                                                                    tiny_overrides, monkeypatch):
    """``load_model``, ``from_pretrained`` and ``train`` refuse an unusable device with one UserError naming it
    before any work (torch's own errors were "Torch not compiled with CUDA enabled" and "Cannot get CUDA
    generator"); ``from_pretrained`` takes a folder's config.json or model.safetensors for the folder and refuses
    another file instead of asking the Hub for it."""
    from daps.errors import UserError
    from daps.train import train

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = parse_overrides(get_preset("mnist"), [*tiny_overrides, f"train.out_dir={tmp_path / 'never'}"])
    for call in (lambda d: daps.load_model(trained_run, device=d),
                 lambda d: daps.from_pretrained(trained_run, device=d),
                 lambda d: train(cfg, device=d)):
        with pytest.raises(UserError, match="^device cuda: CUDA is not available on this machine$"):
            call("cuda")
        with pytest.raises(UserError, match="^device 'tpu' is not a device"):
            call("tpu")
        with pytest.raises(UserError, match="^device meta: only cpu and cuda are supported$"):
            call("meta")
    assert not (tmp_path / "never").exists()
    from daps.dist import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # one GPU: cuda:1 is named before any work
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UserError, match="^device cuda:1: this machine has 1 CUDA device\\(s\\), numbered from 0$"):
        resolve_device("cuda:1")
    assert resolve_device("cuda:0") == torch.device("cuda:0") and resolve_device(torch.device("cpu")).type == "cpu"
    assert main(["export", str(trained_run), "--out", str(tmp_path / "export")]) == 0
    ref = weights(trained_run, 6)
    for inside in (tmp_path / "export" / "config.json", ckpt_dir(trained_run, 6) / "config.json"):
        assert_same(dict(daps.from_pretrained(inside).state_dict()), ref, str(inside))
    with pytest.raises(UserError, match="README.md is a file; give the folder holding config.json") as caught:
        daps.from_pretrained(tmp_path / "export" / "README.md")
    assert "Hub" not in str(caught.value)


def test_an_exported_folder_notices_weights_changed_after_it_was_written(trained_run, tmp_path, capsys):
    """A pretrained folder's safetensors header records a SHA-256 of its tensors: one flipped byte of a weight, or
    weights replaced by NaN, is refused on loading (a run's checkpoints have their checksums.json; an export had
    nothing and decoded NaN). A folder written before the digest existed still loads, unless a weight is
    non-finite."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from daps.checkpoint import WEIGHTS_DIGEST, CheckpointError, weights_digest

    base = tmp_path / "base"
    assert main(["export", str(trained_run), "--out", str(base)]) == 0
    capsys.readouterr()
    tensors = load_file(str(base / "model.safetensors"))
    with safe_open(str(base / "model.safetensors"), "pt") as f:
        header = f.metadata()
    assert header[WEIGHTS_DIGEST] == weights_digest(tensors) == weights_digest(dict(reversed(tensors.items())))
    assert_same(dict(daps.from_pretrained(base).state_dict()), weights(trained_run, 6), "export")

    flipped = tmp_path / "flipped"
    shutil.copytree(base, flipped)
    raw = bytearray((flipped / "model.safetensors").read_bytes())
    raw[-3] ^= 0x10  # a bit of the last weight's data
    (flipped / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="was changed or damaged after it was written"):
        daps.from_pretrained(flipped)

    name = sorted(k for k, v in tensors.items() if v.is_floating_point())[0]
    for folder_name, meta in (("nan", header), ("legacy-nan", {"format": "pt"}), ("legacy", {"format": "pt"})):
        folder = tmp_path / folder_name
        shutil.copytree(base, folder)
        changed = dict(tensors)
        if "nan" in folder_name:
            changed[name] = torch.full_like(tensors[name], float("nan"))
        save_file(changed, str(folder / "model.safetensors"), metadata=meta)
        if folder_name == "nan":
            with pytest.raises(CheckpointError, match="was changed or damaged after it was written"):
                daps.from_pretrained(folder)
        elif folder_name == "legacy-nan":
            with pytest.raises(CheckpointError, match=f"holds non-finite values \\(in {name}\\)"):
                daps.from_pretrained(folder)
        else:
            assert_same(dict(daps.from_pretrained(folder).state_dict()), weights(trained_run, 6), "legacy")
