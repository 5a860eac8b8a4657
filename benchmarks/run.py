"""The benchmark suite: training-step speed of every method at every preset, with a time breakdown.

    python benchmarks/run.py [--presets mnist] [--methods daps,vqvae,...] [--steps-per-window 5] [--windows 5]
        [--warmup 3] [--out benchmarks/results] [--name NAME] [--overwrite] [--device cpu|cuda] [--threads N]
        [--in-process] [key=value ...]

Each (preset, method) model is built exactly as ``daps train`` builds it (preset -> overrides -> method ->
optimizers) and trained on random inputs of the preset's image shape and batch size (binary for MNIST, standard
normal for the standardized natural images; no dataset: the inputs sit in memory, so data loading is not part
of a step; ``benchmarks/data_pipeline.py`` times the image loader). The MNIST-only Gaussian VAE is left out of
other presets unless named. Each benchmark runs in a fresh Python process
(one after the other), so that no benchmark inherits another's memory or allocator state; ``--in-process``
runs them all in this one (quicker to start, but CPU peak memory is then unreliable). For each it records

- steps/s of the full step (forward, backward, clipping + optimizer): ``--windows`` windows of
  ``--steps-per-window`` steps after ``--warmup`` steps; median, min and max over the windows;
- forward / backward / optimizer: the three phases of ``--windows`` further real steps, timed one by one
  (median per phase; they add up to about one step);
- for the categorical methods (an encoder with ``sample`` and ``log_prob``): sampling K codes per input,
  the teacher-forced pass (``log_prob`` forward + backward) and the decoder on the K*B codes (forward +
  backward), each timed on its own with the inputs it sees inside a step (median of ``--windows``), and the
  optimizer phase above. K is the number of codes the method decodes per input (``num_samples`` of its config
  section, else 1). For gumbel / grmck the step itself samples differently (relaxed, through the chain);
  their parts time the same networks on one exact code;
- peak memory: CUDA ``torch.cuda.max_memory_allocated``; CPU the peak resident set size
  (``resource.getrusage().ru_maxrss``, its high-water mark first reset through ``/proc/self/clear_refs`` where
  Linux allows it) minus the resident size before the model was built. One untimed step of a B=2 copy of the
  model runs first, so that torch's one-time lazy initialization (about 100 MiB of RSS) is not counted;
- per preset, DAPS step time / VQ-VAE step time (the ``daps`` and ``vqvae`` methods of the preset).

``train.precision=bfloat16`` and ``train.compile=true`` are honoured as ``daps train`` honours them: the forward
runs under bf16 autocast (also in the timed parts), and the sampler's static-shape step and the DAPS objective
go through ``torch.compile`` (compiled during the warm-up steps, whose seconds are recorded in ``warmup_s``).
``train.cuda_graph=true`` (CUDA): the whole step is one CUDA graph (:class:`daps.graphed.GraphedStep`: three eager
steps, then recorded during the warm-up and replayed in the timed windows); its phases and parts are not timed
(inside one graph they do not exist apart).

It prints a markdown table and writes ``OUT/NAME.json`` (everything, incl. the machine, torch version, thread
count, exact command and every resolved config) and ``OUT/NAME.md`` (the table). NAME defaults to
``<device>-<UTC time>``; an existing result file is never replaced unless ``--overwrite`` is given.
Errors in what was typed (unknown preset or method, a bad override, an unavailable device, an existing result
file) print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
# This checkout's package, whatever else is installed (another clone's editable install, say): the results name
# this checkout's commit. The scripts that import this module first get it too.
sys.path.insert(0, str(REPO))

import daps  # noqa: E402
from daps.allocator import keep_freed_memory  # noqa: E402
from daps.config import Config  # noqa: E402
from daps.config_io import applicable_overrides, check_overrides_used, config_to_dict, parse_overrides  # noqa: E402
from daps.data import dataset_spec  # noqa: E402
from daps.graphed import GraphedStep  # noqa: E402
from daps.methods import METHODS, build_method  # noqa: E402
from daps.optim import Optimizers  # noqa: E402
from daps.precision import float32_kernels  # noqa: E402
from daps.presets import get_preset  # noqa: E402
from daps.provenance import cpu_bf16, cpu_name, source_revision  # noqa: E402
from daps.runfolder import write_text_atomic  # noqa: E402
from daps.train import compile_mode  # noqa: E402

MiB = 2**20


# -- the machine -------------------------------------------------------------------------------------


def git_revision() -> str:
    """``<commit>`` of the checkout, with ``+dirty`` when it has uncommitted changes; outside git
    ``$DAPS_GIT_REVISION``, else ``unknown``."""
    return source_revision(REPO)


def new_report_paths(prog: str, out: str, name: str, device_type: str, overwrite: bool) -> list[Path] | None:
    """``[OUT/NAME.json, OUT/NAME.md]``, NAME defaulting to ``<device>-<UTC time>``; None, after one line on stderr
    naming the file, when one of them exists and ``overwrite`` is not given."""
    name = name or f"{device_type}-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}"
    paths = [Path(out) / f"{name}.json", Path(out) / f"{name}.md"]
    if not overwrite and any(path.exists() for path in paths):
        print(f"{prog}: error: {paths[0]} exists; pass --overwrite or another --name", file=sys.stderr)
        return None
    return paths


def machine_info(device: torch.device) -> dict:
    info = {
        "cpu": cpu_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the vector instructions torch's kernels use
        "cpu_bf16": cpu_bf16(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "gpu": None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
    return info


# -- timing ------------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(
    fn: Callable[[], object], repeats: int, device: torch.device, setup: Callable[[], object] | None = None
) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls; ``setup()`` runs untimed before each."""
    times = []
    for _ in range(repeats):
        if setup is not None:
            setup()
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def num_codes_per_input(model: torch.nn.Module) -> int:
    """K: the codes a method samples and decodes per input (``num_samples`` of its config section, else 1)."""
    return int(getattr(getattr(model, "cfg", None), "num_samples", 1))


