"""Every setting the training commands take is read.

``daps train`` refuses an override of a setting the run would not read (:func:`daps.config_io.ignored_settings`),
so that nothing a user asks for is silently ignored. This checks the other side, for every method at ``mnist`` and
for the decoders of the other presets (ResNet at ``cifar10``, transformer at ``lafan1-h1``): each setting of the
encoder, decoder, optimizer and method sections that is *not* refused changes what training computes, the weights
after a few steps from the same seed (or their shapes). A setting found taken but without effect is one
``ignored_settings`` forgot (as ``decoder.embed_dim`` of the VQ-VAEs' MLP decoder was). Settings read elsewhere
than in the step are listed with the test that covers them.

The same holds for the other commands that train (``daps prior train``, ``daps robot train``, ``daps robot
track-train``), judged by what their runs write: every ``key=value`` setting they do not refuse changes the
weights, the metrics rows, the summary or the checkpoints kept.

Negative controls: remove a key from a method's ``ignores`` (e.g. vqvae's ``vq.ema_decay``) and its case fails; the
other commands' tests name theirs.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

from daps.config import validate
from daps.config_io import _leaf_fields, ignored_settings
from daps.errors import UserError
from daps.methods import METHODS, build_method
from daps.optim import Optimizers
from daps.presets import configured

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = [
    "encoder.width=16", "encoder.num_heads=2", "encoder.vocab_size=16", "encoder.num_tokens=4",
    "decoder.embed_dim=8", "decoder.hidden=16,16", "decoder.fsq_token_dim=8", "decoder.resnet_width=8",
    "decoder.resnet_blocks=1", "decoder.transformer_layers=1", "daps.num_samples=4", "reinforce.num_samples=4",
    "relaxed.num_rao_samples=3", "fsq.levels=4,3", "vae.hidden=16", "train.steps=8",
    "daps.init_eta=1.0",  # from the paper's eta = 100 the ESS target moves eta below float resolution in a few steps
    "vq.dead_code_threshold=0",  # 16 vectors a batch for 16 codes: restarts would overwrite the EMA every step
]
SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 16, 16), "lafan1-h1": (1, 32, 86)}
OTHER_SHAPE = {"cifar10": ["data.image_shape=3,16,16"], "lafan1-h1": []}

READ_ELSEWHERE = {
    "optim.lr_schedule": "the training loop sets each step's rate (tests/test_known_answers_3.py)",
    "optim.lr_final": "the training loop sets each step's rate (tests/test_known_answers_3.py)",
    "encoder.share_prefixes": "a speed option: the same update (tests/test_shared_prefixes.py)",
    "daps.one_pass": "a speed option: the same update (tests/test_one_pass.py)",
    "reinforce.one_pass": "a speed option: the same update (tests/test_one_pass.py)",
    "decoder.min_variance": "bites only once the learned variance leaves the range (tests/test_known_answers_10.py)",
    "ppo.kl_target": "adapts the KL coefficient between epochs (tests/test_policy_gradient.py)",
    "ppo.kl_scale": "adapts the KL coefficient between epochs (tests/test_policy_gradient.py)",
    "ppo.min_kl_coeff": "bounds the adapted KL coefficient (tests/test_policy_gradient.py)",
    "ppo.max_kl_coeff": "bounds the adapted KL coefficient (tests/test_policy_gradient.py)",
}

CASES = [*(("mnist", m) for m in sorted(METHODS)),
         *(("cifar10", m) for m in ("daps", "vqvae", "fsq", "gumbel")),
         *(("lafan1-h1", m) for m in ("daps", "vqvae", "fsq"))]


def _weights_after_steps(cfg, preset: str) -> dict[str, torch.Tensor]:
    """The state after 3 training steps (indices 1-3 of 8) from seed 0 on fixed inputs."""
    shape = SHAPES[preset]
    torch.manual_seed(0)
    model = build_method(cfg, shape)
    model.train()
    optimizers = Optimizers(model, model.optimizer_specs(cfg.optim.lr, cfg.optim.grad_clip), cfg.optim.weight_decay)
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(4, *shape, generator=g) > 0.8).float() if preset == "mnist" else torch.randn(4, *shape,
                                                                                                  generator=g)
    generator = torch.Generator().manual_seed(2)
    for step in (1, 2, 3):
        out = model(x, step, generator=generator)
        optimizers.zero_grad()
        out.loss.backward()
        optimizers.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


def _candidates(value, key: str) -> list:
    """Other values of a setting to try, nearest first (a bool's other value, integers up and down, floats scaled)."""
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value * 2, value + 1, value - 1] if key.endswith("num_tokens") else [value + 1, value * 2, value - 1]
    if isinstance(value, float):
        return [value * 0.5, value * 2, value * 10, value * 0.1] if value else [0.1, 1.0, 10.0]
    return []  # strings (kinds, choices) and tuples: the kinds are what ignored_settings reads, tested there


