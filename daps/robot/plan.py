"""Rolling the policy out: window by window codes -> the tokenizer's decoder -> features -> stitched robot poses.

Window ``w`` is sampled from the policy given the requested kind, the requested velocity of window ``w`` and the
codes of window ``w - 1`` (the start symbol for the first); the tokenizer decodes it to standardized features, which
the tokenizer run's statistics (``motion_stats.json``) turn back into raw features. Features carry no absolute
position, so the windows are chained (:func:`stitch_windows`): the first starts at the origin facing +x, and each
later one starts one frame after the previous window's last frame, moved by its own first frame's velocity and yaw
rate, with the heading carried over as integrated, exactly as the frames inside a window are integrated (so
stitching a clip's own windows gives the clip integrated in one piece). The root position and the integrated heading
are therefore continuous across borders (a twist the decoder puts in a window's tilt is kept unless ``drop_twist``,
so the pose's own heading may still step there); the joint angles are whatever the decoder gives, and
:func:`transition_jumps` measures how much they jump there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from daps.errors import UserError, check_at_most
from daps.motion.features import FEATURE_LAYOUT, features_to_poses
from daps.motion.h1 import JOINTS
from daps.motion.rotations import rotate_z, wrap_angle
from daps.robot.commands import clamp_velocity, motion_index

log = logging.getLogger("daps")


MAX_SECONDS = 3600.0
"""The longest motion ``robot plan`` makes and ``robot track-eval`` tracks per start (an hour: 108,000 frames)."""

BLENDED = ("root_height", "root_tilt", "joint_angles")
"""The per-frame pose features :func:`blend_borders` corrects (the velocities are integrated, not read)."""


def blend_borders(features: np.ndarray, frames: int) -> np.ndarray:
    """Raw features ``(B, W, T, F)`` with each window's first ``frames`` frames pulled toward continuing the previous
    window: the offset between the previous window's linear extrapolation (``2 last - second last``) and this
    window's first frame is added with weight ``1 - i / frames`` at frame i (pose features :data:`BLENDED` only).
    ``frames = 0`` returns the input unchanged. A decaying offset, not a cross-fade: the window keeps its own motion,
    only its start is moved onto the previous window's path."""
    x = np.array(features, dtype=np.float64, copy=True)
    if frames <= 0 or x.shape[1] < 2:
        return x
    k = min(frames, x.shape[2])
    cols = np.concatenate([np.arange(x.shape[-1])[FEATURE_LAYOUT[name]] for name in BLENDED])
    weight = (1.0 - np.arange(k) / k)[:, None]  # (k, 1)
    for w in range(1, x.shape[1]):
        target = 2 * x[:, w - 1, -1, cols] - x[:, w - 1, -2, cols]  # (B, C)
        offset = target - x[:, w, 0, cols]
        window = x[:, w]  # (B, T, F), a view
        window[:, :k, cols] += weight[None] * offset[:, None]  # (B, k, C)
    return x


def stitch_windows(features: np.ndarray, fps: float) -> np.ndarray:
    """Raw features ``(B, W, T, F)`` of consecutive windows -> poses ``(B, W*T, 26)`` (see the module docstring)."""
    x = np.asarray(features, dtype=np.float64)
    b, w, t, _ = x.shape
    lay = FEATURE_LAYOUT
    out = np.empty((b, w, t, JOINTS.stop))
    xy, psi, psi_end = np.zeros((b, 2)), np.zeros(b), np.zeros(b)
    for k in range(w):
        if k > 0:  # the heading is carried as integrated, not read back from a decoded tilt (which may twist)
            psi = psi_end + wrap_angle(x[:, k, 0, lay["yaw_rate"]][:, 0] / fps)
            xy = out[:, k - 1, -1, :2] + rotate_z(x[:, k, 0, lay["root_velocity"]], psi) / fps
        out[:, k] = features_to_poses(x[:, k], xy, psi, fps)
        psi_end = psi + wrap_angle(x[:, k, 1:, lay["yaw_rate"]][..., 0] / fps).sum(-1)
    return out.reshape(b, w * t, -1)


