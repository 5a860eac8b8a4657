"""What ``train.cuda_graph`` relies on, checked on the CPU: every method that says its step can be one CUDA graph
dispatches the same operations, with the same non-tensor arguments, at any step, input and random state, and
reads nothing back on the host (:func:`daps.graphed.trace_step`); the methods that say it cannot, cannot. And
:class:`daps.graphed.GraphedStep` itself, with the CUDA graph replaced by a recording of the dispatched operations
replayed on the same tensors (what a graph does with fixed addresses): replays train bit for bit as the eager step,
in the training loop too, across a resume. Recording and replaying on a GPU is checked in ``tests/test_gpu.py``."""

from __future__ import annotations

import pytest
import torch
from graph_steps import SMALL, EmulatedGraphedStep, train_steps

from daps import get_preset, parse_overrides
from daps.graphed import Trace, trace_step
from daps.methods import METHODS, build_method
from daps.optim import Optimizers


def _traces(method: str, preset: str = "mnist", overrides: tuple[str, ...] = ()) -> tuple[Trace, Trace]:
    """Two traced training steps of ``method`` (forward, backward, clip, AdamW) at steps 1 and 600, on different
    inputs and random states, the learning rate on a schedule."""
    cfg = parse_overrides(get_preset(preset, method), [*SMALL, *overrides])
    shape = tuple(cfg.data.image_shape)
    torch.manual_seed(0)
    model = build_method(cfg, shape)
    optimizers = Optimizers(
        model, model.optimizer_specs(cfg.optim.lr, cfg.optim.grad_clip), cfg.optim.weight_decay, capturable=True
    )
    generator = torch.Generator().manual_seed(1)

    def step_at(step: int) -> Trace:
        x = torch.rand(4, *shape).round() if preset == "mnist" else torch.randn(4, *shape)
        optimizers.scale_lr(1.0 - step / 1000)  # outside the step: a graph reads the rate from the device

        def run() -> None:
            out = model(x, step, generator=generator)
            optimizers.zero_grad()
            out.loss.backward()
            optimizers.launch()

        return trace_step(run, model)

    step_at(0)  # first step: schedule buffers and optimizer state are created
    return step_at(1), step_at(600)


def _graph_safe(first: Trace, second: Trace) -> bool:
    return not first.host_reads and not first.host_copies and first.first_difference(second) is None


@pytest.mark.parametrize("method", [name for name, spec in METHODS.items() if spec.cuda_graph])
def test_steps_of_graph_safe_methods_are_the_same_operations_at_every_step(method):
    first, second = _traces(method)
    assert not first.host_reads, first.host_reads
    assert not first.host_copies, first.host_copies
    assert first.first_difference(second) is None, first.first_difference(second)
    assert len(first.ops) > 100  # the whole step was traced


@pytest.mark.parametrize("method", [name for name, spec in METHODS.items() if not spec.cuda_graph])
def test_methods_not_marked_graph_safe_are_not(method):
    assert not _graph_safe(*_traces(method))  # the mark is not missing by oversight


@pytest.mark.parametrize(
    "preset, overrides",
    [("mnist", ("daps.resample=2",)), ("mnist", ("daps.resample=2", "daps.resample_scheme=multinomial")),
     ("mnist", ("daps.eta_lr=0",)),
     ("cifar10", ("decoder.hidden=8,8",)), ("lafan1-h1", ()),
     ("imagenet256", ("decoder.resnet_width=8", "decoder.resnet_blocks=1"))],
)
def test_daps_steps_are_graph_safe_at_other_presets_and_with_resampling(preset, overrides):
    assert _graph_safe(*_traces("daps", preset, overrides))


def test_a_schedule_passed_as_a_python_number_is_caught(monkeypatch):
    """Negative control: beta made with torch.tensor(value) at each step, as the step did before, would be frozen
    in a graph at the recorded step's value; the traces differ."""
    from daps.methods.daps import DAPS

    monkeypatch.setattr(DAPS, "scheduled", lambda self, name, step, device: torch.tensor(self.beta(step)))
    first, second = _traces("daps")
    assert "lift_fresh" in (first.first_difference(second) or "")


