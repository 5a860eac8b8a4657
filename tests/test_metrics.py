"""Metrics against independent references (scikit-image, numpy) and their edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio

from daps.data import TensorEvalSet
from daps.metrics import (
    code_perplexity,
    codebook_utilization,
    evaluate,
    l2_distance,
    mse_per_image,
    position_code_entropy,
    psnr_per_image,
)


def pairs(n: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, 1, 28, 28, generator=g) > 0.8).float()
    x_hat = (x + 0.3 * torch.randn(n, 1, 28, 28, generator=g)).clamp(0, 1)
    return x_hat, x


def test_psnr_and_mse_match_scikit_image():
    x_hat, x = pairs()
    for i in range(x.shape[0]):
        a, b = x[i].numpy().astype(np.float64), x_hat[i].numpy().astype(np.float64)
        assert mse_per_image(x_hat, x)[i].item() == pytest.approx(mean_squared_error(a, b), rel=1e-5)
        assert psnr_per_image(x_hat, x)[i].item() == pytest.approx(
            peak_signal_noise_ratio(a, b, data_range=1.0), rel=1e-5
        )


def test_psnr_of_perfect_reconstruction_is_capped_and_mse_clips():
    x_hat, x = pairs()
    assert psnr_per_image(x, x).tolist() == pytest.approx([100.0] * x.shape[0])
    assert mse_per_image(x + 5.0, x).max() <= 1.0  # inputs clipped to [0, 1] first


def test_l2_is_euclidean_distance_per_datapoint():
    x_hat, x = pairs()
    expected = np.linalg.norm((x_hat - x).numpy().reshape(x.shape[0], -1), axis=1)
    np.testing.assert_allclose(l2_distance(x_hat, x).numpy(), expected, rtol=1e-5)


def test_code_statistics():
    v = 8
    indices = torch.tensor([[0, 1], [0, 1], [2, 1], [0, 3]])  # codes used: 0, 1, 2, 3
    assert codebook_utilization(indices, v) == 4 / 8
    counts = np.array([3, 3, 1, 1]) / 8
    assert code_perplexity(indices, v) == pytest.approx(math.exp(-(counts * np.log(counts)).sum()))
    pos0 = np.array([3, 1]) / 4  # position 0: code 0 x3, code 2 x1
    pos1 = np.array([3, 1]) / 4  # position 1: code 1 x3, code 3 x1
    expected = (-(pos0 * np.log(pos0)).sum() - (pos1 * np.log(pos1)).sum()) / 2
    assert position_code_entropy(indices, v) == pytest.approx(expected)
    assert code_perplexity(torch.zeros(5, 3, dtype=torch.long), v) == pytest.approx(1.0)
    uniform = torch.arange(v).repeat(10, 1)  # every code equally often
    assert code_perplexity(uniform, v) == pytest.approx(v)


def test_evaluate_equals_a_manual_loop_over_reconstruct():
    from daps import get_preset, parse_overrides
    from daps.methods import build_method

    cfg = parse_overrides(get_preset("mnist"), ["encoder.width=16", "encoder.num_heads=2", "encoder.vocab_size=16"])
    torch.manual_seed(0)
    model = build_method(cfg, (1, 28, 28))
    _, x = pairs(n=10)
    got = evaluate(model, TensorEvalSet(x, 4), generator=torch.Generator().manual_seed(0))  # batches of 4, 4, 2

    model.eval()
    g = torch.Generator().manual_seed(0)
    recs = [model.reconstruct(x[i : i + 4], g) for i in range(0, 10, 4)]
    log_p = torch.cat([r.log_p for r in recs])
    kl = torch.cat([r.kl for r in recs])
    x_hat = torch.cat([r.x_hat for r in recs])
    indices = torch.cat([r.indices for r in recs])
    expected = {
        "log_p": log_p.mean(),
        "kl": kl.mean(),
        "elbo": (log_p - kl).mean(),
        "beta_elbo": (log_p - 0.01 * kl).mean(),
        "l2": (x_hat - x).flatten(1).norm(dim=1).mean(),
        "psnr": (-10 * torch.log10((x_hat - x).square().flatten(1).mean(1))).mean(),
        "token_entropy": torch.cat([r.token_entropy for r in recs]).mean(),
    }
    assert got["num_images"] == 10
    for key, value in expected.items():
        assert got[key] == pytest.approx(value.item(), rel=1e-5, abs=1e-5), key
    assert got["codebook_utilization"] == pytest.approx(indices.unique().numel() / 16)
    assert evaluate(model, TensorEvalSet(x, 4), generator=torch.Generator().manual_seed(0)) == got  # reproducible


def test_position_code_entropy_averages_positions_that_differ():
    indices = torch.tensor([[0, 0], [0, 1], [0, 2], [0, 3]])  # position 0: entropy 0; position 1: log 4
    assert position_code_entropy(indices, 4) == pytest.approx(math.log(4) / 2)
    assert position_code_entropy(indices.flip(1), 4) == pytest.approx(math.log(4) / 2)
