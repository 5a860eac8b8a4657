"""The ``sequences`` dataset: one's own multichannel time series from an ``.npz`` of named clips, cut into windows,
standardized with the training clips' statistics, trained on, evaluated and encoded, and checked against the run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from daps.cli import main
from daps.config import DataConfig
from daps.data import dataset_spec, labelled_split
from daps.data.sequences import SequenceMetrics, sequence_data
from daps.errors import UserError

pytestmark = pytest.mark.usefixtures("offline", "single_thread")

F = 5
TINY = [  # a small motion tokenizer (the lafan1-h1 preset's architecture, narrowed)
    "data.name=sequences", f"data.image_shape=1,16,{F}", "encoder.num_tokens=4", "encoder.vocab_size=32",
    "encoder.width=32", "decoder.embed_dim=32", "train.batch_size=16", "train.steps=4", "train.log_every=2",
    "train.eval_every=2", "train.ckpt_every=2", "train.eval_examples=40", "train.eval_batch_size=20",
    "train.progress=false", "train.logger=none",
]
TRAIN = ["train", "--preset", "lafan1-h1", *TINY]


def _clip(frames: int, seed: int) -> np.ndarray:
    """Sinusoids of a few periods per window, different per feature, with a little noise (learnable structure)."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames)[:, None]
    return (np.sin(2 * np.pi * t * (1 + np.arange(F)) / 24 + rng.uniform(0, 6, F)) * (1 + np.arange(F))
            + 3.0 * np.arange(F) + 0.05 * rng.standard_normal((frames, F)))


@pytest.fixture
def npz(tmp_path):
    path = tmp_path / "clips.npz"
    clips = {f"train/t{i}": _clip(100 + 10 * i, i) for i in range(5)}
    clips.update({"test/v0": _clip(60, 10), "test/v1": _clip(40, 11)})
    np.savez(path, **clips)
    return path


def _data(npz, window=16, stride=1) -> DataConfig:
    return DataConfig(name="sequences", data_dir=str(npz), image_shape=(1, window, F), window_stride=stride)


