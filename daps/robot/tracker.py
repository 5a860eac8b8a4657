"""The low-level tracker: a code-conditioned policy that drives the simulated H1 along decoded motion, by PPO.

The paper's robot (DAPS section 5, appendix I) turns a window's codes into joint commands with a policy trained
DeepMimic-style by PPO in MuJoCo. This module is that policy on plain MuJoCo and torch, for CPUs (a few million
frames in an hour on one core; docs/robot.md has the numbers and what a GPU would change):

- **References**: every clip of a split is cut into consecutive windows of T frames, each encoded once by the
  motion tokenizer (one code sequence per window) and decoded; the decoded windows are stitched (as ``robot plan``
  stitches planned windows) into a reference motion that starts at the origin facing +x (``reference=
  ground-truth``: the clip itself, with the same codes). Saved in the run folder (``references.npz``), so a
  resumed run and an evaluation track the same motions.
- **Simulation**: the H1 with the floor at 17 physics steps per 30 fps frame (1.96 ms). Each hinge is a PD servo
  (the gains of :data:`daps.robot.physics.JOINT_GAINS`, torques clipped to the motor's range) toward a target
  the policy sets once per frame: the reference's joint angles of the next frame plus ``action_scale`` times the
  action (clipped to +-``action_clip``).
- **Observations**: the actor sees proprioception (19 joint angles and velocities, the pelvis's angular velocity
  and the gravity direction in the pelvis frame, its previous action), the target frame's phase within its window
  (frame / T) and that window's T codes (embedded and mixed by a linear layer), not the reference itself
  (``actor_sees_reference``: it does, a diagnostic). The critic also sees the reference's next joint angles, the
  pelvis's offset from the reference, its velocity in its own frame and its height (privileged).
- **Reward** (DeepMimic's, weights 0.65 / 0.1 / 0.15 / 0.1): exp(-2 pose error), exp(-0.1 velocity error),
  exp(-40 sum end-point error^2) (toes and hands, relative to the pelvis) and exp(-10 pelvis position error^2);
  the pose error is the sum of squared joint angle errors plus the squared angle between the pelvis's orientation
  and the reference's, the velocity error the same over joint velocities and the pelvis's angular velocity (as
  DeepMimic's root terms). An episode starts at a random frame of a random training reference, in the reference's
  pose and velocity, and ends when the pelvis is ``terminate_distance`` off the reference or a body other than the
  feet touches the floor where the reference's does not (within ``CONTACT_GRACE`` frames: a fall; the get-up
  clips lie on the floor), or at the reference's end or ``episode_seconds`` (a time limit: its value is
  bootstrapped).
- **PPO**: ``envs`` simulations step together for ``horizon`` frames; advantages by GAE (gamma, lambda), the
  clipped surrogate, a value loss, a Gaussian policy with a learned log standard deviation; inputs standardized
  by running statistics.

Run folder (marker kind ``tracker``): config.json, references.npz, metrics.jsonl, checkpoints/step_N (weights with
the input statistics, optimizer, generators, and every simulation's state, so that ``--resume`` continues the run
exactly), provenance.json (the jobs that trained it), curves.png, summary.json.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from daps.checkpoint import (
    load_training_state,
    load_weights,
    refuse_other_kind,
    remove_leftovers,
    resolve_checkpoint,
    run_folder,
    save_checkpoint,
)
from daps.config import numpy_seed
from daps.data.paths import NPZ_ERRORS
from daps.errors import UserError
from daps.functional import ppo_clipped_loss
from daps.motion.h1 import SCENE_FILE
from daps.provenance import JOBS_FILE, record_job
from daps.runfolder import (
    FolderLock,
    atomic_path,
    clear_folder,
    finished,
    has_content,
    is_output_folder,
    write_json_atomic,
    write_marker,
)

log = logging.getLogger("daps")

KIND = "tracker"
REFERENCES_FILE = "references.npz"
ENTRIES = frozenset({"config.json", "metrics.jsonl", "checkpoints", "curves.png", "summary.json", REFERENCES_FILE,
                     JOBS_FILE})
"""What a tracker's run writes into its folder (``--overwrite`` deletes these, and keeps anything else)."""

REWARD_WEIGHTS = (0.65, 0.1, 0.15, 0.1)
REWARD_SCALES = (2.0, 0.1, 40.0, 10.0)
"""DeepMimic's weights and scales of its pose, velocity, end-effector and root terms (Peng et al. 2018, Sec. 5)."""
PROPRIO_DIM = 19 + 19 + 3 + 3 + 19
PRIVILEGED_DIM = 19 + 3 + 3 + 1
CONTACT_GRACE = 3
"""Frames either side of the reference's within which its own floor contacts (a hand, a knee) are not a fall."""
VERSION = 2
"""What a tracker run folder's networks, observations and reward are (``config.json``'s ``version``): 2 added the
pelvis's orientation and angular velocity to the reward, the target frame's window to the actor, velocity and
height to the critic, and the reference's own floor contacts to the fall rule. A run of another version is
refused, not resumed or evaluated under rules it was not trained with."""


