"""The autoregressive encoder: cached vs recomputed sampling, teacher forcing, masks, patches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from daps.functional import categorical_log_probs, sample_probs
from daps.nets.ar_encoder import ARTransformerEncoder
from daps.nets.layers import sinusoidal_table
from daps.nets.patches import patch_grid, patch_shape, patchify
from daps.nets.sampling import sample_autoregressive


def tiny_encoder(vocab_size: int = 4, num_tokens: int = 8, num_layers: int = 2, mask_token0: bool = False):
    """A small encoder whose LayerNorms are not the identity they start as (random gains and shifts), so that the
    paths compared here (cached, static, recomputed, teacher-forced) differ if one of them uses the wrong norm."""
    torch.manual_seed(0)
    enc = ARTransformerEncoder(
        (1, 28, 28), num_tokens=num_tokens, vocab_size=vocab_size, width=32, num_layers=num_layers,
        num_heads=4, mlp_ratio=2, mask_token0=mask_token0,
    ).eval()
    return scramble_layer_norms(enc)


def scramble_layer_norms(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` with every LayerNorm's scale and shift drawn away from the identity they start as (in place)."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.normal_(1.0, 0.5)
                m.bias.normal_(0.0, 0.5)
    return module


def images(b: int = 6, seed: int = 0) -> torch.Tensor:
    return (torch.rand(b, 1, 28, 28, generator=torch.Generator().manual_seed(seed)) > 0.8).float()


@pytest.mark.parametrize("num_layers", [1, 2])
def test_cached_sampling_equals_full_recomputation(num_layers):
    enc, x = tiny_encoder(vocab_size=16, num_layers=num_layers), images()
    a = enc.sample(x, 5, torch.Generator().manual_seed(7), use_cache=True)
    b = enc.sample(x, 5, torch.Generator().manual_seed(7), use_cache=False)
    assert a.indices.shape == (5, 6, 8)
    assert torch.equal(a.indices, b.indices)
    torch.testing.assert_close(a.token_log_q, b.token_log_q, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.token_entropy, b.token_entropy, atol=1e-5, rtol=0)
    # Different seeds give different codes (the generator is really used).
    c = enc.sample(x, 5, torch.Generator().manual_seed(8))
    assert not torch.equal(a.indices, c.indices)


def test_sampling_loop_feeds_each_step_the_codes_drawn_so_far():
    """The one loop: step ``pos`` sees exactly the codes drawn before ``pos``; rows are b-major."""
    b, k, t, v = 3, 4, 6, 5
    seen = []

    def step(indices: torch.Tensor, pos: int) -> torch.Tensor:
        seen.append(indices[:, :pos].clone())
        previous = indices[:, pos - 1] if pos else torch.arange(indices.shape[0]) % v  # a start code per row
        return 40.0 * F.one_hot((previous + 1) % v, v).float()  # (N, V): the next code is previous + 1 (p ~ 1 - 4e-7)

    s = sample_autoregressive(step, b, k, t, torch.device("cpu"), torch.Generator().manual_seed(0))
    rows = torch.arange(b * k).view(b, k).T  # (K, B): the flat row of sample k of input b
    assert torch.equal(s.indices, (rows[..., None] + 1 + torch.arange(t)) % v)  # (K, B, T)
    flat = s.indices.transpose(0, 1).reshape(b * k, t)  # (B*K, T)
    assert len(seen) == t and all(torch.equal(prefix, flat[:, :pos]) for pos, prefix in enumerate(seen))
    torch.testing.assert_close(s.log_q, torch.zeros(k, b), atol=1e-5, rtol=0)


def test_sampling_loop_statistics_and_random_stream():
    """Codes are one ``sample_probs`` draw of all rows per position (the stream every step function shares);
    log q and entropy are those of the step's clamped distribution."""
    b, k, t, v = 2, 3, 4, 7
    table = torch.randn(t, v, generator=torch.Generator().manual_seed(0))  # (T, V) logits by position only
    s = sample_autoregressive(
        lambda indices, pos: table[pos].expand(b * k, v), b, k, t, torch.device("cpu"),
        torch.Generator().manual_seed(1),
    )
    log_probs = categorical_log_probs(table)  # (T, V)
    gen = torch.Generator().manual_seed(1)
    expected = torch.stack([sample_probs(log_probs[pos].exp().expand(b * k, v), gen) for pos in range(t)], 1)
    assert torch.equal(s.indices, expected.view(b, k, t).transpose(0, 1))
    torch.testing.assert_close(s.token_log_q, log_probs[torch.arange(t), s.indices])  # (K, B, T)
    entropy = -(log_probs.exp() * log_probs).sum(-1)  # (T,)
    torch.testing.assert_close(s.token_entropy, entropy.expand(k, b, t))


