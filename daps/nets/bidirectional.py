"""Bidirectional (non-autoregressive) transformer encoders over image patches.

The original's ``jadex/networks/transformer.py::TransformerDecoder`` (its "self_attn" recognition model): paper
Appendix F, "self-attention is used for VQ-based methods". With a V-way head it is the factorized
q_theta(z | x) of DAPS-NA, Gumbel-NA and GR-MCK-NA (the original's ``DAPSNonAutoregressiveModel`` in
``algorithms/vae/models/daps.py`` and the non-autoregressive models of ``gumbel.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from daps.functional import categorical_log_probs, sample_probs
from daps.nets.embed import token_embed
from daps.nets.layers import LN_EPS, EncoderBlock, dense, sinusoidal_table
from daps.nets.sampling import Samples


class NATransformerEncoder(nn.Module):
    """Bidirectional transformer over image patches with one output vector per token.

    patches -> Dense(E) + positions -> ``num_layers`` pre-LN blocks -> LayerNorm -> Dense(E) -> head.
    The head is ``Dense(out_dim)`` (logits for the *na methods, FSQ's latent dims) or absent
    (``out_dim=None``: the VQ-VAE's ``z_e``).
    """

    pos: torch.Tensor  # (T, E) sinusoidal table, a buffer

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_tokens: int,
        width: int,
        num_layers: int,
        num_heads: int,
        mlp_ratio: int,
        out_dim: int | None,
        embed: str = "patches",
    ):
        super().__init__()
        self.num_tokens = num_tokens
        self.patch_embed = token_embed(embed, image_shape, num_tokens, width)
        self.register_buffer("pos", sinusoidal_table(num_tokens, width), persistent=False)  # (T, E)
        self.blocks = nn.ModuleList(EncoderBlock(width, num_heads, mlp_ratio) for _ in range(num_layers))
        self.ln = nn.LayerNorm(width, eps=LN_EPS)
        self.proj = dense(width, width)
        self.head = dense(width, out_dim, init="lecun") if out_dim else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, T, out_dim or E)``."""
        h = self.patch_embed(x) + self.pos  # (B, T, E)
        for block in self.blocks:
            h = block(h)
        return self.head(self.proj(self.ln(h)))  # (B, T, out_dim or E)


class NACategoricalEncoder(nn.Module):
    """q_theta(z | x) = prod_t Cat(z_t; logits_t(x)): the bidirectional transformer with a V-way head. Same
    sampling interface as :class:`~daps.nets.ar_encoder.ARTransformerEncoder`; the network runs once per input and
    the K samples are independent draws from its per-token distributions."""

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_tokens: int,
        vocab_size: int,
        width: int,
        num_layers: int,
        num_heads: int,
        mlp_ratio: int,
        embed: str = "patches",
    ):
        super().__init__()
        self.num_tokens, self.vocab_size = num_tokens, vocab_size
        self.net = NATransformerEncoder(
            image_shape, num_tokens, width, num_layers, num_heads, mlp_ratio, vocab_size, embed=embed
        )

    def token_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """Clamped per-token log-probabilities ``(B, T, V)``."""
        return categorical_log_probs(self.net(x))

    def conditioning(self, x: torch.Tensor) -> torch.Tensor:
        """What sampling and scoring both read of ``x``: its :meth:`token_log_probs`. Computed once (with
        gradients) and passed to :meth:`sample` and :meth:`log_prob`, the network runs once per training step
        instead of twice; the values are the same."""
        return self.token_log_probs(x)

    def log_probs(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """``(K, B, T, V)``, the same for every sample (the codes do not condition anything)."""
        return self.token_log_probs(x).expand(indices.shape[0], -1, -1, -1)  # (K, B, T, V)

    def log_prob(
        self, x: torch.Tensor, indices: torch.Tensor, conditioning: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``indices (K, B, T)`` -> ``token_log_q (K, B, T)`` with gradients; ``conditioning``: :meth:`conditioning`
        of ``x``, if the caller has it."""
        token_log_probs = self.token_log_probs(x) if conditioning is None else conditioning  # (B, T, V)
        log_probs = token_log_probs.expand(indices.shape[0], -1, -1, -1)  # (K, B, T, V)
        return log_probs.gather(-1, indices[..., None]).squeeze(-1)  # (K, B, T)

    @torch.no_grad()
    def sample(
        self,
        x: torch.Tensor,
        num_samples: int = 1,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
        conditioning: torch.Tensor | None = None,
    ) -> Samples:
        """``num_samples`` independent codes per input (``use_cache`` is accepted for interface parity);
        ``conditioning``: :meth:`conditioning` of ``x``, if the caller has it."""
        return self.sample_scored(x, num_samples, generator, conditioning)

    def sample_scored(
        self,
        x: torch.Tensor,
        num_samples: int = 1,
        generator: torch.Generator | None = None,
        conditioning: torch.Tensor | None = None,
    ) -> Samples:
        """:meth:`sample` whose ``token_log_q`` keeps its gradient (under gradient mode), equal to :meth:`log_prob`
        of the codes: the network runs once for drawing and scoring."""
        log_probs = self.token_log_probs(x) if conditioning is None else conditioning  # (B, T, V)
        b, t, v = log_probs.shape
        with torch.no_grad():
            probs = log_probs.exp()
            flat = probs[None].expand(num_samples, b, t, v).reshape(-1, v)  # (K*B*T, V)
            indices = sample_probs(flat, generator).view(num_samples, b, t)  # (K, B, T)
            entropy = -(probs * log_probs).sum(-1)  # (B, T)
        token_log_q = log_probs[None].expand(num_samples, -1, -1, -1).gather(-1, indices[..., None]).squeeze(-1)
        return Samples(indices, token_log_q, entropy[None].expand(num_samples, -1, -1).contiguous())  # (K, B, T)

    def sample_relaxed(
        self, x: torch.Tensor, relax: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One relaxed code per input, every token at once: ``indices (B, T)``, one-hots ``(B, T, V)``,
        log-probabilities ``(B, T, V)``."""
        log_probs = self.token_log_probs(x)  # (B, T, V)
        indices, onehots = relax(log_probs)  # (B, T), (B, T, V)
        return indices, onehots, log_probs
