"""Known answers for input checks and records found unguarded by a coverage sweep: split names other than
train/test, codes and labels that are not integers, the model card's ``daps eval`` flags against a run's own
validation row, the whole ``daps gradlab`` command, image files as inputs (unreadable ones, hidden ones, a photo's
EXIF orientation read as the folder datasets read it), each kind of checkpoint damage and a ``latest`` pointer that
names nothing, an H1 model file of another layout, a resume past the run's end, and prior / policy runs aimed at a
user's folder or file. Each docstring names the slip it fails on."""

from __future__ import annotations

import json
import shlex

import pytest
import torch

from daps.errors import UserError


@pytest.mark.parametrize("reader", ["lafan_windows", "sequence_windows", "labelled_split", "eval_set",
                                    "export_codes"])
def test_every_reader_of_a_split_refuses_one_that_is_not_train_or_test(reader, tmp_path):
    """``val`` was read as the test split by the two window readers (anything but ``"train"`` was test), and so by
    ``labelled_split``, ``eval_set`` and ``export_codes`` on window datasets. Each refuses it by name before it
    looks for data or a run. Fails on: the check left out of a window reader or ``export_codes`` (they would look
    for the data, or the run, first and say something else)."""
    import daps
    from daps.codes import export_codes
    from daps.data import eval_set, labelled_split
    from daps.data.motion import lafan_windows
    from daps.data.sequences import sequence_windows

    data = daps.get_preset("lafan1-h1", "daps").data  # windows: labelled_split and eval_set reach the window reader
    data.data_dir = str(tmp_path / "nothing here")
    call = {
        "lafan_windows": lambda: lafan_windows("val", data),
        "sequence_windows": lambda: sequence_windows("val", data),
        "labelled_split": lambda: labelled_split(data, "val"),
        "eval_set": lambda: eval_set(data, "val", 0, 10, torch.device("cpu")),
        "export_codes": lambda: export_codes(tmp_path / "no run", split="val"),
    }[reader]
    with pytest.raises(UserError, match="unknown split 'val'; choose one of: train, test"):
        call()


def _codes_file(path, codes: torch.Tensor, labels: torch.Tensor):
    from safetensors.torch import save_file

    from daps.codes import FORMAT, HEADER_KEY

    meta = {"format": FORMAT, "vocab_size": 4, "num_tokens": 2, "class_names": ["a", "b"]}
    save_file({"codes": codes, "labels": labels}, str(path), metadata={HEADER_KEY: json.dumps(meta)})
    return path


@pytest.mark.parametrize("which", ["codes", "labels"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bool])
def test_codes_files_with_tensors_that_are_not_integers_are_refused(tmp_path, which, dtype):
    """Float codes were truncated (2.7 -> code 2) and boolean ones read as codes 0/1: a foreign file either way.
    Fails on: the dtype check removed (the file loads)."""
    from daps.codes import load_codes

    good = {"codes": torch.tensor([[[0, 3]], [[1, 2]]]), "labels": torch.tensor([0, 1])}
    path = _codes_file(tmp_path / "c.safetensors", good["codes"], good["labels"])
    assert load_codes(path).codes.tolist() == [[[0, 3]], [[1, 2]]]  # the same file with integers loads
    bad = dict(good, **{which: good[which].to(dtype)})
    path = _codes_file(tmp_path / "bad.safetensors", bad["codes"], bad["labels"])
    with pytest.raises(UserError, match=f"bad.safetensors: the tensor '{which}' is torch.{str(dtype)[6:]}, not "
                                        "integers"):
        load_codes(path)


@pytest.mark.parametrize("which", ["codes", "labels"])
def test_save_codes_refuses_tensors_that_are_not_integers(tmp_path, which):
    """A CodeSet made in Python with float codes or labels (a prior's probabilities, a mean) was written after a
    silent ``.long()``: 2.7 became code 2 and the file loaded as valid codes. Fails on: save_codes without the
    dtype check of check_codes."""
    from daps.codes import CodeSet, save_codes

    meta = {"format": 1, "vocab_size": 4, "num_tokens": 2, "class_names": ["a", "b"]}
    good = {"codes": torch.tensor([[[0, 3]], [[1, 2]]]), "labels": torch.tensor([0, 1])}
    bad = dict(good, **{which: good[which].float() + 0.7})
    with pytest.raises(UserError, match=f"the codes to save: the tensor '{which}' is torch.float32, not integers"):
        save_codes(CodeSet(bad["codes"], bad["labels"], meta), tmp_path / "c.safetensors")
    assert list(tmp_path.iterdir()) == []
    assert save_codes(CodeSet(good["codes"].int(), good["labels"], meta), tmp_path / "c.safetensors").is_file()


