"""The training step of this checkout against the same step at an older commit, on this machine, in one run.

    python benchmarks/against_revision.py --revision be28271 [--preset mnist] [--rounds 3] [--steps 20]
        [--threads 1] [--out docs/benchmarks/against-be28271.json] [--overwrite] [key=value ...]

Speed figures taken on different days or machines do not compare (the machines here are shared and noisy), so
this exports ``--revision`` into a temporary folder (``git archive``: nothing is registered in the repository, so
a run killed midway leaves at most that folder) and runs ``benchmarks/bench_step.py`` of each tree
(each on its own code: the benchmark as it was then, the package as it was then) in alternating processes,
``--rounds`` times. Reports each tree's steps/s per round and the median of the per-round ratios (this checkout /
the revision). Both trees run with freed memory kept (glibc's environment, :data:`SAME_ALLOCATOR`; since the commit
that added it). Use it to carry a figure measured against the revision elsewhere (e.g. the original
implementation's, in ``../shared/docs/PERF.md``, measured against ``be28271``) forward to this checkout.
Writes JSON (machine, torch, commit, command) and the same table as markdown next to it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shlex
import statistics
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from daps.runfolder import write_json_atomic, write_text_atomic  # noqa: E402


def export_tree(git: list[str], commit: str, tree: Path) -> None:
    """The files of ``commit`` into the new folder ``tree``."""
    archive = subprocess.run([*git, "archive", "--format=tar", commit], check=True, capture_output=True).stdout
    tree.mkdir()
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.10.12
            tar.extractall(tree, filter="data")
        else:  # older Python: the archive is git's own, of a commit of this repository
            tar.extractall(tree)


def resolve_commit(revision: str) -> str | None:
    """The full commit ``revision`` names in this repository (anything ``git rev-parse`` takes), or None."""
    proc = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", f"{revision}^{{commit}}"],
                          capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def run_on_revision(commit: str, script: Path, args: list[str], load: Callable[[Path], Any] = read_json) -> Any:
    """What ``script`` (a benchmark of this checkout) computes on the package of ``commit`` (a full commit,
    :func:`resolve_commit`): its tree exported into a temporary folder, and ``script --package TREE --json-only FILE
    *args`` run in a fresh process on it (``script`` puts ``TREE/benchmarks`` first on its path, so the revision's
    ``benchmarks/run.py`` builds the model); FILE read by ``load`` (JSON by default) before the folder goes. A
    failing script raises ``RuntimeError``."""
    with tempfile.TemporaryDirectory(prefix="daps-revision-") as tmp:
        tree = Path(tmp) / "old"
        export_tree(["git", "-C", str(REPO)], commit, tree)
        out = Path(tmp) / "out.json"
        cmd = [sys.executable, str(script), "--package", str(tree), "--json-only", str(out), *args]
        proc = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{script.name} on {commit[:12]} failed:\n{proc.stderr[-2000:]}")
        return load(out)


SAME_ALLOCATOR = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "2147483647"}
"""glibc's environment for what :func:`daps.allocator.keep_freed_memory` sets: a revision older than it keeps
malloc's defaults otherwise, and the comparison would mix the allocator into the code's speed."""


def bench(tree: Path, args: argparse.Namespace, out: Path) -> dict:
    """``bench_step.py`` of ``tree`` on ``tree``'s package, in a fresh process; its JSON."""
    cmd = [sys.executable, str(tree / "benchmarks" / "bench_step.py"), "--preset", args.preset, "--steps",
           str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads), "--json", str(out),
           *args.overrides]
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(args.threads), **SAME_ALLOCATOR}
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"bench_step.py in {tree} failed:\n{proc.stderr[-2000:]}")
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--revision", required=True, help="the older commit (anything git rev-parse takes)")
    parser.add_argument("--preset", default="mnist", help="the preset both trees' bench_step.py run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per process (windows of 5)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("overrides", nargs="*", help="key=value overrides given to both trees")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else None
    if min(args.rounds, args.steps, args.threads) < 1:
        print("against_revision.py: error: --rounds, --steps and --threads must be at least 1", file=sys.stderr)
        return 2
    existing = [p for p in (out, out.with_suffix(".md")) if p.exists()] if out is not None else []
    if existing and not args.overwrite:
        print(f"against_revision.py: error: {existing[0]} exists (pass --overwrite to replace it)", file=sys.stderr)
        return 2
    git = ["git", "-C", str(REPO)]
    old = resolve_commit(args.revision)
    if old is None:
        print(f"against_revision.py: error: no commit {args.revision!r} in {REPO}", file=sys.stderr)
        return 2
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                text=True).stdout.strip())
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="daps-against-") as tmp:
        tree = Path(tmp) / "old"
        export_tree(git, old, tree)
        for r in range(args.rounds):
            new_run = bench(REPO, args, Path(tmp) / f"new-{r}.json")
            old_run = bench(tree, args, Path(tmp) / f"old-{r}.json")
            rows.append({"round": r, "this": new_run["steps_per_s"], "revision": old_run["steps_per_s"],
                         "ratio": new_run["steps_per_s"] / old_run["steps_per_s"]})
            print(f"round {r}: this {rows[-1]['this']:.3f} steps/s, {args.revision} {rows[-1]['revision']:.3f}, "
                  f"ratio {rows[-1]['ratio']:.2f}", file=sys.stderr, flush=True)
    machine = new_run.get("machine", {})
    result = {
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": shlex.join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]),
        "this_commit": head + ("+dirty" if dirty else ""), "revision": old, "machine": machine,
        "torch": new_run["torch"],  # what this checkout's bench_step.py ran on
        "preset": args.preset, "threads": args.threads, "steps": args.steps, "warmup": args.warmup,
        "overrides": args.overrides,
        "environment": SAME_ALLOCATOR,
        "rounds": rows, "ratio_median": statistics.median(r["ratio"] for r in rows),
    }
    table = [
        f"This checkout ({result['this_commit'][:12]}) against {old[:12]}: `bench_step.py` of each tree at "
        f"`{args.preset}`, "
        f"{args.rounds} alternating rounds, {args.threads} thread(s), {args.steps} timed steps after {args.warmup}; "
        f"{machine}, torch {result['torch']}.",
        "",
        "| round | this checkout steps/s | revision steps/s | ratio |",
        "|---|---|---|---|",
        *(f"| {r['round']} | {r['this']:.3f} | {r['revision']:.3f} | {r['ratio']:.2f} |" for r in rows),
        "",
        f"Median ratio: **{result['ratio_median']:.2f}**.",
    ]
    print("\n".join(table))
    if out is not None:
        write_json_atomic(out, result)
        write_text_atomic(out.with_suffix(".md"), "\n".join(table) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
