"""The DAPS objective: which loss trains which parameter, and that training improves reconstructions."""

from __future__ import annotations

import math

import pytest
import torch

import daps.functional as DF
from daps.config import get_preset, parse_overrides
from daps.likelihoods import bernoulli_log_prob, bernoulli_mean
from daps.methods import build_method
from daps.optim import Optimizers

TINY = [
    "encoder.width=16", "encoder.num_heads=2", "encoder.vocab_size=16", "encoder.num_tokens=4",
    "decoder.embed_dim=8", "decoder.hidden=32,32", "daps.num_samples=4", "train.steps=100",
]


def tiny_daps(*extra: str):
    cfg = parse_overrides(get_preset("mnist"), [*TINY, *extra])
    torch.manual_seed(0)
    return build_method(cfg, (1, 28, 28)), cfg


def batch(b: int = 8) -> torch.Tensor:
    return (torch.rand(b, 1, 28, 28, generator=torch.Generator().manual_seed(0)) > 0.8).float()


def grads(model, loss) -> dict[str, torch.Tensor | None]:
    model.zero_grad(set_to_none=True)
    loss.backward(retain_graph=True)
    return {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}


def test_output_contract():
    model, cfg = tiny_daps()
    out = model(batch(), step=0, generator=torch.Generator().manual_seed(0))
    assert out.loss.shape == () and torch.isfinite(out.loss)
    assert out.x_hat.shape == (8, 1, 28, 28) and 0 <= out.x_hat.min() and out.x_hat.max() <= 1
    assert out.indices.shape == (8, 4) and out.indices.dtype == torch.long
    assert all(v.shape == () and not v.requires_grad for v in out.logs.values())
    assert out.logs["ess"] > 0.99  # eta = 100 at the start: nearly uniform weights (SPEC 1.6)
    assert out.logs["eta"].item() == pytest.approx(100.0, rel=1e-5)
    assert out.logs["beta"].item() == pytest.approx(0.5)


def test_each_loss_reaches_only_its_own_parameters():
    """The summed loss must give the encoder the weighted-MLE gradient, eta only the ESS gradient and
    the decoder only the likelihood gradient; recomputed here term by term from the same samples."""
    model, cfg = tiny_daps()
    x, k = batch(), cfg.daps.num_samples
    total = grads(model, model(x, 5, generator=torch.Generator().manual_seed(1)).loss)

    samples = model.encoder.sample(x, k, torch.Generator().manual_seed(1))
    token_log_q = model.encoder.log_prob(x, samples.indices)
    log_q = token_log_q.sum(-1)
    log_p = bernoulli_log_prob(model.decoder(samples.indices.flatten(0, 1)), x.repeat(k, 1, 1, 1)).view(k, -1)
    beta = model.beta(5)
    eta = model.log_eta.exp()
    w = DF.importance_weights(log_q.detach(), log_p.detach(), eta.detach(), beta)
    encoder_only = grads(model, -(w * log_q).sum(0).mean())
    ess = DF.effective_sample_size(DF.importance_weights(log_q.detach(), log_p.detach(), eta, beta))
    eta_only = grads(model, DF.eta_loss(ess, k, cfg.daps.ess_target))
    decoder_only = grads(model, -log_p.mean())

    for name, g in total.items():
        if name == "log_eta":
            expected = eta_only[name]
            assert encoder_only[name] is None and decoder_only[name] is None
        elif name.startswith("encoder."):
            expected = encoder_only[name]
            assert eta_only[name] is None and decoder_only[name] is None
        else:
            expected = decoder_only[name]
            assert eta_only[name] is None and encoder_only[name] is None
        assert g is not None and expected is not None, name
        torch.testing.assert_close(g, expected, atol=1e-6, rtol=1e-4, msg=name)


def test_same_seed_same_result_and_beta_schedule():
    model, _ = tiny_daps()
    a = model(batch(), 0, generator=torch.Generator().manual_seed(3))
    b = model(batch(), 0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.indices, b.indices) and torch.equal(a.loss, b.loss)
    assert model.beta(0) == pytest.approx(0.5)
    assert model.beta(100) == pytest.approx(0.01, rel=1e-5)
    assert model.final_beta == pytest.approx(0.01)


def test_decode_encode_and_reconstruct_consistent():
    model, _ = tiny_daps()
    model.eval()
    x = batch()
    rec = model.reconstruct(x, torch.Generator().manual_seed(4))
    idx = model.encode(x, torch.Generator().manual_seed(4))
    assert torch.equal(rec.indices, idx)
    torch.testing.assert_close(model.decode(idx), rec.x_hat)
    assert rec.log_p.shape == rec.kl.shape == rec.log_q.shape == (8,)
    assert (rec.kl >= 0).all() and (rec.log_q <= 0).all()


def test_bernoulli_log_prob_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(5, 1, 28, 28, generator=g) * 4).clamp(-12, 12)  # inside the clamp range
    x = (torch.rand(5, 1, 28, 28, generator=g) > 0.5).float()
    reference = torch.distributions.Bernoulli(logits=logits).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(bernoulli_log_prob(logits, x), reference, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(bernoulli_mean(logits), torch.sigmoid(logits), atol=1e-6, rtol=1e-6)
    # Extreme logits are clamped like the original's probability clamp: finite, >= log(eps) per pixel.
    extreme = bernoulli_log_prob(torch.full((1, 4), -1e4), torch.ones(1, 4))
    assert torch.isfinite(extreme).all() and extreme.item() >= 4 * math.log(DF.FLOAT32_EPS) - 1e-3


def test_training_improves_reconstruction_on_a_toy_dataset():
    """Four fixed binary patterns: after 150 DAPS steps the decoder must reconstruct them much better
    than at initialization, and eta must have moved towards the ESS target."""
    model, cfg = tiny_daps("daps.init_eta=1.0", "train.steps=150")
    g = torch.Generator().manual_seed(0)
    patterns = (torch.rand(4, 1, 28, 28, generator=g) > 0.7).float()
    optimizers = Optimizers(model, model.optimizer_specs(3e-3, 1.0), 1e-4)

    def val_log_p() -> float:
        model.eval()
        rec = model.reconstruct(patterns, torch.Generator().manual_seed(0))
        model.train()
        return rec.log_p.mean().item()

    before = val_log_p()
    for step in range(150):
        x = patterns[torch.randint(4, (32,), generator=g)]
        out = model(x, step, generator=g)
        optimizers.zero_grad()
        out.loss.backward()
        optimizers.step()
    after = val_log_p()
    assert after > before + 200, (before, after)  # nats per image; a 28x28 image starts near -540
    assert out.logs["ess"].item() < 0.95
