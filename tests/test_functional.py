"""Properties of the DAPS math and a known-answer test on an enumerable latent space."""

from __future__ import annotations

import math

import pytest
import torch

import daps.functional as DF


def random_inputs(k: int = 8, b: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    log_q = -torch.rand(k, b, generator=g) * 40  # (K, B) sequence log-probs
    rewards = -torch.rand(k, b, generator=g) * 300 - 100  # (K, B) log p(x|z)
    return log_q, rewards


# ---------------------------------------------------------------- importance weights and ESS


@pytest.mark.parametrize("baseline", ["logsumexp", "mean"])
def test_weights_are_a_distribution_over_samples(baseline):
    log_q, rewards = random_inputs()
    w = DF.importance_weights(log_q, rewards, eta=3.0, beta=0.5, baseline=baseline)
    assert w.shape == (8, 5) and w.dtype == torch.float32
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(0), torch.ones(5))


def test_weights_invariant_to_per_datapoint_reward_shift_and_baseline():
    log_q, rewards = random_inputs()
    shift = torch.tensor([1.0, -50.0, 1e3, 0.0, 7.5])  # (B,)
    w = DF.importance_weights(log_q, rewards, eta=2.0, beta=0.1)
    torch.testing.assert_close(DF.importance_weights(log_q, rewards + shift, eta=2.0, beta=0.1), w)
    torch.testing.assert_close(DF.importance_weights(log_q, rewards, eta=2.0, beta=0.1, baseline="mean"), w)


def test_weights_equal_exact_target_ratio_on_enumerated_space():
    """With every z of a small space as a sample, w_k must be q*(z_k)/q(z_k) normalized, where q* is
    computed by enumeration from its definition q* ∝ q^(eta/(eta+beta)) exp(r/(eta+beta))."""
    g = torch.Generator().manual_seed(1)
    log_q = torch.log_softmax(torch.randn(16, generator=g, dtype=torch.float64), 0)  # all 16 codes
    r = torch.randn(16, generator=g, dtype=torch.float64) * 5
    eta, beta = 1.7, 0.3
    log_target = (eta * log_q + r) / (eta + beta)
    target = torch.softmax(log_target, 0)  # q*
    ratio = target / log_q.exp()
    expected = ratio / ratio.sum()
    w = DF.importance_weights(log_q[:, None].float(), r[:, None].float(), eta, beta)[:, 0]
    torch.testing.assert_close(w.double(), expected, rtol=1e-5, atol=1e-7)


def test_ess_bounds_and_extremes():
    k = 8
    assert DF.effective_sample_size(torch.full((k, 3), 1 / k)).tolist() == pytest.approx([k] * 3)
    one_hot = torch.zeros(k, 3)
    one_hot[2] = 1.0
    assert DF.effective_sample_size(one_hot).tolist() == pytest.approx([1.0] * 3)
    log_q, rewards = random_inputs(k=k, b=50)
    ess = DF.effective_sample_size(DF.importance_weights(log_q, rewards, 1.0, 0.2))
    assert ((ess >= 1 - 1e-5) & (ess <= k + 1e-5)).all()
    # Unnormalized weights give the same ESS ((sum w)^2 / sum w^2).
    w = DF.importance_weights(log_q, rewards, 1.0, 0.2)
    torch.testing.assert_close(DF.effective_sample_size(3.7 * w), ess)


def test_ess_increases_with_eta():
    log_q, rewards = random_inputs(b=20, seed=3)
    etas = [0.01, 0.1, 1.0, 10.0, 100.0, 1e4]
    ess = torch.stack([DF.effective_sample_size(DF.importance_weights(log_q, rewards, e, 0.5)) for e in etas])
    assert (ess[1:] >= ess[:-1] - 1e-4).all()
    assert ess[-1].min() > 7.9 and ess[0].max() < 1.5  # near-uniform at large eta, near one-hot at small


def test_eta_loss_gradient_pushes_ess_to_target():
    log_q, rewards = random_inputs(b=32, seed=4)
    k = log_q.shape[0]
    for init_eta, expected_sign in ((100.0, +1), (0.01, -1)):  # ESS too high -> decrease eta, and vice versa
        log_eta = torch.tensor(math.log(init_eta), requires_grad=True)
        ess = DF.effective_sample_size(DF.importance_weights(log_q, rewards, log_eta.exp(), 0.5))
        DF.eta_loss(ess, k, 0.33).backward()
        assert torch.sign(log_eta.grad).item() == expected_sign


