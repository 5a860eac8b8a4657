"""Known answers for behaviour that a mutation sweep of the FID Inception network (daps/nets/inception.py) and the
window datasets (daps/data/sequences.py, daps/data/motion.py) found no test guarding: the weight search's order,
fallbacks and paths, the merge order of shards, the loader's refusals and device, the network's input check and
float32 features; a sequences window shape of four sizes, the windows' device, the run's absolute file path and the
figure's units; a LAFAN1 clip's kind, the feature count, the metrics' poses, the figure's order, the run statistics'
checks and ``reconstruct_clip``'s windows, clip check, mode and generator. Each test names the slip it fails on; the
references are documented behaviour (README's FID section, the modules' docstrings) and hand-worked cases on tiny
files and stand-ins. The Inception tests use randomly initialised weights written to a temporary file (no download,
no ``$DAPS_DATA_DIR``); one motion test reads LAFAN1 on the H1 from ``$DAPS_DATA_DIR`` and skips without it."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from daps.errors import UserError

# --------------------------------------------------------------------------- the FID Inception (nets/inception.py)


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory) -> Path:
    """A complete state dict of a randomly initialised network, one file (what a weights file holds, other values)."""
    from daps.nets.inception import FIDInceptionV3

    path = tmp_path_factory.mktemp("inception") / "random.pth"
    torch.manual_seed(0)
    torch.save(FIDInceptionV3().state_dict(), path)
    return path


def _touch(folder: Path, *names: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / name for name in names]
    for path in paths:
        path.write_bytes(b"")
    return paths


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An empty home folder and no DAPS_DATA_DIR / XDG_CACHE_HOME."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DAPS_DATA_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    return tmp_path / "home"


def test_the_weight_search_takes_the_data_folder_before_the_cache_and_falls_back_past_an_empty_one(
        tmp_path, home, monkeypatch):
    """Without a path, the weights are looked for in ``$DAPS_DATA_DIR/fid_inception/``, then in the cache folder
    ``$XDG_CACHE_HOME/daps/fid_inception/`` (README, ``load_fid_inception``). Known answer: with shards in both, the
    data folder's; with the data folder present but empty, the cache's; with neither, None. Fails on: the cache
    searched first; the search ending at the first folder that exists (an empty one)."""
    from daps.nets.inception import find_fid_weights

    data_files = _touch(tmp_path / "data" / "fid_inception", "a.pth")
    cache_files = _touch(tmp_path / "cache" / "daps" / "fid_inception", "b.pth")
    monkeypatch.setenv("DAPS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert find_fid_weights() == data_files
    data_files[0].unlink()
    assert find_fid_weights() == cache_files
    cache_files[0].unlink()
    assert find_fid_weights() is None


def test_the_weight_search_reads_a_tilde_and_spaces_in_its_variables_and_defaults_to_dot_cache(tmp_path, home,
                                                                                               monkeypatch):
    """``~`` in DAPS_DATA_DIR, XDG_CACHE_HOME or a given path is the home folder, the variables' surrounding spaces
    are ignored, and without XDG_CACHE_HOME the cache is ``~/.cache/daps/fid_inception/`` (README). Known answers
    under HOME = h: ``DAPS_DATA_DIR=" ~/data "`` finds h/data/fid_inception's shard; ``XDG_CACHE_HOME=~/xdg`` finds
    h/xdg/daps/fid_inception's; no XDG_CACHE_HOME finds h/.cache/daps/fid_inception's; ``"~/w.pth"`` is h/w.pth.
    Fails on: a tilde taken literally (each variable and the path); the spaces kept; the cache in ``~`` itself."""
    from daps.nets.inception import find_fid_weights

    in_data = _touch(home / "data" / "fid_inception", "a.pth")
    monkeypatch.setenv("DAPS_DATA_DIR", " ~/data ")
    assert find_fid_weights() == in_data
    monkeypatch.delenv("DAPS_DATA_DIR")
    dot_cache = _touch(home / ".cache" / "daps" / "fid_inception", "b.pth")
    assert find_fid_weights() == dot_cache
    in_xdg = _touch(home / "xdg" / "daps" / "fid_inception", "c.pth")
    monkeypatch.setenv("XDG_CACHE_HOME", "~/xdg")
    assert find_fid_weights() == in_xdg
    single = _touch(home, "w.pth")
    assert find_fid_weights("~/w.pth") == single


def test_shards_are_the_pth_files_of_a_folder_in_name_order_and_a_later_one_wins(random_weights, tmp_path,
                                                                                  monkeypatch):
    """A folder of weights is its ``*.pth`` files (folders named ``*.pth`` are not shards) merged in name order, a
    later shard's tensor replacing an earlier one's (``load_fid_inception``: "merged in name order"); the loaded
    network records them as absolute paths. Known answer: a folder holding all.pth (every tensor), m.pth (one
    running mean of 7s) and z.pth (the same running mean of 3s) loads that mean as 3s (z last), from
    [all.pth, m.pth, z.pth]; a folder m0.pth beside them is left out. Fails on: the files merged in the reverse order;
    the first file's tensor kept; folders taken as shards; the files not sorted; relative paths recorded."""
    from daps.nets.inception import find_fid_weights, load_fid_inception

    key = "Mixed_6b.branch_pool.bn.running_mean"
    folder = tmp_path / "shards"
    folder.mkdir()
    torch.save({key: torch.full((192,), 3.0)}, folder / "z.pth")
    (folder / "m0.pth").mkdir()
    torch.save({key: torch.full((192,), 7.0)}, folder / "m.pth")
    (folder / "all.pth").symlink_to(random_weights)
    assert [p.name for p in find_fid_weights(folder)] == ["all.pth", "m.pth", "z.pth"]
    monkeypatch.chdir(tmp_path)
    net = load_fid_inception("shards")
    assert torch.equal(net.state_dict()[key], torch.full((192,), 3.0))
    assert net.weight_files == [str((folder / name).resolve()) for name in ("all.pth", "m.pth", "z.pth")]