def _unread(keys: dict[str, list], changes) -> tuple[list[str], int]:
    """Of the settings ``keys`` (each with other values to try, nearest first), those that ``changes(key, value)``
    finds without effect at every valid value (UserError: not a valid value here, such as a width the heads do not
    divide), and how many settings had a valid other value."""
    unread, tried = [], 0
    for key, candidates in keys.items():
        valid = 0
        for candidate in candidates:
            try:
                changed = changes(key, candidate)
            except UserError:
                continue
            valid += 1
            if changed:
                break
        else:
            if valid:
                unread.append(key)
        tried += valid > 0
    return unread, tried


@pytest.mark.parametrize(("preset", "method"), CASES, ids=[f"{p}-{m}" for p, m in CASES])
def test_every_setting_daps_train_takes_changes_the_training(preset, method):
    base = configured(preset, method, [*TINY, *OTHER_SHAPE.get(preset, [])])
    reference = _weights_after_steps(base, preset)
    ignored = ignored_settings(base)
    sections = ("encoder", "decoder", "optim", base.options.section)
    keys = {key: _candidates(getattr(owner, field.name), key) for key, (owner, field) in _leaf_fields(base).items()
            if key not in ignored and key not in READ_ELSEWHERE and key.split(".")[0] in sections}

    def changes(key: str, value) -> bool:
        cfg = copy.deepcopy(base)
        target, leaf = _leaf_fields(cfg)[key]  # the copy's
        setattr(target, leaf.name, value)
        validate(cfg)
        return not _same(reference, _weights_after_steps(cfg, preset))

    unread, tried = _unread(keys, changes)
    assert tried >= 5, tried  # the loop ran: most settings had a valid other value
    assert not unread, (f"{method} at {preset} takes these settings but training did not change with any other "
                        f"value: {unread}; add them to ignored_settings (MethodSpec.ignores, or the settings' "
                        "unread(cfg)) or to READ_ELSEWHERE with the test that covers them")


# --------------------------------------------------------------------------- the prior over codes


PRIOR_BASE = dict(width=16, num_heads=2, num_layers=1, mlp_ratio=2, steps=4, batch_size=8, lr=1e-2,
                  log_every=1, eval_every=4, ckpt_every=2, keep_checkpoints=2, val_fraction=0.25, progress=False)
"""Tiny; rows every step, checkpoints at 2 and 4 (a checkpoint ends a logging window, so ckpt_every=1 would
hide log_every)."""
PRIOR_CHOICES = {"source": ["mask"]}  # the string settings' other values (``kind`` is the command's --kind)
RUN_READ_ELSEWHERE = {
    "progress": "what a run prints, not what it writes "
                "(tests/test_prior.py::test_progress_in_a_file_is_a_line_per_logged_row)",
    "reference": "the tracker's: chooses how the tokenizer's references are made; the tracker's test gives them "
                 "directly (tests/test_tracker.py::test_track_train_decodes_references_from_a_tokenizer makes both)",
}
"""Settings of the prior, policy and tracker runs that change no file of the run, with the test that covers them."""


