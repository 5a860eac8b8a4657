"""Known answers for behaviour that a sixth mutation sweep found no test guarding: compare's decision to reuse or
resume a run and the cells of its table, the estimator lab's estimator list, report and resampled arms, the codes
file's header and config hash, evaluate's SSIM edge, code statistics, log q and train/eval state, the FID statistics'
image count, the prior's scores and reference points, the robot's window velocity, velocity schedule and clamping
messages, and the planner's border statistics, window count, previous-codes context, velocity ranges and blending of
whole windows. Each test names the plausible slip it fails on (each checked against its mutant)."""

from __future__ import annotations

import json
import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch


def _md_cells(line: str) -> list[str]:
    """The cells of a Markdown table row (``\\|`` is an escaped bar inside a cell)."""
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


# --------------------------------------------------------------------------------------------------
# compare: reuse or resume, and the table's cells


def test_a_matching_run_is_reused_only_when_its_summary_is_of_the_full_budget(tmp_path):
    """A run folder with this comparison's config is reused when its ``summary.json`` is of step ``--steps`` and
    resumed otherwise (a summary of another step is not a finished run of this budget). Fails on: any readable
    summary taken as finished."""
    from daps.checkpoint import write_config
    from daps.compare import check_runs, plan_runs
    from daps.runfolder import write_marker

    (run,) = plan_runs("mnist", ["daps"], 10, [0], tmp_path, [])
    run.out_dir.mkdir(parents=True)
    write_marker(run.out_dir, "train")
    write_config(run.out_dir / "config.json", run.cfg)
    (run.out_dir / "summary.json").write_text(json.dumps({"step": 5}))
    check_runs([run])
    assert run.action == "resume"
    (run.out_dir / "summary.json").write_text(json.dumps({"step": 10}))
    check_runs([run])
    assert run.action == "reuse"


def test_results_table_cells_by_hand(tmp_path):
    """One arm, hand-made numbers: bits as an integer, ``mean ± se`` with each column's documented precision (L2
    and SSIM to 3 decimals: per-pixel distances and SSIM live in [0, 1], 2 decimals would hide their differences),
    '—' for a missing quantity, and the CSV columns ``key, key_se`` per quantity. Fails on: L2 printed to 2
    decimals, or the standard error column of another key."""
    from daps.compare import COLUMNS, write_tables

    row = {"method": "daps", "settings": "", "seeds": 2, "bits": 32.0, "steps_per_s": 12.345}
    for _, key, _ in COLUMNS:
        row[key], row[key + "_se"] = float("nan"), float("nan")
    row.update(l2=0.12345, l2_se=0.01234, ssim=0.9, ssim_se=0.05, log_p=-80.126, log_p_se=1.5)
    write_tables([row], tmp_path, "# header")
    lines = (tmp_path / "results.md").read_text().splitlines()
    header, cells = _md_cells(lines[2]), _md_cells(next(ln for ln in lines if ln.startswith("| daps")))
    got = dict(zip(header, cells))
    assert got["bits"] == "32" and got["L2"] == "0.123 ± 0.012" and got["SSIM"] == "0.900 ± 0.050"
    assert got["log p(x\\|z)"] == "-80.13 ± 1.50" and got["FID"] == "—" and got["train steps/s"] == "12.35"
    import csv

    (record,) = csv.DictReader((tmp_path / "results.csv").open())
    assert float(record["l2"]) == 0.12345 and float(record["l2_se"]) == 0.01234
    assert float(record["ssim_se"]) == 0.05 and record["seeds"] == "2"


# --------------------------------------------------------------------------------------------------
# gradlab: the estimator list, the report's columns, the resampled arms


