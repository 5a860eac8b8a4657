"""Known answers for behaviour that a mutation sweep of the file safety, the codes export and the training loop
(daps/runfolder.py, daps/codes.py, daps/train.py) found no test guarding. Each test names the slip it fails on; the
references are hand-worked cases and round trips on tiny folders, files and runs."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch

from daps.errors import UserError

# --------------------------------------------------------------------------- runfolder: atomic files, finished runs


def test_a_file_its_writer_made_private_is_published_with_the_umasks_mode(tmp_path):
    """A writer that creates its file 0600 (safetensors does; ``tempfile`` too) still leaves a file of mode
    ``0o666 & ~umask`` behind ``atomic_path``, as a plain ``open`` would: a codes file or a figure is shared with a
    group on a cluster. Fails on: ``atomic_path`` renaming the temporary into place without ``publish_mode``."""
    from daps.runfolder import UMASK, atomic_path

    target = tmp_path / "codes.bin"
    with atomic_path(target) as tmp:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600))
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~UMASK


def test_a_summary_of_an_earlier_end_does_not_make_a_run_finished(tmp_path):
    """``finished(run, 9, ...)`` asks whether the run wrote its end at step 9. A run that ended at step 6 and was
    then trained on to 9 (``train.steps=12 train.stop_after=9``: no summary at a stop) still holds the summary of
    step 6; shrunk to ``train.steps=9`` and resumed, it must write its end again, not say "nothing to do".
    Known answers: summary step 6 -> not finished at 9, finished at 6; summary step 9 -> finished at 9; a missing
    end file -> not finished. Fails on: the summary's step left out of the test (any readable summary counts)."""
    from daps.runfolder import finished

    (tmp_path / "curves.png").write_bytes(b"png")
    (tmp_path / "summary.json").write_text(json.dumps({"step": 6}))
    assert not finished(tmp_path, 9, ("curves.png",))
    assert finished(tmp_path, 6, ("curves.png",))
    (tmp_path / "summary.json").write_text(json.dumps({"step": 9}))
    assert finished(tmp_path, 9, ("curves.png",))
    assert not finished(tmp_path, 9, ("curves.png", "reconstructions.png"))


def test_a_png_chunk_claiming_more_than_64_mib_is_read_as_damaged(tmp_path):
    """``png_software`` stops at a chunk whose length field claims more than 64 MiB (a damaged file: never read
    into memory), so even a ``Software`` text of daps behind such a length does not make the file daps's.
    Hand-built files ending in a tEXt chunk ``Software\\0daps`` (13 bytes): a length field of 13 -> "daps"; of 2**26
    (cut short, the chunk still holds the text) -> "daps"; of 2**26 + 1 -> None. Fails on: the length bound dropped
    (the 64 MiB + 1 chunk is read and its text believed)."""
    from daps.runfolder import png_software

    def png(length: int) -> Path:  # the file ends with the text: a longer chunk is cut short there
        path = tmp_path / f"{length}.png"
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + length.to_bytes(4, "big") + b"tEXt" + b"Software\x00daps")
        return path

    assert png_software(png(13)) == "daps"
    assert png_software(png(1 << 26)) == "daps"
    assert png_software(png((1 << 26) + 1)) is None


# --------------------------------------------------------------------------- runfolder: what a run's checkpoints are


def _legacy_run(folder: Path, checkpoints: dict[str, str]) -> Path:
    """A training run from before the marker: a daps config.json, metrics.jsonl and ``checkpoints/`` holding the
    given entries (``"dir"`` a folder, ``"file"`` a file)."""
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"method": "daps", "train": {}, "data": {}}))
    (folder / "metrics.jsonl").write_text("")
    for name, kind in checkpoints.items():
        (folder / "checkpoints" / name).mkdir() if kind == "dir" else (folder / "checkpoints" / name).write_text("")
    return folder


