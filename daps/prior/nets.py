"""Label-conditioned priors over codes ``z (T,)`` of V symbols, with classifier-free guidance.

- :class:`ARPrior`: p(z | y) = prod_t p(z_t | z_<t, y), the library's autoregressive transformer with the class
  label (or the null label) as its only input, so sampling goes through the same KV-cached loop as the
  encoder's (:mod:`daps.nets.sampling`). Exact log-likelihoods, hence bits per token.
- :class:`DFMPrior`: discrete flow matching (Gat et al., 2024) with the mixture path x_t = x_1 with probability
  kappa_t = t, else a draw from the source, the source uniform over V (as the original's
  ``algorithms/dfm``) or a mask token. A bidirectional transformer with adaLN conditioning on (t, y)
  ("DiT-style", as the original's network) predicts p(x_1 | x_t) at every token, trained by cross-entropy on all
  tokens; sampled by Euler steps on the exact grid t_i = i / N.

Classifier-free guidance for both: the null label (index ``num_classes``) is dropped in for a fraction of the
training labels, and sampling mixes ``log p_uncond + w (log p_cond - log p_uncond)`` per token (w = 0: the
unconditional model, w = 1: the conditional one).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from daps.functional import exact_log_probs, sample_probs
from daps.nets.ar_encoder import ARTransformerEncoder, MemoryKV
from daps.nets.layers import LN_EPS, MLP, Attention, dense, sinusoidal_table
from daps.nets.sampling import sample_autoregressive


def guide(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance on logits or log-probabilities: ``uncond + scale * (cond - uncond)`` (the two
    agree up to a per-row constant, so the softmax is the same)."""
    if scale == 1.0:
        return cond
    if scale == 0.0:
        return uncond
    return uncond + scale * (cond - uncond)


def sample_guided(model: ARTransformerEncoder, memory: MemoryKV, batch: int, guidance: float, temperature: float,
                  generator: torch.Generator | None) -> torch.Tensor:
    """Codes ``(batch, T)`` by ancestral sampling from an autoregressive model whose memory holds the conditional
    contexts (``batch`` rows), followed by the same contexts with the null label when ``guidance`` is not 0 or 1
    (``2 * batch`` rows); each token's log-probabilities are mixed by :func:`guide` and divided by
    ``temperature``."""
    inner = model._cached_step(memory, 1)
    both = guidance not in (0.0, 1.0)

    def step(indices: torch.Tensor, pos: int) -> torch.Tensor:
        if not both:
            return inner(indices, pos) / temperature
        log_p = exact_log_probs(inner(torch.cat([indices, indices]), pos))  # (2B, V)
        return guide(log_p[:batch], log_p[batch:], guidance) / temperature

    device = memory[0][0].device
    # exact probabilities (no clamp), as the prior's likelihood scores them
    return sample_autoregressive(step, batch, 1, model.num_tokens, device, generator, exact_log_probs).indices[0]


def drop_labels(labels: torch.Tensor, rate: float, null: int, generator: torch.Generator | None) -> torch.Tensor:
    """``labels`` with each replaced by the null label ``null`` with probability ``rate``."""
    if rate <= 0:
        return labels
    drop = torch.rand(labels.shape, generator=generator, device=labels.device) < rate
    return torch.where(drop, torch.full_like(labels, null), labels)


class LabelEmbed(nn.Module):
    """Class label ``(B,)`` in ``[0, num_classes]`` (the last: the null label) -> ``(B, 1, E)``."""

    def __init__(self, num_classes: int, width: int):
        super().__init__()
        self.table = nn.Embedding(num_classes + 1, width)
        nn.init.normal_(self.table.weight, std=1.0)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.table(labels)[:, None]  # (B, 1, E)


# --------------------------------------------------------------------------------------------------
# Autoregressive


