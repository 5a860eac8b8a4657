"""Known answers for behaviour that a seventeenth mutation sweep, of modules earlier sweeps covered least (the motion
metrics daps/motion/metrics.py, the motion windows daps/motion/dataset.py and daps/data/motion.py, one's own
sequences daps/data/sequences.py, the videos and feature figures daps/motion/render.py, evaluation
daps/metrics/evaluate.py, the policy's run daps/robot/run.py and the command lines daps/prior/cli.py and
daps/robot/cli.py), found no test guarding: the root velocity of two frames; the keyframe baseline's last key and
its step of 0; the first pose held; the 22 metric points; skating pooled by contact frames in ``pool_windows``;
caption bands of oblong views and of grid tiles (cut at the view, at its top); a grid of no motions; a video that
fails half-way (it left a temporary file: fixed); the feature figure's seconds and reconstruction line; the
framebuffer of a wide view; the camera's fixed look-at height; a policy stride that does not divide the window; motion
windows of one channel only; a reconstructed clip's start rounded to the nearest frame and refused before the clip;
motion statistics that are not an object; standardization of one frame, at the variance threshold and of a scalar; a
zero validation stride; a clip of one frame; a feature cache whose lengths do not add up, keyed by the model file;
the recorded feature version and the shapes of scale and flags; a sequences clip of booleans or holding an infinity;
FID of one image or of grey ones, its reference named by the file, reference statistics checked by all three sizes and
not warned about between the same images, FID off ("none") and a missing weights path; a policy's summary of its last
validation; a prior's grid of exactly 400 samples and decode-random's 400 codes, its video as wide as its motions up to
ten, prior samples refused over the training codes named by a relative path; robot eval's physics rollouts of one
rollout, its windows, repeated kinds and physics rollouts beyond the rollouts; robot plan's sizes of 16 and in steps of
16, the velocity given twice, a negative blend, a JSON object without a plan report's keys and the physics video's name;
the jobs a tracker checkpoint was trained by.
Each test names the plausible slip it fails on (each checked against its mutant). Tests that need MuJoCo and the H1
model read ``$DAPS_DATA_DIR`` and skip without it.
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



def test_a_policys_summary_holds_its_last_validation(monkeypatch, tmp_path):
    """``_finish`` of a policy whose ``metrics.jsonl`` holds validations at steps 50 (3.0 bits per token) and 100
    (1.5), with a training row between and after: ``summary.json`` is the step count and the step-100 figures, with
    256 windows in 0.5 s as 512 windows per second. Fails on: the first validation summarized."""
    import json
    from types import SimpleNamespace

    import daps.robot.run as run

    rows = [{"split": "val", "step": 50, "bits_per_token": 3.0}, {"split": "train", "step": 60, "loss": 9.0},
            {"split": "val", "step": 100, "bits_per_token": 1.5}, {"split": "train", "step": 100, "loss": 8.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = SimpleNamespace(num_classes=6, num_tokens=4, start_symbol=8, generate=lambda *a, **k: None)
    monkeypatch.setattr(run, "seconds_per_call", lambda call, device: 0.5)
    monkeypatch.setattr(run, "save_prior_curves", lambda *a, **k: None)
    run._finish(tmp_path, model, run.RobotConfig(steps=100), {}, torch.device("cpu"))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary == {"step": 100, "split": "val", "bits_per_token": 1.5, "windows_per_s": 512.0}


# --------------------------------------------------------------------------------------------------
# Motion windows as images (daps/data/motion.py), with the data replaced by a few frames of one clip


def test_motion_windows_need_one_channel_before_the_data_are_read(monkeypatch):
    """``motion_data`` of ``image_shape = (2, 32, F)``: a UserError naming the expected ``(1, T, F)``, before any
    data are loaded; ``(1, 32, F)`` goes on to the loading. Fails on: only the feature count checked."""
    import daps.data.motion as dm
    from daps.config import DataConfig
    from daps.motion.features import NUM_FEATURES

    def load(*a, **k):
        raise LookupError("the data were read")

    monkeypatch.setattr(dm, "_cached", load)
    with pytest.raises(UserError, match=rf"\(1, T, {NUM_FEATURES}\)"):
        dm.motion_data(DataConfig(name="lafan1-h1", image_shape=(2, 32, NUM_FEATURES)))
    with pytest.raises(LookupError):
        dm.motion_data(DataConfig(name="lafan1-h1", image_shape=(1, 32, NUM_FEATURES)))


def _one_clip_motion(monkeypatch, num_frames: int = 20, window: int = 4, fps: float = 10.0):
    """``daps.data.motion.motion_data`` giving one clip ``walk1_subject1`` whose pelvis x is the frame index, raw
    features 0 and identity statistics; ``features_to_poses`` giving zero poses. Returns the clip's poses."""
    from types import SimpleNamespace

    import daps.data.motion as dm
    import daps.motion.features as features
    from daps.motion.dataset import Standardizer

    f = features.NUM_FEATURES
    poses = _still(num_frames)
    poses[:, 0] = np.arange(num_frames)
    motion = SimpleNamespace(poses={"walk1_subject1": poses}, features={"walk1_subject1": np.zeros((num_frames, f))},
                             window=window, fps=fps,
                             stats=Standardizer(np.zeros(f), np.ones(f), np.zeros(f, dtype=bool)))
    monkeypatch.setattr(dm, "motion_data", lambda data: motion)
    monkeypatch.setattr(features, "features_to_poses", lambda raw, xy, heading, fps: np.zeros((*raw.shape[:-1], 26)))
    return poses


