"""Known answers for behaviour that a tenth mutation sweep, of the core numerical code (daps/functional.py, the methods,
the likelihoods, the optimizer and the networks), found no test guarding: the upper clamp of log-probabilities, sampling
from unnormalized probabilities, the settled value of a decaying schedule, KL(q || uniform) clipped at 0, the
conditional Gumbel of unnormalized logits, FSQ's cap on large even levels in float32, DAPS's multinomial resampling,
its ESS loss under resampling and the beta of its beta-ELBO, the likelihood a config builds, the settings that reach
the encoder and the schedules, the refusals of a few settings, the bits of a code, what the quantizers' ``reconstruct``
and ``decode`` give back, FSQ's latent embedding on the ResNet decoder and the Gaussian VAE's logged posterior
spread. Each test names the plausible slips it fails on (each checked against its mutant).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

import daps.functional as DF
from daps.config_io import parse_overrides
from daps.errors import UserError
from daps.functional import FLOAT32_EPS
from daps.likelihoods import Bernoulli, Gaussian
from daps.methods import build_method, method_spec
from daps.methods.common import build_likelihood
from daps.nets import ARTransformerEncoder, NACategoricalEncoder
from daps.nets.resnet import SlicedBatchNorm2d
from daps.optim import Optimizers, OptimizerSpec
from daps.presets import get_preset

TINY = [
    "encoder.width=16", "encoder.num_heads=2", "encoder.vocab_size=8", "encoder.num_tokens=4",
    "decoder.embed_dim=8", "decoder.hidden=16,16", "train.steps=100",
]

pytestmark = pytest.mark.usefixtures("single_thread")


def _tiny(method: str, *extra: str, preset: str = "mnist"):
    cfg = parse_overrides(get_preset(preset, method), [*TINY, *extra])
    torch.manual_seed(0)
    return build_method(cfg, (1, 28, 28))


def _binary_images(n: int = 6, seed: int = 0) -> torch.Tensor:
    return (torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed)) > 0.7).float()


# -- daps/functional.py ---------------------------------------------------------------------------------------------


def test_a_near_certain_token_has_log_probability_log_of_one_minus_eps():
    """Probabilities are clamped to [eps, 1 - eps]: a near-certain token scores log(1 - eps) = -1.19e-7, not 0.
    Fails if the upper clamp is dropped or set to log 1 = 0 (only the lower end was checked)."""
    lp = DF.categorical_log_probs(torch.tensor([60.0, 0.0, -60.0]))
    assert lp[0].item() == pytest.approx(math.log1p(-FLOAT32_EPS), rel=1e-6)
    assert lp[0].item() < 0
    assert lp[1].item() == lp[2].item() == pytest.approx(math.log(FLOAT32_EPS), rel=1e-6)
    assert DF.clamp_log_prob(torch.tensor(0.0)).item() == pytest.approx(-FLOAT32_EPS, rel=1e-3)


def test_sample_probs_draws_from_unnormalized_probabilities():
    """``sample_probs`` takes probabilities up to a factor: [0, 3, 1] draws 1 three times as often as 2, never 0.
    Fails if the uniform is not scaled by the total mass (then every draw below 1 falls in the first non-zero
    bin)."""
    probs = torch.tensor([0.0, 3.0, 1.0]).expand(40000, 3)
    draws = DF.sample_probs(probs, torch.Generator().manual_seed(0))
    counts = torch.bincount(draws, minlength=3).double() / draws.numel()
    assert counts[0].item() == 0.0
    assert counts[1].item() == pytest.approx(0.75, abs=0.01)
    assert counts[2].item() == pytest.approx(0.25, abs=0.01)


def near_zero_draws(device: str) -> int:
    """Draws of near-zero tokens (1e-13 each, 1,020 of them around 4 likely ones) in 200,000 samples of
    ``sample_probs`` on ``device``: about 2e-5 expected, so any draw is an error of the CDF's summation."""
    probs = torch.full((1024,), 1e-13, device=device)
    likely = torch.tensor([3, 200, 511, 1000], device=device)
    probs[likely] = torch.tensor([0.1, 0.2, 0.3, 0.4], device=device)
    draws = DF.sample_probs(probs.expand(200_000, 1024), torch.Generator(device).manual_seed(0))
    return int((~torch.isin(draws, likely)).sum())


