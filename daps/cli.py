"""The ``daps`` command: ``train``, ``eval``, ``fid-stats``, ``compare``, ``gradlab``, ``render`` and ``presets``.

Thin on purpose: parse -> Config -> call a library function. User errors (:class:`daps.errors.UserError`, and
``OSError`` from the files the user named) print one line on stderr and exit with code 2; divergence exits with
3; any other exception is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import math
import os
import re
import sys
import textwrap
from pathlib import Path

from daps.config_io import parse_overrides, refuse_ignored
from daps.errors import UserError, check_at_least, check_at_most
from daps.methods import METHODS
from daps.precision import float32_kernels
from daps.presets import PRESETS, get_preset
from daps.runfolder import check_media_output


def add_threads_arg(p: argparse.ArgumentParser) -> None:
    """``--threads N`` of the commands that train (applied by :func:`set_threads`)."""
    p.add_argument(
        "--threads", type=int, default=0,
        help="torch CPU threads (default 0: torch's choice, one per core; see BENCHMARKS.md, CPU threads)",
    )


def add_memory_arg(p: argparse.ArgumentParser) -> None:
    """``--[no-]keep-freed-memory`` of every command that takes ``--device`` or ``--threads`` (applied by
    :func:`main` before the command runs)."""
    p.add_argument(
        "--keep-freed-memory", action=argparse.BooleanOptionalAction, default=True,
        help="keep CPU memory the computation frees for reuse instead of returning it to the system (glibc's "
        "malloc; large CPU steps run faster, the process holds more memory; BENCHMARKS.md, Freed memory kept for "
        "reuse; default: on)",
    )


def add_device_arg(p: argparse.ArgumentParser) -> None:
    """``--device`` of every command that computes (read by :func:`_device`)."""
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available, else cpu)")


MAX_THREADS = 1024
"""The most ``--threads`` taken: far more than any CPU has cores, and far fewer than the count (about 100,000 here)
at which torch's thread pool fails to start, killing the process with a segmentation fault."""


MAX_SEEDS = 1000
"""The most seeds ``compare --seeds`` takes (planning 100,000 took minutes before it said anything)."""


def set_threads(threads: int) -> None:
    """Apply ``--threads``: 0 keeps torch's choice; a negative count or one above :data:`MAX_THREADS` is a
    :class:`UserError`."""
    if threads < 0:
        raise UserError(f"--threads must be >= 0, got {threads}")
    check_at_most(("--threads", threads, MAX_THREADS))
    if threads:
        import torch

        torch.set_num_threads(threads)


