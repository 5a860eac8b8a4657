"""Known answers for behaviour that a seventeenth mutation sweep, of modules earlier sweeps covered least (the motion
metrics daps/motion/metrics.py, the motion windows daps/motion/dataset.py and daps/data/motion.py, one's own
sequences daps/data/sequences.py, the videos and feature figures daps/motion/render.py, evaluation
daps/metrics/evaluate.py, the policy's run daps/robot/run.py and the command lines daps/robot/cli.py and
daps/prior/cli.py), found no test guarding: the root velocity of two frames; the keyframe baseline's last key and
its step of 0; the first pose held; the 22 metric points; skating pooled by contact frames in ``pool_windows``;
caption bands of oblong views and of grid tiles (cut at the view, at its top); a grid of no motions; a video that
fails half-way (it left a temporary file: fixed); the feature figure's seconds and reconstruction line; the
framebuffer of a wide view; the camera's fixed look-at height; a policy stride that does not divide the window. Each
test names the plausible slip it fails on (each checked against its mutant). Tests that need MuJoCo and the H1 model
read ``$DAPS_DATA_DIR`` and skip without it.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from daps.errors import UserError

REAL_DIR = os.environ.get("DAPS_DATA_DIR", "").strip()
needs_real_data = pytest.mark.skipif(not REAL_DIR, reason="DAPS_DATA_DIR is not set (the H1 model)")

# --------------------------------------------------------------------------------------------------
# Motion metrics


def _still(num_frames: int, height: float = 1.0) -> np.ndarray:
    """``(T, 26)`` default poses: the pelvis at ``height`` m, upright (w = 1), every hinge at 0."""
    pose = np.zeros((num_frames, 26))
    pose[:, 2] = height
    pose[:, 3] = 1.0
    return pose


def test_root_velocity_error_of_two_frames():
    """Two frames are one velocity: a prediction whose pelvis moves 0.1 m along x in one frame at 30 fps, against a
    still target, is 3 m/s off. Fails on: three frames asked for."""
    from daps.motion.metrics import root_velocity_error_m_s

    target = _still(2)
    pred = target.copy()
    pred[1, 0] = 0.1
    assert root_velocity_error_m_s(pred, target, 30.0) == pytest.approx(3.0)
    with pytest.raises(ValueError):
        root_velocity_error_m_s(target[:1], target[:1], 30.0)


def test_keyframe_baseline_keeps_the_last_frame_and_needs_a_positive_step():
    """``interpolate_keyframes``: frames 0, 4, 8 and the last (9) of a 10-frame window are kept; a knee angle that
    is 0 until frame 8 and 1 at frame 9 stays so (a missing last key would extrapolate 0 there); a step of 0 is
    refused. Fails on: the last frame not kept as a key, or ``every >= 0`` accepted."""
    from daps.motion.metrics import interpolate_keyframes

    poses = _still(10)
    poses[9, 10] = 1.0
    out = interpolate_keyframes(poses, every=4)
    np.testing.assert_allclose(out[:, 10], [0, 0, 0, 0, 0, 0, 0, 0, 0, 1.0])
    ramp = _still(10)
    ramp[:, 0] = np.arange(10) ** 2
    # keys 0, 4, 8, 9: straight lines between the squares 0, 16, 64, 81
    np.testing.assert_allclose(interpolate_keyframes(ramp, every=4)[:, 0],
                               [0, 4, 8, 12, 16, 28, 40, 52, 64, 81])
    with pytest.raises(ValueError):
        interpolate_keyframes(poses, every=0)


def test_hold_first_pose_holds_the_first_frame_of_each_window():
    """Every frame of the baseline is the window's first pose. Fails on: the last pose held."""
    from daps.motion.metrics import hold_first_pose

    poses = np.stack([_still(3, height=h) for h in (0.9, 1.0)])  # (2, 3, 26)
    poses[:, :, 0] = [[1, 2, 3], [4, 5, 6]]
    out = hold_first_pose(poses)
    np.testing.assert_array_equal(out[..., 0], [[1, 1, 1], [4, 4, 4]])


def test_metric_points_are_eighteen_body_origins_and_four_end_points():
    """22 points: the H1's 20 bodies but the pelvis and ``torso_link`` (whose origin is the pelvis's), then the toes
    and hands. Fails on: only the pelvis left out."""
    from daps.motion.metrics import METRIC_POINTS

    names = [p.name for p in METRIC_POINTS]
    assert len(names) == 22
    assert "pelvis" not in names and "torso_link" not in names
    assert names[-4:] == ["left_toe", "right_toe", "left_hand", "right_hand"]


