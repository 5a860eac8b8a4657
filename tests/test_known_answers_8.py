"""Known answers for behaviour that an eighth mutation sweep found no test guarding: the PNG ``Software`` reader and
the video tag search, which output files ``--overwrite`` may replace, what counts as content of an output folder,
emptying one and removing a killed writer's leftovers, compare's list settings written with ``x``, gradlab's size
limit and unbiased SNR, and the dimension sweep's grid, table cells, plotted centres and refusals. Each test names
the plausible slips it fails on (checked against the mutant for each slip no earlier test caught)."""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import pytest
import torch

# --------------------------------------------------------------------------------------------------
# Images and videos daps wrote


def _chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def _png(*chunks: bytes, signature: bytes = b"\x89PNG\r\n\x1a\n") -> bytes:
    """A PNG's bytes by hand: the signature, a 1x1 header, ``chunks``, the end."""
    header = _chunk(b"IHDR", (1).to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0]))
    return signature + header + b"".join(chunks) + _chunk(b"IEND", b"")


def test_png_software_is_read_from_its_chunk_behind_others_and_only_in_a_png(tmp_path):
    """The ``Software`` text of a hand-made PNG is found behind the header and another text chunk (fails when the
    reader skips no CRC after a chunk); the same bytes with a damaged signature are no PNG (fails when the signature
    is not checked); a daps PNG opened as a folder is unreadable, not daps's."""
    from daps.runfolder import is_daps_png, png_software

    path = tmp_path / "a.png"
    path.write_bytes(_png(_chunk(b"tEXt", b"Comment\x00hello"), _chunk(b"tEXt", b"Software\x00daps")))
    assert png_software(path) == "daps" and is_daps_png(path)
    path.write_bytes(_png(_chunk(b"tEXt", b"Software\x00daps"), signature=b"\x89PNG\r\n\x1a\x00"))
    assert png_software(path) is None and not is_daps_png(path)
    path.write_bytes(_png(_chunk(b"tEXt", b"Software\x00Matplotlib version3.8")))
    assert png_software(path) == "Matplotlib version3.8" and not is_daps_png(path)


def test_the_video_tag_is_found_across_a_block_border_and_far_into_the_file(tmp_path):
    """The comment ``written by daps`` is searched 1 MiB at a time: a tag split by the first block border (fails when
    the tail of the previous block is dropped) and a tag after 2.5 MiB (fails when only the first block is read) are
    found; a file holding only part of the tag is not daps's."""
    from daps.runfolder import VIDEO_COMMENT, is_daps_video

    tag = VIDEO_COMMENT.encode()
    split = tmp_path / "split.mp4"
    split.write_bytes(b"\0" * ((1 << 20) - 5) + tag + b"\0" * 10)
    far = tmp_path / "far.mp4"
    far.write_bytes(b"\0" * (5 << 19) + tag)
    part = tmp_path / "part.mp4"
    part.write_bytes(b"\0" * ((1 << 20) - 5) + tag[:-1])
    assert is_daps_video(split) and is_daps_video(far) and not is_daps_video(part)


def test_an_output_file_is_refused_for_what_it_is_before_overwrite_is_asked(tmp_path):
    """``check_output_file``: a dangling link is an existing file (fails when only ``exists()`` is asked); a user's
    file is refused as not daps's even without ``--overwrite`` (fails when ``is_ours`` is asked only with it, which
    would suggest an --overwrite that cannot work); a command without ``--overwrite`` never suggests it."""
    from daps.errors import UserError
    from daps.runfolder import check_output_file

    link = tmp_path / "gone.png"
    link.symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(UserError, match="already exists; choose another path"):
        check_output_file(link, ".png", None)
    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        check_output_file(link, ".png", False)
    mine = tmp_path / "holiday.png"
    mine.write_bytes(b"mine")
    with pytest.raises(UserError, match="is not a daps figure; refusing"):
        check_output_file(mine, ".png", False, "--out", lambda p: False, "a daps figure")
    with pytest.raises(UserError, match="never replaces"):
        check_output_file(mine, ".png", None, "--out", lambda p: True, "a daps figure")


# --------------------------------------------------------------------------------------------------
# Output folders: content, emptying, leftovers


def _mark(folder: Path, kind: str) -> Path:
    from daps.runfolder import write_marker

    folder.mkdir(parents=True, exist_ok=True)
    write_marker(folder, kind)
    return folder