def seed_arg(text: str) -> int:
    """argparse type of ``--seed``: an integer of magnitude below 2^53 (:func:`daps.config.check_seed`)."""
    from daps.config import check_seed

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    try:
        check_seed(value, "the seed")
    except UserError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return value


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line (no usage block) with exit code 2, names every
    option's default in ``--help`` and takes options only as written in full: argparse's prefix matching would run
    ``--over`` as ``--overwrite``, and a flag added later would change what an abbreviation means."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        self._words = list(sys.argv[1:] if args is None else args)  # what error() looks at (subparsers get theirs)
        return super().parse_known_args(args, namespace)

    def add_argument(self, *args, **kwargs):
        action = super().add_argument(*args, **kwargs)
        text = action.help or ""
        if (action.option_strings and action.nargs != 0 and action.default not in (None, "", [], argparse.SUPPRESS)
                and "default" not in text):
            action.help = f"{text} (default %(default)s)".strip()
        return action

    def error(self, message: str):
        missing = re.fullmatch(r"argument ((?:-\w|--[\w-]+)(?:/--?[\w-]+)*): expected one argument", message)
        if missing:  # argparse reads a value such as -0.5,0,0 as an option, unless it is joined to its flag
            words = getattr(self, "_words", [])
            flags = missing.group(1).split("/")
            after = [words[i + 1] for i, word in enumerate(words[:-1]) if word in flags]
            if any(word.startswith("-") for word in after):
                message += f"; a value that starts with '-' is joined to its flag: {flags[-1]}=-..."
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog.split()[0]} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="daps", description="Discrete VAEs trained by policy search (DAPS).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train a model and write a run folder")
    p.add_argument("--preset", default="mnist", help=f"one of: {', '.join(sorted(PRESETS))} (default mnist)")
    p.add_argument("--method", default="daps", help=f"one of: {', '.join(METHODS)} (default daps)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.steps=1000")
    p.add_argument("--resume", action="store_true", help="continue the run in train.out_dir from its latest checkpoint")
    p.add_argument(
        "--overwrite", action="store_true",
        help="replace an existing run folder (only a daps run folder; never the current, home or root folder)",
    )
    p.add_argument("--out", help=argparse.SUPPRESS)  # the other commands' flag: refused with the key to use
    add_device_arg(p)
    add_threads_arg(p)
    add_memory_arg(p)

    p = sub.add_parser("eval", help="evaluate a trained run or pretrained model on a data split")
    p.add_argument("run_dir", help="run folder or checkpoint folder, pretrained folder (daps export) or Hub repo id")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    p.add_argument("--data-dir", default=None,
                   help="folder with the data files (default: as trained; a pretrained model: as for training, "
                   "DAPS_DATA_DIR or the default place); arrays, sequences: the .npz file")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument(
        "--max-images", type=int, default=0,
        help="evaluate N images (0 = all): a fixed random subset (the same for every run), not the first N",
    )
    p.add_argument("--seed", type=seed_arg, default=0,
                   help="seed of the stochastic encoding (training's validation used train.seed + 12345 with "
                        "train.eval_batch_size; daps export's model card gives the flags that repeat it)")
    p.add_argument(
        "--fid", default="none", choices=["none", "val-pairs", "reference"],
        help="also report FID: val-pairs (reconstructions vs the same originals) or reference (vs --fid-ref)",
    )
    p.add_argument("--fid-ref", default=None, help="statistics .npz for --fid reference (daps fid-stats, or ADM's)")
    p.add_argument(
        "--plot", default=None,
        help="also write a PNG of reconstructions of the first batch of --split (images: a grid; motion: feature "
        "trajectories, ground truth against reconstruction)",
    )
    p.add_argument("--fid-weights", default=None, help="FID Inception weights: file or folder of shards")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier --plot PNG that daps wrote")
    add_device_arg(p)
    add_memory_arg(p)

    p = sub.add_parser("fid-stats", help="compute FID reference statistics (Inception mu, sigma) of a dataset split")
    p.add_argument(
        "dataset", help="a dataset name: cifar10, cifar10-jpeg, imagenet256, imagenet256-sample, imagefolder, arrays"
    )
    p.add_argument("--split", default="test", choices=["train", "test"], help="test = the validation split")
    p.add_argument("--out", required=True, help="output .npz (mu, sigma, num_images, meta)")
    p.add_argument("--data-dir", default=None,
                   help="folder with the data (default: $DAPS_DATA_DIR, then the cache); arrays: the .npz file")
    p.add_argument("--image-size", type=int, default=None, help="folder datasets: crop size (default: the preset's)")
    p.add_argument("--max-images", type=int, default=0, help="use N images (0 = all; a fixed random subset)")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--workers", type=int, default=2, help="loader workers for folder datasets")
    p.add_argument("--fid-weights", default=None, help="FID Inception weights: file or folder of shards")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    add_device_arg(p)
    add_memory_arg(p)

    p = sub.add_parser("compare", help="train several methods under one budget and write a comparison table")
    p.add_argument("--preset", default="mnist", help=f"one of: {', '.join(sorted(PRESETS))} (default mnist)")
    p.add_argument(
        "--methods", default="daps,gumbel,grmck,fsq,vqvae,ppo,reinforce",
        help=f"comma-separated, from: {', '.join(METHODS)} (default %(default)s)",
    )
    p.add_argument("--steps", type=int, required=True, help="optimizer steps per run (the same for every method)")
    p.add_argument("--seeds", type=int, default=1, help="seeds 0 .. N-1 per method (default 1)")
    p.add_argument(
        "--vary", action="append", default=[], metavar="KEY=V1,V2",
        help="an ablation: one arm per value (repeat the option for a grid; tie settings with +: "
        "daps.beta.init+daps.beta.end=5+0.01,5+1)",
    )
    p.add_argument(
        "--out", default=None,
        help="output folder (default runs/compare-<preset>); an existing comparison is continued: finished runs "
        "with the same config are reused, interrupted ones resumed",
    )
    p.add_argument(
        "--overwrite", action="store_true",
        help="retrain run folders whose config differs from this comparison's (without it they are refused)",
    )
    add_device_arg(p)
    add_threads_arg(p)
    add_memory_arg(p)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides applied to every method")

    p = sub.add_parser("gradlab", help="compare encoder-gradient estimators with the exact gradient on a tiny model")
    p.add_argument("--draws", type=int, default=2000, help="gradient draws per estimator (default 2000)")
    p.add_argument("--beta", type=float, default=0.5, help="entropy weight of the beta-ELBO (default 0.5)")
    p.add_argument("--temperature", type=float, default=1.0, help="Gumbel temperature (default 1)")
    p.add_argument("--num-samples", type=int, default=8, help="K for REINFORCE-LOO and DAPS (default 8)")
    p.add_argument("--eta", type=float, default=1.0, help="DAPS eta (also shown at 10x; default 1)")
    p.add_argument("--rao-samples", type=int, default=10, help="GR-MCK conditional draws k (default 10)")
    p.add_argument("--pretrain-steps", type=int, default=200, help="DAPS steps before measuring (default 200)")
    p.add_argument("--num-tokens", type=int, default=2, help="tokens per code T (default 2)")
    p.add_argument("--vocab-size", type=int, default=4, help="values per token V (default 4; V^T codes are enumerated)")
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument(
        "--resample", default="",
        help="also DAPS with resampled weighted ML for these m (e.g. 1,2,4), each scheme, against full-K DAPS",
    )
    p.add_argument("--out", default="runs/gradlab", help="output folder (default runs/gradlab)")
    p.add_argument("--overwrite", action="store_true", help="replace the report in an existing gradlab --out folder")

    p = sub.add_parser("render", help="video of a motion run: ground truth and reconstruction side by side on the H1")
    p.add_argument("run_dir", help="run folder or checkpoint folder of a lafan1-h1 run, its pretrained folder or Hub "
                   "repo id")
    p.add_argument("--clip", default="walk2_subject4", help="LAFAN1 clip (default walk2_subject4, a validation clip)")
    p.add_argument("--start", type=float, default=0.0, help="start time in the clip, seconds (default 0)")
    p.add_argument(
        "--seconds", type=float, default=10.0, help="length, seconds (default 10, rounded up to whole windows)",
    )
    p.add_argument("--out", required=True, help="the mp4 to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--size", type=int, default=320, help="pixels of each square view (default 320)")
    p.add_argument("--data-dir", default=None,
                   help="folder with the LAFAN1 H1 data (default: as trained)")
    p.add_argument("--seed", type=seed_arg, default=0, help="seed of the stochastic encoding")
    p.add_argument("--device", default="cpu", help="device of the model (default cpu)")
    add_memory_arg(p)

    from daps.prior.cli import add_parsers
    from daps.robot.cli import add_parsers as add_robot_parsers

    add_parsers(sub)
    add_robot_parsers(sub)

    p = sub.add_parser("export", help="a run as a shareable pretrained folder (weights, config, model card)")
    p.add_argument("run_dir", help="run folder or checkpoint")
    p.add_argument("--out", required=True, help="the pretrained folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing pretrained folder")
    p.add_argument("--push-to-hub", default=None, metavar="USER/NAME", help="also upload it (extra daps[hub])")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")

    p = sub.add_parser("presets", help="list presets, or print the settings one preset reads as JSON")
    p.add_argument("name", nargs="?", help="a preset to print (default: list them all)")
    p.add_argument("--method", default=None, help="the method whose defaults to show (default daps)")
    p.add_argument("--all", action="store_true",
                   help="print every setting of the config, also those this preset and method do not read")
    return parser


