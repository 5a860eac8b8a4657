"""Known answers for behaviour that a mutation sweep of the data, checkpoint, comparison and evaluation code
(daps/data/, daps/checkpoint.py, daps/compare.py, daps/metrics/evaluate.py, daps/hub.py) found no test guarding.
Each test names the slip it fails on; the references are closed forms, hand-worked cases and round trips."""

from __future__ import annotations

import io
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import daps.data.paths as paths_mod


@pytest.fixture
def isolated(monkeypatch, tmp_path) -> Path:
    """No $DAPS_DATA_DIR, a private cache folder, no network."""
    monkeypatch.delenv("DAPS_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg_cache"))

    def no_network(url, timeout):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(paths_mod, "urlopen", no_network)
    return tmp_path / "xdg_cache"


# --------------------------------------------------------------------------- crops and batches


def test_the_aspect_ratio_of_a_random_resized_crop_is_log_uniform():
    """The aspect ratio w/h is drawn log-uniformly on (3/4, 4/3) (torchvision's RandomResizedCrop), so a box is as
    often wider as taller: log(w/h) is uniform on (-log 4/3, log 4/3), half of it below 0 and a quarter in each
    quarter of that range. Fails on: the ratio drawn uniformly on (3/4, 4/3) (43% of the boxes taller than wide)."""
    from daps.data.transforms import sample_crop_box

    g = torch.Generator().manual_seed(0)
    boxes = [sample_crop_box(4000, 4000, g, scale=(0.25, 0.25)) for _ in range(3000)]
    log_aspect = np.log([w / h for _, _, w, h in boxes])
    edge = math.log(4 / 3)
    assert np.all(np.abs(log_aspect) <= edge + 1e-3)
    quarters = np.histogram(log_aspect, bins=4, range=(-edge - 1e-3, edge + 1e-3))[0] / len(boxes)
    assert np.allclose(quarters, 0.25, atol=0.03), quarters  # 3000 draws: standard error 0.008
    assert abs(np.mean(log_aspect < 0) - 0.5) < 0.03


def test_in_memory_training_batches_draw_every_example_uniformly():
    """TrainBatches draws indices uniformly from all N examples (with replacement). With N = 3 and 3000 draws each
    example is drawn about 1000 times. Fails on: indices drawn from range(N - 1), so the last example (and with
    N = 2, half the data) is never trained on."""
    from daps.data import TrainBatches

    source = torch.arange(3, dtype=torch.float32).view(3, 1, 1, 1)
    batches = TrainBatches(source, 300, torch.Generator().manual_seed(0), torch.device("cpu"))
    drawn = torch.cat([next(batches).flatten() for _ in range(10)])
    assert drawn.shape == (3000,)
    counts = torch.bincount(drawn.long(), minlength=3)
    assert counts.sum() == 3000 and counts.shape == (3,)
    assert torch.all((counts - 1000).abs() < 120), counts  # binomial standard deviation 26


# --------------------------------------------------------------------------- the ImageNet sample cache


def _bmp(size: int, color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="BMP")  # Pillow reads it whatever the name says
    return buf.getvalue()