def is_categorical(model: torch.nn.Module) -> bool:
    """Whether the method's encoder is a categorical q(z|x) that can ``sample`` codes and score them."""
    encoder = getattr(model, "encoder", None)
    return hasattr(encoder, "sample") and hasattr(encoder, "log_prob")


def categorical_parts(
    model: torch.nn.Module, x: torch.Tensor, k: int, generator: torch.Generator, precision: str = "float32"
) -> dict[str, Callable[[], object]]:
    """The parts of a sample-then-score step (DAPS's), each with the inputs it sees inside a step.

    ``sampling``: K codes per input (no gradient); ``teacher_forced``: ``log q`` of those codes, forward +
    backward; ``decoder``: ``log p(x | z)`` of the K*B codes, forward + backward. Gradients accumulate across
    calls; call ``optimizers.zero_grad()`` before each (untimed) for the cost of a step's first backward.
    Each forward runs under the step's autocast (``precision``).
    """
    encoder, decoder, likelihood = model.encoder, model.decoder, model.likelihood
    with autocast(x.device, precision):
        indices = encoder.sample(x, k, generator).indices  # (K, B, T)
    b = x.shape[0]

    def sample() -> None:
        with autocast(x.device, precision):
            encoder.sample(x, k, generator)

    def teacher_forced() -> None:
        with autocast(x.device, precision):
            log_q = encoder.log_prob(x, indices).sum()  # (K, B, T) -> scalar
        log_q.backward()

    def decode() -> None:
        with autocast(x.device, precision):
            params = decoder(indices.flatten(0, 1))  # (K*B, *param_shape)
            log_p = likelihood.log_prob(params.view(k, b, *params.shape[1:]), x).mean()  # (K, B) -> scalar
        log_p.backward()

    return {
        "sampling": sample,
        "teacher_forced": teacher_forced,
        "decoder": decode,
    }


# -- memory ------------------------------------------------------------------------------------------


