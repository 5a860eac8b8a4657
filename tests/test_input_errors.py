"""Bad inputs give one clear ``ValueError`` / ``FileNotFoundError`` naming what is wrong (issue 11, items 5-8):
non-finite and out-of-range settings, config.json files with wrong types or unknown keys, explicit data folders
that do not exist, and bad tensors passed to the Python API of every method."""

from __future__ import annotations

import json
import math
import os
import typing

import pytest
import torch

from daps.cli import main
from daps.config import validate
from daps.config_io import config_from_dict, config_to_dict, parse_overrides, refuse_ignored
from daps.data import DATASETS, dataset_spec
from daps.methods import METHODS
from daps.presets import PRESETS, get_preset

ALL_METHODS = tuple(METHODS)

pytestmark = pytest.mark.usefixtures("offline")


def float_keys() -> list[str]:
    """Dotted keys of every float setting (scalars and tuples of floats) of the shared sections and of every
    method's own settings, found from the annotations."""
    keys = []

    def walk(cls: type, prefix: str) -> None:
        for name, annotation in typing.get_type_hints(cls).items():
            if isinstance(annotation, type) and hasattr(annotation, "__dataclass_fields__"):
                walk(annotation, f"{prefix}{name}.")
            elif annotation is float or float in typing.get_args(annotation):
                keys.append(prefix + name)

    walk(type(get_preset("mnist")), "")
    for section, config_type in {spec.config_type.section: spec.config_type for spec in METHODS.values()}.items():
        walk(config_type, f"{section}.")
    return keys


def preset_for(item: str):
    """The MNIST preset of the first method that has the override ``item``'s key (shared keys: daps)."""
    section = item.partition("=")[0].split(".")[0]
    method = next((n for n, s in METHODS.items() if s.config_type.section == section), "daps")
    return get_preset("mnist", method)


# --------------------------------------------------------------------------------------------------
# Settings: finite and in range (item 5)


def test_the_walk_finds_the_float_settings():
    keys = float_keys()
    assert {"optim.lr", "daps.init_eta", "daps.beta.end", "decoder.max_variance", "ppo.max_kl_coeff"} <= set(keys)
    assert len(keys) >= 25


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
@pytest.mark.parametrize("key", float_keys())
def test_every_float_setting_must_be_finite(key, value):
    with pytest.raises(ValueError, match=rf"^{key.replace('.', r'.')}\b.*finite"):
        parse_overrides(preset_for(key), [f"{key}={value}"])


@pytest.mark.parametrize("item", ["optim.lr=inf", "daps.init_eta=inf", "daps.beta.end=inf", "optim.lr=1e400"])
def test_the_reported_infinities_are_refused(item):
    with pytest.raises(ValueError, match=item.partition("=")[0]):
        parse_overrides(get_preset("mnist"), [item])


@pytest.mark.parametrize(
    "item, key",
    [
        ("daps.beta.end=2", "daps.beta"),  # exp_decay clips end to init: beta would silently stay at 0.5
        ("relaxed.temperature.kind=exp_decay", None),  # 1 -> 1 is allowed (the original's "constant" decay)
        ("optim.lr_final=2", "optim.lr_final"),
        ("ppo.clip=1", "ppo.clip"),
        ("ppo.clip=0", "ppo.clip"),
        ("decoder.max_variance=0.001", "decoder.max_variance"),
        ("vq.ema_decay=1", "vq.ema_decay"),
        ("daps.beta.end_pct=0", "daps.beta.end_pct"),
    ],
)
def test_float_ranges(item, key):
    if key is None:
        parse_overrides(preset_for(item), [item])
        return
    with pytest.raises(ValueError, match=key):
        parse_overrides(preset_for(item), [item])


def test_validate_checks_types_set_through_python():
    cfg = get_preset("mnist")
    cfg.train.steps = "10"
    with pytest.raises(ValueError, match=r"train\.steps: expected int, got str '10'"):
        validate(cfg)
    cfg = get_preset("mnist")
    cfg.optim.lr = 1  # an int is a fine float
    cfg.decoder.hidden = [32, 32]  # and a list a fine tuple
    validate(cfg)
    cfg.daps.beta.end = math.inf
    with pytest.raises(ValueError, match=r"daps\.beta\.end must be a finite number"):
        validate(cfg)


@pytest.mark.usefixtures("offline")
@pytest.mark.parametrize(("key", "value", "message"), [
    ("train.batch_size", 0, r"train\.batch_size must be positive, got 0"),  # trained on empty batches
    ("decoder.kind", "mlpp", r"decoder\.kind must be mlp, resnet or transformer"),  # trained an MLP decoder
    ("daps.num_samples", 0, r"daps\.num_samples must be positive"),  # a ZeroDivisionError deep in attention
    ("train.seed", 0.5, r"train\.seed: expected int, got float"),  # torch's "manual_seed expected a long"
])
def test_train_checks_settings_set_through_python(key, value, message, tmp_path, tiny_overrides):
    """``train(cfg)`` refuses a setting assigned in Python (not through parse_overrides) with a UserError naming
    it, before it makes the run folder. Fails on: ``train`` trusting ``cfg`` (it trained with these values, or
    failed deep inside)."""
    from daps.errors import UserError
    from daps.train import train

    cfg = parse_overrides(get_preset("mnist"), [*tiny_overrides, f"train.out_dir={tmp_path / 'run'}"])
    section, name = key.split(".")
    setattr(getattr(cfg, section), name, value)
    with pytest.raises(UserError, match=message):
        train(cfg, device="cpu")
    assert not (tmp_path / "run").exists()
    with pytest.raises(UserError, match=r"train takes a daps\.Config .* got dict"):
        train({"train": {"steps": 10}})


# --------------------------------------------------------------------------------------------------
# config.json: wrong types and unknown keys (item 4/5)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"train": {"steps": "10"}}, r"^train\.steps: expected int, got str '10'$"),
        ({"train": {"steps": 10.0}}, r"^train\.steps: expected int, got float 10\.0$"),
        ({"train": {"steps": True}}, r"^train\.steps: expected int, got bool True$"),
        ({"optim": {"lr": "3e-4"}}, r"^optim\.lr: expected float, got str '3e-4'$"),
        ({"optim": {"lr": False}}, r"^optim\.lr: expected float, got bool False$"),
        ({"data": {"download": "yes"}}, r"^data\.download: expected bool, got str 'yes'$"),
        ({"data": {"download": 1}}, r"^data\.download: expected bool, got int 1$"),
        ({"data": {"name": 5}}, r"^data\.name: expected str, got int 5$"),
        ({"data": {"image_shape": "1,28,28"}}, r"^data\.image_shape: expected a list, got str"),
        ({"data": {"image_shape": [1, 28, "28"]}}, r"^data\.image_shape\[2\]: expected int, got str '28'$"),
        ({"daps": {"beta": {"init": None}}}, r"^daps\.beta\.init: expected float, got NoneType None$"),
        ({"daps": {"beta": 0.5}}, r"^daps\.beta: expected an object of settings, got float 0\.5$"),
        ({"train": {"stepz": 10}},
         r"^unknown config key 'train\.stepz' \(did you mean train\.steps\?\); valid keys here: .*train\.steps"),
        ({"trian": {}}, r"^unknown config key 'trian'"),
        ({"daps": {"beta": {"start": 1.0}}}, r"^unknown config key 'daps\.beta\.start'"),
        ({"optim": {"lr": float("inf")}}, r"^optim\.lr must be a finite number"),
        ({"train": {"steps": -3}}, r"^train\.steps must be positive"),
    ],
)
def test_config_from_dict_names_the_bad_key(data, message):
    with pytest.raises(ValueError, match=message):
        config_from_dict(data)


