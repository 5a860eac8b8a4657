"""Where every dataset's files are looked for and cached, the dataset container they load into, and the one
network opener downloads go through (tests replace :func:`urlopen` to keep the suite offline).

Search order of every loader: an explicit ``data_dir`` (``data.data_dir`` / ``--data-dir``: it must exist, it
never falls back), else ``$DAPS_DATA_DIR``; then the download cache ``$XDG_CACHE_HOME/daps`` (``~/.cache/daps``).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import logging
import os
import shutil
import time
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from daps.errors import UserError
from daps.runfolder import file_digest

STALE_AFTER_S = 3600.0
"""Age after which a download's or unpack's temporary in the cache is taken as left by a killed process."""
NPZ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError)
"""What reading a damaged or foreign .npz can raise besides a missing key: a file cut short (EOFError, BadZipFile),
a changed byte (BadZipFile's CRC check, zlib.error; NotImplementedError for a compression method zipfile does not
know, RuntimeError for an "encrypted" flag), a pickled array (ValueError)."""

PathLike = Union[str, "os.PathLike[str]"]

ENV_VAR = "DAPS_DATA_DIR"
"""The environment variable naming the data folder when no ``data_dir`` is given."""
DATA_DIR_FLAGS = ("data.data_dir=DIR for train and compare, --data-dir DIR for eval, fid-stats, render, export-codes "
                  "and the robot commands")
"""How each command names the data folder."""
DATA_DIR_FIX = f"name the data folder ({DATA_DIR_FLAGS}) or set {ENV_VAR}"
"""How to point daps at the data, for the messages of missing files (each command spells the setting its own way)."""
SPLITS = ("train", "test")


@dataclass
class ImageSet:
    """A loaded image dataset.

    Attributes:
        images: ``(N, C, H, W)``: float32 in {0, 1} (binarized MNIST) or uint8 pixels (CIFAR-10).
        labels: int64 tensor ``(N,)``.
        name: dataset name, e.g. ``"mnist"`` or ``"cifar10"``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    name: str

    def __len__(self) -> int:
        return int(self.images.shape[0])


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")


def env_root() -> Path | None:
    """``$DAPS_DATA_DIR`` as a path, or None when unset."""
    value = os.environ.get(ENV_VAR, "").strip()
    return Path(value).expanduser() if value else None