def test_default_estimators_are_configured_as_they_are_named():
    """Each DAPS row's name states its K and eta; its overrides must set exactly those (the second row is the
    10 x eta one). Fails on: the second DAPS row configured with eta instead of 10 eta (two identical rows under
    different names)."""
    from daps.gradlab import default_estimators

    rows = [e for e in default_estimators(8, 0.5, 1.0, 10) if e.method == "daps"]
    assert [e.name for e in rows] == ["daps (K=8, eta=0.5)", "daps (K=8, eta=5)"]
    for e, eta in zip(rows, (0.5, 5.0)):
        settings = dict(o.split("=") for o in e.overrides)
        assert int(settings["daps.num_samples"]) == 8 and float(settings["daps.init_eta"]) == pytest.approx(eta)


def test_resampled_estimators_cover_both_schemes_against_the_full_update():
    """Sizes (2, 4) give four arms, m x {systematic, multinomial}, each compared with the first DAPS row of the
    default list (same K and eta). Fails on: one scheme repeated (two identical arms)."""
    from daps.gradlab import default_estimators, resampled_estimators

    arms = resampled_estimators(8, 1.0, (2, 4))
    settings = [dict(o.split("=") for o in e.overrides) for e in arms]
    assert [(s["daps.resample"], s["daps.resample_scheme"]) for s in settings] == [
        ("2", "systematic"), ("2", "multinomial"), ("4", "systematic"), ("4", "multinomial")]
    assert len({e.name for e in arms}) == 4
    full = next(e.name for e in default_estimators(8, 1.0, 1.0, 10) if e.method == "daps")
    assert all(e.compare_to == full for e in arms)


def test_report_table_puts_each_statistic_in_its_column(tmp_path):
    """A hand-made result with distinct values: the row reads cos +0.900, ratio 1.100, E cos +0.300, SNR 2.5, SNR
    unbiased 2.25, bias z -3.2, chi 7.25 in the header's order. Fails on: bias z and chi swapped, the two SNRs
    swapped."""
    from daps.gradlab import write_report

    setup = {"image_shape": (1, 4, 4), "num_tokens": 2, "vocab_size": 4, "batch_size": 4, "beta": 0.5,
             "temperature": 1.0, "pretrain_steps": 0, "seed": 0, "num_draws": 10, "objective": -3.0,
             "exact_grad_norm": 1.0, "num_params": 5, "torch": "x"}
    row = {"estimator": "e1", "method": "daps", "cos_mean_exact": 0.9, "norm_ratio": 1.1, "mean_cos_draw_exact": 0.3,
           "snr": 2.5, "snr_unbiased": 2.25, "bias_z": -3.2, "chi": 7.25, "num_draws": 10}
    write_report({"setup": setup, "rows": [row]}, tmp_path / "lab")
    lines = (tmp_path / "lab" / "gradlab.md").read_text().splitlines()
    header = _md_cells(next(ln for ln in lines if ln.startswith("| estimator")))
    cells = _md_cells(next(ln for ln in lines if ln.startswith("| e1")))
    got = dict(zip(header, cells))
    assert got["bias z"] == "-3.2" and got["chi"] == "7.25" and got["SNR"] == "2.5" and got["SNR unbiased"] == "2.25"
    assert got["cos(mean, exact)"] == "+0.900" and got["E cos(draw, exact)"] == "+0.300"


# --------------------------------------------------------------------------------------------------
# codes: the config hash and the header of an export


def test_config_hash_is_of_the_sorted_canonical_json():
    """``config_sha256`` is SHA-256 of ``json.dumps(config, sort_keys=True)``: two dicts that differ only in key
    order hash alike, and the hash is the one of the hand-written canonical text. Fails on: unsorted keys (the hash
    of the same config would depend on the order its fields were written)."""
    import hashlib

    from daps.codes import config_sha256

    a = {"b": 1, "a": {"d": [1, 2], "c": "x"}}
    b = {"a": {"c": "x", "d": [1, 2]}, "b": 1}
    canonical = '{"a": {"c": "x", "d": [1, 2]}, "b": 1}'
    assert config_sha256(a) == config_sha256(b) == hashlib.sha256(canonical.encode()).hexdigest()


