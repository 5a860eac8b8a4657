"""The whole training step as one CUDA graph (``train.cuda_graph``), and the check that a step can be one.

On a GPU the small models of the paper's presets are bound by kernel launches and Python, not arithmetic: the
MNIST DAPS step launched ~1,500 kernels (~640 since the optimizer step is batched) for a few milliseconds of work
(BENCHMARKS.md, "GPU check"). :class:`GraphedStep` records forward, backward, clipping and both AdamW updates once with
``torch.cuda.CUDAGraph`` and then replays them: one launch per step, no Python in between.

A replay repeats exactly the recorded kernels with their recorded arguments, so a step can be graphed only if:

- nothing in it reads a device value on the host (``.item()``, ``float(t)``, ``if t:``; a data-dependent shape);
- nothing that changes between steps enters as a Python number or a tensor made from one: schedules (DAPS's
  beta) live in 0-d device buffers, :meth:`daps.methods.Method.scheduled`, which the replay refills first;
- no tensor is made from Python data inside the step (``torch.tensor([...], device=...)`` copies from host
  memory, which a recording refuses): constants are made once (``daps.functional._constant``);
- the optimizer keeps its learning rate and step counts on the device (``Optimizers(..., capturable=True)``).

:func:`trace_step` records every operation a step dispatches with its non-tensor arguments and the shapes of its
tensors. Two traces at different steps, inputs and random states are equal, with no host read and no tensor made
from Python data, when the step obeys these rules; ``tests/test_graphed.py`` checks it, on the CPU, of every method
that declares itself graph-safe (``MethodSpec.cuda_graph``), and replays an emulated recording against the eager
step. Random draws from the run's generator are fine: the generator is registered with the graph, which advances
its state at every replay as the eager kernels would.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from daps.methods.types import Method
from daps.nets.ar_encoder import ARTransformerEncoder
from daps.optim import Optimizers

log = logging.getLogger("daps")

HOST_READS = {
    "_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2", "unique_consecutive", "equal",
    "is_nonzero", "bincount", "histc",
}
"""Operations that read device memory on the host or give a shape that depends on values: never in a graph. Some
do it inside their CUDA kernel code, where no trace sees it (``bincount`` and ``histc`` read the input's range), so
they are named here; ``repeat_interleave`` with tensor repeats and no ``output_size`` is caught separately."""


MASK_INDEXING = {"index", "index_put", "index_put_", "_index_put_impl_"}
"""Indexing operations that, given a boolean mask (``x[mask]``, ``x[mask] = values``), find its true entries on
the host first (``nonzero`` inside the CUDA kernel code, where no trace sees it)."""


def _has_bool_index(args: tuple, kwargs: dict) -> bool:
    """Whether an indexing call takes a mask in a way that syncs. Writing one number through one mask
    (``x[mask] = 0.5``, not accumulated) is done as ``masked_fill_`` on the device, no sync: not counted (a 0-d
    CUDA tensor as the value would sync, which a CPU trace cannot tell from a number)."""
    indices = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ()
    masks = [i for i in indices if isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)]
    if not masks:
        return False
    values = args[2] if len(args) > 2 else kwargs.get("values")
    accumulate = args[3] if len(args) > 3 else kwargs.get("accumulate", False)
    scalar_fill = (isinstance(values, torch.Tensor) and values.numel() == 1 and not accumulate
                   and len([i for i in indices if i is not None]) == 1)
    return not scalar_fill


def _describe(value: Any) -> Any:
    """A hashable description of one argument: tensors by shape, dtype and device; numbers and the rest by value."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), str(value.dtype), value.device.type)
    if isinstance(value, (list, tuple)):
        return tuple(_describe(v) for v in value)
    if value is None or isinstance(value, (bool, int, float, complex, str, torch.dtype, torch.device, torch.layout)):
        return value
    return type(value).__name__  # a generator, the profiler's record: only that it is there


class StepTrace(TorchDispatchMode):
    """Records the operations dispatched inside it (see :func:`trace_step`).

    Writes into ``ignore`` (the schedule buffers, refilled between replays) are left out; the value of a tensor
    made from Python data (``torch.tensor(x)``) is recorded, since a graph would freeze it.
    """

    def __init__(self, ignore: list[torch.Tensor]):
        super().__init__()
        self.ops: list[tuple] = []
        self.host_reads: list[str] = []
        self.host_copies: list[str] = []
        self._ignore = {id(t) for t in ignore}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.__name__.split(".")[0]
        if name in ("fill_", "copy_") and isinstance(args[0], torch.Tensor) and id(args[0]) in self._ignore:
            return out
        if name in HOST_READS or (name == "repeat_interleave" and kwargs.get("output_size") is None) or (
            name in MASK_INDEXING and _has_bool_index(args, kwargs)
        ):
            self.host_reads.append(str(func))
        described = [_describe(a) for a in args]
        if name in ("lift_fresh", "lift_fresh_copy"):  # torch.tensor(data): on a GPU, a copy from host memory
            values = tuple(args[0].flatten().tolist())
            self.host_copies.append(str(list(values))[:80])
            described.append(("value", values))  # a graph would freeze it
        self.ops.append((str(func), tuple(described), tuple(sorted((k, _describe(v)) for k, v in kwargs.items()))))
        return out


@dataclass
class Trace:
    """What one traced step dispatched: every operation with its arguments, and the host reads among them."""

    ops: list[tuple]
    host_reads: list[str]
    host_copies: list[str]  # the data of each tensor made from Python data (torch.tensor): a host-to-device copy

    def first_difference(self, other: Trace) -> str | None:
        """Where two traces part (None if equal): the first differing operation of each."""
        for i, (a, b) in enumerate(zip(self.ops, other.ops)):
            if a != b:
                return f"operation {i}: {a} vs {b}"
        if len(self.ops) != len(other.ops):
            return f"{len(self.ops)} vs {len(other.ops)} operations"
        return None


def trace_step(step_fn: Callable[[], Any], model: Method) -> Trace:
    """Run ``step_fn()`` (one whole training step) recording what it dispatches; see :class:`StepTrace`."""
    with StepTrace(list(model.schedule_buffers())) as mode:
        step_fn()
    return Trace(mode.ops, mode.host_reads, mode.host_copies)


class GraphedStep:
    """Forward, backward and optimizer step of ``model`` as one CUDA graph, replayed at every step.

    The first ``warmup`` calls run eagerly on a side stream (they are real training steps; CUDA libraries set up
    their workspaces there, and the optimizers create their state); the next call records the graph and every call
    from then on replays it. ``x`` is copied into a static input buffer; the step's schedule values and the learning
    rate are refilled before each replay. Returns the step's logs and each optimizer's gradient norm, device
    tensors that the next call overwrites (read or copy them before). The model's autoregressive encoders are set to
    ``share_prefixes="off"``: a graph's shapes must not depend on the codes, and the warm-up runs what the graph
    records.

    Args:
        model: the method, graph-safe (``MethodSpec.cuda_graph``).
        optimizers: built with ``capturable=True``.
        generator: the run's sampling generator (registered with the graph).
        autocast: bf16 autocast around the forward (its weight cache off, as graphs need).
    """

    warmup_steps = 3
    """Eager steps before the recording (the default of ``warmup``)."""

    def __init__(
        self, model: Method, optimizers: Optimizers, generator: torch.Generator, autocast: bool = False,
        warmup: int = warmup_steps,
    ):
        if not optimizers.capturable:
            raise ValueError("GraphedStep needs Optimizers(..., capturable=True)")
        if warmup < 1:  # the eager steps make the schedule buffers and the optimizers' state the graph reads
            raise ValueError(f"GraphedStep needs at least 1 eager warm-up step, got {warmup}")
        self.model, self.optimizers, self.generator = model, optimizers, generator
        self.autocast, self.warmup = autocast, warmup
        # the whole pass: shapes that do not depend on the codes (daps.nets.prefixes)
        for module in model.modules() if isinstance(model, torch.nn.Module) else ():
            if isinstance(module, ARTransformerEncoder):
                module.share_prefixes = "off"
        self.calls = 0
        self.graph: Any = None  # the recording (a torch.cuda.CUDAGraph)
        self._x: torch.Tensor | None = None
        self._outputs: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None

    def __call__(self, x: torch.Tensor, step: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        if self._x is None:
            self._x = torch.empty_like(x)
        elif x.shape != self._x.shape or x.dtype != self._x.dtype:
            raise ValueError(f"a graphed step needs inputs of one shape: {tuple(self._x.shape)}, got {tuple(x.shape)}")
        self._x.copy_(x)
        self.model.fill_schedules(step)
        self.calls += 1
        if self.graph is None and self.calls <= self.warmup:
            return self._eager(step)
        ran = False
        if self.graph is None:
            self.optimizers.zero_grad()  # the backward inside the graph allocates the gradients: static from now on
            self.model.capturing = True  # the schedule buffers keep what fill_schedules wrote
            start = time.perf_counter()
            try:
                ran = self._record(step)
            finally:
                self.model.capturing = False
            log.info("step %d: the training step is recorded as one graph (%.1f s); replaying it from here",
                     step + 1, time.perf_counter() - start)
        if not ran:
            self._replay()
        assert self._outputs is not None
        return self._outputs

    def _step(self, step: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The step itself: forward (under autocast, its weight cache off, as graphs need), backward, updates."""
        assert self._x is not None
        with torch.autocast(self._x.device.type, dtype=torch.bfloat16, enabled=self.autocast, cache_enabled=False):
            out = self.model(self._x, step, generator=self.generator)
        out.loss.backward()
        return out.logs, self.optimizers.launch()

    # The three things a CUDA graph does, each on the generator's device made current (``--device cuda:1`` in one
    # process would leave GPU 0 current). tests/graph_steps.py replaces them with a recording of the dispatched
    # operations that runs on the CPU, to check everything above.

    def _eager(self, step: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """A warm-up step, on a side stream (as recording needs: the libraries' workspaces are made there)."""
        with torch.cuda.device(self.generator.device):
            current, side = torch.cuda.current_stream(), torch.cuda.Stream()
            side.wait_stream(current)
            with torch.cuda.stream(side):
                self.optimizers.zero_grad()
                outputs = self._step(step)
            current.wait_stream(side)
        return outputs

    def _record(self, step: int) -> bool:
        """Record the step into ``self.graph`` and ``self._outputs``; returns whether recording also ran it (a CUDA
        recording runs nothing)."""
        with torch.cuda.device(self.generator.device):
            graph = torch.cuda.CUDAGraph()
            graph.register_generator_state(self.generator)
            # thread_local: CUDA calls of other threads (a data loader's pinning) do not break the recording
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self._outputs = self._step(step)
        self.graph = graph  # only a whole recording: a failed one is not replayed
        return False

    def _replay(self) -> None:
        with torch.cuda.device(self.generator.device):
            self.graph.replay()