class PeakMemory:
    """Peak memory of one benchmark: CUDA allocations, or the growth of the CPU resident set size."""

    def __init__(self, device: torch.device, isolated: bool):
        self.device, self.isolated = device, isolated

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
            self.kind = "cuda: torch.cuda.max_memory_allocated minus what was allocated before the model was built"
            return
        self.kind = f"cpu: peak RSS ({self._source()}) minus RSS before the model was built"
        try:  # reset the kernel's high-water mark, VmHWM, to the current RSS (Linux >= 4.0)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            self.kind += " (high-water mark not resettable: growth over the process's earlier peak, an underestimate)"
        if self.isolated:
            self.kind += "; one fresh process per benchmark"
        else:
            self.kind += "; all benchmarks in one process (memory freed by an earlier one and reused does not show)"
        self.baseline = self._peak_rss()

    @staticmethod
    def _source() -> str:
        return "/proc/self/status VmHWM" if vm_hwm() is not None else "getrusage ru_maxrss"

    @staticmethod
    def _peak_rss() -> int:
        """This process's peak resident set in bytes: Linux's VmHWM where readable (the process's own, reset by
        clear_refs), else ``ru_maxrss``, which a process started by ``subprocess`` inherits from its parent's peak (so
        a child smaller than its parent would read as the parent's peak)."""
        hwm = vm_hwm()
        if hwm is not None:
            return hwm
        scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale

    def stop(self) -> dict:
        peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else self._peak_rss()
        return {"bytes": max(peak - self.baseline, 0), "peak_bytes": peak, "kind": self.kind}


def vm_hwm() -> int | None:
    """``VmHWM`` of ``/proc/self/status`` in bytes (Linux), else None."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None


# -- one benchmark -----------------------------------------------------------------------------------


def apply_compile(model: torch.nn.Module, cfg: Config, device: torch.device) -> None:
    """What ``train.compile=true`` does in ``daps.train.train()``: the encoder's static-shape sampler step and, for
    DAPS, the differentiable part of the step go through ``torch.compile`` in the mode ``train()`` takes
    (:func:`daps.train.compile_mode`). Compilation itself happens in the first calls (the warm-up steps)."""
    model.compile_step(mode=compile_mode(device, cfg.train.cuda_graph))


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """The forward pass's autocast context of ``train()``: bf16 when ``train.precision=bfloat16``, else disabled."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16")


def setup(
    cfg: Config, device: torch.device
) -> tuple[torch.nn.Module, Optimizers, torch.Tensor, torch.Generator]:
    """Model and optimizers as ``train()`` builds them (compiled when ``train.compile``), random inputs
    ``x (B, C, H, W)`` (binary for MNIST, standard normal for standardized natural images), a generator."""
    shape = tuple(cfg.data.image_shape)
    with torch.random.fork_rng(devices=[]):  # seeded like train(), without touching the global RNG
        torch.manual_seed(cfg.train.seed)
        model = build_method(cfg, shape).to(device)
    if cfg.train.compile:
        apply_compile(model, cfg, device)
    model.train()
    optimizers = Optimizers(
        model, model.optimizer_specs(cfg.optim.lr, cfg.optim.grad_clip), cfg.optim.weight_decay,
        capturable=cfg.train.cuda_graph,
    )
    generator = torch.Generator(device).manual_seed(cfg.train.seed + 1)
    g = torch.Generator().manual_seed(0)
    if dataset_spec(cfg.data.name).likelihood == "bernoulli":
        x = (torch.rand(cfg.train.batch_size, *shape, generator=g, device=g.device) > 0.87).float()  # 13 % on, as MNIST
    else:
        x = torch.randn(cfg.train.batch_size, *shape, generator=g, device=g.device)  # standardized natural-image scale
    x = x.to(device)  # (B, C, H, W)
    return model, optimizers, x, generator


def step_once(
    model: torch.nn.Module, optimizers: Optimizers, x: torch.Tensor, step: int, generator: torch.Generator,
    precision: str = "float32",
) -> None:
    """One training step, as in ``train()`` (the forward under bf16 autocast when ``precision`` is bfloat16)."""
    with autocast(x.device, precision):
        out = model(x, step, generator=generator)
    optimizers.zero_grad()
    out.loss.backward()
    optimizers.step()


