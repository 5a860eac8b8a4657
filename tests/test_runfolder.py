"""Nothing lost: what ``daps train`` may replace, the run-folder lock, resuming from every kill point, damaged
checkpoints and divergence. Each test reproduces a way a user could lose files or be left with a run that
cannot be finished, on the tiny config of ``conftest.py``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import daps
from daps.checkpoint import CKPT_DIR, find_resumable, list_checkpoints, verify_checkpoint
from daps.cli import main
from daps.runfolder import LOCK, MARKER, FolderLock, OutputFolderError, atomic_path, prepare_output_folder

pytestmark = pytest.mark.usefixtures("offline")

REAL_DIR = os.environ.get("DAPS_DATA_DIR")  # read before the offline fixture hides it


def as_before_the_marker(run: Path) -> None:
    """Make ``run`` what daps wrote before the marker existed: without the marker and the files that came with it
    or later (the provenance, the loggers' folders)."""
    import shutil

    from daps.runfolder import LEGACY_RUN_ENTRIES

    for path in run.iterdir():
        if path.name not in LEGACY_RUN_ENTRIES:
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def snapshot(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, tuple[int, bytes]]:
    """relative path -> (mtime_ns, bytes) of everything under ``folder``."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.name in skip:
            continue
        out[rel] = (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else b"<dir>")
    return out


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "no error printed"
    return err[-1]


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / CKPT_DIR / (run / CKPT_DIR / "latest").read_text().strip() / "model.safetensors"))


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = final_weights(a), final_weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def train_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------------------------------
# --overwrite replaces only a daps run folder


@pytest.mark.parametrize("out_dir", ["", ".", "..", "./", "sub/.."])
def test_overwrite_never_deletes_the_current_folder_or_a_parent(tmp_path, monkeypatch, capsys, tiny_overrides, out_dir):
    work = tmp_path / "home_of_user" / "project"
    (work / "sub").mkdir(parents=True)
    (work / "thesis.tex").write_text("years of work\n")
    (work.parent / "notes.txt").write_text("more work\n")
    monkeypatch.chdir(work)
    before = snapshot(tmp_path)
    assert main(["train", *tiny_overrides, f"train.out_dir={out_dir}", "--overwrite"]) == 2
    assert "train.out_dir" in error_line(capsys)
    assert snapshot(tmp_path) == before


def test_overwrite_never_deletes_home_or_a_root(tmp_path, capsys, tiny_overrides):
    home = Path(os.environ["HOME"])  # the `offline` fixture points HOME into tmp_path
    home.mkdir(parents=True, exist_ok=True)
    (home / ".bashrc").write_text("alias x=y\n")
    before = snapshot(home)
    for out_dir in (str(home), "~", "/"):
        assert main(["train", *tiny_overrides, f"train.out_dir={out_dir}", "--overwrite"]) == 2
        line = error_line(capsys)  # "/" is also a parent of the current folder
        assert (
            "home folder or a filesystem root" in line or (out_dir == "/" and "its parents" in line)
            or (out_dir == "~" and "starts with '~'" in line)
        )
    assert snapshot(home) == before


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_tilde_the_shell_left_alone_is_refused(copy_run, tmp_path, monkeypatch, capsys, tiny_overrides, overwrite):
    """``train.out_dir=~/x`` reaches daps unexpanded (bash expands ``~`` only at the start of a word): checking
    ``$HOME/x`` but writing ``./~/x`` once emptied the one and wrote the other."""
    home = Path(os.environ["HOME"])  # the `offline` fixture points HOME into tmp_path
    work = tmp_path / "work"
    (work / "~").mkdir(parents=True)
    monkeypatch.chdir(work)
    run_home = copy_run(home / "x")
    run_literal = copy_run(work / "~" / "x")
    (run_home / "notes.txt").write_text("mine\n")
    before = snapshot(tmp_path)
    assert main(["train", *tiny_overrides, "train.out_dir=~/x", *(["--overwrite"] if overwrite else [])]) == 2
    assert "starts with '~'" in error_line(capsys)
    assert snapshot(tmp_path) == before and run_home.exists() and run_literal.exists()


def test_overwrite_refuses_a_user_folder_that_holds_a_daps_config(tmp_path, capsys, tiny_overrides):
    """A project folder with a config.json from ``daps presets`` is not a run made before the marker existed."""
    folder = tmp_path / "project"
    (folder / "data").mkdir(parents=True)
    assert main(["presets", "mnist5k-demo"]) == 0
    (folder / "config.json").write_text(capsys.readouterr().out)
    (folder / "thesis.tex").write_text("years of work\n")
    (folder / "data" / "important.csv").write_text("1,2\n")
    before = snapshot(folder)
    assert main(["train", *tiny_overrides, f"train.out_dir={folder}", "--overwrite"]) == 2
    assert "not a daps train folder" in error_line(capsys)
    assert snapshot(folder) == before


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path, capsys, tiny_overrides):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (folder / "config.json").write_text('{"camera": "x"}\n')  # a config.json that is not a daps config
    before = snapshot(folder)
    assert main(["train", *tiny_overrides, f"train.out_dir={folder}", "--overwrite"]) == 2
    assert "not a daps train folder" in error_line(capsys)
    assert snapshot(folder) == before


def test_overwrite_refuses_a_symlink_to_a_run(copy_run, tmp_path, capsys, tiny_overrides):
    run = copy_run()
    link = tmp_path / "link"
    link.symlink_to(run)
    before = snapshot(run)
    assert main(["train", *tiny_overrides, f"train.out_dir={link}", "--overwrite"]) == 2
    assert "symbolic link" in error_line(capsys)
    assert snapshot(run) == before
    for flag in ("--resume", None):  # named as a link (it was "not a daps run folder" for --resume)
        assert main(["train", *tiny_overrides, f"train.out_dir={link}", *([flag] if flag else [])]) == 2
        assert "is a symbolic link" in error_line(capsys)
    assert snapshot(run) == before


def test_overwrite_replaces_a_run_made_before_the_marker_existed(copy_run, trained_run, tiny_overrides, no_plots):
    run = copy_run()
    as_before_the_marker(run)  # runs of earlier versions: recognised by their daps config.json
    assert main(["train", *tiny_overrides, f"train.out_dir={run}", "--overwrite"]) == 0
    assert (run / MARKER).is_file() and same_weights(run, trained_run)


def test_overwrite_deletes_what_the_run_wrote_and_keeps_what_the_user_added(copy_run, trained_run, tiny_overrides,
                                                                            no_plots, caplog):
    """A run folder is replaceable, not the user's notes or a run of theirs nested inside it: ``--overwrite``
    (and ``--resume`` of a run stopped before its first checkpoint, which starts it again in place) deletes only
    the entries a run writes, and says what it kept."""
    run = copy_run()
    (run / "NOTES.md").write_text("what I tried\n")
    mine = run / "nested"
    (mine / CKPT_DIR).mkdir(parents=True)
    (mine / "metrics.jsonl").write_text("{}\n")
    (run / "metrics.jsonl").write_text('{"split": "train", "step": 999}\n')  # what a fresh run would not write
    kept = snapshot(mine)
    with caplog.at_level("WARNING", logger="daps"):
        assert main(["train", *tiny_overrides, f"train.out_dir={run}", "--overwrite"]) == 0
    assert "kept NOTES.md, nested, which daps did not write there" in caplog.text
    assert (run / "NOTES.md").read_text() == "what I tried\n" and snapshot(mine) == kept
    assert same_weights(run, trained_run) and 999 not in [r["step"] for r in train_rows(run)]

    import shutil

    shutil.rmtree(run / CKPT_DIR)  # stopped before its first checkpoint: --resume starts it again in place
    assert main(["train", *tiny_overrides, f"train.out_dir={run}", "--resume"]) == 0
    assert (run / "NOTES.md").read_text() == "what I tried\n" and snapshot(mine) == kept
    assert same_weights(run, trained_run)


def test_overwrite_keeps_what_the_user_put_inside_the_runs_own_subfolders(copy_run, trained_run, tiny_overrides,
                                                                           no_plots, caplog):
    """Inside ``checkpoints/``, ``tensorboard/`` and ``wandb/`` only the names daps or its logger writes are deleted
    by ``--overwrite`` (a checkpoint kept under a name of the user's, notes, another tool's file stay, and the log
    names them); a subfolder left empty goes."""
    import shutil

    run = copy_run()
    shutil.copytree(run / CKPT_DIR / list_checkpoints(run)[0].name, run / CKPT_DIR / "best_model")
    (run / CKPT_DIR / "my_notes.txt").write_text("the best one\n")
    (run / CKPT_DIR / "step_100000000").mkdir()  # daps's name past 99,999,999 steps: deleted, not kept
    (run / "tensorboard").mkdir(exist_ok=True)
    (run / "tensorboard" / "events.out.tfevents.1700000000.host.1.0").touch()  # as a logged run has
    (run / "tensorboard" / "mynote.txt").write_text("mine\n")
    (run / "wandb" / "run-20261207_101010-abc").mkdir(parents=True)  # as wandb.init(dir=RUN) writes
    (run / "wandb" / "daps_run_id").write_text("daps0123\n")
    (run / "wandb" / "README").write_text("mine\n")
    best = snapshot(run / CKPT_DIR / "best_model")
    with caplog.at_level("WARNING", logger="daps"):
        assert main(["train", *tiny_overrides, f"train.out_dir={run}", "--overwrite"]) == 0
    for name in ("checkpoints/best_model", "checkpoints/my_notes.txt", "tensorboard/mynote.txt", "wandb/README"):
        assert name in caplog.text, name
    assert snapshot(run / CKPT_DIR / "best_model") == best and "step_100000000" not in caplog.text
    assert not (run / CKPT_DIR / "step_100000000").exists()
    assert (run / CKPT_DIR / "my_notes.txt").read_text() == "the best one\n"
    assert sorted(p.name for p in (run / "tensorboard").iterdir()) == ["mynote.txt"]
    assert sorted(p.name for p in (run / "wandb").iterdir()) == ["README"]
    assert same_weights(run, trained_run)
    for path in (run / CKPT_DIR / "my_notes.txt", run / "tensorboard" / "mynote.txt", run / "wandb" / "README"):
        path.unlink()
    shutil.rmtree(run / CKPT_DIR / "best_model")
    assert main(["train", *tiny_overrides, f"train.out_dir={run}", "--overwrite"]) == 0
    assert not (run / "tensorboard").exists() and not (run / "wandb").exists()  # emptied, then removed


def test_a_refused_run_leaves_an_empty_folder_of_the_users_as_it_was(tmp_path, capsys, tiny_overrides):
    """A folder the user made and left empty, named as ``train.out_dir`` of a run refused once its folder is locked
    (missing data): it stays, empty, without daps's lock or marker (they were left there)."""
    out = tmp_path / "mine"
    out.mkdir()
    argv = ["train", *tiny_overrides, f"data.data_dir={tmp_path / 'nowhere'}", f"train.out_dir={out}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "nowhere" in err, err
    assert out.is_dir() and sorted(p.name for p in out.iterdir()) == []


@pytest.mark.parametrize("then", ["--resume", "--overwrite"])
@pytest.mark.parametrize("marked", [True, False])  # False: a run made before the marker existed
def test_a_run_killed_while_its_folder_is_emptied_can_be_resumed_or_replaced(copy_run, trained_run, tiny_overrides,
                                                                             no_plots, monkeypatch, then, marked):
    """``--overwrite`` empties the folder entry by entry; a kill after the first entry leaves half a run. The marker
    stays (and a run made before it existed gets it first), so the folder is still daps's: ``--resume`` starts
    it again in place, ``--overwrite`` replaces it."""
    import daps.runfolder

    run = copy_run()
    if not marked:
        as_before_the_marker(run)
    remove = daps.runfolder._remove
    calls = []

    def killed_after_one(path):
        if calls:
            raise KeyboardInterrupt
        calls.append(path)
        remove(path)

    monkeypatch.setattr(daps.runfolder, "_remove", killed_after_one)
    # the kill reaches main as an interrupt would: every cleanup on the way runs, then one line and exit code 130
    assert main(["train", *tiny_overrides, f"train.out_dir={run}", "--overwrite"]) == 130
    monkeypatch.setattr(daps.runfolder, "_remove", remove)
    assert calls and (run / MARKER).is_file()
    assert main(["train", *tiny_overrides, f"train.out_dir={run}", then]) == 0
    assert same_weights(run, trained_run)


def test_the_entries_a_run_folder_lists_are_what_its_runs_write(trained_run, tmp_path):
    """The names ``--overwrite`` deletes cover a run's folder (else a stale output would be kept as the user's),
    those a dataset adds included (the motion statistics, from the real clips where ``$DAPS_DATA_DIR`` has them;
    the records of an ``arrays`` and a ``sequences`` file, from small files made here)."""
    import dataclasses

    import numpy as np

    from daps.config import DataConfig
    from daps.data import DATASETS
    from daps.runfolder import RUN_ENTRIES

    assert {p.name for p in trained_run.iterdir()} <= RUN_ENTRIES
    assert {"checkpoints", "config.json", "metrics.jsonl", "provenance.json", "summary.json"} <= {
        p.name for p in trained_run.iterdir()}
    added = {name: spec.run_files for name, spec in DATASETS.items() if spec.run_files is not None}
    assert added, "no dataset adds files to its runs any more: drop this check"
    np.savez(tmp_path / "a.npz", train=np.zeros((2, 4, 4), np.uint8), test=np.zeros((2, 4, 4), np.uint8))
    assert set(added.pop("arrays")(DataConfig(name="arrays", data_dir=str(tmp_path / "a.npz")))) <= RUN_ENTRIES
    clips = np.random.default_rng(0).standard_normal((8, 3))
    np.savez(tmp_path / "s.npz", **{"train/a": clips, "test/b": clips})
    sequences = DataConfig(name="sequences", data_dir=str(tmp_path / "s.npz"), image_shape=(1, 4, 3))
    assert set(added.pop("sequences")(sequences)) <= RUN_ENTRIES
    if REAL_DIR is None:
        pytest.skip("DAPS_DATA_DIR not set: the files the other datasets add to a run are not checked")
    for name, run_files in added.items():
        assert set(run_files(dataclasses.replace(daps.get_preset(name).data, data_dir=REAL_DIR))) <= RUN_ENTRIES


@pytest.mark.parametrize("name, temporary", [
    (".summary.tmp-4242.json", True), (".latest.tmp-7", True), (".step_00000006.old-4242", True),
    (".step_00000006.tmp-4242", True), ("..daps.tmp-12", True),
    ("summary.tmp-4242.json", False), (".bashrc", False), (".cache.tmp-keep", False), (".x.tmp-12.tar.gz", False),
    (".tmp-12", False), (".notes.old-", False),
])
def test_temporary_names_known_answers(name, temporary):
    from daps.runfolder import is_temporary

    assert is_temporary(name) is temporary


def test_names_that_only_look_temporary_are_the_users_outside_a_daps_folder(tmp_path, capsys, tiny_overrides):
    """A folder of the user's holding only ``.bashrc.old-2023`` is not empty, so it is not taken as a new run
    folder (whose start removes temporaries left by a killed run)."""
    from daps.runfolder import has_content

    dotfiles = tmp_path / "dotfiles"
    dotfiles.mkdir()
    (dotfiles / ".bashrc.old-2023").write_text("alias ll='ls -l'\n")
    (dotfiles / ".cache.tmp-9").mkdir()
    (dotfiles / ".cache.tmp-9" / "big.bin").write_bytes(b"x" * 10)
    assert has_content(dotfiles)
    before = snapshot(dotfiles)
    assert main(["train", *tiny_overrides, f"train.out_dir={dotfiles}"]) == 2
    assert "not a daps run folder" in error_line(capsys)
    assert snapshot(dotfiles) == before


def test_other_writers_share_the_rule(tmp_path):
    from daps.gradlab import REPORT_FILES

    out = tmp_path / "report"
    out.mkdir()
    (out / "mine.txt").write_text("x")
    for overwrite in (False, True):  # --overwrite is not suggested where it would not work
        with pytest.raises(OutputFolderError, match="not a daps gradlab folder"):
            prepare_output_folder(out, "gradlab", overwrite=overwrite, entries=REPORT_FILES)
    assert (out / "mine.txt").read_text() == "x"
    fresh = prepare_output_folder(tmp_path / "new", "gradlab", overwrite=False, entries=REPORT_FILES)
    (fresh / "gradlab.md").write_text("old report")
    with pytest.raises(OutputFolderError, match="already exists; pass --overwrite to replace it"):
        prepare_output_folder(fresh, "gradlab", overwrite=False, entries=REPORT_FILES)
    with pytest.raises(OutputFolderError, match="not a daps compare folder"):  # another kind is not replaced
        prepare_output_folder(fresh, "compare", overwrite=True, entries=())
    prepare_output_folder(fresh, "gradlab", overwrite=True, entries=REPORT_FILES)
    assert not (fresh / "gradlab.md").exists()


def test_an_output_under_a_link_to_nothing_is_refused_before_the_work(tmp_path, monkeypatch):
    """A dangling link where an output's folder would go (``--out old_runs/p`` with ``old_runs`` pointing at a
    removed disk) cannot be made a folder (mkdir says the link exists): refused, naming it, as a file there is;
    a link to a folder is a folder. Relative paths are checked from the current folder. Fails on:
    ``_file_on_the_way`` counting only parents that exist, or following links to folders no more."""
    from daps.errors import UserError
    from daps.runfolder import check_output_file, refuse_precious

    (tmp_path / "gone").symlink_to(tmp_path / "removed")
    (tmp_path / "real").mkdir()
    (tmp_path / "there").symlink_to(tmp_path / "real")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"^--out gone/sub/a\.png: gone is not a folder"):
        check_output_file("gone/sub/a.png", ".png", False)
    with pytest.raises(OutputFolderError, match=r"^--out gone/run: gone is not a folder"):
        refuse_precious("gone/run", "--out")
    assert check_output_file("there/a.png", ".png", False) == Path("there/a.png")
    assert refuse_precious("there/run", "--out") == tmp_path.resolve() / "real" / "run"
    assert not (tmp_path / "removed").exists()


def test_check_output_file_replaces_only_what_it_may(tmp_path):
    """The one rule behind every output file flag (--out, --plot, --video, --json, --codes-out)."""
    from daps.errors import UserError
    from daps.runfolder import check_output_file

    new = tmp_path / "a.png"
    assert check_output_file(new, ".png", overwrite=False) == new
    assert check_output_file(tmp_path / "A.PNG", ".png", overwrite=False).name == "A.PNG"  # any case of the suffix
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"user")
    ours = tmp_path / "ours.png"
    ours.write_bytes(b"daps")
    link = tmp_path / "link.png"
    link.symlink_to(ours)
    (tmp_path / "folder.png").mkdir()
    is_ours = lambda p: p.read_bytes() == b"daps"  # noqa: E731
    refused = [
        ((str(tmp_path / "a.jpg"), ".png", True), "--out .*a.jpg must name a file ending in .png"),
        (("", ".png", True), "--out is empty"),
        (("~/a.png", ".png", True), "starts with '~'"),
        ((tmp_path / "folder.png", ".png", True), "is a folder"),
        ((mine, ".png", False), "already exists; pass --overwrite"),
        ((mine, ".png", None), "already exists; choose another path"),
        ((mine, ".png", True, "--plot", is_ours, "an image of daps"), "--plot .* is not an image of daps"),
        ((link, ".png", True, "--out", is_ours, "an image of daps"), "is a link"),
        ((mine / "a.png", ".png", True), f"--out {mine / 'a.png'}: {mine} is not a folder"),  # was an OSError after
        ((mine / "sub" / "a.png", ".png", True), f"{mine} is not a folder"),  # the work (Errno 17, naming no flag)
    ]
    for args, message in refused:
        with pytest.raises(UserError, match=message):
            check_output_file(*args)
    assert mine.read_bytes() == b"user" and link.is_symlink()
    assert check_output_file(ours, ".png", True, "--out", is_ours, "an image of daps") == ours
    assert check_output_file(tmp_path / "new" / "sub" / "a.png", ".png", False).parent.name == "sub"  # made later
    assert check_output_file(mine, ".png", True) == mine  # no is_ours: the flag names the file, --overwrite says so


