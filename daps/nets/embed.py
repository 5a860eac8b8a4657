"""The encoders' first layer: inputs -> one vector per latent token.

``patches`` (images): the input cut into T patches (:func:`~daps.nets.patches.patchify`), each through one
``Dense(E)`` (paper App. F). ``time`` (motion windows ``(1, frames, features)``): strided 1-d convolutions over
time from the frames to the T tokens (:class:`~daps.nets.trajectory.TimeEmbed`).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from daps.nets.layers import lecun_normal_
from daps.nets.patches import patch_shape, patchify
from daps.nets.trajectory import TimeEmbed

EMBEDS = ("patches", "time")


class PatchEmbed(nn.Linear):
    """``(B, C, H, W) -> (B, T, E)``: flattened patches through a LeCun-initialized ``Dense(E)`` (a Linear, so its
    weights keep the names ``weight`` and ``bias``)."""

    def __init__(self, image_shape: tuple[int, int, int], num_tokens: int, width: int):
        ph, pw = patch_shape(image_shape, num_tokens)
        super().__init__(ph * pw * image_shape[0], width)
        lecun_normal_(self.weight)
        nn.init.zeros_(self.bias)
        self.num_tokens = num_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(patchify(x, self.num_tokens))


def token_embed(kind: str, image_shape: tuple[int, int, int], num_tokens: int, width: int) -> nn.Module:
    """The token embedding ``kind`` (one of :data:`EMBEDS`)."""
    if kind == "patches":
        return PatchEmbed(image_shape, num_tokens, width)
    if kind == "time":
        return TimeEmbed(image_shape, num_tokens, width)
    raise ValueError(f"unknown token embedding {kind!r}; choose one of: {', '.join(EMBEDS)}")
