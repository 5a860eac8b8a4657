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

NOTE(paper): the original code's teacher-forced log q treats code 0 as padding (SPEC 5.3); here that is the
``encoder.mask_token0`` option, off by default, so log q is exactly the probability the codes were sampled with.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

import daps.functional as DF
from daps.config import Config, DAPSConfig
from daps.likelihoods import bernoulli_log_prob, bernoulli_mean
from daps.methods.types import Output, Reconstruction
from daps.nets import ARTransformerEncoder, MLPDecoder
from daps.optim import OptimizerSpec


class DAPS(nn.Module):
    """Autoregressive categorical encoder trained by policy search; decoder by maximum likelihood.

    Args:
        encoder: an :class:`ARTransformerEncoder` (``sample`` and ``log_prob``).
        decoder: maps codes ``(N, T)`` to Bernoulli logits ``(N, C, H, W)``.
        cfg: estimator settings (K, ESS target, eta, beta schedule).
        num_steps: length of the run, for the beta schedule.
    """

    def __init__(self, encoder: ARTransformerEncoder, decoder: nn.Module, cfg: DAPSConfig, num_steps: int):
        super().__init__()
        self.encoder, self.decoder, self.cfg, self.num_steps = encoder, decoder, cfg, num_steps
        self.log_eta = nn.Parameter(torch.tensor(math.log(cfg.init_eta)))

    # -- schedules ---------------------------------------------------------------------------------

    def beta(self, step: int) -> float:
        b = self.cfg.beta
        return DF.schedule_value(b.kind, step, b.init, b.end, self.num_steps, b.end_pct)

    @property
    def vocab_size(self) -> int:
        return self.encoder.vocab_size

    @property
    def final_beta(self) -> float:
        return DF.schedule_final_value(self.cfg.beta.kind, self.cfg.beta.init, self.cfg.beta.end)

    def optimizer_specs(self, lr: float, grad_clip: float) -> list[OptimizerSpec]:
        """Encoder + decoder share one AdamW with adaptive clipping; log eta has its own (SPEC 1.3, 1.8)."""
        vae = [p for name, p in self.named_parameters() if name != "log_eta"]
        return [
            OptimizerSpec("vae", vae, lr=lr, grad_clip=grad_clip),
            OptimizerSpec("eta", [self.log_eta], lr=self.cfg.eta_lr, grad_clip=0.0),
        ]

    # -- training ----------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, step: int, generator: torch.Generator | None = None) -> Output:
        """One DAPS objective evaluation on ``x (B, C, H, W)`` at optimizer step ``step``."""
        num_samples = self.cfg.num_samples
        beta = self.beta(step)
        samples = self.encoder.sample(x, num_samples, generator)  # indices (K, B, T), no grad
        indices = samples.indices
        log_q = self.encoder.log_prob(x, indices).sum(-1)  # (K, B), with gradient

        logits = self.decoder(indices.flatten(0, 1))  # (K*B, C, H, W)
        log_p = bernoulli_log_prob(logits.view(num_samples, *x.shape), x)  # (K, B)

        rewards, log_q_const = log_p.detach(), log_q.detach()
        eta = self.log_eta.exp()
        # One set of weights: its gradient (only into log_eta) drives the ESS loss; detached, it weights
        # the encoder's maximum likelihood.
        eta_weights = DF.importance_weights(log_q_const, rewards, eta, beta, self.cfg.baseline)  # (K, B)
        weights = eta_weights.detach()
        ess = DF.effective_sample_size(eta_weights)  # (B,)

        encoder_loss = -(weights * log_q).sum(0).mean()
        eta_loss = DF.eta_loss(ess, num_samples, self.cfg.ess_target)
        decoder_loss = -log_p.mean()
        loss = encoder_loss + eta_loss + decoder_loss
        with torch.no_grad():
            # KL from the sampling pass's conditionals (the same as teacher-forced unless mask_token0).
            kl = DF.kl_to_uniform(samples.token_entropy, self.encoder.vocab_size)  # (K, B)
            logs = {
                "loss": loss,
                "log_p": log_p.mean(),
                "log_q": log_q.mean(),
                "kl": kl.mean(),
                "elbo": (log_p - kl).mean(),
                "beta_elbo": (log_p - self.final_beta * kl).mean(),
                "ess": ess.mean() / num_samples,
                "eta": eta,
                "beta": torch.tensor(beta),
                "eta_loss": eta_loss,
            }
        return Output(
            loss=loss,
            x_hat=bernoulli_mean(logits[: x.shape[0]]).detach(),
            indices=indices[0],
            logs={k: v.detach() for k, v in logs.items()},
        )

    # -- inference ---------------------------------------------------------------------------------

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One stochastic code per input: ``(B, C, H, W) -> (B, T)``."""
        return self.encoder.sample(x, 1, generator).indices[0]

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Decoder mean (pixel probabilities): ``(B, T) -> (B, C, H, W)``."""
        return bernoulli_mean(self.decoder(indices))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, generator: torch.Generator | None = None) -> Reconstruction:
        """Encode with one stochastic sample and decode, with the ELBO terms (SPEC 1.11, 8.1)."""
        samples = self.encoder.sample(x, 1, generator)
        indices = samples.indices[0]  # (B, T)
        logits = self.decoder(indices)
        return Reconstruction(
            indices=indices,
            x_hat=bernoulli_mean(logits),
            log_p=bernoulli_log_prob(logits, x),
            kl=DF.kl_to_uniform(samples.token_entropy[0], self.encoder.vocab_size),
            log_q=samples.log_q[0],
            token_entropy=samples.token_entropy[0],
        )


def build_daps(cfg: Config, image_shape: tuple[int, int, int]) -> DAPS:
    """DAPS with the autoregressive transformer encoder and the MLP decoder of ``cfg``."""
    e, d = cfg.encoder, cfg.decoder
    encoder = ARTransformerEncoder(
        image_shape,
        num_tokens=e.num_tokens,
        vocab_size=e.vocab_size,
        width=e.width,
        num_layers=e.num_layers,
        num_heads=e.num_heads,
        mlp_ratio=e.mlp_ratio,
        mask_token0=e.mask_token0,
    )
    decoder = MLPDecoder(e.num_tokens, e.vocab_size, d.embed_dim, d.hidden, image_shape)
    return DAPS(encoder, decoder, cfg.daps, num_steps=cfg.train.steps)