def test_weights_bad_shapes_and_baseline():
    with pytest.raises(ValueError, match="baseline"):
        DF.importance_weights(torch.zeros(4, 2), torch.zeros(4, 2), 1.0, 0.1, baseline="median")
    with pytest.raises(ValueError, match=r"\(K, B\)"):
        DF.importance_weights(torch.zeros(4, 2), torch.zeros(4, 3), 1.0, 0.1)


def test_weights_stay_float32_under_autocast():
    log_q, rewards = random_inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        w = DF.importance_weights(log_q.bfloat16(), rewards.bfloat16(), 2.0, 0.5)
        ess = DF.effective_sample_size(w)
    assert w.dtype == torch.float32 and ess.dtype == torch.float32


# ---------------------------------------------------------------- known answer: tabular DAPS


def test_daps_updates_converge_to_entropy_regularized_optimum():
    """T=2, V=4, a tabular autoregressive encoder q(z1) q(z2|z1) and a fixed reward table r(z1, z2).

    The maximizer of E_q[r] + beta H(q) over all distributions on the 16 codes is softmax(r / beta).
    Repeated DAPS steps (sample K codes, self-normalized weights, weighted maximum likelihood, learned
    eta) must reach it.
    """
    torch.manual_seed(0)
    v, k, b, beta = 4, 16, 64, 1.0
    g = torch.Generator().manual_seed(0)
    rewards_table = torch.randn(v, v, generator=g) * 2.0  # (V, V)
    target = torch.softmax(rewards_table.flatten() / beta, 0)  # (16,)

    logits1 = torch.zeros(v, requires_grad=True)  # q(z1)
    logits2 = torch.zeros(v, v, requires_grad=True)  # q(z2 | z1)
    log_eta = torch.tensor(math.log(10.0), requires_grad=True)
    opt = torch.optim.Adam([logits1, logits2], lr=0.1)
    eta_opt = torch.optim.Adam([log_eta], lr=0.05)

    def joint_log_q() -> torch.Tensor:
        return (DF.categorical_log_probs(logits1)[:, None] + DF.categorical_log_probs(logits2)).flatten()  # (16,)

    for step in range(300):
        with torch.no_grad():
            z = DF.categorical_sample(joint_log_q().expand(k, b, 16), g)  # (K, B) joint codes
        log_q = joint_log_q()[z]  # (K, B) with gradient
        rewards = rewards_table.flatten()[z]  # (K, B)
        w = DF.importance_weights(log_q.detach(), rewards, log_eta.exp().detach(), beta)
        ess = DF.effective_sample_size(DF.importance_weights(log_q.detach(), rewards, log_eta.exp(), beta))
        loss = -(w * log_q).sum(0).mean() + DF.eta_loss(ess, k, 0.5)
        opt.zero_grad()
        eta_opt.zero_grad()
        loss.backward()
        opt.step()
        eta_opt.step()
        if step == 200:
            for group in opt.param_groups:
                group["lr"] = 0.02

    q = joint_log_q().exp().detach()
    tv = 0.5 * (q - target).abs().sum().item()
    assert tv < 0.04, f"total variation to softmax(r/beta) is {tv:.3f}"  # measured ~0.01 over seeds
    # And it is not trivially close: the uniform start was far away.
    assert 0.5 * (torch.full((16,), 1 / 16) - target).abs().sum().item() > 0.3


# ---------------------------------------------------------------- categorical helpers


def test_categorical_log_probs_clamped_and_normalized():
    logits = torch.tensor([[0.0, 0.0, -100.0], [5.0, 1.0, 0.0]])
    lp = DF.categorical_log_probs(logits)
    assert lp.min() >= math.log(DF.FLOAT32_EPS) - 1e-6
    assert torch.allclose(lp.exp().sum(-1), torch.ones(2), atol=1e-6)


