"""The DAPS objective against independent references (which loss trains which parameter, the ELBO terms),
and that training makes the code informative on a toy problem."""

from __future__ import annotations

import math

import pytest
import torch
from toy_patterns import MARGIN_NATS, code_ignoring_bound, identified_patterns, toy_patterns

import daps.functional as DF
from daps import get_preset, parse_overrides
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
    assert out.x_hat.shape == (8, 1, 28, 28)
    assert out.indices.shape == (8, 4) and out.indices.dtype == torch.long
    # The reconstruction is the Bernoulli mean of the decoded first sample (torch.distributions as reference).
    with torch.no_grad():
        expected = torch.distributions.Bernoulli(logits=model.decoder(out.indices)).mean
    torch.testing.assert_close(out.x_hat, expected)
    assert all(v.shape == () and not v.requires_grad for v in out.logs.values())
    assert out.logs["ess"] > 0.99  # eta = 100 at the start: nearly uniform weights
    assert out.logs["eta"].item() == pytest.approx(100.0, rel=1e-5)
    assert out.logs["beta"].item() == pytest.approx(0.5)


def test_gradients_match_the_paper_update():
    """Every parameter's gradient from the one summed loss, against references built without the DAPS code:
    the encoder gets the weighted-MLE gradient ``-mean_b sum_k w_k grad log q(z_k|x_b)`` with the weights
    written out from paper Eq. 5-6, ``w = softmax_k((log p - beta log q) / (eta + beta))`` in float64, and
    ``log q``, ``log p`` from ``torch.distributions``; the decoder gets ``-grad mean log p``; ``log eta``
    gets the derivative of the ESS loss ``(mean_b ESS_b - K ess_target)^2`` with ``ESS = 1 / sum_k w_k^2``,
    written out in float64 and differentiated by central finite differences. Each group also receives nothing
    from the other two terms."""
    model, cfg = tiny_daps("daps.init_eta=1.0")  # eta + beta ~ 1.5: far from uniform weights
    x, k, step = batch(), cfg.daps.num_samples, 5
    total = grads(model, model(x, step, generator=torch.Generator().manual_seed(1)).loss)

    # The same K codes the forward pass drew (it samples first, from its generator).
    indices = model.encoder.sample(x, k, torch.Generator().manual_seed(1)).indices  # (K, B, T)
    q = torch.distributions.Categorical(logits=model.encoder.log_probs(x, indices))  # (K, B, T) x V
    log_q = q.log_prob(indices).sum(-1)  # (K, B)
    p = torch.distributions.Bernoulli(logits=model.decoder(indices))  # (K, B, 1, 28, 28)
    log_p = p.log_prob(x.expand(k, *x.shape)).flatten(2).sum(-1)  # (K, B)
    beta = 0.5 * (0.01 / 0.5) ** (step / 100)  # the mnist preset's exponential decay 0.5 -> 0.01 over 100 steps
    assert model.beta(step) == pytest.approx(beta, rel=1e-6)
    eta = model.log_eta.exp().item()
    w = torch.softmax((log_p.double() - beta * log_q.double()).detach() / (eta + beta), dim=0).float()  # (K, B)
    encoder_ref = grads(model, -(w * log_q).sum(0).mean())
    decoder_ref = grads(model, -log_p.mean())

    a = (log_p.double() - beta * log_q.double()).detach()  # (K, B)

    def eta_loss_ref(log_eta: float) -> float:
        w = torch.softmax(a / (math.exp(log_eta) + beta), dim=0)  # (K, B)
        ess = 1 / w.square().sum(0)  # (B,) paper Eq. 8 for normalized weights
        return float((ess.mean() - k * cfg.daps.ess_target) ** 2)

    log_eta0, h = model.log_eta.item(), 1e-4
    out = model(x, step, generator=torch.Generator().manual_seed(1))
    assert out.logs["eta_loss"].item() == pytest.approx(eta_loss_ref(log_eta0), rel=1e-3, abs=1e-4)
    # the logged ESS: a fraction of K (paper Eq. 8 over K), averaged over the batch
    ess_ref = float((1 / torch.softmax(a / (math.exp(log_eta0) + beta), dim=0).square().sum(0)).mean() / k)
    assert out.logs["ess"].item() == pytest.approx(ess_ref, rel=1e-4)
    eta_fd = (eta_loss_ref(log_eta0 + h) - eta_loss_ref(log_eta0 - h)) / (2 * h)
    assert abs(eta_fd) > 1e-2  # the ESS loss really depends on eta here
    assert total["log_eta"].item() == pytest.approx(eta_fd, rel=1e-3, abs=1e-5)

    for name, g in total.items():
        if name == "log_eta":
            assert encoder_ref[name] is None and decoder_ref[name] is None
            continue
        expected = encoder_ref[name] if name.startswith("encoder.") else decoder_ref[name]
        other = decoder_ref[name] if name.startswith("encoder.") else encoder_ref[name]
        assert g is not None and expected is not None and other is None, name
        torch.testing.assert_close(g, expected, atol=1e-5, rtol=1e-3, msg=name)