def _device(name: str | None):
    """``--device`` -> torch.device, or a UserError naming what is wrong."""
    from daps.dist import resolve_device

    return resolve_device(name, "--device")


def _train(args: argparse.Namespace) -> int:
    from daps.data import dataset_spec
    from daps.train import stop_step, summarize, train

    if args.out is not None:
        raise UserError(f"daps train takes its run folder as train.out_dir={args.out}, not --out")
    cfg = parse_overrides(get_preset(args.preset, args.method), args.overrides)
    refuse_ignored(cfg, args.overrides)
    set_threads(args.threads)
    run_dir = train(cfg, resume=args.resume, overwrite=args.overwrite, device=_device(args.device))
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 evaluates and reports
        return 0
    if stop_step(cfg) < cfg.train.steps:  # stopped early by train.stop_after: no summary.json, the run is incomplete
        from daps.plots import read_metrics

        # its last validation row; train() has logged where it stopped and how to continue
        metrics = [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("split") == "val"][-1]
    else:
        metrics = json.loads((run_dir / "summary.json").read_text())
    print(summarize(metrics, examples=dataset_spec(cfg.data.name).examples))
    print(f"run folder: {run_dir}  (reconstructions.png, curves.png, metrics.jsonl, checkpoints/)")
    return 0


def _eval(args: argparse.Namespace) -> int:
    import torch

    from daps.data import check_fid_images, dataset_spec, eval_set, model_data
    from daps.hub import open_model
    from daps.metrics import evaluate
    from daps.metrics.evaluate import fid_setup
    from daps.train import summarize

    check_at_least(("--batch-size", args.batch_size, 1), ("--max-images", args.max_images, 0))
    if args.fid == "reference" and not args.fid_ref:
        raise UserError("--fid reference needs --fid-ref STATS.npz (see daps fid-stats)")
    if args.fid_ref and args.fid != "reference":
        raise UserError(f"--fid-ref is read only with --fid reference (here --fid {args.fid})")
    if args.fid_ref and not Path(args.fid_ref).is_file():  # before the model and the data are read
        raise UserError(f"--fid-ref {args.fid_ref}: no such file (daps fid-stats writes one)")
    reference_stats = None
    if args.fid_ref:
        from daps.metrics.fid import load_fid_stats

        reference_stats = load_fid_stats(args.fid_ref)  # a damaged or foreign file is said before the model and
        # the data are read
    if args.fid_weights and args.fid == "none":
        raise UserError("--fid-weights is used only with --fid val-pairs or reference")
    if args.plot is not None:  # an empty one is refused, not taken as "no plot"
        check_media_output(args.plot, ".png", args.overwrite, "--plot")  # only a PNG daps wrote is replaced
    device = _device(args.device)
    model, origin = open_model(args.run_dir, device)  # a run, checkpoint, pretrained folder or Hub repo id
    data = model_data(model, origin, args.data_dir, args.run_dir)
    spec = dataset_spec(data.name)
    if args.fid != "none":  # before the Inception weights are read
        check_fid_images(data.name, data.image_shape, f"--fid {args.fid}")
    images = eval_set(data, args.split, args.max_images, args.batch_size, device)
    fid = fid_setup(args.fid, args.fid_weights, args.fid_ref, device, data, reference_stats)
    example_metrics = spec.example_metrics(data) if spec.example_metrics is not None else None
    metrics = evaluate(
        model, images, torch.Generator(device).manual_seed(args.seed), spec.standardize, fid, example_metrics,
        progress=True,
    )
    step = origin["step"]
    metrics.update(dataset=spec.name, split=args.split, run=str(args.run_dir), checkpoint=origin["checkpoint"],
                   seed=args.seed, batch_size=args.batch_size)
    if step is not None:
        metrics["step"] = step
    if spec.note:  # e.g. a lossy copy, or a test split that is the training images
        metrics["note"] = spec.note
    if args.plot is not None:
        _plot_reconstructions(model, spec, data, images, Path(args.plot), args.seed, device)
        # on stderr, so that --json keeps stdout to its one object
        logging.getLogger("daps").info("wrote %s: reconstructions of the %s split's first batch", args.plot,
                                       args.split)
    if args.json:  # strict JSON: a non-finite metric (a diverged run) is null, never a bare NaN token
        print(json.dumps({k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in metrics.items()}))
    else:
        at = f"checkpoint step {step}" if step is not None else "pretrained"
        print(summarize(metrics, f"{spec.name} {args.split} split, {at}, seed {args.seed}, batch "
                                 f"{args.batch_size}", spec.examples))
    return 0


