"""The benchmark suite ``benchmarks/run.py``, run in-process on a tiny configuration: the structure of what it
writes, that every number is usable, and its refusals. No timing thresholds (this machine is shared)."""

from __future__ import annotations

import importlib.util
import json
import math
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"


def _load_script(name: str, path: Path):
    """A benchmark script as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load_script("benchmarks_run", SCRIPT)

TINY = [
    "encoder.width=16", "encoder.num_heads=2", "encoder.vocab_size=16", "encoder.num_tokens=4",
    "decoder.embed_dim=8", "decoder.hidden=16,16", "daps.num_samples=4", "train.batch_size=8",
    "relaxed.num_rao_samples=3", "fsq.levels=4,3", "vae.hidden=32",
]
TINY_DAPS = [o for o in TINY if o.split(".")[0] not in ("relaxed", "fsq", "vae")]  # DAPS's own and shared keys
QUICK = ["--steps-per-window", "1", "--windows", "1", "--warmup", "1", "--threads", "1"]


def strict_json(text: str):
    """json.loads that rejects NaN / Infinity (not valid JSON)."""

    def bad(const):
        raise ValueError(f"non-standard JSON constant {const}")

    return json.loads(text, parse_constant=bad)


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got: {err!r}"
    assert lines[0].startswith("benchmarks/run.py: error: "), lines[0]
    return lines[0]


def test_suite_writes_json_and_markdown(tmp_path, capsys):
    out = tmp_path / "results"
    argv = ["--methods", "daps,vqvae,fsq", *QUICK, "--out", str(out), "--name", "tiny", *TINY]
    assert bench.main(argv) == 0
    table = capsys.readouterr().out
    report = strict_json((out / "tiny.json").read_text())
    markdown = (out / "tiny.md").read_text()

    assert set(report) >= {"created_utc", "command", "code", "machine", "settings", "results", "ratios"}
    assert report["command"].startswith("python benchmarks/run.py --methods daps,vqvae,fsq")
    machine = report["machine"]
    assert machine["cpu"] and machine["torch"] and machine["device"] == "cpu" and machine["cpu_count"] >= 1
    assert report["settings"]["overrides"] == TINY and report["settings"]["isolated"] is True

    results = {r["method"]: r for r in report["results"]}
    assert [r["method"] for r in report["results"]] == ["daps", "vqvae", "fsq"]
    for method, r in results.items():
        assert r["preset"] == "mnist" and r["batch_size"] == 8 and r["torch_threads"] == 1
        assert r["config"]["encoder"]["width"] == 16 and r["config"]["method"] == method  # overrides reached it
        assert all(positive(r["steps_per_s"][key]) for key in ("median", "min", "max")), r["steps_per_s"]
        assert r["steps_per_s"]["min"] <= r["steps_per_s"]["median"] <= r["steps_per_s"]["max"]
        assert positive(r["step_ms"]["median"])
        assert math.isclose(r["step_ms"]["median"] * r["steps_per_s"]["median"], 1000, rel_tol=1e-6)
        assert set(r["phases_ms"]) == {"forward", "backward", "optimizer"}
        assert all(positive(v) for v in r["phases_ms"].values()), r["phases_ms"]
        memory = r["peak_memory"]
        assert isinstance(memory["bytes"], int) and memory["bytes"] >= 0 and memory["kind"].startswith("cpu")
        assert f"| mnist | {method} | 8 |" in markdown and f"| mnist | {method} | 8 |" in table
    # The categorical method gets the sampler breakdown with its K; the quantizers do not.
    assert results["daps"]["num_samples"] == 4
    assert set(results["daps"]["breakdown_ms"]) == {"sampling", "teacher_forced", "decoder", "optimizer"}
    assert all(positive(v) for v in results["daps"]["breakdown_ms"].values())
    assert results["vqvae"]["breakdown_ms"] is None and results["fsq"]["breakdown_ms"] is None

    ratio = report["ratios"]["mnist"]["daps_over_vqvae"]
    assert positive(ratio)
    assert math.isclose(ratio, results["daps"]["step_ms"]["median"] / results["vqvae"]["step_ms"]["median"])
    assert "DAPS step time / VQ-VAE step time" in markdown and "DAPS step time / VQ-VAE step time" in table
    assert "timed one after the other" in markdown and "interleaved rounds" in table  # the ratio's caveat

    # An existing result is never replaced without --overwrite, and the refusal comes before any timing.
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert bench.main(argv) == 2
    assert "--overwrite" in error_line(capsys)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_ratio_says_what_is_missing():
    rows = [{"preset": "mnist", "method": "daps", "step_ms": {"median": 100.0}}]
    ratios = bench.step_time_ratios(rows, ["mnist", "other"])
    assert ratios["mnist"]["daps_over_vqvae"] is None and ratios["mnist"]["note"] == "vqvae not in this run"
    assert ratios["other"]["note"] == "daps and vqvae not in this run"


@pytest.mark.parametrize(
    "args, words",
    [
        (["--presets", "nope"], "unknown preset 'nope'"),
        (["--methods", "daps,nope"], "unknown method 'nope'"),
        (["encoder.width=wide"], "encoder.width"),
        (["no.such.key=1"], "unknown config key"),
        (["--device", "tpu"], "--device"),
        (["--windows", "0"], "--windows"),
    ],
)
def test_user_errors_print_one_line_and_exit_2(tmp_path, capsys, args, words):
    assert bench.main([*args, "--out", str(tmp_path / "results")]) == 2
    assert words in error_line(capsys)
    assert not (tmp_path / "results").exists()


def test_precision_and_compile_overrides_are_honoured(tmp_path, monkeypatch):
    """``train.precision`` and ``train.compile`` change what is timed, as in ``daps train`` (they were ignored)."""
    cfg = bench.parse_overrides(bench.get_preset("mnist"), [*TINY_DAPS, "train.precision=bfloat16"])
    model, optimizers, x, generator = bench.setup(cfg, bench.torch.device("cpu"))
    dtypes = []
    model.decoder.register_forward_hook(lambda mod, inp, out: dtypes.append(out.dtype))
    bench.step_once(model, optimizers, x, 0, generator, cfg.train.precision)
    assert dtypes and all(d == bench.torch.bfloat16 for d in dtypes), dtypes  # the forward ran under bf16 autocast
    dtypes.clear()
    bench.step_once(model, optimizers, x, 1, generator)
    assert dtypes and all(d == bench.torch.float32 for d in dtypes), dtypes

    # train.compile: the sampler's static step and the DAPS objective are wrapped by torch.compile, as train() does.
    compiled = object()  # what the stand-in torch.compile returns
    monkeypatch.setattr(bench.torch, "compile", lambda fn, **kw: compiled)
    for compile_flag in (False, True):
        overrides = [*TINY_DAPS, f"train.compile={str(compile_flag).lower()}"]
        cfg = bench.parse_overrides(bench.get_preset("mnist"), overrides)
        model, *_ = bench.setup(cfg, bench.torch.device("cpu"))
        assert (model.encoder._static_step_fn is compiled) == compile_flag
        assert (model._objective_fn is compiled) == compile_flag

    # The suite's rows say which were used, and the markdown names them (compile stands in as the identity:
    # real compilation takes minutes here; tests/test_compile.py covers it).
    monkeypatch.setattr(bench.torch, "compile", lambda fn, **kw: fn)
    out = tmp_path / "results"
    argv = ["--methods", "daps", *QUICK, "--in-process", "--out", str(out), "--name", "bf16", *TINY_DAPS,
            "train.precision=bfloat16", "train.compile=true"]
    assert bench.main(argv) == 0
    (row,) = strict_json((out / "bf16.json").read_text())["results"]
    assert row["precision"] == "bfloat16" and row["compile"] is True and len(row["warmup_s"]) == 1
    assert "train.precision=bfloat16, train.compile=true" in (out / "bf16.md").read_text()


def test_gpu_check_runs_every_section_in_smoke_mode(tmp_path):
    """``benchmarks/gpu_check.py --smoke``: the one command a lent GPU runs first, here at toy sizes on the CPU, so a
    mistake in the script is found before it costs a GPU call. Every section must end ``ok``."""
    import os
    import subprocess
    import sys

    data = os.environ.get("DAPS_DATA_DIR")
    if not data or not (Path(data) / "mnist").exists():
        pytest.skip("needs DAPS_DATA_DIR with mnist/ (its reproduction section trains on it)")
    out = tmp_path / "check"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, str(SCRIPT.parent / "gpu_check.py"), "--out", str(out), "--budget", "400",
                           "--smoke", "--data", data], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert {s["name"]: s["status"] for s in report["sections"] if s["status"] != "ok"} == {}
    assert {"env", "optimizer-step", "kernels", "suite-mnist", "mnist-daps"} <= {s["name"] for s in report["sections"]}
    assert (out / "mnist-daps-run" / "config.json").exists()


def test_gpu_check_splits_the_cuda_tests_into_graph_and_other_sections():
    """``graph-tests`` (whose result decides whether the MNIST reproduction runs as one CUDA graph) selects exactly
    the tests of ``train.cuda_graph``, ``gpu-tests`` every other CUDA test: none twice, none left out (a bare ``-k
    graph`` also matched the compiled sampler's test, "...cuda_graphs...")."""
    import subprocess
    import sys

    gpu_check = _load_script("gpu_check", SCRIPT.parent / "gpu_check.py")
    tests = SCRIPT.parent.parent / "tests" / "test_gpu.py"

    def collected(*k: str) -> set[str]:
        proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                               "-m", "gpu", str(tests), *k], capture_output=True, text=True, timeout=120)
        return {line.split("::", 1)[1] for line in proc.stdout.splitlines() if "::" in line}

    graph, other, every = collected("-k", gpu_check.GRAPH_TESTS), collected("-k", f"not ({gpu_check.GRAPH_TESTS})"), \
        collected()
    assert {name.split("[")[0] for name in graph} == {
        "test_graphed_step_trains_as_the_eager_step", "test_cuda_graph_run_resumes_to_the_uninterrupted_run"}
    assert "test_compiled_sampler_runs_under_cuda_graphs_and_gives_the_eager_codes" in other
    assert graph | other == every and not graph & other and len(every) >= 10


