"""Training examples for the high-level policy: (kind, velocity, previous window's codes) -> this window's codes.

From a motion tokenizer run (any method with discrete codes trained on ``lafan1-h1``), every window of T frames
that starts at a multiple of ``stride`` frames inside a clip is encoded (``samples`` codes per window from a
stochastic encoder; 1 from a quantizer). Its previous window is the one starting T frames earlier in the same clip
(so T must be a multiple of ``stride``); the first windows of a clip have none (the start symbol). Its velocity is
:func:`daps.robot.commands.window_velocity` of the ground-truth poses, its label the clip's kind. The training
split gives the examples, the validation split (the four held-out clips) the held-out likelihood.

The result is saved in the policy's run folder (``commands.safetensors``) so that a resumed run and a later
evaluation see exactly the same examples.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from daps.errors import UserError
from daps.robot.commands import window_velocity
from daps.runfolder import atomic_path

log = logging.getLogger(__name__)

HEADER_KEY = "daps_commands"


@dataclass
class CommandSet:
    """Examples of one split: ``codes (N, T)``, ``prev (N, T)`` (``vocab_size`` = no previous window),
    ``labels (N,)``, ``velocity (N, 3)`` float32, and ``window_ids (N,)`` (which window of the split's
    windows at ``stride``, so that the K codes of one window can be told apart from codes of another)."""

    codes: torch.Tensor
    prev: torch.Tensor
    labels: torch.Tensor
    velocity: torch.Tensor
    window_ids: torch.Tensor

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    def to(self, device: torch.device | str) -> CommandSet:
        return CommandSet(*(t.to(device) for t in (self.codes, self.prev, self.labels, self.velocity,
                                                    self.window_ids)))

    def subset(self, idx: torch.Tensor) -> CommandSet:
        return CommandSet(*(t[idx] for t in (self.codes, self.prev, self.labels, self.velocity, self.window_ids)))


def _pair_index(clip_ids: np.ndarray, offsets: np.ndarray, window: int) -> np.ndarray:
    """For each window, the index of the window starting ``window`` frames earlier in the same clip, or -1."""
    where = {(int(c), int(o)): i for i, (c, o) in enumerate(zip(clip_ids, offsets))}
    return np.array([where.get((int(c), int(o) - window), -1) for c, o in zip(clip_ids, offsets)], dtype=np.int64)


@torch.no_grad()
def encode_split(model: Any, motion: Any, split: str, stride: int, samples: int, generator: torch.Generator,
                 batch_size: int = 500, progress: bool = False) -> CommandSet:
    """The examples of ``split`` (``train`` or ``val``) of ``motion`` (a :class:`~daps.motion.dataset.MotionData`
    whose windows start every ``stride`` frames), encoded by ``model``. ``progress``: a bar on a terminal, else a
    log line at every tenth of the windows (an autoregressive encoder takes minutes for the training split on a
    CPU)."""
    from daps.data.motion import window_kinds
    from daps.progress import progress_bar

    windows = motion.split(split)
    t = motion.window
    if t % stride:
        raise UserError(f"stride {stride} must divide the window length {t}")
    device = next(model.parameters()).device
    model.eval()
    draws = []
    t0, next_log = time.perf_counter(), 0.1
    with progress_bar(len(windows), f"encoding {split}", "window", progress) as bar:
        lines = progress and bar.disable  # no bar drawn (not a terminal): a log line at every tenth instead
        for start in range(0, len(windows), batch_size):
            idx = torch.arange(start, min(start + batch_size, len(windows)), device="cpu")  # windows live on the host
            x = windows[idx][:, None].to(device)  # (B, 1, T, F)
            draws.append(torch.stack([model.encode(x, generator) for _ in range(samples)], 1).cpu())  # (B, K, T)
            bar.update(len(idx))
            done = (start + len(idx)) / len(windows)
            if lines and next_log <= done < 1:
                elapsed = time.perf_counter() - t0
                log.info("encoding %s: %d of %d windows, %.0f s, about %.0f s left", split, start + len(idx),
                         len(windows), elapsed, elapsed * (1 - done) / done)
                next_log = (int(done * 10) + 1) / 10
    codes = torch.cat(draws).long()  # (N, K, T)
    clip_ids, offsets = windows.clip_ids.numpy(), windows.offsets.numpy()
    prev_idx = torch.from_numpy(_pair_index(clip_ids, offsets, t))  # (N,)
    start_row = torch.full_like(codes[:, 0], int(model.vocab_size))
    prev = torch.where((prev_idx >= 0)[:, None, None], codes[prev_idx.clamp(min=0)], start_row[:, None])
    poses = motion.window_poses(split, np.arange(len(windows)))  # (N, T, 26)
    velocity = torch.from_numpy(window_velocity(poses, motion.fps)).float()  # (N, 3)
    kinds = window_kinds(windows)
    n, k, _ = codes.shape
    return CommandSet(
        codes=codes.reshape(n * k, -1),
        prev=prev.reshape(n * k, -1),
        labels=kinds.repeat_interleave(k),
        velocity=velocity.repeat_interleave(k, dim=0),
        window_ids=torch.arange(n, device="cpu").repeat_interleave(k),
    )


def save_commands(path: Path, sets: dict[str, CommandSet], meta: dict[str, Any]) -> None:
    """Write the examples of every split atomically as one safetensors file with ``meta`` as its JSON header."""
    tensors = {}
    for split, s in sets.items():
        for name in ("codes", "prev", "labels", "velocity", "window_ids"):
            tensors[f"{split}.{name}"] = getattr(s, name).contiguous()
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={HEADER_KEY: json.dumps(meta)})


def load_commands(path: Path) -> tuple[dict[str, CommandSet], dict[str, Any]]:
    """The splits and header written by :func:`save_commands`."""
    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {})[HEADER_KEY])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, KeyError, ValueError, SafetensorError) as err:  # e.g. cut short: the header is unreadable
        raise UserError(f"{path}: not a daps commands file ({err})") from None
    splits = sorted({k.split(".")[0] for k in tensors})
    sets = {s: CommandSet(*(tensors[f"{s}.{n}"] for n in ("codes", "prev", "labels", "velocity", "window_ids")))
            for s in splits}
    return sets, meta


def velocity_ranges(train: CommandSet, class_names: list[str], low: float = 1.0, high: float = 99.0) -> dict:
    """Per kind of motion (and ``all``), the ``low``-th and ``high``-th percentiles of the training windows'
    velocities and their quartiles: what a request is clamped to and what the evaluation sweeps over."""
    out = {}
    for k, name in [*enumerate(class_names), (-1, "all")]:
        v = train.velocity if k < 0 else train.velocity[train.labels == k]
        if len(v) == 0:
            continue
        arr = v.double().numpy()
        out[name] = {
            "low": np.percentile(arr, low, axis=0).tolist(),
            "high": np.percentile(arr, high, axis=0).tolist(),
            "quartiles": np.percentile(arr, [25, 50, 75], axis=0).tolist(),
            "windows": int(len(arr)),
        }
    return out
