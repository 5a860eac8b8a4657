"""VQ-VAE with the codebook tricks used in practice (``vqvae-ema``), on ``vector_quantize_pytorch.VectorQuantize``.

Same encoder, decoder, nearest-neighbour lookup, straight-through estimator and commitment loss as ``vqvae``
(van den Oord et al. 2017, https://arxiv.org/abs/1711.00937; original: models/vqvae.py), but the codebook is not trained
by gradient:

- EMA codebook (van den Oord et al. 2017, App. A.1; Razavi et al. 2019, "Generating Diverse High-Fidelity
  Images with VQ-VAE-2", https://arxiv.org/abs/1906.00446): per code v, with decay gamma = vq.ema_decay,
      N_v <- gamma N_v + (1 - gamma) n_v,   m_v <- gamma m_v + (1 - gamma) sum_{t: k_t = v} z_e,t,
      e_v = m_v / N_v (N Laplace-smoothed)
  where n_v counts the batch's tokens assigned to v. No codebook loss.
- k-means initialization on the first training batch (vq.kmeans_init): the codes start as 10 Lloyd
  iterations over that batch's encoder outputs, so none starts far from the data (a data-dependent init as
  in Łańcucki et al. 2020, "Robust Training of Vector Quantized Bottleneck Models",
  https://arxiv.org/abs/2005.08520).
- Dead-code restarts (Dhariwal et al. 2020, "Jukebox: A Generative Model for Music",
  https://arxiv.org/abs/2005.00341; vq.dead_code_threshold): in each training-mode forward, codes whose EMA usage
  N_v is below the threshold are reset to random encoder outputs of the batch (N_v reset to the threshold).

Loss: c * mean (sg(z_q) - z_e)^2 - mean_b log p(x_b | z_b) / D_x, c = vq.commitment.

The codebook and its statistics are buffers (``quantizer._codebook.{embed, embed_avg, cluster_size, initted}``),
updated in place during training-mode ``forward`` only. ``encode``, ``decode``, ``reconstruct`` and eval-mode
``forward`` read the codebook with :func:`daps.functional.vq_nearest` and change nothing, so evaluating a model
before its first training step neither triggers nor consumes the k-means initialization.

Randomness: the package draws k-means seeds and restart samples from torch's global RNG (``randperm`` /
``randint``). Given a ``generator``, ``forward`` seeds that global RNG from it inside ``torch.random.fork_rng``
(one draw per training step), so a step depends only on ``generator`` (exact resume) and the global RNG state is
left as it was; with ``generator=None`` the package uses and advances the global RNG. At construction the
codebook is zeros with k-means init, else the package's uniform init drawn from the global RNG like every other
initializer.

NOTE(paper): not in the original DAPS code or paper; a stronger VQ baseline. Of the package's extras, the rotation
trick (on by default) is turned off for the paper's straight-through estimator; cosine-similarity codebooks and
the rest stay off.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

import daps.functional as DF
from daps.config import Config
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
from daps.methods.vqvae import VQConfig
from daps.nets import Decoder, NATransformerEncoder
from daps.optim import OptimizerSpec


@contextlib.contextmanager
def global_rng_from(generator: torch.Generator | None, device: torch.device) -> Iterator[None]:
    """Seed torch's global RNG (CPU, and ``device`` if CUDA) from one draw of ``generator`` for the duration of
    the block, then restore it. No-op for ``generator=None``."""
    if generator is None:
        yield
        return
    seed = int(torch.randint(0, 2**62, (), generator=generator, device=generator.device))
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.random.default_generator.manual_seed(seed)
        for index in cuda:
            torch.cuda.default_generators[index].manual_seed(seed)
        yield


class VQVAEEMA(Method):
    """Bidirectional encoder -> EMA-trained codebook (k-means init, dead-code restarts) -> MLP decoder.

    Args:
        encoder: maps ``x (B, C, H, W)`` to ``z_e (B, T, E)``.
        decoder: ``decode_latents((N, T, E)) -> (N, *param_shape)``.
        likelihood: scores x under the decoder's output.
        quantizer: a ``vector_quantize_pytorch.VectorQuantize`` over E-dim vectors, without projections and
            with a non-learnable (EMA) codebook.
        commitment: c, weight of the commitment loss.
    """

    final_beta = None  # no KL term
    quantizer: Any  # vector_quantize_pytorch.VectorQuantize (untyped)

    def __init__(
        self,
        encoder: NATransformerEncoder,
        decoder: Decoder,
        likelihood: Likelihood,
        quantizer: nn.Module,
        commitment: float,
    ):
        super().__init__()
        self.encoder, self.decoder, self.likelihood, self.quantizer = encoder, decoder, likelihood, quantizer
        self.commitment = commitment

    @property
    def codebook(self) -> torch.Tensor:
        """The current codebook ``(V, E)``, a buffer (no gradient)."""
        return self.quantizer.codebook

    @property
    def vocab_size(self) -> int:
        return self.quantizer.codebook_size

    def optimizer_specs(self, lr: float, grad_clip: float) -> list[OptimizerSpec]:
        """Encoder and decoder share one AdamW with adaptive clipping; the codebook follows its EMA."""
        return [OptimizerSpec("vae", list(self.parameters()), lr=lr, grad_clip=grad_clip)]

    def quantize(self, z_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Read-only lookup: ``z_e (B, T, E) -> indices (B, T), z_q (B, T, E)``."""
        return vq_lookup(z_e, self.codebook)

    def compile_step(self, mode: str | None = None) -> None:
        """``train.compile``: nothing here is worth compiling (no sampling loop); a no-op."""

    # -- training ----------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, step: int, generator: torch.Generator | None = None) -> Output:
        """Commitment + reconstruction loss on ``x (B, C, H, W)``; in training mode also one codebook update
        (k-means on the first call, then EMA and dead-code restarts)."""
        z_e = self.encoder(x)  # (B, T, E)
        if self.training:
            with global_rng_from(generator, z_e.device):
                # z_e + sg(z_q - z_e) with the codebook as it was before this step's update.
                z, indices, _ = self.quantizer(z_e)  # (B, T, E), (B, T)
            # The package returns its shared zero-loss buffer marked requires_grad; give it back a plain tensor
            # so the module still deep-copies after being moved (``.to``) once trained.
            self.quantizer.zero = self.quantizer.zero.detach()
        else:
            indices, z = self.quantize(z_e)
        commitment_loss = F.mse_loss(z_e, z.detach())  # mean (sg(z_q) - z_e)^2
        params = self.decoder.decode_latents(z)  # (B, C, H, W)
        log_p = self.likelihood.log_prob(params, x)  # (B,)
        recon_loss = per_dim_reconstruction_loss(log_p, x)
        loss = self.commitment * commitment_loss + recon_loss
        with torch.no_grad():
            logs = {
                "loss": loss,
                "log_p": log_p.mean(),
                "recon_loss": recon_loss,
                "commitment_loss": commitment_loss,
                "perplexity": DF.empirical_perplexity(indices, self.vocab_size),
            }
        return training_output(loss, self.likelihood.mean(params), indices, logs)

    # -- inference ---------------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Nearest-code indices: ``(B, C, H, W) -> (B, T)`` (deterministic, read-only)."""
        check_images(self, x, generator)
        return DF.vq_nearest(self.encoder(x), self.codebook)

    @torch.no_grad()
    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Decoder mean: ``(B, T) -> (B, C, H, W)``."""
        indices = check_codes(self, indices)
        return vq_decode(self.decoder, self.likelihood, self.codebook, indices)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, generator: torch.Generator | None = None) -> Reconstruction:
        """Quantize (read-only) and decode; ``log_p (B,)`` summed over data dims. No q, so no KL terms."""
        check_images(self, x, generator)
        indices, z_q = self.quantize(self.encoder(x))  # (B, T), (B, T, E)
        return quantized_reconstruction(self.likelihood, self.decoder.decode_latents(z_q), x, indices)


def build_vqvae_ema(cfg: Config, image_shape: tuple[int, int, int]) -> VQVAEEMA:
    """VQ-VAE with an EMA codebook of V = encoder.vocab_size codes of width E = encoder.width."""
    from vector_quantize_pytorch import VectorQuantize

    likelihood = build_likelihood(cfg)
    encoder = build_na_encoder(cfg, image_shape, out_dim=None)  # built first: seeded init follows this order
    decoder = build_decoder(cfg, image_shape, likelihood, token_dim=cfg.encoder.width)
    vq = cfg.vq
    quantizer = VectorQuantize(
        dim=cfg.encoder.width,
        codebook_size=cfg.encoder.vocab_size,
        decay=vq.ema_decay,
        kmeans_init=vq.kmeans_init,
        threshold_ema_dead_code=vq.dead_code_threshold,
        commitment_weight=0.0,  # the commitment loss is added in VQVAEEMA.forward
        rotation_trick=False,  # plain straight-through, as the paper
        use_cosine_sim=False,
    )
    return VQVAEEMA(encoder, decoder, likelihood, quantizer, vq.commitment)


def _lafan_commitment(cfg: Config) -> None:
    cfg.vq.commitment = 0.5  # the original's LAFAN setting


VQVAE_EMA_SPEC = MethodSpec(
    name="vqvae-ema", summary="VQ-VAE with EMA codebook, k-means init and dead-code restarts",
    build=build_vqvae_ema, config_type=VQConfig, encoder="quantizer", progress=("log_p", "perplexity"),
    presets={"lafan1-h1": _lafan_commitment},
)