def make_step(
    cfg: Config, model: torch.nn.Module, optimizers: Optimizers, x: torch.Tensor, generator: torch.Generator,
    steps: Iterator[int],
) -> Callable[[], None]:
    """One training step as ``train()`` runs it for ``cfg``, at the next step index of ``steps``: eager
    (:func:`step_once`), or with ``train.cuda_graph`` through :class:`daps.graphed.GraphedStep` (eager for its
    first steps, then recorded, then replayed), under ``train.tf32``'s setting as in ``train()``."""
    precision, tf32 = cfg.train.precision, cfg.train.tf32
    graphed = GraphedStep(model, optimizers, generator, autocast=precision == "bfloat16") if cfg.train.cuda_graph \
        else None

    def one_step() -> None:
        with float32_kernels(tf32):
            if graphed is None:
                step_once(model, optimizers, x, next(steps), generator, precision)
            else:
                optimizers.finish(graphed(x, next(steps))[1])

    return one_step


def warmup_steps(cfg: Config, warmup: int) -> int:
    """``warmup`` steps, or enough for :class:`daps.graphed.GraphedStep` to run its eager steps and record the graph
    (so the timed steps are replays) when ``train.cuda_graph``."""
    return max(warmup, GraphedStep.warmup_steps + 1) if cfg.train.cuda_graph else warmup


def time_windows(step: Callable[[], None], windows: int, steps_per_window: int, device: torch.device) -> list[float]:
    """Steps/s of each of ``windows`` windows of ``steps_per_window`` calls of ``step()``."""
    rates = []
    for _ in range(windows):
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(steps_per_window):
            step()
        synchronize(device)
        rates.append(steps_per_window / (time.perf_counter() - t0))
    return rates


def time_phases(
    model: torch.nn.Module, optimizers: Optimizers, x: torch.Tensor, generator: torch.Generator, step: int,
    repeats: int, device: torch.device, precision: str = "float32",
) -> dict[str, float]:
    """Median ms of the forward, backward and optimizer phases of ``repeats`` real training steps."""
    times: dict[str, list[float]] = {"forward": [], "backward": [], "optimizer": []}
    for i in range(repeats):
        optimizers.zero_grad()
        synchronize(device)
        t0 = time.perf_counter()
        with autocast(device, precision):
            out = model(x, step + i, generator=generator)
        synchronize(device)
        t1 = time.perf_counter()
        out.loss.backward()
        synchronize(device)
        t2 = time.perf_counter()
        optimizers.step()
        synchronize(device)
        t3 = time.perf_counter()
        for name, seconds in zip(times, (t1 - t0, t2 - t1, t3 - t2)):
            times[name].append(seconds)
    return {name: 1000 * statistics.median(v) for name, v in times.items()}


def bench_method(
    cfg: Config, device: torch.device, steps_per_window: int, windows: int, warmup: int, isolated: bool
) -> dict:
    """Time ``cfg``'s training step on random binary inputs; returns one result row (JSON-ready)."""
    # One step of a B=2 copy first: torch's one-time lazy initialization (about 100 MiB of CPU RSS) is then
    # not counted as this method's memory, and the small tensors it frees leave little for reuse.
    small = copy.deepcopy(cfg)
    small.train.batch_size = 2
    small.train.compile = small.train.cuda_graph = False  # only for torch's lazy initialization
    model, optimizers, x, generator = setup(small, device)
    step_once(model, optimizers, x, 0, generator, cfg.train.precision)
    del model, optimizers, x, generator

    with float32_kernels(cfg.train.tf32):  # the phases and parts below as the steps (train.tf32)
        return _bench_method(cfg, device, steps_per_window, windows, warmup, isolated)


