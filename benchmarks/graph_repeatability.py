"""Does the CUDA DAPS step repeat? Eight small training steps (tests/graph_steps.py) run eagerly twice and once as
a recorded CUDA graph (``train.cuda_graph``), for a few variants: the largest parameter difference between the two
eager runs and between eager and graphed, and the largest log difference per step.

    PYTHONPATH=.:tests python benchmarks/graph_repeatability.py     # on a CUDA machine, ~15 s

Variants: the sampler's float32 CDF (``sample_probs`` as shipped) or a float64 one; K = 8 or 1 samples; T = 16 or 4
tokens. Output: one line per variant on stdout (kept in docs/benchmarks/gpu-h100-20261206/graph-repeatability.md).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import daps.functional as DF  # noqa: E402
from daps.graphed import GraphedStep  # noqa: E402

SHIPPED = DF.sample_probs


def float64_cdf(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    cdf = probs.double().cumsum(-1)
    u = torch.rand((*cdf.shape[:-1], 1), generator=generator, device=cdf.device, dtype=cdf.dtype) * cdf[..., -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_max(cdf.shape[-1] - 1)


def _use(fn) -> None:
    """Point every module that imported ``sample_probs`` at ``fn``."""
    for module in list(sys.modules.values()):
        if module is not None and getattr(module, "sample_probs", None) in (SHIPPED, float64_cdf):
            module.sample_probs = fn


def _largest(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max(float((p - q).detach().abs().max()) for p, q in zip(a.parameters(), b.parameters()))


def main() -> int:
    from graph_steps import train_steps

    if not torch.cuda.is_available():
        print("graph_repeatability.py: error: needs a CUDA device", file=sys.stderr)
        return 2
    wider = ("encoder.width=32", "encoder.num_tokens=16")
    for name, fn, extra in (("float32 CDF, K=8, T=16", SHIPPED, ()), ("float64 CDF, K=8, T=16", float64_cdf, ()),
                            ("float64 CDF, K=1, T=16", float64_cdf, ("daps.num_samples=1",)),
                            ("float64 CDF, K=8, T=4", float64_cdf, ("encoder.width=32",))):
        _use(fn)
        start = time.time()
        overrides = extra if "T=4" in name else (*wider, *extra)
        e1, logs1, _ = train_steps("daps", None, "cuda", steps=8, batch=32, overrides=overrides)
        e2, _, _ = train_steps("daps", None, "cuda", steps=8, batch=32, overrides=overrides)
        g, logs_g, _ = train_steps("daps", GraphedStep, "cuda", steps=8, batch=32, overrides=overrides)
        per_step = [max(abs(a[k] - b[k]) for k in a) for a, b in zip(logs1, logs_g)]
        print(f"{name}: eager-eager {_largest(e1, e2):.2e}  eager-graphed {_largest(e1, g):.2e}  log differences "
              f"per step {[f'{d:.1e}' for d in per_step]}  ({time.time() - start:.1f} s)", flush=True)
    _use(SHIPPED)
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