class _Echo(torch.nn.Module):
    """A model whose reconstruction is its input."""

    def __init__(self) -> None:
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(()))

    def reconstruct(self, x, generator=None):
        from types import SimpleNamespace

        return SimpleNamespace(x_hat=x)


def test_reconstruct_clip_rounds_the_start_to_the_nearest_frame(monkeypatch):
    """At 10 fps with windows of 4 frames, ``--start 0.29`` is frame 3 (2.9 rounded, not cut to 2), and 0.5 s (5
    frames, 1.25 windows) are two windows: frames 3 to 10. Fails on: the start cut down, or the windows rounded
    down."""
    from daps.config import DataConfig
    from daps.data.motion import reconstruct_clip

    _one_clip_motion(monkeypatch)
    target, pred = reconstruct_clip(_Echo(), DataConfig(name="lafan1-h1"), "walk1_subject1", 0.29, 0.5)
    np.testing.assert_array_equal(target[:, 0], np.arange(3, 11))
    assert pred.shape == (8, 26)


def test_reconstruct_clip_refuses_a_start_before_the_clip(monkeypatch):
    """``--start -0.1`` (frame -1) is a UserError naming ``--start``, not frames counted from the clip's end. Fails
    on: only the frames left checked."""
    from daps.config import DataConfig
    from daps.data.motion import reconstruct_clip

    _one_clip_motion(monkeypatch)
    with pytest.raises(UserError, match="--start"):
        reconstruct_clip(_Echo(), DataConfig(name="lafan1-h1"), "walk1_subject1", -0.1, 0.5)


def test_motion_statistics_that_are_not_an_object_are_one_user_error(tmp_path):
    """``read_run_stats`` of a ``motion_stats.json`` holding a JSON list, or an object whose mean is one number: a
    UserError naming the file (not an AttributeError or IndexError from the reading). Fails on: only ValueError,
    KeyError and OSError turned into the one line."""
    import json

    from daps.data.motion import read_run_stats
    from daps.motion.features import FEATURE_VERSION

    path = tmp_path / "motion_stats.json"
    for record in ([1, 2], {"feature_version": FEATURE_VERSION, "mean": 0.0, "scale": 1.0, "near_constant": False}):
        path.write_text(json.dumps(record))
        with pytest.raises(UserError, match="not readable motion statistics"):
            read_run_stats(path)


# --------------------------------------------------------------------------------------------------
# The motion dataset (daps/motion/dataset.py): statistics, cache, windows


