"""A training step's speed under ``train.precision``, ``train.compile`` and ``train.cuda_graph``, the variants side by
side in one process.

    python benchmarks/step_variants.py [--preset mnist] [--method daps] [--variants eager,bf16,compiled] [--device cpu]
        [--rounds 3] [--steps-per-window 4] [--warmup 2] [--threads N] [--out docs/benchmarks/step-variants.json]
        [--overwrite] [--from RUN] [key=value ...]

Builds one model per variant exactly as ``benchmarks/run.py`` (and so ``daps train``) builds it, with the same
seed, inputs and overrides:

- ``eager``: float32, not compiled (the default);
- ``bf16``: ``train.precision=bfloat16`` (the forward under bf16 autocast);
- ``compiled``: ``train.compile=true`` (the sampler's static-shape step and the DAPS objective through
  ``torch.compile``; compiled in the warm-up, whose time is reported);
- ``resample-4``, ``resample-2``, ``resample-1`` (``daps.resample=m``, systematic), ``resample-2-multinomial``,
  ``resample-2-bf16`` (with ``train.precision=bfloat16``);
- ``one-pass``, ``one-pass-bf16``: ``daps.one_pass=true`` (the codes scored in the sampling pass, no teacher-forced
  pass; the same losses and gradients), the second with ``train.precision=bfloat16``; with ``--method reinforce``
  a variant's ``daps.*`` settings go to ``reinforce.*``;
- ``vqvae``: the VQ-VAE method at the same preset (the denominator of the DAPS / VQ-VAE ratio);
- ``graphed``, ``vqvae-graphed``, ``graphed-bf16``: ``train.cuda_graph=true`` (CUDA, ``--device cuda``): the whole
  step recorded as one CUDA graph during the warm-up and replayed (the warm-up lengthened to cover it);
  ``graphed-compiled``: with ``train.compile=true`` too (the compiled kernels recorded into the one graph);
- ``tf32``, ``graphed-tf32``, ``graphed-compiled-tf32`` (CUDA): ``train.tf32=true``, the step's float32 matrix
  products and convolutions in TF32;
- ``whole-pass``: ``encoder.share_prefixes=off``, sampling and the teacher-forced pass at every position instead
  of once per distinct prefix of an input's K codes (the default on the CPU; the same values); ``shared``:
  ``encoder.share_prefixes=on``, the distinct prefixes on any device (for ``--device cuda``).

The inputs are random (binary at 13 % for MNIST, standard normal otherwise) and the weights fresh, unless ``--from
RUN`` names a run folder: then every variant of the run's method starts from its latest checkpoint's weights (the
optimizers fresh) and all train on one batch of the run's training data (``DAPS_DATA_DIR``), drawn as ``daps train``
draws its first. A trained encoder is more certain than a fresh one, which is what ``whole-pass`` against the
default measures; the VQ-VAE denominator starts fresh on the same batch.

After ``--warmup`` steps each, the variants are timed round-robin: in each of ``--rounds`` rounds every variant
runs one window of ``--steps-per-window`` steps, so that the machine's load hits all alike. Reports each
variant's median steps/s over the rounds and its speed relative to ``eager`` as the median over rounds of
(variant steps/s / eager steps/s in the same round). For compiled variants it also reports torch.dynamo's graph
and recompilation counters. Prints markdown, writes JSON (machine, torch, threads, commit, command) and the same
markdown next to it (``.md``).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

# The suite's helpers (benchmarks/run.py; this script's folder is on sys.path when it runs).
from run import (
    add_freed_memory_arg,
    apply_freed_memory,
    git_revision,
    machine_info,
    make_step,
    setup,
    synchronize,
    time_windows,
    warmup_steps,
)

from daps import Config, build_method, get_preset, load_model, parse_overrides
from daps.checkpoint import resolve_checkpoint
from daps.data import dataset_spec, train_batches
from daps.methods import method_spec
from daps.nets.ar_encoder import ARTransformerEncoder
from daps.nets.prefixes import prefix_nodes
from daps.runfolder import write_text_atomic

VARIANTS = {
    "eager": [],
    "bf16": ["train.precision=bfloat16"],
    "compiled": ["train.compile=true"],
    "compiled-bf16": ["train.compile=true", "train.precision=bfloat16"],
    "resample-4": ["daps.resample=4"],
    "resample-2": ["daps.resample=2"],
    "resample-1": ["daps.resample=1"],
    "resample-2-multinomial": ["daps.resample=2", "daps.resample_scheme=multinomial"],
    "resample-2-bf16": ["daps.resample=2", "train.precision=bfloat16"],
    "one-pass": ["daps.one_pass=true"],
    "one-pass-bf16": ["daps.one_pass=true", "train.precision=bfloat16"],
    "vqvae": [],  # the vqvae method at the same preset: the denominator of "DAPS / VQ-VAE"
    "graphed": ["train.cuda_graph=true"],
    "graphed-bf16": ["train.cuda_graph=true", "train.precision=bfloat16"],
    "vqvae-graphed": ["train.cuda_graph=true"],
    "tf32": ["train.tf32=true"],
    "graphed-tf32": ["train.cuda_graph=true", "train.tf32=true"],
    "graphed-compiled": ["train.cuda_graph=true", "train.compile=true"],
    "graphed-compiled-tf32": ["train.cuda_graph=true", "train.compile=true", "train.tf32=true"],
    "whole-pass": ["encoder.share_prefixes=off"],
    "shared": ["encoder.share_prefixes=on"],
}


def dynamo_counters() -> dict:
    """torch.dynamo's counters of frames captured, unique graphs and recompilations so far (empty if absent)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return {}
    return {group: dict(counters[group]) for group in ("stats", "recompiles") if counters[group]}


