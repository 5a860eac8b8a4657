"""Builders and small helpers the method files share: which encoder, decoder and likelihood a config
asks for, and schedule values. Kept free of any method's math."""

from __future__ import annotations

import torch.nn as nn

import daps.functional as DF
from daps.config import Config, ScheduleConfig
from daps.likelihoods import Bernoulli
from daps.nets import ARTransformerEncoder, MLPDecoder, NACategoricalEncoder, NATransformerEncoder

Likelihood = Bernoulli


def build_likelihood(cfg: Config) -> Likelihood:
    """The data likelihood of ``cfg.data.name``: Bernoulli for binarized MNIST."""
    if cfg.data.name in ("mnist", "mnist5k"):
        return Bernoulli()
    raise ValueError(f"no likelihood for dataset {cfg.data.name!r}")


def build_ar_encoder(cfg: Config, image_shape: tuple[int, int, int]) -> ARTransformerEncoder:
    """The autoregressive cross-attention encoder of ``cfg.encoder`` (SPEC 5.2)."""
    e = cfg.encoder
    return ARTransformerEncoder(
        image_shape, num_tokens=e.num_tokens, vocab_size=e.vocab_size, width=e.width, num_layers=e.num_layers,
        num_heads=e.num_heads, mlp_ratio=e.mlp_ratio, mask_token0=e.mask_token0,
    )


def build_na_categorical_encoder(cfg: Config, image_shape: tuple[int, int, int]) -> NACategoricalEncoder:
    """The bidirectional encoder with a per-token categorical head (SPEC 1.10, 3.3)."""
    e = cfg.encoder
    return NACategoricalEncoder(
        image_shape, num_tokens=e.num_tokens, vocab_size=e.vocab_size, width=e.width, num_layers=e.num_layers,
        num_heads=e.num_heads, mlp_ratio=e.mlp_ratio,
    )


def build_na_encoder(cfg: Config, image_shape: tuple[int, int, int], out_dim: int | None) -> NATransformerEncoder:
    """The bidirectional encoder with a ``Dense(out_dim)`` head, or none (``z_e`` of width E) (SPEC 5.4)."""
    e = cfg.encoder
    return NATransformerEncoder(
        image_shape, num_tokens=e.num_tokens, width=e.width, num_layers=e.num_layers, num_heads=e.num_heads,
        mlp_ratio=e.mlp_ratio, out_dim=out_dim,
    )


def build_decoder(
    cfg: Config,
    image_shape: tuple[int, int, int],
    likelihood: Likelihood,
    vocab_size: int | None = None,
    token_dim: int | None = None,
    num_tokens: int | None = None,
) -> nn.Module:
    """The generative network: codes (with ``vocab_size``) or per-token latents of ``token_dim`` (default
    ``decoder.embed_dim``) -> the likelihood's parameters ``(N, *param_shape)``."""
    d = cfg.decoder
    return MLPDecoder(
        num_tokens or cfg.encoder.num_tokens, token_dim or d.embed_dim, d.hidden,
        likelihood.param_shape(image_shape), vocab_size=vocab_size,
    )


def schedule_value(sched: ScheduleConfig, step: int, num_steps: int) -> float:
    """The value of a schedule at optimizer step ``step`` of a ``num_steps`` run."""
    return DF.schedule_value(sched.kind, step, sched.init, sched.end, num_steps, sched.end_pct)


def schedule_final(sched: ScheduleConfig) -> float:
    """The schedule's end value: the beta of the reported beta-ELBO (SPEC 2)."""
    return DF.schedule_final_value(sched.kind, sched.init, sched.end)
