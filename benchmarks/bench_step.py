"""Steps/s of one training step at a preset, with a time breakdown.

    python benchmarks/bench_step.py [--preset mnist] [--steps 30] [--warmup 5] [--threads N] [key=value ...]

Times whole optimizer steps on random binary images of the preset's shape (data loading is not part of
a step: the data sit in memory), reports the median over windows after warm-up, then times each part of
the step separately: sampling K codes, the teacher-forced pass (forward + backward), the decoder
(forward + backward) and the optimizer (clipping + AdamW). Prints a markdown table and, with --json,
writes the numbers to a file.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch

from daps.config import get_preset, parse_overrides
from daps.likelihoods import bernoulli_log_prob
from daps.methods import build_method
from daps.optim import Optimizers


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="mnist")
    parser.add_argument("--steps", type=int, default=30, help="timed steps (split into windows of 5)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--json", default="", help="also write results to this JSON file")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = parse_overrides(get_preset(args.preset), args.overrides)
    torch.manual_seed(0)
    shape = tuple(cfg.data.image_shape)
    model = build_method(cfg, shape)
    optimizers = Optimizers(model, model.optimizer_specs(cfg.optim.lr, cfg.optim.grad_clip), cfg.optim.weight_decay)
    gen = torch.Generator().manual_seed(0)
    b, k = cfg.train.batch_size, cfg.daps.num_samples
    x = (torch.rand(b, *shape, generator=gen) > 0.87).float()

    def step() -> None:
        out = model(x, 0, generator=gen)
        optimizers.zero_grad()
        out.loss.backward()
        optimizers.step()

    for _ in range(args.warmup):
        step()
    window = 5
    rates = []
    for _ in range(max(args.steps // window, 1)):
        t0 = time.perf_counter()
        for _ in range(window):
            step()
        rates.append(window / (time.perf_counter() - t0))
    steps_per_s = statistics.median(rates)

    # Breakdown: each part timed on its own, with the inputs it sees inside a step.
    enc, dec = model.encoder, model.decoder
    reps = 5
    samples = enc.sample(x, k, gen)

    def teacher_forced() -> None:
        token_log_q = enc.log_prob(x, samples.indices)
        token_log_q.sum().backward()

    def decoder() -> None:
        logits = dec(samples.indices.flatten(0, 1))
        bernoulli_log_prob(logits, x.repeat(k, 1, 1, 1)).mean().backward()

    def optimizer() -> None:
        optimizers.step()

    parts = {
        "sampling": timed(lambda: enc.sample(x, k, gen), reps),
        "sampling_no_cache": timed(lambda: enc.sample(x, k, gen, use_cache=False), reps),
        "teacher_forced": timed(teacher_forced, reps),
        "decoder": timed(decoder, reps),
        "optimizer": timed(optimizer, reps),
    }
    result = {
        "preset": args.preset,
        "overrides": args.overrides,
        "batch_size": b,
        "num_samples": k,
        "num_tokens": cfg.encoder.num_tokens,
        "steps_per_s": steps_per_s,
        "step_ms": 1000 / steps_per_s,
        "breakdown_ms": {name: 1000 * t for name, t in parts.items()},
        "machine": cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
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
    print(f"machine: {result['machine']}, {result['threads']} threads, torch {result['torch']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