def test_gpu_check_section_that_cannot_start_fails_alone(tmp_path):
    """A section whose program is missing (``nvidia-smi`` on an image without it) is recorded as failed and the
    check goes on, instead of ending the whole call with a traceback."""
    import sys

    gpu_check = _load_script("gpu_check", SCRIPT.parent / "gpu_check.py")
    run = gpu_check.Check(tmp_path, budget=60, smoke=True)
    missing = run.run("missing", [str(tmp_path / "no-such-program")], 10)
    assert missing["status"] == "failed (could not start)"
    assert "no-such-program" in (tmp_path / "logs" / "missing.log").read_text()
    assert run.run("next", [sys.executable, "-c", "print('ok')"], 10)["status"] == "ok"
    report = json.loads((tmp_path / "report.json").read_text())
    assert [s["name"] for s in report["sections"]] == ["missing", "next"]


def test_gpu_check_skips_the_sections_named_and_refuses_to_skip_the_ones_that_always_run(tmp_path, capsys):
    """``--skip suite-*,optimizer-step``: those sections are recorded as skipped without running (their command
    would fail here), the others run; ``env`` and ``mnist-daps`` cannot be skipped (exit 2, nothing written)."""
    import sys

    gpu_check = _load_script("gpu_check", SCRIPT.parent / "gpu_check.py")
    run = gpu_check.Check(tmp_path, budget=60, smoke=True, skip=("suite-*", "optimizer-step"))
    failing = [sys.executable, "-c", "raise SystemExit(1)"]
    assert run.run("suite-mnist", failing, 10)["status"] == "skipped (--skip)"
    assert run.run("optimizer-step", failing, 10)["status"] == "skipped (--skip)"
    assert run.run("graph-mnist", failing, 10)["status"] == "failed (exit 1)"
    assert not (tmp_path / "logs" / "suite-mnist.log").exists()
    for name in ("env", "mnist-*"):
        assert gpu_check.main(["--out", str(tmp_path / "refused"), "--smoke", "--skip", name]) == 2
        assert "names a section that always runs" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()


