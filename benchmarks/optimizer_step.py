"""The optimizer step alone: the batched step (fused AdamW, stacked unit-wise clip) against the per-parameter one.

    python benchmarks/optimizer_step.py [--presets mnist,cifar10,lafan1-h1] [--methods daps,vqvae] [--device cpu]
        [--rounds 3] [--repeats 10] [--out docs/benchmarks/optimizer-step] [--name NAME] [--overwrite] [key=value ...]

For each (preset, method) the model and its optimizers are built as ``daps train`` builds them; one forward and
backward on random inputs gives the gradients; then ``Optimizers.step()`` is timed for both variants on the same
model, interleaved (``--rounds`` rounds of ``--repeats`` steps each; median ms per step). Also, per variant and
step: the aten operations dispatched (``TorchDispatchMode``), split into those that can launch a kernel and
metadata-only ones (views, permutes, splits), next to the kernels of the step's forward and backward (as the
dispatch mode sees them: on CUDA the backward runs in autograd's device threads, outside it). On a GPU, where
the tiny models of these presets are bound by launches, the kernel count is what the step costs; on a CPU the
arithmetic dominates.

Writes ``OUT/NAME.json`` and ``OUT/NAME.md`` (NAME defaults to ``<device>-<UTC time>``); an existing file is
kept unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernels import METADATA  # noqa: E402  (views: no kernel)
from run import git_revision, machine_info, new_report_paths, setup, synchronize  # noqa: E402

from daps.config_io import applicable_overrides, check_overrides_used, parse_overrides  # noqa: E402
from daps.errors import UserError  # noqa: E402
from daps.optim import Optimizers  # noqa: E402
from daps.presets import get_preset  # noqa: E402


class CountOps(TorchDispatchMode):
    """Counts the aten operations dispatched inside it: those that may launch a kernel, and metadata-only ones."""

    def __init__(self) -> None:
        super().__init__()
        self.kernels = self.metadata = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        if name == "_local_scalar_dense":  # .item() / float(): a read, not a kernel
            pass
        elif name in METADATA:
            self.metadata += 1
        else:
            self.kernels += 1
        return func(*args, **(kwargs or {}))


def bench(preset: str, method: str, device: torch.device, rounds: int, repeats: int, overrides: list[str]) -> dict:
    cfg = get_preset(preset, method)
    cfg = parse_overrides(cfg, applicable_overrides(cfg, overrides))  # daps.* settings skip vqvae
    model, optimizers, x, generator = setup(cfg, device)
    specs = model.optimizer_specs(cfg.optim.lr, cfg.optim.grad_clip)
    variants = {
        "per_parameter": Optimizers(model, specs, cfg.optim.weight_decay, batched=False),
        "batched": optimizers,
    }
    optimizers.zero_grad()
    with CountOps() as forward:
        out = model(x, 0, generator=generator)
    with CountOps() as backward:
        out.loss.backward()
    row: dict = {"preset": preset, "method": method, "parameters": sum(len(s.params) for s in specs),
                 "optimizers": len(specs), "forward_kernels": forward.kernels, "backward_kernels": backward.kernels}
    for name, opt in variants.items():
        opt.step()  # warm-up (state allocation)
        with CountOps() as count:
            opt.step()
        row[name] = {"kernels": count.kernels, "metadata": count.metadata, "ms": []}
    for _ in range(rounds):
        for name, opt in variants.items():
            times = []
            for _ in range(repeats):
                synchronize(device)
                t0 = time.perf_counter()
                opt.step()
                synchronize(device)
                times.append(time.perf_counter() - t0)
            row[name]["ms"].append(1000 * statistics.median(times))
    for name in variants:
        row[name]["ms_median"] = statistics.median(row[name]["ms"])
    row["speedup"] = row["per_parameter"]["ms_median"] / row["batched"]["ms_median"]
    return row


def table(rows: list[dict]) -> str:
    lines = [
        "| preset | method | tensors | per-parameter ms | batched ms | speed-up | kernels (per-param -> batched) "
        "| metadata ops | forward + backward kernels |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a, b = r["per_parameter"], r["batched"]
        lines.append(
            f"| {r['preset']} | {r['method']} | {r['parameters']} | {a['ms_median']:.2f} | {b['ms_median']:.2f} "
            f"| {r['speedup']:.2f}x | {a['kernels']} -> {b['kernels']} | {a['metadata']} -> {b['metadata']} "
            f"| {r['forward_kernels']} + {r['backward_kernels']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default="mnist,cifar10,lafan1-h1")
    p.add_argument("--methods", default="daps,vqvae")
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", default="docs/benchmarks/optimizer-step")
    p.add_argument("--name", default="")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("overrides", nargs="*", help="key=value settings applied to every preset (e.g. a smaller model)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    paths = new_report_paths("optimizer_step.py", args.out, args.name, device.type, args.overwrite)
    if paths is None:
        return 2
    try:
        check_overrides_used(args.overrides)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rows = []
    for preset in args.presets.split(","):
        for method in args.methods.split(","):
            rows.append(bench(preset, method, device, args.rounds, args.repeats, args.overrides))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    machine = machine_info(device)
    command = "python benchmarks/optimizer_step.py " + " ".join(argv if argv is not None else sys.argv[1:])
    where = machine["gpu"] or machine["cpu"]
    text = (
        table(rows)
        + f"\nMachine: {where}, {machine['torch_threads']} torch threads, torch {machine['torch']}; code "
        f"{git_revision()}; {datetime.now(timezone.utc):%Y-%m-%dT%H:%M:%SZ}.\n"
        f"Median ms of one `Optimizers.step()` ({args.rounds} interleaved rounds of {args.repeats}); kernels = aten "
        "operations that may launch one, per step.\nCommand: `" + command + "`\n"
    )
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine, "code": git_revision(), "command": command, "rows": rows}
    for path, content in zip(paths, [json.dumps(report, indent=2) + "\n", text]):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(content)
        tmp.replace(path)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