class ARPrior(ARTransformerEncoder):
    """p(z | y): the autoregressive transformer whose cross-attention memory is the label's embedding (plus the
    position table, so T memory slots)."""

    def __init__(self, num_tokens: int, vocab_size: int, num_classes: int, width: int, num_layers: int,
                 num_heads: int, mlp_ratio: int = 4):
        super().__init__(
            (1, 1, 1), num_tokens, vocab_size, width, num_layers, num_heads, mlp_ratio,
            input_embed=LabelEmbed(num_classes, width),
        )
        self.num_classes = num_classes

    def token_log_probs(self, codes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Teacher-forced ``log p(z_t | z_<t, y)`` of ``codes (B, T)`` under ``labels (B,)``: ``(B, T)``, exact (not
        clamped: the loss keeps a gradient for improbable tokens and held-out bits are not capped)."""
        return self.log_prob(labels, codes[None], clamp=False)[0]

    def loss(self, codes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood per token (nats), averaged."""
        return -self.token_log_probs(codes, labels).mean()

    @torch.no_grad()
    def generate(
        self,
        labels: torch.Tensor,
        guidance: float = 1.0,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """One code ``(B, T)`` per label ``(B,)`` by ancestral sampling with guidance ``guidance`` at
        ``temperature``; the null label ``num_classes`` gives unconditional samples."""
        null = torch.full_like(labels, self.num_classes)
        given = torch.cat([labels, null]) if guidance not in (0.0, 1.0) else (null if guidance == 0.0 else labels)
        return sample_guided(self, self.memory(given), labels.shape[0], guidance, temperature, generator)

    def network_evaluations(self, guidance: float) -> int:
        """Forward passes of the network per sample (one token each)."""
        return self.num_tokens * (2 if guidance not in (0.0, 1.0) else 1)


# --------------------------------------------------------------------------------------------------
# Discrete flow matching


def corrupt(
    x1: torch.Tensor, t: torch.Tensor, vocab_size: int, source: str, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A draw of x_t from the mixture path at times ``t (B,)``: each token of ``x1 (B, T)`` is kept with
    probability kappa_t = t, else replaced by a source draw (uniform over V, or the mask token V)."""
    keep = torch.rand(x1.shape, generator=generator, device=x1.device) < t[:, None]
    if source == "uniform":
        x0 = torch.randint(vocab_size, x1.shape, generator=generator, device=x1.device)
    elif source == "mask":
        x0 = torch.full_like(x1, vocab_size)
    else:
        raise ValueError(f"unknown source {source!r}; choose uniform or mask")
    return torch.where(keep, x1, x0)


def euler_jump_probability(step: int, num_steps: int) -> float:
    """The probability that a token jumps in Euler step ``step`` (from t = step/N to (step+1)/N) of the mixture
    path with kappa_t = t: h * kappa'_t / (1 - kappa_t) = (1/N) / (1 - step/N) = 1 / (N - step), exactly (1 in
    the last step, so every token is finally drawn from p(x_1 | x_t))."""
    return 1.0 / (num_steps - step)


def euler_step(
    xt: torch.Tensor,
    probs: torch.Tensor,
    jump: float,
    source: str,
    vocab_size: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One Euler step: each token of ``xt (B, T)`` jumps with probability ``jump`` to a draw from
    ``probs (B, T, V)`` (the predicted p(x_1 | x_t)) and stays otherwise; with the mask source only masked tokens
    move (an unmasked token's posterior is itself). The transition law is ``(1 - jump) delta_{x_t} + jump p``."""
    draw = sample_probs(probs, generator)  # (B, T)
    move = torch.rand(xt.shape, generator=generator, device=xt.device) < jump
    if source == "mask":
        move &= xt == vocab_size
    return torch.where(move, draw, xt)


class AdaLNBlock(nn.Module):
    """A transformer block whose layer norms are scaled, shifted and gated by the conditioning vector
    (adaLN-Zero: the gates start at zero, so every block starts as the identity)."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(width, eps=LN_EPS, elementwise_affine=False)
        self.attn = Attention(width, num_heads)
        self.ln2 = nn.LayerNorm(width, eps=LN_EPS, elementwise_affine=False)
        self.mlp = MLP(width, mlp_ratio)
        self.modulation = nn.Linear(width, 6 * width)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(F.silu(c))[:, None].chunk(6, dim=-1)
        x = x + gate1 * self.attn(self.ln1(x) * (1 + scale1) + shift1)
        return x + gate2 * self.mlp(self.ln2(x) * (1 + scale2) + shift2)


class DFMPrior(nn.Module):
    """p(x_1 | x_t, t, y) at every token: ``(B, T)`` tokens (V + 1 symbols with the mask source), times ``(B,)``
    and labels ``(B,)`` -> logits ``(B, T, V)``."""

    def __init__(self, num_tokens: int, vocab_size: int, num_classes: int, width: int, num_layers: int,
                 num_heads: int, mlp_ratio: int = 4, source: str = "uniform"):
        super().__init__()
        if source not in ("uniform", "mask"):
            raise ValueError(f"unknown source {source!r}; choose uniform or mask")
        self.num_tokens, self.vocab_size, self.num_classes, self.source = num_tokens, vocab_size, num_classes, source
        self.token_embed = nn.Embedding(vocab_size + (source == "mask"), width)
        self.register_buffer("pos", sinusoidal_table(num_tokens, width), persistent=False)
        self.label_embed = nn.Embedding(num_classes + 1, width)
        self.time_mlp = nn.Sequential(dense(width, width), nn.SiLU(), dense(width, width))
        self.blocks = nn.ModuleList(AdaLNBlock(width, num_heads, mlp_ratio) for _ in range(num_layers))
        self.final_ln = nn.LayerNorm(width, eps=LN_EPS, elementwise_affine=False)
        self.final_modulation = nn.Linear(width, 2 * width)
        nn.init.zeros_(self.final_modulation.weight)
        nn.init.zeros_(self.final_modulation.bias)
        self.head = dense(width, vocab_size)
        self.width = width

    def time_features(self, t: torch.Tensor) -> torch.Tensor:
        """Sinusoidal features of ``t (B,)`` in [0, 1] (scaled by 1000, as diffusion models do): ``(B, E)``."""
        half = self.width // 2
        freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device) / half)  # (E/2,)
        angles = 1000.0 * t.float()[:, None] * freqs  # (B, E/2)
        feats = torch.cat([angles.sin(), angles.cos()], dim=-1)
        return F.pad(feats, (0, self.width - 2 * half))  # (B, E)

    def forward(self, xt: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        c = self.time_mlp(self.time_features(t)) + self.label_embed(labels)  # (B, E)
        h = self.token_embed(xt) + self.pos  # (B, T, E)
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.final_modulation(F.silu(c))[:, None].chunk(2, dim=-1)
        return self.head(self.final_ln(h) * (1 + scale) + shift)  # (B, T, V)

    def loss(self, codes: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Cross-entropy of p(x_1 | x_t) against the clean codes on all tokens, t ~ U[0, 1) per example (nats per
        token)."""
        t = torch.rand(codes.shape[0], generator=generator, device=codes.device)
        xt = corrupt(codes, t, self.vocab_size, self.source, generator)
        logits = self(xt, t, labels)
        return F.cross_entropy(logits.float().reshape(-1, self.vocab_size), codes.reshape(-1))

    @torch.no_grad()
    def generate(
        self,
        labels: torch.Tensor,
        guidance: float = 1.0,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        num_steps: int = 32,
    ) -> torch.Tensor:
        """One code ``(B, T)`` per label by ``num_steps`` Euler steps from the source at t = 0 to t = 1."""
        b, t_len, v = labels.shape[0], self.num_tokens, self.vocab_size
        device = labels.device
        if self.source == "uniform":
            x = torch.randint(v, (b, t_len), generator=generator, device=device)
        else:
            x = torch.full((b, t_len), v, dtype=torch.long, device=device)
        null = torch.full_like(labels, self.num_classes)
        for i in range(num_steps):
            t = torch.full((b,), i / num_steps, device=device)
            if guidance == 0.0:
                log_p = exact_log_probs(self(x, t, null))
            elif guidance == 1.0:
                log_p = exact_log_probs(self(x, t, labels))
            else:
                both = exact_log_probs(self(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null])))
                log_p = guide(both[:b], both[b:], guidance)
            probs = torch.softmax(log_p / temperature, dim=-1)  # (B, T, V)
            x = euler_step(x, probs, euler_jump_probability(i, num_steps), self.source, v, generator)
        return x

    def network_evaluations(self, guidance: float, num_steps: int) -> int:
        """Forward passes of the network per sample (all T tokens each)."""
        return num_steps * (2 if guidance not in (0.0, 1.0) else 1)
