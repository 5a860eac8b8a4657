"""Device bugs found on a CPU: tensors that daps makes without naming a device.

On a GPU, a tensor made without ``device=`` lands on the CPU; where it then meets the model's CUDA tensors
(``torch.stack``, an index, an arithmetic op) the step fails, or it silently costs a host-device copy. The one
GPU check this project has had found exactly that (a CPU scalar logged next to CUDA tensors). On a CPU-only
machine both sit on the CPU and nothing notices, so these helpers make the difference visible:

- :class:`ImplicitDeviceProbe` (run time): while it is active, a tensor factory called by daps's own code
  without a device makes a ``meta`` tensor (no data) instead of a CPU one. Any such tensor that meets the CPU
  model or data, or is read, fails at once and names the line.
- :func:`unnamed_device_calls` (source): every ``torch.<factory>(...)`` call in a file that names no device.

Both leave alone what legitimately starts on the CPU and moves later: calls made directly in the ``__init__`` of a
``torch.nn.Module`` (its parameters and buffers move with the module) and ``torch.as_tensor(t)`` of a tensor
(keeps ``t``'s device); the run-time probe also leaves alone the host-side data pipeline (``daps/data/``), which
the source check still covers. Everything else says ``device=...`` (``device=g.device`` for a draw from
generator ``g``: a draw is made on the default device whatever its generator's), ``device="cpu"`` when it is meant
for the host. Not seen by either: ``torch.from_numpy`` (always the CPU) and the legacy ``torch.Tensor(...)``.
A redirected tensor usually fails where it is used; indexing a CPU tensor with a meta index can instead read
garbage silently, so the tests also require that no call was redirected at all (``probe.sites`` empty).
"""

from __future__ import annotations

import ast
import functools
import importlib
import sys
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

import daps

PACKAGE = Path(daps.__file__).resolve().parent
EXEMPT_FOLDERS = (PACKAGE / "data",)  # the host-side input pipeline: batches are moved to the device by the loop

# torch's tensor factories that take ``device=`` (torch.utils._device keeps the full list; these are the ones
# daps calls or could), checked in source; ``as_tensor`` / ``asarray`` only at run time, where it is known
# whether their argument is already a tensor.
FACTORIES = (
    "arange", "empty", "eye", "full", "linspace", "logspace", "ones", "rand", "randint", "randn", "randperm",
    "scalar_tensor", "tensor", "zeros",
)


def _building_a_module(frame) -> bool:
    """Whether ``frame`` is a module's ``__init__`` (its parameters and buffers move with the module)."""
    return frame.f_code.co_name == "__init__" and isinstance(frame.f_locals.get("self"), torch.nn.Module)


@functools.lru_cache(maxsize=None)
def _watched(filename: str, also: tuple[Path, ...]) -> bool:
    """daps's own code outside the data pipeline, and the files in ``also`` (asked at every factory call of a
    probed run, so the answer is kept per file)."""
    path = Path(filename).resolve()
    if path in also:
        return True
    return PACKAGE in path.parents and not any(folder in path.parents for folder in EXEMPT_FOLDERS)


class ImplicitDeviceProbe(TorchFunctionMode):
    """Within ``with ImplicitDeviceProbe() as probe:``, daps's device-less tensor factories make ``meta``
    tensors; ``probe.sites`` lists the ``file:line`` of each call so redirected. ``also``: more source files to
    watch as if they were daps's (a test's own code)."""

    def __init__(self, also: tuple[str | Path, ...] = ()) -> None:
        super().__init__()
        self.sites: set[str] = set()
        self._also = tuple(Path(p).resolve() for p in also)
        self._factories = {getattr(torch, name) for name in FACTORIES} | {torch.as_tensor, torch.asarray}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in self._factories and kwargs.get("device") is None:
            keeps_device = func in (torch.as_tensor, torch.asarray) and bool(args) and torch.is_tensor(args[0])
            caller = sys._getframe(1)
            filename = caller.f_code.co_filename
            if not keeps_device and _watched(filename, self._also) and not _building_a_module(caller):
                kwargs["device"] = "meta"
                self.sites.add(f"{Path(filename).name}:{caller.f_lineno}")
        return func(*args, **kwargs)


def _module_classes(path: Path) -> set[str]:
    """Names of the ``torch.nn.Module`` subclasses defined at the top of ``path`` (a file of daps, imported)."""
    if PACKAGE not in path.resolve().parents or path.name == "__main__.py":  # __main__ runs the CLI
        return set()
    parts = path.resolve().relative_to(PACKAGE.parent).with_suffix("").parts
    module = importlib.import_module(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return {name for name, obj in vars(module).items()
            if isinstance(obj, type) and issubclass(obj, torch.nn.Module) and obj.__module__ == module.__name__}


def unnamed_device_calls(path: Path) -> list[str]:
    """``file:line: torch.name`` of each factory call in ``path`` that names no ``device``, outside the
    ``__init__`` of a ``torch.nn.Module`` subclass."""
    modules = _module_classes(path)
    found: list[str] = []

    def visit(node: ast.AST, in_module_init: bool, module_class: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_module_init or (
                module_class and isinstance(child, ast.FunctionDef) and child.name == "__init__"
            )
            func = child.func if isinstance(child, ast.Call) else None
            if (
                not inside and isinstance(func, ast.Attribute) and func.attr in FACTORIES
                and isinstance(func.value, ast.Name) and func.value.id == "torch"
                and "device" not in {k.arg for k in child.keywords}  # type: ignore[union-attr]
            ):
                found.append(f"{path}:{child.lineno}: torch.{func.attr}")  # type: ignore[union-attr]
            visit(child, inside, isinstance(child, ast.ClassDef) and child.name in modules)

    visit(ast.parse(path.read_text()), False, False)
    return found