@pytest.mark.usefixtures("offline")
def test_export_header_records_the_draws_and_the_subset_asked_for(trained_run):
    """Two draws per input from a 10-input subset with seed 5, split test: the header says
    ``samples_per_input`` 2 (= the codes' K), ``max_inputs`` 10 (= N), seed 5 and split test. Fails on: the header
    recording 1 draw or no subset (a reader could not tell how the codes were made)."""
    from daps.codes import export_codes

    codes = export_codes(trained_run, "test", samples_per_input=2, seed=5, max_inputs=10)
    assert tuple(codes.codes.shape[:2]) == (10, 2)
    meta = codes.meta
    assert (meta["samples_per_input"], meta["max_inputs"], meta["seed"], meta["split"]) == (2, 10, 5, "test")


# --------------------------------------------------------------------------------------------------
# evaluate: SSIM's edge, code statistics, log q, the model's mode, the FID statistics' count


class _Stub(torch.nn.Module):
    """A stand-in method: reconstruction = input + ``shift``; fixed ``indices`` and ``log_q`` per image."""

    final_beta = None

    def __init__(self, shift=0.0, indices=None, log_q=None, vocab_size=None):
        super().__init__()
        self.shift, self.indices, self.log_q, self.vocab_size = shift, indices, log_q, vocab_size
        self.seen = 0

    def reconstruct(self, x, generator=None):
        n, s = len(x), self.seen
        self.seen += n
        return SimpleNamespace(
            x_hat=x + self.shift, log_p=torch.zeros(n), kl=None, token_entropy=None,
            log_q=None if self.log_q is None else self.log_q[s : s + n],
            indices=None if self.indices is None else self.indices[s : s + n],
        )


def test_ssim_is_measured_on_images_of_exactly_the_window_size():
    """SSIM's window is 11 x 11, so an 11 x 11 image is measured (a perfect reconstruction: SSIM 1). Fails on:
    ``> 11`` in place of ``>= 11`` (SSIM missing at exactly the window size)."""
    from daps.data import TensorEvalSet
    from daps.metrics import evaluate

    x = torch.rand(3, 1, 11, 11, generator=torch.Generator().manual_seed(0))
    got = evaluate(_Stub(), TensorEvalSet(x, 2))
    assert got["ssim"] == pytest.approx(1.0, abs=1e-6)


def test_code_statistics_and_log_q_by_hand():
    """Four images with codes ``[0,0], [0,1], [0,2], [0,3]`` (V = 4): position entropies 0 and log 4, mean
    log 4 / 2; codes used 4 of 4; perplexity of the pooled tokens (5/8, 1/8, 1/8, 1/8):
    ``exp(-(5/8 log 5/8 + 3/8 log 1/8))``; log q (-1, -2, -3, -6) averages to -3. Fails on: one statistic filed
    under another's key, or log q's sign flipped."""
    from daps.data import TensorEvalSet
    from daps.metrics import evaluate

    indices = torch.tensor([[0, 0], [0, 1], [0, 2], [0, 3]])
    stub = _Stub(indices=indices, log_q=torch.tensor([-1.0, -2.0, -3.0, -6.0]), vocab_size=4)
    got = evaluate(stub, TensorEvalSet(torch.zeros(4, 1, 4, 4), 3))
    assert got["position_code_entropy"] == pytest.approx(math.log(4) / 2)
    assert got["codebook_utilization"] == pytest.approx(1.0)
    p = np.array([5, 1, 1, 1]) / 8
    assert got["code_perplexity"] == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    assert got["log_q"] == pytest.approx(-3.0)


@pytest.mark.parametrize("training", [False, True])
def test_evaluate_gives_the_model_back_in_the_mode_it_found_it(training):
    """``evaluate`` switches to eval mode and back to the caller's mode. Fails on: leaving a model that was in
    eval mode in training mode (dropout switched on behind the caller's back)."""
    from daps.data import TensorEvalSet
    from daps.metrics import evaluate

    stub = _Stub().train(training)
    evaluate(stub, TensorEvalSet(torch.zeros(2, 1, 4, 4), 2))
    assert stub.training is training


