"""Optimizers as in the original: AdamW per parameter group, adaptive unit-wise clipping, and updates
with a non-finite gradient skipped (original: jadex/base/base_state.py)."""

from __future__ import annotations

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
    """For each parameter, the dims to reduce to get one norm per "unit" (an output feature).

    Linear ``(out, in)`` -> (1,); ConvNd ``(out, in, ...)`` -> all but 0; ConvTransposeNd ``(in, out, ...)``
    -> all but 1; Embedding ``(V, E)`` -> (0,) (one unit per embedding feature, like the original's Flax
    table); vectors and scalars -> the whole tensor (None).

    NOTE(paper): the original's attention output kernel ``(heads, head_dim, E)`` is reduced over heads
    only; here every Linear is reduced per output feature.
    """
    dims: dict[nn.Parameter, tuple[int, ...] | None] = {}
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter) or weight.dim() < 2:
            continue
        if isinstance(module, nn.modules.conv._ConvTransposeNd):
            dims[weight] = (0, *range(2, weight.dim()))
        elif isinstance(module, nn.Embedding):
            dims[weight] = (0,)
        else:
            dims[weight] = tuple(range(1, weight.dim()))
    return dims


class Optimizers:
    """The method's AdamW optimizers, stepped together with clipping and a finiteness check each."""

    def __init__(self, model: nn.Module, specs: list[OptimizerSpec], weight_decay: float):
        self.specs = specs
        self.unit_dims = unit_dims(model)
        self.optimizers = {
            s.name: torch.optim.AdamW(s.params, lr=s.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay)
            for s in specs
        }
        self.skipped = {s.name: 0 for s in specs}

    def scale_lr(self, factor: float) -> None:
        """Set every optimizer's learning rate to ``factor`` times its spec's rate (a learning-rate schedule)."""
        for spec in self.specs:
            for group in self.optimizers[spec.name].param_groups:
                group["lr"] = spec.lr * factor

    def zero_grad(self) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)

    def step(self) -> dict[str, float]:
        """Clip, check and step every optimizer; returns each one's raw gradient norm.

        A non-finite gradient skips that optimizer's update (its state is untouched) and is counted in
        ``self.skipped``.
        """
        norms: dict[str, float] = {}
        for spec in self.specs:
            params = [p for p in spec.params if p.grad is not None]
            grads = [p.grad for p in spec.params if p.grad is not None]
            if not params:
                continue
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
            norms[spec.name] = float(norm)  # the one host sync per optimizer and step
            if not torch.isfinite(norm):
                self.skipped[spec.name] += 1
                continue
            if spec.grad_clip > 0 and spec.clip == "global_norm":
                torch.nn.utils.clip_grad_norm_(params, spec.grad_clip)
            elif spec.grad_clip > 0:
                with torch.no_grad():
                    for p, grad in zip(params, grads):
                        p.grad = adaptive_grad_clip(grad, p, self.unit_dims.get(p), spec.grad_clip)
            self.optimizers[spec.name].step()
        return norms

    def state_dict(self) -> dict:
        return {
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "skipped": dict(self.skipped),
        }

    def load_state_dict(self, state: dict) -> None:
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        self.skipped.update(state["skipped"])
