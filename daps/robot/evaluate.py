"""``daps robot eval``: how well the policy follows requests, and how plausible the planned motion is.

For each kind of motion asked for (default walk and run) and each requested forward speed of a sweep (the 25th,
50th and 75th percentiles of that kind's training windows, sideways speed and yaw rate 0), ``rollouts`` plans of
``windows`` windows each are made, and measured next to ground truth of the same kind (training clips cut into
segments of the same length):

- **velocity**: mean absolute error per window between requested and achieved forward / sideways speed and yaw
  rate (:func:`daps.robot.commands.window_velocity` of the stitched poses), next to the tokenizer's own ceiling:
  the same error between ground-truth segments and their reconstructions (``recon_abs_error_*``);
- **kind**: accuracy of the motion classifier (:mod:`daps.motion.classifier`) on the planned windows against the
  requested kind, next to its accuracy on real windows of that kind (validation clips where the kind has one;
  window-level labels are noisy and the classifier is coarse, see docs/motion.md);
- **smoothness**: mean |joint acceleration| at window borders and within windows (:func:`daps.robot.plan.
  transition_jumps`), and the same for the ground-truth segments cut at the same borders;
- **foot skating** (m/s, :func:`daps.motion.metrics.foot_skating_m_s`) and **float** (mm, the lower foot's height
  above the floor, :func:`daps.motion.metrics.foot_float_mm`: floating lowers skating), planned and ground truth;
- **physics** (``physics_rollouts`` plans per request and as many ground-truth segments): support force / body
  weight and support torque of the PD tracker (:func:`daps.robot.physics.track`), and the inverse-dynamics
  balanced fraction (:func:`daps.robot.physics.balance_check`);
- **novelty**: share of distinct window codes among the planned windows, and the share of planned window codes
  found verbatim among the training windows' codes (copies).

Also reported once: how closely the root's window velocity follows the centre of mass's on the training windows.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from daps.checkpoint import resolve_checkpoint
from daps.config import numpy_seed
from daps.data.motion import window_kinds
from daps.errors import UserError
from daps.provenance import cpu_name, source_revision
from daps.robot.commands import VELOCITY_NAMES, com_window_velocity, motion_index, window_velocity
from daps.robot.plan import Planner, stitch_windows, transition_jumps
from daps.runfolder import check_output_file

log = logging.getLogger("daps")


def ground_truth_segments(motion: Any, kind: int, frames: int, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` random segments of training clips of motion kind ``kind``: poses ``(count, frames, 26)`` and raw
    features ``(count, frames, F)``."""
    from daps.data.motion import MOTION_TYPES, motion_type
    from daps.motion.lafan import split_clips

    train, _ = split_clips(sorted(motion.poses))
    clips = [c for c in train if motion_type(c) == kind and len(motion.poses[c]) >= frames]
    if not clips:
        raise UserError(f"no training clip of kind {MOTION_TYPES[kind]!r} has {frames} frames "
                        f"({frames / motion.fps:.1f} s); ask for fewer seconds or windows")
    rng = np.random.default_rng(numpy_seed(seed))
    poses, feats = [], []
    for _ in range(count):
        clip = clips[rng.integers(len(clips))]
        start = rng.integers(len(motion.poses[clip]) - frames + 1)  # every start, the last possible one too
        poses.append(motion.poses[clip][start : start + frames])
        feats.append(motion.features[clip][start : start + frames])
    return np.stack(poses), np.stack(feats).astype(np.float64)


@torch.no_grad()
def reconstruction_velocity_error(planner: Planner, features: np.ndarray) -> np.ndarray:
    """The tokenizer's own ceiling: mean absolute error ``(3,)`` between the window velocities of ground-truth
    segments (raw ``features (R, frames, F)``) and of their reconstructions (each window encoded and decoded,
    then stitched like a plan). A policy cannot follow requests more closely than its codes can express them."""
    r, frames, f = features.shape
    w = frames // planner.window
    std = planner.stats.normalize(features).reshape(r * w, 1, planner.window, f)
    x = torch.as_tensor(std, dtype=torch.float32, device=planner.device)
    g = torch.Generator(planner.device).manual_seed(0)
    x_hat = planner.tokenizer.decode(planner.tokenizer.encode(x, g))[:, 0].double().cpu().numpy()
    raw_hat = planner.stats.denormalize(x_hat).reshape(r, w, planner.window, f)
    truth = stitch_windows(features.reshape(r, w, planner.window, f), planner.fps)
    recon = stitch_windows(raw_hat, planner.fps)
    shape = (r, w, planner.window, -1)
    return np.abs(window_velocity(recon.reshape(shape), planner.fps)
                  - window_velocity(truth.reshape(shape), planner.fps)).reshape(-1, 3).mean(0)


