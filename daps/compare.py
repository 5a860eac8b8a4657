"""``compare``: train several methods under one budget and write a Table-1-style comparison.

Every method gets the same data, encoder size, bottleneck, batch, optimizer-step budget and seeds; only
each method's own preset defaults differ (its schedules, encoder kind, learning rate). ``vary`` adds a grid of
settings (an ablation: the paper's App. C scans the beta schedule against the ESS target, App. D the number of
samples K); each combination is an arm of its own, ``<method> (<setting>=<value>, ...)``. The run folders
``<out>/<method>/seed<s>``, or ``<out>/<method>/<setting>=<value>,.../seed<s>`` for an arm, are ordinary
training runs: a finished one is reused, an interrupted one resumed, so the comparison can be stopped and
started again. A run folder is reused or resumed only when its
config is the one this comparison would train (up to :data:`NOT_COMPARED`); otherwise ``compare`` refuses
before training anything, naming the run and the differing keys, and ``overwrite`` retrains such runs.
``<out>`` carries the ``compare`` marker of :mod:`daps.runfolder` and is locked while ``compare`` writes it.

Outputs in ``<out>``: ``results.md`` and ``results.csv`` (mean and standard error over seeds),
``curves.png`` (validation log p against steps), ``eta.png`` and ``ess.png`` (the trust-region multiplier and the
normalized effective sample size against steps, when an arm has them), ``reconstructions.png`` (the same test
images through every arm) and ``commands.sh`` (the exact commands that reproduce every run).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import math
import os
import re
import shlex
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from daps.checkpoint import load_model, read_config
from daps.config import Config
from daps.config_io import (
    absolute_data_dir,
    applicable_overrides,
    check_overrides_used,
    config_differences,
    ignored_settings,
    parse_overrides,
    parse_setting,
)
from daps.data import dataset_spec, eval_set
from daps.dist import resolve_device
from daps.errors import UserError, check_at_least
from daps.methods import METHODS, build_method, method_spec
from daps.plots import read_metrics, save_comparison_curves, save_comparison_reconstructions
from daps.presets import get_preset
from daps.provenance import provenance, read_jobs
from daps.runfolder import (
    LOCK,
    MARKER,
    FolderLock,
    OutputFolderError,
    has_content,
    is_output_folder,
    is_temporary,
    missing_folders,
    prepare_output_folder,
    read_json_object,
    read_marker,
    refuse_precious,
    remove_empty_folders,
    write_marker,
    write_text_atomic,
)

log = logging.getLogger("daps")

# (column label, summary.json key, format, higher is better?)
COLUMNS = [
    ("beta-ELBO", "beta_elbo", ".2f"),
    ("ELBO", "elbo", ".2f"),
    ("log p(x\\|z)", "log_p", ".2f"),
    ("KL(q\\|prior)", "kl", ".2f"),
    ("L2", "l2", ".3f"),
    ("PSNR (dB)", "psnr", ".2f"),
    ("SSIM", "ssim", ".3f"),
    ("FID", "fid", ".2f"),
    ("codebook use", "codebook_utilization", ".3f"),
    ("perplexity", "code_perplexity", ".1f"),
]


TRUST_REGION = {"eta": ("eta (end)", ".3f"), "ess": ("ESS/K (end)", ".2f")}
"""Training-log keys shown for the arms that have them (DAPS, eta learned or fixed): the trust-region multiplier and
the normalized effective sample size, each the mean over the run's last logging window."""

TRUST_FIGURES = {
    "eta.png": ("eta", "trust-region multiplier", "eta (training)", True),
    "ess.png": ("ess", "effective sample size over K", "ESS / K (training)", False),
}
"""The figures of the training-log quantities only some arms have: file -> (key, title, axis label, log axis)."""

