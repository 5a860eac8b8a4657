"""Where a training step's time goes, operator by operator: torch.profiler over a few steps at a preset.

    python benchmarks/profile_step.py [--preset mnist] [--method daps] [--steps 5] [--warmup 3] [--threads N]
        [--top 15] [--out docs/benchmarks/profile-mnist.json] [--overwrite] [--from RUN] [key=value ...]

Builds the model, optimizers and inputs as ``benchmarks/run.py`` (and so ``daps train``) does, runs ``--warmup``
steps, then profiles ``--steps`` steps on the CPU: each operator's self time (its own kernels, not its callees) and
its share of the profiled time, the ``--top`` largest listed. For the matrix products (``aten::mm``, ``addmm``,
``bmm``) the profiler's FLOP counts give their rate in GFLOP/s; the same run times a large square float32 matmul
(2,048 x 2,048) on the same threads, the rate this CPU reaches when a product is big enough to keep it busy, so the
step's products can be read as a share of it. Prints markdown, writes JSON (machine, torch, threads, commit,
command) and the markdown next to it (``.md``). The inputs are random (binary at 13 % for MNIST, standard normal
otherwise) and the weights fresh, unless ``--from RUN`` starts from that run's latest weights on a batch of its data
(as ``benchmarks/step_variants.py --from`` does): a trained encoder's codes share more prefixes, which changes where
the time goes (``encoder.share_prefixes``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

# The suite's helpers (benchmarks/run.py; this script's folder is on sys.path when it runs).
from run import add_freed_memory_arg, apply_freed_memory, git_revision, machine_info, setup, step_once
from step_variants import load_trained, starting_point
from torch.profiler import ProfilerActivity, profile

from daps import get_preset, parse_overrides
from daps.runfolder import write_text_atomic

MATMULS = ("aten::mm", "aten::addmm", "aten::bmm")


def matmul_gflops(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of an ``n x n`` float32 matmul on this CPU (best of ``repeats``, after one warm-up)."""
    a, b = torch.randn(n, n, device="cpu"), torch.randn(n, n, device="cpu")
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="mnist")
    parser.add_argument("--method", default="daps")
    parser.add_argument("--steps", type=int, default=5, help="profiled steps")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--top", type=int, default=15, help="operators listed")
    parser.add_argument("--out", default="", help="JSON report (default benchmarks/results/profile-PRESET.json)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report")
    parser.add_argument("--from", dest="from_run", default="",
                        help="a run folder of --method: its latest weights and a batch of its data")
    add_freed_memory_arg(parser)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.top < 1:
        parser.error("--steps and --top must be >= 1 and --warmup >= 0")
    out = Path(args.out or f"benchmarks/results/profile-{args.preset}.json")
    if out.exists() and not args.overwrite:
        print(f"{parser.prog}: error: --out {out} exists; pass --overwrite to replace it",
              file=sys.stderr)
        sys.exit(2)
    kept = apply_freed_memory(args.keep_freed_memory)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device("cpu")
    try:
        cfg = parse_overrides(get_preset(args.preset, args.method), args.overrides)
        trained = load_trained(args.from_run, cfg, device) if args.from_run else None
    except (ValueError, OSError) as err:  # daps's UserError included; OSError: --from's data not found
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        sys.exit(2)
    model, optimizers, x, generator = setup(cfg, device)
    if trained is not None:
        weights, x = trained
        model.load_state_dict(weights)
    for _ in range(args.warmup):
        step_once(model, optimizers, x, 0, generator, cfg.train.precision)
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        for _ in range(args.steps):
            step_once(model, optimizers, x, 0, generator, cfg.train.precision)
    wall_ms = (time.perf_counter() - start) * 1e3 / args.steps  # under the profiler, which adds its own overhead

    events = prof.key_averages()
    total_us = sum(e.self_cpu_time_total for e in events)
    ops = sorted(
        ({"name": e.key, "self_ms_per_step": e.self_cpu_time_total / 1e3 / args.steps,
          "share": e.self_cpu_time_total / total_us, "calls_per_step": e.count / args.steps,
          "gflop_per_step": e.flops / 1e9 / args.steps if e.flops else 0.0} for e in events),
        key=lambda op: -op["share"],
    )
    products = [op for op in ops if op["name"] in MATMULS]
    product_ms = sum(op["self_ms_per_step"] for op in products)
    product_gflop = sum(op["gflop_per_step"] for op in products)
    reference = matmul_gflops(torch.get_num_threads())
    report = {
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python", *sys.argv]) if argv is None else shlex.join(["profile_step.py", *argv]),
        "code": git_revision(),
        "machine": machine_info(device),
        "preset": args.preset, "method": args.method, "batch_size": cfg.train.batch_size, "steps": args.steps,
        "from": args.from_run or None,
        "freed_memory_kept": kept,
        "step_ms_under_profiler": wall_ms,
        "profiled_ms_per_step": total_us / 1e3 / args.steps,
        "matmul": {"self_ms_per_step": product_ms, "share": product_ms * 1e3 * args.steps / total_us,
                   "gflop_per_step": product_gflop,
                   "gflops": product_gflop / (product_ms / 1e3) if product_ms else None,
                   "large_matmul_gflops": reference},
        "operators": ops[: args.top],
    }

    m = report["matmul"]
    lines = [
        f"# Where the time goes: {args.method} step at `{args.preset}` (B={cfg.train.batch_size}), "
        f"{args.steps} profiled steps, {starting_point(args.from_run)}",
        "",
        "| operator | self ms per step | share | calls per step | GFLOP per step |",
        "|---|---|---|---|---|",
        *(f"| `{op['name']}` | {op['self_ms_per_step']:.1f} | {op['share']:.1%} | {op['calls_per_step']:g} "
          f"| {op['gflop_per_step']:.2f} |" for op in report["operators"]),
        "",
        f"Matrix products ({', '.join(MATMULS)}): {m['self_ms_per_step']:.1f} ms per step, {m['share']:.0%} of the "
        f"profiled time, {m['gflop_per_step']:.2f} GFLOP per step at "
        + (f"{m['gflops']:.1f} GFLOP/s" if m["gflops"] else "-")
        + f"; a 2,048 x 2,048 float32 matmul on the same threads: {m['large_matmul_gflops']:.1f} GFLOP/s. "
        f"Profiled time {report['profiled_ms_per_step']:.0f} ms per step (self times summed), "
        f"{report['step_ms_under_profiler']:.0f} ms of wall time per step under the profiler.",
        "",
        f"Machine: {report['machine']['cpu']}, {report['machine']['torch_threads']} torch threads, torch "
        f"{report['machine']['torch']}; code {report['code']}; {report['created_utc']}.",
        f"Command: `{report['command']}`",
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(report, indent=2) + "\n")
    write_text_atomic(out.with_suffix(".md"), table)
    return report


if __name__ == "__main__":
    main()
