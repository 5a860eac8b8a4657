"""LAFAN1 retargeted to the Unitree H1: finding the clips, reading the CSVs, the train / validation split.

The data are Unitree's retargeting of Ubisoft La Forge's LAFAN1 motion capture (CC BY-NC-ND 4.0) to the H1:
40 clips at 30 frames per second, one CSV per clip, shipped as ``lafan1_h1_csv.tar.xz`` (``h1/<clip>.csv``).
Each CSV row is one frame, 26 comma-separated floats without a header: root position x, y, z (m), root
quaternion **x, y, z, w**, then the 19 joint angles (rad) in the H1 model's qpos order. :func:`read_clips` turns
rows into poses (``daps.motion.h1``: the quaternion reordered to MuJoCo's w, x, y, z).

Search order, as for every dataset (:mod:`daps.data.paths`): ``data_dir``, else ``$DAPS_DATA_DIR``, then the cache
folder. In each: ``lafan1_h1_unitree/lafan1_h1_csv.tar.xz``, ``lafan1_h1_csv.tar.xz``, then the extracted CSVs in
``lafan1_h1_unitree/h1/``, ``h1/`` or ``lafan1_h1_unitree/``. Any other folder of ``<clip>.csv`` files can be
passed as a ``source`` directly.
"""

from __future__ import annotations

import hashlib
import io
import logging
import lzma
import tarfile
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np

from daps.data.paths import DATA_DIR_FIX, PathLike, cache_root, dedupe, user_roots
from daps.errors import UserError
from daps.motion.h1 import POSE_DIM
from daps.runfolder import file_digest

__all__ = [
    "ARCHIVE_NAME",
    "CSV_COLUMNS",
    "DATA_FOLDER",
    "FPS",
    "VAL_CLIPS",
    "clip_names",
    "csv_rows_to_poses",
    "find_source",
    "parse_csv",
    "read_clips",
    "source_digest",
    "split_clips",
]

log = logging.getLogger(__name__)

DATA_FOLDER = "lafan1_h1_unitree"
ARCHIVE_NAME = "lafan1_h1_csv.tar.xz"
CSV_FOLDER = "h1"
FPS = 30.0
"""Frame rate of the retargeted clips (frames per second)."""
CSV_COLUMNS = 26
QUAT_NORM_TOLERANCE = 1e-2
"""A CSV quaternion whose norm is further than this from 1 is an error; the others are renormalized."""

VAL_CLIPS = ("dance2_subject2", "fight1_subject2", "run2_subject1", "walk2_subject4")
"""The validation clips of the paper's LAFAN experiments (the original code's split); all other clips train."""


# --------------------------------------------------------------------------------------------------
# Finding the data


def search_folders(data_dir: PathLike | None = None) -> list[Path]:
    """The roots :func:`find_source` searches, in order."""
    return dedupe(user_roots(data_dir) + [cache_root()])


def _source_in(root: Path) -> Path | None:
    for archive in (root / DATA_FOLDER / ARCHIVE_NAME, root / ARCHIVE_NAME):
        if archive.is_file():
            return archive
    for folder in (root / DATA_FOLDER / CSV_FOLDER, root / CSV_FOLDER, root / DATA_FOLDER):
        if folder.is_dir() and any(folder.glob("*.csv")):
            return folder
    return None


def find_source(data_dir: PathLike | None = None) -> Path:
    """The archive ``lafan1_h1_csv.tar.xz`` or a folder of ``<clip>.csv`` files (see the module docstring), or
    FileNotFoundError saying where it looked."""
    roots = search_folders(data_dir)
    for root in roots:
        source = _source_in(root)
        if source is not None:
            return source
    looked = ", ".join(str(f) for f in roots)
    raise FileNotFoundError(
        f"LAFAN1 H1 clips not found: no {DATA_FOLDER}/{ARCHIVE_NAME} (or extracted {CSV_FOLDER}/*.csv) in {looked}. "
        f"Fix: {DATA_DIR_FIX} to a folder holding {DATA_FOLDER}/{ARCHIVE_NAME}"
    )


def _is_archive(source: Path) -> bool:
    """A source is an archive (a file) or a folder of CSVs."""
    return source.is_file()


def _folder_csvs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.csv") if not p.name.startswith("."))


def _clip_name(member: str) -> str | None:
    """``h1/walk1_subject1.csv`` -> ``walk1_subject1``; None for anything that is not a CSV."""
    p = PurePosixPath(member)
    return p.stem if p.suffix == ".csv" and not p.name.startswith(".") else None


def _read_archive(
    source: Path, names: Sequence[str] | None
) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """One pass over the archive (an xz stream cannot seek): all clip names, and the text and member path of the
    clips in ``names`` (all when None)."""
    available: list[str] = []
    texts: dict[str, str] = {}
    wheres: dict[str, str] = {}
    try:
        with tarfile.open(source, "r:xz") as tar:
            for member in tar:
                name = _clip_name(member.name)
                if name is None or not member.isfile():
                    continue
                available.append(name)
                if names is None or name in names:
                    f = tar.extractfile(member)
                    assert f is not None  # a regular file
                    wheres[name] = f"{source}:{member.name}"
                    texts[name] = _decode(f.read(), wheres[name])
    except (tarfile.TarError, lzma.LZMAError, EOFError, OSError) as e:
        raise UserError(f"{source}: corrupt or truncated archive ({e or type(e).__name__})") from e
    if not available:
        raise UserError(f"{source}: holds no <clip>.csv files")
    return sorted(available), texts, wheres


