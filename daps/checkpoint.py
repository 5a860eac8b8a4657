"""Checkpoints: weights as safetensors, the resolved config as JSON, and a full training state for resume.

Layout of a run folder::

    run/config.json                       resolved config
    run/checkpoints/step_00001000/        one checkpoint (written as a temp folder, then renamed)
        model.safetensors                 weights (no pickle)
        config.json                       resolved config (no pickle)
        state.pt                          optimizers, step, RNG states (tensors and numbers only;
                                          loaded with ``weights_only=True``)
    run/checkpoints/latest                name of the newest complete checkpoint (replaced atomically)
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from daps.config import Config, config_from_dict, config_to_dict

CKPT_DIR = "checkpoints"


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file and ``os.replace``: readers see old or new, never half."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_config(path: Path, cfg: Config) -> None:
    write_text_atomic(path, json.dumps(config_to_dict(cfg), indent=2) + "\n")


def read_config(path: Path) -> Config:
    return config_from_dict(json.loads(Path(path).read_text()))


def save_checkpoint(run_dir: Path, step: int, model: nn.Module, cfg: Config, state: dict[str, Any], keep: int) -> Path:
    """Write checkpoint ``step`` atomically, point ``latest`` at it and prune to the newest ``keep``."""
    root = Path(run_dir) / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    final, tmp = root / name, root / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"step": str(step)})
    write_config(tmp / "config.json", cfg)
    torch.save(state, tmp / "state.pt")
    for path in (tmp / "model.safetensors", tmp / "state.pt"):
        _fsync(path)
    aside = root / f".{name}.old-{os.getpid()}"
    if final.exists():  # rewriting a step: move the old copy aside, never leave `latest` dangling
        os.replace(final, aside)
    os.replace(tmp, final)
    _fsync(root)
    write_text_atomic(root / "latest", name + "\n")
    shutil.rmtree(aside, ignore_errors=True)
    checkpoints = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in checkpoints[: max(len(checkpoints) - keep, 0)]:
        if old != final:
            shutil.rmtree(old)
    return final


def resolve_checkpoint(path: str | Path) -> Path:
    """A run folder, a checkpoint folder or a ``model.safetensors`` file -> the checkpoint folder."""
    path = Path(path)
    if path.is_file() and path.name == "model.safetensors":
        return path.parent
    if (path / "model.safetensors").is_file():
        return path
    latest = path / CKPT_DIR / "latest"
    if latest.is_file():
        ckpt = path / CKPT_DIR / latest.read_text().strip()
        if (ckpt / "model.safetensors").is_file():
            return ckpt
    raise FileNotFoundError(f"no checkpoint found at {path} (expected a run folder with {CKPT_DIR}/latest)")


def load_training_state(ckpt: Path) -> dict[str, Any]:
    return torch.load(Path(ckpt) / "state.pt", map_location="cpu", weights_only=True)


def load_weights(model: nn.Module, ckpt: Path) -> None:
    model.load_state_dict(load_file(str(Path(ckpt) / "model.safetensors")))


def load_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Load a trained method from a run folder or checkpoint, ready for ``encode`` / ``decode``.

    The model is built from the checkpoint's ``config.json`` and put in eval mode; no pickle is read. The
    resolved :class:`~daps.config.Config` is attached as ``model.config``.
    """
    from daps.methods import build_method

    ckpt = resolve_checkpoint(path)
    cfg = read_config(ckpt / "config.json")
    model = build_method(cfg, tuple(cfg.data.image_shape))
    load_weights(model, ckpt)
    model.config = cfg
    return model.to(device).eval()
