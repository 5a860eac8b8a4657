"""Known answers for behaviour that a mutation sweep of the FID Inception network (daps/nets/inception.py) and the
window datasets (daps/data/motion.py, daps/data/sequences.py) found no test guarding: the weight search's order,
fallbacks and paths, the merge order of shards, the loader's refusals and device, the network's input check and
float32 features; the sequences file's checks, labels and metrics. Each test names the slip it fails on; the
references are documented behaviour (README's FID section, the modules' docstrings) and hand-worked cases on tiny
files. The Inception tests use randomly initialised weights written to a temporary file (no download, no
``$DAPS_DATA_DIR``)."""

from __future__ import annotations

import re
from pathlib import Path

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
