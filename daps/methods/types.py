"""The shared return types of every method."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Output:
    """What ``method(x, step)`` returns for one training step."""

    loss: torch.Tensor  # scalar; its gradient trains every parameter of the method
    x_hat: torch.Tensor  # (B, C, H, W) decoder mean for one sampled code per input, detached
    indices: torch.Tensor | None  # (B, T) one sampled code per input; None for a continuous latent
    logs: dict[str, torch.Tensor] = field(default_factory=dict)  # detached scalars; always "log_p"


@dataclass
class Reconstruction:
    """One encode -> decode of a batch, with the per-input terms of the ELBO (paper Eq. 1).

    Deterministic quantizers (FSQ, VQ-VAE) have no q and leave ``kl``, ``log_q`` and ``token_entropy`` as
    None; the Gaussian VAE has no discrete code and leaves ``indices`` as None.
    """

    indices: torch.Tensor | None  # (B, T) codes (FSQ: mixed-radix indices into the implicit codebook)
    x_hat: torch.Tensor  # (B, C, H, W) decoder mean
    log_p: torch.Tensor  # (B,) log p(x | z) in nats, summed over data dims
    # (B,) KL(q(z|x) || prior) in nats (AR: single-sample estimate; NA and Gaussian: exact)
    kl: torch.Tensor | None = None
    log_q: torch.Tensor | None = None  # (B,) log q(z | x) of the sampled code
    token_entropy: torch.Tensor | None = None  # (B, T) entropy of q(z_t | z_<t, x)