def _bench_method(
    cfg: Config, device: torch.device, steps_per_window: int, windows: int, warmup: int, isolated: bool
) -> dict:
    memory = PeakMemory(device, isolated)
    memory.start()
    model, optimizers, x, generator = setup(cfg, device)
    precision = cfg.train.precision
    steps = iter(range(10**9))  # the step index the schedules see
    one_step = make_step(cfg, model, optimizers, x, generator, steps)
    graphed = cfg.train.cuda_graph
    warmup = warmup_steps(cfg, warmup)  # graphed: the eager steps and the recording, all in the warm-up
    warmup_s = []  # each warm-up step's seconds (the first includes compilation when train.compile)
    for _ in range(warmup):
        warmup_s.append(time_call(one_step, 1, device))
    rates = time_windows(one_step, windows, steps_per_window, device)
    phases = None if graphed else time_phases(model, optimizers, x, generator, next(steps), windows, device, precision)
    k = num_codes_per_input(model)
    breakdown = None
    if is_categorical(model) and phases is not None:
        parts = categorical_parts(model, x, k, generator, precision)
        breakdown = {name: 1000 * time_call(fn, windows, device, optimizers.zero_grad) for name, fn in parts.items()}
        breakdown["optimizer"] = phases["optimizer"]  # it needs every gradient: a real step's
    optimizers.zero_grad()
    peak_memory = memory.stop()

    step_ms = [1000 / r for r in rates]
    return {
        "preset": cfg.preset,
        "method": cfg.method,
        "batch_size": cfg.train.batch_size,
        "num_samples": k,
        "num_tokens": cfg.encoder.num_tokens,
        "vocab_size": getattr(model, "vocab_size", None),
        "image_shape": list(cfg.data.image_shape),
        "num_params": sum(p.numel() for p in model.parameters()),
        "torch_threads": torch.get_num_threads(),
        "precision": precision,
        "compile": cfg.train.compile,
        "cuda_graph": cfg.train.cuda_graph,
        "tf32": cfg.train.tf32,
        "warmup_s": warmup_s,
        "steps_per_s": {"median": statistics.median(rates), "min": min(rates), "max": max(rates), "windows": rates},
        "step_ms": {"median": statistics.median(step_ms), "min": min(step_ms), "max": max(step_ms)},
        "phases_ms": phases,
        "breakdown_ms": breakdown,
        "peak_memory": peak_memory,
        "config": config_to_dict(cfg),
    }


# -- output ------------------------------------------------------------------------------------------


def step_time_ratios(results: list[dict], presets: list[str]) -> dict[str, dict]:
    """Per preset, DAPS step time / VQ-VAE step time (median step times of the same run, timed one after the
    other: their load may differ, which the report says; ``step_variants.py`` interleaves them)."""
    ratios = {}
    for preset in presets:
        rows = {r["method"]: r for r in results if r["preset"] == preset}
        missing = [m for m in ("daps", "vqvae") if m not in rows]
        if missing:
            ratios[preset] = {"daps_over_vqvae": None, "note": f"{' and '.join(missing)} not in this run"}
        else:
            daps_ms, vq_ms = rows["daps"]["step_ms"]["median"], rows["vqvae"]["step_ms"]["median"]
            ratios[preset] = {"daps_over_vqvae": daps_ms / vq_ms, "daps_step_ms": daps_ms, "vqvae_step_ms": vq_ms}
    return ratios


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if value < 10 else f"{value:.0f}"