OUTPUTS = ("results.md", "results.csv", "curves.png", *TRUST_FIGURES, "reconstructions.png", "commands.sh")
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
    variant: tuple[tuple[str, str], ...] = ()
    """The ``--vary`` settings of this run's arm, ``(key, value)`` in the order given; empty without ``--vary``."""
    action: str = "train"
    """What :func:`check_runs` decided: ``train`` (new folder), ``reuse``, ``resume`` or ``retrain``."""

    @cached_property
    def metrics(self) -> list[dict]:
        """The rows of the run's ``metrics.jsonl``, read once (after training: the table and figures share them)."""
        return read_metrics(self.out_dir / "metrics.jsonl")

    @property
    def out_dir(self) -> Path:
        return Path(self.cfg.train.out_dir)

    @property
    def settings(self) -> str:
        """The arm's settings, ``beta.init=5,beta.end=0.01`` (keys without the method's own section, values as
        parsed, in the order of the ``--vary`` options), or ''."""
        return self._join(self.variant)

    @property
    def folder(self) -> str:
        """The arm's folder name: its settings sorted by key, so the order of the ``--vary`` options does not
        matter (a comparison re-run with them reordered reuses its runs)."""
        return self._join(sorted(self.variant))

    def _join(self, pairs: Sequence[tuple[str, str]]) -> str:
        section = self.cfg.options.section + "."
        return ",".join(f"{k.removeprefix(section)}={v}" for k, v in pairs)

    @property
    def label(self) -> str:
        """The arm's name in tables and figures: ``daps``, or ``daps (beta.init=5, beta.end=0.01)``."""
        return f"{self.method} ({self.settings.replace(',', ', ')})" if self.variant else self.method

    @property
    def overrides(self) -> list[str]:
        return [f"{k}={_override_text(self.cfg, k, v)}" for k, v in self.variant]


Grid = list[tuple[tuple[str, ...], list[tuple[str, ...]]]]
"""Parsed ``--vary`` options: per option, its tied keys and their value tuples."""

_VALUE = re.compile(r"[A-Za-z0-9._-]+")
OWNED = {"train.steps": "--steps", "train.seed": "--seeds", "train.out_dir": "--out"}
"""Settings ``compare`` sets for every run, and the option that sets them."""


def parse_vary(items: Sequence[str], overrides: Sequence[str] = ()) -> Grid:
    """``--vary KEY=V1,V2,...`` (one setting) or ``--vary K1+K2=A1+B1,A2+B2`` (settings varied together, e.g. a
    schedule's start and end); several options span their product. Values name run folders, so they are plain
    words (letters, digits, ``.``, ``_``, ``-``). A key varied twice, also set by an override, or set by
    ``compare`` itself is a :class:`UserError`."""
    grid: Grid = []
    fixed = {o.partition("=")[0].strip() for o in overrides}
    seen: set[str] = set()
    for item in items:
        head, sep, tail = item.partition("=")
        keys = tuple(k.strip() for k in head.split("+"))
        if not sep or not all(keys) or not tail.strip():
            raise UserError(f"--vary {item!r} is not of the form key=v1,v2 (or key1+key2=a1+b1,a2+b2)")
        for key in keys:
            if key in ("method", "preset"):
                raise UserError(f"--vary {item!r}: choose methods with --methods and the preset with --preset")
            if key in OWNED or key == "train.stop_after":
                raise UserError(f"compare sets {key} for every run; use {OWNED.get(key, '--steps')} instead of "
                                f"--vary {item!r}")
            if key in seen or key in fixed:
                raise UserError(f"--vary {item!r}: {key} is set twice (in another --vary or an override)")
            seen.add(key)
        values = [tuple(v.strip() for v in group.split("+")) for group in tail.split(",")]
        for value in values:
            if len(value) != len(keys):
                raise UserError(f"--vary {item!r}: {'+'.join(value)!r} gives {len(value)} values for {len(keys)} keys")
            bad = [v for v in value if not _VALUE.fullmatch(v)]
            if bad:
                raise UserError(
                    f"--vary {item!r}: value {bad[0]!r} names a run folder: use letters, digits, '.', '_' and '-'"
                )
        if len(set(values)) != len(values):
            raise UserError(f"--vary {item!r} lists a value twice")
        grid.append((keys, values))
    return grid