def test_sample_probs_never_draws_a_near_zero_token_on_the_cpu():
    """The CPU's sequential float32 CDF adds each token's own mass: none of 200,000 draws lands on one of the
    1,020 tokens of mass 1e-13 (tests/test_gpu.py checks the GPU the same way). Fails on: a CDF whose
    neighbouring sums differ by an ulp regardless of the mass between them."""
    assert near_zero_draws("cpu") == 0


@pytest.mark.parametrize(("init", "end", "expected"), [
    (1.0, 0.0, FLOAT32_EPS),  # end clipped up to eps
    (1.0, 1.0, 1.0 - FLOAT32_EPS),  # end clipped down to init - eps: a 1 -> 1 schedule decays microscopically
    (0.5, 0.01, 0.01),
])
def test_an_exp_decay_schedule_settles_at_its_clipped_end(init, end, expected):
    """The beta of the beta-ELBO is where the exp_decay schedule settles, ``end`` clipped into [eps, init - eps] as
    the schedule clips it. Fails if ``schedule_final_value`` returns the unclipped ``end``."""
    assert DF.schedule_final_value("exp_decay", init, end) == pytest.approx(expected, rel=1e-9, abs=0)
    assert DF.exp_decay_schedule(10**6, init, end, num_steps=100) == pytest.approx(expected, rel=1e-9, abs=0)
    assert DF.schedule_final_value("cosine", init, end) == end
    assert DF.schedule_final_value("constant", init, end) == init


def test_kl_to_uniform_is_clipped_at_zero_per_sequence():
    """KL(q || U) = sum_t (log V - H_t), clipped at 0 per sequence (entropies of clamped probabilities can exceed
    log V by rounding). Fails if the clip is dropped."""
    log4 = math.log(4.0)
    entropy = torch.tensor([[log4 + 0.2, log4 - 0.05], [log4 - 0.5, log4 - 0.25]])  # (2 sequences, T=2)
    kl = DF.kl_to_uniform(entropy, 4)
    assert kl[0].item() == 0.0
    assert kl[1].item() == pytest.approx(0.75, abs=1e-6)


def test_conditional_gumbel_of_unnormalized_logits_by_hand():
    """l = log(1, 3) (Z = 4), E = (0.5, 2), index 1: G_1 = log Z - log E_1 = log 2 and G_0 = -log(E_0 exp(-l_0) +
    E_1 / Z) = -log(0.5 + 0.5) = 0 (Paulus et al. 2021, Appendix). Fails if the top value forgets log Z or the others
    multiply by Z instead of dividing (both invisible for normalized log-probabilities, where Z = 1)."""
    log_probs = torch.tensor([0.0, math.log(3.0)], dtype=torch.float64)
    exp_noise = torch.tensor([[0.5, 2.0]], dtype=torch.float64)  # (k=1, V)
    g = DF.conditional_gumbel(log_probs, torch.tensor(1), exp_noise)[0]
    assert g[1].item() == pytest.approx(math.log(2.0), abs=1e-6)
    assert g[0].item() == pytest.approx(0.0, abs=1e-6)
    # shifting every logit by c shifts every perturbed logit by c (G = l + Gumbel), the argmax unchanged
    g = torch.Generator().manual_seed(0)
    logits = torch.log_softmax(torch.randn(6, generator=g, dtype=torch.float64), 0)
    e = torch.empty(4, 6, dtype=torch.float64).exponential_(generator=g)
    index = torch.tensor(2)
    shifted = DF.conditional_gumbel(logits + 2.5, index, e)
    torch.testing.assert_close(shifted, DF.conditional_gumbel(logits, index, e) + 2.5, atol=1e-5, rtol=0)
    assert (shifted.argmax(-1) == 2).all()


