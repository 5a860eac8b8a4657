"""Pictures of motions: an mp4 of ground truth and reconstruction side by side on the H1, and feature plots.

Rendering is offscreen with MuJoCo's own OpenGL renderer, so it needs an OpenGL backend but no screen: on a
headless Linux machine ``MUJOCO_GL=egl`` (Mesa's EGL, the default set by :func:`daps.motion.h1.import_mujoco`) or
``MUJOCO_GL=osmesa`` (``apt-get install libosmesa6``). ``MUJOCO_GL`` must be set before anything imports mujoco.
Videos are written with imageio's ffmpeg plugin (``pip install imageio imageio-ffmpeg``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from daps.errors import UserError
from daps.motion.features import FEATURE_LAYOUT, feature_names
from daps.motion.h1 import H1, POSE_DIM, SCENE_FILE, import_mujoco
from daps.progress import progress_bar
from daps.runfolder import VIDEO_COMMENT, atomic_path

__all__ = [
    "DEFAULT_PLOT_FEATURES", "plot_feature_trajectories", "render_grid", "render_motion", "render_side_by_side",
    "scene_model",
]

TARGET_RGBA = (0.75, 0.75, 0.75, 1.0)
PRED_RGBA = (0.95, 0.55, 0.2, 1.0)
DEFAULT_PLOT_FEATURES = (
    "root_height/z",
    "root_velocity/forward",
    "yaw_rate/z",
    "joint_angles/left_knee_joint",
    "joint_angles/right_hip_pitch_joint",
    "key_points/left_hand.z",
)


MAX_VIEW_SIZE = 4096
"""The largest side (pixels) of a rendered view: OpenGL framebuffers larger than the driver allows (8,192 or
16,384 on common ones) fail as if no backend worked."""


def _renderer(model: Any, width: int, height: int) -> Any:
    """A MuJoCo offscreen renderer, or UserError naming what to install / set when no OpenGL backend works.

    Shadows, reflections and multisampling are off: on a CPU (Mesa llvmpipe) they cost ~5x the frame time.
    """
    mujoco = import_mujoco()
    backend = os.environ.get("MUJOCO_GL", "default")
    model.vis.quality.offsamples = 0
    # The offscreen framebuffer (640 x 640 unless the model says otherwise) must hold the image.
    model.vis.global_.offwidth = max(int(model.vis.global_.offwidth), width)
    model.vis.global_.offheight = max(int(model.vis.global_.offheight), height)
    try:
        renderer = mujoco.Renderer(model, height=height, width=width)
    except Exception as e:  # each backend fails its own way (ImportError, AttributeError, mujoco.FatalError, ...)
        raise UserError(
            f"no OpenGL backend for offscreen rendering (MUJOCO_GL={backend}: {type(e).__name__}: "
            f"{' '.join(str(e).split())[:160]}); install Mesa's "
            "libegl1 or libosmesa6 (apt-get install libosmesa6) and set MUJOCO_GL=egl or MUJOCO_GL=osmesa before "
            "starting Python"
        ) from e
    renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
    renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
    return renderer


def scene_model(h1: H1) -> Any:
    """A fresh copy of the H1 with a floor and a light (``scene.xml`` next to ``h1.xml``, else the bare model); the
    renderer changes its settings and colours."""
    mujoco = import_mujoco()
    scene = h1.path.parent / SCENE_FILE
    return mujoco.MjModel.from_xml_path(str(scene if scene.is_file() else h1.path))


def _paint(model: Any, rgba: tuple[float, float, float, float]) -> None:
    """Colour the robot (its meshes use material ``black``, nearly invisible on the dark floor)."""
    mujoco = import_mujoco()
    mat = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_MATERIAL, "black")
    if mat >= 0:
        model.mat_rgba[mat] = rgba


def _frames(renderer: Any, model: Any, poses: np.ndarray, look_at: np.ndarray, distance: float,
            desc: str = "render") -> list[np.ndarray]:
    """RGB frames ``(H, W, 3)`` uint8 of ``poses (T, 26)``, the camera following ``look_at (T, 3)`` (a progress bar
    named ``desc`` on a terminal)."""
    mujoco = import_mujoco()
    data = mujoco.MjData(model)
    cam = mujoco.MjvCamera()
    cam.type = mujoco.mjtCamera.mjCAMERA_FREE
    cam.distance, cam.azimuth, cam.elevation = distance, 120.0, -15.0
    frames = []
    with progress_bar(len(poses), desc, "frame") as bar:
        for q, target in zip(poses, look_at):
            data.qpos[:POSE_DIM] = q
            mujoco.mj_kinematics(model, data)
            cam.lookat[:] = target
            renderer.update_scene(data, camera=cam)
            frames.append(renderer.render().copy())
            bar.update()
    return frames


def _views(
    h1: H1, motions: Sequence[np.ndarray], follow: Sequence[np.ndarray],
    colours: Sequence[tuple[float, float, float, float]],
    width: int, height: int, distance: float,
) -> list[np.ndarray]:
    """Frames ``(T, height, width, 3)`` of each motion ``(T, 26)`` in its colour, the camera following the pelvis of
    the matching ``follow`` poses (at a height of 0.9 m); one renderer for all."""
    model = scene_model(h1)
    renderer = _renderer(model, width, height)
    try:
        views = []
        for i, (poses, guide, rgba) in enumerate(zip(motions, follow, colours)):
            _paint(model, rgba)
            look_at = np.concatenate([guide[:, :2], np.full((len(guide), 1), 0.9)], axis=1)  # (T, 3)
            desc = f"render view {i + 1}/{len(motions)}" if len(motions) > 1 else "render"
            views.append(np.stack(_frames(renderer, model, poses, look_at, distance, desc)))
    finally:
        renderer.close()
    return views


def render_side_by_side(
    h1: H1,
    target: np.ndarray,
    pred: np.ndarray,
    path: str | Path,
    fps: float = 30.0,
    width: int = 320,
    height: int = 320,
    distance: float = 3.0,
) -> Path:
    """Write an mp4 of ground truth ``target`` (left, grey) and reconstruction ``pred`` (right, orange), poses
    ``(T, 26)`` each, ``width`` x ``height`` pixels per view (multiples of 16 keep the encoder from resizing).

    Both views use the same camera, which follows the ground truth's pelvis (at a height of 0.9 m), so a drifting
    root shows as the right robot leaving the centre. Written atomically; returns ``path``.

    Raises:
        UserError: no OpenGL backend works (the message names the package to install and the setting).
    """
    t, p = np.asarray(target, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    if t.ndim != 2 or t.shape[1] != POSE_DIM or t.shape != p.shape:
        raise ValueError(f"target and pred must be (T, {POSE_DIM}) of one shape, got {t.shape} and {p.shape}")
    left, right = _views(h1, [t, p], [t, t], [TARGET_RGBA, PRED_RGBA], width, height, distance)
    return _write_mp4(list(np.concatenate([left, right], axis=2)), Path(path), fps)


def render_motion(
    h1: H1, poses: np.ndarray, path: str | Path, fps: float = 30.0, width: int = 320, height: int = 320,
    distance: float = 3.0,
) -> Path:
    """Write an mp4 of one motion ``poses (T, 26)`` (orange), the camera following its pelvis; atomically."""
    p = np.asarray(poses, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != POSE_DIM:
        raise ValueError(f"poses must be (T, {POSE_DIM}), got {p.shape}")
    (frames,) = _views(h1, [p], [p], [PRED_RGBA], width, height, distance)
    return _write_mp4(list(frames), Path(path), fps)


def render_grid(
    h1: H1, motions: np.ndarray, path: str | Path, columns: int, captions: Sequence[str] | None = None,
    fps: float = 30.0, tile: int = 240, distance: float = 3.0,
) -> Path:
    """Write an mp4 of many motions ``(N, T, 26)`` at once, one ``tile`` x ``tile`` view each (orange, the camera
    following its own pelvis), ``columns`` per row, each with its caption in the corner; atomically.

    Raises:
        UserError: no OpenGL backend works.
    """
    m = np.asarray(motions, dtype=np.float64)
    if m.ndim != 3 or m.shape[2] != POSE_DIM or len(m) == 0:
        raise ValueError(f"motions must be (N, T, {POSE_DIM}) with N >= 1, got {m.shape}")
    if captions is not None and len(captions) != len(m):
        raise ValueError(f"{len(captions)} captions for {len(m)} motions")
    if tile % 16:
        raise ValueError(f"tile must be a multiple of 16 (whole video macroblocks), got {tile}")
    views = _views(h1, list(m), list(m), [PRED_RGBA] * len(m), tile, tile, distance)  # (T, tile, tile, 3) each
    if captions is not None:
        views = [_caption(frames, text) for frames, text in zip(views, captions)]
    rows = -(-len(views) // columns)
    views += [np.zeros_like(views[0])] * (rows * columns - len(views))  # black tiles fill the last row
    grid = np.concatenate(
        [np.concatenate(views[r * columns : (r + 1) * columns], axis=2) for r in range(rows)], axis=1
    )  # (T, rows * tile, columns * tile, 3)
    return _write_mp4(list(grid), Path(path), fps)


def _caption(frames: np.ndarray, text: str) -> np.ndarray:
    """``frames (T, H, W, 3)`` with ``text`` in white on a dark band in the top-left corner (Pillow's default font)."""
    from PIL import Image, ImageDraw

    width = min(8 + 6 * len(text), frames.shape[2])  # about 6 pixels per character of the default font
    band = Image.fromarray(frames[0, :16, :width].copy())
    draw = ImageDraw.Draw(band)
    draw.rectangle((0, 0, width, 15), fill=(20, 20, 20))
    draw.text((4, 2), text, fill=(255, 255, 255))
    out = frames.copy()
    out[:, :16, :width] = np.asarray(band)
    return out


def _write_mp4(frames: Sequence[np.ndarray], path: Path, fps: float) -> Path:
    try:
        import imageio.v2 as imageio
    except ImportError as e:
        raise UserError(f"writing mp4 needs imageio: pip install imageio imageio-ffmpeg ({e})") from e
    with atomic_path(path) as tmp:
        try:
            writer = imageio.get_writer(tmp, format="FFMPEG", fps=fps, codec="libx264", macro_block_size=16,
                                        output_params=["-metadata", f"comment={VIDEO_COMMENT}"])  # is_daps_video
        except (ImportError, RuntimeError, ValueError) as e:
            raise UserError(f"writing mp4 needs imageio's ffmpeg plugin: pip install imageio-ffmpeg ({e})") from e
        with writer:
            for frame in frames:
                writer.append_data(frame)
    return path


def plot_feature_trajectories(
    target: np.ndarray,
    pred: np.ndarray,
    path: str | Path,
    names: Sequence[str] = DEFAULT_PLOT_FEATURES,
    fps: float = 30.0,
    title: str = "",
) -> Path:
    """Plot a few raw (not standardized) features ``(T, F)`` over time, ground truth against reconstruction, to a
    png written atomically. ``names`` are :func:`~daps.motion.features.feature_names` entries."""
    from daps.plots import _pyplot, save_figure

    plt = _pyplot()
    all_names = feature_names()
    unknown = [n for n in names if n not in all_names]
    if unknown:
        blocks = ", ".join(FEATURE_LAYOUT)
        raise UserError(f"unknown feature {unknown[0]!r}; names look like <block>/<axis> with blocks {blocks}")
    t, p = np.asarray(target), np.asarray(pred)
    seconds = np.arange(len(t)) / fps
    fig, axes = plt.subplots(len(names), 1, figsize=(6, 1.4 * len(names)), sharex=True, squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        col = all_names.index(name)
        ax.plot(seconds, t[:, col], color="black", lw=1.2, label="ground truth")
        ax.plot(seconds, p[:, col], color="tab:red", lw=1.0, ls="--", label="reconstruction")
        ax.set_ylabel(name.replace("/", "\n"), fontsize=7)
        ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("time (s)", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out = Path(path)
    save_figure(fig, out, dpi=110)
    return out
