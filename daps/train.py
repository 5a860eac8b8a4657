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
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from daps import dist
from daps.checkpoint import (
    CKPT_DIR,
    load_training_state,
    load_weights,
    read_config,
    resolve_checkpoint,
    save_checkpoint,
    write_config,
    write_text_atomic,
)
from daps.config import Config, config_to_dict
from daps.data import dataset_spec, train_batches, val_batches
from daps.functional import cosine_schedule
from daps.methods import build_method
from daps.metrics import evaluate
from daps.metrics.evaluate import FIDSetup, fid_setup
from daps.optim import Optimizers
from daps.plots import save_reconstruction_grid, save_training_curves

log = logging.getLogger("daps")

# Settings that may change when a run is resumed; anything else must match the saved config.
RESUMABLE_CHANGES = {
    "train.steps",
    "train.progress",
    "train.log_every",
    "train.eval_every",
    "train.eval_examples",
    "train.eval_batch_size",
    "train.ckpt_every",
    "train.keep_checkpoints",
    "train.stop_after",
    "train.out_dir",
    "data.data_dir",
    "data.download",
    "data.num_workers",
    "train.fid",
    "train.fid_reference",
    "train.fid_weights",
}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


@dataclass
class RunPlan:
    """What :func:`prepare_run_dir` decided: start fresh (deleting an old run first?) or resume."""

    resume_from: Path | None = None
    delete_first: bool = False


def prepare_run_dir(cfg: Config, resume: bool, overwrite: bool) -> RunPlan:
    """Check the run folder before anything is written or deleted.

    An existing, non-empty folder is refused unless ``resume`` (continue from its latest checkpoint) or
    ``overwrite`` (delete it, which :func:`train` does only once data and model are ready) is given.
    """
    run_dir = Path(cfg.train.out_dir)
    if resume and overwrite:
        raise ValueError("--resume and --overwrite cannot be combined")
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"train.out_dir {run_dir} exists and is not a folder")
    if not (run_dir.exists() and any(run_dir.iterdir())):
        if resume:
            log.warning("--resume: %s does not exist yet, starting a new run", run_dir)
        return RunPlan()
    if overwrite:
        return RunPlan(delete_first=True)
    if not resume:
        raise ValueError(f"run folder {run_dir} already exists; pass --resume to continue it or --overwrite to replace it")
    if not (run_dir / CKPT_DIR / "latest").is_file():
        raise ValueError(f"cannot resume: {run_dir} has no checkpoint ({CKPT_DIR}/latest is missing)")
    ckpt = resolve_checkpoint(run_dir)
    saved = _flatten(config_to_dict(read_config(ckpt / "config.json")))
    given = _flatten(config_to_dict(cfg))
    changed = sorted(k for k in given if k not in RESUMABLE_CHANGES and saved.get(k) != given[k])
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {given[k]!r}" for k in changed)
        raise ValueError(f"cannot resume {run_dir} with a different config ({diffs})")
    if saved["train.steps"] != given["train.steps"]:
        log.warning(
            "train.steps changed on resume (%s -> %s): schedules that follow the run length (beta) are re-timed",
            saved["train.steps"], given["train.steps"],
        )
    return RunPlan(resume_from=ckpt)


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop rows of ``metrics.jsonl`` logged after ``last_step``, and a line cut off by a crash (atomically)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("step", 0) <= last_step:
            kept.append(line)
    write_text_atomic(path, "".join(line + "\n" for line in kept))


def _rng_states(generators: dict[str, torch.Generator]) -> list[dict[str, torch.Tensor]]:
    """Every rank's generator states, gathered to a list indexed by rank (each rank draws its own data)."""
    return dist.gather_objects({name: g.get_state() for name, g in generators.items()})


