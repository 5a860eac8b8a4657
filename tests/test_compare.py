"""``daps compare``: one budget for every method, a results table, figures, commands, and reuse/resume."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch

import daps.compare as compare_mod
from daps import get_preset, parse_overrides
from daps.cli import main
from daps.compare import collect, compare, latent_bits, plan_runs
from daps.plots import read_metrics
from daps.train import train

pytestmark = pytest.mark.usefixtures("offline", "no_plots")


@pytest.fixture
def overrides(tiny_overrides) -> list[str]:
    return [o for o in tiny_overrides if not o.startswith("train.steps=")]


def test_latent_bits_match_the_paper_bottlenecks():
    assert latent_bits(get_preset("mnist", "daps")) == 64
    assert latent_bits(get_preset("mnist", "fsq")) == pytest.approx(8 * 7.9069, abs=1e-3)  # 240 codes per token
    assert latent_bits(get_preset("mnist", "vae")) == 64  # two floats at 32 bits (the paper's count)


def test_plan_rejects_unknown_and_repeated_methods(tmp_path):
    with pytest.raises(ValueError, match="nope"):
        plan_runs("mnist", ["daps", "nope"], 10, [0], tmp_path, [])
    with pytest.raises(ValueError, match="twice"):
        plan_runs("mnist", ["daps", "daps"], 10, [0], tmp_path, [])
    with pytest.raises(ValueError, match="--steps"):
        plan_runs("mnist", ["daps"], 10, [0], tmp_path, ["train.steps=5"])


@pytest.mark.parametrize("override, message", [
    ("fsq.levelz=8", "unknown config key 'fsq.levelz' (did you mean fsq.levels?); the fsq settings are fsq.levels"),
    ("relaxed.temprature=1", "unknown config key 'relaxed.temprature'"),
    ("fsq.levels=abc", "fsq.levels: expected an integer"),
])
def test_a_typo_in_the_settings_of_a_method_not_compared_is_refused(tmp_path, override, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        plan_runs("mnist", ["daps"], 10, [0], tmp_path, [override])
    plan_runs("mnist", ["daps"], 10, [0], tmp_path, ["fsq.levels=8,5,5,5"])  # valid: passes (given to no run)


def test_every_method_gets_the_same_budget_and_the_overrides(tmp_path):
    runs = plan_runs("mnist", ["daps", "gumbel", "fsq"], 40, [0, 1], tmp_path, ["train.batch_size=32"])
    assert [(r.method, r.seed) for r in runs] == [(m, s) for m in ("daps", "gumbel", "fsq") for s in (0, 1)]
    for r in runs:
        assert r.cfg.train.steps == 40 and r.cfg.train.batch_size == 32 and r.cfg.train.seed == r.seed
        assert r.cfg.method == r.method and r.out_dir == tmp_path / r.method / f"seed{r.seed}"
    assert runs[0].cfg.encoder.num_layers == 1 and runs[4].cfg.encoder.num_layers == 2  # per-method presets


def test_compare_writes_table_figures_commands_and_reuses_finished_runs(tmp_path, overrides):
    out = tmp_path / "cmp"
    # compare's own log / eval / checkpoint intervals (every step for 4 steps), so that the run below has its config
    overrides = [o for o in overrides if not o.startswith(("train.log_every", "train.eval_every", "train.ckpt_every"))]
    # An interrupted run: dapsna seed 0 stopped after 2 of its 4 steps.
    interrupted = parse_overrides(
        get_preset("mnist", "dapsna"),
        [*overrides, "train.steps=4", "train.seed=0", f"train.out_dir={out / 'dapsna' / 'seed0'}",
         "train.eval_every=1", "train.ckpt_every=1", "train.log_every=1", "train.stop_after=2"],
    )
    train(interrupted)
    assert not (out / "dapsna" / "seed0" / "summary.json").exists()  # not a complete run

    table = compare("mnist", ["daps", "dapsna"], 4, [0, 1], out, overrides)
    assert [row["method"] for row in table] == ["daps", "dapsna"]
    for row in table:
        assert row["seeds"] == 2 and row["bits"] == 16  # 4 tokens x log2(16)
        ends = [[r for r in read_metrics(out / row["method"] / f"seed{seed}" / "metrics.jsonl")
                 if r["split"] == "train"][-1]["eta"] for seed in (0, 1)]
        assert row["eta"] == pytest.approx(sum(ends) / 2) and row["eta_se"] == pytest.approx(abs(ends[0] - ends[1]) / 2)
        assert row["log_p"] < 0 and row["log_p_se"] >= 0 and row["l2"] > 0
    for name in ("results.md", "results.csv", "curves.png", "reconstructions.png", "commands.sh"):
        assert (out / name).stat().st_size > 0, name
    md = (out / "results.md").read_text()
    assert "| daps | 16 |" in md and "| dapsna | 16 |" in md and " ± " in md
    beta = get_preset("mnist", "daps").options.beta.end  # the beta-ELBO's β, shown beside it
    assert f"| daps | 16 | {beta:g} |" in md and "β (end)" in md
    # the column reads the β each run recorded in its summary (a config rule only for summaries without one)
    recorded = out / "daps" / "seed0" / "summary.json"
    assert json.loads(recorded.read_text())["final_beta"] == beta
    kept = recorded.read_text()
    recorded.write_text(json.dumps({**json.loads(kept), "final_beta": 0.125}))
    runs = plan_runs("mnist", ["daps"], 4, [0], out, overrides)
    assert collect(runs)[0]["final_beta"] == 0.125
    recorded.write_text(json.dumps({k: v for k, v in json.loads(kept).items() if k != "final_beta"}))
    assert collect(runs)[0]["final_beta"] == beta
    recorded.write_text(kept)
    from daps.provenance import machine_name, source_revision
    assert f"({machine_name()})" in md and f"code {source_revision()}, 20" in md  # where and when it was measured
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["method"] for r in rows] == ["daps", "dapsna"]
    assert float(rows[0]["log_p"]) == pytest.approx(table[0]["log_p"])
    commands = [ln for ln in (out / "commands.sh").read_text().splitlines() if ln.startswith("daps train")]
    assert len(commands) == 4 and all("train.steps=4" in c and " --resume " in c for c in commands)
    # a line of commands.sh reproduces its run: dapsna seed 1 deleted and retrained gives the same summary
    summary = (out / "dapsna" / "seed1" / "summary.json").read_text()
    shutil.rmtree(out / "dapsna" / "seed1")
    line = next(c for c in commands if "--method dapsna" in c and "train.seed=1" in c)
    assert main(shlex.split(line)[1:]) == 0
    assert (out / "dapsna" / "seed1" / "summary.json").read_text() == summary

    # The interrupted run was resumed, not restarted: its metrics start at step 1 and reach step 4 once, and its
    # record names both jobs.
    from daps.provenance import read_jobs
    assert [job["from_step"] for job in read_jobs(out / "dapsna" / "seed0")] == [0, 2]
    steps = [json.loads(ln)["step"] for ln in open(out / "dapsna" / "seed0" / "metrics.jsonl")]
    assert steps.count(4) == 2 and steps.count(1) == 2  # one train row and one validation row each

    # A second call reuses every finished run.
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/seed*/metrics.jsonl")}
    compare("mnist", ["daps", "dapsna"], 4, [0, 1], out, overrides)
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/seed*/metrics.jsonl")} == before
    md = (out / "results.md").read_text()
    assert "(4 of the 4 runs reused from earlier)." in md  # the header's machine and code are the tables'...
    # ... and the runs' own are read from their folders (the interrupted run's two jobs: one origin)
    assert f"Trained on cpu ({machine_name()}), torch {torch.__version__}, code {source_revision()}: all 4 runs." in md
    assert "not (fully) recorded" not in md and "comparable only" not in md
    # A run whose record is gone (trained before daps kept one) is named as of unknown origin.
    (out / "dapsna" / "seed1" / "provenance.json").unlink()
    compare("mnist", ["daps", "dapsna"], 4, [0, 1], out, overrides)
    md = (out / "results.md").read_text()
    assert "daps/seed0, daps/seed1, dapsna/seed0." in md
    assert "Where these runs were trained is not (fully) recorded: dapsna/seed1." in md
    assert "Their steps/s are comparable only between runs trained on one machine." in md


def test_cli_compare_rejects_unknown_method_in_one_line(tmp_path, capsys):
    rc = main(["compare", "--methods", "daps,bogus", "--steps", "3", "--out", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "bogus" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "c").exists()


# --------------------------------------------------------------------------------------------------
# Reuse only what this comparison would train (issue 11, item 7)


def _files(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


def test_a_finished_run_with_another_config_is_refused_not_extended(tmp_path, overrides):
    out = tmp_path / "cmp"
    compare("mnist", ["daps"], 4, [0], out, overrides)
    before = _files(out)
    with pytest.raises(ValueError) as err:
        compare("mnist", ["daps"], 6, [0], out, overrides)  # another --steps: would extend the 4-step run
    message = str(err.value)
    assert str(out / "daps" / "seed0") in message and "train.steps: 4 -> 6" in message and "--overwrite" in message
    assert "\n" not in message
    with pytest.raises(ValueError, match=r"daps\.num_samples: 4 -> 2"):
        compare("mnist", ["daps"], 4, [0], out, [*overrides, "daps.num_samples=2"])
    assert _files(out) == before  # nothing trained, nothing rewritten


def test_a_relative_data_path_reuses_the_runs_it_trained(tmp_path, overrides, monkeypatch):
    """The runs keep data.data_dir absolute (so eval finds the data from anywhere); the same command again, with
    the path as the user typed it, still finds them the same config and reuses them."""
    data = next(Path(o.split("=", 1)[1]) for o in overrides if o.startswith("data.data_dir="))
    monkeypatch.chdir(data.parent)
    relative = [o for o in overrides if not o.startswith("data.data_dir=")] + [f"data.data_dir={data.name}"]
    out = tmp_path / "cmp"
    compare("mnist", ["daps"], 4, [0], out, relative)
    before = _files(out)
    compare("mnist", ["daps"], 4, [0], out, relative)
    elsewhere = data.parent / "elsewhere"  # the same folder written another way, from another working folder
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    other = [o for o in relative if not o.startswith("data.data_dir=")] + [f"data.data_dir=../x/../{data.name}"]
    (data.parent / "x").mkdir()
    compare("mnist", ["daps"], 4, [0], out, other)
    assert {p: b for p, b in _files(out).items() if p.parent.name == "checkpoints" or "step_" in str(p)} == {
        p: b for p, b in before.items() if p.parent.name == "checkpoints" or "step_" in str(p)}


def test_overwrite_retrains_only_the_runs_whose_config_differs(tmp_path, overrides):
    out = tmp_path / "cmp"
    compare("mnist", ["daps", "fsq"], 4, [0], out, overrides)
    fsq_before = _files(out / "fsq")
    run = out / "daps" / "seed0"
    other = parse_overrides(
        get_preset("mnist", "daps"), [*overrides, "train.steps=4", "train.eval_every=1", f"train.out_dir={run}"]
    )
    train(other, overwrite=True)  # the daps run folder now holds another config's run
    with pytest.raises(ValueError, match=r"daps/seed0 was trained with another config \(train\.eval_every: 1 -> 3\)"):
        compare("mnist", ["daps", "fsq"], 4, [0], out, overrides)
    table = compare("mnist", ["daps", "fsq"], 4, [0], out, overrides, overwrite=True)
    assert _files(out / "fsq") == fsq_before  # the same config: reused, untouched
    assert json.loads((run / "config.json").read_text())["train"]["eval_every"] == 3
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert [r["step"] for r in rows if r["split"] == "val"] == [3, 4]  # retrained from scratch, not appended to
    assert [r["method"] for r in table] == ["daps", "fsq"]


def test_compare_never_replaces_a_folder_that_is_not_a_daps_run(tmp_path, overrides):
    from daps.runfolder import write_marker

    out = tmp_path / "cmp"
    (out / "daps" / "seed0").mkdir(parents=True)
    (out / "daps" / "seed0" / "notes.txt").write_text("mine")
    for overwrite in (False, True):  # unmarked, holding no run: not a compare folder at all
        with pytest.raises(ValueError, match=r"cmp exists and is not a daps compare folder"):
            compare("mnist", ["daps"], 4, [0], out, overrides, overwrite=overwrite)
    write_marker(out, "compare")  # a compare folder, one of whose run folders is the user's
    for overwrite in (False, True):
        with pytest.raises(ValueError, match=r"daps/seed0 exists and is not a daps run folder"):
            compare("mnist", ["daps"], 4, [0], out, overrides, overwrite=overwrite)
    assert (out / "daps" / "seed0" / "notes.txt").read_text() == "mine"
    assert not (out / "commands.sh").exists()


def test_a_comparison_that_fails_before_any_run_wrote_leaves_no_folder(tmp_path, overrides, capsys):
    (tmp_path / "empty").mkdir()  # a data folder without the data: found missing when the first run loads it
    missing = [*[o for o in overrides if not o.startswith("data.data_dir=")], f"data.data_dir={tmp_path / 'empty'}"]
    out = tmp_path / "cmp"
    rc = main(["compare", "--methods", "daps,fsq", "--steps", "4", "--out", str(out), *missing])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "not found" in err
    assert not out.exists()  # not even the marker, the lock, commands.sh or an empty daps/ folder
    mine = tmp_path / "mine"  # a folder that was there (empty) before the call is the user's: kept
    mine.mkdir()
    assert main(["compare", "--methods", "daps", "--steps", "4", "--out", str(mine), *missing]) == 2
    assert mine.is_dir() and list(mine.iterdir()) == []  # and left as it was: empty


def test_a_failure_after_a_run_wrote_keeps_the_comparison(tmp_path, overrides, monkeypatch):
    out = tmp_path / "cmp"
    import daps.train as train_mod

    calls = []
    original = train_mod.train

    def train_then_fail(cfg, **kwargs):
        calls.append(cfg.method)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return original(cfg, **kwargs)

    monkeypatch.setattr(train_mod, "train", train_then_fail)
    with pytest.raises(KeyboardInterrupt):
        compare("mnist", ["daps", "fsq"], 4, [0], out, overrides)
    assert calls == ["daps", "fsq"]
    assert (out / "commands.sh").is_file() and (out / "daps" / "seed0" / "summary.json").is_file()


def test_the_compare_folder_is_marked_and_a_foreign_one_refused(tmp_path, overrides, capsys):
    from daps.runfolder import read_marker

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "results.md").write_text("my own results")
    (foreign / "data.csv").write_text("1,2")
    rc = main(["compare", "--methods", "daps", "--steps", "4", "--out", str(foreign), "--overwrite", *overrides])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "not a daps compare folder" in err and str(foreign) in err
    assert (foreign / "results.md").read_text() == "my own results" and not (foreign / ".daps").exists()
    tables = tmp_path / "paper"  # only files named like compare's outputs: still the user's, even without --overwrite
    tables.mkdir()
    (tables / "results.md").write_text("# my table")
    (tables / "results.csv").write_text("my,data")
    rc = main(["compare", "--methods", "daps", "--steps", "4", "--out", str(tables), *overrides])
    assert rc == 2 and "not a daps compare folder" in capsys.readouterr().err
    assert (tables / "results.md").read_text() == "# my table" and not (tables / ".daps").exists()

    out = tmp_path / "cmp"
    assert main(["compare", "--methods", "daps", "--steps", "4", "--out", str(out), "--threads", "1", *overrides]) == 0
    assert read_marker(out) == "compare" and read_marker(out / "daps" / "seed0") == "train"
    assert " --threads 1 --resume " in (out / "commands.sh").read_text()  # the command line's flags carried over
    # its paths are the ones typed, relative to where the comparison ran: the script goes there first
    assert f"cd {os.getcwd()}" in (out / "commands.sh").read_text().splitlines()
    # re-entered to continue: a second call is fine and reuses the run
    metrics = (out / "daps" / "seed0" / "metrics.jsonl").stat().st_mtime_ns
    assert main(["compare", "--methods", "daps", "--steps", "4", "--out", str(out), *overrides]) == 0
    assert (out / "daps" / "seed0" / "metrics.jsonl").stat().st_mtime_ns == metrics

    from daps.runfolder import LEGACY_RUN_ENTRIES

    legacy = tmp_path / "legacy"  # a comparison written before the marker existed is recognised
    shutil.copytree(out, legacy)
    (legacy / ".daps").unlink()
    for path in (legacy / "daps" / "seed0").iterdir():  # a run as daps wrote it then (no marker, provenance, logs)
        if path.name not in LEGACY_RUN_ENTRIES:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    compare("mnist", ["daps"], 4, [0], legacy, overrides)
    assert read_marker(legacy) == "compare"


def test_tables_are_replaced_atomically(tmp_path, overrides, monkeypatch):
    out = tmp_path / "cmp"
    compare("mnist", ["daps"], 4, [0], out, overrides)
    before = (out / "results.csv").read_text()

    def fail(self, rows):
        raise OSError("disk full")

    monkeypatch.setattr(csv.DictWriter, "writerows", fail)
    with pytest.raises(OSError, match="disk full"):
        compare("mnist", ["daps"], 4, [0], out, overrides)
    assert (out / "results.csv").read_text() == before  # never a half-written table
    assert not list(out.glob(".*tmp*"))


# --------------------------------------------------------------------------------------------------
# Ablations: --vary (the paper's App. C, beta schedule x ESS target; App. D, the number of samples K)


def _train_overrides(command: str) -> tuple[str, list[str]]:
    """The method and the key=value arguments of one ``daps train`` line of commands.sh."""
    args = shlex.split(command)
    return args[args.index("--method") + 1], [a for a in args if "=" in a and not a.startswith("-")]


def test_vary_spans_a_grid_per_method_and_leaves_other_methods_one_arm(tmp_path):
    vary = ["daps.ess_target=0.25,0.5", "daps.beta.init+daps.beta.end=5+0.01,5+1"]
    runs = plan_runs("mnist", ["daps", "vqvae"], 8, [0, 1], tmp_path, ["train.batch_size=8"], vary)
    daps_runs = [r for r in runs if r.method == "daps"]
    assert len(daps_runs) == 2 * 2 * 2 and len(runs) == 8 + 2  # 2 ESS targets x 2 schedules x 2 seeds; vqvae: seeds
    got = {(r.cfg.daps.ess_target, r.cfg.daps.beta.init, r.cfg.daps.beta.end) for r in daps_runs}
    assert got == {(e, 5.0, end) for e in (0.25, 0.5) for end in (0.01, 1.0)}
    first = daps_runs[0]
    assert first.label == "daps (ess_target=0.25, beta.init=5, beta.end=0.01)"
    assert first.out_dir == tmp_path / "daps" / "beta.end=0.01,beta.init=5,ess_target=0.25" / "seed0"  # sorted
    assert all(r.cfg.train.batch_size == 8 and r.cfg.train.steps == 8 for r in runs)
    vq = [r for r in runs if r.method == "vqvae"]
    assert [r.label for r in vq] == ["vqvae", "vqvae"] and vq[0].out_dir == tmp_path / "vqvae" / "seed0"
    assert len({r.out_dir for r in runs}) == len(runs)


@pytest.mark.parametrize(
    ("vary", "overrides", "message"),
    [
        (["daps.ess_target"], [], "not of the form key=v1,v2"),
        (["daps.ess_target="], [], "not of the form"),
        (["daps.beta.init+daps.beta.end=5+0.01,1"], [], "gives 1 values for 2 keys"),
        (["data.data_dir=a/b"], [], "names a run folder"),
        (["daps.ess_target=0.25,0.25"], [], "lists a value twice"),
        ([], ["train.stop_after=2"], "running it again resumes every run"),  # it would leave runs without results
        (["train.stop_after=2,3"], [], "use --steps instead"),
        (["daps.ess_target=0.25", "daps.ess_target=0.5"], [], "daps.ess_target is set twice"),
        (["daps.ess_target=0.25,0.5"], ["daps.ess_target=0.3"], "set twice"),
        (["train.seed=1,2"], [], "use --seeds"),
        (["method=fsq"], [], "--methods"),
        (["fsq.levels=5"], [], "fsq.levels is a setting of none of --methods daps"),
        (["bogus.key=1"], [], "unknown config key 'bogus.key'"),
        (["daps.nope=1"], [], "daps.nope"),
        (["daps.num_samples=two"], [], "num_samples"),
        (["daps.num_samples=4,04"], [], "4 and 04 are the same setting"),
        (["daps.ess_target=0.5,.5"], [], "0.5 and .5 are the same setting"),
        (["daps.beta.init+daps.beta.end=5+5,5.0+5.0"], [], "5+5 and 5.0+5.0 are the same setting"),
        (["decoder.kind=mlp,resnet"], [], "cannot be built for inputs (1, 28, 28)"),  # before the mlp arm trains
        (["decoder.hidden=64x64,064x64"], [], "64x64 and 064x64 are the same setting"),
        (["optim.lr=1x3"], [], "expected a number, got '1x3'"),  # as written, not as a list
        (["decoder.hidden=64xx64"], [], "'64xx64' has an empty item"),
        (["decoder.hidden=x"], [], "'x' has an empty item"),
    ],
)
def test_vary_refuses_bad_grids_before_anything_exists(tmp_path, vary, overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        compare("mnist", ["daps"], 4, [0], tmp_path / "cmp", overrides, vary=vary)
    assert not (tmp_path / "cmp").exists()


def test_an_arm_is_named_by_its_parsed_settings_whatever_the_order_of_the_options(tmp_path):
    """Folders are named by the settings as parsed and sorted by key: re-running a comparison with its --vary
    options reordered, or a value spelled differently, reuses the same runs instead of training them again."""
    a = plan_runs("mnist", ["daps"], 4, [0], tmp_path, [], ["daps.num_samples=4,2", "daps.ess_target=0.5"])
    b = plan_runs("mnist", ["daps"], 4, [0], tmp_path, [], ["daps.ess_target=.50", "daps.num_samples=04,2"])
    assert sorted(r.out_dir for r in a) == sorted(r.out_dir for r in b)
    assert a[0].out_dir.parent.name == "ess_target=0.5,num_samples=4"
    assert a[0].label == "daps (num_samples=4, ess_target=0.5)" and b[0].label == "daps (ess_target=0.5, num_samples=4)"


def test_a_list_setting_varies_with_its_values_joined_by_x(tmp_path, overrides):
    """Commas separate the values of ``--vary``, so a list setting's values are joined by ``x`` there
    (``decoder.hidden=64x64``, ``fsq.levels=8x5x5x5``): each arm gets the list, its folder and label keep the ``x``
    form, and its ``daps train`` command the comma form that command takes."""
    overrides = [o for o in overrides if not o.startswith("decoder.hidden=")]
    runs = plan_runs("mnist", ["fsq"], 4, [0], tmp_path, overrides,
                     ["fsq.levels=8x5x5x5,7x5x5x5x5", "decoder.hidden=64x64,32"])
    assert {(r.cfg.fsq.levels, r.cfg.decoder.hidden) for r in runs} == {
        (levels, hidden) for levels in ((8, 5, 5, 5), (7, 5, 5, 5, 5)) for hidden in ((64, 64), (32,))}
    first = runs[0]
    assert first.label == "fsq (levels=8x5x5x5, decoder.hidden=64x64)"
    assert first.out_dir.parent.name == "decoder.hidden=64x64,levels=8x5x5x5"
    method, items = _train_overrides(compare_mod.command_for(first, "mnist", overrides))
    assert "fsq.levels=8,5,5,5" in items and "decoder.hidden=64,64" in items
    assert compare_mod.config_differences(parse_overrides(get_preset("mnist", method), items), first.cfg) == {}


def test_tied_settings_must_concern_the_same_methods(tmp_path):
    with pytest.raises(ValueError, match="must concern the same methods"):
        plan_runs("mnist", ["daps", "fsq"], 4, [0], tmp_path, [], ["daps.ess_target+fsq.levels=0.5+5"])


def test_the_header_names_every_value_of_a_varied_budget_setting(tmp_path, overrides):
    """The header gave the first arm's batch size and validation count for every row."""
    out = tmp_path / "cmp"
    overrides = [o for o in overrides if not o.startswith(("train.batch_size", "train.eval_examples"))]
    compare("mnist", ["daps"], 2, [0], out, overrides, vary=["train.batch_size=8,16", "train.eval_examples=20,40"])
    md = (out / "results.md").read_text()
    assert "at batch 8 / 16 (by arm, see the rows)" in md and "validated on 20 / 40 (by arm, see the rows)" in md