@pytest.mark.parametrize(
    "checkpoints, legacy",
    [
        ({"step_00000003": "dir", "latest": "file"}, True),  # what save_checkpoint writes
        ({"step_00000003": "file", "latest": "file"}, False),  # a step that is a file: not daps's
        ({"step_00000003": "dir", "latest": "dir"}, False),  # a folder called latest: not daps's
        ({"step_3": "dir"}, False),  # daps names steps with 8 digits at least
        ({"step_123456789": "dir"}, True),  # ... and more past step 99,999,999
    ],
)
def test_a_checkpoints_folder_is_a_runs_only_when_it_holds_what_checkpointing_writes(tmp_path, checkpoints, legacy):
    """A run from before the marker is replaceable only if its ``checkpoints/`` holds what daps's checkpointing
    writes: ``step_`` + 8 or more digits as folders, ``latest`` as a file. Known answers per case (a user's folder
    that merely holds a daps config and files of other kinds or names is never emptied by ``--overwrite``). Fails on:
    the folder-or-file test of each entry dropped (a file ``step_00000003``, a folder ``latest`` accepted), or the
    step pattern loosened to any digits (``step_3`` accepted)."""
    from daps.runfolder import is_output_folder

    assert is_output_folder(_legacy_run(tmp_path / "run", checkpoints), "train") is legacy


def test_overwrite_keeps_a_checkpoints_entry_that_daps_never_names(tmp_path):
    """Emptying a marked run folder removes from ``checkpoints/`` only the names daps writes there: ``step_00000003``
    and ``latest`` go, the user's ``step_3`` (not 8 digits) stays, and the warning names it. Fails on: the
    checkpoint-name pattern loosened to ``step_\\d+`` (the user's ``step_3`` deleted)."""
    from daps.runfolder import RUN_ENTRIES, clear_folder, write_marker

    run = tmp_path / "run"
    for name in ("step_00000003", "step_3"):
        (run / "checkpoints" / name).mkdir(parents=True)
    (run / "checkpoints" / "latest").write_text("step_00000003\n")
    write_marker(run, "train")
    clear_folder(run, "train", "train.out_dir", RUN_ENTRIES)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_3"]


@pytest.mark.parametrize(
    "config, legacy",
    [
        ({"method": "daps", "train": {}, "data": {}}, True),  # a daps config
        ({"method": "daps", "train": {}}, False),  # lacks data: not one daps wrote
        ({"lr": 0.1}, False),  # another program's config.json
    ],
)
def test_only_a_daps_config_makes_a_folder_a_run_from_before_the_marker(tmp_path, config, legacy):
    """A folder without the marker counts as an old training run only if its ``config.json`` is daps's: a JSON
    object with (at least) the sections ``method``, ``train`` and ``data``. Known answers: a folder holding
    ``config.json`` and ``metrics.jsonl``, with each config. Fails on: any readable JSON object accepted as daps's
    config (another program's run folder, with names daps also uses, emptied by ``--overwrite``)."""
    from daps.runfolder import is_output_folder

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(config))
    (run / "metrics.jsonl").write_text("")
    assert is_output_folder(run, "train") is legacy


def test_removing_the_folders_a_failed_run_made_stops_at_the_first_it_cannot_remove(tmp_path):
    """``remove_empty_folders([a/b, a])`` (innermost first) removes the empty ones and stops at the first it cannot
    remove: with ``a/b`` already gone (someone else took it), ``a`` is left alone, for it is no longer known to be
    only this run's; with ``a/b`` empty, both go. Fails on: going on past a failure (``a`` removed)."""
    from daps.runfolder import remove_empty_folders

    a = tmp_path / "a"
    a.mkdir()
    remove_empty_folders([a / "b", a])
    assert a.is_dir()
    (a / "b").mkdir()
    remove_empty_folders([a / "b", a])
    assert not a.exists()


# --------------------------------------------------------------------------- runfolder: the lock file


