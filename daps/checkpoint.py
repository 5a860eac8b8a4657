"""Checkpoints: weights as safetensors, the resolved config as JSON, and a full training state for resume.

Layout of a run folder::

    run/config.json                       resolved config
    run/checkpoints/step_00001000/        one checkpoint (written as a temp folder, then renamed)
        model.safetensors                 weights (no pickle)
        config.json                       resolved config (no pickle)
        state.pt                          optimizers, step, RNG states (tensors and numbers only;
                                          loaded with ``weights_only=True``)
        checksums.json                    SHA-256 and size of the three files above, checked on load
    run/checkpoints/latest                name of the newest complete checkpoint (replaced atomically)

A checkpoint whose files do not match their checksums (or cannot be read) raises :class:`CheckpointError`
naming the file; :func:`find_resumable` then falls back to the newest intact checkpoint. Nothing is deleted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from daps.config import Config
from daps.config_io import config_from_dict, config_to_dict
from daps.dist import resolve_device
from daps.errors import UserError
from daps.runfolder import (
    file_digest,
    fsync_path,
    is_output_folder,
    publish_mode,
    read_marker,
    remove_temporaries,
    write_json_atomic,
    write_text_atomic,
)

if TYPE_CHECKING:
    from daps.methods.types import Method

log = logging.getLogger("daps")

CKPT_DIR = "checkpoints"
CHECKSUMS = "checksums.json"
FILES = ("model.safetensors", "config.json", "state.pt")
"""The files of a checkpoint, each covered by ``checksums.json``."""


class CheckpointError(UserError):
    """A checkpoint (or run config) that is missing, damaged or unreadable; the message names the file."""


def write_config(path: Path, cfg: Config) -> None:
    write_json_atomic(path, config_to_dict(cfg))


def read_config(path: str | Path) -> Config:
    """The :class:`Config` in a ``config.json``; a damaged or foreign file raises :class:`CheckpointError`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} is not a readable JSON config ({err})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a daps config (expected a JSON object)")
    try:
        return config_from_dict(data)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path} is not a valid daps config: {err}") from None


def save_checkpoint(
    run_dir: Path, step: int, model: nn.Module, cfg: Config | dict[str, Any], state: dict[str, Any], keep: int
) -> Path:
    """Write checkpoint ``step`` atomically with its checksums, point ``latest`` at it, prune to the newest ``keep``.
    ``cfg``: a training run's :class:`Config`, or another run's config as a JSON-ready dict (a prior's)."""
    root = Path(run_dir) / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    final, tmp = root / name, root / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"step": str(step)})
    publish_mode(tmp / "model.safetensors")  # safetensors creates it 0600; the others follow the umask
    if isinstance(cfg, dict):
        write_json_atomic(tmp / "config.json", cfg)
    else:
        write_config(tmp / "config.json", cfg)
    torch.save(state, tmp / "state.pt")
    sums = {}
    for file in FILES:
        fsync_path(tmp / file)
        sums[file] = {"sha256": file_digest(tmp / file, "sha256"), "bytes": (tmp / file).stat().st_size}
    write_json_atomic(tmp / CHECKSUMS, {"step": step, "files": sums})
    aside = root / f".{name}.old-{os.getpid()}"
    if final.exists():  # rewriting a step (a resume from an earlier one): `latest` must never name a missing folder
        others = [c for c in list_checkpoints(run_dir) if c != final]
        if others and _latest_name(root) == name:
            write_text_atomic(root / "latest", others[0].name + "\n")  # until the new copy is in place
        try:
            verify_checkpoint(final)
            os.replace(final, aside)  # an intact copy: replaced below
        except CheckpointError as err:  # a damaged copy is kept
            kept = _unused(root / f"damaged_{name}")
            os.replace(final, kept)
            log.warning("kept the damaged checkpoint %s as %s (%s)", name, kept.name, err)
    os.replace(tmp, final)
    fsync_path(root)
    write_text_atomic(root / "latest", name + "\n")
    shutil.rmtree(aside, ignore_errors=True)
    checkpoints = list_checkpoints(run_dir)
    for old in checkpoints[keep:]:
        if old != final:
            shutil.rmtree(old)
    return final


