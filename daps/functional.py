"""Pure tensor math of DAPS and its baselines.

No ``nn.Module`` and no global random state here: every function is deterministic given its inputs
(random ones take ``generator=``). Shape letters: K samples per input, B batch, T tokens, V vocabulary.

Paper: "Discrete Variational Autoencoding via Policy Search" (ICLR 2026), equations 5-8.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "FLOAT32_EPS",
    "adaptive_grad_clip",
    "categorical_log_probs",
    "categorical_sample",
    "clamp_log_prob",
    "categorical_entropy",
    "constant_schedule",
    "cosine_schedule",
    "effective_sample_size",
    "eta_loss",
    "exp_decay_schedule",
    "gumbel_max_sample",
    "kl_to_uniform",
    "schedule_final_value",
    "sample_probs",
    "schedule_value",
    "importance_weights",
    "log_importance_weights",
    "unitwise_norm",
]

FLOAT32_EPS = float(torch.finfo(torch.float32).eps)  # ~1.19e-7, the clamp used on every probability


# --------------------------------------------------------------------------------------------------
# Categorical helpers


def clamp_log_prob(log_p: torch.Tensor) -> torch.Tensor:
    """Clamp log-probabilities to ``[log eps, log(1 - eps)]`` (probabilities to ``[eps, 1 - eps]``)."""
    return log_p.clamp(math.log(FLOAT32_EPS), math.log1p(-FLOAT32_EPS))


def categorical_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Normalized log-probabilities with probabilities clamped to ``[eps, 1 - eps]`` (float32).

    Clamping bounds every per-token log-probability below by ``log(eps) ~ -15.94`` so that one
    near-impossible token cannot produce an infinite ``log q`` (SPEC 4.3).

    Args:
        logits: ``(..., V)`` unnormalized logits, any float dtype.
    Returns:
        ``(..., V)`` float32 log-probabilities.
    """
    return clamp_log_prob(F.log_softmax(logits.float(), dim=-1))


def categorical_entropy(log_probs: torch.Tensor) -> torch.Tensor:
    """Entropy ``-sum_v p log p`` in nats over the last dim: ``(..., V) -> (...)``."""
    return -(log_probs.exp() * log_probs).sum(-1)