def test_a_lock_holds_exactly_its_holders_pid_and_warns_only_of_another_process(tmp_path, caplog):
    """The lock file holds ``"<pid>\\n"`` of its holder, whatever was there before; a pid left by another process
    is reported as taken over, the holder's own pid is not (nobody else ever held it); released, the file is empty.
    Known answers: a stale ``"123456789\\n"`` (longer than any pid) -> ``f"{os.getpid()}\\n"`` and one warning naming
    123456789; our own pid left there -> no warning. Fails on: the new pid written over the old without truncating
    it first (``"<pid>6789\\n"``-like leftovers), or the warning given for the process's own pid."""
    from daps.runfolder import LOCK, FolderLock

    folder = tmp_path / "run"
    folder.mkdir()
    (folder / LOCK).write_text("123456789\n")
    with caplog.at_level("WARNING", logger="daps"), FolderLock(folder):
        assert (folder / LOCK).read_text() == f"{os.getpid()}\n"
    assert "lock left by process 123456789" in caplog.text
    assert (folder / LOCK).read_text() == ""
    caplog.clear()
    (folder / LOCK).write_text(f"{os.getpid()}\n")
    with caplog.at_level("WARNING", logger="daps"), FolderLock(folder):
        assert (folder / LOCK).read_text() == f"{os.getpid()}\n"
    assert "took over" not in caplog.text


# --------------------------------------------------------------------------- codes: what a codes file may hold


def test_codes_and_labels_of_different_counts_are_refused_before_anything_is_written(tmp_path):
    """Codes ``(N, K, T)`` and labels ``(N,)`` pair input by input: 3 inputs' codes with 2 labels have no pairing
    (``CodeSet.flat`` would give 3 codes and 2 labels to a prior). ``save_codes`` refuses with a UserError that
    names both shapes and writes no file; the same codes with 3 labels are saved and read back unchanged. Fails on:
    the check of the two leading sizes dropped."""
    from daps.codes import CodeSet, load_codes, save_codes

    meta = {"format": 1, "vocab_size": 4, "num_tokens": 2, "class_names": ["a", "b"]}
    codes = torch.tensor([[[0, 1]], [[2, 3]], [[1, 1]]])  # (3, 1, 2)
    out = tmp_path / "c.safetensors"
    with pytest.raises(UserError, match=r"\(3, 1, 2\) and \(2,\)"):
        save_codes(CodeSet(codes, torch.tensor([0, 1]), meta), out)
    assert not out.exists()
    save_codes(CodeSet(codes, torch.tensor([0, 1, 1]), meta), out)
    loaded = load_codes(out)
    assert torch.equal(loaded.codes, codes) and loaded.labels.tolist() == [0, 1, 1]


@pytest.mark.parametrize("labels, ok", [([0, 1], True), ([-1, 1], False), ([0, 2], False)])
def test_labels_must_name_one_of_the_headers_classes(tmp_path, labels, ok):
    """A label indexes ``class_names``: with two classes it is 0 or 1. ``[0, 1]`` is saved; ``[-1, 1]`` (which
    Python indexing would silently read as the last class) and ``[0, 2]`` are refused as "labels outside [0, 2)".
    Fails on: the lower bound of the label check dropped (a -1 label saved, and later learned as a class)."""
    from daps.codes import CodeSet, save_codes

    meta = {"format": 1, "vocab_size": 4, "num_tokens": 2, "class_names": ["a", "b"]}
    codes = CodeSet(torch.tensor([[[0, 1]], [[2, 3]]]), torch.tensor(labels), meta)
    if ok:
        assert save_codes(codes, tmp_path / "c.safetensors").is_file()
    else:
        with pytest.raises(UserError, match=r"labels outside \[0, 2\)"):
            save_codes(codes, tmp_path / "c.safetensors")


def test_a_codes_header_over_other_tensors_is_refused_naming_what_the_file_has(tmp_path):
    """A safetensors file with a daps codes header but tensors ``codes`` and ``y`` (hand-made, or another tool's)
    is no codes file: ``load_codes`` raises a UserError listing the tensors it has ("has: codes, y"), not a
    safetensors error from reading a missing ``labels``. Fails on: the check of the two tensor names loosened to
    "any tensor at all"."""
    from safetensors.torch import save_file

    from daps.codes import HEADER_KEY, load_codes

    meta = {"format": 1, "vocab_size": 4, "num_tokens": 2, "class_names": ["a", "b"]}
    path = tmp_path / "c.safetensors"
    save_file({"codes": torch.zeros(1, 1, 2, dtype=torch.long), "y": torch.zeros(1, dtype=torch.long)}, str(path),
              metadata={HEADER_KEY: json.dumps(meta)})
    with pytest.raises(UserError, match="lacks the tensors 'codes' and 'labels' \\(has: codes, y\\)"):
        load_codes(path)