def test_images_and_videos_daps_writes_say_so_and_others_do_not(tmp_path):
    """The tag ``--overwrite`` relies on for images and videos: every PNG writer of daps (a matplotlib figure, a
    PIL grid) and the mp4 writer set it; a PNG of matplotlib or PIL alone, a JPEG, a damaged PNG, an mp4 of
    ffmpeg alone do not carry it."""
    import numpy as np
    from PIL import Image

    from daps.plots import _pyplot, save_figure, save_image_grid
    from daps.runfolder import is_daps_png, is_daps_video, png_software

    fig = _pyplot().figure(figsize=(1, 1))
    save_figure(fig, tmp_path / "figure.png", dpi=50)
    save_image_grid(torch.rand(3, 1, 4, 4), tmp_path / "grid.png")
    fig = _pyplot().figure(figsize=(1, 1))
    fig.savefig(tmp_path / "matplotlib.png")
    _pyplot().close(fig)
    Image.new("L", (4, 4)).save(tmp_path / "pil.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "photo.jpg")
    whole = (tmp_path / "figure.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(whole[:40])
    assert is_daps_png(tmp_path / "figure.png") and is_daps_png(tmp_path / "grid.png")
    assert png_software(tmp_path / "matplotlib.png").startswith("Matplotlib")
    for name in ("matplotlib.png", "pil.png", "photo.jpg", "cut.png", "missing.png"):
        assert not is_daps_png(tmp_path / name), name

    pytest.importorskip("imageio_ffmpeg")
    import imageio.v2 as imageio

    from daps.motion.render import _write_mp4

    frames = [np.full((16, 16, 3), 40 * i, dtype=np.uint8) for i in range(4)]
    _write_mp4(frames, tmp_path / "ours.mp4", fps=10)
    with imageio.get_writer(tmp_path / "theirs.mp4", format="FFMPEG", fps=10, macro_block_size=16) as writer:
        for frame in frames:
            writer.append_data(frame)
    assert is_daps_video(tmp_path / "ours.mp4")
    assert not is_daps_video(tmp_path / "theirs.mp4") and not is_daps_video(tmp_path / "missing.mp4")


def test_overwrite_replaces_an_image_daps_wrote_and_never_a_users(trained_run, tmp_path, capsys):
    """``decode-random --out holiday.png --overwrite`` where holiday.png is a photo of the user's: refused, and the
    photo kept; an image of an earlier ``decode-random`` is replaced."""
    from PIL import Image

    photo = tmp_path / "holiday.png"
    Image.new("RGB", (8, 8), (200, 100, 0)).save(photo)
    before = photo.read_bytes()
    assert main(["decode-random", str(trained_run), "--out", str(photo), "--n", "4", "--overwrite"]) == 2
    assert "exists and is not an image daps wrote; refusing to replace it" in error_line(capsys)
    assert photo.read_bytes() == before
    grid = tmp_path / "grid.png"
    assert main(["decode-random", str(trained_run), "--out", str(grid), "--n", "4"]) == 0
    first = grid.read_bytes()
    assert main(["decode-random", str(trained_run), "--out", str(grid), "--n", "4", "--seed", "1", "--overwrite"]) == 0
    assert grid.read_bytes() != first


def test_atomic_path_leaves_the_old_file_on_error(tmp_path):
    target = tmp_path / "summary.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["summary.json"]


# --------------------------------------------------------------------------------------------------
# One process per run folder

HOLD_LOCK = textwrap.dedent(
    """
    import fcntl, os, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.ftruncate(fd, 0); os.write(fd, f"{os.getpid()}\\n".encode())
    print("locked", flush=True)
    time.sleep(120)
    """
)


def test_a_second_process_is_refused_and_a_stale_lock_is_taken_over(
    copy_run, trained_run, capsys, tiny_overrides, caplog
):
    run = copy_run()
    for p in (run / "summary.json", run / "reconstructions.png", run / "curves.png"):
        p.unlink()  # a finished run that still has work to do on --resume
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run / LOCK)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(run)
        assert main(["train", *tiny_overrides, f"train.out_dir={run}", "--resume"]) == 2
        line = error_line(capsys)
        assert "in use by another daps process" in line and f"pid {holder.pid}" in line
        assert snapshot(run) == before
    finally:
        holder.kill()
        holder.wait()
    # The holder was killed: its pid is still in the lock file, but the kernel dropped its lock.
    assert (run / LOCK).read_text().strip() == str(holder.pid)
    with caplog.at_level("WARNING", logger="daps"):
        assert main(["train", *tiny_overrides, f"train.out_dir={run}", "--resume"]) == 0
    assert f"lock left by process {holder.pid}" in caplog.text
    assert (run / LOCK).read_text() == ""  # released cleanly
    assert json.loads((run / "summary.json").read_text()) == json.loads((trained_run / "summary.json").read_text())


def test_folder_lock_in_process(tmp_path):
    with FolderLock(tmp_path / "run"):
        with pytest.raises(OutputFolderError, match=f"pid {os.getpid()}"):
            FolderLock(tmp_path / "run").acquire()
    FolderLock(tmp_path / "run").acquire().release()  # free again


# --------------------------------------------------------------------------------------------------
# --resume gets a run to its end from any kill point


def test_killed_before_the_first_checkpoint_resumes_in_place(copy_run, trained_run, tiny_overrides, no_plots):
    run = copy_run()
    for p in (run / "summary.json", run / "reconstructions.png", run / "curves.png"):
        p.unlink()
    import shutil

    shutil.rmtree(run / CKPT_DIR)
    rows = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(rows[0] + "\n" + rows[1][:20])  # a row cut off by the kill
    assert main(["train", *tiny_overrides, f"train.out_dir={run}"]) == 2  # not without being asked
    assert main(["train", *tiny_overrides, f"train.out_dir={run}", "--resume"]) == 0
    assert same_weights(run, trained_run)
    assert [r["step"] for r in train_rows(run)] == [r["step"] for r in train_rows(trained_run)]


def test_killed_before_the_first_checkpoint_with_another_config_is_refused(copy_run, capsys, tiny_overrides):
    run = copy_run()
    import shutil

    shutil.rmtree(run / CKPT_DIR)
    before = snapshot(run)
    assert main(["train", *tiny_overrides, "encoder.width=32", f"train.out_dir={run}", "--resume"]) == 2
    assert "encoder.width" in error_line(capsys)
    assert snapshot(run) == before


@pytest.mark.parametrize("damage", ["empty", "missing", "truncated", "not an object"])
def test_finished_run_with_a_damaged_summary_or_missing_plots_is_completed(
    copy_run, trained_run, tiny_overrides, damage
):
    run = copy_run()
    summary = run / "summary.json"
    if damage == "empty":
        summary.write_bytes(b"")  # what a kill during a non-atomic write used to leave
    elif damage == "missing":
        summary.unlink()
    elif damage == "not an object":
        summary.write_text("[1, 2]\n")  # valid JSON, but no summary (it crashed the resume)
    else:
        summary.write_text(summary.read_text()[:30])
    (run / "curves.png").unlink()
    checkpoints = snapshot(run / CKPT_DIR)
    assert main(["train", *tiny_overrides, f"train.out_dir={run}", "--resume"]) == 0
    assert json.loads(summary.read_text()) == json.loads((trained_run / "summary.json").read_text())
    assert (run / "curves.png").stat().st_size > 1000 and (run / "reconstructions.png").is_file()
    assert snapshot(run / CKPT_DIR) == checkpoints  # the final checkpoint is not rewritten
    assert train_rows(run) == train_rows(trained_run)  # the final validation row is not logged twice


def test_finished_run_is_left_alone(copy_run, tiny_overrides):
    run = copy_run()
    before = snapshot(run, skip=(LOCK,))
    assert main(["train", *tiny_overrides, f"train.out_dir={run}", "--resume"]) == 0
    assert snapshot(run, skip=(LOCK,)) == before


@pytest.mark.parametrize("marked", [True, False])  # False: a run made before the marker existed
def test_temporaries_of_a_killed_run_are_removed_on_the_next_start(copy_run, tiny_overrides, caplog, marked):
    run = copy_run()
    if not marked:
        as_before_the_marker(run)
    leftovers = [
        run / ".summary.tmp-99999.json",
        run / ".curves.tmp-99999.png",
        run / CKPT_DIR / ".latest.tmp-99999",
    ]
    for p in leftovers:
        p.write_bytes(b"half")
    half_ckpt = run / CKPT_DIR / ".step_00000009.tmp-99999"
    half_ckpt.mkdir()
    (half_ckpt / "model.safetensors").write_bytes(b"")
    with caplog.at_level("INFO", logger="daps"):
        assert main(["train", *tiny_overrides, f"train.out_dir={run}", "--resume"]) == 0
    assert not any(p.exists() for p in [*leftovers, half_ckpt])
    assert "left by an interrupted run" in caplog.text


def test_a_resumed_run_logs_the_rows_of_an_uninterrupted_one(copy_run, tiny_overrides, no_plots, trained_run):
    """With checkpoints (every 3 steps) inside the logging windows (every 2), each window ends at a checkpoint too,
    so the run resumed from step 3 logs what the uninterrupted run logged. Fails on: a window that spans the
    checkpoint (the resumed run's row at step 4 would average one step, the uninterrupted run's two)."""
    run = copy_run()
    latest = run / CKPT_DIR / "latest"
    latest.write_text("step_00000003\n")  # as if killed between the checkpoints at steps 3 and 6
    import shutil

    shutil.rmtree(run / CKPT_DIR / "step_00000006")
    assert main(["train", *tiny_overrides, f"train.out_dir={run}", "--resume"]) == 0

    def steady(folder: Path) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in ("time", "steps_per_s")} for r in train_rows(folder)]

    assert steady(run) == steady(trained_run)
    assert [(r["step"], r["num_steps"]) for r in train_rows(run) if r["split"] == "train"] == [(2, 2), (3, 1), (4, 1),
                                                                                               (6, 2)]
    assert same_weights(run, trained_run)


