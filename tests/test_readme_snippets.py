"""The README's "Use a trained tokenizer" snippets run as written (on a tiny run and a folder of PNGs)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

README = Path(__file__).resolve().parent.parent / "README.md"


def snippets() -> dict[str, str]:
    text = README.read_text()
    found = dict(re.findall(r"<!-- snippet: (\w+) -->\n```python\n(.*?)```", text, flags=re.S))
    assert list(found) == ["load", "encode", "decode", "evaluate"], list(found)
    return found


@pytest.mark.usefixtures("offline")
def test_readme_snippets_run(trained_run, tmp_path, monkeypatch, capsys):
    shutil.copytree(trained_run, tmp_path / "runs" / "mnist5k-demo")
    digits = tmp_path / "my_digits"
    digits.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):  # grayscale PNGs of another size: resized and binarized by load_images
        Image.fromarray((rng.random((40, 36)) * 255).astype(np.uint8), mode="L").save(digits / f"{i}.png")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for name, code in snippets().items():
        exec(compile(code, f"README snippet {name}", "exec"), namespace)
    assert namespace["codes"].shape == (5, 4) and namespace["x"].shape == (5, 1, 28, 28)
    assert set(namespace["x"].unique().tolist()) <= {0.0, 1.0}
    assert len(namespace["paths"]) == 5 and all(Path(p).is_file() for p in namespace["paths"])
    assert "codes as encoded: True" in capsys.readouterr().out
    assert isinstance(namespace["rec"].log_p, torch.Tensor)
