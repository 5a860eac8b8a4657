"""The GPU check: one command that measures, on a CUDA machine and inside a time budget, everything the project
can only learn there, and writes one report.

    python benchmarks/gpu_check.py --out DIR [--budget 540] [--data DIR] [--skip PATTERNS] [--smoke]

GPU time is short and rare (minutes at a time, see BENCHMARKS.md), so this is the first thing to run whenever a
GPU is lent, in one call. Sections run in order of value, each in its own process with a time limit taken from
what is left of ``--budget`` seconds; a section that fails or runs out of time is reported as such and the next
one runs. After each section ``DIR/report.json`` and ``DIR/report.md`` are rewritten (atomically), so a call
cut short still leaves a report. The sections:

1. ``env``: torch, CUDA, the device (``nvidia-smi``).
2. ``graph-tests``: the CUDA-only tests of ``train.cuda_graph`` (``pytest -m gpu -k GRAPH_TESTS``): the whole step
   recorded once and replayed trains as the eager step (DAPS, VQ-VAE, Gumbel, PPO), and a graphed run stopped
   and resumed ends where the uninterrupted one does. ``gpu-tests``: the other CUDA-only tests: the compiled
   sampler under CUDA graphs gives the eager codes and is not skipped by inductor, a compiled bf16 run trains,
   the fused optimizer step on CUDA, the compiled kernels recorded as one graph train as the eager step,
   ``train.tf32`` rounds products as TF32 and trains, and the first CUDA run of the commands outside the training
   step (eval, export-codes, both priors, decode-random, the Python API from image files to codes; a prior resumed
   on the CPU is refused in one line). ``repeatability``: ``benchmarks/graph_repeatability.py``,
   which operation keeps the eager DAPS step with K > 1 from repeating bit for bit.
3. ``graph-<preset>``: ``benchmarks/step_variants.py --device cuda`` at mnist, cifar10 and lafan1-h1: DAPS and
   VQ-VAE eager and with ``train.cuda_graph=true`` (DAPS also with ``train.tf32=true``, and under bf16 at the image
   presets), in interleaved rounds in one process, with each variant's speed relative to the eager DAPS step of
   the same round; at imagenet256 DAPS eager, graphed and graphed TF32, in shorter rounds. ``one-pass-mnist``: the
   eager DAPS step with and without ``daps.one_pass=true``, and with ``encoder.share_prefixes=on`` (the distinct
   prefixes, the CPU's default; fresh weights share little but the first position), in a section of its own.
   ``kernels``:
   ``benchmarks/kernels.py --device cuda`` at mnist and cifar10: the kernels one DAPS and one VQ-VAE step launch,
   by phase (with graphs, the step's time follows this count).
   ``graphed-compiled-<preset>`` (mnist, cifar10): the same with ``train.compile=true`` as well (the compiled
   kernels recorded into the one graph), with and without TF32, in a section of its own.
4. ``resample-m2``, ``resample-m1``: DAPS with resampled weighted maximum likelihood (``daps.resample``) at mnist
   and cifar10, next to the full-K DAPS rows of the suites below.
5. ``optimizer-step``: ``benchmarks/optimizer_step.py``: the batched optimizer step (fused AdamW, stacked
   unit-wise clip) against the per-parameter one at every preset but imagenet256, ms and kernels per step.
6. ``suite-<preset>``: ``benchmarks/run.py`` on CUDA, every method at every preset for a few steps (fp32, eager;
   imagenet256: DAPS and VQ-VAE only): steps/s, the DAPS / VQ-VAE ratio, peak memory, the time breakdown.
7. ``compile-<preset>``: the same for DAPS and VQ-VAE with ``train.compile=true`` (CUDA graphs through
   ``mode="reduce-overhead"``), under ``TORCH_LOGS=perf_hints``: every "skipping cudagraphs" line is reported.
   ``sampler-<preset>``: ``benchmarks/sampler.py --compile``: eager vs compiled sampler tokens/s. ``bf16``: DAPS
   and VQ-VAE at every preset but imagenet256 with ``train.precision=bfloat16``. (Sections 6 and 7 were measured
   on the H200 once; sections 2 to 5 first ran on an H100 on 2026-12-06, BENCHMARKS.md.)
8. ``mnist-daps``: the paper's MNIST DAPS configuration (250k steps at B=256) on the MNIST files under
   ``--data`` (``$DAPS_DATA_DIR`` layout), run until the budget is spent, checkpointed every 1,000 steps into
   ``DIR/mnist-daps-run`` and resumed from there when the folder already holds a run (the next call carries it
   back in). Its speed and validation rows go into the report. It runs with ``train.cuda_graph=true`` when
   ``graph-tests`` passed (the setting may change between resumes), eagerly otherwise.

``--skip`` leaves out sections by name or pattern (``fnmatch``), e.g. those measured already on this kind of GPU, so
that a short call reaches the rest (``scripts/gpu_prepare.sh`` prints the list in use); skipping ``graph-tests``
runs the reproduction eagerly. ``--smoke`` runs the same sections at toy sizes on whatever device there is (CPU
here), to check the script itself. Bad arguments print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from daps.plots import read_metrics  # noqa: E402  (after the path, so the checkout's daps is used)
from daps.runfolder import write_json_atomic  # noqa: E402

PRESETS = ("mnist", "cifar10", "lafan1-h1", "imagenet256")
# the tests of train.cuda_graph in tests/test_gpu.py (``pytest -k``; "graph" alone would also match the compiled
# sampler's test, whose failure must not turn the reproduction's graphs off)
GRAPH_TESTS = "graphed_step or cuda_graph_run"
SKIP_LINE = re.compile(r"skipping cudagraphs[^\n]*", re.IGNORECASE)
SMOKE_MODEL = [
    "encoder.width=16", "encoder.num_heads=2", "encoder.vocab_size=16", "encoder.num_tokens=4",
    "decoder.embed_dim=8", "decoder.hidden=16,16", "daps.num_samples=4", "train.batch_size=8",
]


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the section's whole process group, SIGKILL after 10 s (a group already gone is fine)."""
    for sig, wait in ((15, 10.0), (9, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
    proc.wait()


class Check:
    """The report being built: one entry per section, rewritten to disk after each."""

    def __init__(self, out: Path, budget: float, smoke: bool, skip: tuple[str, ...] = ()):
        self.out, self.smoke, self.skip = out, smoke, skip
        self.deadline = time.monotonic() + budget
        self.sections: list[dict] = []
        self.started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        (out / "logs").mkdir(parents=True, exist_ok=True)
        (out / "results").mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, command: list[str], cap: float, env: dict | None = None, keep: float = 0.0) -> dict:
        """Run ``command`` for at most ``cap`` seconds (and never past the budget less ``keep`` seconds kept for
        later sections); log its output to ``logs/<name>.log``; record and return the section's entry."""
        limit = min(cap, self.left() - keep)
        entry: dict = {"name": name, "command": shlex.join(command), "limit_s": round(limit, 1)}
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in self.skip):
            entry["status"] = "skipped (--skip)"
            return self._record(entry)
        if limit < 5:
            entry["status"] = "skipped (no time left)"
            return self._record(entry)
        log = self.out / "logs" / f"{name}.log"
        pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)  # this checkout
        start = time.monotonic()
        with open(log, "w") as f:
            try:
                proc = subprocess.Popen(
                    command, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                    env={**os.environ, "PYTHONPATH": pythonpath, **(env or {})},
                )
            except OSError as err:  # e.g. no nvidia-smi on the image: this section fails, the others run
                f.write(f"could not start {command[0]}: {err}\n")
                entry["status"] = "failed (could not start)"
            else:
                try:
                    entry["rc"] = proc.wait(timeout=limit)
                    entry["status"] = "ok" if entry["rc"] == 0 else f"failed (exit {entry['rc']})"
                except subprocess.TimeoutExpired:
                    _kill_group(proc)
                    entry["status"] = "timed out"
        entry["seconds"] = round(time.monotonic() - start, 1)
        text = log.read_text(errors="replace")
        skips = sorted(set(SKIP_LINE.findall(text)))
        if env and "TORCH_LOGS" in env:
            entry["cudagraph_skips"] = skips
        if entry["status"] != "ok":
            entry["tail"] = text[-2000:]
        print(f"[gpu_check] {name}: {entry['status']} in {entry['seconds']} s ({self.left():.0f} s left)", flush=True)
        return self._record(entry)

    def _record(self, entry: dict) -> dict:
        self.sections.append(entry)
        self.write()
        return entry

    def write(self) -> None:
        report = {"started_utc": self.started, "smoke": self.smoke, "sections": self.sections}
        write_json_atomic(self.out / "report.json", report)
        tmp = self.out / "report.md.tmp"
        tmp.write_text(markdown(report))
        tmp.replace(self.out / "report.md")