@dataclass
class TrackerConfig:
    """The tracker's settings (``daps robot track-train TOKENIZER --out DIR key=value ...``)."""

    tokenizer: str = ""
    """The motion tokenizer's run folder or checkpoint (discrete codes, trained on lafan1-h1), or its pretrained
    folder or Hub repo id."""
    data_dir: str = ""
    """Folder with the LAFAN1 H1 data and the H1 model (default: as the tokenizer was trained, then $DAPS_DATA_DIR)."""
    frames: int = 2_000_000
    """Simulated frames to train for, over all environments (the run's length)."""
    envs: int = 16
    horizon: int = 256
    """Frames each environment steps per update (an update learns from envs * horizon frames)."""
    epochs: int = 4
    minibatch: int = 1024
    """Frames per Adam step (version 1: 256, with 16 x 64 frames per update)."""
    lr: float = 3e-4
    """Adam's first step size; with ``target_kl`` it then follows the policy's change (below)."""
    target_kl: float = 0.01
    """After each update the next one's step size is divided by 1.5 when the update moved the policy by an estimated
    KL divergence of more than twice this, and multiplied by 1.5 when by less than half of it (as the adaptive
    schedule of legged-robot PPO codes, once per update rather than per minibatch: within an update the first
    minibatches always look small); 0 keeps ``lr`` fixed."""
    gamma: float = 0.95
    lam: float = 0.95
    clip: float = 0.2
    value_coef: float = 0.5
    grad_clip: float = 1.0
    init_std: float = 0.3
    action_scale: float = 0.25
    """Radians per unit of action added to the reference's joint angles."""
    action_clip: float = 4.0
    """Actions are clipped to +-this (with the scale, +-1 rad from the reference: room to catch a fall)."""
    hidden: int = 256
    """Width of the actor's and the critic's three hidden layers (the paper's: 2048, 1024, 512)."""
    code_dim: int = 8
    """Embedding size of each code; the window's embedded codes are mixed into 64 features."""
    reference: str = "decoded"
    """What the tracker follows: ``decoded`` (the tokenizer's reconstruction of each window, stitched: the paper's
    setting) or ``ground-truth`` (the clips themselves; the codes still come from the tokenizer)."""
    terminate_distance: float = 0.3
    episode_seconds: float = 10.0
    actor_sees_reference: bool = False
    """A diagnostic: the actor also gets the critic's privileged inputs (the reference's next joint angles, the
    pelvis's offset from the reference, ...), as DeepMimic's policy does. A tracker that learns this way and not
    from the codes points at the codes, not at PPO or the simulation."""
    seed: int = 0
    eval_every: int = 20
    """Updates between evaluations on the validation references."""
    ckpt_every: int = 10
    keep_checkpoints: int = 2
    progress: bool = True
    out_dir: str = "runs/tracker"

    def validate(self) -> None:
        for name in ("frames", "envs", "horizon", "epochs", "minibatch", "hidden", "code_dim", "eval_every",
                     "ckpt_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("lr", "init_std", "action_scale", "action_clip", "terminate_distance", "episode_seconds",
                     "grad_clip", "clip"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise UserError(f"{name} must be a positive number, got {value}")
        for name in ("value_coef", "target_kl"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise UserError(f"{name} must be a number >= 0, got {value}")
        for name in ("gamma", "lam"):
            if not 0 <= getattr(self, name) <= 1:
                raise UserError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.reference not in ("decoded", "ground-truth"):
            raise UserError(f"reference must be decoded or ground-truth, got {self.reference!r}")

    @property
    def updates(self) -> int:
        """Updates of the whole run: ``frames`` rounded up to whole updates."""
        return math.ceil(self.frames / (self.envs * self.horizon))


# --------------------------------------------------------------------------------------------------
# References


@dataclass
class References:
    """Decoded reference motions of one split: per clip, ``poses (N, 26)``, ``qvel (N, 25)``, end points relative
    to the pelvis ``ends (N, 4, 3)`` and the codes of its windows ``codes (N // T, T)``. ``grounded``: per clip
    ``(N,)`` bit masks of the bodies other than the feet that touch the floor near each frame (computed by
    :class:`TrackingEnvs` on first use)."""

    names: list[str]
    poses: list[np.ndarray]
    qvel: list[np.ndarray]
    ends: list[np.ndarray]
    codes: list[np.ndarray]
    window: int
    grounded: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.names)


def end_points(h1: Any, poses: np.ndarray) -> np.ndarray:
    """Toes and hands (:data:`daps.motion.h1.END_POINTS`) relative to the pelvis, world axes: ``(N, 4, 3)``."""
    from daps.motion.h1 import END_POINTS, forward_kinematics, points_world

    pos, rot = forward_kinematics(h1, poses)
    return points_world(pos, rot, END_POINTS) - poses[:, None, :3]


def decode_references(tokenizer: Any, motion: Any, h1: Any, split: str, generator: torch.Generator,
                      ground_truth: bool = False) -> References:
    """Every clip of ``split`` (``train`` or ``val``) of ``motion`` (:class:`~daps.motion.dataset.MotionData`) cut
    into whole windows, encoded (one code per window), decoded and stitched: see the module docstring.
    ``ground_truth``: the clip's own poses are the reference (the codes are still the tokenizer's)."""
    from daps.robot.physics import reference_velocities
    from daps.robot.plan import stitch_windows

    windows = motion.split(split)
    t = motion.window
    device = next(tokenizer.parameters()).device
    out = References([], [], [], [], [], t)
    tokenizer.eval()
    for name in windows.clips:
        raw = motion.features[name]
        count = len(raw) // t
        if count < 1:
            continue
        std = motion.stats.normalize(raw[: count * t].astype(np.float64)).reshape(count, t, -1)
        x = torch.as_tensor(std, dtype=torch.float32, device=device)[:, None]  # (W, 1, T, F)
        with torch.no_grad():
            codes = tokenizer.encode(x, generator)  # (W, tokens)
            decoded = tokenizer.decode(codes)[:, 0].double().cpu().numpy()  # (W, T, F)
        if ground_truth:
            poses = np.asarray(motion.poses[name][: count * t], dtype=np.float64)
        else:
            poses = stitch_windows(motion.stats.denormalize(decoded)[None], motion.fps)[0]  # (W*T, 26)
        out.names.append(name)
        out.poses.append(poses)
        out.qvel.append(reference_velocities(h1.model, poses, motion.fps))
        out.ends.append(end_points(h1, poses))
        out.codes.append(codes.cpu().numpy().astype(np.int64))
    if not out.names:
        raise UserError(f"no {split} clip is one window ({t} frames) long")
    return out


def rounded(refs: References) -> References:
    """``refs`` with poses, velocities and end points rounded to float32 (and held as float64): what
    :func:`save_references` keeps, so that a run tracks the same numbers before and after a resume."""
    def f32(arrays: list[np.ndarray]) -> list[np.ndarray]:
        return [a.astype(np.float32).astype(np.float64) for a in arrays]

    return References(list(refs.names), f32(refs.poses), f32(refs.qvel), f32(refs.ends), list(refs.codes), refs.window)


def save_references(path: Path, sets: dict[str, References]) -> None:
    """Both splits' references as one compressed npz, float32 (atomically); read back by :func:`load_references`."""
    arrays: dict[str, Any] = {}
    for split, refs in sets.items():
        arrays[f"{split}/names"] = np.array(refs.names)
        arrays[f"{split}/window"] = np.array(refs.window)
        for i in range(len(refs)):
            for key in ("poses", "qvel", "ends"):
                arrays[f"{split}/{key}/{i}"] = getattr(refs, key)[i].astype(np.float32)
            arrays[f"{split}/codes/{i}"] = refs.codes[i]
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)


