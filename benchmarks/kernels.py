"""Kernels per training step: the operations one step dispatches that may launch a kernel, phase by phase.

    python benchmarks/kernels.py [--presets mnist,cifar10,lafan1-h1] [--methods daps,vqvae] [--device cpu]
        [--revision REV] [--out docs/benchmarks/kernels] [--name NAME] [--overwrite] [key=value ...]

Why count: on a GPU the networks of these presets are so small that a step costs about what it launches. On the
H100 (BENCHMARKS.md, "GPU check on one NVIDIA H100") the step recorded as one CUDA graph took about 7 us per
kernel for DAPS and for VQ-VAE alike (mnist: 213 steps/s for ~650 kernels, 783 for ~200), so with graphs the
count *is* the step time there, and unlike a GPU time it can be taken on any machine.

For each (preset, method) the model and its optimizers are built as ``daps train`` builds them
(``benchmarks/run.py``'s ``setup``), two untimed steps run (the optimizer's state), and one more step is counted
under a ``TorchDispatchMode``: its forward by phase (``sampling``: the autoregressive loop, whose count per
sampled position is also given; ``teacher-forced``: the encoder's ``log_prob`` of the sampled codes;
``memory``: the encoder's patch / frame encoder, in both; ``rest``: decoder, likelihood and objective), then its
backward and the optimizer step. Counted: every aten operation but metadata ones (views, transposes,
``_unsafe_view``...), allocations (``empty``...) and host reads (``_local_scalar_dense``). On the CPU a few
operations dispatch differently from CUDA: the short-row softmax is five operations (one on CUDA) and attention
has the CPU's kernels; ``--device cuda`` counts what CUDA dispatches. The autoregressive encoder runs its whole
pass, as on a GPU by default (``encoder.share_prefixes=cpu`` computes shared prefixes once on the CPU only; ``on``
counts them).

``--revision REV`` counts the step of REV as well (its package and its ``benchmarks/run.py``, exported with
``git archive`` into a temporary folder as ``benchmarks/against_revision.py`` does), with this script's counting,
in a fresh process, and reports both. Writes ``OUT/NAME.json`` and ``OUT/NAME.md`` (NAME defaults to
``<device>-<UTC time>``); an existing file is kept unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parent.parent

METADATA = {
    "view", "_unsafe_view", "permute", "expand", "split", "split_with_sizes", "select", "slice", "t", "transpose",
    "detach", "alias", "as_strided", "unsqueeze", "squeeze", "unbind", "reshape", "_reshape_alias", "view_as",
}
"""Operations that only make a new view of a tensor's memory: no kernel."""
NO_KERNEL = {"empty", "new_empty", "empty_strided", "new_empty_strided", "empty_like", "_local_scalar_dense"}
"""Allocations (the CUDA caching allocator hands out memory without a kernel) and host reads (``.item()``)."""
PHASES = {
    ("sampling.py", "sample_autoregressive"): "sampling",
    ("ar_encoder.py", "log_prob"): "teacher-forced",
    ("ar_encoder.py", "memory"): "memory",
}
"""(file, function) of the package -> the forward phase of the operations dispatched inside it (the innermost)."""


def phase_of(frame: FrameType | None) -> str:
    """The phase of the innermost function of :data:`PHASES` on the stack above ``frame``; ``rest`` if none."""
    while frame is not None:
        code = frame.f_code
        phase = PHASES.get((Path(code.co_filename).name, code.co_name))
        if phase is not None and f"{os.sep}daps{os.sep}" in code.co_filename:
            return phase
        frame = frame.f_back
    return "rest"


