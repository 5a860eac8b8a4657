"""Under torchrun, rank 0 alone evaluates and writes checkpoints while the other ranks wait. That wait must not
run into the timeout of the training step's collectives, however long a validation takes (50,000 images, FID)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

SLOW_EVAL = textwrap.dedent(
    """
    import os, time
    if os.environ.get("RANK") == "0":  # rank 0's validation takes longer than the collectives' timeout
        import daps.train as t
        real = t._evaluate
        def slow(*args, **kwargs):
            time.sleep(float(os.environ["SLOW_EVAL_S"]))
            return real(*args, **kwargs)
        t._evaluate = slow
        if os.environ.get("NO_WAIT_GROUP"):  # negative control: wait on the step's own group instead
            import daps.dist as d
            d.wait_for_main = d.barrier
    """
)


def torchrun(tmp_path: Path, overrides: list[str], **env_extra: str) -> subprocess.CompletedProcess:
    hooks = tmp_path / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(SLOW_EVAL)
    env = {k: v for k, v in os.environ.items() if k != "DAPS_DATA_DIR"}
    env.update(
        OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(hooks), env.get("PYTHONPATH", "")]),
        DAPS_DIST_TIMEOUT_S="2", SLOW_EVAL_S="4", **env_extra,
    )
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "daps", "train",
        *overrides, f"train.out_dir={tmp_path / 'run'}",
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_a_validation_longer_than_the_timeout_does_not_break_ddp(tmp_path, tiny_overrides):
    proc = torchrun(tmp_path, tiny_overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "run" / "summary.json").is_file()


def test_negative_control_waiting_on_the_step_group_times_out(tmp_path, tiny_overrides):
    """Without the separate wait group the same run fails: the test above can fail."""
    proc = torchrun(tmp_path, tiny_overrides, NO_WAIT_GROUP="1")
    assert proc.returncode != 0
    assert "timed out" in proc.stderr.lower() or "timeout" in proc.stderr.lower()
