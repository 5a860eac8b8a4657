"""Motion tokenizers on LAFAN1 / H1 at a reduced CPU budget, against two trivial baselines, as one command.

    DAPS_DATA_DIR=../shared/data python benchmarks/motion_tokenizers.py [--methods daps,vqvae,fsq] [--steps 1500]
        [--batch-size 16] [--eval-every 500] [--eval-windows 1000] [--threads 2] [--runs runs/motion-cpu]
        [--out docs/motion-cpu] [--overwrite] [key=value ...]

Trains each method with ``daps train --preset lafan1-h1 --method M`` for the same number of steps (every run
resumes if its folder exists, so an interrupted benchmark continues), then evaluates two baselines with the same
metric code on the same validation windows (the seed-0 subset of the original's four validation clips that every
run validates on):

- ``hold``: every frame of the window is its first pose;
- ``keyframes8``: the poses at frames 0, 8, 16, 24 and the last frame, joint angles and root position linearly
  interpolated in between (root orientation by normalized lerp).

A baseline's ``log_p`` and ``l2`` are those of its poses turned back into standardized features (the same
feature code as the data), under the same fixed-variance Gaussian. Writes ``results.json`` (every number, the
machine, torch version, commit, commands, wall times) and ``results.md`` (the table) into ``--out``, with each
run's ``summary.json``, ``curves.png`` and ``reconstructions.png``; an existing ``--out`` needs ``--overwrite``,
which replaces these files only. The reduced budget differs from the paper's
(250,000 steps at batch 256): the numbers compare methods at equal, small budgets, not with Table 1.
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

from daps.methods import METHODS
from daps.runfolder import atomic_path, write_text_atomic

COPIED = ("summary.json", "curves.png", "reconstructions.png")
METRICS = (
    "log_p", "l2", "mpjpe_mm", "mpjpe_global_mm", "joint_error_deg", "root_velocity_error_m_s", "foot_skating_m_s",
    "gt_foot_skating_m_s", "ground_penetration_mm", "gt_ground_penetration_mm", "codebook_utilization",
)


def train_command(args: argparse.Namespace, method: str, run_dir: Path) -> list[str]:
    overrides = [
        f"train.steps={args.steps}", f"train.batch_size={args.batch_size}", f"train.eval_every={args.eval_every}",
        f"train.eval_examples={args.eval_windows}", f"train.ckpt_every={args.eval_every}", "train.log_every=50",
        f"train.out_dir={run_dir}",
    ]
    if method in ("daps", "dapsna"):
        # as the offline MNIST demo: with eta's paper start (100) the weights stay near uniform for longer than
        # this whole run (Adam moves log eta by about its learning rate per step)
        overrides.append("daps.init_eta=1.0")
    resume = ["--resume"] if (run_dir / "config.json").exists() else []
    from daps.config_io import applicable_overrides
    from daps.presets import get_preset

    # the shared overrides a method reads (daps train refuses the others, e.g. encoder.vocab_size for fsq)
    shared = applicable_overrides(get_preset("lafan1-h1", method), list(args.overrides))
    return [sys.executable, "-m", "daps.cli", "train", "--preset", "lafan1-h1", "--method", method, *resume,
            *overrides, *shared]


def baselines(args: argparse.Namespace, run_dir: Path) -> dict[str, dict[str, float]]:
    """The two baselines' metrics on the validation windows of the run in ``run_dir``."""
    import numpy as np
    import torch

    from daps.checkpoint import read_config
    from daps.data import eval_set
    from daps.data.motion import MotionMetrics
    from daps.likelihoods import FixedGaussian
    from daps.metrics.image import l2_distance
    from daps.motion.features import poses_to_features
    from daps.motion.metrics import hold_first_pose, interpolate_keyframes, motion_metrics_per_window, pool_windows

    cfg = read_config(run_dir / "config.json")
    windows = eval_set(cfg.data, "test", cfg.train.eval_examples, cfg.train.eval_batch_size, torch.device("cpu"))
    metrics = MotionMetrics(cfg.data)
    likelihood = FixedGaussian(cfg.decoder.fixed_variance)
    fps, stats = metrics.motion.fps, metrics.motion.stats
    out: dict[str, dict[str, float]] = {}
    for name, make in (("hold", hold_first_pose), ("keyframes8", lambda p: interpolate_keyframes(p, 8))):
        per_window: dict[str, list[np.ndarray]] = {}
        for x in windows.batches():  # (B, 1, T, F) standardized
            target = metrics.poses(x)  # (B, T, 26)
            pred = make(target)
            feats = np.stack([poses_to_features(metrics.h1, p, fps) for p in pred])  # (B, T, F)
            x_hat = torch.as_tensor(stats.normalize(feats), dtype=torch.float32)[:, None]
            values = {
                "log_p": likelihood.log_prob(x_hat, x).double().numpy(),
                "l2": l2_distance(x_hat, x).double().numpy(),
                **motion_metrics_per_window(metrics.h1, pred, target, fps),
            }  # (B,) each
            for k, v in values.items():
                per_window.setdefault(k, []).append(v)
        pooled = pool_windows({k: np.concatenate(v) for k, v in per_window.items()})  # skating as daps eval pools it
        out[name] = pooled | {"num_images": sum(map(len, per_window["log_p"]))}
    return out


