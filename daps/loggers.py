"""Where a run's numbers go besides ``metrics.jsonl`` (which stays the source of truth): TensorBoard or Weights &
Biases, chosen by ``train.logger``.

- ``auto`` (default): TensorBoard when the ``tensorboard`` package is installed, else nothing.
- ``tensorboard``: event files in ``RUN/tensorboard/`` (``tensorboard --logdir RUN``): every metrics row as scalars
  (``train/<key>``, ``val/<key>``), the resolved config as text, histograms of the validation codes per position,
  and the reconstruction figure as an image. Extra: ``pip install 'daps[tensorboard]'``.
- ``wandb``: the same to a W&B run (``RUN/wandb/``); ``WANDB_MODE=offline`` keeps it local. Extra:
  ``pip install 'daps[wandb]'``.
- ``none``.

The packages are imported only when chosen; a missing one is a :class:`~daps.errors.UserError` naming the extra.
A logger never stops a run: the first error it raises is logged as a warning and the logger switches itself off.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

import torch

from daps.errors import UserError

log = logging.getLogger("daps")

LOGGERS = ("auto", "none", "tensorboard", "wandb")
MAX_HISTOGRAM_POSITIONS = 16


def resolve_logger(kind: str) -> str:
    """``auto`` -> ``tensorboard`` if installed, else ``none``; the others as given (checked)."""
    if kind not in LOGGERS:
        raise UserError(f"train.logger must be one of {', '.join(LOGGERS)}, got {kind!r}")
    if kind == "auto":
        return "tensorboard" if importlib.util.find_spec("tensorboard") is not None else "none"
    return kind


def check_logger(kind: str) -> str:
    """The logger ``kind`` resolves to, after importing its package: a missing one is a :class:`UserError` naming
    the extra. ``train`` calls it before it touches the run folder."""
    kind = resolve_logger(kind)
    try:
        if kind == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        elif kind == "wandb":
            import wandb  # noqa: F401
    except ImportError:
        raise UserError(f"train.logger={kind} needs the {kind} package: pip install 'daps[{kind}]'") from None
    return kind


class RunLogger:
    """Logs nothing (``none``); the base of the real loggers, which catch their own errors."""

    kind = "none"

    def __init__(self) -> None:
        self.broken = False

    def _guard(self, what: str, fn, *args) -> None:
        if self.broken:
            return
        try:
            fn(*args)
        except Exception as err:  # noqa: BLE001 - a logger must never stop a run
            self.broken = True
            log.warning("%s logger switched off after an error in %s: %s", self.kind, what, err)

    def row(self, row: dict[str, Any]) -> None:
        """One ``metrics.jsonl`` row (``split`` and ``step`` in it)."""
        self._guard("row", self._row, row)

    def codes(self, step: int, indices: torch.Tensor) -> None:
        """Validation codes ``(N, T)``: one histogram per position (the first 16)."""
        self._guard("codes", self._codes, step, indices)

    def image(self, tag: str, path: Path, step: int) -> None:
        """A PNG figure of the run (if it was written)."""
        if path.is_file():
            self._guard("image", self._image, tag, path, step)

    def close(self) -> None:
        self._guard("close", self._close)

    def _row(self, row: dict[str, Any]) -> None: ...

    def _codes(self, step: int, indices: torch.Tensor) -> None: ...

    def _image(self, tag: str, path: Path, step: int) -> None: ...

    def _close(self) -> None: ...


def _scalars(row: dict[str, Any]) -> dict[str, float]:
    split = row.get("split", "train")
    return {f"{split}/{k}": float(v) for k, v in row.items()
            if k not in ("split", "step") and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _png(path: Path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))  # (H, W, 3) uint8


class TensorBoardLogger(RunLogger):
    kind = "tensorboard"

    def __init__(self, run_dir: Path, config: dict[str, Any], start_step: int = 0):
        super().__init__()
        check_logger(self.kind)
        from torch.utils.tensorboard import SummaryWriter
        # After a resume from step S, what a killed run logged past S is hidden (TensorBoard's purge_step), as
        # metrics.jsonl is truncated to S: each step shows once.
        purge = start_step + 1 if start_step else None
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge)
        self._guard("config", self.writer.add_text, "config", "```\n" + json.dumps(config, indent=2) + "\n```", 0)

    def _row(self, row: dict[str, Any]) -> None:
        for tag, value in _scalars(row).items():
            self.writer.add_scalar(tag, value, row["step"])
        self.writer.flush()

    def _codes(self, step: int, indices: torch.Tensor) -> None:
        for t in range(min(indices.shape[1], MAX_HISTOGRAM_POSITIONS)):
            self.writer.add_histogram(f"codes/position_{t:02d}", indices[:, t].cpu().numpy(), step)

    def _image(self, tag: str, path: Path, step: int) -> None:
        self.writer.add_image(tag, _png(path), step, dataformats="HWC")
        self.writer.flush()

    def _close(self) -> None:
        self.writer.close()


class WandbLogger(RunLogger):
    kind = "wandb"

    def __init__(self, run_dir: Path, config: dict[str, Any]):
        super().__init__()
        check_logger(self.kind)
        import wandb
        self.wandb = wandb
        self.run = None

        def start() -> None:
            self.run = wandb.init(project="daps", name=run_dir.name, id=wandb_run_id(run_dir), resume="allow",
                                  dir=str(run_dir), config=config)

        self._guard("init", start)

    def _row(self, row: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.log(_scalars(row), step=row["step"])

    def _codes(self, step: int, indices: torch.Tensor) -> None:
        if self.run is not None:
            histograms = {f"codes/position_{t:02d}": self.wandb.Histogram(indices[:, t].cpu().numpy())
                          for t in range(min(indices.shape[1], MAX_HISTOGRAM_POSITIONS))}
            self.run.log(histograms, step=step)

    def _image(self, tag: str, path: Path, step: int) -> None:
        if self.run is not None:
            self.run.log({tag: self.wandb.Image(str(path))}, step=step)

    def _close(self) -> None:
        if self.run is not None:
            self.run.finish()


WANDB_ID_FILE = "daps_run_id"
"""In ``RUN/wandb/``: the W&B run id of this daps run."""


def wandb_run_id(run_dir: Path) -> str:
    """The W&B run id of ``run_dir``: made at random when the run starts (so runs whose folders share a name, e.g.
    the ``seed0`` folders of ``daps compare``, never share a W&B run, and ``--overwrite`` starts a new one), read
    back on ``--resume`` (which continues the same W&B run). W&B keeps what a killed run already logged for the
    steps after its last checkpoint; the resumed run computes the same values there (exact resume)."""
    import secrets

    from daps.runfolder import write_text_atomic

    path = run_dir / "wandb" / WANDB_ID_FILE
    try:
        run_id = path.read_text().strip()
    except OSError:
        run_id = ""
    if not (run_id.replace("-", "").isalnum() and len(run_id) <= 64):
        if path.parent.is_dir():  # logged to W&B before daps kept the id: the id it derived from the folder's name
            run_id = "daps-" + "".join(c if c.isalnum() else "-" for c in run_dir.resolve().name)[-50:]
        else:
            run_id = "daps" + secrets.token_hex(8)
        write_text_atomic(path, run_id + "\n")
    return run_id


def make_logger(kind: str, run_dir: Path, config: dict[str, Any], start_step: int = 0) -> RunLogger:
    """The logger ``train.logger`` names (see the module doc), for a run that starts at ``start_step``."""
    kind = resolve_logger(kind)
    if kind == "tensorboard":
        return TensorBoardLogger(run_dir, config, start_step)
    if kind == "wandb":
        return WandbLogger(run_dir, config)
    return RunLogger()
