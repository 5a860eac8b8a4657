"""Train the motion classifier (:mod:`daps.motion.classifier`) into the cache folder, where daps loads it from.

    DAPS_DATA_DIR=../shared/data python scripts/train_motion_classifier.py [--steps 1500] [--batch-size 256]
        [--seed 0] [--threads 2] [--out ~/.cache/daps/lafan1_h1/classifier.safetensors] [--report FILE.json]

Reads LAFAN1 on the H1 (windows of 32 frames, the ``lafan1-h1`` preset's features and standardization), trains
:class:`daps.motion.classifier.MotionClassifier` on the training clips with every kind of motion drawn equally
often, and writes the weights and a JSON report (validation accuracy and per-kind recall on the original's four
validation clips, training accuracy, machine, torch version, commit, command) next to them, and the report also
to ``--report`` if given (the repository keeps one in ``docs/motion-classifier.json``). The weights are not
committed: LAFAN1's license (CC BY-NC-ND 4.0) forbids redistributing derivatives; about a minute rebuilds them.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from pathlib import Path

import torch

from daps.config import DataConfig
from daps.data.motion import lafan_windows
from daps.errors import UserError
from daps.metrics.classifier import check_outputs
from daps.motion.classifier import default_classifier_path, save_classifier, train_classifier
from daps.motion.features import NUM_FEATURES
from daps.provenance import cpu_name
from daps.runfolder import write_json_atomic


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-dir", default="")
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
    data = DataConfig(name="lafan1-h1", data_dir=args.data_dir, image_shape=(1, 32, NUM_FEATURES))
    start = time.time()
    model, report = train_classifier(
        lafan_windows("train", data), lafan_windows("test", data), args.steps, args.batch_size, seed=args.seed
    )
    out = save_classifier(model, report, args.out or default_classifier_path())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    info = {
        **report.to_dict(), "wall_s": round(time.time() - start, 1),
        "machine": cpu_name(), "torch": torch.__version__, "threads": args.threads,
        "commit": commit,
        "command": " ".join(["python", *sys.argv]),
    }
    write_json_atomic(out.with_suffix(".json"), info)
    if args.report:
        write_json_atomic(Path(args.report), info)
    print(f"wrote {out}: validation accuracy {report.val_accuracy:.3f}, recall {report.val_recall}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
