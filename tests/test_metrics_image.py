"""Per-image reconstruction metrics (original: utils/dm_pix_metrics.py) against scikit-image: MSE, PSNR and SSIM.

Correspondence used for SSIM: ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=s,
use_sample_covariance=False)`` filters with a Gaussian truncated at ``3.5 * s`` (radius ``int(3.5 s + 0.5)``,
so 11 taps for ``s = 1.5``), filters with reflect padding, then crops ``(win - 1) // 2`` pixels from every border
before averaging -- exactly the positions that "valid" filtering keeps, so the averaged maps coincide.
With ``channel_axis`` it averages per-channel means, which equals the mean over channels and positions.
Remaining differences: dm_pix (and ``ssim_per_image``) clamps the variances at ``eps_f32^2`` (~1.4e-14) and
clips the covariance to ``+-sqrt(var_x var_y)``; scikit-image does neither. The covariance bound is Cauchy-Schwarz
for the weighted moments, so the clip only trims round-off; the variance clamp moves SSIM by at most ~1e-11 in
perfectly flat windows. The result is cast to float32, so agreement is ~1e-7; the tests use ``SSIM_TOL``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

from daps.metrics.image import mse_per_image, psnr_per_image, ssim_per_image

SSIM_TOL = 1e-6  # measured: <= ~3e-8 (float32 output rounding); float64 internals agree to ~1e-11


def _hwc(t: torch.Tensor) -> np.ndarray:
    """(C, H, W) torch -> (H, W, C) float64 numpy."""
    return t.detach().double().permute(1, 2, 0).numpy()


def _sk_ssim(x_hat: torch.Tensor, x: torch.Tensor, data_range: float = 1.0, sigma: float = 1.5, **kw) -> np.ndarray:
    return np.array(
        [
            structural_similarity(
                _hwc(a),
                _hwc(b),
                data_range=data_range,
                channel_axis=-1,
                gaussian_weights=True,
                sigma=sigma,
                use_sample_covariance=False,
                **kw,
            )
            for a, b in zip(x_hat, x)
        ]
    )


def _assert_ssim_matches(x_hat: torch.Tensor, x: torch.Tensor, tol: float = SSIM_TOL) -> float:
    got = ssim_per_image(x_hat, x)
    assert got.shape == (x.shape[0],) and got.dtype == torch.float32
    diff = np.abs(got.double().numpy() - _sk_ssim(x_hat, x)).max()
    assert diff <= tol, diff
    return float(diff)


def _blur(x: torch.Tensor, taps: int = 5) -> torch.Tensor:
    """Separable box blur with replicate padding (an independent smoothing, not the SSIM window)."""
    c = x.shape[1]
    k = torch.full((c, 1, 1, taps), 1.0 / taps, dtype=x.dtype)
    p = taps // 2
    y = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (p, p, 0, 0), mode="replicate"), k, groups=c)
    return torch.nn.functional.conv2d(
        torch.nn.functional.pad(y, (0, 0, p, p), mode="replicate"), k.transpose(2, 3), groups=c
    )


def _structured(n: int, c: int, h: int, w: int, gen: torch.Generator) -> torch.Tensor:
    """Smooth gradients / sinusoids with a little noise, in [0, 1]."""
    yy = torch.linspace(0, 1, h).view(1, 1, h, 1)
    xx = torch.linspace(0, 1, w).view(1, 1, 1, w)
    phase = torch.rand(n, c, 1, 1, generator=gen) * 6.28
    freq = 1.0 + 4.0 * torch.rand(n, c, 1, 1, generator=gen)
    img = 0.5 + 0.3 * torch.sin(freq * (xx + 0.7 * yy) * 3.14 + phase) + 0.2 * (xx - yy)
    return (img + 0.03 * torch.randn(n, c, h, w, generator=gen)).clamp(0, 1)


@pytest.fixture(scope="module")
def cifar_images() -> torch.Tensor:
    """A few real CIFAR-10 test images (JPEG fallback), (16, 3, 32, 32) on [0, 1]."""
    root = os.environ.get("DAPS_DATA_DIR")
    if not root:
        pytest.skip("DAPS_DATA_DIR is not set")
    from PIL import Image

    with np.load(Path(root) / "cifar10_jpeg_fallback" / "cifar10_jpeg_q75_test.npz") as data:
        jpeg, offsets = data["jpeg_bytes"], data["offsets"]
    idx = range(0, 10_000, 625)  # 16 images across all classes
    imgs = [
        np.asarray(Image.open(io.BytesIO(jpeg[offsets[i] : offsets[i + 1]].tobytes())).convert("RGB")) for i in idx
    ]
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255.0


# ----------------------------------------------------------------------------------------------- SSIM vs skimage


def test_ssim_matches_skimage_random_images():
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(6, 3, 40, 36, generator=gen)
    b = torch.rand(6, 3, 40, 36, generator=gen)
    _assert_ssim_matches(a, b)
    _assert_ssim_matches(a, (a + 0.1 * torch.randn(a.shape, generator=gen)).clamp(0, 1))
    g = torch.rand(4, 1, 28, 28, generator=gen)  # grayscale, MNIST-sized
    _assert_ssim_matches(g, (g + 0.2 * torch.randn(g.shape, generator=gen)).clamp(0, 1))
    _assert_ssim_matches(a[:, :, :11, :11], b[:, :, :11, :11])  # exactly the window: a 1x1 valid map


def test_ssim_matches_skimage_structured_images():
    gen = torch.Generator().manual_seed(1)
    x = _structured(6, 3, 32, 32, gen)
    _assert_ssim_matches(_blur(x), x)
    _assert_ssim_matches(_blur(x, 3), _blur(x, 7))
    _assert_ssim_matches((x + 0.05 * torch.randn(x.shape, generator=gen)).clamp(0, 1), x)
    _assert_ssim_matches(1.0 - x, x)  # anti-correlated: negative SSIM
    # Flat and piecewise-constant images: zero variances (where the eps^2 clamp acts) and saturated pixels.
    flat = torch.full((2, 3, 16, 16), 0.3)
    _assert_ssim_matches(flat, torch.full_like(flat, 0.7))
    blocks = torch.randint(0, 4, (3, 3, 3, 3), generator=gen).float().div(3).repeat_interleave(12, 2)
    blocks = blocks.repeat_interleave(12, 3)  # (3, 3, 36, 36) of 12x12 constant blocks
    _assert_ssim_matches(blocks, torch.roll(blocks, 3, dims=2))
    _assert_ssim_matches(blocks, blocks.flip(0) * 0.9 + 0.05)


def test_ssim_matches_skimage_real_images(cifar_images):
    x = cifar_images
    gen = torch.Generator().manual_seed(2)
    for sigma in (0.02, 0.1):
        _assert_ssim_matches((x + sigma * torch.randn(x.shape, generator=gen)).clamp(0, 1), x)
    _assert_ssim_matches(_blur(x, 3), x)
    _assert_ssim_matches(x.flip(0), x)  # unrelated real images


def test_ssim_non_default_parameters_match_skimage():
    gen = torch.Generator().manual_seed(3)
    x = _structured(3, 3, 24, 30, gen)
    y = (x + 0.1 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    # sigma 1.0 -> skimage radius int(3.5 + 0.5) = 4, i.e. a 9-tap window.
    got = ssim_per_image(y, x, window=9, sigma=1.0, k1=0.02, k2=0.05)
    ref = _sk_ssim(y, x, sigma=1.0, K1=0.02, K2=0.05)
    assert np.abs(got.double().numpy() - ref).max() <= SSIM_TOL
    # A 0..255 scale with max_val = data_range = 255 gives the same numbers as the [0, 1] scale.
    got255 = ssim_per_image(255 * y, 255 * x, max_val=255.0)
    assert np.abs(got255.double().numpy() - _sk_ssim(255 * y, 255 * x, data_range=255.0)).max() <= SSIM_TOL
    assert torch.allclose(got255, ssim_per_image(y, x), atol=1e-6)


# ----------------------------------------------------------------------------------------------- SSIM properties


def test_ssim_identity_symmetry_range_and_noise_monotonicity():
    gen = torch.Generator().manual_seed(4)
    x = _structured(5, 3, 32, 32, gen)
    assert torch.allclose(ssim_per_image(x, x), torch.ones(5), atol=1e-6)
    y = (x + 0.1 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    assert torch.allclose(ssim_per_image(y, x), ssim_per_image(x, y), atol=1e-7)
    noise = torch.randn(x.shape, generator=gen)
    scores = torch.stack([ssim_per_image((x + s * noise).clamp(0, 1), x) for s in (0.0, 0.02, 0.05, 0.1, 0.3)])
    assert (scores[1:] < scores[:-1]).all(), scores
    for a, b in [(torch.rand(x.shape, generator=gen), x), (1.0 - x, x), (torch.zeros_like(x), torch.ones_like(x))]:
        s = ssim_per_image(a, b)
        assert ((s >= -1.0) & (s <= 1.0)).all(), s
    assert (ssim_per_image(1.0 - x, x) < 0).all()


def test_ssim_shapes_batching_and_clipping():
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(7, 3, 20, 17, generator=gen)
    y = torch.rand(7, 3, 20, 17, generator=gen)
    batch = ssim_per_image(y, x)
    assert batch.shape == (7,) and batch.dtype == torch.float32
    single = torch.cat([ssim_per_image(y[i : i + 1], x[i : i + 1]) for i in range(7)])
    assert torch.allclose(batch, single, atol=1e-7)
    # Inputs are clipped to [0, max_val] first; double-precision inputs are accepted too.
    assert torch.allclose(ssim_per_image(3 * y - 1, x), ssim_per_image((3 * y - 1).clamp(0, 1), x))
    assert torch.allclose(ssim_per_image(y.double(), x.double()), batch, atol=1e-7)


@pytest.mark.parametrize("shape", [(2, 3, 10, 32), (2, 3, 32, 10), (1, 1, 5, 5)])
def test_ssim_rejects_images_smaller_than_the_window(shape):
    x = torch.rand(shape)
    with pytest.raises(ValueError, match="window"):
        ssim_per_image(x, x)


def test_ssim_rejects_bad_shapes():
    with pytest.raises(ValueError, match="N, C, H, W"):
        ssim_per_image(torch.rand(3, 32, 32), torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match="of the same shape"):
        ssim_per_image(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 31))


def test_pixel_metrics_refuse_what_they_would_score_as_perfect():
    """uint8 pixels clipped to [0, 1] read as a perfect reconstruction; shapes that broadcast give N wrong values."""
    from daps.metrics import mse_per_image, psnr_per_image

    a = torch.full((1, 1, 12, 12), 200, dtype=torch.uint8)
    for metric in (mse_per_image, psnr_per_image, ssim_per_image):
        with pytest.raises(ValueError, match="floating point"):
            metric(a, a // 2)
    with pytest.raises(ValueError, match="same shape"):
        psnr_per_image(torch.zeros(1, 4), torch.ones(3, 4))


@pytest.mark.parametrize("scale", ["0-255", "[-1, 1]"])
def test_pixel_metrics_refuse_reference_images_off_the_unit_scale(scale):
    """Float images on the 0-255 or [-1, 1] scale were clipped to [0, 1] and scored without a word (PSNR 13.8 dB
    for a pair 20.5 dB apart). Fails on: the metrics without the range check of the reference ``x``."""
    from daps.metrics import mse_per_image, psnr_per_image

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 16, generator=gen)
    y = (x + 0.1 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    a, b = (255 * y, 255 * x) if scale == "0-255" else (2 * y - 1, 2 * x - 1)
    for metric in (mse_per_image, psnr_per_image, ssim_per_image):
        with pytest.raises(ValueError, match=r"reference images x must lie in \[0, 1\], got values from"):
            metric(a, b)
        metric(2 * y - 0.5, x)  # a decoder mean past [0, 1] is still clipped, as documented
    assert torch.allclose(ssim_per_image(255 * y, 255 * x, max_val=255.0), ssim_per_image(y, x), atol=1e-6)


def test_pixel_metrics_score_references_a_round_off_outside_the_unit_scale():
    """ImageNet pixels standardized and mapped back to [0, 1] by hand in float32 (``x * (std / 255) + mean / 255``)
    come out as low as -3e-8: an image on [0, 1], scored as before (clipped), not refused. A reference more than
    half an 8-bit level outside is still refused. Fails on: the range check without a round-off slack."""
    from daps.data import dataset_spec

    s = dataset_spec("imagenet256").standardize
    raw = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(2, 3, 16, 16).contiguous()
    std, mean = torch.tensor(s.std).view(3, 1, 1), torch.tensor(s.mean).view(3, 1, 1)
    x = s(raw) * (std / 255) + mean / 255  # (2, 3, 16, 16), the reference by hand
    assert float(x.min()) < 0 or float(x.max()) > 1  # the round-off this test is about
    x_hat = (x + 0.05).flip(-1)
    for metric in (mse_per_image, psnr_per_image, ssim_per_image):
        torch.testing.assert_close(metric(x_hat, x), metric(x_hat, x.clamp(0, 1)), rtol=0, atol=1e-6)
        for off in (x - 0.003, x + 0.003):  # more than half a level (1/510) outside
            with pytest.raises(ValueError, match=r"reference images x must lie in \[0, 1\]"):
                metric(x_hat, off)


def test_code_statistics_refuse_codes_out_of_range():
    from daps.metrics import code_perplexity, codebook_utilization

    with pytest.raises(ValueError, match=r"lie in \[0, 4\)"):
        codebook_utilization(torch.tensor([[0, 1], [7, 9]]), 4)
    with pytest.raises(ValueError, match="integers"):
        code_perplexity(torch.zeros(2, 2), 4)
    with pytest.raises(ValueError, match="vocab_size"):
        codebook_utilization(torch.zeros(2, 2, dtype=torch.long), 0)
    assert codebook_utilization(torch.tensor([[0, 1], [1, 3]]), 4) == 0.75


# ----------------------------------------------------------------------------------------------- PSNR / MSE


def _assert_mse_psnr_match(x_hat: torch.Tensor, x: torch.Tensor) -> tuple[float, float]:
    mse, psnr = mse_per_image(x_hat, x), psnr_per_image(x_hat, x)
    assert mse.shape == psnr.shape == (x.shape[0],)
    assert mse.dtype == psnr.dtype == torch.float32
    ref_mse = np.array([mean_squared_error(_hwc(b), _hwc(a)) for a, b in zip(x_hat, x)])
    ref_psnr = np.array([peak_signal_noise_ratio(_hwc(b), _hwc(a), data_range=1.0) for a, b in zip(x_hat, x)])
    rel_mse = np.abs(mse.double().numpy() / ref_mse - 1).max()
    abs_psnr = np.abs(psnr.double().numpy() - ref_psnr).max()
    assert rel_mse <= 1e-5 and abs_psnr <= 1e-4, (rel_mse, abs_psnr)
    # Batched equals one-at-a-time.
    assert torch.equal(torch.cat([psnr_per_image(x_hat[i : i + 1], x[i : i + 1]) for i in range(len(x))]), psnr)
    return float(rel_mse), float(abs_psnr)


def test_psnr_mse_match_skimage_random_images():
    gen = torch.Generator().manual_seed(6)
    x = torch.rand(6, 3, 24, 20, generator=gen)
    _assert_mse_psnr_match(torch.rand(x.shape, generator=gen), x)
    for s in (0.001, 0.05):
        _assert_mse_psnr_match((x + s * torch.randn(x.shape, generator=gen)).clamp(0, 1), x)


def test_psnr_mse_match_skimage_real_images(cifar_images):
    x = cifar_images
    gen = torch.Generator().manual_seed(7)
    _assert_mse_psnr_match((x + 0.03 * torch.randn(x.shape, generator=gen)).clamp(0, 1), x)
    _assert_mse_psnr_match(_blur(x, 3), x)
