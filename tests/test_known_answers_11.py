"""Known answers for behaviour that an eleventh mutation sweep (runfolder, config, config_io, hub, loggers, compare,
cli) found no test guarding: what counts as a run of an earlier daps, links in and to output folders, the atomic
writer's fsync and tilde refusal, settings that cannot work, config layouts, pretrained folders' statistics, the
card's command, TensorBoard flushing, W&B ids, compare's reuse rule and speed column, unknown flags. Each test names
the slip it fails on (checked against the mutant)."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest

import daps
from daps.cli import main
from daps.compare import _steps_per_s, check_runs, plan_runs
from daps.config_io import config_from_dict, config_to_dict, parse_overrides
from daps.presets import get_preset

pytestmark = pytest.mark.usefixtures("offline")


def _snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else b"<dir>")
            for p in sorted(folder.rglob("*"))}


def test_another_tools_run_folder_is_not_a_run_of_an_earlier_daps(tmp_path, capsys, tiny_overrides):
    """Another trainer's folder: its own ``config.json`` (not daps's), ``metrics.jsonl`` and ``checkpoints/``, all
    names a daps run writes. ``--overwrite`` refuses it and touches nothing. Fails when the legacy-run test stops
    requiring the daps keys (method, train, data) in config.json."""
    folder = tmp_path / "hf_run"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "epoch_3.bin").write_bytes(b"weights of three days")
    (folder / "config.json").write_text('{"model_type": "bert", "hidden_size": 768}\n')
    (folder / "metrics.jsonl").write_text('{"epoch": 3, "loss": 0.1}\n')
    before = _snapshot(folder)
    assert main(["train", *tiny_overrides, f"train.out_dir={folder}", "--overwrite"]) == 2
    assert "not a daps train folder" in capsys.readouterr().err
    assert _snapshot(folder) == before


def test_atomic_path_refuses_a_literal_tilde_itself(tmp_path, monkeypatch):
    """The last line of defence behind every writer: ``atomic_path("~/x")`` refuses, whatever the caller checked.
    Fails when ``atomic_path`` stops calling ``refuse_tilde`` (it would make a folder called ``~`` here)."""
    from daps.runfolder import OutputFolderError, atomic_path, write_text_atomic

    monkeypatch.chdir(tmp_path)
    with pytest.raises(OutputFolderError, match="starts with '~'"):
        write_text_atomic("~/notes/x.json", "{}")
    with pytest.raises(OutputFolderError, match="starts with '~'"):
        with atomic_path("~/y.png"):
            pass
    assert not (tmp_path / "~").exists()


def test_atomic_writes_flush_the_new_file_before_renaming_it_over_the_old(tmp_path, monkeypatch):
    """The new content is on disk before it replaces the old (else a crash right after the rename can leave an
    empty file under the old name). Fails when ``atomic_path`` drops the ``fsync`` of the temporary file, or does
    it after ``os.replace``."""
    import daps.runfolder as rf

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.fstat(fd).st_ino))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.stat(src).st_ino))
        return real_replace(src, dst)

    monkeypatch.setattr(rf.os, "fsync", fsync)
    monkeypatch.setattr(rf.os, "replace", replace)
    target = tmp_path / "summary.json"
    target.write_text("old")
    rf.write_json_atomic(target, {"new": 1})
    monkeypatch.undo()
    inode = target.stat().st_ino
    assert ("fsync", inode) in events and ("replace", inode) in events
    assert events.index(("fsync", inode)) < events.index(("replace", inode))
    assert json.loads(target.read_text()) == {"new": 1}


def test_overwrite_unlinks_a_linked_entry_and_keeps_what_it_points_to(copy_run, tmp_path, tiny_overrides, no_plots):
    """A run whose ``tensorboard`` entry is a link to a folder of the user's: ``--overwrite`` removes the link and
    never the folder it points to. Fails when ``_remove`` treats a link to a folder as a folder (``rmtree`` on the
    link: Python refuses it, so ``--overwrite`` of such a run fails; a variant that follows it deletes the user's
    files)."""
    run = copy_run()
    mine = tmp_path / "my_tensorboard"
    mine.mkdir()
    (mine / "events.out").write_bytes(b"months of logs")
    (run / "tensorboard").symlink_to(mine, target_is_directory=True)
    assert main(["train", *tiny_overrides, f"train.out_dir={run}", "--overwrite"]) == 0
    assert (mine / "events.out").read_bytes() == b"months of logs"
    assert not (run / "tensorboard").is_symlink()


def test_a_link_to_a_run_is_not_itself_a_run_folder(copy_run, tmp_path, capsys, tiny_overrides):
    """``is_output_folder`` answers for the folder itself, not for what a link points to: ``--resume`` through a
    link is refused, so that nothing is ever emptied or resumed in a folder reached by a link. Fails when
    ``is_output_folder`` stops refusing links."""
    from daps.runfolder import is_output_folder

    run = copy_run()
    link = tmp_path / "link"
    link.symlink_to(run, target_is_directory=True)
    assert is_output_folder(run, "train") and not is_output_folder(link, "train")
    before = _snapshot(run)
    assert main(["train", *tiny_overrides, f"train.out_dir={link}", "--resume"]) == 2
    assert "is a symbolic link; name the run folder itself" in capsys.readouterr().err
    assert _snapshot(run) == before


def test_gradlab_refuses_a_file_as_out_before_the_draws(tmp_path, monkeypatch, capsys):
    """``gradlab --out FILE``: refused in one line before the minutes of draws. Fails when ``check_replaceable``
    stops refusing an existing non-folder (gradlab's early ``check_out`` relies on it; the later
    ``prepare_output_folder`` refuses only after the work)."""
    import daps.gradlab

    def no_draws(*args, **kwargs):
        raise AssertionError("the draws ran before --out was checked")

    monkeypatch.setattr(daps.gradlab, "run_gradlab", no_draws)
    report = tmp_path / "report.md"
    report.write_text("my report\n")
    assert main(["gradlab", "--out", str(report)]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    assert report.read_text() == "my report\n"


def test_an_unknown_flag_of_train_is_named_as_a_flag(tmp_path, capsys, tiny_overrides):
    """``daps train --bogus``: argparse's "unrecognized arguments: --bogus", not "override '--bogus' is not of the
    form key=value". Fails when the leftovers starting with ``-`` are taken as overrides."""
    with pytest.raises(SystemExit) as exit_:
        main(["train", *tiny_overrides, f"train.out_dir={tmp_path / 'run'}", "--bogus"])
    assert exit_.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()