def test_windows_are_clip_slices_standardized_with_the_training_clips_statistics(npz):
    with np.load(npz) as f:
        clips = {k: f[k] for k in f.files}
    train = np.concatenate([v for k, v in clips.items() if k.startswith("train/")])
    mean, std = train.mean(0), train.std(0)  # independent of the library: numpy's population statistics
    loaded = sequence_data(_data(npz, window=16, stride=3))
    np.testing.assert_allclose(loaded.stats.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(loaded.stats.scale, std, rtol=1e-12)
    # Every start inside each clip, every 3 frames, none across a clip's end; test clips in the file's order.
    assert len(loaded.train) == sum((100 + 10 * i - 16) // 3 + 1 for i in range(5))
    assert len(loaded.test) == (60 - 16) // 3 + 1 + (40 - 16) // 3 + 1
    for split, windows in (("train", loaded.train), ("test", loaded.test)):
        for i in (0, len(windows) // 2, len(windows) - 1):
            clip, offset = windows.location(i)
            expected = (clips[f"{split}/{clip}"][offset:offset + 16] - mean) / std
            np.testing.assert_allclose(windows[i].numpy(), expected, atol=1e-5)
    split = labelled_split(_data(npz), "test")  # every clip named, the test clips after the training clips
    assert split.class_names == ("t0", "t1", "t2", "t3", "t4", "v0", "v1")
    assert torch.equal(split.labels, torch.tensor([5] * 45 + [6] * 25))
    assert labelled_split(_data(npz), "train").class_names == split.class_names


def test_clips_shorter_than_a_window_are_named_in_a_warning(npz, caplog):
    with caplog.at_level("WARNING"):
        loaded = sequence_data(_data(npz, window=50))  # test/v1 has 40 frames: no window
    assert "1 clip(s) of" in caplog.text and "shorter than a window of 50 frames" in caplog.text
    assert "test/v1 (40 frames)" in caplog.text and "v0" not in caplog.text
    assert len(loaded.test) == 60 - 50 + 1


def test_metrics_known_answers(npz):
    metrics = SequenceMetrics(_data(npz))
    x = torch.randn(3, 1, 16, F, generator=torch.Generator().manual_seed(0))
    same = metrics(x, x.clone())
    assert torch.equal(same["mse"], torch.zeros(3)) and torch.allclose(same["explained_variance"], torch.ones(3))
    assert torch.equal(same["rmse_raw"], torch.zeros(3))
    zero = metrics(x, torch.zeros_like(x))  # the training mean everywhere: explains none of the variance around it
    torch.testing.assert_close(zero["explained_variance"], 1 - x.pow(2).flatten(1).mean(1))
    shifted = metrics(x, x + 0.5)  # 0.5 standard deviations off everywhere: 0.5 * scale in the file's units
    torch.testing.assert_close(shifted["mse"], torch.full((3,), 0.25))
    torch.testing.assert_close(shifted["explained_variance"], torch.full((3,), 0.75))
    still = torch.full((1, 1, 16, F), 0.3)  # a window that does not move: judged like any other, not divided by ~0
    assert metrics(still, still + 0.01)["explained_variance"].item() == pytest.approx(1 - 1e-4, abs=1e-6)
    expected = float(0.5 * np.mean(sequence_data(_data(npz)).stats.scale))
    torch.testing.assert_close(shifted["rmse_raw"], torch.full((3,), expected))


def test_explained_variance_leaves_out_features_that_do_not_vary(tmp_path):
    """One varying feature and three constant ones (only centred, so about 0 variance to explain): predicting the
    training mean explains none of the variance (0, not 0.75), a perfect reconstruction all of it; all constant:
    no explained variance at all. Fails on: 1 - mse over every feature."""
    rng = np.random.default_rng(0)
    clip = lambda n: np.concatenate([rng.normal(size=(n, 1)), np.full((n, 3), 5.0)], axis=1)  # noqa: E731
    path = tmp_path / "constant.npz"
    np.savez(path, **{"train/a": clip(400), "test/b": clip(100)})
    data = DataConfig(name="sequences", data_dir=str(path), image_shape=(1, 16, 4))
    metrics = SequenceMetrics(data)
    assert metrics.varying.tolist() == [True, False, False, False]
    x = sequence_data(data).test[0].reshape(1, 1, 16, 4)
    mean = torch.zeros_like(x)
    expected = 1 - float(x[0, 0, :, 0].pow(2).mean())
    assert metrics(x, mean)["explained_variance"].item() == pytest.approx(expected, abs=1e-6)
    assert metrics(x, x.clone())["explained_variance"].item() == pytest.approx(1.0)
    np.savez(path, **{"train/a": np.full((40, 2), 3.0), "test/b": np.full((40, 2), 3.0)})
    still = SequenceMetrics(DataConfig(name="sequences", data_dir=str(path), image_shape=(1, 16, 2)))
    assert "explained_variance" not in still(x[..., :2], x[..., :2])


@pytest.mark.parametrize("clips, problem", [
    ({"train/a": np.zeros((30, F)), "test/b": np.zeros((30, F)), "labels": np.arange(3)},
     "holds 'labels'; every array must be named train/<clip> or test/<clip>"),
    ({"train/a": np.zeros((30, F))}, "has no test/<clip> arrays"),
    ({"train/a": np.zeros(30), "test/b": np.zeros((30, F))}, "has shape (30,)"),
    ({"train/a": np.full((30, F), np.nan), "test/b": np.zeros((30, F))}, "holds NaN or infinite values"),
    ({"train/a": np.zeros((30, F)), "test/b": np.zeros((30, F + 1))}, f"different feature counts [{F}, {F + 1}]"),
    ({"train/a": np.array(["x"] * 30).reshape(30, 1), "test/b": np.zeros((30, F))}, "a clip is (frames, F) numbers"),
    ({"train/a": np.array([np.zeros(2), "x"], dtype=object), "test/b": np.zeros((30, F))},
     "is not a readable .npz of plain arrays"),
    ({"train/a": np.zeros((10, F)), "test/b": np.zeros((30, F))}, "no train clip of"),
])
def test_a_malformed_file_is_one_line_and_no_run_folder(tmp_path, capsys, clips, problem):
    path = tmp_path / "bad.npz"
    np.savez(path, **clips)
    assert main([*TRAIN, f"data.data_dir={path}", f"train.out_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and problem in err, err
    assert not (tmp_path / "run").exists()


def test_a_shape_that_does_not_fit_the_clips_names_the_feature_count(npz, tmp_path, capsys):
    assert main([*TRAIN, "data.image_shape=1,16,86", f"data.data_dir={npz}",
                 f"train.out_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"must be (1, T, F) with F = {F}" in err and f"data.image_shape=1,32,{F}" in err, err
    assert main([*TRAIN, "data.data_dir=", f"train.out_dir={tmp_path / 'run'}"]) == 2
    assert "name the .npz file of clips" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_train_eval_export_codes_and_a_changed_file_refused(npz, tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*TRAIN, f"data.data_dir={npz}", f"train.out_dir={run}"]) == 0
    record = json.loads((run / "sequence_data.json").read_text())
    assert record["file"] == str(npz.resolve()) and record["windows"] == {"train": 5 * 85 + 100, "test": 45 + 25}
    np.testing.assert_allclose(record["scale"], sequence_data(_data(npz)).stats.scale)
    assert (run / "reconstructions.png").stat().st_size > 0
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_images"] == 70 and {"mse", "explained_variance", "rmse_raw"} <= result.keys()
    assert "psnr" not in result and "ssim" not in result  # image metrics mean nothing here
    assert main(["eval", str(run)]) == 0  # the dataset's word for an example
    assert "sequences test split, checkpoint step 4, seed 0, batch 500, 70 windows:" in capsys.readouterr().out
    # Exported, the tokenizer carries the training clips' statistics (not the data file's path): raw clips go in
    # through model.standardization as training put them in.
    import daps

    exported = tmp_path / "exported"
    assert main(["export", str(run), "--out", str(exported)]) == 0
    saved = json.loads((exported / "standardization.json").read_text())
    for name in ("standardization.json", "config.json", "README.md"):  # no path of this machine leaves with it
        assert str(npz.parent) not in (exported / name).read_text(), name
    assert json.loads((exported / "config.json").read_text())["data"]["data_dir"] == npz.name
    np.testing.assert_allclose(saved["scale"], record["scale"])
    assert "model.standardization.normalize(raw)" in (exported / "README.md").read_text()
    for model in (daps.from_pretrained(exported), daps.from_pretrained(run)):
        with np.load(npz) as f:
            raw = f["test/v0"][:16]
        std = model.standardization.normalize(raw)
        np.testing.assert_allclose(std, sequence_data(_data(npz)).test[0].numpy().reshape(16, F), atol=1e-5)  # window 0
        np.testing.assert_allclose(model.standardization.denormalize(std), raw, atol=1e-9)
    assert "feature_version" not in saved  # the motion features' version means nothing for one's own clips
    (exported / "standardization.json").write_text(json.dumps({**saved, "mean": saved["mean"][:-1]}))
    with pytest.raises(UserError, match=f"must each hold the model's {F} features"):
        daps.from_pretrained(exported)
    codes = tmp_path / "codes.safetensors"
    assert main(["export-codes", str(run), "--split", "test", "--out", str(codes)]) == 0
    from safetensors import safe_open

    with safe_open(str(codes), "pt") as f:
        assert json.loads(f.metadata()["daps_codes"])["class_names"] == ["t0", "t1", "t2", "t3", "t4", "v0", "v1"]
        assert set(f.get_tensor("labels").tolist()) == {5, 6}
        assert f.get_tensor("codes").shape[0] == 70
    # the exported folder encodes the file as its run does (the statistics it carries checked against the file's)
    (exported / "standardization.json").write_text(json.dumps(saved))
    again = tmp_path / "codes-of-the-export.safetensors"
    assert main(["export-codes", str(exported), "--split", "test", "--data-dir", str(npz), "--out", str(again)]) == 0
    with safe_open(str(codes), "pt") as f, safe_open(str(again), "pt") as g:
        assert f.get_tensor("codes").equal(g.get_tensor("codes"))
    with np.load(npz) as f:
        clips = {k: f[k] for k in f.files}
    clips["test/v1"][0, 0] += 1.0
    np.savez(npz, **clips)
    capsys.readouterr()
    for command in (["eval", str(run)],
                    [*TRAIN, "train.steps=6", f"data.data_dir={npz}", f"train.out_dir={run}", "--resume"]):
        assert main(command) == 2, command
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "is not the file this run was trained on" in err, err
    clips["train/t0"] *= 2.0  # other training statistics: the export's codes would be read on the wrong scale
    np.savez(npz, **clips)
    assert main(["export-codes", str(exported), "--data-dir", str(npz), "--out", str(tmp_path / "c.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "was trained on data with other feature statistics than sequences" in err


def test_a_tokenizer_learns_the_clips(npz, tmp_path, capsys):
    """VQ-VAE (the fastest learner here) for 600 steps explains most of the test windows' variance (0.66 when
    written). Negative controls, checked by hand: windows gathered with their frames shuffled in time (0.33), or the
    test split shifted by one standard deviation against the training statistics (-0.31), fail it."""
    run = tmp_path / "run"
    overrides = [o for o in TINY if not o.startswith(("train.steps", "train.eval_every", "train.ckpt_every"))]
    assert main(["train", "--preset", "lafan1-h1", "--method", "vqvae", *overrides, "train.steps=600",
                 "train.eval_every=600", "train.ckpt_every=600", "encoder.num_tokens=8", "optim.lr=1e-3",
                 f"data.data_dir={npz}", f"train.out_dir={run}"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["explained_variance"] > 0.5, summary
    assert dataset_spec("sequences").likelihood == "gaussian-fixed"


def test_the_h1_commands_refuse_a_sequences_run_in_one_line(npz, tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*TRAIN, f"data.data_dir={npz}", f"train.out_dir={run}"]) == 0
    capsys.readouterr()
    for command, says in ((["render", str(run), "--clip", "v0", "--out", str(tmp_path / "v.mp4")],
                           "render shows H1 motion runs (lafan1-h1)"),
                          (["robot", "train", str(run), "--out", str(tmp_path / "policy")],
                           "the policy needs a motion tokenizer of the H1 (lafan1-h1)")):
        assert main(command) == 2, command
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "was trained on sequences" in err and says in err, err
    assert not (tmp_path / "v.mp4").exists() and not (tmp_path / "policy").exists()


def test_figures_of_standardized_features_keep_their_sign():
    """Motion and sequence windows are standardized features: a figure shows -3 sd black, 0 mid-grey, +3 sd white
    (the binary-image rule, a clamp to [0, 1], would blacken every negative value)."""
    for name in ("sequences", "lafan1-h1"):
        shown = dataset_spec(name).standardize.to_unit(torch.tensor([-4.0, -3.0, -1.5, 0.0, 1.5, 3.0, 9.0]))
        torch.testing.assert_close(shown, torch.tensor([0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0]))
    assert torch.equal(dataset_spec("sequences").standardize(torch.tensor([-1.0, 2.0])), torch.tensor([-1.0, 2.0]))
    binary = dataset_spec("mnist").standardize.to_unit(torch.tensor([-1.0, 0.3, 2.0]))
    torch.testing.assert_close(binary, torch.tensor([0.0, 0.3, 1.0]))


def test_a_prior_trains_on_a_sequences_runs_codes_with_its_test_codes_held_out(npz, tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*TRAIN, f"data.data_dir={npz}", f"train.out_dir={run}"]) == 0
    for split in ("train", "test"):
        assert main(["export-codes", str(run), "--split", split, "--out", str(tmp_path / f"{split}.safetensors")]) == 0
    assert main(["prior", "train", str(tmp_path / "train.safetensors"), "--val-codes",
                 str(tmp_path / "test.safetensors"), "--out", str(tmp_path / "prior"), "steps=2", "width=16",
                 "num_heads=2", "progress=false"]) == 0


def test_a_zero_window_stride_is_one_user_error(npz):
    """DataConfig built in Python is not validated: a stride of 0 (np.arange's ZeroDivisionError) is refused."""
    with pytest.raises(UserError, match="window_stride must be >= 1, got 0"):
        sequence_data(_data(npz, stride=0))


def test_rmse_in_large_units_stays_finite(tmp_path):
    """A file in large units (values about 1e20: an error of 1e20 squared overflows float32) gives a finite
    ``rmse_raw``, 0.5 scale for half a standard deviation off, instead of inf (which ended a finite run as
    "diverged"). Fails on: the square taken in float32."""
    path = tmp_path / "big.npz"
    rng = np.random.default_rng(0)
    np.savez(path, **{"train/a": rng.normal(size=(80, F)) * 1e20, "test/b": rng.normal(size=(40, F)) * 1e20})
    metrics = SequenceMetrics(_data(path))
    x = torch.randn(2, 1, 16, F, generator=torch.Generator().manual_seed(0))
    raw = metrics(x, x + 0.5)["rmse_raw"]
    assert raw.dtype == torch.float32 and torch.isfinite(raw).all()
    expected = 0.5 * float(np.mean(sequence_data(_data(path)).stats.scale))
    torch.testing.assert_close(raw, torch.full((2,), expected, dtype=torch.float32), rtol=1e-5, atol=0)


@pytest.mark.parametrize("frames", [0, 1])
def test_train_clips_of_fewer_than_two_frames_in_all_are_one_line(tmp_path, frames):
    """Statistics need two training frames: an empty or one-frame training set is a UserError naming the file,
    not numpy's ValueError from inside the standardizer. Fails on: the check removed (a traceback, exit 1)."""
    path = tmp_path / f"short{frames}.npz"
    np.savez(path, **{"train/a": np.zeros((frames, F)), "test/b": np.ones((60, F))})
    with pytest.raises(UserError, match=f"the train clips of .*short{frames}.npz hold {frames} frame"):
        sequence_data(_data(path))


@pytest.mark.parametrize("bad, message", [
    (np.arange(12).reshape(2, 6) * 3, r"features must be floating point, got int64"),  # means truncated to ints
    (torch.arange(12).reshape(2, 6), r"features must be floating point, got torch\.int64"),
    (np.zeros((2, 1), np.float32), r"this model's F = 6 on the last axis, got shape \(2, 1\)"),  # broadcast to 6
    (np.zeros((2, 5), np.float32), r"F = 6 on the last axis, got shape \(2, 5\)"),  # a numpy broadcast error
    ([[0.0] * 6], r"numpy array or torch tensor \(\.\.\., 6\), got list"),
])
def test_a_standardizer_refuses_features_it_would_map_wrong(bad, message):
    """``model.standardization.normalize`` / ``denormalize`` (README: before encode, after decode) took integer
    features with truncated statistics and broadcast a last axis of 1 to every feature, without a word. Fails on:
    the Standardizer without its input checks."""
    from daps.motion.dataset import Standardizer

    stats = Standardizer(mean=np.linspace(-3.5, 2.5, 6), scale=np.full(6, 2.5), near_constant=np.zeros(6, bool))
    for method in (stats.normalize, stats.denormalize):
        with pytest.raises(UserError, match=message):
            method(bad)
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    np.testing.assert_allclose(stats.denormalize(stats.normalize(x)), x, rtol=1e-6)
    assert stats.normalize(torch.from_numpy(x)).dtype == torch.float32


def test_a_dataset_standardized_per_feature_is_checked_from_its_spec_alone(tmp_path, monkeypatch):
    """A dataset registered with ``stats`` and ``run_stats`` (as a user's own feature dataset would be) gets the
    checks of the built-in ones without any other change: a pretrained model carrying other statistics than the
    data's is refused in one line, the same statistics pass, and a model loaded from a run takes the statistics the
    run saved (``run_standardization``), None when its file is unreadable. Fails on: the checks keyed on the
    built-in dataset names (lafan1-h1, sequences) instead of the spec (this dataset left unchecked)."""
    import dataclasses
    from types import SimpleNamespace

    from daps.data import DATASETS, check_model_data, run_standardization
    from daps.motion.dataset import Standardizer

    def stats_of(mean: float) -> Standardizer:
        return Standardizer(np.full(3, mean), np.ones(3), np.zeros(3, bool))

    def read(run_dir):
        return stats_of(json.loads((run_dir / "toy_stats.json").read_text())["mean"])

    spec = dataclasses.replace(dataset_spec("sequences"), name="toy-features", stats=lambda data: stats_of(0.5),
                               run_stats=read)
    monkeypatch.setitem(DATASETS, "toy-features", spec)
    data = DataConfig(name="toy-features", image_shape=(1, 4, 3))
    check_model_data(SimpleNamespace(standardization=stats_of(0.5)), data, "folder")
    with pytest.raises(UserError, match="folder was trained on data with other feature statistics"):
        check_model_data(SimpleNamespace(standardization=stats_of(0.25)), data, "folder")
    with pytest.raises(UserError, match="holds no standardization.json"):
        check_model_data(SimpleNamespace(standardization=None), data, "folder")
    check_model_data(SimpleNamespace(standardization=None), DataConfig(name="mnist"), "folder")  # a fixed scale

    (tmp_path / "toy_stats.json").write_text(json.dumps({"mean": 2.0}))
    assert np.array_equal(run_standardization(tmp_path, "toy-features").mean, np.full(3, 2.0))
    (tmp_path / "toy_stats.json").write_text("{")
    assert run_standardization(tmp_path, "toy-features") is None
    assert run_standardization(tmp_path, "mnist") is None
