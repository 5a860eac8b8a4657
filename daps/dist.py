"""Distributed helpers. The same code runs as one plain process or under ``torchrun`` (one process per
device; then the process group is initialized from the environment torchrun sets)."""

from __future__ import annotations

import math
import os
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

from daps.errors import UserError

T = TypeVar("T")

_wait_group = None
"""A gloo group with a long timeout, for ranks waiting while rank 0 alone evaluates or writes (see wait_for_main)."""
_own_group = False  # whether the default process group is setup()'s (torchrun) rather than the caller's

WAIT_TIMEOUT = timedelta(days=7)


def resolve_device(device: str | torch.device | None, name: str = "device") -> torch.device:
    """``device`` as a ``torch.device`` (None: CUDA when there is one, else the CPU), or a :class:`UserError`
    naming it (as ``name``, e.g. ``--device``) when it is not a device, is CUDA on a machine without one, or is
    neither cpu nor cuda."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"{name} {device!r} is not a device (try cpu, cuda or cuda:1)") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{name} {device}: CUDA is not available on this machine")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise UserError(f"{name} {device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                        f"numbered from 0")
    if resolved.type not in ("cpu", "cuda"):
        raise UserError(f"{name} {device}: only cpu and cuda are supported")
    return resolved


def setup(device: torch.device | None = None) -> tuple[int, int]:
    """Initialize the process group when launched by torchrun; return ``(rank, world_size)``. The backend is NCCL
    for CUDA training (``device`` on CUDA, or None on a machine with CUDA), else gloo. Under torchrun each process
    takes the device of its ``LOCAL_RANK``, so a ``device`` with an index is a UserError.

    The collectives of the training step use the backend's default timeout (or ``$DAPS_DIST_TIMEOUT_S``
    seconds); the waits for rank 0's evaluation and checkpoint writing use a separate group that does not time
    out in practice, so a long validation (50,000 images, FID) cannot trip the step's timeout.
    """
    global _wait_group, _own_group
    world = dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and device is not None and device.index is not None:
        raise UserError(f"--device {device}: under torchrun each process uses the GPU of its LOCAL_RANK; "
                        f"pass --device {device.type}")
    if world > 1 and not dist.is_initialized():
        timeout = _timeout()
        cuda = device.type == "cuda" if device is not None else torch.cuda.is_available()
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout)
        _own_group = True
    if dist.is_initialized() and dist.get_world_size() > 1 and _wait_group is None:  # also in a caller's group
        _wait_group = dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT)
    return rank(), world


def _timeout() -> timedelta | None:
    """``$DAPS_DIST_TIMEOUT_S`` as a timedelta (None: unset); else UserError."""
    text = os.environ.get("DAPS_DIST_TIMEOUT_S", "").strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and 0 < seconds <= WAIT_TIMEOUT.total_seconds()):
        raise UserError(f"DAPS_DIST_TIMEOUT_S must be a number of seconds above 0 (at most 7 days), got {text!r}")
    return timedelta(seconds=seconds)


def wait_for_main() -> None:
    """Every rank waits here until rank 0 arrives (after work only rank 0 does), without a timeout in practice."""
    if dist.is_initialized():
        dist.barrier(group=_wait_group)


def from_main(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (a broadcast over the wait group, so it may wait on rank 0's work); ``obj``
    itself in a single process."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_wait_group)
    return box[0]


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def gather_objects(obj: object) -> list:
    """``obj`` of every rank, as a list indexed by rank (on every rank); ``[obj]`` in a single process."""
    if not dist.is_initialized():
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """The element-wise mean of ``values`` over every rank (all-reduced); ``values`` itself in a single process."""
    if not dist.is_initialized():
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / dist.get_world_size()


def check_in_sync(tensors, what: str) -> None:
    """RuntimeError unless every rank holds the same ``tensors`` (compared by their float64 sums, all-reduced): the
    check that data-parallel training really applies one update everywhere. Nothing in a single process."""
    if not dist.is_initialized():
        return
    raw = torch.stack([t.detach().double().sum() for t in tensors])
    # NaN is unequal to itself: compared as a flag beside the sum, so that a NaN on every rank is in sync and a NaN
    # on one rank against 0 on another is not
    sums = torch.cat([torch.nan_to_num(raw), raw.isnan().double()])
    high, low = sums.clone(), sums.clone()
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    if not torch.equal(high, low):
        raise RuntimeError(f"{what}: the processes hold different weights, so they did not apply the same update")


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def teardown() -> None:
    """Destroy the process group :func:`setup` made (a group the caller made stays theirs, less the wait group)."""
    global _wait_group, _own_group
    if dist.is_initialized():
        if _own_group:
            dist.destroy_process_group()
        elif _wait_group is not None:
            dist.destroy_process_group(_wait_group)
    _wait_group, _own_group = None, False