@pytest.mark.parametrize("clamp", [True, False])
def test_token_log_prob_is_the_gathered_entry_of_the_full_log_probs(clamp):
    """Values and gradients of the full (clamped or exact) log-probabilities at the tokens, including entries the
    clamp cuts at both ends (a near-certain token, near-impossible ones) and bf16 logits."""
    logits = torch.randn(6, 3, 5, generator=torch.Generator().manual_seed(0)) * 4
    logits[0, 0] = torch.tensor([60.0, 0.0, 0.0, 0.0, -60.0])  # p(0) within eps of 1, p(4) below eps
    tokens = torch.randint(0, 5, (6, 3), generator=torch.Generator().manual_seed(1))
    tokens[0, 0], tokens[1, 0] = 0, 4
    tokens[2, 0] = 4
    full = DF.categorical_log_probs if clamp else DF.exact_log_probs
    weights = torch.randn(6, 3, generator=torch.Generator().manual_seed(2))
    for dtype in (torch.float32, torch.bfloat16):
        a = logits.to(dtype).clone().requires_grad_()
        b = logits.to(dtype).clone().requires_grad_()
        got = DF.token_log_prob(a, tokens, clamp)
        want = full(b).gather(-1, tokens[..., None]).squeeze(-1)
        assert got.dtype == torch.float32 and torch.equal(got, want)
        (weights * got).sum().backward()
        (weights * want).sum().backward()
        assert torch.allclose(a.grad.float(), b.grad.float(), atol=1e-6)
    clamped = DF.token_log_prob(logits[:1, :1], tokens[:1, :1], clamp)
    assert (clamped.item() == pytest.approx(math.log1p(-DF.FLOAT32_EPS))) == clamp


def test_categorical_sample_matches_probabilities_and_is_reproducible():
    probs = torch.tensor([0.05, 0.5, 0.0, 0.3, 0.15])
    log_probs = probs.clamp_min(1e-30).log().expand(200_000, 5)
    s1 = DF.categorical_sample(log_probs, torch.Generator().manual_seed(3))
    s2 = DF.categorical_sample(log_probs, torch.Generator().manual_seed(3))
    assert torch.equal(s1, s2)
    freq = torch.bincount(s1, minlength=5).float() / s1.numel()
    assert torch.allclose(freq, probs, atol=4e-3)  # ~4 standard errors at n = 2e5
    assert freq[2] == 0


def test_gumbel_max_sample_matches_probabilities():
    probs = torch.tensor([0.1, 0.6, 0.3])
    s = DF.gumbel_max_sample(probs.log().expand(100_000, 3), torch.Generator().manual_seed(0))
    freq = torch.bincount(s, minlength=3).float() / s.numel()
    assert torch.allclose(freq, probs, atol=6e-3)


def test_entropy_and_kl_to_uniform():
    v = 7
    uniform = DF.categorical_log_probs(torch.zeros(3, v))
    assert torch.allclose(DF.categorical_entropy(uniform), torch.full((3,), math.log(v)), atol=1e-5)
    assert torch.allclose(DF.kl_to_uniform(DF.categorical_entropy(uniform)[None], v), torch.zeros(1), atol=1e-4)
    peaked = DF.categorical_log_probs(torch.tensor([[30.0] + [0.0] * (v - 1)] * 2))  # (T=2, V)
    kl = DF.kl_to_uniform(DF.categorical_entropy(peaked), v)
    assert kl.item() == pytest.approx(2 * math.log(v), abs=1e-3)


# ---------------------------------------------------------------- schedules


def test_exp_decay_schedule():
    values = [DF.exp_decay_schedule(s, 0.5, 0.01, 1000) for s in range(0, 1201, 50)]
    assert values[0] == pytest.approx(0.5)
    assert DF.exp_decay_schedule(1000, 0.5, 0.01, 1000) == pytest.approx(0.01, rel=1e-6)
    assert DF.exp_decay_schedule(5000, 0.5, 0.01, 1000) == pytest.approx(0.01)
    assert all(a >= b for a, b in zip(values, values[1:]))
    # Geometric: the midpoint is the geometric mean.
    assert DF.exp_decay_schedule(500, 0.5, 0.01, 1000) == pytest.approx(math.sqrt(0.5 * 0.01), rel=1e-6)
    # end_pct: reaches the end value at half the run.
    assert DF.exp_decay_schedule(500, 0.5, 0.01, 1000, end_pct=0.5) == pytest.approx(0.01, rel=1e-6)


