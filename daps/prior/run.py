"""Training, loading, sampling and scoring a prior over exported codes; a prior is a run folder like any other.

Run folder (marker kind ``prior``)::

    config.json             {"prior": PriorConfig, "codes": the codes file's header}
    metrics.jsonl           train rows (loss, steps/s) and val rows (bits per token for ar, held-out loss)
    checkpoints/step_N/     model.safetensors, config.json, state.pt (optimizer, step, generator), checksums
    curves.png              train and held-out loss against steps
    summary.json            the last validation and the sampling speed

Batches are drawn with a generator whose state is checkpointed, so ``--resume`` continues exactly as an
uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from daps.checkpoint import (
    CheckpointError,
    find_resumable,
    load_training_state,
    load_weights,
    refuse_other_kind,
    remove_leftovers,
    resolve_checkpoint,
    restore_generator,
    save_checkpoint,
)
from daps.codes import CodeSet, content_sha256, load_codes
from daps.config import check_optimizer_settings
from daps.errors import UserError, check_at_most, did_you_mean
from daps.functional import is_integer_dtype
from daps.methods.common import check_like_parameters
from daps.prior.nets import ARPrior, DFMPrior, corrupt, drop_labels
from daps.runfolder import (
    FolderLock,
    OutputFolderError,
    check_replaceable,
    clear_folder,
    finished,
    has_content,
    is_output_folder,
    refuse_precious,
    write_json_atomic,
    write_marker,
)

log = logging.getLogger("daps")

KIND = "prior"
ENTRIES = frozenset({"config.json", "metrics.jsonl", "checkpoints", "curves.png", "summary.json"})
"""What a prior's run writes into its folder (``--overwrite`` deletes these, and keeps anything else)."""


MAX_EULER_STEPS = 100_000
"""The most Euler steps a dfm prior samples with (each is a network evaluation per sample): more is a typo."""


@dataclass
class PriorConfig:
    """A prior's settings (``daps prior train ... key=value`` overrides any of them)."""

    kind: str = "ar"
    """``ar`` (autoregressive transformer) or ``dfm`` (discrete flow matching)."""
    source: str = "uniform"
    """``dfm``: the source distribution, ``uniform`` over V (as the original) or ``mask``."""
    codes: str = ""
    """The training codes file (``daps export-codes``)."""
    val_codes: str = ""
    """Held-out codes of the same tokenizer (e.g. its test split); empty: ``val_fraction`` of the training inputs."""
    val_fraction: float = 0.05
    width: int = 128
    num_layers: int = 2
    """``ar``: blocks in each of its two stacks; ``dfm``: blocks."""
    num_heads: int = 4
    mlp_ratio: int = 4
    steps: int = 5000
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    label_dropout: float = 0.1
    """Share of training labels replaced by the null label (what classifier-free guidance needs)."""
    euler_steps: int = 32
    """``dfm``: Euler steps of sampling."""
    seed: int = 0
    log_every: int = 50
    eval_every: int = 1000
    ckpt_every: int = 1000
    keep_checkpoints: int = 2
    progress: bool = True
    out_dir: str = "runs/prior"

    def validate(self) -> None:
        if self.kind not in ("ar", "dfm"):
            raise UserError(f"prior kind must be ar or dfm, got {self.kind!r}")
        if self.source not in ("uniform", "mask"):
            raise UserError(f"source must be uniform or mask, got {self.source!r}")
        for name in ("width", "num_layers", "num_heads", "mlp_ratio", "steps", "batch_size", "euler_steps",
                     "log_every", "eval_every", "ckpt_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1, got {getattr(self, name)}")
        check_at_most(("euler_steps", self.euler_steps, MAX_EULER_STEPS))
        if self.width % self.num_heads:
            raise UserError(f"width {self.width} is not a multiple of num_heads {self.num_heads}")
        if not 0 <= self.label_dropout < 1:
            raise UserError(f"label_dropout must be in [0, 1), got {self.label_dropout}")
        if not 0 < self.val_fraction < 1:
            raise UserError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        check_optimizer_settings(self)


FLAG_SETTINGS = {
    "out_dir": "--out", "codes": "the codes argument", "tokenizer": "the tokenizer argument", "kind": "--kind",
    "val_codes": "--val-codes", "data_dir": "--data-dir",
}
"""Settings given by the command line's own arguments, not by ``key=value``."""


DFM_ONLY = ("source", "euler_steps")
"""Settings only a ``dfm`` prior reads."""


