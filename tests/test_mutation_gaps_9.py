"""Known answers for behaviour that a mutation sweep found no test guarding: of the transformer layers and the
autoregressive encoder (daps/nets/layers.py, ar_encoder.py, kv_cache.py, sampling.py, prefixes.py), the other
networks of daps/nets (bidirectional.py, embed.py, feedforward.py, mlp.py, patches.py, resnet.py, trajectory.py)
and the settings of the prior's training script (daps/prior/run.py). Each test names the slip it fails on; the
references are networks written out with plain tensor operations (float64 where the library computes in it),
saturated heads whose exact log-probabilities fall far below the clamp, and hand-worked cases.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_transformer import scramble_layer_norms

from daps.nets.ar_encoder import ARTransformerEncoder

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny, latency-bound models


def tiny_ar(vocab_size: int = 5, num_tokens: int = 4, num_layers: int = 2, **kwargs) -> ARTransformerEncoder:
    """A small AR encoder in float64 whose LayerNorms are not the identity they start as, so that a block that
    reads the wrong norm shows."""
    torch.manual_seed(0)
    enc = ARTransformerEncoder(
        (1, 8, 8), num_tokens=num_tokens, vocab_size=vocab_size, width=16, num_layers=num_layers, num_heads=2,
        mlp_ratio=2, **kwargs,
    ).double().eval()
    return scramble_layer_norms(enc)


def images(b: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 1, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _layer_norm(h: torch.Tensor, ln: torch.nn.LayerNorm) -> torch.Tensor:
    return F.layer_norm(h, h.shape[-1:], ln.weight, ln.bias, eps=1e-6)


def _heads(h: torch.Tensor, n: int) -> torch.Tensor:  # (N, L, E) -> (N, n, L, E / n)
    return h.view(h.shape[0], h.shape[1], n, -1).transpose(1, 2)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) [+ causal mask]) v, heads merged back: ``(N, h, Lq, d) -> (N, Lq, h*d)``."""
    scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
    if causal:
        lq, lk = scores.shape[-2:]
        scores = scores.masked_fill(torch.arange(lk)[None, :] > torch.arange(lq)[:, None], float("-inf"))
    out = torch.softmax(scores, -1) @ v
    return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)


