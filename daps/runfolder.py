"""Output folders that are safe to write: atomic files, a marker that says "daps made this", a lock.

Every file daps writes goes through a temporary file and ``os.replace``, so a reader (or a resumed run) sees
the old or the new content, never half of it. A folder that daps creates for its outputs (a training run, a
``compare`` or ``gradlab`` folder, a prior) gets a small marker file ``.daps`` naming its kind; ``--overwrite``
only ever replaces a folder that carries the marker of the same kind (or, for training runs made before the
marker existed, a daps ``config.json`` with nothing beside it but what a run writes), and never the current
folder, one of its parents, the home folder or a filesystem root; output paths starting with ``~`` are refused.
Replacing deletes only the entries that kind of folder writes: anything else in it is the user's and stays.
A run folder is locked while a process writes it (``.lock``, an advisory ``flock``; the kernel releases it when
the process dies, so a lock left by a killed process is simply taken over).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Callable, Collection, Iterator, NoReturn

from daps.errors import UserError

log = logging.getLogger("daps")

MARKER = ".daps"
"""Marker file of a folder daps made: JSON ``{"kind": ..., "format": 1}``."""
LOCK = ".lock"
"""Lock file of a folder being written; holds the writer's pid while it runs."""
_TEMPORARY = re.compile(r"\..+\.(?:tmp|old)-[0-9]+(?:\.[A-Za-z0-9]+)?")


def is_temporary(name: str) -> bool:
    """Whether ``name`` has the form of daps's temporary files and folders (``.<name>.tmp-<pid>[.<suffix>]``, made by
    :func:`atomic_path`, and ``.<name>.old-<pid>``, a checkpoint set aside), which a killed process may leave behind.
    Only ever removed from a folder that carries daps's marker: in anyone else's, such a name is theirs."""
    return _TEMPORARY.fullmatch(name) is not None


class OutputFolderError(UserError):
    """An output folder that may not be written or replaced (a user error: the CLI prints it, exit code 2)."""


# --------------------------------------------------------------------------------------------------
# Atomic files


def file_digest(path: Path, algorithm: str) -> str:
    """The hex digest of a file's bytes under ``hashlib`` ``algorithm`` (``sha256``, ``md5``), read in 1 MiB blocks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_path(path: Path) -> None:
    """Flush a file's data (or a folder's entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _read_umask()
"""The process's file-creation mask (read once at import): files daps writes get ``0o666 & ~UMASK``."""


def publish_mode(path: str | Path) -> None:
    """Give a file or folder the mode a plain ``open`` or ``mkdir`` would have given it (the umask's), before it
    is renamed into place: ``tempfile`` makes 0600 files and 0700 folders, and some writers (safetensors) 0600."""
    os.chmod(path, (0o777 if Path(path).is_dir() else 0o666) & ~UMASK)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically, on error it is removed.
    A missing folder of ``path`` is created; a path starting with ``~`` is refused (:func:`refuse_tilde`).

    Use it for writers that want a file name (``savefig``, ``np.savez``, ``torch.save``)::

        with atomic_path(run / "curves.png") as tmp:
            fig.savefig(tmp, format="png")
    """
    path = Path(path)
    refuse_tilde(path, "output")
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
        publish_mode(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``: readers see old or new, never half."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | Path, obj: object) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def read_json_object(path: str | Path) -> dict | None:
    """The JSON object in ``path``; None when the file is missing, unreadable, damaged (a kill, a disk error, a hand
    edit) or holds something other than an object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def finished(run_dir: Path, last_step: int, end_files: tuple[str, ...]) -> bool:
    """Whether a run has all its ``end_files`` and a readable ``summary.json`` of ``last_step`` (which daps writes
    last: a run killed before it is resumed to write the end again)."""
    summary = read_json_object(run_dir / "summary.json")
    return (summary is not None and summary.get("step") == last_step
            and all((run_dir / name).is_file() for name in end_files))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def remove_temporaries(folder: Path) -> list[Path]:
    """Delete temporary files and folders left by a killed writer in ``folder`` (not recursive); returns them.
    The caller makes sure ``folder`` is daps's (it carries the marker, or lies in one that does)."""
    removed = []
    for path in sorted(Path(folder).iterdir()) if Path(folder).is_dir() else []:
        if is_temporary(path.name):
            _remove(path)
            removed.append(path)
    return removed


# --------------------------------------------------------------------------------------------------
# Images and videos that say daps wrote them

