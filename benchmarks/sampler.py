"""Tokens/s of the autoregressive sampler, its variants side by side in one process.

    python benchmarks/sampler.py [--preset mnist] [--batch B] [--samples K] [--repeats 5] [--compile]
        [--device cpu|cuda] [--threads N] [--out benchmarks/results/sampler-<preset>.json] [--overwrite] [key=value ...]

Draws K codes for B random inputs of the preset's shape with the preset's encoder, through each way the
library can sample, interleaved round-robin so that the machine's load hits every variant alike:

- ``kv-cache``: the default eager path (self-attention keys/values written into a preallocated cache and
  read up to the current position);
- ``no-cache``: the whole prefix recomputed at every token (the reference path of the tests; skipped for
  T > 64, where it takes minutes);
- ``static-full``: the static-shape step of ``train.compile`` run eagerly, reading the whole T-long cache at
  every position (masked);
- ``static-bucketed``: the same step reading power-of-two buckets of the cache (what ``train.compile`` uses);
- with ``--compile``: both static variants through ``torch.compile`` (compilation happens in a warm-up call).

Then the categorical draw alone, T draws from (B*K, V) probabilities: inverse CDF (what the library uses),
Gumbel-max and ``torch.multinomial``. Reports the median time over ``--repeats`` rounds, tokens/s = B*K*T /
time, and each variant's speed relative to ``kv-cache`` from the same rounds. Prints markdown, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from run import git_revision, machine_info  # the suite's machine description (this script's folder is on sys.path)

from daps import get_preset, parse_overrides
from daps.functional import sample_probs
from daps.methods import build_method
from daps.runfolder import write_text_atomic


def _sampler(enc, x, k, variant: str):
    """A function drawing ``k`` codes per input of ``x`` with ``variant`` (the sampler's mode set on ``enc``)."""
    static = None  # (step function, smallest bucket) of the static variants, restored before each call
    if variant.startswith(("static", "compiled")):
        compiled = variant.startswith("compiled")
        smallest = enc.num_tokens if variant.endswith("full") else 16
        mode = "reduce-overhead" if compiled and x.device.type == "cuda" else None
        enc.compile_sampler(compile=compiled, smallest_bucket=smallest, **({"mode": mode} if mode else {}))
        static = (enc._static_step_fn, enc._smallest_bucket)

    def run() -> None:
        enc._static_step_fn, enc._smallest_bucket = static or (None, 16)
        enc.sample(x, k, torch.Generator(x.device).manual_seed(0), use_cache=variant != "no-cache")

    return run


def _draws(probs: torch.Tensor, t: int, how: str):
    gen = torch.Generator(probs.device).manual_seed(0)

    def run() -> None:
        for _ in range(t):
            if how == "inverse-cdf":
                sample_probs(probs, gen)
            elif how == "gumbel-max":
                u = torch.rand(probs.shape, generator=gen, device=probs.device).clamp_min_(1e-20)
                (probs.log() - (-u.log()).log()).argmax(-1)
            else:
                torch.multinomial(probs, 1, generator=gen)

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="mnist")
    parser.add_argument("--batch", type=int, default=0, help="inputs B (default: the preset's batch size)")
    parser.add_argument("--samples", type=int, default=0, help="codes per input K (default: the preset's)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (median reported)")
    parser.add_argument("--compile", action="store_true", help="also time the torch.compile'd static steps")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--out", default="", help="JSON output (default: benchmarks/results/sampler-<preset>.json)")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("overrides", nargs="*", help="config key=value overrides")
    args = parser.parse_args(argv)
    out = Path(args.out or f"benchmarks/results/sampler-{args.preset}.json")
    if out.exists() and not args.overwrite:
        print(f"sampler.py: error: {out} exists; pass --overwrite", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        cfg = parse_overrides(get_preset(args.preset), args.overrides)
    except ValueError as err:
        print(f"sampler.py: error: {err}", file=sys.stderr)
        return 2
    command = shlex.join(["python", "benchmarks/sampler.py", *(sys.argv[1:] if argv is None else argv)])

    try:
        device = torch.device(args.device)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as err:
        print(f"sampler.py: error: device {args.device!r} is not usable here ({err})", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    model = build_method(cfg, tuple(cfg.data.image_shape)).to(device).eval()
    enc = model.encoder
    if not hasattr(enc, "compile_sampler"):
        print(f"sampler.py: error: method {cfg.method} has no autoregressive sampler", file=sys.stderr)
        return 2
    b = args.batch or cfg.train.batch_size
    k = args.samples or cfg.daps.num_samples
    t, v = enc.num_tokens, enc.vocab_size
    x = torch.randn(b, *cfg.data.image_shape, generator=torch.Generator().manual_seed(1), device="cpu").to(device)

    variants = ["kv-cache", *(["no-cache"] if t <= 64 else []), "static-full", "static-bucketed"]
    if args.compile:
        variants += ["compiled-full", "compiled-bucketed"]
    runs = {name: _sampler(enc, x, k, name) for name in variants}
    logits = torch.randn(b * k, v, generator=torch.Generator().manual_seed(2), device="cpu")
    probs = torch.softmax(logits, -1).to(device)

    def timed(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start
    draws = {name: _draws(probs, t, name) for name in ("inverse-cdf", "gumbel-max", "multinomial")}

    warmup = {name: timed(fn) for name, fn in {**runs, **draws}.items()}  # compiles the compiled variants
    times: dict[str, list[float]] = {name: [] for name in [*runs, *draws]}
    for _ in range(args.repeats):
        for name, fn in {**runs, **draws}.items():
            times[name].append(timed(fn))

    tokens = b * k * t
    rows = []
    for group, base in ((runs, "kv-cache"), (draws, "inverse-cdf")):
        base_times = times[base]
        for name in group:
            ratios = [bt / s for bt, s in zip(base_times, times[name])]  # per round: speed relative to the base
            median = statistics.median(times[name])
            rows.append({
                "variant": name, "median_s": median, "min_s": min(times[name]), "max_s": max(times[name]),
                "tokens_per_s": tokens / median, "speed_vs_" + base: statistics.median(ratios),
                "first_call_s": warmup[name],
            })
    report = {
        "command": command, "code": git_revision(), "preset": args.preset, "B": b, "K": k, "T": t, "V": v,
        "repeats": args.repeats, "rows": rows, "machine": machine_info(device),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    lines = [
        f"Sampling K={k} codes for B={b} inputs, T={t}, V={v} ({args.preset} encoder), median of {args.repeats} "
        "interleaved rounds:", "",
        "| variant | median ms | min - max ms | tokens/s | speed vs baseline (same rounds) | first call s |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        ratio = row.get("speed_vs_kv-cache", row.get("speed_vs_inverse-cdf"))
        lines.append(
            f"| {row['variant']} | {1000 * row['median_s']:.1f} "
            f"| {1000 * row['min_s']:.1f} - {1000 * row['max_s']:.1f} "
            f"| {row['tokens_per_s']:,.0f} | {ratio:.2f}x | {row['first_call_s']:.2f} |"
        )
    lines += ["", "Baselines: kv-cache for the samplers, inverse-cdf for the categorical draws (T draws of B*K "
              "tokens, without the network).", f"Command: `{command}`"]
    m = report["machine"]
    lines.append(
        f"Machine: {m['cpu']}, {m['torch_threads']} torch threads, torch {m['torch']}; code {report['code']}; "
        f"{report['created_utc']}."
    )
    print("\n".join(lines))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(report, indent=2) + "\n")
    write_text_atomic(out.with_suffix(".md"), "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