def markdown(report: dict) -> str:
    lines = [f"# GPU check, started {report['started_utc']}", ""]
    for s in report["sections"]:
        lines.append(f"## {s['name']}: {s['status']}" + (f" ({s['seconds']} s)" if "seconds" in s else ""))
        lines.append(f"`{s['command']}`")
        if "cudagraph_skips" in s:
            lines.append(f"- skipped CUDA graphs: {len(s['cudagraph_skips'])} distinct message(s)")
            lines += [f"  - `{m}`" for m in s["cudagraph_skips"]]
        for key in ("table", "summary"):
            if s.get(key):
                lines += ["", s[key]]
        if "tail" in s:
            lines += ["```", s["tail"][-1200:], "```"]
        lines.append("")
    return "\n".join(lines)


def read_table(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


def mnist_summary(run: Path) -> str:
    """Steps reached, training speed from the metrics rows, and the validation rows of the MNIST run."""
    metrics = run / "metrics.jsonl"
    if not metrics.exists():
        return "no metrics.jsonl"
    rows = read_metrics(metrics)  # the run is stopped at the time limit: its last line may be cut off
    train = [r for r in rows if r.get("split", "train") == "train" and "step" in r]
    val = [r for r in rows if r.get("split") == "val"]
    parts = [f"last step logged: {train[-1]['step'] if train else 0}"]
    speeds = sorted(r["steps_per_s"] for r in train[-20:] if "steps_per_s" in r)
    if speeds:
        parts.append(f"train steps/s, median of the last {len(speeds)} log rows (validation excluded): "
                     f"{speeds[len(speeds) // 2]:.1f}")
    for r in val:
        parts.append("val " + json.dumps({k: v for k, v in r.items() if isinstance(v, (int, float))}))
    return "\n".join(f"- {p}" for p in parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="report folder (created; an existing report is replaced)")
    parser.add_argument("--budget", type=float, default=540, help="seconds for all sections together")
    parser.add_argument("--data", default=os.environ.get("DAPS_DATA_DIR", ""), help="folder with mnist/")
    parser.add_argument("--smoke", action="store_true", help="toy sizes on any device: checks this script")
    parser.add_argument("--skip", default="", help="sections not to run: comma-separated names or patterns "
                        "(e.g. 'suite-*,optimizer-step', those measured already; env and mnist-daps always run)")
    args = parser.parse_args(argv)
    skip = tuple(p.strip() for p in args.skip.split(",") if p.strip())
    kept = [p for p in skip if any(fnmatch.fnmatchcase(name, p) for name in ("env", "nvidia-smi", "mnist-daps"))]
    if kept:
        print(f"gpu_check.py: error: --skip {kept[0]!r} names a section that always runs", file=sys.stderr)
        return 2
    if args.budget < 30:
        print("gpu_check.py: error: --budget must be at least 30 seconds", file=sys.stderr)
        return 2
    if not args.smoke:
        import torch

        if not torch.cuda.is_available():
            print("gpu_check.py: error: no CUDA device here (use --smoke to check the script on CPU)", file=sys.stderr)
            return 2
    out = Path(args.out)
    check = Check(out, args.budget, args.smoke, skip)
    py = sys.executable
    device = "cpu" if args.smoke else "cuda"
    res = out / "results"
    presets = ("mnist",) if args.smoke else PRESETS
    size = SMOKE_MODEL if args.smoke else []
    bench = [py, "benchmarks/run.py", "--device", device, "--in-process", "--overwrite", "--out", str(res)]
    steps = ["--windows", "2", "--steps-per-window", "2", "--warmup", "1"] if args.smoke else \
        ["--windows", "3", "--steps-per-window", "5", "--warmup", "3"]
    perf = {"TORCH_LOGS": "perf_hints"}
    keep_for_mnist = 0.0 if args.smoke else 90.0  # the reproduction gets at least this much at the end

    env_probe = (
        "import torch, json; p = torch.cuda.get_device_properties(0) if torch.cuda.is_available() else None; "
        "print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, "
        "'device': p.name if p else 'cpu', 'memory_gib': round(p.total_memory / 2**30, 1) if p else None, "
        "'capability': list(torch.cuda.get_device_capability(0)) if p else None}))"
    )
    entry = check.run("env", [py, "-c", env_probe], 30)
    if not args.smoke:
        check.run("nvidia-smi", ["nvidia-smi"], 15)
    log = (out / "logs" / "env.log").read_text()
    entry["summary"] = log.strip().splitlines()[-1] if log.strip() else ""
    check.write()

    gpu_tests = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "tests/test_gpu.py"]
    graphs_work = False
    if not args.smoke:
        graphs_work = check.run("graph-tests", [*gpu_tests, "-k", GRAPH_TESTS], 150, keep=keep_for_mnist)["status"] \
            == "ok"
        check.run("gpu-tests", [*gpu_tests, "-k", f"not ({GRAPH_TESTS})"], 200, keep=keep_for_mnist)
        # which operation keeps the eager DAPS step with K > 1 from repeating bit for bit (deterministic algorithms
        # name it), and whether the graphed run is as far from the eager one as two eager runs are
        name = "repeatability"
        cmd = [py, "benchmarks/graph_repeatability.py", "--out", str(res / f"{name}.md"), "--overwrite"]
        e = check.run(name, cmd, 90, keep=keep_for_mnist)
        e["table"] = read_table(res / f"{name}.md")
        check.write()

    def suite(name: str, preset: str, cap: float, extra: list[str], env: dict | None = None) -> None:
        e = check.run(name, [*bench, "--presets", preset, "--name", name, *extra, *size], cap, env=env,
                      keep=keep_for_mnist)
        e["table"] = read_table(res / f"{name}.md")
        check.write()

    def variants(name: str, preset: str, names: str, rounds: list[str], cap: float) -> None:
        cmd = [py, "benchmarks/step_variants.py", "--device", "cuda", "--preset", preset, "--variants", names,
               *rounds, "--out", str(res / f"{name}.json"), "--overwrite"]
        e = check.run(name, cmd, cap, keep=keep_for_mnist)
        e["table"] = read_table(res / f"{name}.md")
        check.write()

    short = ["--windows", "2", "--steps-per-window", "2", "--warmup", "1"]
    if not args.smoke:  # the whole step as one CUDA graph, against the eager step in interleaved rounds
        rounds = ["--rounds", "3", "--steps-per-window", "10", "--warmup", "3"]
        for preset in ("mnist", "cifar10", "lafan1-h1"):
            names = "eager,graphed,graphed-tf32,vqvae,vqvae-graphed" + (
                ",graphed-bf16" if preset in ("mnist", "cifar10") else "")
            variants(f"graph-{preset}", preset, names, rounds, 70)
        # the codes scored in the sampling pass (daps.one_pass) and the distinct prefixes (encoder.share_prefixes),
        # eager: a section of their own, new on a GPU
        variants("one-pass-mnist", "mnist", "eager,one-pass,shared", rounds, 50)
    # what a step launches on CUDA, by phase: the count a graphed step's time follows (benchmarks/kernels.py)
    name = "kernels"
    cmd = [py, "benchmarks/kernels.py", "--device", device, "--presets", "mnist" if args.smoke else "mnist,cifar10",
           "--methods", "daps,vqvae", "--out", str(res), "--name", name, "--overwrite", *size]
    e = check.run(name, cmd, 60, keep=keep_for_mnist)
    e["table"] = read_table(res / f"{name}.md")
    check.write()
    if not args.smoke:
        # T = 1,024: seconds per eager DAPS step; the DAPS target there is 2 steps/s
        variants("graph-imagenet256", "imagenet256", "eager,graphed,graphed-tf32",
                 ["--rounds", "2", "--steps-per-window", "2", "--warmup", "1"], 100)
        # the compiled (fused) kernels recorded into the one graph; a section of their own, so that a recording
        # that fails costs only these numbers (compilation takes most of the time)
        for preset in ("mnist", "cifar10"):
            variants(f"graphed-compiled-{preset}", preset, "eager,graphed,graphed-compiled,graphed-compiled-tf32",
                     rounds, 150)
    for m in (2, 1):  # resampled weighted maximum likelihood (daps.resample=m), against the full-K rows below
        suite(f"resample-m{m}", ",".join(presets[:2]), 60, ["--methods", "daps", *steps, f"daps.resample={m}"])
    name = "optimizer-step"  # not at imagenet256: its DAPS step under a dispatch-counting mode takes too long
    small = ",".join(p for p in presets if p != "imagenet256")
    cmd = [py, "benchmarks/optimizer_step.py", "--device", device, "--presets", small, "--out", str(res),
           "--name", name, "--overwrite", *(["--rounds", "1", "--repeats", "2", *size] if args.smoke else [])]
    e = check.run(name, cmd, 90, keep=keep_for_mnist)
    e["table"] = read_table(res / f"{name}.md")
    check.write()

    for preset in presets:  # every method, fp32, eager (imagenet256: DAPS and VQ-VAE; the others backpropagate
        # through 1,024 sampling steps and did not finish in 120 s on the H200)
        if preset == "imagenet256":
            suite("suite-imagenet256", preset, 80, ["--methods", "daps,vqvae", *short])
        else:
            suite(f"suite-{preset}", preset, {"mnist": 60, "cifar10": 80}.get(preset, 70), steps)
    for preset in presets[:2]:  # CUDA graphs through train.compile, with inductor's performance hints
        suite(f"compile-{preset}", preset, 90, ["--methods", "daps,vqvae", *steps, "train.compile=true"], env=perf)
    for preset in presets[:2]:
        name = f"sampler-{preset}"
        cmd = [py, "benchmarks/sampler.py", "--preset", preset, "--compile", "--device", device, "--repeats", "5",
               "--out", str(res / f"{name}.json"), "--overwrite", *[o for o in size if not o.startswith("train.")]]
        e = check.run(name, cmd, 60, env=perf, keep=keep_for_mnist)
        e["table"] = read_table(res / f"{name}.md")
        check.write()
    suite("bf16", small, 60,
          ["--methods", "daps,vqvae", *steps, "train.precision=bfloat16"])

    run = out / "mnist-daps-run"
    resume = (run / "config.json").exists()
    train = [py, "-m", "daps", "train", "--preset", "mnist", "--device", device, *(["--resume"] if resume else []),
             f"train.out_dir={run}", "train.ckpt_every=1000", "train.progress=false",
             f"train.cuda_graph={str(graphs_work).lower()}"]
    if args.smoke:
        train += ["data.name=mnist5k", *size, "train.steps=40", "train.eval_every=20", "train.eval_examples=40",
                  "train.ckpt_every=10"]
    e = check.run("mnist-daps", train, 10_000, env={"DAPS_DATA_DIR": args.data} if args.data else None)
    e["resumed"], e["cuda_graph"] = resume, graphs_work
    e["summary"] = mnist_summary(run)
    check.write()
    print(f"[gpu_check] report: {out / 'report.md'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
