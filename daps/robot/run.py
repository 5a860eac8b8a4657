"""Training and loading the high-level policy; a policy is a run folder like any other.

Run folder (marker kind ``robot``)::

    config.json             {"robot": RobotConfig, "commands": the examples' header (tokenizer, V, T, ranges)}
    commands.safetensors    the encoded examples of both splits (reused by --resume and by evaluation)
    metrics.jsonl           train rows (loss, steps/s) and val rows (held-out bits per token, see below)
    checkpoints/step_N/     model.safetensors, config.json, state.pt (optimizer, step, generator), checksums
    curves.png, summary.json

Held-out rows report the exact bits per token of the validation clips' codes under the policy, and the same with
one input taken away: the null label, the velocities shuffled across examples, no previous window. The gaps say
how much each input tells the policy.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from daps.checkpoint import (
    CheckpointError,
    load_weights,
    refuse_other_kind,
    remove_leftovers,
    resolve_checkpoint,
)
from daps.config import check_optimizer_settings
from daps.errors import UserError
from daps.prior.nets import drop_labels
from daps.prior.run import (
    END_FILES,
    prepare_folder,
    run_steps,
    save_prior_curves,
    seconds_per_call,
    settings_record,
    start_training,
)
from daps.prior.run import ENTRIES as PRIOR_ENTRIES
from daps.robot.data import CommandSet, encode_split, load_commands, save_commands, velocity_ranges
from daps.robot.policy import CommandPolicy
from daps.runfolder import FolderLock, clear_folder, finished, has_content, write_json_atomic, write_marker

log = logging.getLogger("daps")

KIND = "robot"
COMMANDS_FILE = "commands.safetensors"
ENTRIES = PRIOR_ENTRIES | {COMMANDS_FILE}
"""What a policy's run writes into its folder (``--overwrite`` deletes these, and keeps anything else)."""
VAL_EXAMPLES = 4000