def _plot_reconstructions(model, spec, data, images, path: Path, seed: int, device) -> None:
    """Reconstructions of (up to) 16 examples spread over the first evaluation batch, in the dataset's own kind of
    figure."""
    import torch

    from daps.plots import spread_indices

    batch = next(images.batches())
    x = spec.standardize(batch[spread_indices(batch.shape[0]).to(batch.device)])
    with torch.no_grad():
        x_hat = model.reconstruct(x, torch.Generator(device).manual_seed(seed)).x_hat
    title = f"{model.config.method} on {spec.name}: {spec.examples} of the evaluation split"
    spec.save_reconstructions(data, x, x_hat, path, title)


def _fid_stats(args: argparse.Namespace, argv: list[str]) -> int:
    from daps.config import DataConfig
    from daps.data import check_fid_images, dataset_spec
    from daps.metrics.evaluate import dataset_fid_stats

    spec = dataset_spec(args.dataset)
    check_fid_images(spec.name, None, "fid-stats")  # images at all; their channels once their shape is read
    check_at_least(("--batch-size", args.batch_size, 1), ("--max-images", args.max_images, 0),
                   ("--workers", args.workers, 0))
    if args.image_size is not None and args.image_size < 16:
        raise UserError(f"--image-size must be at least 16 pixels, got {args.image_size}")
    size = args.image_size or 256
    fixed: tuple[int, ...] | None = spec.image_shape
    if fixed is None and spec.in_memory:  # arrays: the file's images, whatever their size (read from its header)
        from daps.data.arrays import image_shape

        fixed = image_shape(args.split, args.data_dir)
    shape = fixed or (3, size, size)
    if args.image_size and fixed and fixed[1] != args.image_size:
        raise UserError(f"--image-size: {spec.name} images are {fixed[1]} pixels")
    data = DataConfig(
        name=spec.name, data_dir=args.data_dir or "", image_shape=tuple(shape), num_workers=args.workers
    )
    meta = dataset_fid_stats(
        data, args.split, args.out, args.fid_weights, args.max_images, args.batch_size, _device(args.device),
        overwrite=args.overwrite, command=" ".join(["daps", "fid-stats", *argv]), progress=True,
    )
    print(f"wrote {args.out}: Inception statistics of {meta['num_images']} {spec.name} {args.split} images")
    return 0


