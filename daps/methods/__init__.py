"""Training objectives. Each method is an ``nn.Module`` built from an encoder and a decoder.

``METHODS`` is the only registry: ``name -> build(cfg, image_shape) -> module``.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
import torch.nn as nn

from daps.config import Config
from daps.methods.daps import DAPS, build_daps, build_dapsna
from daps.methods.types import Output, Reconstruction
from daps.optim import OptimizerSpec

METHODS: dict[str, Callable[[Config, tuple[int, int, int]], nn.Module]] = {
    "daps": build_daps,
    "dapsna": build_dapsna,
}


class Method(Protocol):
    """The contract every method follows."""

    final_beta: float | None  # the beta of the beta-ELBO (the schedule's end value); None without a KL
    vocab_size: int | None  # codes per token (FSQ: the implicit codebook size); None for a continuous latent

    def forward(self, x: torch.Tensor, step: int, generator: torch.Generator | None = None) -> Output: ...

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor: ...

    def decode(self, indices: torch.Tensor) -> torch.Tensor: ...

    def reconstruct(self, x: torch.Tensor, generator: torch.Generator | None = None) -> Reconstruction: ...

    def optimizer_specs(self, lr: float, grad_clip: float) -> list[OptimizerSpec]: ...


def build_method(cfg: Config, image_shape: tuple[int, int, int]) -> nn.Module:
    if cfg.method not in METHODS:
        raise ValueError(f"unknown method {cfg.method!r}; choose one of: {', '.join(sorted(METHODS))}")
    return METHODS[cfg.method](cfg, image_shape)


__all__ = ["DAPS", "METHODS", "Method", "Output", "Reconstruction", "build_method"]
