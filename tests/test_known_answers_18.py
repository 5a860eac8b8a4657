"""Mutation sweep 18: known answers for the helpers the last session added (``first_few`` and ``did_you_mean`` in
daps/errors.py and their use by the config and prior settings, the command-line parser's hint for a value that starts
with '-', the output checks of daps/runfolder.py, ``run_folder`` / ``refuse_other_kind`` of daps/checkpoint.py,
``image_files``' warning and refusal, ``plot_line`` and the grid's row labels of daps/plots.py, ``is_integer_dtype``
and the tracker's minibatch warning), found no test guarding: a list of exactly ``shown`` names (no ``...``) and
the default of three; the two nearest keys of a section joined by "or", a name found in three other sections; a typo
in a section's name in ``compare``'s overrides; no hint naming a prior setting that is given by a flag; a special
file (a FIFO) where an output's folder would go; a checkpoint folder copied out of its run (no marker) loading; the
run folder, not its checkpoint, named when a folder is of another kind; a subfolder whose name ends in ``.png``; one
entry left out ("1 entry"); a folder of other files refused without a subfolder hint; a one-point series keeping the
caller's marker or format; RGB row labels black on white; a 24-character label kept whole and a longer one cut to
21 and "..."; labels centred on their rows at a large scale; complex dtypes not integers; the minibatch warning
with another number of environments. Each test names the plausible slip it fails on (each checked against its
mutant).
"""

from __future__ import annotations

import logging
import os
import shutil

import numpy as np
import pytest
import torch

from daps.errors import UserError

# --------------------------------------------------------------------------------------------------
# daps.errors: first_few and did_you_mean


def test_first_few_adds_dots_only_past_the_names_it_shows():
    """Three names are shown whole, a fourth becomes "...". Fails on: ``>=`` for ``>`` (three names with a ``...``
    after them), a default of four, or the ``...`` left out."""
    from daps.errors import first_few

    assert first_few(["a", "b", "c"]) == "a, b, c"
    assert first_few(iter(["a", "b", "c", "d"])) == "a, b, c, ..."
    assert first_few(["a", "b"], shown=1) == "a, ..."
    assert first_few([]) == ""


def test_did_you_mean_names_up_to_two_keys_joined_by_or():
    """``train.batch_siz`` is as near ``train.batch_size`` as ``train.eval_batch_size``: both are named, nearest first,
    with "or"; a name found in three other sections names the first two. Fails on: ``n=1`` (one key), a comma
    between them, or every section's key named."""
    from daps.config_io import _leaf_fields
    from daps.errors import did_you_mean
    from daps.presets import get_preset

    keys = list(_leaf_fields(get_preset("mnist")))
    assert did_you_mean("train.batch_siz", keys) == " (did you mean train.batch_size or train.eval_batch_size?)"
    assert did_you_mean("train.kind", keys) == " (did you mean decoder.kind or daps.beta.kind?)"
    assert did_you_mean("x.steps", ["a.steps", "b.steps", "c.steps"]) == " (did you mean a.steps or b.steps?)"


def test_a_typo_in_a_section_of_compares_overrides_names_the_section(tmp_path):
    """``daps compare ... trian.steps=3``: the section is misspelt, and the message names the nearest section. Fails
    on: the hint dropped, or the whole key compared with the section names (which finds none)."""
    from daps.compare import plan_runs

    with pytest.raises(UserError, match=r"^unknown config key 'trian\.steps' \(did you mean train\?\); sections: "):
        plan_runs("mnist", ["daps"], 10, [0], tmp_path, ["trian.steps=3"])


def test_a_prior_settings_hint_never_names_a_setting_given_by_a_flag():
    """``out_dri=runs/p`` is near ``out_dir``, which ``daps prior train`` takes as ``--out`` and refuses as a setting:
    the hint names only settings of the list that follows. Fails on: the hint drawn from every field."""
    from daps.prior.run import PriorConfig, apply_overrides

    with pytest.raises(UserError) as err:
        apply_overrides(PriorConfig(), ["out_dri=runs/p"])
    assert "did you mean" not in str(err.value) and "out_dir" not in str(err.value), err.value
    with pytest.raises(UserError, match=r"\(did you mean euler_steps\?\)"):
        apply_overrides(PriorConfig(), ["euler_step=4"])


# --------------------------------------------------------------------------------------------------
# daps.cli: the '-'-value hint


