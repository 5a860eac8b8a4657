"""Known answers for the image data paths around the models: FID preprocessing and streaming, the standardization
constants, class-folder items and passes, the CIFAR-10 and ImageNet-sample loaders, image files in and out, and the
code statistics' bounds (each test pins a behaviour that a plausible slip would change silently)."""

from __future__ import annotations

import io
import os
import pickle
import random
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from daps.errors import UserError

REAL_DIR = os.environ.get("DAPS_DATA_DIR", "").strip()
needs_real_data = pytest.mark.skipif(not REAL_DIR, reason="DAPS_DATA_DIR is not set")
offline = pytest.mark.usefixtures("offline")


# --------------------------------------------------------------------------------------------------
# FID preprocessing and streaming


def test_fid_preprocess_quantises_float64_in_float64():
    """float64 images are quantised at their own precision: a value 1e-7 levels beyond ``LEVEL_TOLERANCE`` below
    level k is level k - 1, 1e-7 levels within it is level k, for every k. Fails on: float64 narrowed to float32
    first (its rounding, about 1e-5 levels, moves hundreds of them across the boundary)."""
    from daps.metrics.fid import LEVEL_TOLERANCE, fid_preprocess

    k = np.arange(1, 256)
    for offset, level in ((1e-7, k - 1), (-1e-7, k)):
        x = torch.zeros(1, 3, 299, 299, dtype=torch.float64)
        x[0, :, 0, :255] = torch.from_numpy((k - LEVEL_TOLERANCE - offset) / 255)
        levels = ((fid_preprocess(x)[0, :, 0, :255] + 1) / 2 * 255).round().long()
        assert torch.equal(levels, torch.from_numpy(level).expand(3, -1)), offset


def test_fid_preprocess_downsamples_without_antialiasing():
    """598 -> 299 bilinear, align_corners=False, no antialiasing: output column j is the mean of source columns
    2j and 2j + 1. Columns in pairs 255, 255, 0, 0, ... give exactly +1, -1, +1, ... Fails on: antialias=True
    (a wider triangle filter blends the pairs)."""
    from daps.metrics.fid import fid_preprocess

    columns = torch.tensor([255 if c % 4 in (0, 1) else 0 for c in range(598)], dtype=torch.uint8)
    img = columns.view(1, 1, 1, 598).expand(1, 3, 598, 598)
    out = fid_preprocess(img)
    expected = torch.tensor([1.0 if j % 2 == 0 else -1.0 for j in range(299)])
    assert out.shape == (1, 3, 299, 299)
    assert torch.equal(out[0, :, 150], expected.expand(3, -1))