# --------------------------------------------------------------------------------------------------
# Damaged checkpoints


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "flipped":  # one byte in the middle of the tensor data: the file still parses
        i = len(data) - 64
        path.write_bytes(data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :])


DAMAGES = [(f, h) for f in ("model.safetensors", "state.pt", "config.json") for h in ("empty", "truncated", "flipped")]


@pytest.mark.parametrize("file,how", DAMAGES)
def test_damaged_latest_checkpoint_is_named_and_resume_falls_back(
    copy_run, trained_run, capsys, tiny_overrides, file, how, caplog, no_plots
):
    run = copy_run()
    latest = run / CKPT_DIR / "step_00000006"
    _damage(latest / file, how)
    damaged = (latest / file).read_bytes()
    # Loading names the file, in one line, exit code 2.
    with pytest.raises(ValueError, match=str(latest / file).replace(".", r"\.")):
        daps.load_model(run)
    assert main(["eval", str(run), "--max-images", "20"]) == 2
    assert str(latest / file) in error_line(capsys)
    # --resume says so and falls back to the newest intact checkpoint, deleting nothing on the way.
    assert find_resumable(run) == run / CKPT_DIR / "step_00000003"
    (run / "summary.json").unlink()
    with caplog.at_level("WARNING", logger="daps"):
        assert main(["train", *tiny_overrides, f"train.out_dir={run}", "--resume"]) == 0
    assert str(latest / file) in caplog.text and "newest intact checkpoint" in caplog.text
    assert same_weights(run, trained_run)  # retrained steps 4-6 exactly
    verify_checkpoint(latest)
    assert damaged != (latest / file).read_bytes() or how == "empty"
    kept = run / CKPT_DIR / "damaged_step_00000006"  # the damaged copy is kept beside it, not deleted
    assert (kept / file).read_bytes() == damaged and "kept the damaged checkpoint" in caplog.text


