"""Test helpers for the whole-step graph (``daps.graphed``): a CPU stand-in for the CUDA graph, and a few training
steps eager or graphed, for ``test_graphed.py`` (CPU) and ``test_gpu.py`` (CUDA)."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from daps import get_preset, parse_overrides
from daps.graphed import GraphedStep
from daps.methods import build_method
from daps.optim import Optimizers

SMALL = [
    "encoder.width=16", "encoder.num_heads=2", "encoder.vocab_size=16", "encoder.num_tokens=4", "train.batch_size=4",
    "train.steps=1000",
    "encoder.share_prefixes=off",  # what a CUDA device runs by default (the trace tests check a CUDA graph's step)
]


class _Recorder(TorchDispatchMode):
    """Records every operation dispatched inside it with its arguments and results (kept alive, so no memory is
    reused: every tensor keeps its address, as in a CUDA graph's pool)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.calls.append((func, args, kwargs, out))
        return out


def _replay(calls: list[tuple]) -> None:
    """Run the recorded operations again on the recorded tensors, writing each result into the tensor the
    recording produced (as a CUDA graph's kernels write at fixed addresses); results that alias an input
    (views, in-place operations) already see the new values. Random draws advance the generator, as a replay of
    a graph with a registered generator does."""
    with torch.no_grad():
        for func, args, kwargs, out in calls:
            result = func(*args, **kwargs)
            tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
            inputs = {t.untyped_storage().data_ptr() for t in tensors}
            for old, new in zip(tree_leaves(out), tree_leaves(result)):
                if isinstance(old, torch.Tensor) and old.untyped_storage().data_ptr() not in inputs:
                    old.copy_(new)


class EmulatedGraphedStep(GraphedStep):
    """:class:`GraphedStep` with the CUDA graph replaced by :class:`_Recorder` and :func:`_replay` (CPU)."""

    def _eager(self, step):
        self.optimizers.zero_grad()
        return self._step(step)

    def _record(self, step):
        with _Recorder() as recorder:
            self._outputs = self._step(step)
        self.graph = recorder.calls
        return True  # the recording ran the step

    def _replay(self):
        _replay(self.graph)


def train_steps(
    method: str, graphed: type[GraphedStep] | None, device: str = "cpu", steps: int = 7, batch: int = 4,
    overrides: tuple[str, ...] = (), bf16: bool = False, compile: bool = False,
) -> tuple:
    """``steps`` training steps of a small MNIST ``method``, eager (``graphed`` None) or through ``graphed``, with
    beta and the learning rate moving at every step; returns the model, each step's logs (floats) and the step.
    ``compile``: ``model.compile_step()`` first, in the mode ``train.compile`` takes together with
    ``train.cuda_graph`` (inductor's default)."""
    cfg = parse_overrides(get_preset("mnist", method), [*SMALL, *overrides])
    torch.manual_seed(0)
    model = build_method(cfg, (1, 28, 28)).to(device)
    if compile:
        model.compile_step(mode=None)
    # capturable in both: the rate as a tensor rounds differently from a float, which is not what is tested here
    opts = Optimizers(model, model.optimizer_specs(1e-2, cfg.optim.grad_clip), 1e-4, capturable=True)
    generator, data = torch.Generator(device).manual_seed(1), torch.Generator(device).manual_seed(2)
    step_fn = graphed(model, opts, generator, autocast=bf16) if graphed is not None else None
    logs_per_step = []
    for step in range(steps):
        x = (torch.rand(batch, 1, 28, 28, generator=data, device=device) > 0.7).float()
        opts.scale_lr(1.0 - step / 10)
        if step_fn is not None:
            logs, norms = step_fn(x, step)
        else:
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
                out = model(x, step, generator=generator)
            opts.zero_grad()
            out.loss.backward()
            logs, norms = out.logs, opts.launch()
        opts.finish(norms)
        logs_per_step.append({k: float(v) for k, v in logs.items()})
    return model, logs_per_step, step_fn
