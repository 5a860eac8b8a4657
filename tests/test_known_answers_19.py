"""Mutation sweep 19: known answers for the one-query attention's backward (``daps.nets.layers``), the freed-memory
setting (``daps.allocator``, the CLI's ``--[no-]keep-freed-memory``) and the benchmark scripts that measure them
(``benchmarks/freed_memory.py``, ``benchmarks/attention.py --one-query``, ``benchmarks/run.py``'s flag and the step
scripts that use it), found no test guarding: the custom backward taken without gradients, or not taken when only
some inputs want one; its backward with float32 weights and bfloat16 tensors (CUDA autocast's float32 softmax),
called outside autocast as ``daps train`` calls it, in the narrower type or without a cast; mallopt's parameter
numbers and values (glibc's malloc.h) and a refusal reported as success; freed memory at the top of malloc's heap
given back; the setting applied by commands without the flag, or not by the nested ``prior`` / ``robot`` commands;
the benchmarks' ratios inverted, their order not alternated, their peak not the maximum, the flag appended inverted,
report fields dropped, ``applied`` true when one process was not; the one-query table timing autograd twice; the
step scripts' flag dropped, inverted or not passed to the worker. Each test names the slip it fails on (each checked
against its mutant).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from test_bench import SCRIPT, _load_script
from test_bench import bench as run_script

from daps import allocator
from daps.cli import main
from daps.nets import layers

# --------------------------------------------------------------------------------------------------
# daps.nets.layers: when OneQueryAttention runs, and its backward with mixed dtypes


def _inputs(length: int, dtype: torch.dtype = torch.float32, seed: int = 0, rows: int = 4, heads: int = 2,
            dim: int = 8) -> list[torch.Tensor]:
    """q (N, h, 1, d), keys and values (N, h, L, d), wanting gradients."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(rows, heads, 1, dim, generator=g) * 2  # (N, h, 1, d)
    k, v = (torch.randn(rows, heads, length, dim, generator=g) for _ in range(2))  # (N, h, L, d)
    return [t.to(dtype).requires_grad_(True) for t in (q, k, v)]


def test_the_custom_backward_runs_exactly_when_a_gradient_is_wanted(monkeypatch):
    """Mutants: the custom path taken whenever unmasked (under ``no_grad`` and for detached inputs too), or only
    when all of q, keys and values want a gradient (``all`` for ``any``)."""
    calls = []
    apply = layers.OneQueryAttention.apply
    monkeypatch.setattr(layers.OneQueryAttention, "apply", lambda *a: calls.append(len(a)) or apply(*a))
    q, k, v = _inputs(5)
    with torch.no_grad():
        layers.one_query_attention(q, k, v)
    layers.one_query_attention(q.detach(), k.detach(), v.detach())
    assert calls == []
    out = layers.one_query_attention(q, k.detach(), v.detach())  # only the query wants a gradient
    assert calls == [3] and "OneQueryAttention" in type(out.grad_fn).__name__


@pytest.mark.parametrize("length", [5, 17])
def test_backward_with_float32_weights_and_bfloat16_tensors_outside_autocast(length, monkeypatch):
    """Under CUDA's bf16 autocast the softmax is float32 while q, keys and values are bf16 (the case the backward's
    dtype handling is for; CPU autocast keeps the softmax in bf16), emulated here by a float32 ``softmax``; the
    backward runs outside autocast, as ``daps.train`` calls it. Reference: float64 autograd of the same bf16 inputs
    with the forward's bf16-rounded scores (rounding taken as the identity, as the custom backward does), so only the
    gradients' final rounding to bf16 remains: within 2^-7 of each row's largest gradient. Mutants: no cast of
    ``grad_out`` or of ``values`` to the wider type (a dtype error in the matmul), the backward computed in
    ``grad_out``'s bf16 (errors of 2-12 % of the row's largest)."""
    softmax = layers.softmax
    monkeypatch.setattr(layers, "softmax", lambda x: softmax(x.float()))
    q, k, v = _inputs(length, torch.bfloat16, seed=3, rows=32, heads=4, dim=16)
    g = torch.randn(32, 4, 1, 16, generator=torch.Generator().manual_seed(4)).bfloat16()  # exact in bf16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layers.one_query_attention(q, k, v)
        assert layers.one_query_weights(q, k, None).dtype == torch.float32
    assert "OneQueryAttention" in type(out.grad_fn).__name__ and out.dtype == torch.bfloat16
    (out.float() * g.float()).sum().backward()  # outside autocast

    qd, kd, vd = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    exact = qd @ kd.transpose(-2, -1)  # (N, h, 1, L)
    scores = exact + (exact.detach().bfloat16().double() - exact.detach())  # the forward's bf16 products
    ref = torch.softmax(scores * 16**-0.5, -1) @ vd  # (N, h, 1, d)
    (ref * g.double()).sum().backward()
    for low, high in zip((q, k, v), (qd, kd, vd)):
        assert low.grad.dtype == torch.bfloat16
        err = (low.grad.double() - high.grad).abs() / high.grad.abs().amax((-2, -1), keepdim=True)
        assert err.max().item() < 2**-7, err.max().item()


