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
    "adaptive_kl_coefficient",
    "categorical_kl",
    "gaussian_kl_standard_normal",
    "leave_one_out_baseline",
    "ppo_clipped_loss",
    "FLOAT32_EPS",
    "adaptive_grad_clip",
    "categorical_log_probs",
    "exact_log_probs",
    "categorical_sample",
    "clamp_log_prob",
    "token_log_prob",
    "categorical_entropy",
    "conditional_gumbel",
    "gumbel_rao_st",
    "gumbel_rao_surrogate",
    "gumbel_softmax",
    "gumbel_softmax_st",
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
    "empirical_perplexity",
    "fsq_bound",
    "fsq_codes_to_indices",
    "fsq_indices_to_codes",
    "fsq_quantize",
    "vq_nearest",
]

FLOAT32_EPS = float(torch.finfo(torch.float32).eps)  # ~1.19e-7, the clamp used on every probability


def is_integer_dtype(dtype: torch.dtype) -> bool:
    """Whether ``dtype`` holds integers (any width, signed or not): codes and labels must; a float would be
    truncated (2.7 read as code 2) and a bool read as codes 0 / 1."""
    return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)


# --------------------------------------------------------------------------------------------------
# Categorical helpers


def clamp_log_prob(log_p: torch.Tensor) -> torch.Tensor:
    """Clamp log-probabilities to ``[log eps, log(1 - eps)]`` (probabilities to ``[eps, 1 - eps]``)."""
    return log_p.clamp(math.log(FLOAT32_EPS), math.log1p(-FLOAT32_EPS))


def categorical_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Normalized log-probabilities with probabilities clamped to ``[eps, 1 - eps]`` (float32).

    Clamping bounds every per-token log-probability below by ``log(eps) ~ -15.94`` so that one
    near-impossible token cannot produce an infinite ``log q`` (original: distributions/categorical.py).

    Args:
        logits: ``(..., V)`` unnormalized logits, any float dtype.
    Returns:
        ``(..., V)`` float32 log-probabilities.
    """
    return clamp_log_prob(F.log_softmax(logits.float(), dim=-1))


def exact_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Normalized log-probabilities without the clamp of :func:`categorical_log_probs` (float32): what the priors
    score and sample, so that a near-impossible token stays near-impossible."""
    return F.log_softmax(logits.float(), dim=-1)


