"""Builders and small helpers the method files share: which encoder, decoder and likelihood a config
asks for, schedule values, and the encode / decode / reconstruct steps that several methods do the same way.
Kept free of any method's objective."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

import daps.functional as DF
from daps.config import Config, ScheduleConfig
from daps.data import dataset_spec
from daps.functional import FLOAT32_EPS
from daps.likelihoods import Bernoulli, Gaussian
from daps.methods.types import Output, Reconstruction
from daps.nets import ARTransformerEncoder, MLPDecoder, NACategoricalEncoder, NATransformerEncoder, ResNetDecoder

Likelihood = Bernoulli | Gaussian
CategoricalEncoder = ARTransformerEncoder | NACategoricalEncoder  # q(z | x) with ``sample``


def build_likelihood(cfg: Config) -> Likelihood:
    """The data likelihood of ``cfg.data.name``: Bernoulli for binarized MNIST; a diagonal Gaussian with a
    learned, clipped variance for natural images (SPEC 4.1, 4.2)."""
    if dataset_spec(cfg.data.name).likelihood == "bernoulli":
        return Bernoulli()
    d = cfg.decoder
    if d.variance_clip == "none":
        return Gaussian(FLOAT32_EPS, float("inf"))
    return Gaussian(d.min_variance, d.max_variance)


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
    out_shape = likelihood.param_shape(image_shape)
    if d.kind == "resnet":
        return ResNetDecoder(
            num_tokens or cfg.encoder.num_tokens, token_dim or d.embed_dim, image_shape, out_shape[0],
            width=d.resnet_width, num_blocks=d.resnet_blocks, vocab_size=vocab_size,
        )
    return MLPDecoder(num_tokens or cfg.encoder.num_tokens, token_dim or d.embed_dim, d.hidden, out_shape, vocab_size)


def schedule_value(sched: ScheduleConfig, step: int, num_steps: int) -> float:
    """The value of a schedule at optimizer step ``step`` of a ``num_steps`` run."""
    return DF.schedule_value(sched.kind, step, sched.init, sched.end, num_steps, sched.end_pct)


def schedule_final(sched: ScheduleConfig) -> float:
    """The schedule's end value: the beta of the reported beta-ELBO (SPEC 2)."""
    return DF.schedule_final_value(sched.kind, sched.init, sched.end)


def training_output(
    loss: torch.Tensor, x_hat: torch.Tensor, indices: torch.Tensor | None, logs: dict[str, torch.Tensor]
) -> Output:
    """A training step's :class:`Output`: ``x_hat (B, C, H, W)`` and every logged scalar detached."""
    return Output(loss=loss, x_hat=x_hat.detach(), indices=indices, logs={k: v.detach() for k, v in logs.items()})


def elbo_logs(log_p: torch.Tensor, kl: torch.Tensor, final_beta: float) -> dict[str, torch.Tensor]:
    """The logged ``kl``, ``elbo`` and ``beta_elbo`` (with the schedule's end value, not the current beta)
    from ``log_p`` and ``kl`` of the same shape, ``(B,)`` or ``(K, B)`` (SPEC 2)."""
    return {
        "kl": kl.mean(),
        "elbo": (log_p - kl).mean(),
        "beta_elbo": (log_p - final_beta * kl).mean(),
    }


# -- categorical codes (DAPS, REINFORCE, PPO, Gumbel / GR-MCK) ----------------------------------------


def sample_code(encoder: CategoricalEncoder, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One exact code per input from q(z | x) at temperature 1: ``x (B, C, H, W) -> indices (B, T)``."""
    return encoder.sample(x, 1, generator).indices[0]  # (1, B, T) -> (B, T)


def decode_code(decoder: nn.Module, likelihood: Likelihood, indices: torch.Tensor) -> torch.Tensor:
    """Decoder mean of integer codes: ``indices (B, T) -> x_hat (B, C, H, W)``."""
    return likelihood.mean(decoder(indices))


@torch.no_grad()
def categorical_reconstruction(
    encoder: CategoricalEncoder,
    decoder: nn.Module,
    likelihood: Likelihood,
    x: torch.Tensor,
    generator: torch.Generator | None,
) -> Reconstruction:
    """Encode ``x (B, C, H, W)`` with one stochastic sample (not greedy) and decode it, with the ELBO terms
    from the sampling pass's conditionals (SPEC 1.11, 2, 8.1). Draws from ``generator`` exactly as
    :func:`sample_code`."""
    samples = encoder.sample(x, 1, generator)  # (1, B, T) each
    indices, token_entropy = samples.indices[0], samples.token_entropy[0]  # (B, T) each
    params = decoder(indices)  # (B, *param_shape)
    return Reconstruction(
        indices=indices,
        x_hat=likelihood.mean(params),
        log_p=likelihood.log_prob(params, x),
        kl=DF.kl_to_uniform(token_entropy, encoder.vocab_size),
        log_q=samples.log_q[0],
        token_entropy=token_entropy,
    )


# -- deterministic quantizers (FSQ, VQ-VAE, VQ-VAE-EMA) ------------------------------------------------


def per_dim_reconstruction_loss(log_p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``-mean_b log p(x_b | z_b) / D_x`` from ``log_p (B,)``: the quantizers' per-data-dimension
    reconstruction loss (SPEC 3.4, 3.5, 11.12)."""
    return -(log_p / x[0].numel()).mean()


def quantized_reconstruction(
    likelihood: Likelihood, params: torch.Tensor, x: torch.Tensor, indices: torch.Tensor
) -> Reconstruction:
    """A deterministic quantizer's :class:`Reconstruction` from the decoder's ``params (B, *param_shape)``:
    ``log_p (B,)`` summed over data dims; no q, so no KL terms."""
    return Reconstruction(indices=indices, x_hat=likelihood.mean(params), log_p=likelihood.log_prob(params, x))


def vq_lookup(z_e: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest codebook row per token: ``z_e (B, T, E), codebook (V, E) -> indices (B, T), z_q (B, T, E)``;
    z_q carries gradient to the looked-up rows when the codebook has one."""
    indices = DF.vq_nearest(z_e, codebook)  # (B, T)
    return indices, F.embedding(indices, codebook)  # (B, T, E)


def vq_decode(
    decoder: nn.Module, likelihood: Likelihood, codebook: torch.Tensor, indices: torch.Tensor
) -> torch.Tensor:
    """Decoder mean of codebook indices: ``indices (B, T) -> x_hat (B, C, H, W)``."""
    z_q = F.embedding(indices, codebook)  # (B, T, E)
    return likelihood.mean(decoder.decode_latents(z_q))