def _compare(args: argparse.Namespace, argv: list[str]) -> int:
    from daps.compare import compare

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise UserError(f"--methods {args.methods!r} names no method; choose from: {', '.join(METHODS)}")
    if args.seeds <= 0:
        raise UserError(f"--seeds must be at least 1, got {args.seeds}")
    check_at_most(("--seeds", args.seeds, MAX_SEEDS))
    if args.out is not None and not args.out.strip():
        raise UserError("--out is empty: name an output folder")
    out = args.out or f"runs/compare-{args.preset}"
    set_threads(args.threads)
    compare(
        args.preset, methods, args.steps, list(range(args.seeds)), out, args.overrides, _device(args.device), argv,
        overwrite=args.overwrite, vary=args.vary,
        flags=[*(["--device", args.device] if args.device else []),
               *(["--threads", str(args.threads)] if args.threads else []),
               *([] if args.keep_freed_memory else ["--no-keep-freed-memory"])],
    )
    print(Path(out, "results.md").read_text())
    return 0


def _gradlab(args: argparse.Namespace, argv: list[str]) -> int:
    from daps.gradlab import check_out, check_size, default_estimators, resampled_estimators, run_gradlab, write_report

    check_at_least(("--draws", args.draws, 2), ("--num-samples", args.num_samples, 2),
                   ("--rao-samples", args.rao_samples, 1), ("--pretrain-steps", args.pretrain_steps, 0))
    check_at_most(("--draws", args.draws, 1_000_000), ("--num-samples", args.num_samples, 4096),
                  ("--rao-samples", args.rao_samples, 4096), ("--pretrain-steps", args.pretrain_steps, 1_000_000))
    if not (all(map(math.isfinite, (args.temperature, args.eta, args.beta)))
            and args.temperature > 0 and args.eta > 0 and args.beta >= 0):
        raise UserError("--temperature and --eta must be positive numbers and --beta a number >= 0, got "
                        f"{args.temperature}, {args.eta} and {args.beta}")
    check_size(args.num_tokens, args.vocab_size)
    check_out(Path(args.out), args.overwrite)  # before the minutes of draws
    estimators = default_estimators(args.num_samples, args.eta, args.temperature, args.rao_samples)
    if args.resample:
        try:
            sizes = tuple(int(m) for m in args.resample.split(","))
        except ValueError:
            raise UserError(f"--resample takes sizes like 1,2,4, got {args.resample!r}") from None
        if not all(1 <= m <= args.num_samples for m in sizes):
            raise UserError(f"--resample sizes must be in [1, --num-samples={args.num_samples}]")
        if len(set(sizes)) != len(sizes):
            raise UserError(f"--resample {args.resample}: a size is repeated (each gives two rows of its own)")
        estimators += resampled_estimators(args.num_samples, args.eta, sizes)
    result = run_gradlab(
        estimators, args.draws, args.beta, args.temperature, pretrain_steps=args.pretrain_steps, seed=args.seed,
        num_tokens=args.num_tokens, vocab_size=args.vocab_size,
    )
    write_report(result, Path(args.out), command=" ".join(["daps", "gradlab", *argv]), overwrite=args.overwrite)
    print(Path(args.out, "gradlab.md").read_text())
    return 0


