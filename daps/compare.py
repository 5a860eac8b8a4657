"""``compare``: train several methods under one budget and write a Table-1-style comparison.

Every method gets the same data, encoder size, bottleneck, batch, optimizer-step budget and seeds; only
each method's own preset defaults differ (its schedules, encoder kind, learning rate). The run folders
``<out>/<method>/seed<s>`` are ordinary training runs: a finished one is reused, an interrupted one
resumed, so the comparison can be stopped and started again.

Outputs in ``<out>``: ``results.md`` and ``results.csv`` (mean and standard error over seeds),
``curves.png`` (validation log p against steps), ``reconstructions.png`` (the same test images through
every method) and ``commands.sh`` (the exact commands that reproduce every run).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import shlex
from dataclasses import dataclass
from pathlib import Path

import torch

from daps.checkpoint import load_model
from daps.config import ALL_METHODS, Config, get_preset, parse_overrides
from daps.data import dataset_spec, val_batches
from daps.plots import read_metrics, save_comparison_curves, save_comparison_reconstructions

log = logging.getLogger("daps")

# (column label, summary.json key, format, higher is better?)
COLUMNS = [
    ("beta-ELBO", "beta_elbo", ".2f"),
    ("ELBO", "elbo", ".2f"),
    ("log p(x\\|z)", "log_p", ".2f"),
    ("L2", "l2", ".3f"),
    ("PSNR (dB)", "psnr", ".2f"),
    ("SSIM", "ssim", ".3f"),
    ("FID", "fid", ".2f"),
    ("codebook use", "codebook_utilization", ".3f"),
    ("perplexity", "code_perplexity", ".1f"),
]


@dataclass
class Run:
    method: str
    seed: int
    cfg: Config

    @property
    def out_dir(self) -> Path:
        return Path(self.cfg.train.out_dir)


def latent_bits(cfg: Config) -> float:
    """Bits of the bottleneck: T log2 V for codes, prod(levels) for FSQ, 32 per float for the Gaussian VAE
    (the paper's capacity count)."""
    if cfg.method == "vae":
        return 32.0 * cfg.vae.latent_dim
    if cfg.method == "fsq":
        return cfg.encoder.num_tokens * math.log2(math.prod(cfg.fsq.levels))
    return cfg.encoder.num_tokens * math.log2(cfg.encoder.vocab_size)


def plan_runs(
    preset: str, methods: list[str], steps: int, seeds: list[int], out: Path, overrides: list[str]
) -> list[Run]:
    """One config per (method, seed); ``overrides`` apply to every method, after the budget settings."""
    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; choose from: {', '.join(ALL_METHODS)}")
    if len(set(methods)) != len(methods):
        raise ValueError(f"--methods lists a method twice: {','.join(methods)}")
    if steps <= 0 or not seeds:
        raise ValueError("--steps must be positive and --seeds at least 1")
    owned = {"train.steps": "--steps", "train.seed": "--seeds", "train.out_dir": "--out"}
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key in owned:
            raise ValueError(f"compare sets {key} for every run; use {owned[key]} instead of {item!r}")
    runs = []
    for method in methods:
        for seed in seeds:
            budget = [
                f"train.steps={steps}",
                f"train.seed={seed}",
                f"train.out_dir={out / method / f'seed{seed}'}",
                f"train.eval_every={max(steps // 10, 1)}",
                f"train.ckpt_every={max(steps // 4, 1)}",
                f"train.log_every={max(min(steps // 50, 50), 1)}",
            ]
            cfg = parse_overrides(get_preset(preset, method), [*budget, *overrides])
            runs.append(Run(method, seed, cfg))
    return runs


def command_for(run: Run, preset: str, overrides: list[str]) -> str:
    """The ``daps train`` command that reproduces ``run``."""
    c = run.cfg.train
    args = [
        "daps", "train", "--preset", preset, "--method", run.method, f"train.steps={c.steps}", f"train.seed={c.seed}",
        f"train.out_dir={c.out_dir}", f"train.eval_every={c.eval_every}", f"train.ckpt_every={c.ckpt_every}",
        f"train.log_every={c.log_every}", *overrides,
    ]
    return shlex.join(args)


def run_all(runs: list[Run], device: torch.device | None = None) -> None:
    """Train every run that has not finished; a run with checkpoints is resumed."""
    from daps.train import train

    for i, run in enumerate(runs, 1):
        summary = run.out_dir / "summary.json"
        if summary.exists() and json.loads(summary.read_text()).get("step") == run.cfg.train.steps:
            log.info("[%d/%d] %s seed %d: finished, reusing %s", i, len(runs), run.method, run.seed, run.out_dir)
            continue
        resume = (run.out_dir / "checkpoints" / "latest").is_file()
        log.info(
            "[%d/%d] %s seed %d: %s %d steps -> %s", i, len(runs), run.method, run.seed,
            "resuming" if resume else "training", run.cfg.train.steps, run.out_dir,
        )
        train(run.cfg, resume=resume, overwrite=not resume and run.out_dir.exists(), device=device)


def _mean_se(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def _steps_per_s(run: Run) -> float:
    rows = [r["steps_per_s"] for r in read_metrics(run.out_dir / "metrics.jsonl") if r.get("split") == "train"]
    rows = sorted(rows[1:] or rows)  # the first window includes warm-up
    return rows[len(rows) // 2] if rows else float("nan")


def collect(runs: list[Run]) -> list[dict]:
    """One row per method: mean and standard error over seeds of every column, plus bits and speed."""
    table = []
    for method in dict.fromkeys(r.method for r in runs):
        group = [r for r in runs if r.method == method]
        summaries = [json.loads((r.out_dir / "summary.json").read_text()) for r in group]
        row = {"method": method, "seeds": len(group), "bits": latent_bits(group[0].cfg)}
        for _, key, _ in COLUMNS:
            values = [s[key] for s in summaries if key in s]
            row[key], row[key + "_se"] = _mean_se(values) if values else (float("nan"), float("nan"))
        row["steps_per_s"], _ = _mean_se([_steps_per_s(r) for r in group])
        row["num_images"] = summaries[0].get("num_images")
        table.append(row)
    return table


def _cell(mean: float, se: float, fmt: str) -> str:
    if math.isnan(mean):
        return "—"
    if math.isnan(se):
        return format(mean, fmt)
    return f"{format(mean, fmt)} ± {format(se, fmt)}"


def write_tables(table: list[dict], out: Path, header: str) -> None:
    """``results.md`` (for people) and ``results.csv`` (for programs)."""
    labels = ["method", "bits", *(label for label, _, _ in COLUMNS), "train steps/s"]
    lines = [header, "", "| " + " | ".join(labels) + " |", "|" + "---|" * len(labels)]
    for row in table:
        cells = [row["method"], f"{row['bits']:.0f}"]
        cells += [_cell(row[key], row[key + "_se"], fmt) for _, key, fmt in COLUMNS]
        cells.append(f"{row['steps_per_s']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Mean ± standard error over seeds (no ± with one seed); validation images encoded with one stochastic "
        "code each (deterministic for fsq/vqvae), nats summed over pixels. '—': the method has no such quantity "
        "(no q for the quantizers, no discrete code for the Gaussian VAE) or it was not measured (FID without "
        "train.fid or without the Inception weights; SSIM on images smaller than 11x11).",
    ]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    keys = ["method", "seeds", "bits", *(k for _, key, _ in COLUMNS for k in (key, key + "_se")), "steps_per_s"]
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(table)


def compare(
    preset: str,
    methods: list[str],
    steps: int,
    seeds: list[int],
    out: str | Path,
    overrides: list[str] = (),
    device: torch.device | None = None,
    argv: list[str] | None = None,
) -> list[dict]:
    """Train (or reuse) every run, then write the tables, figures and commands into ``out``; returns the
    table rows."""
    out = Path(out)
    overrides = list(overrides)
    runs = plan_runs(preset, methods, steps, seeds, out, overrides)  # validates everything before training
    out.mkdir(parents=True, exist_ok=True)
    invocation = shlex.join(["daps", "compare", *argv]) if argv is not None else None
    commands = ["#!/usr/bin/env bash", "# Reproduces every run of this comparison; then re-run the compare command.", "set -e"]
    if invocation:
        commands.append(f"# {invocation}")
    commands += [command_for(r, preset, overrides) for r in runs]
    (out / "commands.sh").write_text("\n".join(commands) + "\n")

    run_all(runs, device)

    table = collect(runs)
    cfg0 = runs[0].cfg
    header = (
        f"# {preset}: {', '.join(methods)}\n\n"
        f"{steps} optimizer steps at batch {cfg0.train.batch_size}, seeds {', '.join(map(str, seeds))}, "
        f"data {cfg0.data.name}, validated on {table[0]['num_images']} test images, "
        f"device {device or ('cuda' if torch.cuda.is_available() else 'cpu')}, torch {torch.__version__}."
        + (f"\n\nCommand: `{invocation}`" if invocation else "")
    )
    write_tables(table, out, header)

    curves = {}
    for method in methods:
        curves[method] = [
            [(r["step"], r["log_p"]) for r in read_metrics(run.out_dir / "metrics.jsonl") if r.get("split") == "val"]
            for run in runs if run.method == method
        ]
    save_comparison_curves(curves, out / "curves.png", title=f"{preset}: validation log p(x|z), {steps} steps")

    standardize = dataset_spec(cfg0.data.name).standardize
    batches, _ = val_batches(cfg0.data, "test", 0, 500, torch.device("cpu"))
    test = next(iter(batches()))  # the first validation batch
    shown = standardize(test[torch.linspace(0, test.shape[0] - 1, 10).long()])
    recons = {}
    for method in methods:
        first = next(r for r in runs if r.method == method)
        model = load_model(first.out_dir, "cpu")
        with torch.no_grad():
            recons[method] = standardize.to_unit(model.reconstruct(shown, torch.Generator().manual_seed(0)).x_hat)
    save_comparison_reconstructions(
        standardize.to_unit(shown), recons, out / "reconstructions.png", title=f"{preset}, {steps} steps"
    )
    log.info("comparison written to %s (results.md, results.csv, curves.png, reconstructions.png, commands.sh)", out)
    return table


__all__ = ["compare", "latent_bits", "plan_runs"]