def check_settings_read(cfg: PriorConfig, given: set[str]) -> None:
    """UserError if a setting given as ``key=value`` (the names in ``given``) is one this prior would not read:
    a ``dfm`` prior's settings for an ``ar`` prior, ``val_fraction`` with ``val_codes`` (the held-out codes are
    that file's)."""
    dfm_only = given & set(DFM_ONLY)
    if cfg.kind == "ar" and dfm_only:
        raise UserError(f"{', '.join(sorted(dfm_only))}: settings of dfm priors (--kind dfm); an ar prior has none")
    if cfg.val_codes and "val_fraction" in given:
        raise UserError("val_fraction: read only without --val-codes (the held-out codes are that file's)")


def settings_help(cfg: Any) -> str:
    """The ``key=value`` settings of the flat settings dataclass ``cfg`` with its values, for a command's --help
    (those the command's own arguments give are left out)."""
    values = ", ".join(f"{f.name}={getattr(cfg, f.name)}" for f in dataclasses.fields(cfg)
                       if f.name not in FLAG_SETTINGS)
    return f"settings (key=value), with their defaults: {values}"


def apply_overrides(cfg: Any, overrides: list[str]) -> Any:
    """``key=value`` strings applied to a copy of the flat settings dataclass ``cfg`` (values parsed by the
    field's type)."""
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    changes: dict[str, Any] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep and key in FLAG_SETTINGS and key in fields:
            raise UserError(f"{item!r}: give {key} with {FLAG_SETTINGS[key]}, not as a setting")
        known = ", ".join(name for name in fields if name not in FLAG_SETTINGS)
        if not sep:
            raise UserError(f"{item!r} is not a key=value setting (e.g. {item}=...); settings: {known}")
        if key not in fields:
            hint = did_you_mean(key, [name for name in fields if name not in FLAG_SETTINGS])
            raise UserError(f"unknown setting {key!r} (in {item!r}){hint}; known: {known}")
        kind = type(getattr(cfg, key))
        try:
            if kind is bool:
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                changes[key] = value.lower() in ("true", "1")
            else:
                changes[key] = kind(value)
        except ValueError:
            raise UserError(f"{key}={value!r} is not a valid {kind.__name__}") from None
    return dataclasses.replace(cfg, **changes)


def build_prior(cfg: PriorConfig, meta: dict[str, Any]) -> ARPrior | DFMPrior:
    """The network of ``cfg`` for codes described by the header ``meta``."""
    args = (int(meta["num_tokens"]), int(meta["vocab_size"]), len(meta["class_names"]),
            cfg.width, cfg.num_layers, cfg.num_heads, cfg.mlp_ratio)
    torch.manual_seed(cfg.seed)
    if cfg.kind == "ar":
        return ARPrior(*args)
    return DFMPrior(*args, source=cfg.source)


Prior = ARPrior | DFMPrior


def prior_loss(model: Prior, codes: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None):
    if isinstance(model, DFMPrior):
        return model.loss(codes, labels, generator)
    return model.loss(codes, labels)


def split_codes(cfg: PriorConfig, codes: CodeSet) -> tuple[CodeSet, CodeSet]:
    """Training and held-out codes: ``val_codes`` if given (checked to come from the same tokenizer), else a
    fixed ``val_fraction`` of the inputs (all K codes of an input on the same side)."""
    if cfg.val_codes:
        if Path(cfg.val_codes).resolve() == Path(cfg.codes).resolve():
            raise UserError(f"val_codes {cfg.val_codes} is the training codes file: hold out other inputs (export "
                            "another split, e.g. export-codes --split test) or leave val_codes out")
        val = load_codes(cfg.val_codes)
        if val.meta.get("split") == codes.meta.get("split") and val.meta.get("run") == codes.meta.get("run") \
                and torch.equal(val.codes, codes.codes):
            raise UserError(f"val_codes {cfg.val_codes} holds the same codes as {cfg.codes}: its held-out figures "
                            "would be training figures")
        if val.meta.get("split") == "train":
            log.warning("val_codes %s are codes of the training split (its header says split train): the held-out "
                        "figures measure inputs the tokenizer was trained on", cfg.val_codes)
        # the weights by their digest (the same for a checkpoint and its export); headers written before it
        # by the checkpoint file's checksum
        both = val.meta.get("weights_digest") and codes.meta.get("weights_digest")
        for key in ("vocab_size", "num_tokens", "class_names", "weights_digest" if both else "model_sha256"):
            if val.meta.get(key) != codes.meta.get(key):
                raise UserError(
                    f"val_codes {cfg.val_codes} do not come from the tokenizer of {cfg.codes} ({key} differs)"
                )
        return codes, val
    n = codes.codes.shape[0]
    n_val = max(1, int(round(n * cfg.val_fraction)))
    if n_val >= n:
        raise UserError(f"{cfg.codes} has {n} inputs: too few to hold out {cfg.val_fraction:.0%} of them")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0), device="cpu")
    train_idx, val_idx = perm[n_val:].sort().values, perm[:n_val].sort().values
    return (CodeSet(codes.codes[train_idx], codes.labels[train_idx], codes.meta),
            CodeSet(codes.codes[val_idx], codes.labels[val_idx], codes.meta))


