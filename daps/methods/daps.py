"""DAPS: Discrete Variational Autoencoding via Policy Search (ICLR 2026, https://arxiv.org/abs/2509.24716).

One step, for a batch x of B inputs:

1. Sample K codes per input from the current encoder, z_k ~ q_theta(z | x) (no gradient).
2. Rewards R_k = log p_phi(x | z_k); advantages A_k = R_k - log sum_j exp R_j           (paper Sec. 3.1)
3. Weights w_k = softmax_k((A_k - beta log q_theta(z_k|x)) / (eta + beta))              (Eq. 5-6)
   i.e. self-normalized q*(z_k) / q_theta(z_k) for q* ∝ q_theta exp((A - beta log q_theta)/(eta + beta)).
4. Encoder loss  L_theta = -mean_b sum_k sg(w_k) log q_theta(z_k | x)  (weighted maximum likelihood, Eq. 6)
   eta loss      L_eta   = (mean_b ESS_b - K * ess_target)^2, ESS_b = 1 / sum_k w_k^2 (Eq. 8)
   decoder loss  L_phi   = -mean_{k,b} log p_phi(x | z_k)                                  (Eq. 7)
   The three touch disjoint parameters, so one backward of their sum gives each its own gradient.

DAPS-NA (original: models/daps.py) is the same objective with the bidirectional encoder, whose tokens are independent
given x.

NOTE(paper): the original code's teacher-forced log q treats code 0 as padding (original: networks/transformer.py); here
that is the ``encoder.mask_token0`` option, off by default, so log q is exactly the probability the codes were
sampled with.

NOTE(paper): ``daps.eta_lr=0`` holds eta at ``daps.init_eta`` (the paper always learns it): an ablation of the ESS
adaptation, not a setting of the paper.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn as nn

import daps.functional as DF
from daps.config import Config, ScheduleConfig, check_positive, check_schedule, schedule
from daps.errors import UserError
from daps.methods.common import (
    Likelihood,
    build_ar_encoder,
    build_decoder,
    build_likelihood,
    build_na_categorical_encoder,
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
from daps.nets import ARTransformerEncoder, Decoder, NACategoricalEncoder
from daps.optim import OptimizerSpec


@dataclass
class DAPSConfig:
    """DAPS estimator settings (paper Sec. 3-4, Alg. 1; original: models/daps.py)."""

    section: ClassVar[str] = "daps"
    """The name of these settings in overrides and config.json."""

    num_samples: int = 8
    """K, codes sampled per input."""
    ess_target: float = 0.33
    """Target effective sample size as a fraction of K (paper Eq. 8)."""
    init_eta: float = 100.0
    """Initial trust-region multiplier eta."""
    eta_lr: float = 1e-3
    """AdamW learning rate of log(eta). 0 holds eta at ``init_eta`` for the whole run (not the paper's: the ablation
    of its ESS adaptation, BENCHMARKS.md); the ESS loss is then logged but trains nothing."""
    baseline: str = "logsumexp"
    """Reward baseline over the K samples: ``logsumexp`` or ``mean`` (weights are the same either way)."""
    beta: ScheduleConfig = field(default_factory=ScheduleConfig)
    """Schedule of beta, the weight of the entropy / KL-to-prior term (paper Eq. 3-5): larger beta, fewer bits."""
    resample: int = 0
    """Resampled weighted maximum likelihood (not in the paper): fit the encoder on ``resample`` = m of the K codes
    per input, drawn with probabilities w (the importance weights), instead of on all K weighted by w. The same
    update in expectation (``daps gradlab``), at m/K of the teacher-forced pass. 0 = off (all K, the paper's)."""
    resample_scheme: str = "systematic"
    """How the m codes are drawn: ``systematic`` (one uniform per input, m evenly spaced points) or
    ``multinomial`` (m independent draws)."""
    one_pass: bool = False
    """Score the K codes while sampling them (not in the paper): log q keeps its gradient from the sampling pass
    (``sample_scored``), so no second, teacher-forced pass runs over the K*B codes. The same codes, losses and
    gradients up to float rounding: a speed option only, faster at short T (``mnist``, T = 8), no faster at
    T = 64 (BENCHMARKS.md, "One encoder pass"). Its backward keeps each sampling step's keys, so the autoregressive
    encoder takes it up to :data:`daps.methods.common.ONE_PASS_MAX_TOKENS` tokens. Not with ``daps.resample``,
    ``encoder.mask_token0``, ``train.compile`` or ``train.cuda_graph``."""

    def unread(self, cfg: Config) -> dict[str, str]:
        """The settings these values leave unread, each with the reason (:func:`daps.config_io.ignored_settings`)."""
        if self.resample:
            return {}
        return {"daps.resample_scheme": "read only with daps.resample >= 1 (here 0: all K codes, none drawn)"}

    def validate(self) -> None:
        check_positive("daps", self, ("num_samples", "init_eta"))
        check_positive("daps", self, ("eta_lr",), strict=False)
        if not 0 <= self.resample <= self.num_samples:
            raise UserError(f"daps.resample must be in [0, num_samples={self.num_samples}], got {self.resample}")
        if self.one_pass and self.resample:
            raise UserError("daps.one_pass scores all K codes in the sampling pass and daps.resample teacher-forces "
                            "m of them: choose one")
        if self.resample_scheme not in ("systematic", "multinomial"):
            raise UserError(f"daps.resample_scheme must be systematic or multinomial, got {self.resample_scheme!r}")
        if not 0.0 < self.ess_target <= 1.0:
            raise UserError(f"daps.ess_target is a fraction of K in (0, 1], got {self.ess_target}")
        if self.baseline not in ("logsumexp", "mean"):
            raise UserError(f"daps.baseline must be logsumexp or mean, got {self.baseline!r}")
        check_schedule("daps.beta", self.beta)


class DAPS(Method):
    """Categorical encoder (autoregressive, or independent tokens for DAPS-NA) trained by policy search;
    decoder by maximum likelihood.

    Args:
        encoder: an :class:`ARTransformerEncoder` or :class:`NACategoricalEncoder` (``sample``, ``log_prob``).
        decoder: maps codes ``(N, T)`` to the likelihood's parameters ``(N, ...)``.
        likelihood: scores x under the decoder's output.
        cfg: estimator settings (K, ESS target, eta, beta schedule).
        num_steps: length of the run, for the beta schedule.
    """

    def __init__(
        self,
        encoder: ARTransformerEncoder | NACategoricalEncoder,
        decoder: Decoder,
        likelihood: Likelihood,
        cfg: DAPSConfig,
        num_steps: int,
    ):
        super().__init__()
        self.encoder, self.decoder, self.likelihood = encoder, decoder, likelihood
        self.cfg, self.num_steps = cfg, num_steps
        # A fixed eta (eta_lr = 0) is a parameter without gradient: no optimizer, and DDP leaves it alone.
        self.log_eta = nn.Parameter(torch.tensor(math.log(cfg.init_eta)), requires_grad=cfg.eta_lr > 0)
        self._objective_fn = self._objective  # compile_step replaces it with a compiled version

    # -- schedules ---------------------------------------------------------------------------------

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
        """Encoder + decoder share one AdamW with adaptive clipping; log eta has its own (original: models/daps.py),
        unless it is held fixed (``eta_lr`` = 0)."""
        vae = [p for name, p in self.named_parameters() if name != "log_eta"]
        specs = [OptimizerSpec("vae", vae, lr=lr, grad_clip=grad_clip)]
        if self.log_eta.requires_grad:
            specs.append(OptimizerSpec("eta", [self.log_eta], lr=self.cfg.eta_lr, grad_clip=0.0))
        return specs

    # -- training ----------------------------------------------------------------------------------

    def compile_step(self, mode: str | None = None) -> None:
        """``train.compile``: sample through the compiled one-token step (``mode``: ``torch.compile``'s), and run
        the differentiable part of the step (teacher-forced pass, decoder, weights, ESS, losses) through
        ``torch.compile``; beta enters as a tensor, so the graph is reused at every step."""
        compile_sampler(self.encoder, mode)
        self._objective_fn = torch.compile(self._objective)

    def _objective(
        self, x: torch.Tensor, indices: torch.Tensor, beta: torch.Tensor, sample_log_q: torch.Tensor,
        uniforms: torch.Tensor | None, conditioning: Any = None,
    ) -> tuple[torch.Tensor, ...]:
        """The three losses for sampled codes ``indices (K, B, T)``; returns the loss and what is logged.

        Without resampling (``uniforms`` None) the encoder's log q of all K codes carries the gradient and its
        detached value enters the weights: from a teacher-forced pass, or with ``one_pass`` the sampling pass's
        ``sample_log_q (K, B)``, which then has its gradient. With resampling, the weights use ``sample_log_q`` (the
        same numbers, no gradient), ``uniforms`` pick m codes per input with probabilities w
        (:func:`daps.functional.resample_indices`) and only those are teacher-forced. ``conditioning``: the encoder's
        ``conditioning(x)`` (with gradients) that the codes were sampled from, for the teacher-forced pass (None: the
        encoder computes it again)."""
        num_samples = indices.shape[0]
        params = self.decoder(indices)  # (K, B, ...): BatchNorm, if any, normalizes each of the K slices alone
        log_p = self.likelihood.log_prob(params, x)  # (K, B)
        rewards = log_p.detach()
        if uniforms is not None:
            log_q_const = sample_log_q
        else:
            if self.cfg.one_pass:
                log_q = sample_log_q  # (K, B), with gradient
            else:
                log_q = self.encoder.log_prob(x, indices, conditioning=conditioning).sum(-1)  # (K, B), with gradient
            log_q_const = log_q.detach()
        eta = self.log_eta.exp()
        # One set of weights: its gradient (only into log_eta) drives the ESS loss; detached, it weights
        # the encoder's maximum likelihood.
        eta_weights = DF.importance_weights(log_q_const, rewards, eta, beta, self.cfg.baseline)  # (K, B)
        weights = eta_weights.detach()
        ess = DF.effective_sample_size(eta_weights)  # (B,)

        if uniforms is None:
            encoder_loss = -(weights * log_q).sum(0).mean()
        else:
            chosen = DF.resample_indices(weights, uniforms, self.cfg.resample_scheme, self.cfg.resample)  # (m, B)
            picked = indices.gather(0, chosen[..., None].expand(-1, -1, indices.shape[-1]))  # (m, B, T)
            log_q = self.encoder.log_prob(x, picked, conditioning=conditioning).sum(-1)  # (m, B), with gradient
            encoder_loss = -log_q.mean(0).mean()  # E over the draws = sum_k w_k log q_k
        eta_loss = DF.eta_loss(ess, num_samples, self.cfg.ess_target)
        decoder_loss = -log_p.mean()
        loss = encoder_loss + eta_loss + decoder_loss
        return loss, params, log_p, log_q_const, ess, eta, eta_loss

    def forward(self, x: torch.Tensor, step: int, generator: torch.Generator | None = None) -> Output:
        """One DAPS objective evaluation on ``x (B, C, H, W)`` at optimizer step ``step``."""
        num_samples = self.cfg.num_samples
        conditioning: Any = None  # the encoder's: memory (autoregressive) or token log-probabilities (DAPS-NA)
        if self.cfg.one_pass:
            samples = self.encoder.sample_scored(x, num_samples, generator)  # log q with its gradient
        else:  # the encoder's conditioning once, with gradients: sampled from here, teacher-forced in the objective
            conditioning = self.encoder.conditioning(x)
            samples = self.encoder.sample(x, num_samples, generator, conditioning=conditioning)  # (K, B, T), no grad
        indices = samples.indices
        beta = self.scheduled("beta", step, x.device)  # a tensor: neither a compiled objective nor a graph is rebuilt
        uniforms = None
        if self.cfg.resample:  # drawn here, from the run's generator (the objective may be compiled)
            m = self.cfg.resample if self.cfg.resample_scheme == "multinomial" else 1
            uniforms = torch.rand((m, x.shape[0]), generator=generator, device=x.device)  # (m or 1, B)
        loss, params, log_p, log_q, ess, eta, eta_loss = self._objective_fn(
            x, indices, beta, samples.log_q, uniforms, conditioning
        )
        with torch.no_grad():
            # KL from the sampling pass's conditionals (the same as teacher-forced unless mask_token0).
            kl = DF.kl_to_uniform(samples.token_entropy, self.encoder.vocab_size)  # (K, B)
            logs = {
                "loss": loss,
                "log_p": log_p.mean(),
                "log_q": log_q.mean(),
                **elbo_logs(log_p, kl, self.final_beta),
                "ess": ess.mean() / num_samples,
                "eta": eta,
                "beta": beta.clone(),
                "eta_loss": eta_loss,
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
        """Encode with one stochastic sample and decode, with the ELBO terms (original: models/daps.py)."""
        check_images(self, x, generator)
        return categorical_reconstruction(self.encoder, self.decoder, self.likelihood, x, generator)


def build_daps(cfg: Config, image_shape: tuple[int, int, int]) -> DAPS:
    """DAPS with the autoregressive transformer encoder."""
    likelihood = build_likelihood(cfg)
    encoder = build_ar_encoder(cfg, image_shape)  # built first: the seeded initialization follows this order
    decoder = build_decoder(cfg, image_shape, likelihood, vocab_size=cfg.encoder.vocab_size)
    return DAPS(encoder, decoder, likelihood, cfg.daps, num_steps=cfg.train.steps)


def build_dapsna(cfg: Config, image_shape: tuple[int, int, int]) -> DAPS:
    """DAPS-NA: DAPS with the bidirectional encoder and independent tokens (original: models/daps.py)."""
    likelihood = build_likelihood(cfg)
    encoder = build_na_categorical_encoder(cfg, image_shape)
    decoder = build_decoder(cfg, image_shape, likelihood, vocab_size=cfg.encoder.vocab_size)
    return DAPS(encoder, decoder, likelihood, cfg.daps, num_steps=cfg.train.steps)


def _presets(independent: bool) -> dict:
    """DAPS's values per preset (the original's configs); ``independent``: DAPS-NA."""

    def mnist(cfg: Config) -> None:
        if independent:
            cfg.daps.ess_target = 0.5

    def mnist5k_demo(cfg: Config) -> None:
        cfg.daps.init_eta = 1.0  # see daps.presets.mnist5k_demo

    def cifar10(cfg: Config) -> None:
        cfg.daps.ess_target, cfg.daps.beta = 0.33, schedule(6.0, 1.0 if independent else 0.01)

    def imagenet256(cfg: Config) -> None:
        cfg.daps.ess_target, cfg.daps.beta = 0.25, schedule(50.0, 1.0)

    def lafan1_h1(cfg: Config) -> None:
        cfg.daps.ess_target, cfg.daps.beta = 0.33, schedule(1.0 if independent else 3.0, 0.01)

    return {
        "mnist": mnist, "mnist5k-demo": mnist5k_demo, "cifar10": cifar10, "imagenet256": imagenet256,
        "lafan1-h1": lafan1_h1,
    }


DAPS_SPEC = MethodSpec(
    name="daps", summary="DAPS: weighted max-likelihood toward the KL-regularized target, autoregressive encoder",
    build=build_daps, config_type=DAPSConfig, encoder="autoregressive", presets=_presets(independent=False),
    progress=("log_p", "kl", "ess", "eta"),
    cuda_graph=True, check_config=one_pass_check(autoregressive=True),
)
DAPSNA_SPEC = MethodSpec(
    name="dapsna", summary="DAPS with independent tokens (bidirectional encoder)",
    build=build_dapsna, config_type=DAPSConfig, encoder="bidirectional", presets=_presets(independent=True),
    progress=("log_p", "kl", "ess", "eta"),
    cuda_graph=True, check_config=one_pass_check(autoregressive=False),
)
