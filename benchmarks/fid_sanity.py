"""FID sanity check on real images: a set against itself, against blurred copies of itself, and one half of
the set against the other half.

    DAPS_DATA_DIR=../shared/data python benchmarks/fid_sanity.py [--dataset imagenet256-sample] [--size 256]
        [--radii 1,2,4] [--max-images 0] [--out benchmarks/results/fid_sanity.json] [--overwrite]

The images are read exactly as ``daps eval`` reads them (resize + center crop to ``--size``), passed through
the FID Inception network of ``daps`` (weights from ``$DAPS_DATA_DIR/fid_inception`` or ``--fid-weights``),
and compared with :func:`daps.metrics.fid.frechet_distance`. Blurring uses Pillow's Gaussian blur with the
given radii (standard deviations in pixels). Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import git_revision, machine_info  # noqa: E402  (the suite's machine description; this checkout's daps)

from daps.data import folder_dataset  # noqa: E402
from daps.data.imagefolder import eval_batches  # noqa: E402
from daps.metrics.fid import FeatureStats, fid_preprocess, frechet_distance  # noqa: E402
from daps.nets.inception import load_fid_inception  # noqa: E402
from daps.runfolder import write_text_atomic  # noqa: E402


def blur(images: torch.Tensor, radius: float) -> torch.Tensor:
    """Gaussian-blur uint8 ``(B, 3, H, W)`` images with Pillow (``radius`` = standard deviation in pixels)."""
    out = []
    for img in images:
        pil = Image.fromarray(img.permute(1, 2, 0).numpy()).filter(ImageFilter.GaussianBlur(radius))
        out.append(torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1))
    return torch.stack(out)


def features(net: torch.nn.Module, images: torch.Tensor, batch_size: int = 50) -> torch.Tensor:
    """Pool3 features ``(N, 2048)`` of uint8 images."""
    with torch.no_grad():
        return torch.cat([net(fid_preprocess(chunk)).double() for chunk in images.split(batch_size)])


def stats(feats: torch.Tensor) -> FeatureStats:
    return FeatureStats().update(feats)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="imagenet256-sample")
    parser.add_argument("--size", type=int, default=256, help="crop size (folder datasets)")
    parser.add_argument("--radii", default="1,2,4", help="Gaussian blur standard deviations in pixels")
    parser.add_argument("--max-images", type=int, default=0, help="a fixed random subset of N images (0 = all)")
    parser.add_argument("--fid-weights", default=None)
    parser.add_argument("--out", default="benchmarks/results/fid_sanity.json")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        print(f"fid_sanity.py: error: {out} exists; pass --overwrite", file=sys.stderr)
        return 2
    radii = [float(r) for r in args.radii.split(",") if r.strip()]
    command = shlex.join(["python", "benchmarks/fid_sanity.py", *(sys.argv[1:] if argv is None else argv)])

    t0 = time.perf_counter()
    dataset = folder_dataset(args.dataset, "test", (3, args.size, args.size), None, train=False)
    images = torch.cat(list(eval_batches(dataset, 50, 0, args.max_images)))  # (N, 3, S, S) uint8
    n = images.shape[0]
    net = load_fid_inception(args.fid_weights)
    print(
        f"{n} images of {args.dataset} at {args.size} px; Inception on {torch.get_num_threads()} threads",
        file=sys.stderr,
    )
    t1 = time.perf_counter()
    base = features(net, images)
    seconds = time.perf_counter() - t1
    again = features(net, images)  # a second, independent pass over the same images
    ref = stats(base)
    rows = [
        {
            "comparison": "the set against itself (two passes)",
            "fid": frechet_distance(ref.mu, ref.sigma, *_ms(again)),
            "n": n,
        },
    ]
    half = n // 2
    a, b = stats(base[:half]), stats(base[half : 2 * half])
    rows.append(
        {
            "comparison": f"first {half} against the other {half} images",
            "fid": frechet_distance(a.mu, a.sigma, b.mu, b.sigma),
            "n": half,
        }
    )
    for radius in radii:
        blurred = stats(features(net, blur(images, radius)))
        rows.append({
            "comparison": f"the set against its Gaussian blur, sigma {radius:g} px",
            "fid": frechet_distance(ref.mu, ref.sigma, blurred.mu, blurred.sigma), "n": n,
        })
    report = {
        "command": command, "code": git_revision(), "dataset": args.dataset, "size": args.size, "num_images": n,
        "rows": rows,
        "inception_images_per_s": n / seconds,
        "total_s": time.perf_counter() - t0,
        "machine": machine_info(torch.device("cpu")),
    }
    lines = ["| comparison | FID | images per set |", "|---|---|---|"]
    lines += [f"| {r['comparison']} | {r['fid']:.3f} | {r['n']} |" for r in rows]
    lines.append(
        f"\nInception: {report['inception_images_per_s']:.1f} images/s; total {report['total_s']:.0f} s. `{command}`"
    )
    print("\n".join(lines))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(report, indent=2) + "\n")
    return 0


def _ms(feats: torch.Tensor):
    s = stats(feats)
    return s.mu, s.sigma


if __name__ == "__main__":
    sys.exit(main())
