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
