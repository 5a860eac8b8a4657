"""End to end on natural images: ``daps train`` / ``eval`` / ``fid-stats`` on the lossy CIFAR-10 copy and the
ImageNet sample from ``$DAPS_DATA_DIR`` (skipped when it is unset), with a tiny architecture."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from daps import get_preset, parse_overrides
from daps.checkpoint import load_model
from daps.cli import main

DATA = os.environ.get("DAPS_DATA_DIR", "")
pytestmark = [
    pytest.mark.skipif(
        not DATA, reason="needs DAPS_DATA_DIR (cifar10_jpeg_fallback, imagenet_sample_256, fid_inception)"
    ),
    pytest.mark.usefixtures("single_thread"),
]

TINY = [
    "encoder.num_tokens=16", "encoder.vocab_size=16", "encoder.width=16", "encoder.num_heads=2",
    "decoder.embed_dim=8", "decoder.resnet_width=8", "decoder.resnet_blocks=1", "daps.num_samples=2",
    "train.batch_size=8", "train.log_every=1", "train.eval_every=2", "train.ckpt_every=2", "train.progress=false",
]


def run_cli(*argv: str) -> int:
    return main(list(argv))


@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cifar") / "run"
    code = run_cli(
        "train", "--preset", "cifar10", "data.name=cifar10-jpeg", *TINY, "train.steps=3", "train.eval_examples=16",
        "train.eval_batch_size=8", "train.fid=val-pairs", f"train.out_dir={out}",
    )
    assert code == 0
    return out


def test_cifar_run_reports_every_metric_and_names_the_lossy_data(cifar_run):
    summary = json.loads((cifar_run / "summary.json").read_text())
    assert summary["dataset"] == "cifar10-jpeg" and "not the original pixels" in summary["note"]
    assert summary["num_images"] == 16
    assert summary["fid_protocol"] == "val-pairs" and summary["fid_num_images"] == 16 and summary["fid"] > 0
    assert -1 <= summary["ssim"] <= 1 and 0 < summary["mse"] < 1 and math.isfinite(summary["psnr"])
    # The Gaussian density of 3,072 standardized values: far from MNIST's Bernoulli scale, finite.
    assert math.isfinite(summary["log_p"]) and summary["kl"] >= 0
    for name in ("reconstructions.png", "curves.png"):
        assert (cifar_run / name).stat().st_size > 1000


def test_eval_reports_fid_under_the_protocol_asked_for(cifar_run, capsys, tmp_path, monkeypatch):
    assert run_cli("eval", str(cifar_run), "--json", "--max-images", "8", "--batch-size", "4") == 0
    plain = json.loads(capsys.readouterr().out)
    assert "fid" not in plain and plain["num_images"] == 8 and plain["dataset"] == "cifar10-jpeg"

    assert (
        run_cli("eval", str(cifar_run), "--json", "--max-images", "8", "--batch-size", "4", "--fid", "val-pairs") == 0
    )
    paired = json.loads(capsys.readouterr().out)
    assert paired["fid_protocol"] == "val-pairs" and paired["fid_num_images"] == 8
    assert paired["log_p"] == pytest.approx(plain["log_p"])  # the same images and codes

    stats = tmp_path / "ref.npz"
    assert run_cli("fid-stats", "cifar10-jpeg", "--max-images", "12", "--out", str(stats)) == 0
    capsys.readouterr()
    with np.load(stats) as f:
        assert f["mu"].shape == (2048,) and f["sigma"].shape == (2048, 2048) and int(f["num_images"]) == 12
        meta = json.loads(str(f["meta"]))
    assert meta["dataset"] == "cifar10-jpeg" and meta["split"] == "test" and meta["num_images"] == 12
    assert run_cli("fid-stats", "cifar10-jpeg", "--max-images", "12", "--out", str(stats)) == 2  # no silent overwrite
    assert "exists" in capsys.readouterr().err

    import daps.metrics.fid as fid_mod

    reads = []
    monkeypatch.setattr(fid_mod, "load_fid_stats", lambda path, load=fid_mod.load_fid_stats: reads.append(path)
                        or load(path))
    assert (
        run_cli("eval", str(cifar_run), "--json", "--max-images", "8", "--fid", "reference", "--fid-ref", str(stats))
        == 0
    )
    ref = json.loads(capsys.readouterr().out)
    assert ref["fid_protocol"] == "reference:ref.npz" and ref["fid"] > 0
    assert len(reads) == 1  # read once: checked before the model loads, then used


def test_a_prior_over_cifar_codes_is_scored_with_inception_fid_end_to_end(cifar_run, capsys, tmp_path, monkeypatch):
    """``prior eval --inception-fid`` on an RGB tokenizer, the whole way: export codes, train a prior, sample n codes,
    decode them and score them with the real FID Inception network against n test images, beside the floor of n
    training images. The classifier (``scripts/train_classifier.py``'s file, not made here) is an untrained
    network: only its scores are meaningless. The control: samples of a 3-step tokenizer are farther from the test
    images than real training images are (they are the same kind of blur as its reconstructions)."""
    import daps.metrics.classifier
    from daps.metrics.classifier import ImageClassifier

    codes, prior = tmp_path / "codes.safetensors", tmp_path / "prior"
    assert run_cli("export-codes", str(cifar_run), "--max-inputs", "40", "--out", str(codes)) == 0
    assert run_cli("prior", "train", str(codes), "--out", str(prior), "steps=2", "width=16", "num_heads=2",
                   "progress=false") == 0
    torch.manual_seed(0)
    classifier = ImageClassifier((3, 32, 32)).eval()
    monkeypatch.setattr(daps.metrics.classifier, "classifier_for", lambda dataset: classifier)
    capsys.readouterr()
    weights = str(Path(DATA) / "fid_inception")
    assert run_cli("prior", "eval", str(prior), "--n", "10", "--inception-fid", "10", "--fid-weights", weights,
                   "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["inception_fid_protocol"].startswith("Inception pool3 FID, 10 samples vs 10 test images")
    assert 0 < result["inception_fid_real"] < result["inception_fid"] < math.inf
    assert result["num_codes"] == 2 and result["kind"] == "ar"  # 5 % of the 40 inputs held out


def test_fid_is_skipped_with_a_message_when_no_weights_are_found(cifar_run, capsys, caplog, tmp_path, monkeypatch):
    monkeypatch.setenv("DAPS_DATA_DIR", str(tmp_path))  # data given explicitly below; no weights anywhere
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    data_dir = str(Path(DATA) / "cifar10_jpeg_fallback")
    code = run_cli("eval", str(cifar_run), "--json", "--max-images", "4", "--fid", "val-pairs", "--data-dir", data_dir)
    assert code == 0
    captured = capsys.readouterr()
    assert "fid" not in json.loads(captured.out)
    assert "FID skipped" in caplog.text and "fid_inception" in caplog.text
    code = run_cli(
        "eval", str(cifar_run), "--max-images", "4", "--fid", "val-pairs", "--fid-weights", str(tmp_path / "none")
    )
    assert code == 2  # a path that was given but does not exist is an error


def test_fid_stats_refuses_grayscale_data(tmp_path, capsys):
    assert run_cli("fid-stats", "mnist5k", "--out", str(tmp_path / "s.npz")) == 2
    assert "RGB" in capsys.readouterr().err


def test_fid_settings_are_checked_before_training(tmp_path, capsys):
    out = tmp_path / "run"
    code = run_cli(
        "train", "--preset", "cifar10", "data.name=cifar10-jpeg", *TINY, "train.steps=2", "train.fid=reference",
        f"train.fid_reference={tmp_path / 'missing.npz'}", f"train.out_dir={out}",
    )
    assert code == 2 and "missing.npz" in capsys.readouterr().err
    assert not out.exists()  # nothing trained, nothing written
    assert run_cli("train", "--preset", "mnist", "train.fid=val-pairs", f"train.out_dir={out}") == 2
    assert "RGB" in capsys.readouterr().err


def _train_sample(out: Path, *extra: str) -> None:
    cfg = parse_overrides(
        get_preset("imagenet256"),
        [*TINY, "data.name=imagenet256-sample", "data.image_shape=3,32,32", "data.num_workers=0",
         "train.steps=4", "train.eval_examples=8", "train.eval_batch_size=8", f"train.out_dir={out}", *extra],
    )
    from daps.train import train

    train(cfg, resume=(out / "checkpoints").exists())


def test_streamed_folder_data_resume_exactly(tmp_path):
    """A run on the streamed ImageNet sample, stopped after 2 steps and resumed, ends with the weights of an
    uninterrupted run: the loader restarts at the batch where it stopped, with the same crops and flips."""
    _train_sample(tmp_path / "whole")
    _train_sample(tmp_path / "split", "train.stop_after=2")
    _train_sample(tmp_path / "split")
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "split")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    summary = json.loads((tmp_path / "whole" / "summary.json").read_text())
    assert summary["dataset"] == "imagenet256-sample" and "same images" in summary["note"]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in load_model(run).state_dict().items()}


def test_codes_export_from_a_streamed_folder_dataset(tmp_path):
    """``daps export-codes`` on the ImageNet sample (streamed from class folders): the classes are the folder
    names, each label the class of its image, and the codes the encoder's draws on the validation crops."""
    from daps.codes import load_codes
    from daps.data import dataset_spec, folder_dataset
    from daps.data.transforms import fixed_subset

    _train_sample(tmp_path / "run")
    out = tmp_path / "codes.safetensors"
    argv = ["export-codes", str(tmp_path / "run"), "--split", "test", "--max-inputs", "24", "--batch-size", "10"]
    assert run_cli(*argv, "--out", str(out)) == 0
    codes = load_codes(out)
    images = folder_dataset("imagenet256-sample", "test", (3, 32, 32), None, train=False)
    subset = fixed_subset(len(images), 24)
    assert codes.meta["class_names"] == list(images.classes) and codes.meta["skipped_files"] == 0
    assert codes.meta["dataset"] == "imagenet256-sample" and codes.codes.shape == (24, 1, 16)
    assert torch.equal(codes.labels, torch.as_tensor(images.labels[subset.numpy()]))
    assert len(set(codes.labels.tolist())) > 1
    x = dataset_spec("imagenet256-sample").standardize(torch.stack([images[i][0] for i in subset.tolist()]))
    model, generator = load_model(tmp_path / "run"), torch.Generator().manual_seed(0)
    expected = torch.cat([model.encode(x[i : i + 10], generator) for i in range(0, 24, 10)])  # as batched
    assert torch.equal(codes.codes[:, 0], expected)