def test_a_host_read_is_caught(monkeypatch):
    """Negative control: a step that reads a device value on the host (here the ESS, as a logging shortcut might)."""
    import daps.functional as DF

    real = DF.effective_sample_size
    monkeypatch.setattr(DF, "effective_sample_size", lambda w: real(w) * (1.0 if float(w.detach().sum()) > 0 else 0.0))
    first, _ = _traces("daps")
    assert first.host_reads == ["aten._local_scalar_dense.default"]


def test_an_operation_that_reads_the_host_inside_its_cuda_kernel_is_caught(monkeypatch):
    """Negative control: the codebook perplexity by ``torch.bincount`` (as before), which on a GPU reads the
    indices' range on the host inside its kernel; on the CPU no host read is dispatched, so it is caught by name."""
    import daps.functional as DF

    def by_bincount(indices, vocab_size):
        counts = torch.bincount(indices.flatten(), minlength=vocab_size).float()
        p = counts / counts.sum()
        return torch.exp(-torch.special.xlogy(p, p).sum())

    monkeypatch.setattr(DF, "empirical_perplexity", by_bincount)
    first, _ = _traces("vqvae")
    assert first.host_reads == ["aten.bincount.default"]


def test_boolean_mask_indexing_is_caught(monkeypatch):
    """Negative control: ``x[mask] = values`` keeps its shape (the two traces agree) but on a GPU finds the mask's
    true entries on the host; here a guard against tiny weights written that way. One number written through the
    mask is a device-side fill: not counted."""
    import daps.functional as DF

    real = DF.effective_sample_size

    def guarded(w, fill):
        w = w.clone()
        mask = w < 1e-30
        w[mask] = 1e-30 if fill else w.detach()[mask] * 0 + 1e-30
        return real(w)

    monkeypatch.setattr(DF, "effective_sample_size", lambda w: guarded(w, fill=False))
    first, second = _traces("daps")
    assert first.host_reads and first.first_difference(second) is None
    assert set(first.host_reads) <= {"aten.index.Tensor", "aten.index_put_.default", "aten.index_put.default"}
    monkeypatch.setattr(DF, "effective_sample_size", lambda w: guarded(w, fill=True))
    assert _traces("daps")[0].host_reads == []


def test_a_tensor_made_from_python_data_in_the_step_is_caught(monkeypatch):
    """Negative control: FSQ's level constants made at every call (as before), a host-to-device copy per step."""
    import daps.functional as DF

    monkeypatch.setattr(DF, "_constant", lambda values, dtype, device: torch.tensor(values, dtype=dtype, device=device))
    first, second = _traces("fsq")
    assert first.host_copies and first.first_difference(second) is None  # the same ops: only the copies tell


def test_scheduled_values_follow_the_step_and_a_recording_leaves_them():
    cfg = parse_overrides(get_preset("mnist", "daps"), SMALL)
    model = build_method(cfg, (1, 28, 28))
    beta = model.scheduled("beta", 0, torch.device("cpu"))
    assert beta.item() == pytest.approx(model.beta(0))
    assert model.scheduled("beta", 900, torch.device("cpu")) is beta  # one buffer, refilled
    assert beta.item() == pytest.approx(model.beta(900)) and model.beta(900) < model.beta(0)
    model.capturing = True
    model.scheduled("beta", 0, torch.device("cpu"))
    assert beta.item() == pytest.approx(model.beta(900))  # as fill_schedules left it
    model.capturing = False
    model.fill_schedules(300)
    assert beta.item() == pytest.approx(model.beta(300))


