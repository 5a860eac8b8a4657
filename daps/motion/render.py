"""Pictures of motions: an mp4 of ground truth and reconstruction side by side on the H1, and feature plots.

Rendering is offscreen with MuJoCo's own OpenGL renderer, so it needs an OpenGL backend but no screen: on a
headless Linux machine ``MUJOCO_GL=egl`` (Mesa's EGL, the default set by :func:`daps.motion.h1.import_mujoco`) or
``MUJOCO_GL=osmesa`` (``apt-get install libosmesa6``). ``MUJOCO_GL`` must be set before anything imports mujoco.
Videos are written with imageio's ffmpeg plugin (``pip install imageio imageio-ffmpeg``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from daps.errors import UserError
from daps.motion.features import FEATURE_LAYOUT, FIELDS, feature_names
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


def _views(
    h1: H1, motions: Sequence[np.ndarray], follow: Sequence[np.ndarray],
    colours: Sequence[tuple[float, float, float, float]],
    width: int, height: int, distance: float,
) -> Iterator[list[np.ndarray]]:
    """For each time step, the RGB frame ``(height, width, 3)`` uint8 of every motion ``(T, 26)`` (all of one length)
    in its colour, the camera following the pelvis of the matching ``follow`` poses (at a height of 0.9 m). Frames
    are made as they are consumed, so a long video is never held in memory; the renderer is made here (no OpenGL:
    UserError before anything is written) and closed when the frames run out or are dropped."""
    model = scene_model(h1)
    return _frames(model, _renderer(model, width, height), motions, follow, colours, distance)


def _frames(model: Any, renderer: Any, motions: Sequence[np.ndarray], follow: Sequence[np.ndarray],
            colours: Sequence[tuple[float, float, float, float]], distance: float) -> Iterator[list[np.ndarray]]:
    mujoco = import_mujoco()
    datas = [mujoco.MjData(model) for _ in motions]
    cam = mujoco.MjvCamera()
    cam.type = mujoco.mjtCamera.mjCAMERA_FREE
    cam.distance, cam.azimuth, cam.elevation = distance, 120.0, -15.0
    steps = len(motions[0])
    try:
        with progress_bar(steps, "render", "frame") as bar:  # drawn on a terminal only
            for t in range(steps):
                views = []
                for poses, guide, rgba, data in zip(motions, follow, colours, datas):
                    _paint(model, rgba)  # the views share the model
                    data.qpos[:POSE_DIM] = poses[t]
                    mujoco.mj_kinematics(model, data)
                    cam.lookat[:] = (guide[t, 0], guide[t, 1], 0.9)
                    renderer.update_scene(data, camera=cam)
                    views.append(renderer.render().copy())
                yield views
                bar.update()
    finally:
        renderer.close()


def render_side_by_side(
    h1: H1,
    target: np.ndarray,
    pred: np.ndarray,
    path: str | Path,
    fps: float = 30.0,
    width: int = 320,
    height: int = 320,
    distance: float = 3.0,
    captions: tuple[str, str] = ("ground truth", "reconstruction"),
) -> Path:
    """Write an mp4 of ground truth ``target`` (left, grey) and reconstruction ``pred`` (right, orange), poses
    ``(T, 26)`` each, ``width`` x ``height`` pixels per view (multiples of 16 keep the encoder from resizing), each
    view with its caption in the top-left corner (the video says which robot is which without the command's log).

    Both views use the same camera, which follows the ground truth's pelvis (at a height of 0.9 m), so a drifting
    root shows as the right robot leaving the centre. Written atomically; returns ``path``.

    Raises:
        UserError: no OpenGL backend works (the message names the package to install and the setting).
    """
    t, p = np.asarray(target, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    if t.ndim != 2 or t.shape[1] != POSE_DIM or t.shape != p.shape:
        raise ValueError(f"target and pred must be (T, {POSE_DIM}) of one shape, got {t.shape} and {p.shape}")
    bands = [_caption_band(text, width) for text in captions]

    def pair(left: np.ndarray, right: np.ndarray) -> np.ndarray:  # (height, 2 * width, 3)
        for frame, band in zip((left, right), bands):
            _stamp(frame, band)
        return np.concatenate([left, right], axis=1)

    views = _views(h1, [t, p], [t, t], [TARGET_RGBA, PRED_RGBA], width, height, distance)
    return _write_mp4((pair(left, right) for left, right in views), Path(path), fps)


def render_motion(
    h1: H1, poses: np.ndarray, path: str | Path, fps: float = 30.0, width: int = 320, height: int = 320,
    distance: float = 3.0, captions: Sequence[str] | None = None,
) -> Path:
    """Write an mp4 of one motion ``poses (T, 26)`` (orange), the camera following its pelvis, with ``captions`` (one
    per frame, e.g. the command and the time) in the top-left corner; atomically."""
    p = np.asarray(poses, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != POSE_DIM:
        raise ValueError(f"poses must be (T, {POSE_DIM}), got {p.shape}")
    if captions is not None and len(captions) != len(p):
        raise ValueError(f"{len(captions)} captions for {len(p)} frames")
    # the last caption's band only: consecutive frames share a caption (drawn once for them all), while every
    # band kept would grow with the video (robot plan's time changes every 0.1 s: 36,000 bands for an hour)
    last: tuple[str, np.ndarray] | None = None

    def captioned(frame: np.ndarray, t: int) -> np.ndarray:
        nonlocal last
        if captions is not None:
            if last is None or last[0] != captions[t]:
                last = (captions[t], _caption_band(captions[t], width))
            _stamp(frame, last[1])
        return frame

    views = _views(h1, [p], [p], [PRED_RGBA], width, height, distance)
    return _write_mp4((captioned(frame, t) for t, (frame,) in enumerate(views)), Path(path), fps)


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
    bands = [_caption_band(text, tile) for text in captions] if captions is not None else []
    rows = -(-len(m) // columns)

    def grid(views: list[np.ndarray]) -> np.ndarray:  # one time step's tiles -> (rows * tile, columns * tile, 3)
        for frame, band in zip(views, bands):
            _stamp(frame, band)
        views = views + [np.zeros_like(views[0])] * (rows * columns - len(views))  # black tiles fill the last row
        return np.concatenate([np.concatenate(views[r * columns : (r + 1) * columns], axis=1) for r in range(rows)])

    views = _views(h1, list(m), list(m), [PRED_RGBA] * len(m), tile, tile, distance)
    return _write_mp4((grid(v) for v in views), Path(path), fps)


def _caption_band(text: str, width: int) -> np.ndarray:
    """``text`` in white on a dark band 16 pixels high and at most ``width`` wide (Pillow's default font), for the
    top-left corner of a view."""
    from PIL import Image, ImageDraw

    band = Image.new("RGB", (min(8 + 6 * len(text), width), 16), (20, 20, 20))  # ~6 pixels per character
    ImageDraw.Draw(band).text((4, 2), text, fill=(255, 255, 255))
    return np.asarray(band)


def _stamp(frame: np.ndarray, band: np.ndarray) -> None:
    """Paint ``band`` (a caption) into the top-left corner of ``frame`` (an RGB view), cut to the view."""
    h, w = min(band.shape[0], frame.shape[0]), min(band.shape[1], frame.shape[1])
    frame[:h, :w] = band[:h, :w]


def _write_mp4(frames: Iterable[np.ndarray], path: Path, fps: float) -> Path:
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
        try:
            for frame in frames:
                writer.append_data(frame)
        except BaseException:
            # imageio's ``with writer`` leaves ffmpeg running on an error, to write the temporary file after
            # atomic_path removed it: closed here, before that removal
            with contextlib.suppress(Exception):
                writer.close()
            raise
        writer.close()
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
    png written atomically, each panel labelled with its feature's unit. ``names`` are
    :func:`~daps.motion.features.feature_names` entries."""
    from daps.plots import _pyplot, save_figure

    plt = _pyplot()
    all_names = feature_names()
    unknown = [n for n in names if n not in all_names]
    if unknown:
        blocks = ", ".join(FEATURE_LAYOUT)
        raise UserError(f"unknown feature {unknown[0]!r}; names look like <block>/<axis> with blocks {blocks}")
    units = {f.name: f.unit for f in FIELDS}
    t, p = np.asarray(target), np.asarray(pred)
    seconds = np.arange(len(t)) / fps
    fig, axes = plt.subplots(len(names), 1, figsize=(6, 1.4 * len(names)), sharex=True, squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        col = all_names.index(name)
        ax.plot(seconds, t[:, col], color="black", lw=1.2, label="ground truth")
        ax.plot(seconds, p[:, col], color="tab:red", lw=1.0, ls="--", label="reconstruction")
        block, axis = name.split("/")
        ax.set_ylabel(f"{block}\n{axis} [{units[block]}]", fontsize=7)
        ax.tick_params(labelsize=7)
    # above the first panel, not over its lines
    axes[0, 0].legend(fontsize=7, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=2, frameon=False)
    axes[-1, 0].set_xlabel("time (s)", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out = Path(path)
    save_figure(fig, out, dpi=110)
    return out