def load_trained(run: str, cfg: Config, device: torch.device) -> tuple[dict, torch.Tensor]:
    """The latest weights of run folder ``run`` (which must hold a ``cfg.method`` model of ``cfg``'s shapes) and one
    training batch of its data, drawn as ``daps train`` draws its first; ValueError (UserError) if it does not fit."""
    model = load_model(run)
    if model.config.method != cfg.method:
        raise ValueError(f"--from {run}: a {model.config.method} run, not {cfg.method}")
    weights = {k: v.to(device) for k, v in model.state_dict().items()}
    shapes = {k: tuple(v.shape) for k, v in build_method(cfg, tuple(cfg.data.image_shape)).state_dict().items()}
    if shapes != {k: tuple(v.shape) for k, v in weights.items()}:
        raise ValueError(f"--from {run}: its networks are not the shapes of --preset {cfg.data.name} with these "
                         "overrides")
    data = model.config.data
    generator = torch.Generator(device).manual_seed(model.config.train.seed)
    batches = train_batches(data, cfg.train.batch_size, model.config.train.seed, 0, generator, device)
    try:
        x = dataset_spec(data.name).standardize(next(batches))  # (B, C, H, W)
    finally:
        batches.close()
    return weights, x


def starting_point(run: str) -> str:
    """Where the measured steps start, for a report's heading: ``--from`` run ``run`` (empty: none)."""
    if not run:
        return "from fresh weights on random inputs"
    return f"from the weights of `{run}` ({resolve_checkpoint(run).name}) on a batch of its data"


