"""The method registry: every method is one MethodSpec; a method defined here, outside the package, trains
through the CLI; configs of the earlier layout load through the migration unchanged."""

from __future__ import annotations

import dataclasses
import gzip
import importlib.metadata
import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F

import daps
from daps.cli import main
from daps.config import CONFIG_VERSION, Config, check_positive
from daps.config_io import config_from_dict, config_to_dict, migrate_config
from daps.methods import METHODS, Method, MethodSpec, build_method
from daps.methods.common import (
    build_decoder,
    build_likelihood,
    build_na_encoder,
    check_codes,
    check_images,
    per_dim_reconstruction_loss,
    quantized_reconstruction,
    training_output,
)
from daps.optim import OptimizerSpec
from daps.presets import PRESETS, get_preset

V1_PRESETS = Path(__file__).parent / "data" / "config_v1_presets.json.gz"


# --------------------------------------------------------------------------------------------------
# A method written outside the package: nearest of V fixed random prototypes, straight-through.


@dataclass
class ToyConfig:
    """Settings of the toy method."""

    section: ClassVar[str] = "toy"
    commitment: float = 0.25
    """Weight of ||z_e - sg(z_q)||^2."""

    def validate(self) -> None:
        check_positive("toy", self, ("commitment",), strict=False)


class NearestPrototype(Method):
    final_beta = None

    def __init__(self, encoder, decoder, likelihood, vocab_size: int, width: int, commitment: float):
        super().__init__()
        self.encoder, self.decoder, self.likelihood, self.commitment = encoder, decoder, likelihood, commitment
        self.register_buffer("prototypes", torch.randn(vocab_size, width))  # (V, E), never trained

    @property
    def vocab_size(self) -> int:
        return self.prototypes.shape[0]

    def optimizer_specs(self, lr: float, grad_clip: float) -> list[OptimizerSpec]:
        return [OptimizerSpec("vae", list(self.parameters()), lr=lr, grad_clip=grad_clip)]

    def _quantize(self, x):
        z_e = self.encoder(x)  # (B, T, E)
        indices = torch.cdist(z_e, self.prototypes[None]).argmin(-1)  # (B, T)
        return z_e, indices, self.prototypes[indices]

    def forward(self, x, step, generator=None):
        z_e, indices, z_q = self._quantize(x)
        params = self.decoder.decode_latents(z_q + (z_e - z_e.detach()))  # straight-through
        log_p = self.likelihood.log_prob(params, x)
        loss = per_dim_reconstruction_loss(log_p, x) + self.commitment * F.mse_loss(z_e, z_q)
        logs = {"loss": loss.detach(), "log_p": log_p.mean().detach()}
        return training_output(loss, self.likelihood.mean(params), indices, logs)

    @torch.no_grad()
    def encode(self, x, generator=None):
        check_images(self, x)
        return self._quantize(x)[1]

    @torch.no_grad()
    def decode(self, indices):
        indices = check_codes(self, indices)
        return self.likelihood.mean(self.decoder.decode_latents(self.prototypes[indices]))

    @torch.no_grad()
    def reconstruct(self, x, generator=None):
        check_images(self, x)
        _, indices, z_q = self._quantize(x)
        return quantized_reconstruction(self.likelihood, self.decoder.decode_latents(z_q), x, indices)


def build_toy(cfg: Config, image_shape):
    likelihood = build_likelihood(cfg)
    encoder = build_na_encoder(cfg, image_shape, out_dim=None)
    decoder = build_decoder(cfg, image_shape, likelihood, token_dim=cfg.encoder.width)
    return NearestPrototype(encoder, decoder, likelihood, cfg.encoder.vocab_size, cfg.encoder.width, cfg.toy.commitment)


def _toy_mnist(cfg: Config) -> None:
    cfg.toy.commitment = 0.5


TOY = MethodSpec(
    name="toy", summary="nearest fixed prototype (a test)", build=build_toy, config_type=ToyConfig,
    encoder="quantizer", presets={"mnist": _toy_mnist}, progress=("log_p",),
)


@pytest.fixture
def toy_registered(monkeypatch):
    monkeypatch.setitem(METHODS, "toy", TOY)  # what `register(TOY)` does, undone after the test
    return TOY


