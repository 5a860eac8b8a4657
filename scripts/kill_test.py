"""Kill a training command at random moments with SIGKILL, resume it each time, and check that it still ends
exactly where an uninterrupted run ends: the same final weights (bit for bit), the same summary, the same metrics
rows and every end-of-run file present. Slow (minutes), so it is a script rather than a test; its reports are kept
in ``docs/reliability/``.

    python scripts/kill_test.py --kills 40 --out docs/reliability                 # daps train
    python scripts/kill_test.py --run prior --kills 40 --out docs/reliability     # daps prior train
    DAPS_DATA_DIR=... python scripts/kill_test.py --run policy --kills 40 ...     # daps robot train
    DAPS_DATA_DIR=... python scripts/kill_test.py --run tracker --kills 40 ...    # daps robot track-train
    python scripts/kill_test.py --run compare --kills 40 --out docs/reliability   # daps compare
    python scripts/kill_test.py --run ddp --kills 40 --out docs/reliability       # torchrun, 2 processes
    python scripts/kill_test.py --summarize                                        # where the kills landed

A cycle starts a fresh run folder and resumes it (the command with ``--resume``, a fresh process each time; compare
is simply run again, which resumes its runs) until one attempt finishes; every attempt but the last is killed after
a random delay drawn over the duration of a whole run (process start included; under torchrun the launcher and both
workers at once, as when the machine goes down), so kills land during start-up, training steps, checkpoint writes,
the final validation, the plots and the summary. Each finished cycle is compared with the reference run; then the
next cycle starts from an empty folder, until ``--kills`` kills have been made. The inputs are made once, before the
reference run: for ``train``, ``ddp`` and ``compare`` a synthetic MNIST-like file (no download) and the tiny test
model (``ddp`` trains it as two data-parallel CPU processes under torchrun, gloo; compare trains DAPS and VQ-VAE,
and its table is compared but for the speed column); for ``prior`` the codes of a tiny tokenizer trained for 50
steps on that file; for ``policy`` and ``tracker`` a lafan1-h1 tokenizer trained for 2 steps on the real clips of
``$DAPS_DATA_DIR`` (the motion features cached in the scratch folder).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_file

from daps.provenance import cpu_name
from daps.runfolder import write_json_atomic

LAST_STEP = {"train": 600, "prior": 400, "policy": 300, "tracker": 32, "compare": 200, "ddp": 300}
"""The step (the tracker: the PPO update) each kind of killed run ends at; its settings below are made from it."""
# Runs log every 30 steps and checkpoint every 50 or 100, so a checkpoint falls inside some logging windows: a
# resumed run must still log the uninterrupted run's rows (each checkpoint ends a window).
TOKENIZER = [
    "encoder.width=16",
    "encoder.num_heads=2",
    "encoder.vocab_size=16",
    "encoder.num_tokens=4",
    "decoder.embed_dim=8",
    "decoder.hidden=16,16",
    "daps.num_samples=4",
    "train.batch_size=16",
    "train.eval_examples=40",
    "train.eval_batch_size=20",
    "train.progress=false",
]
CONFIG = [
    "data.name=mnist5k",
    *TOKENIZER,
    f"train.steps={LAST_STEP['train']}",
    "train.log_every=30",
    "train.eval_every=200",
    "train.ckpt_every=100",
]
"""The killed ``daps train`` (the tiny test model on a synthetic MNIST-like file)."""
DDP = ["data.name=mnist5k", *TOKENIZER, f"train.steps={LAST_STEP['ddp']}", "train.log_every=30", "train.eval_every=100",
       "train.ckpt_every=50"]
"""The killed ``torchrun --nproc_per_node=2 -m daps train`` (the same model, batch 16 per process)."""
PRIOR = [f"steps={LAST_STEP['prior']}", "batch_size=32", "width=32", "num_layers=1", "num_heads=2", "log_every=30",
         "eval_every=100", "ckpt_every=50", "progress=false"]
"""The killed ``daps prior train`` (an autoregressive prior on the codes of a tokenizer trained for 50 steps)."""
MOTION_TOKENIZER = [
    "encoder.width=32", "encoder.num_heads=2", "encoder.vocab_size=16", "encoder.num_layers=1",
    "encoder.num_tokens=16", "decoder.embed_dim=32", "decoder.transformer_heads=2", "decoder.transformer_layers=1",
    "daps.num_samples=2", "train.batch_size=8", "train.steps=2", "train.eval_every=2", "train.ckpt_every=2",
    "train.eval_examples=16", "train.eval_batch_size=8", "train.progress=false", "train.logger=none",
]
"""The lafan1-h1 tokenizer under the policy and the tracker (trained for 2 steps: its codes only need to exist)."""
POLICY = ["width=32", "num_layers=1", "num_heads=2", f"steps={LAST_STEP['policy']}", "batch_size=16", "log_every=30",
          "eval_every=100", "ckpt_every=50", "stride=16", "progress=false"]
"""The killed ``daps robot train``."""
TRACKER = [f"frames={LAST_STEP['tracker'] * 2 * 32}", "envs=2", "horizon=32", "epochs=1", "minibatch=32", "hidden=16",
           "eval_every=16", "ckpt_every=4", "progress=false"]
"""The killed ``daps robot track-train`` (32 PPO updates of envs x horizon = 64 simulated frames each)."""
COMPARE = ["--methods", "daps,vqvae", "--seeds", "1", "--steps", str(LAST_STEP["compare"]), "data.name=mnist5k",
           *TOKENIZER]
"""The killed ``daps compare`` (two methods of the tiny model; compare sets the logging and checkpoint intervals)."""
COMPARE_FILES = ("results.md", "results.csv", "curves.png", "reconstructions.png", "commands.sh")
"""What ``daps compare`` writes at its end, beside the runs."""
VOLATILE = {"time"}
"""Row and summary keys that measure wall-clock time and so differ between any two runs (with every ``*_per_s``)."""
END_FILES = ("summary.json", "curves.png")
"""Files every kind of run writes at its end (a training run also ``reconstructions.png``)."""


def daps(*argv: str) -> list[str]:
    """The command line of ``daps argv`` in this Python."""
    return [sys.executable, "-m", "daps", *argv]


def write_data(folder: Path) -> None:
    """A synthetic MNIST-like ``mnist_5k.csv.gz`` (sparse random pixels, 500 of each label) in ``folder``."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 500)
    pixels = rng.integers(0, 256, (5000, 784)) * (rng.random((5000, 784)) < 0.2)
    buf = io.StringIO()
    np.savetxt(buf, np.column_stack([pixels, labels]), fmt="%d", delimiter=",")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mnist_5k.csv.gz").write_bytes(gzip.compress(buf.getvalue().encode(), compresslevel=1))


