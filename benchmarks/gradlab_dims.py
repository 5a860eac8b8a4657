"""The estimator lab across the size of the code: every encoder-gradient estimator against the exact gradient as
the number of codes per input V^T grows, by more tokens T and by a larger vocabulary V.

    python benchmarks/gradlab_dims.py [--grid 1x4,2x4,3x4,4x4,5x4,6x4,2x2,2x8,2x16,2x32,2x64] [--seeds 0,1]
        [--draws 1000] [--pretrain-steps 200] [--beta 0.5] [--num-samples 8] [--out docs/gradlab-dims]
        [--resume | --overwrite]

Each grid entry ``TxV`` runs the lab of ``daps gradlab`` (``daps.gradlab.run_gradlab``: the real method modules,
the exact gradient by enumerating all V^T codes of a tiny encoder and decoder pretrained by DAPS) once per seed,
with the same estimators as ``daps gradlab``. K stays at ``--num-samples`` while the code space grows, which is the
question: how does a fixed number of samples per input fare as there are more codes to cover? Writes, into
``--out``: ``results.json`` (every row of every run, the machine, torch version, commit and command; rewritten
atomically after each run, so ``--resume`` after a kill redoes at most one), ``results.md`` (per statistic, one
table: estimators by grid entry, the mean over seeds and their spread) and ``results.png`` (the statistics against
log2 V^T).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from run import cpu_name, git_revision  # this script's folder is on sys.path

from daps.errors import UserError
from daps.gradlab import check_size, default_estimators, run_gradlab
from daps.plots import _pyplot, save_figure
from daps.runfolder import write_json_atomic, write_text_atomic

STATISTICS = (
    ("mean_cos_draw_exact", "E cos(draw, exact)", "how well one draw points the right way", False),
    ("snr_unbiased", "SNR", "|E draw|^2 / E|draw - E draw|^2, unbiased (values near 1/draws or below 0: not "
                     "resolved by this many draws); one value per seed", True),
    ("cos_mean_exact", "cos(mean, exact)", "the direction of the expectation (lowered by the noise of the mean "
                       "where the SNR is not resolved)", False),
)
"""(row key, short name, what it says, log axis): the statistics tabled and plotted. A log-axis statistic is not
averaged over seeds in the tables (its seeds can differ tenfold: each is shown) and is plotted as the geometric mean
of its positive values."""


class BadInput(Exception):
    """One line for the user (exit code 2)."""


def summary(values: list[float], log_axis: bool) -> str:
    """A table cell: the mean and min-max over seeds, or each seed's value for a log-axis statistic."""
    if log_axis:
        return ", ".join(f"{v:.3g}" for v in values)
    mean = statistics.fmean(values)
    return f"{mean:.3g}" + (f" ({min(values):.3g}-{max(values):.3g})" if len(values) > 1 else "")


def centre(values: list[float], log_axis: bool) -> float | None:
    """The plotted value over seeds: the mean, or the geometric mean of the positive values on a log axis."""
    if not log_axis:
        return statistics.fmean(values)
    positive = [v for v in values if v > 0]
    return statistics.geometric_mean(positive) if positive else None


def parse_grid(text: str) -> list[tuple[int, int]]:
    """``"1x4,2x8"`` -> ``[(1, 4), (2, 8)]`` (T tokens x V values), each enumerable."""
    grid = []
    for item in text.split(","):
        try:
            t, v = (int(n) for n in item.lower().split("x"))
        except ValueError:
            raise BadInput(f"--grid entries are TxV (tokens x vocabulary), e.g. 2x4; got {item!r}") from None
        try:
            check_size(t, v)
        except UserError as err:
            raise BadInput(f"--grid {item}: {err}") from None
        grid.append((t, v))
    if len(set(grid)) != len(grid):
        raise BadInput(f"--grid {text!r} lists an entry twice")
    return grid


def key(t: int, v: int, seed: int) -> str:
    return f"T{t}-V{v}-seed{seed}"


