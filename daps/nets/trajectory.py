"""Networks over time series (motion windows): the encoders' token embedding and the trajectory decoder.

A motion window is carried through the library like a one-channel image ``(1, frames, features)``. The paper's
trajectory networks (App. F; original: networks/conv1d.py, generative_models/transformer_gen.py) resample the time
axis between the window's frames and the latent tokens with strided 1-d convolutions: with 32 frames and 64
tokens, the encoder's token embedding is one transposed convolution (kernel 4, stride 2) from the features to the
width E, and the decoder runs a small bidirectional transformer over the token embeddings, then one strided
convolution back to 32 frames and a per-frame ``Dense(features)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from daps.nets.layers import LN_EPS, CodeDecoder, CodeEmbedding, EncoderBlock, dense, lecun_normal_, sinusoidal_table


def _power_of_two_ratio(a: int, b: int) -> int:
    """k with ``a * 2**k == b`` (k may be negative), or ValueError."""
    big, small = max(a, b), min(a, b)
    k = int(round(math.log2(big / small)))
    if small * 2**k != big:
        raise ValueError(f"lengths {a} and {b} differ by a factor that is not a power of two")
    return k if b >= a else -k


class ResampleTime(nn.Module):
    """``(B, in_length, in_features) -> (B, out_length, out_features)``: strided (transposed) 1-d convolutions,
    kernel 4, stride 2 (each halves or doubles the length), or one ``Dense`` when the lengths are equal.

    Several factors of two chain convolutions to ``out_features`` channels with a GELU between them; the last
    has no activation. Initialization as the original: Glorot-normal kernels when upsampling, LeCun-normal when
    downsampling, zero biases.
    """

    def __init__(self, in_features: int, out_features: int, in_length: int, out_length: int):
        super().__init__()
        self.in_length, self.out_length = in_length, out_length
        steps = _power_of_two_ratio(in_length, out_length)
        layers: list[nn.Module] = []
        if steps == 0:
            layers.append(dense(in_features, out_features, init="lecun"))
        for i in range(abs(steps)):
            c_in = in_features if i == 0 else out_features
            conv: nn.Conv1d | nn.ConvTranspose1d
            if steps > 0:
                conv = nn.ConvTranspose1d(c_in, out_features, 4, stride=2, padding=1)
                nn.init.xavier_normal_(conv.weight)
            else:
                conv = nn.Conv1d(c_in, out_features, 4, stride=2, padding=1)
                lecun_normal_(conv.weight)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
            layers += [conv, nn.GELU()] if i < abs(steps) - 1 else [conv]
        self.layers = nn.Sequential(*layers)
        self.convolutional = steps != 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] != self.in_length:
            raise ValueError(f"expected {self.in_length} time steps, got {x.shape[-2]}")
        if not self.convolutional:
            return self.layers(x)
        return self.layers(x.transpose(1, 2)).transpose(1, 2)  # convolve over time: (B, C, L)


class TimeEmbed(nn.Module):
    """The encoders' token embedding for motion: windows ``(B, 1, frames, features)`` -> ``(B, T, E)`` tokens."""

    def __init__(self, image_shape: tuple[int, int, int], num_tokens: int, width: int):
        super().__init__()
        channels, frames, features = image_shape
        if channels != 1:
            raise ValueError(f"time embedding expects windows (1, frames, features), got {image_shape}")
        self.resample = ResampleTime(features, width, frames, num_tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resample(x[:, 0])


class TrajectoryDecoder(CodeDecoder):
    """Codes ``(N, T)`` (or latents ``(N, T, token_dim)``) -> window means ``(N, 1, frames, features)``.

    Embed(V, E) -> + positions -> ``num_layers`` bidirectional pre-LN blocks -> LayerNorm -> Dense(E) ->
    :class:`ResampleTime` to ``frames`` -> Dense(features). Same interface as the image decoders
    (``embed_codes``, ``decode_latents``, ``forward``).
    """

    pos: torch.Tensor  # (T, E) sinusoidal table, a buffer

    def __init__(
        self,
        num_tokens: int,
        token_dim: int,
        out_shape: tuple[int, ...],
        width: int,
        num_layers: int,
        num_heads: int,
        mlp_ratio: int,
        vocab_size: int | None = None,
    ):
        super().__init__()
        channels, frames, features = out_shape
        if channels != 1:
            raise ValueError(f"trajectory decoder outputs (1, frames, features), got {out_shape}")
        self.out_shape = tuple(out_shape)
        self.embed = CodeEmbedding(vocab_size, token_dim) if vocab_size is not None else None
        self.proj_in = dense(token_dim, width, init="lecun") if token_dim != width else nn.Identity()
        self.register_buffer("pos", sinusoidal_table(num_tokens, width), persistent=False)
        self.blocks = nn.ModuleList(EncoderBlock(width, num_heads, mlp_ratio) for _ in range(num_layers))
        self.ln = nn.LayerNorm(width, eps=LN_EPS)
        self.proj = dense(width, width)
        self.resample = ResampleTime(width, width, num_tokens, frames)
        self.head = dense(width, features, init="lecun")

    def decode_latents(self, h: torch.Tensor) -> torch.Tensor:
        """``(..., T, token_dim) -> (..., 1, frames, features)``, e.g. ``(K, B, T, E) -> (K, B, 1, 32, F)``."""
        lead = h.shape[:-2]
        h = self.proj_in(h.reshape(-1, *h.shape[-2:])) + self.pos  # (N, T, E)
        for block in self.blocks:
            h = block(h)
        h = self.resample(self.proj(self.ln(h)))  # (N, frames, E)
        return self.head(h).view(*lead, *self.out_shape)