def test_config_json_with_infinity_is_refused():
    text = json.dumps(config_to_dict(get_preset("mnist"))).replace('"init_eta": 100.0', '"init_eta": Infinity')
    assert "Infinity" in text
    with pytest.raises(ValueError, match=r"daps\.init_eta must be a finite number"):
        config_from_dict(json.loads(text))


def test_config_from_dict_accepts_ints_for_floats_and_lists_for_tuples():
    cfg = config_from_dict({"optim": {"lr": 1}, "decoder": {"hidden": [8, 8]}})
    assert cfg.optim.lr == 1.0 and type(cfg.optim.lr) is float
    assert cfg.decoder.hidden == (8, 8)


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("method", ALL_METHODS)
def test_every_preset_survives_the_json_round_trip(preset, method):
    try:
        cfg = get_preset(preset, method)
    except ValueError:
        assert method == "vae"  # MNIST only
        return
    back = config_from_dict(json.loads(json.dumps(config_to_dict(cfg))))
    assert back == cfg
    assert config_to_dict(back) == config_to_dict(cfg)


# --------------------------------------------------------------------------------------------------
# An explicit data folder wins or fails (item 6)


@pytest.fixture
def env_with_data(monkeypatch, data_dir):
    """``$DAPS_DATA_DIR`` pointing at a folder that holds (synthetic) mnist5k data."""
    monkeypatch.setenv("DAPS_DATA_DIR", str(data_dir))
    return data_dir


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_a_missing_explicit_data_dir_is_an_error_naming_it(name, tmp_path, env_with_data):
    missing = tmp_path / "typo"
    spec = dataset_spec(name)
    with pytest.raises(FileNotFoundError) as err:
        if spec.load is not None:
            spec.load("test", missing, False)
        elif spec.windows is not None:
            from daps.config import DataConfig

            spec.windows("test", DataConfig(name=name, data_dir=str(missing), image_shape=(1, 32, 86)))
        else:
            spec.root(missing)
    assert str(missing) in str(err.value) and "does not exist" in str(err.value)


def test_a_missing_explicit_data_dir_never_falls_back_to_the_env_var(tmp_path, env_with_data):
    from daps.data import load_dataset

    assert len(load_dataset("mnist5k", "test").images) == 500  # the env var's data are there
    with pytest.raises(FileNotFoundError, match="typo"):
        load_dataset("mnist5k", "test", data_dir=tmp_path / "typo")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"mnist_5k\.csv\.gz not found; searched: [^;]*empty"):
        load_dataset("mnist5k", "test", data_dir=tmp_path / "empty")  # nor does an existing one without the files


def test_a_file_as_data_dir_is_named(tmp_path):
    from daps.data import load_dataset

    (tmp_path / "file").write_text("x")
    with pytest.raises(FileNotFoundError, match="file .*is not a folder"):
        load_dataset("mnist", "test", data_dir=tmp_path / "file", download=False)