def prepare_train(root: Path) -> Callable[[Path], list[str]]:
    """The data file. Each ``prepare_*`` makes its command's inputs under ``root`` and returns the function that gives
    the command training or resuming a run in a given folder."""
    write_data(root / "data")
    return lambda run: daps("train", *CONFIG, f"data.data_dir={root / 'data'}", f"train.out_dir={run}", "--resume")


def prepare_prior(root: Path) -> Callable[[Path], list[str]]:
    """A tiny tokenizer (50 steps) and its training codes, for the prior to train on."""
    write_data(root / "data")
    tokenizer, codes = root / "tokenizer", root / "codes.safetensors"
    setup(daps("train", "data.name=mnist5k", *TOKENIZER, "train.steps=50", "train.eval_every=50", "train.ckpt_every=50",
               f"data.data_dir={root / 'data'}", f"train.out_dir={tokenizer}"), root)
    setup(daps("export-codes", str(tokenizer), "--out", str(codes)), root)
    return lambda run: daps("prior", "train", str(codes), "--out", str(run), *PRIOR, "--resume")


def prepare_ddp(root: Path) -> Callable[[Path], list[str]]:
    """The data file; two processes under torchrun (a free port each time: ``--standalone``)."""
    write_data(root / "data")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "daps"]
    return lambda run: [*launcher, "train", *DDP, f"data.data_dir={root / 'data'}", f"train.out_dir={run}", "--resume"]


def prepare_compare(root: Path) -> Callable[[Path], list[str]]:
    """The data file; compare is simply run again after a kill."""
    write_data(root / "data")
    return lambda run: daps("compare", *COMPARE, f"data.data_dir={root / 'data'}", "--out", str(run))


