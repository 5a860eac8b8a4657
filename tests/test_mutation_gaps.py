"""Known answers for behaviour that a mutation sweep of the core math (daps/functional.py, daps/methods/daps.py,
daps/metrics/image.py) found no test guarding: where a decaying schedule settles for a fractional
``num_steps * end_pct``, DAPS's weights at beta = 0, the documented range of ``daps.resample``, resampling with
float32 weights that sum a little below one and with the largest uniforms, and SSIM's constants and window off the
defaults (a 0-255 scale, an even window). Each test names the slip it fails on; the references are closed forms,
symmetry and scikit-image."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

import daps.functional as DF
from daps import get_preset, parse_overrides
from daps.errors import UserError
from daps.metrics.image import ssim_per_image

# ---------------------------------------------------------------- schedules


@pytest.mark.parametrize("kind", ["exp_decay", "cosine"])
def test_a_schedule_decays_over_the_floor_of_num_steps_times_end_pct(kind):
    # 10 * 0.57 = 5.7: the schedule reaches its end at step floor(5.7) = 5 and is held there (fails on round or
    # ceil, which end it at step 6).
    init, end, num_steps, end_pct, steps = 1.0, 0.01, 10, 0.57, 5

    def closed_form(step: int) -> float:
        t = min(step, steps) / steps
        if kind == "exp_decay":
            return init * (end / init) ** t
        return end + (init - end) * 0.5 * (1.0 + math.cos(math.pi * t))

    for step in range(9):
        got = DF.schedule_value(kind, step, init, end, num_steps, end_pct)
        assert got == pytest.approx(closed_form(step), rel=1e-9, abs=1e-12), step
    assert DF.schedule_value(kind, 5, init, end, num_steps, end_pct) == pytest.approx(end, rel=1e-9)


# ---------------------------------------------------------------- DAPS weights and settings


def test_weights_at_beta_zero_are_a_softmax_of_the_rewards_over_eta():
    # beta = 0 (no entropy term) is in the documented range beta >= 0: q* ∝ q exp(A / eta), so the self-normalized
    # weights are softmax_k(R_k / eta) (fails when a plain 0.0 is refused as "beta must be > 0").
    g = torch.Generator().manual_seed(0)
    log_q = -torch.rand(6, 3, generator=g) * 20
    rewards = -torch.rand(6, 3, generator=g) * 50
    for beta in (0.0, 0):
        w = DF.importance_weights(log_q, rewards, eta=2.5, beta=beta)
        torch.testing.assert_close(w, torch.softmax(rewards.double() / 2.5, dim=0).float())


def test_resample_may_take_every_one_of_the_k_codes():
    # daps.resample is documented in [0, num_samples]: m = K is accepted, K + 1 refused (fails on an off-by-one
    # that refuses m = K).
    for scheme in ("systematic", "multinomial"):
        overrides = ["daps.num_samples=4", "daps.resample=4", f"daps.resample_scheme={scheme}"]
        parse_overrides(get_preset("mnist"), overrides).options.validate()
    with pytest.raises(UserError, match="daps.resample must be in"):
        parse_overrides(get_preset("mnist"), ["daps.num_samples=4", "daps.resample=5"]).options.validate()


@pytest.mark.parametrize("scheme", ["systematic", "multinomial"])
def test_resampling_never_draws_a_zero_weight_code_when_float32_weights_sum_below_one(scheme):
    # Three weights of 0.3333333 sum to 0.99999994 in float32; the largest uniform torch.rand gives is
    # 1 - 2^-24 = 0.99999994. Only the code of weight 0 lies beyond the last positive weight: it must never be
    # drawn (fails when the cumulative sum is not renormalized to end at exactly 1).
    weights = torch.tensor([[0.3333333, 0.5], [0.3333333, 0.0], [0.3333333, 0.5], [0.0, 0.0]])  # (K=4, B=2)
    assert float(weights[:, 0].sum()) < 1.0
    for u in (0.0, 0.5, 0.6666666, 1.0 - 2.0**-24):
        uniforms = torch.full((1, 2), u)
        chosen = DF.resample_indices(weights, uniforms, scheme, 1)  # (1, B)
        assert chosen.shape == (1, 2)
        for b in range(2):
            assert weights[chosen[0, b], b] > 0, (u, b, chosen)


@pytest.mark.parametrize("m", [1, 2, 3, 4, 7, 8, 16])
def test_systematic_resampling_never_draws_a_zero_weight_code_for_the_largest_uniforms(m):
    # torch.rand's largest float32 value is 1 - 2^-24; the points (u + j) / m must all stay below 1 (in float32,
    # u + m - 1 rounds up to m there, and the last point read 1.0, past every cumulative weight). Each code k must
    # be drawn floor(m w_k) or ceil(m w_k) times, so never a code of weight 0.
    weights = torch.tensor([[0.5], [0.5], [0.0], [0.0]])
    for ulps in range(1, 9):
        u = torch.tensor([[1.0 - ulps * 2.0**-24]])
        counts = torch.bincount(DF.resample_indices(weights, u, "systematic", m)[:, 0], minlength=4)
        assert counts[2:].sum() == 0 and all(c in (m // 2, (m + 1) // 2) for c in counts[:2].tolist()), (m, ulps)


# ---------------------------------------------------------------- SSIM off its defaults


def test_ssim_of_dark_images_on_a_0_255_scale_matches_scikit_image():
    # On a 0-255 scale the stabilizers are c1 = (0.01 * 255)^2 = 6.5 and c2 = (0.03 * 255)^2 = 58.5. Dark images
    # (values 0-4) have local means and variances of the order of c1 and c2, so they weigh in (fails on
    # c = k^2 * max_val, which is the same number only at max_val = 1).
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 16, 16, generator=g, dtype=torch.float64) * 4.0
    x_hat = (x + torch.randn(2, 3, 16, 16, generator=g, dtype=torch.float64)).clamp(0.0, 255.0)
    got = ssim_per_image(x_hat, x, max_val=255.0).double().numpy()
    want = np.array([
        structural_similarity(a.permute(1, 2, 0).numpy(), b.permute(1, 2, 0).numpy(), data_range=255.0,
                              channel_axis=-1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        for a, b in zip(x_hat, x)
    ])
    assert np.abs(got - want).max() <= 1e-6, (got, want)


def test_ssim_with_an_even_window_is_unchanged_by_mirroring_both_images():
    # The Gaussian taps sit at k - (window - 1) / 2, symmetric for even windows too, so mirroring both images
    # left-right or top-bottom mirrors the SSIM map and leaves its mean alone (fails on taps at k - window // 2,
    # which shift an even window by half a pixel).
    g = torch.Generator().manual_seed(4)
    x = torch.rand(2, 1, 14, 14, generator=g)
    x_hat = (x + 0.3 * torch.randn(2, 1, 14, 14, generator=g)).clamp(0, 1)
    for window in (8, 10):
        ssim = ssim_per_image(x_hat, x, window=window)
        for dims in ([-1], [-2]):
            mirrored = ssim_per_image(x_hat.flip(dims), x.flip(dims), window=window)
            torch.testing.assert_close(mirrored, ssim, rtol=0, atol=1e-6)
