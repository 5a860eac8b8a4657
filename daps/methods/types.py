"""The shared return types of every method."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Output:
    """What ``method(x, step)`` returns for one training step."""

    loss: torch.Tensor  # scalar; its gradient trains every parameter of the method
    x_hat: torch.Tensor  # (B, C, H, W) decoder mean for one sampled code per input, detached
    indices: torch.Tensor  # (B, T) one sampled code per input
    logs: dict[str, torch.Tensor] = field(default_factory=dict)  # detached scalars


@dataclass
class Reconstruction:
    """One stochastic encode -> decode of a batch, with the per-input terms of the ELBO (SPEC 8.1)."""

    indices: torch.Tensor  # (B, T)
    x_hat: torch.Tensor  # (B, C, H, W) decoder mean
    log_p: torch.Tensor  # (B,) log p(x | z) in nats, summed over data dims
    kl: torch.Tensor  # (B,) KL(q(z|x) || uniform prior) in nats (single-sample AR estimate)
    log_q: torch.Tensor  # (B,) log q(z | x) of the sampled code
    token_entropy: torch.Tensor  # (B, T) entropy of q(z_t | z_<t, x)
