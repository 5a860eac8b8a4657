"""Known answers for behaviour that a thirteenth mutation sweep, of the networks (daps/nets/), the likelihoods, the TF32
switch, the progress bars and the graph-safety trace (daps/graphed.py), found no test guarding: the fan-in of the
transposed convolutions, the ReLUs of the ResNet encoder and decoder, the (h, w, c) order of the ResNet value net,
Glorot-*normal* upsampling kernels, the static sampler's cache buckets, restoring the legacy TF32 flags, the erased
bar, the level, streams and filters of the handlers a bar swaps in, ``nonzero`` as a host read and the refused
warm-up of zero steps. Each test names the plausible slip it fails on (each checked against its mutant).
"""

from __future__ import annotations

import io
import logging
import math
import sys
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from daps import precision
from daps.graphed import GraphedStep, StepTrace
from daps.nets import kv_cache
from daps.nets.ar_encoder import ARTransformerEncoder
from daps.nets.resnet import ResNetDecoder, ResNetEncoder, ResNetValueNet, upconv
from daps.nets.trajectory import ResampleTime
from daps.progress import progress_bar

pytestmark = pytest.mark.usefixtures("single_thread")


# -- daps/nets/resnet.py --------------------------------------------------------------------------------------------


def test_transposed_conv_kernels_have_variance_one_over_input_channels_times_16():
    """``upconv(64, 8)``: a (4, 4, in, out) kernel in Flax has fan-in ``in * 16`` = 1024, so the truncation-corrected
    LeCun normal gives std 1/32 (8,192 weights: the estimate is well within 4 %). Fails on: the fan-in taken from the
    output channels (``out * 16`` = 128, std 0.088)."""
    torch.manual_seed(0)
    layer = upconv(64, 8)
    std = float(layer.weight.detach().std())
    assert abs(std - 1 / 32) < 0.04 / 32, std
    assert torch.equal(layer.bias, torch.zeros(8))


def test_resnet_encoder_rectifies_the_blocks_output_before_its_1x1_head():
    """``head(ReLU(h))``: with the 1x1 head set to the identity the output is exactly ReLU of the last residual
    block's output (captured by a hook), which has negative entries. Fails on: the ReLU before the head dropped."""
    torch.manual_seed(0)
    enc = ResNetEncoder((1, 8, 8), grid=4, width=8, num_blocks=1, out_dim=8)
    with torch.no_grad():
        enc.head.weight.copy_(torch.eye(8)[:, :, None, None])
        enc.head.bias.zero_()
    seen = []
    enc.blocks[-1].register_forward_hook(lambda module, args, out: seen.append(out.detach()))
    out = enc(torch.randn(3, 1, 8, 8)).detach()
    (h,) = seen
    assert h.min() < 0  # the test has something to rectify
    torch.testing.assert_close(out, h.clamp_min(0), rtol=0, atol=1e-6)


def test_resnet_decoder_rectifies_after_every_upsampling_norm():
    """A 2x2 token grid upsampled to 8x8 takes two transposed convs, BatchNorm + ReLU after the first: the second
    one's input is non-negative (and not all zero). Fails on: the ReLU after the upsampling BatchNorm dropped (the
    normalized features, of mean 0, go in with their negative half)."""
    torch.manual_seed(0)
    dec = ResNetDecoder(num_tokens=4, token_dim=8, image_shape=(1, 8, 8), out_channels=2, width=8, num_blocks=1)
    assert len(dec.ups) == 2 and len(dec.up_norms) == 1
    seen = []
    dec.ups[1].register_forward_hook(lambda module, args, out: seen.append(args[0].detach()))
    out = dec.decode_latents(torch.randn(3, 4, 8))
    assert out.shape == (3, 2, 8, 8)
    (h,) = seen
    assert h.min() >= 0 and h.max() > 0


class _Fixed(nn.Module):
    """Stands for the value net's encoder: returns the given features whatever the input."""

    def __init__(self, features: torch.Tensor):
        super().__init__()
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features.expand(x.shape[0], -1, -1, -1)


def test_resnet_value_net_reads_the_feature_grid_in_flax_h_w_c_order():
    """``b(x) = D_x * (w . flatten_hwc(features) + b)``, the Flax layout of the original's Dense weights, checked
    against an explicit loop over (h, w, c). Fails on: the features flattened channel-major (``(c, h, w)``, the
    ``permute`` dropped), which fits the same weight shape."""
    torch.manual_seed(0)
    grid, width = 4, 8
    net = ResNetValueNet((1, 8, 8), grid=grid, width=width)
    features = torch.randn(1, width, grid, grid)
    net.encoder = _Fixed(features)
    w, b = net.head.weight.detach()[0], float(net.head.bias.detach()[0])
    expected = b
    for i in range(grid):
        for j in range(grid):
            for c in range(width):
                expected += float(w[(i * grid + j) * width + c]) * float(features[0, c, i, j])
    out = net(torch.zeros(2, 1, 8, 8)).detach()
    assert net.scale == 64.0
    torch.testing.assert_close(out, torch.full((2,), expected * 64.0), rtol=1e-5, atol=1e-4)