def test_step_functions_agree_with_teacher_forcing_and_ignore_placeholders():
    """Each step function's logits at ``pos`` are the teacher-forced ones, whatever sits at positions >= pos."""
    enc, x = tiny_encoder(vocab_size=16), images(b=3)
    k, t = 2, enc.num_tokens
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(16, (3 * k, t), generator=gen)  # (B*K, T) b-major
    with torch.no_grad():
        memory_kv = enc.memory(x)
        reference = enc._teacher_forced_logits(memory_kv, codes, k)  # (B*K, T, V)
        enc.compile_sampler(compile=False, smallest_bucket=4)  # buckets 4, 8
        steps = {
            "recompute": enc._recomputing_step(memory_kv, k),
            "cached": enc._cached_step(memory_kv, k),
            "static": enc._static_cache_step(memory_kv, k),
        }
        for pos in range(t):
            for name, step in steps.items():
                indices = codes.clone()
                indices[:, pos:] = torch.randint(16, (3 * k, t - pos), generator=gen)  # placeholders
                torch.testing.assert_close(step(indices, pos), reference[:, pos], atol=1e-5, rtol=0, msg=name)


def test_teacher_forced_log_q_equals_sampling_log_probs_including_code_zero():
    enc, x = tiny_encoder(vocab_size=4), images()  # V=4: most sequences contain a 0
    s = enc.sample(x, 8, torch.Generator().manual_seed(0))
    assert (s.indices == 0).any(-1).float().mean() > 0.5
    token_log_q = enc.log_prob(x, s.indices)
    torch.testing.assert_close(token_log_q, s.token_log_q, atol=1e-5, rtol=0)
    log_probs = enc.log_probs(x, s.indices)  # (K, B, T, V): the whole conditional distributions agree too
    torch.testing.assert_close(log_probs.gather(-1, s.indices[..., None])[..., 0], s.token_log_q, atol=1e-5, rtol=0)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    torch.testing.assert_close(entropy, s.token_entropy, atol=1e-5, rtol=0)


def test_mask_token0_reproduces_original_mismatch():
    """The original's masks change log q from the first code 0 on, and only for sequences with a 0."""
    enc, x = tiny_encoder(vocab_size=4, mask_token0=True), images()
    s = enc.sample(x, 8, torch.Generator().manual_seed(0))
    token_log_q = enc.log_prob(x, s.indices)
    diff = (token_log_q - s.token_log_q).abs()  # (K, B, T)
    has_zero = (s.indices == 0).any(-1)
    assert has_zero.any() and (~has_zero).any()
    assert diff[~has_zero].max() < 1e-5
    assert diff[has_zero].max() > 1e-3
    # Before the first 0 of a sequence nothing changes.
    first_zero = torch.where(s.indices == 0, torch.arange(8), 8).min(-1).values  # (K, B)
    before = torch.arange(8) < first_zero[..., None]
    assert diff[before].max() < 1e-5


def test_teacher_forcing_is_causal():
    enc, x = tiny_encoder(vocab_size=16), images(b=3)
    z = torch.randint(16, (2, 3, 8), generator=torch.Generator().manual_seed(0))
    z2 = z.clone()
    z2[..., 5] = (z2[..., 5] + 1) % 16
    a, b = enc.log_prob(x, z), enc.log_prob(x, z2)
    full_a, full_b = enc.log_probs(x, z), enc.log_probs(x, z2)  # (K, B, T, V)
    torch.testing.assert_close(a[..., :5], b[..., :5])  # positions up to 4 do not see z_5
    # The distribution at position 5 is conditioned on z_<5 only (inputs are shifted right) ...
    torch.testing.assert_close(full_a[..., 5, :], full_b[..., 5, :])
    # ... and position 6 sees z_5.
    assert not torch.allclose(full_a[..., 6, :], full_b[..., 6, :])


def test_samples_of_one_input_do_not_see_other_inputs():
    """Grouped cross-attention: each sample must attend only to its own input's memory."""
    enc = tiny_encoder(vocab_size=16)
    x = images(b=4)
    z = torch.randint(16, (3, 4, 8), generator=torch.Generator().manual_seed(1))
    full = enc.log_prob(x, z)
    alone = enc.log_prob(x[2:3], z[:, 2:3])
    torch.testing.assert_close(full[:, 2:3], alone, atol=1e-5, rtol=0)