def test_the_minus_value_hint_holds_for_a_flag_with_a_short_name(capsys):
    """A flag with a short and a long name (``-v/--velocity``) is matched too, and the hint joins the value to the
    long name, a form argparse reads. Fails on: the pattern matching long flags only (no hint)."""
    from daps.cli import _Parser

    parser = _Parser(prog="daps x")
    parser.add_argument("-v", "--velocity")
    with pytest.raises(SystemExit) as exit:
        parser.parse_args(["-v", "-0.5,0,0"])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert ("argument -v/--velocity: expected one argument; a value that starts with '-' is joined to its flag: "
            "--velocity=-...") in err, err
    assert parser.parse_args(["--velocity=-0.5,0,0"]).velocity == "-0.5,0,0"


# --------------------------------------------------------------------------------------------------
# daps.runfolder and daps.checkpoint


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_an_output_under_a_special_file_is_refused(tmp_path):
    """A FIFO (or ``/dev/null``) where an output's folder would go is neither a folder nor a regular file; making the
    folder would fail after the work. Fails on: only regular files counted as in the way."""
    from daps.runfolder import OutputFolderError, check_output_file, refuse_precious

    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    with pytest.raises(UserError, match=f"{pipe} is not a folder"):
        check_output_file(pipe / "a.png", ".png", False)
    with pytest.raises(OutputFolderError, match=f"{pipe} is not a folder"):
        refuse_precious(pipe / "run", "--out")


def _last_checkpoint(run):
    return sorted((run / "checkpoints").glob("step_*"))[-1]


def test_a_checkpoint_copied_out_of_its_run_still_loads(trained_run, tmp_path):
    """A checkpoint folder copied elsewhere has no marker beside it: it stands for itself and is no folder of another
    kind. Fails on: a folder without a marker refused as "a daps None folder"."""
    import daps

    copy = tmp_path / "ckpt"
    shutil.copytree(_last_checkpoint(trained_run), copy)
    model = daps.load_model(copy)
    assert model.config.method == daps.load_model(trained_run).config.method


def test_a_folder_of_another_kind_is_named_by_its_run_not_its_checkpoint(trained_run, tmp_path, capsys):
    """``daps prior eval RUN`` on a training run says that RUN is a training run; the checkpoint it resolved RUN to
    is not what the user named. Fails on: the checkpoint folder named."""
    from daps.cli import main

    assert main(["prior", "eval", str(trained_run)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{trained_run} is a training run (daps train)" in err and "step_" not in err, err


# --------------------------------------------------------------------------------------------------
# daps.inputs: image_files


def test_a_subfolder_named_like_an_image_is_left_out_as_a_subfolder(tmp_path, caplog):
    """A folder ``more.png/`` beside the images is a subfolder, not an image file: named in the warning (one entry,
    in the singular), not read. Fails on: the file check dropped (PIL is asked to read a folder), "entries" for one,
    or the warning only for several."""
    from PIL import Image

    from daps.inputs import image_files

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "more.png").mkdir()
    with caplog.at_level(logging.WARNING, logger="daps"):
        assert [p.name for p in image_files(tmp_path)] == ["a.png"]
    assert ": 1 entry left out (only image files directly in the folder are read): more.png/" in caplog.text, \
        caplog.text


def test_a_folder_of_other_files_is_refused_without_a_subfolder_hint(tmp_path):
    """A folder holding only ``notes.txt`` holds no image files; there is no subfolder to suggest. Fails on: the hint
    written with no subfolders ("name one of " and nothing)."""
    from daps.inputs import image_files

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"holds no image files \([^)]*\)$"):
        image_files(tmp_path)


# --------------------------------------------------------------------------------------------------
# daps.plots: plot_line and row labels


def test_a_one_point_series_keeps_the_callers_marker_and_format():
    """``plot_line`` adds a marker to a lone point only where the caller gave none, by format or keyword. Fails on:
    either condition dropped ("o" drawn over the caller's)."""
    from daps import plots

    plt = plots._pyplot()
    fig, ax = plt.subplots()
    plots.plot_line(ax, [1.0], [2.0], "x")
    plots.plot_line(ax, [1.0], [2.0], marker="s")
    plots.plot_line(ax, [1.0], [2.0])
    plots.plot_line(ax, [1.0, 2.0], [2.0, 3.0])
    assert [line.get_marker() for line in ax.get_lines()] == ["x", "s", "o", "None"]
    plt.close(fig)


