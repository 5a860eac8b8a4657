"""REINFORCE with a leave-one-out baseline and PPO: their math in ``daps.functional`` (properties and a
peer library), REINFORCE's gradient against exact enumeration, and PPO's old-parameter bookkeeping."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

import daps.functional as DF
from daps import get_preset
from daps.methods import build_method
from daps.methods.ppo import PPO
from daps.methods.reinforce import Reinforce
from daps.optim import Optimizers
from daps.presets import configured

TINY = [
    "encoder.width=16", "encoder.num_heads=2", "encoder.vocab_size=16", "encoder.num_tokens=4",
    "decoder.embed_dim=8", "decoder.hidden=32,32", "reinforce.num_samples=4", "train.steps=100",
]
IMAGE_SHAPE = (1, 28, 28)

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny, latency-bound models


def tiny(method: str, *extra: str, seed: int = 0, image_shape: tuple[int, int, int] = IMAGE_SHAPE):
    cfg = configured("mnist", method, [*TINY, *extra])
    torch.manual_seed(seed)
    return build_method(cfg, image_shape), cfg


def batch(b: int = 8, seed: int = 0, shape: tuple[int, int, int] = IMAGE_SHAPE) -> torch.Tensor:
    return (torch.rand(b, *shape, generator=torch.Generator().manual_seed(seed)) > 0.8).float()


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- daps.functional


def test_leave_one_out_baseline_is_the_mean_of_the_others():
    rewards = torch.randn(5, 3, generator=gen(0)) * 50 - 500  # (K, B)
    b = DF.leave_one_out_baseline(rewards)
    for k in range(5):
        others = torch.cat([rewards[:k], rewards[k + 1 :]])
        torch.testing.assert_close(b[k], others.mean(0))
    torch.testing.assert_close((rewards - b).sum(0), torch.zeros(3), atol=1e-3, rtol=0)


def test_leave_one_out_baseline_ignores_its_own_sample():
    """d b_k / d r_k = 0 (what keeps the estimator unbiased) and d b_k / d r_j = 1 / (K - 1)."""
    rewards = torch.randn(4, 2, generator=gen(1))
    jac = torch.autograd.functional.jacobian(DF.leave_one_out_baseline, rewards)  # (K, B, K, B)
    for b in range(2):
        expected = (1 - torch.eye(4)) / 3
        torch.testing.assert_close(jac[:, b, :, b], expected)
    with pytest.raises(ValueError):
        DF.leave_one_out_baseline(torch.zeros(1, 3))


def test_categorical_kl_matches_torch_distributions():
    logits_p, logits_q = torch.randn(2, 6, 4, 7, generator=gen(2)) * 2
    log_p, log_q = DF.categorical_log_probs(logits_p), DF.categorical_log_probs(logits_q)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Categorical(logits=logits_p), torch.distributions.Categorical(logits=logits_q)
    )
    kl = DF.categorical_kl(log_p, log_q)
    assert kl.shape == (6, 4)
    torch.testing.assert_close(kl, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(DF.categorical_kl(log_p, log_p), torch.zeros(6, 4))


def test_ppo_clipped_loss_values_and_gradients():
    clip = 0.2
    adv = torch.tensor([2.0, 2.0, 2.0, -3.0, -3.0, -3.0])
    ratio = torch.tensor([1.0, 1.5, 0.5, 1.0, 1.5, 0.5])
    log_ratio = ratio.log().requires_grad_()
    loss = DF.ppo_clipped_loss(log_ratio, adv, clip)
    # Pessimistic bound: the smaller of the clipped and the unclipped objective.
    expected = torch.tensor([-2.0, -1.2 * 2, -0.5 * 2, 3.0, 1.5 * 3, 0.8 * 3])
    torch.testing.assert_close(loss.detach(), expected)
    (grad,) = torch.autograd.grad(loss.sum(), log_ratio)
    # -A r where the unclipped term is the minimum; 0 where clipping caps the improvement.
    torch.testing.assert_close(grad, torch.tensor([-2.0, 0.0, -1.0, 3.0, 4.5, 0.0]))
    assert (loss.detach() >= -ratio * adv).all()


def test_adaptive_kl_coefficient_moves_toward_the_target():
    kw = {"target": 0.05, "scale": 1.5, "gain": 2.0, "min_coeff": 1e-3, "max_coeff": 1e3}
    assert DF.adaptive_kl_coefficient(10.0, 0.01, **kw).item() == pytest.approx(5.0)  # KL too small: relax
    assert DF.adaptive_kl_coefficient(10.0, 0.2, **kw).item() == pytest.approx(20.0)  # KL too large: tighten
    assert DF.adaptive_kl_coefficient(10.0, 0.05, **kw).item() == pytest.approx(10.0)  # inside the band
    assert DF.adaptive_kl_coefficient(10.0, 0.05 * 1.49, **kw).item() == pytest.approx(10.0)
    assert DF.adaptive_kl_coefficient(1.5e-3, 0.0, **kw).item() == pytest.approx(1e-3)  # clipped below
    assert DF.adaptive_kl_coefficient(800.0, 1.0, **kw).item() == pytest.approx(1e3)  # clipped above
    out = DF.adaptive_kl_coefficient(torch.tensor(10.0), torch.tensor(1.0), **kw)
    assert out.dtype == torch.float32 and out.shape == ()


# ---------------------------------------------------------------- REINFORCE-LOO


def test_reinforce_gradient_is_unbiased_against_enumeration():
    """T=2 tokens of V=3 codes: all 9 codes are enumerable, so the exact gradient of the beta-ELBO
    sum_z q(z|x) (log p(x|z) - beta log q(z|x)) is computable. The mean of many estimator draws (the
    encoder gradient of the method's own loss, negated) must match it within a few standard errors.
    (A plain-mean baseline, or a reward without the -beta log q term, misses by 30+ standard errors.)"""
    shape = (1, 4, 4)
    model, _ = tiny(
        "reinforce", "encoder.num_tokens=2", "encoder.vocab_size=3", "encoder.width=8", "decoder.embed_dim=4",
        "decoder.hidden=8", "reinforce.beta.kind=constant", "reinforce.beta.init=1.0", image_shape=shape,
    )
    assert isinstance(model, Reinforce) and model.beta(0) == 1.0
    x = batch(1, seed=1, shape=shape)
    params = list(model.encoder.parameters())

    codes = torch.tensor(list(itertools.product(range(3), repeat=2)))[:, None, :]  # (9, 1, T=2)
    log_q = model.encoder.log_prob(x, codes).sum(-1)[:, 0]  # (9,)
    with torch.no_grad():
        log_p = model.likelihood.log_prob(model.decoder(codes[:, 0]), x)  # (9,)
    objective = (log_q.exp() * (log_p - 1.0 * log_q)).sum()
    exact = torch.cat([g.flatten() for g in torch.autograd.grad(objective, params)])

    num_groups, copies = 30, 250  # each group: one forward over 250 copies of x (250 draws of K=4 samples)
    g = gen(0)
    draws = []
    for _ in range(num_groups):
        model.zero_grad()
        model(x.expand(copies, -1, -1, -1), step=0, generator=g).loss.backward()
        draws.append(-torch.cat([p.grad.flatten() for p in params]))
    draws = torch.stack(draws)  # (G, num_params)

    directions = torch.randn(8, exact.numel(), generator=gen(2))
    projected = draws @ directions.T  # (G, 8)
    z = (projected.mean(0) - directions @ exact) / (projected.std(0) / num_groups**0.5)
    assert z.abs().max() < 4.5, z
    assert (draws.mean(0) - exact).norm() < 0.05 * exact.norm()


def test_reinforce_baseline_is_taken_over_each_inputs_own_samples():
    """beta = 0 and a likelihood of the input alone: an input's K rewards are equal, so its leave-one-out advantages
    are 0 (up to rounding) and the encoder gets no gradient, though the inputs' rewards differ by tens of nats. A
    baseline taken across the batch (the other inputs' rewards) would push the encoder by those differences."""
    model, _ = tiny("reinforce", "reinforce.beta.kind=constant", "reinforce.beta.init=0.0")
    x = batch(8)
    model.likelihood.log_prob = lambda params, x: 0 * params.flatten(2).sum(-1) + 10 * x.flatten(1).sum(-1)
    assert (10 * x.flatten(1).sum(-1)).std() > 10  # the inputs' rewards differ
    model(x, step=0, generator=gen(0)).loss.backward()
    grad = torch.cat([p.grad.flatten() for p in model.encoder.parameters() if p.grad is not None])
    assert grad.abs().max() < 1e-3, grad.abs().max()


def test_ppo_adapts_its_kl_weight_on_the_batch_mean_kl():
    """The KL weight moves by the batch mean of KL(old || new) (the peer function, fed the logged mean): with the
    target set to that mean it stays put, where the batch sum (8 times larger) would tighten it."""
    model, cfg = tiny("ppo")
    x = batch(8)
    with torch.no_grad():
        model.encoder.head.bias[0] += 1.0  # a policy change since the last step
    model.eval()  # measures the KL this step will see, changing nothing
    measured = model(x, step=1, generator=gen(1)).logs["kl_old_new"].item()
    assert measured > 0
    model.train()
    model.cfg.kl_target = measured
    out = model(x, step=1, generator=gen(1))
    assert out.logs["kl_old_new"].item() == pytest.approx(measured)
    c = model.cfg
    expected = DF.adaptive_kl_coefficient(out.logs["kl_coeff"], out.logs["kl_old_new"], c.kl_target, c.kl_scale,
                                          c.kl_gain, c.min_kl_coeff, c.max_kl_coeff)
    assert model.kl_coeff.item() == pytest.approx(float(expected)) == pytest.approx(out.logs["kl_coeff"].item())


def test_reinforce_logs_and_constant_beta():
    model, _ = tiny("reinforce", "reinforce.beta.kind=constant", "reinforce.beta.init=0.3")
    assert model.final_beta == pytest.approx(0.3)
    out = model(batch(), step=50, generator=gen(0))
    logs = out.logs
    assert logs["beta"].item() == pytest.approx(0.3)
    assert logs["beta_elbo"].item() == pytest.approx(logs["log_p"].item() - 0.3 * logs["kl"].item(), rel=1e-5)
    assert logs["reward_std"] > 0


# ---------------------------------------------------------------- PPO


def test_ppo_parameter_counts_mnist():
    cfg = get_preset("mnist", "ppo")
    model = build_method(cfg, IMAGE_SHAPE)
    # The old encoder holds buffers, not parameters.
    counts = [sum(p.numel() for p in m.parameters()) for m in (model.encoder, model.decoder, model.value, model)]
    assert counts == [156_480, 267_344, 5_185, 156_480 + 267_344 + 5_185]


def test_ppo_first_step_gradient_is_the_policy_gradient():
    """At the first step q_old = q: ratio 1, nothing clipped, KL(old || new) = 0 with zero gradient, so the
    encoder's gradient must equal that of mean(-A log q + beta KL(q || U)), computed here independently."""
    model, _ = tiny("ppo")
    x = batch()
    out = model(x, step=0, generator=gen(3))
    assert out.logs["ratio"].item() == pytest.approx(1.0)
    assert out.logs["kl_old_new"].item() == 0.0 and out.logs["clip_frac"].item() == 0.0
    out.loss.backward()
    got = [p.grad.clone() for p in model.encoder.parameters()]

    model.zero_grad()
    indices = model.encoder.sample(x, 1, gen(3)).indices  # the same draws: old == new
    assert torch.equal(indices[0], out.indices)
    log_q = model.encoder.log_prob(x, indices).sum(-1)[0]  # (B,)
    log_probs = model.encoder.log_probs(x, indices)[0]  # (B, T, V)
    kl = (torch.log(torch.tensor(16.0)) + (log_probs.exp() * log_probs).sum(-1)).sum(-1)  # (B,)
    with torch.no_grad():
        advantages = model.likelihood.log_prob(model.decoder(indices[0]), x) - model.value(x)
    (-(advantages * log_q) + model.beta(0) * kl).mean().backward()
    for a, (name, p) in zip(got, model.encoder.named_parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-3, msg=name)  # gradients are O(100)


def test_ppo_old_params_are_the_pre_step_params():
    model, cfg = tiny("ppo")
    optimizers = Optimizers(model, model.optimizer_specs(1e-2, cfg.optim.grad_clip), 1e-4)
    x = batch()
    for step in range(2):
        before = {n: p.detach().clone() for n, p in model.encoder.named_parameters()}
        out = model(x, step, generator=gen(step))
        optimizers.zero_grad()
        out.loss.backward()
        optimizers.step()
        for name, value in before.items():
            old = model.old_encoder.get_buffer(name)
            assert torch.equal(old, value), name
            assert old.data_ptr() != model.encoder.get_parameter(name).data_ptr()  # no aliasing
        assert any(not torch.equal(p, before[n]) for n, p in model.encoder.named_parameters())
    # The second step was evaluated one update behind: a ratio != 1 and a positive KL(old || new).
    assert out.logs["kl_old_new"] > 0 and out.logs["ratio"] != 1.0


def test_ppo_samples_from_the_old_encoder_and_compares_with_it():
    model, _ = tiny("ppo")
    reference_old = copy.deepcopy(model.encoder)
    with torch.no_grad():
        model.encoder.head.bias[0] += 30.0  # the current encoder now (almost) always picks code 0
    x = batch()
    assert (model.encode(x, gen(0)) == 0).all()
    out = model(x, step=0, generator=gen(1))
    assert not (out.indices == 0).all()  # drawn from theta_old
    assert torch.equal(out.indices, reference_old.sample(x, 1, gen(1)).indices[0])
    indices = out.indices[None]
    with torch.no_grad():
        old_lp, new_lp = reference_old.log_probs(x, indices), model.encoder.log_probs(x, indices)
        expected_kl = DF.categorical_kl(old_lp, new_lp).sum(-1).mean()
        log_ratio = (new_lp - old_lp).gather(-1, indices[..., None]).squeeze(-1).sum(-1)
    torch.testing.assert_close(out.logs["kl_old_new"], expected_kl)
    torch.testing.assert_close(out.logs["ratio"], log_ratio.exp().mean())
    assert out.logs["clip_frac"] > 0


def test_ppo_kl_coefficient_adapts_in_the_right_direction():
    model, cfg = tiny("ppo")
    assert model.kl_coeff.item() == cfg.ppo.init_kl_coeff == 10.0
    x = batch()
    out = model(x, step=0, generator=gen(0))  # KL(old || new) = 0 < target / scale: relax
    assert out.logs["kl_coeff"].item() == 10.0 and model.kl_coeff.item() == pytest.approx(5.0)
    with torch.no_grad():
        model.encoder.head.bias[0] += 5.0  # a large policy change since the last step
    out = model(x, step=1, generator=gen(1))
    assert out.logs["kl_old_new"] > cfg.ppo.kl_target * cfg.ppo.kl_scale
    assert model.kl_coeff.item() == pytest.approx(10.0)  # tighten


def test_ppo_eval_mode_forward_changes_no_state():
    model, _ = tiny("ppo")
    with torch.no_grad():
        model.encoder.head.bias[0] += 5.0
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    model(batch(), step=0, generator=gen(0))
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_ppo_constant_beta_works():
    """The original (models/ppo.py) crashes on a constant beta schedule; here beta_final is that constant."""
    model, _ = tiny("ppo", "ppo.beta.kind=constant", "ppo.beta.init=0.01")
    assert isinstance(model, PPO) and model.final_beta == pytest.approx(0.01)
    out = model(batch(), step=40, generator=gen(0))
    assert out.logs["beta"].item() == pytest.approx(0.01)
    logs = out.logs
    assert logs["beta_elbo"].item() == pytest.approx(logs["log_p"].item() - 0.01 * logs["kl"].item(), rel=1e-5)


def test_ppo_value_net_is_trained_by_the_value_loss_alone():
    """The value loss mean(((R - b) / D_x)^2) is the only path into b(x): its gradient from the whole loss
    equals that of the logged value loss, recomputed from the decoder's rewards."""
    model, _ = tiny("ppo")
    x = batch()
    out = model(x, step=0, generator=gen(0))
    out.loss.backward()
    got = [p.grad.clone() for p in model.value.parameters()]
    model.zero_grad()
    with torch.no_grad():
        rewards = model.likelihood.log_prob(model.decoder(out.indices), x)
    value_loss = ((rewards - model.value(x)) / 784).square().mean()
    torch.testing.assert_close(value_loss.detach(), out.logs["value_loss"])
    value_loss.backward()
    for a, p in zip(got, model.value.parameters()):
        torch.testing.assert_close(a, p.grad)
    specs = {s.name: s for s in model.optimizer_specs(3e-4, 1.0)}
    assert specs["value"].clip == "global_norm" and specs["value"].lr == 1e-4 and specs["vae"].clip == "adaptive"


def test_reinforce_equal_rewards_give_zero_encoder_gradient():
    """The leave-one-out advantages sum to zero over K: when every code earns the same reward the encoder gets no
    gradient at all (without a baseline it would follow the reward's size: the enumeration test cannot see that,
    as a missing baseline leaves the gradient unbiased)."""
    model, _ = tiny("reinforce", "reinforce.beta.kind=constant", "reinforce.beta.init=0.0")
    model.likelihood.log_prob = lambda params, x: params.flatten(-3).sum(-1) * 0.0 - 300.0  # the same for every z
    model(batch(), step=0, generator=gen(0)).loss.backward()
    grads = [p.grad for p in model.encoder.parameters() if p.grad is not None]
    assert grads and all(float(g.abs().max()) == 0 for g in grads)


def test_reinforce_decoder_gradient_is_the_mean_log_likelihood():
    """The decoder is trained on -mean over (k, b) of log p(x | z_k): the same draws, the same gradient."""
    model, _ = tiny("reinforce")
    x = batch()
    model(x, step=0, generator=gen(3)).loss.backward()
    got = [p.grad.clone() for p in model.decoder.parameters()]
    model.zero_grad()
    indices = model.encoder.sample(x, 4, gen(3)).indices  # the draws of the step above
    (-model.likelihood.log_prob(model.decoder(indices), x).mean()).backward()
    for a, p in zip(got, model.decoder.parameters()):
        torch.testing.assert_close(a, p.grad)


def test_ppo_kl_penalty_enters_the_loss_with_its_coefficient():
    """After one update the old and new encoders differ; the loss then grows by kl_coeff * KL(old || new)
    (at step 0 the penalty is zero, so a step-0 test cannot see it)."""
    model, cfg = tiny("ppo")
    opt = Optimizers(model, model.optimizer_specs(1e-2, cfg.optim.grad_clip), 1e-4)
    x = batch()
    out = model(x, 0, generator=gen(0))
    opt.zero_grad()
    out.loss.backward()
    opt.step()
    model.eval()  # no old-encoder sync, no coefficient update
    losses, kls, grads = [], [], []
    for coeff in (0.0, 7.0):
        model.kl_coeff.fill_(coeff)
        model.zero_grad()
        o = model(x, 1, generator=gen(1))
        o.loss.backward()
        losses.append(o.loss.item())
        kls.append(o.logs["kl_old_new"].item())
        grads.append({n: p.grad.clone() for n, p in model.encoder.named_parameters() if p.grad is not None})
    assert kls[0] > 0
    assert losses[1] - losses[0] == pytest.approx(7.0 * kls[0], rel=1e-3)
    # ... and trains the encoder by its gradient: 7 grad KL(old || new) on the same codes (a detached penalty keeps
    # the value above but not this)
    model.zero_grad()
    codes = o.indices[None]  # (1, B, T): the draws of both passes (the same generator)
    with torch.no_grad():
        old = model.old_encoder.log_probs(x, codes)[0]
    (7.0 * DF.categorical_kl(old, model.encoder.log_probs(x, codes)[0]).sum(-1).mean()).backward()
    for name, p in model.encoder.named_parameters():
        # the difference of two gradients of size ~1: float32 leaves ~1e-5 of it
        torch.testing.assert_close(grads[1][name] - grads[0][name], p.grad, rtol=1e-3, atol=1e-4, msg=name)
