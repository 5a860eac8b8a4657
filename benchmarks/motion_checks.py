"""The figures docs/motion.md gives about the LAFAN1 H1 data, measured on the real clips and kept.

    DAPS_DATA_DIR=../shared/data python benchmarks/motion_checks.py [--frames 60] \
        [--out docs/benchmarks/motion-checks.json] [--overwrite]

What it measures (the tests in ``tests/test_motion_data.py`` assert the same facts with margins; this script keeps
the numbers the docs quote):

- **joint limits**: over all 40 clips, the share of frames each hinge spends outside the model's range, and by how
  much at most; the share of frames the hip rolls spend more than 0.01 rad outside their range when the hip roll
  and hip pitch columns are swapped (a mapping mistake);
- **quaternion order**: on ``walk1_subject1``, the median height of the lower sole and the share of frames in
  which the pelvis moves the way it faces, with the CSV's quaternion as read and with its x, y, z, w copied
  straight into MuJoCo's w, x, y, z slots (the mistake the loader must not make);
- **known answer**: the soles' height above the floor at the model's default pose (pelvis at 1.1 m, straight
  legs), the pelvis height that standing straight-legged on the floor implies, and the median pelvis height
  while walking;
- **ground truth and baselines** on every 32nd validation window: the ground truth's own foot penetration, skating
  and float, the same three for the ground truth raised 2 cm (floating: less skating, not better contact), and the
  errors of holding the first pose and of interpolating every 8th frame;
- **rendering**: frames per second of one 320 x 320 view as daps renders it (no shadows, reflections or
  multisampling) and with the model's own settings, on this machine's OpenGL backend (``MUJOCO_GL``).

Writes the JSON (with machine, torch, MuJoCo, OpenGL backend, commit, date and command) and a markdown table next
to it (``.md``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import numpy as np
from run import cpu_name, git_revision

WALK = "walk1_subject1"
SHOULDER_YAWS = ("left_shoulder_yaw_joint", "right_shoulder_yaw_joint")
HIP_SWAPS = ((1, 2), (6, 7))  # left / right hip roll <-> hip pitch, in JOINT_NAMES order


def raw_quaternion_order(poses: np.ndarray) -> np.ndarray:
    """The mapping mistake: the CSV's x, y, z, w copied straight into MuJoCo's w, x, y, z slots."""
    wrong = poses.copy()
    wrong[:, 3:7] = poses[:, [4, 5, 6, 3]]
    return wrong


def joint_limits(h1, poses: dict[str, np.ndarray]) -> dict:
    from daps.motion.h1 import JOINT_NAMES

    q = np.concatenate([p[:, 7:] for p in poses.values()])  # (N, 19)
    lo, hi = h1.joint_range[:, 0], h1.joint_range[:, 1]
    excess = np.maximum(lo - q, q - hi)  # > 0 outside the range

    def shares(angles: np.ndarray, tol: float) -> np.ndarray:
        return ((angles < lo - tol) | (angles > hi + tol)).mean(axis=0)

    out = shares(q, 0.0)
    swapped = q.copy()
    for a, b in HIP_SWAPS:
        swapped[:, [a, b]] = swapped[:, [b, a]]
    yaws = [JOINT_NAMES.index(n) for n in SHOULDER_YAWS]
    return {
        "frames": int(len(q)),
        "out_of_range_share": {name: float(out[j]) for j, name in enumerate(JOINT_NAMES) if out[j] > 0},
        "shoulder_yaw_max_excess_rad": {JOINT_NAMES[j]: float(excess[:, j].max()) for j in yaws},
        "hip_roll_out_of_range_share_if_swapped": {
            JOINT_NAMES[a]: float(shares(swapped, 0.01)[a]) for a, _ in HIP_SWAPS
        },
    }


def quaternion_order(h1, walk: np.ndarray, fps: float) -> dict:
    from daps.motion import features
    from daps.motion.h1 import forward_kinematics
    from daps.motion.rotations import heading

    result = {}
    for name, poses in (("as_read", walk), ("raw_order", raw_quaternion_order(walk))):
        heights, _ = features.foot_heights_and_speeds(*forward_kinematics(h1, poses), fps)  # (T, 2)
        psi = heading(poses[1:, 3:7])
        step = np.diff(poses[:, :2], axis=0)
        forward = np.cos(psi) * step[:, 0] + np.sin(psi) * step[:, 1]
        result[name] = {"lower_sole_median_mm": float(np.median(heights.min(axis=1)) * 1000),
                        "pelvis_moves_forward_share": float(np.mean(forward > 0))}
    return result


def known_answer(h1, walk: np.ndarray, fps: float) -> dict:
    from daps.motion import features
    from daps.motion.h1 import POSE_DIM, forward_kinematics

    pose = np.zeros((2, POSE_DIM))
    pose[:, 2], pose[:, 3] = 1.1, 1.0
    heights, _ = features.foot_heights_and_speeds(*forward_kinematics(h1, pose), fps)
    clearance = float(heights[0].min())
    return {"default_pose_sole_clearance_m": clearance, "standing_pelvis_height_m": 1.1 - clearance,
            "walking_pelvis_median_m": float(np.median(walk[:, 2]))}


def ground_truth_and_baselines(h1, data, fps: float) -> dict:
    import torch

    from daps.motion.metrics import hold_first_pose, interpolate_keyframes, motion_metrics

    truth = data.window_poses("val", torch.arange(0, len(data.val), 32, device="cpu"))
    gt = motion_metrics(h1, truth, truth, fps)
    keep = ("mpjpe_mm", "joint_error_deg", "foot_skating_m_s")
    lifted = truth.copy()
    lifted[..., 2] += 0.02  # the whole motion 2 cm higher: no joint or velocity changes
    feet = ("foot_skating_m_s", "ground_penetration_mm", "foot_float_mm")
    return {
        "windows": int(len(truth)),
        "gt_ground_penetration_mm": gt["gt_ground_penetration_mm"],
        "gt_foot_skating_m_s": gt["gt_foot_skating_m_s"],
        "gt_foot_float_mm": gt["gt_foot_float_mm"],
        "lifted_2cm": {k: v for k, v in motion_metrics(h1, lifted, truth, fps).items() if k in feet},
        "hold_first_pose": {k: v for k, v in motion_metrics(h1, hold_first_pose(truth), truth, fps).items()
                            if k in keep},
        "interpolate_every_8": {k: v for k, v in
                                motion_metrics(h1, interpolate_keyframes(truth, every=8), truth, fps).items()
                                if k in keep},
    }


def rendering(h1, walk: np.ndarray, frames: int) -> dict:
    import os

    from daps.motion.h1 import import_mujoco
    from daps.motion.render import _frames, _renderer, scene_model

    mujoco = import_mujoco()
    poses = walk[:frames]
    look_at = np.concatenate([poses[:, :2], np.full((len(poses), 1), 0.9)], axis=1)
    result = {"backend": os.environ.get("MUJOCO_GL", "default"), "frames": int(len(poses)), "size": "320x320"}
    for name, plain in (("daps_settings", True), ("model_settings", False)):
        model = scene_model(h1)
        samples = int(model.vis.quality.offsamples)
        renderer = _renderer(model, 320, 320)
        if not plain:  # undo what _renderer turns off, in a fresh context
            renderer.close()
            model.vis.quality.offsamples = samples
            renderer = mujoco.Renderer(model, height=320, width=320)
        try:
            _frames(renderer, model, poses[:5], look_at[:5], 3.0)  # warm-up
            start = time.perf_counter()
            _frames(renderer, model, poses, look_at, 3.0)
            result[f"{name}_frames_per_s"] = len(poses) / (time.perf_counter() - start)
        finally:
            renderer.close()
    return result


def markdown(r: dict) -> str:
    lim, quat, known, base, ren = r["joint_limits"], r["quaternion_order"], r["known_answer"], r["baselines"], \
        r["rendering"]
    yaw_share = ", ".join(f"{k} {100 * v:.2f} %" for k, v in lim["out_of_range_share"].items())
    yaw_max = max(lim["shoulder_yaw_max_excess_rad"].values())
    swap = min(lim["hip_roll_out_of_range_share_if_swapped"].values())
    lines = [
        "# Checks of the LAFAN1 H1 data (docs/motion.md)", "",
        "| check | value |", "|---|---|",
        f"| hinges out of range, share of {lim['frames']:,} frames | {yaw_share or 'none'} |",
        f"| shoulder yaws' largest excess | {yaw_max:.3f} rad |",
        f"| hip roll out of range with roll and pitch swapped (smaller side) | {100 * swap:.0f} % |",
        f"| lower sole, median height on {WALK}: as read / raw quaternion order | "
        f"{quat['as_read']['lower_sole_median_mm']:.1f} / {quat['raw_order']['lower_sole_median_mm']:.0f} mm |",
        f"| pelvis moves the way it faces: as read / raw order | "
        f"{100 * quat['as_read']['pelvis_moves_forward_share']:.0f} / "
        f"{100 * quat['raw_order']['pelvis_moves_forward_share']:.0f} % of frames |",
        f"| soles above the floor at the default pose (pelvis 1.1 m) | "
        f"{100 * known['default_pose_sole_clearance_m']:.2f} cm |",
        f"| pelvis height standing straight-legged on the floor | {known['standing_pelvis_height_m']:.3f} m |",
        f"| pelvis median height on {WALK} | {known['walking_pelvis_median_m']:.3f} m |",
        f"| ground truth foot penetration, every 32nd validation window ({base['windows']}) | "
        f"{base['gt_ground_penetration_mm']:.2f} mm |",
        f"| the same windows raised 2 cm: skating / penetration / float | {base['gt_foot_skating_m_s']:.3f} -> "
        f"{base['lifted_2cm']['foot_skating_m_s']:.3f} m/s / {base['gt_ground_penetration_mm']:.2f} -> "
        f"{base['lifted_2cm']['ground_penetration_mm']:.2f} mm / {base['gt_foot_float_mm']:.2f} -> "
        f"{base['lifted_2cm']['foot_float_mm']:.2f} mm |",
        f"| holding the first pose: MPJPE / joint error | {base['hold_first_pose']['mpjpe_mm']:.1f} mm / "
        f"{base['hold_first_pose']['joint_error_deg']:.2f} deg |",
        f"| interpolating every 8th frame: MPJPE / joint error | {base['interpolate_every_8']['mpjpe_mm']:.1f} mm"
        f" / {base['interpolate_every_8']['joint_error_deg']:.2f} deg |",
        f"| rendering one 320x320 view ({ren['backend']}): daps's settings / the model's | "
        f"{ren['daps_settings_frames_per_s']:.1f} / {ren['model_settings_frames_per_s']:.1f} frames/s |",
        "",
        f"Machine: {r['machine']}, torch {r['torch']}, MuJoCo {r['mujoco']}; code {r['commit']}; {r['date']}.",
        f"Command: `{r['command']}`", "",
    ]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=60, help="frames rendered per setting")
    p.add_argument("--out", default="docs/benchmarks/motion-checks.json",
                   help="where the results go (default: %(default)s, committed)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = p.parse_args()
    out = Path(args.out)
    if out.suffix != ".json":
        p.error(f"--out {out} must end in .json (the markdown goes next to it, as .md)")
    for path in (out, out.with_suffix(".md")):
        if path.exists() and not args.overwrite:
            print(f"{p.prog}: error: {path} exists; pass --overwrite to replace it",
                  file=sys.stderr)
            sys.exit(2)
    import torch

    from daps.motion import load_h1, load_motion_data
    from daps.motion.h1 import import_mujoco
    from daps.motion.lafan import FPS
    from daps.runfolder import write_text_atomic

    torch.set_num_threads(1)
    h1, data = load_h1(), load_motion_data()
    walk = data.poses[WALK]
    report = {
        "joint_limits": joint_limits(h1, data.poses),
        "quaternion_order": quaternion_order(h1, walk, FPS),
        "known_answer": known_answer(h1, walk, FPS),
        "baselines": ground_truth_and_baselines(h1, data, FPS),
        "rendering": rendering(h1, walk, args.frames),
        "machine": cpu_name(), "torch": torch.__version__, "mujoco": import_mujoco().__version__,
        "commit": git_revision(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python benchmarks/motion_checks.py", *sys.argv[1:]]),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    write_text_atomic(out.with_suffix(".md"), text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