def test_a_codes_header_that_is_not_a_json_object_is_no_codes_file(tmp_path):
    """The ``daps_codes`` header is a JSON object; a file whose header is the JSON list ``[1, 2]`` is not a codes
    file: ``load_codes`` says so in a UserError (not an AttributeError from ``list.get``), and ``save_codes`` with
    ``overwrite`` refuses to replace it as another program's file. Fails on: ``_header`` returning any JSON value."""
    from safetensors.torch import save_file

    from daps.codes import HEADER_KEY, CodeSet, load_codes, save_codes

    path = tmp_path / "c.safetensors"
    save_file({"codes": torch.zeros(1, 1, 2, dtype=torch.long)}, str(path), metadata={HEADER_KEY: "[1, 2]"})
    with pytest.raises(UserError, match="not a daps codes file"):
        load_codes(path)
    meta = {"format": 1, "vocab_size": 4, "num_tokens": 2, "class_names": ["a"]}
    with pytest.raises(UserError, match="is not a daps codes file; refusing to replace it"):
        save_codes(CodeSet(torch.zeros(1, 1, 2, dtype=torch.long), torch.zeros(1, dtype=torch.long), meta), path,
                   overwrite=True)


@pytest.mark.parametrize("class_names, ok", [(["a", "b"], True), ([0, 1], False), ("ab", False)])
def test_class_names_of_a_codes_header_are_a_list_of_strings(tmp_path, class_names, ok):
    """``class_names`` is the list of the classes' names that a prior's samples are labelled with: ``["a", "b"]`` is
    saved; ``[0, 1]`` (numbers) and ``"ab"`` (a string, whose len is also 2) are refused as "not a list of strings".
    Fails on: only the type of the list checked, not that of its items."""
    from daps.codes import CodeSet, save_codes

    meta = {"format": 1, "vocab_size": 4, "num_tokens": 2, "class_names": class_names}
    codes = CodeSet(torch.tensor([[[0, 1]], [[2, 3]]]), torch.tensor([0, 1]), meta)
    if ok:
        assert save_codes(codes, tmp_path / "c.safetensors").is_file()
    else:
        with pytest.raises(UserError, match="class_names is not a list of strings"):
            save_codes(codes, tmp_path / "c.safetensors")


# --------------------------------------------------------------------------- train: resume borders, validation seed


def test_a_checkpoint_one_step_past_the_end_is_refused_before_the_config_is_compared(copy_run, tiny_overrides):
    """The tiny run holds a checkpoint at step 6; resumed with ``train.steps=5`` (the end one step before it),
    ``prepare_run_dir`` refuses at once with "cannot resume RUN at step 6: the run is set to stop at step 5", even in
    its silent dry run (before the folder is locked and before any warning about the changed ``train.steps``): a
    refusal is one line. With ``train.steps=6`` it resumes from step 6. Fails on: the border moved by one
    (``step > end_step + 1``: the dry run accepts, and the refusal comes only after the warnings)."""
    from daps import get_preset, parse_overrides
    from daps.train import prepare_run_dir

    run = copy_run()

    def cfg(steps: int):
        return parse_overrides(get_preset("mnist", "daps"),
                               [*tiny_overrides, f"train.steps={steps}", f"train.out_dir={run}"])

    with pytest.raises(UserError, match="at step 6: the run is set to stop at step 5"):
        prepare_run_dir(cfg(5), resume=True, overwrite=False, report=False)
    assert prepare_run_dir(cfg(6), resume=True, overwrite=False, report=False).resume_from.name == "step_00000006"


def test_the_validation_seed_is_the_one_daps_eval_help_gives():
    """``daps eval --help`` tells users that training's validation drew its codes with seed ``train.seed + 12345``
    (what they pass as ``--seed`` to repeat it): train.seed 0 -> 12345, 7 -> 12352. Fails on: the offset changed
    or dropped (every validation drawn with another stream than the one the help names)."""
    from daps import get_preset
    from daps.train import validation_seed

    cfg = get_preset("mnist", "daps")
    cfg.train.seed = 0
    assert validation_seed(cfg) == 12345
    cfg.train.seed = 7
    assert validation_seed(cfg) == 12352
