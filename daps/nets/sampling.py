"""Ancestral sampling of K codes per input: the one loop behind every autoregressive sampler.

A sampler is a *step function*: given the codes drawn so far it returns the logits of the next token. The
autoregressive encoder has three (recompute the whole prefix, a growing in-place KV cache, a static-shape KV
cache for ``torch.compile``); :func:`sample_autoregressive` runs any of them, so they draw the same codes from the
same generator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from daps.functional import categorical_log_probs, sample_probs

SamplingStep = Callable[[torch.Tensor, int], torch.Tensor]
"""``step(indices, pos) -> logits (B*K, V)`` of q(z_pos | z_<pos, x). ``indices (B*K, T)`` holds the codes drawn at
positions < pos; the entries from ``pos`` on are placeholders that must not change the logits."""


@dataclass
class Samples:
    """K codes per input drawn from q_theta, with per-token statistics of the sampling pass."""

    indices: torch.Tensor  # (K, B, T) int64
    token_log_q: torch.Tensor  # (K, B, T) log q(z_t | z_<t, x), float32; with its gradient from sample_scored
    token_entropy: torch.Tensor  # (K, B, T) entropy of q(. | z_<t, x) in nats, float32

    @property
    def log_q(self) -> torch.Tensor:
        """``log q(z | x)``, ``(K, B)``."""
        return self.token_log_q.sum(-1)  # (K, B)


def sample_autoregressive(
    step: SamplingStep,
    batch_size: int,
    num_samples: int,
    num_tokens: int,
    device: torch.device,
    generator: torch.Generator | None = None,
    log_probs_of: Callable[[torch.Tensor], torch.Tensor] = categorical_log_probs,
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> Samples:
    """Draw ``num_samples`` codes of ``num_tokens`` per input at temperature 1, one token at a time.

    The rows of the flat batch are b-major: the K samples of input b are rows ``b*K ... b*K + K - 1``.
    ``log_probs_of``: logits -> log-probabilities, the clamped :func:`~daps.functional.categorical_log_probs` of the
    encoder (as its teacher-forced log q) or :func:`~daps.functional.exact_log_probs` (the priors, which score
    exactly). Returns codes, log-probabilities and entropies ``(K, B, T)``, without gradient; ``score(logits,
    tokens) -> log q (B*K,)`` instead gives the log-probabilities of the drawn tokens with the gradient of a
    differentiable ``step`` (:meth:`~daps.nets.ar_encoder.ARTransformerEncoder.sample_scored`: the same values).
    """
    b, k, t = batch_size, num_samples, num_tokens
    n = b * k
    # Position-major buffers: each position's codes and statistics are written in place into one contiguous row
    # (no copy per position), and a step reads the previous codes without one. All T * B*K uniforms are drawn at
    # once: on the CPU the same numbers, in the same order, as one draw per position. Fewer operations per token
    # matter on a GPU, where this loop's small kernels cost about their launch (BENCHMARKS.md, "Kernels per step").
    codes = torch.zeros(t, n, dtype=torch.long, device=device)  # (T, B*K)
    indices = codes.t()  # (B*K, T): the view a step reads
    uniforms = torch.rand((t, n, 1), generator=generator, device=device)  # (T, B*K, 1)
    log_q_rows = torch.empty(t, n, device=device)  # (T, B*K), without score
    scored: list[torch.Tensor] = []
    neg_entropy = torch.empty(t, n, device=device)  # (T, B*K)
    for pos in range(t):
        logits = step(indices, pos)  # (B*K, V)
        with torch.no_grad():
            log_probs = log_probs_of(logits)  # (B*K, V)
            probs = log_probs.exp()
            if score is None:
                token = sample_probs(probs, uniforms=uniforms[pos], out=codes[pos])  # (B*K,)
                torch.gather(log_probs, -1, token[:, None], out=log_q_rows[pos, :, None])
            else:  # a fresh tensor: autograd keeps the scored token, and codes' later rows are written in place
                token = sample_probs(probs, uniforms=uniforms[pos])  # (B*K,)
                codes[pos] = token
            torch.sum(probs * log_probs, -1, out=neg_entropy[pos])
        if score is not None:
            scored.append(score(logits, token))

    def unflatten(a: torch.Tensor) -> torch.Tensor:
        return a.view(b, k, t).transpose(0, 1)  # (K, B, T)

    token_log_q = torch.stack(scored, 1) if score is not None else log_q_rows.t().contiguous()  # (B*K, T)
    token_entropy = torch.neg(neg_entropy.t(), out=torch.empty(n, t, device=device))  # (B*K, T)
    return Samples(unflatten(indices.contiguous()), unflatten(token_log_q), unflatten(token_entropy))
