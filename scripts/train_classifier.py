"""Train the image classifier that judges generated MNIST or CIFAR-10 images (:mod:`daps.metrics.classifier`)
into the cache folder, where daps loads it from.

    DAPS_DATA_DIR=../shared/data python scripts/train_classifier.py --dataset mnist|cifar10 [--steps N]
        [--batch-size 128] [--seed 0] [--threads 2] [--out FILE.safetensors] [--report FILE.json]

Trains on the training split only, on model-scale images (binarized MNIST; standardized CIFAR-10, the JPEG copy
``cifar10-jpeg`` when the original is not there), and reports the test-split accuracy. The weights and a JSON report
(accuracies, seconds, machine, torch version, commit, command) are written next to each other; ``--report`` also
writes the report elsewhere (the repository keeps them as ``docs/classifier-<dataset>.json``).
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from pathlib import Path

import torch

from daps.data import dataset_spec, load_dataset
from daps.errors import UserError
from daps.metrics.classifier import (
    accuracy,
    check_outputs,
    default_path,
    save_image_classifier,
    train_image_classifier,
)
from daps.provenance import cpu_name
from daps.runfolder import write_json_atomic


def _load(name: str, split: str, data_dir: str | None) -> tuple[torch.Tensor, torch.Tensor, str]:
    names = (name,) if name == "mnist" else ("cifar10", "cifar10-jpeg")
    for candidate in names:
        try:
            data = load_dataset(candidate, split, data_dir, download=False)
        except (FileNotFoundError, UserError):
            continue
        return dataset_spec(candidate).standardize(data.images), data.labels.long(), candidate
    raise SystemExit(f"train_classifier.py: error: no {name} data found (set DAPS_DATA_DIR)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, choices=["mnist", "cifar10"])
    p.add_argument("--steps", type=int, default=0, help="default: 1,500 (mnist) or 6,000 (cifar10)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=None, help="weights file (default: the cache folder, where daps looks)")
    p.add_argument("--report", default=None, help="also write the JSON report here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (and its .json) or --report")
    args = p.parse_args()
    try:  # before the training: a refusal costs nothing
        check_outputs(args.out, args.report, args.overwrite)
    except UserError as err:
        print(f"{Path(sys.argv[0]).name}: error: {err}", file=sys.stderr)  # one line, exit code 2
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    steps = args.steps or (1500 if args.dataset == "mnist" else 6000)
    start = time.time()
    x_train, y_train, source = _load(args.dataset, "train", args.data_dir)
    x_test, y_test, _ = _load(args.dataset, "test", args.data_dir)
    model = train_image_classifier(x_train, y_train, steps, args.batch_size, seed=args.seed)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    report = {
        "dataset": args.dataset, "data": source, "steps": steps, "batch_size": args.batch_size,
        "test_accuracy": accuracy(model, x_test, y_test),
        "train_accuracy_10k": accuracy(model, x_train[:10_000], y_train[:10_000]),
        "wall_s": round(time.time() - start, 1), "machine": cpu_name(),
        "torch": torch.__version__, "threads": args.threads, "commit": commit,
        "command": " ".join(["python", *sys.argv]),
    }
    out = save_image_classifier(model, args.dataset, report, args.out or default_path(args.dataset))
    write_json_atomic(out.with_suffix(".json"), report)
    if args.report:
        write_json_atomic(Path(args.report), report)
    print(f"wrote {out}: test accuracy {report['test_accuracy']:.4f} ({source}, {steps} steps, {report['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