def _override_text(cfg: Config, key: str, text: str) -> str:
    """A ``--vary`` value as a ``key=value`` override: a list setting's ``x``-joined value (``64x64``, lower-case
    x: commas separate the values of ``--vary``) with its commas back (``64,64``); any other value as it is."""
    try:
        parse_setting(cfg, key, text)
    except UserError as err:
        joined = text.replace("x", ",")
        if joined == text:
            raise
        if "" in joined.split(","):
            raise UserError(f"{key}: {text!r} has an empty item between its x's") from None
        try:
            parse_setting(cfg, key, joined)
        except UserError:
            raise err from None  # the message names the value as the user wrote it
        return joined
    return text


def _plain(value: object) -> str:
    """One parsed value written back plainly (``.5`` and ``0.50`` are ``0.5``, ``5.0`` is ``5``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    return str(value)


def _canonical(cfg: Config, key: str, text: str) -> str:
    """``text`` as the setting ``key`` of ``cfg`` parses it, written back plainly (:func:`_plain`; a list setting's
    values joined by ``x``: ``decoder.hidden=64x64``, ``fsq.levels=8x5x5x5``), so that one setting always names one
    arm and one folder."""
    value = parse_setting(cfg, key, _override_text(cfg, key, text))
    if isinstance(value, (tuple, list)):
        return "x".join(_plain(v) for v in value)
    return _plain(value)


def _arms(cfg: Config, grid: Grid, methods_of: dict[tuple[str, ...], set[str]]) -> list[tuple[tuple[str, str], ...]]:
    """The variants of one method: the product of the ``--vary`` options that concern it (one empty variant if
    none does), each value as parsed (:func:`_canonical`); two values that parse the same are refused."""
    own = []
    for keys, values in grid:
        if cfg.method not in methods_of[keys]:
            continue
        parsed = [tuple(_canonical(cfg, k, v) for k, v in zip(keys, value)) for value in values]
        for i, value in enumerate(parsed):
            if value in parsed[:i]:
                first = values[parsed.index(value)]
                raise UserError(
                    f"--vary {'+'.join(keys)}: {'+'.join(first)} and {'+'.join(values[i])} are the same setting"
                )
        own.append((keys, parsed))
    return [
        tuple(pair for (keys, _), value in zip(own, choice) for pair in zip(keys, value))
        for choice in itertools.product(*(values for _, values in own))
    ]


def latent_bits(cfg: Config) -> float:
    """Bits of the bottleneck, as the method's spec counts them (T log2 V for codes, T log2 prod(levels) for FSQ,
    32 per float for the Gaussian VAE: the paper's capacity count)."""
    return method_spec(cfg.method).bits(cfg)


