"""Attention and softmax on the CPU: torch's kernels against the plain paths of ``daps.nets.layers``, side by side.

    python benchmarks/attention.py [--rounds 5] [--threads 1] [--out docs/benchmarks/attention-cpu.json] [--overwrite]
    python benchmarks/attention.py --one-query [--rounds 5] [--threads 1] [--out ...] [--overwrite]

Every case is timed forward and backward together (what the teacher-forced pass of a training step runs), the
variants of a case interleaved round-robin so that the machine's load hits them alike; the median over
``--rounds`` rounds is reported, and the ratio is the median of the per-round ratios.

- Attention at the shapes of the presets' teacher-forced pass: ``mnist`` self- and cross-attention at
  B*K = 2,048 sequences of 8 tokens, ``cifar10`` at B = 32 (256 sequences of 64 tokens), and self-attention over
  128, 256 and 1,024 keys (``imagenet256`` has 1,024), in float32 and bfloat16: torch's fused
  ``scaled_dot_product_attention`` against :func:`daps.nets.layers.plain_attention`, and the one
  :func:`daps.nets.layers.attention` picks.
- Softmax over rows of 4 to 1,024 entries (float32, about 4M entries in all): ``torch.softmax`` against
  :func:`daps.nets.layers.softmax`.

``--one-query`` times only the sampling step's self-attention, one query per row over L = 1 to 64 keys (``mnist``'s
B*K = 2,048 rows, 4 heads of 16), forward and backward, float32: :func:`daps.nets.layers.one_query_attention`
(its backward written out, :class:`daps.nets.layers.OneQueryAttention`) against the same forward differentiated by
autograd, the path it replaces when a gradient is wanted (``daps.one_pass``, the relaxed methods' sampling).

Prints markdown, writes JSON (machine, torch, threads, commit, command) and the same markdown next to it (``.md``).
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from run import git_revision, machine_info  # this script's folder is on sys.path

from daps.nets.layers import (
    PLAIN_ATTENTION_MAX_KEYS,
    SHORT_SOFTMAX_ROWS,
    elementwise_softmax,
    elementwise_softmax_applies,
    one_query_attention,
    one_query_weights,
    plain_attention,
    plain_attention_applies,
    softmax,
)
from daps.runfolder import write_json_atomic, write_text_atomic

# name, query shape, key/value shape, causal
ATTENTION_CASES = [
    ("mnist self", (2048, 4, 8, 16), (2048, 4, 8, 16), True),
    ("mnist cross", (256, 4, 64, 16), (256, 4, 8, 16), False),
    ("cifar10 self (B=32)", (256, 4, 64, 32), (256, 4, 64, 32), True),
    ("cifar10 cross (B=32)", (32, 4, 512, 32), (32, 4, 64, 32), False),
    ("self, 128 keys", (64, 4, 128, 32), (64, 4, 128, 32), True),
    ("self, 256 keys", (32, 4, 256, 32), (32, 4, 256, 32), True),
    ("self, 1,024 keys", (8, 4, 1024, 32), (8, 4, 1024, 32), True),
]
SOFTMAX_ROWS = [4, 8, 15, 16, 64, 256, 1024]
ONE_QUERY_ROWS = (2048, 4, 16)  # rows (mnist's B*K), heads, head width
ONE_QUERY_LENGTHS = [1, 2, 4, 8, 16, 32, 64]


def _attention_call(fn: Callable, q_shape, kv_shape, causal: bool, dtype: torch.dtype) -> Callable[[], None]:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(q_shape, generator=g, device=g.device).to(dtype).requires_grad_(True)
    k, v = (torch.randn(kv_shape, generator=g, device=g.device).to(dtype).requires_grad_(True) for _ in range(2))

    def run() -> None:
        fn(q, k, v, causal).sum().backward()

    return run


def _softmax_call(fn: Callable, length: int) -> Callable[[], None]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4 * 2**20 // length, length, generator=g, device=g.device, requires_grad=True)
    weights = torch.randn(x.shape, generator=g, device=g.device)

    def run() -> None:
        (fn(x) * weights).sum().backward()

    return run


def _one_query_call(fn: Callable, length: int) -> Callable[[], None]:
    rows, heads, dim = ONE_QUERY_ROWS
    g = torch.Generator().manual_seed(0)
    q = torch.randn(rows, heads, 1, dim, generator=g, device=g.device, requires_grad=True)
    k, v = (torch.randn(rows, heads, length, dim, generator=g, device=g.device, requires_grad=True) for _ in range(2))

    def run() -> None:
        fn(q, k, v).sum().backward()

    return run


def _autograd_one_query(q, k, v):
    """:func:`one_query_attention`'s forward, differentiated by autograd."""
    return one_query_weights(q, k, None) @ v


def one_query_table(rounds: int, repeats: int) -> tuple[list[dict], list[str]]:
    """The ``--one-query`` rows and their markdown."""
    rows, lines = [], [
        f"One query per row over L keys ({ONE_QUERY_ROWS[0]:,} rows, {ONE_QUERY_ROWS[1]} heads of "
        f"{ONE_QUERY_ROWS[2]}), float32, forward + backward, ms per call (median of rounds).", "",
        "| keys L | autograd's backward ms | daps's backward ms | daps / autograd time |", "|---|---|---|---|"]
    for length in ONE_QUERY_LENGTHS:
        times = _compare({"autograd": _one_query_call(_autograd_one_query, length),
                          "daps": _one_query_call(one_query_attention, length)}, rounds, repeats)
        ratio = statistics.median(d / a for d, a in zip(times["daps"], times["autograd"]))
        row = {"length": length, **{f"{k}_ms": [1e3 * t for t in v] for k, v in times.items()},
               "daps_over_autograd": ratio}
        rows.append(row)
        line = (f"| {length} | {statistics.median(row['autograd_ms']):.2f} | {statistics.median(row['daps_ms']):.2f} "
                f"| {ratio:.2f} |")
        lines.append(line)
        print(line, flush=True)
    return rows, lines