# --------------------------------------------------------------------------------------------------
# daps.allocator: what mallopt is told, and what a refusal returns


class _Mallopt:
    """A C function stand-in: records its calls and answers from ``answers``."""

    def __init__(self, answers: list[int]):
        self.answers, self.calls = list(answers), []

    def __call__(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return self.answers.pop(0)


@pytest.mark.parametrize("answers, kept, num_calls", [([1, 1], True, 2), ([1, 0], False, 2), ([0, 1], False, 1)])
def test_mallopt_is_told_glibc_s_numbers_and_a_refusal_is_false(answers, kept, num_calls, monkeypatch):
    """glibc's malloc.h: M_MMAP_MAX is -4, M_TRIM_THRESHOLD is -1; mallopt returns 0 when it refuses. Mutants: other
    parameter numbers (e.g. M_MMAP_THRESHOLD, -3, for the trim threshold), another value kept at the top (0), True
    whatever mallopt answered, ``or`` for ``and``."""
    mallopt = _Mallopt(answers)

    class Glibc:
        def __init__(self, name):
            self.mallopt, self.gnu_get_libc_version = mallopt, lambda: b"2.36"

    monkeypatch.setattr(allocator.ctypes.util, "find_library", lambda name: "libc.so.6")
    monkeypatch.setattr(allocator.ctypes, "CDLL", Glibc)
    assert allocator.keep_freed_memory.__wrapped__() is kept
    assert mallopt.calls == [(-4, 0), (-1, 2**31 - 1)][:num_calls]


_TOP_OF_HEAP = """
import ctypes, ctypes.util, importlib.util, json, resource, sys
spec = importlib.util.spec_from_file_location("allocator", sys.argv[2])  # without daps/__init__.py (torch)
allocator = importlib.util.module_from_spec(spec)
spec.loader.exec_module(allocator)
kept = allocator.keep_freed_memory() if sys.argv[1] == "keep" else None
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size, counts = 64 * 2**20, []
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(size)  # nothing is allocated after it: it ends at the top of the heap
    ctypes.memset(block, 1, size)
    libc.free(block)
    counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"kept": kept, "faults": counts}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and getrusage's fault counts: Linux")
def test_freed_memory_at_the_top_of_the_heap_is_kept():
    """A 64 MiB block malloc'd and freed with nothing above it: kept, its pages are faulted in once; by default
    (mmap) every time. Mutants: the trim threshold left at its default or set to 0, or another parameter set in its
    place (the heap's top is then given back at every free; tests/test_allocator.py's torch blocks, with small
    allocations above them, do not see it)."""
    pages = 64 * 2**20 // 4096

    def faults(mode: str) -> dict:
        out = subprocess.run([sys.executable, "-c", _TOP_OF_HEAP, mode, allocator.__file__], capture_output=True,
                             text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    default, kept = faults("default"), faults("keep")
    if not kept["kept"]:
        pytest.skip("this C library is not glibc: nothing to keep")
    assert all(count > pages // 2 for count in default["faults"][1:]), default
    assert all(count < pages // 20 for count in kept["faults"][1:]), kept


# --------------------------------------------------------------------------------------------------
# daps.cli: which commands apply the setting


def test_a_command_without_the_flag_does_not_touch_malloc(monkeypatch, capsys):
    """``daps presets`` computes nothing and has no ``--[no-]keep-freed-memory``: malloc keeps its defaults. Mutant:
    the setting applied when the command has no flag (``getattr``'s default True)."""
    seen = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: seen.append(True) or True)
    assert main(["presets"]) == 0
    assert seen == [] and capsys.readouterr().out


@pytest.mark.parametrize("command", [["prior", "train", "missing.npz", "--out", "prior"],
                                     ["robot", "train", "missing-run", "--out", "policy"]])
@pytest.mark.parametrize("flag, applied", [([], True), (["--no-keep-freed-memory"], False)])
def test_nested_commands_apply_the_flag(command, flag, applied, monkeypatch, tmp_path, capsys):
    """``daps prior train`` and ``daps robot train`` (subcommands of a command group) keep freed memory unless told
    not to, before they look at their inputs (here missing: exit 2). Mutant: the setting applied only for the
    top-level ``train`` and ``compare``."""
    seen = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: seen.append(True) or True)
    monkeypatch.chdir(tmp_path)
    assert main([*command, *flag]) == 2
    assert seen == ([True] if applied else [])
    assert "missing" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# benchmarks/freed_memory.py: the ratio, the order of the processes, the peak, the report


