"""CUDA-only checks (marker ``gpu``; skipped without a CUDA device): what ``train.compile`` promises on a GPU.

Run by ``benchmarks/gpu_check.py`` whenever a GPU is lent (``pytest -m gpu``).
"""

from __future__ import annotations

import json

import pytest
import torch

from daps import get_preset, parse_overrides
from daps.nets.ar_encoder import ARTransformerEncoder
from daps.train import train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_compiled_sampler_runs_under_cuda_graphs_and_gives_the_eager_codes():
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    enc = ARTransformerEncoder(
        (1, 28, 28), num_tokens=49, vocab_size=16, width=32, num_layers=2, num_heads=2, mlp_ratio=2
    ).cuda()
    x = (torch.rand(8, 1, 28, 28, device="cuda") > 0.5).float()
    reference = enc.sample(x, 4, torch.Generator("cuda").manual_seed(2))
    enc.compile_sampler(mode="reduce-overhead")  # what train.compile does on CUDA
    counters.clear()
    for _ in range(3):  # the first call compiles and records, later calls replay
        compiled = enc.sample(x, 4, torch.Generator("cuda").manual_seed(2))
    assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])
    same = (compiled.indices == reference.indices).float().mean().item()
    assert same > 0.99, same  # equal up to rare float-rounding flips of the inverse-CDF draw
    torch.testing.assert_close(compiled.log_q, reference.log_q, atol=0.05, rtol=0)


@pytest.mark.usefixtures("offline", "no_plots")
def test_compiled_bf16_daps_run_trains_on_cuda(tmp_path, tiny_overrides):
    summaries = []
    for compile_, precision in (("false", "float32"), ("true", "bfloat16")):
        cfg = parse_overrides(
            get_preset("mnist"),
            [*tiny_overrides, "train.steps=4", f"train.compile={compile_}", f"train.precision={precision}",
             f"train.out_dir={tmp_path / compile_}"],
        )
        run = train(cfg, device="cuda")
        summaries.append(json.loads((run / "summary.json").read_text()))
    for summary in summaries:
        assert all(v == v for v in summary.values() if isinstance(v, float)), summary  # no NaN
    assert summaries[1]["log_p"] == pytest.approx(summaries[0]["log_p"], abs=5.0)
