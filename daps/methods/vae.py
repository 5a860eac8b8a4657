"""Gaussian VAE: Kingma & Welling 2014, "Auto-Encoding Variational Bayes" (https://arxiv.org/abs/1312.6114),
the continuous-latent reference of the DAPS paper on MNIST (original: models/vae.py).

q(z | x) = N(mean(x), diag exp(log_var(x))) from an MLP encoder, prior N(0, I), z = mean + exp(log_var / 2) eps
(reparameterization, eps ~ N(0, I) from the step's generator), decoder = the MNIST MLP fed z as one token.

    loss = -mean_b [ log p(x | z) - beta KL(q(z|x) || N(0, I)) ]      (closed-form KL, Kingma & Welling App. B)

Evaluation (``reconstruct``, ``encode``) uses the posterior mean as z, so it is deterministic in eval mode
(in train mode BatchNorm uses batch statistics and dropout is on).

NOTE(paper): z has ``vae.latent_dim`` = 2 dimensions, "the same capacity" as 64 bits counting a float32 as
32 bits (the original's choice).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch

import daps.functional as DF
from daps.config import Config, ScheduleConfig, check_positive, check_schedule
from daps.errors import UserError
from daps.methods.common import (
    Likelihood,
    build_decoder,
    build_likelihood,
    check_images,
    check_latents,
    elbo_logs,
    schedule_final,
    schedule_value,
    training_output,
)
from daps.methods.spec import MethodSpec
from daps.methods.types import Method, Output, Reconstruction
from daps.nets import Decoder
from daps.nets.feedforward import GaussianMLPEncoder
from daps.optim import OptimizerSpec


@dataclass
class GaussianVAEConfig:
    """Gaussian VAE with an MLP encoder, the same decoder capacity as DAPS on MNIST (original: models/vae.py)."""

    section: ClassVar[str] = "vae"
    """The name of these settings in overrides and config.json."""

    latent_dim: int = 2
    """Dimensions of z (64 bits / 32 bits per float in the paper's count)."""
    hidden: int = 512
    """Width of the encoder's hidden layer."""
    dropout: float = 0.1
    """Dropout after the encoder's hidden layer."""
    beta: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(kind="exp_decay", init=1.0, end=0.01))
    """Schedule of beta, the weight of KL(q || N(0, I))."""

    def validate(self) -> None:
        check_positive("vae", self, ("latent_dim", "hidden"))
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"vae.dropout must be in [0, 1), got {self.dropout}")
        check_schedule("vae.beta", self.beta)