def motion_tokenizer(root: Path) -> Path:
    """A lafan1-h1 tokenizer trained 2 steps on ``$DAPS_DATA_DIR``'s clips (its codes only need to exist)."""
    data = os.environ.get("DAPS_DATA_DIR")
    if not data:
        raise SystemExit("kill_test.py: the policy and tracker runs read LAFAN1 on the H1: set DAPS_DATA_DIR")
    tokenizer = root / "tokenizer"
    setup(daps("train", "--preset", "lafan1-h1", *MOTION_TOKENIZER, f"data.data_dir={data}",
               f"train.out_dir={tokenizer}"), root)
    return tokenizer


def prepare_policy(root: Path) -> Callable[[Path], list[str]]:
    """The motion tokenizer the policy trains on."""
    tokenizer = motion_tokenizer(root)
    return lambda run: daps("robot", "train", str(tokenizer), "--out", str(run), *POLICY, "--resume")


def prepare_tracker(root: Path) -> Callable[[Path], list[str]]:
    """The motion tokenizer whose decoded windows the tracker follows."""
    tokenizer = motion_tokenizer(root)
    return lambda run: daps("robot", "track-train", str(tokenizer), "--out", str(run), *TRACKER, "--resume")


TARGETS: dict[str, tuple[Callable[[Path], Callable[[Path], list[str]]], list[str]]] = {
    "train": (prepare_train, CONFIG),
    "prior": (prepare_prior, PRIOR),
    "policy": (prepare_policy, POLICY),
    "tracker": (prepare_tracker, TRACKER),
    "compare": (prepare_compare, COMPARE),
    "ddp": (prepare_ddp, DDP),
}
"""What ``--run`` kills: how its inputs are made once (a function of the scratch folder that returns the command
that starts or resumes a run in a given folder) and the settings it runs with."""


def _stat(path: Path) -> list[str] | None:
    """The fields of a /proc/PID/stat after the command name (state, parent, ...), or None once it has ended."""
    try:
        return path.read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (children, grandchildren, ...), read from /proc."""
    parents: dict[int, list[int]] = {}
    for path in Path("/proc").glob("[0-9]*/stat"):
        fields = _stat(path)
        if fields is not None:  # (None: ended meanwhile)
            parents.setdefault(int(fields[1]), []).append(int(path.parent.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie does not: its files, and so its folder lock, are closed)."""
    fields = _stat(Path(f"/proc/{pid}/stat"))
    return fields is not None and len(fields) > 0 and fields[0] != "Z"