def gumbel_max_sample(log_probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Exact categorical sample by the Gumbel-max trick: ``(..., V) -> (...)`` int64.

    Draws one uniform per entry from ``generator`` (reproducible, but V draws per sample).
    """
    u = torch.rand(log_probs.shape, generator=generator, device=log_probs.device, dtype=torch.float32)
    gumbel = -torch.log(-torch.log(u.clamp_(FLOAT32_EPS, 1.0 - FLOAT32_EPS)))
    return (log_probs.float() + gumbel).argmax(-1)


def categorical_sample(log_probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Exact categorical sample by inverting the CDF: ``(..., V) -> (...)`` int64. See :func:`sample_probs`."""
    return sample_probs(log_probs.float().exp(), generator)


def sample_probs(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Exact categorical sample from (possibly unnormalized) probabilities ``(..., V) -> (...)`` int64.

    Inverts the CDF with one uniform draw per sample (Gumbel-max needs V), several times faster on CPU.
    Returns the first index whose cumulative mass exceeds u, so a zero-probability entry is never drawn.
    """
    cdf = probs.float().cumsum(-1)  # (..., V)
    u = torch.rand((*cdf.shape[:-1], 1), generator=generator, device=cdf.device) * cdf[..., -1:]  # (..., 1)
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_max(cdf.shape[-1] - 1)


# --------------------------------------------------------------------------------------------------
# DAPS importance weights, ESS and the eta loss (paper Eq. 5-8)


def log_importance_weights(
    log_q: torch.Tensor,
    rewards: torch.Tensor,
    eta: torch.Tensor | float,
    beta: torch.Tensor | float,
    baseline: str = "logsumexp",
) -> torch.Tensor:
    """Unnormalized log importance weights ``log w = (A - beta * log_q) / (eta + beta)`` (Eq. 5-6).

    ``A = rewards - baseline`` with the baseline taken over the K samples of each datapoint. Both
    choices of baseline give the same normalized weights (a per-datapoint shift cancels in the
    softmax over K); the baseline only keeps the exponent in a sane range.

    Args:
        log_q: ``(K, B)`` encoder log-probabilities ``log q_theta(z_k | x_b)`` (summed over tokens).
        rewards: ``(K, B)`` rewards, here ``log p(x_b | z_k)``.
        eta: trust-region multiplier (scalar tensor, may carry gradient), eta > 0.
        beta: entropy weight (scalar), beta >= 0.
        baseline: ``"logsumexp"`` (paper) or ``"mean"``.
    Returns:
        ``(K, B)`` float32 unnormalized log weights.
    """
    if log_q.shape != rewards.shape or log_q.dim() != 2:
        raise ValueError(f"log_q and rewards must both be (K, B); got {tuple(log_q.shape)} and {tuple(rewards.shape)}")
    rewards = rewards.float()
    if baseline == "logsumexp":
        advantages = rewards - torch.logsumexp(rewards, dim=0, keepdim=True)  # (K, B)
    elif baseline == "mean":
        advantages = rewards - rewards.mean(dim=0, keepdim=True)  # (K, B)
    else:
        raise ValueError(f"unknown baseline {baseline!r}; choose 'logsumexp' or 'mean'")
    return (advantages - beta * log_q.float()) / (eta + beta)


def importance_weights(
    log_q: torch.Tensor,
    rewards: torch.Tensor,
    eta: torch.Tensor | float,
    beta: torch.Tensor | float,
    baseline: str = "logsumexp",
) -> torch.Tensor:
    """Self-normalized importance weights ``w_k = q*(z_k|x) / q_theta(z_k|x)`` over the K samples.

    ``q* ∝ q_theta * exp((A - beta log q_theta) / (eta + beta))`` (paper Eq. 5); with samples drawn
    from ``q_theta`` the weight is ``exp((A - beta log q) / (eta + beta))``, normalized over K (Eq. 6).

    Args: see :func:`log_importance_weights`. Returns: ``(K, B)`` float32, non-negative, each column
    sums to one.
    """
    return torch.softmax(log_importance_weights(log_q, rewards, eta, beta, baseline), dim=0)


def effective_sample_size(weights: torch.Tensor) -> torch.Tensor:
    """Per-datapoint effective sample size ``(sum_k w)^2 / sum_k w^2`` (paper Eq. 8): ``(K, B) -> (B,)``.

    Equals ``1 / sum_k w^2`` for normalized weights; lies in ``[1, K]``.
    """
    weights = weights.float()
    return weights.sum(0).square() / weights.square().sum(0)


def eta_loss(ess: torch.Tensor, num_samples: int, ess_target: float) -> torch.Tensor:
    """Trust-region loss ``(mean_b ESS_b - K * ess_target)^2`` (scalar); ``ess_target`` is a fraction of K."""
    return (ess.mean() - num_samples * ess_target).square()


# --------------------------------------------------------------------------------------------------
# Schedules (beta, and later temperatures / learning rates). Values for a given optimizer step.


def exp_decay_schedule(step: int, init: float, end: float, num_steps: int, end_pct: float = 1.0) -> float:
    """Per-step exponential decay from ``init`` to ``end`` over ``floor(num_steps * end_pct)`` steps,
    then held at ``end`` (SPEC 6.1, ``auto_exp_decay``).

    ``end`` is clipped into ``[eps, init - eps]`` as in the original, so a "constant" 1 -> 1 schedule
    decays microscopically.
    """
    if init <= 2 * FLOAT32_EPS:
        raise ValueError(f"exp_decay schedule needs init > 2*eps, got {init}")
    end = min(max(end, FLOAT32_EPS), init - FLOAT32_EPS)
    decay_steps = max(int(num_steps * end_pct), 1)
    rate = (end / init) ** (1.0 / decay_steps)
    return max(init * rate**step, end)


def cosine_schedule(step: int, init: float, end: float, num_steps: int) -> float:
    """Half-cosine from ``init`` at step 0 to ``end`` at ``num_steps``, then held."""
    t = min(max(step, 0), num_steps) / max(num_steps, 1)
    return end + (init - end) * 0.5 * (1.0 + math.cos(math.pi * t))


def constant_schedule(step: int, value: float) -> float:
    """The same value at every step."""
    return value


# --------------------------------------------------------------------------------------------------
# Adaptive (unit-wise) gradient clipping, SPEC 6.3 (Brock et al. 2021, "High-Performance Large-Scale
# Image Recognition Without Normalization", https://arxiv.org/abs/2102.06171).


def unitwise_norm(t: torch.Tensor, dims: tuple[int, ...] | None) -> torch.Tensor:
    """L2 norm over ``dims`` (kept for broadcasting); ``None`` means the whole tensor."""
    if dims is None or t.dim() <= 1:
        return t.float().norm().reshape([1] * t.dim())
    return t.float().square().sum(dim=dims, keepdim=True).sqrt()


def adaptive_grad_clip(
    grad: torch.Tensor,
    param: torch.Tensor,
    dims: tuple[int, ...] | None,
    clipping: float = 1.0,
    eps: float = 1e-3,
) -> torch.Tensor:
    """Rescale each unit of ``grad`` whose norm exceeds ``clipping * max(|param unit|, eps)``.

    A "unit" is the slice left after reducing over ``dims`` (for a Linear weight ``(out, in)``,
    ``dims=(1,)``: one unit per output feature). Returns a new tensor of ``grad``'s shape.
    """
    max_norm = unitwise_norm(param, dims).clamp_min(eps) * clipping
    grad_norm = unitwise_norm(grad, dims)
    scale = torch.where(grad_norm > max_norm, max_norm / grad_norm.clamp_min(1e-6), torch.ones_like(grad_norm))
    return (grad.float() * scale).to(grad.dtype)


def schedule_value(kind: str, step: int, init: float, end: float, num_steps: int, end_pct: float = 1.0) -> float:
    """Value of a named schedule (``exp_decay``, ``cosine``, ``constant``) at optimizer step ``step``."""
    if kind == "exp_decay":
        return exp_decay_schedule(step, init, end, num_steps, end_pct)
    if kind == "cosine":
        return cosine_schedule(step, init, end, max(int(num_steps * end_pct), 1))
    if kind == "constant":
        return constant_schedule(step, init)
    raise ValueError(f"unknown schedule kind {kind!r}; choose exp_decay, cosine or constant")


def schedule_final_value(kind: str, init: float, end: float) -> float:
    """The value a schedule settles at (used for the beta-ELBO, SPEC 2)."""
    if kind == "exp_decay":
        return min(max(end, FLOAT32_EPS), init - FLOAT32_EPS)
    return init if kind == "constant" else end


def kl_to_uniform(token_entropy: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """KL(q || uniform) summed over tokens from per-token entropies: ``(..., T) -> (...)``, clipped at 0.

    For an autoregressive q with one sampled prefix this is the single-sample estimate of the sequence KL.
    """
    return (math.log(vocab_size) - token_entropy).sum(-1).clamp_min(0.0)