@pytest.mark.parametrize("level", [1000, 2000])
def test_large_even_levels_stay_in_range_when_float32_tanh_saturates(level):
    """In float32 tanh reaches exactly +-1 (by |z| ~ 9), where the bound is +-half_l - 1/2: with half_l capped at
    (L - 1) / 2 + 1/4 the ends round to -(L // 2) and L // 2 - 1. Fails with the cap at (L - 1) / 2 + 1/2, where
    the top end L/2 - 1/2 rounds half-to-even one past the last level (the float64 sweep of test_fsq.py never
    saturates: tanh(12) < 1 in float64)."""
    z = torch.tensor([[-50.0], [50.0], [0.0]])
    indices = DF.fsq_codes_to_indices(DF.fsq_quantize(z, (level,)), (level,))
    assert indices.tolist() == [0, level - 1, level // 2]


# -- daps/methods ---------------------------------------------------------------------------------------------------


def test_multinomial_resampling_teacher_forces_m_codes_per_input(monkeypatch):
    """``daps.resample=3`` with ``resample_scheme=multinomial`` draws 3 independent codes per input from the K (one
    uniform each) and teacher-forces exactly those. Fails if the forward draws one uniform for multinomial as for
    systematic (then one code per input is fitted)."""
    model = _tiny("daps", "daps.num_samples=6", "daps.resample=3", "daps.resample_scheme=multinomial")
    shapes = []
    real = model.encoder.log_prob

    def spy(x, indices, *args, **kwargs):
        shapes.append(tuple(indices.shape))
        return real(x, indices, *args, **kwargs)

    monkeypatch.setattr(model.encoder, "log_prob", spy)
    model(_binary_images(5), step=0, generator=torch.Generator().manual_seed(0))
    assert shapes == [(3, 5, 4)]


def test_resampled_daps_aims_the_ess_at_a_fraction_of_all_k_samples():
    """The ESS is over all K weights whether or not the encoder is fitted on m resampled codes, so the eta loss is
    (mean ESS - K * ess_target)^2. Fails if the target counts the m resampled codes instead of K."""
    k, target = 6, 0.33
    model = _tiny("daps", f"daps.num_samples={k}", "daps.resample=2", f"daps.ess_target={target}")
    logs = model(_binary_images(5), step=0, generator=torch.Generator().manual_seed(0)).logs
    ess = logs["ess"].item() * k  # logged as a fraction of K
    assert logs["eta_loss"].item() == pytest.approx((ess - k * target) ** 2, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("method", ["daps", "dapsna", "reinforce", "ppo", "gumbel", "vae"])
def test_the_logged_beta_elbo_uses_the_final_beta_not_the_current_one(method):
    """beta-ELBO = log p - beta_final KL with the schedule's end value (0.01 here), also at step 0 where beta is 0.5.
    Fails if a method passes the current beta."""
    section = {"dapsna": "daps", "gumbel": "relaxed"}.get(method, method)
    model = _tiny(method, f"{section}.beta.kind=exp_decay", f"{section}.beta.init=0.5", f"{section}.beta.end=0.01")
    logs = model(_binary_images(5), step=0, generator=torch.Generator().manual_seed(0)).logs
    assert logs["kl"].item() > 0.05
    expected = logs["log_p"].item() - 0.01 * logs["kl"].item()
    assert logs["beta_elbo"].item() == pytest.approx(expected, abs=2e-3)
    assert logs["elbo"].item() == pytest.approx(logs["log_p"].item() - logs["kl"].item(), abs=2e-3)


@pytest.mark.parametrize("method, extra", [("gumbel", ()), ("grmck", ("relaxed.rao_stop_gradient=true",)),
                                           ("grmck", ("relaxed.rao_stop_gradient=false",))])
def test_the_relaxation_is_the_estimator_with_the_runs_temperature_and_settings(method, extra):
    """A relaxed method's per-token sampler is :func:`~daps.functional.gumbel_softmax_st` (Gumbel) or
    :func:`~daps.functional.gumbel_rao_st` (GR-MCK, with the run's k and stop-gradient setting) at the temperature it
    is given: the same indices and one-hots from the same generator, and the same gradients (those functions are
    checked against finite differences in tests/test_gumbel.py). Fails on: the temperature dropped (tau = 0.25
    here), the stop-gradient setting inverted."""
    model = _tiny(method, "relaxed.num_rao_samples=5", *extra)
    logits = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    weights = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))

    def run(sampler):
        log_probs = torch.log_softmax(logits, -1).requires_grad_(True)
        index, onehot = sampler(log_probs)
        (grad,) = torch.autograd.grad((weights * onehot).sum(), log_probs)
        return index, onehot.detach(), grad

    grads = {}
    for tau in (0.25, 1.0):
        got = run(model.relaxation(tau, torch.Generator().manual_seed(2)))
        grads[tau] = got[2]
        g = torch.Generator().manual_seed(2)
        if method == "gumbel":
            expected = run(lambda lp, tau=tau, g=g: DF.gumbel_softmax_st(lp, tau, g))
        else:
            stop = model.cfg.rao_stop_gradient
            expected = run(lambda lp, tau=tau, g=g, stop=stop: DF.gumbel_rao_st(lp, tau, 5, g, stop))
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
        torch.testing.assert_close(got[2], expected[2])
    assert (grads[0.25] - grads[1.0]).abs().max() > 1e-3  # the temperature matters to the gradient here


