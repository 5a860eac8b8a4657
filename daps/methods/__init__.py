"""Training objectives. Each method is an ``nn.Module`` built from an encoder and a decoder.

Each method's file defines its module, its settings dataclass and its :class:`~daps.methods.spec.MethodSpec`;
``METHODS`` lists the specs and is the only registry. Methods of other installed packages join it through the
entry-point group ``daps.methods`` (see :func:`load_plugins`).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.metadata
import logging
import re
import sys

from daps.config import Config
from daps.config_io import SHARED_SECTIONS
from daps.errors import UserError
from daps.methods.common import InputSpec
from daps.methods.daps import DAPS, DAPS_SPEC, DAPSNA_SPEC
from daps.methods.fsq import FSQ_SPEC
from daps.methods.gumbel import GRMCK_SPEC, GRMCKNA_SPEC, GUMBEL_SPEC, GUMBELNA_SPEC
from daps.methods.ppo import PPO_SPEC
from daps.methods.reinforce import REINFORCE_SPEC
from daps.methods.spec import MethodSpec
from daps.methods.types import Method, Output, Reconstruction
from daps.methods.vae import VAE_SPEC
from daps.methods.vqvae import VQVAE_SPEC
from daps.methods.vqvae_ema import VQVAE_EMA_SPEC

METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        DAPS_SPEC,
        DAPSNA_SPEC,
        GUMBEL_SPEC,
        GUMBELNA_SPEC,
        GRMCK_SPEC,
        GRMCKNA_SPEC,
        PPO_SPEC,
        REINFORCE_SPEC,
        VAE_SPEC,
        FSQ_SPEC,
        VQVAE_SPEC,
        VQVAE_EMA_SPEC,
    )
}
"""Every method, by ``--method`` name. The only registry: the CLI, presets, config loading, ``compare`` and the
benchmarks read it."""


RESERVED_SECTIONS = (*SHARED_SECTIONS, "version", "preset", "method", "options")
"""Names a method's settings section cannot take: the shared sections and top-level keys of ``config.json``."""


