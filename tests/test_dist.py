"""The training loop under torchrun: two CPU processes (gloo), rank-aware logging, one checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file



def test_two_process_cpu_training(tmp_path, tiny_overrides):
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "DAPS_DATA_DIR"}
    env.update(OMP_NUM_THREADS="1")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "daps", "train",
        *tiny_overrides, f"train.out_dir={out}",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in rows if r["split"] == "train"]
    assert train_steps == [2, 4, 6]  # written once (rank 0), not once per process
    assert proc.stdout.count("validation on") == 1
    weights = load_file(str(out / "checkpoints" / "step_00000006" / "model.safetensors"))
    assert all(t.isfinite().all() for t in weights.values())
