"""Known answers for behaviour of the training loop (daps/train.py) that a mutation sweep of that file found no test
guarding. Each test names the slip it fails on; the references are hand-worked cases on tiny folders, files and runs
(the session's tiny run of ``tests/conftest.py``)."""

from __future__ import annotations

import json
import logging
import shutil

import pytest


def _cfg(tiny_overrides, run, *extra: str):
    from daps import get_preset, parse_overrides

    return parse_overrides(get_preset("mnist", "daps"), [*tiny_overrides, *extra, f"train.out_dir={run}"])


# --------------------------------------------------------------------------- train: what prepare_run_dir says


def test_resume_of_a_folder_without_a_run_says_it_starts_a_new_one(tmp_path, tiny_overrides, caplog):
    """``--resume`` on a folder that holds no run yet (here: one that does not exist) is not refused, it starts a
    new run; the user, who expected to continue one, is told so in one warning: "--resume: RUN holds no run yet,
    starting a new run". The silent dry run (``report=False``) says nothing. Known answer: a fresh plan (nothing to
    resume from, nothing to empty) and exactly that one warning. Fails on: the warning dropped (a mistyped
    ``train.out_dir`` silently starts training from step 0)."""
    from daps.train import prepare_run_dir

    run = tmp_path / "no_run_here"
    with caplog.at_level(logging.WARNING, logger="daps"):
        plan = prepare_run_dir(_cfg(tiny_overrides, run), resume=True, overwrite=False, report=False)
        assert caplog.records == []
        plan = prepare_run_dir(_cfg(tiny_overrides, run), resume=True, overwrite=False)
    assert plan.resume_from is None and not plan.clear_first
    assert [r.getMessage() for r in caplog.records] == [f"--resume: {run} holds no run yet, starting a new run"]


# --------------------------------------------------------------------------- train: the end of a run


def test_the_final_validation_reused_on_resume_is_the_one_of_the_end_step(tmp_path):
    """A run resumed at its end step (its final checkpoint written, then killed before its figures and summary)
    reuses the validation row it logged at that step rather than validating again; a row of any other step is not
    the final model's. Known answers on a hand-written ``metrics.jsonl``: val rows at steps 2 and 3 (and a train row
    at 3) -> the val row of step 3 for end step 3; only a val row at step 2 -> None for end step 3 (validate again);
    no file -> None. Fails on: the step left out of the match (the step-2 validation written into the summary of a
    run that ends at step 3)."""
    from daps.train import _final_val_row

    metrics = tmp_path / "metrics.jsonl"
    assert _final_val_row(metrics, 3) is None
    rows = [{"split": "train", "step": 2, "loss": 1.0}, {"split": "val", "step": 2, "l2": 0.5},
            {"split": "train", "step": 3, "loss": 0.9}, {"split": "val", "step": 3, "l2": 0.4}]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert _final_val_row(metrics, 3) == {"split": "val", "step": 3, "l2": 0.4}
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    assert _final_val_row(metrics, 3) is None


def test_a_checkpoint_of_non_finite_weights_is_refused(tmp_path, tiny_overrides, offline, no_plots, monkeypatch):
    """Gradients can be finite and the weights still not (an update that overflows): the checkpoint step then stops
    the run instead of writing them, so the folder's last checkpoint stays a good one. Known answer: the tiny run
    (checkpoints every 3 steps) whose weights turn infinite right after its 3rd update raises ``TrainingDiverged``
    "training diverged at step 3: the parameters are no longer finite; it has no checkpoint", and no checkpoint
    folder holds a step. Fails on: the finiteness check before a checkpoint dropped (step 3 saved with infinite
    weights)."""
    import torch

    from daps.optim import Optimizers
    from daps.train import TrainingDiverged, train

    real_finish, calls = Optimizers.finish, []

    def finish(self, norms):
        result = real_finish(self, norms)
        calls.append(1)
        if len(calls) == 3:
            with torch.no_grad():
                self.specs[0].params[0].fill_(float("inf"))
        return result

    monkeypatch.setattr(Optimizers, "finish", finish)
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="at step 3: the parameters are no longer finite; it has no checkpoint"):
        train(_cfg(tiny_overrides, run))
    assert not list((run / "checkpoints").glob("step_*"))


# --------------------------------------------------------------------------- train: what a failed run leaves


