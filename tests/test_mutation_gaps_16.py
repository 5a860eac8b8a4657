"""Known answers for behaviour that a mutation sweep of daps/motion/render.py and daps/motion/classifier.py found no
test guarding: the video camera's fixed height and the classifier's report, training and loading. Each test names
the slip it fails on; the references are documented behaviour (docs/motion.md) and hand-worked cases on tiny
synthetic windows and poses. Tests that load the H1 model need mujoco and DAPS_DATA_DIR (the ``h1_model`` fixture
of tests/conftest.py skips without them)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

# --------------------------------------------------------------------------- the video camera (motion/render.py)


def test_the_camera_follows_the_pelvis_across_the_floor_at_a_height_of_0_9_m(h1_model):
    """Every view's camera looks at the pelvis's planar position at a fixed height of 0.9 m (docs/motion.md: the
    camera follows the pelvis; render.py: "at a height of 0.9 m"), so a robot that crouches or jumps moves in the
    picture. Known answer: poses with the pelvis at (1, 2, 0.5) and (-3, 0.5, 1.6) give look-at points (1, 2, 0.9)
    and (-3, 0.5, 0.9). Fails on: the camera following the pelvis's height too."""
    from daps.motion.render import PRED_RGBA, _frames, scene_model

    looked: list[tuple[float, ...]] = []

    class Recorder:  # a renderer that records where the camera looks and draws nothing
        def update_scene(self, data, camera):
            looked.append(tuple(float(v) for v in camera.lookat))

        def render(self):
            return np.zeros((16, 16, 3), np.uint8)

        def close(self):
            pass

    poses = np.zeros((2, 26))
    poses[:, 3] = 1.0  # identity root quaternion (w, x, y, z)
    poses[0, :3], poses[1, :3] = (1.0, 2.0, 0.5), (-3.0, 0.5, 1.6)
    frames = list(_frames(scene_model(h1_model), Recorder(), [poses], [poses], [PRED_RGBA], 3.0))
    assert len(frames) == 2
    assert looked == [pytest.approx((1.0, 2.0, 0.9)), pytest.approx((-3.0, 0.5, 0.9))]


def test_a_caption_is_cut_to_a_view_lower_than_its_band():
    """A caption band (16 pixels high) stamped on a view only 8 pixels high fills the view's top-left corner to
    the view's height and the band's width, and leaves the rest of the view as it was. Known answer: a 16 x 30 band
    of value 200 on a black 8 x 40 view: columns 0-29 all 200, columns 30-39 still 0. Fails on: the band's height
    not cut to the view (a shape error on views lower than 16 pixels)."""
    from daps.motion.render import _stamp

    frame = np.zeros((8, 40, 3), np.uint8)
    _stamp(frame, np.full((16, 30, 3), 200, np.uint8))
    assert (frame[:, :30] == 200).all() and (frame[:, 30:] == 0).all()


def test_feature_plots_draw_the_reconstruction_from_the_reconstruction(tmp_path, captured):
    """In each panel of ``plot_feature_trajectories`` the black line is the ground truth's feature and the dashed
    red one the reconstruction's. Known answer (docs/motion.md's feature table: ``root_height`` is feature 0,
    ``root_velocity`` features 7-8, forward first): ground truth all 0, reconstruction feature j equal to j + 1 in
    every frame: the root height panel's lines are 0 and 1, the forward velocity panel's 0 and 8. Fails on: the
    reconstruction's line drawn from the ground truth (both lines the same)."""
    from daps.motion.features import NUM_FEATURES
    from daps.motion.render import plot_feature_trajectories

    truth = np.zeros((5, NUM_FEATURES))
    pred = np.tile(np.arange(1.0, NUM_FEATURES + 1), (5, 1))
    plot_feature_trajectories(truth, pred, tmp_path / "f.png", names=["root_height/z", "root_velocity/forward"])
    panels = captured[0].axes
    for ax, value in zip(panels, (1.0, 8.0)):
        black, red = ax.get_lines()
        assert np.array_equal(black.get_ydata(), np.zeros(5)) and np.array_equal(red.get_ydata(), np.full(5, value))
        assert red.get_linestyle() == "--"


