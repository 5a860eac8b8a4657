"""How long the motion data path takes: feature extraction (cold cache), reloading (warm cache), batch gathering.

    DAPS_DATA_DIR=../shared/data python benchmarks/motion_data.py [--threads 1] [--batch-size 256] [--json OUT]

- ``extract_s``: reading all 40 clips, MuJoCo forward kinematics of every frame and the features, into an empty
  temporary cache (what the first ``daps train --preset lafan1-h1`` pays once);
- ``reload_s``: :func:`daps.motion.load_motion_data` again, from that cache (every later run);
- ``fk_us_per_frame``: forward kinematics alone over one clip;
- ``batches_per_s``: training batches of ``--batch-size`` windows gathered from the shared frames (median of 5
  rounds of 50 batches), the per-step data cost of training.

Prints a JSON object (with the machine, torch version, threads and commit) and writes it to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from run import cpu_name, git_revision

from daps.runfolder import write_text_atomic


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--json", default=None, help="also write the result here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    args = p.parse_args()
    if args.json and Path(args.json).exists() and not args.overwrite:
        print(f"{p.prog}: error: --json {args.json} exists; pass --overwrite to replace it",
              file=sys.stderr)
        sys.exit(2)
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as cache:
        os.environ["XDG_CACHE_HOME"] = cache
        from daps.config import DataConfig
        from daps.data.motion import lafan_windows
        from daps.motion import load_h1, load_motion_data
        from daps.motion.h1 import forward_kinematics

        start = time.perf_counter()
        data = load_motion_data()
        extract = time.perf_counter() - start
        start = time.perf_counter()
        data = load_motion_data()
        reload = time.perf_counter() - start
        h1 = load_h1()
        poses = data.poses["walk1_subject1"]
        start = time.perf_counter()
        forward_kinematics(h1, poses)
        fk = (time.perf_counter() - start) / len(poses) * 1e6
        windows = lafan_windows("train", DataConfig(name="lafan1-h1", image_shape=(1, 32, 86)))
        g = torch.Generator().manual_seed(0)
        rates = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(50):
                windows[torch.randint(len(windows), (args.batch_size,), generator=g, device=g.device)]
            rates.append(50 / (time.perf_counter() - start))
    result = {
        "extract_s": round(extract, 2), "reload_s": round(reload, 2), "fk_us_per_frame": round(fk, 2),
        "batches_per_s": round(statistics.median(rates), 1), "batch_size": args.batch_size,
        "frames": sum(len(p) for p in data.poses.values()), "train_windows": len(data.train),
        "val_windows": len(data.val), "machine": cpu_name(), "torch": torch.__version__, "threads": args.threads,
        "commit": git_revision(), "command": " ".join(["python", *sys.argv]),
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(Path(args.json), text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
