"""FSQ (original: models/fsq.py): the bound / quantize / index functions against their definitions and against
vector-quantize-pytorch's FSQ, and the method's parameter counts against the original's."""

from __future__ import annotations

import math

import pytest
import torch

import daps.functional as DF
from daps import get_preset, parse_overrides
from daps.methods import build_method

LEVEL_LISTS = [(8, 6, 5), (8, 8, 8), (8, 5, 5, 5), (10, 10, 10), (4, 3), (2, 2, 2), (7,), (3, 9, 2, 4)]


def grid(level: int) -> torch.Tensor:
    """The L code values of one dim: ``{-(L//2), ..., L - 1 - L//2} / (L//2)``."""
    half = level // 2
    return (torch.arange(level) - half).float() / half


@pytest.mark.parametrize("levels", LEVEL_LISTS)
def test_codes_lie_on_the_grid(levels):
    z = torch.randn(4096, len(levels), generator=torch.Generator().manual_seed(0)) * 4
    codes = DF.fsq_quantize(z, levels)
    assert codes.shape == z.shape and codes.dtype == torch.float32
    for i, level in enumerate(levels):
        on_grid = (codes[:, i, None] == grid(level)).any(-1)  # exact: the same float as the grid's
        assert on_grid.all(), (levels, i)
    assert codes.abs().max() <= 1.0


@pytest.mark.parametrize("level", range(2, 11))
def test_every_level_is_reachable(level):
    z = torch.linspace(-30, 30, 20001)[:, None]  # (N, 1)
    codes = DF.fsq_quantize(z, (level,))
    assert torch.equal(codes.unique(), grid(level))
    # bound is increasing, so the codes are sorted along a sorted sweep
    assert (codes[1:] >= codes[:-1]).all()


@pytest.mark.parametrize("level", [500, 501, 502, 1001, 1002, 2000, 5001])
def test_large_levels_take_exactly_their_values(level):
    """Where eps * (L - 1) / 2 reaches 1/2 an uncapped range would round one step past each end."""
    # tanh(12) < 1 in float64, so this never reaches float32's saturation edge (tested in test_known_answers_10)
    z = torch.linspace(-12, 12, 400001, dtype=torch.float64)[:, None]
    indices = DF.fsq_codes_to_indices(DF.fsq_quantize(z, (level,)), (level,))
    assert torch.equal(indices.unique(), torch.arange(level))


@pytest.mark.parametrize("level", range(2, 11))
def test_bound_is_centred(level):
    """With atanh in the shift, bound(0) = 0 up to float error (the original's tan misses by 5e-6 at L=10, 4e-4
    at L=4 and 0.04 at L=2)."""
    assert abs(DF.fsq_bound(torch.zeros(1, 1), (level,)).item()) < 1e-6


@pytest.mark.parametrize("levels", LEVEL_LISTS)
def test_codes_indices_round_trip_over_the_whole_codebook(levels):
    size = math.prod(levels)
    indices = torch.arange(size)
    codes = DF.fsq_indices_to_codes(indices, levels)  # (V, d)
    assert codes.shape == (size, len(levels))
    assert torch.unique(codes, dim=0).shape[0] == size  # a bijection onto the grid
    assert torch.equal(DF.fsq_codes_to_indices(codes, levels), indices)
    for i, level in enumerate(levels):
        assert torch.equal(codes[:, i].unique(), grid(level))


def test_indices_are_big_endian():
    levels = (8, 6, 5)
    half = torch.tensor([4, 3, 2])
    digits = torch.tensor([[0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0], [7, 5, 4], [3, 2, 1]])
    codes = (digits - half).float() / half
    assert DF.fsq_codes_to_indices(codes, levels).tolist() == [0, 1, 5, 30, 239, 3 * 30 + 2 * 5 + 1]


@pytest.mark.parametrize("levels", LEVEL_LISTS)
def test_quantize_then_index_then_decode_is_exact(levels):
    z = torch.randn(64, 7, len(levels), generator=torch.Generator().manual_seed(1)) * 3
    codes = DF.fsq_quantize(z, levels)  # (64, 7, d)
    indices = DF.fsq_codes_to_indices(codes, levels)  # (64, 7)
    assert indices.dtype == torch.long and 0 <= indices.min() and indices.max() < math.prod(levels)
    assert torch.equal(DF.fsq_indices_to_codes(indices, levels), codes)


def test_finite_for_extreme_inputs():
    levels = (8, 6, 5, 2)
    big = torch.finfo(torch.float32).max
    values = torch.tensor([0.0, 1e-30, -1e-30, 1e4, -1e4, 1e30, -1e30, big, -big, math.inf, -math.inf])
    z = values[:, None].expand(-1, len(levels)).clone().requires_grad_(True)
    codes = DF.fsq_quantize(z, levels)
    assert torch.isfinite(codes).all()
    codes.sum().backward()
    assert torch.isfinite(z.grad).all()
    # saturation: very large inputs land on the extreme codes
    assert torch.equal(codes[3], torch.ones(4) * torch.tensor([0.75, 2 / 3, 1.0, 0.0]))
    assert torch.equal(codes[4], -torch.ones(4))
    assert torch.isfinite(DF.fsq_indices_to_codes(DF.fsq_codes_to_indices(codes, levels), levels)).all()