# -- daps/nets/trajectory.py ----------------------------------------------------------------------------------------


def test_upsampling_kernels_are_normal_not_uniform():
    """Glorot *normal*: of 2,048 weights with std s, about 8 % lie beyond ``sqrt(3) s``, the edge of the Glorot
    *uniform* draw of the same variance (``sqrt(6 / (fan_in + fan_out))``), whose fourth moment is also 1.8 s^4, not
    3 s^4. Fails on: ``xavier_uniform_`` (same variance, so the existing std check passes)."""
    torch.manual_seed(0)
    conv = ResampleTime(8, 64, 4, 8).layers[0]
    w = conv.weight.detach().flatten().double()
    bound = math.sqrt(6 / ((8 + 64) * 4))  # the uniform draw's support
    assert (w.abs() > bound).double().mean() > 0.04
    kurtosis = float((w**4).mean() / (w**2).mean() ** 2)
    assert 2.6 < kurtosis < 3.4, kurtosis


# -- daps/nets/ar_encoder.py ----------------------------------------------------------------------------------------


def test_static_sampler_reads_the_smallest_cache_bucket_beyond_each_position(monkeypatch):
    """T = 8, smallest bucket 2: buckets 2, 4, 8 (``cache_buckets``), and position p attends over the smallest one
    > p, so the eight steps read caches of 2, 2, 4, 4, 8, 8, 8, 8 keys (one decoder layer). Fails on: every position
    reading the whole cache (same samples, since later keys are masked, but T keys at every step)."""
    lengths = []
    update = kv_cache.StaticKVCache.update

    def spied(self, k, v, pos):
        lengths.append(self.k.shape[2])
        return update(self, k, v, pos)

    monkeypatch.setattr(kv_cache.StaticKVCache, "update", spied)
    torch.manual_seed(0)
    enc = ARTransformerEncoder((1, 8, 8), num_tokens=8, vocab_size=4, width=8, num_layers=1, num_heads=2, mlp_ratio=2)
    enc.compile_sampler(compile=False, smallest_bucket=2)
    x = torch.rand(2, 1, 8, 8)
    static = enc.sample(x, num_samples=3, generator=torch.Generator().manual_seed(1))
    assert lengths == [2, 2, 4, 4, 8, 8, 8, 8]
    enc._static_step_fn = None
    cached = enc.sample(x, num_samples=3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(static.indices, cached.indices)


# -- daps/precision.py ----------------------------------------------------------------------------------------------


@pytest.fixture
def restore_flags():
    """Leave the process's TF32 settings as they were (through torch's newer interface where it has one, which
    holds both; else the legacy flags)."""
    matmul, conv = torch.backends.cuda.matmul, getattr(torch.backends.cudnn, "conv", None)
    name = "fp32_precision" if hasattr(matmul, "fp32_precision") and hasattr(conv, "fp32_precision") else None
    if name is None:
        matmul, conv, name = torch.backends.cuda.matmul, torch.backends.cudnn, "allow_tf32"
    saved = getattr(matmul, name), getattr(conv, name)
    yield
    setattr(matmul, name, saved[0])
    setattr(conv, name, saved[1])


def test_restoring_the_legacy_flags_sets_matmuls_and_convolutions_each(restore_flags):
    """A setting read through the legacy ``allow_tf32`` flags (torch < 2.9) is put back flag by flag: (matmul on,
    conv off), then (off, on). Fails on: the cuDNN flag left as it was (this torch reads the newer interface, so the
    legacy branch of ``_restore`` runs in no other test)."""
    torch.backends.cudnn.allow_tf32 = True
    precision._restore((True, False))
    assert torch.backends.cuda.matmul.allow_tf32 is True and torch.backends.cudnn.allow_tf32 is False
    precision._restore((False, True))
    assert torch.backends.cuda.matmul.allow_tf32 is False and torch.backends.cudnn.allow_tf32 is True


# -- daps/progress.py -----------------------------------------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _screen(text: str) -> list[str]:
    """What a terminal shows after ``text``: ``\\r`` goes back to the line's start, ``\\n`` to a new line."""
    lines, col = [[]], 0
    for ch in text:
        if ch == "\r":
            col = 0
        elif ch == "\n":
            lines.append([])
            col = 0
        else:
            line = lines[-1]
            if col < len(line):
                line[col] = ch
            else:
                line.append(ch)
            col += 1
    return ["".join(line).rstrip() for line in lines]


@pytest.fixture
def daps_level():
    """The ``daps`` logger's level as it was before the test (set back through setLevel: it clears cached levels)."""
    level = logging.getLogger("daps").level
    yield
    logging.getLogger("daps").setLevel(level)


def _console(monkeypatch) -> _Terminal:
    """Standard error as a fake terminal, a console handler on the root logger (the CLI's ``basicConfig``), none on
    ``daps``, which is at INFO. Called in the test itself: pytest puts its own capture back on ``sys.stderr`` after
    the fixtures have run."""
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(logging.getLogger(), "handlers", [logging.StreamHandler(terminal)])
    monkeypatch.setattr(logging.getLogger("daps"), "handlers", [])
    logging.getLogger("daps").setLevel(logging.INFO)
    return terminal


def test_a_finished_bar_is_erased_from_the_terminal(monkeypatch, daps_level):
    """Without ``leave`` the bar is erased when the block ends: the terminal shows no line with "3/3" (it was drawn).
    Fails on: tqdm told ``leave=True`` (the last bar stays on the screen, followed by a newline)."""
    console = _console(monkeypatch)
    with progress_bar(3, "evaluating", "image") as bar:
        bar.update(3)
        bar.refresh()
    assert "3/3" in console.getvalue()
    assert not any(line.strip() for line in _screen(console.getvalue())), _screen(console.getvalue())


def test_the_handler_added_where_none_is_set_up_prints_warnings_not_info(monkeypatch, daps_level):
    """No handler anywhere and ``daps`` at INFO: the handler a bar adds stands for Python's last resort, which prints
    warnings and above, so an INFO line stays unprinted. Fails on: the added handler at INFO."""
    console = _console(monkeypatch)
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    monkeypatch.setattr(logging, "lastResort", logging.StreamHandler(console))
    with progress_bar(2, "evaluating", "image") as bar:
        logging.getLogger("daps.data").info("an info line")
        logging.getLogger("daps.data").warning("a warning line")
        bar.update(2)
    assert "an info line" not in console.getvalue()
    assert console.getvalue().count("a warning line") == 1


def test_a_console_handler_on_standard_output_is_swapped_too(monkeypatch, daps_level):
    """Console handlers are those writing to standard output *or* error: one on stdout is replaced inside the bar by
    one that writes above it (to stdout), and put back after. Fails on: only stderr counted as a console."""
    _console(monkeypatch)  # standard error a terminal: the bar is shown
    out = _Terminal()
    monkeypatch.setattr(sys, "stdout", out)
    original = logging.StreamHandler(out)
    monkeypatch.setattr(logging.getLogger(), "handlers", [original])
    with progress_bar(2, "evaluating", "image"):
        (inside,) = logging.getLogger().handlers
        logging.getLogger("daps.data").warning("a warning line")
    assert inside is not original and type(inside).__name__ == "_AboveTheBar" and inside.stream is out
    assert logging.getLogger().handlers == [original]
    assert out.getvalue().count("a warning line") == 1


def test_the_swapped_handler_keeps_the_filters(monkeypatch, daps_level):
    """A console handler's filters hold inside the bar: a record the filter drops is not printed. Fails on: the
    replacement handler made without the original's filters."""
    console = _console(monkeypatch)
    handler = logging.getLogger().handlers[0]
    handler.addFilter(lambda record: "noisy" not in record.getMessage())
    with progress_bar(2, "evaluating", "image") as bar:
        logging.getLogger("daps.data").warning("a noisy line")
        logging.getLogger("daps.data").warning("a kept line")
        bar.update(2)
    text = console.getvalue()
    assert "a noisy line" not in text and text.count("a kept line") == 1


# -- daps/graphed.py ------------------------------------------------------------------------------------------------


def test_nonzero_is_traced_as_a_host_read():
    """``nonzero`` gives a shape that depends on values (a host read inside a CUDA graph): the trace lists it, and a
    step of plain arithmetic lists none. Fails on: ``nonzero`` missing from ``HOST_READS``."""
    x = torch.tensor([0.0, 1.0, 2.0])
    with StepTrace([]) as mode:
        (x * 2).sum()
    assert mode.host_reads == []
    with StepTrace([]) as mode:
        x.nonzero()
    assert len(mode.host_reads) == 1 and "nonzero" in mode.host_reads[0]


def test_a_graphed_step_without_eager_warm_up_is_refused():
    """The eager warm-up makes the optimizers' state and the schedule buffers that the recording reads: at least
    one step, so ``warmup=0`` is refused and ``warmup=1`` accepted. Fails on: the check loosened to ``warmup < 0``."""
    optimizers = SimpleNamespace(capturable=True)
    with pytest.raises(ValueError, match="at least 1"):
        GraphedStep(None, optimizers, torch.Generator(), warmup=0)  # type: ignore[arg-type]
    assert GraphedStep(None, optimizers, torch.Generator(), warmup=1).warmup == 1  # type: ignore[arg-type]
