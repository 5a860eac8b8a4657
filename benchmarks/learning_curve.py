"""The DAPS learning curve on real MNIST that BENCHMARKS.md shows, as one reproducible command.

    DAPS_DATA_DIR=../shared/data python benchmarks/learning_curve.py [--steps 2000] [--eval-every 250]
        [--ckpt-every 500] [--run-dir runs/mnist-2k] [--out docs/mnist-2k] [--threads 1] [--report-only]
        [--overwrite] [key=value ...]

Runs ``daps train --preset mnist`` (the paper's MNIST DAPS config on the 60k/10k MNIST files) for ``--steps``
steps (plus any ``key=value`` overrides) with ``--threads`` torch threads (OMP_NUM_THREADS / MKL_NUM_THREADS are
set for the child), validating on all 10,000 test images every ``--eval-every`` steps, then writes into ``--out``:

- ``table.md``: one row per validation (step, wall minutes, val log p, L2, KL, ELBO, codebook use, and the
  training ESS/K, eta and beta logged at that step), the final validation, and the machine, torch version,
  thread count, commit and exact command;
- ``run.json``: the same as JSON (every validation row, the machine, the command, the wall time);
- copies of the run's ``metrics.jsonl``, ``summary.json``, ``config.json``, ``curves.png`` and
  ``reconstructions.png``.

``--report-only`` skips training and rebuilds the report from an existing ``--run-dir`` (for a run started
by hand with the same command). An existing ``--out`` is refused unless ``--overwrite`` is given; the run
folder is never overwritten by this script (``daps train`` refuses an existing one; use ``--report-only``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from run import REPO, cpu_name, git_revision

from daps.plots import read_metrics
from daps.runfolder import atomic_path, write_text_atomic

COPIED = ("metrics.jsonl", "summary.json", "config.json", "curves.png", "reconstructions.png")


def train_command(args: argparse.Namespace) -> list[str]:
    return [
        sys.executable, "-m", "daps", "train", "--preset", "mnist", "--device", "cpu",
        f"train.steps={args.steps}", f"train.eval_every={args.eval_every}",
        f"train.ckpt_every={args.ckpt_every}", "train.progress=false", f"train.out_dir={args.run_dir}",
        *args.overrides,
    ]


def read_rows(path: Path) -> tuple[list[dict], dict[int, dict]]:
    """Validation rows, and the training row logged at each step."""
    val, train = [], {}
    for row in read_metrics(path):  # a last line cut off by a kill is skipped
        if row.get("split") == "val":
            val.append(row)
        elif row.get("split") == "train":
            train[row["step"]] = row
    return val, train


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def report(args: argparse.Namespace, machine: dict, wall_s: float | None) -> dict:
    run_dir, out = Path(args.run_dir), Path(args.out)
    val, train = read_rows(run_dir / "metrics.jsonl")
    if not val:
        raise SystemExit(f"learning_curve.py: error: no validation rows in {run_dir / 'metrics.jsonl'}")
    cfg = json.loads((run_dir / "config.json").read_text())
    rows = []
    for v in val:
        t = train.get(v["step"], {})
        rows.append({
            "step": v["step"],
            "wall_min": t["time"] / 60 if "time" in t else None,
            "val": v,
            "train_ess_over_k": t.get("ess"),  # logged as a fraction of K
            "eta": t.get("eta"),
            "beta": t.get("beta"),
            "train_steps_per_s": t.get("steps_per_s"),
        })
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else None
    result = {
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": machine["command"],
        "train_command": machine["train_command"],
        "code": machine["code"],
        "machine": {key: machine[key] for key in ("cpu", "cpu_count", "threads", "torch", "python")},
        "wall_s": wall_s,
        "rows": rows,
        "final": summary,
    }
    lines = [
        f"# DAPS on MNIST, {cfg['train']['steps']} steps (`--preset mnist` {' '.join(args.overrides)})",
        "",
        (
            "| step | wall (min) | val log p(x\\|z) | val L2 | val KL (nats) | val ELBO | codebook use | train ESS/K "
            "| η | β |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        v = r["val"]
        lines.append(
            f"| {r['step']} | {fmt(r['wall_min'], '.0f')} | {v['log_p']:.2f} | {v['l2']:.3f} | {v['kl']:.2f} | "
            f"{v['elbo']:.2f} | {v['codebook_utilization']:.3f} | {fmt(r['train_ess_over_k'], '.2f')} | "
            f"{fmt(r['eta'], '.3g')} | {fmt(r['beta'], '.3f')} |"
        )
    if summary:
        lines += [
            "",
            (
                f"Final validation (step {summary['step']}, {summary['num_images']} test images, one stochastic code "
                f"each): ELBO {summary['elbo']:.2f}, β-ELBO {summary['beta_elbo']:.2f}, log p {summary['log_p']:.2f}, "
                f"KL {summary['kl']:.2f} nats, L2 {summary['l2']:.3f}, MSE {summary['mse']:.4f}, PSNR "
                f"{summary['psnr']:.2f} dB, codebook utilization {summary['codebook_utilization']:.3f}, code "
                f"perplexity {summary['code_perplexity']:.1f}, token entropy {summary['token_entropy']:.2f} nats."
            ),
        ]
    m = result["machine"]
    lines += [
        "",
        (
            f"Machine: {m['cpu']}, {m['cpu_count']} CPUs, {m['threads']} torch thread(s), torch {m['torch']}, "
            f"Python {m['python']}; code {result['code']}; {result['created_utc']}"
            + (f"; {wall_s / 60:.0f} min wall in all." if wall_s else ".")
        ),
        f"Command: `{result['command']}`",
        f"Training command it ran: `{result['train_command']}`",
        "",
        "![curves](curves.png)",
        "![reconstructions](reconstructions.png)",
    ]
    out.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        if (run_dir / name).exists():
            with atomic_path(out / name) as tmp:
                shutil.copyfile(run_dir / name, tmp)
    write_text_atomic(out / "table.md", "\n".join(lines) + "\n")
    write_text_atomic(out / "run.json", json.dumps(result, indent=2) + "\n")
    print("\n".join(lines))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--ckpt-every", type=int, default=500)
    parser.add_argument("--run-dir", default="runs/mnist-2k")
    parser.add_argument("--out", default="docs/mnist-2k", help="where the results go (default: %(default)s, committed)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder's files")
    parser.add_argument("overrides", nargs="*", help="further key=value config overrides for daps train")
    args = parser.parse_args(argv)
    if Path(args.out).exists() and any(Path(args.out).iterdir()) and not args.overwrite:
        print(f"learning_curve.py: error: {args.out} exists; pass --overwrite to replace its files", file=sys.stderr)
        return 2
    command = shlex.join(["python", *(sys.argv if argv is None else ["benchmarks/learning_curve.py", *argv])])
    cmd = train_command(args)
    machine = {
        "cpu": cpu_name(), "cpu_count": os.cpu_count(), "threads": args.threads, "python": sys.version.split()[0],
        "command": command, "train_command": shlex.join(["python", *cmd[1:]]), "code": git_revision(),
    }
    import torch  # after the threads are decided, only for its version

    machine["torch"] = torch.__version__
    wall_s = None
    if not args.report_only:
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, check=False)
        wall_s = time.perf_counter() - t0
        if proc.returncode != 0:
            print(f"learning_curve.py: error: training exited with {proc.returncode}", file=sys.stderr)
            return 1
    report(args, machine, wall_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