def _gaussian_log_probs(lik, log_vars: list[float], x: float = 0.0) -> list[float]:
    """log p(x | mean 0, log-variance v) of a one-pixel image under ``lik``, one per v."""
    n = len(log_vars)
    params = torch.stack([torch.zeros(n), torch.tensor(log_vars)], 1).view(n, 2, 1, 1)  # (N, 2C, 1, 1), C = 1
    return lik.log_prob(params, torch.full((n, 1, 1, 1), x)).tolist()


def test_the_likelihood_a_config_builds_by_hand():
    """variance_clip=paper clips the log-variance to [log min_variance, log max_variance]; variance_clip=none leaves
    it (clamped only at float32 eps); motion uses decoder.fixed_variance. Fails if a builder drops the configured
    range or variance (the defaults, [0.01, 1] and 0.25, would pass unnoticed)."""
    def nll0(v: float) -> float:  # -log N(0; 0, v)
        return 0.5 * (math.log(2 * math.pi) + math.log(v))

    paper = build_likelihood(parse_overrides(get_preset("cifar10"), ["decoder.min_variance=0.05",
                                                                      "decoder.max_variance=0.5"]))
    got = _gaussian_log_probs(paper, [math.log(1e-4), math.log(0.2), math.log(100.0)])
    assert got == pytest.approx([-nll0(0.05), -nll0(0.2), -nll0(0.5)], abs=1e-5)

    none = build_likelihood(parse_overrides(get_preset("cifar10"), ["decoder.variance_clip=none"]))
    got = _gaussian_log_probs(none, [math.log(1e-4), math.log(100.0)])
    assert got == pytest.approx([-nll0(1e-4), -nll0(100.0)], abs=1e-5)

    fixed = build_likelihood(parse_overrides(get_preset("lafan1-h1"), ["decoder.fixed_variance=0.5"]))
    mean, x = torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1)
    assert fixed.log_prob(mean, x).item() == pytest.approx(-(nll0(0.5) + 0.5 * 1.0 / 0.5), abs=1e-5)


@pytest.mark.parametrize("method", ["daps", "reinforce", "ppo", "gumbel"])
def test_encoder_mask_token0_reaches_the_autoregressive_encoder(method):
    """``encoder.mask_token0=true`` builds the encoder with the original's code-0 masks. Fails if the builder leaves
    the setting out (the encoder's default is off)."""
    assert _tiny(method).encoder.mask_token0 is False
    assert _tiny(method, "encoder.mask_token0=true").encoder.mask_token0 is True


def test_a_schedule_reaches_its_end_at_end_pct_of_the_run():
    """exp_decay 1 -> 0.01 over the first half of a 100-step run: 0.1 at step 25, 0.01 from step 50 on. Fails if the
    method's schedule leaves ``end_pct`` out (then 0.1 at step 50)."""
    model = _tiny("daps", "daps.beta.kind=exp_decay", "daps.beta.init=1.0", "daps.beta.end=0.01",
                  "daps.beta.end_pct=0.5")
    assert model.beta(0) == pytest.approx(1.0)
    assert model.beta(25) == pytest.approx(0.1, rel=1e-6)
    assert model.beta(50) == pytest.approx(0.01, rel=1e-6)
    assert model.beta(99) == pytest.approx(0.01, rel=1e-6)


