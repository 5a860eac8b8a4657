"""``daps robot train|plan|eval``: the high-level policy over motion codes (parsers and handlers; :mod:`daps.cli`
wires them in). See ``docs/robot.md``."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import torch

from daps.cli import add_device_arg, add_memory_arg, add_threads_arg, seed_arg, set_threads
from daps.dist import resolve_device
from daps.errors import UserError, check_at_least, check_at_most
from daps.prior.run import check_sampling, settings_help, warn_untrained_null
from daps.robot.run import RobotConfig
from daps.robot.tracker import TrackerConfig
from daps.runfolder import check_media_output, check_output_file

log = logging.getLogger("daps")


def add_parsers(sub) -> None:
    robot = sub.add_parser("robot", help="a command space for the H1: a policy over motion codes, planned and "
                                         "checked in physics")
    rsub = robot.add_subparsers(dest="robot_command", required=True, parser_class=type(robot))
    p = rsub.add_parser("train", help="train the high-level policy on a motion tokenizer's codes of LAFAN1",
                        epilog=settings_help(RobotConfig()) + " (docs/robot.md says what each does)")
    p.add_argument("tokenizer", help="a motion tokenizer (lafan1-h1, discrete codes): its run folder or "
                   "checkpoint, pretrained folder or Hub repo id")
    p.add_argument("--out", required=True, help="the policy's run folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing policy folder")
    p.add_argument("--data-dir", default="", help="folder with the LAFAN1 H1 data (default: as trained)")
    add_threads_arg(p)
    add_device_arg(p)
    add_memory_arg(p)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="policy settings, e.g. steps=4000 stride=4")

    p = rsub.add_parser("plan", help="roll the policy out and render the H1 (optionally tracked in physics)")
    p.add_argument("policy_dir", help="the policy's run folder")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--motion", help="kind of motion: dance, fall, fight, jump, run or walk")
    what.add_argument("--prompt", help="a text prompt naming one kind of motion (keywords: docs/robot.md)")
    p.add_argument("--velocity", default="0,0,0", help="forward[,left,yaw] in m/s, m/s, rad/s (default 0,0,0)")
    p.add_argument("--velocity-schedule", default=None,
                   help="text file of rows 'time_s forward left yaw' (instead of --velocity)")
    p.add_argument("--seconds", type=float, default=10.0, help="length, rounded up to whole windows (default 10)")
    p.add_argument("--out", required=True, help="the .mp4 to write (the physics video goes next to it)")
    p.add_argument("--physics", action="store_true",
                   help="also track the motion in MuJoCo and write OUT_physics.mp4 and the support figures")
    p.add_argument("--json", default=None, help="also write the plan's figures to this .json file")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance on the kind (default 1)")
    p.add_argument("--blend", type=int, default=0,
                   help="frames at the start of each window moved onto the previous window's path (default 0: none)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("--size", type=int, default=320, help="pixels per view (default 320)")
    p.add_argument("--tokenizer", default=None, help="tokenizer to decode with: a run, pretrained folder or Hub "
                   "repo id (default: the policy's)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    add_device_arg(p)
    add_memory_arg(p)

    p = rsub.add_parser("eval", help="velocity tracking, motion kind, smoothness, skating, physics, novelty")
    p.add_argument("policy_dir", help="the policy's run folder")
    p.add_argument("--motions", default="walk,run", help="kinds to evaluate (default walk,run)")
    p.add_argument("--rollouts", type=int, default=8, help="rollouts per request (default 8)")
    p.add_argument("--windows", type=int, default=6, help="windows per rollout (default 6)")
    p.add_argument("--physics-rollouts", type=int, default=None,
                   help="rollouts per request tracked in physics (default 2, or --rollouts if fewer)")
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--blend", type=int, default=0, help="border blending of the plans, as robot plan (default 0)")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    p.add_argument("--out", default=None, help="also write the results (JSON) and a table (.md) with this stem")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier report at --out")
    p.add_argument("--no-classifier", action="store_true", help="skip the motion classifier's accuracy")
    p.add_argument("--data-dir", default=None, help="folder with the LAFAN1 H1 data (ground-truth figures)")
    p.add_argument("--tokenizer", default=None, help="tokenizer to decode with: a run, pretrained folder or Hub "
                   "repo id (default: the policy's)")
    add_device_arg(p)
    add_memory_arg(p)
    _add_tracker_parsers(rsub)


def _add_tracker_parsers(rsub) -> None:
    p = rsub.add_parser("track-train", help="train the low-level tracker: a code-conditioned PD-target policy for "
                                           "the simulated H1, by PPO",
                        epilog=settings_help(TrackerConfig()) + " (docs/robot.md says what each does)")
    p.add_argument("tokenizer", help="a motion tokenizer (lafan1-h1, discrete codes): its run folder or "
                   "checkpoint, pretrained folder or Hub repo id")
    p.add_argument("--out", required=True, help="the tracker's run folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing tracker folder")
    p.add_argument("--data-dir", default="", help="folder with the LAFAN1 H1 data (default: as trained)")
    add_threads_arg(p)
    add_memory_arg(p)
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="tracker settings, e.g. frames=2000000 envs=16 reference=ground-truth")

    p = rsub.add_parser("track-eval", help="the tracker against the PD servos alone on the validation references")
    p.add_argument("tracker_dir", help="the tracker's run folder (or a checkpoint of it)")
    p.add_argument("--seconds", type=float, default=5.0, help="longest tracked stretch per start (default 5)")
    p.add_argument("--starts", type=int, default=4, help="starts per validation clip (default 4)")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    add_threads_arg(p)
    add_memory_arg(p)


def _track_train(args: argparse.Namespace) -> int:
    from daps.prior.run import apply_overrides
    from daps.robot.tracker import train_tracker

    set_threads(args.threads)
    cfg = apply_overrides(TrackerConfig(tokenizer=args.tokenizer, out_dir=args.out, data_dir=args.data_dir),
                          args.overrides)
    run = train_tracker(cfg, resume=args.resume, overwrite=args.overwrite)
    summary = json.loads((run / "summary.json").read_text())
    base = summary["baseline"]
    log.info("tracker folder: %s  validation survival %.2f s (PD servos alone %.2f s) of %g s", run,
             summary.get("survival_s", float("nan")), base["survival_s"], base["seconds"])
    return 0


def _track_eval(args: argparse.Namespace) -> int:
    from daps.checkpoint import resolve_checkpoint
    from daps.provenance import provenance, read_jobs
    from daps.robot.plan import MAX_SECONDS
    from daps.robot.tracker import evaluate_tracker, load_tracker, tracker_h1

    if not (math.isfinite(args.seconds) and args.seconds > 0) or args.starts < 1:
        raise UserError(f"--seconds must be a positive number and --starts >= 1, got {args.seconds} and {args.starts}")
    check_at_most(("--seconds", args.seconds, MAX_SECONDS), ("--starts", args.starts, 1000))
    set_threads(args.threads)
    model, cfg, meta, refs = load_tracker(args.tracker_dir)
    ckpt = resolve_checkpoint(args.tracker_dir, verify=False)  # verified by load_tracker
    update = int(ckpt.name.removeprefix("step_")) if ckpt.name.startswith("step_") else None
    h1 = tracker_h1(cfg, meta)
    fps = float(meta["fps"])
    result: dict[str, Any] = {
        "tracker": evaluate_tracker(model, h1, refs["val"], cfg, fps, args.seconds, args.starts),
        "pd_only": evaluate_tracker(None, h1, refs["val"], cfg, fps, args.seconds, args.starts),
        "reference": cfg.reference, "tracker_dir": str(args.tracker_dir), "checkpoint": str(ckpt),
        "update": update, "frames": update * cfg.envs * cfg.horizon if update is not None else None,
        "seconds": args.seconds, "starts_per_clip": args.starts,
        # the jobs that trained this checkpoint (not those after it); the keys below describe this evaluation
        "trained_by": [job for job in read_jobs(ckpt.parent.parent) if update is None or job["from_step"] < update],
        **provenance(),
    }
    if args.json:
        json.dump(result, sys.stdout)
        sys.stdout.write("\n")
        return 0
    at = f" at update {update} ({result['frames']:,} frames)" if update is not None else ""
    print(f"{ckpt}{at}: {int(result['tracker']['episodes'])} starts on the validation references ({cfg.reference}), "
          f"up to {args.seconds:g} s each")
    print(f"{'':<16}{'survival s':>12}{'fell':>8}{'joint err deg':>15}{'toe/hand err mm':>17}")
    for name, key in (("tracker", "tracker"), ("PD servos only", "pd_only")):
        r = result[key]
        print(f"{name:<16}{r['survival_s']:>12.2f}{r['fall_fraction']:>8.2f}{r['joint_error_deg']:>15.2f}"
              f"{r['end_error_mm']:>17.1f}")
    return 0


def _device(name: str | None) -> torch.device:
    return resolve_device(name, "--device")


def robot_command(args: argparse.Namespace) -> int:
    return {"train": _train, "plan": _plan, "eval": _eval, "track-train": _track_train,
            "track-eval": _track_eval}[args.robot_command](args)


def _train(args: argparse.Namespace) -> int:
    from daps.prior.run import apply_overrides
    from daps.robot.run import train_policy

    set_threads(args.threads)
    cfg = apply_overrides(RobotConfig(tokenizer=args.tokenizer, out_dir=args.out, data_dir=args.data_dir),
                          args.overrides)
    run = train_policy(cfg, resume=args.resume, overwrite=args.overwrite, device=_device(args.device))
    summary = json.loads((run / "summary.json").read_text())
    shown = "  ".join(f"{k} {v:.4g}" for k, v in summary.items() if isinstance(v, float))
    log.info("policy folder: %s  (held-out, bits per token against log2 V = %.2f for uniform codes)  %s", run,
             math.log2(json.loads((run / "config.json").read_text())["commands"]["vocab_size"]), shown)
    return 0


def _plan(args: argparse.Namespace) -> int:
    from daps.motion.h1 import load_h1
    from daps.motion.render import render_motion, render_side_by_side
    from daps.robot.commands import motion_from_prompt, motion_index, parse_velocity, read_velocity_schedule
    from daps.robot.plan import Planner, describe, plan_motion
    from daps.runfolder import write_json_atomic

    out = check_media_output(args.out, ".mp4", args.overwrite)
    physics_out = out.with_name(out.stem + "_physics.mp4")
    if args.physics:
        check_media_output(physics_out, ".mp4", args.overwrite, "--physics (next to --out)")
    json_out = (check_output_file(args.json, ".json", args.overwrite, "--json", _is_plan_report,
                                  "an earlier robot plan report") if args.json is not None else None)
    from daps.motion.render import MAX_VIEW_SIZE

    if not 16 <= args.size <= MAX_VIEW_SIZE:
        raise UserError(f"--size must be 16 to {MAX_VIEW_SIZE} pixels, got {args.size}")
    check_sampling(args.guidance, args.temperature, "--guidance")
    if args.velocity_schedule and args.velocity != "0,0,0":
        raise UserError("give --velocity or --velocity-schedule, not both")
    motion = args.motion if args.motion else motion_from_prompt(args.prompt)
    planner = Planner(args.policy_dir, _device(args.device), args.tokenizer)
    motion_index(motion, planner.class_names, " (or --prompt TEXT)")
    warn_untrained_null(planner.cfg.label_dropout, args.guidance, "--guidance")
    windows = planner.windows_for(args.seconds)
    velocity = (read_velocity_schedule(args.velocity_schedule, windows, planner.window_seconds)
                if args.velocity_schedule else parse_velocity(args.velocity))
    if args.blend < 0:
        raise UserError(f"--blend must be >= 0, got {args.blend}")
    rollout = plan_motion(planner, motion, velocity, args.seconds, args.guidance, args.temperature, args.seed,
                          args.blend)
    poses = rollout.poses[0]
    h1 = load_h1(planner.data_dir)
    size = args.size - args.size % 16
    report = {"motion": motion, "seconds": len(poses) / planner.fps, **describe(rollout, planner.fps,
                                                                              planner.window)}
    if args.physics:
        from daps.motion.dataset import load_motion_data
        from daps.robot.evaluate import ground_truth_segments
        from daps.robot.physics import balance_check, track

        result = track(h1, poses, planner.fps)
        report["physics"] = {**result.summary(), **balance_check(h1, poses, planner.fps)}
        # the same figures for a ground-truth segment of the same kind and length (the data is not exact either)
        motion_data = load_motion_data(planner.data_dir, window=planner.window, stride=planner.window)
        truth = ground_truth_segments(motion_data, motion_index(motion, planner.class_names), len(poses), 1,
                                      args.seed)[0][0]
        report["physics_ground_truth"] = {**track(h1, truth, planner.fps).summary(),
                                          **balance_check(h1, truth, planner.fps)}
        render_side_by_side(h1, poses, result.poses, physics_out, planner.fps, size, size,
                            captions=("kinematic plan", "physics tracking"))
        shown = "  ".join(f"{k} {v:.3g} (data {report['physics_ground_truth'][k]:.3g})"
                          for k, v in report["physics"].items())
        log.info("wrote %s: kinematic plan (grey, left) and the physics tracking (orange, right); %s",
                 physics_out, shown)
    render_motion(h1, poses, out, planner.fps, size, size, captions=plan_captions(motion, report["requested"],
                                                                             planner.window, planner.fps))
    if json_out is not None:
        write_json_atomic(json_out, report)
        log.info("wrote %s: requested and achieved velocity per window%s", json_out,
                 ", physics figures" if args.physics else "")
    windows = rollout.codes.shape[1]
    log.info("wrote %s: %s, %.1f s (%d window%s)", out, motion, report["seconds"], windows, "" if windows == 1 else "s")
    return 0


def plan_captions(motion: str, requested: list[list[float]], window: int, fps: float) -> list[str]:
    """One caption per frame of a plan's video: the kind, the velocity its window was asked for (after clamping to
    what the tokenizer saw) and the time, e.g. ``walk +1.0,+0.0 m/s +0.3 rad/s 2.4 s``."""
    def shown(v: float) -> float:
        return round(v, 1) + 0.0  # -0.04 reads +0.0, not -0.0

    return [f"{motion} {shown(vx):+.1f},{shown(vy):+.1f} m/s {shown(yaw):+.1f} rad/s {(w * window + f) / fps:.1f} s"
            for w, (vx, vy, yaw) in enumerate(requested) for f in range(window)]


PLAN_KEYS = frozenset({"motion", "seconds", "requested", "achieved"})
"""Keys every ``robot plan --json`` report holds: how an earlier one is told from a user's file."""