SOFTWARE = "daps"
"""The ``Software`` text of every PNG daps writes and the ``comment`` of every video (as ``written by daps``):
how ``--overwrite`` tells an earlier output of daps from a user's image or video of the same name."""
VIDEO_COMMENT = f"written by {SOFTWARE}"


def png_software(path: str | Path) -> str | None:
    """The ``Software`` text of a PNG file (``tEXt`` chunk), or None: not a PNG, damaged, or no such text."""
    try:
        with open(path, "rb") as f:
            if f.read(8) != b"\x89PNG\r\n\x1a\n":
                return None
            while True:
                head = f.read(8)
                if len(head) < 8:
                    return None
                length, kind = int.from_bytes(head[:4], "big"), head[4:]
                if kind == b"IEND" or length > 1 << 26:
                    return None
                data = f.read(length)
                f.seek(4, os.SEEK_CUR)  # the chunk's CRC
                if kind == b"tEXt" and data.startswith(b"Software\x00"):
                    return data.split(b"\x00", 1)[1].decode("latin-1")
    except OSError:
        return None


def is_daps_png(path: str | Path) -> bool:
    """Whether ``path`` is a PNG daps wrote (its ``Software`` text is :data:`SOFTWARE`)."""
    return png_software(path) == SOFTWARE


def is_daps_video(path: str | Path) -> bool:
    """Whether ``path`` is a video daps wrote: its metadata comment :data:`VIDEO_COMMENT` is in the file (ffmpeg
    puts it at the end of an mp4, so the whole file is searched, 1 MiB at a time)."""
    tag, tail = VIDEO_COMMENT.encode(), b""
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                if tag in tail + block:
                    return True
                tail = block[-len(tag):]
    except OSError:
        return False
    return False


# --------------------------------------------------------------------------------------------------
# What may be replaced


def refuse_tilde(path: str | Path, what: str) -> None:
    """:class:`OutputFolderError` if an output path starts with ``~``: the shell expands it only at the start of a
    word (not after ``key=`` or ``--out=``, nor inside quotes), so it reaches daps literally and would name a
    folder called ``~`` in the current one."""
    if str(path).startswith("~"):
        raise OutputFolderError(
            f"{what} {path!s} starts with '~', which the shell does not expand after '=' or inside quotes; "
            "write the full path (e.g. $HOME/...)"
        )


def _file_on_the_way(path: Path) -> Path | None:
    """The nearest of ``path``'s parents that exists (or is a dangling link) but is not a folder, or None: where
    making ``path``'s folders would fail."""
    for parent in path.parents:
        if parent.is_dir():
            return None
        if parent.exists() or parent.is_symlink():
            return parent
    return None


def refuse_precious(path: str | Path, what: str) -> Path:
    """``path`` resolved, or :class:`OutputFolderError` if it is empty, the current folder, one of its parents,
    the home folder or a filesystem root (folders no output of daps may ever replace), or lies under a file."""
    if not str(path).strip():
        raise OutputFolderError(f"{what} is empty: name an output folder")
    refuse_tilde(path, what)
    if Path(path).is_symlink() and not Path(path).exists():  # else mkdir would fail later, after the work
        raise OutputFolderError(f"{what} {path!s} is a symbolic link to nothing ({os.readlink(Path(path))}); name a "
                                "folder")
    blocking = _file_on_the_way(Path(path))  # mkdir would fail there, after the work
    if blocking is not None:
        raise OutputFolderError(f"{what} {path!s}: {blocking} is not a folder; choose another folder")
    resolved = Path(path).resolve()
    cwd = Path.cwd().resolve()
    home = Path.home().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise OutputFolderError(f"{what} {path!s} is the current folder or one of its parents; name a run folder")
    if resolved == home or resolved.parent == resolved or resolved == Path(resolved.anchor):
        raise OutputFolderError(f"{what} {path!s} is the home folder or a filesystem root; name a run folder")
    return resolved


