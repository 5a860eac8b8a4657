"""What the rest of the library knows about a method: one :class:`MethodSpec`, defined in the method's own file.

``daps/methods/__init__.py`` lists the specs in ``METHODS``; nothing else names a method. Adding a method is one
file (its module, its settings dataclass, its spec) and one line in that list (see the README's "How to add a
method").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Literal, Mapping

if TYPE_CHECKING:
    from daps.config import Config, MethodSettings
    from daps.methods.types import Method

EncoderFamily = Literal["autoregressive", "bidirectional", "quantizer", "mlp"]
"""Which encoder a method trains: the autoregressive transformer q(z|x), the bidirectional transformer with a
categorical head per token, the bidirectional transformer feeding a deterministic quantizer, or an MLP (the
Gaussian VAE). Presets size the transformer by family (the original's per-family MNIST and CIFAR configs)."""


def categorical_bits(cfg: Config) -> float:
    """Bits of a code of T tokens over V symbols: T log2 V."""
    return cfg.encoder.num_tokens * math.log2(cfg.encoder.vocab_size)


@dataclass(frozen=True)
class MethodSpec:
    """Everything about one method that is not inside its ``nn.Module``.

    Attributes:
        name: the ``--method`` name.
        summary: one line for ``--help`` and listings.
        build: ``build(cfg, image_shape)``: the method's module, a :class:`daps.methods.Method`.
        config_type: the dataclass of the method's own settings. It has a ``section: ClassVar[str]`` (its name in
            overrides and ``config.json``: ``daps.beta.end=0.1``) and a ``validate()`` that raises
            ``daps.errors.UserError`` naming the key. Several methods may share one (``gumbel`` and ``grmck`` both
            use ``relaxed``).
        encoder: the encoder family (see :data:`EncoderFamily`).
        presets: preset name -> a function that adjusts that preset's config for this method (its schedules,
            learning rates, ...). ``mnist5k-demo`` starts from ``mnist``, so both apply to it. A preset missing here
            keeps the preset's shared values and the settings' defaults.
        bits: bits of the bottleneck for a config (for tables that compare methods at equal rate).
        progress: the keys of ``Output.logs`` the progress bar shows (the few numbers a person watches).
        only_presets: presets the method is defined for (None: all); others are refused with a message.
        cuda_graph: its training step can be recorded as one CUDA graph (``train.cuda_graph``, :mod:`daps.graphed`):
            no host reads, schedules read from the device; ``tests/test_graphed.py`` checks it of every method
            that says so.
        ignores: settings the method does not read (shared ones, or those of its settings section that only the
            other methods sharing it read), each with the reason: ``daps train`` refuses them as
            overrides, and ``compare`` gives them only to the methods that read them.
        check_config: ``check_config(cfg)`` refuses combinations of the method's settings with shared ones that
            cannot work (a :class:`~daps.errors.UserError` naming both keys); run by :func:`daps.config.validate`
            after the settings' own ``validate()``.
    """

    name: str
    summary: str
    build: Callable[[Config, tuple[int, int, int]], Method]
    config_type: type[MethodSettings]
    encoder: EncoderFamily
    presets: Mapping[str, Callable[[Config], None]] = field(default_factory=dict)
    bits: Callable[[Config], float] = categorical_bits
    progress: tuple[str, ...] = ("log_p",)
    only_presets: tuple[str, ...] | None = None
    cuda_graph: bool = False
    ignores: Mapping[str, str] = field(default_factory=dict)
    check_config: Callable[[Config], None] | None = None


__all__ = ["EncoderFamily", "MethodSpec", "categorical_bits"]