def _read_folder(source: Path, names: Sequence[str] | None) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """Like :func:`_read_archive` for a folder of CSVs."""
    files = {p.stem: p for p in _folder_csvs(source)}
    if not files:
        raise UserError(f"{source}: holds no <clip>.csv files")
    wheres = {n: str(p) for n, p in files.items() if names is None or n in names}
    texts = {n: _decode(files[n].read_bytes(), w) for n, w in wheres.items()}
    return sorted(files), texts, wheres


def clip_names(source: Path) -> list[str]:
    """Sorted clip names in an archive or folder (a CSV's file name without ``.csv``)."""
    return (_read_archive(source, ()) if _is_archive(source) else _read_folder(source, ()))[0]


def source_digest(source: Path) -> str:
    """SHA-256 of the archive's bytes, or of the sorted CSV names and contents of a folder."""
    if _is_archive(source):
        return file_digest(source, "sha256")
    digest = hashlib.sha256()
    for path in _folder_csvs(source):
        digest.update(f"{path.name}\0{file_digest(path, 'sha256')}\n".encode())
    return digest.hexdigest()


def split_clips(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(train, val)``: the clips of :data:`VAL_CLIPS` validate, all others train (both sorted)."""
    val = sorted(n for n in names if n in VAL_CLIPS)
    train = sorted(n for n in names if n not in VAL_CLIPS)
    return train, val


# --------------------------------------------------------------------------------------------------
# Parsing


def _decode(data: bytes, where: str) -> str:
    try:
        return data.decode("ascii")
    except UnicodeDecodeError as e:
        raise UserError(f"{where}: not a text CSV ({e})") from e


def parse_csv(text: str, where: str) -> np.ndarray:
    """The rows of one clip's CSV as float64 ``(N, 26)``; UserError naming ``where`` and the line when a row does not
    have 26 numbers, a value is not a finite number, or the file is empty."""
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise UserError(f"{where}: empty file, expected rows of {CSV_COLUMNS} comma-separated numbers")
    for i, line in enumerate(lines):
        n = line.count(",") + 1
        if n != CSV_COLUMNS:
            raise UserError(f"{where}: line {i + 1} has {n} columns, expected {CSV_COLUMNS}")
    try:
        rows = np.loadtxt(io.StringIO("\n".join(lines)), delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError as e:
        raise UserError(f"{where}: line {_first_bad_line(lines)} is not {CSV_COLUMNS} numbers ({e})") from e
    bad = ~np.isfinite(rows).all(axis=1)
    if bad.any():
        raise UserError(f"{where}: line {int(np.argmax(bad)) + 1} holds a non-finite value")
    return rows


def _first_bad_line(lines: list[str]) -> int:
    for i, line in enumerate(lines):
        try:
            [float(v) for v in line.split(",")]
        except ValueError:
            return i + 1
    return 0


def csv_rows_to_poses(rows: np.ndarray, where: str) -> np.ndarray:
    """CSV rows ``(N, 26)`` -> poses ``(N, 26)``: the quaternion x, y, z, w (columns 3-6) becomes w, x, y, z and is
    renormalized; position and joint angles are copied. UserError when a quaternion is far from unit norm."""
    quat = rows[:, [6, 3, 4, 5]]  # (N, 4) w, x, y, z
    norm = np.linalg.norm(quat, axis=1)
    bad = np.abs(norm - 1.0) > QUAT_NORM_TOLERANCE
    if bad.any():
        i = int(np.argmax(bad))
        raise UserError(f"{where}: line {i + 1}: root quaternion has norm {norm[i]:.4f}, expected 1")
    poses = np.empty((rows.shape[0], POSE_DIM))
    poses[:, 0:3] = rows[:, 0:3]
    poses[:, 3:7] = quat / norm[:, None]
    poses[:, 7:] = rows[:, 7:]
    return poses


def read_clips(source: Path, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Poses ``(N, 26)`` float64 of each clip in ``names`` (default: all, sorted), read from an archive or folder.

    Raises:
        UserError: an unknown clip name (the message lists the valid ones), a corrupt or truncated archive, or a bad
            CSV (wrong column count, not a number, a quaternion far from unit norm; the message names file and line).
    """
    read = _read_archive if _is_archive(source) else _read_folder
    available, texts, wheres = read(source, names)
    unknown = [n for n in (names or ()) if n not in available]
    if unknown:
        raise UserError(f"unknown clip {unknown[0]!r} in {source}; valid clips: {', '.join(available)}")
    wanted = available if names is None else list(names)
    clips = {n: csv_rows_to_poses(parse_csv(texts[n], wheres[n]), wheres[n]) for n in wanted}
    log.debug("read %d LAFAN1 H1 clips (%d frames) from %s", len(clips), sum(len(c) for c in clips.values()), source)
    return clips