def test_a_weight_of_the_wrong_shape_is_one_user_error_naming_it(random_weights, tmp_path):
    """Weights with every key but one tensor of another shape are refused as "wrong shapes", naming the tensor and
    both shapes, before torch's own (multi-line RuntimeError) load. Known answer: Mixed_5b.branch_pool.bn.bias of
    shape (16,) instead of (32,). Fails on: the shape check left out (torch's RuntimeError, not a UserError)."""
    from daps.nets.inception import load_fid_inception

    state = torch.load(random_weights, weights_only=True)
    state["Mixed_5b.branch_pool.bn.bias"] = torch.zeros(16)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(UserError, match=r"wrong shapes.*Mixed_5b\.branch_pool\.bn\.bias: \(16,\) != \(32,\)"):
        load_fid_inception(path)


def test_the_loaded_network_is_on_the_device_asked(random_weights):
    """``load_fid_inception(..., device=d)`` returns the network on d (CPU by default). Known answer: every
    parameter and buffer on ``meta`` when asked for it, on the CPU otherwise. Fails on: the device ignored."""
    from daps.nets.inception import load_fid_inception

    on_meta = load_fid_inception(random_weights, device="meta")
    assert {t.device.type for t in (*on_meta.parameters(), *on_meta.buffers())} == {"meta"}
    default = load_fid_inception(random_weights)
    assert {t.device.type for t in (*default.parameters(), *default.buffers())} == {"cpu"}


def test_missing_weights_at_a_given_path_name_that_path(tmp_path, home):
    """When the path given holds no weights, the FileNotFoundError says where it looked: that path, not the default
    folders it never searched. Known answer: "looked in: <tmp>/nowhere)". Fails on: the default folders named."""
    from daps.nets.inception import load_fid_inception

    with pytest.raises(FileNotFoundError, match=r"\(looked in: (.*)\)") as err:
        load_fid_inception(tmp_path / "nowhere")
    assert f"(looked in: {tmp_path / 'nowhere'})" in str(err.value)