@pytest.mark.parametrize("preset, items, key", [
    ("mnist", ["data.image_shape=1,28"], "data.image_shape"),  # fails without the length check
    ("mnist", ["decoder.hidden=0,16"], "decoder.hidden"),  # fails without the positive-width check
    ("mnist", ["data.window_stride=0"], "data.window_stride"),  # fails without check_positive(window_stride)
    ("mnist", ["daps.beta.kind=cosine", "daps.beta.end=-1"], "daps.beta"),  # fails without end >= 0
    # fails without the fid_reference check: the run would fail only at its final FID, after all its steps
    ("cifar10", ["train.fid=reference"], "train.fid_reference"),
])
def test_settings_that_cannot_work_are_refused_naming_the_key(preset, items, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        parse_overrides(get_preset(preset), items)


def test_a_config_of_a_later_layout_is_refused_not_migrated():
    """A config.json of a newer daps (``version: 3``) is refused naming the version, not read as version 1 (whose
    migration would silently drop the sections it does not know). Fails without the ``version != 1`` check."""
    data = {**config_to_dict(get_preset("mnist")), "version": 3}
    with pytest.raises(ValueError, match=r"version: this daps reads config layouts 1 to 2, got 3"):
        config_from_dict(data)


def test_an_options_key_in_config_json_is_refused():
    """``options`` is the attribute, not a key of the JSON layout (the method's section is under its own name): a
    file holding it was not written by daps. Fails when it is silently ignored."""
    data = {**config_to_dict(get_preset("mnist")), "options": {"num_samples": 4}}
    with pytest.raises(ValueError, match="unknown config key 'options'"):
        config_from_dict(data)

def _tiny_model(tiny_overrides_for):
    cfg = daps.parse_overrides(daps.get_preset("mnist", "daps"), tiny_overrides_for("daps"))
    return daps.build_method(cfg, tuple(cfg.data.image_shape))


def test_standardization_round_trips_and_overwrite_drops_a_stale_one(tmp_path, tiny_overrides_for):
    """A model with per-feature statistics saves ``standardization.json`` and loads it back; replacing the folder
    (``--overwrite``) with a model without statistics removes the old file, else the new model would load with
    the old model's scale (or not load). Fails when ``save_pretrained`` clears fewer entries than ``FILES`` and
    when ``from_pretrained`` stops reading the statistics."""
    from daps.hub import STANDARDIZATION
    from daps.motion.dataset import Standardizer

    model = _tiny_model(tiny_overrides_for)
    features = model.config.data.image_shape[-1]
    mean = np.linspace(-1.0, 1.0, features)
    model.standardization = Standardizer(mean=mean, scale=np.full(features, 2.0),
                                         near_constant=np.zeros(features, dtype=bool))
    folder = model.save_pretrained(tmp_path / "pretrained")
    assert (folder / STANDARDIZATION).is_file()
    loaded = daps.from_pretrained(folder)
    assert loaded.standardization is not None and np.array_equal(loaded.standardization.mean, mean)
    model.standardization = None
    model.save_pretrained(folder, overwrite=True)
    assert not (folder / STANDARDIZATION).exists()
    assert daps.from_pretrained(folder).standardization is None


def test_export_refuses_its_out_before_it_reads_the_run(tmp_path, capsys):
    """``--out`` is checked before the checkpoint is read, so a refusal costs nothing and names the flag. Fails
    when ``export_run`` drops its early ``check_output_folder`` (the run is read first: the error is then about
    the run, and on a readable run the refusal comes after loading and verifying the checkpoint)."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("x")
    assert main(["export", str(tmp_path / "no_such_run"), "--out", str(mine)]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "not a daps pretrained folder" in err


def test_tensorboard_rows_reach_the_disk_before_the_run_ends(tmp_path):
    """Each row is flushed, so a run killed (SIGKILL: no ``close``) has its logged rows in its event files.
    Fails when the logger stops flushing after a row (the writer's own flush comes every 2 minutes)."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from daps.loggers import TensorBoardLogger

    logger = TensorBoardLogger(tmp_path, {"method": "daps"})
    try:
        logger.row({"split": "train", "step": 2, "loss": 1.5})
        events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0})
        events.Reload()
        assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(2, 1.5)]
    finally:
        logger.close()