def test_codes_stored_as_int32_still_load_as_int64(tmp_path):
    """Integer codes of any width load, as int64. Fails on: a dtype check that refuses all but int64."""
    from daps.codes import load_codes

    path = _codes_file(tmp_path / "c.safetensors", torch.tensor([[[0, 3]]], dtype=torch.int32),
                       torch.tensor([1], dtype=torch.uint8))
    codes = load_codes(path)
    assert codes.codes.dtype == codes.labels.dtype == torch.int64 and codes.labels.tolist() == [1]


@pytest.mark.parametrize("dtype", [torch.uint16, torch.uint32, torch.uint64])
def test_codes_of_unsigned_widths_load_and_save(tmp_path, dtype):
    """Codes stored as uint16 (a compact file of one's own) loaded, as int64, until the integer check moved into
    check_codes, whose range checks then ran on the raw tensor: NotImplementedError '"min_all" not implemented for
    'UInt16''. Fails on: check_codes reading the range of codes it has not widened."""
    from daps.codes import CodeSet, load_codes, save_codes

    path = _codes_file(tmp_path / "c.safetensors", torch.tensor([[[0, 3]], [[2, 1]]]).to(dtype),
                       torch.tensor([1, 0]).to(dtype))
    codes = load_codes(path)
    assert codes.codes.dtype == codes.labels.dtype == torch.int64
    assert codes.codes.tolist() == [[[0, 3]], [[2, 1]]] and codes.labels.tolist() == [1, 0]
    out = save_codes(CodeSet(codes.codes.to(dtype), codes.labels.to(dtype), codes.meta), tmp_path / "d.safetensors")
    assert torch.equal(load_codes(out).codes, codes.codes)
    with pytest.raises(UserError, match=r"codes outside \[0, 4\)"):
        save_codes(CodeSet(torch.full((1, 1, 2), 4).to(dtype), codes.labels[:1], codes.meta),
                   tmp_path / "e.safetensors")