# --------------------------------------------------------------------------- the report (motion/classifier.py)


def test_a_classifier_report_keeps_each_accuracy_under_its_own_name(monkeypatch):
    """``ClassifierReport.to_dict`` writes the validation and training accuracies under their own keys and the
    classifier and feature versions under theirs. Known answer: a report of validation accuracy 0.25 and training
    accuracy 0.75, with the feature version set to 7 (the classifier's version stays 1), reads back
    ``val_accuracy`` 0.25, ``train_accuracy`` 0.75, ``version`` 1, ``feature_version`` 7. Fails on: the training
    accuracy written from the validation one, the classifier's version written as the feature version (both are
    1 today, so only a distinct feature version tells them apart)."""
    import daps.motion.classifier as classifier

    monkeypatch.setattr(classifier, "FEATURE_VERSION", 7)
    report = classifier.ClassifierReport(0.25, {"walk": 0.5}, {"walk": 4}, {"walk": {"walk": 2}}, 0.75, 3, 2, 1)
    d = report.to_dict()
    assert (d["val_accuracy"], d["train_accuracy"]) == (0.25, 0.75)
    assert (d["version"], d["feature_version"]) == (1, 7)
    assert (d["val_recall"], d["val_windows"], d["val_confusion"]) == ({"walk": 0.5}, {"walk": 4},
                                                                        {"walk": {"walk": 2}})
    assert (d["steps"], d["batch_size"], d["seed"]) == (3, 2, 1)