def test_standardization_needs_two_frames():
    """``fit_standardizer`` of one frame is a ValueError (one frame has no spread to divide by); two frames 0 and 2
    give mean 1 and scale 1 (the population standard deviation). Fails on: one frame accepted."""
    from daps.motion.dataset import fit_standardizer

    with pytest.raises(ValueError, match="N >= 2"):
        fit_standardizer(np.zeros((1, 3)))
    stats = fit_standardizer(np.array([[0.0], [2.0]]))
    assert stats.mean.tolist() == [1.0] and stats.scale.tolist() == [1.0]


def test_a_variance_at_the_threshold_is_scaled(monkeypatch):
    """A feature is near-constant only *below* :data:`NEAR_CONSTANT_VARIANCE`: with the threshold set to 1, frames
    0 and 2 (variance exactly 1) are scaled, a constant feature is not. Fails on: ``<=`` for ``<``."""
    import daps.motion.dataset as dataset

    monkeypatch.setattr(dataset, "NEAR_CONSTANT_VARIANCE", 1.0)
    stats = dataset.fit_standardizer(np.array([[0.0, 5.0], [2.0, 5.0]]))
    assert stats.near_constant.tolist() == [False, True]


def test_a_standardizer_refuses_a_scalar():
    """``normalize`` of a 0-d array or tensor is the one UserError about the last axis, not an IndexError. Fails on:
    the last axis read without checking there is one."""
    from daps.motion.dataset import Standardizer

    stats = Standardizer(np.zeros(3), np.ones(3), np.zeros(3, dtype=bool))
    for x in (np.array(1.0), torch.tensor(1.0)):
        with pytest.raises(UserError, match="last axis"):
            stats.normalize(x)


def test_a_zero_validation_stride_is_refused_before_the_clips_are_read(monkeypatch):
    """``load_motion_data(val_stride=0)`` is a UserError before any clip is read; ``val_stride=None`` (the training
    stride) goes on to read them. Fails on: only the training stride checked."""
    import daps.motion.dataset as dataset

    def read(*a, **k):
        raise LookupError("the clips were read")

    monkeypatch.setattr(dataset, "load_clip_features", read)
    with pytest.raises(UserError, match="strides >= 1"):
        dataset.load_motion_data(window=4, stride=1, val_stride=0)
    with pytest.raises(LookupError):
        dataset.load_motion_data(window=4, stride=1, val_stride=None)


def test_a_clip_of_one_frame_is_one_user_error(monkeypatch, tmp_path):
    """``load_clip_features`` of a source whose clip ``walk1_subject1`` has one frame: a UserError naming the clip,
    before any feature is computed. Fails on: only empty clips refused."""
    from types import SimpleNamespace

    import daps.motion.dataset as dataset

    monkeypatch.setattr(dataset, "load_h1", lambda data_dir, path=None: SimpleNamespace(path=tmp_path / "h1.xml"))
    monkeypatch.setattr(dataset, "feature_cache_path", lambda source, model: tmp_path / "none.npz")
    monkeypatch.setattr(dataset, "read_clips", lambda source: {"walk1_subject1": _still(1)})
    with pytest.raises(UserError, match="clip walk1_subject1 has fewer than 2 frames"):
        dataset.load_clip_features(source=tmp_path)


def test_a_feature_cache_whose_lengths_do_not_add_up_is_ignored(tmp_path):
    """``_read_cache`` of a cache whose clip lengths add up to 3 frames while it holds 4: ignored (None: rebuilt),
    not split into clips that leave a frame out. Fails on: the sum of the lengths not compared."""
    from daps.motion.dataset import _read_cache
    from daps.motion.features import NUM_FEATURES

    path = tmp_path / "cache.npz"
    np.savez(path, names=np.array(["a", "b"]), lengths=np.array([1, 2]), poses=np.zeros((4, 26)),
             features=np.zeros((4, NUM_FEATURES), np.float32))
    assert _read_cache(path) is None