def decoder_logits_by_hand(enc: ARTransformerEncoder, x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """The teacher-forced logits ``(K, B, T, V)`` of codes ``(K, B, T)`` written out: inputs are the start token 0
    then z_<T, embedded plus the sinusoidal table; each decoder block adds causal self-attention of LN1, then
    cross-attention of LN2 to the encoded patches of its own input, then ReLU MLP of LN3; a final LayerNorm and the
    head. The encoded patches are taken from the library (the encoder stack is checked by hand in
    tests/test_transformer.py)."""
    captured = []
    hook = enc.encoder_ln.register_forward_hook(lambda module, args, out: captured.append(out))
    with torch.no_grad():
        enc.memory(x)
    hook.remove()
    memory = captured[0]  # (B, P, E)
    k, b, t = codes.shape
    heads = enc.decoder_blocks[0].self_attn.num_heads
    inputs = F.pad(codes[..., :-1], (1, 0))  # (K, B, T)
    y = enc.token_embed.weight[inputs].reshape(k * b, t, -1) + enc.pos[:t]  # (K*B, T, E), k-major
    mem = memory.repeat(k, 1, 1)  # (K*B, P, E): row k*B + b reads input b
    for block in enc.decoder_blocks:
        sa, ca = block.self_attn, block.cross_attn
        a = _layer_norm(y, block.ln1)
        y = y + _attend(*(_heads(a @ lin.weight.T, heads) for lin in (sa.q, sa.k, sa.v)), causal=True) @ sa.o.weight.T
        c = _layer_norm(y, block.ln2)
        q = _heads(c @ ca.q.weight.T, heads)
        kk, vv = (_heads(mem @ lin.weight.T, heads) for lin in (ca.k, ca.v))
        y = y + _attend(q, kk, vv, causal=False) @ ca.o.weight.T
        m = _layer_norm(y, block.ln3)
        first, last = block.mlp[0], block.mlp[2]
        y = y + torch.relu(m @ first.weight.T + first.bias) @ last.weight.T + last.bias
    logits = _layer_norm(y, enc.decoder_ln) @ enc.head.weight.T + enc.head.bias  # (K*B, T, V)
    return logits.view(k, b, t, -1)


# ---------------------------------------------------------------- the autoregressive encoder


def test_teacher_forced_log_probs_are_the_decoder_written_out():
    """``log_probs`` and ``log_prob`` of 3 codes for each of 2 inputs against the decoder stack written out in float64
    (decoder_logits_by_hand), exact log-softmax of its logits (clamping moves nothing at this size). Every path
    of the encoder (cached, static, shared-prefix, recomputed) is checked against teacher forcing, so a slip that
    they all share shows only here; so does a slip of the whole (teacher-forced) pass that the shared pass at this
    size does not make. Fails on: the teacher-forced blocks' MLP reading LN2 instead of LN3, their self-attention
    without its causal mask, the transformer MLP's ReLU replaced by a GELU."""
    enc, x = tiny_ar(), images(2)
    codes = torch.randint(5, (3, 2, 4), generator=torch.Generator().manual_seed(1))
    expected = torch.log_softmax(decoder_logits_by_hand(enc, x, codes), -1)  # (K, B, T, V)
    with torch.no_grad():
        torch.testing.assert_close(enc.log_probs(x, codes).double(), expected, rtol=0, atol=1e-6)  # float32 out
        want = expected.gather(-1, codes[..., None])[..., 0]
        torch.testing.assert_close(enc.log_prob(x, codes, clamp=False).double(), want, rtol=0, atol=1e-6)


def test_attention_refuses_a_width_that_the_heads_do_not_divide():
    """Width 10 over 3 heads has no head size: the layer refuses it when built, naming both numbers (not at the
    first forward, as a view error). Fails on: the divisibility check dropped."""
    from daps.nets.layers import Attention

    with pytest.raises(ValueError, match="width 10 is not divisible by num_heads 3"):
        Attention(10, 3)
    assert Attention(12, 3).num_heads == 3


@pytest.mark.parametrize("causal", [False, True])
def test_bf16_plain_attention_scores_its_softmax_in_float32(causal):
    """On the CPU at bfloat16 the plain path forms the scores' scale and softmax in float32, as the fused kernel
    does: over 512 rows of 15 keys (d = 8, whose scale 8^-1/2 is not a power of two) its mean error against float64
    attention is within 1.3x the fused kernel's (measured 1.19-1.21x, 1.16x causal over seeds 0-3; scaled and
    normalized in bfloat16: 1.50-1.52x, 1.40-1.41x; the bound halfway). Fails on: the scores kept in bfloat16 (the
    promotion to float32 dropped)."""
    from daps.nets.layers import plain_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(256, 2, 15, 8, generator=g) for _ in range(3))
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=causal)
    q16, k16, v16 = (t.bfloat16() for t in (q, k, v))
    err = (plain_attention(q16, k16, v16, causal).double() - ref).abs().mean()
    err_fused = (F.scaled_dot_product_attention(q16, k16, v16, is_causal=causal).double() - ref).abs().mean()
    assert err <= 1.3 * err_fused, (float(err), float(err_fused))


def _saturated(enc: ARTransformerEncoder) -> ARTransformerEncoder:
    """The encoder with its head's weights 300x: logits tens of nats apart, so that some codes have probabilities
    far below float32 eps and clamping shows."""
    with torch.no_grad():
        enc.head.weight.mul_(300.0)
    return enc