def test_settings_refused_when_the_config_is_read():
    """A relaxed temperature must stay positive at both ends (a cosine schedule to 0 would divide by 0 at the end of
    the run) and REINFORCE's leave-one-out baseline needs K >= 2: both refused by the config check, before any
    model is built. Fails if the check reads only the temperature's start, or allows K = 1."""
    with pytest.raises(UserError, match="temperature"):
        parse_overrides(get_preset("mnist", "gumbel"), ["relaxed.temperature.kind=cosine", "relaxed.temperature.end=0"])
    with pytest.raises(UserError, match="num_samples"):
        parse_overrides(get_preset("mnist", "reinforce"), ["reinforce.num_samples=1"])
    parse_overrides(get_preset("mnist", "reinforce"), ["reinforce.num_samples=2"])  # the smallest K accepted


def test_bits_of_a_code_by_hand():
    """Bits of the bottleneck: T log2 V for categorical codes, T log2(prod L) for FSQ (T = 8, L = 8, 6, 5 on MNIST:
    8 log2 240), 32 bits per float for the Gaussian VAE's 2-d latent (the paper's 64 bits). Fails if FSQ counts one
    token or the VAE 64 bits per float."""
    assert method_spec("daps").bits(get_preset("mnist")) == pytest.approx(8 * 8.0)
    assert method_spec("fsq").bits(get_preset("mnist", "fsq")) == pytest.approx(8 * math.log2(240))
    assert method_spec("vae").bits(get_preset("mnist", "vae")) == 64.0


@pytest.mark.parametrize("method", ["vqvae", "vqvae-ema"])
def test_vq_reconstruct_and_encode_give_the_nearest_code_of_every_token(method):
    """The indices of ``reconstruct`` and ``encode`` are, token by token, the nearest codebook row to the encoder
    output (brute force), and ``decode`` of them is ``reconstruct``'s mean. Fails if reconstruct reports indices
    other than the codes it decoded."""
    model = _tiny(method, "vq.kmeans_init=false").eval()
    x = _binary_images(4)
    with torch.no_grad():
        z_e = model.encoder(x)  # (B, T, E)
        nearest = (z_e[:, :, None, :] - model.codebook).square().sum(-1).argmin(-1)  # (B, T)
        rec = model.reconstruct(x)
        assert torch.equal(rec.indices, nearest)
        assert torch.equal(model.encode(x), nearest)
        torch.testing.assert_close(model.decode(nearest), rec.x_hat)


def test_fsq_decode_of_the_encoded_indices_is_the_reconstruction():
    """``decode(encode(x))`` turns each token's mixed-radix index back into the code it quantized to, so it equals
    ``reconstruct(x).x_hat``; the reconstructed indices are ``encode``'s. Fails if decode reads the digits with the
    levels in another order."""
    model = _tiny("fsq").eval()
    x = _binary_images(4)
    with torch.no_grad():
        codes = model.quantize(x)  # (B, T, d) on the grid
        indices = model.encode(x)
        rec = model.reconstruct(x)
        assert torch.equal(rec.indices, indices)
        assert torch.equal(DF.fsq_indices_to_codes(indices, model.levels), codes)
        torch.testing.assert_close(model.decode(indices), rec.x_hat)


def test_fsq_latent_embedding_on_the_resnet_decoder_is_three_dense_layers():
    """On the ResNet decoder FSQ embeds each d-dim code by Dense(E) -> Dense(E * fsq_ratio) -> Dense(E) (original:
    models/fsq.py). Fails if the widening middle layer is left out."""
    cfg = parse_overrides(get_preset("cifar10", "fsq"), [
        "encoder.width=16", "encoder.num_heads=2", "encoder.num_tokens=16", "decoder.embed_dim=8",
        "decoder.fsq_ratio=3", "decoder.resnet_width=8", "decoder.resnet_blocks=1", "fsq.levels=4,3",
    ])
    model = build_method(cfg, (3, 32, 32))
    shapes = [tuple(layer.weight.shape) for layer in model.embed_latent]
    assert shapes == [(8, 2), (24, 8), (8, 24)]  # (out, in) of Dense(2 -> 8), Dense(8 -> 24), Dense(24 -> 8)