def test_no_intact_checkpoint_is_refused_naming_each(copy_run, capsys, tiny_overrides):
    run = copy_run()
    for ckpt in list_checkpoints(run):
        _damage(ckpt / "state.pt", "truncated")
    before = snapshot(run)
    assert main(["train", *tiny_overrides, f"train.out_dir={run}", "--resume"]) == 2
    line = error_line(capsys)
    assert "no intact checkpoint" in line and "step_00000003" in line and "step_00000006" in line
    assert snapshot(run) == before


def test_checkpoint_without_checksums_is_still_checked_by_reading_it(copy_run):
    run = copy_run()
    ckpt = run / CKPT_DIR / "step_00000006"
    (ckpt / "checksums.json").unlink()  # a checkpoint of an earlier version
    daps.load_model(run)
    _damage(ckpt / "model.safetensors", "truncated")
    with pytest.raises(ValueError, match="model.safetensors"):
        daps.load_model(run)


def test_latest_naming_something_else_is_one_line(copy_run, capsys):
    run = copy_run()
    (run / CKPT_DIR / "latest").write_text("../../etc\n")
    assert main(["eval", str(run)]) == 2
    assert "latest" in error_line(capsys)


# --------------------------------------------------------------------------------------------------
# Divergence


def test_huge_learning_rate_stops_with_exit_3_and_writes_no_checkpoint(tmp_path, capsys, tiny_overrides, no_plots):
    run = tmp_path / "run"
    argv = ["train", *tiny_overrides, "optim.lr=1e9", "train.steps=12", f"train.out_dir={run}"]
    assert main(argv) == 3
    assert "diverged" in error_line(capsys)
    assert not (run / "summary.json").exists() and not list_checkpoints(run)