def test_statistics_keep_the_feature_version_they_record_and_all_three_shapes_are_checked():
    """``Standardizer.from_arrays`` keeps a recorded ``feature_version`` 0 (so ``from_dict`` can refuse it), and
    ``from_dict`` refuses a record whose scale or near-constant flags have one feature too few, not only a short
    mean. Fails on: the recorded version replaced by the current one, or only the mean's shape checked."""
    from daps.motion.dataset import Standardizer
    from daps.motion.features import FEATURE_VERSION, NUM_FEATURES

    assert Standardizer.from_arrays({"mean": [0.0], "scale": [1.0], "near_constant": [False],
                                     "feature_version": 0}).feature_version == 0
    good = {"feature_version": FEATURE_VERSION, "mean": [0.0] * NUM_FEATURES, "scale": [1.0] * NUM_FEATURES,
            "near_constant": [False] * NUM_FEATURES}
    assert Standardizer.from_dict(good).mean.shape == (NUM_FEATURES,)
    for key in ("scale", "near_constant"):
        with pytest.raises(UserError, match="features"):
            Standardizer.from_dict({**good, key: good[key][:-1]})


def test_the_feature_cache_is_keyed_by_the_model_file(monkeypatch, tmp_path):
    """``feature_cache_path`` of the same source with two model files of different bytes: two cache files (features
    computed with another H1 are not reused); the same bytes: the same file. Fails on: the model left out of the
    key."""
    import daps.motion.dataset as dataset

    monkeypatch.setattr(dataset, "source_digest", lambda source: "source")
    a, b, c = tmp_path / "a.xml", tmp_path / "b.xml", tmp_path / "c.xml"
    a.write_text("<mujoco/>")
    b.write_text("<mujoco model='other'/>")
    c.write_text("<mujoco/>")
    assert dataset.feature_cache_path(tmp_path, a) != dataset.feature_cache_path(tmp_path, b)
    assert dataset.feature_cache_path(tmp_path, a) == dataset.feature_cache_path(tmp_path, c)


# --------------------------------------------------------------------------------------------------
# One's own sequences (daps/data/sequences.py)


def test_a_clip_of_booleans_is_refused(tmp_path):
    """``read_clips`` of a file whose train clip is a ``(frames, F)`` bool array: the one UserError that a clip is
    numbers (integers and floats are read). Fails on: bool taken as a kind of number."""
    from daps.data.sequences import read_clips

    path = tmp_path / "clips.npz"
    np.savez(path, **{"train/a": np.zeros((8, 2), dtype=bool), "test/b": np.zeros((8, 2))})
    with pytest.raises(UserError, match="a clip is"):
        read_clips(path)
    np.savez(path, **{"train/a": np.zeros((8, 2), dtype=np.int16), "test/b": np.zeros((8, 2))})
    assert read_clips(path)["train"]["a"].dtype == np.float64


def test_a_clip_holding_an_infinity_is_refused(tmp_path):
    """``read_clips`` of a test clip with one ``inf`` (not a NaN): the UserError naming NaN or infinite values.
    Fails on: only NaN looked for."""
    from daps.data.sequences import read_clips

    clip = np.zeros((8, 2))
    clip[3, 1] = np.inf
    path = tmp_path / "clips.npz"
    np.savez(path, **{"train/a": np.zeros((8, 2)), "test/b": clip})
    with pytest.raises(UserError, match=r"test/b.*NaN or infinite"):
        read_clips(path)


# --------------------------------------------------------------------------------------------------
# Evaluation's FID bookkeeping (daps/metrics/evaluate.py), a network of channel means standing in for Inception


class _Copy(torch.nn.Module):
    """A method whose reconstruction is its input."""

    final_beta, vocab_size = None, None

    def reconstruct(self, x, generator=None):
        from daps.methods.types import Reconstruction

        return Reconstruction(None, x, torch.zeros(x.shape[0]))


