"""Convolutional networks of the natural-image datasets (original: generative_models/resnet_gen.py, networks/resnet.py).

``ResNetDecoder``: the generative network p_phi(x | z) of CIFAR-10 and ImageNet-256. The T token embeddings
are laid out on the patch grid (row-major, as the encoder cut the image), then Conv3x3 -> residual blocks ->
transposed-conv upsampling to the image size, with 2C output channels (Gaussian mean and log-variance).

``ResNetEncoder``: images -> strided convs -> residual blocks -> a small feature grid; PPO's value baseline on
natural images reads it.

Convolutions use LeCun-normal kernels and zero biases; BatchNorm uses momentum 0.99 in Flax terms (PyTorch
0.01), eps 1e-5 and the biased batch variance for the running statistics, as the original (networks/resnet.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from daps.nets.layers import CodeDecoder, CodeEmbedding, dense
from daps.nets.patches import patch_grid


def _lecun_conv_(weight: torch.Tensor, fan_in: int) -> torch.Tensor:
    """Truncated-normal kernel with variance 1 / fan_in (fan_in = input channels x kernel area)."""
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978  # undo the variance lost to truncation at 2 std
    return nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


def conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    """A "SAME"-padded convolution (kernel 1, 3, or 4 with stride 2) with the original's initializers."""
    layer = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=(kernel - stride + 1) // 2)
    _lecun_conv_(layer.weight, in_ch * kernel * kernel)
    if layer.bias is not None:  # always: built with a bias
        nn.init.zeros_(layer.bias)
    return layer


def upconv(in_ch: int, out_ch: int) -> nn.ConvTranspose2d:
    """Transposed convolution, kernel 4, stride 2: doubles H and W ("SAME" in Flax = padding 1 here)."""
    layer = nn.ConvTranspose2d(in_ch, out_ch, 4, stride=2, padding=1)
    _lecun_conv_(layer.weight, in_ch * 16)  # Flax's fan-in of a (4, 4, in, out) kernel
    if layer.bias is not None:  # always: built with a bias
        nn.init.zeros_(layer.bias)
    return layer


