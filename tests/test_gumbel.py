"""Straight-through Gumbel-Softmax and Gumbel-Rao (GR-MCK): properties of the estimators, their gradients
against finite differences and closed forms, Rao-Blackwellization, and the methods built on them."""

from __future__ import annotations

import math

import pytest
import torch

import daps.functional as DF
from daps.methods import build_method
from daps.presets import configured

EULER_GAMMA = 0.5772156649015329
CHI2_DF5_999 = 20.515  # 99.9 % quantile of chi-square with 5 degrees of freedom


def log_probs_of(logits: list[float], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.log_softmax(torch.tensor(logits, dtype=dtype), -1)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rao(stop_gradient: bool, k: int = 7):
    return lambda lp, tau, g: DF.gumbel_rao_st(lp, tau, k, g, stop_gradient=stop_gradient)


ESTIMATORS = {"gumbel": DF.gumbel_softmax_st, "rao": rao(False), "rao_sg": rao(True)}


# ---------------------------------------------------------------- forward values and sample distribution


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_forward_is_exactly_the_one_hot_of_the_index(name):
    log_probs = torch.log_softmax(torch.randn(3, 4, 6, generator=gen(0)), -1).requires_grad_()
    index, onehot = ESTIMATORS[name](log_probs, 0.5, gen(1))
    assert index.shape == (3, 4) and index.dtype == torch.long
    assert onehot.shape == (3, 4, 6) and onehot.requires_grad
    assert torch.equal(onehot, torch.nn.functional.one_hot(index, 6).float())


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_index_is_an_exact_categorical_sample(name):
    """Chi-square goodness of fit of 20,000 indices to the probabilities (V = 6, fixed seed)."""
    probs = torch.tensor([0.05, 0.1, 0.15, 0.2, 0.2, 0.3])
    n = 20_000
    index, _ = ESTIMATORS[name](probs.log().expand(n, 6), 2.0, gen(2))
    counts = torch.bincount(index, minlength=6).double()
    expected = n * probs.double()
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < CHI2_DF5_999, (counts, expected)


def test_same_generator_same_draws_and_temperature_checked():
    log_probs = log_probs_of([0.1, 2.0, -1.0, 0.5])
    for f in ESTIMATORS.values():
        a, b = f(log_probs.expand(50, 4), 0.7, gen(3)), f(log_probs.expand(50, 4), 0.7, gen(3))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        with pytest.raises(ValueError):
            f(log_probs, 0.0, gen(3))
    with pytest.raises(ValueError):
        DF.gumbel_rao_st(log_probs, 1.0, 0, gen(3))


# ---------------------------------------------------------------- straight-through gradients


def test_gumbel_st_gradient_is_the_soft_sample_gradient():
    """Backward of the ST token equals backward of softmax((l + g)/tau) with the same draws, which has the
    closed form (1/tau) y * (c - <c, y>) for the linear function <c, y>."""
    logits = torch.randn(5, 8, generator=gen(4), dtype=torch.float64, requires_grad=True)
    c = torch.randn(5, 8, generator=gen(5), dtype=torch.float64)
    tau = 0.6
    _, onehot = DF.gumbel_softmax_st(torch.log_softmax(logits, -1), tau, gen(6))
    (grad_st,) = torch.autograd.grad((c * onehot).sum(), logits)
    soft = DF.gumbel_softmax(torch.log_softmax(logits, -1), tau, gen(6))
    (grad_soft,) = torch.autograd.grad((c * soft).sum(), logits)
    torch.testing.assert_close(grad_st, grad_soft)
    y = soft.detach()
    closed_form = y * (c - (c * y).sum(-1, keepdim=True)) / tau  # d<c, y>/dl; log_softmax adds a null direction
    torch.testing.assert_close(grad_st, closed_form - closed_form.sum(-1, keepdim=True) * logits.softmax(-1))


@pytest.mark.parametrize("stop_gradient", [False, True])
def test_gumbel_rao_st_gradient_is_the_surrogate_gradient(stop_gradient):
    """The token's backward is the surrogate's, for the draws documented in gumbel_rao_st (index, then E)."""
    log_probs = torch.log_softmax(torch.randn(4, 5, generator=gen(7), dtype=torch.float64), -1).requires_grad_()
    c = torch.randn(4, 5, generator=gen(8), dtype=torch.float64)
    index, onehot = DF.gumbel_rao_st(log_probs, 0.8, 6, gen(9), stop_gradient=stop_gradient)
    (grad_st,) = torch.autograd.grad((c * onehot).sum(), log_probs)
    g = gen(9)
    replayed = DF.gumbel_max_sample(log_probs.detach(), g)
    exp_noise = torch.empty(6, 4, 5, dtype=torch.float64).exponential_(generator=g)
    assert torch.equal(replayed, index)
    surrogate = DF.gumbel_rao_surrogate(log_probs, index, exp_noise, 0.8, stop_gradient)
    (grad_surrogate,) = torch.autograd.grad((c * surrogate).sum(), log_probs)
    torch.testing.assert_close(grad_st, grad_surrogate)


def test_stop_gradient_changes_gradients_but_not_values():
    log_probs = torch.log_softmax(torch.randn(6, 5, generator=gen(10)), -1).requires_grad_()
    c = torch.randn(6, 5, generator=gen(11))
    out = {}
    for sg in (False, True):
        index, onehot = DF.gumbel_rao_st(log_probs, 0.5, 8, gen(12), stop_gradient=sg)
        out[sg] = index, onehot.detach(), torch.autograd.grad((c * onehot).sum(), log_probs)[0]
    assert torch.equal(out[False][0], out[True][0]) and torch.equal(out[False][1], out[True][1])
    assert not torch.allclose(out[False][2], out[True][2], atol=1e-3)


# ---------------------------------------------------------------- conditional Gumbel


def test_conditional_gumbel_argmax_is_the_index():
    log_probs = torch.log_softmax(torch.randn(200, 7, generator=gen(13)) * 3, -1)
    index = DF.gumbel_max_sample(log_probs, gen(14))
    exp_noise = torch.empty(50, 200, 7).exponential_(generator=gen(15))
    perturbed = DF.conditional_gumbel(log_probs, index, exp_noise)  # (k, N, V)
    assert perturbed.shape == (50, 200, 7)
    assert torch.equal(perturbed.argmax(-1), index.expand(50, 200))


def test_conditional_gumbel_marginal_is_logits_plus_gumbel():
    """Drawing I ~ Cat(p) and then G | I gives G = l + iid Gumbel(0, 1): the noise has mean Euler's gamma
    and variance pi^2/6 in every class, whether or not the class won."""
    n = 40_000
    log_probs = log_probs_of([1.0, 0.0, -1.0, 2.0, -3.0]).expand(n, 5)
    index = DF.gumbel_max_sample(log_probs, gen(16))
    exp_noise = torch.empty(1, n, 5).exponential_(generator=gen(17))
    noise = (DF.conditional_gumbel(log_probs, index, exp_noise)[0] - log_probs).double()  # (N, V)
    se = math.pi / math.sqrt(6 * n)
    torch.testing.assert_close(noise.mean(0), torch.full((5,), EULER_GAMMA, dtype=torch.float64), atol=5 * se, rtol=0)
    torch.testing.assert_close(noise.var(0), torch.full((5,), math.pi**2 / 6, dtype=torch.float64), atol=0.1, rtol=0)


# ---------------------------------------------------------------- gradients against finite differences


def central_difference(f, x: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    grad = torch.zeros_like(x)
    for i in range(x.numel()):
        step = torch.zeros_like(x).view(-1)
        step[i] = h
        grad.view(-1)[i] = (f(x + step.view_as(x)) - f(x - step.view_as(x))) / (2 * h)
    return grad


@pytest.mark.parametrize("stop_gradient", [False, True])
def test_gumbel_rao_gradient_matches_finite_differences(stop_gradient):
    """Tiny case (V = 4, k = 3, float64), exponential noise and index held fixed. The default gradient is the
    derivative of the whole map logits -> mean_k softmax(G_k(l) / tau); the stop-gradient one is the derivative
    of logits -> mean_k softmax((l + n_k) / tau) with the noise n = G(l0) - l0 frozen at the current point."""
    tau = 0.7
    logits0 = torch.tensor([[0.3, -1.2, 0.8, 0.1], [2.0, 0.0, -0.5, 1.0]], dtype=torch.float64)
    c = torch.tensor([[1.0, -2.0, 0.5, 3.0], [-1.0, 0.25, 2.0, 0.0]], dtype=torch.float64)
    index = torch.tensor([2, 3])
    exp_noise = torch.empty(3, 2, 4, dtype=torch.float64).exponential_(generator=gen(18))

    logits = logits0.clone().requires_grad_()
    surrogate = DF.gumbel_rao_surrogate(torch.log_softmax(logits, -1), index, exp_noise, tau, stop_gradient)
    (autograd,) = torch.autograd.grad((c * surrogate).sum(), logits)

    lp0 = torch.log_softmax(logits0, -1)
    frozen_noise = DF.conditional_gumbel(lp0, index, exp_noise) - lp0  # (k, 2, V)

    def objective(z: torch.Tensor) -> torch.Tensor:
        lp = torch.log_softmax(z, -1)
        perturbed = lp + frozen_noise if stop_gradient else DF.conditional_gumbel(lp, index, exp_noise)
        return (c * torch.softmax(perturbed / tau, -1).mean(0)).sum()

    numeric = central_difference(objective, logits0)
    torch.testing.assert_close(autograd, numeric, rtol=1e-6, atol=1e-8)
    if stop_gradient:  # exact: mean_k of the softmax Jacobian, projected by log_softmax
        y = torch.softmax((lp0 + frozen_noise) / tau, -1)  # (k, 2, V)
        d_lp = (y * (c - (c * y).sum(-1, keepdim=True)) / tau).mean(0)  # (2, V)
        exact = d_lp - d_lp.sum(-1, keepdim=True) * logits0.softmax(-1)
        torch.testing.assert_close(autograd, exact)


def test_default_and_stop_gradient_differ_on_the_tiny_case():
    """Guards the finite-difference test above against checking the same gradient twice."""
    lp = torch.log_softmax(torch.tensor([0.3, -1.2, 0.8, 0.1], dtype=torch.float64), -1).requires_grad_()
    exp_noise = torch.empty(3, 4, dtype=torch.float64).exponential_(generator=gen(19))
    c = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    grads = [
        torch.autograd.grad((c * DF.gumbel_rao_surrogate(lp, torch.tensor(2), exp_noise, 0.7, sg)).sum(), lp)[0]
        for sg in (False, True)
    ]
    assert (grads[0] - grads[1]).abs().max() > 1e-3


# ---------------------------------------------------------------- Rao-Blackwellization


def per_sample_gradients(estimator, n: int, tau: float, seed: int) -> torch.Tensor:
    """Gradients w.r.t. the logits of f(y) = sum((y @ W - t)^2) for n independent draws: ``(n, V)``."""
    base = torch.tensor([0.5, -0.3, 1.2, 0.0, -1.0], dtype=torch.float64)
    w = torch.tensor([[1.0, -0.5], [0.3, 2.0], [-1.5, 0.2], [0.7, 0.7], [2.0, -1.0]], dtype=torch.float64)
    logits = base.expand(n, 5).clone().requires_grad_()
    _, onehot = estimator(torch.log_softmax(logits, -1), tau, gen(seed))
    loss = ((onehot @ w - torch.tensor([0.5, -0.5], dtype=torch.float64)) ** 2).sum()
    return torch.autograd.grad(loss, logits)[0]


def test_gumbel_rao_keeps_the_straight_through_expectation_with_lower_variance():
    """E[GR-MCK gradient (stop-gradient)] = E[ST Gumbel-Softmax gradient] at the same tau, since GR-MCK is
    the ST gradient's conditional expectation given the hard sample (Paulus et al. 2021, Thm. 1); and its
    variance is lower. The means are compared within 4 standard errors."""
    n, tau = 20_000, 0.8
    st = per_sample_gradients(DF.gumbel_softmax_st, n, tau, seed=20)
    gr = per_sample_gradients(lambda lp, t, g: DF.gumbel_rao_st(lp, t, 10, g, stop_gradient=True), n, tau, seed=21)
    se = ((st.var(0) + gr.var(0)) / n).sqrt()
    assert ((st.mean(0) - gr.mean(0)).abs() < 4 * se + 1e-6).all(), (st.mean(0), gr.mean(0), se)
    assert gr.var(0).sum() < 0.8 * st.var(0).sum(), (gr.var(0), st.var(0))


# ---------------------------------------------------------------- the methods

TINY = [
    "encoder.width=16", "encoder.num_heads=2", "encoder.vocab_size=16", "encoder.num_tokens=4",
    "decoder.embed_dim=8", "decoder.hidden=32,32", "relaxed.num_rao_samples=5", "train.steps=100",
]


def tiny(method: str, *extra: str):
    cfg = configured("mnist", method, [*TINY, *extra])
    torch.manual_seed(0)
    return build_method(cfg, (1, 28, 28)), cfg


def batch(b: int = 6) -> torch.Tensor:
    return (torch.rand(b, 1, 28, 28, generator=gen(0)) > 0.8).float()


@pytest.mark.parametrize("method", ["gumbel", "grmck"])
def test_decoder_gradient_reaches_the_encoder_through_the_chain(method):
    """With beta = 0 only log p(x|z) trains the encoder, and only through the straight-through one-hots; in
    the autoregressive encoder every token after the first is fed back, so the code embedding table (used
    only by the chain) gets a gradient, and so do the logits of the first token via later tokens."""
    model, _ = tiny(method, "relaxed.beta.kind=constant", "relaxed.beta.init=0.0")
    out = model(batch(), step=0, generator=gen(1))
    assert out.logs["beta"] == 0.0
    out.loss.backward()
    table = model.encoder.token_embed.weight.grad
    assert table is not None and table.abs().sum() > 0
    assert model.encoder.head.weight.grad.abs().sum() > 0


def test_method_logs_schedules_and_relaxed_elbo():
    model, _ = tiny("grmck")
    x = batch()
    out = model(x, step=50, generator=gen(2))
    tau = DF.schedule_value("exp_decay", 50, 1.0, 0.75, 100)
    assert out.logs["temperature"].item() == pytest.approx(tau, rel=1e-6)
    assert out.logs["beta"].item() == pytest.approx(model.beta(50), rel=1e-6)
    torch.testing.assert_close(out.logs["elbo"], out.logs["log_p"] - out.logs["kl"])
    torch.testing.assert_close(out.loss.detach(), -(out.logs["log_p"] - model.beta(50) * out.logs["kl"]))
    assert out.logs["kl"] <= 4 * math.log(16) + 1e-4


@pytest.mark.parametrize("method", ["gumbel", "gumbelna", "grmck", "grmckna"])
def test_forward_decodes_its_own_codes(method):
    """The decoder reads straight-through one-hots whose forward value is the one-hot of the codes, so x_hat
    must equal decode(indices)."""
    model, _ = tiny(method)
    out = model(batch(), step=0, generator=gen(3))
    torch.testing.assert_close(out.x_hat, model.decode(out.indices))


def test_rao_stop_gradient_switch_changes_encoder_gradients_only():
    grads, losses = [], []
    for flag in ("false", "true"):
        model, _ = tiny("grmckna", f"relaxed.rao_stop_gradient={flag}")
        out = model(batch(), step=0, generator=gen(4))
        out.loss.backward()
        losses.append(out.loss.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert torch.equal(losses[0], losses[1])
    assert all(torch.equal(grads[0][n], grads[1][n]) for n in grads[0] if n.startswith("decoder."))
    assert not torch.allclose(grads[0]["encoder.net.head.weight"], grads[1]["encoder.net.head.weight"])


@pytest.mark.parametrize("method", ["gumbelna", "grmckna"])
def test_the_kl_term_trains_the_encoder_by_its_own_gradient(method):
    """Two copies that differ only in beta (0 and 0.5), on the same draws: their gradients differ by exactly
    0.5 times the gradient of the mean KL of q(. | x) to the uniform prior, recomputed here from the encoder's
    token log-probabilities (which, for these independent-token encoders, do not depend on the draw). Fails when
    the KL is computed from detached log-probabilities: the loss's value is unchanged, its gradient is not."""
    grads = []
    for beta in ("0.0", "0.5"):
        model, _ = tiny(method, "relaxed.beta.kind=constant", f"relaxed.beta.init={beta}")
        model(batch(), step=0, generator=gen(5)).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    model, _ = tiny(method)
    log_probs = model.encoder.token_log_probs(batch())  # (B, T, V)
    kl = DF.kl_to_uniform(DF.categorical_entropy(log_probs), model.vocab_size).mean()
    (0.5 * kl).backward()
    expected = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert expected and all(n.startswith("encoder.") for n in expected)
    for name, grad in expected.items():
        torch.testing.assert_close(grads[1][name] - grads[0][name], grad, rtol=1e-4, atol=1e-6, msg=name)
