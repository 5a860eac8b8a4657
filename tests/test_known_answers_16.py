"""Known answers for behaviour that a sixteenth mutation sweep, of modules earlier sweeps covered least (the sampling
loop daps/nets/sampling.py, the KV caches daps/nets/kv_cache.py, code statistics daps/metrics/codes.py, validation
sets daps/data/evalset.py, the image classifiers daps/metrics/classifier.py, the robot's policy and commands
daps/robot/policy.py and daps/robot/commands.py, the figures daps/plots.py, the videos daps/motion/render.py and FID
daps/metrics/fid.py), found no test guarding: the sum that is a sample's log q; empty, negative and boolean codes, a
boolean vocabulary and the length of the code histogram; a validation batch of zero images; the per-image start of
FID statistics, the eigenvalue tolerance of stored statistics and statistics of one image; the CIFAR-10 classifier's
feature width and oblong inputs, the keys and version of classifier files and the report beside the weights; the band
of two seeds and the sample grid's defaults; prompts ending in "er", unknown motion names, one-frame windows,
schedule rows met exactly at a window's start and rows of five numbers; the policy's per-token, unclamped likelihood
and its default velocity scale. Each test names the plausible slip it fails on (each checked against its mutant).
No test here needs mujoco or ``$DAPS_DATA_DIR``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from daps.errors import UserError

# --------------------------------------------------------------------------------------------------
# The sampling loop


def test_log_q_of_samples_is_the_sum_of_the_token_log_probabilities():
    """``Samples.log_q (K, B)`` is ``log q(z | x) = sum_t log q(z_t | z_<t, x)``: with fixed per-position
    probabilities it is the log of the product of the drawn tokens' probabilities (numpy). Fails on: the mean over
    tokens."""
    from daps.functional import exact_log_probs
    from daps.nets.sampling import sample_autoregressive

    probs = np.array([[0.5, 0.25, 0.25], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6], [0.7, 0.2, 0.1]])  # (T, V)
    logits = torch.tensor(np.log(probs), dtype=torch.float32)

    def step(indices: torch.Tensor, pos: int) -> torch.Tensor:
        return logits[pos].expand(indices.shape[0], -1)

    g = torch.Generator().manual_seed(0)
    samples = sample_autoregressive(step, 2, 3, 4, torch.device("cpu"), g, exact_log_probs)
    codes = samples.indices.numpy()  # (K, B, T)
    expected = np.log(probs[np.arange(4), codes]).sum(-1)  # (K, B)
    np.testing.assert_allclose(samples.log_q.numpy(), expected, rtol=1e-5)


# --------------------------------------------------------------------------------------------------
# Code statistics


def test_code_statistics_refuse_empty_and_negative_codes():
    """Codes with no rows or no positions, and a negative code, are a :class:`UserError` from every statistic (not
    a crash of ``min`` on an empty tensor or of ``bincount`` on a negative one). Fails on: the empty check or the
    lower bound dropped."""
    from daps.metrics.codes import code_histogram, code_perplexity, codebook_utilization, position_code_entropy

    for codes in (torch.zeros(0, 4, dtype=torch.long), torch.zeros(3, 0, dtype=torch.long),
                  torch.tensor([[0, 1], [-1, 2]])):
        for fn in (code_histogram, codebook_utilization, code_perplexity, position_code_entropy):
            with pytest.raises(UserError, match="codes must"):
                fn(codes, 4)


def test_code_statistics_refuse_boolean_codes_and_a_boolean_vocabulary():
    """Boolean codes and ``vocab_size=True`` are refused (a mask passed for codes, a flag for the size), not read as
    0/1. Fails on: the bool dtype check or the bool vocabulary check dropped."""
    from daps.metrics.codes import code_histogram, codebook_utilization

    with pytest.raises(UserError, match="integers"):
        code_histogram(torch.tensor([[True, False]]), 2)
    with pytest.raises(UserError, match="vocab_size"):
        codebook_utilization(torch.zeros(2, 2, dtype=torch.long), True)


def test_code_histogram_has_one_count_per_vocabulary_entry():
    """``code_histogram`` is ``(V,)`` even when the highest codes are unused: codes {0, 1, 1} of V = 5 count
    ``[1, 2, 0, 0, 0]``. Fails on: ``bincount`` without ``minlength`` (a shorter histogram)."""
    from daps.metrics.codes import code_histogram

    assert code_histogram(torch.tensor([[0, 1, 1]]), 5).tolist() == [1, 2, 0, 0, 0]


# --------------------------------------------------------------------------------------------------
# Validation sets


def test_a_tensor_eval_set_refuses_batches_of_zero_images():
    """``TensorEvalSet(images, batch_size=0)`` is a ValueError (``split(0)`` would fail at the first evaluation,
    after training). Fails on: only negative sizes refused."""
    from daps.data.evalset import TensorEvalSet

    with pytest.raises(ValueError, match="batch_size"):
        TensorEvalSet(torch.zeros(4, 1, 2, 2), batch_size=0)
    assert [b.shape[0] for b in TensorEvalSet(torch.zeros(5, 1, 2, 2), batch_size=2).batches()] == [2, 2, 1]


# --------------------------------------------------------------------------------------------------
# FID statistics


def test_feature_statistics_start_at_the_first_non_empty_batch():
    """An empty batch before the first features (an empty last shard, a batch cut to zero) changes nothing: the
    mean and covariance equal numpy's of the features. Fails on: the empty batch's NaN mean taken as the shift."""
    from daps.metrics.fid import FeatureStats

    x = np.random.default_rng(0).normal(size=(6, 3))
    stats = FeatureStats().update(np.zeros((0, 3))).update(x[:4]).update(x[4:])
    np.testing.assert_allclose(stats.mu, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.sigma, np.cov(x, rowvar=False), rtol=1e-12)


def test_stored_statistics_with_a_clearly_negative_eigenvalue_are_refused(tmp_path):
    """A stored sigma with an eigenvalue of -1e-4 times its scale is not a covariance (rounding gives ~1e-16): it
    is refused when read. Fails on: a tolerance of 1e-3 of the scale."""
    from daps.metrics.fid import load_fid_stats

    path = tmp_path / "s.npz"
    np.savez(path, mu=np.zeros(2), sigma=np.diag([1.0, -1e-4]), num_images=np.int64(10), meta=np.array("{}"))
    with pytest.raises(UserError, match="negative eigenvalues"):
        load_fid_stats(path)


def test_statistics_of_one_image_are_not_saved(tmp_path):
    """A covariance needs two images: ``save_fid_stats`` of a mean and covariance said to come from one image is
    refused (as a :class:`FeatureStats` of one image is). Fails on: only ``num_images < 1`` refused."""
    from daps.metrics.fid import save_fid_stats

    with pytest.raises(UserError, match="num_images must be an int >= 2"):
        save_fid_stats(tmp_path / "s.npz", (np.zeros(2), np.eye(2)), num_images=1)
    assert not (tmp_path / "s.npz").exists()
    save_fid_stats(tmp_path / "s.npz", (np.zeros(2), np.eye(2)), num_images=2)


# --------------------------------------------------------------------------------------------------
# Image classifiers


def test_the_cifar_classifier_has_three_conv_blocks_and_256_features():
    """For 32x32 images the classifier is three blocks of 64, 128 and 256 channels (32 -> 4 pixels) and 256
    features, as its docstring says; an oblong image's width is halved on its own. Fails on: 128 features for
    every size, the width taken from the height."""
    from daps.metrics.classifier import ImageClassifier

    model = ImageClassifier((3, 32, 32))
    convs = [m.out_channels for m in model.convs if isinstance(m, torch.nn.Conv2d)]
    assert convs == [64, 128, 256]
    assert (model.features.in_features, model.features.out_features) == (256 * 4 * 4, 256)
    assert model.embed(torch.zeros(2, 3, 32, 32)).shape == (2, 256)
    oblong = ImageClassifier((1, 28, 12))  # 28x12 -> 14x6 -> 7x3
    assert oblong.features.in_features == 64 * 7 * 3
    assert oblong(torch.zeros(2, 1, 28, 12)).shape == (2, 10)


def test_a_classifier_report_names_its_torch_version(tmp_path):
    """A JSON file is an earlier classifier report (which ``--overwrite`` may replace) only with all of ``commit``,
    ``command`` and ``torch``: a file of a commit and a command alone is a user's and is refused. Fails on: the
    ``torch`` key left out of the check."""
    from daps.metrics.classifier import _is_classifier_report, check_outputs

    partial = tmp_path / "notes.json"
    partial.write_text('{"commit": "abc", "command": "python x"}')
    assert not _is_classifier_report(partial)
    with pytest.raises(UserError):
        check_outputs(None, str(partial), overwrite=True)


def test_the_report_beside_the_weights_needs_overwrite_too(tmp_path):
    """``--out c.safetensors`` also writes ``c.json``: an earlier classifier report there is replaced only with
    ``--overwrite``, even when the weights themselves are new. Fails on: the report beside the weights checked as if
    ``--overwrite`` were given."""
    from daps.metrics.classifier import check_outputs

    (tmp_path / "c.json").write_text('{"commit": "abc", "command": "python x", "torch": "2"}')
    with pytest.raises(UserError):
        check_outputs(str(tmp_path / "c.safetensors"), None, overwrite=False)
    check_outputs(str(tmp_path / "c.safetensors"), None, overwrite=True)


def test_a_classifier_of_another_version_is_refused(tmp_path, monkeypatch):
    """A classifier file saved under another ``CLASSIFIER_VERSION`` (an older layout) is a :class:`UserError` asking
    to train it again, not loaded. Fails on: only the family compared."""
    import daps.metrics.classifier as classifier

    monkeypatch.setattr(classifier, "CLASSIFIER_VERSION", 0)
    path = classifier.save_image_classifier(classifier.ImageClassifier((1, 28, 28)), "mnist", {}, tmp_path / "c.st")
    monkeypatch.setattr(classifier, "CLASSIFIER_VERSION", 1)
    with pytest.raises(UserError, match="version-1 mnist classifier"):
        classifier.load_image_classifier("mnist", path)


# --------------------------------------------------------------------------------------------------
# Figures


def test_comparison_curves_band_two_seeds(tmp_path, captured):
    """Two seeds already span a min..max band (0..2 at step 1, 4..6 at step 2); one seed draws none. Fails on: the
    band kept for three seeds or more."""
    from daps.plots import save_comparison_curves

    save_comparison_curves({"a": [[(1, 0.0), (2, 4.0)], [(1, 2.0), (2, 6.0)]]}, tmp_path / "c.png")
    (band,) = captured[0].axes[0].collections
    vertices = band.get_paths()[0].vertices
    assert {(float(x), float(y)) for x, y in vertices} == {(1.0, 0.0), (2.0, 4.0), (1.0, 2.0), (2.0, 6.0)}
    save_comparison_curves({"a": [[(1, 0.0), (2, 4.0)]]}, tmp_path / "d.png")
    assert not captured[1].axes[0].collections


def test_an_image_grid_defaults_to_ten_columns_of_doubled_pixels(tmp_path):
    """``save_image_grid`` without ``columns`` or ``scale`` (how ``daps prior sample`` writes its grid) puts 10
    images in a row, 1-pixel gaps, each pixel 2 x 2: eleven 3x3 images give (2 rows * 4 + 1) x (10 * 4 + 1) pixels,
    doubled. Fails on: another default column count or scale."""
    from PIL import Image

    from daps.plots import save_image_grid

    save_image_grid(torch.zeros(11, 1, 3, 3), tmp_path / "g.png")
    with Image.open(tmp_path / "g.png") as img:
        assert img.size == (2 * 41, 2 * 9)


# --------------------------------------------------------------------------------------------------
# Robot commands


def test_a_prompt_keyword_may_end_in_er():
    """``docs/robot.md``'s endings include "er": "a jogger", "a walker", "a boxer" name run, walk and fight (and
    "runner", with its doubled n). Fails on: the "er" ending dropped."""
    from daps.robot.commands import motion_from_prompt

    for prompt, kind in (("a jogger", "run"), ("the walker", "walk"), ("boxer", "fight"), ("runner", "run")):
        assert motion_from_prompt(prompt) == kind, prompt


def test_an_unknown_motion_name_is_a_user_error_listing_the_kinds():
    """``motion_index("swim")`` is a :class:`UserError` that lists the kinds (and the hint), not list.index's bare
    ValueError. Fails on: the membership check skipped."""
    from daps.robot.commands import motion_index

    assert motion_index("walk", ("run", "walk")) == 1
    with pytest.raises(UserError, match=r"unknown motion 'swim'; choose one of: run, walk \(see --prompt\)"):
        motion_index("swim", ("run", "walk"), hint=" (see --prompt)")


def test_window_velocity_refuses_a_single_frame():
    """A window of one frame has no duration: a ValueError, not a division by zero into inf / NaN velocities. Fails
    on: windows of 1 frame let through."""
    from daps.robot.commands import window_velocity

    pose = np.zeros((1, 26))
    pose[:, 3] = 1.0
    with pytest.raises(ValueError, match="at least 2 frames"):
        window_velocity(pose, 30.0)


def test_a_window_starting_at_a_rows_time_takes_that_row(tmp_path):
    """A velocity schedule's row applies from its own time on: with 1 s windows and rows at 0 s and 1 s, the window
    starting at exactly 1 s takes the second row (and windows past the last row keep it). Fails on: the row before
    (a start nudged down, or ``searchsorted`` to the left)."""
    from daps.robot.commands import read_velocity_schedule

    f = tmp_path / "v.txt"
    f.write_text("0 1 0 0\n1 2 0 0.5  # speed up and turn\n")
    assert read_velocity_schedule(str(f), 3, 1.0).tolist() == [[1, 0, 0], [2, 0, 0.5], [2, 0, 0.5]]


def test_a_velocity_schedule_row_of_five_numbers_is_refused(tmp_path):
    """A row must hold exactly four numbers (time, forward, left, yaw): a fifth is an error on its line, not
    dropped. Fails on: only short rows refused."""
    from daps.robot.commands import read_velocity_schedule

    f = tmp_path / "v.txt"
    f.write_text("0 1 0 0\n1 1 0 0 9\n")
    with pytest.raises(UserError, match="line 2"):
        read_velocity_schedule(str(f), 2, 1.0)


# --------------------------------------------------------------------------------------------------
# The robot's policy


def _policy_with_head_bias(bias: list[float]):
    """A tiny policy (T = 3 tokens of V = 4 symbols) whose logits are ``bias`` whatever the context (zero head
    weights)."""
    from daps.robot.policy import CommandPolicy

    torch.manual_seed(0)
    policy = CommandPolicy(num_tokens=3, vocab_size=4, num_classes=2, width=16, num_layers=1, num_heads=2)
    with torch.no_grad():
        policy.head.weight.zero_()
        policy.head.bias.copy_(torch.tensor(bias))
    return policy


def _policy_inputs():
    codes = torch.tensor([[1, 0, 3], [2, 2, 1]])
    labels = torch.tensor([0, 2])
    velocity = torch.tensor([[1.0, 0.0, 0.2], [0.0, 0.5, 0.0]])
    prev = torch.tensor([[4, 4, 4], [0, 1, 2]])
    return codes, labels, velocity, prev


def test_the_policys_loss_is_per_token():
    """The policy's loss is the negative log-likelihood per token: with uniform logits over V = 4 symbols it is
    ``log 4`` whatever the number of tokens. Fails on: the sum over a code's tokens."""
    policy = _policy_with_head_bias([0.0, 0.0, 0.0, 0.0])
    assert policy.loss(*_policy_inputs()).item() == pytest.approx(math.log(4), rel=1e-6)