class _MeanNet(torch.nn.Module):
    """Stand-in for the Inception net: per-channel means tiled to 2048 dims."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.mean((2, 3)) * self.scale).repeat(1, 683)[:, :2048]


def test_stats_of_images_stops_pulling_batches_at_num_images(single_thread):
    """A stream (an endless training stream, say) is read only until ``num_images`` images are in: 8 images of
    batches of 4 are 2 batches. Fails on: a stop test of ``>`` (the stream is drained, or never ends)."""
    from daps.metrics.fid import stats_of_images

    pulled = []

    def stream():
        g = torch.Generator().manual_seed(0)
        for i in range(5):  # finite, so the faulty version ends too
            pulled.append(i)
            yield torch.randint(0, 256, (4, 3, 8, 8), generator=g, dtype=torch.uint8)

    stats = stats_of_images(_MeanNet(), stream(), num_images=8)
    assert stats.num == 8 and pulled == [0, 1]


# --------------------------------------------------------------------------------------------------
# standardization constants


def test_cifar10_constants_are_the_published_rgb_statistics():
    """The CIFAR-10 training-set statistics as published (and used by every CIFAR-10 codebase): mean
    (0.4914, 0.4822, 0.4465), std (0.2470, 0.2435, 0.2616) of [0, 1] pixels, R, G, B. Fails on: BGR order."""
    from daps.data.cifar import CIFAR10_MEAN, CIFAR10_STD

    np.testing.assert_allclose(CIFAR10_MEAN, 255 * np.array([0.4914, 0.4822, 0.4465]), atol=0.05)
    np.testing.assert_allclose(CIFAR10_STD, 255 * np.array([0.2470, 0.2435, 0.2616]), atol=0.05)


@needs_real_data
def test_imagenet_constants_match_the_rgb_statistics_of_the_sample():
    """Per-channel mean and std of the 1,000-image ImageNet sample (one image per class, decoded here by PIL),
    R, G, B: means (125.2, 117.7, 105.2), stds (69.8, 68.2, 71.4). The constants are within a few levels of them and
    order the channels the same way (mean R > G > B; std G < R < B). Fails on: BGR means, R and G stds swapped."""
    from daps.data.imagefolder import IMAGENET_MEAN, IMAGENET_STD

    tar_path = Path(REAL_DIR) / "imagenet_sample_256" / "imagenet_1k_sample_256_q90.tar"
    if not tar_path.is_file():
        pytest.skip(f"{tar_path} not found")
    total, squares, count = np.zeros(3), np.zeros(3), 0
    with tarfile.open(tar_path) as tar:
        members = [m for m in tar if m.name.endswith(".jpg")]
        for member in members:
            with Image.open(io.BytesIO(tar.extractfile(member).read())) as im:
                px = np.asarray(im.convert("RGB"), dtype=np.float64).reshape(-1, 3)
            total, squares, count = total + px.sum(0), squares + (px * px).sum(0), count + len(px)
    mean = total / count
    std = np.sqrt(squares / count - mean**2)
    np.testing.assert_allclose(IMAGENET_MEAN, mean, atol=5)
    np.testing.assert_allclose(IMAGENET_STD, std, atol=3)
    assert list(np.argsort(IMAGENET_MEAN)) == list(np.argsort(mean)) == [2, 1, 0]
    assert list(np.argsort(IMAGENET_STD)) == list(np.argsort(std)) == [1, 0, 2]


# --------------------------------------------------------------------------------------------------
# class-folder datasets and passes


def _folder(root: Path, files: dict[str, int | None]) -> Path:
    """``files``: relative path -> gray level of an 8x8 PNG, or None for a corrupt file."""
    for rel, level in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        if level is None:
            (root / rel).write_bytes(b"not an image")
        else:
            Image.new("RGB", (8, 8), (level, level, level)).save(root / rel)
    return root


def test_a_negative_index_is_the_item_counted_from_the_end(tmp_path):
    """``dataset[-1]`` is ``dataset[n - 1]``, random crop included. Fails on: the crop seeded by -1."""
    from daps.data.imagefolder import ImageFolderDataset

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    ds = ImageFolderDataset(tmp_path, 8, train=True, seed=1)
    for neg in (-1, -4):
        image, label, _ = ds[neg]
        ref_image, ref_label, _ = ds[len(ds) + neg]
        assert torch.equal(image, ref_image) and label == ref_label


def test_a_replaced_unreadable_file_carries_the_label_of_its_replacement(tmp_path):
    """The last file of class a is corrupt: it is replaced by the first image of class b, labelled b (1). Fails on:
    the label of the unreadable file's class."""
    from daps.data.imagefolder import ImageFolderDataset

    root = _folder(tmp_path, {"a/0.png": 10, "a/1_bad.png": None, "b/0.png": 200})
    image, label, skipped = ImageFolderDataset(root, 8, train=False)[1]
    assert skipped == (str(root / "a" / "1_bad.png"),) and label == 1 and torch.all(image == 200)


def test_a_labelled_pass_counts_its_skipped_files(tmp_path):
    """``EvalBatches.labelled`` reports unreadable files like the plain pass. Fails on: no count there."""
    from daps.data.imagefolder import ImageFolderDataset, eval_batches

    root = _folder(tmp_path, {"a/0.png": 10, "a/1_bad.png": None, "b/0.png": 200, "b/1.png": 220})
    passes = eval_batches(ImageFolderDataset(root, 8, train=False), 3)
    labels = torch.cat([y for _, y in passes.labelled()]).tolist()
    assert labels == [0, 1, 1, 1] and passes.num_skipped == 1
    assert passes.skipped_paths == {str(root / "a" / "1_bad.png")}


