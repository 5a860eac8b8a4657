"""``compare``: train several methods under one budget and write a Table-1-style comparison.

Every method gets the same data, encoder size, bottleneck, batch, optimizer-step budget and seeds; only
each method's own preset defaults differ (its schedules, encoder kind, learning rate). The run folders
``<out>/<method>/seed<s>`` are ordinary training runs: a finished one is reused, an interrupted one
resumed, so the comparison can be stopped and started again. A run folder is reused or resumed only when its
config is the one this comparison would train (up to :data:`NOT_COMPARED`); otherwise ``compare`` refuses
before training anything, naming the run and the differing keys, and ``overwrite`` retrains such runs.
``<out>`` carries the ``compare`` marker of :mod:`daps.runfolder` and is locked while ``compare`` writes it.

Outputs in ``<out>``: ``results.md`` and ``results.csv`` (mean and standard error over seeds),
``curves.png`` (validation log p against steps), ``reconstructions.png`` (the same test images through
every method) and ``commands.sh`` (the exact commands that reproduce every run).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from daps.checkpoint import load_model, read_config
from daps.config import Config
from daps.config_io import applicable_overrides, check_overrides_used, config_differences, parse_overrides
from daps.data import dataset_spec, eval_set
from daps.errors import UserError
from daps.methods import METHODS, method_spec
from daps.plots import read_metrics, save_comparison_curves, save_comparison_reconstructions
from daps.presets import get_preset
from daps.runfolder import (
    LOCK,
    TEMP_PATTERNS,
    FolderLock,
    OutputFolderError,
    has_content,
    is_output_folder,
    prepare_output_folder,
    read_marker,
    refuse_precious,
    write_marker,
    write_text_atomic,
)

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


OUTPUTS = ("results.md", "results.csv", "curves.png", "reconstructions.png", "commands.sh")
"""The files ``compare`` writes into its folder (besides the run folders ``<method>/seed<s>``)."""

NOT_COMPARED = frozenset({
    "train.out_dir", "train.progress", "train.stop_after", "train.ckpt_every", "train.keep_checkpoints",
    "train.max_skipped_steps", "data.download",
})
"""Settings that change nothing compare reads (resume is exact, so checkpoints do not matter): a run folder that
differs from the planned run only in these is reused or resumed."""


@dataclass
class Run:
    method: str
    seed: int
    cfg: Config
    action: str = "train"
    """What :func:`check_runs` decided: ``train`` (new folder), ``reuse``, ``resume`` or ``retrain``."""

    @property
    def out_dir(self) -> Path:
        return Path(self.cfg.train.out_dir)


def latent_bits(cfg: Config) -> float:
    """Bits of the bottleneck, as the method's spec counts them (T log2 V for codes, T log2 prod(levels) for FSQ,
    32 per float for the Gaussian VAE: the paper's capacity count)."""
    return method_spec(cfg.method).bits(cfg)


def plan_runs(
    preset: str, methods: list[str], steps: int, seeds: list[int], out: Path, overrides: list[str]
) -> list[Run]:
    """One config per (method, seed); ``overrides`` apply to every method, after the budget settings."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UserError(f"unknown method(s) {', '.join(unknown)}; choose from: {', '.join(METHODS)}")
    if len(set(methods)) != len(methods):
        raise UserError(f"--methods lists a method twice: {','.join(methods)}")
    if steps <= 0 or not seeds:
        raise UserError("--steps must be positive and --seeds at least 1")
    owned = {"train.steps": "--steps", "train.seed": "--seeds", "train.out_dir": "--out"}
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key in owned:
            raise UserError(f"compare sets {key} for every run; use {owned[key]} instead of {item!r}")
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
            cfg = get_preset(preset, method)
            cfg = parse_overrides(cfg, [*budget, *applicable_overrides(cfg, overrides)])
            runs.append(Run(method, seed, cfg))
    check_overrides_used(overrides)
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


def _finished(run: Run) -> bool:
    try:
        summary = json.loads((run.out_dir / "summary.json").read_text())
    except (OSError, ValueError):  # missing, or damaged by a kill: resuming recreates it
        return False
    return isinstance(summary, dict) and summary.get("step") == run.cfg.train.steps


def check_runs(runs: list[Run], overwrite: bool = False) -> None:
    """Decide each run's ``action`` before anything is trained, so that a refusal costs nothing.

    A run folder is reused (finished) or resumed only if its ``config.json`` is the config this comparison
    would train, up to :data:`NOT_COMPARED`: otherwise its numbers (or the ones it would be extended to) are not
    what ``commands.sh`` reproduces. Such a folder is refused with the differing keys, or retrained from scratch
    when ``overwrite``. A folder that is not a daps run is always refused.
    """
    for run in runs:
        folder = run.out_dir
        what = f"compare run {folder}"
        refuse_precious(folder, what)
        if not has_content(folder):
            run.action = "train"
            continue
        if not is_output_folder(folder, "train"):
            raise OutputFolderError(f"{what} exists and is not a daps run folder; choose another --out")
        if not (folder / "config.json").exists():  # stopped before it wrote anything: train starts it in place
            run.action = "resume"
            continue
        try:
            diffs = config_differences(read_config(folder / "config.json"), run.cfg, NOT_COMPARED)
            problem = ", ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in diffs.items())
        except ValueError as err:  # a damaged or foreign config.json (the message names the file)
            diffs, problem = {"config.json": (None, None)}, str(err)
        if not diffs:
            run.action = "reuse" if _finished(run) else "resume"
        elif overwrite:
            run.action = "retrain"
            log.warning("%s was trained with another config (%s): --overwrite retrains it", folder, problem)
        else:
            raise OutputFolderError(
                f"{what} was trained with another config ({problem}); its results would not be the ones "
                "commands.sh reproduces: pass --overwrite to retrain it, or choose another --out"
            )


def run_all(runs: list[Run], device: torch.device | None = None) -> None:
    """Carry out each run's ``action`` (see :func:`check_runs`): train, resume or retrain it, or reuse it."""
    from daps.train import train

    for i, run in enumerate(runs, 1):
        if run.action == "reuse":
            log.info("[%d/%d] %s seed %d: finished, reusing %s", i, len(runs), run.method, run.seed, run.out_dir)
            continue
        log.info(
            "[%d/%d] %s seed %d: %s %d steps -> %s", i, len(runs), run.method, run.seed,
            {"train": "training", "resume": "resuming", "retrain": "retraining"}[run.action], run.cfg.train.steps,
            run.out_dir,
        )
        train(run.cfg, resume=run.action == "resume", overwrite=run.action == "retrain", device=device)


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
    write_text_atomic(out / "results.md", "\n".join(lines) + "\n")
    keys = ["method", "seeds", "bits", *(k for _, key, _ in COLUMNS for k in (key, key + "_se")), "steps_per_s"]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=keys, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(table)
    write_text_atomic(out / "results.csv", text.getvalue())