def tables(runs: dict[str, dict], grid: list[tuple[int, int]], seeds: list[int]) -> str:
    """One Markdown table per statistic: estimators by grid entry, mean over seeds and (with several) the spread."""
    names = [r["estimator"] for r in next(iter(runs.values()))["rows"]]
    head = [f"{t}x{v} ({v ** t})" for t, v in grid]
    params = [next((str(runs[key(t, v, seed)]["setup"]["num_params"]) for seed in seeds if key(t, v, seed) in runs),
                   "-") for t, v in grid]
    def setup_cells(field: str) -> str:
        return " | ".join(", ".join(f"{runs[key(t, v, seed)]['setup'][field]:.4g}" for seed in seeds
                                    if key(t, v, seed) in runs) or "-" for t, v in grid)

    out = ["The models (one value per seed): encoder parameters (the gradient's dimension; the output head grows "
           "with V), the β-ELBO J of the inputs and the norm of its exact gradient.", "",
           "| | " + " | ".join(head) + " |", "|---|" + "---|" * len(grid),
           "| parameters | " + " | ".join(params) + " |", f"| J (nats) | {setup_cells('objective')} |",
           f"| \\|grad J\\| | {setup_cells('exact_grad_norm')} |", ""]
    for stat, name, says, log_axis in STATISTICS:
        lines = [f"### {name}: {says}", "", "| estimator | " + " | ".join(head) + " |", "|---|" + "---|" * len(grid)]
        for name in names:
            cells = [summary(values, log_axis) if (values := _values(runs, t, v, seeds, name, stat)) else "-"
                     for t, v in grid]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        out += [*lines, ""]
    return "\n".join(out)


def _values(runs: dict[str, dict], t: int, v: int, seeds: list[int], name: str, stat: str) -> list[float]:
    """``stat`` of estimator ``name`` at ``TxV``, one value per seed that ran."""
    return [row[stat] for seed in seeds if key(t, v, seed) in runs
            for row in runs[key(t, v, seed)]["rows"] if row["estimator"] == name]