def test_skipped_updates_stop_the_run_and_keep_the_last_good_checkpoint(
    tmp_path, capsys, tiny_overrides, no_plots, nan_gradients
):
    calls = nan_gradients(lambda step: step > 4)
    run = tmp_path / "run"
    argv = ["train", *tiny_overrides, "train.steps=12", "train.max_skipped_steps=4", f"train.out_dir={run}"]
    assert main(argv) == 3
    line = error_line(capsys)
    assert "diverged at step 8" in line and "4 consecutive updates" in line and "step_00000003" in line
    assert [c.name for c in list_checkpoints(run)] == ["step_00000003"]  # step 6 came after a skipped update
    verify_checkpoint(run / CKPT_DIR / "step_00000003")
    assert len(calls) == 8


def test_a_run_stopped_during_skipped_updates_resumes_to_the_same_divergence(
    tmp_path, capsys, tiny_overrides, no_plots, nan_gradients
):
    """The streak of skipped updates travels with the final checkpoint of a ``train.stop_after`` run: the resumed
    run stops where the uninterrupted one did (step 8 above), not 2 steps later."""
    calls = nan_gradients(lambda step: step > 4)
    run = tmp_path / "run"
    argv = ["train", *tiny_overrides, "train.steps=12", "train.max_skipped_steps=4", f"train.out_dir={run}"]
    assert main([*argv, "train.stop_after=6"]) == 0  # stopped after 2 skipped updates (steps 5 and 6)
    assert main([*argv, "--resume"]) == 3
    assert "diverged at step 8" in error_line(capsys) and len(calls) == 8