class GaussianVAE(Method):
    """MLP Gaussian encoder, reparameterized single sample, MLP decoder.

    Args:
        encoder: ``x (B, C, H, W) -> mean, log_var`` each ``(B, D)`` (:class:`GaussianMLPEncoder`).
        decoder: an MLP decoder built without a vocabulary: ``decode_latents((N, 1, D)) -> (N, ...)``.
        likelihood: scores x under the decoder's output.
        cfg: the beta schedule.
        num_steps: length of the run, for the beta schedule.
    """

    vocab_size: int | None = None  # a continuous latent: no codes

    def __init__(
        self,
        encoder: GaussianMLPEncoder,
        decoder: Decoder,
        likelihood: Likelihood,
        cfg: GaussianVAEConfig,
        num_steps: int,
    ):
        super().__init__()
        self.encoder, self.decoder, self.likelihood = encoder, decoder, likelihood
        self.cfg, self.num_steps = cfg, num_steps
        self.latent_dim = cfg.latent_dim  # D, the size of z (what decode accepts)

    def beta(self, step: int) -> float:
        return schedule_value(self.cfg.beta, step, self.num_steps)

    def schedules(self, step: int) -> dict[str, float]:
        return {"beta": self.beta(step)}

    @property
    def final_beta(self) -> float:
        return schedule_final(self.cfg.beta)

    def optimizer_specs(self, lr: float, grad_clip: float) -> list[OptimizerSpec]:
        """One AdamW with adaptive clipping over encoder and decoder (original: models/vae.py)."""
        return [OptimizerSpec("vae", list(self.parameters()), lr=lr, grad_clip=grad_clip)]

    def decode_params(self, z: torch.Tensor) -> torch.Tensor:
        """The likelihood's parameters for latents ``z (N, D)``: ``(N, ...)``."""
        return self.decoder.decode_latents(z[:, None, :])  # z as one token (N, 1, D)

    def compile_step(self, mode: str | None = None) -> None:
        """``train.compile``: nothing here is worth compiling (no sampling loop); a no-op."""

    # -- training ----------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, step: int, generator: torch.Generator | None = None) -> Output:
        """One negative beta-ELBO on ``x (B, C, H, W)`` at optimizer step ``step``."""
        beta = self.scheduled("beta", step, x.device)  # (), read from the device (daps.graphed)
        mean, log_var = self.encoder(x, generator)  # (B, D) each
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)  # (B, D)
        z = mean + (0.5 * log_var).exp() * eps  # (B, D)
        params = self.decode_params(z)  # (B, ...)
        log_p = self.likelihood.log_prob(params, x)  # (B,)
        kl = DF.gaussian_kl_standard_normal(mean, log_var)  # (B,)
        loss = -(log_p - beta * kl).mean()
        with torch.no_grad():
            logs = {
                "loss": loss,
                "log_p": log_p.mean(),
                **elbo_logs(log_p, kl, self.final_beta),
                "beta": beta.clone(),
                "posterior_std": (0.5 * log_var).exp().mean(),
            }
        return training_output(loss, self.likelihood.mean(params), None, logs)

    # -- inference: the posterior mean ---------------------------------------------------------------

    @torch.no_grad()
    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Posterior mean: ``(B, C, H, W) -> (B, D)`` (``generator`` only drives dropout in training mode)."""
        check_images(self, x, generator)
        return self.encoder(x, generator)[0]

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder mean: ``(B, D) -> (B, C, H, W)``."""
        check_latents(self, z)
        return self.likelihood.mean(self.decode_params(z))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, generator: torch.Generator | None = None) -> Reconstruction:
        """Decode the posterior mean; ``kl`` is the closed-form Gaussian KL, there are no codes (original:
        models/vae.py)."""
        check_images(self, x, generator)
        mean, log_var = self.encoder(x, generator)
        params = self.decode_params(mean)
        return Reconstruction(
            indices=None,
            x_hat=self.likelihood.mean(params),
            log_p=self.likelihood.log_prob(params, x),
            kl=DF.gaussian_kl_standard_normal(mean, log_var),
        )


def build_vae(cfg: Config, image_shape: tuple[int, int, int]) -> GaussianVAE:
    """The MNIST Gaussian VAE: MLP encoder (784 -> 512 -> 2 x latent_dim) and the MLP decoder (original:
    models/vae.py)."""
    likelihood = build_likelihood(cfg)
    v = cfg.vae
    encoder = GaussianMLPEncoder(math.prod(image_shape), v.hidden, v.latent_dim, v.dropout)
    decoder = build_decoder(cfg, image_shape, likelihood, token_dim=v.latent_dim, num_tokens=1)
    return GaussianVAE(encoder, decoder, likelihood, v, num_steps=cfg.train.steps)


VAE_SPEC = MethodSpec(
    name="vae", summary="Gaussian VAE, 2-d latent (MNIST)", build=build_vae, config_type=GaussianVAEConfig,
    encoder="mlp", bits=lambda cfg: 32.0 * cfg.vae.latent_dim, progress=("log_p", "kl"),
    only_presets=("mnist", "mnist5k-demo"),
    cuda_graph=True,
    ignores={"encoder.vocab_size": "its latent is continuous (vae.latent_dim)",
             "encoder.num_tokens": "its latent is one vector (vae.latent_dim)",
             **{f"encoder.{key}": "its encoder is an MLP (vae.hidden)"
                for key in ("width", "num_layers", "num_heads", "mlp_ratio", "embed")},
             "decoder.embed_dim": "its decoder takes the latent itself (vae.latent_dim)"},
)