@pytest.mark.parametrize("share", ["on", "off"])
def test_unclamped_log_prob_is_exact_on_both_passes(share):
    """With a saturated head, ``log_prob(clamp=False)`` is the exact log-softmax of the written-out decoder at the
    codes, tens of nats below log(eps) ~ -15.9 for some, whether computed once per distinct prefix (``share`` on: the
    4 codes of an input are 2 distinct codes, so the shared pass runs) or over every row; ``clamp=True`` is the same
    clamped to [log eps, log(1 - eps)]. Fails on: the shared pass clamping whatever ``clamp`` says."""
    from daps.functional import clamp_log_prob

    enc, x = _saturated(tiny_ar(share_prefixes=share)), images(2)
    two = torch.randint(5, (2, 2, 4), generator=torch.Generator().manual_seed(2))
    codes = two.repeat(2, 1, 1)  # (4, 2, 4): each input's codes twice
    calls = []
    shared_pass = enc._prefix_log_prob
    enc._prefix_log_prob = lambda *args: calls.append(1) or shared_pass(*args)
    exact = torch.log_softmax(decoder_logits_by_hand(enc, x, codes), -1).gather(-1, codes[..., None])[..., 0]
    assert exact.min() < -30
    with torch.no_grad():
        got = enc.log_prob(x, codes, clamp=False).double()
        clamped = enc.log_prob(x, codes, clamp=True).double()
    assert len(calls) == (2 if share == "on" else 0)
    torch.testing.assert_close(got, exact, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(clamped, clamp_log_prob(exact.float()).double(), rtol=1e-5, atol=1e-4)


def test_log_probs_are_clamped_as_the_sampled_tokens_are():
    """``log_probs`` (every code at every position) is documented clamped, as the sampling pass's log q: with a
    saturated head its entries are the written-out decoder's log-softmax clamped to [log eps, log(1 - eps)], so
    none is below log(eps) ~ -15.94 although the exact ones reach tens of nats below. Fails on: ``log_probs``
    returning the unclamped log-softmax."""
    from daps.functional import clamp_log_prob

    enc, x = _saturated(tiny_ar()), images(2)
    codes = torch.randint(5, (3, 2, 4), generator=torch.Generator().manual_seed(3))
    exact = torch.log_softmax(decoder_logits_by_hand(enc, x, codes), -1)
    assert exact.min() < -30
    with torch.no_grad():
        got = enc.log_probs(x, codes)
    assert got.min() >= clamp_log_prob(torch.tensor(-1e9)).item()
    torch.testing.assert_close(got.double(), clamp_log_prob(exact.float()).double(), rtol=1e-5, atol=1e-4)


def test_relaxed_sampling_returns_clamped_log_probs():
    """``sample_relaxed`` returns each step's clamped log-probabilities (what the Gumbel estimators' log q and KL
    read): with a saturated head and the argmax code taken at every step, they are the written-out decoder's
    log-softmax of that code's prefix clamped to [log eps, log(1 - eps)], none below log(eps) ~ -15.94 while the
    exact ones reach tens of nats below. Fails on: the relaxed steps' log-probabilities left unclamped."""
    from daps.functional import clamp_log_prob

    enc, x = _saturated(tiny_ar()), images(2)

    def argmax(log_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        index = log_probs.argmax(-1)
        return index, F.one_hot(index, 5).double()  # the table's dtype

    with torch.no_grad():
        indices, _, log_probs = enc.sample_relaxed(x, argmax)  # (B, T), (B, T, V)
    exact = torch.log_softmax(decoder_logits_by_hand(enc, x, indices[None]), -1)[0]  # (B, T, V)
    assert exact.min() < -30
    torch.testing.assert_close(log_probs.double(), clamp_log_prob(exact.float()).double(), rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------- the other networks


def test_the_non_autoregressive_encoders_log_q_is_clamped():
    """The factorized encoder's per-token log-probabilities are clamped to [log eps, log(1 - eps)], as the AR
    encoder's (the DAPS-NA weights read them): with its head 300x, the exact log-softmax of its logits reaches tens
    of nats below log(eps) ~ -15.94; ``log_prob`` is that log-softmax clamped, and no sampled token_log_q is below
    log(eps).
    Fails on: the factorized encoder's log-probabilities left unclamped."""
    from daps.functional import clamp_log_prob
    from daps.nets.bidirectional import NACategoricalEncoder

    torch.manual_seed(0)
    enc = NACategoricalEncoder((1, 8, 8), num_tokens=4, vocab_size=5, width=16, num_layers=1, num_heads=2,
                               mlp_ratio=2).eval()
    with torch.no_grad():
        enc.net.head.weight.mul_(300.0)
        x = images(2).float()
        exact = torch.log_softmax(enc.net(x).double(), -1)  # (B, T, V)
        assert exact.min() < -30
        codes = torch.randint(5, (3, 2, 4), generator=torch.Generator().manual_seed(0))
        want = clamp_log_prob(exact.float()).expand(3, -1, -1, -1).gather(-1, codes[..., None])[..., 0]
        torch.testing.assert_close(enc.log_prob(x, codes), want, rtol=1e-5, atol=1e-4)
        s = enc.sample(x, 3, torch.Generator().manual_seed(1))
        assert s.token_log_q.min() >= clamp_log_prob(torch.tensor(-1e9)).item()


def test_the_gaussian_encoder_refuses_a_dropout_of_one():
    """Dropout 1.0 keeps no unit and rescales by 1 / (1 - 1): the encoder refuses it when built (0.0 and 0.5 are
    fine). Fails on: the check letting 1.0 through (NaN latents at the first training step)."""
    from daps.nets.feedforward import GaussianMLPEncoder

    with pytest.raises(ValueError, match="dropout"):
        GaussianMLPEncoder(16, 8, 2, dropout=1.0)
    for ok in (0.0, 0.5):
        assert GaussianMLPEncoder(16, 8, 2, dropout=ok).dropout == ok


def test_the_mlp_decoder_written_out():
    """The MNIST decoder p(x | z) against its definition written out in float64: each of T = 3 codes embedded, the
    embeddings concatenated token after token ((T, E) flattened row-major), Dense -> ReLU -> Dense -> ReLU -> Dense,
    viewed as the image. Fails on: the hidden layers without their ReLU; the embeddings concatenated feature-major
    (feature e of every token, then e + 1)."""
    from daps.nets.mlp import MLPDecoder

    torch.manual_seed(0)
    dec = MLPDecoder(3, 4, (8, 6), (1, 2, 5), vocab_size=7).double()
    codes = torch.tensor([[0, 6, 2], [5, 5, 1]])
    h = dec.embed.weight[codes].reshape(2, 12)  # (N, T * E): token 0's 4 features, then token 1's, ...
    l1, l2, l3 = (m for m in dec.mlp if isinstance(m, torch.nn.Linear))
    for layer in (l1, l2):
        h = torch.relu(h @ layer.weight.T + layer.bias)
    expected = (h @ l3.weight.T + l3.bias).view(2, 1, 2, 5)
    with torch.no_grad():
        torch.testing.assert_close(dec(codes), expected, rtol=0, atol=1e-12)


def test_the_time_embedding_refuses_windows_of_several_channels():
    """Motion windows are one-channel images ``(1, frames, features)``; the time embedding refuses 2 channels when
    built. Fails on: the check dropped (the second channel silently ignored)."""
    from daps.nets.trajectory import TimeEmbed

    with pytest.raises(ValueError, match="windows"):
        TimeEmbed((2, 32, 5), 16, 8)


def test_the_patch_embedding_starts_with_zero_biases():
    """The encoders' first Dense (paper App. F) has LeCun-normal weights and zero biases. Fails on: biases drawn from
    a normal distribution."""
    from daps.nets.embed import PatchEmbed

    torch.manual_seed(0)
    layer = PatchEmbed((1, 28, 28), 8, 32)
    assert torch.equal(layer.bias, torch.zeros(32))
    assert layer.weight.std().item() == pytest.approx(112 ** -0.5, rel=0.15)


def test_the_residual_block_written_out():
    """A residual block in eval mode against ``x + BN(Conv1x1(ReLU(BN(Conv3x3(ReLU(x))))))`` written out (batch
    norms from random running statistics and affine parameters, "SAME" padding; the block's norms compute in
    float32), on an input with negative entries so that the first ReLU matters. Fails on: the ReLU before the 3x3
    convolution dropped."""
    from daps.nets.resnet import ResidualBlock

    torch.manual_seed(0)
    block = ResidualBlock(3).double().eval()
    with torch.no_grad():
        for bn in (block.norm1, block.norm2):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.normal_(1.0, 0.3)
            bn.bias.normal_()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)

    def norm(h, bn):
        shape = (1, -1, 1, 1)
        scale = (bn.running_var + bn.eps).rsqrt() * bn.weight
        return (h - bn.running_mean.view(shape)) * scale.view(shape) + bn.bias.view(shape)

    h = norm(F.conv2d(torch.relu(x), block.conv1.weight, block.conv1.bias, padding=1), block.norm1)
    h = norm(F.conv2d(torch.relu(h), block.conv2.weight, block.conv2.bias), block.norm2)
    with torch.no_grad():
        torch.testing.assert_close(block(x), x + h, rtol=1e-5, atol=1e-5)


def test_the_resnet_encoders_downsampling_widths_never_drop_below_the_image_channels():
    """The strided convolutions have ``max(width // 2^(n - i), C)`` output channels: a 16 x 16 RGB image down to a 1 x 1
    grid (n = 4) at width 16 gives 16 // 16 = 1 -> 3, 16 // 8 = 2 -> 3, then 4 and 8 channels. Fails on: the floor
    at C dropped (1- and 2-channel bottlenecks)."""
    from daps.nets.resnet import ResNetEncoder

    enc = ResNetEncoder((3, 16, 16), grid=1, width=16, num_blocks=1, out_dim=4)
    assert [down.out_channels for down in enc.downs] == [3, 3, 4, 8]
    assert enc(torch.randn(2, 3, 16, 16)).shape == (2, 4, 1, 1)


# ---------------------------------------------------------------- the prior's training script


def test_prior_settings_refuse_a_width_the_heads_do_not_divide():
    """``width=10 num_heads=3`` is refused as a setting (a UserError naming both, which the command line reports
    without a traceback) before any network is built; 12 over 3 passes. Fails on: the check dropped from
    ``PriorConfig.validate`` (the layer's ValueError, a traceback, when the prior is built)."""
    from daps.errors import UserError
    from daps.prior.run import PriorConfig

    with pytest.raises(UserError, match="width 10 is not a multiple of num_heads 3"):
        PriorConfig(width=10, num_heads=3).validate()
    PriorConfig(width=12, num_heads=3).validate()
