"""Straight-through relaxed categorical VAEs: Gumbel-Softmax and Gumbel-Rao (GR-MCK) (original: models/gumbel.py).

Papers: Jang, Gu & Poole, "Categorical Reparameterization with Gumbel-Softmax" (ICLR 2017,
https://arxiv.org/abs/1611.01144); Paulus, Maddison & Krause, "Rao-Blackwellizing the Straight-Through
Gumbel-Softmax Gradient Estimator" (ICLR 2021, https://arxiv.org/abs/2010.04838).

One step, for a batch x of B inputs, with temperature tau and KL weight beta from their schedules:

1. One code per input, z ~ q_theta(z | x), drawn token by token; each token is a straight-through one-hot
   y_t = onehot(z_t) + s_t - sg(s_t) (forward: hard; backward: the gradient of the soft sample s_t):
     gumbel:  s_t = softmax((l_t + g) / tau), g ~ Gumbel(0, 1), z_t = argmax s_t          (Jang et al. Eq. 1)
     rao:     z_t ~ Cat(l_t) by Gumbel-max, s_t = (1/k) sum_k softmax(G_k / tau), G_k ~ (l_t + g | argmax = z_t)
                                                                                   (Paulus et al. Eq. 9)
   The autoregressive encoder feeds y_t back as its next input (y_t @ embedding table), so gradients flow
   through the whole chain; the non-autoregressive encoder samples all tokens at once (original: models/gumbel.py).
2. The decoder reads the one-hots: log p_phi(x | z) = log p(x | decoder(y)).
3. KL(q || U) = sum_t (log V - H(q(. | z_<t, x))) from the sampling pass's log-probabilities (original:
   models/base_vae.py).
4. L = -mean_b [log p_phi(x | z) - beta KL]; one backward trains encoder and decoder together.

NOTE(paper): GR-MCK differentiates the conditional Gumbel noise's dependence on l (the original DAPS code,
original: distributions/categorical.py); ``relaxed.rao_stop_gradient=true`` detaches it as Paulus et al.'s reference
code does.
NOTE(paper): evaluation draws exact categorical samples by inverting the CDF (one uniform per token), not by
Gumbel-max: the same distribution, a different random stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, ClassVar

import torch

import daps.functional as DF
from daps.config import Config, ScheduleConfig, check_positive, check_schedule, schedule
from daps.errors import UserError
from daps.methods.common import (
    ONE_CODE_PER_INPUT,
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
    sample_code,
    schedule_final,
    schedule_value,
    training_output,
)
from daps.methods.spec import EncoderFamily, MethodSpec
from daps.methods.types import Method, Output, Reconstruction
from daps.nets import ARTransformerEncoder, Decoder, NACategoricalEncoder
from daps.optim import OptimizerSpec

ESTIMATORS = ("gumbel", "rao")


@dataclass
class RelaxedConfig:
    """Gumbel-Softmax and Gumbel-Rao (GR-MCK) straight-through estimators (original: models/gumbel.py)."""

    section: ClassVar[str] = "relaxed"
    """The name of these settings in overrides and config.json."""

    beta: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(kind="exp_decay", init=0.5, end=0.01))
    """Schedule of beta, the weight of KL(q || uniform) in the loss -(log p - beta KL)."""
    temperature: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(kind="constant", init=1.0, end=1.0))
    """Schedule of tau, the softmax temperature of the relaxed sample."""
    num_rao_samples: int = 100
    """GR-MCK: k, conditional Gumbel draws averaged per token (Paulus et al. 2021)."""
    rao_stop_gradient: bool = False
    """GR-MCK: stop the gradient through the conditional Gumbel noise (as in Paulus et al.'s reference code).
    Off by default, which is the original DAPS code's gradient path (distributions/categorical.py)."""

    def validate(self) -> None:
        check_positive("relaxed", self, ("num_rao_samples",))
        check_schedule("relaxed.beta", self.beta)
        check_schedule("relaxed.temperature", self.temperature)
        if not min(self.temperature.init, self.temperature.end) > 0:
            raise UserError("relaxed.temperature must stay positive")


class GumbelSoftmax(Method):
    """Categorical VAE trained through straight-through relaxed samples (one per input).

    Args:
        encoder: an :class:`ARTransformerEncoder` or :class:`NACategoricalEncoder` (``sample_relaxed``, ``sample``).
        decoder: maps integer codes ``(N, T)`` or one-hots ``(N, T, V)`` to the likelihood's parameters.
        likelihood: scores x under the decoder's output.
        cfg: schedules of beta and tau, k and the stop-gradient switch of GR-MCK.
        num_steps: length of the run, for the schedules.
        estimator: ``"gumbel"`` (straight-through Gumbel-Softmax) or ``"rao"`` (GR-MCK).
    """

    def __init__(
        self,
        encoder: ARTransformerEncoder | NACategoricalEncoder,
        decoder: Decoder,
        likelihood: Likelihood,
        cfg: RelaxedConfig,
        num_steps: int,
        estimator: str = "gumbel",
    ):
        super().__init__()
        if estimator not in ESTIMATORS:
            raise UserError(f"unknown estimator {estimator!r}; choose one of: {', '.join(ESTIMATORS)}")
        self.encoder, self.decoder, self.likelihood = encoder, decoder, likelihood
        self.cfg, self.num_steps, self.estimator = cfg, num_steps, estimator

    # -- schedules ---------------------------------------------------------------------------------

    def beta(self, step: int) -> float:
        return schedule_value(self.cfg.beta, step, self.num_steps)

    def temperature(self, step: int) -> float:
        return schedule_value(self.cfg.temperature, step, self.num_steps)

    def schedules(self, step: int) -> dict[str, float]:
        return {"beta": self.beta(step), "temperature": self.temperature(step)}

    @property
    def vocab_size(self) -> int:
        return self.encoder.vocab_size

    @property
    def final_beta(self) -> float:
        return schedule_final(self.cfg.beta)

    def optimizer_specs(self, lr: float, grad_clip: float) -> list[OptimizerSpec]:
        """Encoder and decoder share one AdamW with adaptive clipping (original: configs/model_dataset/)."""
        return [OptimizerSpec("vae", list(self.parameters()), lr=lr, grad_clip=grad_clip)]

    def compile_step(self, mode: str | None = None) -> None:
        """``train.compile``: sample through the compiled one-token step (``mode``: ``torch.compile``'s)."""
        compile_sampler(self.encoder, mode)

    # -- training ----------------------------------------------------------------------------------

    def relaxation(
        self, temperature: float | torch.Tensor, generator: torch.Generator | None
    ) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """The per-token sampler ``log_probs (..., V) -> index (...), straight-through one-hot (..., V)``."""
        if self.estimator == "gumbel":
            return lambda log_probs: DF.gumbel_softmax_st(log_probs, temperature, generator)
        k, stop_gradient = self.cfg.num_rao_samples, self.cfg.rao_stop_gradient
        return lambda log_probs: DF.gumbel_rao_st(log_probs, temperature, k, generator, stop_gradient)

    def forward(self, x: torch.Tensor, step: int, generator: torch.Generator | None = None) -> Output:
        """One relaxed-ELBO evaluation on ``x (B, C, H, W)`` at optimizer step ``step``."""
        # (), read from the device (daps.graphed)
        beta, temperature = self.scheduled("beta", step, x.device), self.scheduled("temperature", step, x.device)
        relax = self.relaxation(temperature, generator)
        # indices (B, T); onehots and log_probs (B, T, V), all differentiable through the sampling chain.
        indices, onehots, log_probs = self.encoder.sample_relaxed(x, relax)
        params = self.decoder(onehots)  # (B, C, H, W)
        log_p = self.likelihood.log_prob(params, x)  # (B,)
        kl = DF.kl_to_uniform(DF.categorical_entropy(log_probs), self.vocab_size)  # (B,), with gradient
        loss = -(log_p - beta * kl).mean()
        with torch.no_grad():
            logs = {
                "loss": loss,
                "log_p": log_p.mean(),
                **elbo_logs(log_p, kl, self.final_beta),
                "beta": beta.clone(),
                "temperature": temperature.clone(),
            }
        return training_output(loss, self.likelihood.mean(params), indices, logs)

    # -- inference ---------------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One exact categorical code per input: ``(B, C, H, W) -> (B, T)``."""
        check_images(self, x, generator)
        return sample_code(self.encoder, x, generator)

    @torch.no_grad()
    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Decoder mean: ``(B, T) -> (B, C, H, W)``."""
        indices = check_codes(self, indices)
        return decode_code(self.decoder, self.likelihood, indices)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, generator: torch.Generator | None = None) -> Reconstruction:
        """Encode with one exact categorical sample (no relaxation) and decode, with the ELBO terms."""
        check_images(self, x, generator)
        return categorical_reconstruction(self.encoder, self.decoder, self.likelihood, x, generator)


def _build(cfg: Config, image_shape: tuple[int, int, int], autoregressive: bool, estimator: str) -> GumbelSoftmax:
    likelihood = build_likelihood(cfg)
    # The encoder is built first: the seeded initialization follows this order.
    encoder: ARTransformerEncoder | NACategoricalEncoder
    if autoregressive:
        encoder = build_ar_encoder(cfg, image_shape)
    else:
        encoder = build_na_categorical_encoder(cfg, image_shape)
    decoder = build_decoder(cfg, image_shape, likelihood, vocab_size=cfg.encoder.vocab_size)
    return GumbelSoftmax(encoder, decoder, likelihood, cfg.relaxed, num_steps=cfg.train.steps, estimator=estimator)


def build_gumbel(cfg: Config, image_shape: tuple[int, int, int]) -> GumbelSoftmax:
    """Straight-through Gumbel-Softmax with the autoregressive encoder (original: models/gumbel.py)."""
    return _build(cfg, image_shape, autoregressive=True, estimator="gumbel")


def build_gumbelna(cfg: Config, image_shape: tuple[int, int, int]) -> GumbelSoftmax:
    """Straight-through Gumbel-Softmax with the bidirectional encoder, tokens independent given x (original:
    models/gumbel.py)."""
    return _build(cfg, image_shape, autoregressive=False, estimator="gumbel")


def build_grmck(cfg: Config, image_shape: tuple[int, int, int]) -> GumbelSoftmax:
    """GR-MCK (Gumbel-Rao) with the autoregressive encoder (original: models/gumbel.py)."""
    return _build(cfg, image_shape, autoregressive=True, estimator="rao")


def build_grmckna(cfg: Config, image_shape: tuple[int, int, int]) -> GumbelSoftmax:
    """GR-MCK (Gumbel-Rao) with the bidirectional encoder (original: models/gumbel.py)."""
    return _build(cfg, image_shape, autoregressive=False, estimator="rao")


# beta, temperature, and (learning rate, learning-rate schedule, GR-MCK k) or None for the preset's, per preset
# (the original's configs).
# NOTE(paper): on MNIST several are the original's active "beta = 1" variants.
_RELAXED: dict[str, dict[str, tuple[ScheduleConfig, ScheduleConfig, tuple[float, str, int] | None]]] = {
    "mnist": {
        "gumbel": (schedule(0.5, 0.01), schedule(1.0), None),
        "gumbelna": (schedule(1.0), schedule(1.0, 0.1), None),
        "grmck": (schedule(1.0), schedule(1.0, 0.75), None),
        "grmckna": (schedule(1.0), schedule(1.0, 0.75), None),
    },
    "cifar10": {
        "gumbel": (schedule(6.0, 0.01), schedule(1.0), (1e-4, "cosine", 100)),
        "gumbelna": (schedule(6.0, 0.01), schedule(1.0, 0.1), (3e-4, "constant", 100)),
        "grmck": (schedule(3.0, 0.01), schedule(1.0, 0.75), (3e-4, "constant", 100)),
        "grmckna": (schedule(3.0, 0.01), schedule(1.0, 0.1), (3e-4, "constant", 100)),
    },
    "imagenet256": {  # NOTE(paper): GR-MCK's original runs B=32 with 2 accumulated gradients; here one step on B=64
        "gumbel": (schedule(50.0, 1.0), schedule(1.0, 0.75), (1e-4, "constant", 100)),
        "gumbelna": (schedule(50.0, 1.0), schedule(1.0, 0.1), (3e-4, "constant", 100)),
        "grmck": (schedule(10.0, 1.0), schedule(1.0, 0.75), (1e-4, "constant", 10)),
        "grmckna": (schedule(10.0, 1.0), schedule(1.0, 0.1), (3e-4, "constant", 10)),
    },
    "lafan1-h1": {  # NOTE(paper): the original's grmckna-lafan leaves the temperature's end to the command line; 0.1
        "gumbel": (schedule(2.0, 0.01), schedule(1.0), (1e-4, "cosine", 10)),
        "gumbelna": (schedule(3.0, 0.01), schedule(1.0, 0.75), (3e-4, "constant", 10)),
        "grmck": (schedule(2.0, 0.01), schedule(1.0), (1e-4, "cosine", 10)),
        "grmckna": (schedule(1.0, 0.01), schedule(1.0, 0.1), (3e-4, "constant", 10)),
    },
}


def _presets(method: str) -> dict:
    def adjust(preset: str):
        def apply(cfg: Config) -> None:
            beta, temperature, optim = _RELAXED[preset][method]
            cfg.relaxed.beta, cfg.relaxed.temperature = replace(beta), replace(temperature)  # copies: cfg owns them
            if optim is not None:
                cfg.optim.lr, cfg.optim.lr_schedule, cfg.relaxed.num_rao_samples = optim

        return apply

    return {preset: adjust(preset) for preset in _RELAXED}


_RAO_ONLY = {f"relaxed.{key}": "a setting of the Gumbel-Rao estimators, grmck and grmckna"
             for key in ("num_rao_samples", "rao_stop_gradient")}
"""``MethodSpec.ignores`` of the plain Gumbel-Softmax estimators, which share the ``relaxed`` settings."""


def _spec(name: str, summary: str, build, encoder: EncoderFamily) -> MethodSpec:
    return MethodSpec(
        name=name, summary=summary, build=build, config_type=RelaxedConfig, encoder=encoder,
        presets=_presets(name), progress=("log_p", "kl", "temperature"),
        cuda_graph=True,
        # the relaxed chain feeds each step its own one-hot, and evaluation samples: nothing is teacher-forced,
        # and no input has more than one code
        ignores={**({"encoder.mask_token0": "its relaxed sampling chain teacher-forces nothing", **ONE_CODE_PER_INPUT}
                    if encoder == "autoregressive" else {}),
                 **({} if name.startswith("grmck") else _RAO_ONLY)},
    )


GUMBEL_SPEC = _spec("gumbel", "Gumbel-Softmax straight-through, autoregressive encoder", build_gumbel, "autoregressive")
GUMBELNA_SPEC = _spec(
    "gumbelna", "Gumbel-Softmax straight-through, bidirectional encoder", build_gumbelna, "bidirectional"
)
GRMCK_SPEC = _spec("grmck", "Gumbel-Rao (GR-MCK), autoregressive encoder", build_grmck, "autoregressive")
GRMCKNA_SPEC = _spec("grmckna", "Gumbel-Rao (GR-MCK), bidirectional encoder", build_grmckna, "bidirectional")