def test_gpu_check_reads_the_mnist_run_that_its_time_limit_cut_off(tmp_path):
    """The MNIST reproduction is the section the check stops at its time limit, so its ``metrics.jsonl`` may end in
    half a line: the summary reads the rows before it instead of ending the report in a traceback."""
    gpu_check = _load_script("gpu_check", SCRIPT.parent / "gpu_check.py")
    rows = [{"split": "train", "step": s, "steps_per_s": 100.0 + s} for s in (50, 100)]
    rows.append({"split": "val", "step": 100, "log_p": -90.5})
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (tmp_path / "metrics.jsonl").write_text(text + '{"split": "train", "step": 150, "steps_')
    summary = gpu_check.mnist_summary(tmp_path)
    assert "last step logged: 100" in summary and "steps/s, median of the last 2 log rows" in summary
    assert '"log_p": -90.5' in summary


def test_attention_benchmark_writes_its_report_and_keeps_an_existing_one(tmp_path, monkeypatch):
    """``benchmarks/attention.py`` on tiny cases: both tables, the path daps picks as ``daps.nets.layers`` decides
    it, and an existing report refused without ``--overwrite`` (exit 2), untouched."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    attention = _load_script("benchmarks_attention", SCRIPT.parent / "attention.py")
    monkeypatch.setattr(attention, "ATTENTION_CASES", [("tiny self", (2, 2, 8, 4), (2, 2, 8, 4), True),
                                                       ("tiny long", (1, 1, 4, 4), (1, 1, 129, 4), False)])
    monkeypatch.setattr(attention, "SOFTMAX_ROWS", [4, 16])
    out = tmp_path / "attention.json"
    assert attention.main(["--rounds", "2", "--repeats", "1", "--threads", "0", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    picks = {(r["case"], r["dtype"]): r["daps_picks"] for r in report["attention"]}
    assert picks == {("tiny self", "float32"): "fused", ("tiny self", "bfloat16"): "plain",
                     ("tiny long", "float32"): "fused", ("tiny long", "bfloat16"): "fused"}
    assert [(r["length"], r["daps_picks"]) for r in report["softmax"]] == [(4, "elementwise"), (16, "torch")]
    assert all(len(r["fused_ms"]) == 2 and r["plain_over_fused"] > 0 for r in report["attention"])
    assert "| tiny self |" in out.with_suffix(".md").read_text() and report["machine"]["cpu_capability"]
    before = out.read_bytes()
    with pytest.raises(SystemExit) as refused:
        attention.main(["--out", str(out)])
    assert refused.value.code == 2 and out.read_bytes() == before


def test_attention_benchmark_one_query_table(tmp_path, monkeypatch):
    """``benchmarks/attention.py --one-query`` on tiny shapes: only the one-query table, a ratio per length."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    attention = _load_script("benchmarks_attention", SCRIPT.parent / "attention.py")
    monkeypatch.setattr(attention, "ONE_QUERY_ROWS", (3, 2, 4))
    monkeypatch.setattr(attention, "ONE_QUERY_LENGTHS", [1, 5])
    out = tmp_path / "one-query.json"
    assert attention.main(["--one-query", "--rounds", "2", "--repeats", "1", "--threads", "0", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report) >= {"one_query", "machine", "code", "command"} and "attention" not in report
    assert [r["length"] for r in report["one_query"]] == [1, 5]
    assert all(len(r["daps_ms"]) == 2 and r["daps_over_autograd"] > 0 for r in report["one_query"])
    assert "| 5 |" in out.with_suffix(".md").read_text()


def test_against_revision_times_both_trees_and_leaves_the_repository_as_it_was(tmp_path):
    """``benchmarks/against_revision.py`` on a tiny config against HEAD: one round, both trees timed, the report
    written; the revision is exported with ``git archive``, so the repository's worktrees are the same after (a
    ``git worktree`` that a killed run would leave registered is not used); a missing commit is refused (exit 2).
    Fails on: the old worktree code (an extra worktree while it runs, one left behind on a kill)."""
    import subprocess

    against = _load_script("benchmarks_against_revision", SCRIPT.parent / "against_revision.py")
    repo = SCRIPT.parent.parent
    if not (repo / ".git").exists():
        pytest.skip("needs the git checkout this test file lives in")

    def worktrees() -> str:
        return subprocess.run(["git", "-C", str(repo), "worktree", "list", "--porcelain"], capture_output=True,
                              text=True, check=True).stdout

    before = worktrees()
    seen = []  # (tree has the package, the repository's worktrees) at each timing
    real_bench = against.bench

    def bench_and_look(tree, args, out):
        seen.append(((tree / "daps" / "__init__.py").exists(), worktrees()))
        return real_bench(tree, args, out)

    against.bench = bench_and_look
    out = tmp_path / "against.json"
    args = ["--revision", "HEAD", "--rounds", "1", "--steps", "1", "--warmup", "0", "--out", str(out), *TINY_DAPS]
    assert against.main(args) == 0
    assert seen == [(True, before), (True, before)] and worktrees() == before
    report = json.loads(out.read_text())
    assert len(report["rounds"]) == 1 and report["rounds"][0]["this"] > 0 and report["rounds"][0]["revision"] > 0
    assert against.main(["--revision", "no-such-commit-xyz", "--out", str(tmp_path / "b.json")]) == 2


def test_profile_step_attributes_the_step_to_operators_and_counts_the_products(tmp_path, monkeypatch):
    """``benchmarks/profile_step.py`` on a tiny DAPS config: operators sorted by their share of the step (shares
    below 1, summing to at most 1), the matrix products' FLOP counted and their rate next to a large matmul's, and
    an existing report refused without ``--overwrite`` (exit 2), untouched."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    profile_step = _load_script("benchmarks_profile_step", SCRIPT.parent / "profile_step.py")
    monkeypatch.setattr(profile_step, "matmul_gflops", lambda threads: 1.0)  # the 2,048^2 product takes seconds
    out = tmp_path / "profile.json"
    report = profile_step.main(["--steps", "1", "--warmup", "1", "--threads", "1", "--top", "5", "--out", str(out),
                                *TINY_DAPS])
    assert strict_json(out.read_text())["code"] == report["code"]
    shares = [op["share"] for op in report["operators"]]
    assert len(shares) == 5 and shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1
    m = report["matmul"]
    assert positive(m["gflop_per_step"]) and positive(m["gflops"]) and 0 < m["share"] < 1
    assert m["large_matmul_gflops"] == 1.0 and "| `aten::" in out.with_suffix(".md").read_text()
    before = out.read_bytes()
    with pytest.raises(SystemExit) as refused:
        profile_step.main(["--out", str(out)])
    assert refused.value.code == 2 and out.read_bytes() == before


def test_profile_step_starts_from_a_run(trained_run, tmp_path, monkeypatch, capsys):
    """``profile_step.py --from RUN`` profiles the run's latest weights (checked: the model's weights when the first
    step starts are the run's) on a batch of its data, says so in the report, and refuses a run of another method
    or no run in one line (exit 2), writing nothing."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    profile_step = _load_script("benchmarks_profile_step_from", SCRIPT.parent / "profile_step.py")
    monkeypatch.setattr(profile_step, "matmul_gflops", lambda threads: 1.0)
    loaded, seen = [], []
    original_load, original_step = profile_step.load_trained, profile_step.step_once
    monkeypatch.setattr(profile_step, "load_trained", lambda *a: loaded.append(original_load(*a)) or loaded[-1])
    monkeypatch.setattr(profile_step, "step_once", lambda model, opt, x, *a: seen.append(
        ({k: v.clone() for k, v in model.state_dict().items()}, x)) or original_step(model, opt, x, *a))
    out = tmp_path / "profile.json"
    common = ["--steps", "1", "--warmup", "1", "--threads", "1", "--top", "3", *TINY_DAPS]
    report = profile_step.main(["--from", str(trained_run), "--out", str(out), *common])
    weights, x = loaded[0]
    first, x_seen = seen[0]
    assert all(torch.equal(first[k], v) for k, v in weights.items()) and x_seen is x and x.shape == (8, 1, 28, 28)
    assert strict_json(out.read_text())["from"] == report["from"] == str(trained_run)
    assert "from the weights of" in out.with_suffix(".md").read_text()
    capsys.readouterr()
    for bad in (["--method", "vqvae", "--from", str(trained_run)], ["--from", str(tmp_path / "none")]):
        with pytest.raises(SystemExit) as refused:
            profile_step.main([*bad, "--out", str(tmp_path / "bad.json"), *common])
        assert refused.value.code == 2 and capsys.readouterr().err.strip().count("\n") == 0
    assert not (tmp_path / "bad.json").exists()


@pytest.mark.parametrize("script", ["prior_table.py", "resample_curves.py"])
def test_long_benchmarks_keep_existing_results_without_overwrite(script, tmp_path):
    """``prior_table.py`` and ``resample_curves.py`` (hours of training) refuse a results folder that holds
    results, before any training, in one line (exit 2), and leave it as it was. Fails on: the folder made with
    ``exist_ok`` and its files replaced at the end."""
    import subprocess
    import sys

    out = tmp_path / "results"
    out.mkdir()
    (out / "results.json").write_text('{"mine": true}')
    done = subprocess.run([sys.executable, str(SCRIPT.parent / script), "--out", str(out), "--work",
                           str(tmp_path / "work")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0
    assert "exists; pass --overwrite" in done.stderr and (out / "results.json").read_text() == '{"mine": true}'
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("method", ["daps", "dapsna", "reinforce"])
def test_step_variants_times_each_variant_in_rounds_and_reports_the_ratios(method, tmp_path, monkeypatch, capsys):
    """``benchmarks/step_variants.py`` on a tiny config: one row per variant (``one-pass`` and the VQ-VAE
    denominator included) with its rounds and its ratio to eager, the run's K read from the method's own settings
    (it said K=1 for DAPS-NA, whose settings section is ``daps``), and its refusals in one line (exit 2): an
    unknown variant, a CUDA-only one on the CPU, an existing report without ``--overwrite`` (left untouched)."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    variants = _load_script("benchmarks_step_variants", SCRIPT.parent / "step_variants.py")
    out = tmp_path / "variants.json"
    args = ["--method", method, "--variants", "eager,one-pass,vqvae", "--rounds", "2", "--steps-per-window", "1",
            "--warmup", "1", "--threads", "1", "--out", str(out),
            *(o.replace("daps.", f"{method}.") if method == "reinforce" else o for o in TINY_DAPS)]
    assert variants.main(args) == 0
    report = strict_json(out.read_text())
    assert report["method"] == method and report["num_samples"] == 4 and report["batch_size"] == 8
    results = report["results"]
    assert list(results) == ["eager", "one-pass", "vqvae"]
    assert results["one-pass"]["overrides"] == ["daps.one_pass=true"]  # as listed; given to the method's section
    assert results["eager"]["relative_to_eager"] == 1.0
    for res in results.values():
        assert len(res["steps_per_s"]["rounds"]) == 2 and positive(res["steps_per_s"]["median"])
        assert positive(res["relative_to_eager"])
    assert f"{method} step at `mnist` (B=8, K=4)" in out.with_suffix(".md").read_text()
    before = out.read_bytes()
    capsys.readouterr()
    for bad in (["--variants", "eager,warp"], ["--variants", "eager,graphed"], []):
        assert variants.main([*bad, "--out", str(out)]) == 2
        assert capsys.readouterr().err.strip().count("\n") == 0
    assert out.read_bytes() == before


def test_step_variants_start_from_a_run_and_say_how_much_its_codes_share(trained_run, tmp_path, monkeypatch, capsys):
    """``--from RUN``: the run's weights in every variant of its method (checked: the eager model's weights are the
    run's before its first step), a batch of its data, and the share of distinct (input, prefix) pairs in the report
    (the first position is always shared: 1/K); a run of another method, or no run, is refused in one line."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    variants = _load_script("benchmarks_step_variants", SCRIPT.parent / "step_variants.py")
    loaded = []
    original = variants.load_trained
    monkeypatch.setattr(variants, "load_trained", lambda *a: loaded.append(original(*a)) or loaded[-1])
    seen = []
    monkeypatch.setattr(variants, "distinct_prefixes", lambda model, x, seed: seen.append(
        {k: v.clone() for k, v in model.state_dict().items()}) or {"fraction": 0.5, "per_position": [0.25, 1.0]})
    out = tmp_path / "from.json"
    common = ["--rounds", "1", "--steps-per-window", "1", "--warmup", "1", "--threads", "1", *TINY_DAPS]
    assert variants.main(["--variants", "eager,whole-pass", "--from", str(trained_run), "--out", str(out),
                          *common]) == 0
    weights, x = loaded[0]
    assert all(torch.equal(seen[0][k], v) for k, v in weights.items()) and x.shape == (8, 1, 28, 28)
    report = strict_json(out.read_text())
    assert report["settings"]["from"] == str(trained_run) and report["distinct_prefixes"]["fraction"] == 0.5
    assert "from the weights of" in out.with_suffix(".md").read_text()
    fractions = original.__globals__["distinct_prefixes"](variants.build_method(
        variants.parse_overrides(variants.get_preset("mnist"), TINY_DAPS), (1, 28, 28)), x, 0)
    assert fractions["per_position"][0] == 0.25 and 0.25 <= fractions["fraction"] <= 1  # K = 4
    capsys.readouterr()
    for bad in (["--method", "vqvae", "--from", str(trained_run)], ["--from", str(tmp_path / "none")]):
        assert variants.main(["--variants", "eager", *bad, "--out", str(tmp_path / "bad.json"), *common]) == 2
        assert capsys.readouterr().err.strip().count("\n") == 0


def test_freed_memory_benchmark_times_both_settings_in_fresh_processes(tmp_path, monkeypatch):
    """``benchmarks/freed_memory.py`` on a small VQ-VAE step: per round one process with malloc's defaults and one
    with freed memory kept (applied there, as the report says), the ratio and peak memory reported; an existing
    report refused without ``--overwrite`` (exit 2), untouched."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    freed = _load_script("benchmarks_freed_memory", SCRIPT.parent / "freed_memory.py")
    out = tmp_path / "freed.json"
    argv = ["--presets", "mnist", "--methods", "vqvae", "--rounds", "2", "--steps", "1", "--warmup", "0",
            "--out", str(out), "train.batch_size=4"]
    assert freed.main(argv) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert (row["preset"], row["method"]) == ("mnist", "vqvae") and len(row["default"]) == len(row["kept"]) == 2
    assert all(not run["kept"] for run in row["default"]) and row["default_over_kept"] > 0
    assert row["applied"] == all(run["kept"] for run in row["kept"]) and row["applied"]  # glibc here
    assert all(run["memory"]["bytes"] > 0 for run in row["default"] + row["kept"])
    assert "| `mnist` | vqvae |" in out.with_suffix(".md").read_text()
    before = out.read_bytes()
    assert freed.main(argv[:-1]) == 2 and out.read_bytes() == before


def test_freed_memory_benchmark_times_a_whole_command(tmp_path, monkeypatch):
    """``--cli``: the daps command run with each flag in fresh processes (a tiny training run on a sequences file,
    repeated with --overwrite), wall time and its own peak memory; a command other than ``daps ...`` refused."""
    from test_data_sequences import TINY, _clip

    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    freed = _load_script("benchmarks_freed_memory", SCRIPT.parent / "freed_memory.py")
    npz = tmp_path / "clips.npz"
    np.savez(npz, **{f"train/t{i}": _clip(100, i) for i in range(3)}, **{"test/v0": _clip(60, 9)})
    command = shlex.join(["daps", "train", "--preset", "lafan1-h1", *TINY, f"data.data_dir={npz}",
                          f"train.out_dir={tmp_path / 'run'}", "--overwrite"])
    out = tmp_path / "cli.json"
    assert freed.main(["--cli", command, "--rounds", "1", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["command"][:2] == ["daps", "train"] and row["default_over_kept"] > 0
    assert all(run["seconds"] > 0 and run["peak_bytes"] > 50 * 2**20 for run in row["default"] + row["kept"])
    assert (tmp_path / "run" / "summary.json").exists()
    with pytest.raises(SystemExit) as refused:
        freed.main(["--cli", "python -c 1", "--out", str(tmp_path / "other.json")])
    assert refused.value.code == 2 and not (tmp_path / "other.json").exists()


def test_kernels_benchmark_counts_a_step_by_phase_and_against_a_revision(tmp_path, capsys):
    """``benchmarks/kernels.py`` on a tiny config: DAPS's forward split into sampling, teacher-forced, memory and
    the rest, which with backward and optimizer add up to the step; per position = sampling / T; VQ-VAE has no
    sampling; ``--revision HEAD`` counts the committed tree in a fresh process (the same counts when the working
    tree's step is HEAD's); an existing report is refused without ``--overwrite`` (exit 2), untouched."""
    kernels = _load_script("benchmarks_kernels", SCRIPT.parent / "kernels.py")
    out = tmp_path / "k"
    args = ["--presets", "mnist", "--methods", "daps,vqvae", "--out", str(out), "--name", "n", *TINY_DAPS]
    assert kernels.main(args) == 0
    report = strict_json((out / "n.json").read_text())
    daps_row, vq = report["rows"]
    assert set(daps_row["forward"]) == {"sampling", "teacher-forced", "memory", "rest"}
    assert daps_row["total"] == sum(daps_row["forward"].values()) + daps_row["backward"] + daps_row["optimizer"]
    assert daps_row["sampling_per_position"] == daps_row["forward"]["sampling"] / 4  # encoder.num_tokens=4
    assert all(positive(daps_row[key]) for key in ("backward", "optimizer", "total"))
    assert "sampling" not in vq["forward"] and vq["sampling_per_position"] is None and positive(vq["total"])
    assert "| mnist | daps |" in (out / "n.md").read_text()
    before = (out / "n.json").read_bytes()
    capsys.readouterr()
    assert kernels.main(args) == 2 and (out / "n.json").read_bytes() == before
    assert "exists" in capsys.readouterr().err
    if not (SCRIPT.parent.parent / ".git").exists():
        return
    assert kernels.main(["--presets", "mnist", "--methods", "vqvae", "--out", str(out), "--name", "r",
                         "--revision", "HEAD", *TINY_DAPS]) == 0
    against = strict_json((out / "r.json").read_text())
    assert len(against["revision"]) == 40 and against["revision_rows"][0]["method"] == "vqvae"
    assert positive(against["revision_rows"][0]["total"]) and " -> " in (out / "r.md").read_text()


def test_same_values_finds_equal_trees_equal_and_a_changed_value_changed(tmp_path, monkeypatch, capsys):
    """``benchmarks/same_values.py`` against HEAD on a tiny config: with this checkout's step unchanged every
    quantity is ``equal`` (exit 0); with one parameter perturbed after the steps (this process only; the revision
    runs in its own) the report names the difference (exit 1); an existing report is kept without ``--overwrite``
    (exit 2). Fails on: a comparison that reads both sides from one tree, or ``torch.equal`` replaced by closeness."""
    if not (SCRIPT.parent.parent / ".git").exists():
        pytest.skip("needs the git checkout this test file lives in")
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    same = _load_script("benchmarks_same_values", SCRIPT.parent / "same_values.py")
    out = tmp_path / "same"
    args = ["--revision", "HEAD", "--presets", "mnist", "--methods", "daps", "--batch-size", "4", "--steps", "1",
            "--out", str(out), *TINY_DAPS]
    assert same.main(args) == 0
    report = strict_json(out.with_suffix(".json").read_text())
    assert report["all_equal"] and set(report["results"]["mnist/daps"]) == {
        "codes", "sample_log_q", "entropy", "teacher_forced_log_q", "encoder_gradients", "parameters_after_steps"}
    assert same.main(args) == 2 and "exists" in capsys.readouterr().err
    real = same.compute

    def nudged(*a, **k):
        values = real(*a, **k)
        values["parameters_after_steps"][0] += 1e-6
        return values

    monkeypatch.setattr(same, "compute", nudged)
    assert same.main([*args, "--overwrite"]) == 1
    row = strict_json(out.with_suffix(".json").read_text())["results"]["mnist/daps"]
    assert row["parameters_after_steps"].startswith("max |diff| = ") and row["codes"] == "equal"


def test_benchmarks_use_their_own_checkouts_package_whatever_else_comes_first(tmp_path):
    """Every benchmark script imports the ``daps`` of the checkout it lives in, even with another ``daps`` first on
    the path (another clone's editable install, say): their results name this checkout's commit. Each script's
    ``--help`` (most import the package at the top) and a real ``kernels.py`` run (which imports it after parsing)
    with a ``daps`` that refuses to import placed first on ``PYTHONPATH``. Fails on: ``run.py`` importing the package
    before putting its checkout first (every script that imports it), ``kernels.py`` importing ``daps.errors``
    before that."""
    import os
    import subprocess
    import sys

    fake = tmp_path / "elsewhere" / "daps"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise ImportError("another checkout\'s daps was imported")\n')
    env = {**os.environ, "PYTHONPATH": str(fake.parent), "OMP_NUM_THREADS": "1", "MUJOCO_GL": "egl"}
    failed = {}
    for script in sorted(SCRIPT.parent.glob("*.py")):
        proc = subprocess.run([sys.executable, str(script), "--help"], env=env, capture_output=True, text=True,
                              cwd=tmp_path, timeout=120)
        if proc.returncode != 0:
            failed[script.name] = proc.stderr.strip().splitlines()[-1:]
    assert failed == {}
    out = tmp_path / "k"
    proc = subprocess.run([sys.executable, str(SCRIPT.parent / "kernels.py"), "--presets", "mnist", "--methods",
                           "vqvae", "--out", str(out), "--name", "n", *TINY_DAPS], env=env, capture_output=True,
                          text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert strict_json((out / "n.json").read_text())["rows"][0]["total"] > 0