class _ChannelMeans(torch.nn.Module):
    """A stand-in FID network: the 3 channel means of the preprocessed images."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return x.mean((2, 3))


def test_fid_needs_two_rgb_images():
    """``evaluate`` with FID of one RGB image, or of two grey ones: a UserError each (a covariance needs two images;
    the network takes RGB). Fails on: one image accepted, or the channel check dropped."""
    from daps.data import TensorEvalSet
    from daps.metrics.evaluate import FIDSetup, evaluate

    fid = FIDSetup(_ChannelMeans(), "val-pairs")
    with pytest.raises(UserError, match="at least 2 images"):
        evaluate(_Copy(), TensorEvalSet(torch.rand(1, 3, 8, 8), 1), fid=fid)
    with pytest.raises(UserError, match="RGB"):
        evaluate(_Copy(), TensorEvalSet(torch.rand(2, 1, 8, 8), 2), fid=fid)


def test_fid_against_a_reference_names_the_file_not_its_folder():
    """``fid_protocol`` of a reference at ``/data/stats/cifar.npz`` is ``reference:cifar.npz`` (the file's name, the
    same on any machine). Fails on: the whole path recorded."""
    from daps.data import TensorEvalSet
    from daps.metrics.evaluate import FIDSetup, evaluate

    fid = FIDSetup(_ChannelMeans(), "reference", (np.zeros(3), np.eye(3)), "/data/stats/cifar.npz")
    out = evaluate(_Copy(), TensorEvalSet(torch.rand(4, 3, 8, 8), 2), fid=fid)
    assert out["fid_protocol"] == "reference:cifar.npz" and out["fid_num_images"] == 4


def test_reference_statistics_are_checked_by_shape_and_dataset(caplog):
    """``check_reference_matches``: statistics of ``(1, 32, 32)`` images for ``(3, 32, 32)`` ones are refused (not
    only height and width compared); ``cifar10`` statistics for ``cifar10-jpeg`` images pass without a warning (the
    same images), ``imagenet256`` ones of that shape with one. Fails on: the channels left out of the shape check,
    or a warning between the same images."""
    import logging
    from types import SimpleNamespace

    from daps.metrics.evaluate import check_reference_matches

    jpeg = SimpleNamespace(name="cifar10-jpeg", image_shape=(3, 32, 32))
    with pytest.raises(UserError, match="shape"):
        check_reference_matches("ref.npz", {"image_shape": [1, 32, 32]}, jpeg)
    with caplog.at_level(logging.WARNING, logger="daps.metrics.evaluate"):
        check_reference_matches("ref.npz", {"image_shape": [3, 32, 32], "dataset": "cifar10"}, jpeg)
        assert not caplog.records
        check_reference_matches("ref.npz", {"image_shape": [3, 32, 32], "dataset": "imagenet256"}, jpeg)
    assert "compares two datasets" in caplog.text


def test_fid_setup_of_no_protocol_and_of_missing_weights(tmp_path):
    """``fid_setup("none")`` is None (FID off); a weights path that does not exist is a FileNotFoundError, not FID
    silently skipped. Fails on: "none" refused as an unknown protocol, or a given path treated like no path."""
    from daps.metrics.evaluate import fid_setup

    assert fid_setup("none") is None
    with pytest.raises(FileNotFoundError):
        fid_setup("val-pairs", weights=tmp_path / "missing.pth")


# --------------------------------------------------------------------------------------------------
# The command line of codes and priors (daps/prior/cli.py), stopped at the first step after the checks under test


class _Reached(Exception):
    """Raised by a stand-in for the first step after the checks under test: the command got past them."""


def _reached(*args, **kwargs):
    raise _Reached


def test_a_prior_sample_grid_of_exactly_400_images_is_taken(monkeypatch, tmp_path, capsys):
    """``prior sample --n 40`` of a prior over 10 classes is 400 samples, one grid's worth (``MAX_GRID`` = 400): it
    goes on to load the tokenizer; ``--n 41`` (410) is refused in one line. Fails on: a full grid refused
    (``count >= MAX_GRID``)."""
    import daps.prior.cli as prior_cli
    import daps.prior.run as prior_run
    from daps.cli import main

    meta = {"class_names": [f"class {i}" for i in range(10)]}
    monkeypatch.setattr(prior_run, "load_prior", lambda *a, **k: (None, prior_run.PriorConfig(), meta))
    monkeypatch.setattr(prior_cli, "_tokenizer", _reached)
    with pytest.raises(_Reached):
        main(["prior", "sample", "PRIOR", "--n", "40", "--out", str(tmp_path / "g.png")])
    capsys.readouterr()
    assert main(["prior", "sample", "PRIOR", "--n", "41", "--out", str(tmp_path / "g.png")]) == 2
    assert "410 samples (41 for each of 10 classes) is more than one grid holds (400)" in capsys.readouterr().err


def test_decode_random_takes_up_to_400_codes(monkeypatch, tmp_path, capsys):
    """``decode-random --n 400`` (its documented most) goes on to load the tokenizer; ``--n 401`` is refused in one
    line. Fails on: the bound itself refused (``n < MAX_GRID``)."""
    import daps.hub as hub
    from daps.cli import main

    monkeypatch.setattr(hub, "open_model", _reached)
    with pytest.raises(_Reached):
        main(["decode-random", "RUN", "--n", "400", "--out", str(tmp_path / "g.png")])
    capsys.readouterr()
    assert main(["decode-random", "RUN", "--n", "401", "--out", str(tmp_path / "g.png")]) == 2
    assert "--n must be 1 to 400, got 401" in capsys.readouterr().err


@pytest.mark.parametrize("n, columns", [(3, 3), (25, 10)])
def test_decode_random_videos_are_as_wide_as_their_motions_up_to_ten(n, columns, monkeypatch, tmp_path):
    """``decode-random --n 3 --video`` of a motion tokenizer renders a grid of 3 views side by side (not 3 views and
    7 black tiles); 25 motions fill rows of 10. Fails on: always 10 columns."""
    from types import SimpleNamespace

    import daps.hub as hub
    import daps.metrics.classifier as classifier
    import daps.plots as plots
    import daps.prior.cli as prior_cli
    import daps.prior.scores as scores
    from daps.cli import main

    model = SimpleNamespace(vocab_size=8, config=SimpleNamespace(data=SimpleNamespace(name="lafan1-h1")))
    monkeypatch.setattr(hub, "open_model", lambda *a, **k: (model, {}))
    monkeypatch.setattr(scores, "uniform_codes", lambda m, count, g: torch.zeros(count, 4, dtype=torch.long))
    monkeypatch.setattr(scores, "decoded_images", lambda m, codes: torch.zeros(len(codes), 1, 8, 8))
    monkeypatch.setattr(plots, "save_image_grid", lambda *a, **k: None)
    monkeypatch.setattr(classifier, "classifier_for", lambda name: None)
    asked = []
    monkeypatch.setattr(prior_cli, "write_motion_video",
                        lambda tok, codes, video, cols, captions, what: asked.append((len(codes), cols, len(captions))))
    assert main(["decode-random", "RUN", "--n", str(n), "--out", str(tmp_path / "g.png"), "--video",
                 str(tmp_path / "g.mp4")]) == 0
    assert asked == [(n, columns, n)]


def test_prior_samples_are_not_written_over_the_training_codes_named_relatively(monkeypatch, tmp_path, capsys):
    """``prior sample --codes-out train.safetensors``, run in the folder of the prior's training codes
    ``/.../train.safetensors``: refused in one line, the file unchanged; ``--codes-out other.safetensors`` goes on.
    Fails on: the relative path compared with the training file's absolute path as written."""
    from safetensors.torch import save_file

    import daps.prior.cli as prior_cli
    import daps.prior.run as prior_run
    from daps.cli import main
    from daps.codes import HEADER_KEY

    train = tmp_path / "train.safetensors"
    save_file({"codes": torch.zeros(1, 1, 1, dtype=torch.long)}, str(train), metadata={HEADER_KEY: "{}"})
    before = train.read_bytes()
    meta = {"file": str(train), "class_names": ["a", "b"]}
    monkeypatch.setattr(prior_run, "load_prior", lambda *a, **k: (None, prior_run.PriorConfig(), meta))
    monkeypatch.setattr(prior_cli, "_tokenizer", _reached)
    monkeypatch.chdir(tmp_path)
    argv = ["prior", "sample", "PRIOR", "--out", "g.png", "--overwrite", "--codes-out"]
    capsys.readouterr()
    assert main([*argv, "train.safetensors"]) == 2
    assert "is a codes file this prior was trained on" in capsys.readouterr().err
    assert train.read_bytes() == before
    with pytest.raises(_Reached):
        main([*argv, "other.safetensors"])