def test_capturable_optimizers_step_as_the_plain_batched_ones():
    """Learning rate and step counts on the device change nothing in the numbers (a cosine-scaled rate, clipping
    on, 3 steps), and a checkpoint moves between the two."""
    cfg = parse_overrides(get_preset("mnist", "daps"), SMALL)
    models = []
    for capturable in (False, True):
        torch.manual_seed(0)
        model = build_method(cfg, (1, 28, 28))
        opts = Optimizers(model, model.optimizer_specs(1e-2, 0.01), 1e-4, capturable=capturable)
        for step in range(3):
            opts.scale_lr(1.0 - 0.3 * step)
            out = model(torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(step)).round(), step,
                        generator=torch.Generator().manual_seed(10 + step))
            opts.zero_grad()
            out.loss.backward()
            opts.step()
        models.append((model, opts))
    for a, b in zip(models[0][0].parameters(), models[1][0].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    plain, capturable = models[0][1], models[1][1]
    capturable.load_state_dict(plain.state_dict())
    lr = capturable.optimizers["vae"].param_groups[0]["lr"]
    assert isinstance(lr, torch.Tensor) and lr.item() == pytest.approx(plain.optimizers["vae"].param_groups[0]["lr"])
    plain.load_state_dict(capturable.state_dict())
    assert isinstance(plain.optimizers["vae"].param_groups[0]["lr"], float)


def test_cuda_graph_with_compile_records_the_compiled_kernels_without_inductors_own_graphs():
    """Both settings are accepted together; the step is then compiled in inductor's default mode (its own CUDA
    graphs would sit inside the one graph of the whole step), while ``train.compile`` alone uses them on CUDA. The
    CUDA run itself is tests/test_gpu.py's."""
    from daps.train import compile_mode

    parse_overrides(get_preset("mnist"), ["train.cuda_graph=true", "train.compile=true"])
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert compile_mode(cuda, cuda_graph=True) is None
    assert compile_mode(cuda, cuda_graph=False) == "reduce-overhead"
    assert compile_mode(cpu, cuda_graph=False) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_graph_run_on_the_cpu_exits_2_and_writes_nothing(tmp_path, capsys):
    from daps.cli import main

    out = tmp_path / "run"
    code = main(["train", "--preset", "mnist", "--device", "cpu", f"train.out_dir={out}", "train.cuda_graph=true"])
    assert code == 2
    assert "train.cuda_graph needs a CUDA device" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("method", [name for name, spec in METHODS.items() if spec.cuda_graph])
def test_a_recorded_step_replayed_trains_as_the_eager_step(method, single_thread):
    """Warm-up, recording and replays (emulated) give the eager run's logs at every step and its parameters after 7
    steps, while beta, the temperature and the learning rate move: nothing step-dependent is frozen in the
    recording, and what it writes (gradients, Adam state, parameters, logs) is what the next replay reads."""
    eager_model, eager_logs, _ = train_steps(method, None)
    model, logs, step_fn = train_steps(method, EmulatedGraphedStep)
    assert step_fn is not None and step_fn.graph and step_fn.calls == 7  # steps 5-7 were replays
    for step, (a, b) in enumerate(zip(eager_logs, logs)):
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == a[key], (step, key)  # the same operations on the same numbers: bit for bit
    for p, q in zip(eager_model.parameters(), model.parameters()):
        assert torch.equal(p, q)


def test_a_recorded_step_with_a_fixed_eta_trains_as_the_eager_step(single_thread):
    """daps.eta_lr=0 (log eta has no gradient and no optimizer): the recording replays the eager steps, eta unmoved."""
    eager_model, eager_logs, _ = train_steps("daps", None, overrides=("daps.eta_lr=0",))
    model, logs, step_fn = train_steps("daps", EmulatedGraphedStep, overrides=("daps.eta_lr=0",))
    assert step_fn is not None and step_fn.graph and step_fn.calls == 7
    assert logs == eager_logs and len({row["eta"] for row in logs}) == 1
    for p, q in zip(eager_model.parameters(), model.parameters()):
        assert torch.equal(p, q)


def test_replays_of_a_recording_that_froze_a_schedule_drift_from_the_eager_step(monkeypatch, single_thread):
    """Negative control of the test above: with beta passed as a number (frozen at the recording's step 3), the
    replays' logged beta stays at step 3's value while the eager one moves on."""
    from daps.methods.daps import DAPS

    monkeypatch.setattr(DAPS, "scheduled", lambda self, name, step, device: torch.tensor(self.beta(step)))
    _, eager_logs, _ = train_steps("daps", None)
    _, logs, _ = train_steps("daps", EmulatedGraphedStep)
    assert logs[-1]["beta"] == pytest.approx(logs[3]["beta"]) and eager_logs[-1]["beta"] < eager_logs[3]["beta"]


@pytest.mark.usefixtures("offline", "no_plots", "single_thread")
def test_a_graphed_run_resumes_to_the_uninterrupted_run(tmp_path, tiny_overrides, monkeypatch):
    """``daps train train.cuda_graph=true`` through the training loop (emulated graph, CPU): stopped after 6 steps
    and resumed to 12 (the resumed process warms up and records again), the run ends bit for bit where the same
    run without the stop ends, and where the eager run ends up to the rounding of a learning rate held as a tensor;
    the metrics rows agree likewise. The setting may change on resume: the eager run continued graphed agrees too."""
    import json

    import daps.train as train_module
    from daps.checkpoint import load_model

    made = []

    class Tracked(EmulatedGraphedStep):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(train_module, "GraphedStep", Tracked)
    monkeypatch.setattr(train_module, "_check_cuda_graph", lambda cfg, device, world: None)

    def run(name, graphed, stop=0, resume=False):
        cfg = parse_overrides(get_preset("mnist"), [
            *tiny_overrides, "train.steps=12", "train.log_every=1", f"train.out_dir={tmp_path / name}",
            f"train.cuda_graph={str(graphed).lower()}", f"train.stop_after={stop}",
        ])
        return train_module.train(cfg, resume=resume, device="cpu")

    whole = run("whole", True)
    run("split", True, stop=6)
    split = run("split", True, resume=True)
    eager = run("eager", False)
    run("mixed", False, stop=6)
    mixed = run("mixed", True, resume=True)

    assert len(made) == 4 and all(step.graph for step in made)  # whole, split twice, mixed's second half: replayed

    def rows(path):
        lines = (path / "metrics.jsonl").read_text().splitlines()
        return [r for r in map(json.loads, lines) if r["split"] == "train"]

    assert [r["loss"] for r in rows(whole)] == [r["loss"] for r in rows(split)]
    for a, b in zip(rows(whole), rows(eager)):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    models = [load_model(path) for path in (whole, split, eager, mixed)]
    for p, q, r, m in zip(*(model.parameters() for model in models)):
        assert torch.equal(p, q)
        torch.testing.assert_close(p, r, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(m, r, rtol=1e-4, atol=1e-5)


def test_which_mask_indexing_counts_as_a_host_read():
    from daps.graphed import StepTrace, _has_bool_index

    x, mask, idx = torch.zeros(4), torch.tensor([True, False, True, False]), torch.tensor([0, 2])
    one, several = torch.tensor(1.0), torch.ones(2)
    assert not _has_bool_index((x, [idx], several), {})  # integer indices: no mask
    assert not _has_bool_index((x, [mask], one), {})  # one number through one mask: a device-side fill
    assert _has_bool_index((x, [mask], several), {})  # values to scatter: the mask's entries on the host
    assert _has_bool_index((x, [mask], one, True), {})  # accumulated
    assert _has_bool_index((x, [mask.to(torch.uint8)], several), {})  # uint8 indices are masks too
    assert _has_bool_index((torch.zeros(4, 2), [mask, torch.tensor([0, 1])], one), {})  # a mask among others
    with StepTrace([]) as trace:
        x[mask]  # a read through a mask
    assert trace.host_reads == ["aten.index.Tensor"]
