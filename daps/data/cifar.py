"""CIFAR-10 loaders: the official python-pickle release and a lossy JPEG fallback copy.

:func:`load_cifar10` reads the standard release (``cifar-10-python.tar.gz`` or its extracted folder
``cifar-10-batches-py/``). :func:`load_cifar10_jpeg` reads ``cifar10_jpeg_q75_{train,test}.npz``: a JPEG
quality-75 re-encoding of CIFAR-10. That copy is LOSSY -- its pixels are not the original CIFAR-10 pixels
(JPEG at 32x32 blurs chroma), so numbers computed on it (likelihoods, PSNR, FID, ...) are NOT comparable with
published CIFAR-10 results; use it for smoke tests and self-consistent comparisons only.

Both return an :class:`~daps.data.paths.ImageSet` with uint8 pixels ``(N, 3, 32, 32)`` (CHW, RGB) and int64
labels ``(N,)``; standardize with :data:`CIFAR10_MEAN` / :data:`CIFAR10_STD` (0-255 scale, original:
data/datasets/cifar.py).
"""

from __future__ import annotations

import functools
import io
import logging
import os
import pickle
import shutil
import tarfile
import tempfile
import time
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image

from daps.data import paths
from daps.data.paths import (
    DATA_DIR_FIX,
    NPZ_ERRORS,
    ImageSet,
    PathLike,
    check_split,
    dedupe,
    file_key,
    md5,
    user_roots,
)
from daps.errors import UserError
from daps.runfolder import publish_mode

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR10_CLASSES",
    "load_cifar10",
    "load_cifar10_jpeg",
    "cifar10_cache_dir",
    "cifar10_jpeg_cache_dir",
]

log = logging.getLogger(__name__)

# Per-channel statistics of the CIFAR-10 training set on the 0-255 scale (original: data/datasets/cifar.py).
CIFAR10_MEAN = (125.307, 122.950, 113.865)
CIFAR10_STD = (62.993, 62.089, 66.705)
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)

TGZ_NAME = "cifar-10-python.tar.gz"
TGZ_MD5 = "c58f30108f718f92721af3b95e74349a"
TGZ_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
BATCH_DIR = "cifar-10-batches-py"
BATCH_FILES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
DOWNLOAD_TIMEOUT_S = 30.0
IMAGE_SHAPE = (3, 32, 32)

JPEG_DIR = "cifar10_jpeg_fallback"
LOSSY_WARNING = (
    "cifar10-jpeg is a JPEG quality-75 re-encoding of CIFAR-10: lossy, NOT the original pixels; "
    "results on it are not comparable with published CIFAR-10 numbers"
)


def cifar10_cache_dir() -> Path:
    """Download / extraction folder for the official release: ``<cache>/daps/cifar10``."""
    return paths.cache_root() / "cifar10"


def cifar10_jpeg_cache_dir() -> Path:
    """Folder for the decoded-array cache of the JPEG copy: ``<cache>/daps/cifar10_jpeg``."""
    return paths.cache_root() / "cifar10_jpeg"


# --------------------------------------------------------------------------- official release


def _search_folders(data_dir: PathLike | None) -> list[Path]:
    folders: list[Path] = []
    for root in user_roots(data_dir):
        folders += [root, root / "cifar10"]
    folders.append(cifar10_cache_dir())
    return dedupe(folders)


def _has_batches(folder: Path, names: tuple[str, ...]) -> bool:
    return all((folder / name).is_file() for name in names)


def _safe_member_name(name: str) -> bool:
    """Only relative paths inside ``cifar-10-batches-py/``: no absolute paths, no ``..``."""
    p = PurePosixPath(name)
    return (
        not p.is_absolute()
        and ".." not in p.parts
        and "\\" not in name
        and len(p.parts) >= 1
        and p.parts[0] == BATCH_DIR
    )


