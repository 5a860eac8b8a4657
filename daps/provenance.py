"""Where a result came from: the source revision of the code that produced it, the machine, torch and the date.

A training run records each job that trained it (a first start and every resume) in its folder's
``provenance.json``, so that a run reused later (``daps compare``) still says where its steps were taken.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import platform
import subprocess
from pathlib import Path

import torch

from daps.runfolder import write_json_atomic

log = logging.getLogger(__name__)

JOBS_FILE = "provenance.json"
"""The file of a run folder that lists the jobs that trained it."""

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
"""The folder holding the ``daps`` package: the repository root of a source checkout."""


def source_revision(root: str | Path = PACKAGE_ROOT) -> str:
    """``<commit>`` of the git checkout whose top folder is ``root``, with ``+dirty`` when tracked files have
    uncommitted changes; otherwise (an installed wheel, also one inside another repository, a copied tree)
    ``$DAPS_GIT_REVISION``, else ``unknown``."""
    try:
        top, commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--show-toplevel", "HEAD"], capture_output=True, text=True,
            check=True, timeout=10,
        ).stdout.splitlines()  # lines: a checkout's path may hold spaces
        if Path(top).resolve() != Path(root).resolve():  # an installed daps inside some other repository
            return os.environ.get("DAPS_GIT_REVISION", "unknown")
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError, ValueError):  # no git here: what the caller says, if any
        return os.environ.get("DAPS_GIT_REVISION", "unknown")
    return commit + ("+dirty" if dirty else "")


def _cpuinfo(field: str) -> str | None:
    """The value of the first ``field`` line of /proc/cpuinfo (Linux); None where there is none."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what ``platform`` knows, else ``unknown``."""
    return _cpuinfo("model name") or platform.processor() or platform.machine() or "unknown"


def cpu_bf16() -> bool | None:
    """Whether the CPU has native bfloat16 instructions (AVX512-BF16 or AMX-BF16: bf16 autocast is fast only
    there), from /proc/cpuinfo's flags; None where they are not readable."""
    flags = _cpuinfo("flags")
    return None if flags is None else bool(set(flags.split()) & {"avx512_bf16", "amx_bf16"})


def machine_name(device: str | torch.device = "cpu") -> str:
    """What a result was measured on, in one line: the GPU's name on a CUDA ``device``, else the CPU model and
    how many of its logical CPUs this process may use (``AMD EPYC, 2 CPUs``)."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu_name()}, {usable} CPUs"


def provenance(device: str | torch.device = "cpu") -> dict[str, str]:
    """``code`` (:func:`source_revision`), ``machine`` (:func:`machine_name`), ``torch`` and ``date`` (UTC, ISO
    8601, seconds): what a written result records of where it came from."""
    return {
        "code": source_revision(),
        "machine": machine_name(device),
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def read_jobs(run_dir: str | Path) -> list[dict]:
    """The jobs recorded in ``run_dir``'s ``provenance.json``, oldest first, each with ``from_step`` (the step it
    started from) and :func:`provenance`'s keys, ``device`` and ``processes``. Empty for a run trained before
    daps recorded them; a damaged record also reads as empty (the steps' origin is then unknown, nothing fails)."""
    try:
        jobs = json.loads((Path(run_dir) / JOBS_FILE).read_text())["jobs"]
    except (OSError, ValueError, TypeError, KeyError):
        return []
    if not (isinstance(jobs, list) and all(isinstance(j, dict) and isinstance(j.get("from_step"), int) for j in jobs)):
        return []
    return jobs


def record_job(run_dir: str | Path, from_step: int, device: torch.device, processes: int) -> list[dict]:
    """Add this job, which trains ``run_dir`` from step ``from_step``, to its ``provenance.json`` (atomically) and
    return the list written. Jobs that started at or after ``from_step`` are dropped: their steps were lost with
    the checkpoints this job resumes before (or they trained none)."""
    path = Path(run_dir) / JOBS_FILE
    earlier = read_jobs(run_dir)
    if not earlier and from_step > 0 and path.exists():
        log.warning("%s is damaged: where the run's first %d steps were trained is no longer known", path, from_step)
    jobs = [job for job in earlier if job["from_step"] < from_step]
    jobs.append({"from_step": from_step, **provenance(device), "device": str(device), "processes": processes})
    write_json_atomic(path, {"format": 1, "jobs": jobs})
    return jobs
