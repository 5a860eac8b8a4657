"""``train.tf32`` and :mod:`daps.precision`: the training step in TF32 when asked, everything else in full float32,
the process's own setting restored. The flags are only flags on the CPU, so where they are in force is checked
here; that TF32 kernels run and train is tests/test_gpu.py's."""

from __future__ import annotations

import pytest
import torch

from daps import get_preset, parse_overrides
from daps.data import TensorEvalSet
from daps.methods import build_method
from daps.metrics import evaluate
from daps.precision import float32_kernels, tf32_enabled


@pytest.fixture
def restore_flags():
    """Leave the process's TF32 settings as they were, whatever a test sets (through either of torch's interfaces)."""
    saved = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    yield
    torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = saved


def _spy(monkeypatch, cls, name: str) -> list[tuple[bool, bool]]:
    """The TF32 setting at each call of ``cls.name``, in a list that fills as the method is called."""
    seen, method = [], getattr(cls, name)

    def spied(self, *args, **kwargs):
        seen.append(tf32_enabled())
        return method(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, spied)
    return seen


@pytest.mark.parametrize("tf32", [True, False])
def test_float32_kernels_sets_both_flags_inside_and_restores_them(tf32, restore_flags):
    before = tf32_enabled()
    with float32_kernels(tf32):
        assert tf32_enabled() == (tf32, tf32)
        assert torch.backends.cuda.matmul.allow_tf32 is tf32 and torch.backends.cudnn.allow_tf32 is tf32
    assert tf32_enabled() == before


def test_float32_kernels_works_after_the_newer_interface_and_restores_its_values(restore_flags):
    """torch >= 2.9 refuses to read the legacy flags once its ``fp32_precision`` settings were used: a user who set
    them must still be able to train, and get them back as set."""
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    torch.backends.cudnn.conv.fp32_precision = "ieee"
    with float32_kernels(tf32=False):
        assert tf32_enabled() == (False, False)
    assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    assert torch.backends.cudnn.conv.fp32_precision == "ieee"


def test_validation_runs_in_full_float32_inside_a_tf32_step(monkeypatch, restore_flags):
    cfg = parse_overrides(get_preset("mnist", "daps"), ["encoder.width=16", "encoder.num_heads=2",
                                                        "encoder.vocab_size=16", "encoder.num_tokens=4"])
    model = build_method(cfg, (1, 28, 28))
    seen = _spy(monkeypatch, type(model), "reconstruct")
    with float32_kernels(tf32=True):
        evaluate(model, TensorEvalSet(torch.rand(4, 1, 28, 28).round(), 2))
        assert tf32_enabled() == (True, True)  # and back
    assert seen == [(False, False)] * 2


@pytest.mark.parametrize("tf32", [True, False])
def test_the_training_step_runs_as_train_tf32_says_and_validation_in_float32(
    tf32, tmp_path, tiny_overrides, monkeypatch, restore_flags
):
    """Through ``daps train``, with the CUDA-only refusal lifted (the flags are plain flags on the CPU): every
    training step sees the setting, every validation full float32, and the process has its flags back after."""
    import daps.train as train_module
    from daps.cli import main
    from daps.methods.daps import DAPS

    monkeypatch.setattr(train_module, "_check_cuda_graph", lambda *a: None)
    steps, validations = _spy(monkeypatch, DAPS, "forward"), _spy(monkeypatch, DAPS, "reconstruct")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # a process that runs TF32
    code = main(["train", "--preset", "mnist", "--device", "cpu", *tiny_overrides, f"train.out_dir={tmp_path / 'run'}",
                 f"train.tf32={str(tf32).lower()}", "train.progress=false"])
    assert code == 0
    assert steps == [(tf32, tf32)] * 6
    assert validations and set(validations) == {(False, False)}
    assert tf32_enabled() == (True, True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_tf32_on_the_cpu_exits_2_and_writes_nothing(tmp_path, capsys):
    from daps.cli import main

    out = tmp_path / "run"
    assert main(["train", "--preset", "mnist", "--device", "cpu", f"train.out_dir={out}", "train.tf32=true"]) == 2
    assert "train.tf32 needs a CUDA device; this run is on cpu" in capsys.readouterr().err
    assert not out.exists()
