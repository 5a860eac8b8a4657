"""Known answers for behaviour that a mutation sweep of the estimator lab, the configuration, the optimizers and the
run's side outputs (daps/gradlab.py, daps/config.py, daps/config_io.py, daps/optim.py, daps/precision.py,
daps/progress.py, daps/loggers.py, daps/plots.py) found no test guarding. Each test names the slip it fails on; the
references are closed forms, hand-worked cases and round trips."""

from __future__ import annotations

import os

import pytest
import torch

from daps import get_preset, parse_overrides
from daps.errors import UserError

# --------------------------------------------------------------------------- gradlab: the bias z-score's units


def test_the_bias_z_score_is_in_standard_errors_whatever_the_exact_gradients_length():
    """Two draws (1, 1), (3, -1) against the exact gradient (4, 0): the mean (2, 0) falls 2 short along (1, 0); the
    draws' components along the unit direction are 1 and 3 (sample std sqrt 2, standard error sqrt(2)/sqrt(2) = 1),
    so bias z = -2; chi = |mean - exact|^2 / (E|draw - mean|^2 / n) = 4 / (2 / 2) = 4. (The known answers elsewhere
    use an exact gradient of length 1, where the slip below changes nothing.) Fails on: the draws projected on the
    exact gradient itself instead of its unit direction (z divided by |exact|: -0.5)."""
    from daps.gradlab import summarize_draws

    draws = torch.tensor([[1.0, 1.0], [3.0, -1.0]], dtype=torch.float64)
    s = summarize_draws(draws, torch.tensor([4.0, 0.0], dtype=torch.float64))
    assert s["bias_z"] == pytest.approx(-2.0)
    assert s["chi"] == pytest.approx(4.0)
    assert s["norm_ratio"] == pytest.approx(0.5)


# --------------------------------------------------------------------------- config: the borders of the checks


@pytest.mark.parametrize("value, ok", [("0", True), ("1e-4", True), ("-1e-4", False)])
def test_a_negative_weight_decay_is_refused(value, ok):
    """``optim.weight_decay`` is decoupled decay and must be >= 0 (a negative one grows every weight each step).
    Fails on: weight_decay left out of the >= 0 check."""
    overrides = [f"optim.weight_decay={value}"]
    if ok:
        assert parse_overrides(get_preset("mnist", "daps"), overrides).optim.weight_decay == float(value)
    else:
        with pytest.raises(UserError, match="optim.weight_decay"):
            parse_overrides(get_preset("mnist", "daps"), overrides)


def test_method_and_preset_may_be_repeated_with_spaces_around_the_value():
    """``method`` and ``preset`` are chosen with --method / --preset; an override that names the same one again is
    accepted however it is spaced (values are stripped like every other), another one is refused. Fails on: the
    unstripped value compared (``method = daps`` refused for the daps config)."""
    cfg = parse_overrides(get_preset("mnist", "daps"), ["method = daps", "preset= mnist ", "train.steps = 7"])
    assert (cfg.method, cfg.preset, cfg.train.steps) == ("daps", "mnist", 7)
    with pytest.raises(UserError, match="--method"):
        parse_overrides(get_preset("mnist", "daps"), ["method = fsq"])


# --------------------------------------------------------------------------- config_io: data paths and overrides


def test_a_relative_data_dir_is_made_absolute_without_dot_dot(tmp_path, monkeypatch):
    """``absolute_data_dir``: ``sub/../data`` from ``tmp_path`` is ``tmp_path/data`` (what the run's config.json
    records, so that a resume or an eval from another folder, or through another spelling, finds the same data);
    an absolute path without ``..`` is kept as it is. Fails on: the path made absolute but not normalized
    (``.../sub/../data`` written to the config)."""
    from daps.config_io import absolute_data_dir

    monkeypatch.chdir(tmp_path)
    cfg = get_preset("mnist", "daps")
    cfg.data.data_dir = os.path.join("sub", "..", "data")
    assert absolute_data_dir(cfg).data.data_dir == str(tmp_path / "data")
    assert cfg.data.data_dir == os.path.join("sub", "..", "data")  # a copy: the given config is unchanged
    cfg.data.data_dir = str(tmp_path / "data")
    assert absolute_data_dir(cfg) is cfg


# --------------------------------------------------------------------------- precision: the two settings apart


@pytest.fixture
def restore_flags():
    saved = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    yield
    torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = saved


@pytest.mark.parametrize("matmul, conv", [("tf32", "ieee"), ("ieee", "tf32")])
def test_tf32_enabled_reads_matmuls_and_convolutions_each_from_its_own_setting(matmul, conv, restore_flags):
    """Set through torch's newer interface to different values, ``tf32_enabled()`` reports each as set. Fails on:
    the convolution's answer read from the matmul setting."""
    from daps.precision import tf32_enabled

    torch.backends.cuda.matmul.fp32_precision = matmul
    torch.backends.cudnn.conv.fp32_precision = conv
    assert tf32_enabled() == (matmul == "tf32", conv == "tf32")
