"""Builders and small helpers the method files share: which encoder, decoder and likelihood a config
asks for, schedule values, and the encode / decode / reconstruct steps that several methods do the same way.
Kept free of any method's objective."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import daps.functional as DF
from daps.config import Config, ScheduleConfig
from daps.data import dataset_spec
from daps.errors import UserError
from daps.functional import FLOAT32_EPS
from daps.likelihoods import Bernoulli, FixedGaussian, Gaussian
from daps.methods.types import Output, Reconstruction
from daps.nets import (
    ARTransformerEncoder,
    Decoder,
    MLPDecoder,
    NACategoricalEncoder,
    NATransformerEncoder,
    ResNetDecoder,
    TrajectoryDecoder,
)

Likelihood = Bernoulli | Gaussian | FixedGaussian
CategoricalEncoder = ARTransformerEncoder | NACategoricalEncoder  # q(z | x) with ``sample``


def build_likelihood(cfg: Config) -> Likelihood:
    """The data likelihood of ``cfg.data.name``: Bernoulli for binarized MNIST; a diagonal Gaussian with a
    learned, clipped variance for natural images (paper Sec. 4; original: distributions/); a Gaussian with the
    fixed variance ``decoder.fixed_variance`` for motion."""
    kind = dataset_spec(cfg.data.name).likelihood
    if kind == "bernoulli":
        return Bernoulli()
    if kind == "gaussian-fixed":
        return FixedGaussian(cfg.decoder.fixed_variance)
    d = cfg.decoder
    if d.variance_clip == "none":
        return Gaussian(FLOAT32_EPS, float("inf"))
    return Gaussian(d.min_variance, d.max_variance)


ONE_CODE_PER_INPUT = {"encoder.share_prefixes": "it samples one code per input: no prefix to share"}
"""``MethodSpec.ignores`` of the methods whose autoregressive encoder never samples two codes of one input."""


def build_ar_encoder(cfg: Config, image_shape: tuple[int, int, int]) -> ARTransformerEncoder:
    """The autoregressive cross-attention encoder of ``cfg.encoder`` (paper App. F; original:
    recognition_models/transformer_rec.py)."""
    e = cfg.encoder
    return ARTransformerEncoder(
        image_shape, num_tokens=e.num_tokens, vocab_size=e.vocab_size, width=e.width, num_layers=e.num_layers,
        num_heads=e.num_heads, mlp_ratio=e.mlp_ratio, mask_token0=e.mask_token0, embed=e.embed,
        share_prefixes=e.share_prefixes,
    )


def build_na_categorical_encoder(cfg: Config, image_shape: tuple[int, int, int]) -> NACategoricalEncoder:
    """The bidirectional encoder with a per-token categorical head (original: models/daps.py, models/gumbel.py)."""
    e = cfg.encoder
    return NACategoricalEncoder(
        image_shape, num_tokens=e.num_tokens, vocab_size=e.vocab_size, width=e.width, num_layers=e.num_layers,
        num_heads=e.num_heads, mlp_ratio=e.mlp_ratio, embed=e.embed,
    )


def build_na_encoder(cfg: Config, image_shape: tuple[int, int, int], out_dim: int | None) -> NATransformerEncoder:
    """The bidirectional encoder with a ``Dense(out_dim)`` head, or none (``z_e`` of width E) (original:
    networks/transformer.py)."""
    e = cfg.encoder
    return NATransformerEncoder(
        image_shape, num_tokens=e.num_tokens, width=e.width, num_layers=e.num_layers, num_heads=e.num_heads,
        mlp_ratio=e.mlp_ratio, out_dim=out_dim, embed=e.embed,
    )


def build_decoder(
    cfg: Config,
    image_shape: tuple[int, int, int],
    likelihood: Likelihood,
    vocab_size: int | None = None,
    token_dim: int | None = None,
    num_tokens: int | None = None,
) -> Decoder:
    """The generative network: codes (with ``vocab_size``) or per-token latents of ``token_dim`` (default
    ``decoder.embed_dim``) -> the likelihood's parameters ``(N, *param_shape)``."""
    d = cfg.decoder
    out_shape = likelihood.param_shape(image_shape)
    if d.kind == "transformer":
        return TrajectoryDecoder(
            num_tokens or cfg.encoder.num_tokens, token_dim or d.embed_dim, out_shape, width=d.embed_dim,
            num_layers=d.transformer_layers, num_heads=d.transformer_heads, mlp_ratio=4, vocab_size=vocab_size,
        )
    if d.kind == "resnet":
        return ResNetDecoder(
            num_tokens or cfg.encoder.num_tokens, token_dim or d.embed_dim, image_shape, out_shape[0],
            width=d.resnet_width, num_blocks=d.resnet_blocks, vocab_size=vocab_size,
        )
    return MLPDecoder(num_tokens or cfg.encoder.num_tokens, token_dim or d.embed_dim, d.hidden, out_shape, vocab_size)