class _MeanFeatures(torch.nn.Module):
    """A stand-in FID network: per-channel means and their squares of the preprocessed images (6 features)."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.weight_files = ["/weights/a.pth", "/weights/b.pth"]

    def forward(self, x):
        m = x.mean((2, 3))
        return torch.cat([m, m**2], 1)


def test_fid_statistics_record_the_number_of_images_seen(tmp_path, monkeypatch):
    """All 5 validation images of a class-folder tree (``max_images`` 0: all): the metadata and the npz say 5
    images. Fails on: the requested ``max_images`` (0) written as the count."""
    from PIL import Image

    import daps.nets.inception
    from daps.config import DataConfig
    from daps.metrics.evaluate import dataset_fid_stats
    from daps.metrics.fid import load_fid_stats

    rng = np.random.default_rng(0)
    for split, counts in (("train", (1, 1)), ("val", (3, 2))):
        for c, count in zip("ab", counts):
            (tmp_path / "tree" / split / c).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
                    tmp_path / "tree" / split / c / f"{i}.png")
    monkeypatch.setattr(daps.nets.inception, "load_fid_inception", lambda weights=None, device=None: _MeanFeatures())
    data = DataConfig(name="imagefolder", data_dir=str(tmp_path / "tree"), image_shape=(3, 8, 8), num_workers=0)
    meta = dataset_fid_stats(data, "test", tmp_path / "stats.npz", max_images=0, batch_size=2)
    _, _, num, saved = load_fid_stats(tmp_path / "stats.npz")
    assert meta["num_images"] == 5 and num == 5 and saved["num_images"] == 5
    assert meta["weights"] == saved["weights"] == ["/weights/a.pth", "/weights/b.pth"]  # the files read, by name


# --------------------------------------------------------------------------------------------------
# prior scores


def test_batched_keeps_a_last_chunk_of_one():
    """7 rows in chunks of 3: 3 + 3 + 1, all kept in order. Fails on: the chunk starts stopping one short (the
    last single row dropped)."""
    from daps.prior.scores import batched

    x = torch.arange(7.0)
    assert torch.equal(batched(lambda b: 2 * b, x, 3), 2 * x)


def test_uniform_codes_reach_every_code():
    """V = 3, 600 draws: each code appears about 200 times (binomial sd ~ 12). Fails on: ``randint(V - 1)`` (the
    last code never drawn)."""
    from daps.prior.scores import uniform_codes

    model = SimpleNamespace(vocab_size=3, input_spec=SimpleNamespace(num_tokens=2))
    codes = uniform_codes(model, 300, torch.Generator().manual_seed(0))
    assert codes.shape == (300, 2)
    counts = torch.bincount(codes.flatten(), minlength=3)
    assert counts.tolist() and all(140 < c < 260 for c in counts.tolist()), counts


def test_sample_statistics_count_copies_of_training_codes():
    """Samples ``[1,2], [1,2], [3,4], [9,9]`` against training codes ``[1,2], [9,9]``: 3 distinct of 4 (0.75), 3 of
    4 copied (0.75). Fails on: counting the samples *not* among the training codes (0.25; the existing example has
    2 of 4, where both readings agree)."""
    from daps.prior.scores import sample_statistics

    got = sample_statistics(torch.tensor([[1, 2], [1, 2], [3, 4], [9, 9]]), torch.tensor([[1, 2], [9, 9]]))
    assert got == {"unique_fraction": 0.75, "copied_fraction": 0.75}


class _NearestClass(torch.nn.Module):
    """A stand-in classifier of one-pixel images: predicts the class nearest the pixel value; features (v, v^2)."""

    def __init__(self, classes: int):
        super().__init__()
        self.classes = classes

    def forward(self, b):
        v = b.flatten(1)[:, :1]
        return -(v - torch.arange(self.classes, dtype=v.dtype)) ** 2

    def embed(self, b):
        v = b.flatten(1)[:, :1]
        return torch.cat([v, v**2], 1)


def _toy_judge():
    """A :class:`Judge` over one-pixel images whose value is the class (3 classes, 4 training examples each); the
    tokenizer reconstructs every image as 0 and decodes every code to 0 (class 0)."""
    from daps.prior.scores import Judge, features, stats

    labels = torch.arange(12) % 3
    values = labels.double().view(-1, 1, 1, 1)
    split = SimpleNamespace(labels=labels, raw=lambda idx: values[idx])
    tokenizer = SimpleNamespace(
        vocab_size=4, input_spec=SimpleNamespace(num_tokens=2),
        reconstruct=lambda b, g=None: SimpleNamespace(x_hat=torch.zeros_like(b)),
        decode=lambda codes: torch.zeros(len(codes), 1, 1, 1, dtype=torch.float64),
    )
    judge = object.__new__(Judge)
    judge.tokenizer, judge.classifier, judge.device = tokenizer, _NearestClass(3), "cpu"
    judge.spec = SimpleNamespace(standardize=lambda x: x)
    judge.train = judge.test = split
    judge.real = stats(features(judge.classifier, values))
    judge.num_test = 12
    return judge


def test_reference_points_by_hand():
    """Real examples are classified right; the reconstructions are all 0, i.e. class 0, so ``recon_accuracy`` is
    the share of class 0 among 6 balanced examples, 1/3; the random codes all decode to class 0, so
    ``random_top_class`` = 6 / 6 = 1. Fails on: the accuracy of the real examples reported as the reconstructions'
    (1.0), or the top class's count divided by the number of classes (6)."""
    judge = _toy_judge()
    refs = judge.references(6)
    assert refs["recon_accuracy"] == pytest.approx(1 / 3)
    assert refs["random_top_class"] == pytest.approx(1.0)
    assert refs["real_frechet"] < refs["recon_frechet"]
    # random codes decoded to two classes, 0 for codes starting with 0 or 1 and 2 otherwise: the top class's share,
    # not the mean count per class (which would read 3 / 6 whatever the split)
    judge.tokenizer.decode = lambda codes: (2.0 * (codes[:, :1] >= 2)).double().view(-1, 1, 1, 1)
    g = torch.Generator().manual_seed(0)
    from daps.prior.scores import uniform_codes

    first = uniform_codes(judge.tokenizer, 6, g)[:, 0]  # the codes references() draws with seed 0 after its
    top = max(int((first >= 2).sum()), int((first < 2).sum()))  # reconstructions (which draw nothing here)
    assert judge.references(6)["random_top_class"] == pytest.approx(top / 6)


