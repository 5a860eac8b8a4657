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
    assert list(found) == ["load", "encode", "decode", "evaluate", "own_data"], list(found)
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
        if name == "own_data":
            continue  # trains: run on its own below
        exec(compile(code, f"README snippet {name}", "exec"), namespace)
    assert namespace["codes"].shape == (5, 4) and namespace["x"].shape == (5, 1, 28, 28)
    assert set(namespace["x"].unique().tolist()) <= {0.0, 1.0}
    assert len(namespace["paths"]) == 5 and all(Path(p).is_file() for p in namespace["paths"])
    assert "codes as encoded: True" in capsys.readouterr().out
    assert isinstance(namespace["rec"].log_p, torch.Tensor)


@pytest.mark.usefixtures("offline", "single_thread")
def test_readme_own_data_snippet_trains_on_the_saved_arrays(tmp_path, monkeypatch, tiny_overrides):
    """As written, but for 4 steps of the tiny architecture (its other settings: the README's)."""
    from daps.config_io import applicable_overrides
    from daps.presets import get_preset

    code = snippets()["own_data"]
    assert '"train.steps=2000", ' in code
    tiny = [o for o in applicable_overrides(get_preset("mnist"), tiny_overrides) if not o.startswith("data.")]
    code = code.replace('"train.steps=2000", ', ", ".join(repr(o) for o in [*tiny, "train.steps=4"]) + ", ")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README snippet own_data", "exec"), namespace)
    assert Path(namespace["run_dir"]).resolve() == (tmp_path / "runs" / "my_images").resolve()
    assert (tmp_path / "runs" / "my_images" / "summary.json").is_file()
    assert (tmp_path / "runs" / "my_images" / "arrays_data.json").is_file()
    assert namespace["tokenizer"].config.data.name == "arrays"
    with np.load(tmp_path / "my_images.npz") as f:
        x = torch.from_numpy(f["test"][:3])[:, None].float() / 127.5 - 1
    assert namespace["tokenizer"].encode(x).shape == (3, 4)