def _latest_name(root: Path) -> str | None:
    try:
        return (root / "latest").read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _unused(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``, ... whichever does not exist yet."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """The run's checkpoint folders, newest step first (by number: ``step_100000000`` is newer than
    ``step_99999999``)."""
    root = Path(run_dir) / CKPT_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step_*") if p.is_dir() and re.fullmatch(r"step_[0-9]+", p.name)]
    return sorted(found, key=lambda p: int(p.name.removeprefix("step_")), reverse=True)


def remove_leftovers(run_dir: str | Path) -> None:
    """Delete, and log, what a killed writer left half-written in a run folder and its checkpoints folder
    (temporary files, a checkpoint being written). Call it holding the folder's lock, once the folder carries its
    marker (or is a training run made before the marker existed): elsewhere, names that look temporary are someone
    else's and stay."""
    if read_marker(Path(run_dir)) is None and not is_output_folder(run_dir, "train"):
        return
    for folder in (Path(run_dir), Path(run_dir) / CKPT_DIR):
        for path in remove_temporaries(folder):
            log.info("removed %s, left by an interrupted run", path)


def verify_checkpoint(ckpt: str | Path) -> None:
    """Check that a checkpoint's files are all there and match ``checksums.json``.

    Raises :class:`CheckpointError` naming the first missing or damaged file. A checkpoint written before
    checksums existed is checked by reading its files instead.
    """
    ckpt = Path(ckpt)
    for file in FILES:
        path = ckpt / file
        if not path.is_file():
            raise CheckpointError(f"{path} is missing")
        if path.stat().st_size == 0:
            raise CheckpointError(f"{path} is empty (damaged checkpoint)")
    sums_path = ckpt / CHECKSUMS
    if not sums_path.exists():  # an older checkpoint: reading is the only check there is
        load_training_state(ckpt)
        read_weights(ckpt / "model.safetensors")
        read_config(ckpt / "config.json")
        return
    try:
        sums = json.loads(sums_path.read_text())["files"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{sums_path} is damaged ({err})") from None
    for file in FILES:
        path, expected = ckpt / file, sums.get(file) if isinstance(sums, dict) else None
        if not isinstance(expected, dict):
            raise CheckpointError(f"{sums_path} has no checksum for {file}")
        size = path.stat().st_size
        if size != expected.get("bytes"):
            raise CheckpointError(f"{path} is damaged: {size} bytes, {expected.get('bytes')} expected")
        if file_digest(path, "sha256") != expected.get("sha256"):
            raise CheckpointError(f"{path} is damaged: its SHA-256 does not match {CHECKSUMS}")


def bare_model(folder: Path) -> bool:
    """Whether ``folder`` holds a model and its config and nothing of a training run: a pretrained folder without
    the marker ``daps export`` writes, as one downloaded from the Hub is (a checkpoint of a run's checkpoints/ that
    lost its state.pt is a damaged checkpoint instead)."""
    return (folder.parent.name != CKPT_DIR and not (folder / CHECKSUMS).exists()
            and not (folder / "state.pt").exists()
            and all((folder / name).is_file() for name in ("config.json", "model.safetensors")))


def resolve_checkpoint(path: str | Path, verify: bool = True) -> Path:
    """A run folder, a checkpoint folder or a ``model.safetensors`` file -> the (verified) checkpoint folder."""
    path = Path(path)
    if path.is_file() and path.name == "model.safetensors":
        ckpt = path.parent
    elif (path / "model.safetensors").exists() or (path / CHECKSUMS).exists():
        ckpt = path
    elif path.is_file():
        raise CheckpointError(f"{path} is a file; give a run folder or one of its checkpoint folders "
                              f"({CKPT_DIR}/step_N)")
    else:
        latest = path / CKPT_DIR / "latest"
        try:
            name = latest.read_text().strip()
        except FileNotFoundError:
            if not path.exists():
                raise CheckpointError(f"{path} does not exist; give a run folder or one of its checkpoint folders "
                                      f"({CKPT_DIR}/step_N)") from None
            marker = read_marker(path)
            if marker == "pretrained":  # without its weights
                raise CheckpointError(f"{path} is {OTHER_KINDS['pretrained']}, not a training run") from None
            if marker in OTHER_KINDS or (marker is None and (path / "config.json").is_file()):  # a run stopped
                # before its first checkpoint (without a marker: perhaps a pretrained folder whose weights did not come)
                also = " (a pretrained folder: its model.safetensors is missing)" if marker is None else ""
                raise CheckpointError(f"{path} has no checkpoint yet: its run stopped (or is still training) before "
                                      f"its first one; finish it with --resume (or wait), then use it{also}") from None
            if marker is not None:  # a comparison's or an estimator lab's folder
                where = "; its runs are its METHOD/seedN folders" if marker == "compare" else ""
                raise CheckpointError(f"{path} is a daps {marker} folder, not a run with checkpoints{where}") from None
            raise CheckpointError(
                f"no checkpoint found at {path} (expected a run folder with {CKPT_DIR}/latest)"
            ) from None
        except (OSError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{latest} is unreadable ({err})") from None
        ckpt = path / CKPT_DIR / name
        if not name.startswith("step_") or "/" in name or not ckpt.is_dir():
            raise CheckpointError(f"{latest} names {name!r}, which is not a checkpoint folder of {path}")
    if read_marker(ckpt) == "pretrained" or bare_model(ckpt):  # model and config only: not something to resume
        # or evaluate from
        raise CheckpointError(f"{path} is {OTHER_KINDS['pretrained']}, not a training run")
    if verify:
        verify_checkpoint(ckpt)
    return ckpt


def find_resumable(run_dir: str | Path, report: bool = True) -> Path | None:
    """The newest intact checkpoint of a run (``latest`` first), or None if it has none at all.

    A damaged checkpoint is reported (the file and what is wrong) and skipped, never deleted. If checkpoints
    exist but none is intact, :class:`CheckpointError` lists them. ``report=False`` logs nothing.
    """
    warn = log.warning if report else (lambda *args: None)
    run_dir = Path(run_dir)
    candidates = list_checkpoints(run_dir)
    try:
        named = resolve_checkpoint(run_dir, verify=False)
        candidates = [named, *(c for c in candidates if c != named)]
    except CheckpointError as err:
        if (run_dir / CKPT_DIR / "latest").exists():
            warn("%s", err)
    problems = []
    for ckpt in candidates:
        try:
            verify_checkpoint(ckpt)
        except CheckpointError as err:
            problems.append(str(err))
            warn("cannot resume from %s: %s", ckpt.name, err)
            continue
        if problems:
            warn("resuming from the newest intact checkpoint instead: %s", ckpt)
        return ckpt
    if problems:
        raise CheckpointError(f"no intact checkpoint in {run_dir / CKPT_DIR}: {'; '.join(problems)}")
    return None


def load_training_state(ckpt: Path) -> dict[str, Any]:
    path = Path(ckpt) / "state.pt"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except Exception as err:  # torch raises many kinds for a truncated or foreign file
        raise CheckpointError(f"{path} is damaged or not a daps training state ({type(err).__name__})") from None


def restore_generator(generator: torch.Generator, state: torch.Tensor, run_dir: Path, device: torch.device) -> None:
    """``generator.set_state(state)`` from a training state, or a :class:`UserError` when the checkpoint was written
    on another kind of device (a CUDA generator's state is its seed and offset, a CPU one's the Mersenne Twister's,
    and torch refuses the other's)."""
    try:
        generator.set_state(state)
    except RuntimeError:
        raise UserError(f"{run_dir} was trained on another kind of device than {device}; resume it there") from None


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors of the safetensors file ``path`` and the metadata of its header, or a :class:`CheckpointError`
    naming the file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {name: f.get_tensor(name) for name in f.keys()}, dict(f.metadata() or {})
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path} is damaged or not a safetensors file ({err})") from None


WEIGHTS_DIGEST = "weights_sha256"
"""The key, in a pretrained folder's safetensors header, of :func:`weights_digest` of its tensors."""


def weights_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order: what a pretrained folder's weights
    record of themselves, so that a changed or damaged file is noticed when it is loaded."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _misfit(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], most: int = 3) -> str:
    """How the tensors ``found`` in a file differ from the model's ``expected`` ones, naming at most ``most`` of
    each kind: tensors missing from the file, tensors the model has no place for, shapes that differ."""

    def names(kind: str, items: list[str]) -> list[str]:
        more = f" and {len(items) - most} more" if len(items) > most else ""
        return [f"{kind} {', '.join(items[:most])}{more}"] if items else []

    shapes = [f"{k} {tuple(found[k].shape)} in the file, {tuple(v.shape)} in the model"
              for k, v in expected.items() if k in found and found[k].shape != v.shape]
    parts = (names("missing from the file:", [k for k in expected if k not in found])
             + names("not in the model:", [k for k in found if k not in expected])
             + names("shape of", shapes))
    return "; ".join(parts) or "a tensor of it could not be copied"


def load_weights(model: nn.Module, ckpt: Path, tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Copy ``ckpt``'s ``model.safetensors`` (or its ``tensors``, already read) into ``model``; a
    :class:`CheckpointError` naming what differs when they do not fit."""
    path = Path(ckpt) / "model.safetensors"
    tensors = read_weights(path)[0] if tensors is None else tensors
    try:
        model.load_state_dict(tensors)
    except RuntimeError:
        raise CheckpointError(
            f"{path} does not fit the model of its config.json ({_misfit(model.state_dict(), tensors)})"
        ) from None


OTHER_KINDS = {
    "train": "a training run (daps train): use daps eval / render / export-codes",
    "pretrained": ("an exported model (daps export; eval, render, export-codes and the tokenizer arguments take it, "
                   "as does daps.from_pretrained in Python)"),
    "prior": "a prior over codes (the first argument of daps prior sample / eval)",
    "robot": "a robot policy: use daps robot plan / eval",
    "tracker": "a low-level tracker: use daps robot track-eval",
}


def run_folder(ckpt: Path) -> Path:
    """The run folder a checkpoint folder ``RUN/checkpoints/step_N`` belongs to (a checkpoint folder elsewhere, e.g.
    a copied one, stands for itself)."""
    return ckpt.parent.parent if ckpt.parent.name == CKPT_DIR else ckpt


def refuse_other_kind(ckpt: Path, kind: str = "train", what: str = "a training run") -> None:
    """CheckpointError if ``ckpt`` belongs to a daps folder whose marker names another kind than ``kind``; the
    message names that folder (not the checkpoint), says what it is, how to use it, and that ``what`` was expected."""
    folder = run_folder(ckpt)
    found = read_marker(folder)
    if found is not None and found != kind:
        raise CheckpointError(f"{folder} is {OTHER_KINDS.get(found, f'a daps {found} folder')}, not {what}")


def load_model(path: str | Path, device: str | torch.device = "cpu") -> Method:
    """Load a trained method from a run folder or checkpoint, ready for ``encode`` / ``decode``.

    The model is built from the checkpoint's ``config.json`` and put in eval mode; no pickle is read. The
    checkpoint's files are verified against their checksums first. The resolved :class:`~daps.config.Config`
    is attached as ``model.config``, and for motion and one's own sequences the map from raw features to the
    model's scale as ``model.standardization`` (a :class:`~daps.motion.dataset.Standardizer`; None for images).
    """
    from daps.data import run_standardization
    from daps.methods import build_method

    if not isinstance(path, (str, os.PathLike)):
        raise UserError(f"load_model takes the path of a run folder or checkpoint, got {type(path).__name__}")
    device = resolve_device(device)
    ckpt = resolve_checkpoint(path, verify=False)
    refuse_other_kind(ckpt)
    verify_checkpoint(ckpt)
    cfg = read_config(ckpt / "config.json")
    model = build_method(cfg, tuple(cfg.data.image_shape))
    load_weights(model, ckpt)
    model.standardization = run_standardization(run_folder(ckpt), cfg.data.name)
    return model.to(device).eval()