def _time(run: Callable[[], None], repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    return (time.perf_counter() - start) / repeats


def _compare(variants: dict[str, Callable[[], None]], rounds: int, repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each variant, per round (one warm-up call each first)."""
    for run in variants.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            times[name].append(_time(run, repeats))
    return times


def _fused(q, k, v, causal):
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="calls per timed window")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch's default)")
    parser.add_argument("--out", default="", help="write JSON here and markdown next to it")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--one-query", action="store_true", help="time only the one-query attention's backward")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.repeats < 1 or args.threads < 0:
        parser.error("--rounds and --repeats must be at least 1, --threads at least 0")
    out = Path(args.out) if args.out else None
    if out and not args.overwrite and (out.exists() or out.with_suffix(".md").exists()):
        print(f"{parser.prog}: error: {out} or its .md exists; pass --overwrite to replace it",
              file=sys.stderr)
        sys.exit(2)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.one_query:
        one_query_rows, lines = one_query_table(args.rounds, args.repeats)
        return _finish(out, {"one_query": one_query_rows}, lines)

    rows = []
    lines = ["Attention, forward + backward, ms per call (median of rounds); `attention` picks the plain path on the "
             f"CPU at bfloat16 with at most {PLAIN_ATTENTION_MAX_KEYS} keys.", "",
             "| case | q | k, v | dtype | fused ms | plain ms | plain / fused time | daps picks |",
             "|---|---|---|---|---|---|---|---|"]
    for name, q_shape, kv_shape, causal in ATTENTION_CASES:
        for dtype in (torch.float32, torch.bfloat16):
            times = _compare({v: _attention_call(fn, q_shape, kv_shape, causal, dtype)
                              for v, fn in (("fused", _fused), ("plain", plain_attention))}, args.rounds, args.repeats)
            ratio = statistics.median(p / f for p, f in zip(times["plain"], times["fused"]))
            probe_q, probe_k = (torch.empty(shape, dtype=dtype, device="cpu") for shape in (q_shape, kv_shape))
            picks = "plain" if plain_attention_applies(probe_q, probe_k) else "fused"
            dtype_name = str(dtype).removeprefix("torch.")
            row = {"case": name, "q": list(q_shape), "kv": list(kv_shape), "causal": causal, "dtype": dtype_name,
                   "fused_ms": [1e3 * t for t in times["fused"]], "plain_ms": [1e3 * t for t in times["plain"]],
                   "plain_over_fused": ratio, "daps_picks": picks}
            rows.append(row)
            line = (f"| {name} | {tuple(q_shape)} | {tuple(kv_shape)} | {dtype_name} | "
                    f"{statistics.median(row['fused_ms']):.2f} | {statistics.median(row['plain_ms']):.2f} | "
                    f"{ratio:.2f} | {picks} |")
            lines.append(line)
            print(line, flush=True)

    lines += ["", "Softmax over the last dim, float32, forward + backward, about 4M entries, ms per call; "
              f"`daps.nets.layers.softmax` is elementwise on the CPU for rows shorter than {SHORT_SOFTMAX_ROWS}.", "",
              "| row length | torch.softmax ms | elementwise ms | elementwise / torch time | daps picks |",
              "|---|---|---|---|---|"]
    softmax_rows = []
    for length in SOFTMAX_ROWS:
        times = _compare({"torch": _softmax_call(lambda x: x.softmax(-1), length),
                          "elementwise": _softmax_call(elementwise_softmax, length),
                          "daps": _softmax_call(softmax, length)}, args.rounds, args.repeats)
        ratio = statistics.median(e / t for e, t in zip(times["elementwise"], times["torch"]))
        picks = "elementwise" if elementwise_softmax_applies(torch.empty(1, length, device="cpu")) else "torch"
        row = {"length": length, **{f"{k}_ms": [1e3 * t for t in v] for k, v in times.items()},
               "elementwise_over_torch": ratio, "daps_picks": picks}
        softmax_rows.append(row)
        line = (f"| {length} | {statistics.median(row['torch_ms']):.2f} | "
                f"{statistics.median(row['elementwise_ms']):.2f} | {ratio:.2f} | {picks} |")
        lines.append(line)
        print(line, flush=True)
    return _finish(out, {"attention": rows, "softmax": softmax_rows}, lines)


def _finish(out: Path | None, tables: dict, lines: list[str]) -> int:
    """Write the report (``tables`` with the machine, threads, torch, code, command) and its markdown to ``out``
    when given."""
    info = machine_info(torch.device("cpu"))
    command = shlex.join(["python", *sys.argv])
    code = git_revision()
    lines += ["", f"Machine: {info['cpu']} ({info['cpu_capability']}, bf16 instructions: "
              f"{info['cpu_bf16']}), {torch.get_num_threads()} torch threads, torch {torch.__version__}; "
              f"code {code}; {datetime.now(timezone.utc).isoformat(timespec='seconds')}.", f"Command: `{command}`"]
    if out:
        report = {**tables, "machine": info, "threads": torch.get_num_threads(),
                  "torch": torch.__version__, "code": code, "command": command,
                  "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out, report)
        write_text_atomic(out.with_suffix(".md"), "\n".join(lines) + "\n")
        print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
