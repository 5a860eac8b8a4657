"""The training loop under torchrun: two CPU processes (gloo), rank-aware logging, exact resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file


def torchrun_train(overrides: list[str], out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "DAPS_DATA_DIR"}
    env.update(OMP_NUM_THREADS="1")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "daps", "train",
        *overrides, f"train.out_dir={out}", *extra,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step_{step:08d}" / "model.safetensors"))


def test_two_process_training_and_exact_resume(tmp_path, tiny_overrides):
    """Also: every checkpoint checks that both processes hold the same weights (without DDP they would not)."""
    full = tmp_path / "full"
    proc = torchrun_train(tiny_overrides, full)
    rows = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == [2, 3, 4, 6]  # written once (rank 0); 3: a checkpoint
    assert proc.stdout.count("validation on") == 1
    state = torch.load(full / "checkpoints" / "step_00000006" / "state.pt", weights_only=True)
    assert len(state["rng"]) == 2  # each rank's random state is kept ...
    assert not torch.equal(state["rng"][0]["data"], state["rng"][1]["data"])  # ... and they differ

    # Stop after 3 steps, resume with two processes: the same weights as the uninterrupted run.
    split = tmp_path / "split"
    torchrun_train(tiny_overrides, split, "train.stop_after=3")
    torchrun_train(tiny_overrides, split, "--resume")
    a, b = weights(full, 6), weights(split, 6)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def steady(run):  # the rows, averaged over both ranks, without wall-clock entries
        return [{k: v for k, v in json.loads(line).items() if k not in ("time", "steps_per_s")}
                for line in (run / "metrics.jsonl").read_text().splitlines()]

    assert steady(split) == steady(full)


def test_a_fixed_eta_under_torchrun(tmp_path, tiny_overrides):
    """daps.eta_lr=0 leaves log eta without a gradient; DDP must not wait for one (it would fail the step)."""
    import math

    run = tmp_path / "fixed"
    torchrun_train(tiny_overrides, run, "daps.init_eta=0.7", "daps.eta_lr=0")
    assert torch.equal(weights(run, 6)["log_eta"], torch.tensor(math.log(0.7)))


def test_bad_settings_under_torchrun_are_one_line(tmp_path, tiny_overrides, monkeypatch, capsys):
    import pytest

    from daps import dist
    from daps.cli import main
    from daps.errors import UserError

    for text in ("abc", "0", "-5", "inf", "nan", "1e9"):
        monkeypatch.setenv("DAPS_DIST_TIMEOUT_S", text)
        with pytest.raises(UserError, match="DAPS_DIST_TIMEOUT_S must be a number of seconds"):
            dist._timeout()
    monkeypatch.setenv("DAPS_DIST_TIMEOUT_S", "30")
    assert dist._timeout().total_seconds() == 30
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it; refused before any process group is made
    assert main(["train", *tiny_overrides, f"train.out_dir={tmp_path / 'run'}", "--device", "cpu:0"]) == 2
    assert "pass --device cpu" in capsys.readouterr().err and not (tmp_path / "run").exists()


def two_processes(target, store: Path) -> list:
    """Run ``target(rank, store, results)`` in two spawned processes (a gloo group on the file ``store``); the
    tuples they put in ``results``, sorted (by rank first)."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    procs = [ctx.Process(target=target, args=(r, str(store), results)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert all(p.exitcode == 0 for p in procs)
    return sorted(results.get() for _ in range(2))


def _collectives(rank: int, store: str, results) -> None:
    import torch.distributed as tdist

    from daps import dist

    tdist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        mean = dist.mean_over_ranks(torch.tensor([1.0, 10.0]) * (rank + 1))  # rank 0: (1, 10), rank 1: (2, 20)
        dist.check_in_sync([torch.ones(3), torch.arange(4.0)], "same")
        try:
            dist.check_in_sync([torch.ones(3), torch.arange(4.0) + rank * 1e-6], "checkpoint 7")
            caught = ""
        except RuntimeError as e:
            caught = str(e)
        results.put((rank, mean.tolist(), caught))
    finally:
        tdist.destroy_process_group()


def test_mean_over_ranks_and_the_weight_check_across_two_processes(tmp_path):
    """The all-reduced mean of the training rows, and the per-checkpoint check (its negative control: weights that
    differ by 1e-6 on one rank are refused)."""
    for rank, mean, caught in two_processes(_collectives, tmp_path / "store"):
        assert mean == [1.5, 15.0], rank
        assert "checkpoint 7: the processes hold different weights" in caught, rank