def test_a_failed_resume_leaves_the_folder_it_found_as_it_was(tmp_path, tiny_overrides, offline, monkeypatch):
    """Only a folder a run made (or found empty) is emptied again when the run fails before its first logged row:
    a run folder that was already there, here one stopped before its first checkpoint and row (marker,
    ``config.json``, an empty ``metrics.jsonl``), keeps its files when ``--resume`` of it fails in its setup (the
    error the user mends, say memory, comes before anything is replaced). Known answer: the same three names (and
    daps's lock file), the config byte for byte. Fails on: "found empty" left out of the clean-up (the run's config
    deleted by a failed resume)."""
    import daps.train
    from daps.checkpoint import write_config
    from daps.runfolder import LOCK, MARKER, write_marker

    run = tmp_path / "run"
    run.mkdir()
    cfg = _cfg(tiny_overrides, run)
    write_marker(run, "train")
    write_config(run / "config.json", cfg)
    (run / "metrics.jsonl").write_text("")
    saved = (run / "config.json").read_bytes()

    def setup(*args, **kwargs):
        raise RuntimeError("the setup failed")

    monkeypatch.setattr(daps.train, "_setup", setup)
    with pytest.raises(RuntimeError, match="the setup failed"):
        daps.train.train(cfg, resume=True)
    assert sorted(p.name for p in run.iterdir() if p.name != LOCK) == sorted([MARKER, "config.json", "metrics.jsonl"])
    assert (run / "config.json").read_bytes() == saved


def test_a_job_that_only_finishes_a_run_is_not_recorded_as_training_it(copy_run, tiny_overrides, offline, no_plots):
    """``provenance.json`` lists the jobs that trained a run, each from the step it started at. A ``--resume`` of
    the finished tiny run whose ``curves.png`` is missing trains no step (it only writes the figures and summary
    again), so the file is left byte for byte: still the one job from step 0. Fails on: every job recorded (a job
    "from step 6" replaces nothing but claims a machine that trained no step of the run)."""
    from daps.train import train

    run = copy_run()
    jobs = (run / "provenance.json").read_bytes()
    (run / "curves.png").unlink()
    train(_cfg(tiny_overrides, run), resume=True)
    assert (run / "provenance.json").read_bytes() == jobs
    assert [job["from_step"] for job in json.loads(jobs)["jobs"]] == [0]


# --------------------------------------------------------------------------- train: the rows of a run


def test_a_run_whose_length_is_no_multiple_of_log_every_logs_its_last_steps(tmp_path, tiny_overrides, offline,
                                                                          no_plots):
    """Train rows come every ``log_every`` steps, at every checkpoint step and at the run's last step, so no step
    goes unlogged. Known answer: ``train.steps=5 log_every=2 ckpt_every=3`` -> train rows at steps 2, 3, 4, 5,
    averaging 2, 1, 1, 1 steps (the row of step 5 holds the one step after the row of step 4). Fails on: the row of
    the last step dropped (step 5's loss never logged, and the curves end at step 4)."""
    from daps.train import train

    run = tmp_path / "run"
    train(_cfg(tiny_overrides, run, "train.steps=5"))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [(r["step"], r["num_steps"]) for r in rows if r["split"] == "train"]
    assert train_rows == [(2, 2), (3, 1), (4, 1), (5, 1)]


def test_a_changed_train_steps_is_said_once_and_never_in_the_dry_run(copy_run, tiny_overrides, caplog):
    """``train`` decides about the folder twice: a silent dry run before the lock, then for real. A resume with a
    changed ``train.steps`` is worth one warning, "train.steps changed on resume (6 -> 8): ...", from the second
    only. Known answer on the tiny run (which a copy holds under another ``train.out_dir``, not a change worth a
    warning): no record from ``report=False``, exactly that one from ``report=True``. Fails on: the warning given
    regardless of ``report`` (every resume that lengthens a run says it twice)."""
    from daps.train import prepare_run_dir

    run = copy_run()
    cfg = _cfg(tiny_overrides, run, "train.steps=8")
    with caplog.at_level(logging.WARNING, logger="daps"):
        prepare_run_dir(cfg, resume=True, overwrite=False, report=False)
        assert caplog.records == []
        plan = prepare_run_dir(cfg, resume=True, overwrite=False)
    assert plan.resume_from.name == "step_00000006"
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("train.steps changed on resume (6 -> 8)")