def test_score_prior_generates_classes_in_turn_and_scores_their_accuracy(monkeypatch):
    """A stand-in generator that decodes to the label it is asked for (code 0 -> image 0 ...): the labels asked for
    are ``0, 1, 2, 0, 1, 2`` and the accuracy is 1. Fails on: the accuracy left out of the scores."""
    import daps.prior.run
    from daps.prior.scores import score_prior

    asked = []

    def generate(model, labels, guidance, temperature, generator, steps):
        asked.append(labels.tolist())
        return labels[:, None].repeat(1, 2)

    monkeypatch.setattr(daps.prior.run, "generate", generate)
    judge = _toy_judge()
    judge.tokenizer.decode = lambda codes: codes[:, :1].double().view(-1, 1, 1, 1)
    out = score_prior(SimpleNamespace(num_classes=3), 1, torch.zeros(1, 2, dtype=torch.long), 6, 1.0, 0, judge)
    assert asked == [[0, 1, 2, 0, 1, 2]]
    assert out["accuracy"] == 1.0 and out["copied_fraction"] == pytest.approx(2 / 6)


# --------------------------------------------------------------------------------------------------
# robot commands


def _poses(xy: np.ndarray, psi: np.ndarray) -> np.ndarray:
    """Poses ``(T, 26)``: pelvis at ``xy`` (T, 2), height 1, heading ``psi`` (T,) as the quaternion
    ``(cos psi/2, 0, 0, sin psi/2)``, joints 0."""
    poses = np.zeros((len(psi), 26))
    poses[:, :2], poses[:, 2] = xy, 1.0
    poses[:, 3], poses[:, 6] = np.cos(psi / 2), np.sin(psi / 2)
    return poses