def test_rounding_is_straight_through():
    levels = (8, 5)
    z = torch.randn(256, 2, generator=torch.Generator().manual_seed(2), requires_grad=True)
    w = torch.randn(256, 2, generator=torch.Generator().manual_seed(3))
    (DF.fsq_quantize(z, levels) * w).sum().backward()
    grad_st = z.grad.clone()
    z.grad = None
    (DF.fsq_bound(z, levels) / torch.tensor([4.0, 2.0]) * w).sum().backward()
    torch.testing.assert_close(grad_st, z.grad)


def test_half_precision_inputs_are_quantized_in_float32():
    z = torch.randn(128, 3, generator=torch.Generator().manual_seed(4))
    codes = DF.fsq_quantize(z.bfloat16(), (8, 6, 5))
    assert codes.dtype == torch.float32
    torch.testing.assert_close(codes, DF.fsq_quantize(z.bfloat16().float(), (8, 6, 5)), rtol=0, atol=0)


def test_invalid_levels_are_rejected():
    with pytest.raises(ValueError, match="levels"):
        DF.fsq_quantize(torch.zeros(2, 2), (8, 1))
    with pytest.raises(ValueError, match="last dim"):
        DF.fsq_quantize(torch.zeros(2, 3), (8, 6))
    with pytest.raises(ValueError, match="levels"):
        DF.fsq_indices_to_codes(torch.zeros(2, dtype=torch.long), ())
    # in a config, one line before any model is built: a level of 1 is one value, no information
    from daps import get_preset, parse_overrides
    from daps.errors import UserError

    for levels in ("1,4", "4,0"):
        with pytest.raises(UserError, match=r"fsq.levels must be one or more integers >= 2"):
            parse_overrides(get_preset("mnist", "fsq"), [f"fsq.levels={levels}"])


@pytest.mark.parametrize("levels", [(8, 6, 5), (8, 8, 8), (8, 5, 5, 5), (10, 10, 10), (3, 4, 7), (5,)])
def test_matches_vector_quantize_pytorch(levels):
    """The peer implementation (no projections: its dim = len(levels)) gives the same codes, and the same
    indices up to its little-endian digit order (our index with the dims reversed)."""
    from vector_quantize_pytorch import FSQ as ReferenceFSQ

    reference = ReferenceFSQ(list(levels))
    assert not reference.has_projections
    z = torch.randn(32, 64, len(levels), generator=torch.Generator().manual_seed(5)) * 3
    ref_codes, ref_indices = reference(z)
    codes = DF.fsq_quantize(z, levels)
    torch.testing.assert_close(codes, ref_codes, rtol=0, atol=1e-6)
    assert torch.equal(DF.fsq_codes_to_indices(codes.flip(-1), levels[::-1]), ref_indices.long())


# --------------------------------------------------------------------------------------------------
# The method


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_mnist_parameter_counts_match_the_original():
    """The original's counts: fsq MNIST rec 160,707 / gen 267,493 (levels [8, 6, 5], encoder 2 layers, mlp ratio 7)."""
    torch.manual_seed(0)
    model = build_method(get_preset("mnist", "fsq"), (1, 28, 28))
    assert count(model.encoder) == 160_707
    assert count(model.embed_latent) + count(model.decoder) == 267_493
    assert count(model) == 160_707 + 267_493
    assert model.vocab_size == 8 * 6 * 5


def test_loss_is_the_per_dimension_reconstruction():
    cfg = parse_overrides(
        get_preset("mnist", "fsq"),
        ["encoder.width=16", "encoder.num_heads=2", "encoder.num_tokens=4", "decoder.embed_dim=8",
         "decoder.hidden=32,32", "decoder.fsq_token_dim=8", "fsq.levels=4,3"],
    )
    torch.manual_seed(0)
    model = build_method(cfg, (1, 28, 28))
    x = (torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0)) > 0.8).float()
    out = model(x, step=0)
    rec = model.reconstruct(x)
    torch.testing.assert_close(out.logs["log_p"], rec.log_p.mean())
    torch.testing.assert_close(out.loss, -rec.log_p.mean() / 784)
    assert torch.equal(out.indices, rec.indices) and rec.kl is None and rec.log_q is None
    assert 1.0 <= out.logs["perplexity"] <= min(32, 12)


def test_logged_training_perplexity_pools_every_token():
    from daps.metrics.codes import code_perplexity
    from daps.presets import configured

    torch.manual_seed(0)
    cfg = configured("mnist", "fsq", ["encoder.width=16", "encoder.num_heads=2", "encoder.num_tokens=4",
                                      "decoder.embed_dim=8", "decoder.hidden=32,32", "fsq.levels=4,3"])
    model = build_method(cfg, (1, 28, 28))
    x = (torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0)) > 0.8).float()
    out = model(x, step=0)
    assert out.logs["perplexity"].item() == pytest.approx(code_perplexity(out.indices, model.vocab_size), rel=1e-5)