def test_what_counts_as_content_of_a_folder(tmp_path):
    """``has_content``: a missing folder has none; an unmarked folder holding only the lock or the marker's own
    temporary has none (what a kill while creating it leaves); in an unmarked folder any other temporary-looking name
    is the user's; in a marked folder every temporary is daps's. Each case fails on its own slip: the lock not
    counted as daps's, the marker's temporary not recognised (or spelled without its leading dot), the marked
    condition dropped or made the only one."""
    from daps.runfolder import has_content

    assert not has_content(tmp_path / "missing")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / ".lock").write_text("1")
    assert not has_content(bare)
    (bare / "..daps.tmp-77").write_text("{")
    assert not has_content(bare)
    (bare / ".notes.tmp-5").write_text("mine")
    assert has_content(bare)
    marked = _mark(tmp_path / "marked", "train")
    (marked / ".lock").write_text("1")
    (marked / ".summary.tmp-5.json").write_text("{")
    assert not has_content(marked)
    (marked / "NOTES.md").write_text("mine")
    assert has_content(marked)


def test_clearing_a_folder_marks_it_first_and_keeps_only_the_lock_the_marker_and_the_users_files(tmp_path):
    """``clear_folder`` on a run made before the marker: afterwards the folder carries the ``train`` marker (fails
    when the marker is not written, or is deleted with the run's entries), the lock stays, the run's entries and
    temporaries are gone (fails when temporaries are kept, or the entry test is inverted). In a marked folder the
    user's notes are kept."""
    from daps.runfolder import RUN_ENTRIES, clear_folder, read_marker

    run = tmp_path / "run"
    (run / "checkpoints" / "step_00000002").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"method": "daps", "train": {}, "data": {}}))
    (run / "metrics.jsonl").write_text("{}\n")
    (run / ".lock").write_text("1")
    (run / ".summary.tmp-9.json").write_text("{")
    clear_folder(run, "train", "--out", RUN_ENTRIES)
    assert read_marker(run) == "train"
    assert sorted(p.name for p in run.iterdir()) == [".daps", ".lock"]
    (run / "summary.json").write_text("{}")
    (run / "NOTES.md").write_text("mine")
    clear_folder(run, "train", "--out", RUN_ENTRIES)
    assert sorted(p.name for p in run.iterdir()) == [".daps", ".lock", "NOTES.md"] and read_marker(run) == "train"


def test_remove_temporaries_returns_what_it_removed_and_skips_a_missing_folder(tmp_path):
    """``remove_temporaries``: the temporary file and folder, sorted, are returned and gone (fails when the list is
    not filled), others stay; a missing folder (a run without checkpoints yet) gives [] (fails without the check)."""
    from daps.runfolder import remove_temporaries

    folder = tmp_path / "f"
    (folder / ".step_00000004.old-12").mkdir(parents=True)
    (folder / ".a.tmp-3.json").write_text("{")
    (folder / "a.json").write_text("{}")
    assert remove_temporaries(folder) == [folder / ".a.tmp-3.json", folder / ".step_00000004.old-12"]
    assert [p.name for p in folder.iterdir()] == ["a.json"]
    assert remove_temporaries(tmp_path / "missing") == []


def test_leftovers_are_removed_from_any_marked_folder_and_its_checkpoints_only(tmp_path):
    """``remove_leftovers``: a ``robot``-marked run loses its temporaries in the folder and in ``checkpoints``
    (fails when the run is required to be a train folder, or either folder is skipped); a legacy train run without
    the marker loses them too (fails when only the marker is asked); a user's unmarked folder keeps its own."""
    from daps.checkpoint import remove_leftovers

    robot = _mark(tmp_path / "robot", "robot")
    (robot / "checkpoints").mkdir()
    leftovers = [robot / ".config.tmp-4.json", robot / "checkpoints" / ".step_00000002.tmp-4"]
    leftovers[0].write_text("{")
    leftovers[1].mkdir()
    remove_leftovers(robot)
    assert not any(p.exists() for p in leftovers)

    legacy = tmp_path / "legacy"
    (legacy / "checkpoints").mkdir(parents=True)
    (legacy / "config.json").write_text(json.dumps({"method": "daps", "train": {}, "data": {}}))
    (legacy / "checkpoints" / ".latest.tmp-8").write_text("step")
    remove_leftovers(legacy)
    assert not (legacy / "checkpoints" / ".latest.tmp-8").exists()

    user = tmp_path / "user"
    user.mkdir()
    (user / ".bashrc.old-2023").write_text("mine")
    remove_leftovers(user)
    assert (user / ".bashrc.old-2023").read_text() == "mine"


# --------------------------------------------------------------------------------------------------
# compare: list settings written with x