def test_window_velocity_is_in_the_first_frames_heading_frame():
    """5 frames at 4 fps (1 s): the pelvis moves 2 m along world +x while turning from heading 0 to pi/2; in the
    first frame's heading frame that is (2, 0) m/s forward and left (in the last frame's it would be (0, -2)).
    Fails on: the displacement turned by the last frame's heading."""
    from daps.robot.commands import window_velocity

    psi = np.linspace(0, np.pi / 2, 5)
    xy = np.stack([np.linspace(0, 2, 5), np.zeros(5)], 1)
    v = window_velocity(_poses(xy, psi), 4.0)
    np.testing.assert_allclose(v, [2.0, 0.0, np.pi / 2], atol=1e-12)


def test_window_yaw_rate_counts_turns_past_pi():
    """Heading steps of 0.4 pi over 4 steps at 2 fps (2 s): 1.6 pi turned, 0.8 pi rad/s, although the last heading
    reads -0.4 pi. Fails on: the wrapped end-to-start difference (-0.4 pi in 2 s, a turn the wrong way)."""
    from daps.robot.commands import window_velocity

    psi = np.angle(np.exp(1j * 0.4 * np.pi * np.arange(5)))
    v = window_velocity(_poses(np.zeros((5, 2)), psi), 2.0)
    assert v[2] == pytest.approx(0.8 * np.pi)


def test_velocity_schedule_refuses_two_rows_at_one_time(tmp_path):
    """Rows must have increasing times; two rows at time 0 leave the window's velocity ambiguous and are refused.
    Fails on: non-decreasing times accepted."""
    from daps.errors import UserError
    from daps.robot.commands import read_velocity_schedule

    path = tmp_path / "schedule.txt"
    path.write_text("0 1 0 0\n0 2 0 0\n")
    with pytest.raises(UserError, match="increasing times"):
        read_velocity_schedule(str(path), 2, 1.0)


def test_clamping_names_the_worst_offender():
    """Forward speeds 2 and 5 against a high of 1.5: the message names 5 (the furthest out). Fails on: naming the
    nearest (2)."""
    from daps.robot.commands import clamp_velocity

    velocity = np.array([[2.0, 0.0, 0.0], [5.0, 0.0, 0.0]])
    clamped, notes = clamp_velocity(velocity, np.array([-1.0, -1.0, -1.0]), np.array([1.5, 1.0, 1.0]))
    assert clamped[:, 0].tolist() == [1.5, 1.5]
    assert notes == ["forward_m_s 5 is outside the data's range [-1.00, 1.50]"]


# --------------------------------------------------------------------------------------------------
# robot planning


def test_transition_jumps_by_hand():
    """Windows of 3 frames, 6 frames, one joint moving ``0, 0, 0, 1, 0, 0`` at 2 fps: second differences at frames
    1..4 are 0, 1, -2, 1, times fps^2 = 4; frames 2 and 3 sit either side of the border, so the border mean over
    19 joints is (4 + 8) / 2 / 19 and the within mean (0 + 4) / 2 / 19. Fails on: the wrong frame taken as the
    last of a window."""
    from daps.motion.h1 import JOINTS
    from daps.robot.plan import transition_jumps

    poses = np.zeros((1, 6, 26))
    poses[0, 3, JOINTS.start] = 1.0
    got = transition_jumps(poses, 3, 2.0)
    assert got["border_joint_accel"] == pytest.approx(6 / 19)
    assert got["within_joint_accel"] == pytest.approx(2 / 19)