def _rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_daps_eval_with_the_cards_flags_repeats_the_runs_last_validation_row(trained_run, capsys):
    """The model card's flags (``daps.hub.eval_flags``: the test split, train.eval_examples, train.eval_batch_size
    and the seed train.seed + 12345) make ``daps eval`` give the numbers of the run's last validation row. The
    control: one seed further, the encoder's draws differ and so does log p. Fails on: another validation seed in
    training or in the card, another subset or batch size."""
    from daps.checkpoint import read_config
    from daps.cli import main
    from daps.hub import NOT_METRICS, eval_flags

    cfg = read_config(trained_run / "config.json")
    last = [row for row in _rows(trained_run) if row.get("split") == "val"][-1]
    assert last["step"] == cfg.train.steps
    flags = shlex.split(eval_flags(cfg))
    assert main(["eval", str(trained_run), *flags, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    scores = sorted(k for k in last if k not in NOT_METRICS and isinstance(last[k], float))
    assert "log_p" in scores and len(scores) >= 3
    assert {k: result[k] for k in scores} == pytest.approx({k: last[k] for k in scores}, rel=1e-6, abs=1e-6)
    seed = flags.index("--seed") + 1
    flags[seed] = str(int(flags[seed]) + 1)
    assert main(["eval", str(trained_run), *flags, "--json"]) == 0
    other = json.loads(capsys.readouterr().out)
    assert abs(other["log_p"] - last["log_p"]) > 1e-4



def test_daps_gradlab_writes_and_prints_its_report_with_the_resampled_rows(tmp_path, capsys, single_thread):
    """The whole ``daps gradlab`` command (its pieces are tested on their own): exit 0, the report printed and
    written (markdown, JSON, figure, marker), the command recorded, one row per default estimator and two per
    ``--resample`` size (systematic and multinomial) each compared with the full-K DAPS update; a size that is
    not a number is one line. Fails on: the resampled estimators not added, the report not printed."""
    from daps.cli import main
    from daps.runfolder import read_marker

    out = tmp_path / "lab"
    argv = ["--draws", "2", "--num-samples", "4", "--pretrain-steps", "0", "--resample", "1,2", "--out", str(out)]
    assert main(["gradlab", *argv]) == 0
    printed = capsys.readouterr().out
    assert printed == (out / "gradlab.md").read_text() + "\n"
    assert read_marker(out) == "gradlab" and (out / "gradlab.png").stat().st_size > 1000
    assert f"Command: `daps gradlab {' '.join(argv)}`" in printed
    rows = [row["estimator"] for row in json.loads((out / "gradlab.json").read_text())["rows"]]
    resampled = [f"daps resampled m={m} {kind} (K=4, eta=1)" for m in (1, 2) for kind in ("systematic", "multinomial")]
    assert rows[-4:] == resampled and rows[0] == "reinforce-loo (K=4)" and "daps (K=4, eta=1)" in rows
    assert all(f"| {name} | daps (K=4, eta=1) |" in printed for name in resampled)
    assert main(["gradlab", "--resample", "1,two", "--out", str(tmp_path / "other")]) == 2
    assert "--resample takes sizes like 1,2,4, got '1,two'" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_image_inputs_name_what_is_wrong_with_them(trained_run, tmp_path):
    """``daps.load_images`` and ``image_files``: a path that is neither file nor folder, a folder without images
    (a text file does not count), an empty list and a file that is not an image are each one UserError naming it;
    a folder's images are taken sorted by name, with the folder datasets' suffixes and without hidden files. Fails
    on: a check removed (PIL's or torch's own exception instead), the suffix compared case-sensitively (``a.PNG``
    skipped), or a hidden ``._a.PNG`` read (the folder refused for one metadata file)."""
    from daps.checkpoint import load_model
    from daps.inputs import image_files, load_images

    with pytest.raises(UserError, match="missing is neither an image file nor a folder"):
        image_files(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(UserError, match=r"holds no image files \(\.bmp, \.gif, \.jpeg, \.jpg"):
        image_files(tmp_path)
    with pytest.raises(UserError, match="no image files given"):
        image_files([])
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n but nothing after the signature")
    (tmp_path / "a.PNG").write_bytes((tmp_path / "b.png").read_bytes())
    (tmp_path / "._a.PNG").write_bytes(b"AppleDouble metadata, not an image")  # macOS's shadow file: left out
    (tmp_path / "c.pgm").write_bytes(b"P5 1 1 255\n\x00")  # the suffixes of the folder datasets
    assert [p.name for p in image_files(tmp_path)] == ["a.PNG", "b.png", "c.pgm"]
    with pytest.raises(UserError, match="a.PNG is not a readable image"):
        load_images(tmp_path, load_model(trained_run))


@pytest.mark.parametrize("damage, message", [
    (lambda c: (c / "state.pt").unlink(), "step_00000006/state.pt is missing"),
    (lambda c: (c / "config.json").write_bytes(b""), "config.json is empty"),
    (lambda c: (c / "checksums.json").write_text("{not json"), "checksums.json is damaged"),
    (lambda c: (c / "checksums.json").write_text("[]"), "checksums.json is damaged"),
    (lambda c: (c / "checksums.json").write_text('{"files": {}}'), "checksums.json has no checksum for "
                                                                   "model.safetensors"),
    (lambda c: (c / "checksums.json").write_text('{"files": ["model.safetensors"]}'), "has no checksum for"),
])
def test_each_kind_of_checkpoint_damage_is_named_and_resume_falls_back(copy_run, caplog, damage, message):
    """``verify_checkpoint`` names the file and what is wrong with it (a missing or empty file, checksums that are
    not JSON, not an object or without an entry), and ``find_resumable`` skips that checkpoint for the previous
    intact one, saying why. Fails on: a branch of the check removed (the damaged checkpoint passes, and would be
    resumed)."""
    from daps.checkpoint import CheckpointError, find_resumable, verify_checkpoint

    run = copy_run()
    newest = run / "checkpoints" / "step_00000006"
    damage(newest)
    with pytest.raises(CheckpointError, match=message):
        verify_checkpoint(newest)
    with caplog.at_level("WARNING", logger="daps"):
        assert find_resumable(run) == run / "checkpoints" / "step_00000003"
    assert "cannot resume from step_00000006: " in caplog.text and message.split("/")[-1] in caplog.text


def test_a_latest_pointer_that_names_nothing_or_cannot_be_read_is_reported(copy_run, caplog):
    """``checkpoints/latest`` naming a folder that is not there, or being a folder itself: resolving the run is one
    CheckpointError naming ``latest``; resuming warns with it and takes the newest intact checkpoint by number.
    Fails on: the warning dropped (a resume from another checkpoint than ``latest`` without a word), or the
    unreadable pointer passed on as an OSError."""
    from daps.checkpoint import CheckpointError, find_resumable, resolve_checkpoint

    run = copy_run()
    latest = run / "checkpoints" / "latest"
    latest.write_text("step_00000099\n")
    with pytest.raises(CheckpointError, match="latest names 'step_00000099', which is not a checkpoint folder"):
        resolve_checkpoint(run)
    with caplog.at_level("WARNING", logger="daps"):
        assert find_resumable(run) == run / "checkpoints" / "step_00000006"
    assert "latest names 'step_00000099'" in caplog.text
    latest.unlink()
    latest.mkdir()
    with pytest.raises(CheckpointError, match="latest is unreadable"):
        resolve_checkpoint(run)


def _h1_variant(tmp_path, old: str, new: str):
    """A copy of the shared H1 model with ``old`` replaced by ``new`` everywhere (a joint's actuator follows its
    name), its meshes read from the shared assets; ``old`` None: a one-body model with a free joint instead."""
    import os
    from pathlib import Path

    from daps.motion.h1 import import_mujoco

    source = Path(os.environ.get("DAPS_DATA_DIR", "")) / "unitree_h1_mjcf" / "h1.xml"
    if not source.is_file():
        pytest.skip("needs the H1 model under $DAPS_DATA_DIR/unitree_h1_mjcf")
    try:
        import_mujoco()
    except UserError as err:
        pytest.skip(str(err))
    text = source.read_text()
    if old is None:
        text = '<mujoco><worldbody><body name="pelvis"><freejoint/><geom size="0.1"/></body></worldbody></mujoco>'
    else:
        assert old in text
        text = text.replace('meshdir="assets"', f'meshdir="{source.parent / "assets"}"').replace(old, new)
    path = tmp_path / "h1.xml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("old, new, message", [
    ('"left_knee_joint"', '"left_knee_hinge"', "joint left_knee_joint is missing or not at qpos[10]"),
    ('name="left_ankle_link"', 'name="left_foot"', "body left_ankle_link is missing"),
    (None, None, r"not the Unitree H1 model \(nq=7, expected 27\)"),
    ("<mujoco", "<mujoco-model", "MuJoCo cannot load it"),
])
def test_a_model_file_that_is_not_the_h1_is_named_with_what_differs(tmp_path, old, new, message):
    """``load_h1(path=...)`` checks the layout that kinematics and the features rely on: the free root joint,
    each of the 19 hinges at its qpos address, every body by name; a file MuJoCo cannot read is one line too.
    Fails on: a check of the layout removed (a renamed joint would be read as another one's angle)."""
    from daps.motion.h1 import load_h1

    if message.startswith("joint"):
        message = message.replace("[", r"\[").replace("]", r"\]")
    with pytest.raises(UserError, match=message):
        load_h1(path=_h1_variant(tmp_path, old, new))
    with pytest.raises(FileNotFoundError, match="H1 model file .*nothing.xml does not exist"):
        load_h1(path=tmp_path / "nothing.xml")


@pytest.mark.usefixtures("offline")
def test_a_resume_past_the_runs_end_and_a_file_as_run_folder_are_one_line(copy_run, tiny_overrides, tmp_path,
                                                                          capsys):
    """``--resume`` with ``train.steps`` lowered below the newest checkpoint's step says both steps instead of
    training backwards or truncating the run; ``train.out_dir`` naming a file is refused, and the file kept.
    Fails on: either check removed."""
    from daps.cli import main

    run = copy_run()
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    assert main(["train", *tiny_overrides, "train.steps=3", f"train.out_dir={run}", "--resume"]) == 2
    assert f"cannot resume {run} at step 6: the run is set to stop at step 3" in capsys.readouterr().err
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before
    file = tmp_path / "notes.txt"
    file.write_text("mine")
    assert main(["train", *tiny_overrides, f"train.out_dir={file}"]) == 2
    assert f"train.out_dir {file} exists and is not a folder" in capsys.readouterr().err
    assert file.read_text() == "mine"


@pytest.fixture(scope="module")
def small_codes(trained_run, tmp_path_factory):
    from daps.codes import export_codes, save_codes

    path = tmp_path_factory.mktemp("codes") / "codes.safetensors"
    save_codes(export_codes(trained_run, max_inputs=40), path)
    return path


@pytest.mark.parametrize("command", ["prior", "robot"])
@pytest.mark.parametrize("case, flags, message", [
    ("folder", [], "--out OUT exists and is not a daps KIND folder; choose another folder"),
    ("folder", ["--overwrite"], "--out OUT exists and is not a daps KIND folder (no .daps marker); daps neither "
                                "writes into it nor replaces it"),
    ("folder", ["--resume"], "--out OUT exists and is not a daps KIND folder"),
    ("file", [], "--out OUT exists and is not a folder"),
    ("folder", ["--resume", "--overwrite"], "--resume and --overwrite cannot be combined"),
])
def test_prior_and_policy_runs_never_write_into_a_users_folder_or_file(small_codes, tmp_path, capsys, command, case,
                                                                       flags, message):
    """``prior train`` / ``robot train --out`` a folder of the user's (without the run marker) or a file: one line,
    exit 2, whatever the flags, and the folder or file is as it was. Fails on: a check of the run folder removed (the
    user's folder written into or emptied)."""
    from daps.cli import main

    out = tmp_path / ("mine" if case == "folder" else "mine.txt")
    if case == "folder":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    else:
        out.write_text("mine")
    source = str(small_codes) if command == "prior" else str(tmp_path / "tokenizer run")
    assert main([command, "train", source, "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert message.replace("OUT", str(out)).replace("KIND", command) in err and len(err.splitlines()) == 1
    assert (out / "notes.txt" if case == "folder" else out).read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_load_images_reads_a_photo_as_the_folder_datasets_do(tmp_path):
    """A phone stores a portrait photo as landscape pixels with EXIF orientation 6 (rotate 90 degrees to show). The
    folder datasets read it as stored (as torchvision's loader does; the ImageNet protocols are defined so), and
    ``load_images`` must give a model the same input for the same file, or a tokenizer trained on a folder of such
    photos would be asked to encode them turned. Fails on: the orientation applied in one of the two paths only."""
    from PIL import Image

    from daps.data import dataset_spec
    from daps.data.imagefolder import ImageFolderDataset
    from daps.inputs import load_images

    stored = Image.new("RGB", (40, 20), (255, 0, 0))
    stored.paste((0, 0, 255), (20, 0, 40, 20))  # left half red, right half blue, as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    (tmp_path / "val" / "a").mkdir(parents=True)
    stored.save(tmp_path / "val" / "a" / "photo.png", exif=exif)

    class RGB16:  # just what load_images reads of a model: an own-folder tokenizer's inputs of 16 x 16
        class input_spec:
            image_shape = (3, 16, 16)

        class config:
            class data:
                name = "imagefolder"

    x = load_images(tmp_path / "val" / "a", RGB16)
    image, _, _ = ImageFolderDataset(tmp_path / "val", 16, train=False)[0]
    assert torch.equal(x[0], dataset_spec("imagefolder").standardize(image[None])[0])
    left, right = x[0, :, :, :4].mean((1, 2)), x[0, :, :, -4:].mean((1, 2))  # as stored: red left, blue right
    assert left[0] > left[2] and right[2] > right[0]


def test_a_broken_folder_read_by_loader_workers_is_still_one_line(tmp_path, capsys):
    """16 unreadable files in a row stop a folder dataset. Read by DataLoader workers (the default of the natural-
    image presets), torch re-raised the worker's OSError with the worker's traceback as its message: a dozen lines
    after "daps fid-stats: error:". The CLI prints the worker's own message. Fails on: ``str(err)`` printed as it is
    (the traceback), or the worker's message lost."""
    from daps.cli import main

    for split in ("train", "val"):
        (tmp_path / "bad" / split / "a").mkdir(parents=True)
        for i in range(20):
            (tmp_path / "bad" / split / "a" / f"{i:02d}.jpg").write_text("not an image")
    argv = ["fid-stats", "imagefolder", "--data-dir", str(tmp_path / "bad"), "--image-size", "32", "--out",
            str(tmp_path / "s.npz")]  # read by the folder datasets' default loader workers
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("daps fid-stats: error: 16 consecutive unreadable image files starting at ") and \
        "check the data folder" in err
    assert not (tmp_path / "s.npz").exists()
