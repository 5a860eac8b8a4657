"""Tests for daps.config: overrides, validation, (de)serialization and the presets."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from daps.config import Config, ScheduleConfig, validate
from daps.config_io import config_from_dict, config_to_dict, parse_overrides
from daps.methods import METHODS, build_method
from daps.methods.daps import DAPSConfig
from daps.presets import PRESETS, get_preset

ALL_METHODS = tuple(METHODS)
AR_METHODS = tuple(name for name, spec in METHODS.items() if spec.encoder == "autoregressive")

pytestmark = pytest.mark.usefixtures("offline")


def leaf_keys(cfg) -> dict[str, object]:
    """Dotted key -> value of every leaf of a config (independent re-implementation for the tests)."""
    out = {}
    for f in dataclasses.fields(cfg):
        value, name = getattr(cfg, f.name), f.name
        if isinstance(cfg, Config) and name == "version":
            continue  # not a setting
        if isinstance(cfg, Config) and name == "options":
            name = value.section  # the method's settings go by their section name
        if dataclasses.is_dataclass(value):
            out.update({f"{name}.{k}": v for k, v in leaf_keys(value).items()})
        else:
            out[name] = value
    return out


# --------------------------------------------------------------------------------------------------
# parse_overrides: casting


def test_cast_int_float_bool_str_and_dotted_keys():
    cfg = get_preset("mnist")
    out = parse_overrides(
        cfg,
        [
            "train.steps=1000",
            "train.batch_size=1_024",
            "optim.lr=1e-3",
            "optim.weight_decay=0",
            "train.progress=false",
            "data.download=no",
            "encoder.mask_token0=TRUE",
            "data.name=mnist5k",
            "daps.beta.init=0.25",  # two levels of nesting
            "daps.beta.kind=cosine",
        ],
    )
    assert out is cfg  # in place
    assert cfg.train.steps == 1000 and type(cfg.train.steps) is int
    assert cfg.train.batch_size == 1024 and type(cfg.train.batch_size) is int
    assert cfg.optim.lr == 1e-3 and type(cfg.optim.lr) is float
    assert cfg.optim.weight_decay == 0.0 and type(cfg.optim.weight_decay) is float
    assert cfg.train.progress is False and cfg.data.download is False and cfg.encoder.mask_token0 is True
    assert cfg.data.name == "mnist5k"
    assert cfg.daps.beta.init == 0.25 and cfg.daps.beta.kind == "cosine"
    # untouched values keep the preset's
    assert cfg.daps.beta.end == 0.01 and cfg.encoder.width == 64


@pytest.mark.parametrize("text", ["1", "true", "True", "yes", "on"])
def test_cast_bool_true(text):
    assert parse_overrides(get_preset("mnist"), [f"data.download={text}"]).data.download is True


@pytest.mark.parametrize("text", ["0", "false", "FALSE", "no", "off"])
def test_cast_bool_false(text):
    assert parse_overrides(get_preset("mnist"), [f"data.download={text}"]).data.download is False


@pytest.mark.parametrize(
    "text, expected",
    [("32,64", (32, 64)), ("(32, 64)", (32, 64)), ("[8,16,32]", (8, 16, 32)), ("128", (128,)), (" 4 , 5 ", (4, 5))],
)
def test_cast_tuple(text, expected):
    cfg = parse_overrides(get_preset("mnist"), [f"decoder.hidden={text}"])
    assert cfg.decoder.hidden == expected
    assert type(cfg.decoder.hidden) is tuple and all(type(v) is int for v in cfg.decoder.hidden)


def test_cast_tuple_image_shape_and_whitespace_around_key():
    cfg = parse_overrides(get_preset("mnist"), [" data.image_shape = 1,28,28 "])
    assert cfg.data.image_shape == (1, 28, 28)


def test_later_override_wins_and_value_may_contain_equals():
    cfg = parse_overrides(get_preset("mnist"), ["train.steps=5", "train.steps=7", "train.out_dir=runs/a=b"])
    assert cfg.train.steps == 7
    assert cfg.train.out_dir == "runs/a=b"


def test_empty_string_value():
    cfg = parse_overrides(get_preset("mnist"), ["data.data_dir=/x", "data.data_dir="])
    assert cfg.data.data_dir == ""


def test_every_leaf_key_round_trips_through_its_string():
    """Setting every key to str(its current value) is accepted and changes nothing."""
    ref = get_preset("mnist")
    items = [f"{k}={v}" for k, v in leaf_keys(ref).items()]
    cfg = parse_overrides(get_preset("mnist"), items)
    assert cfg == ref
    assert len(items) > 30  # all nested sections were walked


# --------------------------------------------------------------------------------------------------
# parse_overrides: errors


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ValueError) as ei:
        parse_overrides(get_preset("mnist"), ["train.stepz=5"])
    msg = str(ei.value)
    assert "train.stepz" in msg and "valid keys" in msg
    for key in leaf_keys(get_preset("mnist")):
        assert key in msg
    assert "\n" not in msg


@pytest.mark.parametrize("item", ["train", "daps.beta=1", "encoder=3", "nope=1"])
def test_section_names_and_unknown_top_level_keys_are_rejected(item):
    with pytest.raises(ValueError, match="valid keys|key=value"):
        parse_overrides(get_preset("mnist"), [item])


@pytest.mark.parametrize("item", ["train.steps", "=5", " =5", ""])
def test_malformed_override(item):
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(get_preset("mnist"), [item])


@pytest.mark.parametrize(
    "item, pattern",
    [
        ("train.steps=abc", r"train\.steps: expected an integer, got 'abc'"),
        ("train.steps=1.5", r"train\.steps: expected an integer"),
        ("optim.lr=fast", r"optim\.lr: expected a number"),
        ("data.download=maybe", r"data\.download: expected a boolean"),
        ("decoder.hidden=64,x", r"decoder\.hidden: expected an integer"),
    ],
)
def test_bad_types(item, pattern):
    with pytest.raises(ValueError, match=pattern):
        parse_overrides(get_preset("mnist"), [item])


@pytest.mark.parametrize(
    "item, key",
    [
        ("train.steps=-1", "train.steps"),
        ("train.steps=0", "train.steps"),
        ("train.batch_size=0", "train.batch_size"),
        ("train.eval_batch_size=-3", "train.eval_batch_size"),
        ("train.log_every=0", "train.log_every"),
        ("train.eval_every=0", "train.eval_every"),
        ("train.ckpt_every=-5", "train.ckpt_every"),
        ("daps.num_samples=0", "daps.num_samples"),
        ("daps.init_eta=0", "daps.init_eta"),
        ("daps.init_eta=-1.5", "daps.init_eta"),
        ("encoder.num_tokens=0", "encoder.num_tokens"),
        ("encoder.vocab_size=0", "encoder.vocab_size"),
        ("encoder.width=-64", "encoder.width"),
        ("encoder.num_layers=0", "encoder.num_layers"),
        ("optim.lr=0", "optim.lr"),
        ("optim.lr=-1e-3", "optim.lr"),
        ("daps.ess_target=1.01", "daps.ess_target"),
        ("daps.ess_target=0", "daps.ess_target"),
        ("daps.ess_target=-0.3", "daps.ess_target"),
        ("daps.ess_target=nan", "daps.ess_target"),
        ("encoder.width=66", "encoder.width"),  # 66 is not divisible by the 4 heads
        ("encoder.num_heads=3", "encoder.width"),
        ("daps.beta.kind=linear", "daps.beta.kind"),
        ("daps.baseline=median", "daps.baseline"),
        ("method=vqvae", "vqvae"),
    ],
)
def test_bad_values_rejected_with_the_key_named(item, key):
    with pytest.raises(ValueError) as ei:
        parse_overrides(get_preset("mnist"), [item])
    assert key in str(ei.value)


def test_boundary_values_accepted():
    cfg = parse_overrides(
        get_preset("mnist"),
        ["daps.ess_target=1", "train.steps=1", "encoder.width=8", "encoder.num_heads=8", "daps.beta.kind=constant"],
    )
    assert cfg.daps.ess_target == 1.0 and cfg.train.steps == 1


def test_validate_runs_without_overrides():
    cfg = get_preset("mnist")
    cfg.train.steps = -1
    with pytest.raises(ValueError, match="train.steps"):
        parse_overrides(cfg, [])
    with pytest.raises(ValueError, match="train.steps"):
        validate(cfg)


def test_zero_heads_rejected_with_value_error():
    with pytest.raises(ValueError, match="encoder.num_heads"):
        parse_overrides(get_preset("mnist"), ["encoder.num_heads=0"])


@pytest.mark.parametrize(
    "item",
    [
        "encoder.num_heads=-2",
        "optim.lr=nan",
        "daps.init_eta=nan",
        "train.eval_examples=-5",
        "train.keep_checkpoints=-1",
    ],
)
def test_more_invalid_values_rejected(item):
    with pytest.raises(ValueError):
        parse_overrides(get_preset("mnist"), [item])


# --------------------------------------------------------------------------------------------------
# (de)serialization


def test_config_dict_round_trip():
    cfg = parse_overrides(
        get_preset("mnist"),
        ["decoder.hidden=8,16,32", "daps.beta.kind=cosine", "daps.beta.end=0.2", "train.progress=false"],
    )
    d = config_to_dict(cfg)
    assert isinstance(d["daps"]["beta"], dict) and d["daps"]["beta"]["end"] == 0.2
    back = config_from_dict(d)
    assert back == cfg and back is not cfg
    assert isinstance(back.daps, DAPSConfig) and isinstance(back.daps.beta, ScheduleConfig)
    assert config_to_dict(back) == d


def test_config_json_round_trip_restores_tuples():
    cfg = parse_overrides(get_preset("mnist"), ["decoder.hidden=8,16", "data.image_shape=1,28,28"])
    back = config_from_dict(json.loads(json.dumps(config_to_dict(cfg))))
    assert back == cfg
    assert type(back.decoder.hidden) is tuple and type(back.data.image_shape) is tuple


def test_config_from_partial_dict_uses_defaults():
    back = config_from_dict({"train": {"steps": 12}, "daps": {"beta": {"init": 0.7}}})
    expected = Config()
    expected.train.steps = 12
    expected.daps.beta.init = 0.7
    assert back == expected


# --------------------------------------------------------------------------------------------------
# presets


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset 'nope'; choose one of: .*mnist"):
        get_preset("nope")


def test_get_preset_returns_fresh_configs():
    a, b = get_preset("mnist"), get_preset("mnist")
    assert a == b and a is not b
    a.train.steps = 3
    a.daps.beta.init = 0.9
    assert b.train.steps != 3 and b.daps.beta.init != 0.9
    assert get_preset("mnist").train.steps != 3


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_a_working_model(name):
    cfg = get_preset(name)
    assert cfg.preset == name
    validate(cfg)
    assert (PRESETS[name].__doc__ or "").strip(), "a preset needs a docstring (daps presets prints it)"
    torch.manual_seed(0)
    model = build_method(cfg, tuple(cfg.data.image_shape))
    assert sum(p.numel() for p in model.parameters()) > 0
    x = (torch.rand(1, *cfg.data.image_shape) > 0.5).float()
    model.eval()
    with torch.no_grad():
        z = model.encode(x, torch.Generator().manual_seed(0))
        x_hat = model.decode(z)
    assert z.shape == (1, cfg.encoder.num_tokens)
    assert x_hat.shape == (1, *cfg.data.image_shape)


def test_mnist_preset_has_the_spec_values():
    cfg = get_preset("mnist")
    assert cfg.method == "daps" and cfg.data.name == "mnist" and tuple(cfg.data.image_shape) == (1, 28, 28)
    assert cfg.train.batch_size == 256
    assert cfg.daps.num_samples == 8
    assert cfg.optim.lr == 3e-4
    assert cfg.optim.weight_decay == 1e-4
    assert cfg.daps.ess_target == 0.33
    assert cfg.daps.beta.kind == "exp_decay" and cfg.daps.beta.init == 0.5 and cfg.daps.beta.end == 0.01
    assert cfg.daps.init_eta == 100.0 and cfg.daps.eta_lr == 1e-3
    e = cfg.encoder
    assert (e.num_tokens, e.vocab_size, e.width, e.num_layers, e.num_heads) == (8, 256, 64, 1, 4)


def test_mnist_preset_parameter_counts_match_the_original():
    cfg = get_preset("mnist")
    model = build_method(cfg, tuple(cfg.data.image_shape))
    assert sum(p.numel() for p in model.encoder.parameters()) == 156_480
    assert sum(p.numel() for p in model.decoder.parameters()) == 267_344
    # plus the scalar log eta, and nothing else
    assert sum(p.numel() for p in model.parameters()) == 156_480 + 267_344 + 1


@pytest.mark.parametrize("name", ["cifar10", "imagenet256"])
@pytest.mark.parametrize("method", ALL_METHODS)
def test_natural_image_presets_exist_for_every_method_but_the_mnist_only_vae(name, method):
    if method == "vae":
        with pytest.raises(ValueError, match="defined for the presets mnist, mnist5k-demo only"):
            get_preset(name, method)
        return
    cfg = get_preset(name, method)
    validate(cfg)
    assert cfg.method == method and cfg.decoder.kind == "resnet" and cfg.encoder.width == 128
    assert config_from_dict(json.loads(json.dumps(config_to_dict(cfg)))) == cfg
    ar = method in AR_METHODS
    layers = {"cifar10": (2, 4) if ar else (4, 6), "imagenet256": (2, 4) if ar else (6, 4)}[name]
    assert (cfg.encoder.num_layers, cfg.encoder.mlp_ratio) == layers  # original: configs/nn/*_networks.yaml


def test_cifar10_and_imagenet256_presets_have_the_spec_values():
    c = get_preset("cifar10")
    assert (c.data.name, tuple(c.data.image_shape), c.train.batch_size, c.train.steps) == (
        "cifar10",
        (3, 32, 32),
        256,
        250_000,
    )
    assert (c.encoder.num_tokens, c.encoder.vocab_size, c.decoder.embed_dim) == (64, 512, 128)
    assert (c.daps.ess_target, c.daps.beta.init, c.daps.beta.end, c.daps.init_eta) == (0.33, 6.0, 0.01, 100.0)
    assert (c.decoder.variance_clip, c.decoder.min_variance, c.decoder.max_variance) == ("paper", 0.01, 1.0)
    assert get_preset("cifar10", "dapsna").daps.beta.end == 1.0
    g = get_preset("cifar10", "gumbel")
    assert (g.optim.lr, g.optim.lr_schedule, g.relaxed.beta.init, g.relaxed.temperature.kind) == (
        1e-4,
        "cosine",
        6.0,
        "constant",
    )
    r = get_preset("cifar10", "grmck")
    assert (r.relaxed.beta.init, r.relaxed.temperature.end, r.relaxed.num_rao_samples) == (3.0, 0.75, 100)
    assert get_preset("cifar10", "fsq").fsq.levels == (8, 8, 8) and get_preset("cifar10", "fsq").decoder.fsq_ratio == 2
    p = get_preset("cifar10", "ppo")
    assert (p.optim.lr, p.ppo.kl_target, p.ppo.beta.kind, p.ppo.beta.init) == (1e-4, 0.025, "constant", 0.01)

    i = get_preset("imagenet256")
    assert (i.data.name, tuple(i.data.image_shape), i.train.batch_size, i.train.steps) == (
        "imagenet256",
        (3, 256, 256),
        64,
        300_000,
    )
    assert (i.encoder.num_tokens, i.encoder.vocab_size, i.data.num_workers) == (1024, 1024, 8)
    assert (i.daps.ess_target, i.daps.beta.init, i.daps.beta.end) == (0.25, 50.0, 1.0)
    assert get_preset("imagenet256", "grmck").relaxed.num_rao_samples == 10
    assert get_preset("imagenet256", "fsq").fsq.levels == (8, 5, 5, 5)
    assert get_preset("imagenet256", "fsq").decoder.fsq_ratio == 4


@pytest.mark.parametrize("name, decoder_params", [("cifar10", 257_958), ("imagenet256", 330_198)])
def test_natural_image_decoder_parameter_counts_match_the_original(name, decoder_params):
    cfg = get_preset(name)
    model = build_method(cfg, tuple(cfg.data.image_shape))
    assert sum(p.numel() for p in model.decoder.parameters()) == decoder_params  # as the original's


def test_an_unknown_key_is_answered_with_the_nearest_known_one_before_the_whole_list():
    """A typo's message names the key meant before the list of ~70 keys; a name near nothing gets no guess."""
    from daps.errors import did_you_mean

    keys = leaf_keys(get_preset("mnist"))
    assert did_you_mean("train.stepz", keys) == " (did you mean train.steps?)"  # not train.seed: same section first
    assert did_you_mean("trian.steps", keys) == " (did you mean train.steps?)"  # no such section: whole keys
    assert did_you_mean("daps.beta.intt", keys) == " (did you mean daps.beta.init?)"
    assert did_you_mean("train.foo", keys) == ""
    assert did_you_mean("optim.steps", keys) == " (did you mean train.steps?)"  # the right name, the wrong section
    assert did_you_mean("daps.lr", keys) == " (did you mean optim.lr?)"
    with pytest.raises(ValueError) as ei:
        parse_overrides(get_preset("mnist"), ["encoder.widht=3"])
    msg = str(ei.value)
    assert "did you mean encoder.width?" in msg and msg.index("did you mean") < msg.index("valid keys")
    from daps.prior.run import PriorConfig, apply_overrides

    with pytest.raises(ValueError, match=r"unknown setting 'stepz' \(in 'stepz=3'\) \(did you mean steps\?\)"):
        apply_overrides(PriorConfig(), ["stepz=3"])