@pytest.mark.usefixtures("offline")
def test_a_method_defined_outside_the_package_trains_through_the_cli(toy_registered, tmp_path, tiny_overrides_for,
                                                                    capsys):
    cfg = get_preset("mnist", "toy")
    assert cfg.toy.commitment == 0.5 and (cfg.encoder.num_layers, cfg.encoder.mlp_ratio) == (2, 7)  # its presets
    run = tmp_path / "run"
    assert main(["train", "--method", "toy", *tiny_overrides_for("toy"), "toy.commitment=0.3",
                 f"train.out_dir={run}"]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["method"] == "toy" and saved["toy"] == {"commitment": 0.3}
    assert {"daps", "relaxed", "vq"}.isdisjoint(saved)  # only the chosen method's settings are stored
    model = daps.load_model(run)
    assert isinstance(model, NearestPrototype) and model.config.toy.commitment == 0.3
    x = (torch.rand(2, 1, 28, 28) > 0.5).float()
    assert model.decode(model.encode(x)).shape == (2, 1, 28, 28)
    assert main(["eval", str(run), "--json"]) == 0
    assert "log_p" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_registering_a_name_twice_is_refused(toy_registered):
    with pytest.raises(ValueError, match="already registered"):
        daps.register(MethodSpec(name="toy", summary="", build=build_toy, config_type=ToyConfig, encoder="quantizer"))


def _settings(section: str | None) -> type:
    namespace = {"__annotations__": {"alpha": float}, "alpha": 0.1, "validate": lambda self: None}
    if section is not None:
        namespace["section"] = section  # a plain class attribute: what ClassVar[str] declares
    return dataclass(type("Settings", (), namespace))


@pytest.mark.parametrize(("spec", "message"), [
    ("toy", r"register takes a daps\.MethodSpec, got str"),  # was: AttributeError 'str' has no attribute 'name'
    (dataclasses.replace(TOY, name="my toy/2"), r"method name 'my toy/2' must be a plain word"),
    (dataclasses.replace(TOY, name="t2", config_type=_settings("train")),  # config.json's train section replaced
     r"section 'train' is a name every config uses"),
    (dataclasses.replace(TOY, name="t2", config_type=_settings("daps")),  # compare read daps.* as its settings
     r"section 'daps' belongs to method daps \(DAPSConfig\)"),
    (dataclasses.replace(TOY, name="t2", config_type=_settings(None)),  # AttributeError in config_to_dict
     r"Settings needs a `section: ClassVar\[str\]`.* got None"),
])
def test_register_refuses_a_spec_the_registry_cannot_hold(spec, message):
    """``daps.register`` checks what the rest of daps relies on. Fails on: register() that only checks the
    name is free (a settings section named ``train`` wrote the method's settings over the run's training
    settings in config.json, and reading it back gave the default TrainConfig)."""
    before = dict(METHODS)
    try:
        with pytest.raises(ValueError, match=message):
            daps.register(spec)
        assert METHODS == before
    finally:
        METHODS.clear()
        METHODS.update(before)
    for builtin in before.values():  # every built-in spec passes the same checks
        daps.register(builtin)
    assert METHODS == before


def _install_plugin(site: Path) -> None:
    """Install into the folder ``site`` (as pip would) a distribution whose entry point ``toy`` of the group
    ``daps.methods`` is this module's toy method."""
    info = site / "daps_toyplug-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: daps-toyplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[daps.methods]\ntoy = daps_toyplug:TOY\n")
    (site / "daps_toyplug.py").write_text(
        f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\nfrom test_registry import TOY\n"
    )


def test_a_method_of_an_installed_package_trains_and_loads_in_new_processes(tmp_path, toy_registered,
                                                                           tiny_overrides_for):
    """``daps.register`` reaches only its own process; a package's entry point reaches every ``daps`` command."""
    overrides = tiny_overrides_for("toy")  # in this process the toy is registered the test's way, for its presets
    site = tmp_path / "site"
    _install_plugin(site)
    with_plugin = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    run = tmp_path / "run"

    def daps_cli(*args: str, env: dict) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "daps.cli", *args], env={**env, "OMP_NUM_THREADS": "1"},
                              capture_output=True, text=True, timeout=600)

    done = daps_cli("train", "--method", "toy", *overrides, f"train.out_dir={run}", env=with_plugin)
    assert done.returncode == 0, done.stderr
    assert json.loads((run / "config.json").read_text())["method"] == "toy"
    done = daps_cli("eval", str(run), "--json", env=with_plugin)
    assert done.returncode == 0 and "log_p" in json.loads(done.stdout.strip().splitlines()[-1]), done.stderr
    # a script that imports the plugin's module before daps (so daps is imported while that module is half-made)
    first = subprocess.run([sys.executable, "-c", "import daps_toyplug, daps\nfrom daps.methods import method_spec\n"
                            "print(method_spec('toy').name)"], env=with_plugin, capture_output=True, text=True,
                           timeout=600)
    assert first.returncode == 0 and first.stdout.strip() == "toy" and "not loaded" not in first.stderr, first.stderr
    done = daps_cli("eval", str(run), env=dict(os.environ))  # the package uninstalled: one line, exit code 2
    assert done.returncode == 2 and "unknown method 'toy'" in done.stderr and "Traceback" not in done.stderr