def test_pooled_skating_weights_windows_by_their_contact_frames():
    """``pool_windows``: skating 1 m/s over 3 contact frames and 0 over 1 pools to 3/4 (not the mean 1/2 of the
    windows); a window-mean metric is the plain mean; the counts are not returned. Fails on: every metric
    averaged over windows."""
    from daps.motion.metrics import pool_windows

    pooled = pool_windows({
        "foot_skating_m_s": np.array([1.0, 0.0]), "foot_contact_frames": np.array([3.0, 1.0]),
        "gt_foot_skating_m_s": np.array([0.2, 0.4]), "gt_foot_contact_frames": np.array([0.0, 0.0]),
        "mpjpe_mm": np.array([1.0, 3.0]),
    })
    assert pooled == pytest.approx({"foot_skating_m_s": 0.75, "gt_foot_skating_m_s": 0.0, "mpjpe_mm": 2.0})


# --------------------------------------------------------------------------------------------------
# Motion videos and feature figures (the renderer replaced by flat views where the layout is what is checked)


@pytest.fixture
def flat_views(monkeypatch):
    """``daps.motion.render`` with ``_views`` giving motion i's frames the value 10 (i + 1) and ``_write_mp4``
    keeping the frames it is given (a list of ``(T, H, W, 3)`` stacks)."""
    import daps.motion.render as render

    written: list[np.ndarray] = []

    def views(h1, motions, follow, colours, width, height, distance):
        return ([np.full((height, width, 3), 10 * (i + 1), np.uint8) for i in range(len(motions))]
                for _ in range(len(motions[0])))

    def write(frames, path, fps):
        written.append(np.stack(list(frames)))
        return path

    monkeypatch.setattr(render, "_views", views)
    monkeypatch.setattr(render, "_write_mp4", write)
    return written


def test_side_by_side_captions_of_oblong_views_are_as_wide_as_the_view_allows(flat_views, tmp_path):
    """Views 64 wide and 32 high: the caption "ground truth" (8 + 6 x 12 = 80 pixels) is cut at the view's width,
    64, so the band (16 rows, dark) covers the top 16 rows of each view's full width and row 16 is the view.
    Fails on: the band's width capped by the height and its height by the width."""
    from daps.motion.render import render_side_by_side

    render_side_by_side(None, np.zeros((1, 26)), np.zeros((1, 26)), tmp_path / "v.mp4", width=64, height=32,
                        captions=("ground truth", "reconstruction"))
    (video,) = flat_views
    assert video.shape == (1, 32, 128, 3)
    left = video[0, :, :64, 0]  # the ground truth's view: 10 where no band covers it
    assert not (left[:16] == 10).any()  # all band (dark or text), nothing of the view
    assert (left[16:] == 10).all()


def test_grid_captions_sit_top_left_and_are_cut_at_the_tile(flat_views, tmp_path):
    """``render_grid`` with 32-pixel tiles and captions "walking fast" (80 pixels wide): each tile's top 16 rows are
    the band, cut at the tile's width (not spilling over, not refused), and the rows below are the view. Fails on:
    the band not cut at the tile's width, or put at the bottom of the tile."""
    from daps.motion.render import render_grid

    render_grid(None, np.zeros((2, 1, 26)), tmp_path / "g.mp4", columns=2, captions=["walking fast", "run"], tile=32)
    (video,) = flat_views
    assert video.shape == (1, 32, 64, 3)
    first = video[0, :, :32, 0]  # motion 0's tile: 10 where no band covers it
    assert not (first[:16] == 10).any() and (first[16:] == 10).all()


def test_a_grid_of_no_motions_is_refused():
    """``render_grid`` of ``(0, T, 26)`` motions is a ValueError before anything is rendered. Fails on: the empty
    check dropped (the renderer would be asked for an H1 and fail elsewhere)."""
    from daps.motion.render import render_grid

    with pytest.raises(ValueError, match="N >= 1"):
        render_grid(None, np.zeros((0, 4, 26)), "none.mp4", columns=2)


def test_a_failed_video_leaves_no_file(tmp_path):
    """``_write_mp4`` writes atomically: frames that fail half-way leave nothing at the path (nor a temporary file
    beside it). Fails on: the writer opened on the final path."""
    pytest.importorskip("imageio_ffmpeg")
    from daps.motion.render import _write_mp4

    def frames():
        yield np.zeros((16, 16, 3), np.uint8)
        raise RuntimeError("renderer lost")

    path = tmp_path / "broken.mp4"
    with pytest.raises(RuntimeError, match="renderer lost"):
        _write_mp4(frames(), path, 30.0)
    assert list(tmp_path.iterdir()) == []


