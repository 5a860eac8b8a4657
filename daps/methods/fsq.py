"""FSQ: "Finite Scalar Quantization: VQ-VAE Made Simple" (Mentzer, Minnen, Agustsson & Tschannen, ICLR 2024,
https://arxiv.org/abs/2309.15505), the deterministic-quantizer baseline of the paper (original: models/fsq.py).

One step, for a batch x of B inputs with D_x data dimensions:

1. z = encoder(x), ``(B, T, d)`` with d = len(levels): the bidirectional transformer with a Dense(d) head.
2. Each dim i is bounded and rounded to L_i levels, straight-through (paper Sec. 3, App. A.1):
   z_hat_i = round(bound(z_i)) / (L_i // 2) in [-1, 1]. A token's code is the mixed-radix index of its d
   digits, one of prod(L) codes of an implicit codebook (used by ``encode`` / ``decode`` and downstream).
3. Decoder: per token Dense(decoder.embed_dim) -> Dense(decoder.fsq_token_dim), no activation between
   (original: models/fsq.py), then the MLP on the T token vectors concatenated.
4. Loss L = -mean_b log p(x_b | z_hat_b) / D_x: reconstruction only, no commitment or codebook term.

NOTE(paper): ``bound`` uses atanh for the even-L shift and half_l = (L - 1)(1 + 1e-3) / 2; the original DAPS
code uses tan and (L - 1)(1 - 1e-3) / 2 (see :func:`daps.functional.fsq_bound`: the same set of codes, bounded
values within 0.2 %).
NOTE(paper): the loss is a per-dimension mean as in the original (DAPS and Gumbel use full sums; original:
models/fsq.py); the logged ``log_p`` is the full sum in nats, comparable across methods.
NOTE(paper): the original configs carry ``commitment_coeff`` 0.25, which its FSQ loss never uses; not kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn

import daps.functional as DF
from daps.config import Config
from daps.errors import UserError
from daps.methods.common import (
    Likelihood,
    build_decoder,
    build_likelihood,
    build_na_encoder,
    check_codes,
    check_images,
    per_dim_reconstruction_loss,
    quantized_reconstruction,
    training_output,
)
from daps.methods.spec import MethodSpec
from daps.methods.types import Method, Output, Reconstruction
from daps.nets import Decoder, NATransformerEncoder
from daps.nets.layers import dense
from daps.optim import OptimizerSpec


@dataclass
class FSQConfig:
    """Finite scalar quantization (Mentzer et al. 2024; original: models/fsq.py)."""

    section: ClassVar[str] = "fsq"
    """The name of these settings in overrides and config.json."""

    levels: tuple[int, ...] = (8, 6, 5)
    """Quantization levels per latent dimension; the implicit codebook has prod(levels) codes per token."""

    def validate(self) -> None:
        if not self.levels or any(level < 2 for level in self.levels):
            raise UserError(f"fsq.levels must be one or more integers >= 2, got {self.levels}")


class FSQ(Method):
    """Bidirectional encoder -> finite scalar quantization -> MLP decoder, trained by reconstruction.

    Args:
        encoder: maps ``x (B, C, H, W)`` to ``z (B, T, d)``, d = len(levels).
        embed_latent: per-token layers ``(..., d) -> (..., token_dim)`` in front of the decoder.
        decoder: ``decode_latents((N, T, token_dim)) -> (N, *param_shape)``.
        likelihood: scores x under the decoder's output.
        levels: L_i, quantization levels of each latent dim.
    """

    final_beta = None  # no KL term

    def __init__(
        self,
        encoder: NATransformerEncoder,
        embed_latent: nn.Module,
        decoder: Decoder,
        likelihood: Likelihood,
        levels: tuple[int, ...],
    ):
        super().__init__()
        self.encoder, self.embed_latent, self.decoder, self.likelihood = encoder, embed_latent, decoder, likelihood
        self.levels = tuple(int(level) for level in levels)

    @property
    def vocab_size(self) -> int:
        """Size of the implicit codebook, prod(L)."""
        return math.prod(self.levels)

    def optimizer_specs(self, lr: float, grad_clip: float) -> list[OptimizerSpec]:
        """One AdamW with adaptive clipping over every parameter (original: configs/model_dataset/fsq_*.yaml)."""
        return [OptimizerSpec("vae", list(self.parameters()), lr=lr, grad_clip=grad_clip)]

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, C, H, W) -> z_hat (B, T, d)``, codes in [-1, 1] with a straight-through gradient."""
        return DF.fsq_quantize(self.encoder(x), self.levels)

    def decoder_params(self, z_hat: torch.Tensor) -> torch.Tensor:
        """Codes ``(N, T, d)`` -> the likelihood's parameters ``(N, *param_shape)``."""
        return self.decoder.decode_latents(self.embed_latent(z_hat))  # (N, T, token_dim) -> (N, ...)

    def compile_step(self, mode: str | None = None) -> None:
        """``train.compile``: nothing here is worth compiling (no sampling loop); a no-op."""

    # -- training ----------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, step: int, generator: torch.Generator | None = None) -> Output:
        """The reconstruction loss on ``x (B, C, H, W)`` (deterministic: ``step`` and ``generator`` are unused)."""
        z_hat = self.quantize(x)  # (B, T, d)
        params = self.decoder_params(z_hat)  # (B, C, H, W)
        log_p = self.likelihood.log_prob(params, x)  # (B,) nats, summed over data dims
        loss = per_dim_reconstruction_loss(log_p, x)
        with torch.no_grad():
            indices = DF.fsq_codes_to_indices(z_hat, self.levels)  # (B, T)
            logs = {
                "loss": loss,
                "log_p": log_p.mean(),
                "recon_loss": loss,
                "perplexity": DF.empirical_perplexity(indices, self.vocab_size),
            }
        return training_output(loss, self.likelihood.mean(params), indices, logs)

    # -- inference ---------------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Implicit-codebook indices: ``(B, C, H, W) -> (B, T)`` (deterministic)."""
        check_images(self, x, generator)
        return DF.fsq_codes_to_indices(self.quantize(x), self.levels)

    @torch.no_grad()
    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Decoder mean: ``(B, T) -> (B, C, H, W)``."""
        indices = check_codes(self, indices)
        z_hat = DF.fsq_indices_to_codes(indices, self.levels)  # (B, T, d)
        return self.likelihood.mean(self.decoder_params(z_hat))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, generator: torch.Generator | None = None) -> Reconstruction:
        """Quantize and decode; ``log_p (B,)`` summed over data dims. No q, so no KL terms."""
        check_images(self, x, generator)
        z_hat = self.quantize(x)  # (B, T, d)
        return quantized_reconstruction(
            self.likelihood, self.decoder_params(z_hat), x, DF.fsq_codes_to_indices(z_hat, self.levels)
        )


def build_fsq(cfg: Config, image_shape: tuple[int, int, int]) -> FSQ:
    """FSQ with the bidirectional encoder and the MLP (MNIST) or ResNet decoder (original: models/fsq.py)."""
    likelihood = build_likelihood(cfg)
    levels = tuple(cfg.fsq.levels)
    encoder = build_na_encoder(cfg, image_shape, out_dim=len(levels))  # built first: seeded init follows this order
    d = cfg.decoder
    widths: tuple[int, ...]
    if d.kind in ("resnet", "transformer"):  # Dense(E) -> Dense(E * ratio) -> Dense(E), no activations
        # (original: models/fsq.py)
        token_dim = d.embed_dim
        widths = (len(levels), d.embed_dim, d.embed_dim * d.fsq_ratio, d.embed_dim)
    else:  # Dense(E) -> Dense(fsq_token_dim) (original: models/fsq.py)
        token_dim = d.fsq_token_dim
        widths = (len(levels), d.embed_dim, d.fsq_token_dim)
    embed_latent = nn.Sequential(*(dense(a, b, init="lecun") for a, b in zip(widths[:-1], widths[1:])))
    decoder = build_decoder(cfg, image_shape, likelihood, token_dim=token_dim)
    return FSQ(encoder, embed_latent, decoder, likelihood, levels)


def _bits(cfg: Config) -> float:
    return cfg.encoder.num_tokens * math.log2(math.prod(cfg.fsq.levels))


def _levels(levels: tuple[int, ...]):
    def apply(cfg: Config) -> None:
        cfg.fsq.levels = levels

    return apply


FSQ_SPEC = MethodSpec(
    name="fsq", summary="finite scalar quantization", build=build_fsq, config_type=FSQConfig, encoder="quantizer",
    presets={"cifar10": _levels((8, 8, 8)), "imagenet256": _levels((8, 5, 5, 5)), "lafan1-h1": _levels((10, 10, 10))},
    bits=_bits,
    progress=("log_p", "perplexity"),
    cuda_graph=True,
    ignores={"encoder.vocab_size": "its codes are the product of fsq.levels"},
)