def _is_plan_report(path: Path) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and PLAN_KEYS <= data.keys()


def _eval(args: argparse.Namespace) -> int:
    from daps.robot.evaluate import check_report_stem, evaluate, write_report

    if args.physics_rollouts is None:
        args.physics_rollouts = min(2, args.rollouts)
    check_at_least(("--rollouts", args.rollouts, 1), ("--windows", args.windows, 2),
                   ("--physics-rollouts", args.physics_rollouts, 0), ("--blend", args.blend, 0))
    check_at_most(("--rollouts", args.rollouts, 10_000), ("--windows", args.windows, 10_000))
    motions = [m.strip() for m in args.motions.split(",") if m.strip()]
    if not motions:
        raise UserError(f"--motions {args.motions!r} names no kind of motion")
    if len(set(motions)) != len(motions):
        raise UserError(f"--motions {args.motions}: a kind is repeated")
    if args.physics_rollouts > args.rollouts:
        raise UserError(f"--physics-rollouts {args.physics_rollouts} is more than --rollouts {args.rollouts} (the "
                        "physics tracks some of the rollouts)")
    check_sampling(args.guidance, 1.0, "--guidance")
    if args.out is not None:
        if not args.out.strip():
            raise UserError("--out is empty: name the stem of the report files")
        check_report_stem(Path(args.out), args.overwrite)  # before the rollouts, so that a refusal costs nothing
    result = evaluate(
        args.policy_dir, motions, rollouts=args.rollouts, windows=args.windows,
        physics_rollouts=args.physics_rollouts, seed=args.seed, guidance=args.guidance, blend=args.blend,
        classifier=not args.no_classifier, data_dir=args.data_dir, tokenizer=args.tokenizer,
        device=_device(args.device),
    )
    if args.out is not None:
        from daps.robot.evaluate import report_paths

        write_report(result, Path(args.out), args.overwrite)
        log.info("wrote %s (everything) and %s (the table)", *report_paths(Path(args.out)))
    if args.json:
        json.dump(result, sys.stdout)
        sys.stdout.write("\n")
    else:
        from daps.robot.evaluate import table

        print(table(result))
    return 0