def check_output_file(path: str | Path, suffix: str, overwrite: bool | None, flag: str = "--out",
                      is_ours: Callable[[Path], bool] | None = None, what: str = "") -> Path:
    """``path`` as a Path if a ``suffix`` file may be written there, else :class:`UserError` naming ``flag``.

    Call it before any work, so that a refusal costs nothing and leaves nothing behind. The path must not start
    with ``~`` (:func:`refuse_tilde`), must end in ``suffix`` (any case) and must not be a folder, nor lie under a
    file (its folders are made when it is written). An existing
    file is replaced only with ``overwrite`` (``None``: the command has no ``--overwrite``, it never replaces),
    and, where ``is_ours`` is given, only if it is a regular file (not a link) that ``is_ours`` recognises as an
    earlier output of the same kind (``what``, e.g. "a daps codes file"): never a user's other file."""
    if not str(path).strip():
        raise UserError(f"{flag} is empty: name a file ending in {suffix}")
    refuse_tilde(path, flag)
    out = Path(path)
    if out.suffix.lower() != suffix.lower():
        raise UserError(f"{flag} {path!s} must name a file ending in {suffix}")
    if out.is_dir():
        raise UserError(f"{flag} {path!s} is a folder; name a file ending in {suffix}")
    blocking = _file_on_the_way(out)  # its folders are made when it is written: that would fail after the work
    if blocking is not None:
        raise UserError(f"{flag} {path!s}: {blocking} is not a folder; choose another path")
    if not (out.exists() or out.is_symlink()):
        return out
    if overwrite is None:
        raise UserError(f"{flag} {path!s} already exists; choose another path (this command never replaces files)")
    if is_ours is not None:  # first: --overwrite is suggested only where it would work
        if out.is_symlink() or not out.is_file():
            raise UserError(f"{flag} {path!s} is a link or not a regular file; refusing to replace it")
        if not is_ours(out):
            raise UserError(f"{flag} {path!s} exists and is not {what}; refusing to replace it: choose another path")
    if not overwrite:
        raise UserError(f"{flag} {path!s} already exists; pass --overwrite to replace it")
    return out


MEDIA_OWNERS: dict[str, tuple[Callable[[Path], bool], str]] = {
    ".png": (is_daps_png, "an image daps wrote"),
    ".mp4": (is_daps_video, "a video daps wrote"),
}
"""How an earlier image or video of daps is recognised, and what the refusal calls one."""


def check_media_output(path: str | Path, suffix: str, overwrite: bool, flag: str = "--out") -> Path:
    """:func:`check_output_file` for an image (``.png``) or a video (``.mp4``) daps renders: an existing one is
    replaced only with ``overwrite`` and only if daps wrote it (:func:`is_daps_png`, :func:`is_daps_video`)."""
    is_ours, what = MEDIA_OWNERS[suffix]
    return check_output_file(path, suffix, overwrite, flag, is_ours, what)


def read_marker(folder: Path) -> str | None:
    """The kind named by ``folder``'s marker, or None (no marker, or an unreadable one)."""
    try:
        data = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data.get("kind") if isinstance(data, dict) else None


def write_marker(folder: Path, kind: str) -> None:
    if read_marker(folder) != kind:
        write_json_atomic(Path(folder) / MARKER, {"kind": kind, "format": 1})


RUN_ENTRIES = frozenset({
    "config.json", "metrics.jsonl", "summary.json", "reconstructions.png", "curves.png", "checkpoints",
    "motion_stats.json", "arrays_data.json", "sequence_data.json", "provenance.json", "tensorboard", "wandb", MARKER,
    LOCK,
})
"""Everything a training run writes into its folder."""


LEGACY_RUN_ENTRIES = frozenset({
    "config.json", "metrics.jsonl", "summary.json", "reconstructions.png", "curves.png", "checkpoints",
})
"""What a training run wrote into its folder before the marker existed (the other :data:`RUN_ENTRIES` came
later, always together with the marker)."""

_CHECKPOINT_NAME = re.compile(r"step_\d{8,}|latest")  # 8 digits, more past step 99,999,999


OWNED_SUBFOLDERS = {
    "checkpoints": _CHECKPOINT_NAME,
    "tensorboard": re.compile(r"events\.out\.tfevents\..+"),  # what torch's SummaryWriter writes
    # what wandb.init(dir=RUN) writes into RUN/wandb, and the run id daps keeps there (loggers.WANDB_ID_FILE)
    "wandb": re.compile(r"(offline-)?run-\d{8}_\d{6}-.+|latest-run|debug(-internal|-cli\..+)?\.log|daps_run_id"),
}
"""The subfolders of an output folder whose contents daps (or the logger it runs) names: ``--overwrite`` empties
them of those names only, and keeps anything else a user put there."""


