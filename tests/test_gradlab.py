"""The estimator lab: the exact gradient by enumeration, and the statistics that call an estimator
unbiased or biased."""

from __future__ import annotations

import json

import pytest
import torch

from daps.gradlab import Estimator, _build, _constant_schedules, exact_gradient, run_gradlab, summarize_draws

pytestmark = pytest.mark.usefixtures("offline")


@pytest.mark.parametrize("num_tokens, vocab_size", [(2, 4), (3, 3), (1, 5)])
def test_exact_gradient_matches_finite_differences(num_tokens, vocab_size):
    beta = 0.5
    model = _build("daps", _constant_schedules(beta, 1.0, num_tokens, vocab_size), seed=3)
    assert (model.encoder.num_tokens, model.encoder.vocab_size) == (num_tokens, vocab_size)
    x = (torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    grad, objective = exact_gradient(model, x, beta)
    params = list(model.encoder.parameters())
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        direction = [torch.randn(p.shape, generator=g) for p in params]
        norm = torch.cat([d.flatten() for d in direction]).norm()
        direction = [d / norm for d in direction]  # a unit step in parameter space
        eps = 1e-2
        values = []
        for sign in (1, -1):
            with torch.no_grad():
                for p, d in zip(params, direction):
                    p.add_(sign * eps * d)
            values.append(exact_gradient(model, x, beta)[1])
            with torch.no_grad():
                for p, d in zip(params, direction):
                    p.sub_(sign * eps * d)
        numeric = -(values[0] - values[1]) / (2 * eps)  # the gradient is of -J
        analytic = float(grad @ torch.cat([d.flatten() for d in direction]).double())
        assert analytic == pytest.approx(numeric, rel=2e-2, abs=1e-3)
    # The enumerated q is a distribution over the V^T codes of each input.
    import itertools

    codes = torch.tensor(list(itertools.product(range(vocab_size), repeat=num_tokens)))
    log_q = model.encoder.log_prob(x, codes[:, None].expand(-1, 3, -1)).sum(-1)
    torch.testing.assert_close(log_q.exp().sum(0), torch.ones(3), atol=1e-5, rtol=0)
    assert objective < 0


def test_summary_statistics_on_synthetic_draws():
    exact = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    unbiased = exact + torch.randn(4000, 3, generator=g, dtype=torch.float64)
    biased = (
        0.5 * exact
        + torch.tensor([0.0, 0.5, 0.0], dtype=torch.float64)
        + 0.1 * torch.randn(4000, 3, generator=g, dtype=torch.float64)
    )
    s = summarize_draws(unbiased, exact)
    assert abs(s["bias_z"]) < 4 and 0.2 < s["chi"] < 4 and s["cos_mean_exact"] > 0.99
    b = summarize_draws(biased, exact)
    assert abs(b["bias_z"]) > 50 and b["chi"] > 100 and b["cos_mean_exact"] == pytest.approx(0.5**0.5, abs=0.01)


def test_the_unbiased_snr_removes_the_noise_of_the_mean():
    """|mean|^2 overstates |E draw|^2 by trace(Cov) / n: over many repetitions of 50 draws with a known SNR, the
    plain SNR sits well above it and the unbiased one on it (the same draws; the raw one is what the lab tabled
    before this statistic existed)."""
    import statistics

    g = torch.Generator().manual_seed(1)
    mu, exact = torch.tensor([0.3, 0.0, 0.0], dtype=torch.float64), torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    true_snr = 0.09 / 3  # |mu|^2 / trace(I_3)
    stats = [summarize_draws(mu + torch.randn(50, 3, generator=g, dtype=torch.float64), exact) for _ in range(2000)]
    unbiased, raw = [s["snr_unbiased"] for s in stats], [s["snr"] for s in stats]
    se = statistics.stdev(unbiased) / len(unbiased) ** 0.5
    assert abs(statistics.fmean(unbiased) - true_snr) < 4 * se
    assert statistics.fmean(raw) > true_snr + 0.015  # by about trace(Cov) / n / trace(Cov) = 1 / 50


def test_reinforce_loo_is_unbiased_and_the_biased_estimators_are_reported():
    estimators = [
        Estimator("reinforce-loo", "reinforce", ("reinforce.num_samples=8",)),
        Estimator("gumbel-st", "gumbel", ()),
        Estimator("daps", "daps", ("daps.num_samples=8", "daps.init_eta=1.0")),
    ]
    result = run_gradlab(estimators, num_draws=400, pretrain_steps=50, seed=0)
    rows = {r["estimator"]: r for r in result["rows"]}
    assert set(rows) == {"reinforce-loo", "gumbel-st", "daps"}
    r = rows["reinforce-loo"]
    assert abs(r["bias_z"]) < 4 and r["chi"] < 4 and r["cos_mean_exact"] > 0.8, r
    # The same statistics flag DAPS's step as not an unbiased gradient estimate (its scale is ~1/(eta+beta)).
    assert abs(rows["daps"]["bias_z"]) > 4 and rows["daps"]["cos_mean_exact"] > 0.8
    for row in rows.values():
        assert all(v == v for v in row.values() if isinstance(v, float)), row  # no NaN anywhere


# --------------------------------------------------------------------------------------------------
# The report folder: the exists / --overwrite rule of every writer (issue 11, item 7)


@pytest.fixture(scope="module")
def small_result():
    from daps.gradlab import Estimator

    estimators = [Estimator("reinforce-loo", "reinforce", ("reinforce.num_samples=4",))]
    return run_gradlab(estimators, num_draws=4, pretrain_steps=0, seed=0)


def test_report_is_not_silently_replaced(tmp_path, small_result):
    from daps.gradlab import write_report
    from daps.runfolder import OutputFolderError, read_marker

    out = tmp_path / "lab"
    write_report(small_result, out, command="first")
    assert read_marker(out) == "gradlab" and {p.name for p in out.iterdir()} == {
        ".daps", "gradlab.md", "gradlab.json", "gradlab.png"
    }
    from daps.provenance import machine_name, source_revision
    setup = json.loads((out / "gradlab.json").read_text())["setup"]  # where and when it was measured
    assert setup["code"] == source_revision() and setup["machine"] == machine_name() and setup["date"][:2] == "20"
    assert f"Machine: {machine_name()}; code {source_revision()}; 20" in (out / "gradlab.md").read_text()
    with pytest.raises(OutputFolderError, match="already exists; pass --overwrite"):
        write_report(small_result, out, command="second")
    assert "first" in (out / "gradlab.md").read_text()
    write_report(small_result, out, command="second", overwrite=True)
    assert "second" in (out / "gradlab.md").read_text() and not list(out.glob(".*tmp*"))


def test_overwrite_never_replaces_a_foreign_folder(tmp_path, small_result):
    from daps.gradlab import write_report
    from daps.runfolder import OutputFolderError

    out = tmp_path / "mine"
    out.mkdir()
    (out / "gradlab.md").write_text("my notes")
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(OutputFolderError, match="not a daps gradlab folder"):
        write_report(small_result, out, overwrite=True)
    assert (out / "thesis.tex").read_text() == "precious" and (out / "gradlab.md").read_text() == "my notes"
    notes = tmp_path / "notes"  # a user's own gradlab.md, alone, is not a report
    notes.mkdir()
    (notes / "gradlab.md").write_text("my notes")
    with pytest.raises(OutputFolderError, match="not a daps gradlab folder"):
        write_report(small_result, notes, overwrite=True)
    assert (notes / "gradlab.md").read_text() == "my notes"
    legacy = tmp_path / "legacy"  # a report written before the marker existed: exactly gradlab's own files
    legacy.mkdir()
    for name in ("gradlab.md", "gradlab.json", "gradlab.png"):
        (legacy / name).write_text("old report")
    write_report(small_result, legacy, overwrite=True)
    assert "Estimator lab" in (legacy / "gradlab.md").read_text()


def test_cli_refuses_an_existing_out_before_drawing(tmp_path, capsys, monkeypatch):
    import daps.gradlab
    from daps.cli import main
    from daps.runfolder import write_marker

    out = tmp_path / "lab"
    out.mkdir()
    (out / "gradlab.md").write_text("old report")
    monkeypatch.setattr(daps.gradlab, "run_gradlab", lambda *a, **k: pytest.fail("drew before checking --out"))
    assert main(["gradlab", "--out", str(out), "--draws", "4", "--pretrain-steps", "0"]) == 2
    err = capsys.readouterr().err.strip()  # unmarked: a user's folder, which --overwrite would not replace either
    assert len(err.splitlines()) == 1 and str(out) in err and "not a daps gradlab folder" in err
    write_marker(out, "gradlab")  # an earlier report: --overwrite is the way
    assert main(["gradlab", "--out", str(out), "--draws", "4", "--pretrain-steps", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(out) in err and "pass --overwrite" in err
    assert (out / "gradlab.md").read_text() == "old report"
    assert main(["gradlab", "--out", str(tmp_path), "--overwrite", "--draws", "4"]) == 2  # not a gradlab folder
    assert "not a daps gradlab folder" in capsys.readouterr().err


def test_code_sizes_that_cannot_be_enumerated_are_one_line_before_any_draw(tmp_path, capsys, monkeypatch):
    import daps.gradlab
    from daps.cli import main

    monkeypatch.setattr(daps.gradlab, "run_gradlab", lambda *a, **k: pytest.fail("drew before checking the size"))
    for size, words in ((("--num-tokens", "8", "--vocab-size", "4"), "4^8 codes per input is too many"),
                        (("--num-tokens", "100000000", "--vocab-size", "3"), "is too many"),  # at once, not V ** T
                        (("--num-tokens", "0"), "--num-tokens must be >= 1"), (("--vocab-size", "1"), ">= 2")):
        assert main(["gradlab", *size, "--out", str(tmp_path / "lab")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
    assert not (tmp_path / "lab").exists()


def test_the_dimension_sweep_writes_its_tables_and_resumes_only_the_same_settings(tmp_path, capsys, load_benchmark):
    """``benchmarks/gradlab_dims.py`` at toy sizes: every (T, V, seed) run in results.json, a table per statistic
    with a column per grid entry, the figure; ``--resume`` keeps the runs and refuses other settings."""
    import json

    module = load_benchmark("gradlab_dims")
    out = tmp_path / "dims"
    args = ["--grid", "1x3,2x2", "--seeds", "0", "--draws", "3", "--pretrain-steps", "1", "--out", str(out)]
    assert module.main(args) == 0
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert set(runs) == {"T1-V3-seed0", "T2-V2-seed0"}
    assert (runs["T2-V2-seed0"]["setup"]["num_tokens"], runs["T2-V2-seed0"]["setup"]["vocab_size"]) == (2, 2)
    table = (out / "results.md").read_text()
    assert table.count("| estimator | 1x3 (3) | 2x2 (4) |") == 3 and (out / "results.png").stat().st_size > 0
    assert "| parameters |" in table and "one value per seed" in table
    capsys.readouterr()
    before = (out / "results.json").read_text()
    refusals = [
        (args, "exists; pass --resume"),  # an existing result without --resume or --overwrite
        ([*args[:-2], "--draws", "4", "--out", str(out), "--resume"], "other settings"),
        (["--grid", "2y4", "--out", str(tmp_path / "x")], "entries are TxV"),
        (["--grid", "2x4", "--num-samples", "1", "--out", str(tmp_path / "x")], "--num-samples must be >= 2"),
        (["--grid", "2x4,2x4", "--out", str(tmp_path / "x")], "lists an entry twice"),
    ]
    for argv, words in refusals:
        assert module.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], (argv, err)
    assert (out / "results.json").read_text() == before and not (tmp_path / "x").exists()
    assert module.main([*args, "--resume"]) == 0  # nothing to redo
    assert json.loads((out / "results.json").read_text())["runs"] == json.loads(before)["runs"]
    (out / "results.json").write_text("{")  # damaged
    assert module.main([*args, "--resume"]) == 2
    assert "is damaged" in capsys.readouterr().err



def test_each_estimator_gets_draws_of_its_own():
    """Two estimators configured alike are two independent samples of one estimator: their draws (so their
    statistics) differ, as the two-sample z-score of ``compare_to`` assumes. Fails on: every estimator drawing from
    the same seed (identical draws, correlated comparisons)."""
    same = ("reinforce.num_samples=4",)
    result = run_gradlab([Estimator("a", "reinforce", same), Estimator("b", "reinforce", same)],
                         num_draws=8, pretrain_steps=0, seed=0)
    a, b = result["rows"]
    assert a["snr"] != b["snr"] and a["bias_z"] != b["bias_z"]


def test_ppo_draws_start_from_old_equal_to_new():
    """The lab loads the shared encoder into PPO, whose old encoder (theta_old, not among the shared weights) is
    still its own initialization: a first call brings theta_old to theta, so the first draw is already a draw of
    the "old = new" estimator, the same as any later one with the same seed. Fails on: the warm-up call left out
    (the first draw's ratio and KL(old || new) are of the initial old encoder)."""
    import torch

    from daps.gradlab import _build, _constant_schedules, estimator_draws

    common = _constant_schedules(0.5, 1.0)
    x = (torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    reference = _build("daps", common, 0)
    with torch.no_grad():
        for p in reference.encoder.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))  # away from the init
    shared = {k: v for k, v in reference.state_dict().items() if k.startswith(("encoder.", "decoder."))}
    model, synced = _build("ppo", common, 0), _build("ppo", common, 0)
    for m in (model, synced):
        m.load_state_dict(shared, strict=False)
    synced.sync_old_encoder()  # old = new by construction
    first = estimator_draws(model, x, 1, seed=7)
    again = estimator_draws(model, x, 1, seed=7)
    assert torch.allclose(first, again, rtol=1e-4, atol=1e-4)  # float32 noise ~1e-6; stale old: ~10
    # and the reference: draws with theta_old synced by hand (a lab drawing in eval mode, where PPO does not sync
    # its old encoder, draws with the stale one every time: equal to each other, not to these)
    torch.testing.assert_close(estimator_draws(model, x, 2, seed=7), estimator_draws(synced, x, 2, seed=7),
                               rtol=1e-4, atol=1e-4)