def _run_outcome(run) -> tuple:
    """What a prior's, policy's or tracker's run wrote, less its timings: the final weights, the metrics rows, the
    summary and the checkpoints kept."""
    import json

    from safetensors.torch import load_file

    from daps.plots import read_metrics

    def untimed(row: dict) -> dict:
        return {k: v for k, v in row.items() if not k.endswith("_per_s")}

    latest = run / "checkpoints" / (run / "checkpoints/latest").read_text().strip()
    weights = load_file(str(latest / "model.safetensors"))
    rows = [untimed(row) for row in read_metrics(run / "metrics.jsonl")]
    summary = untimed(json.loads((run / "summary.json").read_text()))
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    return weights, rows, summary, kept


def _same_outcome(a: tuple, b: tuple) -> bool:
    return _same(a[0], b[0]) and a[1:] == b[1:]


@pytest.mark.parametrize("kind", ["ar", "dfm"])
def test_every_setting_prior_train_takes_changes_the_run(kind, tmp_path):
    """As above for ``daps prior train``: each ``key=value`` setting that :func:`daps.prior.run.check_settings_read`
    does not refuse for this kind changes what the run writes (weights, metrics rows, summary or the checkpoints it
    keeps) for some other valid value. Negative control: let an ``ar`` prior take ``source`` (drop it from
    ``DFM_ONLY``) and its case fails."""

    from daps.codes import CodeSet, save_codes
    from daps.prior.run import PriorConfig, check_settings_read, train_prior

    g = torch.Generator().manual_seed(0)
    meta = {"format": 1, "vocab_size": 8, "num_tokens": 4, "class_names": ["a", "b", "c"], "model_sha256": "x"}
    codes = CodeSet(torch.randint(8, (40, 2, 4), generator=g), torch.arange(40) % 3, meta)
    save_codes(codes, tmp_path / "codes.safetensors")
    base = PriorConfig(kind=kind, codes=str(tmp_path / "codes.safetensors"), **PRIOR_BASE)

    def refused(name: str) -> bool:
        try:
            check_settings_read(base, {name})
        except UserError:
            return True
        return False

    unread, tried = _unread_settings(base, train_prior, tmp_path, refused, PRIOR_CHOICES)
    assert tried >= 10, tried
    assert not unread, (f"a {kind} prior takes these settings but its run did not change with any other value: "
                        f"{unread}; refuse them in check_settings_read or list them in RUN_READ_ELSEWHERE")


def _unread_settings(base, train, folder, refused=lambda name: False, choices=None) -> tuple[list[str], int]:
    """:func:`_unread` over the ``key=value`` settings of the flat settings dataclass ``base`` (all but the
    command's own arguments, those ``refused`` and those RUN_READ_ELSEWHERE), judged by what ``train(cfg)`` writes
    into a new run folder in ``folder`` against what it writes for ``base``."""
    import dataclasses
    import itertools

    from daps.prior.run import FLAG_SETTINGS

    runs = itertools.count()

    def outcome(cfg) -> tuple:
        return _run_outcome(train(dataclasses.replace(cfg, out_dir=str(folder / f"run{next(runs)}"))))

    reference = outcome(base)
    keys = {f.name: (choices or {}).get(f.name) or _candidates(getattr(base, f.name), f.name)
            for f in dataclasses.fields(base)
            if f.name not in FLAG_SETTINGS and f.name not in RUN_READ_ELSEWHERE and not refused(f.name)}

    def changes(name: str, value) -> bool:
        cfg = dataclasses.replace(base, **{name: value})
        cfg.validate()
        return not _same_outcome(reference, outcome(cfg))

    return _unread(keys, changes)


# --------------------------------------------------------------------------- the robot's command policy


REAL_DIR = os.environ.get("DAPS_DATA_DIR")  # read at import: the offline fixture of other modules hides it
POLICY_BASE = dict(width=16, num_heads=2, num_layers=1, mlp_ratio=2, steps=4, batch_size=8, lr=1e-2, log_every=1,
                   eval_every=4, ckpt_every=2, keep_checkpoints=2, stride=16, samples=1, progress=False)


