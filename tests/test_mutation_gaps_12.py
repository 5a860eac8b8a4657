"""Known answers for behaviour that a mutation sweep of the motion data modules (daps/motion/dataset.py, lafan.py,
h1.py, classifier.py, render.py) found no test guarding: the standardizer's dtypes and input checks, the feature
cache's key, checks and reuse, the windows' device move and index dtypes, the CSV reader and the data search, the H1
model's checks and points, the classifier's confusion counts and the video captions. Each test names the slip it
fails on; the references are hand-worked cases on tiny synthetic clips, caches and folders. Tests that load the H1
model need mujoco and DAPS_DATA_DIR (the ``h1_model`` fixture of tests/conftest.py skips without them)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from daps.errors import UserError

# --------------------------------------------------------------------------- the standardizer (motion/dataset.py)


def test_numpy_features_keep_their_float32_dtype_through_the_standardizer():
    """``normalize`` and ``denormalize`` of a float32 numpy array return float32 (the statistics are float64, cast to
    the features' dtype, as for tensors). Known answer: mean 1, scale 2 maps 3 to 1 and back, dtype float32 both
    ways. Fails on: the float64 statistics applied uncast (the result silently promoted to float64)."""
    from daps.motion.dataset import Standardizer

    stats = Standardizer(np.array([1.0, 1.0]), np.array([2.0, 2.0]), np.zeros(2, dtype=bool))
    x = np.array([[3.0, -1.0]], dtype=np.float32)
    z = stats.normalize(x)
    assert z.dtype == np.float32 and z.tolist() == [[1.0, -1.0]]
    back = stats.denormalize(z)
    assert back.dtype == np.float32 and back.tolist() == [[3.0, -1.0]]


def test_statistics_write_and_read_their_near_constant_flags_as_booleans():
    """``to_dict`` writes the near-constant flags as JSON booleans even when they were given as 0 / 1 integers, and
    ``from_arrays`` reads 0 / 1 back as a bool mask: ``[0, 1]`` -> ``[False, True]`` (a mask, so that indexing
    with it picks feature 1, not the features numbered 0 and 1). Fails on: the flags written or read without the
    cast to bool."""
    from daps.motion.dataset import Standardizer

    stats = Standardizer(np.zeros(2), np.ones(2), np.array([0, 1]))
    written = stats.to_dict()["near_constant"]
    assert written == [False, True] and all(type(v) is bool for v in written)
    read = Standardizer.from_arrays({"mean": [0.0, 0.0], "scale": [1.0, 1.0], "near_constant": [0, 1]})
    assert read.near_constant.dtype == bool
    assert np.array([10.0, 20.0])[read.near_constant].tolist() == [20.0]


def test_statistics_without_a_recorded_feature_version_are_of_the_current_one():
    """``from_arrays`` of a record without ``feature_version`` (one's own sequences' statistics) takes the current
    :data:`~daps.motion.features.FEATURE_VERSION`. Fails on: a missing version read as 0 (an old version)."""
    from daps.motion.dataset import Standardizer
    from daps.motion.features import FEATURE_VERSION

    stats = Standardizer.from_arrays({"mean": [0.0], "scale": [1.0], "near_constant": [False]})
    assert stats.feature_version == FEATURE_VERSION


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4)])
def test_standardization_needs_frames_by_features(shape):
    """``fit_standardizer`` of a 1-d array (5 values) or a 3-d one is the ValueError naming the expected
    ``(N >= 2, F)`` layout, not statistics of the wrong shape (a scalar mean for the 1-d array). Fails on: only the
    frame count checked."""
    from daps.motion.dataset import fit_standardizer

    with pytest.raises(ValueError, match="N >= 2, F"):
        fit_standardizer(np.arange(np.prod(shape), dtype=np.float64).reshape(shape))


# --------------------------------------------------------------------------- the feature cache (motion/dataset.py)


def test_the_feature_cache_is_named_by_feature_version_and_frame_rate(monkeypatch, tmp_path):
    """``feature_cache_path`` is ``<cache>/lafan1_h1/features-v<version>-<key>.npz`` (module docstring): the file
    name carries the feature version, and features of another version or of another frame rate (the key covers the
    fps the velocities were computed at) are other files. Known answers: the name starts with ``features-v7-`` for
    version 7; version 8 or 25 fps give a different file. Fails on: the version left out of the name, or the fps
    left out of the key."""
    import daps.motion.dataset as dataset

    monkeypatch.setattr(dataset, "source_digest", lambda source: "source")
    monkeypatch.setattr(dataset, "cache_root", lambda: tmp_path)
    model = tmp_path / "h1.xml"
    model.write_text("<mujoco/>")
    monkeypatch.setattr(dataset, "FEATURE_VERSION", 7)
    v7 = dataset.feature_cache_path(tmp_path, model)
    assert v7.parent == tmp_path / "lafan1_h1" and v7.name.startswith("features-v7-") and v7.suffix == ".npz"
    monkeypatch.setattr(dataset, "FEATURE_VERSION", 8)
    assert dataset.feature_cache_path(tmp_path, model).name.startswith("features-v8-")
    monkeypatch.setattr(dataset, "FEATURE_VERSION", 7)
    monkeypatch.setattr(dataset, "FPS", 25.0)
    assert dataset.feature_cache_path(tmp_path, model) != v7


def test_a_feature_cache_with_poses_of_the_wrong_width_is_ignored(tmp_path):
    """``_read_cache`` of a cache whose poses have 25 columns instead of 26 (and whose features and lengths are
    right): ignored (None: rebuilt). Fails on: the poses' width not checked."""
    from daps.motion.dataset import _read_cache
    from daps.motion.features import NUM_FEATURES

    path = tmp_path / "cache.npz"
    np.savez(path, names=np.array(["a"]), lengths=np.array([4]), poses=np.zeros((4, 25)),
             features=np.zeros((4, NUM_FEATURES), np.float32))
    assert _read_cache(path) is None
    np.savez(path, names=np.array(["a"]), lengths=np.array([4]), poses=np.zeros((4, 26)),
             features=np.zeros((4, NUM_FEATURES), np.float32))
    assert _read_cache(path) is not None  # the control: the same cache with 26 columns is read


def _no_model(monkeypatch, tmp_path, dataset) -> None:
    """``load_clip_features`` without the H1 model: a stand-in model path and a cache file in ``tmp_path``."""
    monkeypatch.setattr(dataset, "load_h1", lambda data_dir, path=None: SimpleNamespace(path=tmp_path / "h1.xml"))
    monkeypatch.setattr(dataset, "feature_cache_path", lambda source, model: tmp_path / "cache.npz")


def test_a_valid_feature_cache_is_used_without_reading_the_clips(monkeypatch, tmp_path):
    """``load_clip_features`` with a readable cache returns the cached arrays and reads no clip (the point of the
    cache). Known answer: the poses (frame numbers) and features (2.5) written for clips ``a`` (3 frames) and ``b``
    (2 frames). Fails on: the cache read but its arrays recomputed."""
    import daps.motion.dataset as dataset
    from daps.motion.features import NUM_FEATURES

    _no_model(monkeypatch, tmp_path, dataset)
    poses = {"a": np.arange(3 * 26, dtype=np.float64).reshape(3, 26), "b": -np.ones((2, 26))}
    feats = {n: np.full((len(p), NUM_FEATURES), 2.5, np.float32) for n, p in poses.items()}
    dataset._write_cache(tmp_path / "cache.npz", dataset.ClipArrays(poses=poses, features=feats))

    def read(source):
        raise LookupError("the clips were read")

    monkeypatch.setattr(dataset, "read_clips", read)
    got = dataset.load_clip_features(source=tmp_path)
    assert sorted(got.poses) == ["a", "b"]
    np.testing.assert_array_equal(got.poses["a"], poses["a"])
    np.testing.assert_array_equal(got.features["b"], feats["b"])


def test_computed_features_are_float32(monkeypatch, tmp_path):
    """``load_clip_features`` computes each clip's features and keeps them as float32 (``ClipArrays``), in memory
    and in the cache it writes. Known answer: a feature function returning float64 0.1 gives float32(0.1) in both.
    Fails on: the float64 features kept (twice the memory, and a cache of another dtype)."""
    import daps.motion.dataset as dataset
    from daps.motion.features import NUM_FEATURES

    _no_model(monkeypatch, tmp_path, dataset)
    monkeypatch.setattr(dataset, "read_clips", lambda source: {"a": np.zeros((3, 26))})
    monkeypatch.setattr(dataset, "poses_to_features", lambda h1, p, fps: np.full((len(p), NUM_FEATURES), 0.1))
    got = dataset.load_clip_features(source=tmp_path)
    assert got.features["a"].dtype == np.float32 and got.features["a"][0, 0] == np.float32(0.1)
    cached = dataset._read_cache(tmp_path / "cache.npz")
    assert cached is not None and cached.features["a"].dtype == np.float32


# --------------------------------------------------------------------------- windows and splits (motion/dataset.py)


def _windows():
    """Windows of 2 frames, stride 1, over one clip of 5 frames whose one feature is the frame number: window i is
    frames (i, i + 1)."""
    from daps.motion.dataset import clip_windows

    return clip_windows({"c": np.arange(5, dtype=np.float32)[:, None]}, ["c"], window=2, stride=1)


def test_windows_moved_to_a_device_move_their_starts_too():
    """``MotionWindows.to(device)`` puts both the frames and the window starts on the device (batches are gathered
    there; starts left on the host fail to index frames on a GPU). Checked with the ``meta`` device, which needs no
    accelerator. Fails on: only the frames moved."""
    moved = _windows().to("meta")
    assert moved.frames.device.type == "meta" and moved.starts.device.type == "meta"


def test_windows_take_index_tensors_of_any_integer_dtype():
    """A uint8 or int32 tensor of window indices picks the same windows as a list: ``[3, 1]`` -> windows
    ``[[3, 4], [1, 2]]`` (frame numbers). A uint8 tensor used as is would be read by torch as a mask. Fails on: the
    index tensor not cast to int64."""
    w = _windows()
    for dtype in (torch.uint8, torch.int32):
        assert w[torch.tensor([3, 1], dtype=dtype)][..., 0].tolist() == [[3.0, 4.0], [1.0, 2.0]]


def test_a_boolean_mask_picks_the_windows_it_marks():
    """A boolean mask over the windows (tensor, numpy array or list) picks the windows it marks, as tensor indexing
    does; a mask of another length is an IndexError. Known answer:
    over 4 windows, ``[True, False, True, False]`` -> windows 0 and 2 (frames ``[[0, 1], [2, 3]]``), not windows
    1, 0, 1, 0 (the mask read as the indices 1 and 0). Fails on: a mask cast to integers."""
    w = _windows()
    n = len(w)
    marks = [i % 2 == 0 for i in range(n)]
    expected = [[float(i), float(i + 1)] for i in range(0, n, 2)]
    for mask in (torch.tensor(marks), np.array(marks), marks):
        assert w[mask][..., 0].tolist() == expected
    with pytest.raises(IndexError, match=f"must have shape \\({n},\\)"):
        w[torch.tensor([True, False])]
    from daps.motion.dataset import _as_index

    assert _as_index(np.array(marks), n).dtype == torch.long


def _motion_data(monkeypatch, names):
    """``load_motion_data`` of clips ``names`` (10 frames each, features = frame number + clip number) without
    reading LAFAN1."""
    import daps.motion.dataset as dataset
    from daps.motion.features import NUM_FEATURES

    poses = {n: np.zeros((10, 26)) for n in names}
    feats = {n: np.tile(np.arange(10, dtype=np.float32)[:, None] + k, (1, NUM_FEATURES)) for k, n in enumerate(names)}
    monkeypatch.setattr(dataset, "load_clip_features", lambda *a: dataset.ClipArrays(poses=poses, features=feats))
    return dataset


def test_a_split_other_than_train_or_val_is_refused(monkeypatch):
    """``MotionData.split('test')`` is the UserError naming the two splits, not the validation windows. Fails on: any
    name other than ``train`` read as ``val``."""
    data = _motion_data(monkeypatch, ["walk1_subject1", "walk2_subject4"]).load_motion_data(window=4)
    assert data.split("train") is data.train and data.split("val") is data.val
    with pytest.raises(UserError, match="unknown motion split 'test'"):
        data.split("test")


@pytest.mark.parametrize("window, stride", [(1, 1), (4, 0)])
def test_a_one_frame_window_or_a_zero_stride_is_refused(monkeypatch, window, stride):
    """``load_motion_data(window=1)`` (a window with no motion in it) and ``stride=0`` (an endless run of the same
    window) are UserErrors; window 2 and stride 1 are the smallest accepted. Fails on: ``window < 1`` for
    ``window < 2``, or the training stride not checked."""
    dataset = _motion_data(monkeypatch, ["walk1_subject1"])
    with pytest.raises(UserError, match="window >= 2 and strides >= 1"):
        dataset.load_motion_data(window=window, stride=stride)
    assert len(dataset.load_motion_data(window=2, stride=1).train) == 9


def test_validation_clips_alone_are_refused(monkeypatch):
    """``load_motion_data(clips=[a validation clip])`` has no training clip to fit the statistics on: the UserError
    that says so, not numpy's error about an empty concatenation. Fails on: the empty training split not checked."""
    dataset = _motion_data(monkeypatch, ["dance2_subject2", "walk1_subject1"])
    with pytest.raises(UserError, match="no training clips"):
        dataset.load_motion_data(clips=["dance2_subject2"])


# --------------------------------------------------------------------------- finding LAFAN1 (motion/lafan.py)


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    return path


def test_the_lafan_source_is_searched_for_in_the_documented_order(tmp_path):
    """In one data folder (module docstring): ``lafan1_h1_unitree/lafan1_h1_csv.tar.xz``, then
    ``lafan1_h1_csv.tar.xz``, then the CSVs in ``lafan1_h1_unitree/h1/``, ``h1/`` and ``lafan1_h1_unitree/``; a folder
    without CSVs is passed over. Known answers: each place wins while the ones before it are absent (removed one at a
    time), and an empty ``lafan1_h1_unitree/h1/`` gives way to ``h1/``. Fails on: any two places swapped, one left
    out, or a folder taken without looking for CSVs in it."""
    from daps.motion.lafan import find_source

    root = tmp_path / "data"
    places = [_touch(root / "lafan1_h1_unitree" / "lafan1_h1_csv.tar.xz"), _touch(root / "lafan1_h1_csv.tar.xz"),
              _touch(root / "lafan1_h1_unitree" / "h1" / "a.csv"), _touch(root / "h1" / "b.csv"),
              _touch(root / "lafan1_h1_unitree" / "c.csv")]
    expected = [places[0], places[1], root / "lafan1_h1_unitree" / "h1", root / "h1", root / "lafan1_h1_unitree"]
    for place, source in zip(places, expected):
        assert find_source(root) == source
        place.unlink()  # the next place wins; lafan1_h1_unitree/h1/ stays, empty, after a.csv
    with pytest.raises(FileNotFoundError, match="LAFAN1 H1 clips not found"):
        find_source(root)


def test_the_data_folder_is_searched_before_the_cache(tmp_path, monkeypatch):
    """``find_source(data_dir)`` with the archive both in ``data_dir`` and in the download cache
    (``$XDG_CACHE_HOME/daps``) takes the data folder's, as every dataset does. Fails on: the roots searched in
    reverse."""
    from daps.motion.lafan import find_source

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    cached = _touch(tmp_path / "xdg" / "daps" / "lafan1_h1_csv.tar.xz")
    mine = _touch(tmp_path / "data" / "lafan1_h1_csv.tar.xz")
    assert find_source(tmp_path / "data") == mine
    mine.unlink()
    assert find_source(tmp_path / "data") == cached


# --------------------------------------------------------------------------- reading the clips (motion/lafan.py)

_ROW = ",".join(["0.5", "-1", "1"] + ["0", "0", "0", "1"] + ["0.25"] * 19)  # x, y, z | quaternion x, y, z, w | joints


def _archive(path, members: dict[str, str]):
    """A ``.tar.xz`` holding ``members`` (path -> text) as regular files."""
    import io
    import tarfile

    with tarfile.open(path, "w:xz") as tar:
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_hidden_files_and_other_files_are_not_clips(tmp_path):
    """A clip is a ``<name>.csv`` whose name does not start with a dot: in a folder, ``._walk1_subject1.csv`` (the
    resource file a Mac writes next to each file it copies) is passed over; in an archive, so are
    ``h1/._walk1_subject1.csv`` and ``h1/README.md``. Known answer: the one clip ``walk1_subject1`` either way,
    read as one frame. Fails on: hidden CSVs taken for clips, or any archive member taken for a clip."""
    from daps.motion.lafan import clip_names, read_clips

    folder = tmp_path / "h1"
    folder.mkdir()
    (folder / "walk1_subject1.csv").write_text(_ROW + "\n")
    (folder / "._walk1_subject1.csv").write_bytes(b"\x00\x05\x16\x07 binary resource fork")
    archive = _archive(tmp_path / "clips.tar.xz", {"h1/walk1_subject1.csv": _ROW + "\n",
                                                   "h1/._walk1_subject1.csv": "not, a, clip",
                                                   "h1/README.md": "# not a clip"})
    for source in (folder, archive):
        assert clip_names(source) == ["walk1_subject1"]
        clips = read_clips(source)
        assert list(clips) == ["walk1_subject1"] and clips["walk1_subject1"].shape == (1, 26)


def test_a_folder_is_digested_in_the_sorted_order_of_its_files(tmp_path, monkeypatch):
    """``source_digest`` of a folder covers its CSVs in sorted name order (module docstring: the sorted names and
    contents), so the key of the feature cache does not depend on the order the file system lists them in. Known
    answer: the files are digested as ``a, b, c, d`` for files made in the order ``d, a, c, b``. Fails on: the
    CSVs taken in the file system's order."""
    import daps.motion.lafan as lafan

    seen = []
    monkeypatch.setattr(lafan, "file_digest", lambda path, algorithm: seen.append(path.name) or path.name)
    for name in "dacb":
        (tmp_path / f"{name}.csv").write_text(_ROW)
    lafan.source_digest(tmp_path)
    assert seen == ["a.csv", "b.csv", "c.csv", "d.csv"]


def test_an_archive_folder_named_like_a_csv_is_not_a_clip(tmp_path):
    """An archive whose member ``h1/old.csv`` is a folder (not a regular file) beside the clip
    ``h1/walk1_subject1.csv``: the one clip ``walk1_subject1``, read. Fails on: members taken as clips by their
    name alone (the folder has no text to read)."""
    import io
    import tarfile

    from daps.motion.lafan import clip_names, read_clips

    path = tmp_path / "clips.tar.xz"
    with tarfile.open(path, "w:xz") as tar:
        folder = tarfile.TarInfo("h1/old.csv")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        info = tarfile.TarInfo("h1/walk1_subject1.csv")
        info.size = len(_ROW)
        tar.addfile(info, io.BytesIO(_ROW.encode()))
    assert clip_names(path) == ["walk1_subject1"]
    assert list(read_clips(path)) == ["walk1_subject1"]


def test_only_the_clips_asked_for_are_read_from_an_archive(tmp_path):
    """``read_clips(archive, ["walk1_subject1"])`` reads that clip and leaves the others unread, so a damaged clip
    that was not asked for (here ``run1_subject2``, not text) is no error; asked for, it is the UserError naming
    it. Fails on: every member read and decoded whatever was asked."""
    from daps.motion.lafan import read_clips

    path = tmp_path / "clips.tar.xz"
    _archive(path, {"h1/walk1_subject1.csv": _ROW + "\n", "h1/run1_subject2.csv": "\u00e9t\u00e9\n"})
    clips = read_clips(path, ["walk1_subject1"])
    assert list(clips) == ["walk1_subject1"]
    np.testing.assert_allclose(clips["walk1_subject1"][0, :7], [0.5, -1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    with pytest.raises(UserError, match="run1_subject2.csv: not a text CSV"):
        read_clips(path, ["run1_subject2"])


def test_a_source_without_clips_is_one_user_error(tmp_path):
    """An archive holding only ``h1/README.md`` and a folder holding only ``notes.txt`` have no clip: each is the
    UserError "holds no <clip>.csv files", not an empty dataset that fails later. Fails on: the empty archive or
    folder accepted."""
    from daps.motion.lafan import clip_names, read_clips

    archive = _archive(tmp_path / "clips.tar.xz", {"h1/README.md": "# no clips"})
    folder = tmp_path / "h1"
    folder.mkdir()
    (folder / "notes.txt").write_text("no clips")
    for source in (archive, folder):
        for read in (clip_names, read_clips):
            with pytest.raises(UserError, match="holds no <clip>.csv files"):
                read(source)


def test_clips_of_an_archive_come_sorted_by_name(tmp_path):
    """An archive whose members are stored as ``walk2_subject1``, ``dance1_subject1``, ``walk1_subject1``: its clip
    names and the clips read (all of them) come sorted by name, as a folder's do (``dance1_subject1``,
    ``walk1_subject1``, ``walk2_subject1``). Fails on: the archive's own order kept."""
    from daps.motion.lafan import clip_names, read_clips

    names = ["walk2_subject1", "dance1_subject1", "walk1_subject1"]
    path = _archive(tmp_path / "clips.tar.xz", {f"h1/{n}.csv": _ROW + "\n" for n in names})
    assert clip_names(path) == sorted(names) == list(read_clips(path))


def test_a_folder_digest_covers_the_clip_names(tmp_path):
    """Two folders holding the same CSV bytes under different clip names (``walk1_subject1`` and ``run2_subject1``,
    a validation clip) are different sources: different digests, so features cached for one are not read for the
    other. Fails on: only the contents digested."""
    from daps.motion.lafan import source_digest

    for folder, name in (("a", "walk1_subject1"), ("b", "run2_subject1")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / f"{name}.csv").write_text(_ROW + "\n")
    assert source_digest(tmp_path / "a") != source_digest(tmp_path / "b")


def test_reading_an_unknown_clip_lists_the_valid_ones(tmp_path):
    """``read_clips(folder, ["walk9_subject9"])`` of a folder holding ``walk1_subject1`` and ``run1_subject2``: the
    UserError naming the unknown clip and listing the two valid ones (sorted), not a KeyError. Fails on: the
    names asked for not checked."""
    from daps.motion.lafan import read_clips

    for name in ("walk1_subject1", "run1_subject2"):
        (tmp_path / f"{name}.csv").write_text(_ROW + "\n")
    with pytest.raises(UserError, match="unknown clip 'walk9_subject9' .*valid clips: run1_subject2, walk1_subject1$"):
        read_clips(tmp_path, ["walk9_subject9"])


# --------------------------------------------------------------------------- the H1 model (motion/h1.py)


def test_the_end_points_of_the_two_sides_mirror_each_other(h1_model):
    """The H1 is left / right symmetric: in the zero pose (pelvis 1 m up, facing +x, every joint at 0) each right
    end point (toe, hand) is its left twin mirrored in the x-z plane: same x and z, opposite y, the left one at
    y > 0 (the robot's left). Fails on: a right end point fixed to the left body (both twins then coincide)."""
    from daps.motion.h1 import END_POINTS, forward_kinematics, points_world

    pose = np.zeros(26)
    pose[2], pose[3] = 1.0, 1.0
    at = dict(zip((p.name for p in END_POINTS), points_world(*forward_kinematics(h1_model, pose), END_POINTS)))
    for part in ("toe", "hand"):
        left, right = at[f"left_{part}"], at[f"right_{part}"]
        assert left[1] > 0.1
        np.testing.assert_allclose(right, left * [1.0, -1.0, 1.0], atol=1e-6)


@pytest.mark.parametrize("system, display, user_gl, expected", [
    ("Linux", None, None, "egl"),  # headless Linux: EGL
    ("Linux", ":0", None, None),  # a screen: MuJoCo's own default
    ("Linux", None, "osmesa", "osmesa"),  # the user's choice stands
    ("Darwin", None, None, None),  # not Linux: left alone
])
def test_mujoco_is_made_headless_only_on_linux_without_a_screen_or_a_choice(monkeypatch, system, display, user_gl,
                                                                             expected):
    """``import_mujoco`` sets ``MUJOCO_GL=egl`` only on Linux with neither ``$DISPLAY`` nor ``$MUJOCO_GL`` set (module
    docstring of render.py: the setting must come before mujoco is imported). Known answers for the four cases in
    the parameters (mujoco itself is imported once, before, so no backend is loaded here). Fails on: a screen
    ignored, or the user's ``MUJOCO_GL`` overwritten."""
    import daps.motion.h1 as h1

    try:
        h1.import_mujoco()
    except UserError as e:
        pytest.skip(str(e))
    monkeypatch.setattr(h1.platform, "system", lambda: system)
    for name, value in (("DISPLAY", display), ("MUJOCO_GL", user_gl)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    h1.import_mujoco()
    assert h1.os.environ.get("MUJOCO_GL") == expected


@pytest.mark.parametrize("error, says", [(RuntimeError("cannot initialize EGL"), "MUJOCO_GL=egl"),
                                         (ImportError("No module named 'mujoco'"), "pip install mujoco")])
def test_a_failed_mujoco_import_is_one_user_error(monkeypatch, error, says):
    """``import mujoco`` failing with a RuntimeError (what an OpenGL backend that does not load raises) is the
    UserError naming the backend settings, and an ImportError the one naming the package to install. Fails on: the
    backend's RuntimeError let through as a traceback."""
    import builtins

    import daps.motion.h1 as h1

    real = builtins.__import__

    def failing(name, *args, **kwargs):
        if name == "mujoco":
            raise error
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", failing)
    with pytest.raises(UserError, match=says):
        h1.import_mujoco()


def test_the_h1_model_is_searched_for_in_its_folder_then_in_the_root(tmp_path):
    """``find_model_file(root)`` takes ``root/unitree_h1_mjcf/h1.xml`` before ``root/h1.xml`` (module docstring), and
    ``root/h1.xml`` when it is the only one. Fails on: the root left out, or the two places swapped."""
    from daps.motion.h1 import find_model_file

    inner, outer = _touch(tmp_path / "unitree_h1_mjcf" / "h1.xml"), _touch(tmp_path / "h1.xml")
    assert find_model_file(tmp_path) == inner
    inner.unlink()
    assert find_model_file(tmp_path) == outer


def test_the_h1_model_is_found_in_the_download_cache_after_the_data_folder(tmp_path, monkeypatch):
    """With no model in the data folder, ``find_model_file`` takes the one in the download cache
    (``$XDG_CACHE_HOME/daps/unitree_h1_mjcf/h1.xml``); with one in both, the data folder's. Fails on: the cache not
    searched."""
    from daps.motion.h1 import find_model_file

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    cached = _touch(tmp_path / "xdg" / "daps" / "unitree_h1_mjcf" / "h1.xml")
    (tmp_path / "data").mkdir()
    assert find_model_file(tmp_path / "data") == cached
    mine = _touch(tmp_path / "data" / "h1.xml")
    assert find_model_file(tmp_path / "data") == mine


def test_a_folder_named_h1_xml_is_not_the_model(tmp_path):
    """``root/unitree_h1_mjcf/h1.xml`` that is a folder is passed over for the file ``root/h1.xml``. Fails on: any
    path that exists taken for the model file."""
    from daps.motion.h1 import find_model_file

    (tmp_path / "unitree_h1_mjcf" / "h1.xml").mkdir(parents=True)
    model = _touch(tmp_path / "h1.xml")
    assert find_model_file(tmp_path) == model


def _model(tmp_path, joints: list[str]):
    """An MJCF file of a chain of small boxes, one joint each, of the MuJoCo ``types`` in ``joints`` (``free``,
    ``ball``, ``hinge``), named ``j0, j1, ...``."""
    xml = ""
    for k, kind in enumerate(reversed(joints)):
        body = f'<joint name="j{len(joints) - 1 - k}" type="{kind}"/><geom type="box" size=".05 .05 .05"/>'
        xml = f'<body name="b{len(joints) - 1 - k}" pos="0 0 .1">{body}{xml}</body>'
    path = tmp_path / "robot.xml"
    path.write_text(f"<mujoco><worldbody>{xml}</worldbody></mujoco>")
    return path


@pytest.mark.parametrize("joints, says", [
    (["free", "ball"] + ["hinge"] * 19, r"not the Unitree H1 model \(nq=30"),  # H1's joint count, more qpos
    (["free", "ball"] + ["hinge"] * 16, r"not the Unitree H1 model \(nq=27"),  # H1's qpos count, fewer joints
    (["ball", "ball"] + ["hinge"] * 19, "the first joint is not the free root joint"),  # both counts, no free root
])
def test_a_model_that_is_not_the_h1_is_refused_by_its_layout(tmp_path, h1_model, joints, says):
    """``load_h1(path=...)`` checks the layout before anything else: 27 qpos entries *and* 21 joints (free root, 19
    hinges, the dummy), then a free first joint. Known answers on three chains of boxes that pass all but one of
    those checks: each is the UserError of the check it fails. Fails on: the qpos count, the joint count or the
    root's joint type not checked."""
    from daps.motion.h1 import load_h1

    with pytest.raises(UserError, match=says):
        load_h1(path=_model(tmp_path, joints))


def test_two_hinges_swapped_in_the_model_are_refused(tmp_path, h1_model):
    """The real ``h1.xml`` with the names ``left_knee_joint`` and ``left_ankle_joint`` swapped: every joint exists,
    but the knee's angle would be read from the ankle's qpos entry, so loading it is the UserError naming the knee
    and its address (qpos[10]). Fails on: the joints looked up by name only, not checked at their qpos address."""
    from daps.motion.h1 import load_h1

    source = h1_model.path
    text = source.read_text().replace('meshdir="assets"', f'meshdir="{source.parent / "assets"}"')
    text = text.replace("left_knee_joint", "@").replace("left_ankle_joint", "left_knee_joint").replace(
        "@", "left_ankle_joint")
    path = tmp_path / "h1.xml"
    path.write_text(text)
    with pytest.raises(UserError, match=r"joint left_knee_joint is missing or not at qpos\[10\]"):
        load_h1(path=path)


def test_the_joint_limits_are_mujocos_own(h1_model):
    """``H1.joint_range`` holds each hinge's limits as MuJoCo stores them (float64, read here by name with
    ``mj_name2id``), exactly; e.g. the knee's lower limit is -0.26 rad in ``h1.xml``. Fails on: the limits
    rounded to float32 (then ``joint_range[k] != jnt_range`` and a pose at its limit reads as outside it)."""
    from daps.motion.h1 import JOINT_NAMES, import_mujoco

    mujoco = import_mujoco()
    m = h1_model.model
    expected = np.stack([m.jnt_range[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, n)] for n in JOINT_NAMES])
    assert h1_model.joint_range.dtype == np.float64
    np.testing.assert_array_equal(h1_model.joint_range, expected)
    assert h1_model.joint_range[JOINT_NAMES.index("left_knee_joint"), 0] == -0.26


def test_the_model_is_loaded_once_whatever_the_path_is_called(h1_model, monkeypatch):
    """``load_h1`` loads a file once per process: the model named by a path relative to the working folder is the
    very object loaded by its absolute path (and records that absolute path). Fails on: the path used unresolved
    (two loads of one file, and a relative path kept in ``H1.path``)."""
    from daps.motion.h1 import load_h1

    monkeypatch.chdir(h1_model.path.parent)
    again = load_h1(path="h1.xml")
    assert again is h1_model and again.path.is_absolute()


def test_kinematics_refuses_poses_of_another_width(h1_model):
    """``forward_kinematics`` of poses ``(26, 25)`` (each pose one number short; 650 numbers, which would also split
    into 25 poses of 26) is the ValueError naming the expected ``(..., 26)``, not kinematics of misaligned rows.
    Fails on: the width not checked before the reshape."""
    from daps.motion.h1 import forward_kinematics

    with pytest.raises(ValueError, match=r"poses must be \(\.\.\., 26\)"):
        forward_kinematics(h1_model, np.zeros((26, 25)))


# --------------------------------------------------------------------------- the classifier (motion/classifier.py)


def test_the_motion_classifier_lives_beside_the_motion_features_in_the_cache(tmp_path, monkeypatch):
    """The classifier's default file is ``$XDG_CACHE_HOME/daps/lafan1_h1/classifier.safetensors`` (docs/motion.md,
    and the ``--out`` default in scripts/train_motion_classifier.py's usage), where ``load_classifier()`` looks;
    with nothing there, the UserError names that file. Fails on: another folder (a trained classifier then never
    found)."""
    from daps.motion.classifier import default_classifier_path, load_classifier

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    expected = tmp_path / "daps" / "lafan1_h1" / "classifier.safetensors"
    assert default_classifier_path() == expected
    with pytest.raises(UserError, match=f"no motion classifier at {expected}"):
        load_classifier()


def test_the_motion_classifier_drops_out_in_training_only():
    """A default ``MotionClassifier`` has dropout before its head (class docstring): in training mode two passes over
    the same windows give different logits, in eval mode the same. Fails on: a default dropout of 0 (training then
    as deterministic as evaluation)."""
    from daps.motion.classifier import MotionClassifier

    torch.manual_seed(0)
    model = MotionClassifier(num_features=3, num_classes=6, width=16)
    x = torch.randn(4, 12, 3)
    assert not torch.equal(model.train()(x), model(x))
    assert torch.equal(model.eval()(x), model(x))
