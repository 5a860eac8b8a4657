"""TensorBoard / W&B logging of a run (``train.logger``) and readable progress output in files and CI logs."""

from __future__ import annotations

import json
import shutil
import sys
import types

import pytest

from daps.cli import main

pytestmark = pytest.mark.usefixtures("offline")


def _rows(run, split):
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["split"] == split]


def _overrides(tiny_overrides, out, logger):
    return [o for o in tiny_overrides if not o.startswith("train.logger")] + [f"train.logger={logger}",
                                                                                f"train.out_dir={out}"]


def test_tensorboard_events_hold_the_metrics(tmp_path, tiny_overrides):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    assert main(["train", *_overrides(tiny_overrides, run, "tensorboard")]) == 0
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "histograms": 0})
    events.Reload()
    tags = events.Tags()
    for split in ("train", "val"):
        rows = _rows(run, split)
        for key in ("log_p", "l2") if split == "val" else ("log_p", "ess", "loss"):
            logged = [(e.step, e.value) for e in events.Scalars(f"{split}/{key}")]
            assert logged == [(r["step"], pytest.approx(r[key], rel=1e-6, abs=1e-6)) for r in rows], (split, key)
    assert "reconstructions" in tags["images"]
    assert {"codes/position_00", "codes/position_03"} <= set(tags["histograms"])
    assert len(events.Histograms("codes/position_00")) == len(_rows(run, "val"))
    assert any("config" in tag for tag in tags["tensors"])  # the resolved config, as text


def test_tensorboard_shows_each_step_once_after_a_kill_and_resume(tmp_path, tiny_overrides):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from daps.checkpoint import CKPT_DIR

    run = tmp_path / "run"
    args = ["train", *_overrides(tiny_overrides, run, "tensorboard")]
    assert main(args) == 0
    (run / CKPT_DIR / "latest").write_text("step_00000003\n")  # as if killed between the checkpoints at 3 and 6
    shutil.rmtree(run / CKPT_DIR / "step_00000006")
    assert main([*args, "--resume"]) == 0
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    for split in ("train", "val"):
        logged = [(e.step, e.value) for e in events.Scalars(f"{split}/log_p")]
        assert logged == [(r["step"], pytest.approx(r["log_p"], rel=1e-6, abs=1e-6)) for r in _rows(run, split)]


class _FakeWandb(types.ModuleType):
    """Records what daps sends to W&B (the real package is not needed to test our side of the calls)."""

    def __init__(self, fail_on_log: bool = False):
        super().__init__("wandb")
        self.calls: list = []
        self.fail_on_log = fail_on_log
        self.Histogram = lambda values: ("histogram", len(values))
        self.Image = lambda path: ("image", path)

    def init(self, **kwargs):
        self.calls.append(("init", kwargs))
        fake = self

        class Run:
            def log(self, data, step):
                if fake.fail_on_log:
                    raise ConnectionError("W&B is unreachable")
                fake.calls.append(("log", step, data))

            def finish(self):
                fake.calls.append(("finish",))

        return Run()


@pytest.mark.usefixtures("no_plots")
def test_wandb_gets_the_same_numbers(tmp_path, tiny_overrides, monkeypatch):
    fake = _FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    run = tmp_path / "run"
    assert main(["train", *_overrides(tiny_overrides, run, "wandb")]) == 0
    init = fake.calls[0]
    assert init[0] == "init" and init[1]["config"]["method"] == "daps" and init[1]["resume"] == "allow"
    logged = [c for c in fake.calls if c[0] == "log" and "train/log_p" in c[2]]
    assert [(c[1], c[2]["train/log_p"]) for c in logged] == [(r["step"], r["log_p"]) for r in _rows(run, "train")]
    assert any(c[0] == "log" and "codes/position_00" in c[2] for c in fake.calls)
    assert fake.calls[-1] == ("finish",)


@pytest.mark.usefixtures("no_plots")
def test_each_run_is_its_own_wandb_run_and_a_resume_continues_it(tmp_path, tiny_overrides, monkeypatch):
    fake = _FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)

    def ids():
        return [c[1]["id"] for c in fake.calls if c[0] == "init"]

    a, b = tmp_path / "daps" / "seed0", tmp_path / "fsq" / "seed0"  # the layout of daps compare
    assert main(["train", *_overrides(tiny_overrides, a, "wandb"), "train.stop_after=3"]) == 0
    assert main(["train", *_overrides(tiny_overrides, b, "wandb")]) == 0
    assert main(["train", *_overrides(tiny_overrides, a, "wandb"), "--resume"]) == 0
    assert main(["train", *_overrides(tiny_overrides, b, "wandb"), "--overwrite"]) == 0
    first_a, first_b, resumed_a, overwritten_b = ids()
    assert len({first_a, first_b, overwritten_b}) == 3 and resumed_a == first_a


@pytest.mark.usefixtures("no_plots")
def test_an_unreachable_logger_never_stops_a_run(tmp_path, tiny_overrides, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "wandb", _FakeWandb(fail_on_log=True))
    run = tmp_path / "run"
    assert main(["train", *_overrides(tiny_overrides, run, "wandb")]) == 0
    assert (run / "summary.json").is_file()
    assert "wandb logger switched off" in caplog.text


def test_a_missing_logger_package_is_one_line_and_touches_nothing(
        tmp_path, tiny_overrides, monkeypatch, capsys, copy_run):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import fails
    assert main(["train", *_overrides(tiny_overrides, tmp_path / "run", "wandb")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'daps[wandb]'" in err
    assert not (tmp_path / "run").exists()  # no half-made run folder that the next command would refuse
    run = copy_run()
    before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    assert main(["train", *_overrides(tiny_overrides, run, "wandb"), "--overwrite"]) == 2
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == before  # the old run is kept
    assert main(["train", *_overrides(tiny_overrides, tmp_path / "run2", "mlflow")]) == 2


@pytest.mark.usefixtures("no_plots")
def test_progress_is_plain_lines_in_a_log_file(tmp_path, tiny_overrides, capsys, caplog):
    # stderr is not a terminal here (as in a file or CI log): no bar, one plain log line per metrics row
    overrides = [o for o in _overrides(tiny_overrides, tmp_path / "run", "none") if o != "train.progress=false"]
    with caplog.at_level("INFO", logger="daps"):
        assert main(["train", *overrides, "train.progress=true"]) == 0
    assert "\r" not in capsys.readouterr().err  # no progress bar redrawn in place
    lines = [m for m in caplog.messages if m.startswith("step ") and "steps/s" in m]
    assert [line.split()[1] for line in lines] == ["2/6", "3/6", "4/6", "6/6"]  # log_every=2, the checkpoint at 3


def test_a_run_logged_to_wandb_before_ids_were_kept_continues_its_wandb_run(tmp_path):
    from daps.loggers import WANDB_ID_FILE, wandb_run_id

    old = tmp_path / "old run"
    (old / "wandb").mkdir(parents=True)  # what wandb.init(dir=RUN) left, without our id file
    assert wandb_run_id(old) == "daps-old-run" == (old / "wandb" / WANDB_ID_FILE).read_text().strip()
    new = tmp_path / "new run"
    new.mkdir()
    assert wandb_run_id(new).startswith("daps") and wandb_run_id(new) != "daps-new-run"