def markdown_table(report: dict) -> str:
    """The results as markdown: one row per (preset, method), then the ratios and the machine."""
    lines = [
        (
            "| preset | method | B | K | steps/s (median) | min - max | step ms | forward | backward | optimizer "
            "| sampling | teacher-forced | decoder | peak mem MiB |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        sps, ph, br = r["steps_per_s"], r["phases_ms"] or {}, r["breakdown_ms"] or {}
        lines.append(
            f"| {r['preset']} | {r['method']} | {r['batch_size']} | {r['num_samples']} | {sps['median']:.3g} "
            f"| {sps['min']:.3g} - {sps['max']:.3g} | {_ms(r['step_ms']['median'])} | {_ms(ph.get('forward'))} "
            f"| {_ms(ph.get('backward'))} | {_ms(ph.get('optimizer'))} | {_ms(br.get('sampling'))} "
            f"| {_ms(br.get('teacher_forced'))} | {_ms(br.get('decoder'))} "
            f"| {r['peak_memory']['bytes'] / MiB:.1f} |"
        )
    lines.append("")
    for preset, ratio in report["ratios"].items():
        if ratio["daps_over_vqvae"] is None:
            lines.append(f"- {preset}: DAPS step time / VQ-VAE step time: n/a ({ratio['note']})")
        else:
            lines.append(
                f"- {preset}: DAPS step time / VQ-VAE step time = {ratio['daps_over_vqvae']:.2f} "
                f"({_ms(ratio['daps_step_ms'])} ms / {_ms(ratio['vqvae_step_ms'])} ms)"
            )
    if any(r["daps_over_vqvae"] is not None for r in report["ratios"].values()):
        lines.append(
            "  (DAPS and VQ-VAE were timed one after the other: on a shared machine the load may differ between them; "
            "`benchmarks/step_variants.py --variants eager,vqvae` times both in interleaved rounds)"
        )
    m, s = report["machine"], report["settings"]
    where = m["gpu"] or m["cpu"]
    threads = "/".join(str(t) for t in sorted({r["torch_threads"] for r in report["results"]})) or "-"
    memory_kind = report["results"][0]["peak_memory"]["kind"] if report["results"] else "-"
    precisions = "/".join(sorted({r["precision"] for r in report["results"]})) or "-"
    compiled = "/".join(sorted({str(r["compile"]).lower() for r in report["results"]})) or "-"
    graphed = "/".join(sorted({str(r.get("cuda_graph", False)).lower() for r in report["results"]})) or "-"
    lines += [
        "",
        (
            f"Machine: {where}, {m['cpus_usable']} usable of {m['cpu_count']} CPUs, {threads} torch threads, "
            f"torch {m['torch']}, Python {m['python']}, device {m['device']}; code {report['code']}; "
            f"{report['created_utc']}."
        ),
        (
            f"Steps/s: {s['windows']} windows of {s['steps_per_window']} steps after {s['warmup']} warm-up steps. "
            "Times in ms (median); forward / backward / optimizer are the phases of real steps; sampling / "
            "teacher-forced / decoder (forward + backward) are timed on their own (categorical methods only). "
            f"Peak memory: {memory_kind}."
        ),
        (
            f"train.precision={precisions}, train.compile={compiled}, train.cuda_graph={graphed} (honoured as "
            "`daps train` does: bf16 autocast of the forward; torch.compile of the sampler step and the DAPS "
            "objective, compiled during warm-up; the whole step as one CUDA graph, recorded during warm-up, its "
            "phases not timed)."
        ),
        f"Command: `{report['command']}`",
    ]
    return "\n".join(lines) + "\n"


# -- the command -------------------------------------------------------------------------------------


def _csv(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="benchmarks/run.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", default="mnist", help="comma-separated presets (default: mnist)")
    parser.add_argument("--methods", default="", help="comma-separated methods (default: every method in METHODS)")
    parser.add_argument("--steps-per-window", type=int, default=5)
    parser.add_argument("--windows", type=int, default=5, help="timing windows; also the repeats of each part")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--out", default="benchmarks/results", help="folder for NAME.json and NAME.md")
    parser.add_argument("--name", default="", help="file name stem (default: <device>-<UTC time>)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing result files of the same name")
    parser.add_argument("--device", default="", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument(
        "--in-process", action="store_true",
        help="run every benchmark in this process (faster to start; CPU peak memory then unreliable)",
    )
    add_freed_memory_arg(parser)
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="key=value config overrides, applied to every method")
    return parser


def _resolve(args: argparse.Namespace) -> tuple[torch.device, list[str], list[str], list[Config]]:
    """Check everything that was typed before any timing; raises ValueError with one line."""
    for name in ("steps_per_window", "windows"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        raise ValueError("--warmup must be >= 0")
    if args.device not in ("", "cpu", "cuda") and not args.device.startswith("cuda:"):
        raise ValueError(f"--device must be cpu or cuda, got {args.device!r}")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    presets = _csv(args.presets)
    methods = _csv(args.methods) or list(METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method {unknown[0]!r}; choose from: {', '.join(METHODS)}")
    if not presets:
        raise ValueError("--presets is empty")
    configs = []
    for p in presets:
        for m in methods:
            only = METHODS[m].only_presets
            if only is not None and p not in only and not _csv(args.methods):
                continue  # e.g. the MNIST-only Gaussian VAE; skipped unless asked for by name (then: an error)
            cfg = get_preset(p, m)
            configs.append(parse_overrides(cfg, applicable_overrides(cfg, args.overrides)))
    check_overrides_used(args.overrides)
    return device, presets, methods, configs


def add_freed_memory_arg(parser: argparse.ArgumentParser) -> None:
    """``--[no-]keep-freed-memory``, default on as in ``daps train`` (:func:`daps.allocator.keep_freed_memory`)."""
    parser.add_argument(
        "--keep-freed-memory", action=argparse.BooleanOptionalAction, default=True,
        help="keep freed CPU memory for reuse, as daps train does by default (glibc's malloc)",
    )


def apply_freed_memory(keep: bool) -> bool:
    """:func:`daps.allocator.keep_freed_memory` when ``keep``; whether it is in effect."""
    return keep_freed_memory() if keep else False


def run_benchmark(spec: dict) -> dict:
    """One benchmark from a JSON-ready ``spec`` (preset, method, overrides, device, counts, threads, freed memory
    kept)."""
    kept = apply_freed_memory(spec.get("keep_freed_memory", False))
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    cfg = get_preset(spec["preset"], spec["method"])
    cfg = parse_overrides(cfg, applicable_overrides(cfg, spec["overrides"]))
    result = bench_method(
        cfg, torch.device(spec["device"]), spec["steps_per_window"], spec["windows"], spec["warmup"], spec["isolated"]
    )
    return {**result, "freed_memory_kept": kept}


def run_isolated(spec: dict, folder: Path) -> dict:
    """:func:`run_benchmark` in a fresh Python process, so that memory and allocator state start clean."""
    spec_path = folder / f"{spec['preset']}-{spec['method']}.json"
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ)  # the worker imports the same daps as this process
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(daps.__file__).parent.parent), env.get("PYTHONPATH")]))
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)]
    proc = subprocess.run(command, env=env, check=False)  # its output goes straight to ours
    if proc.returncode != 0:
        raise RuntimeError(f"the benchmark of {spec['preset']} / {spec['method']} failed (exit code {proc.returncode})")
    return json.loads(spec_path.with_suffix(".result.json").read_text())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:  # internal: one benchmark, spec and result as JSON files
        spec_path = Path(args.worker)
        result = run_benchmark(json.loads(spec_path.read_text()))
        spec_path.with_suffix(".result.json").write_text(json.dumps(result))
        return 0
    command = shlex.join(["python", *(sys.argv if argv is None else ["benchmarks/run.py", *argv])])
    try:
        device, presets, methods, configs = _resolve(args)
        name = args.name or f"{device.type}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
        out = Path(args.out)
        paths = {ext: out / f"{name}.{ext}" for ext in ("json", "md")}
        existing = [str(p) for p in paths.values() if p.exists()]
        if existing and not args.overwrite:
            raise ValueError(f"{existing[0]} exists; pass --overwrite to replace it or choose another --name")
        out.mkdir(parents=True, exist_ok=True)
    except (ValueError, OSError) as err:
        print(f"benchmarks/run.py: error: {err}", file=sys.stderr)
        return 2

    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    with tempfile.TemporaryDirectory(prefix="daps-bench-") as tmp:
        for cfg in configs:
            print(f"benchmarking {cfg.preset} / {cfg.method} ...", file=sys.stderr, flush=True)
            spec = {
                "preset": cfg.preset, "method": cfg.method, "overrides": args.overrides, "device": str(device),
                "steps_per_window": args.steps_per_window, "windows": args.windows, "warmup": args.warmup,
                "threads": args.threads, "isolated": not args.in_process, "keep_freed_memory": args.keep_freed_memory,
            }
            try:
                results.append(run_benchmark(spec) if args.in_process else run_isolated(spec, Path(tmp)))
            except RuntimeError as err:
                print(f"benchmarks/run.py: error: {err}", file=sys.stderr)
                return 1
    report = {
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "code": git_revision(),
        "machine": machine_info(device),
        "settings": {
            "presets": presets, "methods": methods, "overrides": args.overrides, "device": str(device),
            "steps_per_window": args.steps_per_window, "windows": args.windows, "warmup": args.warmup,
            "threads": args.threads, "isolated": not args.in_process, "keep_freed_memory": args.keep_freed_memory,
        },
        "results": results,
        "ratios": step_time_ratios(results, presets),
    }
    table = markdown_table(report)
    print(table, end="")
    write_text_atomic(paths["json"], json.dumps(report, indent=2) + "\n")
    write_text_atomic(paths["md"], table)
    print(f"wrote {paths['json']} and {paths['md']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