def plan_runs(
    preset: str, methods: list[str], steps: int, seeds: list[int], out: Path, overrides: list[str],
    vary: Sequence[str] = (),
) -> list[Run]:
    """One config per (method, arm, seed); ``overrides`` apply to every method, after the budget settings, and
    the arm's ``vary`` settings (see :func:`parse_vary`) after them."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UserError(f"unknown method(s) {', '.join(unknown)}; choose from: {', '.join(METHODS)}")
    if len(set(methods)) != len(methods):
        raise UserError(f"--methods lists a method twice: {','.join(methods)}")
    check_at_least(("--steps", steps, 1), ("--seeds", len(seeds), 1))
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key in OWNED:
            raise UserError(f"compare sets {key} for every run; use {OWNED[key]} instead of {item!r}")
        if key == "train.stop_after":
            raise UserError("compare trains every run to --steps, so it can write its table; to split the work, "
                            "stop compare itself: running it again resumes every run where it stopped")
    grid = parse_vary(vary, overrides)
    check_overrides_used([*overrides, *(f"{k}=" for keys, _ in grid for k in keys)])
    presets = {method: get_preset(preset, method) for method in methods}
    methods_of: dict[tuple[str, ...], set[str]] = {}
    for keys, _ in grid:
        applies = [{m for m, cfg in presets.items() if applicable_overrides(cfg, [f"{k}="])} for k in keys]
        if not applies[0]:
            raise UserError(f"--vary {'+'.join(keys)}: {keys[0]} is a setting of none of --methods {','.join(methods)}")
        if any(a != applies[0] for a in applies):
            raise UserError(f"--vary {'+'.join(keys)}: settings varied together must concern the same methods")
        methods_of[keys] = applies[0]
    runs = []
    for method in methods:
        for variant in _arms(presets[method], grid, methods_of):
            for seed in seeds:
                run = Run(method, seed, presets[method], variant)
                folder = out / method / run.folder if variant else out / method
                budget = [
                    f"train.steps={steps}",
                    f"train.seed={seed}",
                    f"train.out_dir={folder / f'seed{seed}'}",
                    f"train.eval_every={max(steps // 10, 1)}",
                    f"train.ckpt_every={max(steps // 4, 1)}",
                    f"train.log_every={max(min(steps // 50, 50), 1)}",
                ]
                cfg = get_preset(preset, method)
                run.cfg = parse_overrides(cfg, [*budget, *applicable_overrides(cfg, overrides), *run.overrides])
                runs.append(run)
    return runs


def command_for(run: Run, preset: str, overrides: list[str], flags: Sequence[str] = ()) -> str:
    """The ``daps train`` command that reproduces ``run`` (only the overrides that concern its method: ``daps
    train`` refuses another method's settings), with ``--resume`` so that it trains a missing run, continues an
    interrupted one and leaves a finished one alone; ``flags`` (``--device``, ``--threads``,
    ``--no-keep-freed-memory``) go first."""
    c = run.cfg.train
    settings = [
        f"train.steps={c.steps}", f"train.seed={c.seed}", f"train.out_dir={c.out_dir}",
        f"train.eval_every={c.eval_every}", f"train.ckpt_every={c.ckpt_every}", f"train.log_every={c.log_every}",
        *applicable_overrides(run.cfg, overrides), *run.overrides,
    ]
    once = {item.partition("=")[0].strip(): item for item in settings}  # a key given twice: the last value wins
    return shlex.join(["daps", "train", "--preset", preset, "--method", run.method, *flags, "--resume",
                       *once.values()])


def _finished(run: Run) -> bool:
    summary = read_json_object(run.out_dir / "summary.json")  # None if missing or damaged: resuming recreates it
    return summary is not None and summary.get("step") == run.cfg.train.steps


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
            # data.data_dir as the place it names, not as typed (train() keeps it absolute)
            saved = absolute_data_dir(read_config(folder / "config.json"), resolve=True)
            unread = set(ignored_settings(saved)) & set(ignored_settings(run.cfg))  # as a resume leaves them out
            diffs = config_differences(saved, absolute_data_dir(run.cfg, resolve=True), NOT_COMPARED | unread)
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


def check_buildable(runs: list[Run]) -> None:
    """Build each arm's networks once (on the CPU, the global random state untouched), so that settings a network
    cannot take (a grid over ``decoder.kind``, a window length) are refused before the first arm trains, not
    when their arm's turn comes."""
    seen = set()
    for run in runs:
        if (run.method, run.variant) in seen:
            continue
        seen.add((run.method, run.variant))
        with torch.random.fork_rng(devices=[]):
            build_method(run.cfg, tuple(run.cfg.data.image_shape))


def run_all(runs: list[Run], device: torch.device | None = None) -> None:
    """Carry out each run's ``action`` (see :func:`check_runs`): train, resume or retrain it, or reuse it."""
    from daps.train import train

    for i, run in enumerate(runs, 1):
        if run.action == "reuse":
            log.info("[%d/%d] %s seed %d: finished, reusing %s", i, len(runs), run.label, run.seed, run.out_dir)
            continue
        log.info(
            "[%d/%d] %s seed %d: %s %d steps -> %s", i, len(runs), run.label, run.seed,
            {"train": "training", "resume": "resuming", "retrain": "retraining"}[run.action], run.cfg.train.steps,
            run.out_dir,
        )
        train(run.cfg, resume=run.action == "resume", overwrite=run.action == "retrain", device=device)


def _mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean; NaN where there are too few values (none; one, for the error)."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def _steps_per_s(run: Run) -> float:
    """The median training speed over the run's logged windows, the first (which includes warm-up) left out."""
    rows = [v for _, v in _series(run, "train", "steps_per_s")]
    rows = rows[1:] or rows
    return statistics.median(rows) if rows else float("nan")


def _last(run: Run, key: str) -> float | None:
    """``key`` in the run's last training row that has it (the mean over its last logging window), or None."""
    series = _series(run, "train", key)
    return series[-1][1] if series else None


def arms(runs: list[Run]) -> dict[str, list[Run]]:
    """The runs grouped by arm (method and ``--vary`` settings), in planning order."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.label, []).append(run)
    return groups


def origins(runs: list[Run], out: Path) -> str:
    """Where the runs' steps were trained, from each run folder's record of its jobs (runs named by their folder
    under ``out``): one sentence per distinct device, machine, processes, torch and code with the runs it trained
    (part of) and, if any, the runs with steps of unknown origin (trained before daps recorded its jobs, or a
    damaged record). Steps/s compare only between runs of one device, machine and process count: a warning says so
    when the runs differ in those (not when only the code or torch does)."""
    trained_by: dict[str, list[str]] = {}
    hardware: set[tuple] = set()
    unknown = []
    for run in runs:
        jobs = read_jobs(run.out_dir)
        name = run.out_dir.relative_to(out).as_posix()  # method/seed0, or method/variant/seed0 with --vary
        if not jobs or jobs[0]["from_step"] > 0:
            unknown.append(name)
        for job in jobs:
            hardware.add((job.get("device"), job.get("machine"), job.get("processes")))
        for origin in dict.fromkeys(
            f"{job.get('device', '?')} ({job.get('machine', '?')}"
            + (f", {job['processes']} processes" if job.get("processes", 1) != 1 else "")
            + f"), torch {job.get('torch', '?')}, code {job.get('code', '?')}" for job in jobs
        ):
            trained_by.setdefault(origin, []).append(name)
    lines = [
        f"Trained on {origin}: " + (f"all {len(runs)} runs" if len(names) == len(runs) else ", ".join(names)) + "."
        for origin, names in trained_by.items()
    ]
    if unknown:
        lines.append(f"Where these runs were trained is not (fully) recorded: {', '.join(unknown)}.")
    if len(hardware) + bool(unknown) > 1:
        lines.append("Their steps/s are comparable only between runs trained on one machine.")
    return " ".join(lines)


def collect(runs: list[Run]) -> list[dict]:
    """One row per arm: mean and standard error over seeds of every column, plus bits and speed. ``method`` is the
    arm's label, ``settings`` its ``--vary`` settings ('' without)."""
    table = []
    for label, group in arms(runs).items():
        summaries = [json.loads((r.out_dir / "summary.json").read_text()) for r in group]
        row = {"method": label, "settings": group[0].settings, "seeds": len(group), "bits": latent_bits(group[0].cfg),
               "final_beta": summaries[0].get("final_beta", final_beta(group[0].cfg))}
        for _, key, _ in COLUMNS:
            values = [s[key] for s in summaries if key in s]
            row[key], row[key + "_se"] = _mean_se(values)
        row["steps_per_s"], _ = _mean_se([_steps_per_s(r) for r in group])
        for key in TRUST_REGION:  # eta and the ESS at the end of training, for the methods that have them (DAPS)
            row[key], row[key + "_se"] = _mean_se([v for v in (_last(r, key) for r in group) if v is not None])
        row["num_images"] = summaries[0].get("num_images")
        table.append(row)
    return table


def final_beta(cfg: Config) -> float:
    """The β of a run's beta-ELBO for a ``summary.json`` that does not record it (one written before daps recorded it):
    its method's β schedule's end value; NaN for methods without one (quantizers)."""
    from daps.methods.common import schedule_final

    beta = getattr(cfg.options, "beta", None)
    return schedule_final(beta) if beta is not None else math.nan


def _cell(mean: float, se: float, fmt: str) -> str:
    if math.isnan(mean):
        return "—"
    if math.isnan(se):
        return format(mean, fmt)
    return f"{format(mean, fmt)} ± {format(se, fmt)}"


def write_tables(table: list[dict], out: Path, header: str) -> None:
    """``results.md`` (for people) and ``results.csv`` (for programs)."""
    trust = [key for key in TRUST_REGION if any(not math.isnan(row.get(key, math.nan)) for row in table)]
    labels = ["method", "bits", "β (end)", *(label for label, _, _ in COLUMNS), *(TRUST_REGION[k][0] for k in trust),
              "train steps/s"]
    lines = [header, "", "| " + " | ".join(labels) + " |", "|" + "---|" * len(labels)]
    for row in table:
        beta = row.get("final_beta", math.nan)
        cells = [row["method"], f"{row['bits']:.0f}", "—" if math.isnan(beta) else f"{beta:g}"]
        cells += [_cell(row[key], row[key + "_se"], fmt) for _, key, fmt in COLUMNS]
        cells += [_cell(row[key], row[key + "_se"], TRUST_REGION[key][1]) for key in trust]
        cells.append(f"{row['steps_per_s']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Mean ± standard error over seeds (no ± with one seed); validation images encoded with one stochastic "
        "code each (deterministic for fsq/vqvae/vqvae-ema; the posterior mean for vae, so its log p(x|z) and ELBO "
        "are of the mean, not of a sample, and a little optimistic), nats summed over pixels; KL to the prior "
        "(uniform over the codes, N(0, I) for vae). beta-ELBO is log p(x|z) - β KL at each method's own final β "
        "(its column). '—': the method has no such quantity "
        "(no q for the quantizers, no discrete code for the Gaussian VAE) or it was not measured (FID without "
        "train.fid or without the Inception weights; SSIM on images smaller than 11x11)."
        + (" eta and ESS/K (end): the trust-region multiplier and the effective sample size over K, means over "
           "each run's last logging window of training." if trust else ""),
    ]
    write_text_atomic(out / "results.md", "\n".join(lines) + "\n")
    keys = ["method", "settings", "seeds", "bits", *(k for _, key, _ in COLUMNS for k in (key, key + "_se")),
            "steps_per_s", *(k for key in TRUST_REGION for k in (key, key + "_se"))]
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
        or is_temporary(p.name)
        for p in entries
    )


