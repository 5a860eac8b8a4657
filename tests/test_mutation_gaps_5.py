"""Known answers for behaviour that a mutation sweep of the estimator lab, the configuration and the run's side
outputs (daps/gradlab.py, daps/config.py, daps/config_io.py, daps/optim.py, daps/precision.py, daps/progress.py,
daps/provenance.py, daps/loggers.py, daps/plots.py) found no test guarding, and one bug it found (an exp_decay
schedule the config accepted but could not evaluate). Each test names the slip it fails on; the references are
closed forms, hand-worked cases, round trips and a second model set up by hand."""

from __future__ import annotations

import io
import math
import os
import sys

import pytest
import torch

from daps import get_preset, parse_overrides
from daps.errors import UserError

# --------------------------------------------------------------------------- gradlab: units, draws, threads


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



def test_gradlab_sets_one_thread_for_its_draws_and_gives_the_callers_count_back(monkeypatch):
    """``run_gradlab`` runs its tiny tensors on one thread and restores the caller's thread count afterwards, also
    when the lab fails. Fails on: the count left at 1 (every later torch computation of the caller single-threaded)."""
    import daps.gradlab as gradlab

    seen = []

    def fake_run(*args):
        seen.append(torch.get_num_threads())
        if len(seen) == 2:
            raise RuntimeError("lab failed")
        return {"setup": {}, "rows": []}

    monkeypatch.setattr(gradlab, "_run", fake_run)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        gradlab.run_gradlab(num_draws=1)
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError, match="lab failed"):
            gradlab.run_gradlab(num_draws=1)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert seen == [1, 1]

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



@pytest.mark.parametrize("init", [1e-7, 2e-7, 1e-3])
def test_an_exp_decay_schedule_the_config_accepts_can_be_evaluated(init):
    """Every ``exp_decay`` schedule that passes the config's checks can be evaluated at every step (the training
    loop evaluates ``daps.beta`` at each one): either ``parse_overrides`` refuses the setting as a one-line
    :class:`UserError` naming the key, or ``schedule_value`` returns finite values from ``init`` down to ``end``.
    The schedule itself needs ``init > 2 * float32 eps`` (about 2.4e-7), since it clips ``end`` into
    ``[eps, init - eps]``. Fails on (the original code): ``init`` checked only for ``> 0``, so ``init=1e-7`` passes
    the config and the run dies at its first step with a bare ValueError (a traceback, not a settings error)."""
    from daps.functional import schedule_value

    overrides = ["daps.beta.kind=exp_decay", f"daps.beta.init={init}", f"daps.beta.end={init / 10}"]
    try:
        beta = parse_overrides(get_preset("mnist", "daps"), overrides).daps.beta
    except UserError as err:
        assert "daps.beta.init" in str(err)
        return
    values = [schedule_value(beta.kind, step, beta.init, beta.end, 100, beta.end_pct) for step in (0, 50, 100)]
    assert all(math.isfinite(v) and 0 < v <= init for v in values)
    assert values[0] == init


@pytest.mark.parametrize("seed, ok", [(0, True), (-1, True), (2**53 - 1, True), (2**53, False), (True, False),
                                      (False, False), (1.0, False)])
def test_a_seed_is_an_integer_below_2_to_the_53_and_never_a_boolean(seed, ok):
    """``check_seed`` (the prior's and the robot policy's settings, ``--seed``): integers of magnitude below 2^53;
    a bool (an int to Python) or a float is refused, naming the key. Fails on: bools let through as 0 and 1."""
    from daps.config import check_seed

    if ok:
        check_seed(seed, "seed")
    else:
        with pytest.raises(UserError, match="seed must be an integer"):
            check_seed(seed, "seed")


@pytest.mark.parametrize("shape, ok", [("1,4,4", True), ("3,8,8", True), ("1,4,4,1", False), ("4,4", False)])
def test_an_image_shape_is_exactly_three_sizes(shape, ok):
    """``data.image_shape`` is (C, H, W): three positive sizes, no more and no fewer. Fails on: only too few sizes
    refused (a fourth size accepted, the run failing later inside the networks)."""
    overrides = [f"data.image_shape={shape}"]
    if ok:
        cfg = parse_overrides(get_preset("mnist", "daps"), overrides)
        assert cfg.data.image_shape == tuple(int(n) for n in shape.split(","))
    else:
        with pytest.raises(UserError, match="data.image_shape must be three positive sizes"):
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



@pytest.mark.parametrize("item", ["daps.num_samples=four", "fsq.levels=8,x", "relaxed.temperature.init=warm"])
def test_a_badly_typed_value_of_any_methods_setting_is_refused_up_front(item):
    """``check_overrides_used`` (``compare``, ``gradlab``): a value of the wrong type for a method's own setting is
    refused, naming the key, even where that method is not among those run (the override would otherwise be given
    to no config and silently dropped); the same keys with well-typed values pass. Fails on: only the key checked,
    not its value."""
    from daps.config_io import check_overrides_used

    key = item.partition("=")[0]
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        check_overrides_used([item])
    check_overrides_used(["daps.num_samples=4", "fsq.levels=8,5", "relaxed.temperature.init=2.0"])

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



# --------------------------------------------------------------------------- progress: a resumed run's bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_resumed_runs_bar_starts_at_its_first_step(monkeypatch):
    """``progress_bar(10, ..., initial=4)`` (a run resumed at step 4 of 10) counts from 4: after one more step the
    bar shows 5/10. Fails on: ``initial`` not handed to tqdm (the bar shows 1/10 and never reaches the total)."""
    from daps.progress import progress_bar

    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with progress_bar(10, "training", "step", initial=4) as bar:
        bar.update(1)
        bar.refresh()
        assert bar.n == 5
    assert "5/10" in terminal.getvalue() and "1/10" not in terminal.getvalue()