# --------------------------------------------------------------------------------------------------
# The policy's command line (daps/robot/cli.py), its library calls replaced by stand-ins


def _robot_eval_asks(monkeypatch, capsys, *flags: str) -> dict | str:
    """``robot eval POLICY *flags``: the keywords it calls ``evaluate`` with, or the one-line error it stops on."""
    import daps.robot.evaluate as evaluate
    from daps.cli import main

    asked: dict = {}

    def record(policy_dir, motions, **kwargs):
        asked.update(kwargs, motions=motions)
        raise _Reached

    monkeypatch.setattr(evaluate, "evaluate", record)
    capsys.readouterr()
    try:
        assert main(["robot", "eval", "POLICY", *flags]) == 2
    except _Reached:
        return asked
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_robot_eval_counts_are_checked_against_their_documented_bounds(monkeypatch, capsys):
    """``robot eval``: one rollout tracks that one in physics (the default is 2, or ``--rollouts`` if fewer); one
    window per rollout, a kind given twice and more physics rollouts than rollouts (3 of 2) are refused in one line;
    2 of 2 pass. Fails on: a default of 2 physics rollouts whatever ``--rollouts``, one window taken, repeats not
    checked, or one physics rollout too many let through."""
    assert _robot_eval_asks(monkeypatch, capsys, "--rollouts", "1")["physics_rollouts"] == 1
    assert _robot_eval_asks(monkeypatch, capsys)["physics_rollouts"] == 2
    assert "--windows must be at least 2, got 1" in _robot_eval_asks(monkeypatch, capsys, "--windows", "1")
    assert _robot_eval_asks(monkeypatch, capsys, "--windows", "2")["windows"] == 2
    assert "a kind is repeated" in _robot_eval_asks(monkeypatch, capsys, "--motions", "walk,run,walk")
    assert "--physics-rollouts 3 is more than --rollouts 2" in _robot_eval_asks(
        monkeypatch, capsys, "--rollouts", "2", "--physics-rollouts", "3")
    assert _robot_eval_asks(monkeypatch, capsys, "--rollouts", "2", "--physics-rollouts", "2")["physics_rollouts"] == 2