def test_gaussian_vae_logs_the_posterior_standard_deviation(monkeypatch):
    """With the encoder giving mean 0 and log-variance log 4 the logged posterior spread is the standard deviation
    2 (not the variance 4), and KL = 0.5 sum_d (4 - 1 - log 4) over 2 dims. Fails if the log reports exp(log_var)."""
    model = _tiny("vae")
    def encoder(x, generator=None):
        return torch.zeros(x.shape[0], 2), torch.full((x.shape[0], 2), math.log(4.0))

    monkeypatch.setattr(model.encoder, "forward", encoder)
    logs = model(_binary_images(3), step=0, generator=torch.Generator().manual_seed(0)).logs
    assert logs["posterior_std"].item() == pytest.approx(2.0)
    assert logs["kl"].item() == pytest.approx(3.0 - math.log(4.0), rel=1e-6)


# -- daps/likelihoods.py, daps/optim.py, daps/nets -------------------------------------------------------------------


def test_bernoulli_mean_and_log_prob_share_the_probability_clamp():
    """Logits are clamped to +-log((1 - eps) / eps) for the log-probability and for the mean alike: a logit of +-100
    means a pixel probability of 1 - eps or eps, and scores log(1 - eps) for a matching pixel. Fails if the mean
    skips the clamp (a probability of exactly 1)."""
    logits = torch.tensor([100.0, -100.0]).view(1, 2, 1, 1)
    mean = Bernoulli().mean(logits).flatten().tolist()
    assert mean[0] == pytest.approx(1.0 - FLOAT32_EPS, rel=1e-7) and mean[0] < 1.0
    assert mean[1] == pytest.approx(FLOAT32_EPS, rel=1e-3)
    log_p = Bernoulli().log_prob(logits[:, :1], torch.ones(1, 1, 1, 1))
    assert log_p.item() == pytest.approx(math.log1p(-FLOAT32_EPS), rel=1e-3)


def test_a_gaussian_whose_variance_range_is_one_value_has_that_variance():
    """min_var = max_var is a fixed variance learned nowhere (the config accepts max_variance >= min_variance):
    every log-variance scores as that one. Fails if the range check refuses equal ends."""
    lik = Gaussian(0.3, 0.3)
    got = _gaussian_log_probs(lik, [-5.0, 0.0, 5.0], x=1.0)
    expected = -0.5 * (math.log(2 * math.pi) + math.log(0.3) + 1.0 / 0.3)
    assert got == pytest.approx([expected] * 3, abs=1e-5)


def test_clipping_a_group_where_one_parameter_got_no_gradient_by_hand():
    """A parameter without a gradient this step is left out and the others are still clipped unit by unit: rows of
    norm 5 and 0 (floored at 1e-3) allow gradient norms of 5 and 1e-3, so [[30, 40], [0, 1]] becomes [[3, 4],
    [0, 1e-3]]. Fails if the batched clip (laid out for every parameter of the group) is used anyway."""
    first, second = nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False)
    model = nn.Sequential(first, second)
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
    opts = Optimizers(model, [OptimizerSpec("vae", list(model.parameters()), lr=1e-3, grad_clip=1.0)], 0.0)
    first.weight.grad = torch.tensor([[30.0, 40.0], [0.0, 1.0]])
    opts.step()
    torch.testing.assert_close(first.weight.grad, torch.tensor([[3.0, 4.0], [0.0, 1e-3]]))
    assert second.weight.grad is None


@pytest.mark.parametrize("batched", [True, False])
def test_an_infinite_gradient_is_a_skipped_update(batched):
    """A gradient norm of +inf (not only NaN) skips the update and is counted. Fails if only NaN is counted."""
    a = nn.Parameter(torch.ones(3))
    opts = Optimizers(nn.ParameterList([a]), [OptimizerSpec("a", [a], 0.1, 0.0)], 0.0, batched)
    a.grad = torch.tensor([1.0, float("inf"), 1.0])
    norms = opts.step()
    assert norms["a"] == float("inf")
    assert torch.equal(a.detach(), torch.ones(3))
    assert opts.skipped == {"a": 1}


