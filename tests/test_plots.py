"""Figures: the image grid's layout pixel by pixel, and which series each panel of the training curves draws."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import daps.plots as plots


def test_image_grid_places_each_image_in_reading_order_with_white_gaps(tmp_path):
    # three 2 x 3 gray images of values 0, 0.5 and 0.2 in two columns: two rows, the last slot empty
    images = torch.stack([torch.full((1, 2, 3), v) for v in (0.0, 0.5, 0.2)])
    plots.save_image_grid(images, tmp_path / "g.png", columns=2, scale=2)
    img = np.asarray(Image.open(tmp_path / "g.png"))
    # 2 rows of 2 pixels and 3 one-pixel gaps = 7 high; 2 columns of 3 pixels and 3 gaps = 9 wide; x2
    assert img.shape == (14, 18)
    small = img[::2, ::2]  # each pixel was drawn 2 x 2
    assert (img == np.repeat(np.repeat(small, 2, 0), 2, 1)).all()
    expected = np.full((7, 9), 255, dtype=np.uint8)
    expected[1:3, 1:4] = 0  # image 0: row 0, column 0
    expected[1:3, 5:8] = 128  # image 1: row 0, column 1 (0.5 * 255 rounded)
    expected[4:6, 1:4] = 51  # image 2: row 1, column 0 (0.2 * 255)
    assert (small == expected).all()


def test_image_grid_of_fewer_images_than_columns_is_as_wide_as_the_images(tmp_path):
    rgb = torch.zeros(2, 3, 4, 4)
    rgb[1, 0] = 1.0  # the second image red
    plots.save_image_grid(rgb, tmp_path / "g.png", columns=10, scale=1)
    img = np.asarray(Image.open(tmp_path / "g.png"))
    assert img.shape == (6, 11, 3)
    assert (img[1:5, 6:10] == [255, 0, 0]).all() and (img[1:5, 1:5] == 0).all() and (img[:, 5] == 255).all()


def test_image_grid_writes_each_row_label_left_of_its_own_row(tmp_path):
    """The images are the unlabelled grid moved right by the margin; each label's ink lies within its row's band (a
    label one row off, or all at the top, fails); labels that do not match the rows are refused."""
    images = torch.zeros(6, 1, 8, 8) + 0.5  # mid-gray images, so the label margin's black ink is the only black
    plots.save_image_grid(images, tmp_path / "plain.png", columns=2, scale=2)
    plots.save_image_grid(images, tmp_path / "labelled.png", columns=2, scale=2, row_labels=["", "seven", ""])
    plain = np.asarray(Image.open(tmp_path / "plain.png"))
    labelled = np.asarray(Image.open(tmp_path / "labelled.png"))
    margin = labelled.shape[1] - plain.shape[1]
    assert margin > 0 and labelled.shape[0] == plain.shape[0]
    assert (labelled[:, margin:] == plain).all()
    ink = np.nonzero((labelled[:, :margin] < 128).any(axis=1))[0]
    row = 9 * 2  # 8 pixels and a gap, drawn 2 x 2
    assert len(ink) > 0 and ink.min() >= 2 + row and ink.max() < 2 + 2 * row  # only inside the second row
    with pytest.raises(ValueError, match="2 row labels for a grid of 3 rows"):
        plots.save_image_grid(images, tmp_path / "bad.png", columns=2, row_labels=["a", "b"])


def _lines(ax) -> dict[str, tuple[list, list]]:
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()}


def test_training_curves_draw_each_series_in_its_panel(tmp_path, captured):
    rows = [
        {"split": "train", "step": 10, "log_p": -120.0, "ess": 0.4, "eta": 2.0, "beta": 0.5},
        {"split": "train", "step": 20, "log_p": -110.0, "ess": 0.5, "eta": 3.0, "beta": 0.25},
        {"split": "val", "step": 20, "log_p": -112.0, "l2": 0.07, "psnr": 18.0},
    ]
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"split": "train", "step": 3')  # a cut line
    plots.save_training_curves(metrics, tmp_path / "curves.png", title="run")
    assert (tmp_path / "curves.png").stat().st_size > 1000
    log_p, quality, ess, schedules = captured[0].axes
    assert _lines(log_p) == {"train": ([10, 20], [-120.0, -110.0]), "validation": ([20], [-112.0])}
    assert "L2" in quality.get_title() and [v for _, v in _lines(quality).items()] == [([20], [0.07])]
    assert "distance per example" in quality.get_title()  # what L2 is, as the ESS panel says it is a training value
    assert "ESS" in ess.get_title() and list(_lines(ess).values()) == [([10, 20], [0.4, 0.5])]
    assert ess.get_title().startswith("training ESS / K")
    assert _lines(schedules) == {"eta": ([10, 20], [2.0, 3.0]), "beta": ([10, 20], [0.5, 0.25])}

    plots.save_training_curves(metrics, tmp_path / "psnr.png", quality="psnr")
    assert "PSNR" in captured[1].axes[1].get_title()
    assert list(_lines(captured[1].axes[1]).values()) == [([20], [18.0])]


def test_training_curves_without_ess_show_the_kl(tmp_path, captured):
    rows = [{"split": "train", "step": 5, "log_p": -90.0, "kl": 4.0},
            {"split": "val", "step": 5, "log_p": -95.0, "l2": 0.1, "kl": 4.5}]
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    plots.save_training_curves(metrics, tmp_path / "curves.png")
    panel = captured[0].axes[2]
    assert "KL" in panel.get_title()
    assert sorted(_lines(panel).values()) == [([5], [4.0]), ([5], [4.5])]



def test_comparison_curves_with_a_zero_keep_a_linear_axis(tmp_path, captured):
    """``log_y`` with a value of exactly 0 (a KL or eta held at 0) draws on a linear axis, as with any value <= 0.
    Fails on: ``low > 0`` dropped from the test (high / 0: ZeroDivisionError)."""
    plots.save_comparison_curves({"a": [[(1, 0.0), (2, 50.0)]]}, tmp_path / "c.png", log_y=True)
    assert captured[0].axes[0].get_yscale() == "linear"
    plots.save_comparison_curves({"a": [[(1, -5.0), (2, -1.0)]]}, tmp_path / "d.png", log_y=True)
    assert captured[1].axes[0].get_yscale() == "linear"


def _drawn(fig, ax) -> np.ndarray:
    """The RGB pixels inside ``ax`` (its frame trimmed off) as the figure draws them, top row first."""
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    box = ax.get_window_extent()
    top, bottom = int(pixels.shape[0] - box.y1) + 3, int(pixels.shape[0] - box.y0) - 3
    return pixels[top:bottom, int(box.x0) + 3 : int(box.x1) - 3]


def test_reconstruction_grids_draw_pixels_sharp_upright_and_in_their_own_colours(tmp_path, captured):
    """A 32 x 32 checkerboard (a CIFAR-sized image drawn at ~2x) comes out in pure black and white, no in-between
    levels; an image red in its top-left quarter only is drawn red (not blue: no channel swap) at the top left, black
    at the bottom right (not flipped). Fails on: the default resampling (antialiased, which smooths images shown
    at under 3x: CIFAR originals looked as blurred as their reconstructions; 136 gray levels), ``origin="lower"``,
    RGB read as BGR."""
    board = torch.zeros(2, 3, 32, 32)
    board[:, :, ::2, ::2] = 1.0
    board[:, :, 1::2, 1::2] = 1.0
    corner = torch.zeros(2, 3, 32, 32)
    corner[:, 0, :16, :16] = 1.0
    plots.save_reconstruction_grid(board, corner, tmp_path / "g.png")
    plots.save_comparison_reconstructions(board, {"daps": corner}, tmp_path / "c.png")
    for fig in captured:
        checks = _drawn(fig, fig.axes[0])
        assert set(np.unique(checks)) == {0, 255}
        drawn = _drawn(fig, fig.axes[2])  # the first reconstruction (row 2, column 1 of both figures)
        h, w, _ = drawn.shape
        assert (drawn[: h // 2 - 2, : w // 2 - 2] == [255, 0, 0]).all()
        assert (drawn[h // 2 + 2 :, w // 2 + 2 :] == 0).all() and (drawn[: h // 2 - 2, w // 2 + 2 :] == 0).all()


def test_eval_plot_shows_examples_spread_over_a_class_sorted_batch(tmp_path):
    """``daps eval --plot`` on a batch of 100 examples sorted by class (ten of each) draws 16 spread from the first
    to the last, so every class shows, as the training figure does. Fails on: the batch's first 16 (MNIST-5k's
    validation split drew sixteen zeros)."""
    from types import SimpleNamespace

    from daps.cli import _plot_reconstructions

    batch = torch.arange(10.0).repeat_interleave(10).view(100, 1, 1, 1)  # example i shows class i // 10
    drawn = []
    images = SimpleNamespace(batches=lambda: iter([batch, batch + 100]))
    model = SimpleNamespace(config=SimpleNamespace(method="daps"),
                            reconstruct=lambda x, g: SimpleNamespace(x_hat=x))
    spec = SimpleNamespace(name="toy", examples="images", standardize=lambda x: x,
                           save_reconstructions=lambda data, x, x_hat, path, title: drawn.append(x))
    _plot_reconstructions(model, spec, None, images, tmp_path / "e.png", 0, torch.device("cpu"))
    (x,) = drawn
    assert x.shape[0] == 16 and x[0].item() == 0 and x[-1].item() == 9
    assert set(x.flatten().tolist()) == set(range(10))
    assert plots.spread_indices(5).tolist() == [0, 1, 2, 3, 4]  # fewer than 16: each once


def test_feature_trajectories_name_each_unit_and_keep_the_legend_off_the_lines(tmp_path, captured):
    """Each panel's label names its feature and unit (m, m/s, rad/s, rad); the legend names both lines and sits
    above the first panel, outside its plotting area. Fails on: labels without units, the legend in the panel's
    upper right (it hid the ground truth's root height, which runs along the top of its panel)."""
    from daps.motion.features import NUM_FEATURES
    from daps.motion.render import plot_feature_trajectories

    truth = np.zeros((30, NUM_FEATURES))
    names = ["root_height/z", "root_velocity/forward", "yaw_rate/z", "joint_angles/left_knee_joint"]
    plot_feature_trajectories(truth, truth + 0.1, tmp_path / "f.png", fps=30, names=names)
    fig = captured[0]
    times = fig.axes[-1].get_lines()[0].get_xdata()  # seconds: 30 frames at 30 fps (fails on frames * fps)
    assert fig.axes[-1].get_xlabel() == "time (s)" and np.allclose(times, np.arange(30) / 30)
    assert [ax.get_ylabel() for ax in fig.axes] == [
        "root_height\nz [m]", "root_velocity\nforward [m/s]", "yaw_rate\nz [rad/s]",
        "joint_angles\nleft_knee_joint [rad]",
    ]
    legend = fig.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["ground truth", "reconstruction"]
    fig.canvas.draw()
    assert legend.get_window_extent().y0 >= fig.axes[0].get_window_extent().y1 - 1
    assert legend.get_window_extent().y1 <= fig.get_window_extent().y1  # not cut off at the top


def test_sequence_reconstructions_keep_the_legend_off_the_lines(tmp_path, captured, monkeypatch):
    """The sequences' figure (features of an .npz file) likewise: legend above the first panel, panels laid out
    under the title. Fails on: the legend in the panel's upper right."""
    from types import SimpleNamespace

    import daps.data.sequences as sequences

    monkeypatch.setattr(sequences, "sequence_data", lambda data: SimpleNamespace(
        stats=SimpleNamespace(denormalize=lambda a: a)))
    x = torch.linspace(0, 6, 64).sin().view(1, 1, 64, 1).repeat(1, 1, 1, 3) + 1.0  # at the panel's top and bottom
    sequences.plot_sequence_reconstructions(None, x, 0.8 * x, tmp_path / "s.png", "toy")
    fig = captured[0]
    legend = fig.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["ground truth", "reconstruction"]
    fig.canvas.draw()
    assert legend.get_window_extent().y0 >= fig.axes[0].get_window_extent().y1 - 1
    assert legend.get_window_extent().y1 <= fig._suptitle.get_window_extent().y0 + 1  # under the title


def test_comparison_curves_say_what_the_line_and_the_band_are(tmp_path, captured):
    """With several seeds the legend's title says the line is their mean and the band their min..max (the figure
    alone did not say); with one seed there is no band and no title. Fails on: a legend without the title."""
    two = {"daps": [[(1, 1.0), (2, 2.0)], [(1, 3.0), (2, 4.0)]], "fsq": [[(1, 0.0), (2, 1.0)]] * 2}
    plots.save_comparison_curves(two, tmp_path / "a.png")
    legend = captured[0].axes[0].get_legend()
    assert legend.get_title().get_text() == "mean of 2 seeds, band: min..max"
    assert [t.get_text() for t in legend.get_texts()] == ["daps", "fsq"]
    plots.save_comparison_curves({"daps": [[(1, 1.0), (2, 2.0)]]}, tmp_path / "b.png")
    assert captured[1].axes[0].get_legend().get_title().get_text() == ""


def test_a_series_of_one_point_is_drawn_with_a_marker(tmp_path, captured):
    """A run shorter than its logging interval logs one training row; a line through one point draws nothing, so
    the training curves, the prior's and robot policy's curves and the tracker's showed an empty panel or legend
    entry (``daps robot train ... steps=30``, log_every 50). Longer series stay plain lines."""
    from daps.prior.run import save_prior_curves
    from daps.robot.tracker import save_tracker_curves

    one = [{"split": "train", "step": 20, "log_p": -100.0, "ess": 0.5, "eta": 2.0, "beta": 0.5}]
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in one))
    plots.save_training_curves(metrics, tmp_path / "curves.png")
    save_prior_curves([{"split": "train", "step": 30, "loss": 6.9},
                       {"split": "val", "step": 30, "bits_per_token": 10.0}], tmp_path / "prior.png", "policy")
    save_tracker_curves([{"split": "train", "step": 1, "frames": 512, "reward": 0.3, "episode_s": 0.7}],
                        tmp_path / "tracker.png", {"survival_s": 0.7, "seconds": 5.0})
    lines = [line for fig in captured for ax in fig.axes for line in ax.get_lines() if len(line.get_xdata()) == 1]
    assert len(lines) == 8  # log p, ESS, eta, beta; the policy's train and held-out loss; reward, episode length
    assert all(line.get_marker() not in ("None", "", None) for line in lines)
    metrics.write_text("".join(json.dumps({**one[0], "step": s}) + "\n" for s in (10, 20)))
    plots.save_training_curves(metrics, tmp_path / "two.png")
    assert captured[-1].axes[0].get_lines()[0].get_marker() == "None"  # two points: a plain line, as before
