"""ImageNet on disk: the 1,000-image sample tar (unpacked once into a class-folder tree in the cache) and where an
extracted ILSVRC2012 class-folder tree is looked for (``data_dir``, ``data_dir/imagenet``, ``$DAPS_DATA_DIR/imagenet``,
the cache)."""

from __future__ import annotations

import logging
import os
import re
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from daps.data import paths
from daps.data.paths import DATA_DIR_FIX, PathLike, dedupe, env_root, explicit_root
from daps.errors import UserError
from daps.runfolder import publish_mode

__all__ = [
    "SAMPLE_TOP",
    "find_imagenet_root",
    "imagenet_search_folders",
    "require_imagenet_root",
    "unpack_imagenet_sample",
]

log = logging.getLogger(__name__)

SAMPLE_TOP = "imagenet_1k_sample_256"
_SAMPLE_IMAGE = re.compile(r"^(\d+)_(n\d{8})_[^/\\]+\.(?:jpe?g)$", re.IGNORECASE)
_UNPACKED_MARKER = ".daps_unpacked"


def _sample_member(tar_path: Path, member: tarfile.TarInfo) -> str | None:
    """The file name of a safe member ``imagenet_1k_sample_256/<name>``, None for its folder entry."""
    parts = PurePosixPath(member.name).parts
    if member.name.startswith("/") or ".." in parts or "\\" in member.name or not parts or parts[0] != SAMPLE_TOP:
        raise UserError(f"{tar_path}: refusing unexpected archive member {member.name!r}")
    if member.isdir() and len(parts) == 1:
        return None
    if not member.isfile() or len(parts) != 2 or parts[1].startswith("."):
        raise UserError(f"{tar_path}: refusing unexpected archive member {member.name!r}")
    return parts[1]


def _parse_labels_tsv(tar_path: Path, text: str) -> dict[int, str]:
    table: dict[int, str] = {}
    for line in text.splitlines():
        if line.strip():
            fields = line.split("\t")
            if len(fields) < 2 or not fields[0].isdigit():
                raise UserError(f"{tar_path}: malformed labels.tsv line {line!r}")
            table[int(fields[0])] = fields[1]
    return table