def train(
    cfg: Config, resume: bool = False, overwrite: bool = False, device: str | torch.device | None = None
) -> Path:
    """Train ``cfg.method`` on ``cfg.data`` for ``cfg.train.steps`` optimizer steps; returns the run folder.

    Writes ``config.json``, ``metrics.jsonl`` (one JSON object per train log / validation),
    ``checkpoints/``, ``reconstructions.png``, ``curves.png`` and ``summary.json`` into the run folder.
    """
    rank, world = dist.setup()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    tc = cfg.train
    run_dir = Path(tc.out_dir)
    end_step = min(tc.steps, tc.stop_after) if tc.stop_after else tc.steps
    plan = prepare_run_dir(cfg, resume, overwrite)
    dist.barrier()  # every rank has inspected the folder before rank 0 may delete it

    # Data: raw batches (binary floats or uint8 pixels) on the device; `standardize` maps them to the model's
    # scale. Validation: a fixed subset, the same images at every evaluation.
    spec = dataset_spec(cfg.data.name)
    if spec.image_shape is not None and tuple(cfg.data.image_shape) != spec.image_shape:
        raise ValueError(f"data.image_shape is {cfg.data.image_shape} but {spec.name} has {spec.image_shape}")
    standardize = spec.standardize
    state = load_training_state(plan.resume_from) if plan.resume_from is not None else None
    batches = train_batches(
        cfg.data, tc.batch_size, tc.seed * 1000 + rank, state["step"] if state else 0,
        torch.Generator(device).manual_seed(tc.seed * 1000 + 2 * rank + 1), device,
    )
    val_images, num_val = val_batches(cfg.data, "test", tc.eval_examples, tc.eval_batch_size, device)
    if spec.note and not spec.in_memory:  # in-memory loaders say it themselves
        log.warning("note: %s", spec.note)

    # Model and optimizers. Initialization is seeded without touching the global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tc.seed)
        model = build_method(cfg, tuple(cfg.data.image_shape)).to(device)
    if tc.compile:  # after the weights exist, before DDP wraps the model
        if hasattr(getattr(model, "encoder", None), "compile_sampler"):
            model.encoder.compile_sampler(mode="reduce-overhead" if device.type == "cuda" else None)
        if hasattr(model, "compile_step"):
            model.compile_step()
    optimizers = Optimizers(model, model.optimizer_specs(cfg.optim.lr, cfg.optim.grad_clip), cfg.optim.weight_decay)
    step_model = model
    if world > 1:
        step_model = torch.nn.parallel.DistributedDataParallel(model)
    generators = {"sample": torch.Generator(device).manual_seed(tc.seed * 1000 + 2 * rank + 2)}
    if batches.generator is not None:  # in-memory data: its draws resume exactly from the checkpoint
        generators["data"] = batches.generator

    # FID's network and reference statistics are loaded now, so a wrong path fails before training, not after it.
    fid = None
    if dist.is_main() and tc.fid != "none":
        fid = fid_setup(tc.fid, tc.fid_weights or None, tc.fid_reference or None, device)

    start_step = 0
    if state is not None:
        start_step = state["step"]
        if start_step > end_step:
            raise ValueError(f"cannot resume {run_dir} at step {start_step}: the run is set to stop at step {end_step}")
        if start_step == end_step and (run_dir / "summary.json").exists():
            log.info("%s already finished step %d; nothing to do", run_dir, end_step)
            return run_dir
        if len(state["rng"]) != world:
            raise ValueError(f"{run_dir} was trained by {len(state['rng'])} processes; resume it with as many")
        load_weights(model, plan.resume_from)
        optimizers.load_state_dict(state["optimizers"])
        try:
            for name, g in generators.items():
                g.set_state(state["rng"][rank][name])  # folder data instead restart their stream at start_step
        except RuntimeError:
            raise ValueError(f"{run_dir} was trained on another kind of device than {device}; resume it there") from None
        log.info("resumed %s at step %d", run_dir, start_step)

    if dist.is_main():
        if plan.delete_first:
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_config(run_dir / "config.json", cfg)
        if plan.resume_from is not None:  # rows logged after the checkpoint will be logged again
            truncate_metrics(run_dir / "metrics.jsonl", start_step)
        num_params = sum(p.numel() for p in model.parameters())
        log.info(
            "training %s on %s (%d train / %d val images) for %d steps, %d parameters, device %s -> %s",
            cfg.method, spec.name, len(batches), num_val, tc.steps, num_params, device, run_dir,
        )
    metrics_file = open(run_dir / "metrics.jsonl", "a") if dist.is_main() else None

    def write_row(row: dict) -> None:
        if metrics_file is not None:
            metrics_file.write(json.dumps(row) + "\n")
            metrics_file.flush()

    def run_eval(step: int, fid: FIDSetup | None = None) -> dict[str, float]:
        eval_gen = torch.Generator(device).manual_seed(tc.seed + 12345)  # same codes' noise at every eval
        metrics = evaluate(model, val_images, tc.eval_batch_size, eval_gen, standardize, fid)
        write_row({"split": "val", "step": step, **metrics})
        return metrics

    def checkpoint(step: int) -> None:
        rng = _rng_states(generators)  # a collective: every rank takes part
        if dist.is_main():
            state = {"step": step, "optimizers": optimizers.state_dict(), "rng": rng}
            save_checkpoint(run_dir, step, model, cfg, state, keep=tc.keep_checkpoints)
        dist.barrier()

    bar = tqdm(
        total=end_step, initial=start_step, disable=not (tc.progress and dist.is_main()),
        dynamic_ncols=True, mininterval=1.0, unit="step",
    )
    sums: dict[str, torch.Tensor] = {}
    count, t_last, t_start = 0, time.perf_counter(), time.perf_counter()
    model.train()
    for step in range(start_step, end_step):
        x = standardize(next(batches))  # (B, C, H, W)
        if cfg.optim.lr_schedule == "cosine":
            optimizers.scale_lr(cosine_schedule(step, 1.0, cfg.optim.lr_final, tc.steps))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=tc.precision == "bfloat16"):
            out = step_model(x, step, generator=generators["sample"])
        optimizers.zero_grad()
        out.loss.backward()
        grad_norms = optimizers.step()

        for key, value in out.logs.items():
            sums[key] = sums[key] + value if key in sums else value.clone()
        count += 1
        done = step + 1
        if done % tc.log_every == 0 or done == end_step:
            now = time.perf_counter()
            row = {key: float(value) / count for key, value in sums.items()}
            row.update({f"grad_norm_{k}": v for k, v in grad_norms.items()})
            row.update({f"skipped_{k}": v for k, v in optimizers.skipped.items()})
            if batches.num_skipped:
                row["skipped_files"] = batches.num_skipped
            row.update(split="train", step=done, steps_per_s=count / (now - t_last), time=now - t_start)
            write_row(row)
            shown = {k: f"{row[k]:.3g}" for k in ("log_p", "kl", "ess", "eta", "temperature", "perplexity") if k in row}
            bar.set_postfix(shown, refresh=False)
            sums, count, t_last = {}, 0, now
            if not all(math.isfinite(v) for v in row.values() if isinstance(v, float)):
                log.warning("non-finite training metrics at step %d: %s", done, row)
        if dist.is_main() and done % tc.eval_every == 0 and done != end_step:
            metrics = run_eval(done)
            log.info("step %d: val log p %.2f  L2 %.3f  PSNR %.2f", done, metrics["log_p"], metrics["l2"], metrics["psnr"])
        if done % tc.ckpt_every == 0 and done != end_step:
            checkpoint(done)
        bar.update(1)
    bar.close()

    checkpoint(end_step)
    if dist.is_main():
        metrics = run_eval(end_step, fid)
        summary = {"step": end_step, "dataset": spec.name, **metrics}
        if spec.note:
            summary["note"] = spec.note
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        model.eval()
        val_x = torch.cat([b for b, _ in zip(val_images(), range(8))])  # the first few validation batches
        shown = val_x[torch.linspace(0, val_x.shape[0] - 1, 16).long().unique()]  # spread over the (often sorted) split
        with torch.no_grad():
            x_shown = standardize(shown)
            rec = model.reconstruct(x_shown, torch.Generator(device).manual_seed(tc.seed))
        save_reconstruction_grid(
            standardize.to_unit(x_shown), standardize.to_unit(rec.x_hat), run_dir / "reconstructions.png",
            title=f"{cfg.method} on {spec.name} after {end_step} steps (validation images)",
        )
        save_training_curves(
            run_dir / "metrics.jsonl", run_dir / "curves.png", title=f"{cfg.method} / {spec.name}",
            quality="psnr" if spec.likelihood == "gaussian" else "l2",
        )
        metrics_file.close()
    skipped = {k: v for k, v in optimizers.skipped.items() if v}
    if skipped:
        log.warning("skipped updates with non-finite gradients: %s", skipped)
    dist.teardown()
    return run_dir


