"""Steps/s of one training step at a preset, with a time breakdown.

    python benchmarks/bench_step.py [--preset mnist] [--steps 30] [--warmup 5] [--threads N] [key=value ...]

Times whole optimizer steps on random binary images of the preset's shape (data loading is not part of
a step: the data sit in memory), reports the median over windows after warm-up, then times each part of
the step separately: sampling K codes, the teacher-forced pass (forward + backward), the decoder
(forward + backward) and the optimizer (clipping + AdamW), and compares sampling with the KV cache against
recomputing the prefix at every token. Prints a markdown table and, with --json, writes the numbers to a file.

The DAPS method only; the suite over every method and preset is ``benchmarks/run.py``, whose helpers this
script uses.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

# The suite's helpers (benchmarks/run.py; this script's folder is on sys.path when it runs).
from run import (
    add_freed_memory_arg,
    apply_freed_memory,
    categorical_parts,
    git_revision,
    machine_info,
    setup,
    step_once,
    time_call,
    time_windows,
)

from daps import get_preset, parse_overrides
from daps.runfolder import write_text_atomic


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="mnist")
    parser.add_argument("--steps", type=int, default=30, help="timed steps (split into windows of 5)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--json", default="", help="also write results to this JSON file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    add_freed_memory_arg(parser)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    if args.json and Path(args.json).exists() and not args.overwrite:
        print(f"{parser.prog}: error: --json {args.json} exists; pass --overwrite to replace it",
              file=sys.stderr)
        sys.exit(2)
    kept = apply_freed_memory(args.keep_freed_memory)
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = parse_overrides(get_preset(args.preset), args.overrides)
    device = torch.device("cpu")
    model, optimizers, x, gen = setup(cfg, device)
    b, k = cfg.train.batch_size, cfg.daps.num_samples
    for _ in range(args.warmup):
        step_once(model, optimizers, x, 0, gen, cfg.train.precision)
    window = 5
    rates = time_windows(
        lambda: step_once(model, optimizers, x, 0, gen, cfg.train.precision),
        max(args.steps // window, 1),
        window,
        device,
    )
    steps_per_s = statistics.median(rates)

    # Breakdown: each part timed on its own, with the inputs it sees inside a step (median of 5).
    reps = 5
    enc = model.encoder
    parts = {
        name: time_call(fn, reps, device, optimizers.zero_grad)
        for name, fn in categorical_parts(model, x, k, gen, cfg.train.precision).items()
    }
    parts["sampling_no_cache"] = time_call(lambda: enc.sample(x, k, gen, use_cache=False), reps, device)
    step_once(model, optimizers, x, 0, gen, cfg.train.precision)  # leaves every gradient for the optimizer to step on
    parts["optimizer"] = time_call(optimizers.step, reps, device)
    result = {
        "preset": args.preset,
        "overrides": args.overrides,
        "batch_size": b,
        "num_samples": k,
        "num_tokens": cfg.encoder.num_tokens,
        "steps_per_s": steps_per_s,
        "step_ms": 1000 / steps_per_s,
        "breakdown_ms": {name: 1000 * t for name, t in parts.items()},
        "machine": machine_info(device)["cpu"],
        "machine_info": machine_info(device),
        "threads": torch.get_num_threads(),
        "freed_memory_kept": kept,
        "torch": torch.__version__,
        "code": git_revision(),
        "command": "python " + " ".join(sys.argv),
    }
    print("| preset | B | K | steps/s | step ms | sampling | teacher-forced | decoder | optimizer |")
    print("|---|---|---|---|---|---|---|---|---|")
    br = result["breakdown_ms"]
    print(
        f"| {args.preset} | {b} | {k} | {steps_per_s:.2f} | {result['step_ms']:.0f} | {br['sampling']:.0f} | "
        f"{br['teacher_forced']:.0f} | {br['decoder']:.0f} | {br['optimizer']:.0f} |"
    )
    print(
        f"sampling with KV cache: {br['sampling']:.0f} ms; recomputing the prefix each token: "
        f"{br['sampling_no_cache']:.0f} ms (x{br['sampling_no_cache'] / br['sampling']:.2f})"
    )
    print(f"machine: {result['machine']}, {result['threads']} threads, torch {result['torch']}, code {result['code']}")
    if args.json:
        write_text_atomic(args.json, json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
