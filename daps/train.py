"""``train(cfg)``: the training loop, top to bottom.

setup -> run folder -> data -> model -> optimizers -> resume -> for each step: batch -> ``out = model(x, step)``
-> backward -> clip / skip non-finite -> step -> log -> evaluate every N -> checkpoint every N.

Every random draw comes from an explicit generator whose state is saved in the checkpoint, so a run that
is stopped and resumed ends with exactly the weights of an uninterrupted run (on the same device).
In-memory datasets draw batches uniformly with replacement, as the original (no epochs); folder datasets
stream shuffled epochs (see :mod:`daps.data`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from daps import dist
from daps.checkpoint import (
    CKPT_DIR,
    find_resumable,
    list_checkpoints,
    load_training_state,
    load_weights,
    read_config,
    remove_leftovers,
    restore_generator,
    save_checkpoint,
    write_config,
)
from daps.config import Config, validate
from daps.config_io import absolute_data_dir, config_differences, config_to_dict, ignored_settings
from daps.data import (
    DatasetSpec,
    EvalSet,
    ExampleMetrics,
    TrainBatches,
    check_run_data,
    dataset_spec,
    eval_set,
    train_batches,
)
from daps.errors import UserError
from daps.functional import cosine_schedule
from daps.graphed import GraphedStep
from daps.loggers import RunLogger, check_logger, make_logger
from daps.methods import METHODS, Method, build_method, method_spec
from daps.metrics import evaluate
from daps.metrics.evaluate import FIDSetup, fid_setup
from daps.optim import Optimizers
from daps.plots import read_metrics, save_training_curves, spread_indices
from daps.precision import float32_kernels
from daps.progress import progress_bar
from daps.provenance import record_job
from daps.runfolder import (
    LOCK,
    MARKER,
    RUN_ENTRIES,
    FolderLock,
    OutputFolderError,
    check_replaceable,
    clear_folder,
    finished,
    has_content,
    is_output_folder,
    missing_folders,
    refuse_precious,
    remove_empty_folders,
    write_json_atomic,
    write_marker,
    write_text_atomic,
)

log = logging.getLogger("daps")

# Settings that may change when a run is resumed; anything else must match the saved config.
RESUMABLE_CHANGES = {
    "train.steps",
    "train.progress",
    "train.logger",
    "train.log_every",
    "train.eval_every",
    "train.eval_examples",
    "train.eval_batch_size",
    "train.ckpt_every",
    "train.keep_checkpoints",
    "train.stop_after",
    "train.max_skipped_steps",
    "train.out_dir",
    "data.data_dir",
    "data.download",
    "data.num_workers",
    "train.fid",
    "train.fid_reference",
    "train.fid_weights",
    "train.cuda_graph",  # how the step runs, not what it computes: a graphed run may go on eagerly and back
    "daps.one_pass",  # likewise: the same update, its codes scored in the sampling pass or in a second one
    "reinforce.one_pass",
    "encoder.share_prefixes",  # likewise: the same log q, computed once per distinct prefix or at every position
}

RUN_ARTIFACTS = ("summary.json", "reconstructions.png", "curves.png")
"""Files written at the end of a run; a resumed finished run recreates whichever is missing or damaged."""


class TrainingDiverged(RuntimeError):
    """Training stopped because its updates or parameters became non-finite (the CLI exits with code 3)."""


@dataclass
class RunPlan:
    """What :func:`prepare_run_dir` decided: start fresh (emptying the folder first?) or resume."""

    resume_from: Path | None = None
    clear_first: bool = False


def _check_same_kind(run_dir: Path, saved_cfg: Config, cfg: Config) -> None:
    """A run of another method or preset is named as such, not as a list of every setting that differs."""
    for key, flag in (("method", "--method"), ("preset", "--preset")):
        saved, new = getattr(saved_cfg, key), getattr(cfg, key)
        if saved != new:
            raise UserError(f"cannot resume {run_dir}: its {key} is {saved}, and this command's is {new}; "
                            f"resume it with {flag} {saved}")


def _check_same_config(run_dir: Path, saved_cfg: Config, cfg: Config, report: bool = True) -> None:
    # settings neither config reads (a run saved with one that daps train now refuses) do not stop a resume
    unread = set(ignored_settings(saved_cfg)) & set(ignored_settings(cfg))
    differences = config_differences(saved_cfg, cfg, ignore=unread)
    changed = {k: d for k, d in differences.items() if k not in RESUMABLE_CHANGES}
    if changed:
        diffs = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in sorted(changed.items()))
        raise UserError(f"cannot resume {run_dir} with a different config ({diffs})")
    if saved_cfg.train.steps != cfg.train.steps and report:
        log.warning(
            "train.steps changed on resume (%s -> %s): schedules that follow the run length (beta) are re-timed",
            saved_cfg.train.steps, cfg.train.steps,
        )
    # The other settings a resume may change, said too: a command that does not repeat the run's own values
    # (train.eval_examples=100, say) resumes with the preset's, and the run's history would mix them unseen.
    others = {k: d for k, d in differences.items() if k not in ("train.steps", "train.out_dir")}
    if others and report:
        diffs = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in sorted(others.items()))
        log.warning("resuming with settings changed from the run's (%s); repeat them on the command line to keep "
                    "the run's values", diffs)


def prepare_run_dir(cfg: Config, resume: bool, overwrite: bool, report: bool = True) -> RunPlan:
    """Check the run folder before anything is written or deleted.

    An existing run folder is refused unless ``resume`` (continue from its newest intact checkpoint, or start
    again in place if it was stopped before its first one) or ``overwrite`` (empty it, which :func:`train`
    does only once data and model are ready). Only a recognisable daps run folder is ever emptied.
    ``report=False``: decide without logging (a dry run before the folder is locked).
    """
    warn = log.warning if report else (lambda *args: None)
    run_dir = Path(cfg.train.out_dir)
    if resume and overwrite:
        raise UserError("--resume and --overwrite cannot be combined")
    refuse_precious(cfg.train.out_dir, "train.out_dir")
    if run_dir.exists() and not run_dir.is_dir():
        raise OutputFolderError(f"train.out_dir {run_dir} exists and is not a folder")
    if not has_content(run_dir):
        if resume:
            warn("--resume: %s holds no run yet, starting a new run", run_dir)
        return RunPlan()
    if overwrite:
        check_replaceable(run_dir, "train", "train.out_dir")
        return RunPlan(clear_first=True)
    if not is_output_folder(run_dir, "train"):
        if run_dir.is_symlink():  # is_output_folder never follows one (--overwrite would replace the target)
            raise OutputFolderError(f"train.out_dir {run_dir} is a symbolic link; name the run folder itself")
        raise OutputFolderError(
            f"train.out_dir {run_dir} exists and is not a daps run folder; choose another folder"
        )
    if not resume:
        raise OutputFolderError(
            f"run folder {run_dir} already exists; pass --resume to continue it or --overwrite to replace it"
        )
    ckpt = find_resumable(run_dir, report)
    if ckpt is None:
        saved = run_dir / "config.json"
        if saved.exists():
            saved_cfg = read_config(saved)
            _check_same_kind(run_dir, saved_cfg, cfg)
            _check_same_config(run_dir, saved_cfg, cfg, report)
        warn("%s was stopped before its first checkpoint: starting it again in place", run_dir)
        return RunPlan(clear_first=True)
    saved_cfg = read_config(ckpt / "config.json")
    _check_same_kind(run_dir, saved_cfg, cfg)
    step, end_step = int(ckpt.name.removeprefix("step_")), stop_step(cfg)
    if step > end_step:  # before any warning about the changed config: a refusal is one line
        raise _past_end(run_dir, step, end_step)
    _check_same_config(run_dir, saved_cfg, cfg, report)
    return RunPlan(resume_from=ckpt)


def stop_step(cfg: Config) -> int:
    """The step this invocation stops at: ``train.steps``, or ``train.stop_after`` if set and earlier."""
    return min(cfg.train.steps, cfg.train.stop_after) if cfg.train.stop_after else cfg.train.steps


def _past_end(run_dir: Path, start_step: int, end_step: int) -> UserError:
    return UserError(f"cannot resume {run_dir} at step {start_step}: the run is set to stop at step {end_step}")


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop rows of ``metrics.jsonl`` logged after ``last_step``, and a line cut off by a crash (atomically)."""
    if not path.exists():
        return
    kept, raw = [], path.read_bytes()
    for line in raw.decode(errors="replace").splitlines():  # a damaged byte spoils its line only
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and row.get("step", 0) <= last_step:
            kept.append(line)
    text = "".join(line + "\n" for line in kept)
    if text.encode() != raw:  # a file with nothing to drop or mend is left as it is
        write_text_atomic(path, text)


