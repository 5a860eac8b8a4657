"""The contract every method follows (:class:`Method`) and its return types."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

if TYPE_CHECKING:
    from daps.config import Config
    from daps.methods.common import InputSpec
    from daps.optim import OptimizerSpec


@dataclass
class Output:
    """What ``method(x, step)`` returns for one training step."""

    loss: torch.Tensor  # scalar; its gradient trains every trainable parameter of the method
    x_hat: torch.Tensor  # (B, C, H, W) decoder mean for one sampled code per input, detached
    indices: torch.Tensor | None  # (B, T) one sampled code per input; None for a continuous latent
    logs: dict[str, torch.Tensor] = field(default_factory=dict)  # detached scalars; always "log_p"


@dataclass
class Reconstruction:
    """One encode -> decode of a batch, with the per-input terms of the ELBO (paper Eq. 1).

    Deterministic quantizers (FSQ, VQ-VAE) have no q and leave ``kl``, ``log_q`` and ``token_entropy`` as
    None; the Gaussian VAE has no discrete code and leaves ``indices`` as None.
    """

    indices: torch.Tensor | None  # (B, T) codes (FSQ: mixed-radix indices into the implicit codebook)
    x_hat: torch.Tensor  # (B, C, H, W) decoder mean
    log_p: torch.Tensor  # (B,) log p(x | z) in nats, summed over data dims
    # (B,) KL(q(z|x) || prior) in nats (AR: single-sample estimate; NA and Gaussian: exact)
    kl: torch.Tensor | None = None
    log_q: torch.Tensor | None = None  # (B,) log q(z | x) of the sampled code
    token_entropy: torch.Tensor | None = None  # (B, T) entropy of q(z_t | z_<t, x)


class Method(nn.Module):
    """The contract every method follows: an interface (each method implements all of it), so that the
    training loop, evaluation and checkpoints are typed against one class.

    ``method(x, step, generator)`` runs one training step's forward pass and returns an :class:`Output`.
    Inference (``encode``, ``decode``, ``reconstruct``) builds no graph; bad inputs raise ``ValueError``.
    """

    @property
    def final_beta(self) -> float | None:
        """The beta of the beta-ELBO (the schedule's end value); None without a KL term."""
        raise NotImplementedError

    @property
    def vocab_size(self) -> int | None:
        """Codes per token (FSQ: the implicit codebook size); None for a continuous latent."""
        raise NotImplementedError

    latent_dim: int | None = None
    """The size of a continuous latent z (the Gaussian VAE); None for discrete codes."""
    input_spec: InputSpec
    """What encode / decode / reconstruct accept (set by :func:`daps.methods.build_method`)."""
    config: Config
    """The resolved config of a loaded model (set by :func:`daps.checkpoint.load_model`)."""
    standardization: Any = None
    """Motion and one's own sequences: the map from raw features to the model's scale that it was trained with
    (a :class:`~daps.motion.dataset.Standardizer`: ``normalize`` raw features before :meth:`encode`,
    ``denormalize`` what :meth:`decode` gives); None for images, whose scale the dataset fixes. Set when loaded
    from a run or a pretrained folder."""

    def forward(self, x: torch.Tensor, step: int, generator: torch.Generator | None = None) -> Output:
        raise NotImplementedError

    # -- schedules the training step reads from the device (so a CUDA graph of the step sees each step's value) --

    capturing: bool = False
    """True while :class:`daps.graphed.GraphedStep` records the step: :meth:`scheduled` then leaves its buffers as
    :meth:`fill_schedules` filled them."""

    def schedules(self, step: int) -> dict[str, float]:
        """The values at ``step`` of the schedules the step reads through :meth:`scheduled` (beta, a temperature)."""
        return {}

    def scheduled(self, name: str, step: int, device: torch.device) -> torch.Tensor:
        """Schedule ``name`` at ``step`` as a 0-d float32 tensor on ``device``: a buffer the method owns, filled
        here, so a recorded step reads the buffer and a replay the value :meth:`fill_schedules` put there."""
        buffers = self._schedule_buffers()
        buffer = buffers.get(name)
        if buffer is None or buffer.device != device:
            buffer = buffers[name] = torch.zeros((), device=device)
        if not self.capturing:
            buffer.fill_(self.schedules(step)[name])
        return buffer

    def fill_schedules(self, step: int) -> None:
        """Write every schedule's value at ``step`` into its buffer (before a graph replay)."""
        buffers = self._schedule_buffers()
        for name, value in self.schedules(step).items():
            if name in buffers:
                buffers[name].fill_(value)

    def schedule_buffers(self) -> list[torch.Tensor]:
        return list(self._schedule_buffers().values())

    def _schedule_buffers(self) -> dict[str, torch.Tensor]:
        return vars(self).setdefault("_schedule_values", {})  # not module buffers: never in a state dict

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def reconstruct(self, x: torch.Tensor, generator: torch.Generator | None = None) -> Reconstruction:
        raise NotImplementedError

    def optimizer_specs(self, lr: float, grad_clip: float) -> list[OptimizerSpec]:
        raise NotImplementedError

    def save_pretrained(self, folder: str | Path, overwrite: bool = False) -> Path:
        """Write this model as a pretrained folder (weights, config, model card): :func:`daps.hub.save_pretrained`."""
        from daps.hub import save_pretrained

        return save_pretrained(self, folder, overwrite)

    def push_to_hub(self, repo_id: str, private: bool = False, token: str | None = None) -> str:
        """Upload this model to the Hugging Face Hub (extra ``daps[hub]``): :func:`daps.hub.push_to_hub`."""
        from daps.hub import push_to_hub

        return push_to_hub(self, repo_id, private, token)

    def compile_step(self, mode: str | None = None) -> None:
        """``train.compile``: compile what pays in the training step (``mode``: torch.compile's); a no-op where
        nothing does."""
        raise NotImplementedError
