"""The H1 command space on CPU, as one command: train the high-level policy on each tokenizer's codes, evaluate it,
and time planning, rendering and physics.

    DAPS_DATA_DIR=../shared/data python benchmarks/robot_table.py --tokenizers daps=runs/robot/daps16@6000,fsq=...
        [--steps 4000] [--threads 2] [--runs runs/robot] [--out docs/robot-cpu] [--overwrite] [policy key=value ...]

For each ``name=TOKENIZER_RUN[@STEPS]`` (STEPS: that policy's training steps, default ``--steps``): ``daps robot
train`` into ``RUNS/policy-NAME`` (resumed if the folder exists), then ``daps robot eval`` (walk and run, three
requested speeds each) into ``OUT/NAME-eval.{json,md}``, and a 10-second walking plan rendered
(``OUT/NAME-walk.mp4`` and the physics video next to it) with its figures.
Speeds: policy training (steps/s and wall time), planning (windows/s, from the evaluation), rendering (frames/s
of one 320x320 view) and physics (simulation steps/s of the PD + support tracker on a ground-truth walk). Writes
``results.json`` (every number, machine, torch, commit, commands, wall times) and ``results.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from run import REPO, cpu_name, git_revision

from daps.runfolder import write_text_atomic


def daps(*args: str) -> list[str]:
    return [sys.executable, "-m", "daps.cli", *args]


def run(cmd: list[str], env: dict[str, str]) -> float:
    print("+", shlex.join(cmd), flush=True)
    start = time.time()
    subprocess.run(cmd, cwd=REPO, env=env, check=True)
    return round(time.time() - start, 1)


def speeds(data_dir: str | None) -> dict[str, float]:
    """Rendering frames/s (one 320x320 view) and physics steps/s (PD + support on 10 s of walk1_subject1)."""
    from daps.motion.dataset import load_clip_features
    from daps.motion.h1 import load_h1
    from daps.motion.render import render_side_by_side
    from daps.robot.physics import track

    h1 = load_h1(data_dir)
    walk = load_clip_features(data_dir).poses["walk1_subject1"][300:600]
    start = time.perf_counter()
    result = track(h1, walk, 30.0)
    physics_s = time.perf_counter() - start
    tmp = Path("/tmp/daps-robot-speed.mp4")
    start = time.perf_counter()
    render_side_by_side(h1, walk[:90], result.poses[:90], tmp, 30.0, 320, 320)
    render_s = time.perf_counter() - start
    tmp.unlink(missing_ok=True)
    return {"physics_steps_per_s": result.physics_steps / physics_s,
            "physics_realtime_factor": (len(walk) / 30.0) / physics_s,
            "render_frames_per_s": 2 * 90 / render_s, "gt_walk_support": result.summary()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokenizers", required=True, help="name=RUN,name=RUN")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", default="runs/robot")
    p.add_argument("--out", default="docs/robot-cpu")
    p.add_argument("--overwrite", action="store_true", help="write into an existing --out")
    p.add_argument("overrides", nargs="*", help="policy key=value settings for every run")
    args = p.parse_args()
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        print(f"{out} exists; pass --overwrite to write into it", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    pairs = [item.split("=", 1) for item in args.tokenizers.split(",")]
    steps_of = {name: int(tok.split("@")[1]) if "@" in tok else args.steps for name, tok in pairs}
    pairs = [[name, tok.split("@")[0]] for name, tok in pairs]
    result: dict = {"machine": cpu_name(), "commit": git_revision(), "threads": args.threads,
                    "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commands": {}, "wall_s": {},
                    "policies": {}}
    for name, tokenizer in pairs:
        policy = Path(args.runs) / f"policy-{name}"
        resume = ["--resume"] if (policy / "config.json").exists() else []
        train = daps("robot", "train", tokenizer, "--out", str(policy), "--threads", str(args.threads), *resume,
                     f"steps={steps_of[name]}", "progress=false", *args.overrides)
        evaluate = daps("robot", "eval", str(policy), "--out", str(out / f"{name}-eval"), "--overwrite")
        plan = daps("robot", "plan", str(policy), "--motion", "walk", "--velocity", "1.0,0,0", "--seconds", "10",
                    "--physics", "--out", str(out / f"{name}-walk.mp4"), "--json", str(out / f"{name}-walk.json"),
                    "--overwrite")
        result["commands"][name] = {"train": shlex.join(train), "eval": shlex.join(evaluate), "plan": shlex.join(plan)}
        result["wall_s"][name] = {"train": run(train, env)}
        result["wall_s"][name]["eval"] = run(evaluate, env)
        result["wall_s"][name]["plan"] = run(plan, env)
        summary = json.loads((policy / "summary.json").read_text())
        rows = [json.loads(line) for line in (policy / "metrics.jsonl").read_text().splitlines()]
        train_rows = [r for r in rows if r.get("split") == "train"]
        steps = [b["step"] - a for a, b in zip([0] + [r["step"] for r in train_rows], train_rows)]
        seconds = sum(n / r["steps_per_s"] for n, r in zip(steps, train_rows))  # the optimizer steps themselves
        result["policies"][name] = {
            "tokenizer": tokenizer, "steps": steps_of[name], "summary": summary, "train_seconds": seconds,
            "train_steps_per_s": sum(steps) / seconds,
            "eval": json.loads((out / f"{name}-eval.json").read_text()),
            "walk_plan": json.loads((out / f"{name}-walk.json").read_text()),
        }
    import torch

    result["torch"] = torch.__version__
    result["speeds"] = speeds(os.environ.get("DAPS_DATA_DIR"))
    write_text_atomic(out / "results.json", json.dumps(result, indent=1) + "\n")
    md = [f"# The H1 command space on CPU\n\n{cpu_name()}, {args.threads} threads, torch {torch.__version__}, "
          f"commit {git_revision()}.\n\nCommand: `{shlex.join(['python', *sys.argv])}`\n"]
    for name, r in result["policies"].items():
        s = r["summary"]
        md.append(
            f"\n## {name} codes ({r['tokenizer']})\n\nPolicy: {r['steps']} steps in {r['train_seconds'] / 60:.1f} min "
            f"of training steps ({r['train_steps_per_s']:.2f} steps/s); held-out bits/token "
            f"{s['bits_per_token']:.3f} (null label "
            f"{s['bits_per_token_null_label']:.3f}, shuffled velocity {s['bits_per_token_shuffled_velocity']:.3f}, "
            f"no previous window {s['bits_per_token_no_prev']:.3f}); sampling {s['windows_per_s']:.0f} windows/s.\n\n"
            + (out / f"{name}-eval.md").read_text()
        )
    sp = result["speeds"]
    md.append(f"\nPhysics: {sp['physics_steps_per_s']:.0f} simulation steps/s ({sp['physics_realtime_factor']:.2f}x "
              f"real time) for the PD + support tracker; rendering {sp['render_frames_per_s']:.1f} frames/s "
              f"(320x320 view).\n")
    write_text_atomic(out / "results.md", "".join(md))
    print("".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