def summarize(metrics: dict[str, float]) -> str:
    """A short human-readable table of validation metrics."""
    rows = [
        ("ELBO", "elbo", "nats"),
        ("beta-ELBO", "beta_elbo", "nats"),
        ("log p(x|z)", "log_p", "nats"),
        ("KL(q || uniform)", "kl", "nats"),
        ("L2", "l2", ""),
        ("MSE", "mse", ""),
        ("PSNR", "psnr", "dB"),
        ("SSIM", "ssim", ""),
        ("codebook utilization", "codebook_utilization", ""),
        ("code perplexity", "code_perplexity", ""),
        ("token entropy", "token_entropy", "nats"),
    ]
    lines = [f"validation on {int(metrics.get('num_images', 0))} images:"]
    for label, key, unit in rows:
        if key in metrics:
            lines.append(f"  {label:<22} {metrics[key]:>10.4f} {unit}")
    if "fid" in metrics:
        lines.append(
            f"  {'FID':<22} {metrics['fid']:>10.4f}  (protocol {metrics['fid_protocol']}, "
            f"{int(metrics['fid_num_images'])} images)"
        )
    if metrics.get("note"):
        lines.append(f"  note: {metrics['note']}")
    return "\n".join(lines)


__all__ = ["prepare_run_dir", "summarize", "train"]