def distinct_prefixes(model: torch.nn.Module, x: torch.Tensor, seed: int) -> dict | None:
    """How much an autoregressive encoder's K codes of ``x`` share: the distinct (input, prefix) pairs as a fraction
    of the B*K*T positions, overall and per position (None for other encoders)."""
    encoder = getattr(model, "encoder", None)
    k = int(getattr(getattr(model, "cfg", None), "num_samples", 0))
    if not isinstance(encoder, ARTransformerEncoder) or k < 2:
        return None
    with torch.no_grad():
        codes = encoder.sample(x, k, torch.Generator(x.device).manual_seed(seed)).indices  # (K, B, T)
    flat = codes.transpose(0, 1).reshape(-1, codes.shape[-1])  # (B*K, T)
    per_position = prefix_nodes(flat, k, encoder.vocab_size).node_of.view(flat.shape)  # (B*K, T) node ids
    counts = [int(per_position[:, t].unique().numel()) for t in range(flat.shape[1])]
    return {"fraction": sum(counts) / flat.numel(), "per_position": [c / flat.shape[0] for c in counts]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="mnist")
    parser.add_argument("--method", default="daps")
    parser.add_argument("--variants", default="eager,bf16,compiled", help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps-per-window", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--out", default="", help="JSON output (default: benchmarks/results/step-variants-<preset>.json)"
    )
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--from", dest="from_run", default="",
                        help="a run folder: its weights for the variants of its method, a batch of its data for all")
    add_freed_memory_arg(parser)
    parser.add_argument("overrides", nargs="*", help="config key=value overrides, applied to every variant")
    args = parser.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    out = Path(args.out or f"benchmarks/results/step-variants-{args.preset}.json")
    try:
        unknown = [v for v in names if v not in VARIANTS]
        if unknown or "eager" not in names:
            raise ValueError(f"--variants must include eager and name only {', '.join(VARIANTS)}")
        if min(args.rounds, args.steps_per_window) < 1 or args.warmup < 1:
            raise ValueError("--rounds and --steps-per-window must be >= 1, --warmup >= 1")
        if out.exists() and not args.overwrite:
            raise ValueError(f"{out} exists; pass --overwrite to replace it")
        section = method_spec(args.method).config_type.section  # the variants' daps.* keys go there
        shared = [o for o in args.overrides if not o.startswith(f"{section}.")]  # for the VQ-VAE denominator
        configs = {
            v: parse_overrides(get_preset(args.preset, "vqvae"), [*shared, *VARIANTS[v]]) if v.startswith("vqvae")
            else parse_overrides(get_preset(args.preset, args.method),
                                 [*args.overrides, *(re.sub(r"^daps\.", f"{section}.", o) for o in VARIANTS[v])])
            for v in names
        }
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda but CUDA is not available")
        if device.type != "cuda" and any(c.train.cuda_graph or c.train.tf32 for c in configs.values()):
            raise ValueError("the graphed and tf32 variants need --device cuda")
        trained = load_trained(args.from_run, configs["eager"], device) if args.from_run else None
    except (ValueError, OSError) as err:  # daps's UserError included; OSError: --from's data not found
        print(f"benchmarks/step_variants.py: error: {err}", file=sys.stderr)
        return 2
    kept = apply_freed_memory(args.keep_freed_memory)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = shlex.join(["python", *(sys.argv if argv is None else ["benchmarks/step_variants.py", *argv])])
    code = git_revision()

    runs, warmup_s, counters, sharing = {}, {}, {}, None
    for v, cfg in configs.items():
        model, optimizers, x, generator = setup(cfg, device)
        if trained is not None:
            weights, x = trained
            if cfg.method == configs["eager"].method:
                model.load_state_dict(weights)
        if v == "eager":  # before any training step: the codes of the weights as loaded
            sharing = distinct_prefixes(model, x, cfg.train.seed)
        runs[v] = make_step(cfg, model, optimizers, x, generator, iter(range(10**9)))
        warmup_s[v] = []
        for _ in range(warmup_steps(cfg, args.warmup)):
            synchronize(device)
            t0 = time.perf_counter()
            runs[v]()
            warmup_s[v].append(time.perf_counter() - t0)
        counters[v] = dynamo_counters()  # cumulative: compare with the variant before
        print(f"{v}: warm-up steps {', '.join(f'{t:.1f}' for t in warmup_s[v])} s", file=sys.stderr, flush=True)

    rates: dict[str, list[float]] = {v: [] for v in names}
    for r in range(args.rounds):
        for v in names:
            rates[v] += time_windows(runs[v], 1, args.steps_per_window, device)
        print(f"round {r + 1}: " + ", ".join(f"{v} {rates[v][-1]:.3g}" for v in names), file=sys.stderr, flush=True)

    cfg = configs["eager"]
    results = {
        v: {
            "overrides": VARIANTS[v],
            "steps_per_s": {"median": statistics.median(rates[v]), "rounds": rates[v]},
            "relative_to_eager": statistics.median(a / b for a, b in zip(rates[v], rates["eager"])),
            "warmup_s": warmup_s[v],
            "dynamo_counters_after_warmup": counters[v],
        }
        for v in names
    }
    report = {
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "code": code,
        "machine": machine_info(device),
        "preset": args.preset,
        "method": args.method,
        "batch_size": cfg.train.batch_size,
        "num_samples": int(getattr(cfg.options, "num_samples", 1)),
        "settings": {"rounds": args.rounds, "steps_per_window": args.steps_per_window, "warmup": args.warmup,
                     "overrides": args.overrides, "freed_memory_kept": kept, "from": args.from_run or None},
        "dynamo_counters_end": dynamo_counters(),
        "distinct_prefixes": sharing,
        "results": results,
    }
    m = report["machine"]
    start = starting_point(args.from_run)
    lines = [
        f"{args.method} step at `{args.preset}` (B={report['batch_size']}, K={report['num_samples']}), "
        f"{args.rounds} interleaved rounds of {args.steps_per_window} steps after {args.warmup} warm-up steps each, "
        f"{start}",
        "",
        "| variant | overrides | steps/s (median) | per round | × eager (median of per-round ratios) | warm-up s |",
        "|---|---|---|---|---|---|",
    ]
    for v, res in results.items():
        lines.append(
            f"| {v} | {' '.join(res['overrides']) or '-'} | {res['steps_per_s']['median']:.3g} | "
            f"{', '.join(f'{x:.3g}' for x in res['steps_per_s']['rounds'])} | {res['relative_to_eager']:.2f} | "
            f"{', '.join(f'{t:.1f}' for t in res['warmup_s'])} |"
        )
    if sharing is not None:
        shown = [f"{100 * f:.0f}" for f in sharing["per_position"]]
        shown = shown if len(shown) <= 12 else [*shown[:8], "...", *shown[-2:]]
        lines += ["", f"Distinct (input, prefix) pairs among the K codes of the batch, before the first step: "
                      f"{100 * sharing['fraction']:.1f} % of the B·K·T positions (by position: {', '.join(shown)} %)."]
    lines += [
        "",
        f"torch.dynamo counters at the end: {json.dumps(report['dynamo_counters_end'])}",
        (
            f"Machine: {m['gpu'] or m['cpu']} ({m['cpu_capability']}, bf16 instructions: {m['cpu_bf16']}), "
            f"{m['cpus_usable']} usable of {m['cpu_count']} CPUs, "
            f"{m['torch_threads']} torch threads, torch {m['torch']}, Python {m['python']}; code {code}; "
            f"{report['created_utc']}."
        ),
        f"Command: `{command}`",
    ]
    table = "\n".join(lines) + "\n"
    print(table, end="")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(report, indent=2) + "\n")
    write_text_atomic(out.with_suffix(".md"), table)
    print(f"wrote {out} and {out.with_suffix('.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