def test_a_zero_eval_batch_size_is_a_user_error(tmp_path):
    from daps.data.imagefolder import ImageFolderDataset, eval_batches

    ds = ImageFolderDataset(_folder(tmp_path, {"a/0.png": 1}), 8, train=False)
    for bad in (0, True, 2.5):
        with pytest.raises(UserError, match="batch_size must be a positive integer"):
            eval_batches(ds, bad)


def test_a_folder_eval_set_passes_over_count_images_only(tmp_path):
    """``count`` of the split's 12 images, distinct and in file order (a random subset). Fails on: the whole
    split in every pass while ``num_images`` says ``count``."""
    from daps.data.evalset import FolderEvalSet
    from daps.data.imagefolder import ImageFolderDataset

    root = _folder(tmp_path, {f"c{c}/{i}.png": 20 * c + i for c in range(4) for i in range(3)})
    images = FolderEvalSet(ImageFolderDataset(root, 8, train=False), 2, 0, 5, torch.device("cpu"))
    got = torch.cat(list(images.batches()))
    levels = got[:, 0, 0, 0].tolist()
    assert images.num_images == 5 and got.shape == (5, 3, 8, 8)
    assert levels == sorted(set(levels)) and set(levels) <= {20 * c + i for c in range(4) for i in range(3)}


# --------------------------------------------------------------------------------------------------
# CIFAR-10 files


@offline
def test_a_cifar10_batch_with_label_10_is_refused(tmp_path):
    """CIFAR-10 has classes 0..9: a label 10 is a damaged or foreign file. Fails on: the bound 10."""
    from daps.data.cifar import BATCH_DIR, load_cifar10

    (tmp_path / BATCH_DIR).mkdir()
    obj = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [9, 10]}
    (tmp_path / BATCH_DIR / "test_batch").write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(UserError, match="labels outside 0..9"):
        load_cifar10("test", data_dir=tmp_path, download=False)


@offline
def test_a_decoded_cache_of_the_wrong_shape_is_decoded_anew(tmp_path):
    """A cached array of another shape (another file's, or damaged) is ignored and the JPEGs decoded again.
    Fails on: only the dtype checked (three black images returned for two coloured ones)."""
    from test_data_images import _write_jpeg_npz

    from daps.data.cifar import load_cifar10_jpeg

    colors = [(250, 10, 10), (10, 10, 250)]
    _write_jpeg_npz(tmp_path, "test", colors)
    first = load_cifar10_jpeg("test", data_dir=tmp_path).images
    (cache,) = (tmp_path / "xdg_cache").rglob("cifar10_jpeg_q75_test.*.npy")
    np.save(cache, np.zeros((3, 3, 32, 32), np.uint8))
    again = load_cifar10_jpeg("test", data_dir=tmp_path).images
    assert again.shape == (2, 3, 32, 32) and torch.equal(again, first)
    np.testing.assert_allclose(again.float().mean((2, 3)).numpy(), colors, atol=4)


# --------------------------------------------------------------------------------------------------
# ImageNet sample tar and folders


def _sample_tar(path: Path, names: list[str], labels: str) -> Path:
    with tarfile.open(path, "w") as tar:
        for name in names:
            buf = io.BytesIO()
            Image.new("RGB", (8, 8), (len(name), 0, 0)).save(buf, format="JPEG")
            info = tarfile.TarInfo(f"imagenet_1k_sample_256/{name}")
            info.size = len(buf.getvalue())
            tar.addfile(info, io.BytesIO(buf.getvalue()))
        info = tarfile.TarInfo("imagenet_1k_sample_256/labels.tsv")
        info.size = len(labels.encode())
        tar.addfile(info, io.BytesIO(labels.encode()))
    return path