def test_with_the_originals_token0_masks_the_weights_use_the_teacher_forced_log_q():
    """``encoder.mask_token0=true``: the teacher-forced log q (the original's, code 0 treated as padding) differs from
    the sampling pass's, and it is the one the importance weights (and the logged log q) use, as in the original."""
    model, cfg = tiny_daps("encoder.mask_token0=true")
    x, k = batch(), cfg.daps.num_samples
    out = model(x, 0, generator=torch.Generator().manual_seed(1))
    samples = model.encoder.sample(x, k, torch.Generator().manual_seed(1))  # the codes the forward drew
    assert (samples.indices == 0).any()
    teacher_forced = model.encoder.log_prob(x, samples.indices).sum(-1).mean().item()
    assert abs(teacher_forced - samples.log_q.mean().item()) > 1e-3  # 5.6e-3 here
    assert out.logs["log_q"].item() == pytest.approx(teacher_forced, rel=1e-6)


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
    # ELBO terms against torch.distributions on the teacher-forced conditionals of the sampled code:
    # log q = sum_t log q(z_t | z_<t, x), KL(q || uniform) = sum_t (log V - H(q_t)), log p under Bernoulli.
    with torch.no_grad():
        q = torch.distributions.Categorical(logits=model.encoder.log_probs(x, idx[None])[0])  # (B, T) x V
        p = torch.distributions.Bernoulli(logits=model.decoder(idx))
        torch.testing.assert_close(rec.log_q, q.log_prob(idx).sum(-1), atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(rec.kl, (math.log(16) - q.entropy()).sum(-1), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(rec.log_p, p.log_prob(x).flatten(1).sum(-1), atol=1e-3, rtol=1e-5)


def test_bernoulli_log_prob_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(5, 1, 28, 28, generator=g) * 4).clamp(-12, 12)  # inside the clamp range
    x = (torch.rand(5, 1, 28, 28, generator=g) > 0.5).float()
    reference = torch.distributions.Bernoulli(logits=logits).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(bernoulli_log_prob(logits, x), reference, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(bernoulli_mean(logits), torch.sigmoid(logits), atol=1e-6, rtol=1e-6)
    # Extreme logits are clamped like the original's probability clamp to [eps, 1 - eps]: a pixel the decoder
    # calls impossible costs exactly -log(eps) = 15.94 nats, one it calls certain costs -log(1 - eps) ~ 1.2e-7.
    extreme = bernoulli_log_prob(torch.tensor([[-1e4, -1e4, 1e4, 1e4]]), torch.tensor([[1.0, 1.0, 1.0, 0.0]]))
    expected = 3 * math.log(DF.FLOAT32_EPS) + math.log1p(-DF.FLOAT32_EPS)
    assert extreme.item() == pytest.approx(expected, rel=1e-5)


def test_training_makes_the_code_informative_on_a_toy_dataset():
    """Four fixed binary patterns, 150 DAPS steps: log p must beat the best code-ignoring decoder (the exact
    per-pixel-mean bound) by ``MARGIN_NATS``, the reconstructions must tell the patterns apart, and eta must
    have moved the ESS below its near-uniform start. With the encoder frozen this fails (see
    ``test_contract.py``'s negative controls): the decoder alone ends at the bound."""
    model, cfg = tiny_daps("daps.init_eta=1.0", "train.steps=150")
    g = torch.Generator().manual_seed(0)
    patterns = toy_patterns(g)
    optimizers = Optimizers(model, model.optimizer_specs(3e-3, 1.0), 1e-4)
    for step in range(150):
        x = patterns[torch.randint(4, (32,), generator=g)]
        out = model(x, step, generator=g)
        optimizers.zero_grad()
        out.loss.backward()
        optimizers.step()
    model.eval()
    rec = model.reconstruct(patterns, torch.Generator().manual_seed(0))
    bound = code_ignoring_bound(patterns)
    assert rec.log_p.mean().item() > bound + MARGIN_NATS, (rec.log_p.mean().item(), bound)
    assert identified_patterns(rec.x_hat, patterns) >= 3
    assert out.logs["ess"].item() < 0.95
