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
    ("mean_cos_draw_exact", "E cos(draw, exact): how well one draw points the right way", False),
    ("snr", "SNR = |mean|^2 / E|draw - mean|^2", True),
    ("cos_mean_exact", "cos(mean, exact): the direction of the expectation", False),
)
"""(row key, title, log axis): the statistics tabled and plotted."""


def parse_grid(text: str) -> list[tuple[int, int]]:
    """``"1x4,2x8"`` -> ``[(1, 4), (2, 8)]`` (T tokens x V values), each enumerable."""
    grid = []
    for item in text.split(","):
        try:
            t, v = (int(n) for n in item.lower().split("x"))
        except ValueError:
            raise UserError(f"--grid entries are TxV (tokens x vocabulary), e.g. 2x4; got {item!r}") from None
        check_size(t, v)
        grid.append((t, v))
    if len(set(grid)) != len(grid):
        raise UserError(f"--grid {text!r} lists an entry twice")
    return grid


def key(t: int, v: int, seed: int) -> str:
    return f"T{t}-V{v}-seed{seed}"


def tables(runs: dict[str, dict], grid: list[tuple[int, int]], seeds: list[int]) -> str:
    """One Markdown table per statistic: estimators by grid entry, mean over seeds and (with several) the spread."""
    names = [r["estimator"] for r in next(iter(runs.values()))["rows"]]
    out = []
    for stat, title, _ in STATISTICS:
        head = [f"{t}x{v} ({v ** t})" for t, v in grid]
        lines = [f"### {title}", "", "| estimator | " + " | ".join(head) + " |", "|---|" + "---|" * len(grid)]
        for name in names:
            cells = []
            for t, v in grid:
                values = [row[stat] for seed in seeds if key(t, v, seed) in runs
                          for row in runs[key(t, v, seed)]["rows"] if row["estimator"] == name]
                if not values:
                    cells.append("-")
                    continue
                mean = statistics.fmean(values)
                spread = f" ({min(values):.3g}-{max(values):.3g})" if len(values) > 1 else ""
                cells.append(f"{mean:.3g}{spread}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        out += [*lines, ""]
    return "\n".join(out)


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
    for ax, (stat, title, log_axis) in zip(axes, STATISTICS):
        for i, name in enumerate(names):
            colour = f"C{i % 10}"
            for by_tokens in (True, False):
                points = []
                for t, v in lines[by_tokens]:
                    values = [row[stat] for seed in seeds if key(t, v, seed) in runs
                              for row in runs[key(t, v, seed)]["rows"] if row["estimator"] == name]
                    if values:
                        points.append((t * math.log2(v), statistics.fmean(values)))
                if points:
                    points.sort()
                    ax.plot(*zip(*points), "-o" if by_tokens else "--o", color=colour,
                            markerfacecolor=colour if by_tokens else "none",
                            label=name if by_tokens else None)
        ax.set_xlabel("log2 V^T (bits per code)")
        ax.set_title(title.split(":")[0], fontsize=9)
        if log_axis:
            ax.set_yscale("log")
    axes[0].legend(fontsize=6)
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
    p.add_argument("--out", default="docs/gradlab-dims")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="keep the runs of an earlier call with the same settings")
    group.add_argument("--overwrite", action="store_true", help="replace the results in --out")
    args = p.parse_args(argv)
    try:
        grid = parse_grid(args.grid)
        seeds = [int(s) for s in args.seeds.split(",")]
    except (UserError, ValueError) as err:
        p.error(str(err))
    out = Path(args.out)
    results = out / "results.json"
    settings = {"draws": args.draws, "pretrain_steps": args.pretrain_steps, "beta": args.beta,
                "num_samples": args.num_samples}
    runs: dict[str, dict] = {}
    if results.exists():
        if not (args.resume or args.overwrite):
            p.error(f"{results} exists; pass --resume to keep its runs or --overwrite to replace them")
        if args.resume:
            earlier = json.loads(results.read_text())
            if earlier.get("settings") != settings:
                p.error(f"--resume: {results} was made with other settings ({earlier.get('settings')})")
            runs = earlier["runs"]
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
            runs[key(t, v, seed)] = result
            report["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            write_json_atomic(results, report)
            print(f"T={t} V={v} seed {seed}: {result['wall_s']} s", flush=True)
    header = (f"# The estimator lab across the size of the code\n\n{args.draws} draws per estimator, K = "
              f"{args.num_samples}, beta = {args.beta}, encoder and decoder after {args.pretrain_steps} DAPS steps, "
              f"seeds {', '.join(map(str, seeds))} (mean, and min-max over seeds); columns TxV (V^T codes). "
              f"{report['machine']}, torch {report['torch']}, commit {report['commit']}.\n\n"
              f"Command: `{command}`\n\n")
    write_text_atomic(out / "results.md", header + tables(runs, grid, seeds))
    figure(runs, grid, seeds, out / "results.png")
    print((out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