def test_cosine_and_constant_schedules():
    assert DF.cosine_schedule(0, 1.0, 0.1, 100) == pytest.approx(1.0)
    assert DF.cosine_schedule(50, 1.0, 0.1, 100) == pytest.approx(0.55)
    assert DF.cosine_schedule(100, 1.0, 0.1, 100) == pytest.approx(0.1)
    assert DF.cosine_schedule(500, 1.0, 0.1, 100) == pytest.approx(0.1)
    assert DF.constant_schedule(123, 0.7) == 0.7
    assert DF.schedule_value("constant", 9, 0.3, 0.0, 10) == 0.3
    assert DF.schedule_final_value("exp_decay", 0.5, 0.01) == pytest.approx(0.01)
    assert DF.schedule_final_value("constant", 0.3, 0.0) == 0.3
    with pytest.raises(ValueError, match="schedule"):
        DF.schedule_value("linear", 0, 1.0, 0.0, 10)


# ---------------------------------------------------------------- adaptive gradient clipping


def reference_agc(grad: torch.Tensor, param: torch.Tensor, clipping: float, eps: float = 1e-3) -> torch.Tensor:
    """Row-by-row loop: one unit per output row of a (out, in) matrix."""
    out = grad.clone()
    for i in range(grad.shape[0]):
        max_norm = max(param[i].norm().item(), eps) * clipping
        g_norm = grad[i].norm().item()
        if g_norm > max_norm:
            out[i] = grad[i] * (max_norm / g_norm)
    return out


def test_adaptive_grad_clip_matches_row_loop():
    g = torch.Generator().manual_seed(0)
    param = torch.randn(6, 5, generator=g)
    param[0] = 0.0  # a dead unit: its bound is eps
    grad = torch.randn(6, 5, generator=g) * torch.tensor([1.0, 0.1, 10.0, 0.5, 3.0, 0.01])[:, None]
    clipped = DF.adaptive_grad_clip(grad, param, (1,), clipping=1.0)
    torch.testing.assert_close(clipped, reference_agc(grad, param, 1.0))
    assert not torch.equal(clipped, grad)  # something was clipped
    # Per-unit norms never exceed the bound.
    bound = param.norm(dim=1).clamp_min(1e-3)
    assert (clipped.norm(dim=1) <= bound + 1e-5).all()


def test_adaptive_grad_clip_whole_tensor_for_vectors():
    param, grad = torch.ones(4), torch.full((4,), 10.0)
    clipped = DF.adaptive_grad_clip(grad, param, None)
    assert clipped.norm().item() == pytest.approx(2.0, rel=1e-5)  # |param| = 2
    assert torch.equal(DF.adaptive_grad_clip(grad * 1e-3, param, None), grad * 1e-3)


def test_unitwise_norm_shapes():
    t = torch.randn(3, 4, 5)
    assert DF.unitwise_norm(t, (1, 2)).shape == (3, 1, 1)
    assert DF.unitwise_norm(t, None).shape == (1, 1, 1)



# -- resampled weighted maximum likelihood -------------------------------------------------------------------


def _counts(chosen: torch.Tensor, k: int) -> torch.Tensor:
    """How often each of K samples was drawn, ``(K, B)``, from indices ``(m, B)``."""
    return torch.nn.functional.one_hot(chosen, k).sum(0).T.double()