class SlicedBatchNorm2d(nn.Module):
    """BatchNorm2d whose batch statistics are taken separately over each of ``num_slices`` equal slices of
    the batch, e.g. the K decodings of the same B images (the original vmaps the decoder over K).

    In training, each slice ``(B, C, H, W)`` is normalized with its own mean and biased variance, and the
    running statistics move toward their average over the slices. With one slice this is Flax's BatchNorm.
    The parameter and buffer names are those of ``nn.BatchNorm2d``.
    """

    running_mean: torch.Tensor  # buffers
    running_var: torch.Tensor
    num_batches_tracked: torch.Tensor

    def __init__(self, channels: int, momentum: float = 0.01, eps: float = 1e-5):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: torch.Tensor, num_slices: int = 1) -> torch.Tensor:
        """``x (num_slices * B, C, H, W)`` -> same shape."""
        # Statistics and normalization in float32 (under bf16 autocast the convolutions' outputs are bf16).
        shape, dtype, x = (1, -1, 1, 1), x.dtype, x.float()
        if not self.training:
            mean, var = self.running_mean.view(shape), self.running_var.view(shape)
            y = (x - mean) * torch.rsqrt(var + self.eps) * self.weight.view(shape) + self.bias.view(shape)
            return y.to(dtype)
        n, c, h, w = x.shape
        xs = x.view(num_slices, n // num_slices, c, h, w)
        var, mean = torch.var_mean(xs, dim=(1, 3, 4), correction=0, keepdim=True)  # (S, 1, C, 1, 1) each
        y = (xs - mean) * torch.rsqrt(var + self.eps)
        y = y.view(n, c, h, w) * self.weight.view(shape) + self.bias.view(shape)
        with torch.no_grad():
            self.running_mean.lerp_(mean.mean(0).flatten(), self.momentum)
            self.running_var.lerp_(var.mean(0).flatten(), self.momentum)
            self.num_batches_tracked += 1
        return y.to(dtype)


class ResidualBlock(nn.Module):
    """``x + BN(Conv1x1(ReLU(BN(Conv3x3(ReLU(x))))))`` (original: networks/resnet.py)."""

    def __init__(self, width: int):
        super().__init__()
        self.conv1, self.norm1 = conv(width, width, 3), SlicedBatchNorm2d(width)
        self.conv2, self.norm2 = conv(width, width, 1), SlicedBatchNorm2d(width)

    def forward(self, x: torch.Tensor, num_slices: int = 1) -> torch.Tensor:
        h = self.norm1(self.conv1(F.relu(x)), num_slices)
        h = self.norm2(self.conv2(F.relu(h)), num_slices)
        return x + h


def _num_doublings(grid: int, size: int, what: str) -> int:
    """How many factor-2 resamplings take a side of ``grid`` cells to ``size`` pixels (a power of two)."""
    ratio = size // grid
    if grid * ratio != size or ratio < 1 or ratio & (ratio - 1):
        raise ValueError(f"{what}: {size} pixels is not a power-of-two multiple of a {grid}-cell grid")
    return ratio.bit_length() - 1


class ResNetDecoder(CodeDecoder):
    """Codes or per-token latents on the patch grid -> the likelihood's parameters ``(N, out_channels, H, W)``.

    token embeddings ``(N, T, E)`` -> grid ``(N, E, m, n)`` -> Conv3x3(width) -> ``num_blocks`` residual
    blocks -> ReLU -> log2(H / m) transposed convs halving the channels (BN + ReLU after all but the last,
    which outputs ``out_channels``). CIFAR (T=64, V=512, E=128): 257,958 parameters; ImageNet-256 (T=1024,
    V=1024): 330,198, as the original's.

    With ``vocab_size`` the decoder owns a code embedding ``(V, E)`` (Normal, std 1/sqrt(E)) and ``forward``
    takes integer codes or one-hots. Inputs may carry a leading sample axis, ``(K, B, T)``: BatchNorm then
    normalizes each of the K slices on its own, as the original's vmap over K and the output is ``(K, B, ...)``.
    """

    def __init__(
        self,
        num_tokens: int,
        token_dim: int,
        image_shape: tuple[int, int, int],
        out_channels: int,
        width: int = 64,
        num_blocks: int = 2,
        vocab_size: int | None = None,
    ):
        super().__init__()
        _, height, wide = image_shape
        self.rows, self.cols = patch_grid(num_tokens)
        num_up = _num_doublings(self.rows, height, "decoder height")
        if _num_doublings(self.cols, wide, "decoder width") != num_up:
            raise ValueError(f"the {self.rows}x{self.cols} token grid cannot be upsampled evenly to {height}x{wide}")
        self.embed = CodeEmbedding(vocab_size, token_dim) if vocab_size is not None else None
        self.stem = conv(token_dim, width, 3)
        self.blocks = nn.ModuleList(ResidualBlock(width) for _ in range(num_blocks))
        self.ups = nn.ModuleList()
        self.up_norms = nn.ModuleList()
        channels = width
        for i in range(num_up):
            last = i == num_up - 1
            nxt = out_channels if last else max(channels // 2, out_channels)
            self.ups.append(upconv(channels, nxt))
            if not last:
                self.up_norms.append(SlicedBatchNorm2d(nxt))
            channels = nxt
        if num_up == 0:  # the grid already has the image's size: a 1x1 conv gives the output channels
            self.ups.append(conv(channels, out_channels, 1))

    def decode_latents(self, h: torch.Tensor) -> torch.Tensor:
        """``(N, T, E)`` or ``(K, B, T, E)`` -> ``(N, out_channels, H, W)`` or ``(K, B, ...)``."""
        lead = h.shape[:-2]
        num_slices = lead[0] if len(lead) == 2 else 1
        h = h.reshape(-1, self.rows, self.cols, h.shape[-1]).permute(0, 3, 1, 2)  # (N, E, m, n), row-major
        h = self.stem(h)  # (N, width, m, n)
        for block in self.blocks:
            h = block(h, num_slices)
        h = F.relu(h)
        for i, up in enumerate(self.ups):
            h = up(h)  # (N, c, 2m, 2n)
            if i < len(self.up_norms):
                h = F.relu(self.up_norms[i](h, num_slices))
        return h.view(*lead, *h.shape[1:])



class ResNetEncoder(nn.Module):
    """Images ``(B, C, H, W)`` -> features ``(B, out_dim, g, g)`` on a ``g x g`` grid (original: networks/resnet.py).

    log2(H / g) strided 4x4 convs (channels ``max(width // 2^(n - i), C)``, each + BN + ReLU) -> Conv3x3(width)
    -> residual blocks -> ReLU -> Conv1x1(out_dim). CIFAR, g=4: 32 -> 16 -> 8 -> 4 with 8, 16, 32 channels.
    """

    def __init__(
        self, image_shape: tuple[int, int, int], grid: int, width: int = 64, num_blocks: int = 2, out_dim: int = 64
    ):
        super().__init__()
        channels, height, wide = image_shape
        num_down = _num_doublings(grid, height, "encoder height")
        if _num_doublings(grid, wide, "encoder width") != num_down:
            raise ValueError(f"a {height}x{wide} image cannot be downsampled evenly to a {grid}x{grid} grid")
        self.downs = nn.ModuleList()
        self.down_norms = nn.ModuleList()
        prev = channels
        for i in range(num_down):
            nxt = max(width // 2 ** (num_down - i), channels)
            self.downs.append(conv(prev, nxt, 4, stride=2))
            self.down_norms.append(SlicedBatchNorm2d(nxt))
            prev = nxt
        self.stem = conv(prev, width, 3)
        self.blocks = nn.ModuleList(ResidualBlock(width) for _ in range(num_blocks))
        self.head = conv(width, out_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for down, norm in zip(self.downs, self.down_norms):
            x = F.relu(norm(down(x)))  # (B, c, H/2, W/2)
        h = self.stem(x)
        for block in self.blocks:
            h = block(h)
        return self.head(F.relu(h))  # (B, out_dim, g, g)


class ResNetValueNet(nn.Module):
    """PPO's value baseline on natural images: ResNet encoder to a 4x4 x 64 grid -> flatten -> ``Dense(1)`` ->
    times ``D_x``, in nats of ``log p(x|z)`` (original: ``VisionResNetBaselineModel`` in baseline_models/)."""

    def __init__(self, image_shape: tuple[int, int, int], grid: int = 4, width: int = 64):
        super().__init__()
        self.scale = float(math.prod(image_shape))  # D_x: the net predicts log p per data dimension
        self.encoder = ResNetEncoder(image_shape, grid, width=width, out_dim=width)
        self.head = dense(grid * grid * width, 1, init="lecun")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B,)``."""
        h = self.encoder(x).permute(0, 2, 3, 1).flatten(1)  # (B, g*g*width), (h, w, c) order as in Flax
        return self.head(h).squeeze(-1) * self.scale
