"""Does the CUDA DAPS step repeat, and which operation keeps it from repeating? Eight small training steps
(tests/graph_steps.py) run eagerly twice and once as a recorded CUDA graph (``train.cuda_graph``), per variant: the
largest parameter difference between the two eager runs and between eager and graphed, and the largest log
difference per step.

    PYTHONPATH=.:tests python benchmarks/graph_repeatability.py [--out FILE.md] [--overwrite]   # CUDA, ~30 s

Variants (K = 8 samples, T = 16 tokens unless named):

- ``as shipped``; ``K = 1`` (repeated bit for bit on an H100, 2026-12-06, where K = 8 did not);
- ``deterministic``: under ``torch.use_deterministic_algorithms(True, warn_only=True)`` (and cuBLAS's fixed
  workspace, ``CUBLAS_WORKSPACE_CONFIG=:4096:8``, set before CUDA starts): torch warns, naming it, at every operation
  that has no deterministic CUDA implementation; the warnings are listed;
- ``math attention``: scaled-dot-product attention through its plain math kernel (``SDPBackend.MATH``) instead of
  the fused ones, whose backward may accumulate with atomics (the guess of BENCHMARKS.md, not yet checked).

Prints markdown and writes it to ``--out`` (an existing file is replaced only with ``--overwrite``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before CUDA starts: deterministic cuBLAS when asked

import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from daps.graphed import GraphedStep  # noqa: E402
from daps.runfolder import write_text_atomic  # noqa: E402


def _largest(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max(float((p - q).detach().abs().max()) for p, q in zip(a.parameters(), b.parameters()))


@contextlib.contextmanager
def _deterministic():
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(False)


def _math_attention():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def variant(name: str, context, overrides: tuple[str, ...]) -> tuple[str, list[str]]:
    from graph_steps import train_steps

    start = time.time()
    with warnings.catch_warnings(record=True) as caught, context():
        warnings.simplefilter("always")
        e1, logs1, _ = train_steps("daps", None, "cuda", steps=8, batch=32, overrides=overrides)
        e2, _, _ = train_steps("daps", None, "cuda", steps=8, batch=32, overrides=overrides)
        g, logs_g, _ = train_steps("daps", GraphedStep, "cuda", steps=8, batch=32, overrides=overrides)
    per_step = [max(abs(a[k] - b[k]) for k in a) for a, b in zip(logs1, logs_g)]
    row = (f"| {name} | {_largest(e1, e2):.2e} | {_largest(e1, g):.2e} | "
           f"{' '.join(f'{d:.1e}' for d in per_step)} | {time.time() - start:.1f} |")
    nondeterministic = sorted({str(w.message).split("\n")[0][:200] for w in caught
                               if "deterministic" in str(w.message).lower()})
    return row, nondeterministic


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="", help="also write the markdown here")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("graph_repeatability.py: error: needs a CUDA device", file=sys.stderr)
        return 2
    if args.out and Path(args.out).exists() and not args.overwrite:
        print(f"graph_repeatability.py: error: {args.out} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    wider = ("encoder.width=32", "encoder.num_tokens=16")
    rows, warned = [], {}
    for name, context, extra in (
        ("as shipped", contextlib.nullcontext, ()),
        ("K = 1", contextlib.nullcontext, ("daps.num_samples=1",)),
        ("deterministic", _deterministic, ()),
        ("math attention", _math_attention, ()),
    ):
        try:
            row, caught = variant(name, context, (*wider, *extra))
        except Exception as err:  # noqa: BLE001  (one variant's failure, e.g. a recording refused, is a finding)
            row, caught = f"| {name} | failed: {type(err).__name__}: {str(err).splitlines()[0][:200]} | | | |", []
        rows.append(row)
        warned[name] = caught
        print(row, file=sys.stderr, flush=True)
    text = [
        f"# Does the CUDA DAPS step repeat? ({torch.cuda.get_device_name(0)}, torch {torch.__version__})", "",
        "8 steps of tests/graph_steps.py (batch 32, width 32, T = 16, K = 8 unless named): largest parameter "
        "difference between two eager runs and between eager and graphed, and the largest log difference per step "
        "(eager against graphed).", "",
        "| variant | eager vs eager | eager vs graphed | log differences per step | s |", "|---|---|---|---|---|",
        *rows, "",
    ]
    for name, messages in warned.items():
        if messages:
            text += [f"Operations without a deterministic implementation ({name}):", "",
                     *[f"- `{m}`" for m in messages], ""]
    markdown = "\n".join(text)
    print(markdown)
    if args.out:
        write_text_atomic(Path(args.out), markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