def test_teacher_forced_log_q_is_clamped_as_the_sampling_pass_is():
    """With the head's bias at (100, 0, ..., 0) and no weights, token 0 is near-certain at every position:
    teacher-forced log q is log(1 - eps) for code 0 and log(eps) (not ~ -100) for any other, as the sampling pass
    reports; ``clamp=False`` gives the exact values. Fails if ``log_prob`` ignores its clamp."""
    torch.manual_seed(0)
    encoder = ARTransformerEncoder((1, 28, 28), num_tokens=3, vocab_size=4, width=16, num_layers=1, num_heads=2,
                                   mlp_ratio=2)
    with torch.no_grad():
        encoder.head.weight.zero_()
        encoder.head.bias.copy_(torch.tensor([100.0, 0.0, 0.0, 0.0]))
    x = _binary_images(2)
    codes = torch.tensor([[[0, 1, 0], [2, 0, 3]]])  # (K=1, B=2, T=3)
    log_q = encoder.log_prob(x, codes)
    top, low = math.log1p(-FLOAT32_EPS), math.log(FLOAT32_EPS)
    torch.testing.assert_close(log_q, torch.tensor([[[top, low, top], [low, top, low]]]), rtol=1e-5, atol=1e-9)
    exact = encoder.log_prob(x, codes, clamp=False)
    assert exact[0, 0, 1].item() == pytest.approx(-100.0 - math.log1p(3 * math.exp(-100.0)), abs=1e-3)
    assert encoder.sample(x, 1).token_log_q.max().item() == pytest.approx(top, rel=1e-5)


def _na_encoder_with_logits(monkeypatch, logits: torch.Tensor) -> NACategoricalEncoder:
    """A bidirectional categorical encoder (T=3, V=4) whose network outputs ``logits (B, 3, 4)`` for any input."""
    torch.manual_seed(0)
    encoder = NACategoricalEncoder((1, 28, 28), num_tokens=3, vocab_size=4, width=16, num_layers=1, num_heads=2,
                                   mlp_ratio=2)
    monkeypatch.setattr(encoder.net, "forward", lambda x: logits)
    return encoder


def test_independent_token_samples_take_each_tokens_own_distribution(monkeypatch):
    """Each (input, token) of the bidirectional encoder has its own distribution; with one near-certain code per
    token, every one of the K draws is that code. Fails if the K x B x T draws are laid out in another order than
    their distributions (invisible with one input or one token)."""
    target = torch.tensor([[0, 1, 2], [3, 0, 1]])  # (B=2, T=3)
    logits = torch.full((2, 3, 4), -100.0).scatter(-1, target[..., None], 100.0)
    encoder = _na_encoder_with_logits(monkeypatch, logits)
    samples = encoder.sample(_binary_images(2), 5, torch.Generator().manual_seed(0))
    assert torch.equal(samples.indices, target.expand(5, 2, 3))
    torch.testing.assert_close(samples.token_log_q, torch.full((5, 2, 3), math.log1p(-FLOAT32_EPS)))


def test_independent_token_log_q_gradient_is_counts_minus_k_times_probabilities(monkeypatch):
    """d/dlogits of sum over K codes of log q(z | x) = count of each code - K softmax(logits), per token (DAPS-NA's
    weighted maximum likelihood trains through it). Fails if log_prob detaches its log-probabilities."""
    logits = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(1), requires_grad=True)
    encoder = _na_encoder_with_logits(monkeypatch, logits)
    codes = torch.randint(0, 4, (5, 2, 3), generator=torch.Generator().manual_seed(2))
    encoder.log_prob(_binary_images(2), codes).sum().backward()
    expected = torch.nn.functional.one_hot(codes, 4).sum(0).float() - 5 * torch.softmax(logits.detach(), -1)
    torch.testing.assert_close(logits.grad, expected, rtol=1e-5, atol=1e-5)


def test_sliced_batchnorm_in_eval_mode_by_hand():
    """Eval mode normalizes with the running statistics as (x - mean) / sqrt(var + 1e-5) * weight + bias: a channel
    whose running variance is 0 stays finite. Fails if eps is left out of the eval-mode normalization."""
    bn = SlicedBatchNorm2d(2).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([1.0, -2.0]))
        bn.running_var.copy_(torch.tensor([0.0, 3.0]))
        bn.weight.copy_(torch.tensor([2.0, 1.0]))
        bn.bias.copy_(torch.tensor([0.5, 0.0]))
        y = bn(torch.tensor([2.0, 1.0]).view(1, 2, 1, 1)).flatten().tolist()
    assert y == pytest.approx([2.0 / math.sqrt(1e-5) + 0.5, 3.0 / math.sqrt(3.0 + 1e-5)], rel=1e-5)