def load_references(path: Path) -> dict[str, References]:
    try:
        with np.load(path, allow_pickle=False) as z:
            sets = {}
            for split in ("train", "val"):
                names = [str(n) for n in z[f"{split}/names"]]
                per_clip = {key: [z[f"{split}/{key}/{i}"].astype(np.int64 if key == "codes" else np.float64)
                                  for i in range(len(names))] for key in ("poses", "qvel", "ends", "codes")}
                sets[split] = References(names, per_clip["poses"], per_clip["qvel"], per_clip["ends"],
                                         per_clip["codes"], int(z[f"{split}/window"]))
    except (KeyError, *NPZ_ERRORS) as err:
        raise UserError(f"{path} is not a readable tracker reference file ({type(err).__name__}: {err})") from None
    return sets


# --------------------------------------------------------------------------------------------------
# Simulation


class TrackingEnvs:
    """``n`` H1 simulations tracking references (see the module docstring). ``rng`` draws the starts."""

    def __init__(self, h1: Any, refs: References, n: int, cfg: TrackerConfig, fps: float,
                 rng: np.random.Generator) -> None:
        from daps.motion.h1 import END_POINTS, FOOT_BODIES, import_mujoco
        from daps.motion.render import scene_model
        from daps.robot.physics import actuator_joints, joint_gains

        self.mj = mujoco = import_mujoco()
        self.refs, self.cfg, self.rng, self.fps = refs, cfg, rng, fps
        model = scene_model(h1)
        self.substeps = max(1, int(round(1.0 / (fps * float(model.opt.timestep)))))
        model.opt.timestep = 1.0 / (fps * self.substeps)
        kp, kd = joint_gains()
        self.act_joint = actuator_joints(model)
        for a, j in enumerate(self.act_joint):  # each hinge's motor becomes a PD servo on a target angle
            if 0 <= j < 19:
                lo, hi = model.actuator_ctrlrange[a].copy()
                model.actuator_gainprm[a, 0] = kp[j]
                model.actuator_biastype[a] = mujoco.mjtBias.mjBIAS_AFFINE
                model.actuator_biasprm[a, :3] = (0.0, -kp[j], -kd[j])
                model.actuator_forcerange[a] = (lo, hi)
                model.actuator_forcelimited[a] = 1
                model.actuator_ctrllimited[a] = 0
        self.servo = np.array([a for a, j in enumerate(self.act_joint) if 0 <= j < 19])
        self.model = model
        self.data = [mujoco.MjData(model) for _ in range(n)]
        self.pelvis = int(h1.body_ids[0])
        feet = {mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, name) for name in FOOT_BODIES}
        # bit b of a mask: body b, other than the feet and the floor (world body 0), touches the floor
        self.body_bit = np.array([0 if b == 0 or b in feet else 1 << b for b in range(model.nbody)], dtype=np.int64)
        self.end_bodies = [mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, p.body) for p in END_POINTS]
        self.end_offsets = np.array([p.offset for p in END_POINTS])
        self.max_frames = max(1, int(round(cfg.episode_seconds * fps)))
        self.clip = np.zeros(n, dtype=np.int64)
        self.frame = np.zeros(n, dtype=np.int64)
        self.age = np.zeros(n, dtype=np.int64)
        self.prev_action = np.zeros((n, 19))
        self.state_size = mujoco.mj_stateSize(model, mujoco.mjtState.mjSTATE_INTEGRATION)
        if refs.grounded is None:
            refs.grounded = [self._reference_contacts(poses) for poses in refs.poses]
        for i in range(n):
            self.reset(i)

    def _on_floor(self, d: Any) -> int:
        """The bodies other than the feet that touch the floor in ``d``'s contacts, as a bit mask."""
        if not d.ncon:
            return 0
        bodies = self.model.geom_bodyid[d.contact.geom[: d.ncon]]  # (ncon, 2)
        floor = (bodies == 0).any(1)
        return int(np.bitwise_or.reduce(self.body_bit[bodies[floor]].ravel(), initial=0))

    def _reference_contacts(self, poses: np.ndarray) -> np.ndarray:
        """``(N,)`` masks of the bodies other than the feet on the floor in the reference ``poses (N, 26)`` within
        :data:`CONTACT_GRACE` frames of each frame: touching there is the motion (a get-up), not a fall."""
        d = self.mj.MjData(self.model)
        own = np.zeros(len(poses), dtype=np.int64)
        for f, pose in enumerate(poses):
            d.qpos[:26] = pose
            self.mj.mj_kinematics(self.model, d)
            self.mj.mj_collision(self.model, d)
            own[f] = self._on_floor(d)
        near = own.copy()
        for shift in range(1, CONTACT_GRACE + 1):
            near[shift:] |= own[:-shift]
            near[:-shift] |= own[shift:]
        return near

    def __len__(self) -> int:
        return len(self.data)

    def reset(self, i: int, clip: int | None = None, frame: int | None = None) -> None:
        """Start environment ``i`` at ``frame`` of reference ``clip`` (random when None) in its pose and velocity."""
        if clip is None:
            clip = int(self.rng.integers(len(self.refs)))
        poses = self.refs.poses[clip]
        if frame is None:
            frame = int(self.rng.integers(len(poses) - 1))
        d = self.data[i]
        self.mj.mj_resetData(self.model, d)
        d.qpos[:26] = poses[frame]
        d.qvel[:25] = self.refs.qvel[clip][frame][:25]
        d.ctrl[self.servo] = poses[frame][7 + self.act_joint[self.servo]]
        self.mj.mj_kinematics(self.model, d)
        self.clip[i], self.frame[i], self.age[i] = clip, frame, 0
        self.prev_action[i] = 0.0

    def _ends(self, d: Any) -> np.ndarray:
        rot = d.xmat[self.end_bodies].reshape(-1, 3, 3)
        return d.xpos[self.end_bodies] + np.einsum("pij,pj->pi", rot, self.end_offsets) - d.qpos[:3]

    def observe(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``proprio (n, 63)``, the target (next) frame's ``phase (n, 1)`` in its window and that window's ``codes
        (n, tokens)``, and ``privileged (n, 26)`` (the critic's extra inputs: the reference's next joint angles, the
        pelvis's offset from the reference now, its linear velocity in its own frame and its height)."""
        n, t = len(self), self.refs.window
        proprio, privileged = np.empty((n, PROPRIO_DIM)), np.empty((n, PRIVILEGED_DIM))
        codes = []
        target = self.frame + 1
        for i, d in enumerate(self.data):
            rot = d.xmat[self.pelvis].reshape(3, 3)
            proprio[i] = np.concatenate([d.qpos[7:26], d.qvel[6:25], d.qvel[3:6], rot.T @ np.array([0.0, 0, -1.0]),
                                         self.prev_action[i]])
            c, f = self.clip[i], self.frame[i]
            nxt = self.refs.poses[c][min(f + 1, len(self.refs.poses[c]) - 1)]
            privileged[i] = np.concatenate([nxt[7:26], d.qpos[:3] - self.refs.poses[c][f][:3], rot.T @ d.qvel[:3],
                                            d.qpos[2:3]])
            codes.append(self.refs.codes[c][min(target[i] // t, len(self.refs.codes[c]) - 1)])
        phase = ((target % t) / t)[:, None].astype(np.float64)
        return proprio, phase, np.stack(codes), privileged

    def step(self, actions: np.ndarray, active: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Apply ``actions (n, 19)`` for one frame to the ``active`` environments (default all; the others are left
        as they are, with reward 0); returns ``reward``, ``terminated`` (a fall) and ``truncated`` (the reference or
        the time limit ended), and per environment the finished episode's ``length`` (frames; 0 for one still
        running). A finished environment must be reset (:meth:`reset`) before it is stepped again."""
        mj, n = self.mj, len(self)
        a = np.clip(actions, -self.cfg.action_clip, self.cfg.action_clip)
        reward, terminated, truncated = np.zeros(n), np.zeros(n, bool), np.zeros(n, bool)
        lengths = np.zeros(n, dtype=np.int64)
        w, s = REWARD_WEIGHTS, REWARD_SCALES
        for i, d in enumerate(self.data):
            if active is not None and not active[i]:
                continue
            c, f = self.clip[i], self.frame[i] + 1
            ref = self.refs.poses[c][f]
            d.ctrl[self.servo] = ref[7 + self.act_joint[self.servo]] + self.cfg.action_scale * a[i][self.act_joint[
                self.servo]]
            mj.mj_step(self.model, d, nstep=self.substeps)
            fell = bool(self._on_floor(d) & ~self.refs.grounded[c][f])  # type: ignore[index]
            mj.mj_kinematics(self.model, d)  # body positions of the state reached (mj_step leaves the previous)
            quat, ref_quat = d.qpos[3:7], ref[3:7]
            cos = abs(float(np.dot(quat, ref_quat))) / float(np.linalg.norm(quat) * np.linalg.norm(ref_quat))
            turn = 2.0 * math.acos(min(1.0, cos))  # the pelvis's rotation away from the reference's, rad
            pose_err = float(np.sum((d.qpos[7:26] - ref[7:26]) ** 2)) + turn ** 2
            vel_err = float(np.sum((d.qvel[3:25] - self.refs.qvel[c][f][3:25]) ** 2))  # angular: pelvis and joints
            end_err = float(np.sum((self._ends(d) - self.refs.ends[c][f]) ** 2))
            root_err = float(np.sum((d.qpos[:3] - ref[:3]) ** 2))
            reward[i] = (w[0] * math.exp(-s[0] * pose_err) + w[1] * math.exp(-s[1] * vel_err)
                         + w[2] * math.exp(-s[2] * end_err) + w[3] * math.exp(-s[3] * root_err))
            self.frame[i], self.age[i] = f, self.age[i] + 1
            self.prev_action[i] = a[i]
            terminated[i] = fell or math.sqrt(root_err) > self.cfg.terminate_distance
            truncated[i] = not terminated[i] and (f >= len(self.refs.poses[c]) - 1 or self.age[i] >= self.max_frames)
            if terminated[i] or truncated[i]:
                lengths[i] = self.age[i]
        return reward, terminated, truncated, {"length": lengths}

    def get_state(self) -> dict[str, torch.Tensor]:
        """Every simulation's state and the episode counters (for a checkpoint)."""
        states = np.empty((len(self), self.state_size))
        for i, d in enumerate(self.data):
            self.mj.mj_getState(self.model, d, states[i], self.mj.mjtState.mjSTATE_INTEGRATION)
        return {"sim": torch.from_numpy(states), "clip": torch.from_numpy(self.clip.copy()),
                "frame": torch.from_numpy(self.frame.copy()), "age": torch.from_numpy(self.age.copy()),
                "prev_action": torch.from_numpy(self.prev_action.copy())}

    def set_state(self, state: dict[str, torch.Tensor]) -> None:
        sim = state["sim"].numpy()
        if sim.shape != (len(self), self.state_size):
            raise UserError(f"the checkpoint holds {sim.shape[0]} simulations of another model; resume with the "
                            "same envs and H1 model")
        for i, d in enumerate(self.data):
            self.mj.mj_setState(self.model, d, sim[i], self.mj.mjtState.mjSTATE_INTEGRATION)
            self.mj.mj_kinematics(self.model, d)
        self.clip[:] = state["clip"].numpy()
        self.frame[:] = state["frame"].numpy()
        self.age[:] = state["age"].numpy()
        self.prev_action[:] = state["prev_action"].numpy()


# --------------------------------------------------------------------------------------------------
# The policy


class RunningNorm(nn.Module):
    """Inputs standardized by their running mean and variance (updated from each rollout, clipped to +-5)."""

    mean: torch.Tensor
    var: torch.Tensor
    count: torch.Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("var", torch.ones(dim, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    def update(self, x: torch.Tensor) -> None:
        """Chan et al.'s parallel update of mean and variance with the batch ``x (N, dim)``."""
        x = x.double()
        n, mean, var = x.shape[0], x.mean(0), x.var(0, unbiased=False)
        total = self.count + n
        delta = mean - self.mean
        self.var.copy_((self.var * self.count + var * n + delta ** 2 * self.count * n / total) / total)
        self.mean.add_(delta * n / total)
        self.count.copy_(total)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.double() - self.mean) / self.var.clamp_min(1e-8).sqrt()).clamp(-5, 5).float()


def _mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ELU(), nn.Linear(hidden, hidden), nn.ELU(),
                         nn.Linear(hidden, hidden), nn.ELU(), nn.Linear(hidden, outputs))


class Tracker(nn.Module):
    """The actor (a Gaussian over the 19 actions) and the critic; see the module docstring for their inputs."""

    def __init__(self, num_tokens: int, vocab_size: int, cfg: TrackerConfig) -> None:
        super().__init__()
        self.num_tokens, self.vocab_size = num_tokens, vocab_size
        # the actor and the critic embed the codes each their own way: a shared embedding would let the value
        # loss (returns of ~10 against rewards of ~0.5) move the actor's input
        self.embed = nn.Embedding(vocab_size, cfg.code_dim)
        self.mix = nn.Linear(num_tokens * cfg.code_dim, 64)
        self.critic_embed = nn.Embedding(vocab_size, cfg.code_dim)
        self.critic_mix = nn.Linear(num_tokens * cfg.code_dim, 64)
        self.norm = RunningNorm(PROPRIO_DIM + PRIVILEGED_DIM)
        self.own = PROPRIO_DIM + PRIVILEGED_DIM if cfg.actor_sees_reference else PROPRIO_DIM  # the actor's inputs
        self.actor = _mlp(self.own + 1 + 64, cfg.hidden, 19)
        self.critic = _mlp(PROPRIO_DIM + PRIVILEGED_DIM + 1 + 64, cfg.hidden, 1)
        self.log_std = nn.Parameter(torch.full((19,), math.log(cfg.init_std)))
        last = self.actor[-1]
        assert isinstance(last, nn.Linear)
        with torch.no_grad():  # small first actions: the PD servos alone start on the reference
            last.weight.mul_(0.01)
            last.bias.zero_()

    def _inputs(self, proprio, phase, codes, privileged) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.norm(torch.cat([proprio, privileged], -1))
        goal = torch.tanh(self.mix(self.embed(codes).flatten(1)))
        critic_goal = torch.tanh(self.critic_mix(self.critic_embed(codes).flatten(1)))
        own = torch.cat([x[:, :self.own], phase.float(), goal], -1)
        return own, torch.cat([x, phase.float(), critic_goal], -1)

    def forward(self, proprio, phase, codes, privileged) -> tuple[torch.distributions.Normal, torch.Tensor]:
        actor_in, critic_in = self._inputs(proprio, phase, codes, privileged)
        dist = torch.distributions.Normal(self.actor(actor_in), self.log_std.exp())
        return dist, self.critic(critic_in)[:, 0]


def gae(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor, terminated: torch.Tensor,
        finished: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
    """Generalized advantage estimates ``(H, N)``. ``values[h]`` is V of the observation the action of step h was
    taken from, ``next_values[h]`` V of the observation after it (the finished episode's last one, not the reset's);
    ``terminated`` ends the return (a fall: no value after it), ``finished`` (terminated or truncated) stops the
    sum of later residuals (they belong to the next episode)."""
    horizon = rewards.shape[0]
    adv = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for h in reversed(range(horizon)):
        delta = rewards[h] + gamma * next_values[h] * (~terminated[h]) - values[h]
        running = delta + gamma * lam * (~finished[h]) * running
        adv[h] = running
    return adv


def advantages_and_returns(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor,
                           terminated: torch.Tensor, finished: torch.Tensor, gamma: float, lam: float
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat ``(H*N,)`` advantages normalized over the rollout (mean 0, std 1: the policy's weights) and the value
    targets, the λ-returns ``gae + values`` (not normalized)."""
    adv = gae(rewards, values, next_values, terminated, finished, gamma, lam)
    flat = adv.flatten()
    return (flat - flat.mean()) / (flat.std() + 1e-8), (adv + values).flatten()


def ppo_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, value: torch.Tensor,
             returns: torch.Tensor, clip: float, value_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One minibatch's loss: PPO's clipped surrogate of the actions' log-probabilities
    (:func:`daps.functional.ppo_clipped_loss`) plus ``value_coef`` times the value's squared error to the returns,
    both averaged; and the ratios new / old (for the clip fraction)."""
    log_ratio = log_prob - old_log_prob
    surrogate = ppo_clipped_loss(log_ratio, advantages, clip).mean()
    return surrogate + value_coef * (value - returns).pow(2).mean(), log_ratio.exp()


def next_step_size(lr: float, kl: float, target_kl: float) -> float:
    """The next update's learning rate from this update's KL(old || new): divided by 1.5 above twice the target,
    multiplied by 1.5 below half of it, kept within [1e-6, 1e-2] (``target_kl`` 0: unchanged)."""
    if target_kl > 0 and kl > 2 * target_kl:
        return max(lr / 1.5, 1e-6)
    if target_kl > 0 and kl < target_kl / 2:
        return min(lr * 1.5, 1e-2)
    return lr


def clipped_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor, max_norm: float) -> None:
    """Backward ``loss``, clip the gradient's global norm to ``max_norm``, step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()


# --------------------------------------------------------------------------------------------------
# Training


def _tensors(obs: tuple[np.ndarray, ...]) -> tuple[torch.Tensor, ...]:
    proprio, phase, codes, privileged = obs
    return (torch.from_numpy(proprio).float(), torch.from_numpy(phase).float(), torch.from_numpy(codes).long(),
            torch.from_numpy(privileged).float())


def _references(cfg: TrackerConfig) -> tuple[dict[str, References], dict[str, Any]]:
    from daps.codes import config_sha256
    from daps.config_io import config_to_dict
    from daps.data.motion import motion_data
    from daps.motion.h1 import load_h1
    from daps.robot.run import load_motion_tokenizer

    model, origin = load_motion_tokenizer(cfg.tokenizer, cfg.data_dir, "cpu", "the tracker")
    tcfg = model.config
    motion = motion_data(tcfg.data)
    h1 = load_h1(tcfg.data.data_dir or None)
    g = torch.Generator().manual_seed(cfg.seed)
    t0 = time.perf_counter()
    truth = cfg.reference == "ground-truth"
    sets = {split: decode_references(model, motion, h1, split, g, truth) for split in ("train", "val")}
    how = "ground-truth poses, with codes from" if truth else "decoded by"
    log.info("tracker references: %d training and %d validation clips, %s %s, in %.0f s",
             len(sets["train"]), len(sets["val"]), how, cfg.tokenizer, time.perf_counter() - t0)
    meta = {"tokenizer": origin["checkpoint"], "method": tcfg.method,
            "num_tokens": int(sets["train"].codes[0].shape[1]),
            "vocab_size": int(model.vocab_size), "window": int(motion.window), "fps": float(motion.fps),
            "weights_sha256": origin["model_sha256"], "weights_digest": origin["weights_digest"],
            "config_sha256": config_sha256(config_to_dict(tcfg)),
            "data_dir": tcfg.data.data_dir}
    return sets, meta


def check_version(path: Path) -> None:
    """UserError unless the tracker ``config.json`` at ``path`` is of this daps's :data:`VERSION` (an unreadable
    file is left to the caller's own check)."""
    try:
        found = json.loads(path.read_text()).get("version", 1)
    except (OSError, ValueError, AttributeError):
        return
    if found != VERSION:
        made = "an earlier" if isinstance(found, int) and found < VERSION else "another"
        raise UserError(f"{path.parent} is a tracker of version {found}, made by {made} daps; this one trains and "
                        f"evaluates version {VERSION} (other observations and reward): train a new one (--overwrite "
                        "replaces it, or choose another --out)")


def tracker_h1(cfg: TrackerConfig, meta: dict[str, Any]) -> Any:
    """The H1 a tracker simulates: from the run's ``data_dir`` when it names one, else the tokenizer's data folder
    (the references' header), else ``$DAPS_DATA_DIR``; refused without its floor (``scene.xml``)."""
    from daps.motion.h1 import load_h1

    h1 = load_h1(cfg.data_dir or meta.get("data_dir") or None)
    if not (h1.path.parent / SCENE_FILE).is_file():
        raise UserError(f"{h1.path.parent / SCENE_FILE} (the H1 with a floor) is missing: the tracker needs the floor")
    return h1


def train_tracker(cfg: TrackerConfig, resume: bool = False, overwrite: bool = False,
                  references: tuple[dict[str, References], dict[str, Any]] | None = None, h1: Any = None) -> Path:
    """Train the tracker of ``cfg`` into ``cfg.out_dir`` (see the module docstring); returns the run folder.
    ``references`` and ``h1`` give the references and the model directly (tests) instead of decoding them."""
    from daps.prior.run import END_FILES, prepare_folder, settings_record
    from daps.progress import progress_bar
    from daps.train import truncate_metrics

    cfg.validate()
    rollout = cfg.envs * cfg.horizon
    if cfg.minibatch > rollout:  # allowed (small envs= runs keep the default), but then not what was asked
        log.warning("minibatch %d is more than a rollout's %d frames (envs %d x horizon %d): each epoch is one "
                    "minibatch of %d frames", cfg.minibatch, rollout, cfg.envs, cfg.horizon, rollout)
    run_dir = Path(cfg.out_dir)
    if resume and is_output_folder(run_dir, KIND) and (run_dir / "config.json").is_file():
        check_version(run_dir / "config.json")
    ckpt = prepare_folder(cfg, resume, overwrite, kind=KIND)
    saved = resume and (run_dir / REFERENCES_FILE).is_file()
    config_path = run_dir / "config.json"
    if not saved:  # decoded before the folder is touched: a refused tokenizer leaves nothing behind
        sets, meta = references if references is not None else _references(cfg)
        sets = {split: rounded(refs) for split, refs in sets.items()}
    lock = FolderLock(run_dir).acquire()
    try:
        if overwrite and has_content(run_dir):
            clear_folder(run_dir, KIND, "--out", ENTRIES)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_marker(run_dir, KIND)
        remove_leftovers(run_dir)
        if saved:
            sets = load_references(run_dir / REFERENCES_FILE)
            meta = json.loads(config_path.read_text())["references"]
        config = {"version": VERSION, KIND: settings_record(cfg), "references": meta}
        if ckpt is None:
            write_json_atomic(config_path, config)
        if not saved:
            save_references(run_dir / REFERENCES_FILE, sets)
        h1 = h1 if h1 is not None else tracker_h1(cfg, meta)
        torch.manual_seed(cfg.seed)
        model = Tracker(int(meta["num_tokens"]), int(meta["vocab_size"]), cfg)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        generator = torch.Generator().manual_seed(cfg.seed)
        rng = np.random.default_rng(numpy_seed(cfg.seed))
        envs = TrackingEnvs(h1, sets["train"], cfg.envs, cfg, float(meta["fps"]), rng)
        start = 0
        if ckpt is not None:
            load_weights(model, ckpt)
            state = load_training_state(ckpt)
            optimizer.load_state_dict(state["optimizer"])
            generator.set_state(state["generator"])
            rng.bit_generator.state = json.loads(state["numpy_rng"])
            envs.set_state(state["envs"])
            start = int(state["step"])
            if start > cfg.updates:
                raise UserError(f"cannot resume {run_dir} at update {start}: frames={cfg.frames} ends it at update "
                                f"{cfg.updates}")
        if start == cfg.updates and finished(run_dir, start, END_FILES):
            log.info("%s already finished update %d; nothing to do", run_dir, start)  # and nothing is written
            return run_dir
        if ckpt is not None:
            write_json_atomic(config_path, config)
            log.info("resuming %s from update %d", run_dir, start)
        truncate_metrics(run_dir / "metrics.jsonl", start)
        if start < cfg.updates:  # a job that trains nothing (it only writes the summary) is not one of the run's
            record_job(run_dir, start, torch.device("cpu"), 1)
        log.info("tracker: %d simulations of the H1 over %d training references, %d update%s of %d frames (%d in "
                 "all), %d parameters", cfg.envs, len(sets["train"]), cfg.updates, "" if cfg.updates == 1 else "s",
                 cfg.envs * cfg.horizon, cfg.updates * cfg.envs * cfg.horizon,
                 sum(p.numel() for p in model.parameters()))
        with open(run_dir / "metrics.jsonl", "a") as metrics, \
                progress_bar(cfg.updates, "tracker", "update", cfg.progress, initial=start, leave=True) as bar:
            lines = cfg.progress and bar.disable
            for update in range(start, cfg.updates):
                t0 = time.perf_counter()
                row = ppo_update(model, optimizer, envs, cfg, generator)
                done = update + 1
                row = {"split": "train", "step": done, "frames": done * cfg.envs * cfg.horizon, **row,
                       "frames_per_s": cfg.envs * cfg.horizon / (time.perf_counter() - t0)}
                metrics.write(json.dumps(row) + "\n")
                metrics.flush()
                bar.update()
                bar.set_postfix(reward=f"{row['reward']:.3f}", episode_s=f"{row['episode_s']:.2f}", refresh=False)
                if lines:
                    log.info("tracker: update %d/%d  reward %.3f  episode %.2f s  falls %.2f  %.0f frames/s", done,
                             cfg.updates, row["reward"], row["episode_s"], row["fall_rate"], row["frames_per_s"])
                if done % cfg.eval_every == 0 or done == cfg.updates:
                    val = evaluate_tracker(model, h1, sets["val"], cfg, float(meta["fps"]))
                    metrics.write(json.dumps({"split": "val", "step": done, **val}) + "\n")
                    metrics.flush()
                    log.info("tracker: update %d validation: survival %.2f s of %g, fell %.2f, joint error %.2f deg",
                             done, val["survival_s"], val["seconds"], val["fall_fraction"], val["joint_error_deg"])
                if done % cfg.ckpt_every == 0 or done == cfg.updates:
                    state = {"step": done, "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                             "numpy_rng": json.dumps(rng.bit_generator.state), "envs": envs.get_state()}
                    save_checkpoint(run_dir, done, model, config, state, keep=cfg.keep_checkpoints)
        baseline = evaluate_tracker(None, h1, sets["val"], cfg, float(meta["fps"]))
        _finish(run_dir, cfg, baseline)
    finally:
        lock.release()
    return run_dir


def ppo_update(model: Tracker, optimizer: torch.optim.Optimizer, envs: TrackingEnvs, cfg: TrackerConfig,
               generator: torch.Generator) -> dict[str, Any]:
    """Collect ``cfg.horizon`` frames from every environment, then ``cfg.epochs`` passes of PPO over them."""
    n, horizon = len(envs), cfg.horizon
    obs_buf: list[tuple[torch.Tensor, ...]] = []
    actions, logps, values, next_values = [], [], [], []
    rewards, terms, fins = [], [], []
    lengths, falls = [], 0
    model.eval()
    obs = _tensors(envs.observe())
    with torch.no_grad():
        for _ in range(horizon):
            dist, value = model(*obs)
            action = dist.mean + dist.stddev * torch.randn(dist.mean.shape, generator=generator, device="cpu")
            reward, terminated, truncated, info = envs.step(action.double().numpy())
            finished = terminated | truncated
            after = _tensors(envs.observe())  # the finished episodes' last observations, before they are reset
            next_value = model(*after)[1]
            for i in np.flatnonzero(finished):
                envs.reset(int(i))
                lengths.append(int(info["length"][i]))
                falls += int(terminated[i])
            obs_buf.append(obs)
            actions.append(action)
            logps.append(dist.log_prob(action).sum(-1))
            values.append(value)
            next_values.append(next_value)
            rewards.append(torch.from_numpy(reward).float())
            terms.append(torch.from_numpy(terminated))
            fins.append(torch.from_numpy(finished))
            obs = _tensors(envs.observe()) if finished.any() else after
    rew = torch.stack(rewards)
    adv_f, ret_f = advantages_and_returns(rew, torch.stack(values), torch.stack(next_values), torch.stack(terms),
                                          torch.stack(fins), cfg.gamma, cfg.lam)
    flat = [torch.cat([o[k] for o in obs_buf]) for k in range(4)]
    act, old_logp = torch.cat(actions), torch.cat(logps)
    model.train()
    total = n * horizon
    clipped, losses = [], []
    for _ in range(cfg.epochs):
        order = torch.randperm(total, generator=generator, device="cpu")
        for s in range(0, total, cfg.minibatch):
            idx = order[s:s + cfg.minibatch]
            dist, value = model(*(x[idx] for x in flat))
            loss, ratio = ppo_loss(dist.log_prob(act[idx]).sum(-1), old_logp[idx], adv_f[idx], value, ret_f[idx],
                                   cfg.clip, cfg.value_coef)
            clipped_step(model, optimizer, loss, cfg.grad_clip)
            with torch.no_grad():
                clipped.append(float(((ratio - 1).abs() > cfg.clip).float().mean()))
                losses.append(float(loss))
    with torch.no_grad():  # how far the update moved the policy, on the whole rollout: KL(old || new) estimated
        log_ratio = model(*flat)[0].log_prob(act).sum(-1) - old_logp
        kl = float((log_ratio.exp() - 1 - log_ratio).mean())
    for group in optimizer.param_groups:  # the next update's step size
        group["lr"] = next_step_size(group["lr"], kl, cfg.target_kl)
    # The input statistics take in this rollout only now: updated before the epochs, they would change the policy
    # that old_logp was computed under (ratios off 1 before any step, a clip fraction of half the batch).
    model.norm.update(torch.cat([flat[0], flat[3]], -1))
    fps = envs.fps
    return {
        "reward": float(rew.mean()),
        "episode_s": float(np.mean(lengths)) / fps if lengths else float("nan"),
        "episodes": len(lengths),
        "fall_rate": falls / len(lengths) if lengths else float("nan"),
        "loss": float(np.mean(losses)), "approx_kl": kl, "clip_fraction": float(np.mean(clipped)),
        "action_std": float(model.log_std.detach().exp().mean()), "lr": float(optimizer.param_groups[0]["lr"]),
    }


def tracking_errors(joints: np.ndarray, ref_joints: np.ndarray, ends: np.ndarray, ref_ends: np.ndarray
                    ) -> tuple[float, float]:
    """One frame's mean absolute joint angle error in degrees (joint angles in radians, ``(19,)``) and mean
    toe/hand position error in millimetres (positions relative to the pelvis in metres, ``(4, 3)``)."""
    return (float(np.degrees(np.abs(joints - ref_joints)).mean()),
            float(np.linalg.norm(ends - ref_ends, axis=-1).mean()) * 1000)


@torch.no_grad()
def evaluate_tracker(model: Tracker | None, h1: Any, refs: References, cfg: TrackerConfig, fps: float,
                     seconds: float = 5.0, starts_per_clip: int = 4) -> dict[str, float]:
    """Track validation references with the policy's mean action (``model``; None: zero actions, the PD servos on
    the reference alone, the baseline) from ``starts_per_clip`` window starts of each clip, spread over the starts
    that leave ``seconds`` of reference (a clip shorter than that: its first frame only), until a fall, the end of
    ``seconds`` or of the reference: the mean time before a fall (``survival_s``), the same as a fraction of the
    time each start had (``survival_fraction``), the fraction that fell, and the joint angle error (deg) and
    toe/hand error (mm, relative to the pelvis) over the frames tracked."""
    limit = int(round(seconds * fps))
    starts = []
    for c in range(len(refs)):
        last = max(0, (len(refs.poses[c]) - 1 - limit) // refs.window)  # the last window start with room left
        starts += [(c, int(k) * refs.window) for k in np.linspace(0, last, starts_per_clip).round()]
    starts = list(dict.fromkeys(starts))
    room = np.array([min(limit, len(refs.poses[c]) - 1 - first) for c, first in starts]) / fps
    envs = TrackingEnvs(h1, refs, len(starts), cfg, fps, np.random.default_rng(0))
    for i, (clip, first) in enumerate(starts):
        envs.reset(i, clip, first)
    alive = np.ones(len(starts), bool)
    survived = np.zeros(len(starts))
    fell = np.zeros(len(starts), bool)
    joint_err, end_err, count = 0.0, 0.0, 0
    if model is not None:
        model.eval()
    for _ in range(limit):
        if model is None:
            action = np.zeros((len(starts), 19))
        else:
            dist, _ = model(*_tensors(envs.observe()))
            action = dist.mean.double().numpy()
        _, terminated, truncated, _ = envs.step(action, active=alive)
        for k in np.flatnonzero(alive):
            d, ref, ends = envs.data[k], refs.poses[envs.clip[k]][envs.frame[k]], refs.ends[envs.clip[k]][envs.frame[k]]
            joint, end = tracking_errors(d.qpos[7:26], ref[7:26], envs._ends(d), ends)
            joint_err, end_err, count = joint_err + joint, end_err + end, count + 1
            survived[k] += 1.0 / fps
            if terminated[k] or truncated[k]:
                alive[k] = False
                fell[k] = terminated[k]
        if not alive.any():
            break
    return {"survival_s": float(survived.mean()), "survival_fraction": float((survived / room).mean()),
            "fall_fraction": float(fell.mean()),
            "joint_error_deg": joint_err / max(count, 1), "end_error_mm": end_err / max(count, 1),
            "episodes": float(len(starts)), "seconds": float(seconds)}


def _finish(run_dir: Path, cfg: TrackerConfig, baseline: dict[str, float]) -> None:
    from daps.plots import read_metrics

    rows = read_metrics(run_dir / "metrics.jsonl")
    val = [r for r in rows if r.get("split") == "val"]
    summary = {"step": cfg.updates, **(val[-1] if val else {}), "baseline": baseline}
    tokens = f" of {run_folder(Path(cfg.tokenizer)).name}'s codes" if cfg.tokenizer else ""  # a checkpoint: its run
    title = f"tracker{tokens} ({run_dir.name}): {cfg.frames:,} frames, {cfg.envs} environments"
    save_tracker_curves(rows, run_dir / "curves.png", baseline, title)
    write_json_atomic(run_dir / "summary.json", summary)  # last: it marks the run finished


def save_tracker_curves(rows: list[dict], path: Path, baseline: dict[str, float], title: str = "") -> None:
    """Training reward and episode length, and validation survival against the PD-only baseline, per frame, under
    ``title`` (which run)."""
    from daps.plots import _pyplot, plot_line, save_figure

    plt = _pyplot()
    train = [r for r in rows if r.get("split") == "train"]
    val = [r for r in rows if r.get("split") == "val"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    x = [r["frames"] / 1e6 for r in train]
    plot_line(axes[0], x, [r["reward"] for r in train])
    axes[0].set_title("reward per frame (training)", fontsize=9)
    plot_line(axes[1], x, [r["episode_s"] for r in train])
    axes[1].set_title("episode length, s (training)", fontsize=9)
    if val:
        vx = [r["step"] * (train[0]["frames"] / train[0]["step"]) / 1e6 for r in val] if train else []
        axes[2].plot(vx, [r["survival_s"] for r in val], marker="o", label="tracker")
    axes[2].axhline(baseline["survival_s"], color="grey", ls="--", label="PD servos only")
    axes[2].set_title(f"validation survival, s (of {baseline['seconds']:g})", fontsize=9)
    axes[2].legend(fontsize=7)
    for ax in axes:
        ax.set_xlabel("million frames", fontsize=8)
        ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def load_tracker(path: str | Path) -> tuple[Tracker, TrackerConfig, dict[str, Any], dict[str, References]]:
    """A trained tracker from its run folder (or checkpoint): the network (eval mode), settings, the references'
    header and the references."""
    ckpt = resolve_checkpoint(path)
    refuse_other_kind(ckpt, KIND, "a tracker (daps robot track-train)")
    check_version(ckpt / "config.json")
    try:
        config = json.loads((ckpt / "config.json").read_text())
        cfg = TrackerConfig(**config[KIND])
        meta = config["references"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{ckpt / 'config.json'} is not a daps tracker config ({err})") from None
    model = Tracker(int(meta["num_tokens"]), int(meta["vocab_size"]), cfg)
    load_weights(model, ckpt)
    refs = load_references(ckpt.parent.parent / REFERENCES_FILE)
    return model.eval(), cfg, meta, refs


__all__ = ["TrackerConfig", "Tracker", "TrackingEnvs", "train_tracker", "evaluate_tracker", "load_tracker", "gae"]
