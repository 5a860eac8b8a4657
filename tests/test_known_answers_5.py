"""Known answers for the networks' edges and the helpers around them: patch cutting of uneven images, the motion
networks' time resampling and trajectory decoder, the Gaussian encoder's dropout, the classifiers' bookkeeping, the
robot policy's context, the motion metrics wrapper, the cache's stale-temporary cleanup and the graph-safety trace
(each test pins a behaviour that a plausible slip would change silently)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import erf

# --------------------------------------------------------------------------------------------------
# Patches


def test_patch_shape_rounds_uneven_images_up_and_patchify_keeps_every_pixel():
    """25 x 25 in a 4 x 4 grid: ceil(25 / 4) = 7, rounded up to even, 8; the image is padded to 32 (3 then 4) and
    no pixel is lost. Fails on: floor division (6 x 6 patches, the padding turns negative and crops the image)."""
    from daps.nets.patches import patch_shape, patchify

    assert patch_shape((1, 25, 25), 16) == (8, 8)
    x = torch.arange(1, 25 * 25 + 1, dtype=torch.float64).view(1, 1, 25, 25)
    p = patchify(x, 16)
    assert p.shape == (1, 16, 64)
    assert p.sum() == x.sum()


def test_patchify_puts_the_odd_padding_pixel_after_the_image():
    """27 x 27 in a 2 x 2 grid of 14 x 14 patches: one row and one column of padding, as ``F.pad``'s central
    split ``(pad // 2, pad - pad // 2)`` puts it: after the image. So patch 0 starts at pixel (0, 0) and the last
    patch ends with a zero row and column. Fails on: the odd pixel put before the image."""
    from daps.nets.patches import patchify

    x = torch.arange(1, 27 * 27 + 1, dtype=torch.float64).view(1, 1, 27, 27)
    p = patchify(x, 4)
    first, last = p[0, 0].view(14, 14), p[0, 3].view(14, 14)
    assert torch.equal(first, x[0, 0, :14, :14])
    assert torch.equal(last[:13, :13], x[0, 0, 14:, 14:])
    assert (last[13] == 0).all() and (last[:, 13] == 0).all()


def test_patchify_orders_features_pixel_major_channel_minor():
    """Features of a patch are in (h, w, c) order, as the original's patcher (and so its checkpoints' first dense
    layer): for a 2-channel 4 x 4 image in 2 x 2 patches, patch 1 (top right) is
    ``[x[0,0,2], x[1,0,2], x[0,0,3], x[1,0,3], x[0,1,2], ...]``. Fails on: (c, h, w) order (no MNIST test sees it,
    one channel)."""
    from daps.nets.patches import patchify

    x = np.arange(2 * 4 * 4, dtype=np.float64).reshape(2, 4, 4)
    expected = np.array([x[c, h, w] for h in range(2) for w in range(2, 4) for c in range(2)])
    p = patchify(torch.from_numpy(x)[None], 4)
    assert p.shape == (1, 4, 8)
    np.testing.assert_array_equal(p[0, 1].numpy(), expected)


# --------------------------------------------------------------------------------------------------
# Time resampling and the trajectory decoder


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def _conv_down(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(C_in, L) -> (C_out, L / 2)``: kernel 4, stride 2, one zero on each side."""
    xp = np.pad(x, ((0, 0), (1, 1)))
    cols = [np.einsum("ock,ck->o", w, xp[:, 2 * j : 2 * j + 4]) for j in range(x.shape[1] // 2)]
    return np.stack(cols, axis=1) + b[:, None]


def _conv_up(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(C_in, L) -> (C_out, 2 L)``: transposed, kernel 4, stride 2, the full output cropped by one each side."""
    length = x.shape[1]
    full = np.zeros((w.shape[1], 2 * length + 2))
    for j in range(length):
        for k in range(4):
            full[:, 2 * j + k] += w[:, :, k].T @ x[:, j]
    return full[:, 1:-1] + b[:, None]


def _set_random(module: torch.nn.Module, rng: np.random.Generator) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.from_numpy(rng.normal(size=tuple(p.shape))))


@pytest.mark.parametrize("in_length,out_length", [(4, 16), (16, 4)])
def test_resample_time_is_strided_convolutions_with_gelu_between(in_length, out_length):
    """Two factors of two: conv (kernel 4, stride 2, padding 1), GELU, conv, no activation after the last, each
    over the time axis of ``(B, L, C)``; checked against a numpy convolution. Fails on: kernel 3 (or a transposed
    kernel 2), ReLU between, GELU after the last conv, or the output put back by a reshape instead of a
    transpose."""
    from daps.nets.trajectory import ResampleTime

    rng = np.random.default_rng(0)
    net = ResampleTime(3, 5, in_length, out_length).double()
    _set_random(net, rng)
    convs = [m for m in net.layers if isinstance(m, (torch.nn.Conv1d, torch.nn.ConvTranspose1d))]
    assert len(convs) == 2
    x = rng.normal(size=(2, in_length, 3))
    step = _conv_up if out_length > in_length else _conv_down
    expected = []
    for xb in x:
        h = step(xb.T, convs[0].weight.detach().numpy(), convs[0].bias.detach().numpy())
        h = step(_gelu(h), convs[1].weight.detach().numpy(), convs[1].bias.detach().numpy())
        expected.append(h.T)
    out = net(torch.from_numpy(x))
    assert out.shape == (2, out_length, 5)
    np.testing.assert_allclose(out.detach().numpy(), np.stack(expected), rtol=1e-10, atol=1e-10)


def test_upsampling_kernels_are_glorot_normal():
    """Upsampling features 8 -> width 64: Glorot normal, std sqrt(2 / ((8 + 64) * 4)) = 0.083 (LeCun would give
    sqrt(1 / (64 * 4)) = 0.0625); zero biases. Fails on: LeCun-normal upsampling kernels (the two agree only when
    the widths are equal, as in the decoder)."""
    from daps.nets.trajectory import ResampleTime

    torch.manual_seed(0)
    conv = ResampleTime(8, 64, 4, 8).layers[0]
    assert isinstance(conv, torch.nn.ConvTranspose1d)
    std = float(conv.weight.detach().std())
    assert abs(std - math.sqrt(2 / (72 * 4))) < 0.006, std
    assert torch.equal(conv.bias, torch.zeros(64))


def test_trajectory_decoder_without_blocks_known_answer():
    """With no blocks the decoder is ``head(resample(proj(LN(h + pos))))``: positions the sinusoidal table
    ``[sin t, sin 1e-4 t, cos t, cos 1e-4 t]`` (width 4), LayerNorm with eps 1e-6, one strided conv 8 -> 4 frames;
    checked in numpy. Fails on: the positions not added, or the final LayerNorm skipped."""
    from daps.nets.trajectory import TrajectoryDecoder

    rng = np.random.default_rng(1)
    dec = TrajectoryDecoder(8, 4, (1, 4, 3), width=4, num_layers=0, num_heads=1, mlp_ratio=2).double()
    _set_random(dec, rng)
    h = rng.normal(size=(2, 8, 4))
    t = np.arange(8)[:, None]
    pos = np.concatenate([np.sin(t * [1.0, 1e-4]), np.cos(t * [1.0, 1e-4])], axis=1)
    y = h + pos
    y = (y - y.mean(-1, keepdims=True)) / np.sqrt(y.var(-1, keepdims=True) + 1e-6)
    y = y * dec.ln.weight.detach().numpy() + dec.ln.bias.detach().numpy()
    y = y @ dec.proj.weight.detach().numpy().T + dec.proj.bias.detach().numpy()
    conv = dec.resample.layers[0]
    y = np.stack([_conv_down(yb.T, conv.weight.detach().numpy(), conv.bias.detach().numpy()).T for yb in y])
    y = y @ dec.head.weight.detach().numpy().T + dec.head.bias.detach().numpy()
    out = dec.decode_latents(torch.from_numpy(h))
    assert out.shape == (2, 1, 4, 3)
    np.testing.assert_allclose(out[:, 0].detach().numpy(), y, rtol=1e-6, atol=1e-6)  # the table is float32


def test_every_trajectory_decoder_parameter_shapes_the_output():
    """Every parameter of a two-block decoder gets a non-zero gradient from the decoded window. Fails on: the
    last block skipped, or the final LayerNorm skipped (their parameters would get none)."""
    from daps.nets.trajectory import TrajectoryDecoder

    torch.manual_seed(0)
    dec = TrajectoryDecoder(8, 4, (1, 4, 3), width=8, num_layers=2, num_heads=2, mlp_ratio=2)
    dec.decode_latents(torch.randn(3, 8, 4)).square().sum().backward()
    dead = [n for n, p in dec.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, dead


# --------------------------------------------------------------------------------------------------
# Gaussian encoder dropout


def test_gaussian_encoder_dropout_drops_a_quarter_and_rescales_the_rest(single_thread):
    """Dropout 0.25 in training: with the mean head the identity, a quarter of the positive hidden units come out
    zero and the rest scaled by 1 / 0.75 (same batch, so BatchNorm's batch statistics are the same). Fails on:
    the kept units not rescaled, or the mask kept with probability p instead of 1 - p."""
    from daps.nets.feedforward import GaussianMLPEncoder

    torch.manual_seed(0)
    enc = GaussianMLPEncoder(16, 64, 64, dropout=0.25).train()
    with torch.no_grad():
        enc.mean.weight.copy_(torch.eye(64))
        enc.mean.bias.zero_()
    x = torch.randn(512, 1, 4, 4)
    enc.dropout = 0.0
    h0, _ = enc(x)
    enc.dropout = 0.25
    h, _ = enc(x, generator=torch.Generator().manual_seed(1))
    on = h0 > 0.1
    dropped = h[on] == 0
    assert abs(float(dropped.float().mean()) - 0.25) < 0.02
    torch.testing.assert_close(h[on][~dropped], h0[on][~dropped] / 0.75)


# --------------------------------------------------------------------------------------------------
# Classifiers


def test_mnist_classifier_is_two_conv_blocks_and_its_features_are_rectified():
    """28 x 28 digits: conv 1 -> 32 and 32 -> 64 (3 x 3), two 2 x 2 pools to 7 x 7, Dense(128), Dense(10):
    320 + 18,496 + 401,536 + 1,290 = 421,642 parameters; the penultimate features (``embed``) are after the ReLU.
    Fails on: the three-block CIFAR layout chosen for 28 x 28 (``h < 28``), or ``embed`` without its ReLU."""
    from daps.metrics.classifier import ImageClassifier

    torch.manual_seed(0)
    clf = ImageClassifier((1, 28, 28))
    assert sum(p.numel() for p in clf.parameters()) == 421_642
    feats = clf.embed(torch.randn(8, 1, 28, 28))
    assert feats.shape == (8, 128)
    assert (feats >= 0).all() and (feats == 0).any()


def test_classifier_for_finds_the_family_classifier_in_the_cache(offline, tmp_path):
    """A CIFAR-10 classifier saved where ``scripts/train_classifier.py`` puts it (``$XDG_CACHE_HOME/daps/
    classifiers/cifar10.safetensors``) judges both ``cifar10`` and its JPEG copy; MNIST has none yet. Fails on:
    the JPEG copy mapped to a family of its own (it is never judged), or the classifiers moved out of their
    subfolder (those users already trained are no longer found)."""
    from daps.metrics.classifier import ImageClassifier, classifier_for, default_path, save_image_classifier

    path = default_path("cifar10")
    assert path == tmp_path / "xdg_cache" / "daps" / "classifiers" / "cifar10.safetensors"
    torch.manual_seed(0)
    model = ImageClassifier((3, 32, 32))
    save_image_classifier(model, "cifar10", {"accuracy": 0.5}, path)
    for dataset in ("cifar10", "cifar10-jpeg"):
        clf = classifier_for(dataset)
        assert clf is not None and not clf.training, dataset
        assert torch.equal(clf.head.weight, model.head.weight), dataset
    assert classifier_for("mnist5k") is None


def _conv1d(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """``(C_in, L) -> (C_out, L')``, zero padding ``pad`` each side."""
    xp = np.pad(x, ((0, 0), (pad, pad)))
    k = w.shape[-1]
    cols = [np.einsum("ock,ck->o", w, xp[:, j : j + k]) for j in range(0, xp.shape[1] - k + 1, stride)]
    return np.stack(cols, axis=1) + b[:, None]


def test_motion_classifier_features_are_the_time_mean_of_its_convolutions():
    """``embed`` of ``(B, 1, T, F)``: conv over time (kernel 5), then kernel 5 stride 2, then kernel 3 stride 2,
    GELU after each, then the mean over time; checked in numpy. Fails on: the max over time, or the window
    turned into channels by a reshape instead of a transpose."""
    from daps.motion.classifier import MotionClassifier

    rng = np.random.default_rng(2)
    clf = MotionClassifier(num_features=3, num_classes=4, width=8).double().eval()
    _set_random(clf, rng)
    x = rng.normal(size=(2, 1, 16, 3))
    c = [m for m in clf.convs if isinstance(m, torch.nn.Conv1d)]
    expected = []
    for xb in x[:, 0]:
        h = xb.T
        for conv, stride, pad in zip(c, (1, 2, 2), (2, 2, 1)):
            h = _gelu(_conv1d(h, conv.weight.detach().numpy(), conv.bias.detach().numpy(), stride, pad))
        expected.append(h.mean(-1))
    feats = clf.embed(torch.from_numpy(x))
    np.testing.assert_allclose(feats.detach().numpy(), np.stack(expected), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(clf.embed(torch.from_numpy(x[:, 0])).detach().numpy(), np.stack(expected), rtol=1e-10)


# --------------------------------------------------------------------------------------------------
# Robot policy context


def test_policy_context_embedding_known_answer():
    """Packed ``[label, vx, vy, wz, prev_0 .. prev_T-1]`` -> per slot t: ``codes[prev_t] + labels[label] +
    Dense(GELU(Dense(v)))``; checked in numpy. Fails on: the previous codes ignored, the velocity dropped or read
    from the wrong columns, or the label ignored."""
    from daps.robot.policy import ContextEmbed

    rng = np.random.default_rng(3)
    emb = ContextEmbed(num_tokens=3, vocab_size=5, num_classes=4, width=6).double()
    _set_random(emb, rng)
    labels = np.array([1, 4, 0])
    velocity = rng.normal(size=(3, 3))
    prev = np.array([[0, 5, 2], [3, 3, 1], [5, 5, 5]])
    packed = np.concatenate([labels[:, None], velocity, prev], axis=1)
    w1, b1 = emb.velocity[0].weight.detach().numpy(), emb.velocity[0].bias.detach().numpy()
    w2, b2 = emb.velocity[2].weight.detach().numpy(), emb.velocity[2].bias.detach().numpy()
    vel = _gelu(velocity @ w1.T + b1) @ w2.T + b2  # (B, E)
    expected = emb.codes.weight.detach().numpy()[prev] + (emb.labels.weight.detach().numpy()[labels] + vel)[:, None]
    out = emb(torch.from_numpy(packed))
    assert out.shape == (3, 3, 6)
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-10, atol=1e-10)


def _tiny_policy(num_tokens: int, scale=None):
    from daps.robot.policy import CommandPolicy

    torch.manual_seed(0)
    return CommandPolicy(num_tokens, vocab_size=5, num_classes=4, width=16, num_layers=1, num_heads=2,
                         velocity_scale=scale).eval()


def test_policy_context_divides_the_velocity_by_its_scale():
    """``context`` packs ``[label, v / scale, prev]``: scale (2, 4, 0.5) turns (1, 2, 3) into (0.5, 0.5, 6); the
    start symbol is V = 5. Fails on: the velocity multiplied by the scale."""
    policy = _tiny_policy(3, scale=[2.0, 4.0, 0.5])
    ctx = policy.context(torch.tensor([1, 4]), torch.tensor([[1.0, 2.0, 3.0], [-2.0, 0.0, 0.25]]),
                         torch.tensor([[0, 5, 2], [1, 1, 1]]))
    expected = torch.tensor([[1, 0.5, 0.5, 6, 0, 5, 2], [4, -1, 0, 0.5, 1, 1, 1]])
    torch.testing.assert_close(ctx, expected)
    assert policy.start_symbol == 5


def test_policy_guidance_zero_samples_the_null_label_model(single_thread):
    """``guidance=0`` is the unconditional (null-label) model: the same draws as asking for the null label with
    guidance 1. Fails on: guidance 0 sampling the requested labels' model."""
    policy = _tiny_policy(3)
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (64,), generator=g)
    velocity, prev = torch.randn(64, 3, generator=g), torch.randint(0, 6, (64, 3), generator=g)
    null = torch.full_like(labels, 4)
    z0 = policy.generate(labels, velocity, prev, guidance=0.0, generator=torch.Generator().manual_seed(1))
    z_null = policy.generate(null, velocity, prev, guidance=1.0, generator=torch.Generator().manual_seed(1))
    z_cond = policy.generate(labels, velocity, prev, guidance=1.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(z0, z_null)
    assert not torch.equal(z0, z_cond)  # the labels do matter to this network


def test_policy_guidance_mixes_the_conditional_and_null_model(single_thread):
    """One token, guidance 3, temperature 1e-4: the draw is the argmax of ``null + 3 (cond - null)`` of the
    teacher-forced log-probabilities of every code under the label and under the null label. Fails on: the
    conditional and null rows swapped (``cond + 3 (null - cond)``)."""
    policy = _tiny_policy(1)
    g = torch.Generator().manual_seed(2)
    b = 64
    labels = torch.randint(0, 4, (b,), generator=g)
    velocity, prev = 3 * torch.randn(b, 3, generator=g), torch.randint(0, 6, (b, 1), generator=g)
    null = torch.full_like(labels, 4)
    with torch.no_grad():
        cond = torch.stack([policy.token_log_probs(torch.full((b, 1), v), labels, velocity, prev)[:, 0]
                            for v in range(5)], dim=1).double()  # (B, V)
        uncond = torch.stack([policy.token_log_probs(torch.full((b, 1), v), null, velocity, prev)[:, 0]
                              for v in range(5)], dim=1).double()
    expected = (uncond + 3 * (cond - uncond)).argmax(1)
    assert not torch.equal(expected, (cond + 3 * (uncond - cond)).argmax(1))  # the test can tell them apart
    z = policy.generate(labels, velocity, prev, guidance=3.0, temperature=1e-4,
                        generator=torch.Generator().manual_seed(0))
    assert torch.equal(z[:, 0], expected)


class _Windows:
    """A stand-in for :class:`~daps.data.motion.WindowImages`: ``labels``, ``len`` and ``images[idx]``; window i
    holds its index in every entry, and each index asked for is recorded."""

    def __init__(self, labels: list[int], frames: int = 8, features: int | None = None) -> None:
        from daps.motion.features import NUM_FEATURES

        self.labels = torch.tensor(labels, dtype=torch.long)
        self.shape = (1, frames, features or NUM_FEATURES)
        self.asked: list[torch.Tensor] = []

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        self.asked.append(idx.clone())
        return idx.float().view(-1, 1, 1, 1).expand(-1, *self.shape).clone()


class _Oracle(torch.nn.Module):
    """Predicts ``preds[i]`` for window i in eval mode, always class 5 in training mode."""

    def __init__(self, preds: list[int]) -> None:
        super().__init__()
        self.preds = torch.tensor(preds)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = x[:, 0, 0, 0].long()
        pred = torch.full_like(idx, 5) if self.training else self.preds[idx]
        return torch.nn.functional.one_hot(pred, 6).float()


def test_confusion_by_kind_counts_true_kind_then_predicted_kind():
    """Six windows, true kinds (dance, dance, dance, fall, fall, fight) predicted (dance, fall, dance, fall,
    fall, dance), in batches of 4, the model put in eval mode first: accuracy 4/6, recall dance 2/3, fall 1,
    fight 0; the confusion is true kind -> predicted kind. Fails on: the confusion transposed (predicted ->
    true), or the model left in training mode (its dropout on)."""
    from daps.motion.classifier import confusion_by_kind

    model = _Oracle([0, 1, 0, 1, 1, 0]).train()
    acc, recall, counts, confusion = confusion_by_kind(model, _Windows([0, 0, 0, 1, 1, 2], features=2),
                                                       batch_size=4)
    assert acc == pytest.approx(4 / 6)
    assert recall == pytest.approx({"dance": 2 / 3, "fall": 1.0, "fight": 0.0})
    assert counts == {"dance": 3, "fall": 2, "fight": 1}
    zeros = dict.fromkeys(("dance", "fall", "fight", "jump", "run", "walk"), 0)
    assert confusion == {"dance": {**zeros, "dance": 2, "fall": 1}, "fall": {**zeros, "fall": 2},
                         "fight": {**zeros, "dance": 1}}


def test_motion_classifier_draws_every_kind_equally_and_trains_on_each_windows_own_label(monkeypatch,
                                                                                         single_thread):
    """1,000 windows of counts 600/200/100/50/30/20 over the six kinds: 20 steps of 256 draws give each kind
    about 1/6 of the draws (not 60 % the commonest), and the cross-entropy target of every drawn window
    is its own label. Fails on: uniform draws over windows (no class balance), or labels shifted by one
    window."""
    import torch.nn.functional as F

    from daps.motion.classifier import train_classifier

    targets: list[torch.Tensor] = []
    cross_entropy = F.cross_entropy
    inside = [False]  # under a torch-function mode (the device probe) cross_entropy dispatches to the spy again

    def spy(logits, target, *args, **kwargs):
        if inside[0]:
            return cross_entropy(logits, target, *args, **kwargs)
        targets.append(target.clone())
        inside[0] = True
        try:
            return cross_entropy(logits, target, *args, **kwargs)
        finally:
            inside[0] = False

    monkeypatch.setattr(F, "cross_entropy", spy)
    labels = [k for k, n in enumerate((600, 200, 100, 50, 30, 20)) for _ in range(n)]
    train, val = _Windows(labels), _Windows([0, 1, 2, 3, 4, 5])
    train_classifier(train, val, steps=20, batch_size=256)
    drawn = torch.cat(train.asked[:20])
    assert len(targets) == 20 and drawn.numel() == 20 * 256
    assert torch.equal(torch.cat(targets), train.labels[drawn])
    share = torch.bincount(train.labels[drawn], minlength=6).float() / drawn.numel()
    assert ((share > 0.12) & (share < 0.22)).all(), share


def test_load_classifier_gives_eval_mode_and_refuses_other_feature_versions(tmp_path):
    """A saved classifier loads in eval mode (its dropout off, so logits are deterministic); weights saved for
    another feature version are refused with a UserError. Fails on: the loaded model left in training mode, or
    the feature-version check dropped."""
    from safetensors.torch import save_file

    from daps.errors import UserError
    from daps.motion.classifier import ClassifierReport, MotionClassifier, load_classifier, save_classifier

    torch.manual_seed(0)
    model = MotionClassifier(num_classes=6)
    report = ClassifierReport(0.5, {}, {}, {}, 0.5, 1, 1, 0)
    path = save_classifier(model, report, tmp_path / "clf.safetensors")
    loaded = load_classifier(path)
    assert not loaded.training
    assert torch.equal(loaded.head[1].weight, model.head[1].weight)
    other = tmp_path / "old.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(other),
              metadata={"version": "1", "feature_version": "-1"})
    with pytest.raises(UserError, match="feature version"):
        load_classifier(other)


# --------------------------------------------------------------------------------------------------
# Motion kinds and the cache folders


@pytest.mark.parametrize("clip,kind", [
    ("dance2_subject3", "dance"), ("fallAndGetUp2_subject2", "fall"), ("fightAndSports1_subject1", "fight"),
    ("jumps1_subject5", "jump"), ("sprint1_subject2", "run"), ("run2_subject1", "run"), ("walk3_subject4", "walk"),
])
def test_motion_kind_of_a_clip_from_its_name(clip, kind):
    """LAFAN1's clip names -> kind of motion: sprints are runs, "fight and sports" fights. Fails on: sprints
    counted as walks."""
    from daps.data.motion import MOTION_TYPES, motion_type

    assert MOTION_TYPES[motion_type(clip)] == kind


def test_stale_temporaries_old_entries_with_the_prefix_go_and_nothing_else(tmp_path, caplog):
    """Entries ``<prefix>*`` older than :data:`STALE_AFTER_S` go (a folder whole, a link without what it points
    at); young ones and other names stay, however old. Fails on: every old entry of the folder removed, or a
    link to a folder followed (it fails, so the link stays)."""
    import os
    import time

    from daps.data.paths import STALE_AFTER_S, remove_stale_temporaries

    target = tmp_path / "target"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / ".part.old").write_text("x")
    (folder / ".part.young").write_text("x")
    (folder / ".part.dir").mkdir()
    (folder / ".part.dir" / "a").write_text("x")
    (folder / "data.npy").write_text("x")
    (folder / ".part.link").symlink_to(target)
    old = time.time() - STALE_AFTER_S - 60
    for name in (".part.old", ".part.dir", "data.npy"):
        os.utime(folder / name, (old, old))
    os.utime(folder / ".part.link", (old, old), follow_symlinks=False)
    remove_stale_temporaries(folder, ".part.")
    assert sorted(os.listdir(folder)) == [".part.young", "data.npy"]
    assert (target / "keep.txt").is_file()


def test_cache_root_and_data_folder_precedence(tmp_path, monkeypatch):
    """The cache is ``$XDG_CACHE_HOME/daps``, else ``~/.cache/daps``; an explicit data folder wins over
    ``$DAPS_DATA_DIR`` and must be a folder (a file is refused). Fails on: the cache at the bare XDG folder,
    ``$DAPS_DATA_DIR`` preferred to an explicit folder, or an existing file taken as the data folder."""
    from daps.data.paths import cache_root, explicit_root, user_roots

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "daps"
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "daps"
    env, mine = tmp_path / "env", tmp_path / "mine"
    env.mkdir()
    mine.mkdir()
    monkeypatch.setenv("DAPS_DATA_DIR", str(env))
    assert user_roots(mine) == [mine]
    assert user_roots(None) == [env]
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        explicit_root(tmp_path / "file")


# --------------------------------------------------------------------------------------------------
# The graph-safety trace


def test_trace_counts_repeat_interleave_without_output_size_as_a_host_read():
    """``repeat_interleave`` with tensor repeats sizes its output from their sum, read on the host; with
    ``output_size`` given it does not. Fails on: the ``repeat_interleave`` rule dropped."""
    from daps.graphed import StepTrace

    x, repeats = torch.arange(3.0), torch.tensor([1, 2, 0])
    with StepTrace([]) as trace:
        torch.repeat_interleave(x, repeats)
    assert trace.host_reads == ["aten.repeat_interleave.Tensor"]
    with StepTrace([]) as trace:
        torch.repeat_interleave(x, repeats, output_size=3)
    assert trace.host_reads == []


def test_trace_leaves_out_writes_into_schedule_buffers_only():
    """``fill_`` and ``copy_`` into an ignored (schedule) buffer are not recorded; a ``copy_`` into any other
    tensor is. Fails on: ``copy_`` into a schedule buffer recorded (its refills between replays would look like
    operations of the step)."""
    from daps.graphed import StepTrace

    buf, x = torch.zeros(2), torch.arange(3.0)
    with StepTrace([buf]) as trace:
        buf.fill_(1.0)
        buf.copy_(x[:2])
        x.clone().copy_(x)
    assert [op[0] for op in trace.ops] == ["aten.slice.Tensor", "aten.clone.default", "aten.copy_.default"]


def test_traces_tell_python_numbers_dtypes_and_lengths_apart():
    """A Python number enters a trace by value (``x * 0.5`` and ``x * 0.25`` differ: a graph would freeze it),
    a tensor by shape, dtype and device, and a trace that is a prefix of another differs by its length. Fails
    on: floats described by type only, the dtype left out, or the length check dropped."""
    from daps.graphed import StepTrace, Trace, _describe

    assert _describe(torch.zeros(2, 3, dtype=torch.float64)) == ("tensor", (2, 3), "torch.float64", "cpu")
    x = torch.ones(3)
    traces = []
    for scale in (0.5, 0.25):
        with StepTrace([]) as trace:
            x * scale
        traces.append(Trace(trace.ops, trace.host_reads, trace.host_copies))
    assert traces[0].first_difference(traces[1]) is not None
    longer = Trace(traces[0].ops * 2, [], [])
    assert traces[0].first_difference(longer) == "1 vs 2 operations"


class _Step:
    """Stands in for a method in :class:`GraphedStep`: it only counts schedule refills."""

    def __init__(self) -> None:
        self.filled: list[int] = []
        self.capturing = False

    def fill_schedules(self, step: int) -> None:
        self.filled.append(step)


def test_graphed_step_warms_up_records_then_replays_and_refuses_another_dtype(monkeypatch):
    """``warmup=2``: calls 1 and 2 are eager, call 3 records then replays, calls 4 and 5 replay; an input of
    another dtype (same shape) is refused. Fails on: one warm-up step too few, or only the shape checked (a
    float64 batch would be copied silently into the float32 buffer)."""
    from types import SimpleNamespace

    from daps.graphed import GraphedStep

    calls: list[str] = []
    outputs = ({}, {})

    def record(self, step):
        calls.append("record")
        self._outputs = outputs
        self.graph = object()
        return False

    monkeypatch.setattr(GraphedStep, "_eager", lambda self, step: calls.append("eager") or outputs)
    monkeypatch.setattr(GraphedStep, "_record", record)
    monkeypatch.setattr(GraphedStep, "_replay", lambda self: calls.append("replay"))
    opt = SimpleNamespace(capturable=True, zero_grad=lambda: None)
    graphed = GraphedStep(_Step(), opt, torch.Generator(), warmup=2)  # type: ignore[arg-type]
    for step in range(5):
        graphed(torch.zeros(2), step)
    assert calls == ["eager", "eager", "record", "replay", "replay", "replay"]  # a recording runs nothing
    with pytest.raises(ValueError, match="one shape"):
        graphed(torch.zeros(2, dtype=torch.float64), 5)


# --------------------------------------------------------------------------------------------------
# Motion metrics and clip reconstruction (real data)

REAL_DIR = __import__("os").environ.get("DAPS_DATA_DIR", "").strip()
needs_real_data = pytest.mark.skipif(not REAL_DIR, reason="DAPS_DATA_DIR is not set")


def _lafan_config():
    from daps.config import DataConfig
    from daps.motion.features import NUM_FEATURES

    return DataConfig(name="lafan1-h1", data_dir=REAL_DIR, image_shape=(1, 32, NUM_FEATURES))


@needs_real_data
def test_motion_metrics_judge_the_reconstruction_against_the_ground_truth(single_thread):
    """``MotionMetrics(x, x_hat)``: a perfect reconstruction has zero error; the ``gt_*`` numbers are the ground
    truth's own and do not move when the reconstruction does; every metric comes back once per window. Fails on:
    the reconstruction and ground truth swapped (``gt_*`` would judge the reconstruction), or one value per
    batch."""
    from daps.data.motion import MotionMetrics, lafan_windows

    data = _lafan_config()
    x = lafan_windows("test", data)[torch.arange(0, 400, 100)]
    x_hat = x + 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    metrics = MotionMetrics(data)
    same, noisy = metrics(x, x), metrics(x, x_hat)
    assert all(v.shape == (4,) for v in noisy.values())
    assert float(same["mpjpe_mm"][0]) == pytest.approx(0.0, abs=1e-6)
    assert float(noisy["mpjpe_mm"][0]) > 1.0
    for key in ("gt_foot_skating_m_s", "gt_ground_penetration_mm"):
        assert float(noisy[key][0]) == pytest.approx(float(same[key][0]), rel=1e-9, abs=1e-12), key
    assert float(noisy["foot_skating_m_s"][0]) != pytest.approx(float(same["foot_skating_m_s"][0]))


@needs_real_data
def test_motion_skating_is_pooled_over_contact_frames_whatever_the_batch_size(single_thread):
    """``evaluate`` with :class:`MotionMetrics`: foot skating is the speed summed over every contact frame of every
    window divided by their count (``foot_skating_m_s`` of all poses at once), the same at batch sizes 3 and 10;
    the other metrics are means over windows; the contact counts that weight skating are not reported. Fails on:
    each batch's (or window's) skating averaged over windows, which differs where windows have unequal contact."""
    from types import SimpleNamespace

    from daps.data import TensorEvalSet
    from daps.data.motion import MotionMetrics, lafan_windows
    from daps.metrics import evaluate
    from daps.motion.metrics import foot_float_mm, foot_skating_m_s

    class Shifted(torch.nn.Module):  # the same reconstruction of a window in any batch
        def __init__(self) -> None:
            super().__init__()
            self.final_beta, self.vocab_size = None, None

        def reconstruct(self, x, generator=None):
            x_hat = x + 0.4 * torch.sin(3 * x)
            return SimpleNamespace(x_hat=x_hat, log_p=-(x_hat - x).pow(2).flatten(1).sum(1), kl=None, log_q=None,
                                   token_entropy=None, indices=None)

    data = _lafan_config()
    x = lafan_windows("test", data)[torch.arange(0, 1000, 100)]  # 10 windows: walking, running, standing
    metrics = MotionMetrics(data)
    poses, poses_hat = metrics.poses(x), metrics.poses(Shifted().reconstruct(x).x_hat)
    per_window = [foot_skating_m_s(metrics.h1, p, metrics.motion.fps) for p in poses_hat]
    assert max(per_window) - min(per_window) > 0.05  # windows differ, so the pooling matters
    pooled, gt_pooled = (foot_skating_m_s(metrics.h1, p, metrics.motion.fps) for p in (poses_hat, poses))
    for batch_size in (3, 10):
        got = evaluate(Shifted(), TensorEvalSet(x, batch_size), example_metrics=metrics)
        assert got["foot_skating_m_s"] == pytest.approx(pooled, rel=1e-9)
        assert got["gt_foot_skating_m_s"] == pytest.approx(gt_pooled, rel=1e-9)
        assert got["foot_float_mm"] == pytest.approx(foot_float_mm(metrics.h1, poses_hat), rel=1e-9)
        assert "foot_contact_frames" not in got and "gt_foot_contact_frames" not in got
    assert pooled != pytest.approx(float(np.mean(per_window)), rel=1e-3)


@needs_real_data
def test_reconstruct_clip_rounds_the_seconds_up_to_whole_windows(single_thread):
    """1.5 s at 30 fps is 45 frames, 1.4 windows of 32: two windows (64 frames), as ``robot plan`` rounds; an
    identity model gives back the ground truth. Fails on: the windows rounded down (one window, 32 frames)."""
    from types import SimpleNamespace

    from daps.data.motion import motion_data, reconstruct_clip

    class Identity(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(()))

        def reconstruct(self, x, generator=None):
            return SimpleNamespace(x_hat=x)

    data = _lafan_config()
    motion = motion_data(data)
    clip = sorted(motion.poses)[0]
    seconds = 45 / motion.fps
    target, pred = reconstruct_clip(Identity(), data, clip, 0.0, seconds)
    assert target.shape[0] == pred.shape[0] == 64
    np.testing.assert_allclose(pred, target, atol=1e-3)


@needs_real_data
def test_a_run_saved_with_another_feature_scale_is_refused(tmp_path):
    """``motion_stats.json`` with the data's means but one feature's scale doubled: reconstructions would be read
    on the wrong scale, so it is refused; the data's own statistics pass. Fails on: only the means compared."""
    import json

    from daps.data.motion import check_run_stats, motion_data
    from daps.errors import UserError

    data = _lafan_config()
    saved = motion_data(data).stats.to_dict()
    (tmp_path / "motion_stats.json").write_text(json.dumps(saved))
    check_run_stats(tmp_path, data)
    saved["scale"] = [2 * saved["scale"][0], *saved["scale"][1:]]
    (tmp_path / "motion_stats.json").write_text(json.dumps(saved))
    with pytest.raises(UserError, match="other feature statistics"):
        check_run_stats(tmp_path, data)


@pytest.mark.parametrize("script", ["train_classifier.py", "train_motion_classifier.py"])
def test_the_classifier_scripts_check_their_outputs_before_training(tmp_path, script):
    """``--out x.json`` wrote the weights where the report then landed; an existing file was replaced minutes
    later. Both scripts now refuse, in one line with exit code 2, before loading any data."""
    import subprocess
    import sys
    from pathlib import Path

    path = Path(__file__).parent.parent / "scripts" / script
    taken = tmp_path / "taken.safetensors"
    taken.write_bytes(b"mine")
    (tmp_path / "report.json").write_text("{}")
    cases = [
        (["--out", str(tmp_path / "x.json")], "must name a file ending in .safetensors"),
        (["--out", str(taken)], "is not a classifier's weights"),  # --overwrite would not help: not suggested
        (["--out", str(tmp_path / "new.safetensors"), "--report", str(tmp_path / "report.json")], "--report"),
        (["--report", str(tmp_path / "r.txt")], "must name a file ending in .json"),
    ]
    extra = ["--dataset", "mnist"] if script == "train_classifier.py" else []
    cases += [  # --overwrite replaces an earlier classifier's files only, never a user's
        (["--out", str(taken), "--overwrite"], "is not a classifier's weights"),
        (["--report", str(tmp_path / "report.json"), "--overwrite"], "is not a classifier's report"),
    ]
    for args, words in cases:
        proc = subprocess.run([sys.executable, str(path), *extra, *args, "--data-dir", str(tmp_path / "none")],
                              capture_output=True, text=True, timeout=120)
        err = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(err) == 1 and words in err[0], (args, proc.stderr)
    assert taken.read_bytes() == b"mine" and not (tmp_path / "new.safetensors").exists()
    assert (tmp_path / "report.json").read_text() == "{}"


def test_an_earlier_classifier_is_recognised_as_one(tmp_path):
    """What ``--overwrite`` of the classifier scripts may replace: weights saved by either classifier module and a
    report the scripts wrote; not another safetensors file, not another JSON file."""
    from safetensors.torch import save_file

    from daps.metrics.classifier import (
        ImageClassifier,
        _is_classifier_report,
        _is_classifier_weights,
        save_image_classifier,
    )
    from daps.motion.classifier import ClassifierReport, MotionClassifier, save_classifier

    image = save_image_classifier(ImageClassifier((1, 28, 28)), "mnist", {}, tmp_path / "image.safetensors")
    report = ClassifierReport(0.5, {}, {}, {}, 0.5, 1, 1, 0)
    motion = save_classifier(MotionClassifier(), report, tmp_path / "motion.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"), metadata={"version": "1"})
    assert _is_classifier_weights(image) and _is_classifier_weights(motion)
    assert not _is_classifier_weights(tmp_path / "other.safetensors")
    (tmp_path / "script.json").write_text('{"commit": "abc", "command": "python x", "torch": "2", "steps": 1}')
    (tmp_path / "mine.json").write_text('{"steps": 1}')
    assert _is_classifier_report(tmp_path / "script.json")
    assert not _is_classifier_report(tmp_path / "mine.json") and not _is_classifier_report(image)


def test_the_motion_token_embedding_is_a_convolution_over_time():
    """``embed="time"`` builds the time embedding, whose 1-d convolution reads all features of its frames: a change in
    the last feature of frame 0 changes token 0 (a patch embedding, which fits the same shapes, would leave it to a
    patch of the other half of the features)."""
    from daps.nets.embed import TimeEmbed, token_embed

    torch.manual_seed(0)
    embed = token_embed("time", (1, 32, 86), 64, 16)
    assert isinstance(embed, TimeEmbed)
    x = torch.randn(1, 1, 32, 86, generator=torch.Generator().manual_seed(0))
    changed = x.clone()
    changed[0, 0, 0, 85] += 1.0
    assert (embed(changed)[0, 0] - embed(x)[0, 0]).abs().max() > 1e-3


def test_downsampling_convolutions_are_lecun_initialized_and_the_value_net_scales_by_the_data_size():
    """``ResampleTime``'s strided convolutions: LeCun normal, std sqrt(1 / fan_in) = 1/16 for 64 channels x 4 taps
    (Glorot would give 0.083). ``PatchValueNet`` predicts per data dimension, times D_x: with every weight 0 and the
    head's bias 1 it returns 784 for an MNIST image (the docstring's scale)."""
    from daps.nets.feedforward import PatchValueNet
    from daps.nets.trajectory import ResampleTime

    torch.manual_seed(0)
    conv = ResampleTime(64, 8, 32, 8).layers[0]  # 64 channels in, 8 out
    assert isinstance(conv, torch.nn.Conv1d)
    assert float(conv.weight.detach().std()) == pytest.approx(1 / 16, rel=0.06)
    net = PatchValueNet((1, 28, 28))
    with torch.no_grad():
        for param in net.parameters():
            param.zero_()
        net.head.bias.fill_(1.0)
    assert net(torch.rand(3, 1, 28, 28)).detach().tolist() == [784.0] * 3
