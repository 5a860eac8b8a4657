"""The MNIST generative network p_phi(x | z): per-token latents -> MLP -> Bernoulli logits (original:
generative_models/feedforward_gen.py)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from daps.nets.layers import CodeDecoder, CodeEmbedding, dense


class MLPDecoder(CodeDecoder):
    """T per-token latents of width ``token_dim``, concatenated -> MLP -> logits ``(N, *out_shape)``.

    With ``vocab_size`` the decoder owns a code embedding ``(V, token_dim)`` and ``forward`` takes integer
    codes ``(N, T)`` or (relaxed) one-hots ``(N, T, V)``. Without it (VQ-VAE, FSQ, Gaussian VAE) only
    :meth:`decode_latents` applies, to continuous latents ``(N, T, token_dim)``.

    NOTE(paper): the paper calls this a "512-unit MLP"; 512 is the flattened embedding (T=8 x 64) and the
    hidden widths of the original code are 64 and 256.
    """

    def __init__(
        self,
        num_tokens: int,
        token_dim: int,
        hidden: tuple[int, ...],
        out_shape: tuple[int, ...],
        vocab_size: int | None = None,
    ):
        super().__init__()
        self.out_shape = tuple(out_shape)
        self.embed = CodeEmbedding(vocab_size, token_dim) if vocab_size is not None else None
        widths = [num_tokens * token_dim, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [dense(a, b, init="lecun"), nn.ReLU()]
        layers.append(dense(widths[-1], math.prod(self.out_shape), init="lecun"))
        self.mlp = nn.Sequential(*layers)

    def decode_latents(self, h: torch.Tensor) -> torch.Tensor:
        """``(..., T, token_dim) -> (..., *out_shape)`` logits, e.g. ``(K, B, T, E) -> (K, B, C, H, W)``."""
        return self.mlp(h.flatten(-2)).view(*h.shape[:-2], *self.out_shape)