def table(rows: dict[str, dict]) -> str:
    head = "| | " + " | ".join(METRICS) + " |\n|---|" + "---|" * len(METRICS) + "\n"
    body = ""
    for name, r in rows.items():
        body += f"| {name} | " + " | ".join(f"{r[k]:.4g}" if k in r else "–" for k in METRICS) + " |\n"
    return head + body


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default="daps,vqvae,fsq")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--eval-windows", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", default="runs/motion-cpu")
    p.add_argument("--out", default="docs/motion-cpu", help="where the results go (default: %(default)s, committed)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    args = p.parse_args()
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        print(f"motion_tokenizers.py: error: {out} exists and is not a folder; choose another --out", file=sys.stderr)
        return 2
    if out.exists() and not args.overwrite:
        print(f"motion_tokenizers.py: error: {out} exists; pass --overwrite to replace its results", file=sys.stderr)
        return 2
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    rows: dict[str, dict] = {}
    commands, walls = {}, {}
    for method in args.methods.split(","):
        run_dir = Path(args.runs) / method
        cmd = train_command(args, method, run_dir)
        commands[method] = shlex.join(cmd)
        print("+", commands[method], flush=True)
        start = time.time()
        subprocess.run(cmd, cwd=REPO, env=env, check=True)
        walls[method] = round(time.time() - start, 1)
        rows[method] = json.loads((run_dir / "summary.json").read_text())
    first = Path(args.runs) / args.methods.split(",")[0]
    rows.update(baselines(args, first))
    for method in METHODS:  # only the files this script writes are replaced in --out
        for name in COPIED:
            src, dest = Path(args.runs) / method / name, out / f"{method}-{name}"
            if method in args.methods.split(",") and src.exists():
                with atomic_path(dest) as tmp:
                    shutil.copy(src, tmp)
            elif dest.is_file():  # an earlier call's copy of a method not run now: not beside this table
                dest.unlink()
    import torch

    result = {
        "machine": cpu_name(), "torch": torch.__version__, "commit": git_revision(), "threads": args.threads,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commands": commands,
        "wall_s": walls, "steps": args.steps, "batch_size": args.batch_size, "eval_windows": args.eval_windows,
        "results": rows,
    }
    write_text_atomic(out / "results.json", json.dumps(result, indent=1) + "\n")
    md = (
        f"# Motion tokenizers on LAFAN1 / H1, reduced CPU budget\n\n{args.steps} steps at batch {args.batch_size} "
        f"per method, validation on {args.eval_windows} windows of the four validation clips; {cpu_name()}, "
        f"{args.threads} threads, torch {torch.__version__}, commit {git_revision()}.\n\n"
        f"Command: `{shlex.join([sys.executable.split('/')[-1], *sys.argv])}`\n\n{table(rows)}\n"
        f"Wall time per run (s): {walls}\n"
    )
    write_text_atomic(out / "results.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