@dataclass
class RobotConfig:
    """The policy's settings (``daps robot train TOKENIZER ... key=value`` overrides any of them)."""

    tokenizer: str = ""
    """The motion tokenizer's run folder or checkpoint (any method with discrete codes, trained on lafan1-h1), or its
    pretrained folder or Hub repo id."""
    data_dir: str = ""
    """Folder with the LAFAN1 H1 data (default: as the tokenizer was trained, then $DAPS_DATA_DIR)."""
    stride: int = 4
    """Frames between the starts of consecutive encoded windows (must divide the window length)."""
    samples: int = 1
    """Codes drawn per window from a stochastic encoder (1 for a quantizer)."""
    width: int = 128
    num_layers: int = 2
    num_heads: int = 4
    mlp_ratio: int = 4
    steps: int = 4000
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    label_dropout: float = 0.1
    """Share of training labels replaced by the null label (what classifier-free guidance needs)."""
    prev_dropout: float = 0.1
    """Share of training examples whose previous codes are replaced by the start symbol (rollouts start there)."""
    seed: int = 0
    log_every: int = 50
    eval_every: int = 500
    ckpt_every: int = 500
    keep_checkpoints: int = 2
    progress: bool = True
    out_dir: str = "runs/robot-policy"

    def validate(self) -> None:
        for name in ("stride", "samples", "width", "num_layers", "num_heads", "mlp_ratio", "steps", "batch_size",
                     "log_every", "eval_every", "ckpt_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.width % self.num_heads:
            raise UserError(f"width {self.width} is not a multiple of num_heads {self.num_heads}")
        for name in ("label_dropout", "prev_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise UserError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        check_optimizer_settings(self)


def build_policy(cfg: RobotConfig, meta: dict[str, Any]) -> CommandPolicy:
    torch.manual_seed(cfg.seed)
    scale = torch.tensor(meta["velocity_std"], device="cpu")  # a buffer of the policy: moves with it
    return CommandPolicy(
        int(meta["num_tokens"]), int(meta["vocab_size"]), len(meta["class_names"]), cfg.width, cfg.num_layers,
        cfg.num_heads, cfg.mlp_ratio, velocity_scale=scale,
    )


def codes_per_window(method: str, samples: int) -> int:
    """Codes drawn per window: ``samples`` from a stochastic encoder; a quantizer's code is the same at every draw,
    so it takes ``samples=1`` only (more would only repeat examples: refused, as ``export-codes`` refuses it)."""
    from daps.codes import check_draws

    check_draws(method, samples, "samples=")
    return samples


def velocity_scale(train: CommandSet) -> list[float]:
    """Per component (forward, sideways, yaw rate), the standard deviation of the training windows' velocities,
    at least 1e-3 (a component that never varies would otherwise divide the policy's input by zero)."""
    return train.velocity.double().std(0).clamp(min=1e-3).tolist()


def training_batch(train: CommandSet, idx: torch.Tensor, cfg: RobotConfig, num_classes: int, start_symbol: int,
                   generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """The policy's examples ``idx`` of ``train`` as it learns from them: codes, labels (``cfg.label_dropout`` of
    them the null label ``num_classes``), velocities and previous codes (``cfg.prev_dropout`` of them replaced by
    ``start_symbol``, the context a rollout starts from)."""
    labels = drop_labels(train.labels[idx], cfg.label_dropout, num_classes, generator)
    drop = torch.rand(idx.shape, generator=generator, device=idx.device) < cfg.prev_dropout
    prev = torch.where(drop[:, None], torch.full_like(train.prev[idx], start_symbol), train.prev[idx])
    return train.codes[idx], labels, train.velocity[idx], prev


def load_motion_tokenizer(path: str, data_dir: str, device: torch.device | str,
                          user: str) -> tuple[Any, dict[str, Any]]:
    """The motion tokenizer at ``path`` (a run or checkpoint with discrete codes, trained on ``lafan1-h1``, or its
    pretrained folder or Hub repo id) and where it came from (:func:`daps.hub.open_model`), its data folder replaced
    by ``data_dir`` when given and its feature statistics checked against the data; a UserError naming ``user``
    (``the policy``) otherwise."""
    from daps.data import model_data
    from daps.hub import open_model

    if not path:
        raise UserError(f"name the motion tokenizer run whose codes {user} takes")
    model, origin = open_model(path, device)
    tcfg = model.config
    if model.vocab_size is None:
        raise UserError(f"{path} is a {tcfg.method} run: its latent is continuous, it has no codes")
    if tcfg.data.name != "lafan1-h1":
        raise UserError(f"{path} was trained on {tcfg.data.name}; {user} needs a motion tokenizer of the H1 "
                        "(lafan1-h1)")
    model_data(model, origin, data_dir, path)
    return model, origin


def encode_commands(cfg: RobotConfig, device: torch.device) -> tuple[dict[str, CommandSet], dict[str, Any]]:
    """Encode the training and validation windows with the tokenizer of ``cfg`` (see :mod:`daps.robot.data`)."""
    from daps.codes import config_sha256
    from daps.config_io import config_to_dict
    from daps.data.motion import MOTION_TYPES
    from daps.motion.dataset import load_motion_data

    model, origin = load_motion_tokenizer(cfg.tokenizer, cfg.data_dir, device, "the policy")
    tcfg = model.config
    window = int(tcfg.data.image_shape[1])
    if window % cfg.stride:  # before the data are read
        raise UserError(f"stride {cfg.stride} must divide the tokenizer's window length {window}")
    motion = load_motion_data(tcfg.data.data_dir or None, window=window, stride=cfg.stride)
    samples = codes_per_window(tcfg.method, cfg.samples)
    generator = torch.Generator(device).manual_seed(cfg.seed)
    log.info("encoding %d training and %d validation windows (every %d frames) with %s",
             len(motion.train), len(motion.val), cfg.stride, cfg.tokenizer)
    t0 = time.perf_counter()
    sets = {s: encode_split(model, motion, s, cfg.stride, samples, generator, progress=cfg.progress)
            for s in ("train", "val")}
    log.info("encoded the windows in %.0f s", time.perf_counter() - t0)
    ranges = velocity_ranges(sets["train"], list(MOTION_TYPES))
    meta = {
        "tokenizer": origin["run"],
        "checkpoint": origin["checkpoint"],
        "model_sha256": origin["model_sha256"],
        "weights_digest": origin["weights_digest"],
        "config_sha256": config_sha256(config_to_dict(tcfg)),
        "method": tcfg.method,
        "vocab_size": int(model.vocab_size),
        "num_tokens": int(sets["train"].codes.shape[1]),
        "window": window,
        "fps": motion.fps,
        "class_names": list(MOTION_TYPES),
        "stride": cfg.stride,
        "samples": samples,
        "velocity_std": velocity_scale(sets["train"]),
        "velocity_ranges": ranges,
    }
    return sets, meta


def _val_subset(val: CommandSet) -> CommandSet:
    n = len(val)
    if n <= VAL_EXAMPLES:
        return val
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(0), device="cpu")[:VAL_EXAMPLES].sort().values
    return val.subset(idx)


@torch.no_grad()
def evaluate_policy(model: CommandPolicy, val: CommandSet, batch_size: int = 500) -> dict[str, float]:
    """Held-out bits per token with every input, and with the null label, shuffled velocities or no previous
    window instead (see the module docstring)."""
    model.eval()
    g = torch.Generator().manual_seed(0)
    shuffled = val.velocity[torch.randperm(len(val), generator=g, device=g.device).to(val.velocity.device)]
    variants = {
        "bits_per_token": lambda s, e: (val.labels[s:e], val.velocity[s:e], val.prev[s:e]),
        "bits_per_token_null_label": lambda s, e: (torch.full_like(val.labels[s:e], model.num_classes),
                                                   val.velocity[s:e], val.prev[s:e]),
        "bits_per_token_shuffled_velocity": lambda s, e: (val.labels[s:e], shuffled[s:e], val.prev[s:e]),
        "bits_per_token_no_prev": lambda s, e: (val.labels[s:e], val.velocity[s:e],
                                                torch.full_like(val.prev[s:e], model.start_symbol)),
    }
    out: dict[str, float] = {"num_examples": float(len(val))}
    for key, inputs in variants.items():
        total = 0.0
        for s in range(0, len(val), batch_size):
            e = min(s + batch_size, len(val))
            total += float(model.token_log_probs(val.codes[s:e], *inputs(s, e)).double().sum())
        out[key] = -total / val.codes.numel() / math.log(2)
    model.train()
    return out


def train_policy(cfg: RobotConfig, resume: bool = False, overwrite: bool = False, device: str | torch.device = "cpu",
                 commands: tuple[dict[str, CommandSet], dict] | None = None) -> Path:
    """Train the policy of ``cfg`` into ``cfg.out_dir``; returns the run folder. ``commands`` gives the examples
    and their header directly (tests with synthetic codes) instead of encoding them with ``cfg.tokenizer``."""
    cfg.validate()
    device = torch.device(device)
    run_dir = Path(cfg.out_dir)
    ckpt = prepare_folder(cfg, resume, overwrite, kind=KIND)
    saved = resume and (run_dir / COMMANDS_FILE).is_file()  # written (atomically) by this run before it stopped
    if not saved:  # encoded and the policy built before the folder is touched, so a refused tokenizer or
        # settings that cannot be built leave nothing behind (and a policy --overwrite would replace as it was)
        sets, meta = commands if commands is not None else encode_commands(cfg, device)
        model = build_policy(cfg, meta).to(device)
    lock = FolderLock(run_dir).acquire()
    try:
        if overwrite and has_content(run_dir):
            clear_folder(run_dir, KIND, "--out", ENTRIES)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_marker(run_dir, KIND)
        remove_leftovers(run_dir)
        if saved:
            sets, meta = load_commands(run_dir / COMMANDS_FILE)
            model = build_policy(cfg, meta).to(device)
        config = {KIND: settings_record(cfg), "commands": meta}
        if ckpt is None:  # a new run: its config first, so that a run killed from here on can be resumed
            write_json_atomic(run_dir / "config.json", config)
        if not saved:
            save_commands(run_dir / COMMANDS_FILE, sets, meta)
        optimizer, generator, start, streak = start_training(model, cfg, ckpt, device, run_dir)
        if start == cfg.steps and finished(run_dir, start, END_FILES):
            log.info("%s already finished step %d; nothing to do", run_dir, start)  # and nothing is written
            return run_dir
        if ckpt is not None:  # a resume: only once the checkpoint's weights fit
            write_json_atomic(run_dir / "config.json", config)
        train, val = sets["train"].to(device), _val_subset(sets["val"]).to(device)
        log.info("policy: %d training examples, %d held out, %d parameters", len(train), len(val),
                 sum(p.numel() for p in model.parameters()))

        def batch_loss() -> torch.Tensor:
            idx = torch.randint(len(train), (cfg.batch_size,), generator=generator, device=device)
            codes, labels, velocity, prev = training_batch(train, idx, cfg, model.num_classes, model.start_symbol,
                                                           generator)
            return model.loss(codes, labels, velocity, prev)

        run_steps(run_dir, model, optimizer, generator, config, cfg, start, batch_loss,
                  lambda: evaluate_policy(model, val), "robot policy", streak)
        _finish(run_dir, model, cfg, meta, device)
    finally:
        lock.release()
    return run_dir


def _finish(run_dir: Path, model: CommandPolicy, cfg: RobotConfig, meta: dict, device: torch.device) -> None:
    from daps.plots import read_metrics

    rows = read_metrics(run_dir / "metrics.jsonl")
    val = [r for r in rows if r.get("split") == "val"]
    summary: dict[str, Any] = {"step": cfg.steps, **(val[-1] if val else {})}
    n = 256
    g = torch.Generator(device).manual_seed(0)
    labels = torch.arange(n, device=device) % model.num_classes
    prev = torch.full((n, model.num_tokens), model.start_symbol, device=device)
    velocity = torch.zeros(n, 3, device=device)
    summary["windows_per_s"] = n / seconds_per_call(lambda: model.generate(labels, velocity, prev, generator=g), device)
    save_prior_curves(rows, run_dir / "curves.png", f"robot policy over {meta.get('method', '?')} codes")
    write_json_atomic(run_dir / "summary.json", summary)  # last: it marks the run finished


def load_policy(path: str | Path, device: str | torch.device = "cpu") -> tuple[CommandPolicy, RobotConfig, dict]:
    """A trained policy from its run folder (or checkpoint): the network (eval mode), its settings and the header
    of its examples (tokenizer, V, T, velocity ranges)."""
    ckpt = resolve_checkpoint(path)
    refuse_other_kind(ckpt, KIND, "a robot policy (daps robot train)")
    try:
        config = json.loads((ckpt / "config.json").read_text())
        cfg = RobotConfig(**config[KIND])
        meta = config["commands"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{ckpt / 'config.json'} is not a daps robot policy config ({err})") from None
    model = build_policy(cfg, meta)
    load_weights(model, ckpt)
    return model.to(device).eval(), cfg, meta