def counting_mode(by_phase: bool):
    """A ``TorchDispatchMode`` whose ``counts`` (a Counter) gain, per kernel-launching operation, its phase
    (:func:`phase_of`, with ``by_phase``) or ``all``."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.counts: Counter[str] = Counter()
            self.ops: Counter[str] = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.__name__.split(".")[0]
            if name not in METADATA and name not in NO_KERNEL:
                self.counts[phase_of(sys._getframe(1)) if by_phase else "all"] += 1
                self.ops[name] += 1
            return func(*args, **(kwargs or {}))

    return Count()


def count_step(preset: str, method: str, device_name: str, overrides: list[str]) -> dict:
    """Kernels of one training step of ``method`` at ``preset``, by phase (see the module's docstring)."""
    import torch
    from run import autocast, setup  # this tree's, or --package's

    from daps.config_io import applicable_overrides, parse_overrides
    from daps.presets import get_preset

    device = torch.device(device_name)
    cfg = get_preset(preset, method)
    cfg = parse_overrides(cfg, applicable_overrides(cfg, overrides))
    model, optimizers, x, generator = setup(cfg, device)
    precision = cfg.train.precision
    for module in model.modules():  # what a GPU runs by default: the whole pass (encoder.share_prefixes=cpu shares
        if getattr(module, "share_prefixes", None) == "cpu":  # on the CPU only; absent before 22d9467)
            module.share_prefixes = "off"

    def forward(step: int):
        with autocast(device, precision):
            return model(x, step, generator=generator)

    for step in range(2):  # the optimizer's state, lazily built caches
        out = forward(step)
        optimizers.zero_grad()
        out.loss.backward()
        optimizers.step()
    with counting_mode(by_phase=True) as fwd:
        out = forward(2)
    optimizers.zero_grad()
    with counting_mode(by_phase=False) as bwd:
        out.loss.backward()
    with counting_mode(by_phase=False) as opt:
        optimizers.step()
    tokens = getattr(getattr(model, "encoder", None), "num_tokens", None)
    row = {
        "preset": preset, "method": method,
        "forward": dict(sorted(fwd.counts.items())), "backward": bwd.counts["all"], "optimizer": opt.counts["all"],
        "tokens": tokens,
        "forward_ops": dict(fwd.ops.most_common()), "backward_ops": dict(bwd.ops.most_common()),
    }
    row["total"] = sum(row["forward"].values()) + row["backward"] + row["optimizer"]
    sampling = row["forward"].get("sampling", 0)
    row["sampling_per_position"] = sampling / tokens if sampling and tokens else None
    return row


def table(rows: list[dict], old: dict[tuple[str, str], dict] | None) -> str:
    """Markdown: one line per (preset, method); with ``old``, each count as ``old -> new``."""
    def cell(row: dict, get) -> str:
        new = get(row)
        if old is None:
            return _fmt(new)
        before = old.get((row["preset"], row["method"]))
        return f"{_fmt(get(before)) if before else '-'} -> {_fmt(new)}"

    columns = [
        ("sampling", lambda r: r["forward"].get("sampling", 0)),
        ("per position", lambda r: r["sampling_per_position"]),
        ("teacher-forced", lambda r: r["forward"].get("teacher-forced", 0)),
        ("memory", lambda r: r["forward"].get("memory", 0)),
        ("rest of forward", lambda r: r["forward"].get("rest", 0)),
        ("backward", lambda r: r["backward"]),
        ("optimizer", lambda r: r["optimizer"]),
        ("step", lambda r: r["total"]),
    ]
    lines = ["| preset | method | " + " | ".join(name for name, _ in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for r in rows:
        lines.append(f"| {r['preset']} | {r['method']} | " + " | ".join(cell(r, get) for _, get in columns) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if isinstance(value, float) and not value.is_integer() else f"{int(value)}"


def count_all(presets: list[str], methods: list[str], device: str, overrides: list[str]) -> list[dict]:
    return [count_step(preset, method, device, overrides) for preset in presets for method in methods]


def count_revision(commit: str, args: argparse.Namespace) -> list[dict]:
    """The counts of ``commit`` (this script on that commit's package, in a fresh process)."""
    from against_revision import run_on_revision

    return run_on_revision(commit, Path(__file__).resolve(), [
        "--presets", args.presets, "--methods", args.methods, "--device", args.device, *args.overrides])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default="mnist,cifar10,lafan1-h1")
    p.add_argument("--methods", default="daps,vqvae")
    p.add_argument("--device", default="cpu")
    p.add_argument("--revision", default="", help="also count this commit's step (anything git rev-parse takes)")
    p.add_argument("--out", default="docs/benchmarks/kernels")
    p.add_argument("--name", default="")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--package", default="", help=argparse.SUPPRESS)  # --revision's child: that tree's run.py
    p.add_argument("--json-only", default="", help=argparse.SUPPRESS)  # --revision's child: the rows, to this file
    p.add_argument("overrides", nargs="*", help="key=value settings applied to every preset")
    args = p.parse_args(argv)
    root = Path(args.package) if args.package else REPO  # its package and its benchmarks/run.py, first on the
    sys.path[:0] = [str(root / "benchmarks"), str(root)]  # path whatever else is installed
    import torch

    from daps.errors import UserError
    from daps.runfolder import write_json_atomic, write_text_atomic

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("kernels.py: error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    presets, methods = args.presets.split(","), args.methods.split(",")
    if args.json_only:
        write_json_atomic(Path(args.json_only), count_all(presets, methods, args.device, args.overrides))
        return 0
    from run import git_revision, machine_info, new_report_paths

    paths = new_report_paths("kernels.py", args.out, args.name, args.device.split(":")[0], args.overwrite)
    if paths is None:
        return 2
    old_commit = None
    if args.revision:  # before counting, so that a mistyped revision costs nothing
        from against_revision import resolve_commit

        old_commit = resolve_commit(args.revision)
        if old_commit is None:
            print(f"kernels.py: error: no commit {args.revision!r} in {REPO}", file=sys.stderr)
            return 2
    try:
        rows = count_all(presets, methods, args.device, args.overrides)
    except (UserError, KeyError, ValueError) as err:
        print(f"kernels.py: error: {err}", file=sys.stderr)
        return 2
    old_rows = None
    if old_commit is not None:
        old_rows = {(r["preset"], r["method"]): r for r in count_revision(old_commit, args)}
    info = machine_info(torch.device(args.device))
    report = {
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": shlex.join(["python", "benchmarks/kernels.py", *(argv if argv is not None else sys.argv[1:])]),
        "code": git_revision(), "machine": info, "device": args.device, "overrides": args.overrides,
        "rows": rows, "revision": old_commit, "revision_rows": list(old_rows.values()) if old_rows else None,
    }
    heading = (f"Kernels per training step ({args.device}), counted with `benchmarks/kernels.py`"
               + (f": {old_commit[:12]} -> this checkout" if old_commit else ""))
    footer = (f"Machine: {info['cpu']}, torch {info['torch']}" + (f", {info['gpu']}" if info.get("gpu") else "")
              + f"; code {report['code']}; {report['created_utc']}.\nCommand: `{report['command']}`\n")
    text = f"{heading}\n\n{table(rows, old_rows)}\n{footer}"
    print(text)
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(paths[0], report)
    write_text_atomic(paths[1], text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