def test_log_prob_gradients_reach_every_encoder_parameter():
    enc = tiny_encoder(vocab_size=16).train()
    x = images(b=3)
    z = enc.sample(x, 2, torch.Generator().manual_seed(0)).indices
    token_log_q = enc.log_prob(x, z)
    token_log_q.sum().backward()
    missing = [n for n, p in enc.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_patch_grid_and_shapes_of_the_original():
    assert patch_grid(8) == (2, 4)  # MNIST: 2 x 4 patches of 14 x 8 (28 x 28 padded to 28 x 32)
    assert patch_shape((1, 28, 28), 8) == (14, 8)
    assert patch_grid(64) == (8, 8) and patch_shape((3, 32, 32), 64) == (4, 4)  # CIFAR
    assert patch_grid(1024) == (32, 32) and patch_shape((3, 256, 256), 1024) == (8, 8)  # ImageNet
    assert patchify(torch.zeros(2, 1, 28, 28), 8).shape == (2, 8, 112)
    assert patchify(torch.zeros(2, 3, 32, 32), 64).shape == (2, 64, 48)


def test_patchify_content_and_padding():
    x = torch.arange(28 * 28, dtype=torch.float32).view(1, 1, 28, 28) + 1
    p = patchify(x, 8)  # (1, 8, 112): rows 2 x cols 4 of 14 x 8, two zero columns on each side
    first = p[0, 0].view(14, 8)
    assert (first[:, :2] == 0).all()
    torch.testing.assert_close(first[:, 2:], x[0, 0, :14, :6])
    last = p[0, 7].view(14, 8)
    assert (last[:, 6:] == 0).all()
    torch.testing.assert_close(last[:, :6], x[0, 0, 14:, 22:])
    assert p.sum() == x.sum()  # nothing lost, nothing duplicated


def test_sinusoidal_table():
    t = sinusoidal_table(10, 8)
    assert t.shape == (10, 8)
    torch.testing.assert_close(t[0], torch.tensor([0, 0, 0, 0, 1, 1, 1, 1.0]))
    # First frequency is 1 (i = 0); the last is 1/10000 (i = d/2 - 1).
    torch.testing.assert_close(t[3, 0], torch.tensor(3.0).sin())
    torch.testing.assert_close(t[3, 3], torch.tensor(3e-4).sin())


def test_relaxed_sampling_backpropagates_through_the_fed_back_one_hots():
    """The relaxed estimators (Gumbel-Softmax, GR-MCK) differentiate through the whole sampling chain: the one-hot
    chosen at one position is the next position's input. A perturbation of the first one-hot moves the last
    position's log-probabilities; its autograd gradient matches central finite differences (a fed-back one-hot that
    is detached gives exactly 0). The codes chosen are fixed, so the objective is smooth in the perturbation."""
    enc, x = tiny_encoder(vocab_size=5, num_tokens=3), images(4)
    chosen = torch.randint(0, 5, (3, 4), generator=torch.Generator().manual_seed(3))  # (T, B)
    direction = torch.randn(4, 5, generator=torch.Generator().manual_seed(1))
    weights = torch.randn(4, 5, generator=torch.Generator().manual_seed(2))

    def objective(delta: torch.Tensor) -> torch.Tensor:
        position = iter(range(3))

        def relax(log_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            t = next(position)
            onehot = torch.nn.functional.one_hot(chosen[t], 5).to(log_probs.dtype)
            return chosen[t], onehot + delta if t == 0 else onehot

        _, _, log_probs = enc.sample_relaxed(x, relax)
        return (log_probs[:, 2] * weights).sum()

    delta = torch.zeros(4, 5, requires_grad=True)
    (grad,) = torch.autograd.grad(objective(delta), delta)
    eps = 1e-3  # small enough that no ReLU of the decoder stack changes side (at 1e-2 some do: 6 % off)
    with torch.no_grad():
        fd = float((objective(eps * direction) - objective(-eps * direction)) / (2 * eps))
    along = float((grad * direction).sum())
    assert abs(along) > 1e-2, along
    assert along == pytest.approx(fd, rel=2e-2, abs=1e-4)


def test_encoder_stack_by_hand():
    """The patch encoder against a hand-written pre-LN transformer (paper App. F): patches embedded plus the
    sinusoidal table, each block x + MHA(LN x), then x + MLP(LN x) with ReLU, a final LayerNorm, and each decoder
    layer's cross-attention keys and values projected from it. Written with plain tensor operations, not the
    library's layers; a missing residual or positional table shows."""
    enc, x = tiny_encoder(vocab_size=5, num_tokens=16, num_layers=2), images(3)

    def layer_norm(h, ln):
        return F.layer_norm(h, h.shape[-1:], ln.weight, ln.bias, eps=1e-6)

    def heads(h, n):  # (B, P, E) -> (B, n, P, E / n)
        return h.view(h.shape[0], h.shape[1], n, -1).transpose(1, 2)

    h = enc.patch_embed(x) + sinusoidal_table(16, 32)
    for block in enc.encoder_blocks:
        a = layer_norm(h, block.ln1)
        q, k, v = (heads(a @ lin.weight.T, 4) for lin in (block.attn.q, block.attn.k, block.attn.v))
        att = torch.softmax(q @ k.transpose(-2, -1) / 8**0.5, dim=-1) @ v  # d = 32 / 4
        h = h + att.transpose(1, 2).reshape(h.shape) @ block.attn.o.weight.T
        m = layer_norm(h, block.ln2)
        first, last = block.mlp[0], block.mlp[2]
        h = h + torch.relu(m @ first.weight.T + first.bias) @ last.weight.T + last.bias
    h = layer_norm(h, enc.encoder_ln)
    with torch.no_grad():
        got = enc.memory(x)
    for (k, v), block in zip(got, enc.decoder_blocks):
        torch.testing.assert_close(k, heads(h @ block.cross_attn.k.weight.T, 4).detach(), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(v, heads(h @ block.cross_attn.v.weight.T, 4).detach(), atol=1e-5, rtol=1e-4)
