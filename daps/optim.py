"""Optimizers as in the original: AdamW per parameter group, adaptive unit-wise clipping, and updates
with a non-finite gradient skipped (original: jadex/base/base_state.py).

The step is batched so that its cost does not grow with the number of parameter tensors: the unit-wise
clipping stacks every unit of the same fan-in into one matrix (one norm kernel for all of them) and spreads
the scales back with one gather; AdamW is torch's fused kernel, which skips a non-finite update on the
device (its ``found_inf`` input), so a step launches a few dozen kernels instead of ~12 per parameter and
synchronizes with the host once. Measured in BENCHMARKS.md, "Optimizer step" (benchmarks/optimizer_step.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from daps.functional import adaptive_grad_clip


@dataclass
class OptimizerSpec:
    """One optimizer a method asks for: its parameters, learning rate and clipping (0 = none).

    ``clip`` is ``"adaptive"`` (unit-wise, as the original's optax ``adaptive_grad_clip``) or ``"global_norm"`` (the
    whole group's norm).
    """

    name: str
    params: list[nn.Parameter]
    lr: float
    grad_clip: float
    clip: str = "adaptive"


def unit_dims(model: nn.Module) -> dict[nn.Parameter, tuple[int, ...] | None]:
    """For each parameter, the dims to reduce to get one norm per "unit", as the original's optax
    ``adaptive_grad_clip`` reduces its Flax kernels (over axis 0 of 2-D and 3-D ones, over all but the last of
    4-D ones).

    Linear ``(out, in)`` -> (1,) (one unit per output feature); Conv2d ``(out, in, kh, kw)`` -> all but 0;
    ConvTranspose2d ``(in, out, kh, kw)`` -> all but 1; 1-D convolutions (``(out, in, k)`` or transposed
    ``(in, out, k)``) -> (2,): one unit per input-output channel pair, over the kernel taps, as the 3-D Flax
    kernel ``(k, in, out)``; Embedding ``(V, E)`` -> (0,) (one unit per embedding feature, like the original's
    Flax table); vectors and scalars -> the whole tensor (None). A module lists the units of its other matrices
    (e.g. VQ-VAE's codebook, a bare ``(V, E)`` parameter) in a ``clip_unit_dims()`` method.

    NOTE(paper): the original's attention output kernel ``(heads, head_dim, E)`` is reduced over heads
    only; here every Linear is reduced per output feature.
    """
    dims: dict[nn.Parameter, tuple[int, ...] | None] = {}
    for module in model.modules():
        own = getattr(module, "clip_unit_dims", None)
        if callable(own):
            dims.update(own())
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter) or weight.dim() < 2:
            continue
        if isinstance(module, nn.modules.conv._ConvNd) and weight.dim() == 3:
            dims[weight] = (2,)
        elif isinstance(module, nn.modules.conv._ConvTransposeNd):
            dims[weight] = (0, *range(2, weight.dim()))
        elif isinstance(module, nn.Embedding):
            dims[weight] = (0,)
        else:
            dims[weight] = tuple(range(1, weight.dim()))
    return dims


@dataclass(frozen=True)
class _Units:
    """A tensor seen as a matrix ``(units, fan)``: ``perm`` puts the unit dims first; ``grid`` is the tensor's
    shape with the reduced dims set to 1 (a unit index laid out in it broadcasts to the unit of every element)."""

    perm: tuple[int, ...]
    grid: tuple[int, ...]
    units: int
    fan: int

    @staticmethod
    def of(shape: torch.Size, dims: tuple[int, ...] | None) -> _Units:
        reduced = tuple(range(len(shape))) if dims is None or len(shape) <= 1 else dims
        kept = tuple(d for d in range(len(shape)) if d not in reduced)
        grid = tuple(1 if d in reduced else shape[d] for d in range(len(shape)))
        return _Units(kept + reduced, grid, math.prod(shape[d] for d in kept), math.prod(shape[d] for d in reduced))

    def matrix(self, t: torch.Tensor) -> torch.Tensor:
        if self.perm == tuple(range(t.dim())):
            return t.reshape(self.units, self.fan)  # a view when contiguous (a copy for e.g. channels-last)
        return t.permute(self.perm).reshape(self.units, self.fan)


class UnitClip:
    """Adaptive unit-wise clipping (as ``functional.adaptive_grad_clip``) of a fixed list of parameters, batched.

    Units of the same fan-in, from any parameters, are stacked into one ``(units, fan)`` matrix, so the norms
    take one kernel per distinct fan-in; the per-unit scales reach the elements through one gather and one
    multi-tensor multiply. The result equals the per-parameter loop up to float rounding of the norms.
    """

    def __init__(
        self, params: list[nn.Parameter], dims: dict[nn.Parameter, tuple[int, ...] | None], clipping: float,
        eps: float = 1e-3,
    ):
        self.clipping, self.eps = clipping, eps
        self.layouts = [_Units.of(p.shape, dims.get(p)) for p in params]
        by_fan: dict[int, list[int]] = {}
        for i, layout in enumerate(self.layouts):
            by_fan.setdefault(layout.fan, []).append(i)
        self.groups = list(by_fan.values())  # parameter indices, units numbered group after group
        first, start = [0] * len(params), 0
        for group in self.groups:
            for i in group:
                first[i], start = start, start + self.layouts[i].units
        self.numels = [p.numel() for p in params]
        unit_of_element = [
            torch.arange(first[i], first[i] + layout.units, device="cpu").view(layout.grid).expand(p.shape).reshape(-1)
            for i, (p, layout) in enumerate(zip(params, self.layouts))
        ]
        ids = torch.cat(unit_of_element) if unit_of_element else torch.zeros(0, dtype=torch.long, device="cpu")
        # made on the host once; moved to the gradients' device at the first call
        self.unit_of_element = ids.int() if start < 2**31 else ids  # int32 halves the index's memory

    def unit_norms(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """The L2 norm of every unit of ``tensors`` (one per parameter), in the clip's unit order."""
        return torch.cat([
            torch.linalg.vector_norm(torch.cat([self.layouts[i].matrix(tensors[i]) for i in group]), dim=1)
            for group in self.groups
        ])

    @torch.no_grad()
    def __call__(self, params: Sequence[torch.Tensor], grads: list[torch.Tensor]) -> None:
        """Scale ``grads`` (float32, the parameters' order) in place."""
        if self.unit_of_element.device != grads[0].device:
            self.unit_of_element = self.unit_of_element.to(grads[0].device)
        max_norm = self.unit_norms(params).clamp_min(self.eps) * self.clipping
        grad_norm = self.unit_norms(grads)
        scale = torch.where(grad_norm > max_norm, max_norm / grad_norm.clamp_min(1e-6), 1.0)
        per_element = scale[self.unit_of_element].split(self.numels)
        torch._foreach_mul_(grads, [s.view(g.shape) for s, g in zip(per_element, grads)])


def _fused_supported(params: list[nn.Parameter]) -> bool:
    return all(p.dtype == torch.float32 and p.device.type in ("cpu", "cuda") for p in params)


class Optimizers:
    """The method's AdamW optimizers, stepped together with clipping and a finiteness check each.

    ``batched=False`` is the plain per-parameter step (unit-wise clipping parameter by parameter, torch's
    default AdamW, one host check per optimizer): the reference the batched step is tested and timed against
    (``benchmarks/optimizer_step.py``).
    """

    def __init__(
        self, model: nn.Module, specs: list[OptimizerSpec], weight_decay: float, batched: bool = True,
        capturable: bool = False,
    ):
        self.specs = specs
        self.unit_dims = unit_dims(model)
        self.fused = {s.name: batched and _fused_supported(s.params) for s in specs}
        self.capturable = capturable
        if capturable and not all(self.fused.values()):
            raise ValueError("capturable=True needs the batched (fused) step: float32 parameters")
        self.optimizers = {
            s.name: torch.optim.AdamW(
                s.params, lr=self._lr(s.lr, s.params), betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay,
                fused=self.fused[s.name] or None, capturable=capturable,
            )
            for s in specs
        }
        self.clips = {
            s.name: UnitClip(s.params, self.unit_dims, s.grad_clip)
            for s in specs
            if self.fused[s.name] and s.grad_clip > 0 and s.clip == "adaptive"
        }
        self.skipped = {s.name: 0 for s in specs}

    def _lr(self, lr: float, params: list[nn.Parameter]) -> float | torch.Tensor:
        """A learning rate as the optimizer holds it: on the device when capturable (a graph of the step reads
        the schedule's value at each replay), a float otherwise."""
        return torch.tensor(lr, dtype=torch.float32, device=params[0].device) if self.capturable else lr

    def scale_lr(self, factor: float) -> None:
        """Set every optimizer's learning rate to ``factor`` times its spec's rate (a learning-rate schedule)."""
        for spec in self.specs:
            for group in self.optimizers[spec.name].param_groups:
                if isinstance(group["lr"], torch.Tensor):
                    group["lr"].fill_(spec.lr * factor)
                else:
                    group["lr"] = spec.lr * factor

    def zero_grad(self) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)

    def step(self) -> dict[str, float]:
        """Clip, check and step every optimizer; returns each one's raw gradient norm.

        A non-finite gradient skips that optimizer's update (its parameters and state are untouched) and is
        counted in ``self.skipped``. The skip is decided on the device; the norms come to the host once, after
        every update has been launched.
        """
        return self.finish(self.launch())

    def launch(self) -> dict[str, torch.Tensor]:
        """The device part of :meth:`step`: clip, check and update; returns the raw gradient norms on the device
        without reading them (so the batched step can be recorded in a CUDA graph). :meth:`finish` reads them."""
        norms: dict[str, torch.Tensor] = {}
        for spec in self.specs:
            params = [p for p in spec.params if p.grad is not None]
            grads = [p.grad for p in params if p.grad is not None]
            if not params:
                continue
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
            norms[spec.name] = norm
            if self.fused[spec.name]:
                # fused AdamW skips the whole update (moments, step count, parameters) where found_inf is 1
                self.optimizers[spec.name].found_inf = (~torch.isfinite(norm)).float()  # type: ignore[attr-defined]
            elif not torch.isfinite(norm):  # a host sync: the per-parameter step
                continue
            self._clip(spec, params, grads, norm)
            self.optimizers[spec.name].step()
            if self.fused[spec.name]:
                del self.optimizers[spec.name].found_inf  # type: ignore[attr-defined]  # never read by a later step
        return norms

    def finish(self, norms: dict[str, torch.Tensor]) -> dict[str, float]:
        """Read the norms :meth:`launch` returned (the one host sync per step) and count the skipped updates."""
        values = torch.stack(list(norms.values())).tolist() if norms else []
        for name, value in zip(norms, values):
            if not math.isfinite(value):
                self.skipped[name] += 1
        return dict(zip(norms, values))

    @torch.no_grad()
    def _clip(self, spec: OptimizerSpec, params: list[nn.Parameter], grads: list[torch.Tensor], norm: torch.Tensor):
        if spec.grad_clip <= 0:
            return
        if spec.clip == "global_norm":
            torch.nn.utils.clip_grads_with_norm_(params, spec.grad_clip, norm)
        elif spec.name in self.clips and len(params) == len(spec.params):
            self.clips[spec.name](params, grads)
        else:  # some parameters got no gradient this step: clip them one by one
            for p, grad in zip(params, grads):
                p.grad = adaptive_grad_clip(grad, p, self.unit_dims.get(p), spec.grad_clip)

    def state_dict(self) -> dict:
        return {
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "skipped": dict(self.skipped),
        }

    def load_state_dict(self, state: dict) -> None:
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
            # torch restores the saved fused/foreach flags: keep this step's own, whichever step saved the state
            # (the fused kernel wants the step counts on the parameter's device, the others on the CPU)
            # (and the learning rate as a device tensor when capturable, a float otherwise)
            fused = self.fused[name]
            for group in opt.param_groups:
                group["fused"], group["foreach"], group["capturable"] = fused or None, None, self.capturable
                group["lr"] = self._lr(float(group["lr"]), group["params"])
            for p, p_state in opt.state.items():
                if "step" in p_state:
                    p_state["step"] = p_state["step"].to(device=p.device if fused else "cpu", dtype=torch.float32)
        self.skipped.update(state["skipped"])
