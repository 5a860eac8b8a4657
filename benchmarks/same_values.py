"""Whether this checkout computes what an older commit computes: the same codes, log q, gradients and parameters.

    python benchmarks/same_values.py --revision REV [--presets mnist,cifar10,lafan1-h1] [--methods daps]
        [--batch-size 8] [--steps 3] [--out docs/benchmarks/same-values-REV] [--overwrite] [key=value ...]

For a change meant to make the step faster without changing what it computes (fewer kernels, another layout),
"the same values" is checked here rather than assumed. For each (preset, method), in each tree (this checkout,
and REV exported by ``git archive`` and run in a fresh process on its own package and its own
``benchmarks/run.py``, as ``benchmarks/against_revision.py`` does) the model is built as ``daps train`` builds it,
from the same seed, on the same random inputs of ``--batch-size``; for a categorical encoder K codes per input are
sampled from a seeded generator (codes, per-token log q and entropy), their teacher-forced log q is taken with its
gradient with respect to every encoder parameter; then ``--steps`` training steps run and every parameter of the
model is compared. Each quantity is reported as equal bit for bit, or by its largest absolute difference.

Writes ``OUT.json`` and ``OUT.md``; an existing file is kept unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def compute(preset: str, method: str, batch_size: int, steps: int, overrides: list[str]) -> dict:
    """The quantities of one (preset, method) in this process's package, as tensors by name."""
    import torch
    from run import is_categorical, num_codes_per_input, setup, step_once  # this tree's, or --package's

    from daps.config_io import applicable_overrides, parse_overrides
    from daps.presets import get_preset

    cfg = get_preset(preset, method)
    cfg = parse_overrides(cfg, applicable_overrides(cfg, [f"train.batch_size={batch_size}", *overrides]))
    model, optimizers, x, generator = setup(cfg, torch.device("cpu"))
    values: dict[str, torch.Tensor] = {}
    if is_categorical(model):
        encoder = model.encoder
        samples = encoder.sample(x, num_codes_per_input(model), torch.Generator().manual_seed(1))
        values.update(codes=samples.indices, sample_log_q=samples.token_log_q, entropy=samples.token_entropy)
        log_q = encoder.log_prob(x, samples.indices)
        params = [p for p in encoder.parameters() if p.requires_grad]
        grads = torch.autograd.grad(log_q.sum(), params, allow_unused=True)
        values["teacher_forced_log_q"] = log_q.detach()
        values["encoder_gradients"] = torch.cat([g.flatten() for g in grads if g is not None])
    for step in range(steps):
        step_once(model, optimizers, x, step, generator, cfg.train.precision)
    values["parameters_after_steps"] = torch.cat([p.detach().flatten() for p in model.parameters()])
    return values


def compare(a: dict, b: dict) -> dict[str, str]:
    """Per quantity: ``equal``, ``max |diff| = ...``, ``shape a vs b`` or ``missing``."""
    import torch

    out = {}
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            out[name] = "missing"
        elif a[name].shape != b[name].shape:
            out[name] = f"shape {tuple(a[name].shape)} vs {tuple(b[name].shape)}"
        elif torch.equal(a[name], b[name]):
            out[name] = "equal"
        elif a[name].is_floating_point():
            out[name] = f"max |diff| = {(a[name].double() - b[name].double()).abs().max().item():.3g}"
        else:
            out[name] = f"{int((a[name] != b[name]).sum())} of {a[name].numel()} differ"
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--revision", default="")
    p.add_argument("--presets", default="mnist,cifar10,lafan1-h1")
    p.add_argument("--methods", default="daps")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--out", default="")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--package", default="", help=argparse.SUPPRESS)  # the revision's run: that tree's run.py
    p.add_argument("--json-only", default="", help=argparse.SUPPRESS)  # the revision's run: its tensors, here
    p.add_argument("overrides", nargs="*", help="key=value settings applied to every preset")
    args = p.parse_args(argv)
    root = Path(args.package) if args.package else REPO  # its package and its benchmarks/run.py, first on the
    sys.path[:0] = [str(root / "benchmarks"), str(root)]  # path whatever else is installed
    import torch

    torch.set_num_threads(1)  # one thread in both trees: the same kernels' summation order
    pairs = [(preset, method) for preset in args.presets.split(",") for method in args.methods.split(",")]
    if args.json_only:  # the revision's run: its tensors, for the checkout's run to compare (torch.save)
        torch.save({f"{pr}/{m}": compute(pr, m, args.batch_size, args.steps, args.overrides) for pr, m in pairs},
                   args.json_only)
        return 0
    if not args.revision:
        print("same_values.py: error: --revision is required", file=sys.stderr)
        return 2
    out = Path(args.out or f"docs/benchmarks/same-values-{args.revision}")
    paths = [out.with_suffix(".json"), out.with_suffix(".md")]
    if not args.overwrite and any(path.exists() for path in paths):
        print(f"same_values.py: error: {paths[0]} exists; pass --overwrite or another --out", file=sys.stderr)
        return 2
    from against_revision import resolve_commit, run_on_revision
    from run import git_revision, machine_info

    from daps.runfolder import write_json_atomic, write_text_atomic

    commit = resolve_commit(args.revision)
    if commit is None:
        print(f"same_values.py: error: no commit {args.revision!r} in {REPO}", file=sys.stderr)
        return 2
    mine = {f"{pr}/{m}": compute(pr, m, args.batch_size, args.steps, args.overrides) for pr, m in pairs}
    theirs = run_on_revision(
        commit, Path(__file__).resolve(),
        ["--presets", args.presets, "--methods", args.methods, "--batch-size", str(args.batch_size),
         "--steps", str(args.steps), *args.overrides],
        load=torch.load,
    )
    rows = {key: compare(theirs[key], mine[key]) for key in mine}
    info = machine_info(torch.device("cpu"))
    report = {
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": shlex.join(["python", "benchmarks/same_values.py", *(argv if argv is not None else sys.argv[1:])]),
        "code": git_revision(), "revision": commit, "machine": info, "batch_size": args.batch_size,
        "steps": args.steps, "overrides": args.overrides, "results": rows,
        "all_equal": all(v == "equal" for row in rows.values() for v in row.values()),
    }
    names = sorted({name for row in rows.values() for name in row})
    lines = [f"This checkout ({report['code'][:12]}) against {commit[:12]}: the same values? (CPU, one thread, "
             f"B = {args.batch_size}, {args.steps} training steps)", "",
             "| preset / method | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines += [f"| {key} | " + " | ".join(row.get(n, "-") for n in names) + " |" for key, row in rows.items()]
    lines += ["", f"Machine: {info['cpu']}, torch {info['torch']}; code {report['code']}; {report['created_utc']}.",
              f"Command: `{report['command']}`"]
    text = "\n".join(lines) + "\n"
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(paths[0], report)
    write_text_atomic(paths[1], text)
    return 0 if report["all_equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