@pytest.fixture
def robot_plan(monkeypatch, tmp_path, capsys):
    """``robot plan POLICY --motion walk --out OUT/a.mp4 *flags`` with the planner, the rollout and the renderer
    replaced: the ``(width, height)`` it renders at, or the one-line error it stops on."""
    from types import SimpleNamespace

    import numpy as np

    import daps.motion.h1 as h1
    import daps.motion.render as render
    import daps.robot.plan as plan
    from daps.cli import main
    from daps.data.motion import MOTION_TYPES

    planner = SimpleNamespace(class_names=list(MOTION_TYPES), cfg=SimpleNamespace(label_dropout=0.1), fps=30.0,
                              data_dir="", window=32, windows_for=lambda seconds: 1)
    rollout = SimpleNamespace(poses=np.zeros((1, 32, 26)), codes=torch.zeros(1, 1, 4, dtype=torch.long))
    monkeypatch.setattr(plan, "Planner", lambda *a, **k: planner)
    monkeypatch.setattr(plan, "plan_motion", lambda *a, **k: rollout)
    monkeypatch.setattr(plan, "describe", lambda *a, **k: {"requested": [[1.0, 0.0, 0.0]]})
    monkeypatch.setattr(h1, "load_h1", lambda *a, **k: None)
    sizes = []
    monkeypatch.setattr(render, "render_motion",
                        lambda h1, poses, out, fps, width, height, captions: sizes.append((width, height)))

    def run(*flags: str):
        capsys.readouterr()
        if main(["robot", "plan", "POLICY", "--motion", "walk", "--out", str(tmp_path / "a.mp4"), *flags]) == 0:
            return sizes.pop()
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        return err

    return run