def _is_checkpoint_folder(folder: Path) -> bool:
    """Whether ``folder`` holds only what daps's checkpointing writes: ``step_XXXXXXXX`` folders, ``latest`` and
    their temporaries (a ``checkpoints`` folder of the user's own, beside a daps config, is not a run's)."""
    if not folder.is_dir() or folder.is_symlink():
        return False
    for path in folder.iterdir():
        if is_temporary(path.name):
            continue
        if not _CHECKPOINT_NAME.fullmatch(path.name) or path.is_symlink():
            return False
        if path.is_dir() != (path.name != "latest"):  # step_* are folders, latest is a file
            return False
    return True


def _is_legacy_run(folder: Path) -> bool:
    """A training run written before the marker existed: a daps ``config.json``, checkpoints or metrics, and
    nothing but what such a run wrote (a folder of the user's that happens to hold a daps config is not one)."""
    data = read_json_object(folder / "config.json")
    if data is None or not {"method", "train", "data"} <= data.keys():
        return False
    checkpoints = folder / "checkpoints"
    if (checkpoints.exists() or checkpoints.is_symlink()) and not _is_checkpoint_folder(checkpoints):
        return False
    started = checkpoints.is_dir() or (folder / "metrics.jsonl").is_file()
    return started and all(p.name in LEGACY_RUN_ENTRIES or p.name == LOCK or is_temporary(p.name)
                           for p in folder.iterdir())


def is_output_folder(folder: str | Path, kind: str) -> bool:
    """Whether ``folder`` is recognisably a daps output folder of ``kind`` (``train``, ``compare``, ...)."""
    folder = Path(folder)
    if not folder.is_dir() or folder.is_symlink():
        return False
    marker = read_marker(folder)
    if marker is not None:
        return marker == kind
    return kind == "train" and _is_legacy_run(folder)


def has_content(folder: str | Path) -> bool:
    """Whether ``folder`` holds anything besides daps's own marker, lock and temporary files. In a folder without
    the marker only the lock and the marker's own temporary count as daps's (what a process killed while it was
    creating the folder leaves): a name that merely looks temporary is someone else's there."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    marked = read_marker(folder) is not None

    def ours(path: Path) -> bool:
        if path.name in (MARKER, LOCK):
            return not path.is_symlink()  # a link there is not daps's, and the lock must never follow one
        return is_temporary(path.name) and (marked or path.name.startswith(f".{MARKER}.tmp-"))

    return any(not ours(p) for p in folder.iterdir())


def check_replaceable(folder: str | Path, kind: str, what: str) -> Path:
    """Raise :class:`OutputFolderError` unless ``folder`` may be replaced by ``--overwrite``: it must be a daps
    output folder of ``kind`` and not a precious folder (see :func:`refuse_precious`). Returns it resolved."""
    resolved = refuse_precious(folder, what)
    if Path(folder).is_symlink():
        raise OutputFolderError(f"{what} {folder!s} is a symbolic link; --overwrite replaces only real run folders")
    if resolved.exists() and not resolved.is_dir():
        raise OutputFolderError(f"{what} {folder!s} exists and is not a folder")
    if has_content(resolved) and not is_output_folder(resolved, kind):
        other = read_marker(resolved)
        why = (f"it is a daps {other} folder" if other is not None
               else f"no {MARKER} marker{', nor only the files of a run' if kind == 'train' else ''}")
        raise OutputFolderError(
            f"{what} {folder!s} exists and is not a daps {kind} folder ({why}); daps neither writes into it nor "
            "replaces it: choose another folder"
        )
    return resolved


def refuse_existing(folder: str | Path, kind: str, what: str) -> NoReturn:
    """The refusal of an existing output folder given without ``--overwrite``: it suggests ``--overwrite`` only
    where that would work (a daps ``kind`` folder), else says why the folder can never be replaced."""
    check_replaceable(folder, kind, what)
    raise OutputFolderError(f"{what} {folder!s} already exists; pass --overwrite to replace it")


def clear_folder(folder: Path, kind: str, what: str, entries: Collection[str]) -> None:
    """Delete what daps wrote into a replaceable output folder: ``entries`` (the names a ``kind`` folder holds) and
    temporary files. Its lock (the caller holds it) and its marker stay, so that a process killed halfway leaves a
    folder that is still recognisably daps's, to resume or replace; anything else is the user's (notes, a run of
    their own inside it): that is kept, and said."""
    folder = check_replaceable(folder, kind, what)
    if not folder.exists():
        return
    write_marker(folder, kind)  # first: a run made before the marker existed stays recognisable while it is emptied
    kept = []
    for path in sorted(folder.iterdir()):
        if path.name in (LOCK, MARKER):
            continue
        owned = OWNED_SUBFOLDERS.get(path.name) if path.name in entries else None
        if owned is not None and path.is_dir() and not path.is_symlink():
            kept += _clear_subfolder(path, owned)
        elif path.name in entries or is_temporary(path.name):
            _remove(path)
        else:
            kept.append(path.name)
    if kept:
        log.warning("%s: kept %s, which daps did not write there", folder, ", ".join(kept))


def _clear_subfolder(folder: Path, names: re.Pattern) -> list[str]:
    """Empty ``folder`` (one of :data:`OWNED_SUBFOLDERS`) of what daps wrote there: all of it, removed whole (as a
    kill halfway has always left it), when every entry's name matches ``names`` or is one of daps's temporaries;
    else only those entries. Returns what it kept (``folder/name``), the user's."""
    paths = sorted(folder.iterdir())
    ours = [p for p in paths if names.fullmatch(p.name) or is_temporary(p.name)]
    if len(ours) == len(paths):
        _remove(folder)
        return []
    for path in ours:
        _remove(path)
    return [f"{folder.name}/{p.name}" for p in paths if p not in ours]


