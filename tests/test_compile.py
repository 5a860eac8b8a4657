"""The static-shape, compilable one-token sampling step gives the same codes as the default cached sampler."""

from __future__ import annotations

import json

import pytest
import torch

from daps.config import get_preset, parse_overrides
from daps.nets.transformer import ARTransformerEncoder
from daps.train import train


def _encoder() -> ARTransformerEncoder:
    torch.manual_seed(0)
    return ARTransformerEncoder((1, 28, 28), num_tokens=6, vocab_size=16, width=16, num_layers=2, num_heads=2, mlp_ratio=2)


def test_static_step_equals_the_cached_sampler_exactly(single_thread):
    enc = _encoder()
    x = (torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    reference = enc.sample(x, 4, torch.Generator().manual_seed(2))
    enc.compile_sampler(compile=False)
    static = enc.sample(x, 4, torch.Generator().manual_seed(2))
    assert torch.equal(static.indices, reference.indices)
    torch.testing.assert_close(static.token_log_q, reference.token_log_q, atol=1e-6, rtol=0)
    torch.testing.assert_close(static.token_entropy, reference.token_entropy, atol=1e-6, rtol=0)


def test_compiled_sampler_gives_the_same_codes(single_thread):
    enc = _encoder()
    x = (torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    reference = enc.sample(x, 4, torch.Generator().manual_seed(2))
    enc.compile_sampler()
    compiled = enc.sample(x, 4, torch.Generator().manual_seed(2))
    assert torch.equal(compiled.indices, reference.indices)
    torch.testing.assert_close(compiled.token_log_q, reference.token_log_q, atol=1e-5, rtol=0)
    again = enc.sample(x, 4, torch.Generator().manual_seed(3))  # a second call reuses the graph
    assert again.indices.shape == (4, 5, 6)


@pytest.mark.usefixtures("offline", "no_plots")
def test_train_compile_gives_the_validation_of_an_eager_run(tmp_path, tiny_overrides):
    summaries = []
    for flag in ("false", "true"):
        cfg = parse_overrides(get_preset("mnist"), [*tiny_overrides, "train.steps=3", f"train.compile={flag}", f"train.out_dir={tmp_path / flag}"])
        run = train(cfg)
        summaries.append(json.loads((run / "summary.json").read_text()))
    assert summaries[0]["log_p"] == pytest.approx(summaries[1]["log_p"], abs=1e-3)
