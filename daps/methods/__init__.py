"""Training objectives. Each method is an ``nn.Module`` built from an encoder and a decoder.

``METHODS`` is the only registry: ``name -> build(cfg, image_shape) -> module``.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
import torch.nn as nn

from daps.config import Config
from daps.methods.daps import DAPS, build_daps
from daps.methods.types import Output, Reconstruction

METHODS: dict[str, Callable[[Config, tuple[int, int, int]], nn.Module]] = {"daps": build_daps}


class Method(Protocol):
    """The contract every method follows."""

    final_beta: float  # the beta of the beta-ELBO (the schedule's end value)
    vocab_size: int  # V, codes per token

    def forward(self, x: torch.Tensor, step: int, generator: torch.Generator | None = None) -> Output: ...

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor: ...

    def decode(self, indices: torch.Tensor) -> torch.Tensor: ...

    def reconstruct(self, x: torch.Tensor, generator: torch.Generator | None = None) -> Reconstruction: ...


def build_method(cfg: Config, image_shape: tuple[int, int, int]) -> nn.Module:
    if cfg.method not in METHODS:
        raise ValueError(f"unknown method {cfg.method!r}; choose one of: {', '.join(sorted(METHODS))}")
    return METHODS[cfg.method](cfg, image_shape)


__all__ = ["DAPS", "METHODS", "Method", "Output", "Reconstruction", "build_method"]