def test_feature_figure_plots_seconds_and_the_reconstruction(monkeypatch, tmp_path):
    """``plot_feature_trajectories``: the x axis is seconds (frame / fps: 4 frames at 2 fps end at 1.5 s), the black
    line is the target's column and the red dashed line the prediction's. Fails on: frames times fps, or the target
    drawn twice."""
    pytest.importorskip("matplotlib")
    import daps.plots as plots
    from daps.motion.features import feature_names
    from daps.motion.render import plot_feature_trajectories

    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path, dpi=None: figures.append(fig))
    name = "root_height/z"
    col = feature_names().index(name)
    target = np.zeros((4, len(feature_names())))
    pred = target.copy()
    target[:, col] = [1, 2, 3, 4]
    pred[:, col] = [5, 6, 7, 8]
    plot_feature_trajectories(target, pred, tmp_path / "f.png", names=[name], fps=2.0)
    (fig,) = figures
    truth, recon = fig.axes[0].get_lines()[:2]
    np.testing.assert_allclose(truth.get_xdata(), [0, 0.5, 1.0, 1.5])
    np.testing.assert_allclose(truth.get_ydata(), [1, 2, 3, 4])
    np.testing.assert_allclose(recon.get_ydata(), [5, 6, 7, 8])


@needs_real_data
def test_a_wide_view_grows_the_framebuffer_in_width(tmp_path):
    """``_renderer`` of a view 656 wide and 16 high (wider than MuJoCo's default 640 x 640 framebuffer): the
    framebuffer grows to 656 wide and the renderer renders (656 x 16). Fails on: the width compared with the
    height."""
    from daps.motion.h1 import load_h1
    from daps.motion.render import _renderer, scene_model

    model = scene_model(load_h1(REAL_DIR))
    renderer = _renderer(model, 656, 16)
    try:
        assert model.vis.global_.offwidth >= 656
        assert (renderer.width, renderer.height) == (656, 16)
    finally:
        renderer.close()


@needs_real_data
def test_the_camera_looks_at_the_guides_pelvis_at_a_fixed_height():
    """``_frames``: the camera looks at (x, y, 0.9) of the followed pelvis, whatever the pelvis height (a crouch or a
    jump does not move the camera up and down). Fails on: the pelvis height used."""
    from daps.motion.h1 import load_h1
    from daps.motion.render import _frames, scene_model

    looks = []

    class Recorder:
        def update_scene(self, data, camera):
            looks.append(np.array(camera.lookat))

        def render(self):
            return np.zeros((2, 2, 3), np.uint8)

        def close(self):
            pass

    poses = _still(2, height=0.5)
    poses[:, 0] = [1.0, 2.0]
    poses[:, 1] = [-1.0, 3.0]
    frames = list(_frames(scene_model(load_h1(REAL_DIR)), Recorder(), [poses], [poses], [(1, 1, 1, 1)], 3.0))
    assert len(frames) == 2
    np.testing.assert_allclose(np.stack(looks), [[1.0, -1.0, 0.9], [2.0, 3.0, 0.9]])


# --------------------------------------------------------------------------------------------------
# The policy's run


def test_a_stride_that_does_not_divide_the_window_is_refused_before_the_data_are_read(monkeypatch):
    """``encode_commands`` with ``stride=3`` for a tokenizer of 32-frame windows: a UserError naming both, before the
    motion data are loaded (windows every 3 frames would not tile a rollout of whole windows); ``stride=8`` passes
    that check. Fails on: only a stride longer than the window refused."""
    from types import SimpleNamespace

    import daps.motion.dataset as dataset
    import daps.robot.run as run

    tokenizer = SimpleNamespace(config=SimpleNamespace(data=SimpleNamespace(image_shape=(1, 32, 8), data_dir="")))
    monkeypatch.setattr(run, "load_motion_tokenizer", lambda *a, **k: (tokenizer, None))

    def read(*a, **k):
        raise LookupError("the data were read")

    monkeypatch.setattr(dataset, "load_motion_data", read)
    with pytest.raises(UserError, match="stride 3 must divide the tokenizer's window length 32"):
        run.encode_commands(run.RobotConfig(tokenizer="t", stride=3), torch.device("cpu"))
    with pytest.raises(LookupError):
        run.encode_commands(run.RobotConfig(tokenizer="t", stride=8), torch.device("cpu"))