def unpack_imagenet_sample(tar_path: PathLike, dest: PathLike) -> Path:
    """Unpack the ImageNet sample tar (``imagenet_1k_sample_256/NNN_<wnid>_<name>.jpg`` + ``labels.tsv``)
    into a class-folder tree ``dest/<wnid>/NNN_<wnid>_<name>.jpg`` (plus ``dest/labels.tsv``).

    Safe: only regular files with the expected names are written, at paths built from those names. Atomic:
    written into a temp folder beside ``dest``, then renamed. Idempotent: returns at once if ``dest`` is a
    finished unpack. Sorted wnids give the standard class indices NNN (checked against labels.tsv).

    Raises:
        FileNotFoundError: no such tar. FileExistsError: ``dest`` exists but is not a finished unpack.
        ValueError: an unexpected, unsafe or inconsistent archive.
    """
    tar_path, dest = Path(tar_path).expanduser(), Path(dest).expanduser()
    if (dest / _UNPACKED_MARKER).is_file():
        return dest
    if dest.exists():
        raise FileExistsError(f"{dest} exists but is not a finished unpack of {tar_path.name}; remove it first")
    if not tar_path.is_file():
        raise FileNotFoundError(f"ImageNet sample tar {tar_path} not found")
    dest.parent.mkdir(parents=True, exist_ok=True)
    paths.remove_stale_temporaries(dest.parent, f".{dest.name}.")
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        wnids: dict[int, str] = {}
        labels_text = None
        try:
            with tarfile.open(tar_path, "r:*") as tar:
                for member in tar:
                    name = _sample_member(tar_path, member)
                    if name is None:
                        continue
                    src = tar.extractfile(member)
                    assert src is not None  # regular file
                    with src:
                        if name == "labels.tsv":
                            try:
                                labels_text = src.read().decode("utf-8")
                            except UnicodeDecodeError as e:
                                raise UserError(f"{tar_path}: labels.tsv is not UTF-8 text ({e})") from None
                            continue
                        match = _SAMPLE_IMAGE.match(name)
                        if match is None:
                            raise UserError(f"{tar_path}: unexpected file {member.name!r}")
                        index, wnid = int(match[1]), match[2]
                        if index in wnids:
                            raise UserError(f"{tar_path}: class index {index} appears twice")
                        wnids[index] = wnid
                        (tmp / wnid).mkdir(exist_ok=True)
                        with open(tmp / wnid / name, "wb") as out:
                            shutil.copyfileobj(src, out)
        except (tarfile.TarError, EOFError) as e:
            raise UserError(f"{tar_path}: corrupt tar ({e})") from e
        if labels_text is None:
            raise UserError(f"{tar_path}: no {SAMPLE_TOP}/labels.tsv")
        if _parse_labels_tsv(tar_path, labels_text) != wnids:
            raise UserError(f"{tar_path}: labels.tsv does not match the image file names")
        if [wnids[i] for i in sorted(wnids)] != sorted(wnids.values()):
            raise UserError(f"{tar_path}: class indices are not the ranks of the sorted wnids")
        (tmp / "labels.tsv").write_text(labels_text, encoding="utf-8")
        (tmp / _UNPACKED_MARKER).write_text(f"{tar_path.name}\t{len(wnids)} images\n")
        publish_mode(tmp)  # mkdtemp made it 0700
        try:
            os.rename(tmp, dest)
        except OSError:
            if not (dest / _UNPACKED_MARKER).is_file():  # not a concurrent unpack that finished first
                raise
        log.info("unpacked %d images of %s into %s", len(wnids), tar_path, dest)
        return dest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def imagenet_search_folders(data_dir: PathLike | None = None) -> list[Path]:
    """Where :func:`find_imagenet_root` looks: ``data_dir`` and ``data_dir/imagenet`` (an explicit ``data_dir``
    must exist), else ``$DAPS_DATA_DIR/imagenet``; then ``~/.cache/daps/imagenet``."""
    folders: list[Path] = []
    root = explicit_root(data_dir)
    if root is not None:
        folders += [root, root / "imagenet"]
    elif (env := env_root()) is not None:
        folders.append(env / "imagenet")
    folders.append(paths.cache_root() / "imagenet")
    return dedupe(folders)


def _has_class_folders(folder: Path) -> bool:
    try:
        return folder.is_dir() and any(d.is_dir() and not d.name.startswith(".") for d in folder.iterdir())
    except OSError:
        return False


def find_imagenet_root(data_dir: PathLike | None = None) -> Path | None:
    """The first of :func:`imagenet_search_folders` holding ``train/<class>/`` and/or ``val/<class>/`` folders,
    else None. The official ILSVRC2012 tars are not unpacked here: extract them yourself into class folders
    (``train/<wnid>/*.JPEG``, and ``val/<wnid>/*.JPEG`` -- the validation images sorted into class folders)."""
    for folder in imagenet_search_folders(data_dir):
        if _has_class_folders(folder / "train") or _has_class_folders(folder / "val"):
            return folder
    return None


def require_imagenet_root(data_dir: PathLike | None = None) -> Path:
    """:func:`find_imagenet_root`, or FileNotFoundError saying where it looked and what to put there."""
    root = find_imagenet_root(data_dir)
    if root is None:
        looked = ", ".join(str(f) for f in imagenet_search_folders(data_dir))
        raise FileNotFoundError(
            f"ImageNet not found: no folder with train/<wnid>/*.JPEG or val/<wnid>/*.JPEG in {looked}. Fix: extract "
            f"ILSVRC2012 into class folders there (val too must be sorted into val/<wnid>/ folders; the official "
            f"tars are not unpacked automatically), or {DATA_DIR_FIX}."
        )
    return root