def missing_folders(folder: str | Path) -> list[Path]:
    """The folders of ``folder``'s path that do not exist yet, innermost first (``folder`` itself when it is
    missing): what creating it adds, and so what a failed first write may take away again."""
    missing = []
    for path in (Path(folder).absolute(), *Path(folder).absolute().parents):
        if path.exists() or path.is_symlink():
            break
        missing.append(path)
    return missing


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove ``folders`` (innermost first, as :func:`missing_folders` lists them) while they are empty; stop at the
    first that is not (or is gone, or cannot be removed)."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def prepare_output_folder(folder: str | Path, kind: str, overwrite: bool, what: str = "--out", *,
                          entries: Collection[str]) -> Path:
    """The one rule for every writer of an output folder: a new or empty folder is created; an existing one
    is refused unless ``overwrite`` and it is a daps folder of ``kind``, whose ``entries`` (the names such a folder
    holds) are then deleted (:func:`clear_folder`). Marks it."""
    folder = Path(folder)
    refuse_precious(folder, what)
    if folder.exists() and not folder.is_dir():
        raise OutputFolderError(f"{what} {folder!s} exists and is not a folder")
    if has_content(folder):
        if not overwrite:
            refuse_existing(folder, kind, what)
        clear_folder(folder, kind, what, entries)
    folder.mkdir(parents=True, exist_ok=True)
    write_marker(folder, kind)
    return folder


# --------------------------------------------------------------------------------------------------
# Locks


class FolderLock:
    """An exclusive lock on an output folder for the life of one process (or until :meth:`release`).

    A second process that tries to take it gets :class:`OutputFolderError` naming the holder's pid. The lock
    is an ``flock`` on ``folder/.lock``: the kernel drops it when its process dies, so a lock left by a killed
    process is taken over (and reported). Without ``fcntl`` (Windows) the folder is not locked.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.fd: int | None = None

    def acquire(self) -> "FolderLock":
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            log.warning("cannot lock %s on this platform; do not run two processes on it", self.folder)
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / LOCK
        try:  # never through a link: the lock file is truncated and written below
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as e:
            if path.is_symlink():
                raise OutputFolderError(f"{path} is a symbolic link, not daps's lock file; remove it") from None
            raise OutputFolderError(f"cannot open the lock file {path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputFolderError(
                f"{self.folder} is in use by another daps process (pid {holder}); wait for it or stop it"
            ) from None
        previous = os.read(fd, 64).decode(errors="replace").strip()
        if previous and previous != str(os.getpid()):
            log.warning("%s: took over the lock left by process %s, which is no longer running", self.folder, previous)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        os.ftruncate(self.fd, 0)  # an empty lock file means "released cleanly"
        os.close(self.fd)  # closing drops the flock
        self.fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


__all__ = [
    "FolderLock",
    "OutputFolderError",
    "atomic_path",
    "check_media_output",
    "check_output_file",
    "check_replaceable",
    "clear_folder",
    "file_digest",
    "has_content",
    "is_daps_png",
    "is_daps_video",
    "is_output_folder",
    "is_temporary",
    "prepare_output_folder",
    "refuse_existing",
    "refuse_precious",
    "refuse_tilde",
    "remove_temporaries",
    "write_json_atomic",
    "write_marker",
    "write_text_atomic",
]
