"""VQ-VAE: "Neural Discrete Representation Learning" (van den Oord, Vinyals & Kavukcuoglu, NeurIPS 2017,
https://arxiv.org/abs/1711.00937), as the original DAPS code trains it (original: models/vqvae.py).

One step, for a batch x of B inputs with D_x data dimensions:

1. z_e = encoder(x), ``(B, T, E)``: the bidirectional transformer without a head.
2. Nearest codebook row per token, k_t = argmin_v ||z_e,t - e_v||^2; z_q = e_k (paper Eq. 1-2).
3. Straight-through: the decoder reads z = z_e + sg(z_q - z_e), so the reconstruction gradient reaches the
   encoder as if quantization were the identity.
4. Loss (paper Eq. 3, means over all B*T*E elements):
   L = mean (z_q - sg(z_e))^2            codebook: the only gradient the codebook gets
     + c * mean (sg(z_q) - z_e)^2        commitment, c = vq.commitment
     - mean_b log p(x_b | z_b) / D_x     reconstruction, per data dimension

NOTE(paper): the codebook is trained by gradient with the framework-default embedding init N(0, 1/E), no EMA,
no data-dependent init and no dead-code restarts, as in the original (``vqvae-ema`` has all three).
NOTE(paper): the reconstruction term is a per-dimension mean (the paper writes log p summed over data dims),
which with commitment 0.25 weights the codebook terms relatively higher (original: models/vqvae.py); the logged
``log_p`` is the full sum in nats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

import daps.functional as DF
from daps.config import Config, check_positive
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
    vq_decode,
    vq_lookup,
)
from daps.methods.spec import MethodSpec
from daps.methods.types import Method, Output, Reconstruction
from daps.nets import Decoder, NATransformerEncoder
from daps.optim import OptimizerSpec


@dataclass
class VQConfig:
    """VQ-VAE (van den Oord et al. 2017; original: models/vqvae.py); the codebook is encoder.vocab_size x
    encoder.width."""

    section: ClassVar[str] = "vq"
    """The name of these settings in overrides and config.json."""

    commitment: float = 0.25
    """Weight of the commitment loss ||z_e - sg(z_q)||^2."""
    ema_decay: float = 0.99
    """vqvae-ema only: decay of the codebook's exponential moving averages."""
    kmeans_init: bool = True
    """vqvae-ema only: initialize the codebook by k-means on the first batch."""
    dead_code_threshold: float = 2.0
    """vqvae-ema only: codes used fewer times than this per batch (EMA count) are restarted from the batch."""

    def unread(self, cfg: Config) -> dict[str, str]:
        """The settings these values leave unread (:func:`daps.config_io.ignored_settings`): the decoder's token
        width, since the MLP and ResNet decoders take the codebook vectors themselves (the transformer decoder's
        width is ``decoder.embed_dim`` still)."""
        if cfg.decoder.kind == "transformer":
            return {}
        return {"decoder.embed_dim": "the decoder takes the codebook vectors themselves, encoder.width wide"}

    def validate(self) -> None:
        check_positive("vq", self, ("commitment", "dead_code_threshold"), strict=False)
        if not 0.0 < self.ema_decay < 1.0:
            raise UserError(f"vq.ema_decay must be in (0, 1), got {self.ema_decay}")