def _labelled(tmp_path, images, labels, name, scale=2):
    from PIL import Image

    from daps import plots

    plots.save_image_grid(images, tmp_path / f"{name}.png", columns=1, scale=scale, row_labels=labels)
    return np.asarray(Image.open(tmp_path / f"{name}.png"))


def test_rgb_row_labels_are_black_on_a_white_margin(tmp_path):
    """A colour grid's margin is white (255, 255, 255) and its labels black: an integer colour on an RGB image is
    red alone. Fails on: the grey-image colours used for RGB."""
    images = torch.zeros(2, 3, 8, 8) + 0.5
    img = _labelled(tmp_path, images, ["ant", "bee"], "rgb")
    margin = img.shape[1] - (1 + 9) * 2
    band = img[:, :margin].reshape(-1, 3).astype(int)
    assert (band[:, 0] == band[:, 1]).all() and (band[:, 1] == band[:, 2]).all()  # white, black and greys only
    assert (band == 255).all(axis=1).mean() > 0.5 and band.min() < 64


def test_row_labels_of_24_characters_are_kept_and_longer_ones_cut_to_21_and_dots(tmp_path):
    """A label of 24 characters is drawn whole; a longer one as its first 21 and "...". Fails on: ``<`` for ``<=``
    (24 characters cut), or the cut at 24 (27 characters drawn)."""
    images = torch.zeros(1, 1, 8, 8) + 0.5
    exact = "abcdefghijklmnopqrstuvwx"  # 24
    longer = exact + "yzABCD"
    assert len(exact) == 24
    whole = _labelled(tmp_path, images, [exact], "whole")
    assert not np.array_equal(whole, _labelled(tmp_path, images, [exact[:21] + "..."], "cut24"))
    assert np.array_equal(_labelled(tmp_path, images, [longer], "long"),
                          _labelled(tmp_path, images, [longer[:21] + "..."], "cut"))


def test_row_labels_are_centred_on_their_rows_at_a_large_scale(tmp_path):
    """At scale 8 each row's images span ``8 + 72 r`` to ``8 + 72 r + 63``; a label's ink is centred there within 2
    pixels. Fails on: the centre computed without the top gap, or with a gap of 1 pixel whatever the scale (4 pixels
    high)."""
    images = torch.zeros(2, 1, 8, 8) + 0.5
    img = _labelled(tmp_path, images, ["ox", "ox"], "big", scale=8)
    margin = img.shape[1] - (1 + 9) * 8
    ink = np.nonzero((img[:, :margin] < 128).any(axis=1))[0]
    for r in range(2):
        start = 8 + 72 * r
        rows = ink[(ink >= start) & (ink < start + 64)]
        assert len(rows) > 0
        assert abs((rows.min() + rows.max()) / 2 - (start + 31.5)) <= 2, (r, rows.min(), rows.max())


# --------------------------------------------------------------------------------------------------
# daps.functional.is_integer_dtype


def test_is_integer_dtype_of_every_kind_of_dtype():
    """Integers of any width and sign are integers; floats, complex numbers and booleans are not (a complex code
    2.7+0j would be truncated to 2 as a float is). Fails on: complex or bool left out of the refusal."""
    from daps.functional import is_integer_dtype

    for dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64):
        assert is_integer_dtype(dtype), dtype
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128,
                  torch.bool):
        assert not is_integer_dtype(dtype), dtype


# --------------------------------------------------------------------------------------------------
# daps.robot.tracker: the minibatch warning


def test_the_minibatch_warning_counts_environments_times_horizon(caplog):
    """With 4 environments x 8 frames a rollout holds 32 frames: minibatch 32 is one rollout (no warning), 33 is
    more. Fails on: a rollout counted otherwise (the sum of environments and horizon, ...)."""
    from daps.robot.tracker import TrackerConfig, train_tracker

    base = dict(envs=4, horizon=8, epochs=1, hidden=16, eval_every=2, ckpt_every=1, progress=False, frames=64,
                episode_seconds=10.0, out_dir="")
    with caplog.at_level(logging.WARNING, logger="daps"):
        for minibatch in (32, 33):
            with pytest.raises(UserError):  # an empty --out: refused right after the settings' checks
                train_tracker(TrackerConfig(**base, minibatch=minibatch))
    assert caplog.text.count("is more than a rollout") == 1
    assert "minibatch 33 is more than a rollout's 32 frames (envs 4 x horizon 8)" in caplog.text, caplog.text
