"""Which settings change a CPU training run's numbers: the demo config under thread counts and kernel choices.

    DAPS_DATA_DIR=../shared/data python benchmarks/determinism.py [--steps 50] [--variants NAME,...]
        [--out docs/determinism] [--overwrite]

Trains ``daps train --preset mnist5k-demo`` (the demo's config, shortened to ``--steps`` steps, validated once
at the end on the demo's 500 test digits) in a fresh process per variant, each variant an environment:

- ``threads1``, ``threads1-again``: OMP_NUM_THREADS=1 (twice: is a run repeatable at all?);
- ``threads2``, ``threads2-again``: OMP_NUM_THREADS=2;
- ``threads1-aten-default``: OMP_NUM_THREADS=1 and ATEN_CPU_CAPABILITY=default (torch's own CPU kernels without
  AVX2 vectorization: what a CPU with another instruction set would run);
- ``threads1-mkl-sse42``: OMP_NUM_THREADS=1 and MKL_ENABLE_INSTRUCTIONS=SSE4_2 (MKL's matrix kernels for an
  older instruction set);
- ``threads1-mkl-cbwr``, ``threads2-mkl-cbwr``: MKL_CBWR=COMPATIBLE (MKL's conditional numerical
  reproducibility mode) at 1 and 2 threads.

Each run's final validation (log p, L2, PSNR, KL) and its last training loss are compared bit for bit with the
first variant's. Writes ``OUT/determinism.json`` (every run's numbers, environment, machine, torch, commit,
command) and ``OUT/determinism.md`` (the table).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from run import REPO, git_revision, machine_info

from daps.runfolder import write_text_atomic

VARIANTS = {
    "threads1": {"OMP_NUM_THREADS": "1"},
    "threads1-again": {"OMP_NUM_THREADS": "1"},
    "threads2": {"OMP_NUM_THREADS": "2"},
    "threads2-again": {"OMP_NUM_THREADS": "2"},
    "threads1-aten-default": {"OMP_NUM_THREADS": "1", "ATEN_CPU_CAPABILITY": "default"},
    "threads1-mkl-sse42": {"OMP_NUM_THREADS": "1", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
    "threads1-mkl-cbwr": {"OMP_NUM_THREADS": "1", "MKL_CBWR": "COMPATIBLE"},
    "threads2-mkl-cbwr": {"OMP_NUM_THREADS": "2", "MKL_CBWR": "COMPATIBLE"},
}
KNOBS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR")
METRICS = ("log_p", "l2", "psnr", "kl")


def train_once(name: str, steps: int, folder: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in KNOBS}
    env.update(VARIANTS[name])
    env["MKL_NUM_THREADS"] = env["OMP_NUM_THREADS"]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    out_dir = folder / name
    cmd = [
        sys.executable, "-m", "daps", "train", "--preset", "mnist5k-demo", "--device", "cpu",
        f"train.steps={steps}", f"train.eval_every={steps}", f"train.ckpt_every={steps}", "train.progress=false",
        f"train.out_dir={out_dir}",
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: training exited with {proc.returncode}:\n{proc.stderr[-2000:]}")
    summary = json.loads((out_dir / "summary.json").read_text())
    rows = map(json.loads, (out_dir / "metrics.jsonl").read_text().splitlines())
    train_rows = [r for r in rows if r.get("split") == "train"]
    probe = (
        "import torch, json; print(json.dumps({'threads': torch.get_num_threads(), "
        "'cpu_capability': torch.backends.cpu.get_cpu_capability()}))"
    )
    seen = json.loads(
        subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True).stdout
    )
    return {
        "env": {k: env[k] for k in KNOBS if k in env},
        "torch_threads": seen["threads"],
        "cpu_capability": seen["cpu_capability"],
        "final": {k: summary[k] for k in METRICS},
        "last_train_loss": train_rows[-1]["loss"],
        "wall_s": wall,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--out", default="docs/determinism",
                        help="where the results go (default: %(default)s, committed)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    out = Path(args.out)
    if any(v not in VARIANTS for v in names) or not names:
        print(f"benchmarks/determinism.py: error: --variants must name some of {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    if (out / "determinism.json").exists() and not args.overwrite:
        print(f"benchmarks/determinism.py: error: {out / 'determinism.json'} exists; pass --overwrite", file=sys.stderr)
        return 2
    command = shlex.join(["python", *(sys.argv if argv is None else ["benchmarks/determinism.py", *argv])])
    code = git_revision()
    runs = {}
    with tempfile.TemporaryDirectory(prefix="daps-determinism-") as tmp:
        for name in names:
            runs[name] = train_once(name, args.steps, Path(tmp))
            r = runs[name]
            print(f"{name}: log p {r['final']['log_p']!r}, last loss {r['last_train_loss']!r}, {r['wall_s']:.0f} s",
                  file=sys.stderr, flush=True)
    ref = runs[names[0]]
    for r in runs.values():
        r["identical_to_first"] = r["final"] == ref["final"] and r["last_train_loss"] == ref["last_train_loss"]
        r["max_abs_diff_to_first"] = max(abs(r["final"][k] - ref["final"][k]) for k in METRICS)
    report = {
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "code": code,
        "machine": machine_info(torch.device("cpu")),
        "mkl": torch.backends.mkl.is_available(),
        "torch_config": torch.__config__.show(),
        "steps": args.steps,
        "runs": runs,
    }
    lines = [
        (
            f"`daps train --preset mnist5k-demo train.steps={args.steps}` (final validation on the demo's 500 test "
            "digits), one fresh process per row; compared bit for bit with the first row."
        ),
        "",
        (
            "| variant | environment | torch threads | ATen CPU capability | val log p | val L2 | last train loss "
            f"| identical to {names[0]} | max abs diff |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in runs.items():
        env = " ".join(f"{k}={v}" for k, v in r["env"].items())
        lines.append(
            f"| {name} | {env} | {r['torch_threads']} | {r['cpu_capability']} | {r['final']['log_p']:.10g} | "
            f"{r['final']['l2']:.10g} | {r['last_train_loss']:.10g} | {'yes' if r['identical_to_first'] else 'no'} | "
            f"{r['max_abs_diff_to_first']:.3g} |"
        )
    m = report["machine"]
    lines += [
        "",
        (
            f"Machine: {m['cpu']}, {m['cpu_count']} CPUs, torch {m['torch']}, Python {m['python']}, "
            f"{m['platform']}; code {code}; {report['created_utc']}."
        ),
        f"Command: `{command}`",
    ]
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "determinism.json", json.dumps(report, indent=2) + "\n")
    write_text_atomic(out / "determinism.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