def test_the_network_takes_only_four_dimensional_three_channel_images(single_thread):
    """``FIDInceptionV3`` takes ``(N, 3, H, W)`` images and refuses anything else with one UserError naming the shape.
    Known answers: (1, 1, 75, 75) and (2, 3, 75) are refused; (1, 3, 75, 75) gives (1, 2048). Fails on: the channel
    check left out, or the dimension check (torch's RuntimeError from the first convolution instead)."""
    from daps.nets.inception import FIDInceptionV3

    net = FIDInceptionV3().eval()
    for shape in ((1, 1, 75, 75), (2, 3, 75)):
        with pytest.raises(UserError, match=re.escape(f"expected images (N, 3, H, W), got shape {shape}")):
            net(torch.zeros(shape))
    with torch.no_grad():
        assert net(torch.zeros(1, 3, 75, 75)).shape == (1, 2048)


def test_features_are_float32_whatever_the_networks_precision(single_thread):
    """The network's output is ``(N, 2048)`` float32 (its docstring), also when it runs in float64. Known answer: a
    float64 copy on a float64 image gives float32 features (the float32 network's, to rounding). Fails on: the final
    ``.float()`` left out (float64 features)."""
    from daps.nets.inception import FIDInceptionV3

    torch.manual_seed(0)
    net = FIDInceptionV3().eval()
    x = torch.rand(1, 3, 75, 75, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        single, double = net(x), net.double()(x.double())
    assert double.dtype == torch.float32 and double.shape == (1, 2048)
    torch.testing.assert_close(double, single, rtol=1e-4, atol=1e-5)


def test_an_inception_e_block_refuses_an_unknown_pool():
    """``InceptionE``'s pool branch is ``"avg"`` or ``"max"``; anything else is a UserError naming it (not silently
    an average pool). Known answer: ``pool="mean"`` refused with "'mean'". Fails on: the check left out."""
    from daps.nets.inception import InceptionE

    with pytest.raises(UserError, match="pool must be 'avg' or 'max', got 'mean'"):
        InceptionE(8, pool="mean")
    assert InceptionE(8, pool="max").pool == "max"


def test_a_weights_file_holding_a_list_is_refused_as_not_a_state_dict(tmp_path):
    """A file torch reads that holds tensors but no dict (a list of them) is one UserError naming the file and what it
    holds. Known answer: "expected a state dict, got list". Fails on: the dict check left out (``dict.update`` of a
    list: a ValueError of Python's own, naming neither the file nor the problem)."""
    from daps.nets.inception import load_fid_inception

    path = tmp_path / "list.pth"
    torch.save([torch.zeros(3), torch.ones(3)], path)
    with pytest.raises(UserError, match=re.escape(f"{path}: expected a state dict, got list")):
        load_fid_inception(path)


# --------------------------------------------------------------------------- one's own sequences (data/sequences.py)


def _sequences_file(folder: Path) -> Path:
    """Clips of 2 features: train/a (10 frames) with feature 0 = 0..9 and feature 1 = 2 x that, test/b (6 frames)."""
    import numpy as np

    ramp = np.arange(10, dtype=np.float64)
    path = folder / "s.npz"
    np.savez(path, **{"train/a": np.stack([ramp, 2 * ramp], 1), "test/b": np.stack([ramp[:6], ramp[:6]], 1)})
    return path


def test_a_window_shape_of_other_than_three_sizes_is_refused(tmp_path):
    """``sequence_data`` takes ``data.image_shape = (1, T, F)``: exactly three sizes. Known answer: (1, 4, 2, 1) on
    clips of 2 features is refused with "must be (1, T, F) with F = 2" (not read as windows of 4 frames). Fails on:
    the length unchecked (a fourth size ignored)."""
    from daps.config import DataConfig
    from daps.data.sequences import sequence_data

    path = _sequences_file(tmp_path)
    with pytest.raises(UserError, match=re.escape("data.image_shape must be (1, T, F) with F = 2")):
        sequence_data(DataConfig(name="sequences", data_dir=str(path), image_shape=(1, 4, 2, 1)))


def test_sequence_windows_move_to_the_device_asked(tmp_path):
    """``SequenceWindows.to(d)`` gives the same windows, labels and names with their frames on d (batches are
    gathered there). Known answer: ``to("meta")``'s frames and starts are on meta, its labels and names those of the
    CPU windows. Fails on: the device ignored (the frames left on the CPU)."""
    from daps.config import DataConfig
    from daps.data.sequences import sequence_windows

    data = DataConfig(name="sequences", data_dir=str(_sequences_file(tmp_path)), image_shape=(1, 4, 2))
    windows = sequence_windows("test", data)
    moved = windows.to("meta")
    assert moved.windows.frames.device.type == moved.windows.starts.device.type == "meta"
    assert torch.equal(moved.labels, windows.labels) and moved.labels.tolist() == [1, 1, 1]
    assert moved.class_names == windows.class_names == ("a", "b")


def test_a_sequences_run_records_its_file_as_an_absolute_path(tmp_path, monkeypatch):
    """What a ``sequences`` run saves names the file it read so that a later command can check it from anywhere:
    the absolute path, also when ``data.data_dir`` was relative. Known answer: data_dir "s.npz" in the folder d
    records "d/s.npz" resolved. Fails on: the path recorded as given (relative to a working directory no one
    remembers)."""
    from daps.config import DataConfig
    from daps.data.sequences import RUN_FILE, sequence_run_files

    path = _sequences_file(tmp_path)
    monkeypatch.chdir(tmp_path)
    record = sequence_run_files(DataConfig(name="sequences", data_dir="s.npz", image_shape=(1, 4, 2)))[RUN_FILE]
    assert record["file"] == str(path.resolve())


def test_a_sequence_figure_draws_the_reconstruction_in_the_files_units(tmp_path, monkeypatch):
    """The figure shows ground truth and reconstruction in the file's own units (the docstring), both taken back
    from the standardized scale. Known answer: training frames 0..9 and 2 x that (mean 4.5 and 9, scale sqrt(8.25)
    and 2 sqrt(8.25)); standardized windows x = 0 and x_hat = 1 everywhere are drawn as 4.5 and 4.5 + sqrt(8.25)
    (feature 0), 9 and 9 + 2 sqrt(8.25) (feature 1). Fails on: the reconstruction drawn in standardized units."""
    import math

    import daps.plots
    from daps.config import DataConfig
    from daps.data.sequences import plot_sequence_reconstructions

    data = DataConfig(name="sequences", data_dir=str(_sequences_file(tmp_path)), image_shape=(1, 4, 2))
    drawn: dict[str, list] = {}

    def keep_lines(fig, _path, dpi):
        for ax in fig.axes:
            if ax.get_ylabel():
                drawn[ax.get_ylabel()] = [list(line.get_ydata()) for line in ax.get_lines()]
        daps.plots._pyplot().close(fig)

    monkeypatch.setattr(daps.plots, "save_figure", keep_lines)
    x = torch.zeros(1, 1, 4, 2)
    plot_sequence_reconstructions(data, x, x + 1, tmp_path / "f.png", "t")
    s = math.sqrt(8.25)
    for feature, (mean, scale) in enumerate(((4.5, s), (9.0, 2 * s))):
        truth, reconstruction = drawn[f"feature {feature}"]
        assert truth == pytest.approx([mean] * 4, abs=1e-9)
        assert reconstruction == pytest.approx([mean + scale] * 4, abs=1e-9)


# --------------------------------------------------------------------------- the lafan1-h1 windows (data/motion.py)


def test_a_clips_kind_is_its_leading_letters_and_an_unknown_one_is_a_user_error():
    """A clip's kind of motion comes from the letters its name starts with (``walk2_subject4`` is a walk); a name
    whose leading letters are no known kind, or that starts with no letter, is one UserError naming the kinds
    known. Known answers: "skate1_subject2" refused naming 'skate'; "_walk1" refused naming ''. Fails on: the check
    left out (a KeyError); the kind looked for anywhere in the name ("_walk1" read as a walk)."""
    from daps.data.motion import MOTION_TYPES, motion_type

    assert motion_type("walk2_subject4") == MOTION_TYPES.index("walk")
    with pytest.raises(UserError, match=r"clip 'skate1_subject2': unknown kind of motion 'skate'; known: dance, "):
        motion_type("skate1_subject2")
    with pytest.raises(UserError, match=r"clip '_walk1': unknown kind of motion ''"):
        motion_type("_walk1")


def _motion_stats(mean: float = 0.0, scale: float = 1.0):
    """:class:`~daps.motion.dataset.Standardizer` of the current feature version with every mean and scale given."""
    import numpy as np

    from daps.motion.dataset import Standardizer
    from daps.motion.features import NUM_FEATURES

    return Standardizer(mean=np.full(NUM_FEATURES, mean), scale=np.full(NUM_FEATURES, scale),
                        near_constant=np.zeros(NUM_FEATURES, bool))


def test_a_run_without_motion_stats_is_warned_about_and_one_with_other_means_refused(tmp_path, monkeypatch, caplog):
    """``check_run_stats``: a run folder without ``motion_stats.json`` (copied without it) is a warning that the
    data's own statistics are used; saved statistics whose means differ from the data's are refused (a
    reconstruction would be read on the wrong scale), the data's own pass. Known answers: no file: a warning naming
    it, no error; saved means 0.5 against the data's 0 (scales equal): "other feature statistics". Fails on: the
    missing file refused; only the scales compared."""
    import json

    import daps.data.motion as dm

    monkeypatch.setattr(dm, "motion_data", lambda data: SimpleNamespace(stats=_motion_stats()))
    data = SimpleNamespace(name="lafan1-h1")
    with caplog.at_level("WARNING"):
        dm.check_run_stats(tmp_path, data)
    assert f"{tmp_path / 'motion_stats.json'} is missing" in caplog.text
    (tmp_path / "motion_stats.json").write_text(json.dumps(_motion_stats().to_dict()))
    dm.check_run_stats(tmp_path, data)
    (tmp_path / "motion_stats.json").write_text(json.dumps(_motion_stats(mean=0.5).to_dict()))
    with pytest.raises(UserError, match="other feature statistics"):
        dm.check_run_stats(tmp_path, data)


def test_window_images_move_to_the_device_asked():
    """``WindowImages.to(d)`` gives the same windows with their frames on d (batches are gathered there) and the
    same kinds. Known answer: two clips (a walk of 6 frames, a run of 5) in windows of 4: kinds [walk] * 3 + [run] * 2,
    frames on meta after ``to("meta")``. Fails on: the device ignored (the frames left on the CPU)."""
    import numpy as np

    from daps.data.motion import MOTION_TYPES, WindowImages
    from daps.motion.dataset import clip_windows

    frames = {"walk1_subject1": np.zeros((6, 3), np.float32), "run1_subject2": np.ones((5, 3), np.float32)}
    images = WindowImages(clip_windows(frames, list(frames), 4, 1))
    walk, run = MOTION_TYPES.index("walk"), MOTION_TYPES.index("run")
    assert images.labels.tolist() == [walk] * 3 + [run] * 2 and len(images) == 5
    moved = images.to("meta")
    assert moved.windows.frames.device.type == moved.windows.starts.device.type == "meta"
    assert moved.labels.tolist() == images.labels.tolist() and moved.class_names == MOTION_TYPES
    assert images[torch.tensor([0, 4])].shape == (2, 1, 4, 3)


def test_motion_windows_need_the_feature_count_before_the_data_are_read(monkeypatch):
    """``motion_data`` of ``image_shape = (1, 32, F + 1)``: a UserError naming the expected ``(1, T, F)`` before any
    data are loaded (the features are fixed by the feature code). Known answer: F + 1 features refused with
    "(1, T, F)"; F goes on to the loading. Fails on: only the channel count checked (windows of F features handed
    to a model built for F + 1)."""
    import daps.data.motion as dm
    from daps.config import DataConfig
    from daps.motion.features import NUM_FEATURES

    def load(*a, **k):
        raise LookupError("the data were read")

    monkeypatch.setattr(dm, "_cached", load)
    with pytest.raises(UserError, match=rf"must be \(1, T, {NUM_FEATURES}\) for lafan1-h1, got \(1, 32, "
                                        rf"{NUM_FEATURES + 1}\)"):
        dm.motion_data(DataConfig(name="lafan1-h1", image_shape=(1, 32, NUM_FEATURES + 1)))
    with pytest.raises(LookupError):
        dm.motion_data(DataConfig(name="lafan1-h1", image_shape=(1, 32, NUM_FEATURES)))


REAL_DIR = __import__("os").environ.get("DAPS_DATA_DIR", "").strip()


@pytest.mark.skipif(not REAL_DIR, reason="DAPS_DATA_DIR is not set (LAFAN1 on the H1 and the H1 model)")
def test_the_metrics_poses_are_the_windows_own_poses_at_the_origin_facing_x(single_thread):
    """``MotionMetrics.poses``: standardized windows -> raw features -> poses starting at the origin facing +x (its
    docstring). Known answer: for two validation windows, the data's own ground-truth poses of those windows
    (``MotionData.window_poses``) with the same joint angles and pelvis height frame by frame, and a first frame at
    planar position (0, 0) with heading 0. Fails on: the features read without undoing the standardization; the
    poses anchored at another heading."""
    import numpy as np

    from daps.config import DataConfig
    from daps.data.motion import MotionMetrics, lafan_windows
    from daps.motion.features import NUM_FEATURES, root_anchor
    from daps.motion.h1 import JOINTS

    data = DataConfig(name="lafan1-h1", data_dir=REAL_DIR, image_shape=(1, 32, NUM_FEATURES))  # as test_known_answers_5
    metrics = MotionMetrics(data)
    index = torch.tensor([0, 300])
    poses = metrics.poses(lafan_windows("test", data)[index])
    truth = metrics.motion.window_poses("val", index.numpy())
    assert poses.shape == truth.shape == (2, 32, 26)
    np.testing.assert_allclose(poses[..., JOINTS], truth[..., JOINTS], atol=1e-4)
    np.testing.assert_allclose(poses[..., 2], truth[..., 2], atol=1e-4)
    xy, heading = root_anchor(poses)
    np.testing.assert_allclose(xy, 0, atol=1e-12)
    np.testing.assert_allclose(heading, 0, atol=1e-6)


def test_the_motion_figure_draws_ground_truth_then_reconstruction_in_raw_units(tmp_path, monkeypatch):
    """``plot_motion_reconstructions`` hands the feature plot the first window's ground truth, then its
    reconstruction, both in raw units. Known answer: statistics of mean 2 and scale 3, standardized windows x = 0 and
    x_hat = 1: the ground truth drawn as 2 everywhere, the reconstruction as 5, at the data's frame rate. Fails on: the
    two swapped (the reconstruction labelled as the ground truth)."""
    import numpy as np

    import daps.data.motion as dm
    import daps.motion.render as render

    drawn = {}

    def keep(target, pred, path, fps, title):
        drawn.update(target=target, pred=pred, fps=fps)

    monkeypatch.setattr(dm, "motion_data", lambda data: SimpleNamespace(stats=_motion_stats(2.0, 3.0), fps=30.0))
    monkeypatch.setattr(render, "plot_feature_trajectories", keep)
    x = torch.zeros(2, 1, 4, _motion_stats().mean.shape[0])
    dm.plot_motion_reconstructions(None, x, x + 1, tmp_path / "f.png", "t")
    assert np.all(drawn["target"] == 2.0) and np.all(drawn["pred"] == 5.0) and drawn["target"].shape == x.shape[2:]
    assert drawn["fps"] == 30.0


def _stub_clip(monkeypatch, frames: int = 40, window: int = 4, fps: float = 50.0):
    """``motion_data`` giving one clip ``walk1_subject1`` of ``frames`` zero poses and features (identity
    statistics); poses from features and the anchor stood in for by zeros (only frame counts are checked)."""
    import numpy as np

    import daps.data.motion as dm
    import daps.motion.features as features

    stats = _motion_stats()
    count = stats.mean.shape[0]
    motion = SimpleNamespace(poses={"walk1_subject1": np.zeros((frames, 26))}, window=window, fps=fps, stats=stats,
                             features={"walk1_subject1": np.zeros((frames, count), np.float32)})
    monkeypatch.setattr(dm, "motion_data", lambda data: motion)
    monkeypatch.setattr(features, "features_to_poses", lambda raw, xy, heading, fps: np.zeros((*raw.shape[:2], 26)))
    monkeypatch.setattr(features, "root_anchor", lambda poses: (np.zeros((len(poses), 2)), np.zeros(len(poses))))


class _Identity(torch.nn.Module):
    """A model whose reconstruction is its input; records its mode and the generator of each call."""

    def __init__(self) -> None:
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(()))
        self.calls: list[tuple[bool, torch.Generator | None]] = []

    def reconstruct(self, x, generator=None):
        self.calls.append((self.training, generator))
        return SimpleNamespace(x_hat=x)