def _nothing_trained(run_dir: Path) -> bool:
    """Whether a run folder holds no checkpoint and no logged row: a run that failed during its setup or first
    steps, whose files say nothing a user could want back."""
    if (run_dir / CKPT_DIR).exists() and any((run_dir / CKPT_DIR).iterdir()):
        return False
    metrics = run_dir / "metrics.jsonl"
    return not (metrics.is_file() and read_metrics(metrics))


def _rng_states(generators: dict[str, torch.Generator]) -> list[dict[str, torch.Tensor]]:
    """Every rank's generator states, gathered to a list indexed by rank (each rank draws its own data)."""
    return dist.gather_objects({name: g.get_state() for name, g in generators.items()})


def _final_val_row(metrics_path: Path, end_step: int) -> dict | None:
    """The validation row logged at ``end_step`` by a run killed after its final checkpoint, if any."""
    if not metrics_path.exists():
        return None
    rows = [r for r in read_metrics(metrics_path) if r.get("split") == "val" and r.get("step") == end_step]
    return rows[-1] if rows else None


def _all_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _diverged(run_dir: Path, step: int, why: str) -> TrainingDiverged:
    ckpts = list_checkpoints(run_dir)  # newest first
    last = f"its last checkpoint, {ckpts[0]}, is intact" if ckpts else "it has no checkpoint"
    return TrainingDiverged(
        f"training diverged at step {step}: {why}; {last}. Lower optim.lr (or check the data) and start again "
        "(with --overwrite where the run's folder is kept: it holds what the run logged)"
    )