def kill_all(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc`` and every process below it at once, as a machine going down would: torchrun starts its
    workers in sessions of their own, so a signal to it alone would leave them training. Everything is stopped
    (SIGSTOP) before anything is killed, so that no process starts a child unseen; returns when none is left."""
    tree = [proc.pid]
    os.kill(proc.pid, signal.SIGSTOP)
    while True:
        below = [pid for pid in descendants(proc.pid) if pid not in tree]
        if not below:
            break
        for pid in below:
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                pass
        tree += below
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    deadline = time.monotonic() + 60
    while any(alive(pid) for pid in tree[1:]):
        if time.monotonic() > deadline:  # a killed process does not linger: its number was taken by another
            raise SystemExit(f"kill_test.py: processes {tree[1:]} still run 60 s after SIGKILL")
        time.sleep(0.05)


def setup(cmd: list[str], root: Path) -> None:
    """Runs one preparation step; its output is shown only when it fails."""
    done = subprocess.run(cmd, env=env(root), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"kill_test.py: preparing the inputs failed ({' '.join(cmd[2:4])}):\n{done.stderr}")


def env(root: Path) -> dict[str, str]:
    """One thread, no display, and a cache of motion features inside the scratch folder."""
    e = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg",
             XDG_CACHE_HOME=str(root / "cache"))
    e.pop("DAPS_DATA_DIR", None)  # every command names its data (a motion tokenizer, the folder it was trained on)
    return e


def runs_in(folder: Path) -> list[Path]:
    """The training runs of an output folder: itself, or those ``daps compare`` made in it (``METHOD/seedS``)."""
    if (folder / "commands.sh").exists() or any(folder.glob("*/seed*")):
        return sorted(folder.glob("*/seed*"))
    return [folder]


def state_of(folder: Path) -> str:
    """Where a run stands (each of a comparison's): its last logged step and which of its files exist (what the
    kill interrupted, roughly)."""
    if not folder.is_dir():
        return "no folder yet"
    runs = runs_in(folder)
    if runs != [folder]:
        ends = sum((folder / n).exists() for n in COMPARE_FILES)
        return "; ".join(f"{run.relative_to(folder)}: {state_of(run)}" for run in runs) + f"; compare files={ends}"
    run = folder
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("step_*")) if (run / "checkpoints").is_dir() else []
    ends = [n for n in END_FILES if (run / n).exists()]
    temps = [p.name for p in [*run.glob(".*.tmp-*"), *run.glob("checkpoints/.*.tmp-*")]]
    steps = [json.loads(line).get("step", 0) for line in _lines(run / "metrics.jsonl")]
    return (
        f"last_logged_step={max(steps, default=0)} checkpoint={ckpts[-1] if ckpts else None} "
        f"end_files={len(ends)} temporaries={len(temps)}"
    )


def _lines(path: Path) -> list[str]:
    """Complete lines of a file that may end in a line cut off by a kill."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            json.loads(line)
        except json.JSONDecodeError:
            continue
        out.append(line)
    return out


def steady(record: dict) -> dict:
    """``record`` without the entries that measure wall-clock time."""
    return {k: v for k, v in record.items() if k not in VOLATILE and not k.endswith("_per_s")}


def final(run: Path) -> tuple[dict, dict, list[dict]]:
    """A finished run's last weights, its summary and its metrics rows (without wall-clock entries)."""
    latest = (run / "checkpoints" / "latest").read_text().strip()
    weights = load_file(str(run / "checkpoints" / latest / "model.safetensors"))
    summary = steady(json.loads((run / "summary.json").read_text()))
    rows = [steady(json.loads(line)) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return weights, summary, rows


def compare_with(ref: Path, run: Path) -> dict:
    """How a finished run compares with the reference (every entry True when they agree); a comparison's runs are
    compared one by one, and its table but for the speed column."""
    refs, runs = runs_in(ref), runs_in(run)
    if refs == [ref]:
        return compare_run(ref, run)
    checks = [compare_run(a, b) for a, b in zip(refs, runs)]
    out = {k: len(runs) == len(refs) and all(c[k] for c in checks) for k in checks[0]}
    out["end_files_present"] &= all((run / n).is_file() for n in COMPARE_FILES)
    out["same_table"] = table(ref) == table(run)
    return out


def table(folder: Path) -> list[dict]:
    """The rows of a comparison's results.csv without the speed column."""
    with open(folder / "results.csv", newline="") as f:
        return [steady(row) for row in csv.DictReader(f)]


def compare_run(ref: Path, run: Path) -> dict:
    """How one finished training run compares with its reference (every entry True when they agree)."""
    w_ref, s_ref, r_ref = final(ref)
    w_run, s_run, r_run = final(run)
    return {
        "same_weights": w_ref.keys() == w_run.keys() and all(torch.equal(w_ref[k], w_run[k]) for k in w_ref),
        "same_summary": s_ref == s_run,
        "same_metrics_rows": r_ref == r_run,
        "end_files_present": all((run / n).is_file() for n in END_FILES) and (
            (run / "reconstructions.png").is_file() == (ref / "reconstructions.png").is_file()),
        "no_temporaries_left": not any(run.glob(".*.tmp-*")) and not any(run.glob("checkpoints/.*.tmp-*")),
    }


def landed(report: dict) -> dict[str, int]:
    """Where a report's kills landed, read from the state each left (for compare: both runs' states)."""
    where = {"before the folder": 0, "before the first checkpoint": 0, "during training": 0, "after the last step": 0}
    end = f"checkpoint=step_{LAST_STEP[report.get('run', 'train')]:08d}"
    for attempt in report["attempts"]:
        if attempt["outcome"] != "killed":
            continue
        runs = [part for part in attempt["after"].split("; ") if "checkpoint=" in part]
        if not runs:
            where["before the folder"] += 1
        elif all("checkpoint=None" in run for run in runs):
            where["before the first checkpoint"] += 1
        elif len(runs) == (2 if report.get("run") == "compare" else 1) and all(end in run for run in runs):
            where["after the last step"] += 1
        else:
            where["during training"] += 1
    return where


def summarize(folder: Path) -> None:
    """Prints a markdown table of the reports kept in ``folder``."""
    print("| run | reference run | kills | cycles | " + " / ".join(landed({"attempts": []})) + " | commit | passed |")
    print("|---|---|---|---|---|---|---|")
    for path in sorted(folder.glob("kill_test*.json")):
        r = json.loads(path.read_text())
        counts = " / ".join(str(n) for n in landed(r).values())
        print(f"| {r.get('run', 'train')} | {r['reference_run_s']} s | {r['kills']} | {len(r['cycles'])} | {counts} "
              f"| {r['commit']} | {r['passed']} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", choices=list(TARGETS), default="train",
                        help="which command to kill: daps train, prior train, robot train (the policy), robot "
                             "track-train (the tracker; these two need DAPS_DATA_DIR), compare, or daps train as "
                             "two processes under torchrun (ddp) (default: %(default)s)")
    parser.add_argument("--kills", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/reliability",
                        help="where the results go (default: %(default)s, committed)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier report in --out")
    parser.add_argument("--summarize", action="store_true",
                        help="print a table of the reports in --out (where the kills landed) and stop")
    args = parser.parse_args()
    if args.summarize:
        summarize(Path(args.out))
        return 0
    report_file = Path(args.out) / ("kill_test.json" if args.run == "train" else f"kill_test_{args.run}.json")
    if report_file.exists() and not args.overwrite:
        print(f"{parser.prog}: error: {report_file} exists; pass --overwrite to replace it", file=sys.stderr)
        sys.exit(2)
    rnd = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="daps-kill-"))
    prepare, settings = TARGETS[args.run]
    command = prepare(root)

    t0 = time.perf_counter()
    ref = root / "reference"
    setup(command(ref), root)
    full = time.perf_counter() - t0
    print(f"reference run: {full:.1f} s")

    attempts, cycles, kills, cycle = [], [], 0, 0
    run = root / f"victim{cycle}"
    while True:
        last = kills >= args.kills  # after the last kill: resume to the end without killing
        delay = None if last else rnd.uniform(0.0, full * 1.1)
        proc = subprocess.Popen(command(run), env=env(root), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            proc.wait(timeout=delay)
            outcome = f"finished (exit {proc.returncode})"
        except subprocess.TimeoutExpired:
            kill_all(proc)
            outcome, kills = "killed", kills + 1
        err = proc.stderr.read().decode(errors="replace").strip().splitlines()
        attempt = {"cycle": cycle, "delay_s": None if delay is None else round(delay, 2), "outcome": outcome,
                   "after": state_of(run)}
        if proc.returncode not in (0, -signal.SIGKILL):
            attempt["error"] = err[-1] if err else ""
            attempt["stderr_tail"] = err[-30:]  # the traceback of an unexpected failure
        attempts.append(attempt)
        line = f"{len(attempts) - 1:3d} cycle {cycle:2d} {delay or 0:6.2f} s  {outcome:<18} {attempt['after']}"
        print(line, flush=True)
        if proc.returncode == 0:  # the cycle ended: check it, then start the next from an empty folder
            num_kills = sum(a["outcome"] == "killed" for a in attempts if a["cycle"] == cycle)
            cycles.append({"cycle": cycle, "kills": num_kills, **compare_with(ref, run)})
            print(f"    cycle {cycle}: {cycles[-1]}", flush=True)
            if last:
                break
            cycle += 1
            run = root / f"victim{cycle}"
        elif "error" in attempt:
            break

    checks = {
        "every_cycle_identical_to_the_reference": bool(cycles) and all(
            all(v for k, v in c.items() if k not in ("cycle", "kills")) for c in cycles
        ),
        "unexpected_errors": [a for a in attempts if "error" in a],
    }
    passed = checks["every_cycle_identical_to_the_reference"] and not checks["unexpected_errors"]
    report = {
        "passed": passed,
        "kills": kills,
        "cycles": cycles,
        "checks": checks,
        "attempts": attempts,
        "reference_run_s": round(full, 1),
        "command": " ".join(["python", "scripts/kill_test.py", *sys.argv[1:]]),
        "run": args.run,
        "config": settings,
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, {platform.system()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
    }
    write_json_atomic(report_file, report)
    if passed:
        shutil.rmtree(root)
    else:
        print(f"the runs are kept for a look in {root}")
    print(json.dumps({k: v for k, v in report.items() if k not in ("attempts", "cycles", "config")}, indent=2))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