def test_the_policys_token_log_probs_are_not_clamped():
    """The policy scores codes exactly, as the priors do: a token of probability ``e^-40 / (1 + 3 e^-40)`` has
    log-probability about -40, not the encoder's clamp at ``log(eps) ~ -15.9``. Fails on: ``clamp=True``."""
    policy = _policy_with_head_bias([40.0, 0.0, 0.0, 0.0])
    log_p = policy.token_log_probs(*_policy_inputs())  # (B, T)
    codes = _policy_inputs()[0]
    expected = np.where(codes.numpy() == 0, -np.log1p(3 * np.exp(-40.0)), -40.0 - np.log1p(3 * np.exp(-40.0)))
    np.testing.assert_allclose(log_p.detach().numpy(), expected, rtol=1e-5, atol=1e-6)


def test_a_policy_without_a_velocity_scale_sees_the_velocities_as_given():
    """Without ``velocity_scale`` the scale is 1 for each of the three velocities: the packed context is
    ``[label, vx, vy, yaw, previous codes]`` unchanged. Fails on: another default scale."""
    policy = _policy_with_head_bias([0.0, 0.0, 0.0, 0.0])
    _, labels, velocity, prev = _policy_inputs()
    context = policy.context(labels, velocity, prev)
    assert policy.velocity_scale.tolist() == [1.0, 1.0, 1.0]
    expected = [[0, 1.0, 0.0, 0.2, 4, 4, 4], [2, 0.0, 0.5, 0.0, 0, 1, 2]]
    np.testing.assert_allclose(context.numpy(), expected, rtol=1e-6)
