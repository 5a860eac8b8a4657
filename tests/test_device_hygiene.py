"""No tensor that daps makes lands on the default device by accident (see ``tests/device_probe.py``).

GPU time is rare here, and the one GPU check found ``daps train`` failing on CUDA at its first metrics row: a
CPU scalar next to CUDA tensors. These tests catch that class of bug on the CPU: the commands run with every
device-less tensor factory of daps's own code redirected to ``meta``, and the source is checked for factory
calls that name no device. The last test is the negative control: a method that logs a device-less scalar (the
shape of the bug the GPU found) trains on the CPU and fails under the probe.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from device_probe import PACKAGE, ImplicitDeviceProbe, unnamed_device_calls

from daps.cli import main
from daps.methods import METHODS
from daps.methods.daps import DAPS

REAL_DIR = os.environ.get("DAPS_DATA_DIR")
PRIOR_TINY = ["steps=4", "batch_size=8", "width=16", "num_layers=1", "num_heads=2", "eval_every=2", "log_every=2"]


def run_probed(argv: list[str]) -> set[str]:
    """``daps argv`` under the probe; returns the redirected call sites (none are expected). A failure names the
    lines that made device-less tensors, not only where one was used."""
    probe = ImplicitDeviceProbe()
    try:
        with probe:
            code = main(argv)
    except Exception as err:
        raise AssertionError(f"daps {' '.join(argv[:2])} failed; device-less tensors made at {sorted(probe.sites)}") \
            from err
    assert code == 0, f"daps {' '.join(argv[:2])} exited {code}; device-less tensors made at {sorted(probe.sites)}"
    return probe.sites


def tiny_train(method: str, out: Path, overrides: list[str], extra: tuple[str, ...] = ()) -> list[str]:
    return ["train", "--method", method, *overrides, f"train.out_dir={out}", *extra]


def test_every_tensor_factory_in_daps_benchmarks_and_scripts_names_its_device():
    """Outside ``__init__`` bodies, every ``torch.zeros / arange / tensor / ...`` call says where its tensor
    lives (``device=x.device``, or ``device="cpu"`` for the host): the default device is nobody's choice. The
    benchmarks too (``benchmarks/gpu_check.py`` runs them on the rare GPU), and the scripts."""
    root = PACKAGE.parent
    files = [*PACKAGE.rglob("*.py"), *(root / "benchmarks").glob("*.py"), *(root / "scripts").glob("*.py")]
    found = [s for path in sorted(files) for s in unnamed_device_calls(path)]
    assert not found, "tensor factories without device=:\n" + "\n".join(found)


def test_the_source_check_sees_what_it_should():
    """On a file of daps written for the purpose (the check imports it to tell modules from other classes)."""
    source = PACKAGE / "_device_check_example.py"
    source.write_text(
        "import torch\n"
        "def f(x, g):\n"
        "    a = torch.zeros(3)\n"  # flagged
        "    b = torch.arange(4, device=x.device)\n"
        "    c = torch.randperm(5, generator=g)\n"  # flagged: a draw lands on the default device
        "    return torch.tensor(\n"  # flagged, a call over several lines
        "        [1.0])\n"
        "class M(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.register_buffer('b', torch.ones(2))\n"  # made on the CPU, moved with the module
        "class Other:\n"
        "    def __init__(self):\n"
        "        self.index = torch.arange(2)\n"  # flagged: nothing moves it
    )
    try:
        found = unnamed_device_calls(source)
    finally:
        source.unlink()
    assert [s.split(": ")[-1] + f" {s.split(':')[-2]}" for s in found] == [
        "torch.zeros 3", "torch.randperm 5", "torch.tensor 6", "torch.arange 14"]


@pytest.mark.parametrize("method", list(METHODS))
def test_training_and_resuming_every_method_keeps_to_the_model_device(method, tiny_overrides_for, tmp_path, offline,
                                                                      no_plots):
    out = tmp_path / "run"
    overrides = tiny_overrides_for(method)
    assert run_probed(tiny_train(method, out, overrides, ("train.steps=3", "train.ckpt_every=3"))) == set()
    assert run_probed(tiny_train(method, out, overrides, ("train.steps=6", "--resume"))) == set()
    assert (out / "summary.json").exists()


def test_eval_export_and_both_priors_keep_to_the_model_device(trained_run, tmp_path, offline):
    """Evaluation, exporting codes, and training, sampling and scoring an ``ar`` and a ``dfm`` prior."""
    codes = tmp_path / "codes.safetensors"
    sites = run_probed(["eval", str(trained_run), "--max-images", "32"])
    sites |= run_probed(["export-codes", str(trained_run), "--out", str(codes)])
    for kind in ("ar", "dfm"):
        prior = tmp_path / f"prior-{kind}"
        sites |= run_probed(["prior", "train", str(codes), "--kind", kind, "--out", str(prior), *PRIOR_TINY])
        sites |= run_probed(["prior", "sample", str(prior), "--tokenizer", str(trained_run), "--n", "4",
                             "--out", str(tmp_path / f"{kind}.png")])
        sites |= run_probed(["prior", "eval", str(prior), "--n", "8", "--json"])
    assert sites == set()


@pytest.mark.skipif(not REAL_DIR, reason="DAPS_DATA_DIR not set (reads the real LAFAN1 H1 clips)")
def test_motion_tokenizer_classifier_and_robot_policy_keep_to_the_model_device(tmp_path, single_thread, monkeypatch):
    """A motion tokenizer, a (barely trained) motion classifier where ``robot eval`` looks for it, a policy, and
    ``robot eval`` with its kind-of-motion column and one rollout in physics."""
    from test_robot import TINY_POLICY, TINY_TOKENIZER

    from daps.config import DataConfig
    from daps.data.motion import lafan_windows
    from daps.motion.classifier import default_classifier_path, save_classifier, train_classifier
    from daps.motion.features import NUM_FEATURES

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    tok, policy = tmp_path / "tokenizer", tmp_path / "policy"
    sites = run_probed(["train", "--preset", "lafan1-h1", *TINY_TOKENIZER, f"data.data_dir={REAL_DIR}",
                        f"train.out_dir={tok}"])
    sites |= run_probed(["eval", str(tok), "--max-images", "16"])
    data = DataConfig(name="lafan1-h1", data_dir=REAL_DIR, image_shape=(1, 32, NUM_FEATURES))
    with ImplicitDeviceProbe() as probe:
        model, report = train_classifier(lafan_windows("train", data), lafan_windows("test", data), steps=2,
                                         batch_size=16)
        save_classifier(model, report, default_classifier_path())
    sites |= probe.sites
    sites |= run_probed(["robot", "train", str(tok), "--out", str(policy), *TINY_POLICY])
    sites |= run_probed(["robot", "eval", str(policy), "--rollouts", "1", "--windows", "2", "--physics-rollouts", "1",
                         "--json", "--motions", "walk"])
    assert sites == set()


def test_a_scalar_logged_on_the_default_device_is_caught(tiny_overrides, tmp_path, offline, no_plots,
                                                         monkeypatch):
    """The negative control: a method that logs a device-less scalar, the shape of what the GPU check found (since
    then the training loop moves every log to the device, so on a GPU this one would cost a copy, not a failure).
    It trains on the CPU without the probe and fails under it, which names the line that made the tensor."""
    forward = DAPS.forward

    def logs_a_host_scalar(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        out.logs["host_scalar"] = torch.tensor(1.0)  # no device: the CPU, whatever the model's device
        return out

    monkeypatch.setattr(DAPS, "forward", logs_a_host_scalar)
    assert main(tiny_train("daps", tmp_path / "plain", tiny_overrides, ("train.steps=2",))) == 0
    probe = ImplicitDeviceProbe(also=(__file__,))
    with pytest.raises(NotImplementedError, match="meta tensor"), probe:  # moving it to the device: no data
        main(tiny_train("daps", tmp_path / "probed", tiny_overrides, ("train.steps=2",)))
    assert probe.sites == {f"{Path(__file__).name}:{logs_a_host_scalar.__code__.co_firstlineno + 2}"}


def test_load_images_gives_the_inputs_on_the_model_device(trained_run, tmp_path):
    """``daps.load_images(folder, model)`` is "the model's inputs", and ``model.encode`` refuses inputs on another
    device than its own: with a model on CUDA (``daps.load_model(run, "cuda")``), the README's ``encode`` snippet
    failed ("x is on cpu but the model is on cuda"). The meta device stands in for a GPU. Fails on: the images
    left on the CPU."""
    from PIL import Image

    from daps.checkpoint import load_model
    from daps.inputs import load_images

    folder = tmp_path / "digits"
    folder.mkdir()
    for i in range(2):
        Image.new("L", (28, 28), 255 * i).save(folder / f"{i}.png")
    model = load_model(trained_run)
    on_cpu = load_images(folder, model)
    on_meta = load_images(folder, model.to("meta"))
    assert on_cpu.device.type == "cpu" and on_meta.device.type == "meta"
    assert on_meta.shape == on_cpu.shape and on_meta.dtype == on_cpu.dtype
