"""The MNIST generative network p_phi(x | z): token embedding -> MLP -> Bernoulli logits (SPEC 5.8)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from daps.nets.transformer import dense


class MLPDecoder(nn.Module):
    """Codes ``(N, T)`` (or relaxed one-hots ``(N, T, V)``) -> logits ``(N, *out_shape)``.

    NOTE(paper): the paper calls this a "512-unit MLP"; 512 is the flattened embedding (T=8 x 64) and the
    hidden widths of the original code are 64 and 256.
    """

    def __init__(
        self,
        num_tokens: int,
        vocab_size: int,
        embed_dim: int,
        hidden: tuple[int, ...],
        out_shape: tuple[int, ...],
    ):
        super().__init__()
        self.out_shape = tuple(out_shape)
        self.embed = nn.Embedding(vocab_size, embed_dim)
        nn.init.normal_(self.embed.weight, std=1.0 / math.sqrt(embed_dim))
        widths = [num_tokens * embed_dim, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [dense(a, b, init="lecun"), nn.ReLU()]
        layers.append(dense(widths[-1], math.prod(self.out_shape), init="lecun"))
        self.mlp = nn.Sequential(*layers)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        if codes.is_floating_point():
            h = codes @ self.embed.weight  # (N, T, E): one-hot or relaxed codes
        else:
            h = self.embed(codes)  # (N, T, E)
        return self.mlp(h.flatten(1)).view(-1, *self.out_shape)  # (N, *out_shape)