def validation_seed(cfg: Config) -> int:
    """The seed of every validation's random stream (``daps eval --seed`` repeats a run's validation with it)."""
    return cfg.train.seed + 12345


def train(
    cfg: Config, resume: bool = False, overwrite: bool = False, device: str | torch.device | None = None
) -> Path:
    """Train ``cfg.method`` on ``cfg.data`` for ``cfg.train.steps`` optimizer steps; returns the run folder.

    Writes ``config.json``, ``metrics.jsonl`` (one JSON object per train log / validation),
    ``checkpoints/``, ``reconstructions.png``, ``curves.png`` and ``summary.json`` into the run folder.
    The folder is locked while the run writes it. Raises :class:`TrainingDiverged` when updates stay
    non-finite for ``train.max_skipped_steps`` steps or the final model is non-finite. A ``cfg`` whose settings
    were set in Python (``cfg.train.steps = 0``) is checked as :func:`~daps.config_io.parse_overrides` checks
    overrides: a bad value is a :class:`~daps.errors.UserError` naming the key.
    """
    if not isinstance(cfg, Config):
        raise UserError(f"train takes a daps.Config (e.g. daps.get_preset(\"mnist\")), got {type(cfg).__name__}")
    validate(cfg)  # settings assigned in Python have not been through parse_overrides' checks
    device = dist.resolve_device(device)
    rank, world = dist.setup(device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    elif device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # --device cuda:1: streams and graphs are made on the current device
    cfg = absolute_data_dir(cfg)
    run_dir = Path(cfg.train.out_dir)
    _check_cuda_graph(cfg, device, world)
    check_logger(cfg.train.logger)  # a missing tensorboard / wandb package
    prepare_run_dir(cfg, resume, overwrite, report=False)  # refuse what cannot work before touching anything
    created = missing_folders(run_dir)  # what this call adds: the run folder, and its parents that are missing
    was_empty = not has_content(run_dir)  # new, or an empty folder of the user's: to be left as it was on failure
    lock, refusal = None, None
    try:
        if dist.is_main():
            try:
                lock = FolderLock(run_dir).acquire()
            except UserError as err:  # in use by another run: every rank refuses with rank 0's words
                refusal = str(err)
        refusal = dist.from_main(refusal)  # rank 0 holds the lock before any rank decides what to do with the folder
        if refusal is not None:
            raise OutputFolderError(refusal)
        return _train(cfg, resume, overwrite, device, rank, world)
    except Exception:
        if lock is not None and was_empty and _nothing_trained(run_dir):
            # a folder this call made (or found empty), failed before its first logged row (e.g. out of memory at
            # the first step): what it wrote is only the setup, so that the corrected command needs neither
            # --resume nor --overwrite
            clear_folder(run_dir, "train", "train.out_dir", RUN_ENTRIES)
        raise
    finally:
        if lock is not None:
            lock.release()
            if was_empty and not has_content(run_dir):  # failed before writing anything: leave the folder as it
                # was (gone if this call made it; empty, without daps's marker and lock, if the user did)
                for name in (MARKER, LOCK):
                    (run_dir / name).unlink(missing_ok=True)
                remove_empty_folders(created)
        dist.teardown()


@dataclass
class Setup:
    """Everything a run is built from: what :func:`_setup` makes and the loop, evaluation and checkpoints use."""

    cfg: Config
    run_dir: Path
    device: torch.device
    spec: DatasetSpec
    batches: TrainBatches  # raw training batches
    val_images: EvalSet  # the fixed validation subset
    example_metrics: ExampleMetrics | None  # the dataset's own quality metrics (motion), else the image metrics
    model: Method
    step_model: torch.nn.Module  # the model, or its DDP wrapper
    optimizers: Optimizers
    generators: dict[str, torch.Generator]
    fid: FIDSetup | None
    graphed: GraphedStep | None = None  # train.cuda_graph: the whole step as one CUDA graph
    logger: RunLogger = field(default_factory=RunLogger)  # TensorBoard / W&B (rank 0), see daps.loggers
    on_close: list = field(default_factory=list)  # undone when the loop ends, however it ends
    skipped_streak: int = 0  # consecutive steps whose update was skipped (non-finite); saved with a checkpoint


def compile_mode(device: torch.device, cuda_graph: bool) -> str | None:
    """``torch.compile``'s mode under ``train.compile``: on CUDA inductor's own CUDA graphs (``reduce-overhead``),
    unless the whole step is recorded as one graph (``train.cuda_graph``), which then records the compiled kernels
    with the rest; the default mode elsewhere."""
    return "reduce-overhead" if device.type == "cuda" and not cuda_graph else None


def _check_cuda_graph(cfg: Config, device: torch.device, world: int) -> None:
    """Refuse ``train.cuda_graph`` and ``train.tf32`` where they cannot work, before anything is written."""
    if cfg.train.tf32 and device.type != "cuda":
        raise UserError(f"train.tf32 needs a CUDA device; this run is on {device.type}")
    if not cfg.train.cuda_graph:
        return
    if device.type != "cuda":
        raise UserError(f"train.cuda_graph needs a CUDA device; this run is on {device.type}")
    if world > 1:
        raise UserError("train.cuda_graph runs in one process; under torchrun leave it off")
    if not method_spec(cfg.method).cuda_graph:
        able = ", ".join(name for name, spec in METHODS.items() if spec.cuda_graph)
        raise UserError(
            f"train.cuda_graph: the {cfg.method} step reads device values on the host, so it cannot be one CUDA graph; "
            f"methods that can: {able}"
        )


def _setup(cfg: Config, state: dict | None, device: torch.device, rank: int, world: int) -> Setup:
    """Data, model, optimizers, generators and FID, all seeded; nothing written yet."""
    tc = cfg.train
    # Data: raw batches (binary floats or uint8 pixels) on the device; `standardize` maps them to the model's
    # scale. Validation: a fixed subset, the same images at every evaluation.
    spec = dataset_spec(cfg.data.name)
    if spec.image_shape is not None and tuple(cfg.data.image_shape) != spec.image_shape:
        raise UserError(f"data.image_shape is {cfg.data.image_shape} but {spec.name} has {spec.image_shape}")
    batches = train_batches(
        cfg.data, tc.batch_size, tc.seed * 1000 + rank, state["step"] if state else 0,
        torch.Generator(device).manual_seed(tc.seed * 1000 + 2 * rank + 1), device,
    )
    val_images = eval_set(cfg.data, "test", tc.eval_examples, tc.eval_batch_size, device)
    example_metrics = spec.example_metrics(cfg.data) if spec.example_metrics is not None else None
    if spec.note and not spec.in_memory:  # in-memory loaders say it themselves
        log.warning("note: %s", spec.note)

    # Model and optimizers. Initialization is seeded without touching the global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tc.seed)
        model = build_method(cfg, tuple(cfg.data.image_shape)).to(device)
    if tc.compile:  # after the weights exist, before DDP wraps the model
        model.compile_step(mode=compile_mode(device, tc.cuda_graph))
    optimizers = Optimizers(
        model, model.optimizer_specs(cfg.optim.lr, cfg.optim.grad_clip), cfg.optim.weight_decay,
        capturable=tc.cuda_graph,
    )
    step_model = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    generators = {"sample": torch.Generator(device).manual_seed(tc.seed * 1000 + 2 * rank + 2)}
    graphed = None
    if tc.cuda_graph:
        graphed = GraphedStep(model, optimizers, generators["sample"], autocast=tc.precision == "bfloat16")
    if batches.generator is not None:  # in-memory data: its draws resume exactly from the checkpoint
        generators["data"] = batches.generator

    # FID's network and reference statistics are loaded now, so a wrong path fails before training, not after it.
    fid = None
    if dist.is_main() and tc.fid != "none":
        fid = fid_setup(tc.fid, tc.fid_weights or None, tc.fid_reference or None, device, cfg.data)
    return Setup(
        cfg,
        Path(tc.out_dir),
        device,
        spec,
        batches,
        val_images,
        example_metrics,
        model,
        step_model,
        optimizers,
        generators,
        fid,
        graphed,
    )


def _restore(s: Setup, ckpt: Path, state: dict, rank: int, world: int) -> None:
    """Load weights, optimizer states and every generator's state from checkpoint ``ckpt``."""
    load_weights(s.model, ckpt)
    s.optimizers.load_state_dict(state["optimizers"])
    s.skipped_streak = int(state.get("skipped_streak", 0))  # nonzero only in a final checkpoint (train.stop_after)
    for name, g in s.generators.items():  # folder data instead restart their stream at the checkpoint's step
        restore_generator(g, state["rng"][rank][name], s.run_dir, s.device)
    log.info("resumed %s at step %d", s.run_dir, state["step"])


def _open_run_folder(s: Setup, plan: RunPlan, start_step: int, world: int) -> None:
    """Rank 0: empty the folder if asked, mark it, write the config, drop metrics rows after ``start_step``,
    record this job (machine, code, torch: ``provenance.json``)."""
    if plan.clear_first:
        clear_folder(s.run_dir, "train", "train.out_dir", RUN_ENTRIES)
    s.run_dir.mkdir(parents=True, exist_ok=True)
    write_marker(s.run_dir, "train")
    write_config(s.run_dir / "config.json", s.cfg)
    for name, content in (s.spec.run_files(s.cfg.data) if s.spec.run_files is not None else {}).items():
        write_json_atomic(s.run_dir / name, content)
    truncate_metrics(s.run_dir / "metrics.jsonl", start_step)  # rows logged after the checkpoint are logged again
    if start_step < stop_step(s.cfg):  # a job that only finishes a run (summary, figures) trained none of it
        record_job(s.run_dir, start_step, s.device, world)
    log.info(
        "training %s on %s (%d train / %d val %s) for %d steps, %d parameters, device %s -> %s",
        s.cfg.method, s.spec.name, len(s.batches), s.val_images.num_images, s.spec.examples, s.cfg.train.steps,
        sum(p.numel() for p in s.model.parameters()), s.device, s.run_dir,
    )


def _evaluate(s: Setup, fid: FIDSetup | None = None) -> dict:
    eval_gen = torch.Generator(s.device).manual_seed(validation_seed(s.cfg))  # the same noise at every evaluation
    return evaluate(s.model, s.val_images, eval_gen, s.spec.standardize, fid, s.example_metrics)


def _checkpoint(s: Setup, step: int) -> None:
    """Save checkpoint ``step`` (a collective: every rank takes part), refusing a non-finite model."""
    if not _all_finite(s.model):
        raise _diverged(s.run_dir, step, "the parameters are no longer finite")
    dist.check_in_sync(list(s.model.parameters()), f"checkpoint {step}")  # buffers such as BatchNorm's are per rank
    rng = _rng_states(s.generators)
    if dist.is_main():
        state = {"step": step, "optimizers": s.optimizers.state_dict(), "rng": rng, "skipped_streak": s.skipped_streak}
        save_checkpoint(s.run_dir, step, s.model, s.cfg, state, keep=s.cfg.train.keep_checkpoints)
    dist.wait_for_main()


def _train_row(sums: dict[str, torch.Tensor], count: int, s: Setup, grad_norms: dict[str, float]) -> dict:
    """One ``split: train`` row: the logs averaged over the last ``count`` steps and over every rank."""
    keys = sorted(sums)
    # float64, as float(sum) / count was: the same numbers in metrics.jsonl as before
    # on the training device (a method may log a CPU scalar such as beta next to CUDA tensors; NCCL needs CUDA)
    values = [sums[k].to(device=s.device, dtype=torch.float64) for k in keys]
    means = torch.stack(values) / count if keys else torch.zeros(0, dtype=torch.float64, device=s.device)
    means = dist.mean_over_ranks(means)
    row = {k: float(v) for k, v in zip(keys, means.tolist())}
    row.update({f"grad_norm_{k}": v for k, v in grad_norms.items()})
    row.update({f"skipped_{k}": v for k, v in s.optimizers.skipped.items()})
    if s.batches.num_skipped:
        row["skipped_files"] = s.batches.num_skipped
    return row


def _train(cfg: Config, resume: bool, overwrite: bool, device: torch.device, rank: int, world: int) -> Path:
    tc = cfg.train
    run_dir = Path(tc.out_dir)
    end_step = stop_step(cfg)
    plan = prepare_run_dir(cfg, resume, overwrite, report=dist.is_main())  # again, now that no other process can
    # change the folder; its warnings once, from rank 0
    if dist.is_main():
        remove_leftovers(run_dir)
    dist.barrier()  # every rank has inspected the folder before rank 0 may empty it

    state = load_training_state(plan.resume_from) if plan.resume_from is not None else None
    if state is not None and len(state["rng"]) != world:  # before the data load and the model is built
        trained_by = len(state["rng"])
        raise UserError(f"{run_dir} was trained by {trained_by} process{'' if trained_by == 1 else 'es'}; resume it "
                        f"with as many (it holds each one's random state)")
    start_step = state["step"] if state is not None else 0
    if start_step > end_step:
        raise _past_end(run_dir, start_step, end_step)
    if state is not None and start_step == end_step and finished(run_dir, end_step, RUN_ARTIFACTS):
        log.info("%s already finished step %d; nothing to do", run_dir, end_step)
        return run_dir
    s = _setup(cfg, state, device, rank, world)
    if state is not None:  # a resumed run: before its data files are rewritten with today's data
        check_run_data(run_dir, cfg.data)
    metrics_file = None
    try:
        if state is not None and plan.resume_from is not None:
            _restore(s, plan.resume_from, state, rank, world)
        if dist.is_main():
            _open_run_folder(s, plan, start_step, world)
            metrics_file = open(run_dir / "metrics.jsonl", "a")
            s.logger = make_logger(tc.logger, run_dir, config_to_dict(cfg), start_step)
        dist.wait_for_main()  # rank 0 alone emptied or opened the folder and started the logger (wandb can take a
        # while): the others wait without the step's timeout

        def write_row(row: dict) -> None:
            if metrics_file is not None:
                metrics_file.write(json.dumps(row) + "\n")
                metrics_file.flush()
                s.logger.row(row)

        # A bar on a terminal (log lines printed above it, not glued to it); plain lines in a file or CI log.
        show = tc.progress and dist.is_main()
        shown_bar = progress_bar(end_step, "", "step", show, initial=start_step, leave=True)
        bar = shown_bar.__enter__()
        s.on_close.append(lambda: shown_bar.__exit__(None, None, None))  # closed however the loop ends
        interactive = not bar.disable
        sums: dict[str, torch.Tensor] = {}
        count, t_last, t_start = 0, time.perf_counter(), time.perf_counter()
        paused = 0.0  # seconds of evaluation and checkpoints since the last row: not training time
        s.model.train()
        for step in range(start_step, end_step):
            x = s.spec.standardize(next(s.batches))  # (B, C, H, W)
            if cfg.optim.lr_schedule == "cosine":
                s.optimizers.scale_lr(cosine_schedule(step, 1.0, cfg.optim.lr_final, tc.steps))
            with float32_kernels(tc.tf32):
                if s.graphed is not None:
                    logs, norms = s.graphed(x, step)
                else:
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=tc.precision == "bfloat16"):
                        out = s.step_model(x, step, generator=s.generators["sample"])
                    s.optimizers.zero_grad()
                    out.loss.backward()
                    logs, norms = out.logs, s.optimizers.launch()
            skipped_before = sum(s.optimizers.skipped.values())
            grad_norms = s.optimizers.finish(norms)
            s.skipped_streak = s.skipped_streak + 1 if sum(s.optimizers.skipped.values()) > skipped_before else 0

            for key, value in logs.items():
                sums[key] = sums[key] + value if key in sums else value.clone()
            count += 1
            done = step + 1
            # A row every log_every steps, and at every checkpoint step: a resumed run then averages the same
            # windows as an uninterrupted one (num_steps: the steps a row averages, fewer where a checkpoint cut in)
            if done % tc.log_every == 0 or done % tc.ckpt_every == 0 or done == end_step:
                now = time.perf_counter()
                row = _train_row(sums, count, s, grad_norms)
                row.update(
                    split="train", step=done, num_steps=count, steps_per_s=count / max(now - t_last - paused, 1e-9),
                    time=now - t_start,
                )
                write_row(row)
                shown = {k: f"{row[k]:.3g}" for k in method_spec(cfg.method).progress if k in row}
                bar.set_postfix(shown, refresh=False)
                if show and not interactive:
                    values = "  ".join(f"{k} {v}" for k, v in shown.items())
                    log.info("step %d/%d  %s  %.2f steps/s", done, end_step, values, row["steps_per_s"])
                sums, count, t_last, paused = {}, 0, now, 0.0
                if not all(math.isfinite(v) for v in row.values() if isinstance(v, float)):
                    log.warning("non-finite training metrics at step %d: %s", done, row)
            if tc.max_skipped_steps and s.skipped_streak >= tc.max_skipped_steps:
                raise _diverged(run_dir, done, f"{s.skipped_streak} consecutive updates had non-finite gradients")
            pause_start = time.perf_counter()
            if done % tc.eval_every == 0 and done != end_step:
                if dist.is_main():  # rank 0 alone evaluates; the others wait without a timeout
                    metrics = _evaluate(s)
                    write_row({"split": "val", "step": done, **metrics})
                    _log_codes(s, done)
                    # the dataset's own measure of quality next to L2: images, motion, one's own sequences
                    quality = next((k for k in ("psnr", "mpjpe_mm", "explained_variance") if k in metrics), None)
                    log.info(
                        "step %d: val log p %.2f  L2 %.3f%s", done, metrics["log_p"], metrics["l2"],
                        f"  {quality} {metrics[quality]:.2f}" if quality else "",
                    )
                dist.wait_for_main()
            if done % tc.ckpt_every == 0 and done != end_step:
                if s.skipped_streak:  # never replace a good checkpoint by one right after a non-finite update
                    log.warning("step %d: no checkpoint, the last update had a non-finite gradient", done)
                else:
                    _checkpoint(s, done)
            paused += time.perf_counter() - pause_start
            bar.update(1)
        bar.close()
        _finish(s, start_step, end_step, write_row)
        return run_dir
    finally:
        if metrics_file is not None:
            metrics_file.close()
        s.logger.close()
        for close in s.on_close:
            close()
        s.batches.close()  # folder data: stop the loader workers


