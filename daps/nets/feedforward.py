"""Small feed-forward networks of two MNIST baselines: the PPO value baseline b(x) (original: models/ppo.py) and the
Gaussian VAE's MLP encoder (original: models/vae.py). Dense layers use the original's LeCun-normal kernels and zero
biases."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from daps.functional import FLOAT32_EPS
from daps.nets.layers import dense
from daps.nets.patches import patch_shape, patchify

LOG_VAR_MIN = math.log(FLOAT32_EPS)  # the Gaussian encoder's variance never drops below float32 eps


class PatchValueNet(nn.Module):
    """The value baseline ``b(x)``: image -> ``num_patches`` flattened patches -> ``Dense(width)`` per patch ->
    concatenated -> ``Dense(1)`` -> times ``D_x`` (the number of data dims), in nats of ``log p(x|z)``.

    MNIST (16 patches of 8x8 after padding 28 -> 32, width 64): 5,185 parameters, as the original's.

    NOTE(paper): there is no activation between the two layers, so ``b`` is affine in x; that is the
    original's ``VisionFeedForwardBaselineModel``, kept as is.
    """

    def __init__(self, image_shape: tuple[int, int, int], num_patches: int = 16, width: int = 64):
        super().__init__()
        self.num_patches = num_patches
        self.scale = float(math.prod(image_shape))  # D_x: the net predicts log p per data dimension
        ph, pw = patch_shape(image_shape, num_patches)
        self.patch_embed = dense(ph * pw * image_shape[0], width, init="lecun")
        self.head = dense(num_patches * width, 1, init="lecun")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B,)``."""
        h = self.patch_embed(patchify(x, self.num_patches))  # (B, P, width)
        return self.head(h.flatten(1)).squeeze(-1) * self.scale  # (B,)


class GaussianMLPEncoder(nn.Module):
    """q(z | x) = N(mean(x), diag exp(log_var(x))): flatten -> ``Dense(hidden)`` -> BatchNorm -> ReLU ->
    Dropout -> two ``Dense(latent_dim)`` heads; log-variance clipped below at ``log(float32 eps)`` (original:
    models/vae.py).

    BatchNorm as in Flax (momentum 0.99 = PyTorch ``momentum=0.01``, eps 1e-5). Dropout draws its mask
    from the ``generator`` passed to :meth:`forward`, not torch's global RNG, so runs resume exactly.

    NOTE(paper): PyTorch's running variance uses the unbiased batch variance (Flax: biased), a factor
    B / (B - 1) in the running statistic only (0.4 % at B = 256).
    """

    def __init__(self, in_features: int, hidden: int, latent_dim: int, dropout: float):
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.dropout = dropout
        self.hidden = dense(in_features, hidden, init="lecun")
        self.norm = nn.BatchNorm1d(hidden, eps=1e-5, momentum=0.01)
        self.mean = dense(hidden, latent_dim, init="lecun")
        self.log_var = dense(hidden, latent_dim, init="lecun")

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x (B, C, H, W)`` -> ``mean, log_var``, each ``(B, latent_dim)``."""
        h = torch.relu(self.norm(self.hidden(x.flatten(1))))  # (B, hidden)
        if self.training and self.dropout > 0:
            keep = torch.rand(h.shape, generator=generator, device=h.device) >= self.dropout  # (B, hidden)
            h = h * keep / (1.0 - self.dropout)
        return self.mean(h), self.log_var(h).clamp_min(LOG_VAR_MIN)
