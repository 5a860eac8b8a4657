"""PPO-style autoencoding baseline: Schulman et al. 2017, "Proximal Policy Optimization Algorithms"
(https://arxiv.org/abs/1707.06347), clipped surrogate (Eq. 7) plus the adaptive KL penalty (Sec. 4),
with the encoder q_theta(z | x) as the policy and log p_phi(x | z) as the reward (original: models/ppo.py).

One step, for a batch x of B inputs, with theta_old the encoder parameters of the previous step:

1. Sample one code per input from the *old* encoder, z ~ q_theta_old(z | x) (no gradient).
2. Teacher-forced per-token log-probabilities of z under theta and theta_old; R = sg(log p_phi(x | z)),
   a learned baseline b(x), advantage A = R - sg(b(x)), ratio r = q_theta(z|x) / q_theta_old(z|x).
3. Policy loss     mean_b [ -min(r A, clip(r, 1 - eps, 1 + eps) A) + c KL(q_old || q_theta) + beta KL(q_theta || U) ]
   value loss      mean_b ((R - b(x)) / D_x)^2
   decoder loss    -mean_b log p_phi(x | z)
   KLs are analytic per-token sums on the teacher-forced distributions; the three losses touch disjoint
   parameters, so one backward of their sum trains all three.
4. Afterwards theta_old <- theta (the parameters this loss was evaluated at, i.e. before the optimizer
   step) and c <- c / gain or c * gain when the batch-mean KL(old || new) leaves [target / scale, target * scale].

Step 4 happens inside ``forward`` (after everything that reads theta_old), so the training loop needs no
hook: theta_old lives in ``old_encoder``, a copy of the encoder whose parameters are persistent buffers
(saved in checkpoints, not trained), and c in the ``kl_coeff`` buffer. Both change only in training mode.

NOTE(paper): beta-ELBO with a constant beta schedule uses beta_final = that constant; the original raises
(NotImplementedError) and so PPO on CIFAR / ImageNet crashes as shipped (original: models/ppo.py).
NOTE(paper): the original's teacher-forced log q treats code 0 as padding (original: networks/transformer.py); that is
the ``encoder.mask_token0`` option here, off by default.
NOTE(paper): under torchrun each rank adapts c from its own batch's KL; DDP's buffer broadcast then makes
rank 0's value (and theta_old) everyone's at the next step.
NOTE(paper): the per-token KLs are differentiated analytically along the sampled path, as the original does: for
an autoregressive q that leaves out the score-function term of later tokens' KL (their conditioning on earlier
sampled tokens), a bias when beta > 0 (``daps gradlab`` measures it, docs/gradlab/).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import ClassVar, TypeVar

import torch
import torch.nn as nn

import daps.functional as DF
from daps.config import Config, ScheduleConfig, check_positive, check_schedule, schedule
from daps.errors import UserError
from daps.methods.common import (
    ONE_CODE_PER_INPUT,
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
    sample_code,
    schedule_final,
    schedule_value,
    training_output,
)
from daps.methods.spec import MethodSpec
from daps.methods.types import Method, Output, Reconstruction
from daps.nets import ARTransformerEncoder, Decoder
from daps.nets.feedforward import PatchValueNet
from daps.nets.resnet import ResNetValueNet
from daps.optim import OptimizerSpec


@dataclass
class PPOConfig:
    """PPO-style policy-gradient autoencoder (original: models/ppo.py)."""

    section: ClassVar[str] = "ppo"
    """The name of these settings in overrides and config.json."""

    beta: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(kind="exp_decay", init=1.0, end=0.01))
    """Schedule of beta, the weight of KL(q || uniform)."""
    clip: float = 0.2
    """epsilon of the clipped probability ratio."""
    init_kl_coeff: float = 10.0
    """Initial weight of KL(q_old || q_new)."""
    kl_target: float = 0.05
    """The adaptive KL weight is halved below target / scale and doubled above target * scale."""
    kl_scale: float = 1.5
    """Tolerance band of the KL target (a factor)."""
    kl_gain: float = 2.0
    """Factor by which the KL weight changes."""
    min_kl_coeff: float = 1e-3
    """Lower bound of the KL weight."""
    max_kl_coeff: float = 1e3
    """Upper bound of the KL weight."""
    value_lr: float = 1e-4
    """AdamW learning rate of the value baseline b(x)."""
    value_grad_clip: float = 1.0
    """Global-norm gradient clipping of the value baseline (not adaptive, as the original's models/ppo.py)."""

    def validate(self) -> None:
        check_positive("ppo", self, ("clip", "init_kl_coeff", "kl_target", "min_kl_coeff", "value_lr"))
        check_positive("ppo", self, ("value_grad_clip",), strict=False)
        check_schedule("ppo.beta", self.beta)
        if not (self.kl_scale >= 1.0 and self.kl_gain >= 1.0 and self.max_kl_coeff >= self.min_kl_coeff):
            raise UserError("ppo.kl_scale and ppo.kl_gain must be >= 1 and ppo.max_kl_coeff >= ppo.min_kl_coeff")
        if not self.clip < 1.0:
            raise UserError(f"ppo.clip must be in (0, 1) (the ratio is clipped to 1 +- clip), got {self.clip}")


ModuleT = TypeVar("ModuleT", bound=nn.Module)


def frozen_copy(module: ModuleT) -> ModuleT:
    """A deep copy of ``module`` whose parameters are plain persistent buffers (own storage, no gradient)."""
    clone = copy.deepcopy(module)
    for sub in clone.modules():
        for name, p in list(sub.named_parameters(recurse=False)):
            delattr(sub, name)
            sub.register_buffer(name, p.detach().clone())
    return clone.requires_grad_(False)


class PPO(Method):
    """Autoregressive categorical encoder trained with PPO's clipped surrogate; decoder by maximum likelihood.

    Args:
        encoder: an :class:`ARTransformerEncoder` (``sample``, ``log_probs``).
        decoder: maps codes ``(N, T)`` to the likelihood's parameters ``(N, ...)``.
        likelihood: scores x under the decoder's output.
        value: the baseline ``b(x)``: ``(B, C, H, W) -> (B,)`` in nats, with ``scale`` = D_x.
        cfg: clip, KL-penalty adaptation, beta schedule, value optimizer.
        num_steps: length of the run, for the beta schedule.
    """

    kl_coeff: torch.Tensor  # a buffer: the adaptive KL weight

    def __init__(
        self,
        encoder: ARTransformerEncoder,
        decoder: Decoder,
        likelihood: Likelihood,
        value: PatchValueNet | ResNetValueNet,
        cfg: PPOConfig,
        num_steps: int,
    ):
        super().__init__()
        self.encoder, self.decoder, self.likelihood, self.value = encoder, decoder, likelihood, value
        self.cfg, self.num_steps = cfg, num_steps
        self.old_encoder = frozen_copy(encoder)  # theta_old, starts equal to theta
        self.register_buffer("kl_coeff", torch.tensor(float(cfg.init_kl_coeff)))

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
        """Encoder + decoder: AdamW with adaptive clipping; value net: AdamW at ``value_lr`` with global-norm
        clipping (original: models/ppo.py)."""
        vae = [*self.encoder.parameters(), *self.decoder.parameters()]
        return [
            OptimizerSpec("vae", vae, lr=lr, grad_clip=grad_clip),
            OptimizerSpec(
                "value", list(self.value.parameters()), lr=self.cfg.value_lr, grad_clip=self.cfg.value_grad_clip,
                clip="global_norm",
            ),
        ]

    @torch.no_grad()
    def sync_old_encoder(self) -> None:
        """theta_old <- theta."""
        for name, p in self.encoder.named_parameters():
            self.old_encoder.get_buffer(name).copy_(p)

    def compile_step(self, mode: str | None = None) -> None:
        """``train.compile``: sample through the compiled one-token step (``mode``: ``torch.compile``'s), both the
        frozen theta_old's, which draws the training codes, and theta's, which draws validation's. theta_old's
        weights are buffers that :meth:`sync_old_encoder` overwrites in place, so their addresses stay fixed."""
        compile_sampler(self.old_encoder, mode)
        compile_sampler(self.encoder, mode)

    # -- training ----------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, step: int, generator: torch.Generator | None = None) -> Output:
        """One PPO objective evaluation on ``x (B, C, H, W)`` at optimizer step ``step``; in training mode
        it then sets theta_old <- theta and adapts the KL weight for the next step."""
        beta, clip = self.scheduled("beta", step, x.device), self.cfg.clip  # beta: (), on the device (daps.graphed)
        kl_coeff = self.kl_coeff.clone()  # the weight of this step (the buffer is updated below)
        with torch.no_grad():  # theta_old's conditioning once, for sampling and scoring
            old_conditioning = self.old_encoder.conditioning(x)
            indices = self.old_encoder.sample(x, 1, generator, conditioning=old_conditioning).indices  # (1, B, T)
            old_log_probs = self.old_encoder.log_probs(x, indices, conditioning=old_conditioning)[0]  # (B, T, V)
        log_probs = self.encoder.log_probs(x, indices)[0]  # (B, T, V), with gradient
        codes = indices[0]  # (B, T)
        log_q = log_probs.gather(-1, codes[..., None]).squeeze(-1).sum(-1)  # (B,)
        old_log_q = old_log_probs.gather(-1, codes[..., None]).squeeze(-1).sum(-1)  # (B,)

        params = self.decoder(codes)  # (B, ...)
        log_p = self.likelihood.log_prob(params, x)  # (B,)
        rewards = log_p.detach()
        baseline = self.value(x)  # (B,)
        value_loss = ((rewards - baseline) / self.value.scale).square().mean()
        advantages = rewards - baseline.detach()  # (B,)

        log_ratio = log_q - old_log_q  # (B,)
        kl_old_new = DF.categorical_kl(old_log_probs, log_probs).sum(-1)  # (B,)
        kl = DF.kl_to_uniform(DF.categorical_entropy(log_probs), self.encoder.vocab_size)  # (B,)
        policy_loss = (DF.ppo_clipped_loss(log_ratio, advantages, clip) + kl_coeff * kl_old_new + beta * kl).mean()
        decoder_loss = -log_p.mean()
        loss = policy_loss + value_loss + decoder_loss

        if self.training:
            self.sync_old_encoder()  # old = the parameters this loss is evaluated at
            c = self.cfg
            self.kl_coeff.copy_(DF.adaptive_kl_coefficient(
                kl_coeff, kl_old_new.detach().mean(), c.kl_target, c.kl_scale, c.kl_gain, c.min_kl_coeff,
                c.max_kl_coeff,
            ))
        with torch.no_grad():
            ratio = log_ratio.exp()
            logs = {
                "loss": loss,
                "log_p": log_p.mean(),
                "log_q": log_q.mean(),
                **elbo_logs(log_p, kl, self.final_beta),
                "beta": beta.clone(),
                "kl_old_new": kl_old_new.mean(),
                "kl_coeff": kl_coeff,
                "ratio": ratio.mean(),
                "clip_frac": ((ratio - 1.0).abs() > clip).float().mean(),
                "value_loss": value_loss,
            }
        return training_output(loss, self.likelihood.mean(params), codes, logs)

    # -- inference (the current parameters) -----------------------------------------------------------

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


def build_ppo(cfg: Config, image_shape: tuple[int, int, int]) -> PPO:
    """PPO with the autoregressive transformer encoder, the configured decoder and the original's value net
    (baseline_models/):
    patches -> Dense with the MLP decoder (MNIST), a ResNet encoder with the ResNet decoder (natural images)."""
    likelihood = build_likelihood(cfg)
    encoder = build_ar_encoder(cfg, image_shape)  # built first: the seeded initialization follows this order
    decoder = build_decoder(cfg, image_shape, likelihood, vocab_size=cfg.encoder.vocab_size)
    # NOTE(paper): the original's value nets (16 patches or a 4x4 grid, width 64); no config keys for them.
    value: ResNetValueNet | PatchValueNet
    if cfg.decoder.kind == "resnet":
        value = ResNetValueNet(image_shape, grid=4, width=64)
    else:
        value = PatchValueNet(image_shape, num_patches=16, width=64)
    return PPO(encoder, decoder, likelihood, value, cfg.ppo, num_steps=cfg.train.steps)


def _motion(cfg: Config) -> None:
    # NOTE(paper): the original's PPO-LAFAN config does not run (no value network, T=32 tokens); here the MNIST-style
    # patch value network on the window and DAPS's LAFAN beta schedule, with the preset's learning rate (3e-4) and
    # the default min_kl_coeff (1e-3), not the original PPO family's 1e-4 and 1/16.
    cfg.ppo.kl_target, cfg.ppo.beta = 0.025, schedule(3.0, 0.01)


def _natural_images(cfg: Config) -> None:
    cfg.ppo.kl_target, cfg.ppo.beta = 0.025, schedule(0.01)
    cfg.optim.lr = 1e-4


PPO_SPEC = MethodSpec(
    name="ppo", summary="PPO-style policy gradient with a value baseline", build=build_ppo, config_type=PPOConfig,
    encoder="autoregressive",
    presets={"cifar10": _natural_images, "imagenet256": _natural_images, "lafan1-h1": _motion},
    progress=("log_p", "kl"),
    cuda_graph=True,
    ignores=dict(ONE_CODE_PER_INPUT),
)