class VQVAE(Method):
    """Bidirectional encoder -> nearest of V learned codes -> MLP decoder.

    Args:
        encoder: maps ``x (B, C, H, W)`` to ``z_e (B, T, E)``.
        decoder: ``decode_latents((N, T, E)) -> (N, *param_shape)``.
        likelihood: scores x under the decoder's output.
        vocab_size: V, codebook rows.
        width: E, codebook columns (the encoder's output width).
        commitment: c, weight of the commitment loss.
    """

    final_beta = None  # no KL term

    def __init__(
        self,
        encoder: NATransformerEncoder,
        decoder: Decoder,
        likelihood: Likelihood,
        vocab_size: int,
        width: int,
        commitment: float,
    ):
        super().__init__()
        self.encoder, self.decoder, self.likelihood = encoder, decoder, likelihood
        self.commitment = commitment
        self.codebook = nn.Parameter(torch.randn(vocab_size, width) / math.sqrt(width))  # (V, E)

    @property
    def vocab_size(self) -> int:
        return self.codebook.shape[0]

    def clip_unit_dims(self) -> dict[nn.Parameter, tuple[int, ...]]:
        """The codebook ``(V, E)`` is clipped per embedding feature, over the vocabulary, like an embedding table
        (``daps.optim.unit_dims``)."""
        return {self.codebook: (0,)}

    def optimizer_specs(self, lr: float, grad_clip: float) -> list[OptimizerSpec]:
        """Codebook, encoder and decoder share one AdamW with adaptive clipping (original: models/vqvae.py)."""
        return [OptimizerSpec("vae", list(self.parameters()), lr=lr, grad_clip=grad_clip)]

    def quantize(self, z_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z_e (B, T, E) -> indices (B, T), z_q (B, T, E)``; z_q carries gradient to the looked-up rows."""
        return vq_lookup(z_e, self.codebook)

    def compile_step(self, mode: str | None = None) -> None:
        """``train.compile``: nothing here is worth compiling (no sampling loop); a no-op."""

    # -- training ----------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, step: int, generator: torch.Generator | None = None) -> Output:
        """The VQ-VAE loss on ``x (B, C, H, W)`` (deterministic: ``step`` and ``generator`` are unused)."""
        z_e = self.encoder(x)  # (B, T, E)
        indices, z_q = self.quantize(z_e)
        codebook_loss = F.mse_loss(z_q, z_e.detach())
        commitment_loss = F.mse_loss(z_e, z_q.detach())
        # Straight-through, written sg(z_q) + (z_e - sg(z_e)) so the forward value is exactly z_q.
        z = z_q.detach() + (z_e - z_e.detach())  # (B, T, E)
        params = self.decoder.decode_latents(z)  # (B, C, H, W)
        log_p = self.likelihood.log_prob(params, x)  # (B,)
        recon_loss = per_dim_reconstruction_loss(log_p, x)
        loss = codebook_loss + self.commitment * commitment_loss + recon_loss
        with torch.no_grad():
            logs = {
                "loss": loss,
                "log_p": log_p.mean(),
                "recon_loss": recon_loss,
                "codebook_loss": codebook_loss,
                "commitment_loss": commitment_loss,
                "perplexity": DF.empirical_perplexity(indices, self.vocab_size),
            }
        return training_output(loss, self.likelihood.mean(params), indices, logs)

    # -- inference ---------------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Nearest-code indices: ``(B, C, H, W) -> (B, T)`` (deterministic)."""
        check_images(self, x, generator)
        return DF.vq_nearest(self.encoder(x), self.codebook)

    @torch.no_grad()
    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Decoder mean: ``(B, T) -> (B, C, H, W)``."""
        indices = check_codes(self, indices)
        return vq_decode(self.decoder, self.likelihood, self.codebook, indices)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, generator: torch.Generator | None = None) -> Reconstruction:
        """Quantize and decode; ``log_p (B,)`` summed over data dims. No q, so no KL terms."""
        check_images(self, x, generator)
        indices, z_q = self.quantize(self.encoder(x))  # (B, T), (B, T, E)
        return quantized_reconstruction(self.likelihood, self.decoder.decode_latents(z_q), x, indices)


def build_vqvae(cfg: Config, image_shape: tuple[int, int, int]) -> VQVAE:
    """VQ-VAE with a V x E codebook, V = encoder.vocab_size, E = encoder.width (original: models/vqvae.py)."""
    likelihood = build_likelihood(cfg)
    encoder = build_na_encoder(cfg, image_shape, out_dim=None)  # built first: seeded init follows this order
    decoder = build_decoder(cfg, image_shape, likelihood, token_dim=cfg.encoder.width)
    return VQVAE(encoder, decoder, likelihood, cfg.encoder.vocab_size, cfg.encoder.width, cfg.vq.commitment)


def _lafan_commitment(cfg: Config) -> None:
    cfg.vq.commitment = 0.5  # the original's LAFAN setting


VQVAE_SPEC = MethodSpec(
    name="vqvae", summary="VQ-VAE as in the original code (gradient-trained codebook)", build=build_vqvae,
    config_type=VQConfig, encoder="quantizer", progress=("log_p", "perplexity"),
    presets={"lafan1-h1": _lafan_commitment},
    cuda_graph=True,
    ignores={f"vq.{key}": "a setting of vqvae-ema's moving-average codebook"
             for key in ("ema_decay", "kmeans_init", "dead_code_threshold")},
)