EVAL_STRATA = 8
"""A ``dfm`` prior is evaluated on held-out codes at one time per code in each of these equal strata of [0, 1]."""


def eval_times(num_codes: int, stratum: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """One time per code, uniform within stratum ``stratum`` of :data:`EVAL_STRATA`: over the strata, stratified
    Monte Carlo over t ~ U[0, 1] (unbiased for any integrand; a fixed midpoint rule is not, and misses a mass
    near t = 0 by up to 86 % for the bound of 16 equal tokens)."""
    u = torch.rand(num_codes, generator=generator, device=device)
    return (stratum + u) / EVAL_STRATA


@torch.no_grad()
def evaluate_prior(model: Prior, codes: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> dict:
    """Held-out numbers: for ``ar`` exact bits per token given the label and without it (null label); for
    ``dfm`` its training loss (cross-entropy of p(x_1 | x_t) on all tokens, nats per token) averaged over
    t ~ U[0, 1] (:func:`eval_times`), not a likelihood, and with the mask source an estimate of the masked-diffusion
    bound on the negative log-likelihood (bits per token; :func:`masked_nll_bound`)."""
    model.eval()
    out: dict[str, float] = {"num_codes": int(codes.shape[0])}  # printed as a count
    if isinstance(model, ARPrior):
        null = torch.full_like(labels, model.num_classes)
        sums = {"cond": 0.0, "uncond": 0.0}
        for start in range(0, codes.shape[0], batch_size):
            c, y = codes[start : start + batch_size], labels[start : start + batch_size]
            sums["cond"] += float(model.token_log_probs(c, y).double().sum())
            sums["uncond"] += float(model.token_log_probs(c, null[: len(c)]).double().sum())
        tokens = codes.numel()
        out["bits_per_token"] = -sums["cond"] / tokens / math.log(2)
        out["bits_per_token_uncond"] = -sums["uncond"] / tokens / math.log(2)
    else:
        assert isinstance(model, DFMPrior)
        g = torch.Generator(codes.device).manual_seed(1234)
        total, count, bound = 0.0, 0, 0.0
        for j in range(EVAL_STRATA):
            for start in range(0, codes.shape[0], batch_size):
                c, y = codes[start : start + batch_size], labels[start : start + batch_size]
                t = eval_times(c.shape[0], j, g, c.device)
                xt = corrupt(c, t, model.vocab_size, model.source, g)
                ce = torch.nn.functional.cross_entropy(
                    model(xt, t, y).float().reshape(-1, model.vocab_size), c.reshape(-1), reduction="none")
                total += float(ce.double().sum())
                count += c.numel()
                if model.source == "mask":
                    bound += masked_nll_bound(ce.view(c.shape), xt == model.vocab_size, t)
        out["dfm_loss"] = total / count
        if model.source == "mask":
            out["nll_bound_bits_per_token"] = bound / (EVAL_STRATA * codes.shape[0]) / math.log(2)
    model.train()
    return out


def masked_nll_bound(ce: torch.Tensor, masked: torch.Tensor, t: torch.Tensor) -> float:
    """The masked-diffusion bound on -log p(x) per token (nats), summed over a batch of codes: ``ce (B, T)`` the
    cross-entropies of p(x_1 | x_t) at the codes' times ``t (B,)``, ``masked (B, T)`` the tokens masked in x_t.

    With the path kappa_t = t (each token masked with probability 1 - t) the continuous-time bound is
    ``-log p(x) <= int_0^1 1/(1 - t) E[sum over masked tokens of -log p(x_i | x_t)] dt`` (Shi et al. 2024; Sahoo
    et al. 2024): per code, the masked tokens' summed cross-entropy over ``T (1 - t)``, the expected number masked
    (unbiased, and defined however few are masked). Averaged over codes whose times are uniform over [0, 1]
    (stratified, :func:`eval_times`) this estimates the bound without bias. With the exact posterior the integral is
    the data's entropy (an any-order chain rule)."""
    # the unmasked tokens' cross-entropies are left out, not multiplied by 0 (an infinite one would give NaN)
    per_code = torch.where(masked, ce, 0.0).double().sum(-1) / (ce.shape[-1] * (1 - t.double()))  # (B,)
    return float(per_code.sum())


def check_sampling(guidance: float, temperature: float, guidance_flag: str = "--cfg",
                   temperature_flag: str = "--temperature") -> None:
    """Sampling settings: a finite guidance scale and a positive, finite temperature (``nan`` passes ``<= 0``
    checks and would sample NaN logits); else UserError naming the flag (or argument)."""
    if not math.isfinite(guidance):
        raise UserError(f"{guidance_flag} must be a finite number, got {guidance}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise UserError(f"{temperature_flag} must be a positive number, got {temperature}")


def generate(model: Prior, labels: torch.Tensor, guidance: float, temperature: float,
             generator: torch.Generator | None, euler_steps: int) -> torch.Tensor:
    """One code ``(B, T)`` per label: ``labels (B,)`` integers on the model's device, each a class in
    ``[0, model.num_classes)`` or ``model.num_classes`` (the null label: unconditional). Bad arguments are one
    ValueError naming them (torch's would be an index error deep in an embedding, or NaN codes)."""
    if not (isinstance(labels, torch.Tensor) and labels.dim() == 1 and len(labels) > 0
            and is_integer_dtype(labels.dtype)):
        raise ValueError(f"labels must be a non-empty 1-D integer tensor (B,), got {_described(labels)}")
    check_like_parameters(model, labels, "labels", dtype=False)
    low, high = labels.aminmax()
    if low < 0 or high > model.num_classes:  # one host read
        raise ValueError(f"labels must be classes 0..{model.num_classes - 1} or {model.num_classes} (the null "
                         f"label), got values {int(low)}..{int(high)}")
    check_sampling(guidance, temperature, "guidance", "temperature")
    if isinstance(model, DFMPrior):
        if euler_steps < 1:
            raise ValueError(f"euler_steps must be at least 1, got {euler_steps}")
        return model.generate(labels, guidance, temperature, generator, num_steps=euler_steps)
    assert isinstance(model, ARPrior)
    return model.generate(labels, guidance, temperature, generator)


def _described(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__


# --------------------------------------------------------------------------------------------------
# The run folder


RESUMABLE_SETTINGS = ("out_dir", "steps", "frames", "progress", "log_every", "eval_every", "ckpt_every",
                      "keep_checkpoints", "data_dir")
"""Settings of a prior, policy or tracker run that ``--resume`` may change (where it writes, where its data now
live, how long it runs, what it logs and keeps; none of them touches the training's random stream)."""
PATH_SETTINGS = ("codes", "val_codes", "tokenizer", "data_dir")
"""Settings that name files: compared as resolved paths on ``--resume``."""


def prepare_folder(cfg: Any, resume: bool, overwrite: bool, kind: str = KIND) -> Path | None:
    """Check the output folder ``cfg.out_dir`` of a run of marker ``kind`` whose config.json stores ``cfg`` under
    the key ``kind``; returns the checkpoint to resume from (or None). Nothing is deleted here."""
    run_dir = Path(cfg.out_dir)
    if resume and overwrite:
        raise UserError("--resume and --overwrite cannot be combined")
    refuse_precious(run_dir, "--out")
    if run_dir.exists() and not run_dir.is_dir():
        raise OutputFolderError(f"--out {run_dir} exists and is not a folder")
    if not has_content(run_dir):
        return None
    if overwrite:
        check_replaceable(run_dir, kind, "--out")
        return None
    if not is_output_folder(run_dir, kind):
        raise OutputFolderError(f"--out {run_dir} exists and is not a daps {kind} folder; choose another folder")
    if not resume:
        raise OutputFolderError(f"{kind} folder {run_dir} already exists; pass --resume or --overwrite")
    if not (run_dir / "config.json").exists() and find_resumable(run_dir) is None:
        log.warning("%s was stopped before its first checkpoint: starting it again in place", run_dir)
        return None
    try:
        saved = json.loads((run_dir / "config.json").read_text()).get(kind)
    except (OSError, ValueError, AttributeError):
        saved = None
    if not isinstance(saved, dict):
        raise UserError(f"--resume: {run_dir / 'config.json'} is missing or damaged (no {kind} settings in it)")

    def same(key: str, old: Any, new: Any) -> bool:
        if key in PATH_SETTINGS and isinstance(old, str) and isinstance(new, str) and old and new:
            return Path(old).resolve() == Path(new).resolve()  # ./codes.safetensors, an absolute path, ...
        return old == new

    now = asdict(cfg)
    differs = [k for k, v in now.items() if k not in RESUMABLE_SETTINGS and not same(k, saved.get(k), v)]
    if differs:  # with both values, as daps train says them: the run's settings are not retyped from memory
        def shown(key: str, value: Any) -> Any:  # a file as the absolute path config.json records
            return str(Path(value).resolve()) if key in PATH_SETTINGS and isinstance(value, str) and value else value

        changes = ", ".join(f"{k}: {saved.get(k)!r} -> {shown(k, now[k])!r}" for k in differs)
        raise UserError(f"--resume: the settings differ from the run's config.json ({changes}); give the run's "
                        "values, or --overwrite to start again")
    return find_resumable(run_dir)


END_FILES = ("summary.json", "curves.png")
"""What a prior, policy or tracker run writes at its end (``curves.png``, then ``summary.json``)."""


def warn_untrained_null(label_dropout: float, guidance: float, flag: str = "--cfg") -> None:
    """A warning when guidance mixes in the unconditional model of a run trained without label dropout (its null
    label never saw a training example)."""
    if label_dropout <= 0 and guidance != 1.0:
        log.warning("%s %g uses the unconditional model, but this run was trained with label_dropout=0: its null "
                    "label is untrained", flag, guidance)


def settings_record(cfg: Any) -> dict:
    """``cfg`` as config.json stores it: the files it names as absolute paths, so that ``--resume`` from another
    folder compares the same files."""
    record = asdict(cfg)
    for key in PATH_SETTINGS:
        if record.get(key):
            record[key] = str(Path(record[key]).resolve())
    return record


FILE_KEYS = ("file", "val_file", "val_header", "content_sha256", "val_content_sha256")
"""Keys of a prior's ``codes`` record (config.json) that name its files, the held-out file's header and the
hashes of both files' codes and labels (:func:`daps.codes.content_sha256`); the rest is the training file's
header."""


def training_header(record: dict) -> dict:
    """The training codes file's header in a prior's ``codes`` record."""
    return {k: v for k, v in record.items() if k not in FILE_KEYS}


def codes_record(cfg: PriorConfig, codes: CodeSet, val: CodeSet) -> dict:
    """What config.json keeps of the codes a prior trains on: the training file's header, its absolute path and the
    hash of its contents, and, with ``val_codes``, the same of the held-out file (so that a file exported again over
    either, or edited by hand, is caught)."""
    record = {**codes.meta, "file": str(Path(cfg.codes).resolve()), "content_sha256": content_sha256(codes)}
    if cfg.val_codes:
        record.update(val_file=str(Path(cfg.val_codes).resolve()), val_header=dict(val.meta),
                      val_content_sha256=content_sha256(val))
    return record


def check_same_codes(run_dir: Path, codes: dict) -> None:
    """UserError unless the codes of a resumed prior are those it was trained on: the same files (by absolute
    path) with the same headers (tokenizer weights, V, T, classes, seed, inputs, ...)."""
    try:
        saved = json.loads((run_dir / "config.json").read_text()).get("codes")
    except (OSError, ValueError, AttributeError):
        saved = None
    if not isinstance(saved, dict):
        return  # a folder holding only the marker: nothing was trained yet
    # a prior trained before the held-out header or the hashes were kept is checked on the rest
    differs = _differing(saved, codes, ignore=tuple(k for k in ("val_header", "content_sha256", "val_content_sha256")
                                                    if k not in saved))
    if differs:
        raise UserError(f"--resume: these are not the codes the prior was trained on ({', '.join(differs)} "
                        f"differ from {run_dir / 'config.json'})")


def _differing(saved: dict, codes: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    return sorted(k for k in (saved.keys() | codes.keys()) - set(ignore) if saved.get(k) != codes.get(k))


def trained_codes(prior_dir: str | Path, cfg: PriorConfig, meta: dict) -> tuple[CodeSet, CodeSet]:
    """The training and held-out codes of a trained prior (``meta``: its config's ``codes`` entry), read again
    from their files; UserError if the codes file is no longer the one it was trained on (an export written
    over it, with another tokenizer, seed or size)."""
    files = {"codes": meta.get("file") or cfg.codes, "val_codes": meta.get("val_file") or cfg.val_codes}
    for key, path in files.items():
        if path and not Path(path).exists():
            use = ("the held-out codes are read from it" if key == "val_codes" or not files["val_codes"] else
                   "the held-out codes are checked against it")
            raise UserError(f"{path}, the {'held-out ' if key == 'val_codes' else ''}codes file the prior "
                            f"{prior_dir} was trained on, is not there any more (moved or deleted?): {use}, so put "
                            "it back there")
    codes = load_codes(files["codes"])
    _check_header(prior_dir, files["codes"], training_header(meta), codes.meta)
    _check_content(prior_dir, files["codes"], meta.get("content_sha256"), codes)
    train_set, val_set = split_codes(PriorConfig(**{**cfg.__dict__, **files}), codes)
    if "val_header" in meta:  # priors trained before it was kept are not checked on their held-out file
        _check_header(prior_dir, files["val_codes"], meta["val_header"], val_set.meta)
        _check_content(prior_dir, files["val_codes"], meta.get("val_content_sha256"), val_set)
    return train_set, val_set


def _check_content(prior_dir: str | Path, path: str, trained: str | None, now: CodeSet) -> None:
    if trained is not None and content_sha256(now) != trained:  # (priors of earlier versions kept no hash)
        raise UserError(f"{path} has the header of the codes file the prior {prior_dir} was trained on, but other "
                        "codes or labels (edited or cut since?): export the same codes again, or train the prior "
                        "on these")


def _check_header(prior_dir: str | Path, path: str, trained: dict, now: dict) -> None:
    differs = _differing(trained, now)
    if differs:
        raise UserError(
            f"{path} is no longer the codes file the prior {prior_dir} was trained on ({', '.join(differs)} "
            "differ): export the same codes again, or train the prior on these"
        )


def train_prior(cfg: PriorConfig, resume: bool = False, overwrite: bool = False,
                device: str | torch.device = "cpu") -> Path:
    """Train a prior on ``cfg.codes``; returns the run folder."""
    cfg.validate()
    if not cfg.codes:
        raise UserError("name the codes file to train on (daps export-codes writes one)")
    device = torch.device(device)
    codes = load_codes(cfg.codes)
    train_set, val_set = split_codes(cfg, codes)
    for name, part in (("training", train_set), ("held-out", val_set)):
        if part.codes.shape[0] == 0:
            raise UserError(f"the {name} codes are empty ({cfg.val_codes if part is val_set else cfg.codes})")
    run_dir = Path(cfg.out_dir)
    ckpt = prepare_folder(cfg, resume, overwrite)
    config = {"prior": settings_record(cfg), "codes": codes_record(cfg, codes, val_set)}
    if resume and has_content(run_dir):
        check_same_codes(run_dir, config["codes"])
    model = build_prior(cfg, codes.meta).to(device)  # before the folder is touched: settings that cannot be built
    # (too large, say) leave a prior it would replace as it was
    lock = FolderLock(run_dir).acquire()
    try:
        if overwrite and has_content(run_dir):
            clear_folder(run_dir, KIND, "--out", ENTRIES)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_marker(run_dir, KIND)
        remove_leftovers(run_dir)
        optimizer, generator, start, streak = start_training(model, cfg, ckpt, device, run_dir)
        if start == cfg.steps and finished(run_dir, start, END_FILES):
            log.info("%s already finished step %d; nothing to do", run_dir, start)  # and nothing is written
            return run_dir
        write_json_atomic(run_dir / "config.json", config)  # after every check and the checkpoint's weights
        x_train, y_train = (t.to(device) for t in train_set.flat())
        x_val, y_val = (t.to(device) for t in val_set.flat())
        null = model.num_classes

        def batch_loss() -> torch.Tensor:
            idx = torch.randint(x_train.shape[0], (cfg.batch_size,), generator=generator, device=device)
            labels = drop_labels(y_train[idx], cfg.label_dropout, null, generator)
            return prior_loss(model, x_train[idx], labels, generator)

        run_steps(run_dir, model, optimizer, generator, config, cfg, start, batch_loss,
                  lambda: evaluate_prior(model, x_val, y_val), f"prior {cfg.kind}", streak)
        _finish(run_dir, model, cfg, x_val, y_val, device)
    finally:
        lock.release()
    return run_dir


def start_training(model: torch.nn.Module, cfg: Any, ckpt: Path | None, device: torch.device,
                   run_dir: Path) -> tuple[torch.optim.Optimizer, torch.Generator, int, int]:
    """AdamW (``cfg.lr``, ``cfg.weight_decay``) and the batch generator (``cfg.seed``) of a code model, restored
    from ``ckpt`` when resuming (weights too), the start step and the streak of skipped steps it ended with; the
    metrics file is cut back to the start step."""
    from daps.train import truncate_metrics

    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    generator = torch.Generator(device).manual_seed(cfg.seed)
    start, streak = 0, 0
    if ckpt is not None:
        load_weights(model, ckpt)
        state = load_training_state(ckpt)
        optimizer.load_state_dict(state["optimizer"])
        restore_generator(generator, state["generator"], run_dir, device)
        start, streak = int(state["step"]), int(state.get("skipped_streak", 0))
        if start > cfg.steps:  # before config.json is rewritten with the fewer steps
            raise UserError(f"cannot resume {run_dir} at step {start}: the run is set to stop at step {cfg.steps} "
                            "(steps=N sets more)")
        log.info("resuming %s from step %d", run_dir, start)
    truncate_metrics(run_dir / "metrics.jsonl", start)
    return optimizer, generator, start, streak


MAX_SKIPPED_STEPS = 50
"""Consecutive steps with a non-finite loss or gradient (each skipped) after which a prior or policy run stops."""


def run_steps(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator,
              config: dict, cfg: Any, start: int, batch_loss: Callable[[], torch.Tensor],
              evaluate: Callable[[], dict], desc: str, streak: int = 0) -> None:
    """The training loop of the models over codes (priors, the robot policy): from ``start`` to ``cfg.steps``,
    each step ``batch_loss()`` (which draws its batch from ``generator``), backward, clipping to
    ``cfg.grad_clip``, an optimizer step (skipped for a non-finite loss or gradient; :data:`MAX_SKIPPED_STEPS`
    in a row raise ``TrainingDiverged``); train rows every ``cfg.log_every`` steps and at every checkpoint,
    ``evaluate()`` rows every ``cfg.eval_every`` and a checkpoint (weights, optimizer, step, generator, the streak
    of skipped steps) every ``cfg.ckpt_every`` steps. ``streak``: skipped steps in a row before ``start`` (a
    resumed run's)."""
    from daps.progress import progress_bar

    model.train()
    loss_sum, count, applied, skipped_in_window, t_last = 0.0, 0, 0, 0, time.perf_counter()
    paused = 0.0  # seconds of evaluation and checkpoints since the last row: not training time
    with open(run_dir / "metrics.jsonl", "a") as metrics, \
            progress_bar(cfg.steps, desc, "step", cfg.progress, initial=start, leave=True) as bar:
        lines = cfg.progress and bar.disable  # no bar drawn (not a terminal): a log line per row instead
        def write_row(row: dict) -> None:
            metrics.write(json.dumps(row) + "\n")
            metrics.flush()

        consecutive = streak  # non-finite steps in a row
        for step in range(start, cfg.steps):
            loss = batch_loss()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            if bool(torch.isfinite(loss.detach()) & torch.isfinite(norm)):
                optimizer.step()
                consecutive = 0
                loss_sum += float(loss.detach())
                applied += 1
            else:  # a non-finite loss or gradient: no update; stop (exit code 3) if it lasts
                consecutive += 1
                skipped_in_window += 1
                if consecutive >= MAX_SKIPPED_STEPS:
                    from daps.train import TrainingDiverged

                    raise TrainingDiverged(
                        f"{run_dir}: the loss or its gradient was not finite for {consecutive} steps in a row (up to "
                        f"step {step + 1}); lower lr or check the codes. No update was made from those steps, so "
                        "every checkpoint written holds finite weights"
                    )
            count += 1
            done = step + 1
            bar.update()
            if done % cfg.log_every == 0 or done % cfg.ckpt_every == 0 or done == cfg.steps:  # as daps train:
                # a window ends at every checkpoint, so that a resumed run logs the rows of an uninterrupted one
                now = time.perf_counter()
                mean = loss_sum / applied if applied else None  # over the applied steps only
                speed = count / max(now - t_last - paused, 1e-9)
                write_row({"split": "train", "step": done, "loss": mean, "skipped": skipped_in_window,
                           "steps_per_s": speed})
                bar.set_postfix(loss="-" if mean is None else f"{mean:.3f}", refresh=False)
                if lines:
                    log.info("%s: step %d/%d  loss %s  %.2f steps/s", desc, done, cfg.steps,
                             "-" if mean is None else f"{mean:.3f}", speed)
                loss_sum, count, applied, skipped_in_window, t_last, paused = 0.0, 0, 0, 0, now, 0.0
            pause_start = time.perf_counter()
            if done % cfg.eval_every == 0 or done == cfg.steps:
                write_row({"split": "val", "step": done, **evaluate()})
                model.train()
            if consecutive and done % cfg.ckpt_every == 0 and done != cfg.steps:
                # as daps train: a resume never starts in the middle of a streak of skipped updates
                log.warning("step %d: no checkpoint, the last update was skipped (non-finite)", done)
            elif done % cfg.ckpt_every == 0 or done == cfg.steps:
                state = {"step": done, "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                         "skipped_streak": consecutive}
                save_checkpoint(run_dir, done, model, config, state, keep=cfg.keep_checkpoints)
            paused += time.perf_counter() - pause_start


def _finish(run_dir: Path, model: Prior, cfg: PriorConfig, x_val: torch.Tensor, y_val: torch.Tensor,
            device: torch.device) -> None:
    """curves.png, then summary.json (last validation, sampling speed): the summary marks the run finished."""
    from daps.plots import read_metrics

    rows = read_metrics(run_dir / "metrics.jsonl")
    val = [r for r in rows if r.get("split") == "val"]
    summary: dict[str, Any] = {"step": cfg.steps, "kind": cfg.kind, **(val[-1] if val else {})}
    summary.update(sampling_speed(model, cfg, device))
    save_prior_curves(rows, run_dir / "curves.png", f"{cfg.kind} prior")
    write_json_atomic(run_dir / "summary.json", summary)


def seconds_per_call(call: Callable[[], object], device: torch.device) -> float:
    """Seconds one ``call()`` takes; on CUDA after one warm-up call, timed to the end of its kernels."""
    cuda = device.type == "cuda"
    if cuda:
        call()
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    call()
    if cuda:
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def sampling_speed(model: Prior, cfg: PriorConfig, device: torch.device, n: int = 200,
                   guidance: float = 1.0) -> dict[str, float]:
    """Samples/s of one batch of ``n`` codes and the network evaluations each needs (on CUDA after one warm-up
    batch, timed to the end of its kernels)."""
    labels = torch.arange(n, device=device) % model.num_classes
    g = torch.Generator(device).manual_seed(0)
    seconds = seconds_per_call(lambda: generate(model, labels, guidance, 1.0, g, cfg.euler_steps), device)
    nfe = (model.network_evaluations(guidance, cfg.euler_steps) if isinstance(model, DFMPrior)
           else model.network_evaluations(guidance))
    return {"samples_per_s": n / seconds, "network_evaluations": int(nfe)}  # printed as a count


def save_prior_curves(rows: list[dict], path: Path, title: str) -> None:
    from daps.plots import _pyplot, plot_line, save_figure

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    # One unit on the axis: a likelihood model (ar prior, robot policy) trains on the cross-entropy of its codes in
    # nats, shown in bits beside its held-out bits; a dfm prior's training and held-out losses are both in nats.
    bits = any(r.get("split") == "val" and "bits_per_token" in r for r in rows)
    scale, unit = (1 / math.log(2), "bits/token") if bits else (1.0, "nats/token")
    train = [(r["step"], r["loss"] * scale) for r in rows if r.get("split") == "train" and r.get("loss") is not None]
    if train:
        plot_line(ax, [s for s, _ in train], [v for _, v in train], label=f"train loss ({unit})")
    for key, label in (("bits_per_token", "held-out bits/token"), ("dfm_loss", "held-out loss (nats/token)")):
        pts = [(r["step"], r[key]) for r in rows if r.get("split") == "val" and key in r]
        if pts:
            ax.plot(*zip(*pts), "o-", label=label)
    ax.set_ylabel(unit)
    ax.set_xlabel("step")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def load_prior(path: str | Path, device: str | torch.device = "cpu") -> tuple[Prior, PriorConfig, dict]:
    """A trained prior from its run folder (or checkpoint): the network (eval mode), its settings and the codes
    header it was trained on."""
    ckpt = resolve_checkpoint(path)
    refuse_other_kind(ckpt, "prior", "a prior (daps prior train)")
    try:
        config = json.loads((ckpt / "config.json").read_text())
        cfg = PriorConfig(**config["prior"])
        meta = config["codes"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{ckpt / 'config.json'} is not a daps prior config ({err})") from None
    model = build_prior(cfg, meta)
    load_weights(model, ckpt)
    return model.to(device).eval(), cfg, meta
