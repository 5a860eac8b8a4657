"""The high-level policy: p(z | kind, velocity, z_prev), an autoregressive transformer over the next window's codes.

The context of a window is the kind of motion (a label, or the null label for classifier-free guidance), the
requested root velocity over the window (3 numbers, :func:`daps.robot.commands.window_velocity`, divided by the
training data's standard deviation) and the previous window's codes (T tokens; the extra symbol V stands for "no
previous window", the start of a rollout). Each of the T context slots is the sum of the previous code's embedding
at that position, the label's embedding and an MLP of the velocity; the library's autoregressive transformer
(:class:`daps.nets.ar_encoder.ARTransformerEncoder`) attends to them, so sampling uses the same KV-cached loop as
the encoders and the priors. Like the paper's high-level policy it is trained by maximum likelihood on the codes a
tokenizer's encoder gives the data (distillation).
"""

from __future__ import annotations

import torch
from torch import nn

from daps.nets.ar_encoder import ARTransformerEncoder
from daps.prior.nets import sample_guided


class ContextEmbed(nn.Module):
    """Packed context ``(B, 4 + T)`` = [label, 3 velocities, T previous codes] -> ``(B, T, E)``."""

    def __init__(self, num_tokens: int, vocab_size: int, num_classes: int, width: int):
        super().__init__()
        self.num_tokens = num_tokens
        self.codes = nn.Embedding(vocab_size + 1, width)  # the last symbol: no previous window
        self.labels = nn.Embedding(num_classes + 1, width)  # the last label: null (guidance)
        self.velocity = nn.Sequential(nn.Linear(3, width), nn.GELU(), nn.Linear(width, width))
        for table in (self.codes, self.labels):
            nn.init.normal_(table.weight, std=1.0)

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        labels = context[:, 0].long()  # (B,)
        velocity = context[:, 1:4]  # (B, 3), already scaled
        prev = context[:, 4:].long()  # (B, T)
        return self.codes(prev) + (self.labels(labels) + self.velocity(velocity))[:, None]  # (B, T, E)


class CommandPolicy(ARTransformerEncoder):
    """p(z | y, v, z_prev) over codes of ``num_tokens`` tokens of ``vocab_size`` symbols.

    ``velocity_scale (3,)`` (a saved buffer) divides the velocities before the network sees them.
    """

    velocity_scale: torch.Tensor

    def __init__(self, num_tokens: int, vocab_size: int, num_classes: int, width: int, num_layers: int,
                 num_heads: int, mlp_ratio: int = 4, velocity_scale: torch.Tensor | None = None):
        super().__init__(
            (1, 1, 1), num_tokens, vocab_size, width, num_layers, num_heads, mlp_ratio,
            input_embed=ContextEmbed(num_tokens, vocab_size, num_classes, width),
        )
        self.num_classes = num_classes
        scale = torch.ones(3) if velocity_scale is None else torch.as_tensor(velocity_scale, dtype=torch.float32)
        self.register_buffer("velocity_scale", scale.clone())

    @property
    def start_symbol(self) -> int:
        """The previous-codes symbol meaning "no previous window"."""
        return self.vocab_size

    def context(self, labels: torch.Tensor, velocity: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        """Pack ``labels (B,)``, ``velocity (B, 3)`` (m/s, m/s, rad/s) and ``prev (B, T)`` into ``(B, 4 + T)``
        (integers up to 2^24 are exact in float32)."""
        v = velocity.float() / self.velocity_scale
        return torch.cat([labels.float()[:, None], v, prev.float()], dim=1)

    def token_log_probs(self, codes: torch.Tensor, labels: torch.Tensor, velocity: torch.Tensor,
                        prev: torch.Tensor) -> torch.Tensor:
        """Teacher-forced ``log p(z_t | z_<t, context)``: ``(B, T)``, exact (not clamped, as the priors')."""
        return self.log_prob(self.context(labels, velocity, prev), codes[None], clamp=False)[0]

    def loss(self, codes: torch.Tensor, labels: torch.Tensor, velocity: torch.Tensor,
             prev: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood per token (nats), averaged."""
        return -self.token_log_probs(codes, labels, velocity, prev).mean()

    @torch.no_grad()
    def generate(self, labels: torch.Tensor, velocity: torch.Tensor, prev: torch.Tensor, guidance: float = 1.0,
                 temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """One code ``(B, T)`` per context by ancestral sampling; ``guidance`` != 1 mixes in the null-label
        model (classifier-free guidance on the kind of motion; the velocity and previous codes stay given)."""
        null = torch.full_like(labels, self.num_classes)
        if guidance not in (0.0, 1.0):
            ctx = self.context(torch.cat([labels, null]), torch.cat([velocity, velocity]), torch.cat([prev, prev]))
        else:
            ctx = self.context(null if guidance == 0.0 else labels, velocity, prev)
        return sample_guided(self, self.memory(ctx), labels.shape[0], guidance, temperature, generator)