def _finish(s: Setup, start_step: int, end_step: int, write_row) -> None:
    """End of run: final validation first (a non-finite model never replaces the last good checkpoint), then the
    final checkpoint, then summary and plots. A run killed anywhere in here resumes to the same files."""
    metrics, finite = None, True
    if dist.is_main():
        if start_step == end_step:  # resumed after the final checkpoint: its validation row is already logged
            metrics = _final_val_row(s.run_dir / "metrics.jsonl", end_step)
        if metrics is None:
            metrics = _evaluate(s, s.fid)
            write_row({"split": "val", "step": end_step, **metrics})
            _log_codes(s, end_step)
        finite = all(math.isfinite(v) for v in metrics.values() if isinstance(v, float))
    dist.wait_for_main()
    if not all(dist.gather_objects(finite)):
        raise _diverged(s.run_dir, end_step, "the final validation metrics are not finite")
    if start_step != end_step:
        _checkpoint(s, end_step)
    if dist.is_main() and metrics is not None:
        _write_artifacts(s, end_step, metrics)
        if end_step < s.cfg.train.steps:
            log.info("stopped at step %d of %d (train.stop_after=%d, a step of the run, not a count per job): "
                     "--resume with a larger train.stop_after (or without it) continues the run", end_step,
                     s.cfg.train.steps, s.cfg.train.stop_after)
            if start_step == end_step:
                log.warning("this job trained no step: the run was already at step %d, where train.stop_after=%d "
                            "stops it (it counts steps from the run's start, not per job); raise it to continue",
                            end_step, s.cfg.train.stop_after)
    skipped = {k: v for k, v in s.optimizers.skipped.items() if v}
    if skipped:
        log.warning("skipped updates with non-finite gradients: %s", skipped)


