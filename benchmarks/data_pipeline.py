"""Images/s of the image data pipeline (class-folder trees, ImageNet crops as the original's data/utils/transforms.py).

    python benchmarks/data_pipeline.py [--data-dir DIR] [--root FOLDER] [--batch-size 64] [--batches 10]
        [--repeats 3] [--workers 0,1,2] [--resolution 256] [--out benchmarks/results/data_pipeline.json]
        [--overwrite]

Without ``--root`` the shipped 1,000-image ImageNet sample (``imagenet_1k_sample_256_q90.tar`` in ``--data-dir``
or its ``imagenet_sample_256/`` folder; default ``$DAPS_DATA_DIR``) is unpacked once into the cache
(``~/.cache/daps/imagenet_sample_256/``, the folder the ``imagenet256-sample`` dataset uses). Then, each timed
``--repeats`` times over ``--batches`` batches of ``--batch-size`` (median, min and max images/s):

- train: JPEG decode + random resized crop + flip through :class:`daps.data.imagefolder.ImageStream`, for each
  ``--workers`` count, after one untimed warm-up batch (which also starts the worker processes: reported as
  "first batch s");
- eval: decode + resize + center crop through :func:`daps.data.imagefolder.eval_batches`, 0 workers (one
  warm-up batch first);
- decode: ``PIL.Image.open(...).convert("RGB")`` alone, 0 workers: the floor under both.

It prints a markdown table (with the machine, torch / Pillow versions and the command) and writes the JSON to
``--out`` and the table next to it (``.md``); existing files are kept unless ``--overwrite`` is given. Errors
in what was typed print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import PIL
import torch
from PIL import Image

# The suite's machine description (benchmarks/run.py; this script's folder is on sys.path when it runs).
from run import git_revision, machine_info

from daps.data.imagefolder import ImageFolderDataset, ImageStream, eval_batches
from daps.data.imagenet import unpack_imagenet_sample
from daps.data.paths import ENV_VAR, cache_root
from daps.runfolder import write_text_atomic

SAMPLE_TAR = "imagenet_1k_sample_256_q90.tar"


def sample_root(data_dir: str) -> Path:
    """The ImageNet sample as a class-folder tree in the cache (unpacked on first use)."""
    if not data_dir:
        raise ValueError(f"no --root or --data-dir given and ${ENV_VAR} is unset")
    base = Path(data_dir).expanduser()
    candidates = [base / SAMPLE_TAR, base / "imagenet_sample_256" / SAMPLE_TAR]
    tar = next((p for p in candidates if p.is_file()), None)
    if tar is None:
        raise ValueError(f"{SAMPLE_TAR} not found in {base} or {base / 'imagenet_sample_256'}")
    return unpack_imagenet_sample(tar, cache_root() / "imagenet_sample_256" / tar.stem)


def _rates(times: list[float], images: int) -> dict:
    per_s = [images / t for t in times]
    return {"median": statistics.median(per_s), "min": min(per_s), "max": max(per_s), "runs": per_s}


def bench_train(root: Path, resolution: int, batch_size: int, workers: int, batches: int, repeats: int) -> dict:
    stream = ImageStream(ImageFolderDataset(root, resolution, train=True, seed=0), batch_size, workers, seed=0)
    try:
        t0 = time.perf_counter()
        next(stream)  # warm-up; starts the workers
        first = time.perf_counter() - t0
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(batches):
                next(stream)
            times.append(time.perf_counter() - t0)
    finally:
        stream.close()
    return {"pipeline": "train", "workers": workers, "images_per_s": _rates(times, batches * batch_size),
            "first_batch_s": first, "skipped": stream.num_skipped}


def bench_eval(root: Path, resolution: int, batch_size: int, batches: int, repeats: int) -> dict:
    dataset = ImageFolderDataset(root, resolution, train=False)
    count = min(len(dataset), (batches + 1) * batch_size)
    t0 = time.perf_counter()
    first = next(eval_batches(dataset, batch_size, 0, max_images=batch_size))  # warm-up
    first_s = time.perf_counter() - t0
    assert first.shape == (min(batch_size, count), 3, resolution, resolution)
    times, skipped = [], 0
    for _ in range(repeats):
        it = eval_batches(dataset, batch_size, 0, max_images=count)
        next(it)  # the first batch of each pass is untimed too, so every pass times `batches` batches
        t0 = time.perf_counter()
        n = sum(batch.shape[0] for batch in it)
        times.append(time.perf_counter() - t0)
        skipped = it.num_skipped
    return {"pipeline": "eval", "workers": 0, "images_per_s": _rates(times, n), "first_batch_s": first_s,
            "skipped": skipped}


def bench_decode(root: Path, images: int, repeats: int) -> dict:
    dataset = ImageFolderDataset(root, 1, train=False)
    paths = [dataset.path(i) for i in range(min(images, len(dataset)))]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for p in paths:
            with Image.open(p) as im:
                im.convert("RGB")
        times.append(time.perf_counter() - t0)
    return {"pipeline": "decode", "workers": 0, "images_per_s": _rates(times, len(paths)), "first_batch_s": None,
            "skipped": 0}


def markdown_table(report: dict) -> str:
    s, m = report["settings"], report["machine"]
    ms_per_batch = s["batch_size"] * 1000
    lines = [
        "| pipeline | workers | images/s (median) | min - max | ms / batch | first batch s |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        rate = r["images_per_s"]
        first = "-" if r["first_batch_s"] is None else f"{r['first_batch_s']:.2f}"
        batch_ms = f"{ms_per_batch / rate['median']:.0f}" if r["pipeline"] != "decode" else "-"
        lines.append(
            f"| {r['pipeline']} | {r['workers']} | {rate['median']:.0f} | {rate['min']:.0f} - {rate['max']:.0f} "
            f"| {batch_ms} | {first} |"
        )
    lines += [
        "",
        (
            f"Data: {s['root']} ({s['images']} images), resolution {s['resolution']}, batch {s['batch_size']}; "
            f"{s['repeats']} timed runs of {s['batches']} batches each after one warm-up batch. train = decode + "
            "random resized crop + flip (ImageStream); eval = decode + resize + center crop; decode = PIL open + "
            "RGB only."
        ),
        (
            f"Machine: {m['cpu']}, {m['cpus_usable']} usable of {m['cpu_count']} CPUs; torch {m['torch']}, "
            f"Pillow {m['pillow']}, Python {m['python']}; code {report['code']}; {report['created_utc']}."
        ),
        f"Command: `{report['command']}`",
    ]
    return "\n".join(lines) + "\n"


def _workers(text: str) -> list[int]:
    try:
        values = [int(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise ValueError(f"--workers must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 0:
        raise ValueError(f"--workers must be non-negative integers, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="benchmarks/data_pipeline.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", default=os.environ.get(ENV_VAR, ""),
                        help=f"folder with the ImageNet sample tar (default: ${ENV_VAR})")
    parser.add_argument("--root", default="", help="a class-folder tree to read instead of the sample")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=10, help="batches per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per pipeline (median reported)")
    parser.add_argument("--workers", default="0,1,2", help="comma-separated DataLoader worker counts")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--out", default="benchmarks/results/data_pipeline.json")
    parser.add_argument("--overwrite", action="store_true", help="replace existing result files")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = shlex.join(["python", *(sys.argv if argv is None else ["benchmarks/data_pipeline.py", *argv])])
    try:
        for name in ("batch_size", "batches", "repeats", "resolution"):
            if getattr(args, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        workers = _workers(args.workers)
        out = Path(args.out)
        paths = [out, out.with_suffix(".md")]
        existing = [str(p) for p in paths if p.exists()]
        if existing and not args.overwrite:
            raise ValueError(f"{existing[0]} exists; pass --overwrite to replace it or choose another --out")
        root = Path(args.root).expanduser() if args.root else sample_root(args.data_dir)
        num_images = len(ImageFolderDataset(root, args.resolution, train=False))
        if num_images < args.batch_size:
            raise ValueError(f"{root} has {num_images} images, fewer than --batch-size {args.batch_size}")
        out.parent.mkdir(parents=True, exist_ok=True)
    except (ValueError, OSError) as err:
        print(f"benchmarks/data_pipeline.py: error: {err}", file=sys.stderr)
        return 2

    results = []
    for w in workers:
        results.append(bench_train(root, args.resolution, args.batch_size, w, args.batches, args.repeats))
        print(f"train, {w} workers: {results[-1]['images_per_s']['median']:.0f} images/s", file=sys.stderr)
    results.append(bench_eval(root, args.resolution, args.batch_size, args.batches, args.repeats))
    results.append(bench_decode(root, args.batches * args.batch_size, args.repeats))
    machine = machine_info(torch.device("cpu"))
    machine["pillow"] = PIL.__version__
    report = {
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "code": git_revision(),
        "machine": machine,
        "settings": {"root": str(root), "images": num_images, "resolution": args.resolution,
                     "batch_size": args.batch_size, "batches": args.batches, "repeats": args.repeats,
                     "workers": workers},
        "results": results,
    }
    table = markdown_table(report)
    print(table)
    write_text_atomic(out, json.dumps(report, indent=2) + "\n")
    write_text_atomic(out.with_suffix(".md"), table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
