"""Likelihoods against torch.distributions (original: distributions/bernoulli.py, diagonal_gaussian.py)."""

import math

import pytest
import torch

from daps.functional import FLOAT32_EPS
from daps.likelihoods import Bernoulli, Gaussian


def test_gaussian_log_prob_matches_torch_distributions():
    torch.manual_seed(0)
    lik = Gaussian(1e-3, 10.0)
    x = torch.randn(4, 3, 5, 5)
    params = torch.randn(2, 4, 6, 5, 5)  # (K, B, 2C, H, W)
    mean, log_var = params[:, :, :3], params[:, :, 3:].clamp(math.log(1e-3), math.log(10.0))
    expected = torch.distributions.Normal(mean, (0.5 * log_var).exp()).log_prob(x).sum((-3, -2, -1))
    assert torch.allclose(lik.log_prob(params, x), expected, atol=1e-4)
    assert lik.param_shape((3, 5, 5)) == (6, 5, 5)
    assert torch.equal(lik.mean(params), params[:, :, :3])


def test_gaussian_variance_is_hard_clipped_in_variance_space():
    lik = Gaussian(0.01, 1.0)
    x = torch.zeros(1, 1, 1, 1)
    log_var = torch.tensor([[[[-10.0]]], [[[5.0]]], [[[-1.0]]]]).requires_grad_()  # below, above, inside
    params = torch.cat([torch.zeros_like(log_var), log_var], dim=1)  # (3, 2, 1, 1): mean 0
    lp = lik.log_prob(params, x.expand(3, 1, 1, 1))
    expected = -0.5 * (math.log(2 * math.pi) + torch.tensor([math.log(0.01), 0.0, -1.0]))
    assert torch.allclose(lp, expected, atol=1e-6)
    lp.sum().backward()
    assert log_var.grad[0].item() == 0 and log_var.grad[1].item() == 0 and log_var.grad[2].item() != 0


def test_unclipped_gaussian_and_bad_range():
    lik = Gaussian(FLOAT32_EPS, float("inf"))
    params = torch.tensor([[[[0.0]], [[20.0]]]])
    assert torch.isfinite(lik.log_prob(params, torch.zeros(1, 1, 1, 1))).all()
    with pytest.raises(ValueError):
        Gaussian(1.0, 0.1)


def test_bernoulli_matches_torch_distributions_inside_the_clamp():
    logits = torch.randn(3, 1, 4, 4) * 3
    x = (torch.rand(3, 1, 4, 4) > 0.5).float()
    expected = torch.distributions.Bernoulli(logits=logits).log_prob(x).sum((1, 2, 3))
    assert torch.allclose(Bernoulli().log_prob(logits, x), expected, atol=1e-5)