def test_resampled_counts_are_m_times_the_weights_in_expectation():
    from daps.functional import resample_indices

    torch.manual_seed(0)
    k, b, m = 6, 3, 4
    weights = torch.softmax(torch.randn(k, b) * 2, 0)  # (K, B)
    expected = m * weights.double()
    # systematic: one uniform per input; integrate over it on a grid (exact up to the grid spacing), and check
    # that at every u each sample is drawn floor(m w) or ceil(m w) times
    total = torch.zeros(k, b, dtype=torch.float64)
    grid = ((torch.arange(4000, dtype=torch.float64) + 0.5) / 4000).tolist()
    for value in grid:
        c = _counts(resample_indices(weights, torch.full((1, b), value), "systematic", m), k)
        assert ((c >= expected.floor() - 1e-9) & (c <= expected.ceil() + 1e-9)).all()
        total += c
    torch.testing.assert_close(total / len(grid), expected, atol=2e-3, rtol=0)
    # multinomial: m independent draws per input, each from w
    n = 50_000
    u = torch.rand(m, n * b, generator=torch.Generator().manual_seed(1))
    chosen = resample_indices(weights.repeat(1, n), u, "multinomial", m)  # (m, n*B), column j is input j % B
    freq = _counts(chosen, k).view(k, n, b).mean(1) / m  # (K, B)
    torch.testing.assert_close(freq, weights.double(), atol=5e-3, rtol=0)
    # a negative control: uniform weights would be far from these
    assert (freq - 1 / k).abs().max() > 0.05


def test_cosine_schedule_value_honours_end_pct():
    assert DF.schedule_value("cosine", 500, 1.0, 0.1, 1000, end_pct=0.5) == pytest.approx(0.1)
    assert DF.schedule_value("cosine", 250, 1.0, 0.1, 1000, end_pct=0.5) == pytest.approx(0.55)  # half-way down
    assert DF.schedule_value("cosine", 900, 1.0, 0.1, 1000, end_pct=0.5) == pytest.approx(0.1)  # held at the end


def test_zero_mass_is_never_drawn_even_at_a_uniform_of_exactly_zero(monkeypatch):
    """DAPS weights can underflow to exactly 0 in float32; a draw u = 0 lands on the CDF's first step, which must
    be the first sample with mass."""
    w = torch.tensor([[0.0], [0.5], [0.5]])  # (K=3, B=1)
    assert DF.resample_indices(w, torch.zeros(1, 1), "systematic", 2)[:, 0].tolist() == [1, 2]
    assert DF.resample_indices(w, torch.zeros(2, 1), "multinomial", 2)[:, 0].tolist() == [1, 1]
    monkeypatch.setattr(torch, "rand", lambda shape, **kw: torch.zeros(shape))
    assert DF.sample_probs(torch.tensor([[0.0, 0.0, 1.0]])).item() == 2


def test_the_estimator_functions_refuse_arguments_outside_their_documented_range():
    """eta <= 0 flips or divides by zero the temperature of the weights (eta = -1, beta = 0 favours the *worst*
    samples without a word), beta < 0 rewards certainty; the ESS is of (K, B) weights; the ESS target is a
    fraction of K; a schedule kind is one of three for its final value as for its values. Tensors (a learned eta)
    are not read back: checking them would sync a GPU."""
    log_q, rewards = torch.zeros(4, 3), torch.randn(4, 3)
    for eta, beta in ((-1.0, 0.0), (0.0, 0.0), (0, 0.5), (float("nan"), 0.0)):
        with pytest.raises(ValueError, match="eta must be > 0"):
            DF.importance_weights(log_q, rewards, eta, beta)
    for beta in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="beta must be >= 0"):
            DF.importance_weights(log_q, rewards, 1.0, beta)
    DF.importance_weights(log_q, rewards, torch.tensor(1.0), torch.tensor(0.0))  # tensors pass unread
    for shape in ((4,), (4, 3, 1)):
        with pytest.raises(ValueError, match="weights must be \\(K, B\\)"):
            DF.effective_sample_size(torch.ones(shape))
    for k, target in ((0, 0.33), (8, 0.0), (8, 1.5), (8, -1.0)):
        with pytest.raises(ValueError, match="eta_loss needs num_samples >= 1 and 0 < ess_target <= 1"):
            DF.eta_loss(torch.ones(3), k, target)
    assert DF.eta_loss(torch.full((3,), 8.0), 8, 1.0).item() == 0.0
    with pytest.raises(ValueError, match="unknown schedule kind 'linear'"):
        DF.schedule_final_value("linear", 0.5, 0.01)
    assert DF.schedule_final_value("cosine", 0.5, 0.01) == 0.01
    assert DF.schedule_final_value("constant", 0.5, 0.01) == 0.5
    assert DF.exp_decay_schedule(-5, 0.5, 0.01, 10) == 0.5 == DF.cosine_schedule(-5, 0.5, 0.01, 10)
