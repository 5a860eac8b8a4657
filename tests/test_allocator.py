"""Freed CPU memory kept for reuse (``daps.allocator``): large blocks stop being page-faulted in afresh, and the CLI
flags that apply it.

The reference is the kernel's own count of this process's minor page faults (``getrusage``), in fresh processes (the
setting is malloc's, for a whole process): with malloc's defaults, a 64 MiB block freed and allocated again faults
its pages in again every time; kept, only the first time.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from daps import allocator
from daps.cli import main

_FAULTS = """
import json, resource, sys
import torch
from daps.allocator import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
counts = []
for _ in range(8):
    before = faults()
    block = torch.empty(16 * 2**20)  # 64 MiB, twice glibc's largest mmap threshold
    block.fill_(1.0)  # touch every page
    del block
    counts.append(faults() - before)
print(json.dumps({"kept": kept, "faults": counts}))
"""


def _page_faults(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and getrusage's fault counts: Linux")
def test_kept_memory_is_not_page_faulted_in_again():
    """Default: every round faults about the block's 16,384 pages (4 KiB) in again; kept: once the heap has grown
    to hold the block (the first round, sometimes a second), none. Fails on a keep_freed_memory that sets nothing
    (the default's counts)."""
    pages = 16 * 2**20 * 4 // 4096
    default, kept = _page_faults("default"), _page_faults("keep")
    if not kept["kept"]:
        pytest.skip("this C library is not glibc: nothing to keep")
    assert all(count > pages // 2 for count in default["faults"][1:]), default
    assert all(count < pages // 20 for count in kept["faults"][4:]), kept


def test_keep_freed_memory_without_glibc_changes_nothing(monkeypatch):
    """No C library found, or one without glibc's symbol: False, and mallopt is never called."""
    keep = allocator.keep_freed_memory.__wrapped__  # the function, without its once-per-process cache
    monkeypatch.setattr(allocator.ctypes.util, "find_library", lambda name: None)
    assert keep() is False

    calls = []

    class Musl:
        def __init__(self, name):
            self.mallopt = lambda *a: calls.append(a) or 1

    monkeypatch.setattr(allocator.ctypes.util, "find_library", lambda name: "libc.so")
    monkeypatch.setattr(allocator.ctypes, "CDLL", Musl)
    assert keep() is False and calls == []


@pytest.mark.parametrize("flag, applied", [([], True), (["--keep-freed-memory"], True),
                                           (["--no-keep-freed-memory"], False)])
def test_training_commands_apply_the_flag(flag, applied, monkeypatch, tmp_path):
    """``daps train`` keeps freed memory unless told not to (the flag is read before anything trains)."""
    seen = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: seen.append(True) or True)
    import daps.train

    monkeypatch.setattr(daps.train, "train", lambda *a, **k: (_ for _ in ()).throw(SystemExit(7)))
    with pytest.raises(SystemExit) as stopped:
        main(["train", "--preset", "mnist", "--method", "daps", *flag, f"train.out_dir={tmp_path / 'run'}"])
    assert stopped.value.code == 7 and seen == ([True] if applied else [])


@pytest.mark.parametrize("flag", [[], ["--no-keep-freed-memory"]])
def test_compare_carries_the_flag_into_its_commands(flag, monkeypatch, tmp_path):
    """``daps compare --no-keep-freed-memory``: the comparison's own process keeps malloc's defaults, and the
    commands it writes to continue each run carry the flag (without it, they would keep freed memory)."""
    seen, flags = [], []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: seen.append(True) or True)
    import daps.compare

    def fake_compare(*args, **kwargs):
        flags.extend(kwargs["flags"])
        raise SystemExit(7)

    monkeypatch.setattr(daps.compare, "compare", fake_compare)
    with pytest.raises(SystemExit):
        main(["compare", "--methods", "daps", "--steps", "2", "--out", str(tmp_path / "cmp"), *flag])
    assert seen == ([] if flag else [True])
    assert ("--no-keep-freed-memory" in flags) == bool(flag)