def compile_sampler(encoder: nn.Module, mode: str | None) -> None:
    """``train.compile``: sample through the autoregressive encoder's compiled one-token step (other encoders have
    no sampling loop to compile)."""
    if isinstance(encoder, ARTransformerEncoder):
        encoder.compile_sampler(mode=mode)


ONE_PASS_MAX_TOKENS = 64
"""The longest code the autoregressive encoder takes with ``one_pass`` (DAPS, REINFORCE). Its backward keeps every
sampling step's keys and values, (T + 1) / 2 times those of the teacher-forced pass: 36 MiB at ``mnist`` (T = 8),
8.7 GB at ``cifar10`` (T = 64, B = 256), about 550 GB at ``imagenet256`` (T = 1,024); and it is no faster than the
teacher-forced pass from T = 64 on (BENCHMARKS.md, "One encoder pass")."""


def one_pass_check(autoregressive: bool) -> Callable[[Config], None]:
    """The ``MethodSpec.check_config`` of a method whose settings have ``one_pass`` (codes scored in the sampling
    pass, :meth:`~daps.nets.ar_encoder.ARTransformerEncoder.sample_scored`): what that cannot go with."""

    def check(cfg: Config) -> None:
        if not getattr(cfg.options, "one_pass", False):
            return
        name = f"{cfg.options.section}.one_pass"
        t = cfg.encoder.num_tokens
        if autoregressive and t > ONE_PASS_MAX_TOKENS:
            raise UserError(f"{name} keeps every sampling step's keys for the backward, (T + 1) / 2 times the "
                            f"teacher-forced pass's memory, and is no faster beyond short codes: it takes "
                            f"encoder.num_tokens up to {ONE_PASS_MAX_TOKENS}, got {t}")
        conflicts = {
            "encoder.mask_token0": "the masked teacher-forced log q is not the sampling one",
            "train.compile": "the differentiable sampling pass is not compiled",
            "train.cuda_graph": "not yet checked on a GPU",
        }
        if not autoregressive:  # the bidirectional encoder has no teacher forcing to mask
            conflicts.pop("encoder.mask_token0")
        for key, why in conflicts.items():
            section, field_name = key.split(".")
            if getattr(getattr(cfg, section), field_name):
                raise UserError(f"{name} does not go with {key}=true ({why}): turn one of them off")

    return check


def schedule_value(sched: ScheduleConfig, step: int, num_steps: int) -> float:
    """The value of a schedule at optimizer step ``step`` of a ``num_steps`` run."""
    return DF.schedule_value(sched.kind, step, sched.init, sched.end, num_steps, sched.end_pct)


def schedule_final(sched: ScheduleConfig) -> float:
    """The schedule's end value: the beta of the reported beta-ELBO (original: models/base_vae.py)."""
    return DF.schedule_final_value(sched.kind, sched.init, sched.end)


def training_output(
    loss: torch.Tensor, x_hat: torch.Tensor, indices: torch.Tensor | None, logs: dict[str, torch.Tensor]
) -> Output:
    """A training step's :class:`Output`: ``x_hat (B, C, H, W)`` and every logged scalar detached."""
    return Output(loss=loss, x_hat=x_hat.detach(), indices=indices, logs={k: v.detach() for k, v in logs.items()})