def token_log_prob(
    logits: torch.Tensor, tokens: torch.Tensor, clamp: bool = True, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """The log-probabilities of given tokens: ``logits (..., V)``, ``tokens (...)`` int64 -> ``(...)`` float32.

    The entries of :func:`categorical_log_probs` (``clamp``) or :func:`exact_log_probs` at ``tokens``, values and
    gradients, with only the gathered entries clamped: no elementwise clamp (and its backward) over all V.
    With ``rows (N,)`` int64, ``logits (M, V)`` are shared: token ``i`` of ``tokens (N,)`` is scored under
    ``logits[rows[i]]`` (each row's softmax computed once, however many tokens read it).
    """
    log_softmax = F.log_softmax(logits.float(), dim=-1)
    if rows is None:
        log_p = log_softmax.gather(-1, tokens[..., None]).squeeze(-1)
    else:
        log_p = log_softmax.view(-1).index_select(0, rows * logits.shape[-1] + tokens)  # (N,)
    return clamp_log_prob(log_p) if clamp else log_p


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


def sample_probs(
    probs: torch.Tensor,
    generator: torch.Generator | None = None,
    uniforms: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Exact categorical sample from (possibly unnormalized) probabilities ``(..., V) -> (...)`` int64.

    Inverts the CDF with one uniform draw per sample (Gumbel-max needs V), several times faster on CPU.
    Returns the first index whose cumulative mass exceeds u, so a zero-probability entry is never drawn (and
    tokens of mass 1e-13 were not, in 200,000 draws, on the CPU and on an H100: tests/test_known_answers_10.py,
    tests/test_gpu.py). ``uniforms (..., 1)`` in [0, 1): given instead of drawn from ``generator``; ``out (...)``
    int64: written in place and returned.
    """
    cdf = probs.float().cumsum(-1)  # (..., V)
    if uniforms is None:
        uniforms = torch.rand((*cdf.shape[:-1], 1), generator=generator, device=cdf.device)
    u = uniforms * cdf[..., -1:]  # (..., 1)
    drawn = torch.searchsorted(cdf, u, right=True, out=None if out is None else out[..., None])  # (..., 1)
    return drawn.squeeze(-1).clamp_max_(cdf.shape[-1] - 1)


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
    # Plain numbers are checked here; tensors (training's learned eta) are not read back, which would sync a GPU.
    if isinstance(eta, (int, float)) and not eta > 0:
        raise ValueError(f"eta must be > 0, got {eta}")
    if isinstance(beta, (int, float)) and not beta >= 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
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


def resample_indices(weights: torch.Tensor, uniforms: torch.Tensor, scheme: str, m: int) -> torch.Tensor:
    """Draw m of K samples per input with probabilities ``weights (K, B)`` (self-normalized over K): ``(m, B)``
    indices in ``[0, K)``.

    ``multinomial``: ``uniforms (m, B)``, m independent inverse-CDF draws. ``systematic``: ``uniforms (1, B)``, one
    uniform u per input and the m points (u + j) / m, j < m; every sample k is then drawn floor(m w_k) or
    ceil(m w_k) times, and m w_k times in expectation, as with multinomial draws but with less spread. Either way
    ``E[(1/m) sum_j f(z_{i_j})] = sum_k w_k f(z_k)``: resampled weighted maximum likelihood is unbiased.
    """
    # Positions and the CDF in float64: in float32, (u + m - 1) / m rounds up to 1 for u = 1 - 2^-24 (the largest
    # uniform torch draws), which would pick the last sample whatever its weight.
    if scheme == "systematic":
        offsets = torch.arange(m, device=weights.device, dtype=torch.float64)[:, None]  # (m, 1)
        positions = (uniforms[:1].double() + offsets) / m  # (m, B), each < 1
    elif scheme == "multinomial":
        positions = uniforms.double()  # (m, B)
    else:
        raise ValueError(f"unknown resampling scheme {scheme!r}")
    cdf = weights.float().cumsum(0).transpose(0, 1).contiguous()  # (B, K)
    cdf = (cdf / cdf[:, -1:]).double()  # exactly 1 at the end
    chosen = torch.searchsorted(cdf, positions.transpose(0, 1).contiguous(), right=True)  # (B, m)
    return chosen.clamp_max(weights.shape[0] - 1).transpose(0, 1)  # (m, B)


def effective_sample_size(weights: torch.Tensor) -> torch.Tensor:
    """Per-datapoint effective sample size ``(sum_k w)^2 / sum_k w^2`` (paper Eq. 8): ``(K, B) -> (B,)``.

    Equals ``1 / sum_k w^2`` for normalized weights; lies in ``[1, K]``.
    """
    if weights.dim() != 2:
        raise ValueError(f"weights must be (K, B); got {tuple(weights.shape)}")
    weights = weights.float()
    return weights.sum(0).square() / weights.square().sum(0)


def eta_loss(ess: torch.Tensor, num_samples: int, ess_target: float) -> torch.Tensor:
    """Trust-region loss ``(mean_b ESS_b - K * ess_target)^2`` (scalar); ``ess_target`` is a fraction of K,
    in ``(0, 1]``."""
    if num_samples < 1 or not 0 < ess_target <= 1:
        raise ValueError(f"eta_loss needs num_samples >= 1 and 0 < ess_target <= 1, got {num_samples} and {ess_target}")
    return (ess.mean() - num_samples * ess_target).square()


# --------------------------------------------------------------------------------------------------
# Schedules (beta, and later temperatures / learning rates). Values for a given optimizer step.


EXP_DECAY_MIN_INIT = 2 * FLOAT32_EPS
"""The bound an ``exp_decay`` schedule's ``init`` must exceed: ``end`` is clipped into ``[eps, init - eps]``."""


def exp_decay_schedule(step: int, init: float, end: float, num_steps: int, end_pct: float = 1.0) -> float:
    """Per-step exponential decay from ``init`` to ``end`` over ``floor(num_steps * end_pct)`` steps,
    then held at ``end`` (original: utils/scheduler.py, ``auto_exp_decay``).

    ``end`` is clipped into ``[eps, init - eps]`` as in the original, so a "constant" 1 -> 1 schedule
    decays microscopically.
    """
    if init <= EXP_DECAY_MIN_INIT:
        raise ValueError(f"exp_decay schedule needs init > 2*eps, got {init}")
    end = min(max(end, FLOAT32_EPS), init - FLOAT32_EPS)
    decay_steps = max(int(num_steps * end_pct), 1)
    rate = (end / init) ** (1.0 / decay_steps)
    return max(init * rate ** max(step, 0), end)  # held at init before step 0, as the cosine schedule


def cosine_schedule(step: int, init: float, end: float, num_steps: int) -> float:
    """Half-cosine from ``init`` at step 0 to ``end`` at ``num_steps``, then held."""
    t = min(max(step, 0), num_steps) / max(num_steps, 1)
    return end + (init - end) * 0.5 * (1.0 + math.cos(math.pi * t))


def constant_schedule(step: int, value: float) -> float:
    """The same value at every step."""
    return value


# --------------------------------------------------------------------------------------------------
# Adaptive (unit-wise) gradient clipping, as optax's adaptive_grad_clip in the original (Brock et al. 2021,
# "High-Performance Large-Scale Image Recognition Without Normalization", https://arxiv.org/abs/2102.06171).


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


def _unknown_schedule(kind: str) -> ValueError:
    return ValueError(f"unknown schedule kind {kind!r}; choose exp_decay, cosine or constant")


def schedule_value(kind: str, step: int, init: float, end: float, num_steps: int, end_pct: float = 1.0) -> float:
    """Value of a named schedule (``exp_decay``, ``cosine``, ``constant``) at optimizer step ``step``."""
    if kind == "exp_decay":
        return exp_decay_schedule(step, init, end, num_steps, end_pct)
    if kind == "cosine":
        return cosine_schedule(step, init, end, max(int(num_steps * end_pct), 1))
    if kind == "constant":
        return constant_schedule(step, init)
    raise _unknown_schedule(kind)


def schedule_final_value(kind: str, init: float, end: float) -> float:
    """The value a schedule settles at (used for the beta-ELBO, original: models/base_vae.py)."""
    if kind == "exp_decay":
        return min(max(end, FLOAT32_EPS), init - FLOAT32_EPS)
    if kind == "cosine":
        return end
    if kind == "constant":
        return init
    raise _unknown_schedule(kind)


def kl_to_uniform(token_entropy: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """KL(q || uniform) summed over tokens from per-token entropies: ``(..., T) -> (...)``, clipped at 0.

    For an autoregressive q with one sampled prefix this is the single-sample estimate of the sequence KL.
    """
    return (math.log(vocab_size) - token_entropy).sum(-1).clamp_min(0.0)


# --------------------------------------------------------------------------------------------------
# Relaxed categorical samples with straight-through gradients (original: models/gumbel.py).
# Gumbel-Softmax: Jang, Gu & Poole 2017, "Categorical Reparameterization with Gumbel-Softmax",
# https://arxiv.org/abs/1611.01144. Gumbel-Rao (GR-MCK): Paulus, Maddison & Krause 2021,
# "Rao-Blackwellizing the Straight-Through Gumbel-Softmax Gradient Estimator", https://arxiv.org/abs/2010.04838.


def _straight_through(index: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """Forward: exactly ``onehot(index)``; backward: the gradient of ``soft``. ``(...), (..., V) -> (..., V)``.

    ``hard + (soft - sg(soft))`` rather than ``hard + soft - sg(soft)``: the bracket is exactly 0, so the
    forward value is an exact one-hot (the other order can round 1 + s - s away from 1).
    """
    # scatter, not F.one_hot: one_hot reads the indices' range on the host, which a CUDA graph cannot hold
    hard = torch.zeros_like(soft).scatter_(-1, index[..., None], 1.0)  # (..., V)
    return hard + (soft - soft.detach())


def _check_relaxation(temperature: float | torch.Tensor, num_samples: int = 1) -> None:
    # a tensor temperature is a validated schedule's value on the device (daps.graphed): not read back here
    if not isinstance(temperature, torch.Tensor) and not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")


def gumbel_softmax(
    log_probs: torch.Tensor, temperature: float | torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """Relaxed one-hot sample ``softmax((log_probs + g) / tau)``, ``g ~ Gumbel(0, 1)`` (Jang et al. 2017, Eq. 1).

    Args:
        log_probs: ``(..., V)`` normalized log-probabilities (any float dtype; the noise takes the same dtype).
        temperature: tau > 0.
        generator: source of the V uniforms per token (``None``: torch's default generator).
    Returns:
        ``(..., V)`` soft sample on the simplex, differentiable in ``log_probs``.
    """
    _check_relaxation(temperature)
    u = torch.rand(log_probs.shape, generator=generator, device=log_probs.device, dtype=log_probs.dtype)
    gumbel = -torch.log(-torch.log(u.clamp_(FLOAT32_EPS, 1.0 - FLOAT32_EPS)))  # (..., V)
    return torch.softmax((log_probs + gumbel) / temperature, dim=-1)


def gumbel_softmax_st(
    log_probs: torch.Tensor, temperature: float | torch.Tensor, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Straight-through Gumbel-Softmax (original: models/gumbel.py): ``index = argmax y_soft``,
    token ``y_hard + y_soft - sg(y_soft)``.

    The index is an exact sample of ``Cat(exp(log_probs))`` (Gumbel-max); the token is its one-hot in the
    forward pass and carries the gradient of :func:`gumbel_softmax` (same draws) in the backward pass.

    Args: see :func:`gumbel_softmax`.
    Returns:
        ``index (...)`` int64 and ``onehot (..., V)`` in ``log_probs``' dtype.
    """
    soft = gumbel_softmax(log_probs, temperature, generator)  # (..., V)
    index = soft.argmax(-1)  # (...)
    return index, _straight_through(index, soft)


def conditional_gumbel(log_probs: torch.Tensor, index: torch.Tensor, exp_noise: torch.Tensor) -> torch.Tensor:
    """Perturbed logits ``G = log_probs + Gumbel noise`` conditioned on ``argmax G = index`` (original:
    distributions/categorical.py).

    With ``E ~ Exp(1)`` and ``Z = sum_v exp(l_v)`` (Paulus et al. 2021, Appendix; eps = float32 eps):
    ``G_I = -log(E_I + eps) + log(Z + eps)`` (the max is ``log Z + Gumbel``) and, for ``j != I``,
    ``G_j = -log(E_j exp(-l_j) + E_I / Z + eps)`` (a Gumbel truncated at ``G_I``).

    Args:
        log_probs: ``(..., V)`` log-probabilities ``l``.
        index: ``(...)`` int64, the category ``I`` that won the Gumbel-max.
        exp_noise: ``(k, ..., V)`` independent Exp(1) draws ``E``, one set per conditional sample.
    Returns:
        ``(k, ..., V)`` conditional perturbed logits, differentiable in ``log_probs`` (through ``Z`` and
        ``exp(-l_j)``).
    """
    z = log_probs.exp().sum(-1, keepdim=True)  # (..., 1)
    exp_index = exp_noise.gather(-1, index[..., None].expand(*exp_noise.shape[:-1], 1))  # (k, ..., 1)
    top = -torch.log(exp_index + FLOAT32_EPS) + torch.log(z + FLOAT32_EPS)  # (k, ..., 1)
    rest = -torch.log(exp_noise * torch.exp(-log_probs) + exp_index / z + FLOAT32_EPS)  # (k, ..., V)
    is_index = index[..., None] == torch.arange(log_probs.shape[-1], device=index.device)  # (..., V); no host read
    return torch.where(is_index, top, rest)  # (k, ..., V)


def gumbel_rao_surrogate(
    log_probs: torch.Tensor,
    index: torch.Tensor,
    exp_noise: torch.Tensor,
    temperature: float | torch.Tensor,
    stop_gradient: bool = False,
) -> torch.Tensor:
    """The Rao-Blackwellized soft sample ``s = mean_k softmax(G_k / tau)``, ``G_k`` from
    :func:`conditional_gumbel` (Paulus et al. 2021, Eq. 9): a Monte Carlo estimate of ``E[y_soft | index]``.

    Args:
        log_probs, index, exp_noise: as in :func:`conditional_gumbel` (``exp_noise`` is ``(k, ..., V)``).
        temperature: tau > 0.
        stop_gradient: ``False``: differentiate ``G``'s whole dependence on ``log_probs`` (the original DAPS
            code). ``True``: ``G = l + sg(G - l)``, so only the explicit ``l`` carries gradient, as in Paulus
            et al.'s reference code; then ``E_k[grad]`` equals the straight-through Gumbel-Softmax's.
    Returns:
        ``(..., V)``, same forward value either way.
    """
    _check_relaxation(temperature, exp_noise.shape[0])
    if stop_gradient:
        with torch.no_grad():
            noise = conditional_gumbel(log_probs, index, exp_noise) - log_probs  # (k, ..., V)
        perturbed = log_probs + noise  # (k, ..., V)
    else:
        perturbed = conditional_gumbel(log_probs, index, exp_noise)  # (k, ..., V)
    return torch.softmax(perturbed / temperature, dim=-1).mean(0)  # (..., V)


def gumbel_rao_st(
    log_probs: torch.Tensor,
    temperature: float | torch.Tensor,
    num_samples: int,
    generator: torch.Generator | None,
    stop_gradient: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gumbel-Rao straight-through estimator, GR-MCK (Paulus et al. 2021; original: distributions/categorical.py).

    Draws the hard index ``I`` by Gumbel-max, then ``num_samples`` (k) conditional Gumbel perturbations
    given ``I``; the token is ``onehot(I) + s - sg(s)`` with ``s`` from :func:`gumbel_rao_surrogate`.
    Random draws from ``generator``, in this order: the index (:func:`gumbel_max_sample`), then ``E`` of shape
    ``(k, ..., V)`` by ``Tensor.exponential_`` in ``log_probs``' dtype. Memory: k x ``log_probs``.

    Args:
        log_probs: ``(..., V)`` normalized log-probabilities.
        temperature: tau > 0.
        num_samples: k >= 1, conditional draws averaged per token.
        generator: source of randomness (``None``: torch's default generator).
        stop_gradient: see :func:`gumbel_rao_surrogate`.
    Returns:
        ``index (...)`` int64 and ``onehot (..., V)``: exactly ``onehot(index)`` forward, the surrogate's
        gradient backward.
    """
    _check_relaxation(temperature, num_samples)
    index = gumbel_max_sample(log_probs.detach(), generator)  # (...)
    exp_noise = torch.empty((num_samples, *log_probs.shape), dtype=log_probs.dtype, device=log_probs.device)
    exp_noise.exponential_(generator=generator)  # (k, ..., V)
    soft = gumbel_rao_surrogate(log_probs, index, exp_noise, temperature, stop_gradient)  # (..., V)
    return index, _straight_through(index, soft)


# --------------------------------------------------------------------------------------------------
# Policy-gradient and Gaussian baselines (original: models/ppo.py, models/vae.py). REINFORCE with a leave-one-out
# baseline: Williams 1992, "Simple Statistical Gradient-Following Algorithms for Connectionist Reinforcement
# Learning"; Kool, van Hoof & Welling 2019, "Buy 4 REINFORCE Samples, Get a Baseline for Free!",
# https://openreview.net/forum?id=r1lgTGL5DE. PPO: Schulman et al. 2017, "Proximal Policy Optimization
# Algorithms", https://arxiv.org/abs/1707.06347. Gaussian KL: Kingma & Welling 2014, "Auto-Encoding
# Variational Bayes", https://arxiv.org/abs/1312.6114, Appendix B.


def leave_one_out_baseline(rewards: torch.Tensor) -> torch.Tensor:
    """Each sample's baseline is the mean reward of the *other* K - 1 samples of its input (Kool et al. 2019).

    ``b_k`` does not depend on ``z_k``, so ``(1/K) sum_k (r_k - b_k) grad log q(z_k)`` stays an unbiased
    gradient estimate; the advantages ``r_k - b_k = K / (K - 1) (r_k - mean_j r_j)`` sum to zero over K.

    Args:
        rewards: ``(K, B)`` with K >= 2 (any leading sample axis 0).
    Returns:
        ``(K, B)`` baselines, computed around the mean to keep float32 cancellation small for large rewards.
    """
    k = rewards.shape[0]
    if k < 2:
        raise ValueError(f"a leave-one-out baseline needs at least 2 samples, got K={k}")
    mean = rewards.mean(0, keepdim=True)  # (1, B)
    return mean + (mean - rewards) / (k - 1)


def categorical_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``KL(p || q) = sum_v p_v (log p_v - log q_v)`` over the last dim, in nats, clipped below at 0.

    Args:
        log_p, log_q: ``(..., V)`` normalized (e.g. clamped, :func:`categorical_log_probs`) log-probabilities.
    Returns:
        ``(...)``, one KL per token; differentiable in both arguments.
    """
    return (log_p.exp() * (log_p - log_q)).sum(-1).clamp_min(0.0)


def ppo_clipped_loss(log_ratio: torch.Tensor, advantages: torch.Tensor, clip: float) -> torch.Tensor:
    """PPO's clipped surrogate, negated to a loss: ``-min(r A, clip(r, 1 - eps, 1 + eps) A)``, ``r = exp(log_ratio)``
    (Schulman et al. 2017, Eq. 7), elementwise.

    The gradient vanishes wherever clipping is active in the direction the advantage pushes (``r > 1 + eps``
    with ``A > 0``, ``r < 1 - eps`` with ``A < 0``) and is ``-A grad r`` elsewhere.

    Args:
        log_ratio: ``log q_new(z|x) - log q_old(z|x)``, any shape, differentiable.
        advantages: same shape (treated as constants by the caller: pass them detached).
        clip: eps > 0.
    Returns:
        The per-element loss, same shape.
    """
    if not clip > 0:
        raise ValueError(f"clip must be positive, got {clip}")
    ratio = log_ratio.exp()
    return -torch.minimum(ratio * advantages, ratio.clamp(1.0 - clip, 1.0 + clip) * advantages)


def adaptive_kl_coefficient(
    coeff: torch.Tensor | float,
    kl: torch.Tensor | float,
    target: float,
    scale: float,
    gain: float,
    min_coeff: float,
    max_coeff: float,
) -> torch.Tensor:
    """PPO's adaptive KL penalty weight (Schulman et al. 2017, Sec. 4; original: models/ppo.py), without a host sync.

    ``coeff / gain`` if ``kl < target / scale``, ``coeff * gain`` if ``kl > target * scale``, else unchanged;
    then clipped to ``[min_coeff, max_coeff]``.

    Args:
        coeff: the current weight (scalar).
        kl: the measured ``KL(q_old || q_new)``, batch mean (scalar).
    Returns:
        The next weight, a float32 scalar tensor.
    """
    device = coeff.device if torch.is_tensor(coeff) else kl.device if torch.is_tensor(kl) else "cpu"
    coeff = torch.as_tensor(coeff, dtype=torch.float32, device=device)
    kl = torch.as_tensor(kl, dtype=torch.float32, device=device)
    new = torch.where(kl < target / scale, coeff / gain, torch.where(kl > target * scale, coeff * gain, coeff))
    return new.clamp(min_coeff, max_coeff)


def gaussian_kl_standard_normal(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """Closed-form ``KL(N(mean, diag exp(log_var)) || N(0, I))`` summed over the last dim (Kingma & Welling
    2014, Appendix B): ``0.5 sum_d (exp(log_var) - 1 - log_var + mean^2)``, in nats, clipped below at 0.

    ``expm1`` keeps ``exp(v) - 1 - v`` accurate (non-negative) for a posterior close to the prior.

    Args:
        mean, log_var: ``(..., D)``.
    Returns:
        ``(...)``.
    """
    return 0.5 * (torch.expm1(log_var) - log_var + mean.square()).sum(-1).clamp_min(0.0)


# --------------------------------------------------------------------------------------------------
# Quantizers (original: models/fsq.py, models/vqvae.py). FSQ: Mentzer, Minnen, Agustsson & Tschannen 2024,
# "Finite Scalar Quantization: VQ-VAE Made Simple", https://arxiv.org/abs/2309.15505. VQ: van den Oord, Vinyals &
# Kavukcuoglu 2017, "Neural Discrete Representation Learning", https://arxiv.org/abs/1711.00937.


def _fsq_levels(
    levels: tuple[int, ...], x: torch.Tensor, dtype: torch.dtype | None = None, per_dim: bool = True
) -> torch.Tensor:
    """``levels`` as a ``(d,)`` tensor on ``x``'s device, after checking them and (``per_dim``) that ``x``'s last
    dim has one entry per level."""
    if len(levels) == 0 or any(int(level) != level or level < 2 for level in levels):
        raise ValueError(f"FSQ levels must be one or more integers >= 2, got {tuple(levels)}")
    if per_dim and (x.dim() == 0 or x.shape[-1] != len(levels)):
        raise ValueError(f"the input's last dim must be len(levels) = {len(levels)}, got shape {tuple(x.shape)}")
    return _constant(tuple(int(level) for level in levels), dtype or x.dtype, x.device)


def _fsq_basis(levels: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Big-endian mixed-radix place values ``(d,)`` int64: ``basis_i = prod_{j > i} L_j``."""
    return _constant(tuple(math.prod(levels[i + 1 :]) for i in range(len(levels))), torch.long, device)


_CONSTANTS: dict[tuple, torch.Tensor] = {}


def _constant(values: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small constant tensor, made once per device: made at every call, it would be a copy from host memory in
    every training step, which a CUDA graph of the step cannot hold (:mod:`daps.graphed`). Read-only; never
    evicted (a recorded graph keeps reading its memory)."""
    key = (values, dtype, torch.device(device))
    if key not in _CONSTANTS:
        with torch.inference_mode(False):  # a normal tensor even if first made under inference mode
            _CONSTANTS[key] = torch.tensor(values, dtype=dtype, device=device)
    return _CONSTANTS[key]


def fsq_bound(z: torch.Tensor, levels: tuple[int, ...], eps: float = 1e-3) -> torch.Tensor:
    """Squash each latent dim into the range of its L levels (FSQ paper, App. A.1): ``(..., d) -> (..., d)``.

    ``bound(z) = tanh(z + shift) * half_l - offset`` with ``half_l = (L - 1)(1 + eps) / 2``, ``offset = 1/2``
    for even L (0 for odd) and ``shift = atanh(offset / half_l)``, so ``bound(0) = 0`` and ``round(bound(z))``
    takes exactly the L integers ``-(L // 2) ... L - 1 - L // 2`` (L=8: -4..3; L=5: -2..2). ``half_l`` is capped
    at ``(L - 1) / 2 + 1/4``, which only levels above ``1 + 1 / (2 eps)`` (501 for the default eps) reach: beyond
    it the range would round to one value past each end.

    NOTE(paper): the original DAPS code (and the FSQ paper's first listing) uses ``tan`` for the shift and
    ``half_l = (L - 1)(1 - eps) / 2``. ``atanh`` is the inverse the listing meant (confirmed by the FSQ author,
    lucidrains/vector-quantize-pytorch#94; tan and atanh differ by ~1e-5 for L >= 5), and ``1 + eps`` keeps
    ``offset / half_l < 1`` so that atanh is defined for L = 2. The bounded range differs by 0.2 %; the set
    of codes does not.
    """
    z = z.to(torch.promote_types(z.dtype, torch.float32))  # never round in half precision
    lv = _fsq_levels(levels, z)  # (d,)
    half_l = torch.minimum((lv - 1) * (1 + eps) / 2, (lv - 1) / 2 + 0.25)
    offset = (lv % 2 == 0).to(z.dtype) * 0.5
    shift = torch.atanh(offset / half_l)
    return torch.tanh(z + shift) * half_l - offset


def fsq_quantize(z: torch.Tensor, levels: tuple[int, ...], eps: float = 1e-3) -> torch.Tensor:
    """FSQ codes of unbounded latents ``z (..., d)``: ``round(bound(z)) / (L // 2)``, values in [-1, 1], float32
    (float64 for float64 input).

    The rounding is straight-through (its gradient is the identity). The forward value is exactly the rounded
    grid point divided by ``L // 2``, the same float :func:`fsq_indices_to_codes` returns.
    """
    bounded = fsq_bound(z, levels, eps)  # (..., d), float32 or float64
    half_width = _fsq_levels(levels, bounded) // 2  # (d,)
    # round(b) + (b - sg(b)): forward exactly round(b) (b - b = 0), backward the identity.
    return (bounded.round() + (bounded - bounded.detach())) / half_width


def fsq_codes_to_indices(codes: torch.Tensor, levels: tuple[int, ...]) -> torch.Tensor:
    """Mixed-radix index of each code (big-endian, as the original's models/fsq.py): ``(..., d) -> (...)`` int64 in
    ``[0, prod L)``.

    ``index = sum_i (code_i * (L_i // 2) + L_i // 2) * prod_{j > i} L_j``.
    """
    half_width = _fsq_levels(levels, codes, torch.long) // 2  # (d,)
    digits = (codes.detach() * half_width + half_width).round().long()  # (..., d) in [0, L)
    return (digits * _fsq_basis(levels, codes.device)).sum(-1)


def fsq_indices_to_codes(
    indices: torch.Tensor, levels: tuple[int, ...], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Inverse of :func:`fsq_codes_to_indices`: ``(...) -> (..., d)`` codes in [-1, 1] of ``dtype``."""
    lv = _fsq_levels(levels, indices, torch.long, per_dim=False)  # (d,)
    half_width = lv // 2
    digits = indices[..., None] // _fsq_basis(levels, indices.device) % lv  # (..., d)
    return (digits - half_width).to(dtype) / half_width.to(dtype)


def vq_nearest(z_e: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codebook row in squared Euclidean distance: ``(..., E), (V, E) -> (...)`` int64.

    ``||z - e_v||^2 = ||z||^2 + ||e_v||^2 - 2 z.e_v`` (original: models/vqvae.py) as one matmul; ``||z||^2`` is the same
    for every v and left out of the argmin. No gradient (an index).
    """
    if codebook.dim() != 2 or z_e.shape[-1] != codebook.shape[1]:
        raise ValueError(f"z_e (..., E) and codebook (V, E) disagree: {tuple(z_e.shape)} and {tuple(codebook.shape)}")
    dtype = torch.promote_types(z_e.dtype, torch.float32)
    z = z_e.detach().reshape(-1, z_e.shape[-1]).to(dtype)  # (N, E)
    e = codebook.detach().to(dtype)  # (V, E)
    distances = e.square().sum(-1) - 2 * z @ e.T  # (N, V), minus ||z||^2
    return distances.argmin(-1).view(z_e.shape[:-1])


def empirical_perplexity(indices: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``exp(entropy)`` of the codes' empirical distribution, pooled over all positions: a float32 scalar in
    ``[1, min(indices.numel(), vocab_size)]`` (a tensor, so logging it does not synchronize)."""
    flat = indices.flatten()
    # index_add_, not bincount: on a GPU bincount reads the indices' range on the host (no CUDA graph holds that);
    # float32 sums of ones are exact up to 2^24
    counts = torch.zeros(vocab_size, device=flat.device).index_add_(0, flat, torch.ones(flat.shape, device=flat.device))
    p = counts / counts.sum()
    return torch.exp(-torch.special.xlogy(p, p).sum())