def _render(args: argparse.Namespace) -> int:
    import torch

    from daps.data import model_data
    from daps.data.motion import motion_data, reconstruct_clip
    from daps.hub import open_model
    from daps.motion.h1 import load_h1
    from daps.motion.render import MAX_VIEW_SIZE, render_side_by_side

    out = check_media_output(args.out, ".mp4", args.overwrite)
    if not (math.isfinite(args.seconds) and args.seconds > 0 and math.isfinite(args.start) and args.start >= 0
            and 16 <= args.size <= MAX_VIEW_SIZE):
        raise UserError(f"--seconds must be a positive number, --start a number >= 0 and --size 16 to "
                        f"{MAX_VIEW_SIZE} pixels, got {args.seconds}, {args.start} and {args.size}")
    device = _device(args.device)
    model, origin = open_model(args.run_dir, device)  # a run, checkpoint, pretrained folder or Hub repo id
    if model.config.data.name != "lafan1-h1":  # the H1's features: sequences of one's own have no body to show
        raise UserError(f"{args.run_dir} was trained on {model.config.data.name}; render shows H1 motion runs "
                        "(lafan1-h1)")
    data = model_data(model, origin, args.data_dir, args.run_dir)
    target, pred = reconstruct_clip(
        model, data, args.clip, args.start, args.seconds, torch.Generator(device).manual_seed(args.seed)
    )
    size = args.size - args.size % 16
    fps = motion_data(data).fps
    logging.getLogger("daps").info("rendering %s: %d frames (%.1f s) of two %d x %d views", args.clip, len(target),
                                   len(target) / fps, size, size)
    render_side_by_side(load_h1(data.data_dir or None), target, pred, out, fps, size, size)
    logging.getLogger("daps").info(
        "wrote %s: %s, %.1f s, ground truth (grey, left) and reconstruction (orange, right)",
        out, args.clip, len(target) / fps,
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    from daps.hub import check_push, export_run, push_folder

    if args.private and not args.push_to_hub:
        raise UserError("--private is read only with --push-to-hub REPO_ID (a folder on disk is neither)")
    if args.push_to_hub:
        check_push(args.push_to_hub)  # a bad id or a missing package is refused before the folder is written
    folder = export_run(args.run_dir, args.out, args.overwrite)
    logging.getLogger("daps").info("wrote %s (model.safetensors, config.json, README.md)", folder)
    if args.push_to_hub:
        url = push_folder(folder, args.push_to_hub, private=args.private)
        logging.getLogger("daps").info("uploaded to %s", url)
    return 0


def _presets(args: argparse.Namespace) -> int:
    from daps.config_io import config_to_dict, ignored_settings

    if args.name is None and (args.method is not None or args.all):
        flag = f"--method {args.method}" if args.method is not None else "--all"
        raise UserError(f"{flag.split()[0]} shows one preset's config: name the preset (daps presets mnist {flag})")
    if args.name is None:  # each preset with the first paragraph of its doc, wrapped under its name
        for name, fn in sorted(PRESETS.items()):
            summary = " ".join(inspect.cleandoc(fn.__doc__ or "").split("\n\n")[0].split())
            print(textwrap.fill(summary, 110, initial_indent=f"{name:<13}", subsequent_indent=" " * 13))
        return 0
    cfg = get_preset(args.name, args.method or "daps")
    data = config_to_dict(cfg)
    if not args.all:  # what `daps train` would refuse as an override is left out (ignored_settings says why)
        for key in ignored_settings(cfg):
            *sections, leaf = key.split(".")
            owner = data
            for name in sections:
                owner = owner[name]
            del owner[leaf]
    print(json.dumps(data, indent=2))
    return 0


def _command_name(args: argparse.Namespace) -> str:
    """``train``, ``prior sample``, ``robot plan``, ...: the command as the user typed it, for error lines."""
    sub = getattr(args, "prior_command", None) or getattr(args, "robot_command", None)
    return " ".join(filter(None, (args.command, sub)))


def _from_a_worker(err: BaseException) -> str:
    """The message of ``err``; for an error a DataLoader worker raised (torch re-raises it in the main process with
    the worker's traceback as its message), the worker's own message, so that it stays one line."""
    text = str(err)
    if "\nOriginal Traceback (most recent call last):" not in text:
        return text
    last = text.rstrip().splitlines()[-1]  # "OSError: 16 consecutive unreadable image files ..."
    return last.split(": ", 1)[1] if ": " in last else last


def _stdout_closed() -> bool:
    """True when standard output is a pipe whose reader has gone (``| head``); it is then pointed at /dev/null, so
    that Python's own flush at exit does not fail on it again."""
    import select

    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        closed = any(events & select.POLLERR for _, events in poller.poll(0))  # a pipe without a reader
        if closed:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, fd)
        return closed
    except (OSError, ValueError, AttributeError):  # no file descriptor behind sys.stdout, or no poll here
        return False


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an allocation that failed: the settings asked for more memory than the device has."""
    import torch

    return isinstance(err, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in str(err)


def out_of_memory(err: BaseException, freed_memory_kept: bool = False) -> str:
    """The one line for a failed allocation: what torch says (its first line), and what to lower; for a CPU
    allocation while freed memory is kept for reuse (:mod:`daps.allocator`), also the flag that gives it back."""
    said = (str(err).strip().splitlines() or [type(err).__name__])[0]
    on_cpu = "DefaultCPUAllocator: " in said or isinstance(err, MemoryError)
    said = said.split("DefaultCPUAllocator: ")[-1]  # torch's CPU message starts with a C++ source location
    hint = ", or pass --no-keep-freed-memory (a lower peak, a slower step)" if on_cpu and freed_memory_kept else ""
    return (f"out of memory ({said}); lower the batch (train.batch_size, or --batch-size) or the model's size "
            f"(encoder / decoder widths, K){hint}")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    # Overrides may sit between flags (``train a=1 --resume b=2``): collect the leftovers ourselves.
    args, extra = parser.parse_known_args(argv)
    takes_overrides = args.command in ("train", "compare") or bool({"train", "track-train"} & {
        getattr(args, "prior_command", None), getattr(args, "robot_command", None)})
    unknown = [e for e in extra if e.startswith("-") or not takes_overrides]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if takes_overrides:
        args.overrides = [*args.overrides, *extra]
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    # under torchrun only rank 0 reports progress; the others still say what went wrong (warnings, errors)
    if os.environ.get("RANK", "0") != "0":
        logging.getLogger("daps").setLevel(logging.WARNING)
    logging.captureWarnings(True)  # Python warnings (torch's, ...) go through logging: above a progress bar, not glued
    logging.getLogger("OpenGL").setLevel(logging.WARNING)  # PyOpenGL (under mujoco) reports its optional C module
    from daps.prior.cli import decode_random_command, export_codes_command, prior_command
    from daps.robot.cli import robot_command

    commands = {
        "train": _train, "eval": _eval, "presets": _presets, "render": _render, "export-codes": export_codes_command,
        "prior": prior_command, "decode-random": decode_random_command, "export": _export, "robot": robot_command,
    }
    kept = getattr(args, "keep_freed_memory", False)  # the commands that compute, unless --no-keep-freed-memory
    if kept:
        from daps.allocator import keep_freed_memory

        keep_freed_memory()
    try:
        rest = list(argv if argv is not None else sys.argv[1:])[1:]
        with float32_kernels(tf32=False):  # every command in full float32 on CUDA; a training step as train.tf32 says
            if args.command == "compare":
                return _compare(args, rest)
            if args.command == "gradlab":
                return _gradlab(args, rest)
            if args.command == "fid-stats":
                return _fid_stats(args, rest)
            return commands[args.command](args)
    except BrokenPipeError as err:  # stdout closed early (``daps presets | head``): stop quietly, as shell tools do
        if not _stdout_closed():
            print(f"daps {_command_name(args)}: error: {err}", file=sys.stderr)
            return 2
        return 141
    except (UserError, OSError) as err:  # what the user gave: settings, paths, files (anything else is a bug)
        command = _command_name(args)
        print(f"daps {command}: error: {_from_a_worker(err)}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as err:  # numpy's MemoryError; torch's allocations fail as RuntimeErrors
        from daps.train import TrainingDiverged

        if is_out_of_memory(err):
            print(f"daps {_command_name(args)}: error: {out_of_memory(err, kept)}", file=sys.stderr)
            return 2
        if not isinstance(err, TrainingDiverged):
            raise
        command = _command_name(args)
        print(f"daps {command}: error: {err}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback; a run folder resumes from its last checkpoint
        command = _command_name(args)
        if command == "compare":  # it resumes every interrupted run itself
            hint = "; the same command continues the comparison"
        elif command in ("train", "prior train", "robot train", "robot track-train"):
            hint = "; --resume continues from the last checkpoint (or starts again if there is none)"
        else:
            hint = ""
        after_echo = "\n" if sys.stderr.isatty() else ""  # past the terminal's ^C
        print(f"{after_echo}daps {command}: interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