def test_config_with_wrong_types_is_one_line_naming_file_and_key(copy_run, capsys):
    run = copy_run()
    ckpt = run / CKPT_DIR / "step_00000006"
    (ckpt / "checksums.json").unlink()  # as if hand-edited in a checkpoint of an earlier version
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["train"]["steps"] = "ten"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    assert main(["eval", str(run)]) == 2
    line = error_line(capsys)
    assert str(ckpt / "config.json") in line and "train.steps" in line


def test_metrics_are_cut_back_to_the_checkpoint_whatever_else_the_file_holds(tmp_path):
    from daps.train import truncate_metrics

    path = tmp_path / "metrics.jsonl"
    rows = [json.dumps({"split": "train", "step": s}) for s in range(1, 6)]
    path.write_bytes(("\n".join([rows[0], "5", rows[1], '{"step": 2, "cut off', rows[2], rows[3], rows[4]]) + "\n")
                     .encode() + b"\xff\xfe garbage\n")
    truncate_metrics(path, 3)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]
    # a damaged byte inside a kept row's string is mended (readers open the file as UTF-8); an intact file is
    # not rewritten (a finished run resumed writes nothing)
    path.write_bytes(b'{"split": "tr\xffain", "step": 1}\n')
    truncate_metrics(path, 3)
    assert json.loads(path.read_text()) == {"split": "tr\ufffdain", "step": 1}
    mtime = path.stat().st_mtime_ns
    truncate_metrics(path, 3)
    assert path.stat().st_mtime_ns == mtime