def cache_root() -> Path:
    """The download cache: ``$XDG_CACHE_HOME/daps`` or ``~/.cache/daps`` (each dataset uses a subfolder)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "daps"


def explicit_root(data_dir: PathLike | None) -> Path | None:
    """An explicit ``data_dir`` as a folder, None when none is given, or FileNotFoundError naming it when it is
    not a folder: an explicit folder wins or fails, it never falls back to ``$DAPS_DATA_DIR``."""
    if data_dir is None or str(data_dir) == "":
        return None
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        problem = "is not a folder" if root.exists() else "does not exist"
        raise FileNotFoundError(f"the data folder {root} (data.data_dir / --data-dir) {problem}")
    return root


def user_roots(data_dir: PathLike | None) -> list[Path]:
    """The user's data folder: an explicit ``data_dir`` (which must exist, see :func:`explicit_root`), else
    ``$DAPS_DATA_DIR`` when set. The download cache is searched after it by each loader."""
    root = explicit_root(data_dir)
    if root is None:
        root = env_root()
    return [root] if root is not None else []


def dedupe(paths: list[Path]) -> list[Path]:
    """``paths`` without repeats, in order."""
    out: list[Path] = []
    for p in paths:
        if p not in out:
            out.append(p)
    return out


def md5(path: Path) -> str:
    """The md5 hex digest of a file (the checksum the standard dataset releases publish)."""
    return file_digest(path, "md5")


def file_key(path: Path, whole_up_to: int = 0) -> str:
    """Content key of a (large) file, cheap to compute: hash of its size, first and last MiB, or of its whole
    content when it is at most ``whole_up_to`` bytes. The last MiB of an .npz holds the zip directory with every
    member's CRC-32, so any content change alters its key; a tar has no such directory (a member changed in place
    keeps its size and both ends), so tars are keyed by their whole content."""
    size = path.stat().st_size
    if size <= whole_up_to:
        return file_digest(path, "sha256")[:16]
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


def urlopen(url: str, timeout: float):
    """Open ``url`` (fixed https mirrors of the standard releases); every download goes through here."""
    return urllib.request.urlopen(url, timeout=timeout)  # noqa: S310


__all__ = [
    "DATA_DIR_FIX",
    "DATA_DIR_FLAGS",
    "ENV_VAR",
    "SPLITS",
    "ImageSet",
    "PathLike",
    "cache_root",
    "check_split",
    "dedupe",
    "env_root",
    "explicit_root",
    "md5",
    "urlopen",
    "user_roots",
]


def remove_stale_temporaries(folder: Path, prefix: str) -> None:
    """Delete the entries ``<prefix>*`` of ``folder`` older than :data:`STALE_AFTER_S`: temporaries a killed
    download, unpack or cache write left behind (a younger one may belong to a process still writing it)."""
    now = time.time()
    for path in Path(folder).glob(glob.escape(prefix) + "*"):
        try:
            if now - path.lstat().st_mtime <= STALE_AFTER_S:
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:  # gone already, or not ours to remove: it costs only space
            continue
        logging.getLogger("daps").info("removed %s, left by an interrupted download or unpack", path)



@contextlib.contextmanager
def download_folder(folder: Path) -> Iterator[Path]:
    """Create ``folder`` (and its missing parents) for a download; if the download fails, remove the folders made
    here that are still empty, so a failed first download leaves no empty cache folders behind."""
    from daps.runfolder import missing_folders, remove_empty_folders

    made = missing_folders(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    except BaseException:
        remove_empty_folders(made)
        raise


def named_npz(data_dir: PathLike | None, dataset: str, holds: str) -> Path:
    """The ``.npz`` file ``data_dir`` names for a dataset of one's own (``arrays``, ``sequences``): it must be given
    and be a file (such a dataset has no default place and no download). ``holds``: what the file holds, for the
    message (``images``)."""
    if data_dir is None or str(data_dir) == "":
        raise FileNotFoundError(
            f"{dataset}: name the .npz file of {holds} (data.data_dir=FILE.npz for train and compare, --data-dir "
            "FILE.npz for eval and export-codes)"
        )
    path = Path(data_dir).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{dataset}: {path} {'is not a file' if path.exists() else 'does not exist'} "
                                "(data.data_dir=FILE.npz for train and compare, --data-dir FILE.npz for eval and "
                                "export-codes)")
    return path


def read_npz(path: Path, dataset: str, keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The arrays ``keys`` (all when None) that npz ``path`` has, read without unpickling anything; a UserError
    naming the file and ``dataset`` when it is not a readable npz of plain arrays."""
    if not zipfile.is_zipfile(path):
        raise UserError(f"{dataset}: {path} is not an .npz archive, or was cut short (numpy.savez or "
                        "savez_compressed writes one)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in (npz.files if keys is None else keys) if key in npz.files}
    except NPZ_ERRORS as err:  # ValueError: a pickled (object) array
        why = f"{type(err).__name__}: {err}"
        raise UserError(f"{dataset}: {path} is not a readable .npz of plain arrays ({why})") from None


def check_recorded_file(record: Path, path: Path) -> None:
    """UserError unless ``path`` is the file a run recorded in ``record`` (its SHA-256): another file, or the same
    one changed since. A missing record (a run folder copied without it) is warned about and passes."""
    import json

    if not record.is_file():
        logging.getLogger(__name__).warning(
            "%s is missing (a run folder copied without it?): the file it was trained on is not checked", record)
        return
    try:
        saved = json.loads(record.read_text())
        digest = saved["sha256"]
    except (ValueError, KeyError, TypeError, OSError) as err:
        why = f"{type(err).__name__}: {err}"
        raise UserError(f"{record}: not a readable record of the run's data ({why})") from None
    if file_digest(path, "sha256") != digest:
        raise UserError(
            f"{path} is not the file this run was trained on ({saved.get('file', '?')}, SHA-256 "
            f"{str(digest)[:12]}...): it is another file or has changed since"
        )