def test_compare_writes_list_settings_with_x_and_parsed_values_plainly():
    """``_canonical`` of ``decoder.hidden=064x64`` is ``64x64`` and of ``fsq.levels=8x5x5x5`` keeps all four
    values (fails when only the first x becomes a comma, or the list is joined by commas); a float is written
    plainly and a boolean lower-case (``_plain``); ``_override_text`` gives the train command's comma form."""
    from daps import get_preset
    from daps.compare import _canonical, _override_text, _plain

    cfg = get_preset("mnist", "fsq")
    assert _canonical(cfg, "decoder.hidden", "064x64") == "64x64"
    assert _canonical(cfg, "fsq.levels", "8x5x5x5") == "8x5x5x5"
    assert _override_text(cfg, "fsq.levels", "8x5x5x5") == "8,5,5,5"
    assert _override_text(cfg, "decoder.hidden", "32") == "32"
    assert [_plain(v) for v in (True, False, 5.0, 0.50, 3)] == ["true", "false", "5", "0.5", "3"]


# --------------------------------------------------------------------------------------------------
# gradlab: the size limit and the unbiased SNR


def test_gradlab_enumerates_at_most_2_to_the_14_codes_of_at_least_one_token_of_two_values():
    """``check_size`` at its borders: 2^14 codes (14x2, 7x4, 1x16384) pass, one more bit or one more code is
    refused (fails on >= at the limit, or on another limit), T = 0 and V = 1 are refused (fails on < 0 or < 1), and
    a huge T is refused at once (it is not computed as V^T)."""
    from daps.errors import UserError
    from daps.gradlab import check_size

    for t, v in ((14, 2), (7, 4), (1, 16384), (1, 2)):
        check_size(t, v)
    for t, v in ((15, 2), (1, 16385), (2, 129), (0, 4), (2, 1), (10 ** 8, 2)):
        with pytest.raises(UserError):
            check_size(t, v)


def test_the_unbiased_snr_by_hand_and_of_a_noiseless_estimator():
    """Four draws ``(1, 0), (3, 0), (1, 2), (3, 2)``: mean (2, 1), |mean|^2 = 5, total variance E|d - mean|^2 = 2,
    so the unbiased SNR is (5 - 2/3) / (2 * 4/3) = 13/8 (fails when the variance is scaled by n/(n-1) the wrong way
    or not at all); identical draws give inf (fails when a noiseless estimator gives nan)."""
    from daps.gradlab import summarize_draws

    draws = torch.tensor([[1.0, 0.0], [3.0, 0.0], [1.0, 2.0], [3.0, 2.0]])
    s = summarize_draws(draws, torch.tensor([1.0, 0.0]))
    assert s["snr"] == pytest.approx(5 / 2) and s["snr_unbiased"] == pytest.approx(13 / 8)
    same = summarize_draws(torch.tensor([[1.0, 2.0]] * 3), torch.tensor([1.0, 0.0]))
    assert same["snr_unbiased"] == math.inf


# --------------------------------------------------------------------------------------------------
# benchmarks/gradlab_dims.py


@pytest.fixture()
def dims(load_benchmark):
    return load_benchmark("gradlab_dims")


def test_the_sweeps_grid_is_tokens_by_values_in_any_case(dims):
    """``parse_grid``: ``2X4`` is T=2, V=4 (fails when the X is not lower-cased, or T and V swap); 1x16384 is
    enumerable and 16384x1 is not (fails when check_size gets V and T swapped)."""
    assert dims.parse_grid("2X4,1x16384") == [(2, 4), (1, 16384)]
    with pytest.raises(dims.BadInput, match="16384x1"):
        dims.parse_grid("16384x1")


def test_the_sweeps_cells_and_plotted_centres(dims):
    """``summary``: the mean and (min-max) over seeds, no range for one seed, each seed's value on a log axis;
    ``centre``: the mean, or the geometric mean of the positive values on a log axis (0 and negatives skipped, None
    when none is positive). Each value fails on its slip (range always, min and max swapped, log branch inverted,
    the median, zero kept, the arithmetic mean, 0.0 instead of None)."""
    assert dims.summary([1.0, 2.0, 6.0], False) == "3 (1-6)"
    assert dims.summary([2.0], False) == "2"
    assert dims.summary([0.5, 20.0], True) == "0.5, 20"
    assert dims.centre([1.0, 2.0, 6.0], False) == pytest.approx(3.0)
    assert dims.centre([1.0, 16.0, 0.0, -3.0], True) == pytest.approx(4.0)
    assert dims.centre([0.0, -1.0], True) is None