def test_commands_pass_each_method_only_its_own_settings(tmp_path, overrides):
    """commands.sh gave `daps train --method fsq` the daps.* overrides, which it refuses (a traceback-free error,
    but the reproduction script stopped at its first line)."""
    runs = plan_runs("mnist", ["daps", "fsq"], 4, [0], tmp_path, overrides, ["daps.ess_target=0.25,0.5"])
    for run in runs:
        line = compare_mod.command_for(run, "mnist", overrides, ["--threads", "1"])
        method, items = _train_overrides(line)
        keys = [item.partition("=")[0] for item in items]
        assert len(keys) == len(set(keys))  # compare's cadence and the user's overrides name some keys twice
        assert " --threads 1 --resume " in line
        cfg = parse_overrides(get_preset("mnist", method), items)  # raises on another method's setting
        assert cfg.train.out_dir == str(run.out_dir)
        assert compare_mod.config_differences(cfg, run.cfg, frozenset()) == {}


def test_compare_with_vary_writes_one_row_per_arm(tmp_path, overrides):
    out = tmp_path / "cmp"
    overrides = [o for o in overrides if not o.startswith(("train.log_every", "train.eval_every", "train.ckpt_every"))]
    overrides.append("daps.init_eta=1.0")  # where ESS lies between the two targets: eta must move both ways
    table = compare("mnist", ["daps", "fsq"], 4, [0], out, overrides, vary=["daps.ess_target=0.25,0.75"])
    assert [row["method"] for row in table] == ["daps (ess_target=0.25)", "daps (ess_target=0.75)", "fsq"]
    assert [row["settings"] for row in table] == ["ess_target=0.25", "ess_target=0.75", ""]
    for target in (0.25, 0.75):
        config = json.loads((out / "daps" / f"ess_target={target}" / "seed0" / "config.json").read_text())
        assert config["daps"]["ess_target"] == target
    md = (out / "results.md").read_text()
    assert "| daps (ess_target=0.25) | 16 |" in md and "Varied: daps.ess_target=0.25,0.75" in md
    assert "at batch 16," in md and "(by arm" not in md
    assert "all 3 runs." in md  # one machine; runs named by their folders under --out ...
    (out / "daps" / "ess_target=0.25" / "seed0" / "provenance.json").unlink()  # ... with their arm when varied
    compare("mnist", ["daps", "fsq"], 4, [0], out, overrides, vary=["daps.ess_target=0.25,0.75"])
    md = (out / "results.md").read_text()
    assert "daps/ess_target=0.75/seed0, fsq/seed0." in md and "recorded: daps/ess_target=0.25/seed0." in md
    assert "KL(q\\|prior)" in md and all(row["kl"] >= 0 for row in table[:2])
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["settings"] for r in rows] == ["ess_target=0.25", "ess_target=0.75", ""]
    assert all((out / name).stat().st_size > 0 for name in ("eta.png", "ess.png", "curves.png"))
    commands = (out / "commands.sh").read_text()
    assert commands.count("daps.ess_target=0.25") == 1 and commands.count("daps.ess_target=0.75") == 1

    # Each arm trained with its own target: eta (fitted to the ESS target) fell for the low one and rose for the high.
    etas, last = {}, {}
    for target in (0.25, 0.75):
        rows = [json.loads(line) for line in open(out / "daps" / f"ess_target={target}" / "seed0" / "metrics.jsonl")]
        etas[target] = [r["eta"] for r in rows if r["split"] == "train"]
        last[target] = [r for r in rows if r["split"] == "train"][-1]
    assert etas[0.25][-1] < 1.0 < etas[0.75][-1]
    # ... and the table shows each arm's eta and ESS of its last training row; the quantizer has none
    assert [table[0]["eta"], table[1]["eta"]] == [last[0.25]["eta"], last[0.75]["eta"]]
    assert [table[0]["ess"], table[1]["ess"]] == [last[0.25]["ess"], last[0.75]["ess"]]
    assert math.isnan(table[2]["eta"]) and math.isnan(table[2]["ess"])
    fsq_row = next(line for line in md.splitlines() if line.startswith("| fsq |"))
    assert "| eta (end) | ESS/K (end) |" in md and re.search(r"\| — \| — \| [0-9.]+ \|$", fsq_row), fsq_row
    assert f"| {last[0.25]['eta']:.3f} | {last[0.25]['ess']:.2f} |" in md
    assert float(next(csv.DictReader(open(out / "results.csv")))["eta"]) == pytest.approx(last[0.25]["eta"])

    # Re-running reuses every arm; a run without eta drops the figure of the earlier arms.
    before = {p: p.stat().st_mtime_ns for p in out.glob("**/seed0/metrics.jsonl")}
    compare("mnist", ["daps", "fsq"], 4, [0], out, overrides, vary=["daps.ess_target=0.25,0.75"])
    assert {p: p.stat().st_mtime_ns for p in out.glob("**/seed0/metrics.jsonl")} == before
    compare("mnist", ["fsq"], 4, [0], out, overrides)
    assert not (out / "eta.png").exists() and not (out / "ess.png").exists()
    assert "eta (end)" not in (out / "results.md").read_text()