def test_the_cards_command_leaves_out_settings_the_run_does_not_read():
    """A config holding a setting its method does not read (``parse_overrides`` takes it, e.g. from ``compare``'s
    shared overrides or Python): the card's ``daps train`` command leaves it out, since ``daps train`` would refuse
    it. Fails when ``training_command`` stops ignoring :func:`ignored_settings`."""
    import shlex

    from daps.config_io import refuse_ignored
    from daps.hub import training_command

    cfg = daps.parse_overrides(daps.get_preset("mnist", "daps"), ["decoder.fsq_ratio=3", "train.steps=100"])
    words = shlex.split(training_command(cfg))
    assert "train.steps=100" in words and not any(w.startswith("decoder.fsq_ratio") for w in words)
    overrides = [w for w in words if "=" in w]
    refuse_ignored(daps.parse_overrides(daps.get_preset("mnist", "daps"), overrides), overrides)


@pytest.mark.parametrize("kept", ["bad id!", "a" * 65])
def test_a_damaged_wandb_id_is_replaced_by_the_one_derived_from_the_folder(tmp_path, kept):
    """A ``daps_run_id`` W&B would refuse (not letters, digits and '-', or over 64 characters) is not passed on:
    the id is derived again (as for a run logged before ids were kept) and written back. Fails when any
    non-empty id is taken as it is."""
    from daps.loggers import WANDB_ID_FILE, wandb_run_id

    run = tmp_path / "run"
    (run / "wandb").mkdir(parents=True)
    (run / "wandb" / WANDB_ID_FILE).write_text(kept + "\n")
    assert wandb_run_id(run) == "daps-run"
    assert (run / "wandb" / WANDB_ID_FILE).read_text() == "daps-run\n"

@pytest.mark.parametrize("key, value", [("train.batch_size", 8), ("optim.lr", 1e-3), ("train.log_every", 3)])
def test_a_finished_run_that_differs_in_a_setting_that_changes_its_numbers_is_refused(tmp_path, key, value):
    """A finished run whose config differs from the planned one only in a setting that changes its results (the
    batch, the learning rate, the logging windows the eta / ESS columns average) is refused, never reused. Fails
    when such a key joins ``NOT_COMPARED``."""
    from daps.checkpoint import write_config
    from daps.runfolder import OutputFolderError, write_marker

    (run,) = plan_runs("mnist", ["daps"], 10, [0], tmp_path, [])
    saved = copy.deepcopy(run.cfg)
    section, name = key.split(".")
    setattr(getattr(saved, section), name, value)
    run.out_dir.mkdir(parents=True)
    write_marker(run.out_dir, "train")
    write_config(run.out_dir / "config.json", saved)
    (run.out_dir / "summary.json").write_text(json.dumps({"step": 10}))
    with pytest.raises(OutputFolderError, match=key.replace(".", r"\.")):
        check_runs([run])


def test_the_speed_column_leaves_out_the_first_window(tmp_path):
    """The first logged window holds the warm-up (compilation, caches): the speed is the median of the others
    (1 | 10, 12, 14 -> 12, not 11). Fails when the first window is kept."""
    (run,) = plan_runs("mnist", ["daps"], 10, [0], tmp_path, [])
    run.__dict__["metrics"] = [{"split": "train", "step": s, "steps_per_s": v}
                               for s, v in ((2, 1.0), (4, 10.0), (6, 12.0), (8, 14.0))]
    run.__dict__["metrics"].append({"split": "val", "step": 8, "steps_per_s": 1000.0})  # not a training row
    assert _steps_per_s(run) == 12.0
