"""REINFORCE with a leave-one-out baseline: the score-function estimator of Williams 1992 ("Simple
Statistical Gradient-Following Algorithms for Connectionist Reinforcement Learning") with the baseline of
Kool, van Hoof & Welling 2019 ("Buy 4 REINFORCE Samples, Get a Baseline for Free!",
https://openreview.net/forum?id=r1lgTGL5DE), on the same autoregressive encoder and decoder as DAPS.

One step, for a batch x of B inputs:

1. Sample K codes per input from the current encoder, z_k ~ q_theta(z | x) (no gradient).
2. Rewards r_k = log p_phi(x | z_k) - beta log q_theta(z_k | x)                      (detached)
3. Baselines b_k = (1 / (K - 1)) sum_{j != k} r_j                                      (Kool et al., Eq. 8)
4. Encoder loss  L_theta = -mean_b (1/K) sum_k (r_k - b_k) log q_theta(z_k | x)   (log q teacher-forced)
   decoder loss  L_phi   = -mean_{k,b} log p_phi(x | z_k)

-grad L_theta is an unbiased estimate of the gradient of the beta-ELBO
E_q[log p(x|z) - beta (log q(z|x) - log U(z))]: the score-function identity gives
E_q[(log p - beta log q) grad log q] (the term -beta E_q[grad log q] is zero), and b_k does not depend
on z_k. The encoder and decoder losses touch disjoint parameters, so one backward of their sum suffices.

NOTE(paper): not a baseline of the DAPS paper or its code; added for comparison with DAPS's K samples.
NOTE(paper): the reward's log q is the teacher-forced one (the same as the sampling log q unless
``encoder.mask_token0`` reproduces the original's code-0 masking, original: networks/transformer.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch

import daps.functional as DF
from daps.config import Config, ScheduleConfig, check_schedule, schedule
from daps.errors import UserError
from daps.methods.common import (
    Likelihood,
    build_ar_encoder,
    build_decoder,
    build_likelihood,
    categorical_reconstruction,
    check_codes,
    check_images,
    compile_sampler,
    decode_code,
    elbo_logs,
    one_pass_check,
    sample_code,
    schedule_final,
    schedule_value,
    training_output,
)
from daps.methods.spec import MethodSpec
from daps.methods.types import Method, Output, Reconstruction
from daps.nets import ARTransformerEncoder, Decoder
from daps.optim import OptimizerSpec


@dataclass
class ReinforceConfig:
    """REINFORCE with a leave-one-out baseline over K samples (Kool et al. 2019)."""

    section: ClassVar[str] = "reinforce"
    """The name of these settings in overrides and config.json."""

    num_samples: int = 8
    """K, codes sampled per input."""
    beta: ScheduleConfig = field(default_factory=ScheduleConfig)
    """Schedule of beta in the reward log p(x|z) - beta log q(z|x)."""
    one_pass: bool = False
    """Score the K codes while sampling them, as ``daps.one_pass`` (not in the paper; the same update up to float
    rounding, a speed option for short codes: BENCHMARKS.md, "One encoder pass")."""

    def validate(self) -> None:
        if not self.num_samples >= 2:
            raise UserError(f"reinforce.num_samples must be >= 2 for a leave-one-out baseline, got {self.num_samples}")
        check_schedule("reinforce.beta", self.beta)


class Reinforce(Method):
    """Autoregressive categorical encoder trained by REINFORCE with a leave-one-out baseline.

    Args:
        encoder: an :class:`ARTransformerEncoder` (``sample``, ``log_prob``).
        decoder: maps codes ``(N, T)`` to the likelihood's parameters ``(N, ...)``.
        likelihood: scores x under the decoder's output.
        cfg: K and the beta schedule.
        num_steps: length of the run, for the beta schedule.
    """

    def __init__(
        self,
        encoder: ARTransformerEncoder,
        decoder: Decoder,
        likelihood: Likelihood,
        cfg: ReinforceConfig,
        num_steps: int,
    ):
        super().__init__()
        if cfg.num_samples < 2:
            raise UserError(f"reinforce.num_samples must be >= 2, got {cfg.num_samples}")
        self.encoder, self.decoder, self.likelihood = encoder, decoder, likelihood
        self.cfg, self.num_steps = cfg, num_steps

    def beta(self, step: int) -> float:
        return schedule_value(self.cfg.beta, step, self.num_steps)

    def schedules(self, step: int) -> dict[str, float]:
        return {"beta": self.beta(step)}

    @property
    def vocab_size(self) -> int:
        return self.encoder.vocab_size

    @property
    def final_beta(self) -> float:
        return schedule_final(self.cfg.beta)

    def optimizer_specs(self, lr: float, grad_clip: float) -> list[OptimizerSpec]:
        """Encoder and decoder share one AdamW with adaptive clipping, as DAPS's ``vae`` group."""
        return [OptimizerSpec("vae", list(self.parameters()), lr=lr, grad_clip=grad_clip)]

    def compile_step(self, mode: str | None = None) -> None:
        """``train.compile``: sample through the compiled one-token step (``mode``: ``torch.compile``'s)."""
        compile_sampler(self.encoder, mode)

    # -- training ----------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, step: int, generator: torch.Generator | None = None) -> Output:
        """One REINFORCE-LOO objective evaluation on ``x (B, C, H, W)`` at optimizer step ``step``."""
        num_samples = self.cfg.num_samples
        beta = self.scheduled("beta", step, x.device)  # (), read from the device (daps.graphed)
        if self.cfg.one_pass:
            samples = self.encoder.sample_scored(x, num_samples, generator)  # log q with its gradient
            log_q = samples.log_q  # (K, B)
        else:
            conditioning = self.encoder.conditioning(x)  # once, with gradients: sampled from, then teacher-forced
            samples = self.encoder.sample(x, num_samples, generator, conditioning=conditioning)  # (K, B, T), no grad
            log_q = self.encoder.log_prob(x, samples.indices, conditioning=conditioning).sum(-1)  # (K, B), grad
        indices = samples.indices

        params = self.decoder(indices)  # (K, B, ...): BatchNorm, if any, normalizes each of the K slices alone
        log_p = self.likelihood.log_prob(params, x)  # (K, B)

        rewards = (log_p - beta * log_q).detach()  # (K, B)
        advantages = rewards - DF.leave_one_out_baseline(rewards)  # (K, B)
        encoder_loss = -(advantages * log_q).mean(0).mean()
        decoder_loss = -log_p.mean()
        loss = encoder_loss + decoder_loss
        with torch.no_grad():
            kl = DF.kl_to_uniform(samples.token_entropy, self.encoder.vocab_size)  # (K, B)
            logs = {
                "loss": loss,
                "log_p": log_p.mean(),
                "log_q": log_q.mean(),
                **elbo_logs(log_p, kl, self.final_beta),
                "beta": beta.clone(),
                "reward_std": rewards.std(0).mean(),  # spread over the K samples, averaged over inputs
            }
        return training_output(loss, self.likelihood.mean(params[0]), indices[0], logs)

    # -- inference ---------------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One stochastic code per input: ``(B, C, H, W) -> (B, T)``."""
        check_images(self, x, generator)
        return sample_code(self.encoder, x, generator)

    @torch.no_grad()
    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Decoder mean: ``(B, T) -> (B, C, H, W)``."""
        indices = check_codes(self, indices)
        return decode_code(self.decoder, self.likelihood, indices)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, generator: torch.Generator | None = None) -> Reconstruction:
        """Encode with one stochastic sample and decode, with the ELBO terms (original: models/base_vae.py)."""
        check_images(self, x, generator)
        return categorical_reconstruction(self.encoder, self.decoder, self.likelihood, x, generator)


def build_reinforce(cfg: Config, image_shape: tuple[int, int, int]) -> Reinforce:
    """REINFORCE-LOO with the autoregressive transformer encoder and the MLP decoder."""
    likelihood = build_likelihood(cfg)
    encoder = build_ar_encoder(cfg, image_shape)  # built first: the seeded initialization follows this order
    decoder = build_decoder(cfg, image_shape, likelihood, vocab_size=cfg.encoder.vocab_size)
    return Reinforce(encoder, decoder, likelihood, cfg.reinforce, num_steps=cfg.train.steps)


def _beta(beta: ScheduleConfig):
    def apply(cfg: Config) -> None:
        cfg.reinforce.beta = replace(beta)  # as DAPS; a copy, which cfg owns

    return apply


REINFORCE_SPEC = MethodSpec(
    name="reinforce", summary="REINFORCE with a leave-one-out baseline over K samples", build=build_reinforce,
    config_type=ReinforceConfig, encoder="autoregressive",
    presets={
        "cifar10": _beta(schedule(6.0, 0.01)), "imagenet256": _beta(schedule(50.0, 1.0)),
        "lafan1-h1": _beta(schedule(3.0, 0.01)),
    },
    progress=("log_p", "kl"),
    cuda_graph=True, check_config=one_pass_check(autoregressive=True),
)