def transition_jumps(poses: np.ndarray, window: int, fps: float) -> dict[str, float]:
    """Mean absolute joint acceleration (rad/s^2) at the two frames either side of each window border, and at
    all other frames, for poses ``(B, N, 26)`` cut into windows of ``window`` frames (second differences of the
    joint angles; N >= 3, window >= 3)."""
    if np.shape(poses)[1] < 3 or window < 3:
        raise ValueError(f"need at least 3 frames and windows of at least 3 frames, got {np.shape(poses)}, {window}")
    joints = np.asarray(poses, dtype=np.float64)[..., JOINTS]  # (B, N, 19)
    acc = np.abs(np.diff(joints, n=2, axis=1)) * fps * fps  # (B, N-2, 19): acc[i] is centred on frame i+1
    centre = np.arange(1, joints.shape[1] - 1)
    border = (centre % window == 0) | (centre % window == window - 1)  # the two frames either side of a border
    return {
        "border_joint_accel": float(acc[:, border].mean()) if border.any() else 0.0,
        "within_joint_accel": float(acc[:, ~border].mean()),
    }


@dataclass
class Rollout:
    """Planned motion: ``codes (B, W, T)``, raw ``features (B, W, frames, F)`` and the same standardized as
    ``windows (B, W, frames, F)`` (both after any border blending), stitched ``poses (B, W*frames, 26)``, the
    requested ``velocity (B, W, 3)`` and ``labels (B,)``."""

    codes: torch.Tensor
    features: np.ndarray
    windows: np.ndarray
    poses: np.ndarray
    velocity: np.ndarray
    labels: torch.Tensor