def elbo_logs(log_p: torch.Tensor, kl: torch.Tensor, final_beta: float) -> dict[str, torch.Tensor]:
    """The logged ``kl``, ``elbo`` and ``beta_elbo`` (with the schedule's end value, not the current beta)
    from ``log_p`` and ``kl`` of the same shape, ``(B,)`` or ``(K, B)`` (paper Eq. 1; original: models/base_vae.py)."""
    return {
        "kl": kl.mean(),
        "elbo": (log_p - kl).mean(),
        "beta_elbo": (log_p - final_beta * kl).mean(),
    }


# -- categorical codes (DAPS, REINFORCE, PPO, Gumbel / GR-MCK) ----------------------------------------


def sample_code(encoder: CategoricalEncoder, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One exact code per input from q(z | x) at temperature 1: ``x (B, C, H, W) -> indices (B, T)``."""
    return encoder.sample(x, 1, generator).indices[0]  # (1, B, T) -> (B, T)


def decode_code(decoder: Decoder, likelihood: Likelihood, indices: torch.Tensor) -> torch.Tensor:
    """Decoder mean of integer codes: ``indices (B, T) -> x_hat (B, C, H, W)``."""
    return likelihood.mean(decoder(indices))


@torch.no_grad()
def categorical_reconstruction(
    encoder: CategoricalEncoder,
    decoder: Decoder,
    likelihood: Likelihood,
    x: torch.Tensor,
    generator: torch.Generator | None,
) -> Reconstruction:
    """Encode ``x (B, C, H, W)`` with one stochastic sample (not greedy) and decode it, with the ELBO terms
    from the sampling pass's conditionals (original: models/base_vae.py). Draws from ``generator`` exactly as
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
    reconstruction loss (original: models/fsq.py, models/vqvae.py)."""
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
    decoder: Decoder, likelihood: Likelihood, codebook: torch.Tensor, indices: torch.Tensor
) -> torch.Tensor:
    """Decoder mean of codebook indices: ``indices (B, T) -> x_hat (B, C, H, W)``."""
    z_q = F.embedding(indices, codebook)  # (B, T, E)
    return likelihood.mean(decoder.decode_latents(z_q))


# -- input checks of the public API (encode / decode / reconstruct) --------------------------------------


@dataclass(frozen=True)
class InputSpec:
    """What a built method accepts: images of ``image_shape`` and codes ``(B, num_tokens)`` in ``[0, vocab_size)``
    (or, for a continuous latent, ``(B, latent_dim)`` floats). Set by :func:`daps.methods.build_method`."""

    image_shape: tuple[int, int, int]
    num_tokens: int | None  # None for a continuous latent
    vocab_size: int | None
    latent_dim: int | None = None  # the Gaussian VAE's z


def check_like_parameters(model: nn.Module, t: torch.Tensor, name: str, dtype: bool = True) -> None:
    """``t`` in the model's parameters' dtype (with ``dtype``) and on their device: else torch fails deep inside a
    layer, or at the first host read. A model without parameters takes anything."""
    param = next(model.parameters(), None)
    if param is None:
        return
    if dtype and t.dtype != param.dtype:
        raise ValueError(f"{name} is {t.dtype} but the model's parameters are {param.dtype}: convert it with "
                         f"{name}.to({param.dtype})")
    if t.device != param.device:
        raise ValueError(f"{name} is on {t.device} but the model is on {param.device}: move it with "
                         f"{name}.to({str(param.device)!r})")


def _dims(shape: tuple[int, ...]) -> str:
    return ", ".join(str(d) for d in shape)


def check_images(model: nn.Module, x: torch.Tensor, generator: object = None) -> None:
    """``ValueError`` unless ``x`` is a batch ``(B, C, H, W)`` of the model's images, in its parameters' dtype, and
    ``generator`` is None or a ``torch.Generator`` on ``x``'s device."""
    spec = getattr(model, "input_spec", None)
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor of images (B, C, H, W), got {type(x).__name__}")
    shape = tuple(x.shape)
    if spec is not None and shape == spec.image_shape:
        raise ValueError(f"x is one image {shape}; pass a batch (B, C, H, W), e.g. x[None] or x.unsqueeze(0)")
    if spec is not None and x.dim() == 3 and shape[1:] == spec.image_shape[1:] and spec.image_shape[0] == 1:
        # e.g. motion windows (B, 32, 86) as load_motion_data returns them, for a model of (1, 32, 86) inputs
        raise ValueError(f"x {shape} lacks the channel axis; this model takes (B, {_dims(spec.image_shape)}): "
                         "pass x.unsqueeze(1)")
    if x.dim() != 4 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch of images (B, C, H, W), got shape {shape}"
                         + (f"; this model takes (B, {_dims(spec.image_shape)})" if spec is not None else ""))
    if spec is not None and shape[1:] != spec.image_shape:
        raise ValueError(f"x has images of shape (C, H, W) = {shape[1:]}, but this model takes {spec.image_shape}")
    if not x.is_floating_point():
        raise ValueError(
            f"x must be floating point (the model's scale, e.g. binarized or standardized images), got {x.dtype}"
        )
    check_like_parameters(model, x, "x")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}; "
                         "for a seed pass torch.Generator(x.device).manual_seed(seed)")
    if generator is not None and generator.device.type != x.device.type:
        raise ValueError(f"generator is on {generator.device.type} but x is on {x.device.type}; "
                         f"make it with torch.Generator({x.device.type!r})")
    # Values (inference only: these host reads never run inside a training step).
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x has NaN or infinite values")
    if isinstance(getattr(model, "likelihood", None), Bernoulli) and not bool(((x >= 0) & (x <= 1)).all()):
        raise ValueError(
            "x must lie in [0, 1] for this binary (Bernoulli) model, e.g. MNIST binarized as daps.load_images does; "
            f"got values from {float(x.min()):g} to {float(x.max()):g}"
        )