class _Windows:
    """A stand-in for :class:`~daps.data.motion.WindowImages`: ``labels``, ``len`` and ``images[idx]``; window i
    holds its index i in every entry (2 frames of 2 features)."""

    def __init__(self, labels: list[int]) -> None:
        self.labels = torch.tensor(labels, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        return idx.float().view(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone()


class _Picks(torch.nn.Module):
    """Predicts kind ``preds[i]`` for window i (one-hot logits over the 6 kinds)."""

    def __init__(self, preds: list[int]) -> None:
        super().__init__()
        self.preds = torch.tensor(preds)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(self.preds[x[:, 0, 0, 0].long()], 6).float()


def test_accuracy_by_kind_returns_accuracy_then_recall_then_counts():
    """``accuracy_by_kind`` returns (accuracy, recall per kind, windows per kind), in that order (its docstring).
    Known answer: true kinds (dance, dance, fall) predicted (dance, fall, fall): accuracy 2/3, recall dance 1/2 and
    fall 1, counts dance 2 and fall 1. Fails on: the recall and the counts returned in each other's place."""
    from daps.motion.classifier import accuracy_by_kind

    accuracy, recall, counts = accuracy_by_kind(_Picks([0, 1, 1]), _Windows([0, 0, 1]))
    assert accuracy == pytest.approx(2 / 3)
    assert recall == pytest.approx({"dance": 0.5, "fall": 1.0})
    assert counts == {"dance": 2, "fall": 1}


# --------------------------------------------------------------------------- training (motion/classifier.py)


class _ZeroWindows(_Windows):
    """Windows of 4 frames of the real feature count, all zero."""

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        from daps.motion.features import NUM_FEATURES

        return torch.zeros(len(idx), 1, 4, NUM_FEATURES)


def _train_spied(monkeypatch, steps: int) -> dict:
    """Train the motion classifier on six all-zero windows (one per kind), batch 64, recording the training
    inputs, the learning rate at each optimizer step, and per backward pass the head weight's own gradient and
    its gradient after accumulation."""
    import daps.motion.classifier as classifier

    seen: dict = {"inputs": [], "lrs": [], "own": [], "kept": []}
    forward = classifier.MotionClassifier.forward

    def spy(self, x):
        if self.training:
            seen["inputs"].append(x.detach().clone())
            weight = self.head[1].weight
            if not seen.get("hooked"):
                seen["hooked"] = True
                weight.register_hook(lambda g: seen["own"].append(g.clone()))
                weight.register_post_accumulate_grad_hook(lambda p: seen["kept"].append(p.grad.clone()))
        return forward(self, x)

    class Recording(torch.optim.AdamW):
        def step(self, *args, **kwargs):
            seen["lrs"].append(self.param_groups[0]["lr"])
            return super().step(*args, **kwargs)

    monkeypatch.setattr(classifier.MotionClassifier, "forward", spy)
    monkeypatch.setattr(torch.optim, "AdamW", Recording)
    classifier.train_classifier(_ZeroWindows([0, 1, 2, 3, 4, 5]), _ZeroWindows([0, 1]), steps=steps, batch_size=64)
    return seen


def test_training_inputs_carry_gaussian_noise_of_sigma_0_2(monkeypatch, single_thread):
    """The classifier trains on its windows plus Gaussian noise of σ 0.2 (docs/motion.md). Known answer: all-zero
    windows reach the network as noise of mean 0 and standard deviation 0.2 (2 steps of 64 windows of 4 x 86
    entries: the sample's deviation is within 0.19-0.21). Fails on: the noise dropped (the inputs all zero)."""
    inputs = torch.cat(_train_spied(monkeypatch, steps=2)["inputs"])
    assert inputs.shape[0] == 128
    assert abs(float(inputs.mean())) < 0.01 and 0.19 < float(inputs.std()) < 0.21


def test_training_follows_a_cosine_learning_rate_from_1e_3(monkeypatch, single_thread):
    """AdamW's learning rate follows a cosine over the training steps (docs/motion.md). Known answer: 4 steps from
    lr 1e-3 use 1e-3 (1 + cos(π t / 4)) / 2 at step t = 0..3: 1e-3, 8.536e-4, 5e-4, 1.464e-4. Fails on: the
    scheduler never stepped (1e-3 throughout)."""
    import math

    lrs = _train_spied(monkeypatch, steps=4)["lrs"]
    assert lrs == pytest.approx([1e-3 * (1 + math.cos(math.pi * t / 4)) / 2 for t in range(4)])


def test_each_training_step_uses_only_its_own_gradient(monkeypatch, single_thread):
    """Gradients are cleared before every backward pass, so each optimizer step follows that step's loss alone.
    Known answer: for 3 steps, the head weight's gradient after accumulation equals the gradient of that step's
    own loss. Fails on: the gradients never cleared (each step adding every earlier step's gradient)."""
    seen = _train_spied(monkeypatch, steps=3)
    assert len(seen["own"]) == len(seen["kept"]) == 3
    for own, kept in zip(seen["own"], seen["kept"]):
        assert torch.equal(own, kept)


def test_the_training_accuracy_subset_keeps_each_windows_own_label():
    """The training accuracy is measured on a subset of the training windows (``_Subset``), each window with its
    own label. Known answer: windows 0-5 of kinds 5, 4, 3, 2, 1, 0, subset of windows (1, 4): labels (4, 1), its
    items 0 and 1 are windows 1 and 4, and a model predicting each window's true kind scores 1.0 on it. Fails on:
    the subset labelled with the first labels of the set (5, 4), or its items taken from the whole set."""
    from daps.motion.classifier import _Subset, accuracy_by_kind

    windows = _Windows([5, 4, 3, 2, 1, 0])
    subset = _Subset(windows, torch.tensor([1, 4]))
    assert len(subset) == 2 and subset.labels.tolist() == [4, 1]
    assert subset[torch.tensor([0, 1])][:, 0, 0, 0].tolist() == [1.0, 4.0]
    assert accuracy_by_kind(_Picks([5, 4, 3, 2, 1, 0]), subset)[0] == 1.0