class Planner:
    """A trained policy with the tokenizer that decodes its codes.

    Args:
        policy_run: the policy's run folder (``daps robot train``).
        tokenizer: the tokenizer run to decode with (default: the one the policy was trained on).
    """

    def __init__(self, policy_run: str | Path, device: str | torch.device = "cpu",
                 tokenizer: str | Path | None = None) -> None:
        from daps.checkpoint import run_folder
        from daps.codes import load_code_tokenizer
        from daps.data.motion import STATS_FILE, read_run_stats
        from daps.robot.run import load_policy

        self.device = torch.device(device)
        self.policy, self.cfg, self.meta = load_policy(policy_run, self.device)
        source = tokenizer or self.meta.get("checkpoint") or self.meta.get("tokenizer")
        if not source:
            raise UserError(f"{policy_run} names no tokenizer run; pass --tokenizer RUN")
        self.tokenizer, origin = load_code_tokenizer(source, self.meta, self.device, "the policy's codes",
                                                     recorded=not tokenizer)
        # loaded with the tokenizer: its run's motion_stats.json, or a pretrained folder's standardization.json
        stats = self.tokenizer.standardization
        if stats is None:  # none readable: say why
            if origin["step"] is None:
                raise UserError(f"{source} holds no standardization.json: the tokenizer's feature statistics are "
                                "needed to decode")
            stats_file = run_folder(Path(origin["checkpoint"])) / STATS_FILE
            if not stats_file.is_file():
                raise UserError(f"{stats_file} is missing: the tokenizer run's feature statistics are needed to "
                                "decode")
            stats = read_run_stats(stats_file)  # names what is wrong with the file
        self.stats = stats
        self.class_names: list[str] = list(self.meta["class_names"])
        self.fps = float(self.meta["fps"])
        self.window = int(self.meta["window"])

    @property
    def data_dir(self) -> str | None:
        """The data folder of the policy, else of its tokenizer (None: search as usual)."""
        return self.cfg.data_dir or self.tokenizer.config.data.data_dir or None

    @property
    def window_seconds(self) -> float:
        return self.window / self.fps

    def windows_for(self, seconds: float) -> int:
        """Windows that cover ``seconds`` (rounded up; at least one); UserError unless positive and at most
        :data:`MAX_SECONDS`."""
        if not (np.isfinite(seconds) and seconds > 0):
            raise UserError(f"--seconds must be a positive number, got {seconds}")
        check_at_most(("--seconds", seconds, MAX_SECONDS))
        return max(1, int(np.ceil(seconds / self.window_seconds - 1e-9)))

    def velocity_range(self, motion: str) -> tuple[np.ndarray, np.ndarray]:
        """The 1st and 99th percentiles of the training windows' velocities of kind ``motion``."""
        r = self.meta["velocity_ranges"].get(motion) or self.meta["velocity_ranges"]["all"]
        return np.array(r["low"]), np.array(r["high"])

    def request(self, motion: str, velocity: np.ndarray) -> tuple[int, np.ndarray]:
        """Check a request: the kind's label and the velocities ``(W, 3)`` clamped into the kind's range in the
        data (each clamped component is logged as a warning)."""
        label = motion_index(motion, self.class_names)
        low, high = self.velocity_range(motion)
        clamped, notes = clamp_velocity(np.asarray(velocity, dtype=np.float64), low, high)
        for note in notes:
            log.warning("%s for %s; clamped", note, motion)
        return label, clamped

    def check_blend(self, blend: int) -> None:
        """UserError unless ``0 <= blend <=`` the window length (frames)."""
        if not 0 <= blend <= self.window:
            raise UserError(f"--blend must be between 0 and the window length ({self.window} frames), got {blend}")

    @torch.no_grad()
    def rollout(self, labels: torch.Tensor, velocity: np.ndarray, guidance: float = 1.0, temperature: float = 1.0,
                generator: torch.Generator | None = None, blend: int = 0) -> Rollout:
        """Plan ``W`` windows for each of ``labels (B,)`` with velocities ``(B, W, 3)`` (already checked);
        ``blend`` > 0 moves each window's first ``blend`` frames onto the previous window's path
        (:func:`blend_borders`) before stitching."""
        self.check_blend(blend)
        labels = labels.to(self.device)
        b, w = velocity.shape[:2]
        prev = torch.full((b, self.policy.num_tokens), self.policy.start_symbol, device=self.device)
        codes, windows = [], []
        for k in range(w):
            v = torch.as_tensor(velocity[:, k], dtype=torch.float32, device=self.device)
            z = self.policy.generate(labels, v, prev, guidance, temperature, generator)  # (B, T)
            codes.append(z)
            windows.append(self.tokenizer.decode(z)[:, 0].double().cpu().numpy())  # (B, frames, F)
            prev = z
        std = np.stack(windows, axis=1)  # (B, W, frames, F)
        raw = blend_borders(self.stats.denormalize(std), blend)
        if blend:  # the standardized windows are the motion that is played (judged by robot eval's classifier)
            std = self.stats.normalize(raw)
        return Rollout(torch.stack(codes, 1).cpu(), raw, std, stitch_windows(raw, self.fps),
                       np.asarray(velocity, dtype=np.float64), labels.cpu())


def plan_motion(planner: Planner, motion: str, velocity: np.ndarray, seconds: float, guidance: float = 1.0,
                temperature: float = 1.0, seed: int = 0, blend: int = 0) -> Rollout:
    """One rollout of ``seconds`` (rounded up to whole windows) of kind ``motion`` with velocity ``(3,)`` or a
    schedule ``(W, 3)``."""
    windows = planner.windows_for(seconds)
    v = np.asarray(velocity, dtype=np.float64)
    v = np.broadcast_to(v, (windows, 3)) if v.ndim == 1 else v[:windows]
    label, v = planner.request(motion, v)
    g = torch.Generator(planner.device).manual_seed(seed)
    return planner.rollout(torch.tensor([label], device=planner.device), v[None], guidance, temperature, g, blend)


def describe(rollout: Rollout, fps: float, window: int) -> dict[str, Any]:
    """Requested and achieved velocity per window of the first rollout (a JSON-ready dict)."""
    from daps.robot.commands import window_velocity

    poses = rollout.poses[0].reshape(-1, window, rollout.poses.shape[-1])
    achieved = window_velocity(poses, fps)
    return {"requested": rollout.velocity[0].round(3).tolist(), "achieved": achieved.round(3).tolist()}