def test_robot_plan_views_are_16_pixels_or_more_in_steps_of_16(robot_plan):
    """``robot plan --size``: 100 renders 96 x 96 (a multiple of 16, as video encoders want), 16 is taken, 15
    refused. Fails on: the size not rounded down, or sizes below 16 taken."""
    assert robot_plan("--size", "100") == (96, 96)
    assert robot_plan("--size", "16") == (16, 16)
    assert "--size must be 16 to" in robot_plan("--size", "15")


def test_robot_plan_refuses_what_cannot_be_planned(robot_plan, tmp_path):
    """``robot plan`` refuses, in one line each: ``--velocity`` and ``--velocity-schedule`` together, a ``--blend``
    of -1, ``--json`` over a JSON object that lacks a plan report's keys (a user's file, even with ``--overwrite``)
    and ``--physics`` with ``a_physics.mp4`` (the physics video next to ``a.mp4``) already there; a blend of 0 and
    an earlier plan report are taken. Fails on: the velocity pair let through, a blend of -1 taken, any JSON object
    taken as a plan report, or the physics video named ``a.mp4_physics.mp4``."""
    schedule = tmp_path / "schedule.txt"
    schedule.write_text("0 1 0 0\n")
    assert "not both" in robot_plan("--velocity", "1,0,0", "--velocity-schedule", str(schedule))
    assert "--blend must be >= 0, got -1" in robot_plan("--blend", "-1")
    assert robot_plan("--blend", "0") == (320, 320)
    report = tmp_path / "plan.json"
    report.write_text('{"motion": "walk", "seconds": 1, "other": 0}')
    assert "is not an earlier robot plan report" in robot_plan("--json", str(report), "--overwrite")
    report.write_text('{"motion": "walk", "seconds": 1, "requested": [], "achieved": []}')
    assert robot_plan("--json", str(report), "--overwrite") == (320, 320)
    (tmp_path / "a_physics.mp4").write_bytes(b"mine")
    assert "a_physics.mp4" in robot_plan("--physics")
    assert (tmp_path / "a_physics.mp4").read_bytes() == b"mine"


def test_track_eval_lists_only_the_jobs_that_trained_the_checkpoint(monkeypatch, capsys, tmp_path):
    """``robot track-eval --json`` of the checkpoint of update 10, in a run whose jobs started at updates 0, 10 and
    20: ``trained_by`` holds the job from 0 only (the job from 10 resumed from this checkpoint; it did not make it).
    Fails on: the job that started at the checkpoint counted."""
    import json
    from pathlib import Path
    from types import SimpleNamespace

    import daps.checkpoint as checkpoint
    import daps.provenance as provenance
    import daps.robot.tracker as tracker
    from daps.cli import main

    run = tmp_path / "tracker"
    ckpt = run / "checkpoints" / "step_00000010"
    cfg = SimpleNamespace(envs=4, horizon=8, reference="ground-truth")
    monkeypatch.setattr(tracker, "load_tracker", lambda path: (None, cfg, {"fps": 30}, {"val": []}))
    monkeypatch.setattr(tracker, "tracker_h1", lambda cfg, meta: None)
    monkeypatch.setattr(tracker, "evaluate_tracker", lambda *a, **k: {"survival_s": 1.0})
    monkeypatch.setattr(checkpoint, "resolve_checkpoint", lambda path, verify=True: ckpt)
    jobs = [{"from_step": step} for step in (0, 10, 20)]
    monkeypatch.setattr(provenance, "read_jobs", lambda folder: jobs if Path(folder) == run else [])
    capsys.readouterr()
    assert main(["robot", "track-eval", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["trained_by"] == [{"from_step": 0}]
    assert (result["update"], result["frames"]) == (10, 10 * 4 * 8)
