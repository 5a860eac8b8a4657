"""The Python snippets of docs/priors.md and docs/motion.md run as written (marked ``<!-- snippet: NAME -->``;
the README's are tests/test_readme_snippets.py). The motion snippet needs mujoco and ``$DAPS_DATA_DIR``."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

from daps.codes import CodeSet, save_codes
from daps.errors import UserError

DOCS = Path(__file__).resolve().parent.parent / "docs"


def snippet(doc: str, name: str) -> str:
    found = dict(re.findall(r"<!-- snippet: (\w+) -->\n```python\n(.*?)```", (DOCS / doc).read_text(), flags=re.S))
    assert name in found, f"{doc} has no snippet {name!r} (has {list(found)})"
    return found[name]


def test_the_numpy_reading_of_a_codes_file_runs_as_written(tmp_path, monkeypatch):
    """docs/priors.md: a codes file and its header read with NumPy only (the snippet lacked ``import json``)."""
    meta = {"method": "daps", "vocab_size": 16, "num_tokens": 4, "class_names": ["a", "b"], "seed": 3}
    codes = torch.randint(16, (5, 2, 4), generator=torch.Generator().manual_seed(0), device="cpu")
    save_codes(CodeSet(codes, torch.tensor([0, 1, 0, 1, 1]), meta), tmp_path / "codes-train.safetensors")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(snippet("priors.md", "numpy"), "docs/priors.md snippet", "exec"), namespace)
    assert (namespace["arrays"]["codes"] == codes.numpy()).all()
    assert {k: namespace["header"][k] for k in meta} == meta


@pytest.mark.skipif(not os.environ.get("DAPS_DATA_DIR"), reason="needs DAPS_DATA_DIR (the LAFAN1 H1 data)")
def test_the_motion_package_snippet_runs_as_written(tmp_path, monkeypatch, capsys):
    """docs/motion.md's snippets: load, draw a batch, save the statistics, poses and metrics (it used ``torch``,
    ``json``, ``f``, ``idx`` and ``x_hat`` without defining them), then the video and the feature plot."""
    from daps.motion.h1 import import_mujoco

    try:
        import_mujoco()
    except UserError as e:
        pytest.skip(str(e))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(snippet("motion.md", "motion"), "docs/motion.md snippet", "exec"), namespace)
    assert namespace["x"].shape[0] == 256 and namespace["poses"].shape == namespace["truth"].shape
    assert json.loads((tmp_path / "motion_stats.json").read_text())  # the statistics were written
    assert "mpjpe_mm" in capsys.readouterr().out
    try:  # the rendering snippet continues it (it used load_h1, i, raw_truth and raw_recon undefined)
        exec(compile(snippet("motion.md", "render"), "docs/motion.md render snippet", "exec"), namespace)
    except UserError as e:  # no OpenGL backend or no video writer on this machine
        pytest.skip(str(e))
    assert (tmp_path / "recon.mp4").stat().st_size > 0 and (tmp_path / "features.png").stat().st_size > 0
