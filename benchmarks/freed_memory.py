"""The CPU training step with and without freed memory kept for reuse (:func:`daps.allocator.keep_freed_memory`).

    python benchmarks/freed_memory.py [--presets mnist,cifar10] [--methods daps,vqvae] [--rounds 2] [--steps 3]
        [--warmup 1] [--threads 1] [--out docs/benchmarks/freed-memory.json] [--overwrite] [key=value ...]
    python benchmarks/freed_memory.py --cli "daps fid-stats cifar10-jpeg --out s.npz --overwrite" [--rounds 2] ...

The setting is one for the whole process (malloc's), so each measurement runs in a fresh Python process: per
(preset, method) and round, one process with malloc's defaults and one with ``keep_freed_memory()`` called first,
their order alternating from round to round so the machine's load hits both alike. Each process builds the model as
``daps train`` does (``benchmarks/run.py``'s ``setup``: random inputs of the preset's shape and batch size), takes
``--warmup`` steps, then times ``--steps`` steps one by one (median), and reports its peak resident set (the
kernel's high-water mark, reset before the model is built: growth over the resident set then). Reported: seconds
per step of each, the median of the per-round ratios (default / kept: above 1 means keeping is faster), and the
peak memory of each. Prints markdown; writes JSON (machine, torch, threads, commit, command) and the markdown next
to it (``.md``).

``--cli "daps ..."`` times a whole command instead, run as ``python -m daps ...`` with ``--no-keep-freed-memory`` or
``--keep-freed-memory`` appended, in alternating fresh processes: its wall time (start-up included) and peak
resident set. The command must be safe to run again (``--overwrite`` where it writes a file); ``OMP_NUM_THREADS`` is
set to ``--threads`` for it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from run import (  # this script's folder is on sys.path
    PeakMemory,
    apply_freed_memory,
    git_revision,
    machine_info,
    setup,
    step_once,
)

import daps
from daps import get_preset, parse_overrides
from daps.runfolder import write_json_atomic, write_text_atomic


def measure(spec: dict) -> dict:
    """One process's measurement: seconds per step and peak memory, with or without freed memory kept."""
    kept = apply_freed_memory(spec["keep"])
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    cfg = parse_overrides(get_preset(spec["preset"], spec["method"]), spec["overrides"])
    device = torch.device("cpu")
    memory = PeakMemory(device, isolated=True)
    memory.start()
    model, optimizers, x, generator = setup(cfg, device)
    for step in range(spec["warmup"]):
        step_once(model, optimizers, x, step, generator, cfg.train.precision)
    seconds = []
    for step in range(spec["warmup"], spec["warmup"] + spec["steps"]):
        start = time.perf_counter()
        step_once(model, optimizers, x, step, generator, cfg.train.precision)
        seconds.append(time.perf_counter() - start)
    return {"seconds": seconds, "median_s": statistics.median(seconds), "memory": memory.stop(), "kept": kept}


def run_process(spec: dict, folder: Path) -> dict:
    """:func:`measure` in a fresh Python process (malloc's settings are per process)."""
    path = folder / f"{spec['preset']}-{spec['method']}-{spec['keep']}.json"
    path.write_text(json.dumps(spec))
    env = dict(os.environ)  # the worker imports the same daps as this process
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(daps.__file__).parent.parent), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", str(path)], env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"the measurement of {spec['preset']} / {spec['method']} failed (exit {proc.returncode})")
    return json.loads(path.with_suffix(".result.json").read_text())


# Runs ``daps`` with the given arguments and, at exit, writes its own peak resident set (VmHWM) to the file named
# first: getrusage's ru_maxrss of a child started by subprocess starts from its parent's peak, so this process's.
_LAUNCHER = """
import atexit, runpy, sys
path = sys.argv[1]
def record():
    try:
        with open("/proc/self/status") as f:
            peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return
    with open(path, "w") as f:
        f.write(str(peak))
atexit.register(record)
sys.argv = ["daps", *sys.argv[2:]]
runpy.run_module("daps", run_name="__main__", alter_sys=True)
"""


def run_command(words: list[str], keep: bool, threads: int) -> dict:
    """``python -m daps WORDS[1:] --[no-]keep-freed-memory`` in a fresh process: wall seconds and peak memory (its
    own VmHWM where Linux gives it, else wait4's ru_maxrss)."""
    peak_file = Path(tempfile.mkdtemp(prefix="daps-freed-memory-")) / "peak"
    flag = "--keep-freed-memory" if keep else "--no-keep-freed-memory"
    command = [sys.executable, "-c", _LAUNCHER, str(peak_file), *words[1:], flag]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    # Its standard error goes to a file, not a pipe: nothing reads a pipe while wait4 waits, so a command writing more
    # than the pipe holds (64 KiB: logs, warnings) would block on it for ever.
    with tempfile.TemporaryFile() as stderr:
        start = time.perf_counter()
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own resource use (peak RSS in KiB on Linux)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
        stderr.seek(0)
        err = stderr.read().decode(errors="replace")
    if proc.returncode != 0:
        last = err.strip().splitlines()[-1] if err.strip() else f"exit status {proc.returncode}"
        raise RuntimeError(f"{shlex.join(['daps', *words[1:], flag])} failed: {last}")
    scale = 1 if sys.platform == "darwin" else 1024
    peak = int(peak_file.read_text()) if peak_file.exists() else usage.ru_maxrss * scale
    peak_file.unlink(missing_ok=True)
    peak_file.parent.rmdir()
    return {"seconds": seconds, "peak_bytes": peak}