def _fake_result(t: int, v: int, seed: int) -> dict:
    """A run of the lab with known numbers: estimator A's E cos is seed + t / 10, B's is 0.5; SNRs 10^seed."""
    rows = [{"estimator": name, "mean_cos_draw_exact": (seed + t / 10) if name == "A" else 0.5,
             "snr_unbiased": 10.0 ** seed, "cos_mean_exact": 0.9} for name in ("A", "B")]
    setup = {"num_params": 100 * t + v, "objective": -float(seed + 1), "exact_grad_norm": 0.25 * (seed + 1)}
    return {"setup": setup, "rows": rows}


def test_the_sweeps_figure_keeps_its_legend_beside_the_panels(dims, tmp_path, captured):
    """The sweep's figure names every estimator once in a legend right of the last panel, outside every panel, at a
    readable size. Fails on: the legend inside the first panel at font size 6 (it hid the lines it named)."""
    grid = [(1, 4), (2, 4), (1, 16)]
    runs = {dims.key(t, v, 0): _fake_result(t, v, 0) for t, v in grid}
    dims.figure(runs, grid, [0], tmp_path / "f.png")
    fig = captured[0]
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert len(legends) == 1 and [t.get_text() for t in legends[0].get_texts()] == ["A", "B"]
    assert legends[0].get_texts()[0].get_fontsize() >= 7
    fig.canvas.draw()
    box = legends[0].get_window_extent()
    assert all(not box.overlaps(ax.get_window_extent()) for ax in fig.axes)
    assert box.x1 <= fig.get_window_extent().x1  # not cut off


def test_the_sweeps_tables_by_hand(dims):
    """``tables`` of two entries, 1x2 with seeds 0 and 1 and 2x4 with seed 0 only: the head names V^T (fails on
    T^V), each table has one separator cell per entry, A's E cos is averaged over its seeds with the range (fails
    when another estimator's rows are mixed in or only the first seed is read), the SNR lists each seed, and the
    model rows give each seed's J and |grad J| and the first parameters count."""
    runs = {dims.key(1, 2, 0): _fake_result(1, 2, 0), dims.key(1, 2, 1): _fake_result(1, 2, 1),
            dims.key(2, 4, 1): _fake_result(2, 4, 1)}
    md = dims.tables(runs, [(1, 2), (2, 4)], [0, 1])
    lines = md.splitlines()
    assert lines.count("| estimator | 1x2 (2) | 2x4 (16) |") == 3 and lines.count("|---|---|---|") == 4
    assert "| A | 0.6 (0.1-1.1) | 1.2 |" in lines and "| B | 0.5 (0.5-0.5) | 0.5 |" in lines
    assert "| A | 1, 10 | 10 |" in lines
    assert "| parameters | 102 | 204 |" in lines
    assert "| J (nats) | -1, -2 | -2 |" in lines and "| \\|grad J\\| | 0.25, 0.5 | 0.5 |" in lines


def test_the_sweeps_refusals_and_what_it_accepts(dims, tmp_path, monkeypatch, capsys):
    """``run``'s checks, with the lab replaced by known results: --draws 1 is refused and 2 accepted, --pretrain-steps
    0 accepted (fails on the bounds moved by one), --overwrite replaces earlier results (fails when only --resume
    is accepted), --resume runs only the missing entries (fails when every entry is run again), and an --out that
    is a file is refused in one line."""
    calls = []

    def fake_lab(estimators, draws, beta, *, num_samples, pretrain_steps, seed, num_tokens, vocab_size):
        calls.append((num_tokens, vocab_size, seed))
        return _fake_result(num_tokens, vocab_size, seed)

    monkeypatch.setattr(dims, "run_gradlab", fake_lab)
    out = tmp_path / "dims"
    base = ["--seeds", "0", "--draws", "2", "--pretrain-steps", "0", "--out", str(out)]
    assert dims.main(["--grid", "1x2", *base]) == 0 and calls == [(1, 2, 0)]
    assert dims.main(["--grid", "1x2,2x2", *base, "--resume"]) == 0 and calls == [(1, 2, 0), (2, 2, 0)]
    assert dims.main(["--grid", "1x2", *base, "--overwrite"]) == 0 and calls[-1] == (1, 2, 0) and len(calls) == 3
    capsys.readouterr()
    (tmp_path / "file").write_text("x")
    for argv, words in ((["--grid", "1x2", *base[:2], "--draws", "1", "--out", str(tmp_path / "new")], "--draws"),
                        (["--grid", "1x2", "--out", str(tmp_path / "file")], "is not a folder")):
        assert dims.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
    assert not (tmp_path / "new").exists()

