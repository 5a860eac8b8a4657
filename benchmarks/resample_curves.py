"""Learning curves of DAPS with and without resampled weighted maximum likelihood, same seeds.

    DAPS_DATA_DIR=../shared/data python benchmarks/resample_curves.py [--variants 0,2] [--seeds 0,1]
        [--steps 1000] [--eval-every 250] [--eval-examples 2000] [--work runs/resample-curves]
        [--out docs/resample-curves] [key=value ...]

Trains ``daps train --preset mnist`` once per (variant, seed), variant m = ``daps.resample`` (0: all K, the
paper's update), with the given overrides (the CPU comparison settings: ``daps.init_eta=1.0 optim.lr=1e-3``),
one after the other on one torch thread; finished runs in ``--work`` are reused, interrupted ones resumed. Writes
``OUT/table.md`` (validation log p and ELBO per step: each variant's mean and the spread over seeds) and
``OUT/results.json`` (every row, wall times, machine, torch version, commit, command).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path

import torch
from run import cpu_name, git_revision  # this script's folder is on sys.path

from daps import get_preset, parse_overrides
from daps.runfolder import write_json_atomic, write_text_atomic
from daps.train import train


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default="0,2")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--eval-examples", type=int, default=2000)
    p.add_argument("--work", default="runs/resample-curves")
    p.add_argument("--out", default="docs/resample-curves",
                   help="where the results go (default: %(default)s, committed)")
    p.add_argument("--overwrite", action="store_true", help="replace the results in --out")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    if (Path(args.out) / "results.json").exists() and not args.overwrite:  # before the training runs
        print(f"resample_curves.py: error: {Path(args.out) / 'results.json'} exists; pass --overwrite to replace it "
              "or another --out", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    command = shlex.join(["python", *sys.argv])
    code = git_revision()
    variants = [int(v) for v in args.variants.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    rows, walls = [], {}
    for seed in seeds:
        for m in variants:
            run = Path(args.work) / f"m{m}-seed{seed}"
            cfg = parse_overrides(get_preset("mnist"), [
                *args.overrides, f"daps.resample={m}", f"train.seed={seed}", f"train.steps={args.steps}",
                f"train.eval_every={args.eval_every}", f"train.eval_examples={args.eval_examples}",
                f"train.ckpt_every={args.eval_every}", "train.progress=false", "train.logger=none",
                f"train.out_dir={run}",
            ])
            summary = run / "summary.json"
            if not (summary.exists() and json.loads(summary.read_text()).get("step") == args.steps):
                train(cfg, resume=run.exists())
            seconds = 0.0  # training steps only (evaluation excluded), also for reused or resumed runs
            for line in (run / "metrics.jsonl").read_text().splitlines():
                r = json.loads(line)
                if r.get("split") == "train":
                    seconds += r["num_steps"] / r["steps_per_s"]
                if r.get("split") == "val":
                    rows.append({"m": m, "seed": seed, "step": r["step"], "log_p": r["log_p"], "elbo": r["elbo"],
                                 "kl": r["kl"]})
            walls[f"m{m}-seed{seed}"] = round(seconds, 1)
            print(f"m={m} seed={seed}: done", flush=True)
    lines = [f"Validation ({args.eval_examples} test images, one stochastic code each) of `daps train --preset mnist "
             f"{' '.join(args.overrides)}` for {args.steps} steps; m = daps.resample (0: all K = 8).", "",
             "| step | " + " | ".join(f"m={m} log p (mean, seeds {args.seeds})" for m in variants)
             + " | " + " | ".join(f"m={m} ELBO" for m in variants) + " |",
             "|---|" + "---|" * (2 * len(variants))]
    for step in sorted({r["step"] for r in rows}):
        cells = []
        for key in ("log_p", "elbo"):
            for m in variants:
                values = [r[key] for r in rows if r["m"] == m and r["step"] == step]
                spread = f" ({min(values):.2f} .. {max(values):.2f})" if len(values) > 1 else ""
                cells.append(f"{statistics.mean(values):.2f}{spread}")
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    lines += ["", "Training seconds per run (the train rows' steps / steps_per_s, evaluation excluded; one torch "
              f"thread, shared machine): {json.dumps(walls)}",
              f"Command: `{command}`; machine {cpu_name()}, torch {torch.__version__}, code {code}."]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "results.json", {"command": command, "code": code, "machine": cpu_name(),
                                             "torch": torch.__version__, "walls_s": walls, "rows": rows})
    write_text_atomic(out / "table.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