def command_rows(words: list[str], rounds: int, threads: int) -> tuple[list[dict], list[str]]:
    """``--cli``: the command with and without freed memory kept, alternating over ``rounds``."""
    runs: dict[bool, list[dict]] = {False: [], True: []}
    for r in range(rounds):
        for keep in ((False, True) if r % 2 == 0 else (True, False)):
            print(f"round {r + 1}, kept: {keep} ...", file=sys.stderr, flush=True)
            runs[keep].append(run_command(words, keep, threads))
    ratio = statistics.median(d["seconds"] / k["seconds"] for d, k in zip(runs[False], runs[True]))
    median = {keep: statistics.median(run["seconds"] for run in runs[keep]) for keep in runs}
    peak = {keep: max(run["peak_bytes"] for run in runs[keep]) / 2**20 for keep in runs}
    line = (f"| `{shlex.join(words)}` | {median[False]:.1f} | {median[True]:.1f} | {ratio:.2f} | "
            f"{peak[False]:,.0f} / {peak[True]:,.0f} MiB |")
    print(line, flush=True)
    lines = [f"Wall seconds of the whole command (median of {rounds} fresh processes each, start-up included) and "
             "its peak resident set, malloc's defaults against freed memory kept; ratio: median over rounds of "
             "default / kept time.", "",
             "| command | default s | kept s | default / kept | peak memory default / kept |", "|---|---|---|---|---|",
             line]
    return [{"command": words, "default": runs[False], "kept": runs[True], "default_over_kept": ratio}], lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="mnist,cifar10")
    parser.add_argument("--methods", default="daps,vqvae")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per process")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch's default)")
    parser.add_argument("--out", default="", help="JSON report (default benchmarks/results/freed-memory.json)")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--cli", default="", help='time this daps command instead (one quoted string: "daps ...")')
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="config key=value overrides, applied to every measurement")
    args = parser.parse_args(argv)
    if args.worker:  # internal: one measurement, spec and result as JSON files
        path = Path(args.worker)
        path.with_suffix(".result.json").write_text(json.dumps(measure(json.loads(path.read_text()))))
        return 0
    if args.rounds < 1 or args.steps < 1 or args.warmup < 0 or args.threads < 0:
        parser.error("--rounds and --steps must be >= 1, --warmup and --threads >= 0")
    out = Path(args.out or "benchmarks/results/freed-memory.json")
    if not args.overwrite and (out.exists() or out.with_suffix(".md").exists()):
        print(f"{parser.prog}: error: {out} or its .md exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    if args.cli:
        words = shlex.split(args.cli)
        if not words or words[0] != "daps" or args.overrides:
            parser.error('--cli takes one daps command line, "daps ...", and no key=value overrides of its own')
        rows, lines = command_rows(words, args.rounds, args.threads)
        return _finish(out, rows, lines, args.threads, argv)
    presets, methods = args.presets.split(","), args.methods.split(",")
    for preset in presets:  # every config checked before anything is timed
        for method in methods:
            parse_overrides(get_preset(preset, method), args.overrides)

    rows, lines = [], [
        f"Seconds per training step (median of {args.steps} after {args.warmup} warm-up, per process) and peak "
        "memory, malloc's defaults against freed memory kept; ratio: median over rounds of default / kept time.", "",
        "| preset | method | default s/step | kept s/step | default / kept | peak memory default / kept |",
        "|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="daps-freed-memory-") as tmp:
        for preset in presets:
            for method in methods:
                runs: dict[bool, list[dict]] = {False: [], True: []}
                for r in range(args.rounds):
                    for keep in ((False, True) if r % 2 == 0 else (True, False)):
                        print(f"{preset} / {method}, round {r + 1}, kept: {keep} ...", file=sys.stderr, flush=True)
                        spec = {"preset": preset, "method": method, "keep": keep, "threads": args.threads,
                                "steps": args.steps, "warmup": args.warmup, "overrides": args.overrides}
                        runs[keep].append(run_process(spec, Path(tmp)))
                ratio = statistics.median(d["median_s"] / k["median_s"] for d, k in zip(runs[False], runs[True]))
                median = {keep: statistics.median(run["median_s"] for run in runs[keep]) for keep in runs}
                peak = {keep: max(run["memory"]["bytes"] for run in runs[keep]) / 2**20 for keep in runs}
                rows.append({"preset": preset, "method": method, "default": runs[False], "kept": runs[True],
                             "default_over_kept": ratio, "applied": all(run["kept"] for run in runs[True])})
                line = (f"| `{preset}` | {method} | {median[False]:.3f} | {median[True]:.3f} | {ratio:.2f} | "
                        f"{peak[False]:,.0f} / {peak[True]:,.0f} MiB |")
                lines.append(line)
                print(line, flush=True)
    return _finish(out, rows, lines, args.threads, argv)


def _finish(out: Path, rows: list[dict], lines: list[str], threads: int, argv: list[str] | None) -> int:
    """Write the report (rows, machine, torch, threads, commit, command) and its markdown."""
    info = machine_info(torch.device("cpu"))
    command = shlex.join(["python", *(sys.argv if argv is None else ["benchmarks/freed_memory.py", *argv])])
    code, date = git_revision(), datetime.now(timezone.utc).isoformat(timespec="seconds")
    lines += ["", f"Machine: {info['cpu']}, {threads or torch.get_num_threads()} torch threads, torch "
              f"{torch.__version__}; code {code}; {date}.", f"Command: `{command}`"]
    report = {"rows": rows, "machine": info, "threads": threads, "torch": torch.__version__, "code": code,
              "command": command, "date": date}
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, report)
    write_text_atomic(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print(f"wrote {out} and {out.with_suffix('.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
