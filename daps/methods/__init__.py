"""Training objectives. Each method is an ``nn.Module`` built from an encoder and a decoder.

``METHODS`` is the only registry: ``name -> build(cfg, image_shape) -> module``.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
import torch.nn as nn

from daps.config import Config
from daps.methods.common import InputSpec
from daps.methods.daps import DAPS, build_daps, build_dapsna
from daps.methods.fsq import build_fsq
from daps.methods.gumbel import build_grmck, build_grmckna, build_gumbel, build_gumbelna
from daps.methods.ppo import build_ppo
from daps.methods.reinforce import build_reinforce
from daps.methods.types import Output, Reconstruction
from daps.methods.vae import build_vae
from daps.methods.vqvae import build_vqvae
from daps.methods.vqvae_ema import build_vqvae_ema
from daps.optim import OptimizerSpec

METHODS: dict[str, Callable[[Config, tuple[int, int, int]], nn.Module]] = {
    "daps": build_daps,
    "dapsna": build_dapsna,
    "gumbel": build_gumbel,
    "gumbelna": build_gumbelna,
    "grmck": build_grmck,
    "grmckna": build_grmckna,
    "ppo": build_ppo,
    "reinforce": build_reinforce,
    "vae": build_vae,
    "fsq": build_fsq,
    "vqvae": build_vqvae,
    "vqvae-ema": build_vqvae_ema,
}


class Method(Protocol):
    """The contract every method follows."""

    final_beta: float | None  # the beta of the beta-ELBO (the schedule's end value); None without a KL
    vocab_size: int | None  # codes per token (FSQ: the implicit codebook size); None for a continuous latent

    input_spec: InputSpec  # what encode / decode / reconstruct accept (set by build_method)

    def forward(self, x: torch.Tensor, step: int, generator: torch.Generator | None = None) -> Output: ...

    # Inference (no gradients; training goes through forward). Bad inputs raise ValueError.
    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor: ...

    def decode(self, indices: torch.Tensor) -> torch.Tensor: ...

    def reconstruct(self, x: torch.Tensor, generator: torch.Generator | None = None) -> Reconstruction: ...

    def optimizer_specs(self, lr: float, grad_clip: float) -> list[OptimizerSpec]: ...


def build_method(cfg: Config, image_shape: tuple[int, int, int]) -> nn.Module:
    if cfg.method not in METHODS:
        raise ValueError(f"unknown method {cfg.method!r}; choose one of: {', '.join(sorted(METHODS))}")
    model = METHODS[cfg.method](cfg, image_shape)
    continuous = model.vocab_size is None
    model.input_spec = InputSpec(
        image_shape=tuple(image_shape), num_tokens=None if continuous else cfg.encoder.num_tokens,
        vocab_size=model.vocab_size, latent_dim=cfg.vae.latent_dim if continuous else None,
    )
    return model


__all__ = ["DAPS", "METHODS", "Method", "Output", "Reconstruction", "build_method"]