def test_a_broken_plugin_is_skipped_with_a_warning_naming_it(monkeypatch, caplog):
    from daps import methods

    monkeypatch.setattr(sys.modules[__name__], "CLASH", dataclasses.replace(TOY, name="daps"), raising=False)
    entries = [
        importlib.metadata.EntryPoint("gone", "no_such_module_here:SPEC", methods.PLUGIN_GROUP),
        importlib.metadata.EntryPoint("dict", "daps.presets:PRESETS", methods.PLUGIN_GROUP),
        importlib.metadata.EntryPoint("clash", f"{__name__}:CLASH", methods.PLUGIN_GROUP),
        importlib.metadata.EntryPoint("again", "daps.methods.fsq:FSQ_SPEC", methods.PLUGIN_GROUP),  # the same spec
        importlib.metadata.EntryPoint("toy", f"{__name__}:TOY", methods.PLUGIN_GROUP),
    ]
    monkeypatch.setattr(methods.importlib.metadata, "entry_points",
                        lambda group: [e for e in entries if e.group == group])
    monkeypatch.setattr(methods, "_TRIED", set())
    before = dict(METHODS)  # register() writes into METHODS: restored below
    try:
        with caplog.at_level(logging.WARNING, logger="daps.methods"):
            assert methods.load_plugins() == ["fsq", "toy"]
        assert METHODS["toy"] is TOY and METHODS["daps"] is before["daps"] and METHODS["fsq"] is before["fsq"]
        warned = caplog.text
        assert "'gone'" in warned and "No module named 'no_such_module_here'" in warned
        assert "'dict'" in warned and "not a daps MethodSpec" in warned
        assert "'clash'" in warned and "already registered" in warned
        assert "'again'" not in warned and "'toy'" not in warned
    finally:
        METHODS.clear()
        METHODS.update(before)


def test_every_spec_is_consistent():
    for name, spec in METHODS.items():
        cfg = get_preset("mnist", name)
        assert spec.name == name and type(cfg.options) is spec.config_type
        assert getattr(cfg, spec.config_type.section) is cfg.options
        assert spec.bits(cfg) > 0
        model = build_method(cfg, (1, 28, 28))
        out = model(torch.zeros(2, 1, 28, 28), 0, torch.Generator().manual_seed(0))
        assert set(spec.progress) <= set(out.logs), name  # the progress bar shows keys the method logs


def test_settings_of_another_method_are_unknown_keys():
    with pytest.raises(ValueError, match="unknown config key 'fsq.levels'.*own settings are daps"):
        daps.parse_overrides(get_preset("mnist", "daps"), ["fsq.levels=8,8"])


# --------------------------------------------------------------------------------------------------
# Migration of earlier config.json layouts


def test_every_v1_preset_config_loads_to_the_same_config():
    """config.json files written before the registry (layout 1: every method's section) for every preset x
    method, saved by the code of commit bda318e, load through the migration to exactly today's presets."""
    old = json.loads(gzip.decompress(V1_PRESETS.read_bytes()))
    v1_presets = {key.split("/")[0] for key in old}
    assert v1_presets == set(PRESETS) - {"lafan1-h1"} and len(old) == len(v1_presets) * 12  # lafan1-h1 came later
    for key, data in old.items():
        preset, method = key.split("/")
        if isinstance(data, str):  # that preset refused the method then (vae on natural images): still refused
            with pytest.raises(ValueError):
                get_preset(preset, method)
            continue
        assert "version" not in data and {"daps", "relaxed", "fsq", "vq", "ppo", "reinforce", "vae"} <= data.keys()
        loaded = config_from_dict(data)
        assert loaded == get_preset(preset, method), key
        # every setting of the old file is kept; settings added since (e.g. encoder.embed) hold their defaults
        dumped, migrated = json.loads(json.dumps(config_to_dict(loaded))), migrate_config(data)
        for section, values in migrated.items():
            kept = {k: dumped[section][k] for k in values} if isinstance(values, dict) else dumped[section]
            assert kept == values, (key, section)


def test_migration_keeps_only_the_method_section_and_current_layouts_pass_through():
    old = json.loads(gzip.decompress(V1_PRESETS.read_bytes()))["mnist/gumbel"]
    new = migrate_config(old)
    assert new["version"] == CONFIG_VERSION and new["relaxed"] == old["relaxed"]
    assert not {"daps", "fsq", "vq", "ppo", "reinforce", "vae"} & new.keys()
    assert migrate_config(new) == new
    with pytest.raises(ValueError, match="version"):
        migrate_config({**new, "version": 99})


def test_unknown_keys_in_a_saved_config_are_errors_naming_them():
    data = json.loads(json.dumps(config_to_dict(get_preset("mnist", "daps"))))
    data["daps"]["ess_targt"] = 0.3
    with pytest.raises(ValueError, match="daps.ess_targt"):
        config_from_dict(data)
    data = json.loads(json.dumps(config_to_dict(get_preset("mnist", "daps"))))
    data["relaxed"] = {"num_rao_samples": 3}  # another method's section in a current-layout file
    with pytest.raises(ValueError, match="relaxed"):
        config_from_dict(data)