def test_train_with_a_missing_data_dir_names_it_and_writes_nothing(tmp_path, capsys, env_with_data, tiny_overrides):
    overrides = [o for o in tiny_overrides if not o.startswith("data.data_dir")]
    out = tmp_path / "run"
    assert main(["train", *overrides, f"data.data_dir={tmp_path / 'typo'}", f"train.out_dir={out}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "typo") in err[0] and "does not exist" in err[0]
    assert not out.exists()


@pytest.mark.parametrize("command", ["train", "eval"])
def test_the_missing_data_message_names_the_setting_of_each_command(command, tmp_path, capsys, tiny_overrides,
                                                                    trained_run):
    (tmp_path / "empty").mkdir()
    if command == "train":
        overrides = [o for o in tiny_overrides if not o.startswith("data.data_dir")]
        argv = ["train", *overrides, f"data.data_dir={tmp_path / 'empty'}", f"train.out_dir={tmp_path / 'run'}"]
    else:
        argv = ["eval", str(trained_run), "--json", "--data-dir", str(tmp_path / "empty")]
    assert main(argv) == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and "mnist_5k.csv.gz not found" in line
    # train takes data.data_dir=DIR (it rejects --data-dir); eval, fid-stats, render, ... take --data-dir
    assert ("data.data_dir=DIR for train" in line) and ("--data-dir DIR for eval, fid-stats, render" in line)


# --------------------------------------------------------------------------------------------------
# The Python API of every method: clear errors for bad inputs, no graphs at inference (item 8)

TINY = ["encoder.width=16", "encoder.num_heads=2", "encoder.vocab_size=16", "encoder.num_tokens=4",
        "decoder.embed_dim=8", "decoder.hidden=16,16", "vae.hidden=16"]


@pytest.fixture(scope="module", params=ALL_METHODS)
def model(request):
    from daps.methods import build_method

    cfg = get_preset("mnist", request.param)
    cfg = parse_overrides(cfg, [o for o in TINY if not o.startswith("vae.") or cfg.method == "vae"])
    torch.manual_seed(0)
    model = build_method(cfg, (1, 28, 28))
    model.eval()
    return model


def images(b=3, shape=(1, 28, 28)):
    return (torch.rand(b, *shape, generator=torch.Generator().manual_seed(0)) > 0.5).float()


def codes(model, b=3):
    if model.vocab_size is None:  # the Gaussian VAE: a continuous z
        return torch.zeros(b, model.input_spec.latent_dim)
    return model.encode(images(b), torch.Generator().manual_seed(0))


def test_inference_builds_no_graph(model):
    """eval-mode encode / decode / reconstruct return plain tensors (no autograd graph kept alive)."""
    x = images()
    z = model.encode(x, torch.Generator().manual_seed(0))
    x_hat = model.decode(z)
    rec = model.reconstruct(x, torch.Generator().manual_seed(0))
    for t in (z, x_hat, rec.x_hat, rec.log_p):
        assert not t.requires_grad and t.grad_fn is None
    assert x_hat.shape == (3, 1, 28, 28)


def test_training_still_has_gradients(model):
    model.train()
    try:
        out = model(images(4), step=0, generator=torch.Generator().manual_seed(0))
        out.loss.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


@pytest.mark.parametrize(
    "bad, message",
    [
        (lambda: images(1)[0], r"one image \(1, 28, 28\); pass a batch"),
        (lambda: images(3, (1, 32, 32)), r"\(1, 32, 32\), but this model takes \(1, 28, 28\)"),
        (lambda: images(3, (3, 28, 28)), r"\(3, 28, 28\), but this model takes"),
        (lambda: images(3).view(3, 784), r"batch of images \(B, C, H, W\), got shape \(3, 784\); this model takes "
                                         r"\(B, 1, 28, 28\)"),
        (lambda: images(3).view(3, 28, 28), r"x \(3, 28, 28\) lacks the channel axis; this model takes "
                                            r"\(B, 1, 28, 28\): pass x\.unsqueeze\(1\)"),  # motion windows, say
        (lambda: images(0), r"non-empty batch"),
        (lambda: (images(3) * 255).to(torch.uint8), r"must be floating point .* got torch\.uint8"),
        (lambda: images(3).double(), r"torch\.float64 but the model's parameters are torch\.float32"),
        (lambda: images(3).tolist(), r"must be a torch\.Tensor"),
        (lambda: images(3) * math.nan, r"NaN or infinite"),
        (lambda: images(3) * 255, r"must lie in \[0, 1\] for this binary"),  # MNIST models: 0/255 pixels
        (lambda: images(3) - 1, r"must lie in \[0, 1\] for this binary"),
    ],
)
@pytest.mark.parametrize("call", ["encode", "reconstruct"])
def test_bad_images_are_value_errors(model, call, bad, message):
    with pytest.raises(ValueError, match=message):
        getattr(model, call)(bad(), torch.Generator().manual_seed(0))


@pytest.mark.parametrize("call", ["encode", "reconstruct"])
def test_a_seed_for_a_generator_is_a_value_error(model, call):
    with pytest.raises(ValueError, match=r"generator must be a torch\.Generator or None, got int; for a seed"):
        getattr(model, call)(images(2), 0)


def test_bad_codes_are_value_errors(model):
    z = codes(model)
    if model.vocab_size is None:
        with pytest.raises(ValueError, match=r"z has 3 dimensions, but this model's latent has D=2"):
            model.decode(torch.zeros(4, 3))
        with pytest.raises(ValueError, match=r"batch of latents \(B, D\)"):
            model.decode(z[0])
        with pytest.raises(ValueError, match=r"z is torch\.float64"):
            model.decode(z.double())
        return
    v, t = model.vocab_size, model.input_spec.num_tokens
    cases = [
        (torch.full_like(z, v), rf"codes must be in \[0, {v}\) \(V={v}\), got values from {v} to {v}"),
        (z - z - 1, r"got values from -1 to -1"),
        (z[0], r"batch of codes \(B, T\), got shape \(4,\); pass a batch"),
        (z[:, :2], rf"2 tokens per input, but this model's codes have T={t}"),
        (z.float(), r"integer tensor \(torch\.long\) of codes, got torch\.float32"),
        (z.bool(), r"got torch\.bool"),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            model.decode(bad)
    torch.testing.assert_close(model.decode(z.int()), model.decode(z))  # any integer dtype works


def test_inputs_on_another_device_than_the_model_are_value_errors(model):
    """Images or codes on another device than the model were found out deep inside a layer (CUDA: "Expected all
    tensors to be on the same device") or at the first host read. The meta device stands in for a GPU here.
    Fails on: check_images / check_codes / check_latents without the device check."""
    for call in ("encode", "reconstruct"):
        with pytest.raises(ValueError, match=r"x is on meta but the model is on cpu: move it with x\.to\('cpu'\)"):
            getattr(model, call)(images(2).to("meta"))
    name = "z" if model.vocab_size is None else "indices"
    with pytest.raises(ValueError, match=rf"{name} is on meta but the model is on cpu: move it with {name}\.to"):
        model.decode(codes(model).to("meta"))


def test_eval_help_describes_the_subset(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "only the first N" not in text and "a fixed random subset" in text


# --------------------------------------------------------------------------------------------------
# Command-line values refused in one line before anything is read or written


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "RUN", "--seed", "99999999999999999999"], "the seed must be an integer between -2^53 and 2^53"),
        (["eval", "RUN", "--seed", "-9007199254740992"], "the seed must be an integer between -2^53 and 2^53"),
        (["export-codes", "RUN", "--out", "OUT/c.safetensors", "--seed", "9007199254740992"], "and 2^53"),
        (["prior", "sample", "RUN", "--out", "OUT/s.png", "--seed", "-9007199254740993"], "and 2^53"),
        (["robot", "plan", "RUN", "--motion", "walk", "--out", "OUT/w.mp4", "--seed", "1e30"], "invalid int"),
        (["train", "--preset", "mnist5k-demo", "train.seed=-9300000000000000"], "train.seed must be an integer"),
        (["compare", "--methods", "", "--steps", "2", "--out", "OUT/cmp"], "names no method"),
        (["compare", "--methods", ",", "--steps", "2", "--out", "OUT/cmp"], "names no method"),
        (["compare", "--preset", "mnist5k-demo", "--methods", "daps", "--steps", "2", "--out", ""], "--out is empty"),
        (["compare", "--preset", "mnist5k-demo", "--methods", "daps", "--steps", "2", "--out", "OUT/cmp", "--vary",
          "daps.ess_target=0.5,0.5"], "lists a value twice"),
        (["compare", "--preset", "mnist5k-demo", "--methods", "fsq", "--steps", "2", "--out", "OUT/cmp", "--vary",
          "daps.ess_target=0.5"], "a setting of none of --methods fsq"),
        (["compare", "--preset", "mnist5k-demo", "--methods", "daps", "--steps", "2", "--out", "OUT/cmp", "--threads",
          "-1"], "--threads must be >= 0"),
        (["export-codes", "RUN", "--out", "OUT/c.safetensors", "--batch-size", "0"], "--batch-size must be"),
        (["export-codes", "RUN", "--out", "OUT/c.safetensors", "--max-inputs", "-1"], "--max-inputs >= 0"),
        (["render", "RUN", "--out", "OUT/r.mp4", "--seconds", "nan"], "--seconds must be a positive number"),
        (["render", "RUN", "--out", "OUT/r.mp4", "--seconds", "inf"], "--seconds must be a positive number"),
        (["render", "RUN", "--out", "OUT/r.mp4", "--start", "nan"], "--start a number >= 0"),
        (["export", "RUN", "--out", "OUT/ex", "--push-to-hub", "not an id"], "is not a Hub repo id"),
        (["eval", "RUN", "--plot=~/r.png"], "--plot ~/r.png starts with '~'"),
        (["decode-random", "RUN", "--out=~/r.png"], "starts with '~'"),
        (["fid-stats", "cifar10-jpeg", "--out=~/s.npz"], "starts with '~'"),
        (["render", "RUN", "--out=~/r.mp4"], "starts with '~'"),
        (["prior", "sample", "RUN", "--out=~/s.png"], "starts with '~'"),
        (["robot", "plan", "RUN", "--motion", "walk", "--out=~/w.mp4"], "starts with '~'"),
        (["robot", "eval", "RUN", "--out=~/e"], "starts with '~'"),
        (["export-codes", "RUN", "--out=~/c.safetensors"], "starts with '~'"),
        (["export", "RUN", "--out=~/ex"], "starts with '~'"),
        (["prior", "sample", "RUN", "--out", "OUT/s.png", "--euler-steps", "-3"], "--euler-steps must be at least 1"),
        (["prior", "sample", "RUN", "--out", "OUT/s.png", "--euler-steps", "0"], "--euler-steps must be at least 1"),
        (["fid-stats", "imagefolder", "--out", "OUT/s.npz", "--image-size", "0"], "--image-size must be at least 16"),
        (["prior", "train", "CODES", "--out", "OUT/p", "lr=nan"], "lr must be a positive number"),
        (["prior", "train", "CODES", "--out", "OUT/p", "lr=inf"], "lr must be a positive number"),
        (["prior", "train", "CODES", "--out", "OUT/p", "weight_decay=-1"], "weight_decay must be a number >= 0"),
        (["prior", "train", "CODES", "--out", "OUT/p", "grad_clip=nan"], "grad_clip must be a positive number"),
        (["prior", "train", "CODES", "--out", "OUT/p", "grad_clip=0"], "grad_clip must be a positive number"),
        (["prior", "train", "CODES", "--out", "OUT/p", "seed=-9007199254740992"], "seed must be an integer"),
        (["prior", "train", "CODES", "--out", "OUT/p", "out_dir=OUT/q"], "give out_dir with --out"),
        (["robot", "train", "RUN", "--out", "OUT/p", "lr=nan"], "lr must be a positive number"),
        (["robot", "train", "RUN", "--out", "OUT/p", "seed=99999999999999999"], "seed must be an integer"),
        (["robot", "train", "RUN", "--out", "OUT/p", "tokenizer=x"], "give tokenizer with the tokenizer argument"),
        (["eval", "RUN", "--fid", "reference"], "--fid reference needs --fid-ref STATS.npz"),
        (["compare", "--seeds", "0", "--steps", "10", "--out", "OUT/c"], "--seeds must be at least 1, got 0"),
        (["compare", "--seeds", "100000", "--steps", "10", "--out", "OUT/c"], "--seeds must be at most 1,000"),
        (["gradlab", "--temperature", "0", "--out", "OUT/g"], "must be positive numbers and --beta a number >= 0, got "
                                                              "0.0, 1.0 and 0.5"),
        (["gradlab", "--eta", "nan", "--out", "OUT/g"], "got 1.0, nan and 0.5"),
        (["gradlab", "--beta", "-1", "--out", "OUT/g"], "got 1.0, 1.0 and -1.0"),
        (["prior", "train", "CODES", "--out", "OUT/p", "--label-dropout", "0.2", "label_dropout=0.1"],
         "give the label dropout once: --label-dropout or label_dropout=, not both"),
        (["prior", "sample", "RUN", "--n", "0", "--out", "OUT/s.png"], "--n must be at least 1"),
        (["prior", "eval", "RUN", "--n", "1"], "--n must be at least 2 and --inception-fid 0 (off) or at least 2, got "
                                               "1 and 0"),
        (["prior", "eval", "RUN", "--inception-fid", "1"], "got 1000 and 1"),
        *[(["train", "--preset", "cifar10", *overrides.split(), "train.out_dir=OUT/r"], message)
          for overrides, message in (
            ("decoder.kind=conv", "decoder.kind must be mlp, resnet or transformer, got 'conv'"),
            ("encoder.embed=pixels", "encoder.embed must be patches or time, got 'pixels'"),
            ("decoder.variance_clip=soft", "decoder.variance_clip must be paper or none, got 'soft'"),
            ("optim.lr_schedule=linear", "optim.lr_schedule must be constant or cosine, got 'linear'"),
            ("train.fid=kid", "train.fid must be none, val-pairs or reference, got 'kid'"),
            ("daps.beta.kind=exp_decay daps.beta.init=0", "daps.beta.init must be positive for an exp_decay"),
            ("decoder.kind=transformer decoder.embed_dim=10 decoder.transformer_heads=4",
             "decoder.embed_dim (10) must be divisible by decoder.transformer_heads"),
            ("decoder.variance_clip=none decoder.min_variance=0.1",
             "decoder.min_variance: read only with decoder.variance_clip=paper (here none)"),
            ("train.cuda_graph=true --device cpu", "train.cuda_graph needs a CUDA device; this run is on cpu"),
            ("data.image_shape=[3,28,28]", "data.image_shape is (3, 28, 28) but cifar10 has (3, 32, 32)"),
        )],
    ],
)
def test_bad_command_line_values_are_one_line_and_write_nothing(argv, message, tmp_path, capsys, monkeypatch):
    """The run folder and codes file named here do not need to exist: every value is refused before it is read."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    argv = [a.replace("OUT", str(out)).replace("RUN", str(tmp_path / "run")).replace("CODES", "c.safetensors")
            for a in argv]
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse's own errors (a --seed out of range): one line, exit 2 as well
        code = exit.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", [
    ["robot", "eval", "RUN", "--out", "FILE/eval"],
    ["robot", "plan", "RUN", "--motion", "walk", "--out", "FILE/sub/walk.mp4"],
    ["render", "RUN", "--out", "FILE/walk.mp4"],
    ["eval", "RUN", "--plot", "FILE/eval.png"],
    ["export-codes", "RUN", "--out", "FILE/codes.safetensors"],
    # run folders: robot train failed so only after encoding every window (minutes)
    ["robot", "train", "RUN", "--out", "FILE/policy"],
    ["robot", "track-train", "RUN", "--out", "FILE/tracker"],
    ["train", "--preset", "mnist5k-demo", "train.out_dir=FILE/run"],
])
def test_an_output_under_a_file_is_refused_before_the_work(argv, tmp_path, capsys):
    """A file where the output's folder would go (``--out notes.txt/eval``) was an OSError ("[Errno 17] File
    exists: ...", naming no flag) when the output was written: for ``robot eval`` after all its rollouts. Now one
    line naming the flag, before the run (which does not exist here) is read."""
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    argv = [a.replace("FILE", str(notes)).replace("RUN", str(tmp_path / "run")) for a in argv]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert f"{notes} is not a folder; choose another " in err and len(err.splitlines()) == 1, err
    assert notes.read_text() == "mine" and [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("argv", [
    ["train", "--preset", "mnist5k-demo", "train.out_dir=OUT"],
    ["compare", "--preset", "mnist5k-demo", "--methods", "daps", "--steps", "2", "--out", "OUT"],
    ["prior", "train", "c.safetensors", "--out", "OUT"],
    ["robot", "train", "RUN", "--out", "OUT"],
    ["robot", "track-train", "RUN", "--out", "OUT"],
    ["robot", "track-eval", "RUN"],
])
def test_a_thread_count_beyond_any_cpu_is_refused_before_torch_sees_it(argv, tmp_path, capsys, monkeypatch):
    """``--threads 100000`` made torch's thread pool fail to start: a segmentation fault (exit 139), no message,
    and the run folder's lock left behind."""
    import torch

    monkeypatch.chdir(tmp_path)
    asked = []
    monkeypatch.setattr(torch, "set_num_threads", asked.append)  # never the real call: it would take this process
    argv = [a.replace("OUT", str(tmp_path / "out")).replace("RUN", str(tmp_path / "run")) for a in argv]
    capsys.readouterr()
    assert main([*argv, "--threads", "100000"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--threads must be at most 1,024, got 100,000" in err and len(err.splitlines()) == 1, err
    assert asked == [] and list(tmp_path.iterdir()) == []


def test_runs_with_seeds_of_earlier_versions_still_load():
    for seed in (-1, 2**40):  # accepted by earlier versions (and torch); a run trained with them must still load
        validate(parse_overrides(get_preset("mnist"), [f"train.seed={seed}"]))


def test_outputs_next_to_a_users_file(tmp_path, capsys, monkeypatch):
    """A file where a folder is asked for, and a missing parent folder of an output file."""
    from daps.runfolder import write_text_atomic

    monkeypatch.chdir(tmp_path)
    (tmp_path / "user.txt").write_text("mine")
    assert main(["export", str(tmp_path / "run"), "--out", "user.txt"]) == 2
    err = capsys.readouterr().err.strip()
    assert "exists and is not a folder" in err and len(err.splitlines()) == 1
    assert (tmp_path / "user.txt").read_text() == "mine"
    write_text_atomic(tmp_path / "new" / "deeper" / "x.md", "ok")  # e.g. eval --plot new/x.png
    assert (tmp_path / "new" / "deeper" / "x.md").read_text() == "ok"


def test_save_images_checks_before_making_the_folder(trained_run, tmp_path):
    import daps

    model = daps.load_model(trained_run)
    out = tmp_path / "decoded"
    cases = ((torch.zeros(2, 28, 28), r"\(N, 1, H, W\)"), (torch.zeros(2, 8, dtype=torch.long), "got shape"),
             (torch.full((2, 1, 28, 28), math.nan), "NaN"),
             # 0-255 values given to a model of [0, 1] pixels: every pixel would be clipped to white
             (torch.full((2, 1, 28, 28), 200.0), r"would be pixels from 5\.1e\+04 to 5\.1e\+04 of 0\.\.255"),
             (torch.full((2, 1, 28, 28), -0.6), r"from -153 to -153"))
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            daps.save_images(bad, model, out)
        assert not out.exists()
    overshoot = torch.tensor([-0.2, 1.2]).view(2, 1, 1, 1).expand(2, 1, 28, 28)  # a decoder mean's: clipped
    paths = daps.save_images(overshoot, model, out)
    from PIL import Image

    assert [Image.open(p).getextrema() for p in paths] == [(0, 0), (255, 255)]
    from daps.runfolder import is_daps_png

    assert len(paths) == 2 and all(map(is_daps_png, paths))  # what every PNG daps writes says


def test_load_and_save_images_name_a_model_that_is_not_one_and_a_file_as_folder(trained_run, tmp_path):
    """A run's path where the model goes was an AttributeError ('str' object has no attribute 'input_spec'), a
    file as the output folder pathlib's FileExistsError. Fails on: load_images / save_images without these
    checks."""
    import daps

    model = daps.load_model(trained_run)
    x = torch.zeros(2, 1, 28, 28)
    with pytest.raises(ValueError, match=r"load_images takes a daps model .* got str"):
        daps.load_images(tmp_path, str(trained_run))
    with pytest.raises(ValueError, match=r"save_images takes a daps model .* got PosixPath"):
        daps.save_images(x, trained_run, tmp_path / "out")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"save_images: .*notes\.txt exists and is not a folder"):
        daps.save_images(x, model, tmp_path / "notes.txt")
    assert (tmp_path / "notes.txt").read_text() == "mine" and sorted(os.listdir(tmp_path)) == ["notes.txt"]


def test_save_images_of_an_empty_batch_writes_nothing(tmp_path):
    """``save_images`` of ``(0, C, H, W)`` (a filter that kept no image) returns no paths, as before the scale check,
    which took the extremes of no values (torch's RuntimeError from aminmax). Fails on: the check run on an empty
    batch."""
    from types import SimpleNamespace

    from daps.inputs import save_images

    model = SimpleNamespace(input_spec=SimpleNamespace(image_shape=(3, 32, 32)),
                            config=SimpleNamespace(data=SimpleNamespace(name="cifar10")))
    assert save_images(torch.zeros(0, 3, 32, 32), model, tmp_path / "out") == []
    assert list((tmp_path / "out").iterdir()) == []


def test_image_files_names_the_subfolders_and_files_it_leaves_out(tmp_path, caplog):
    """``daps.load_images(folder)`` reads the folder's own image files only. A class-folder tree's ``train/`` (its
    images one level down) was refused as holding no image files, without saying why, and a folder whose images
    sat beside a subfolder of more (or a ``Thumbs.db``) lost them without a word. Now the refusal names the
    subfolders and a warning names what is left out; hidden files stay silent. Fails on: the hint or the warning
    dropped."""
    from PIL import Image

    from daps.errors import UserError
    from daps.inputs import image_files

    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / name / "a.png")
    refusal = r"holds no image files \(.*\); subfolders are not read: name one of cat/, dog/$"
    with pytest.raises(UserError, match=refusal):
        image_files(tmp_path)
    Image.new("RGB", (8, 8)).save(tmp_path / "top.png")
    (tmp_path / "Thumbs.db").write_bytes(b"\0")
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    with caplog.at_level("WARNING", logger="daps"):
        assert [p.name for p in image_files(tmp_path)] == ["top.png"]
    assert "3 entries left out" in caplog.text and "Thumbs.db, cat/, dog/" in caplog.text, caplog.text
    assert ".DS_Store" not in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="daps"):
        assert [p.name for p in image_files(tmp_path / "cat")] == ["a.png"]
    assert "left out" not in caplog.text