def register(spec: MethodSpec) -> None:
    """Add a method (e.g. one defined outside this package) to :data:`METHODS`.

    Raises :class:`~daps.errors.UserError` unless ``spec`` is a :class:`MethodSpec` whose name is a plain word
    (letters, digits, ``_``, ``-``, ``.``: it names folders and is listed with commas), not taken by another
    spec, and whose ``config_type`` is a dataclass with a ``section`` that is an identifier, is none of
    :data:`RESERVED_SECTIONS` (``section = "train"`` would replace the run's training settings in
    ``config.json``) and is used by no other method with another settings type (its overrides would be read
    as the other's).
    """
    if not isinstance(spec, MethodSpec):
        raise UserError(f"register takes a daps.MethodSpec, got {type(spec).__name__}")
    if not isinstance(spec.name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", spec.name):
        raise UserError(f"method name {spec.name!r} must be a plain word (letters, digits, _, - and .)")
    if spec.name in METHODS and METHODS[spec.name] is not spec:
        raise UserError(f"a method named {spec.name!r} is already registered")
    settings = spec.config_type
    section = getattr(settings, "section", None)
    if not (isinstance(settings, type) and dataclasses.is_dataclass(settings)):
        raise UserError(f"method {spec.name}: config_type must be a dataclass of its settings, got {settings!r}")
    if not isinstance(section, str) or not section.isidentifier():
        raise UserError(f"method {spec.name}: {settings.__name__} needs a `section: ClassVar[str]`, its name in "
                        f"overrides and config.json (e.g. section = {spec.name.replace('-', '_')!r}), got {section!r}")
    if section in RESERVED_SECTIONS:
        raise UserError(f"method {spec.name}: its settings section {section!r} is a name every config uses "
                        f"({', '.join(RESERVED_SECTIONS)}); choose another")
    for other in METHODS.values():
        if other.name != spec.name and other.config_type.section == section and other.config_type is not settings:
            raise UserError(f"method {spec.name}: the settings section {section!r} belongs to method {other.name} "
                            f"({other.config_type.__name__}); choose another or share that settings type")
    METHODS[spec.name] = spec


PLUGIN_GROUP = "daps.methods"
"""The entry-point group through which another installed package adds methods: in its ``pyproject.toml``,
``[project.entry-points."daps.methods"]`` with ``mymethod = "mypackage.mymethod:MYMETHOD_SPEC"``."""


_TRIED: set[str] = set()
"""The entry points :func:`load_plugins` has loaded or given up on (each is tried once)."""


def load_plugins() -> list[str]:
    """Register the :class:`MethodSpec` of every entry point of :data:`PLUGIN_GROUP` (run once, at the end of
    ``import daps``, when the package is whole, so that the ``daps`` command and :func:`daps.load_model` in any
    process know them). One that fails to load, is not a ``MethodSpec`` or takes a name already used is skipped with a
    warning naming it: an installed plugin never breaks the built-in methods. A plugin whose own module is being
    imported at that moment (it was imported first, and imported daps) is left for :func:`method_spec` to load when
    its name is asked for. Returns the names registered."""
    names = []
    for entry in importlib.metadata.entry_points(group=PLUGIN_GROUP):
        if entry.value in _TRIED:
            continue
        module = sys.modules.get(entry.module)
        if module is not None and getattr(getattr(module, "__spec__", None), "_initializing", False):
            continue  # it is being imported (and imported daps first): method_spec tries it again when asked
        _TRIED.add(entry.value)
        try:
            spec = entry.load()
            if not isinstance(spec, MethodSpec):
                raise TypeError(f"it is a {type(spec).__name__}, not a daps MethodSpec")
            register(spec)
        except Exception as err:  # noqa: BLE001 -- whatever a third-party module raises, the package stays usable
            logging.getLogger(__name__).warning(
                "method plugin %r (%s) not loaded: %s", entry.name, entry.value, str(err) or type(err).__name__
            )
            continue
        names.append(spec.name)
    return names


def method_spec(name: str) -> MethodSpec:
    """The registered :class:`MethodSpec` of ``name``, or a ``ValueError`` listing the methods."""
    if name not in METHODS:
        load_plugins()  # a plugin left at `import daps` because its module was being imported then
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    return METHODS[name]


def build_method(cfg: Config, image_shape: tuple[int, ...]) -> Method:
    """The module of ``cfg.method`` for inputs of ``image_shape`` (C, H, W), with ``cfg`` attached as ``config``
    (a copy with ``data.image_shape`` set to ``image_shape`` where they differ)."""
    c, h, w = image_shape
    spec = method_spec(cfg.method)
    try:
        model = spec.build(cfg, (c, h, w))
    except UserError:
        raise
    except ValueError as err:  # a network's shape check: these settings do not fit together
        raise UserError(
            f"{cfg.method} cannot be built for inputs {(c, h, w)} with these settings ({err}); see data.image_shape, "
            "encoder.* and decoder.*"
        ) from err
    continuous = model.vocab_size is None
    model.input_spec = InputSpec(
        image_shape=(c, h, w), num_tokens=None if continuous else cfg.encoder.num_tokens,
        vocab_size=model.vocab_size, latent_dim=model.latent_dim if continuous else None,
    )
    if tuple(cfg.data.image_shape) != (c, h, w):  # the config written with the model must rebuild it
        cfg = copy.deepcopy(cfg)
        cfg.data.image_shape = (c, h, w)
    model.config = cfg  # what save_pretrained writes as config.json
    return model


__all__ = [
    "DAPS",
    "METHODS",
    "Method",
    "MethodSpec",
    "Output",
    "Reconstruction",
    "build_method",
    "load_plugins",
    "method_spec",
    "register",
]