def test_checkpoint_files_follow_the_umask(trained_run):
    from daps.runfolder import UMASK

    ckpt = trained_run / CKPT_DIR / (trained_run / CKPT_DIR / "latest").read_text().strip()
    for name in ("model.safetensors", "config.json", "state.pt"):
        assert (ckpt / name).stat().st_mode & 0o777 == 0o666 & ~UMASK, name  # safetensors alone would give 0600


def test_a_folder_of_another_kind_is_named_as_such(tmp_path):
    from daps.runfolder import write_marker

    out = tmp_path / "lab"
    out.mkdir()
    write_marker(out, "gradlab")
    (out / "gradlab.md").write_text("report")
    with pytest.raises(OutputFolderError, match="it is a daps gradlab folder"):
        prepare_output_folder(out, "prior", overwrite=True, entries=())
    assert (out / "gradlab.md").read_text() == "report"


def test_checkpoints_are_ordered_by_step_number_not_by_name(tmp_path):
    for name in ("step_00000009", "step_100000000", "step_99999999", "step_00000010"):
        (tmp_path / CKPT_DIR / name).mkdir(parents=True)
    (tmp_path / CKPT_DIR / "step_00000011").write_text("a file, not a checkpoint")
    (tmp_path / CKPT_DIR / "step_notes").mkdir()  # not a checkpoint's name: never listed, so never pruned
    assert [c.name for c in list_checkpoints(tmp_path)] == [
        "step_100000000", "step_99999999", "step_00000010", "step_00000009"
    ]


def test_an_existing_file_of_another_kind_is_named_before_overwrite_is_suggested(tmp_path):
    from daps.runfolder import check_output_file

    mine = tmp_path / "notes.png"
    mine.write_text("mine")
    for overwrite in (False, True):  # --overwrite would not replace it: not suggested
        with pytest.raises(ValueError, match="exists and is not a daps figure; refusing to replace it"):
            check_output_file(mine, ".png", overwrite, "--plot", is_ours=lambda p: False, what="a daps figure")
    with pytest.raises(ValueError, match="pass --overwrite"):
        check_output_file(mine, ".png", False, "--plot", is_ours=lambda p: True, what="a daps figure")
    assert mine.read_text() == "mine"


def test_a_failed_first_write_takes_back_the_parent_folders_it_made(tmp_path, tiny_overrides, capsys):
    """``daps train`` and ``daps compare`` into ``new/deeper/run`` with the data missing: exit 2 and no folder left,
    not the run folder and not the two parents the call created; a parent that was there before stays, also when
    it was empty. Fails on: removing only the run folder (``new/deeper`` left behind)."""
    from daps.cli import main

    empty = tmp_path / "no-data"
    empty.mkdir()
    overrides = [o for o in tiny_overrides if not o.startswith("data.")]
    data = ["data.name=mnist", f"data.data_dir={empty}", "data.download=false"]
    kept = tmp_path / "kept"  # the user's (empty) folder
    kept.mkdir()
    for argv in (["train", *overrides, *data, f"train.out_dir={tmp_path / 'new' / 'deeper' / 'run'}"],
                 ["compare", "--methods", "daps", "--steps", "2", "--out", str(tmp_path / "new" / "deeper" / "cmp"),
                  *[o for o in overrides if not o.startswith("train.steps=")], *data],
                 ["train", *overrides, *data, f"train.out_dir={kept / 'a' / 'run'}"]):
        assert main(argv) == 2, argv
        assert "not found" in capsys.readouterr().err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["kept", "no-data"], argv
    assert kept.is_dir() and list(kept.iterdir()) == []