def _sample_tar(path: Path, middle: tuple[int, int, int]) -> None:
    """A 2.4 MB ImageNet-sample tar: a large first and last image (1.2 MB each) and a small one between them."""
    members = [("000_n01000001_a.jpg", _bmp(640, (10, 10, 10))), ("001_n01000002_b.jpg", _bmp(8, middle)),
               ("002_n01000003_c.jpg", _bmp(640, (30, 30, 30))),
               ("labels.tsv", b"0\tn01000001\ta\n1\tn01000002\tb\n2\tn01000003\tc\n")]
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(f"imagenet_1k_sample_256/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_a_sample_tar_that_differs_only_in_its_middle_is_unpacked_anew(isolated, tmp_path):
    """``_sample_root`` caches the unpacked ImageNet sample under a key of the tar's content: a replaced tar (a fresh
    download of a damaged copy) is unpacked anew. A tar's member headers carry no checksum of the data, so a key of
    the size and the first and last MiB (as for .npz files, whose zip directory at the end holds every member's
    CRC) gave a copy damaged in the middle and its fresh download the same key, and the damaged images went on
    being read. Here the middle image is red in the first tar and blue in its replacement, of the same size: the
    replacement's images must be read (blue)."""
    from daps.data import _sample_root

    tar = tmp_path / "data" / "imagenet_1k_sample_256_q90.tar"
    tar.parent.mkdir()
    _sample_tar(tar, (200, 0, 0))
    first = _sample_root(tmp_path / "data")
    assert np.asarray(Image.open(next((first / "n01000002").iterdir())))[0, 0].tolist() == [200, 0, 0]
    _sample_tar(tar, (0, 0, 200))
    again = _sample_root(tmp_path / "data")
    assert np.asarray(Image.open(next((again / "n01000002").iterdir())))[0, 0].tolist() == [0, 0, 200]


# --------------------------------------------------------------------------- compare


def _compare_run(out_dir: Path, steps: int):
    from daps import get_preset, parse_overrides
    from daps.compare import Run

    cfg = parse_overrides(get_preset("mnist", "daps"), [f"train.out_dir={out_dir}", f"train.steps={steps}"])
    return Run("daps", 0, cfg)


@pytest.mark.parametrize("saved_step, action", [(50, "resume"), (100, "reuse")])
def test_compare_reuses_only_a_run_that_reached_its_budget(tmp_path, saved_step, action):
    """A run folder with this comparison's config is reused only when its summary is of the last step; one stopped
    early (``train.stop_after`` is not compared) has a summary of an earlier step and is resumed. Fails on: any
    readable summary counting as finished (the table would show a half-trained run)."""
    import json

    from daps.checkpoint import write_config
    from daps.compare import check_runs
    from daps.runfolder import write_marker

    run = _compare_run(tmp_path / "daps" / "seed0", 100)
    run.out_dir.mkdir(parents=True)
    write_marker(run.out_dir, "train")
    write_config(run.out_dir / "config.json", run.cfg)
    (run.out_dir / "summary.json").write_text(json.dumps({"step": saved_step, "log_p": -100.0}))
    check_runs([run])
    assert run.action == action


def test_compare_speed_is_the_median_not_the_mean(tmp_path):
    """Training speed is the median over the logged windows after the first: windows of 1, 2 and 9 steps/s (one
    fast outlier) give 2, where their mean is 4. Fails on: the mean (equal to the median for evenly spread
    windows)."""
    import json

    from daps.compare import _steps_per_s

    rows = [{"split": "train", "step": s, "steps_per_s": v} for s, v in ((1, 100.0), (2, 1.0), (3, 9.0), (4, 2.0))]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert _steps_per_s(_compare_run(tmp_path, 100)) == 2.0


# --------------------------------------------------------------------------- the validation subset


def test_an_in_memory_validation_subset_is_spread_over_the_split_in_its_order(tmp_path):
    """``eval_set(..., max_images=8)`` of an in-memory split of 40 images is a fixed random subset kept in the
    split's order (splits may be sorted by class, so the first 8 would be a few classes only): 8 distinct images in
    increasing order, not all among the first 8, the same ones at every call; batches of 3 end with a partial one.
    Fails on: the first ``max_images`` images."""
    from daps.config import DataConfig
    from daps.data import eval_set

    path = tmp_path / "images.npz"
    test = np.repeat(np.arange(40, dtype=np.uint8), 144).reshape(40, 12, 12)  # image i: every pixel is i
    np.savez(path, train=test[:4], test=test)
    data = DataConfig(name="arrays", data_dir=str(path), image_shape=(1, 12, 12))

    def shown(max_images: int) -> list[list[int]]:
        val = eval_set(data, "test", max_images, 3, torch.device("cpu"))
        return [b[:, 0, 0, 0].tolist() for b in val.batches()]

    batches = shown(8)
    picked = [i for b in batches for i in b]
    assert [len(b) for b in batches] == [3, 3, 2]
    assert picked == sorted(set(picked)) and len(picked) == 8 and max(picked) < 40
    assert max(picked) >= 8  # spread over the split, not its first 8 images
    assert shown(8) == batches  # fixed: the same images at every evaluation
    assert [i for b in shown(0) for i in b] == list(range(40)) == [i for b in shown(100) for i in b]