def test_origins_warn_about_speeds_only_across_machines(tmp_path):
    """Two code revisions on one machine: two origins, speeds still comparable; a job of 2 processes (or another
    machine) makes them not."""
    from types import SimpleNamespace

    from daps.compare import origins

    job = {"device": "cpu", "machine": "CPU X, 2 CPUs", "processes": 1, "torch": "2.13.0", "code": "aaa"}

    def run(name, *jobs):
        folder = tmp_path / name / "seed0"
        folder.mkdir(parents=True)
        (folder / "provenance.json").write_text(json.dumps({"format": 1, "jobs": list(jobs)}))
        return SimpleNamespace(out_dir=folder)

    runs = [run("a", {**job, "from_step": 0}), run("b", {**job, "from_step": 0, "code": "bbb"})]
    text = origins(runs, tmp_path)
    assert "Trained on cpu (CPU X, 2 CPUs), torch 2.13.0, code aaa: a/seed0." in text
    assert "code bbb: b/seed0." in text and "comparable only" not in text
    runs.append(run("c", {**job, "from_step": 0}, {**job, "from_step": 5, "processes": 2}))
    text = origins(runs, tmp_path)
    assert "Trained on cpu (CPU X, 2 CPUs, 2 processes), torch 2.13.0, code aaa: c/seed0." in text
    assert "code aaa: a/seed0, c/seed0." in text
    assert text.endswith("comparable only between runs trained on one machine.")


def test_a_link_to_a_compare_folder_is_named_as_a_link(tmp_path, overrides, capsys):
    """``--out`` a symbolic link to a folder with content: refused as a link (it said "is not a folder"), and
    nothing behind it touched."""
    real = tmp_path / "real"
    real.mkdir()
    (real / "notes.md").write_text("mine")
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    rc = main(["compare", "--methods", "daps", "--steps", "4", "--out", str(link), *overrides])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "symbolic link" in err
    assert [p.name for p in real.iterdir()] == ["notes.md"]
