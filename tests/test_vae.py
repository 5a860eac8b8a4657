"""The Gaussian VAE baseline (original: models/vae.py): closed-form KL against torch.distributions, the original's
parameter counts, the reparameterized loss, and a deterministic (posterior-mean) evaluation."""

from __future__ import annotations

import math

import pytest
import torch

import daps.functional as DF
from daps import get_preset
from daps.methods import build_method
from daps.methods.vae import GaussianVAE
from daps.nets.feedforward import LOG_VAR_MIN
from daps.presets import configured

TINY = ["vae.hidden=32", "decoder.hidden=32,32", "train.steps=100"]
IMAGE_SHAPE = (1, 28, 28)

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny, latency-bound models


def tiny(*extra: str, seed: int = 0) -> tuple[GaussianVAE, object]:
    cfg = configured("mnist", "vae", [*TINY, *extra])
    torch.manual_seed(seed)
    return build_method(cfg, IMAGE_SHAPE), cfg


def batch(b: int = 8, seed: int = 0) -> torch.Tensor:
    return (torch.rand(b, *IMAGE_SHAPE, generator=torch.Generator().manual_seed(seed)) > 0.8).float()


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_gaussian_kl_matches_torch_distributions():
    g = gen(0)
    mean, log_var = torch.randn(5, 3, generator=g) * 2, torch.randn(5, 3, generator=g) * 3
    q = torch.distributions.Normal(mean, (0.5 * log_var).exp())
    expected = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum(-1)
    kl = DF.gaussian_kl_standard_normal(mean, log_var)
    assert kl.shape == (5,)
    torch.testing.assert_close(kl, expected)


def test_gaussian_kl_is_zero_at_the_prior_and_never_negative_near_it():
    assert DF.gaussian_kl_standard_normal(torch.zeros(4, 2), torch.zeros(4, 2)).eq(0).all()
    log_var = torch.linspace(-1e-3, 1e-3, 2001)[:, None]  # where exp(v) - 1 - v suffers from cancellation
    kl = DF.gaussian_kl_standard_normal(torch.zeros_like(log_var), log_var)
    assert (kl >= 0).all()
    torch.testing.assert_close(kl, 0.25 * log_var[:, 0].double().square().float(), rtol=2e-3, atol=1e-12)


def test_parameter_counts_mnist():
    """The original's counts: recognition 404,996 and generative 218,320 parameters (BatchNorm's running statistics are
    buffers, as Flax's batch_stats)."""
    model = build_method(get_preset("mnist", "vae"), IMAGE_SHAPE)
    assert sum(p.numel() for p in model.encoder.parameters()) == 404_996
    assert sum(p.numel() for p in model.decoder.parameters()) == 218_320
    assert model.vocab_size is None and model.final_beta == pytest.approx(0.01)


def test_loss_is_the_negative_beta_elbo_of_a_reparameterized_sample():
    model, _ = tiny("vae.dropout=0", "vae.beta.kind=constant", "vae.beta.init=0.5")
    x = batch()
    out = model(x, step=10, generator=gen(4))
    assert out.indices is None
    mean, log_var = model.encoder(x)
    g = gen(4)
    eps = torch.randn(mean.shape, generator=g)  # the generator's first draw (no dropout mask)
    z = mean + (0.5 * log_var).exp() * eps
    log_p = model.likelihood.log_prob(model.decoder.decode_latents(z[:, None]), x)
    kl = DF.gaussian_kl_standard_normal(mean, log_var)
    torch.testing.assert_close(out.loss.detach(), -(log_p - 0.5 * kl).mean().detach())
    torch.testing.assert_close(out.logs["kl"], kl.mean().detach())
    assert out.logs["beta"].item() == 0.5


def test_gradients_are_those_of_the_negative_beta_elbo():
    """Every parameter's gradient is that of -(log p(x|z) - beta KL) recomputed here from the same draw: the KL
    term reaches the encoder (a detached KL keeps the loss's value but loses that gradient)."""
    model, _ = tiny("vae.dropout=0", "vae.beta.kind=constant", "vae.beta.init=0.5")
    x = batch()
    model(x, step=10, generator=gen(4)).loss.backward()
    got = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    mean, log_var = model.encoder(x)
    z = mean + (0.5 * log_var).exp() * torch.randn(mean.shape, generator=gen(4))
    log_p = model.likelihood.log_prob(model.decoder.decode_latents(z[:, None]), x)
    (-(log_p - 0.5 * DF.gaussian_kl_standard_normal(mean, log_var)).mean()).backward()
    want = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert got.keys() == want.keys() and any(name.startswith("encoder.") for name in got)
    for name in want:
        torch.testing.assert_close(got[name], want[name], msg=name)


def test_training_noise_comes_from_the_generator():
    model, _ = tiny()
    x = batch()
    a = model(x, step=0, generator=gen(1)).loss
    b = model(x, step=0, generator=gen(1)).loss
    c = model(x, step=0, generator=gen(2)).loss
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_eval_is_deterministic_and_uses_the_posterior_mean():
    model, _ = tiny()
    model(batch(seed=3), step=0, generator=gen(0))  # move BatchNorm's running statistics off their init
    model.eval()
    x = batch()
    a = model.reconstruct(x, gen(1))
    b = model.reconstruct(x, gen(2))
    assert torch.equal(a.x_hat, b.x_hat) and torch.equal(a.log_p, b.log_p)
    mean, log_var = model.encoder(x)
    torch.testing.assert_close(model.encode(x), mean)
    torch.testing.assert_close(a.x_hat, model.decode(mean))
    torch.testing.assert_close(a.kl, DF.gaussian_kl_standard_normal(mean, log_var))
    assert a.indices is None and a.log_q is None and a.token_entropy is None
    assert model.encode(x).shape == (8, 2)


def test_batchnorm_running_statistics_follow_flax_momentum():
    model, _ = tiny("vae.dropout=0")
    x = batch()
    h = model.encoder.hidden(x.flatten(1)).detach()  # (B, hidden) pre-normalization
    model(x, step=0, generator=gen(0))
    torch.testing.assert_close(model.encoder.norm.running_mean, 0.01 * h.mean(0))
    assert model.encoder.norm.eps == 1e-5


def test_log_variance_is_clipped_at_float32_eps():
    model, _ = tiny()
    with torch.no_grad():
        model.encoder.log_var.bias.fill_(-100.0)
    model.eval()
    _, log_var = model.encoder(batch())
    assert LOG_VAR_MIN == pytest.approx(math.log(torch.finfo(torch.float32).eps))
    assert (log_var == LOG_VAR_MIN).all()