def com_agreement(h1: Any, motion: Any, window: int, count: int = 2000, seed: int = 0) -> dict[str, float]:
    """Root vs centre-of-mass window velocities on ``count`` random training windows: mean absolute difference
    per component and the correlation of the forward speeds."""
    windows = motion.train
    idx = np.random.default_rng(seed).choice(len(windows), size=min(count, len(windows)), replace=False)
    poses = motion.window_poses("train", np.sort(idx))
    root = window_velocity(poses, motion.fps)
    com = com_window_velocity(h1, poses, motion.fps)
    out = {f"root_vs_com_abs_{n}": float(np.abs(root[:, k] - com[:, k]).mean())
           for k, n in enumerate(VELOCITY_NAMES[:2])}
    out["root_vs_com_forward_correlation"] = float(np.corrcoef(root[:, 0], com[:, 0])[0, 1])
    out["windows"] = float(len(idx))
    return out


def _classify(classifier: Any, windows: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return classifier(torch.as_tensor(windows, dtype=torch.float32, device="cpu")).argmax(-1).numpy()  # a CPU model


def real_windows(motion: Any, kind: int, limit: int = 2000) -> torch.Tensor:
    """The real windows of ``kind`` the judge is scored on as the reference: the held-out (validation) clips'
    windows of that kind, or the training clips' where no validation clip has it; at most ``limit``, in order."""
    source = motion.val if kind in window_kinds(motion.val).numpy() else motion.train
    pick = np.nonzero(window_kinds(source).numpy() == kind)[0][:limit]
    return source[torch.as_tensor(pick, device="cpu")]  # host windows


def evaluate(policy_run: str | Path, motions: list[str], rollouts: int = 8, windows: int = 6,
             physics_rollouts: int = 2, seed: int = 0, guidance: float = 1.0, blend: int = 0, classifier: bool = True,
             data_dir: str | None = None, tokenizer: str | None = None,
             device: str | torch.device = "cpu") -> dict[str, Any]:
    """The evaluation described in the module docstring, as a JSON-ready dict. At most ``rollouts`` plans per
    request are tracked in physics (the report's settings say how many were)."""
    from daps.motion.dataset import load_motion_data
    from daps.motion.h1 import load_h1
    from daps.motion.metrics import foot_float_mm, foot_skating_m_s
    from daps.prior.run import warn_untrained_null
    from daps.robot.data import load_commands
    from daps.robot.physics import balance_check, track
    from daps.robot.run import COMMANDS_FILE

    physics_rollouts = min(physics_rollouts, rollouts)
    planner = Planner(policy_run, device, tokenizer)
    planner.check_blend(blend)  # before any warning: a refusal is one line
    warn_untrained_null(planner.cfg.label_dropout, guidance, "--guidance")
    data_dir = data_dir or planner.data_dir
    for m in motions:
        motion_index(m, planner.class_names)
    h1 = load_h1(data_dir)
    motion = load_motion_data(data_dir, window=planner.window, stride=planner.window)
    judge = None
    if classifier:
        from daps.motion.classifier import load_classifier

        try:
            judge = load_classifier()
        except UserError as missing:  # as prior eval: the other columns do not need it
            log.warning("no kind-of-motion column: %s (or pass --no-classifier)", missing)
    run_dir = resolve_checkpoint(policy_run).parent.parent  # the run folder, also when given a checkpoint
    sets, _ = load_commands(run_dir / COMMANDS_FILE)
    train_codes = {tuple(c) for c in sets["train"].codes.tolist()}
    frames = planner.window * windows
    started = time.perf_counter()
    rows = []
    for m in motions:
        kind = motion_index(m, planner.class_names)
        quartiles = np.array(planner.meta["velocity_ranges"][m]["quartiles"])  # (3 percentiles, 3)
        truth, truth_features = ground_truth_segments(motion, kind, frames, rollouts, seed)  # (R, frames, 26 | F)
        ceiling = reconstruction_velocity_error(planner, truth_features)
        truth_phys = [{**track(h1, p, planner.fps).summary(), **balance_check(h1, p, planner.fps)}
                      for p in truth[:physics_rollouts]]
        gt_jumps = transition_jumps(truth, planner.window, planner.fps)
        gt_skate, gt_float = foot_skating_m_s(h1, truth, planner.fps), foot_float_mm(h1, truth)
        real_acc = None
        if judge is not None:
            real_acc = float((_classify(judge, real_windows(motion, kind).numpy()) == kind).mean())
        for q, speed in zip((25, 50, 75), quartiles[:, 0]):
            request = np.array([speed, 0.0, 0.0])
            label, v = planner.request(m, np.broadcast_to(request, (windows, 3)))
            g = torch.Generator(planner.device).manual_seed(seed)
            t0 = time.perf_counter()
            labels = torch.full((rollouts,), label, device=planner.device)
            r = planner.rollout(labels, np.broadcast_to(v, (rollouts, windows, 3)).copy(),
                                guidance, 1.0, g, blend)
            plan_s = time.perf_counter() - t0
            achieved = window_velocity(r.poses.reshape(rollouts, windows, planner.window, -1), planner.fps)
            err = np.abs(achieved - r.velocity).reshape(-1, 3).mean(0)
            jumps = transition_jumps(r.poses, planner.window, planner.fps)
            codes = [tuple(c) for c in r.codes.reshape(-1, r.codes.shape[-1]).tolist()]
            row: dict[str, Any] = {
                "motion": m, "percentile": q, "requested_forward_m_s": float(v[0, 0]),
                "achieved_forward_m_s": float(achieved[..., 0].mean()),
                **{f"abs_error_{n}": float(e) for n, e in zip(VELOCITY_NAMES, err)},
                **{f"recon_abs_error_{n}": float(e) for n, e in zip(VELOCITY_NAMES, ceiling)},
                **jumps, **{f"gt_{k}": val_ for k, val_ in gt_jumps.items()},
                "foot_skating_m_s": foot_skating_m_s(h1, r.poses, planner.fps), "gt_foot_skating_m_s": gt_skate,
                "foot_float_mm": foot_float_mm(h1, r.poses), "gt_foot_float_mm": gt_float,
                "unique_fraction": len(set(codes)) / len(codes),
                "copy_fraction": float(np.mean([c in train_codes for c in codes])),
                "windows_per_s": rollouts * windows / plan_s,
            }
            if judge is not None:
                pred = _classify(judge, r.windows.reshape(-1, *r.windows.shape[2:]))
                row["kind_accuracy"] = float((pred == label).mean())
                row["gt_kind_accuracy"] = real_acc
            if physics_rollouts:
                phys = [{**track(h1, p, planner.fps).summary(), **balance_check(h1, p, planner.fps)}
                        for p in r.poses[:physics_rollouts]]
                for key in phys[0]:
                    row[key] = float(np.mean([p[key] for p in phys]))
                    row[f"gt_{key}"] = float(np.mean([p[key] for p in truth_phys]))
            rows.append(row)
    return {
        "policy": str(Path(policy_run).resolve()),
        "tokenizer": planner.meta.get("tokenizer"),
        "method": planner.meta.get("method"),
        "settings": {"rollouts": rollouts, "windows": windows, "physics_rollouts": physics_rollouts, "seed": seed,
                     "guidance": guidance, "blend": blend, "window_seconds": planner.window_seconds},
        "com_agreement": com_agreement(h1, motion, planner.window),
        "rows": rows,
        "seconds": time.perf_counter() - started,
        "machine": cpu_name(),
        "torch": torch.__version__,
        "commit": source_revision(),
    }


COLUMNS = (
    ("motion", "motion", "{}"), ("requested_forward_m_s", "req. fwd m/s", "{:.2f}"),
    ("achieved_forward_m_s", "ach. fwd m/s", "{:.2f}"), ("abs_error_forward_m_s", "\\|err\\| fwd (recon)", "{:.2f}"),
    ("abs_error_left_m_s", "\\|err\\| left (recon)", "{:.2f}"),
    ("abs_error_yaw_rad_s", "\\|err\\| yaw rad/s (recon)", "{:.2f}"),
    ("kind_accuracy", "kind acc (real)", "{:.2f}"), ("border_joint_accel", "border acc rad/s² (within; data)",
                                                                               "{:.0f}"),
    ("foot_skating_m_s", "skating m/s (data)", "{:.2f}"), ("foot_float_mm", "float mm (data)", "{:.1f}"),
    ("support_force_bw", "support F/mg (data)", "{:.2f}"),
    ("support_torque_nm", "support Nm (data)", "{:.0f}"), ("balanced_fraction", "balanced (data)", "{:.2f}"),
    ("unique_fraction", "unique", "{:.2f}"), ("copy_fraction", "copies", "{:.2f}"),
)


TABLE_HEAD = "| motion |"
"""How the report's table starts (its first column, :data:`COLUMNS`' first)."""


def table(result: dict[str, Any]) -> str:
    """The rows as a markdown table under a line saying what was evaluated and how; in parentheses, what the
    column's header names: the tokenizer's own reconstruction error (recon), the real data's figure (data, real)."""
    cols = [c for c in COLUMNS if any(c[0] in r for r in result["rows"])]
    lines = []
    settings = result.get("settings")
    if settings:
        lines += [
            f"Policy {result.get('policy', '?')} ({result.get('method', '?')} codes): {settings['rollouts']} "
            f"rollout{'' if settings['rollouts'] == 1 else 's'} of {settings['windows']} windows "
            f"({settings['window_seconds']:.2f} s each) per request, "
            f"{settings['physics_rollouts']} of them tracked in physics, seed {settings['seed']}, guidance "
            f"{settings['guidance']:g}, blend {settings['blend']}. Velocity errors are means over the rollouts' "
            "windows (m/s; yaw rad/s); in parentheses the same error of the tokenizer's reconstructions of real "
            "windows (random segments of the kind, not at the requested speed), a reference figure (not a bound: a "
            "policy is scored against requested velocities and may choose codes the encoder would not). "
            "Other parentheses: the real data's figure.",
            "",
        ]
    lines += ["| " + " | ".join(c[1] for c in cols) + " |", "|" + "---|" * len(cols)]
    for r in result["rows"]:
        cells = []
        for key, _, fmt in cols:
            if key not in r or r[key] is None:
                cells.append("–")
                continue
            cell = fmt.format(r[key])
            if key == "border_joint_accel":
                cell += f" ({r['within_joint_accel']:.0f}; {r['gt_border_joint_accel']:.0f})"
            elif key == "kind_accuracy" and r.get("gt_kind_accuracy") is not None:
                cell += f" ({r['gt_kind_accuracy']:.2f})"
            elif f"recon_{key}" in r:
                cell += f" ({fmt.format(r[f'recon_{key}'])})"
            elif f"gt_{key}" in r:
                cell += f" ({fmt.format(r[f'gt_{key}'])})"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    com = result.get("com_agreement", {})
    if com:
        lines.append("")
        lines.append(
            f"Root vs centre-of-mass window velocity on {int(com['windows'])} training windows: mean |difference| "
            f"forward {com['root_vs_com_abs_forward_m_s']:.3f} m/s, sideways {com['root_vs_com_abs_left_m_s']:.3f} "
            f"m/s; forward correlation {com['root_vs_com_forward_correlation']:.3f}."
        )
    return "\n".join(lines)


REPORT_KEYS = frozenset({"policy", "settings", "rows"})
"""Keys every report's JSON holds: how an earlier report is told from a user's file."""


def _is_report(json_path: Path, md_path: Path) -> bool:
    """An earlier report: its JSON holds the report's keys, and its markdown (if there) holds the report's table
    (a line starting with its first column, ``| motion |``, after the caption :func:`table` writes above it)."""
    try:
        data = json.loads(json_path.read_text())
        table_text = md_path.read_text() if md_path.exists() else TABLE_HEAD
    except (OSError, ValueError):
        return False
    has_table = any(line.startswith(TABLE_HEAD) for line in table_text.splitlines())
    return isinstance(data, dict) and REPORT_KEYS <= data.keys() and has_table


def report_paths(stem: Path) -> tuple[Path, Path]:
    """``STEM.json`` and ``STEM.md`` (``--out runs/eval.v2`` keeps its dots; ``--out eval.json`` names the pair)."""
    stem = Path(stem)
    if stem.name in ("", ".", ".."):
        raise UserError(f"--out {stem} names a folder; give a file stem such as runs/eval")
    if stem.suffix.lower() in (".json", ".md"):
        stem = stem.with_suffix("")
    return stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".md")


def check_report_stem(stem: Path, overwrite: bool) -> None:
    """Refuse ``stem`` before any evaluation if its report could not be written: an existing ``stem.json`` or
    ``stem.md`` is replaced only with ``overwrite`` and only if it is an earlier report of ``robot eval``."""
    json_path, md_path = report_paths(stem)
    for path in (json_path, md_path):
        check_output_file(path, path.suffix, overwrite, "--out", lambda _: _is_report(json_path, md_path),
                          "part of a robot eval report")


def write_report(result: dict[str, Any], stem: Path, overwrite: bool = False) -> None:
    """``stem.json`` (everything) and ``stem.md`` (the table), atomically; existing ones only as
    :func:`check_report_stem` allows."""
    from daps.runfolder import atomic_path, write_json_atomic

    check_report_stem(stem, overwrite)
    json_path, md_path = report_paths(stem)
    write_json_atomic(json_path, result)
    with atomic_path(md_path) as tmp:
        Path(tmp).write_text(table(result) + "\n")
