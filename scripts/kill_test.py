"""Kill ``daps train`` at random moments with SIGKILL, resume it each time, and check that it still ends exactly
where an uninterrupted run ends: the same final weights (bit for bit), the same summary, the same metrics rows
and every end-of-run file present. Slow (minutes), so it is a script rather than a test; its report is kept in
``docs/reliability/``.

    python scripts/kill_test.py --kills 40 --out docs/reliability

A cycle starts a fresh run folder and resumes it (``python -m daps train ... --resume``, a fresh process each
time) until one attempt finishes; every attempt but the last is killed after a random delay drawn over the
duration of a whole run (process start included), so kills land during start-up, training steps, checkpoint
writes, the final validation, the plots and the summary. Each finished cycle is compared with the reference run;
then the next cycle starts from an empty folder, until ``--kills`` kills have been made. The data is a synthetic
MNIST-like file made here (no download), the model the tiny test configuration.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from daps.provenance import cpu_name
from daps.runfolder import write_json_atomic

CONFIG = [
    "data.name=mnist5k",
    "encoder.width=16",
    "encoder.num_heads=2",
    "encoder.vocab_size=16",
    "encoder.num_tokens=4",
    "decoder.embed_dim=8",
    "decoder.hidden=16,16",
    "daps.num_samples=4",
    "train.batch_size=16",
    "train.steps=600",
    "train.log_every=25",
    "train.eval_every=200",
    "train.ckpt_every=100",
    "train.eval_examples=40",
    "train.eval_batch_size=20",
    "train.progress=false",
]
VOLATILE = {"time", "steps_per_s"}
"""Row keys that measure wall-clock time and so differ between any two runs."""


def write_data(folder: Path) -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 500)
    pixels = rng.integers(0, 256, (5000, 784)) * (rng.random((5000, 784)) < 0.2)
    buf = io.StringIO()
    np.savetxt(buf, np.column_stack([pixels, labels]), fmt="%d", delimiter=",")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mnist_5k.csv.gz").write_bytes(gzip.compress(buf.getvalue().encode(), compresslevel=1))


def command(run: Path, data: Path, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "daps", "train", *CONFIG, f"data.data_dir={data}", f"train.out_dir={run}"]
    return [*cmd, "--resume"] if resume else cmd


def env() -> dict[str, str]:
    e = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg")
    e.pop("DAPS_DATA_DIR", None)
    return e


def state_of(run: Path) -> str:
    """Where a run stands: its last logged step and which of its files exist (what the kill interrupted, roughly)."""
    if not run.is_dir():
        return "no folder yet"
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("step_*")) if (run / "checkpoints").is_dir() else []
    ends = [n for n in ("summary.json", "reconstructions.png", "curves.png") if (run / n).exists()]
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


def final(run: Path) -> tuple[dict, dict, list[dict]]:
    latest = (run / "checkpoints" / "latest").read_text().strip()
    weights = load_file(str(run / "checkpoints" / latest / "model.safetensors"))
    summary = json.loads((run / "summary.json").read_text())
    rows = [
        {k: v for k, v in json.loads(line).items() if k not in VOLATILE}
        for line in (run / "metrics.jsonl").read_text().splitlines()
    ]
    return weights, summary, rows


def compare_with(ref: Path, run: Path) -> dict:
    """How a finished run compares with the reference (every entry True when they agree)."""
    w_ref, s_ref, r_ref = final(ref)
    w_run, s_run, r_run = final(run)
    return {
        "same_weights": w_ref.keys() == w_run.keys() and all(torch.equal(w_ref[k], w_run[k]) for k in w_ref),
        "same_summary": s_ref == s_run,
        "same_metrics_rows": r_ref == r_run,
        "end_files_present": all((run / n).is_file() for n in ("summary.json", "reconstructions.png", "curves.png")),
        "no_temporaries_left": not any(run.glob(".*.tmp-*")) and not any(run.glob("checkpoints/.*.tmp-*")),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/reliability",
                        help="where the results go (default: %(default)s, committed)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier kill_test.json in --out")
    args = parser.parse_args()
    if (Path(args.out) / "kill_test.json").exists() and not args.overwrite:
        print(f"{parser.prog}: error: {Path(args.out) / 'kill_test.json'} exists; pass --overwrite to replace it",
              file=sys.stderr)
        sys.exit(2)
    rnd = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="daps-kill-"))
    data = root / "data"
    write_data(data)

    t0 = time.perf_counter()
    ref = root / "reference"
    subprocess.run(command(ref, data, resume=False), env=env(), check=True, capture_output=True)
    full = time.perf_counter() - t0
    print(f"reference run: {full:.1f} s")

    attempts, cycles, kills, cycle = [], [], 0, 0
    run = root / f"victim{cycle}"
    while True:
        last = kills >= args.kills  # after the last kill: resume to the end without killing
        delay = None if last else rnd.uniform(0.0, full * 1.1)
        proc = subprocess.Popen(
            command(run, data, resume=True), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            proc.wait(timeout=delay)
            outcome = f"finished (exit {proc.returncode})"
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            outcome, kills = "killed", kills + 1
        err = proc.stderr.read().decode(errors="replace").strip().splitlines()
        attempt = {"cycle": cycle, "delay_s": None if delay is None else round(delay, 2), "outcome": outcome,
                   "after": state_of(run)}
        if proc.returncode not in (0, -signal.SIGKILL):
            attempt["error"] = err[-1] if err else ""
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
        "config": CONFIG,
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, {platform.system()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
    }
    write_json_atomic(Path(args.out) / "kill_test.json", report)
    print(json.dumps({k: v for k, v in report.items() if k not in ("attempts", "cycles", "config")}, indent=2))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
