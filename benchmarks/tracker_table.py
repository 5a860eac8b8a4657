"""The learning of a low-level tracker run (``daps robot track-train``) as a table, and the run evaluated now.

Reads the run's ``metrics.jsonl``: training reward per frame, episode length and fall rate averaged over each
stretch of ``--every`` frames, the validation rows as they were logged; then runs ``daps robot track-eval`` on the
run (the tracker's mean action and the PD servos alone from the same starts) with the current code. Writes
``OUT.json`` and ``OUT.md``.

    python benchmarks/tracker_table.py runs/tracker --out docs/tracker-cpu/table --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's package, whatever is installed

from daps.plots import read_metrics  # noqa: E402
from daps.provenance import provenance  # noqa: E402
from daps.robot.tracker import evaluate_tracker, load_tracker, tracker_h1  # noqa: E402
from daps.runfolder import write_json_atomic, write_text_atomic  # noqa: E402


def stretches(rows: list[dict], every: int) -> list[dict]:
    """Training rows averaged over consecutive stretches of ``every`` frames (a row belongs to the stretch of its
    last frame)."""
    out: dict[int, list[dict]] = {}
    for r in rows:
        out.setdefault((int(r["frames"]) - 1) // every, []).append(r)
    def mean(group: list[dict], key: str) -> float:
        values = [g[key] for g in group if g.get(key) is not None and not math.isnan(g[key])]
        return float(np.mean(values)) if values else float("nan")

    table = []
    for k, group in sorted(out.items()):
        row = {"frames_from": k * every, "frames_to": int(group[-1]["frames"]), "updates": len(group)}
        row.update({key: mean(group, key) for key in ("reward", "episode_s", "fall_rate", "approx_kl", "frames_per_s")})
        row["action_std"] = float(group[-1]["action_std"])
        row["lr"] = float(group[-1].get("lr", float("nan")))  # Adam's step size at the stretch's end
        table.append(row)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="the tracker's run folder")
    parser.add_argument("--out", required=True, help="stem of OUT.json and OUT.md")
    parser.add_argument("--every", type=int, default=100_000, help="frames per row of the training table")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--starts", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    rows = read_metrics(run / "metrics.jsonl")
    model, cfg, meta, refs = load_tracker(run)
    h1 = tracker_h1(cfg, meta)
    fps = float(meta["fps"])
    result = {
        "run": str(run), "settings": {k: v for k, v in vars(cfg).items() if k not in ("out_dir", "tokenizer")},
        "tokenizer": meta.get("tokenizer"), "method": meta.get("method"),
        "jobs": json.loads((run / "provenance.json").read_text())["jobs"] if (run / "provenance.json").is_file()
        else None,
        "training": stretches([r for r in rows if r.get("split") == "train"], args.every),
        "validation_logged": [r for r in rows if r.get("split") == "val"],
        "evaluated_now": {
            "tracker": evaluate_tracker(model, h1, refs["val"], cfg, fps, args.seconds, args.starts),
            "pd_only": evaluate_tracker(None, h1, refs["val"], cfg, fps, args.seconds, args.starts),
        },
        **provenance(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out.with_suffix(".json"), result)
    lines = [f"# Tracker run {run.name}: {cfg.reference} references, {cfg.frames:,} frames", "",
             f"Evaluated now at code {result['code']} on {result['machine']}, torch {result['torch']}, "
             f"{result['date']}.", "",
             "| frames | reward per frame | episode s | fall rate | approx KL | action std | step size | frames/s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["training"]:
        lines.append(f"| {r['frames_from']:,}-{r['frames_to']:,} | {r['reward']:.3f} | {r['episode_s']:.3f} | "
                     f"{r['fall_rate']:.3f} | {r['approx_kl']:.4f} | {r['action_std']:.3f} | {r['lr']:.2g} | "
                     f"{r['frames_per_s']:.0f} |")
    now = result["evaluated_now"]
    lines += ["", f"Validation references, {int(now['tracker']['episodes'])} starts, up to {args.seconds:g} s each:",
              "", "| | survival s | survival fraction | fell | joint error deg | toe/hand error mm |",
              "|---|---|---|---|---|---|"]
    for name, key in (("tracker (mean action)", "tracker"), ("PD servos only", "pd_only")):
        r = now[key]
        lines.append(f"| {name} | {r['survival_s']:.3f} | {r['survival_fraction']:.3f} | {r['fall_fraction']:.2f} | "
                     f"{r['joint_error_deg']:.2f} | {r['end_error_mm']:.1f} |")
    write_text_atomic(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