@pytest.mark.parametrize("extra", [["decoder.kind=resnet"], ["decoder.kind=transformer"], ["encoder.embed=time"]])
def test_settings_the_networks_cannot_take_are_one_line(tmp_path, capsys, tiny_overrides, extra):
    """A network's shape check (a 28x28 image for the ResNet decoder, a time embedding of images) was a ValueError
    traceback from ``build_method``."""
    out = tmp_path / "run"
    tiny = [o for o in tiny_overrides if not o.startswith("decoder.hidden=")]  # the mlp's: refused for the others
    assert main(["train", *tiny, f"train.out_dir={out}", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot be built for inputs (1, 28, 28)" in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_fid_stats_names_missing_data_before_reading_the_inception_weights(tmp_path, capsys, monkeypatch):
    """A missing dataset is said at once, not after the (slow, 90 MB) Inception weights are read."""
    import daps.nets.inception

    def must_not_load(*args, **kwargs):
        raise AssertionError("the weights were read before the data was found missing")

    monkeypatch.setattr(daps.nets.inception, "load_fid_inception", must_not_load)
    (tmp_path / "empty").mkdir()
    argv = ["fid-stats", "cifar10", "--data-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "s.npz")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "cifar" in err.lower() and "not found" in err, err
    assert not (tmp_path / "s.npz").exists()


@pytest.mark.parametrize("dataset", ["lafan1-h1", "sequences"])
def test_fid_stats_refuses_a_dataset_of_windows(dataset, tmp_path, capsys):
    assert main(["fid-stats", dataset, "--out", str(tmp_path / "s.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "FID compares images" in err and dataset in err, err


@pytest.mark.parametrize(("overrides", "message"), [
    (["train.fid=none", "train.fid_reference=ref.npz"], "train.fid_reference: read only with train.fid=reference"),
    (["train.fid=val-pairs", "train.fid_reference=ref.npz"], "read only with train.fid=reference (here "),
    (["train.fid=none", "train.fid_weights=w"], "train.fid_weights: read only with train.fid=val-pairs or reference"),
])
def test_fid_settings_without_their_fid_are_refused(overrides, message, tmp_path, capsys):
    argv = ["train", "--preset", "cifar10", *overrides, f"train.out_dir={tmp_path / 'run'}"]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_fid_of_motion_says_fid_is_for_images(tmp_path, capsys):
    argv = ["train", "--preset", "lafan1-h1", "train.fid=val-pairs", f"train.out_dir={tmp_path / 'run'}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "FID compares images; lafan1-h1 holds windows" in err and "channel" not in err


@pytest.mark.parametrize("shape", ["1,64,64", "3,64,32"])
def test_a_folder_dataset_of_another_shape_names_the_shape_not_fid(shape, tmp_path, capsys):
    """A folder dataset's images are cropped to (3, R, R): another ``data.image_shape`` is named as such before
    the preset's FID (which would have said "needs RGB images"), with nothing written."""
    argv = ["train", "--preset", "imagenet256", "data.name=imagefolder", f"data.image_shape={shape}",
            f"train.out_dir={tmp_path / 'run'}"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "data.image_shape must be (3, R, R) for a folder dataset" in err, err
    assert not (tmp_path / "run").exists()


def test_render_size_is_capped_before_the_run_is_read(tmp_path, capsys):
    argv = ["render", str(tmp_path / "no-run"), "--out", str(tmp_path / "v.mp4"), "--size", "100000"]
    assert main(argv) == 2
    assert "--size 16 to 4096 pixels, got" in capsys.readouterr().err


@pytest.mark.parametrize(("method", "key", "reason"), [
    ("fsq", "encoder.vocab_size", "its codes are the product of fsq.levels"),
    ("vae", "encoder.vocab_size", "its latent is continuous"),
    ("vae", "encoder.num_tokens", "its latent is one vector"),
])
def test_train_refuses_a_shared_setting_its_method_does_not_read(method, key, reason, tmp_path, capsys):
    """``daps train --method fsq encoder.vocab_size=999`` trained with the levels' 240 codes and said nothing."""
    argv = ["train", "--method", method, f"{key}=999", f"train.out_dir={tmp_path / 'run'}"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{key}: {method} does not read it ({reason}" in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("method", ["dapsna", "gumbelna", "vqvae", "fsq", "vae", "gumbel", "grmck"])
def test_train_refuses_the_token0_mask_where_nothing_is_teacher_forced(method, tmp_path, capsys):
    """``encoder.mask_token0`` masks the autoregressive encoder's teacher forcing; ``daps train --method dapsna
    encoder.mask_token0=true`` trained the bidirectional encoder as if it were not there, and the autoregressive
    encoder of ``gumbel`` and ``grmck`` is only ever sampled (relaxed in training), never teacher-forced."""
    argv = ["train", "--method", method, "encoder.mask_token0=true", f"train.out_dir={tmp_path / 'run'}"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"encoder.mask_token0: {method} does not read it (its " in err, err
    assert not (tmp_path / "run").exists()
    assert main(["train", "--method", "daps", "encoder.mask_token0=true", "train.steps=0",
                 f"train.out_dir={tmp_path / 'run'}"]) == 2  # refused for the steps, not the mask
    assert "encoder.mask_token0" not in capsys.readouterr().err


def test_compare_gives_a_shared_setting_only_to_the_methods_that_read_it(tmp_path):
    from daps.compare import plan_runs

    runs = plan_runs("mnist", ["daps", "fsq"], 10, [0], tmp_path / "cmp",
                     ["encoder.vocab_size=32"], ["encoder.num_tokens=4,8"])
    by = {(r.cfg.method, r.cfg.encoder.num_tokens): r.cfg for r in runs}
    assert {k for k in by} == {("daps", 4), ("daps", 8), ("fsq", 4), ("fsq", 8)}
    assert by[("daps", 4)].encoder.vocab_size == 32
    assert by[("fsq", 4)].encoder.vocab_size != 32  # not given: fsq would ignore it
    assert not (tmp_path / "cmp").exists()  # planned only
    from daps.compare import command_for

    runs = plan_runs("mnist", ["daps", "fsq"], 10, [0], tmp_path / "cmp", ["data.num_workers=0", "train.log_every=7"])
    for run in runs:  # commands.sh: what each run reads (daps train refuses the rest)
        command = command_for(run, "mnist", ["data.num_workers=0", "train.log_every=7"])
        assert "data.num_workers" not in command and "train.log_every=7" in command, command


@pytest.mark.parametrize(("preset", "override", "reason"), [
    ("lafan1-h1", "decoder.hidden=999,999", "read by the mlp decoder only; this one is decoder.kind=transformer"),
    ("mnist", "decoder.fixed_variance=3", "mnist's likelihood (bernoulli) has no fixed variance"),
    ("mnist5k-demo", "data.window_stride=4", "mnist5k is not cut into windows"),
    ("mnist", "data.num_workers=8", "mnist is held in memory: no loader workers"),
    ("lafan1-h1", "decoder.min_variance=0.1", "lafan1-h1's likelihood (gaussian-fixed) has no learned variance"),
    ("lafan1-h1", "data.download=false", "lafan1-h1 has no download source: its files are found locally"),
    ("imagenet256", "data.download=false", "imagenet256 has no download source: its files are found locally"),
    ("mnist5k-demo", "data.download=false", "mnist5k has no download source: its files are found locally"),
    ("mnist", "optim.lr_final=0.5", "read only with optim.lr_schedule=cosine (here constant)"),
    ("mnist", "daps.resample_scheme=multinomial",
     "read only with daps.resample >= 1 (here 0: all K codes, none drawn)"),
])
def test_train_refuses_a_setting_its_data_or_decoder_does_not_read(preset, override, reason, tmp_path, capsys):
    argv = ["train", "--preset", preset, override, f"train.out_dir={tmp_path / 'run'}"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{override.partition('=')[0]}: {reason}" in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("method", "override"), [
    ("daps", "daps.beta.end=0.2"), ("daps", "daps.beta.end_pct=0.5"), ("gumbel", "relaxed.temperature.end=0.5"),
])
def test_train_refuses_the_end_of_a_constant_schedule(method, override, tmp_path, capsys):
    """A schedule of kind ``constant`` stays at its ``init``: its ``end`` and ``end_pct`` would be silently ignored,
    so ``daps train`` refuses them, whichever method's schedule it is (the Gumbel temperature is constant by default,
    DAPS's beta is made so here), and takes them with a decaying kind. Fails on: the schedule's end taken and
    ignored (the run trains at the init value the user meant to leave)."""
    section, name = override.split(".")[:2]
    out = tmp_path / "run"
    kind = [] if method == "gumbel" else [f"{section}.{name}.kind=constant"]
    assert main(["train", "--method", method, *kind, override, f"train.out_dir={out}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and (f"{override.partition('=')[0]}: read only by a decaying schedule (here "
                                 f"{section}.{name}.kind=constant, which stays at its init)") in err, err
    assert not out.exists()
    cfg = parse_overrides(get_preset("mnist", method), [f"{section}.{name}.kind=cosine", override])
    refuse_ignored(cfg, [override])  # read by a decaying schedule


@pytest.mark.parametrize(("method", "override", "reader"), [
    ("vqvae", "vq.ema_decay=0.9", "vqvae-ema"), ("vqvae", "vq.kmeans_init=false", "vqvae-ema"),
    ("vqvae", "vq.dead_code_threshold=0", "vqvae-ema"), ("gumbel", "relaxed.num_rao_samples=3", "grmck"),
    ("gumbelna", "relaxed.rao_stop_gradient=true", "grmckna"), ("vae", "encoder.embed=time", "daps"),
])
def test_train_refuses_a_shared_section_setting_only_the_other_method_reads(method, override, reader, tmp_path,
                                                                             capsys):
    """vqvae and vqvae-ema share the ``vq`` settings, the Gumbel-Softmax and Gumbel-Rao estimators the ``relaxed``
    ones: a setting only the other method reads is refused by this one, and taken by the one that reads it (so is
    the first layer of the token encoders, ``encoder.embed``, by the Gaussian VAE's MLP). Fails on: vqvae's, gumbel's
    or vae's ``ignores`` without these keys (the run trains as if the setting were not given)."""
    out = tmp_path / "run"
    assert main(["train", "--method", method, override, f"train.out_dir={out}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{override.partition('=')[0]}: {method} does not read it" in err, err
    assert not out.exists()
    refuse_ignored(parse_overrides(get_preset("mnist", reader), [override]), [override])


@pytest.mark.parametrize("method", ["vqvae", "vqvae-ema"])
def test_the_vq_methods_refuse_a_token_width_their_decoder_does_not_read(method, tmp_path, capsys):
    """The VQ-VAEs hand the codebook vectors (``encoder.width`` wide) to the MLP and ResNet decoders, so
    ``decoder.embed_dim`` is not read there, and is refused; the transformer decoder (``lafan1-h1``) still takes it as
    its width. Fails on: the setting taken and ignored at ``mnist`` / ``cifar10`` (a found "no effect": the same
    weights after training steps with another value), or refused where the transformer reads it."""
    from daps.config_io import ignored_settings

    out = tmp_path / "run"
    assert main(["train", "--method", method, "decoder.embed_dim=9", f"train.out_dir={out}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "decoder.embed_dim: the decoder takes the codebook vectors themselves, encoder.width wide" in err, err
    assert not out.exists()
    assert "decoder.embed_dim" in ignored_settings(get_preset("cifar10", method))
    assert "decoder.embed_dim" not in ignored_settings(get_preset("lafan1-h1", method))
    assert "decoder.embed_dim" not in ignored_settings(get_preset("mnist", "fsq"))  # FSQ embeds its levels to it


def test_compare_gives_a_schedule_end_only_to_the_arms_whose_schedule_decays():
    """``compare``'s shared overrides go to the arms that read them, now also where one of the method's own settings
    decides (the schedule's kind, ``daps.resample``) and the learning rate's schedule. Fails on: a deciding setting
    of the method's section not applied before asking what the arm reads (the end dropped from a cosine arm)."""
    from daps.config_io import applicable_overrides

    cfg = get_preset("mnist", "daps")
    assert applicable_overrides(cfg, ["daps.beta.kind=constant", "daps.beta.end=0.2"]) == ["daps.beta.kind=constant"]
    assert applicable_overrides(cfg, ["daps.beta.kind=cosine", "daps.beta.end=0.2"]) == [
        "daps.beta.kind=cosine", "daps.beta.end=0.2"]
    assert applicable_overrides(cfg, ["daps.resample_scheme=multinomial"]) == []
    assert applicable_overrides(cfg, ["daps.resample=2", "daps.resample_scheme=multinomial"]) == [
        "daps.resample=2", "daps.resample_scheme=multinomial"]
    assert applicable_overrides(cfg, ["optim.lr_final=0.5"]) == []
    assert applicable_overrides(cfg, ["optim.lr_schedule=cosine", "optim.lr_final=0.5"]) == [
        "optim.lr_schedule=cosine", "optim.lr_final=0.5"]


def test_eval_reads_its_fid_reference_before_the_run(tmp_path, capsys):
    """A text file given as --fid-ref is named before the model and the data are read (not after minutes of
    encoding, and not as numpy's advice about pickles)."""
    ref = tmp_path / "ref.npz"
    ref.write_text("not statistics\n")
    assert main(["eval", str(tmp_path / "no-run"), "--fid", "reference", "--fid-ref", str(ref)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not an .npz archive of FID statistics" in err and "no-run" not in err, err


def test_a_run_saved_with_an_unread_setting_still_resumes_and_loads(tmp_path, tiny_overrides_for, capsys):
    """Runs made before daps train refused unread settings (or through the Python API, which takes them) load,
    resume without them, and their model card's command leaves them out (daps train would refuse it)."""
    import daps
    from daps.hub import training_command
    from daps.train import train

    run = tmp_path / "run"
    unread = ["encoder.vocab_size=16", "train.fid_weights=/w", "data.num_workers=0"]
    cfg = parse_overrides(get_preset("mnist", "fsq"),
                          [*tiny_overrides_for("fsq"), *unread, "train.steps=2", f"train.out_dir={run}"])
    train(cfg)
    assert daps.load_model(run).config.encoder.vocab_size == 16  # its config.json still loads
    command = training_command(daps.load_model(run).config)
    assert not any(u.partition("=")[0] in command for u in unread), command
    capsys.readouterr()
    assert main(["train", "--method", "fsq", *tiny_overrides_for("fsq"), "train.steps=4", f"train.out_dir={run}",
                 "--resume"]) == 0, capsys.readouterr().err
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000004"


def test_python_entry_points_name_an_argument_of_the_wrong_kind():
    """A lone override string (read character by character: "override 't' is not of the form key=value"), and None
    or a number where a path goes (pathlib's TypeError), are one UserError naming what the function takes."""
    import daps
    from daps.errors import UserError

    with pytest.raises(UserError, match=r"overrides must be a list of 'key=value' strings.*str 'train.steps=5'"):
        parse_overrides(get_preset("mnist"), "train.steps=5")
    assert parse_overrides(get_preset("mnist"), ("train.steps=5",)).train.steps == 5
    with pytest.raises(UserError, match="load_model takes the path of a run folder or checkpoint, got NoneType"):
        daps.load_model(None)
    with pytest.raises(UserError, match=r"from_pretrained takes a folder or a Hub repo id \(user/name\), got int"):
        daps.from_pretrained(3)


def test_check_at_least_names_the_first_flag_below_its_bound_and_its_value():
    """``check_at_least``: the first bound broken, with the value given (NaN is below every bound); all met: no
    error. Fails on: a message without the value, or NaN passing a ``value < minimum`` test."""
    from daps.errors import UserError, check_at_least

    check_at_least(("--a", 1, 1), ("--b", 0.5, 0))
    with pytest.raises(UserError, match=r"^--b must be at least 2, got 1$"):
        check_at_least(("--a", 3, 1), ("--b", 1, 2), ("--c", -1, 0))
    with pytest.raises(UserError, match=r"^--blend must be at least 0, got nan$"):
        check_at_least(("--blend", float("nan"), 0))


def test_counts_that_would_exhaust_memory_are_one_line_before_any_work(tmp_path, capsys):
    """Sizes far beyond any use (``--starts``, ``--seconds``, ``--n``, ``--num-samples``, ``--rollouts``) are exit
    2 naming the flag, its bound and the value, before a folder is read or a tensor allocated; ``check_at_most``
    lets the bound itself pass. Fails on: an allocation error (exit 1, a traceback) or a run that never ends."""
    from daps.cli import main
    from daps.errors import UserError, check_at_most

    check_at_most(("--n", 5, 5))
    with pytest.raises(UserError, match=r"^--n must be at most 5, got 6$"):
        check_at_most(("--a", 1, 2), ("--n", 6, 5))
    missing = str(tmp_path / "missing")
    for argv, message in (
        (["robot", "track-eval", missing, "--starts", "100000000000"], "--starts must be at most 1,000, got"),
        (["robot", "track-eval", missing, "--seconds", "1e15"], "--seconds must be at most 3,600, got"),
        (["robot", "eval", missing, "--rollouts", "100000000"], "--rollouts must be at most 10,000, got"),
        (["prior", "eval", missing, "--n", "100000000000"], "--n must be at most 1,000,000, got 100,000,000,000"),
        (["gradlab", "--num-samples", "100000000000", "--out", str(tmp_path / "g")], "--num-samples must be at most"),
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, (argv, err)
    assert not (tmp_path / "g").exists()


def test_an_empty_optional_output_is_refused_not_dropped(tmp_path, capsys):
    """An optional output given as "" (an unset shell variable) is exit 2 saying it is empty, as an empty --out is;
    it is not taken as "no such output" with exit 0 and the file the user asked for missing. Fails on: truthiness
    tests (``if args.video:``) in place of ``is not None``."""
    from daps.cli import main

    missing, png = str(tmp_path / "missing"), str(tmp_path / "a.png")
    for argv in (["prior", "sample", missing, "--out", png, "--codes-out", ""],
                 ["prior", "sample", missing, "--out", png, "--video", ""],
                 ["decode-random", missing, "--out", png, "--video", ""],
                 ["robot", "plan", missing, "--motion", "walk", "--out", str(tmp_path / "a.mp4"), "--json", ""],
                 ["robot", "eval", missing, "--out", ""],
                 ["eval", missing, "--plot", ""],
                 ["prior", "train", missing, "--out", str(tmp_path / "p"), "--val-codes", ""]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "is empty" in err and err.count("\n") == 1, (argv, err)
    assert sorted(tmp_path.iterdir()) == []


def test_a_batch_far_beyond_memory_is_one_line_and_leaves_no_run_folder(tmp_path, capsys, tiny_overrides):
    """``train.batch_size=100000000`` (a typo of 100): the failed allocation is one line naming what to lower, exit
    code 2 (it was a traceback), and the folder the run made during its setup is removed again, so that the
    corrected command runs as it is (it was refused with "already exists"). With freed memory kept (the default) the
    line also names ``--no-keep-freed-memory``; without, it does not."""
    out = tmp_path / "new" / "run"
    rc = main(["train", *tiny_overrides, "train.batch_size=100000000", f"train.out_dir={out}"])
    err = capsys.readouterr().err
    assert rc == 2 and "out of memory" in err and "train.batch_size" in err, err
    assert "--no-keep-freed-memory" in err  # a CPU allocation, with freed memory kept (the default)
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "new").exists()
    rc = main(["train", *tiny_overrides, "train.batch_size=100000000", f"train.out_dir={out}",
               "--no-keep-freed-memory"])
    err = capsys.readouterr().err
    assert rc == 2 and "out of memory" in err and "--no-keep-freed-memory" not in err, err


def test_a_run_that_fails_after_logging_keeps_its_folder(tmp_path, monkeypatch, tiny_overrides, no_plots):
    """The removal above is only for a folder that holds nothing trained: a run that fails after it logged rows
    keeps them (they say how it failed), and stays resumable."""
    import daps.train

    real = daps.train.save_checkpoint

    def fail(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes")

    monkeypatch.setattr(daps.train, "save_checkpoint", fail)
    out = tmp_path / "run"
    assert main(["train", *tiny_overrides, "train.log_every=1", f"train.out_dir={out}"]) == 2
    assert (out / "metrics.jsonl").read_text().strip() and (out / "config.json").is_file()
    monkeypatch.setattr(daps.train, "save_checkpoint", real)