def check_codes(model: nn.Module, indices: torch.Tensor) -> torch.Tensor:
    """``indices`` as ``torch.long`` after checking it is an integer ``(B, T)`` tensor with codes in ``[0, V)``,
    else ``ValueError``."""
    spec = getattr(model, "input_spec", None)
    if not isinstance(indices, torch.Tensor):
        raise ValueError(f"indices must be a torch.Tensor of codes (B, T), got {type(indices).__name__}")
    if not DF.is_integer_dtype(indices.dtype):
        raise ValueError(f"indices must be an integer tensor (torch.long) of codes, got {indices.dtype}")
    shape = tuple(indices.shape)
    if indices.dim() != 2 or indices.shape[0] == 0:
        hint = "; pass a batch, e.g. indices[None]" if indices.dim() == 1 else ""
        raise ValueError(f"indices must be a non-empty batch of codes (B, T), got shape {shape}{hint}")
    check_like_parameters(model, indices, "indices", dtype=False)
    if spec is not None and spec.num_tokens is not None and shape[1] != spec.num_tokens:
        raise ValueError(f"indices has {shape[1]} tokens per input, but this model's codes have T={spec.num_tokens}")
    if spec is not None and spec.vocab_size is not None:
        low, high = int(indices.min()), int(indices.max())
        if low < 0 or high >= spec.vocab_size:
            raise ValueError(
                f"codes must be in [0, {spec.vocab_size}) (V={spec.vocab_size}), got values from {low} to {high}"
            )
    return indices.long()


def check_latents(model: nn.Module, z: torch.Tensor) -> None:
    """``ValueError`` unless ``z`` is a batch ``(B, D)`` of continuous latents in the parameters' dtype."""
    spec = getattr(model, "input_spec", None)
    if not isinstance(z, torch.Tensor):
        raise ValueError(f"z must be a torch.Tensor of latents (B, D), got {type(z).__name__}")
    if z.dim() != 2 or z.shape[0] == 0:
        raise ValueError(f"z must be a non-empty batch of latents (B, D), got shape {tuple(z.shape)}")
    if spec is not None and spec.latent_dim is not None and z.shape[1] != spec.latent_dim:
        raise ValueError(f"z has {z.shape[1]} dimensions, but this model's latent has D={spec.latent_dim}")
    check_like_parameters(model, z, "z")