def _callers_group(rank: int, store: str, results) -> None:
    import torch.distributed as tdist

    from daps import dist

    tdist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        got_rank, world = dist.setup(torch.device("cpu"))
        made_wait_group = dist._wait_group is not None
        shared = dist.from_main({"rank": rank})
        dist.wait_for_main()
        dist.teardown()
        results.put((rank, got_rank, world, made_wait_group, shared, tdist.is_initialized()))
    finally:
        if tdist.is_initialized():
            tdist.destroy_process_group()


def test_train_inside_a_callers_process_group_keeps_it(tmp_path):
    """``daps.train.train`` called in a process group the caller made (the Python API, e.g. under mp.spawn):
    ``dist.setup`` reads the group's size, makes the long-timeout wait group there too, ``from_main`` gives rank
    0's object everywhere, and ``teardown`` leaves the caller's group alive. Fails on: the wait group made only by
    setup's own init (waits then time out with the step), or teardown destroying the caller's group."""
    for rank, got_rank, world, made_wait_group, shared, still_there in two_processes(_callers_group,
                                                                                     tmp_path / "store"):
        assert (got_rank, world, made_wait_group, shared, still_there) == (rank, 2, True, {"rank": 0}, True), rank


def test_a_run_folder_in_use_is_refused_by_every_rank_in_one_line(tmp_path, tiny_overrides):
    """A second torchrun on a folder another daps process holds: every rank says the folder is in use (rank 0's
    words) and exits 2; rank 1 does not die in a collective rank 0 left (a gloo "Connection closed" traceback).
    Fails on: only rank 0 trying the lock and rank 1 waiting for it in a barrier."""
    from daps.runfolder import FolderLock, write_marker

    run = tmp_path / "busy"
    run.mkdir()
    write_marker(run, "train")
    lock = FolderLock(run).acquire()
    try:
        env = {k: v for k, v in os.environ.items() if k != "DAPS_DATA_DIR"}
        env.update(OMP_NUM_THREADS="1")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "daps",
               "train", *tiny_overrides, f"train.out_dir={run}", "--resume"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    finally:
        lock.release()
    assert proc.returncode != 0
    assert proc.stderr.count("is in use by another daps process") == 2, proc.stderr[-3000:]
    assert "Connection closed" not in proc.stderr and "[rank1]: Traceback" not in proc.stderr, proc.stderr[-3000:]



def _train_rows(rank: int, store: str, results) -> None:
    from types import SimpleNamespace

    import torch.distributed as tdist

    from daps.train import _train_row

    tdist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        s = SimpleNamespace(device=torch.device("cpu"), optimizers=SimpleNamespace(skipped={"vae": rank}),
                            batches=SimpleNamespace(num_skipped=0))
        # the logs of two steps summed on each rank: rank 0 loss 4, log_p -10; rank 1 twice that
        sums = {"loss": torch.tensor(4.0 * (rank + 1)), "log_p": torch.tensor(-10.0 * (rank + 1))}
        results.put((rank, _train_row(sums, 2, s, {"vae": 1.5})))
    finally:
        tdist.destroy_process_group()


def test_a_train_row_averages_its_window_over_every_process(tmp_path):
    """Each process sums its own logs over the window; the row (written by rank 0) is the mean over the window and
    over both processes: loss (4/2 + 8/2) / 2 = 3, log_p (-10/2 - 20/2) / 2 = -7.5, the same on every rank.
    Fails on: the all-reduce left out of the row (rank 0's logs alone: 2 and -5) or summed instead of averaged."""
    for rank, row in two_processes(_train_rows, tmp_path / "store"):
        assert (row["loss"], row["log_p"]) == (3.0, -7.5), (rank, row)
        assert row["grad_norm_vae"] == 1.5 and row["skipped_vae"] == rank


def test_one_pass_under_torchrun_trains_as_the_default(tmp_path, tiny_overrides):
    """``daps.one_pass=true`` under DDP: the sampling pass's graph reaches every encoder parameter, so the reducer
    averages the same gradients as with the teacher-forced pass (the weights after 6 steps agree to rounding)."""
    torchrun_train(tiny_overrides, tmp_path / "default")
    torchrun_train(tiny_overrides, tmp_path / "one", "daps.one_pass=true")
    a, b = weights(tmp_path / "default", 6), weights(tmp_path / "one", 6)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-5), key