def test_a_dangling_link_as_an_output_folder_is_named_before_any_work(tmp_path, capsys, monkeypatch):
    """An output folder that is a symbolic link to nothing is one line naming the link and its target for every
    command that makes a folder (``train``, ``compare``, ``prior train``, ``robot train``, ``robot track-train``,
    ``gradlab``), before any work. Fails on: "[Errno 17] File exists" from a late mkdir."""
    from daps.cli import main

    link = tmp_path / "d"
    link.symlink_to(tmp_path / "nowhere")
    missing = str(tmp_path / "missing")
    for argv in (["train", "--preset", "mnist5k-demo", f"train.out_dir={link}"],
                 ["compare", "--preset", "mnist5k-demo", "--steps", "2", "--out", str(link)],
                 ["gradlab", "--out", str(link)]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "is a symbolic link to nothing" in err and "nowhere" in err, (argv, err)
    # priors, policies and trackers check their folder (prepare_folder) before encoding or decoding anything
    from daps.errors import UserError
    from daps.prior.run import PriorConfig, prepare_folder

    with pytest.raises(UserError, match="is a symbolic link to nothing"):
        prepare_folder(PriorConfig(codes=missing, out_dir=str(link)), resume=False, overwrite=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"] and link.is_symlink()


def test_a_users_checkpoints_folder_beside_a_daps_config_is_not_a_run_of_an_earlier_daps(tmp_path, capsys,
                                                                                          tiny_overrides):
    """A project folder with a config from ``daps presets`` and a ``checkpoints/`` of the user's own (another tool's
    weights): every top-level name is one a run writes, but a run of an earlier daps held only ``step_*`` folders
    and ``latest`` in ``checkpoints/``. ``--overwrite`` refuses it and touches nothing (it deleted the weights)."""
    folder = tmp_path / "project"
    (folder / CKPT_DIR).mkdir(parents=True)
    assert main(["presets", "mnist5k-demo"]) == 0
    (folder / "config.json").write_text(capsys.readouterr().out)
    (folder / CKPT_DIR / "my_model.ckpt").write_bytes(b"weeks of GPU time")
    before = snapshot(folder)
    assert main(["train", *tiny_overrides, f"train.out_dir={folder}", "--overwrite"]) == 2
    assert "not a daps train folder" in capsys.readouterr().err
    assert snapshot(folder) == before


def test_a_run_of_an_earlier_daps_is_still_recognised_by_its_checkpoints(tmp_path):
    """The other side of the rule above: ``step_XXXXXXXX`` folders, ``latest`` and their temporaries are a run's."""
    from daps.runfolder import is_output_folder

    folder = tmp_path / "old_run"
    (folder / CKPT_DIR / "step_00000100").mkdir(parents=True)
    (folder / CKPT_DIR / ".step_00000200.tmp-123").mkdir()
    (folder / CKPT_DIR / "latest").write_text("step_00000100\n")
    (folder / "config.json").write_text(json.dumps({"method": "daps", "train": {}, "data": {}}))
    assert is_output_folder(folder, "train")
    (folder / CKPT_DIR / "notes.txt").write_text("mine")
    assert not is_output_folder(folder, "train")
    (folder / CKPT_DIR / "notes.txt").unlink()
    (folder / "tensorboard").mkdir()  # came with the marker: never in a run of an earlier daps
    assert not is_output_folder(folder, "train")


def test_a_lock_file_that_is_a_link_is_never_followed(tmp_path, capsys, tiny_overrides, no_plots):
    """An output folder holding only ``.lock``, a link to a file of the user's: the folder is not empty (a link is
    not daps's lock), and the lock never opens through a link (it truncated the target to write its pid)."""
    precious = tmp_path / "precious.txt"
    precious.write_text("years of work\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK).symlink_to(precious)
    assert main(["train", *tiny_overrides, f"train.out_dir={out}"]) == 2
    assert "not a daps run folder" in capsys.readouterr().err
    assert precious.read_text() == "years of work\n"
    with pytest.raises(OutputFolderError, match="symbolic link"):
        FolderLock(out).acquire()
    assert precious.read_text() == "years of work\n" and (out / LOCK).is_symlink()


def test_kill_test_reads_where_each_kill_landed():
    """``scripts/kill_test.py --summarize`` counts, from the state each killed attempt left: no folder, a folder
    without a checkpoint, a checkpoint before the last step, the last step's checkpoint (for compare: both runs').
    Fails on: a compare counted as finished when one of its runs is, or the last step read as any checkpoint."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("kill_test", Path(__file__).parent.parent / "scripts/kill_test.py")
    kill_test = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kill_test)

    def state(step: int, ckpt: int | None) -> str:
        return (f"last_logged_step={step} checkpoint={None if ckpt is None else f'step_{ckpt:08d}'} end_files=0 "
                "temporaries=0")

    afters = ["no folder yet", state(0, None), state(250, 200), state(400, 400), state(400, 400)]
    attempts = [{"outcome": "killed", "after": a} for a in afters] + [{"outcome": "finished (exit 0)", "after": ""}]
    assert list(kill_test.landed({"run": "prior", "attempts": attempts}).values()) == [1, 1, 1, 2]
    both, one = f"daps/seed0: {state(200, 200)}; vqvae/seed0: {state(200, 200)}", f"daps/seed0: {state(200, 200)}"
    attempts = [{"outcome": "killed", "after": a} for a in (both, one, f"{one}; vqvae/seed0: {state(0, None)}")]
    assert list(kill_test.landed({"run": "compare", "attempts": attempts}).values()) == [0, 0, 2, 1]


def test_kill_test_kills_workers_in_sessions_of_their_own(tmp_path):
    """``kill_test.py --run ddp`` kills torchrun and its workers, which run in sessions of their own (a signal to the
    launcher or its process group leaves them training). Fails on: SIGKILL to the launcher alone (the old kill)."""
    import importlib.util
    import time

    spec = importlib.util.spec_from_file_location("kill_test", Path(__file__).parent.parent / "scripts/kill_test.py")
    kill_test = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kill_test)
    pid_file = tmp_path / "worker.pid"
    launcher = (  # a launcher whose worker starts a session of its own and a child of its own
        "import subprocess, sys, time\n"
        "w = subprocess.Popen([sys.executable, '-c', 'import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, \"-c\", \"import time; time.sleep(60)\"]); time.sleep(60)'], "
        "start_new_session=True)\n"
        f"open({str(pid_file)!r}, 'w').write(str(w.pid))\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", launcher])
    for _ in range(200):  # the worker and its child are up
        if pid_file.exists() and pid_file.read_text() and kill_test.descendants(int(pid_file.read_text())):
            break
        time.sleep(0.05)
    worker = int(pid_file.read_text())
    grandchild = kill_test.descendants(worker)
    assert kill_test.descendants(proc.pid) == [worker, *grandchild] and len(grandchild) == 1
    kill_test.kill_all(proc)
    assert proc.returncode == -9
    assert not kill_test.alive(worker) and not kill_test.alive(grandchild[0])