def prepare_compare_folder(out: Path) -> Path:
    """The compare folder, created and marked ``compare``; an existing compare folder is re-entered (its runs
    are checked one by one by :func:`check_runs`), any other existing folder is refused."""
    if not has_content(out):
        return prepare_output_folder(out, "compare", overwrite=False, entries=())  # never replaced
    refuse_precious(out, "--out")
    if out.is_symlink():
        raise OutputFolderError(f"--out {out} is a symbolic link; a comparison is re-entered only in its real folder")
    if not out.is_dir():
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
    vary: Sequence[str] = (),
    flags: Sequence[str] = (),
) -> list[dict]:
    """Train (or reuse) every run, then write the tables, figures and commands into ``out``; returns the
    table rows. ``overwrite``: retrain run folders whose config differs from this comparison's (else refused).
    ``vary``: ``--vary`` options (see :func:`parse_vary`), a grid of arms per method. ``flags``: the command
    line's ``--device`` / ``--threads`` options, passed on to ``commands.sh``."""
    out = Path(out)
    overrides = list(overrides)
    runs = plan_runs(preset, methods, steps, seeds, out, overrides, vary)  # validates everything before training
    check_buildable(runs)
    created = missing_folders(out)  # the compare folder, and its parents that are missing
    was_empty = not has_content(out)  # new, or an empty folder of the user's
    prepare_compare_folder(out)
    with FolderLock(out):  # another compare on the same folder is refused here, before anything below
        try:
            check_runs(runs, overwrite)
            return _compare(runs, preset, methods, steps, seeds, out, overrides, device, argv, vary, flags)
        except BaseException:
            if was_empty:  # e.g. the data are missing: the first run failed before writing anything
                _remove_if_untouched(out, created)
            raise