def _write_artifacts(s: Setup, end_step: int, metrics: dict) -> None:
    """reconstructions.png, curves.png and, last, summary.json (its presence means the run is complete: a run
    stopped early by ``train.stop_after`` gets the figures only)."""
    cfg, spec, run_dir, standardize = s.cfg, s.spec, s.run_dir, s.spec.standardize
    summary = {key: value for key, value in metrics.items() if key not in ("split", "step")}
    summary = {"step": end_step, "dataset": spec.name, **summary}
    if s.model.final_beta is not None:  # the β of its beta-ELBO, as the model applied it (daps compare's column)
        summary["final_beta"] = s.model.final_beta
    if spec.note:
        summary["note"] = spec.note
    s.model.eval()
    val_x = torch.cat([b for b, _ in zip(s.val_images.batches(), range(8))])  # the first few validation batches
    # spread over the (often sorted) split; computed on the host, so every device shows the same examples
    spread = spread_indices(val_x.shape[0])
    shown = val_x[spread.to(val_x.device)]
    with torch.no_grad():
        x_shown = standardize(shown)
        rec = s.model.reconstruct(x_shown, torch.Generator(s.device).manual_seed(cfg.train.seed))
    title = f"{cfg.method} on {spec.name} after {end_step} steps (validation {spec.examples})"
    spec.save_reconstructions(cfg.data, x_shown, rec.x_hat, run_dir / "reconstructions.png", title)
    save_training_curves(
        run_dir / "metrics.jsonl", run_dir / "curves.png", title=f"{cfg.method} / {spec.name}",
        quality="psnr" if spec.likelihood == "gaussian" else "l2",
    )
    s.logger.image("reconstructions", run_dir / "reconstructions.png", end_step)
    if end_step == cfg.train.steps:
        write_json_atomic(run_dir / "summary.json", summary)