def _freed_memory(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    return _load_script("benchmarks_freed_memory", SCRIPT.parent / "freed_memory.py")


# per round: default 3, 2, 4 s and kept 1, 2, 1 s: ratios default / kept 3, 1, 4 (median 3; kept / default: 1/3)
_SECONDS = {False: [3.0, 2.0, 4.0], True: [1.0, 2.0, 1.0]}
_ORDER = [False, True, True, False, False, True]  # alternating from round to round


def test_freed_memory_presets_ratio_order_peak_and_report(tmp_path, monkeypatch):
    """Three rounds with known times and peaks (each process stood in for): the ratio is the median of default /
    kept (3.00), the default process first in even rounds, the peak the largest of the rounds, ``applied`` false when
    one kept process could not keep, and the report names machine, threads, torch, code, command and date. Mutants:
    kept / default, no alternation, the smallest peak, ``any`` for ``all``, a report field dropped."""
    freed = _freed_memory(monkeypatch)
    order = []

    def fake(spec, folder):
        keep, r = spec["keep"], order.count(spec["keep"])
        order.append(keep)
        peak = (r + 1) * 2**20 * (10 if keep else 1)  # default 1, 2, 3 MiB; kept 10, 20, 30 MiB
        return {"seconds": [_SECONDS[keep][r]], "median_s": _SECONDS[keep][r], "memory": {"bytes": peak},
                "kept": keep and r != 1}  # the second kept process could not keep

    monkeypatch.setattr(freed, "run_process", fake)
    out = tmp_path / "freed.json"
    assert freed.main(["--presets", "mnist", "--methods", "vqvae", "--rounds", "3", "--out", str(out)]) == 0
    assert order == _ORDER
    report = json.loads(out.read_text())
    assert set(report) == {"rows", "machine", "threads", "torch", "code", "command", "date"}
    (row,) = report["rows"]
    assert row["default_over_kept"] == 3.0 and row["applied"] is False
    assert "| 3.000 | 1.000 | 3.00 | 3 / 30 MiB |" in out.with_suffix(".md").read_text()


def test_freed_memory_cli_ratio_order_and_peak(tmp_path, monkeypatch):
    """``--cli`` with each command run stood in for: ratio default / kept (3.00), alternating order, the largest
    peak, ``--threads`` passed on. Mutants: kept / default, no alternation, the smallest peak."""
    freed = _freed_memory(monkeypatch)
    order = []

    def fake(words, keep, threads):
        r = order.count(keep)
        order.append(keep)
        assert words == ["daps", "presets"] and threads == 2
        return {"seconds": _SECONDS[keep][r], "peak_bytes": (r + 1) * 2**20 * (10 if keep else 1)}

    monkeypatch.setattr(freed, "run_command", fake)
    out = tmp_path / "cli.json"
    assert freed.main(["--cli", "daps presets", "--rounds", "3", "--threads", "2", "--out", str(out)]) == 0
    assert order == _ORDER
    (row,) = json.loads(out.read_text())["rows"]
    assert row["default_over_kept"] == 3.0
    assert "| `daps presets` | 3.0 | 1.0 | 3.00 | 3 / 30 MiB |" in out.with_suffix(".md").read_text()


@pytest.mark.parametrize("keep, flag", [(False, "--no-keep-freed-memory"), (True, "--keep-freed-memory")])
def test_freed_memory_cli_appends_the_setting_it_measures(keep, flag, monkeypatch):
    """``run_command`` runs ``python -m daps ...`` with the flag of the setting it reports, and ``OMP_NUM_THREADS``
    as ``--threads`` (the process itself stood in for by an empty one). Mutant: the flags swapped."""
    freed = _freed_memory(monkeypatch)
    seen = []
    popen = subprocess.Popen

    def fake(command, **kwargs):
        seen.append((command, kwargs["env"].get("OMP_NUM_THREADS")))
        return popen([sys.executable, "-c", "pass"], **kwargs)

    monkeypatch.setattr(freed.subprocess, "Popen", fake)
    result = freed.run_command(["daps", "presets", "--json"], keep, 3)
    ((command, threads),) = seen  # daps through a launcher that records its own peak memory
    assert command[:2] == [sys.executable, "-c"] and "runpy.run_module(\"daps\"" in command[2]
    assert command[4:] == ["presets", "--json", flag] and threads == "3"
    assert result["seconds"] > 0 and result["peak_bytes"] > 0


# --------------------------------------------------------------------------------------------------
# benchmarks/attention.py --one-query: what is timed, and the ratio


def test_one_query_table_times_the_custom_backward_against_autograd(monkeypatch):
    """The ``daps`` variant runs :class:`OneQueryAttention`, the ``autograd`` one does not; with known times
    (autograd 2, 4, 2 ms; daps 1, 1, 1.5 ms) the ratio is the median of daps / autograd, 0.50. Mutants: autograd's
    path timed as ``daps``, the ratio inverted (2.00)."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    attention = _load_script("benchmarks_attention", SCRIPT.parent / "attention.py")
    monkeypatch.setattr(attention, "ONE_QUERY_ROWS", (3, 2, 4))
    monkeypatch.setattr(attention, "ONE_QUERY_LENGTHS", [5])
    paths = []
    real = attention.one_query_attention

    def recording(q, k, v):
        out = real(q, k, v)
        paths.append(type(out.grad_fn).__name__)
        return out

    monkeypatch.setattr(attention, "one_query_attention", recording)
    ran = {}

    def fake_compare(variants, rounds, repeats):
        for name, run in variants.items():
            before = len(paths)
            run()
            ran[name] = paths[before:]
        return {"autograd": [2e-3, 4e-3, 2e-3], "daps": [1e-3, 1e-3, 1.5e-3]}

    monkeypatch.setattr(attention, "_compare", fake_compare)
    rows, lines = attention.one_query_table(3, 1)
    assert ran["autograd"] == [] and len(ran["daps"]) == 1 and "OneQueryAttention" in ran["daps"][0]
    assert rows[0]["daps_over_autograd"] == 0.5 and rows[0]["daps_ms"] == [1.0, 1.0, 1.5]
    assert lines[-1] == "| 5 | 2.00 | 1.00 | 0.50 |"


# --------------------------------------------------------------------------------------------------
# benchmarks/run.py's flag, and the step scripts that use it


def test_run_flag_defaults_on_and_apply_calls_keep_only_when_asked(monkeypatch):
    """``--[no-]keep-freed-memory``: on by default, as in ``daps train``; ``apply_freed_memory`` asks malloc only
    when on and returns its answer, False when off; ``run_benchmark`` applies its spec's setting (off when the spec
    has none) and reports it. Mutants: the default off, the apply inverted."""
    import argparse

    parser = argparse.ArgumentParser()
    run_script.add_freed_memory_arg(parser)
    assert parser.parse_args([]).keep_freed_memory is True
    assert parser.parse_args(["--no-keep-freed-memory"]).keep_freed_memory is False
    seen = []
    monkeypatch.setattr(run_script, "keep_freed_memory", lambda: seen.append(True) or "answer")
    assert run_script.apply_freed_memory(False) is False and seen == []
    assert run_script.apply_freed_memory(True) == "answer" and seen == [True]
    monkeypatch.setattr(run_script, "bench_method", lambda *a: {"steps_per_s": 1.0})
    spec = {"preset": "mnist", "method": "vqvae", "overrides": [], "device": "cpu", "steps_per_window": 1,
            "windows": 1, "warmup": 0, "isolated": False, "threads": 0}
    assert run_script.run_benchmark(spec)["freed_memory_kept"] is False and seen == [True]
    assert run_script.run_benchmark({**spec, "keep_freed_memory": True})["freed_memory_kept"] == "answer"


@pytest.mark.parametrize("flag, keep", [([], True), (["--no-keep-freed-memory"], False)])
def test_run_passes_the_flag_to_its_worker_processes(flag, keep, monkeypatch, tmp_path):
    """``benchmarks/run.py``'s spec for each worker process carries the setting (the worker applies it). Mutant: the
    spec without it (the worker then keeps malloc's defaults)."""
    specs = []

    def fake(spec, folder):
        specs.append(spec)
        raise RuntimeError("stop")

    monkeypatch.setattr(run_script, "run_isolated", fake)
    argv = ["--presets", "mnist", "--methods", "vqvae", "--device", "cpu", "--out", str(tmp_path), *flag]
    assert run_script.main(argv) == 1
    assert [s["keep_freed_memory"] for s in specs] == [keep]


@pytest.mark.parametrize("script, argv", [("step_variants.py", ["--variants", "eager"]), ("bench_step.py", []),
                                          ("profile_step.py", ["--out", "{tmp}/profile.json"])])
@pytest.mark.parametrize("flag, keep", [([], True), (["--no-keep-freed-memory"], False)])
def test_step_scripts_apply_the_flag_before_building_the_model(script, argv, flag, keep, monkeypatch, tmp_path):
    """``step_variants.py``, ``bench_step.py`` and ``profile_step.py`` apply ``--[no-]keep-freed-memory`` before
    the model is built (stopped there). Mutant: a script that never applies it."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    module = _load_script(f"benchmarks_{script[:-3]}", SCRIPT.parent / script)
    seen = []
    monkeypatch.setattr(module, "apply_freed_memory", lambda on: seen.append(on) or on)

    def stop(*args, **kwargs):
        raise SystemExit(7)

    monkeypatch.setattr(module, "setup", stop)
    with pytest.raises(SystemExit) as stopped:
        module.main([a.replace("{tmp}", str(tmp_path)) for a in argv] + flag)
    assert stopped.value.code == 7 and seen == [keep]


@pytest.mark.parametrize("code", [0, 3])
def test_freed_memory_cli_survives_a_command_that_writes_much_to_stderr(code, monkeypatch):
    """A command writing 300 KB to standard error (more than a pipe holds) and exiting ``code``: measured, or its
    failure reported with its last line, within seconds. Fails on standard error read from a pipe only after
    ``wait4`` (the command then blocks on its write for ever)."""
    import threading

    freed = _freed_memory(monkeypatch)
    children = []
    popen = subprocess.Popen
    noisy = f"import sys; sys.stderr.write('x' * 300_000 + '\\nlast line\\n'); sys.exit({code})"

    def fake(command, **kwargs):
        children.append(popen([sys.executable, "-c", noisy], **kwargs))
        return children[-1]

    monkeypatch.setattr(freed.subprocess, "Popen", fake)
    done = {}

    def measure():
        try:
            done["result"] = freed.run_command(["daps", "presets"], True, 1)
        except RuntimeError as err:
            done["error"] = str(err)

    thread = threading.Thread(target=measure)
    thread.start()
    thread.join(timeout=15)
    if thread.is_alive():  # blocked: free it before failing
        children[0].kill()
        thread.join()
        pytest.fail("run_command blocked on the command's standard error")
    if code == 0:
        assert done["result"]["seconds"] > 0
    else:
        assert "last line" in done["error"]
