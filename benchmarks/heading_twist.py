"""How much twist about the vertical a motion tokenizer's decoded pelvis tilt carries, and what removing it changes.

    DAPS_DATA_DIR=../shared/data python benchmarks/heading_twist.py --runs RUN[,RUN...] [--windows 1000]
        [--out docs/heading-twist] [--overwrite]

The features describe the pelvis by its tilt: its rotation with the heading removed, so a tilt made from data has
no twist about the world's vertical. A decoder's 6D tilt can carry one, and ``features_to_poses`` then composes it
with the integrated heading: the pose's heading, which ``daps robot`` reads velocities back from
(``window_velocity``), becomes heading + twist. For each trained ``lafan1-h1`` run this reconstructs the validation
windows (the seed-0 subset every run validates on, one code sample each, seed 0) and reports

- the twist angle of the decoded tilts (and of the data's, which should be 0): mean |twist|, 95th percentile, max;
- the pose metrics of ``daps.motion.metrics`` and the error of the window velocities (forward, left, yaw rate) of
  the decoded poses against the data's, with the twist kept (``features_to_poses(..., drop_twist=False)``) and
  removed (``drop_twist=True``).

Writes ``OUT/results.json`` (every number, machine, torch, commit, command) and ``OUT/results.md``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from run import cpu_name, git_revision

from daps.checkpoint import load_model, read_config
from daps.data import eval_set
from daps.data.motion import motion_data
from daps.motion.features import FEATURE_LAYOUT, features_to_poses
from daps.motion.h1 import load_h1
from daps.motion.metrics import motion_metrics
from daps.motion.rotations import heading, mat_to_quat, rot6d_to_mat
from daps.robot.commands import window_velocity
from daps.runfolder import write_json_atomic

METRICS = ("mpjpe_mm", "mpjpe_global_mm", "joint_error_deg", "root_velocity_error_m_s", "foot_skating_m_s")


def twist_deg(raw: np.ndarray) -> np.ndarray:
    """Twist about the vertical (degrees) of the tilt of every frame of raw features ``(..., T, F)``."""
    tilt = mat_to_quat(rot6d_to_mat(raw[..., FEATURE_LAYOUT["root_tilt"]]))
    return np.degrees(np.abs(heading(tilt)))


def measure(run: Path, windows: int) -> dict:
    cfg = read_config(run / "config.json")
    model = load_model(run)
    motion = motion_data(cfg.data)
    h1 = load_h1(cfg.data.data_dir or None)
    data = eval_set(cfg.data, "test", windows, 250, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    truth, decoded = [], []
    with torch.no_grad():
        for x in data.batches():  # (B, 1, T, F) standardized
            truth.append(motion.stats.denormalize(x[:, 0].double().numpy()))
            decoded.append(motion.stats.denormalize(model.reconstruct(x, g).x_hat[:, 0].double().numpy()))
    raw_x, raw_hat = np.concatenate(truth), np.concatenate(decoded)  # (N, T, F)
    n = len(raw_x)
    origin, ahead = np.zeros((n, 2)), np.zeros(n)
    target = features_to_poses(raw_x, origin, ahead, motion.fps)
    v_target = window_velocity(target, motion.fps)  # (N, 3)
    twist, data_twist = twist_deg(raw_hat), twist_deg(raw_x)
    row: dict = {
        "run": str(run), "method": cfg.method, "windows": n,
        "twist_deg": {"mean": float(twist.mean()), "p95": float(np.percentile(twist, 95)), "max": float(twist.max())},
        "data_twist_deg_max": float(data_twist.max()),
    }
    for name, drop in (("kept", False), ("dropped", True)):
        pred = features_to_poses(raw_hat, origin, ahead, motion.fps, drop_twist=drop)
        metrics = motion_metrics(h1, pred, target, motion.fps)
        error = np.abs(window_velocity(pred, motion.fps) - v_target).mean(0)  # (3,)
        row[name] = {
            **{k: float(metrics[k]) for k in METRICS},
            "velocity_error": {"forward_m_s": float(error[0]), "left_m_s": float(error[1]),
                               "yaw_rate_deg_s": float(np.degrees(error[2]))},
        }
    return row


def markdown(report: dict) -> str:
    lines = [
        "# Twist in decoded pelvis tilts, and what removing it changes", "",
        f"Command: `{report['command']}`; {report['machine']}, torch {report['torch']}, commit {report['code']}, "
        f"{report['created_utc']}.", "",
        "| run | method | windows | twist mean deg | p95 | max | data max | twist | MPJPE mm | global MPJPE mm "
        "| joint err deg | root vel err m/s | window vel err fwd m/s | left m/s | yaw deg/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        t = r["twist_deg"]
        for name in ("kept", "dropped"):
            m, v = r[name], r[name]["velocity_error"]
            lines.append(
                f"| {Path(r['run']).name} | {r['method']} | {r['windows']} | {t['mean']:.2f} | {t['p95']:.2f} "
                f"| {t['max']:.1f} | {r['data_twist_deg_max']:.1e} | {name} | {m['mpjpe_mm']:.1f} "
                f"| {m['mpjpe_global_mm']:.1f} | {m['joint_error_deg']:.2f} | {m['root_velocity_error_m_s']:.3f} "
                f"| {v['forward_m_s']:.3f} | {v['left_m_s']:.3f} | {v['yaw_rate_deg_s']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", required=True, help="comma-separated lafan1-h1 run folders")
    p.add_argument("--windows", type=int, default=1000, help="validation windows per run")
    p.add_argument("--out", default="docs/heading-twist", help="where the results go (default: %(default)s, committed)")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    runs = [Path(r) for r in args.runs.split(",") if r]
    out = Path(args.out)
    missing = [str(r) for r in runs if not (r / "config.json").exists()]
    if missing or not runs:
        print(f"heading_twist.py: error: not a run folder: {', '.join(missing) or args.runs!r}", file=sys.stderr)
        return 2
    if (out / "results.json").exists() and not args.overwrite:
        print(f"heading_twist.py: error: {out / 'results.json'} exists; pass --overwrite", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    report = {
        "command": shlex.join(["python", "benchmarks/heading_twist.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": cpu_name(), "torch": torch.__version__, "code": git_revision(),
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "results": [measure(run, args.windows) for run in runs],
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "results.json", report)
    text = markdown(report)
    tmp = out / "results.md.tmp"
    tmp.write_text(text)
    tmp.replace(out / "results.md")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