def test_every_setting_robot_train_takes_changes_the_run(tmp_path, monkeypatch):
    """As above for ``daps robot train`` (the command policy over a motion tokenizer's codes): each ``key=value``
    setting changes what the run writes for some other valid value (``samples``, refused for a quantizer's codes, is
    read here: the tokenizer is a DAPS one). Negative control: make the training loop drop ``prev_dropout`` and the
    test fails."""
    if not REAL_DIR:
        pytest.skip("DAPS_DATA_DIR not set (reads the real LAFAN1 H1 clips)")

    from test_robot import TINY_TOKENIZER

    import daps.robot.run
    from daps.cli import main
    from daps.robot.run import RobotConfig, encode_commands, train_policy

    tokenizer = tmp_path / "tokenizer"
    assert main(["train", "--preset", "lafan1-h1", *TINY_TOKENIZER, f"data.data_dir={REAL_DIR}",
                 f"train.out_dir={tokenizer}"]) == 0
    # each run encodes the clips again: the settings encoding reads give the same examples (were it to read
    # another, that setting would look unread here and the test would fail, not pass)
    encoded: dict[tuple, tuple] = {}

    def encode_once(cfg: RobotConfig, device):
        key = (cfg.stride, cfg.samples, cfg.seed)
        if key not in encoded:
            encoded[key] = encode_commands(cfg, device)
        return encoded[key]

    monkeypatch.setattr(daps.robot.run, "encode_commands", encode_once)
    base = RobotConfig(tokenizer=str(tokenizer), **POLICY_BASE)
    unread, tried = _unread_settings(base, train_policy, tmp_path)
    assert tried >= 14, tried
    assert not unread, (f"the policy takes these settings but its run did not change with any other value: "
                        f"{unread}; refuse them or list them in RUN_READ_ELSEWHERE")


# --------------------------------------------------------------------------- the robot's tracker


TRACKER_BASE = dict(envs=2, horizon=8, frames=48, epochs=2, minibatch=8, hidden=16, code_dim=4, eval_every=2,
                    ckpt_every=2, keep_checkpoints=2, episode_seconds=0.5, progress=False)
"""Three updates of 2 x 8 simulated frames; episodes end within a rollout by the time limit (15 frames) and by
falling behind the drifting reference (0.3 m at about 15 frames), so both settings bite."""
TRACKER_CHOICES = {"actor_sees_reference": [True]}


def _drifting_references(h1, frames: int = 40, window: int = 8, num_tokens: int = 4):
    """The H1 standing in its default pose while the reference's pelvis moves 2 cm forward per frame; codes 0..2 in
    turn (so that the code embedding is used)."""
    import numpy as np

    from daps.robot.tracker import References, end_points

    poses = np.zeros((frames, 26))
    poses[:, 2], poses[:, 3] = 1.044, 1.0
    poses[:, 0] = 0.02 * np.arange(frames)
    codes = (np.arange(frames // window * num_tokens).reshape(-1, num_tokens) % 3).astype(np.int64)
    return References(["drift"], [poses], [np.zeros((frames, 25))], [end_points(h1, poses)], [codes], window)


def test_every_setting_track_train_takes_changes_the_run(tmp_path):
    """As above for ``daps robot track-train`` (PPO in MuJoCo, on hand-made references): each ``key=value`` setting
    changes what the run writes (weights, metrics rows, summary, checkpoints) for some other valid value.
    Negative control: make the environments ignore ``action_clip`` and the test fails."""
    if not REAL_DIR:
        pytest.skip("DAPS_DATA_DIR not set (reads the H1 model)")

    from daps.motion.h1 import load_h1
    from daps.robot.tracker import TrackerConfig, train_tracker

    h1 = load_h1(REAL_DIR)
    refs = _drifting_references(h1)
    meta = {"num_tokens": 4, "vocab_size": 3, "fps": 30.0, "window": 8, "data_dir": REAL_DIR}

    def train(cfg: TrackerConfig):
        return train_tracker(cfg, references=({"train": refs, "val": refs}, meta), h1=h1)

    unread, tried = _unread_settings(TrackerConfig(**TRACKER_BASE), train, tmp_path, choices=TRACKER_CHOICES)
    assert tried >= 20, tried
    assert not unread, (f"the tracker takes these settings but its run did not change with any other value: "
                        f"{unread}; refuse them or list them in RUN_READ_ELSEWHERE")
