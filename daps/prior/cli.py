"""The command-line side of codes and priors: ``daps export-codes``, ``daps prior train|sample|eval`` and
``daps decode-random`` (parsers and handlers; :mod:`daps.cli` wires them in)."""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from daps.cli import add_device_arg, add_memory_arg, add_threads_arg, seed_arg, set_threads
from daps.dist import resolve_device
from daps.errors import UserError, check_at_most
from daps.prior.run import MAX_EULER_STEPS, PriorConfig, check_sampling, settings_help, warn_untrained_null
from daps.runfolder import check_media_output

if TYPE_CHECKING:
    from daps.methods.types import Method

log = logging.getLogger("daps")


def add_parsers(sub) -> None:
    p = sub.add_parser("export-codes", help="encode a dataset split with a trained tokenizer and save codes + labels")
    p.add_argument("run_dir", help="a tokenizer (any method with discrete codes): its run folder or checkpoint, a "
                   "pretrained folder (daps export) or a Hub repo id user/name")
    p.add_argument("--split", default="train", choices=["train", "test"])
    p.add_argument("--samples-per-input", type=int, default=1,
                   help="codes drawn per input (categorical encoders; quantizers: 1) (default 1)")
    p.add_argument("--out", required=True, help="the .safetensors file to write")
    p.add_argument("--max-inputs", type=int, default=0, help="a fixed random subset of N inputs (0 = all)")
    p.add_argument("--seed", type=seed_arg, default=0, help="seed of the stochastic encoding")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--data-dir", default=None,
                   help="folder with the data files (default: as trained); arrays, sequences: the .npz file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing codes file")
    add_device_arg(p)
    add_memory_arg(p)

    prior = sub.add_parser("prior", help="train, sample and score a label-conditioned prior over exported codes")
    psub = prior.add_subparsers(dest="prior_command", required=True, parser_class=type(prior))
    p = psub.add_parser("train", help="train a prior (a run folder) on a codes file",
                        epilog=settings_help(PriorConfig()) + " (docs/priors.md says what each does)")
    p.add_argument("codes", help="codes file from daps export-codes (the training split)")
    p.add_argument("--kind", default="ar", choices=["ar", "dfm"], help="autoregressive or discrete flow matching")
    p.add_argument("--out", required=True, help="the prior's run folder")
    p.add_argument("--val-codes", default=None,
                   help="held-out codes of the same tokenizer (default: 5%% of the inputs)")
    p.add_argument("--label-dropout", type=float, default=None, help="share of null labels in training (default 0.1)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing prior folder")
    add_threads_arg(p)
    add_device_arg(p)
    add_memory_arg(p)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="prior settings, e.g. steps=5000 width=128")

    p = psub.add_parser("sample", help="sample codes from a prior and decode them into a grid")
    p.add_argument("prior_dir", help="the prior's run folder")
    p.add_argument("--label", default=None, help="class index or name (default: one row per class)")
    p.add_argument("--n", type=int, default=10, help="samples (per class when --label is not given) (default 10)")
    p.add_argument("--cfg", type=float, default=1.0,
                   help="classifier-free guidance scale (0 = unconditional, 1 = conditional, above 1 sharper; "
                        "below 0 steers away from the label)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--euler-steps", type=int, default=None, help="dfm: Euler steps (default: the run's)")
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("--out", required=True, help="PNG grid of the decoded samples")
    p.add_argument("--codes-out", default=None, help="also save the sampled codes (.safetensors)")
    p.add_argument("--video", default=None,
                   help="motion tokenizers: also an mp4 of the sampled motions on the H1, one captioned view each")
    p.add_argument("--tokenizer", default=None, help="tokenizer to decode with: a run, pretrained folder or Hub repo "
                   "id (default: the codes' own)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    add_device_arg(p)
    add_memory_arg(p)

    p = psub.add_parser("eval", help="held-out likelihood, sample uniqueness and copies, sampling speed")
    p.add_argument("prior_dir", help="the prior's run folder")
    p.add_argument("--n", type=int, default=1000, help="samples for the sample statistics (default 1000)")
    p.add_argument("--cfg", type=float, default=1.0, help="guidance scale of the samples (default 1)")
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    p.add_argument("--tokenizer", default=None, help="tokenizer to decode with: a run, pretrained folder or Hub repo "
                   "id (default: the codes' own)")
    p.add_argument("--no-classifier", action="store_true", help="skip the classifier scores (no tokenizer needed)")
    p.add_argument("--inception-fid", type=int, default=0, metavar="N",
                   help="cifar10 tokenizers: also Inception FID of N samples vs N test images (needs the FID "
                        "weights and the cifar10 classifier)")
    p.add_argument("--fid-weights", default=None,
                   help="FID Inception weights (default: $DAPS_DATA_DIR/fid_inception, then "
                        "~/.cache/daps/fid_inception)")
    add_device_arg(p)
    add_memory_arg(p)

    p = sub.add_parser("decode-random", help="decode uniform-random codes of a tokenizer into a grid")
    p.add_argument("run_dir", help="tokenizer run folder or checkpoint, pretrained folder or Hub repo id")
    p.add_argument("--n", type=int, default=100, help="codes (default 100, at most 400)")
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("--out", required=True, help="PNG grid")
    p.add_argument("--video", default=None,
                   help="motion tokenizers: also an mp4 of the decoded motions on the H1, one view each")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    add_device_arg(p)
    add_memory_arg(p)


MAX_GRID = 400
"""Most images ``decode-random`` and ``prior sample`` put in their one PNG grid."""

MAX_EVAL_SAMPLES = 1_000_000
"""Most samples ``prior eval`` draws for its statistics (``--n``, ``--inception-fid``)."""


def _device(name: str | None) -> torch.device:
    return resolve_device(name, "--device")


def export_codes_command(args: argparse.Namespace) -> int:
    from daps.codes import check_codes_out, export_codes, save_codes

    out = check_codes_out(args.out, args.overwrite)  # before encoding anything
    if args.batch_size < 1 or args.max_inputs < 0:
        raise UserError(f"--batch-size must be at least 1 and --max-inputs >= 0 (0: all), got {args.batch_size} "
                        f"and {args.max_inputs}")
    codes = export_codes(
        args.run_dir, args.split, args.samples_per_input, args.seed, args.max_inputs, args.batch_size,
        args.data_dir, _device(args.device), progress=True,
    )
    save_codes(codes, out, overwrite=args.overwrite)
    n, k, t = codes.codes.shape
    step = codes.meta["step"]
    log.info("wrote %s: %d inputs x %d codes of %d tokens (V=%d, %s, %s), %d classes", out, n, k, t, codes.vocab_size,
             codes.meta["method"], "pretrained" if step is None else f"step {step}", codes.num_classes)
    return 0


def prior_command(args: argparse.Namespace) -> int:
    return {"train": _train, "sample": _sample, "eval": _eval}[args.prior_command](args)


def _train(args: argparse.Namespace) -> int:
    from daps.prior.run import PriorConfig, apply_overrides, check_settings_read, train_prior

    device = _device(args.device)
    set_threads(args.threads)
    if args.val_codes is not None and not args.val_codes.strip():
        raise UserError("--val-codes is empty: name a codes file (or leave the flag out to hold out 5% of the inputs)")
    cfg = apply_overrides(PriorConfig(kind=args.kind, codes=args.codes, val_codes=args.val_codes or "",
                                      out_dir=args.out), args.overrides)
    given = {item.partition("=")[0] for item in args.overrides}
    if args.label_dropout is not None:
        if "label_dropout" in given:
            raise UserError("give the label dropout once: --label-dropout or label_dropout=, not both")
        cfg.label_dropout = args.label_dropout
    check_settings_read(cfg, given)
    run = train_prior(cfg, resume=args.resume, overwrite=args.overwrite, device=device)
    summary = json.loads((run / "summary.json").read_text())
    shown = "  ".join(f"{k} {v:.4g}" for k, v in summary.items() if isinstance(v, float))
    log.info("prior folder: %s  %s", run, shown)
    return 0


def parse_label(label: str, class_names: list[str]) -> int:
    """A class index or name -> its index; anything else raises :class:`UserError` listing the classes."""
    if label in class_names:
        return class_names.index(label)
    try:
        index = int(label)
    except ValueError:
        index = -1
    if not 0 <= index < len(class_names):
        raise UserError(f"--label {label!r} is not a class of these codes: 0..{len(class_names) - 1} or "
                        f"{', '.join(class_names)}")
    return index


def _tokenizer(args: argparse.Namespace, meta: dict, device: torch.device):
    from daps.codes import load_code_tokenizer

    source = args.tokenizer or meta.get("checkpoint") or meta.get("run")
    if not source:
        raise UserError("the codes name no tokenizer run; pass --tokenizer RUN")
    return load_code_tokenizer(source, meta, device, "the prior's codes", recorded=not args.tokenizer)[0]


def _sample(args: argparse.Namespace) -> int:
    from daps.codes import CodeSet, check_codes_out, save_codes
    from daps.plots import save_image_grid
    from daps.prior.run import generate, load_prior, training_header
    from daps.prior.scores import decoded_images

    out = check_media_output(args.out, ".png", args.overwrite)
    if args.codes_out is not None:  # an empty one ("$UNSET") is refused, not taken as "no codes file"
        check_codes_out(args.codes_out, args.overwrite, "--codes-out")  # a user's file is refused before any work
    video = check_media_output(args.video, ".mp4", args.overwrite, "--video") if args.video is not None else None
    if args.n < 1:
        raise UserError("--n must be at least 1")
    if args.euler_steps is not None and args.euler_steps < 1:
        raise UserError(f"--euler-steps must be at least 1, got {args.euler_steps}")
    check_at_most(("--euler-steps", args.euler_steps or 0, MAX_EULER_STEPS))  # each step is a network evaluation
    check_sampling(args.cfg, args.temperature)
    device = _device(args.device)
    model, cfg, meta = load_prior(args.prior_dir, device)
    if args.euler_steps is not None and cfg.kind != "dfm":
        raise UserError(f"--euler-steps is for dfm priors; {args.prior_dir} is an {cfg.kind} prior")
    warn_untrained_null(cfg.label_dropout, args.cfg)
    # the codes files as resolved when the prior was trained (priors older than "val_file" name only the first)
    trained_on = [meta.get("file", cfg.codes), meta.get("val_file")]
    inputs = [Path(p).resolve() for p in trained_on if p]
    if args.codes_out is not None and Path(args.codes_out).resolve() in inputs:
        raise UserError(f"--codes-out {args.codes_out} is a codes file this prior was trained on; name another file")
    names = list(meta["class_names"])
    count = args.n if args.label is not None else args.n * len(names)
    if count > MAX_GRID:  # one PNG (and one video) of them all; before the labels are made
        per = "" if args.label is not None else f" ({args.n} for each of {len(names)} classes)"
        raise UserError(f"--n: {count} samples{per} is more than one grid holds ({MAX_GRID}); ask for fewer or "
                        "one --label at a time")
    if args.label is None:
        labels = torch.arange(len(names), device="cpu").repeat_interleave(args.n)  # host labels; generate gets a copy
        columns = args.n
    else:
        labels = torch.full((args.n,), parse_label(args.label, names), device="cpu")
        columns = min(args.n, 10)
    tokenizer = _tokenizer(args, meta, device)
    if video is not None:
        check_motion_video(tokenizer)
    g = torch.Generator(device).manual_seed(args.seed)
    euler_steps = cfg.euler_steps if args.euler_steps is None else args.euler_steps
    codes = generate(model, labels.to(device), args.cfg, args.temperature, g, euler_steps)
    classes = [names[int(y)] for y in labels]  # each row holds one class's samples (one class in all with --label)
    save_image_grid(decoded_images(tokenizer, codes), out, columns=columns, row_labels=classes[::columns])
    if video is not None:
        write_motion_video(tokenizer, codes, video, columns, classes, "sampled")
    if args.codes_out is not None:
        sample_meta = {**training_header(meta), "split": "prior-samples", "samples_per_input": 1,
                       "prior": str(args.prior_dir), "guidance": args.cfg, "temperature": args.temperature,
                       "seed": args.seed, **({"euler_steps": euler_steps} if cfg.kind == "dfm" else {})}
        save_codes(CodeSet(codes[:, None].cpu(), labels, sample_meta), args.codes_out, overwrite=args.overwrite)
    what = names[int(labels[0])] if args.label is not None else "one row per class"
    log.info("wrote %s: %d samples (%s), guidance %.2f, temperature %.2f", out, len(labels), what, args.cfg,
             args.temperature)
    return 0


def check_motion_video(tokenizer: Method) -> None:
    """``--video`` renders poses of the H1: a UserError for a tokenizer of anything else."""
    if tokenizer.config.data.name != "lafan1-h1":
        raise UserError(f"--video is for motion tokenizers of the H1 (lafan1-h1); this one is "
                        f"{tokenizer.config.data.name}")


def write_motion_video(tokenizer: Method, codes: torch.Tensor, video: Path, columns: int, captions: list[str],
                       what: str) -> None:
    """The motions ``tokenizer`` decodes ``codes (N, T)`` into, each from the origin, as one mp4 grid on the H1."""
    from daps.data.motion import MotionMetrics
    from daps.motion.render import render_grid

    to_poses = MotionMetrics(tokenizer.config.data)  # decoded windows -> H1 poses
    poses = to_poses.poses(tokenizer.decode(codes))  # (N, frames, 26)
    render_grid(to_poses.h1, poses, video, columns, captions=captions)
    log.info("wrote %s: %d %s motions of %d frames", video, len(poses), what, poses.shape[1])


def _eval(args: argparse.Namespace) -> int:
    from daps.data import dataset_spec
    from daps.metrics.classifier import FAMILY, classifier_for
    from daps.prior.run import EVAL_STRATA, evaluate_prior, load_prior, sampling_speed, trained_codes
    from daps.prior.scores import Judge, score_prior

    if args.n < 2 or args.inception_fid < 0 or args.inception_fid == 1:
        raise UserError(f"--n must be at least 2 and --inception-fid 0 (off) or at least 2, got {args.n} and "
                        f"{args.inception_fid}")
    check_at_most(("--n", args.n, MAX_EVAL_SAMPLES), ("--inception-fid", args.inception_fid, MAX_EVAL_SAMPLES))
    if args.fid_weights and not args.inception_fid:
        raise UserError("--fid-weights is read only with --inception-fid N")
    if args.inception_fid and args.no_classifier:
        raise UserError("--inception-fid needs the classifier setup that --no-classifier skips")
    if args.tokenizer and args.no_classifier:
        raise UserError("--tokenizer is read only for the classifier scores, which --no-classifier skips")
    check_sampling(args.cfg, 1.0)
    device = _device(args.device)
    model, cfg, meta = load_prior(args.prior_dir, device)
    warn_untrained_null(cfg.label_dropout, args.cfg)
    train_set, val_set = trained_codes(args.prior_dir, cfg, meta)
    judge = None
    if not args.no_classifier:  # the classifier and the checks of --n before any evaluation or sampling
        tokenizer = _tokenizer(args, meta, device)
        dataset = tokenizer.config.data.name
        if args.inception_fid and (dataset not in FAMILY or tokenizer.input_spec.image_shape[0] != 3):
            rgb = ", ".join(name for name in FAMILY if (dataset_spec(name).image_shape or (0,))[0] == 3)
            raise UserError(f"--inception-fid is for tokenizers of RGB images with a classifier ({rgb}); this one "
                            f"is of {dataset}")
        classifier = classifier_for(dataset)
        if args.inception_fid and classifier is None:
            raise UserError(f"--inception-fid needs the {FAMILY[dataset]} classifier (python "
                            f"scripts/train_classifier.py --dataset {FAMILY[dataset]})")
        judge = Judge(tokenizer, classifier, device) if classifier is not None else None
        if judge is not None:
            judge.check_balanced(args.n)
            judge.check_balanced(args.inception_fid, "--inception-fid")
    x_val, y_val = (t.to(device) for t in val_set.flat())
    result: dict = {"prior": str(args.prior_dir), "kind": cfg.kind, "guidance": args.cfg}
    result.update(evaluate_prior(model, x_val, y_val))
    result.update(score_prior(model, cfg.euler_steps, train_set.flat()[0], args.n, args.cfg, args.seed, judge, device))
    if judge is not None:
        result.update(judge.references(args.n, args.seed))
    if args.inception_fid:
        from daps.prior.run import generate
        from daps.prior.scores import batched, inception_fid

        assert judge is not None  # checked before the sampling
        tokenizer = judge.tokenizer
        n = args.inception_fid
        labels = torch.arange(n, device=device) % model.num_classes
        codes = generate(model, labels, args.cfg, 1.0, torch.Generator(device).manual_seed(args.seed + 1),
                         cfg.euler_steps)
        images = batched(tokenizer.decode, codes, 250)
        result.update(inception_fid(judge, images, n, args.seed, args.fid_weights))
    result.update(sampling_speed(model, cfg, device, guidance=args.cfg))
    result["protocol"] = (
        f"held-out codes: {'val_codes' if cfg.val_codes else f'{cfg.val_fraction:.0%} of the inputs of the codes file'}"
        f"; {args.n} samples, classes in turn, guidance {args.cfg}, seed {args.seed}"
        + (f"; {judge.protocol(args.n)}" if judge is not None else "; no classifier scores")
        + (f"; dfm_loss: the training loss at t ~ U[0, 1] ({EVAL_STRATA} strata per code), not a likelihood"
           if cfg.kind == "dfm" else "")
        + ("; nll_bound: the masked-diffusion bound, estimated at the same times" if cfg.source == "mask"
           and cfg.kind == "dfm" else "")
    )
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            shown = f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else value
            print(f"  {key:<24} {shown}")
    return 0


def decode_random_command(args: argparse.Namespace) -> int:
    from daps.hub import open_model
    from daps.plots import save_image_grid
    from daps.prior.scores import decoded_images, uniform_codes

    out = check_media_output(args.out, ".png", args.overwrite)
    video = check_media_output(args.video, ".mp4", args.overwrite, "--video") if args.video is not None else None
    if not 1 <= args.n <= MAX_GRID:
        raise UserError(f"--n must be 1 to {MAX_GRID}, got {args.n} (one PNG grid; {MAX_GRID} images of 256 x 256 "
                        "are already 26 megapixels)")
    device = _device(args.device)
    model = open_model(args.run_dir, device)[0]
    if model.vocab_size is None:
        raise UserError(f"{args.run_dir} is a {model.config.method} run: its latent is continuous, no codes")
    if video is not None:
        check_motion_video(model)
    g = torch.Generator(device).manual_seed(args.seed)
    codes = uniform_codes(model, args.n, g)
    save_image_grid(decoded_images(model, codes), out, columns=10)
    log.info("wrote %s: %d uniform-random codes decoded by %s", out, args.n, args.run_dir)
    if video is not None:
        write_motion_video(model, codes, video, min(args.n, 10), [f"random {i}" for i in range(args.n)], "decoded")
    from daps.metrics.classifier import classifier_for
    from daps.prior.scores import Judge

    classifier = classifier_for(model.config.data.name)
    if classifier is not None and args.n >= 2:
        judge = Judge(model, classifier, device)
        try:
            judge.check_balanced(args.n)
        except UserError as err:  # the grid is written; the scores are extra
            log.warning("no classifier scores: %s", err)
            return 0
        scores = judge.references(args.n, args.seed)
        log.info("classifier scores at n = %d: random codes Frechet %.2f (top class %.0f%%); real training examples "
                 "%.2f; reconstructions %.2f (accuracy %.3f)", args.n, scores["random_frechet"],
                 100 * scores["random_top_class"], scores["real_frechet"], scores["recon_frechet"],
                 scores["recon_accuracy"])
    return 0
