"""Physics figures of ground-truth LAFAN1 clips on the H1, and of two broken versions (negative controls).

    DAPS_DATA_DIR=../shared/data python benchmarks/robot_physics.py [--seconds 10] [--out docs/robot-cpu/physics-gt]

For one training clip of each kind (from frame 300, ``--seconds`` long): the support the PD + support tracker
needs (:func:`daps.robot.physics.track`), the inverse-dynamics balance (:func:`daps.robot.physics.balance_check`),
the time until the PD tracker alone falls (:func:`daps.robot.physics.fall_time`) and the simulation speed; and for
the walking clip lifted by 20 cm (the feet never touch) and with its joint angles played backwards in time.
Writes ``OUT.json`` (every number, machine, torch, commit, command) and ``OUT.md``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from run import cpu_name, git_revision

from daps.runfolder import write_text_atomic

CLIPS = {"walk": "walk1_subject1", "run": "run1_subject2", "dance": "dance1_subject1", "fight": "fight1_subject3",
         "jump": "jumps1_subject1", "fall": "fallAndGetUp1_subject1"}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--out", default="docs/robot-cpu/physics-gt",
                   help="stem of the .json and .md written (default: %(default)s, committed)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier report at --out")
    args = p.parse_args()
    existing = [s for s in (".json", ".md") if Path(args.out + s).exists()]
    if existing and not args.overwrite:
        print(f"robot_physics.py: error: {args.out}{existing[0]} exists; pass --overwrite to replace it",
              file=sys.stderr)
        return 2

    import torch

    from daps.motion.dataset import load_clip_features
    from daps.motion.h1 import load_h1
    from daps.robot.physics import balance_check, fall_time, track

    h1 = load_h1()
    clips = load_clip_features()
    frames = int(round(args.seconds * 30))
    cases = {kind: clips.poses[name][300 : 300 + frames] for kind, name in CLIPS.items()}
    lifted = cases["walk"].copy()
    lifted[:, 2] += 0.2
    backwards = cases["walk"].copy()
    backwards[:, 7:] = backwards[::-1, 7:]
    cases["walk lifted 20 cm (control)"] = lifted
    cases["walk, joints backwards (control)"] = backwards
    rows = {}
    for name, poses in cases.items():
        start = time.perf_counter()
        tracked = track(h1, poses, 30.0)
        seconds = time.perf_counter() - start
        support = tracked.summary()
        rows[name] = {
            "clip": CLIPS.get(name.split()[0].rstrip(","), ""), **support, **balance_check(h1, poses, 30.0),
            "pd_only_fall_s": fall_time(h1, poses, 30.0),
            "physics_steps_per_s": tracked.physics_steps / seconds,
        }
        print(name, {k: round(v, 3) if isinstance(v, float) else v for k, v in rows[name].items()}, flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"machine": cpu_name(), "torch": torch.__version__, "commit": git_revision(),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": shlex.join(["python", *sys.argv]), "seconds": args.seconds, "rows": rows}
    write_text_atomic(out.with_suffix(".json"), json.dumps(result, indent=1) + "\n")
    keys = ("support_force_bw", "support_force_bw_p95", "support_torque_nm", "balanced_fraction", "cop_outside_m",
            "pulling_fraction", "pd_only_fall_s", "physics_steps_per_s")
    md = [f"# Physics of ground-truth clips ({args.seconds:g} s from frame 300)\n\n{cpu_name()}, torch "
          f"{torch.__version__}, commit {git_revision()}. Command: `{result['command']}`\n\n",
          "| motion | clip | " + " | ".join(keys) + " |\n", "|---|---|" + "---|" * len(keys) + "\n"]
    for name, r in rows.items():
        md.append(f"| {name} | {r['clip']} | " + " | ".join(f"{r[k]:.3g}" for k in keys) + " |\n")
    write_text_atomic(out.with_suffix(".md"), "".join(md))
    print("".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