def _remove_if_untouched(out: Path, created: list[Path]) -> None:
    """Leave a compare folder that was new or empty as it was when no run wrote into it: only its marker, lock,
    ``commands.sh`` and empty folders are there (a run that fails before writing removes its own folder); they go,
    and then the folders this call ``created`` (``out`` itself, missing parents) while they are empty. Anything else
    (a run's file, a link) keeps the whole folder as it is."""
    own = {MARKER, LOCK, "commands.sh"}
    paths = list(out.rglob("*"))
    if any(p.is_symlink() or not (p.is_dir() or (p.parent == out and p.name in own)) for p in paths):
        return
    for name in own:
        (out / name).unlink(missing_ok=True)
    try:
        for folder in sorted((p for p in paths if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            folder.rmdir()
    except OSError:  # something appeared meanwhile: leave it
        return
    if created:
        remove_empty_folders(created)


def _compare(runs, preset, methods, steps, seeds, out, overrides, device, argv, vary, flags) -> list[dict]:
    invocation = shlex.join(["daps", "compare", *argv]) if argv is not None else None
    commands = [
        "#!/usr/bin/env bash",
        "# Reproduces every run of this comparison; then re-run the compare command.",
        "set -e",
        "# its paths are relative to the folder the comparison ran in",
        f"cd {shlex.quote(os.getcwd())}",
    ]
    if invocation:
        commands.append(f"# {invocation}")
    commands += [command_for(r, preset, overrides, flags) for r in runs]
    write_text_atomic(out / "commands.sh", "\n".join(commands) + "\n")

    run_all(runs, device)

    table = collect(runs)
    cfg0 = runs[0].cfg
    dev = resolve_device(device)
    where = provenance(dev)
    reused = sum(run.action == "reuse" for run in runs)
    header = (
        f"# {preset}: {', '.join(methods)}\n\n"
        + (f"Varied: {'; '.join(vary)} (one row per combination).\n\n" if vary else "")
        + f"{steps} optimizer steps at batch {_values(r.cfg.train.batch_size for r in runs)}, seeds "
        f"{', '.join(map(str, seeds))}, data {_values(r.cfg.data.name for r in runs)}, validated on "
        f"{_values(row['num_images'] for row in table)} test images, "
        f"device {dev} ({where['machine']}), torch {where['torch']}, code {where['code']}, {where['date']}"
        + (f" ({reused} of the {len(runs)} runs reused from earlier)." if reused else ".")
        + f"\n\n{origins(runs, out)}"
        + (f"\n\nCommand: `{invocation}`" if invocation else "")
    )
    write_tables(table, out, header)

    groups = arms(runs)
    curves = {label: [_series(run, "val", "log_p") for run in group] for label, group in groups.items()}
    save_comparison_curves(curves, out / "curves.png", title=f"{preset}: validation log p(x|z), {steps} steps")
    drawn = set()
    for name, (key, what, ylabel, log_y) in TRUST_FIGURES.items():  # only the arms that have the quantity
        series = {label: [_series(run, "train", key) for run in group] for label, group in groups.items()}
        series = {label: seeds for label, seeds in series.items() if all(seeds)}
        if series:
            save_comparison_curves(series, out / name, title=f"{preset}: {what}, {steps} steps", ylabel=ylabel,
                                   log_y=log_y)
            drawn.add(name)
        else:
            (out / name).unlink(missing_ok=True)  # from an earlier comparison of this folder with other arms

    standardize = dataset_spec(cfg0.data.name).standardize
    test = next(eval_set(cfg0.data, "test", 0, 500, torch.device("cpu")).batches())  # the first validation batch
    shown = standardize(test[torch.linspace(0, test.shape[0] - 1, 10, device=test.device).long()])
    recons = {}
    for label, group in groups.items():
        model = load_model(group[0].out_dir, "cpu")
        with torch.no_grad():
            recons[label] = standardize.to_unit(model.reconstruct(shown, torch.Generator().manual_seed(0)).x_hat)
    save_comparison_reconstructions(
        standardize.to_unit(shown), recons, out / "reconstructions.png", title=f"{preset}, {steps} steps"
    )
    written = ", ".join(name for name in OUTPUTS if name not in TRUST_FIGURES or name in drawn)
    log.info("comparison written to %s (%s)", out, written)
    return table


def _values(values) -> str:
    """One value for the header, or all of them when the arms differ in it."""
    distinct = list(dict.fromkeys(values))
    return str(distinct[0]) if len(distinct) == 1 else f"{' / '.join(map(str, distinct))} (by arm, see the rows)"


def _series(run: Run, split: str, key: str) -> list[tuple[int, float]]:
    """``(step, value)`` of ``key`` in the run's ``split`` rows of ``metrics.jsonl``."""
    return [(r["step"], r[key]) for r in run.metrics if r.get("split") == split and key in r]


__all__ = ["check_runs", "compare", "latent_bits", "parse_vary", "plan_runs", "prepare_compare_folder"]