def test_sample_tar_names_match_any_case(tmp_path):
    """Image names ``NNN_<wnid>_<name>.jpg`` in any case (``.JPG``, ``.Jpeg``) are unpacked. Fails on: a
    case-sensitive pattern."""
    from daps.data.imagenet import unpack_imagenet_sample

    names = ["000_n01000001_a.JPG", "001_n01000002_b.Jpeg"]
    tar = _sample_tar(tmp_path / "s.tar", names, "0\tn01000001\ta\n1\tn01000002\tb\n")
    dest = unpack_imagenet_sample(tar, tmp_path / "out")
    assert (dest / "n01000001" / names[0]).is_file() and (dest / "n01000002" / names[1]).is_file()


def test_sample_class_indices_must_be_the_ranks_of_the_sorted_wnids(tmp_path):
    """Class folders are labelled by sorted name: index 0 must be the smallest wnid, or the labels of
    labels.tsv and of the folders disagree. Fails on: no rank check."""
    from daps.data.imagenet import unpack_imagenet_sample

    names = ["000_n02000000_a.jpg", "001_n01000000_b.jpg"]  # consistent with labels.tsv, not sorted
    tar = _sample_tar(tmp_path / "s.tar", names, "0\tn02000000\ta\n1\tn01000000\tb\n")
    with pytest.raises(UserError, match="ranks of the sorted wnids"):
        unpack_imagenet_sample(tar, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@offline
def test_a_hidden_folder_is_not_an_imagenet_class(tmp_path):
    """``val/.cache/`` alone (as tools leave) is not a split of class folders. Fails on: hidden folders counted."""
    from daps.data.imagenet import find_imagenet_root

    (tmp_path / "data" / "val" / ".cache").mkdir(parents=True)
    assert find_imagenet_root(tmp_path / "data") is None
    (tmp_path / "data" / "val" / "n01440764").mkdir()
    assert find_imagenet_root(tmp_path / "data") == tmp_path / "data"


# --------------------------------------------------------------------------------------------------
# image files in and out (daps.load_images / daps.save_images)


def _model(name: str, shape: tuple[int, int, int]) -> SimpleNamespace:
    """What load_images / save_images read of a model: its input shape and its dataset's name."""
    return SimpleNamespace(input_spec=SimpleNamespace(image_shape=shape), config=SimpleNamespace(
        data=SimpleNamespace(name=name)))


def test_load_images_binarizes_itu_601_luma_rounded(tmp_path):
    """A binary (MNIST) model gets ``luma > 127`` with luma = round(0.299 R + 0.587 G + 0.114 B), as PIL's "L":
    (255, 100, 0) -> 134.9 -> 1; (0, 169, 250) -> 127.703 -> 128 -> 1; gray 127 -> 0, gray 128 -> 1. Fails on:
    BGR weights (87.8), truncated luma (127), ``>= 127``."""
    from daps.inputs import load_images

    colors = {"a.png": (255, 100, 0), "b.png": (0, 169, 250), "c.png": (127, 127, 127), "d.png": (128, 128, 128)}
    for name, color in colors.items():
        Image.new("RGB", (28, 28), color).save(tmp_path / name)
    assert [Image.new("RGB", (1, 1), c).convert("L").getpixel((0, 0)) for c in colors.values()] == [135, 128, 127, 128]
    x = load_images(tmp_path, _model("mnist", (1, 28, 28)))
    assert x.shape == (4, 1, 28, 28)
    assert x.amin((1, 2, 3)).tolist() == x.amax((1, 2, 3)).tolist() == [1.0, 1.0, 0.0, 1.0]


def test_load_images_takes_a_folders_images_sorted_by_name_any_case(tmp_path):
    """A folder's files in name order, suffixes in any case (``.PNG``), other files ignored. Fails on: directory
    order, case-sensitive suffixes."""
    from daps.inputs import image_files, load_images

    names = [f"img_{i:02d}.png" for i in range(12)] + ["img_12.PNG"]
    for i in random.Random(0).sample(range(len(names)), len(names)):
        Image.new("RGB", (28, 28), (200 if i % 2 else 0,) * 3).save(tmp_path / names[i], format="PNG")
    (tmp_path / "notes.txt").write_text("not an image")
    assert [p.name for p in image_files(tmp_path)] == names
    x = load_images(tmp_path, _model("mnist", (1, 28, 28)))
    assert x[:, 0, 0, 0].tolist() == [float(i % 2) for i in range(13)]


def test_load_images_standardizes_rgb_pixels_on_the_0_255_scale(tmp_path):
    """A CIFAR-10 model's input is (pixel - mean) / std per channel, pixels 0..255, mean (125.307, 122.950, 113.865),
    std (62.993, 62.089, 66.705). Fails on: pixels scaled to [0, 1] first."""
    from daps.inputs import load_images

    Image.new("RGB", (32, 32), (10, 200, 250)).save(tmp_path / "x.png")
    x = load_images(tmp_path / "x.png", _model("cifar10", (3, 32, 32)))
    expected = (np.array([10, 200, 250]) - np.array([125.307, 122.950, 113.865])) / np.array([62.993, 62.089, 66.705])
    assert x.shape == (1, 3, 32, 32)
    np.testing.assert_allclose(x[0, :, 5, 7].numpy(), expected, rtol=1e-6)


def test_save_images_rounds_and_keeps_the_image_layout(tmp_path):
    """Model-scale images back to pixels: rounded (100.6 -> 101), written as ``image_0000.png`` with rows and
    columns as given (4 high, 6 wide). Fails on: truncation, numbering from 1, a transposed image."""
    from daps.inputs import save_images

    mean, std = np.array([125.307, 122.950, 113.865]), np.array([62.993, 62.089, 66.705])
    pixels = 100.6 + np.arange(3 * 4 * 6).reshape(3, 4, 6)  # fractional part .6 everywhere
    x = torch.from_numpy((pixels - mean[:, None, None]) / std[:, None, None]).float()[None]
    paths = save_images(x, _model("cifar10", (3, 32, 32)), tmp_path / "out")
    assert [p.name for p in paths] == ["image_0000.png"]
    with Image.open(paths[0]) as im:
        back = np.asarray(im)
    assert back.shape == (4, 6, 3)
    np.testing.assert_array_equal(back, (np.floor(pixels) + 1).transpose(1, 2, 0))


# --------------------------------------------------------------------------------------------------
# code statistics


def test_code_statistics_refuse_the_code_equal_to_the_vocabulary_size():
    """Codes lie in [0, V): code V does not exist (it would make a histogram of V + 1 bins and a utilisation
    above the used fraction). Fails on: the bound ``> V``."""
    from daps.metrics.codes import code_histogram, codebook_utilization

    assert code_histogram(torch.tensor([[0, 3], [3, 3]]), 4).tolist() == [1, 0, 0, 3]
    with pytest.raises(UserError, match=r"\[0, 4\)"):
        codebook_utilization(torch.tensor([[0, 4]]), 4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_fid_preprocess_reads_every_level_in_every_float_type(dtype):
    """k/255 stored in any float type is level k, and a value midway between two levels is the lower one (the
    truncation of saved images). Fails on: float16 truncated as stored (it holds about half the levels just
    below k/255, which then read as k - 1)."""
    from daps.metrics.fid import fid_preprocess

    k = torch.arange(256, dtype=torch.float64)
    x = torch.zeros(2, 3, 299, 299, dtype=dtype)
    x[0, :, 0, :256] = (k / 255).to(dtype)
    x[1, :, 0, :255] = ((k[:255] + 0.5) / 255).to(dtype)
    levels = ((fid_preprocess(x)[:, 0, 0, :256].double() + 1) / 2 * 255).round().long()
    assert torch.equal(levels[0], k.long())
    assert torch.equal(levels[1, :255], k[:255].long())