def _log_codes(s: Setup, step: int) -> None:
    """The codes of the first validation batch, for the logger's per-position histograms (discrete codes only)."""
    if s.logger.kind == "none" or s.model.vocab_size is None:
        return
    s.model.eval()
    with torch.no_grad():
        batch = next(iter(s.val_images.batches()))
        indices = s.model.encode(s.spec.standardize(batch), torch.Generator(s.device).manual_seed(s.cfg.train.seed))
    s.model.train()
    s.logger.codes(step, indices)


def summarize(metrics: dict[str, float | str], source: str = "validation", examples: str = "images") -> str:
    """A short human-readable table of metrics over ``source`` (validation during training; ``eval`` names the
    dataset and split) of ``num_images`` ``examples`` (the dataset's word: ``images``, ``windows``)."""
    rows = [
        ("ELBO", "elbo", "nats"),
        ("beta-ELBO", "beta_elbo", "nats"),
        ("log p(x|z)", "log_p", "nats"),
        ("KL(q || prior)", "kl", "nats"),
        ("L2", "l2", ""),
        ("MSE", "mse", ""),
        ("explained variance", "explained_variance", ""),
        ("RMSE (data units)", "rmse_raw", ""),
        ("PSNR", "psnr", "dB"),
        ("SSIM", "ssim", ""),
        ("MPJPE (root-relative)", "mpjpe_mm", "mm"),
        ("MPJPE (global)", "mpjpe_global_mm", "mm"),
        ("joint angle error", "joint_error_deg", "deg"),
        ("root velocity error", "root_velocity_error_m_s", "m/s"),
        ("foot skating", "foot_skating_m_s", "m/s"),
        ("  ground truth", "gt_foot_skating_m_s", "m/s"),
        ("ground penetration", "ground_penetration_mm", "mm"),
        ("  ground truth", "gt_ground_penetration_mm", "mm"),
        ("foot float", "foot_float_mm", "mm"),
        ("  ground truth", "gt_foot_float_mm", "mm"),
        ("codebook utilization", "codebook_utilization", ""),
        ("code perplexity", "code_perplexity", ""),
        ("token entropy", "token_entropy", "nats"),
    ]
    count = f"{int(metrics.get('num_images', 0))} {examples}"
    lines = [f"validation on {count}:" if source == "validation" else f"{source}, {count}:"]
    for label, key, unit in rows:
        if key in metrics:
            lines.append(f"  {label:<22} {metrics[key]:>10.4f} {unit}".rstrip())  # no trailing space without a unit
    if "fid" in metrics:
        lines.append(
            f"  {'FID':<22} {metrics['fid']:>10.4f}  (protocol {metrics['fid_protocol']}, "
            f"{int(metrics['fid_num_images'])} images)"
        )
    if metrics.get("skipped_files"):
        lines.append(f"  skipped: {int(metrics['skipped_files'])} unreadable file(s), each replaced by another image")
    if metrics.get("note"):
        lines.append(f"  note: {metrics['note']}")
    return "\n".join(lines)


__all__ = ["TrainingDiverged", "prepare_run_dir", "stop_step", "summarize", "train"]