def _is_legacy_compare(out: Path) -> bool:
    """A compare folder written before the marker existed: nothing but compare's outputs and method folders, with
    at least one method's training run (a user's folder that only holds a ``results.md`` is not one)."""
    entries = list(out.iterdir())
    has_run = any(
        p.name in METHODS and p.is_dir() and any(is_output_folder(run, "train") for run in p.iterdir())
        for p in entries
    )  # runs are <method>/seed<N>
    return has_run and all(
        (p.name in (*OUTPUTS, LOCK) and p.is_file()) or (p.name in METHODS and p.is_dir())
        or any(p.match(pattern) for pattern in TEMP_PATTERNS)
        for p in entries
    )


def prepare_compare_folder(out: Path) -> Path:
    """The compare folder, created and marked ``compare``; an existing compare folder is re-entered (its runs
    are checked one by one by :func:`check_runs`), any other existing folder is refused."""
    if not has_content(out):
        return prepare_output_folder(out, "compare", overwrite=False)
    refuse_precious(out, "--out")
    if out.is_symlink() or not out.is_dir():
        raise OutputFolderError(f"--out {out} exists and is not a folder")
    marker = read_marker(out)
    if marker != "compare":
        if marker is not None or not _is_legacy_compare(out):
            why = f"it is a daps {marker} folder" if marker is not None else "no .daps marker"
            raise OutputFolderError(
                f"--out {out} exists and is not a daps compare folder ({why}); choose another folder"
            )
        write_marker(out, "compare")
    return out


def compare(
    preset: str,
    methods: list[str],
    steps: int,
    seeds: list[int],
    out: str | Path,
    overrides: Sequence[str] = (),
    device: torch.device | None = None,
    argv: list[str] | None = None,
    overwrite: bool = False,
) -> list[dict]:
    """Train (or reuse) every run, then write the tables, figures and commands into ``out``; returns the
    table rows. ``overwrite``: retrain run folders whose config differs from this comparison's (else refused)."""
    out = Path(out)
    overrides = list(overrides)
    runs = plan_runs(preset, methods, steps, seeds, out, overrides)  # validates everything before training
    prepare_compare_folder(out)
    with FolderLock(out):
        check_runs(runs, overwrite)
        return _compare(runs, preset, methods, steps, seeds, out, overrides, device, argv)


def _compare(runs, preset, methods, steps, seeds, out, overrides, device, argv) -> list[dict]:
    invocation = shlex.join(["daps", "compare", *argv]) if argv is not None else None
    commands = [
        "#!/usr/bin/env bash",
        "# Reproduces every run of this comparison; then re-run the compare command.",
        "set -e",
    ]
    if invocation:
        commands.append(f"# {invocation}")
    commands += [command_for(r, preset, overrides) for r in runs]
    write_text_atomic(out / "commands.sh", "\n".join(commands) + "\n")

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
    test = next(eval_set(cfg0.data, "test", 0, 500, torch.device("cpu")).batches())  # the first validation batch
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


__all__ = ["check_runs", "compare", "latent_bits", "plan_runs", "prepare_compare_folder"]