def test_reconstruct_clip_takes_whole_windows_of_the_seconds_asked_and_names_an_unknown_clip(monkeypatch):
    """``reconstruct_clip`` reconstructs ``seconds`` rounded up to whole windows, at least one, and refuses a clip the
    data lack with one UserError naming the valid ones. Known answers (windows of 4 frames at 50 fps, a clip of 40
    frames): 0.56 s is exactly 28 frames, 7 windows (28 frames, although 0.56 * 50 / 4 is 7.000000000000001 in
    floats); 0 s is one window (4 frames); 10 s from 0.1 s (frame 5) is the 8 whole windows left (32 frames); clip
    "run9" refused naming walk1_subject1. Fails on: the seconds rounded up without the float tolerance (8 windows);
    no floor of one window (0 s refused), or exactly one window refused; the windows not cut to what the clip has
    left; the clip unchecked (a KeyError)."""
    from daps.data.motion import reconstruct_clip

    _stub_clip(monkeypatch)
    for start, seconds, frames in ((0.0, 0.56, 28), (0.0, 0.0, 4), (0.1, 10.0, 32)):
        target, pred = reconstruct_clip(_Identity(), None, "walk1_subject1", start, seconds)
        assert target.shape == pred.shape == (frames, 26), seconds
    with pytest.raises(UserError, match="unknown motion clip 'run9'; valid clips: walk1_subject1"):
        reconstruct_clip(_Identity(), None, "run9", 0.0, 1.0)


def test_reconstruct_clip_runs_the_model_in_eval_mode_with_the_generator_given(monkeypatch):
    """``reconstruct_clip`` puts the model in eval mode (no dropout in a figure or video) and passes the generator
    given on to its ``reconstruct`` (a seeded clip is reproducible). Known answer: a model in training mode is called
    once, in eval mode, with that very generator. Fails on: the model left in training mode; the generator dropped."""
    from daps.data.motion import reconstruct_clip

    _stub_clip(monkeypatch)
    model, generator = _Identity().train(), torch.Generator().manual_seed(0)
    reconstruct_clip(model, None, "walk1_subject1", 0.0, 0.16, generator)
    assert model.calls == [(False, generator)]