def _extract(tgz: Path, dest_parent: Path) -> Path:
    """Verify the archive's md5, then unpack its ``cifar-10-batches-py/`` into ``dest_parent`` atomically
    (into a temp folder, then renamed). Only regular files and folders with safe names are written."""
    digest = md5(tgz)
    if digest != TGZ_MD5:
        raise UserError(
            f"{tgz}: md5 {digest} does not match the official CIFAR-10 release ({TGZ_MD5}); "
            "the file is corrupt, truncated or not cifar-10-python.tar.gz -- delete it and download it again"
        )
    dest_parent.mkdir(parents=True, exist_ok=True)
    paths.remove_stale_temporaries(dest_parent, f".{BATCH_DIR}.")
    tmp = Path(tempfile.mkdtemp(prefix=f".{BATCH_DIR}.", dir=dest_parent))
    try:
        with tarfile.open(tgz, "r:gz") as tar:
            for member in tar:
                if not _safe_member_name(member.name):
                    raise UserError(f"{tgz}: refusing unsafe archive member {member.name!r}")
                if member.isdir():
                    continue
                if not member.isfile():  # links, devices, fifos: never part of the release
                    raise UserError(f"{tgz}: refusing non-regular archive member {member.name!r}")
                target = tmp.joinpath(*PurePosixPath(member.name).parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                assert src is not None  # a regular file always has contents
                with src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
        extracted = tmp / BATCH_DIR
        missing = [n for names in BATCH_FILES.values() for n in names if not (extracted / n).is_file()]
        if missing:
            raise UserError(f"{tgz}: archive lacks {BATCH_DIR}/{missing[0]}")
        final = dest_parent / BATCH_DIR
        try:
            os.rename(extracted, final)
        except OSError:
            if not _has_batches(final, BATCH_FILES["train"] + BATCH_FILES["test"]):
                raise  # not a concurrent extraction that finished first
        log.info("extracted %s to %s", tgz, final)
        return final
    except (tarfile.TarError, EOFError) as e:
        raise UserError(f"{tgz}: corrupt archive ({e})") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _locate_batches(split: str, folders: list[Path]) -> Path | None:
    """Folder ``.../cifar-10-batches-py`` holding the split's pickles, extracting an archive if needed.

    Per search folder (in order) an extracted ``cifar-10-batches-py/`` wins over ``cifar-10-python.tar.gz``;
    archives are md5-checked and extracted into the cache folder (the data folder may be read-only)."""
    names = BATCH_FILES[split]
    for folder in folders:
        if _has_batches(folder / BATCH_DIR, names):
            return folder / BATCH_DIR
        tgz = folder / TGZ_NAME
        if tgz.is_file():
            cached = cifar10_cache_dir() / BATCH_DIR
            if _has_batches(cached, names):  # extracted before (only an md5-verified archive gets there)
                return cached
            return _extract(tgz, cifar10_cache_dir())
    return None


def _download(dest_dir: Path) -> Path:
    """Fetch the official archive into ``dest_dir`` atomically, verifying its md5; OSError on failure."""
    with paths.download_folder(dest_dir):
        paths.remove_stale_temporaries(dest_dir, f".{TGZ_NAME}.")
        fd, tmp = tempfile.mkstemp(prefix=f".{TGZ_NAME}.", suffix=".part", dir=dest_dir)
        try:
            # Every download goes through paths.urlopen, so one monkeypatch disables them all in tests.
            with os.fdopen(fd, "wb") as out, paths.urlopen(TGZ_URL, DOWNLOAD_TIMEOUT_S) as resp:
                shutil.copyfileobj(resp, out)
            digest = md5(Path(tmp))
            if digest != TGZ_MD5:
                raise OSError(f"downloaded md5 {digest} != expected {TGZ_MD5}")
            dest = dest_dir / TGZ_NAME
            publish_mode(Path(tmp))
            os.replace(tmp, dest)
            log.info("downloaded %s to %s", TGZ_URL, dest)
            return dest
        except OSError:
            raise
        except Exception as e:  # e.g. http.client.IncompleteRead: report as a failed download
            raise OSError(f"{type(e).__name__}: {e}") from e
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch -> uint8 ``(n, 3, 32, 32)`` and int64 ``(n,)``.

    ``pickle`` can run arbitrary code, so it is only applied to the files of the official layout
    (``cifar-10-batches-py/data_batch_*`` / ``test_batch``), found where the user keeps CIFAR-10 or
    extracted from the md5-verified official archive."""
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="bytes")
    except Exception as e:  # a damaged pickle can raise almost anything (ImportError, MemoryError, OverflowError)
        raise UserError(f"{path}: not a CIFAR-10 python batch ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict) or b"data" not in obj or b"labels" not in obj:
        raise UserError(f"{path}: not a CIFAR-10 python batch (expected a dict with b'data' and b'labels')")
    data = np.asarray(obj[b"data"])
    labels = np.asarray(obj[b"labels"]).reshape(-1)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise UserError(f"{path}: b'data' is {data.dtype} {data.shape}, expected uint8 (n, 3072)")
    if labels.size and labels.dtype.kind not in "iu":
        raise UserError(f"{path}: b'labels' are {labels.dtype}, expected integers")
    labels = labels.astype(np.int64)
    if labels.shape[0] != data.shape[0]:
        raise UserError(f"{path}: {data.shape[0]} images but {labels.shape[0]} labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise UserError(f"{path}: labels outside 0..9")
    # Each row is the red plane, then green, then blue, each 32x32 row-major: CHW order already.
    return data.reshape(-1, *IMAGE_SHAPE), labels


def load_cifar10(split: str, data_dir: PathLike | None = None, download: bool = True) -> ImageSet:
    """Load CIFAR-10 (50k train / 10k test) from the official python release, in the original order.

    Looks for ``cifar-10-batches-py/`` (extracted) or ``cifar-10-python.tar.gz`` in ``data_dir``,
    ``data_dir/cifar10``, ``$DAPS_DATA_DIR``, ``$DAPS_DATA_DIR/cifar10`` and the cache folder
    (``~/.cache/daps/cifar10``). Archives are md5-checked and extracted safely into the cache folder. If
    nothing is found and ``download`` is true, the archive is downloaded from the official URL into the cache.

    Returns:
        ImageSet with images uint8 ``(N, 3, 32, 32)`` (RGB, CHW) and labels int64 ``(N,)``, name "cifar10".

    Raises:
        ValueError: bad split; an archive with the wrong md5 or unsafe members; a malformed batch file.
        FileNotFoundError: nothing found (and the download was disabled or failed).
    """
    check_split(split)
    folders = _search_folders(data_dir)
    batches = _locate_batches(split, folders)
    if batches is None:
        if download:
            try:
                _extract(_download(cifar10_cache_dir()), cifar10_cache_dir())
                batches = _locate_batches(split, [cifar10_cache_dir()])
                reason = "the downloaded archive lacks the split"
            except OSError as e:
                reason = f"download from {TGZ_URL} failed ({e})"
        else:
            reason = "download disabled"
        if batches is None:
            raise FileNotFoundError(
                f"CIFAR-10 {split} split not found: need {TGZ_NAME} (or its extracted folder {BATCH_DIR}/) in one "
                f"of: {', '.join(str(f) for f in folders)}; {reason}. Fix: put {TGZ_NAME} in one of those folders, "
                f"or {DATA_DIR_FIX} to the folder holding it."
            )
    parts = [_read_batch(batches / name) for name in BATCH_FILES[split]]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    log.debug("loaded CIFAR-10 %s: %d images from %s", split, len(labels), batches)
    return ImageSet(images=torch.from_numpy(images), labels=torch.from_numpy(labels), name="cifar10")


# --------------------------------------------------------------------------- lossy JPEG copy


def _jpeg_name(split: str) -> str:
    return f"cifar10_jpeg_q75_{split}.npz"


def _jpeg_candidates(split: str, data_dir: PathLike | None) -> list[Path]:
    name = _jpeg_name(split)
    paths: list[Path] = []
    for root in user_roots(data_dir):
        paths += [root / name, root / JPEG_DIR / name]
    paths.append(cifar10_jpeg_cache_dir() / name)
    return dedupe(paths)


def _read_npz(path: Path) -> tuple[np.lib.npyio.NpzFile, np.ndarray, np.ndarray]:
    """Open the npz (no pickle) and check its offsets and labels; returns (npz, offsets, labels)."""
    npz = None
    try:
        npz = np.load(path, allow_pickle=False)
        offsets = np.asarray(npz["offsets"], dtype=np.int64)
        y = np.asarray(npz["y"])
        if "jpeg_bytes" not in npz.files:
            raise KeyError("jpeg_bytes is missing")
    except (KeyError, IndexError, *NPZ_ERRORS) as e:
        if isinstance(npz, np.lib.npyio.NpzFile):
            npz.close()
        raise UserError(f"{path}: not a CIFAR-10 JPEG npz with keys jpeg_bytes, offsets, y ({e})") from e
    problem = ""
    if offsets.ndim != 1 or offsets.shape[0] < 1 or offsets[0] != 0 or np.any(np.diff(offsets) <= 0):
        problem = "'offsets' must be increasing int64 (N+1,) starting at 0"
    elif (y.shape != (offsets.shape[0] - 1,) or (y.size and y.dtype.kind not in "iu")
          or (y.size and (y.min() < 0 or y.max() > 9))):
        problem = f"'y' must be (N,) integer labels in 0..9 with N = len(offsets) - 1 = {offsets.shape[0] - 1}"
    if problem:
        npz.close()
        raise UserError(f"{path}: {problem}")
    return npz, offsets, y.astype(np.int64)


def _decode_all(path: Path, jpeg: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Every JPEG -> uint8 ``(N, 3, 32, 32)``."""
    if jpeg.dtype != np.uint8 or jpeg.ndim != 1 or jpeg.shape[0] != offsets[-1]:
        raise UserError(f"{path}: 'jpeg_bytes' must be uint8 1-D of length offsets[-1] = {offsets[-1]}")
    n = offsets.shape[0] - 1
    out = np.empty((n, 32, 32, 3), dtype=np.uint8)
    for i in range(n):
        try:
            with Image.open(io.BytesIO(jpeg[offsets[i] : offsets[i + 1]].tobytes())) as im:
                rgb = np.asarray(im.convert("RGB"))
        except (OSError, SyntaxError, ValueError) as e:
            raise UserError(f"{path}: image {i} is not a decodable JPEG ({e})") from e
        if rgb.shape != (32, 32, 3):
            raise UserError(f"{path}: image {i} decodes to {rgb.shape}, expected (32, 32, 3)")
        out[i] = rgb
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def _load_cached(cache: Path, n: int) -> np.ndarray | None:
    if not cache.is_file():
        return None
    try:
        arr = np.load(cache, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:  # EOFError: an empty file
        log.warning("ignoring unreadable decoded cache %s (%s)", cache, e)
        return None
    if arr.dtype != np.uint8 or arr.shape != (n, *IMAGE_SHAPE):
        log.warning("ignoring decoded cache %s: %s %s, expected uint8 %s", cache, arr.dtype, arr.shape,
                    (n, *IMAGE_SHAPE))
        return None
    return arr


def _save_cached(cache: Path, images: np.ndarray) -> None:
    """Write atomically (temp file + rename) so a concurrent or interrupted run never sees half a file."""
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        paths.remove_stale_temporaries(cache.parent, f".{cache.name}.")
        fd, tmp = tempfile.mkstemp(prefix=f".{cache.name}.", suffix=".part", dir=cache.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, images, allow_pickle=False)
            publish_mode(Path(tmp))
            os.replace(tmp, cache)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    except OSError as e:  # a read-only cache only costs the next load another decode
        log.warning("could not cache the decoded images at %s (%s)", cache, e)


@functools.cache
def _warn_lossy() -> None:
    """The lossy-copy warning, once per process (a run loads two splits)."""
    log.warning(LOSSY_WARNING)


def load_cifar10_jpeg(split: str, data_dir: PathLike | None = None) -> ImageSet:
    """Load the LOSSY JPEG quality-75 copy of CIFAR-10 (``cifar10_jpeg_q75_{train,test}.npz``).

    Not the original pixels: results are not comparable with published CIFAR-10 numbers. Images are sorted by
    class, then file number (not the original batch order). The npz is searched for in ``data_dir``,
    ``data_dir/cifar10_jpeg_fallback``, ``$DAPS_DATA_DIR``, ``$DAPS_DATA_DIR/cifar10_jpeg_fallback`` and
    ``~/.cache/daps/cifar10_jpeg``. The first load decodes every JPEG with Pillow and caches the result as
    ``~/.cache/daps/cifar10_jpeg/<npz stem>.<content key>.npy``; later loads read that array. The copy has
    no download source.

    Returns:
        ImageSet with images uint8 ``(N, 3, 32, 32)`` and labels int64 ``(N,)``, name "cifar10-jpeg".

    Raises:
        ValueError: bad split or a malformed npz.
        FileNotFoundError: the npz was not found.
    """
    check_split(split)
    candidates = _jpeg_candidates(split, data_dir)
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise FileNotFoundError(
            f"cifar10-jpeg {split} split not found: need {_jpeg_name(split)} in one of: "
            f"{', '.join(str(p.parent) for p in candidates)}. Fix: {DATA_DIR_FIX} "
            f"to the folder holding {JPEG_DIR}/{_jpeg_name(split)}."
        )
    _warn_lossy()
    npz, offsets, labels = _read_npz(path)
    n = labels.shape[0]
    cache = cifar10_jpeg_cache_dir() / f"{path.stem}.{file_key(path)}.npy"
    images = _load_cached(cache, n)
    with npz:
        if images is None:
            t0 = time.perf_counter()
            try:
                jpeg_bytes = np.asarray(npz["jpeg_bytes"])
            except NPZ_ERRORS as e:  # CRC / deflate errors
                raise UserError(f"{path}: its jpeg_bytes cannot be read ({e}); the file is damaged: replace it") from e
            images = _decode_all(path, jpeg_bytes, offsets)
            log.info("decoded %d JPEGs of %s in %.1f s; caching them at %s", n, path.name,
                     time.perf_counter() - t0, cache)
            _save_cached(cache, images)
        else:
            log.debug("cifar10-jpeg %s: decoded images read from %s", split, cache)
    return ImageSet(images=torch.from_numpy(images), labels=torch.from_numpy(labels), name="cifar10-jpeg")