def figure(runs: dict[str, dict], grid: list[tuple[int, int]], seeds: list[int], path: Path) -> None:
    """The statistics against log2 V^T; solid lines and filled markers: more tokens (V fixed at the grid's most
    common V), dashed and hollow: a larger vocabulary (T fixed at the most common T of the other entries), one
    colour per estimator, the mean over seeds."""
    plt = _pyplot()
    names = [r["estimator"] for r in next(iter(runs.values()))["rows"]]
    fig, axes = plt.subplots(1, len(STATISTICS), figsize=(5 * len(STATISTICS), 4))
    v_common = statistics.mode(v for _, v in grid)
    others = [t for t, v in grid if v != v_common]
    t_common = statistics.mode(others) if others else None
    lines = {True: [(t, v) for t, v in grid if v == v_common], False: [(t, v) for t, v in grid if t == t_common]}
    for ax, (stat, short, _, log_axis) in zip(axes, STATISTICS):
        for i, name in enumerate(names):
            colour = f"C{i % 10}"
            for by_tokens in (True, False):
                points = []
                for t, v in lines[by_tokens]:
                    values = _values(runs, t, v, seeds, name, stat)
                    y = centre(values, log_axis) if values else None
                    if y is not None:
                        points.append((t * math.log2(v), y))
                if points:
                    points.sort()
                    ax.plot(*zip(*points), "-o" if by_tokens else "--o", color=colour,
                            markerfacecolor=colour if by_tokens else "none",
                            label=name if by_tokens else None)
        ax.set_xlabel("log2 V^T (bits per code)")
        ax.set_title(short + (" (geometric mean over seeds)" if log_axis else " (mean over seeds)"), fontsize=9)
        if log_axis:
            ax.set_yscale("log")
    axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))  # beside the panels, off the lines
    fig.suptitle(f"Estimators against the exact gradient as the code grows (solid: T grows at V={v_common}; "
                 f"dashed: V grows at T={t_common})", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--grid", default="1x4,2x4,3x4,4x4,5x4,6x4,2x2,2x8,2x16,2x32,2x64")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--draws", type=int, default=1000)
    p.add_argument("--pretrain-steps", type=int, default=200)
    p.add_argument("--beta", type=float, default=0.5)
    p.add_argument("--num-samples", type=int, default=8)
    p.add_argument("--out", default="docs/gradlab-dims", help="where the results go (default: %(default)s, committed)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="keep the runs of an earlier call with the same settings")
    group.add_argument("--overwrite", action="store_true", help="replace the results in --out")
    args = p.parse_args(argv)
    try:
        return run(args, argv)
    except BadInput as err:
        print(f"gradlab_dims.py: error: {err}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace, argv: list[str] | None) -> int:
    grid = parse_grid(args.grid)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise BadInput(f"--seeds takes integers like 0,1; got {args.seeds!r}") from None
    if args.draws < 2 or args.num_samples < 2 or args.pretrain_steps < 0:
        raise BadInput("--draws and --num-samples must be >= 2 and --pretrain-steps >= 0")
    out = Path(args.out)
    results = out / "results.json"
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {out} exists and is not a folder")
    existing = [out / name for name in ("results.json", "results.md", "results.png") if (out / name).exists()]
    if existing and not (args.resume or args.overwrite):
        raise BadInput(f"{existing[0]} exists; pass --resume to keep its runs or --overwrite to replace them")
    settings = {"draws": args.draws, "pretrain_steps": args.pretrain_steps, "beta": args.beta,
                "num_samples": args.num_samples}
    runs: dict[str, dict] = {}
    if args.resume and results.exists():
        try:
            earlier = json.loads(results.read_text())
            earlier_settings, runs = earlier["settings"], earlier["runs"]
        except (ValueError, KeyError, TypeError):
            raise BadInput(f"--resume: {results} is damaged; pass --overwrite to start again") from None
        if earlier_settings != settings:
            raise BadInput(f"--resume: {results} was made with other settings ({earlier_settings})")
    command = shlex.join(["python", *sys.argv]) if argv is None else shlex.join(["benchmarks/gradlab_dims.py", *argv])
    report = {"command": command, "machine": cpu_name(), "torch": torch.__version__, "commit": git_revision(),
              "settings": settings, "runs": runs}
    estimators = default_estimators(args.num_samples, 1.0, 1.0, 10)
    for t, v in grid:
        for seed in seeds:
            if key(t, v, seed) in runs:
                continue
            start = time.perf_counter()
            result = run_gradlab(estimators, args.draws, args.beta, num_samples=args.num_samples,
                                 pretrain_steps=args.pretrain_steps, seed=seed, num_tokens=t, vocab_size=v)
            result["wall_s"] = round(time.perf_counter() - start, 1)
            result["commit"] = report["commit"]  # of the call that ran it (a resumed sweep may span commits)
            runs[key(t, v, seed)] = result
            report["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            write_json_atomic(results, report)
            print(f"T={t} V={v} seed {seed}: {result['wall_s']} s", flush=True)
    commits = sorted({run.get("commit", "unknown") for run in runs.values()})
    header = (f"# The estimator lab across the size of the code\n\n{args.draws} draws per estimator, K = "
              f"{args.num_samples}, beta = {args.beta}, encoder and decoder after {args.pretrain_steps} DAPS steps, "
              f"seeds {', '.join(map(str, seeds))} (mean, and min-max over seeds); columns TxV (V^T codes). "
              f"{report['machine']}, torch {report['torch']}; runs at commit {', '.join(commits)}, tables "
              f"written at {report['commit']}.\n\n"
              f"Command: `{command}`\n\n")
    write_text_atomic(out / "results.md", header + tables(runs, grid, seeds))
    figure(runs, grid, seeds, out / "results.png")
    print((out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