def _planner(**attrs):
    from daps.robot.plan import Planner

    planner = object.__new__(Planner)
    planner.__dict__.update(attrs)
    return planner


def test_windows_for_rounds_up_but_not_past_an_exact_multiple():
    """Windows of 8 frames at 4 fps are 2 s: 4 s is 2 windows, 4.5 s is 3, 0.1 s is 1. Fails on: floor + 1 (3
    windows for exactly 4 s)."""
    planner = _planner(window=8, fps=4.0)
    assert [planner.windows_for(s) for s in (4.0, 4.5, 0.1)] == [2, 3, 1]


def test_velocity_range_is_the_kinds_own_else_all():
    """The range of a kind with its own entry is that kind's; a kind without one falls back to ``all``. Fails on:
    every kind clamped to the range of all the data."""
    ranges = {"all": {"low": [-1, -1, -1], "high": [1, 1, 1]}, "run": {"low": [0, -2, -3], "high": [4, 2, 3]}}
    planner = _planner(meta={"velocity_ranges": ranges})
    low, high = planner.velocity_range("run")
    assert low.tolist() == [0, -2, -3] and high.tolist() == [4, 2, 3]
    low, high = planner.velocity_range("walk")
    assert low.tolist() == [-1, -1, -1] and high.tolist() == [1, 1, 1]


def test_rollout_conditions_each_window_on_the_previous_windows_codes():
    """The first window gets the start symbol as its previous codes, each later window the codes just generated
    (a stand-in policy returns ``10 k + token`` at window k). Fails on: every window conditioned on the start
    symbol."""
    from daps.motion.features import FEATURE_LAYOUT, NUM_FEATURES

    seen = []

    def generate(labels, v, prev, guidance, temperature, generator):
        seen.append(prev.tolist())
        return torch.full((len(labels), 2), 10 * len(seen)) + torch.arange(2)

    def decode(z):
        f = torch.zeros(len(z), 1, 4, NUM_FEATURES)
        f[..., FEATURE_LAYOUT["root_tilt"]] = torch.tensor([1.0, 0, 0, 0, 1, 0])
        return f

    identity = SimpleNamespace(denormalize=lambda a: a, normalize=lambda a: a)
    planner = _planner(device=torch.device("cpu"), window=4, fps=30.0, stats=identity,
                       policy=SimpleNamespace(num_tokens=2, start_symbol=7, generate=generate),
                       tokenizer=SimpleNamespace(decode=decode))
    out = planner.rollout(torch.tensor([0]), np.zeros((1, 3, 3)))
    assert seen == [[[7, 7]], [[10, 11]], [[20, 21]]]
    assert out.codes.tolist() == [[[10, 11], [20, 21], [30, 31]]]


def test_blending_a_whole_window_moves_every_frame():
    """A ramp 0, 1, 2 in window 0 extrapolates to 3; window 1 (zeros) blended over all 3 frames gets the offset 3
    with weights 1, 2/3, 1/3: 3, 2, 1 (pose columns only; a velocity column stays 0). Fails on: the blend stopping a
    frame short of the window (its last frame untouched)."""
    from daps.motion.features import FEATURE_LAYOUT, NUM_FEATURES
    from daps.robot.plan import blend_borders

    x = np.zeros((1, 2, 3, NUM_FEATURES))
    height = FEATURE_LAYOUT["root_height"].start
    x[0, 0, :, :] = np.arange(3.0)[:, None]
    out = blend_borders(x, 3)
    np.testing.assert_allclose(out[0, 1, :, height], [3.0, 2.0, 1.0])
    assert (out[0, 1, :, FEATURE_LAYOUT["root_velocity"]] == 0).all()