# --------------------------------------------------------------------------- train: resuming folder data


def test_a_resumed_run_on_folder_data_draws_the_batches_of_an_uninterrupted_one(tmp_path, offline, no_plots,
                                                                              monkeypatch):
    """Folder data (``imagefolder``: shuffled epochs from a stream, no generator in the checkpoint) restart their
    stream at the checkpoint's step, so a run stopped at step 2 (``train.stop_after=2``) and resumed draws at steps
    3 and 4 exactly the batches an uninterrupted 4-step run draws there. Known answer on 12 random 8x8 images in
    two classes, batches of 4: the resumed job's two batches equal the uninterrupted run's last two (and differ
    from its first two, else the test could not tell). Fails on: the stream started at batch 0 on resume (the
    resumed run trains again on the batches of steps 1 and 2)."""
    import numpy as np
    import torch
    from PIL import Image

    from daps import get_preset, parse_overrides
    from daps.data import TrainBatches
    from daps.train import train

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label in ("a", "b"):
            (tmp_path / "images" / split / label).mkdir(parents=True)
            for i in range(6):
                image = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
                image.save(tmp_path / "images" / split / label / f"{i}.png")
    drawn: list[torch.Tensor] = []
    real_next = TrainBatches.__next__

    def recording(self):
        batch = real_next(self)
        drawn.append(batch.clone())
        return batch

    monkeypatch.setattr(TrainBatches, "__next__", recording)
    overrides = [
        "data.name=imagefolder", f"data.data_dir={tmp_path / 'images'}", "data.image_shape=3,8,8",
        "data.num_workers=0", "encoder.width=16", "encoder.num_heads=2", "encoder.vocab_size=16",
        "encoder.num_tokens=4", "decoder.kind=mlp", "decoder.embed_dim=8", "decoder.hidden=16,16",
        "daps.num_samples=4", "train.batch_size=4", "train.steps=4", "train.log_every=2", "train.eval_every=2",
        "train.ckpt_every=2", "train.eval_examples=8", "train.eval_batch_size=4", "train.progress=false",
        "train.logger=none", "train.fid=none",
    ]

    def run(name: str, *extra: str, resume: bool = False) -> list[torch.Tensor]:
        drawn.clear()
        cfg = parse_overrides(get_preset("cifar10", "daps"), [*overrides, *extra, f"train.out_dir={tmp_path / name}"])
        train(cfg, resume=resume)
        return list(drawn)

    whole = run("whole")
    assert len(whole) == 4 and not torch.equal(whole[0], whole[2])
    assert len(run("parts", "train.stop_after=2")) == 2
    resumed = run("parts", resume=True)
    assert len(resumed) == 2
    assert all(torch.equal(a, b) for a, b in zip(resumed, whole[2:]))


# --------------------------------------------------------------------------- train: a checkpoint's own step


def test_a_checkpoint_whose_state_is_past_the_end_is_refused_whatever_its_folder_says(copy_run, tiny_overrides,
                                                                                       offline, no_plots):
    """The step a run resumes at is the one its checkpoint's state holds; the folder's name is checked first (before
    the lock), the state again once loaded. Known answer: the tiny run's final checkpoint (state of step 6) renamed
    ``step_00000005`` by hand, resumed with ``train.steps=5``, is refused with "cannot resume RUN at step 6: the
    run is set to stop at step 5", and the folder keeps its one checkpoint, unchanged. Fails on: the check of the
    loaded state dropped (the 6-step weights written back as checkpoint 5 and a summary of "step 5")."""
    from daps.errors import UserError
    from daps.train import train

    run = copy_run()
    ckpts = run / "checkpoints"
    for old in ckpts.glob("step_*"):
        if old.name != "step_00000006":
            shutil.rmtree(old)
    (ckpts / "step_00000006").rename(ckpts / "step_00000005")
    (ckpts / "latest").write_text("step_00000005\n")
    state = (ckpts / "step_00000005" / "state.pt").read_bytes()
    with pytest.raises(UserError, match="at step 6: the run is set to stop at step 5"):
        train(_cfg(tiny_overrides, run, "train.steps=5"), resume=True)
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_00000005"]
    assert (ckpts / "step_00000005" / "state.pt").read_bytes() == state
