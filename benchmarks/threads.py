"""CPU threads per workload: the training step at 1 and 2 (or more) torch threads, alternating in rounds.

    python benchmarks/threads.py [--threads 1,2] [--rounds 2] [--presets mnist,cifar10] [--methods daps,vqvae]
        [--out docs/benchmarks/threads] [key=value ...]

Each round runs ``benchmarks/run.py`` once per thread count (a fresh process each, ``--threads N``), so the load
of a shared machine hits every count alike; the report gives each (preset, method)'s steps/s per thread count
and round, and the speed of each count relative to the first, per round (median over rounds). Writes
``OUT.json`` and ``OUT.md`` with the machine, torch version and commit.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from run import cpu_name, git_revision  # this script's folder is on sys.path

from daps.runfolder import write_json_atomic, write_text_atomic

HERE = Path(__file__).resolve().parent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", default="1,2")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--presets", default="mnist,cifar10")
    p.add_argument("--methods", default="daps,vqvae")
    p.add_argument("--windows", type=int, default=3)
    p.add_argument("--steps-per-window", type=int, default=2)
    p.add_argument("--out", default="docs/benchmarks/threads")
    p.add_argument("--prior-codes", default="", help="time `daps prior train` on this codes file instead (ar and dfm)")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    counts = [int(t) for t in args.threads.split(",")]
    speeds: dict[tuple[str, str, int], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for t in counts:
                if args.prior_codes:
                    for kind in ("ar", "dfm"):
                        out = Path(tmp) / f"prior-{kind}-r{r}-t{t}"
                        cmd = [sys.executable, "-m", "daps", "prior", "train", args.prior_codes, "--kind", kind,
                               "--out", str(out), "--threads", str(t), "steps=150", "log_every=50",
                               "eval_every=1000", "progress=false"]
                        subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL)
                        rates = [json.loads(line)["steps_per_s"] for line in (out / "metrics.jsonl").read_text()
                                 .splitlines() if '"train"' in line]
                        speeds.setdefault(("prior", kind, t), []).append(statistics.median(rates[1:]))
                    print(f"round {r + 1}, {t} thread(s): done", flush=True)
                    continue
                name = f"r{r}-t{t}"
                cmd = [sys.executable, str(HERE / "run.py"), "--device", "cpu", "--threads", str(t), "--presets",
                       args.presets, "--methods", args.methods, "--windows", str(args.windows), "--steps-per-window",
                       str(args.steps_per_window), "--warmup", "1", "--out", tmp, "--name", name, *args.overrides]
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                report = json.loads((Path(tmp) / f"{name}.json").read_text())
                for row in report["results"]:
                    key = (row["preset"], row["method"], t)
                    speeds.setdefault(key, []).append(row["steps_per_s"]["median"])
                print(f"round {r + 1}, {t} thread(s): done", flush=True)
    rows = []
    for (preset, method, t), values in sorted(speeds.items()):
        base = speeds[(preset, method, counts[0])]
        ratios = [v / b for v, b in zip(values, base)]
        rows.append({"preset": preset, "method": method, "threads": t, "steps_per_s": values,
                     "speed_vs_first": statistics.median(ratios)})
    result = {"command": shlex.join(["python", *sys.argv]), "code": git_revision(), "machine": cpu_name(),
              "cpus": len(__import__("os").sched_getaffinity(0)), "torch": torch.__version__, "rows": rows}
    lines = [f"| preset | method | threads | steps/s per round | speed vs {counts[0]} thread(s) (median of rounds) |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['preset']} | {r['method']} | {r['threads']} | {', '.join(f'{v:.3g}' for v in r['steps_per_s'])} "
              f"| {r['speed_vs_first']:.2f}x |" for r in rows]
    lines += ["", f"Command: `{result['command']}`; machine: {result['machine']} ({result['cpus']} usable CPUs), torch "
              f"{result['torch']}, code {result['code']}."]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out.with_suffix(".json"), result)
    write_text_atomic(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
