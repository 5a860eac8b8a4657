"""Configs as text: ``key=value`` overrides, the JSON layout of ``config.json`` and its migration.

:func:`parse_overrides` applies command-line settings to a :class:`~daps.config.Config`; :func:`config_to_dict` and
:func:`config_from_dict` are the JSON round trip written into every run folder and checkpoint; files of earlier
layouts load through :func:`migrate_config`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import types
import typing
from pathlib import Path
from typing import Any

from daps.config import CONFIG_VERSION, Config, ScheduleConfig, validate
from daps.errors import UserError, did_you_mean


def _leaf_fields(cfg: Any, prefix: str = "") -> dict[str, tuple[Any, dataclasses.Field]]:
    """Dotted path -> (owning dataclass instance, field) for every non-dataclass field. The method's section is
    listed under its own name (``daps.beta.end``), not as ``options``."""
    out: dict[str, tuple[Any, dataclasses.Field]] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        name = value.section if isinstance(cfg, Config) and f.name == "options" else f.name
        if dataclasses.is_dataclass(value):
            out.update(_leaf_fields(value, f"{prefix}{name}."))
        elif not (isinstance(cfg, Config) and f.name == "version"):
            out[prefix + name] = (cfg, f)
    return out


def _field_type(owner: Any, name: str) -> Any:
    return typing.get_type_hints(type(owner))[name]


def _cast(text: str, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (tuple, list):
        (item_type, *_) = typing.get_args(annotation) or (str,)
        parts = [p for p in text.strip("()[] ").split(",") if p.strip()]
        return tuple(_cast(p.strip(), item_type, key) for p in parts)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _cast(text, args[0], key)
    if annotation is bool:
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise UserError(f"{key}: expected a boolean (true/false), got {text!r}")
    if annotation is int:
        try:
            return int(text.replace("_", ""))
        except ValueError:
            raise UserError(f"{key}: expected an integer, got {text!r}") from None
    if annotation is float:
        try:
            return float(text)
        except ValueError:
            raise UserError(f"{key}: expected a number, got {text!r}") from None
    return text


def _unknown_key_message(key: str, fields: dict, cfg: Config) -> str:
    return (
        f"unknown config key {key!r}{did_you_mean(key, fields)} (method {cfg.method}'s own settings are "
        f"{cfg.options.section}.*); "
        f"valid keys: {', '.join(sorted(fields))}"
    )


SHARED_SECTIONS = ("data", "encoder", "decoder", "optim", "train")
"""The sections every method's config has."""


def applicable_overrides(cfg: Config, overrides: list[str]) -> list[str]:
    """The overrides that concern ``cfg``'s method: every shared key, and keys of its own settings section
    (``daps.num_samples=4`` applies to daps and dapsna, not to fsq). For commands that configure several methods
    at once (``compare``, ``gradlab``)."""
    section, ignored = cfg.options.section, ignored_settings(_with_kinds(cfg, overrides))
    return [o for o in overrides if o.partition("=")[0].strip().split(".")[0] in (*SHARED_SECTIONS, section)
            and o.partition("=")[0].strip() not in ignored]


KIND_KEYS = ("data.name", "decoder.kind", "decoder.variance_clip", "train.fid", "optim.lr_schedule")
"""Shared settings that decide which others a run reads (:func:`ignored_settings`); any of the method's own
settings may decide which of its others it reads (a schedule's ``kind``, ``daps.resample``)."""


def _with_kinds(cfg: Config, overrides: list[str]) -> Config:
    """A copy of ``cfg`` with the overrides of :data:`KIND_KEYS` and of its method's own section applied (unchecked:
    only to tell which of the other overrides it would read)."""
    section = cfg.options.section
    keys = [o.partition("=")[0].strip() for o in overrides]
    kinds = [o for o, key in zip(overrides, keys) if key in KIND_KEYS or key.split(".")[0] == section]
    if not kinds:
        return cfg
    probe = copy.deepcopy(cfg)
    fields = _leaf_fields(probe)
    for item in kinds:
        key, _, text = item.partition("=")
        try:
            value = _cast_field(fields, key.strip(), text)
        except UserError:
            continue  # parse_overrides says what is wrong with it
        owner, f = fields[key.strip()]
        setattr(owner, f.name, value)
    return probe


def check_overrides_used(overrides: list[str]) -> None:
    """A :class:`~daps.errors.UserError` for an override that names no section of any registered method, or no
    setting of the method section it names, or a value of the wrong type there (a typo), which
    :func:`applicable_overrides` would silently give to no config. For commands that configure several methods at
    once; valid settings of a registered method that is not among them pass."""
    from daps.methods import METHODS

    own = {s.config_type.section: s.config_type for s in METHODS.values()}
    sections = {*SHARED_SECTIONS, "method", "preset", *own}
    for item in overrides:
        key, _, text = item.partition("=")
        key = key.strip()
        section = key.split(".")[0]
        if section not in sections:
            raise UserError(f"unknown config key {key!r}{did_you_mean(section, sections)}; sections: "
                            f"{', '.join(sorted(sections))}")
        if section in own:  # a method's own setting: a typo there is refused even if that method is not run
            fields = _leaf_fields(own[section](), f"{section}.")
            if key not in fields:
                raise UserError(f"unknown config key {key!r}{did_you_mean(key, fields)}; the {section} settings are "
                                f"{', '.join(sorted(fields))}")
            if text.strip():
                _cast_field(fields, key, text)


def parse_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``key=value`` strings with dotted keys (``train.steps=1000``) in place; returns ``cfg``.

    Values are cast to the field's annotated type. Unknown keys and bad values raise ``ValueError``.
    """
    if not isinstance(overrides, (list, tuple)):  # a lone string would be read character by character
        raise UserError(f"overrides must be a list of 'key=value' strings (e.g. [\"train.steps=1000\"]), got "
                        f"{type(overrides).__name__} {overrides!r}")
    fields = _leaf_fields(cfg)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"override {item!r} is not of the form key=value")
        value = _typed(cfg, fields, key, text)
        if key in ("method", "preset") and text.strip() != getattr(cfg, key):
            raise UserError(
                f"{key}={text.strip()}: choose the {key} with --{key} (in Python: get_preset(name, method)) so "
                "that its defaults apply"
            )
        owner, f = fields[key]
        setattr(owner, f.name, value)
    validate(cfg)
    return cfg


def refuse_ignored(cfg: Config, overrides: list[str]) -> None:
    """A :class:`UserError` for an override of a setting ``cfg`` does not read (:func:`ignored_settings`): ``daps
    train`` refuses what it would silently ignore. (:func:`parse_overrides` itself takes them, so that one list of
    overrides can configure several methods, and a saved config holding one still loads.)"""
    ignored = ignored_settings(cfg)
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key in ignored:
            raise UserError(f"{key}: {ignored[key]}")


def ignored_settings(cfg: Config) -> dict[str, str]:
    """The settings ``cfg`` does not read, each with the reason: its method's (``MethodSpec.ignores``), the
    token-0 mask and the shared prefixes of the autoregressive encoder for the other encoders, the decoder kinds' other
    networks, the likelihoods' other variances, the windowing of datasets that are not cut
    into windows, the loader workers of datasets held in memory, the download switch of datasets without a download
    source, the FID files without their FID, the end of a constant schedule (the learning rate's and the method's
    own) and what the method's settings say they leave unread (their optional ``unread(cfg)``, e.g.
    ``daps.resample_scheme`` without ``daps.resample``).

    ``daps train`` refuses them as overrides (:func:`refuse_ignored`); they are left out of the comparisons of a
    resumed run's settings, of ``compare``'s per-method overrides and of the commands daps writes."""
    from daps.data import DATASETS
    from daps.methods import METHODS

    out: dict[str, str] = {}
    method = METHODS.get(cfg.method)
    if method is not None:
        out.update({k: f"{cfg.method} does not read it ({why})" for k, why in method.ignores.items()})
        if method.encoder != "autoregressive":
            out.setdefault("encoder.mask_token0", f"{cfg.method} does not read it (its {method.encoder} encoder "
                                                  "teacher-forces nothing)")
            out.setdefault("encoder.share_prefixes", f"{cfg.method} does not read it (its {method.encoder} encoder "
                                                     "has no prefixes)")
        elif cfg.encoder.mask_token0:
            out.setdefault("encoder.share_prefixes", "not read with encoder.mask_token0=true (its masks read the "
                                                     "token after each position, so no two positions share)")
    kind = cfg.decoder.kind
    for key, reader in (("hidden", "mlp"), ("resnet_width", "resnet"), ("resnet_blocks", "resnet"),
                        ("transformer_layers", "transformer"), ("transformer_heads", "transformer")):
        if kind != reader:
            out.setdefault(f"decoder.{key}", f"read by the {reader} decoder only; this one is decoder.kind={kind}")
    if cfg.method != "fsq":
        out.setdefault("decoder.fsq_token_dim", "read by fsq only")
        out.setdefault("decoder.fsq_ratio", "read by fsq only")
    elif kind == "mlp":
        out.setdefault("decoder.fsq_ratio", "read by fsq with a resnet or transformer decoder only")
    else:
        out.setdefault("decoder.fsq_token_dim", "read by fsq with the mlp decoder only")
    spec = DATASETS.get(cfg.data.name)
    if spec is not None:
        if spec.likelihood != "gaussian-fixed":
            out["decoder.fixed_variance"] = f"{cfg.data.name}'s likelihood ({spec.likelihood}) has no fixed variance"
        if spec.likelihood != "gaussian":
            for key in ("variance_clip", "min_variance", "max_variance"):
                out[f"decoder.{key}"] = (f"{cfg.data.name}'s likelihood ({spec.likelihood}) has no learned "
                                         "variance to clip")
        elif cfg.decoder.variance_clip == "none":
            for key in ("min_variance", "max_variance"):
                out[f"decoder.{key}"] = "read only with decoder.variance_clip=paper (here none)"
        if spec.windows is None:
            out["data.window_stride"] = f"{cfg.data.name} is not cut into windows"
        if spec.in_memory:
            out["data.num_workers"] = f"{cfg.data.name} is held in memory: no loader workers"
        if not spec.downloads:
            out["data.download"] = f"{cfg.data.name} has no download source: its files are found locally"
    if cfg.train.fid != "reference":
        out["train.fid_reference"] = f"read only with train.fid=reference (here train.fid={cfg.train.fid})"
    if cfg.train.fid == "none":
        out["train.fid_weights"] = "read only with train.fid=val-pairs or reference (here train.fid=none)"
    if cfg.optim.lr_schedule == "constant":
        out["optim.lr_final"] = "read only with optim.lr_schedule=cosine (here constant)"
    section = cfg.options.section
    for f in dataclasses.fields(cfg.options):
        sched = getattr(cfg.options, f.name)
        if isinstance(sched, ScheduleConfig) and sched.kind == "constant":
            for key in ("end", "end_pct"):
                out[f"{section}.{f.name}.{key}"] = (f"read only by a decaying schedule (here {section}.{f.name}.kind="
                                                    "constant, which stays at its init)")
    unread = getattr(cfg.options, "unread", None)
    if unread is not None:
        out.update(unread(cfg))
    return out


def _typed(cfg: Config, fields: dict[str, tuple[Any, dataclasses.Field]], key: str, text: str) -> Any:
    """``text`` cast to the type of setting ``key`` (``fields``: :func:`_leaf_fields` of ``cfg``); an unknown key is
    a :class:`UserError` naming the valid ones."""
    if key not in fields:
        raise UserError(_unknown_key_message(key, fields, cfg))
    return _cast_field(fields, key, text)


def _cast_field(fields: dict[str, tuple[Any, dataclasses.Field]], key: str, text: str) -> Any:
    """``text`` cast to the type of the known setting ``key`` of ``fields``."""
    owner, f = fields[key]
    return _cast(text.strip(), _field_type(owner, f.name), key)


def _check_type(key: str, value: Any, annotation: Any) -> Any:
    """``value`` as a value of ``annotation`` (a list becomes a tuple, an int a float), or ``ValueError`` naming
    ``key``. Strict: no parsing of strings and no bools for numbers (JSON and Python values, not CLI text)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        return _check_type(key, value, next(a for a in args if a is not type(None)))
    if origin in (tuple, list):
        if not isinstance(value, (tuple, list)):
            raise UserError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        (item_type, *_) = typing.get_args(annotation) or (Any,)
        return tuple(_check_type(f"{key}[{i}]", item, item_type) for i, item in enumerate(value))
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{key}: expected float, got {type(value).__name__} {value!r}")
        return float(value)
    if annotation in (int, str, bool):
        if not isinstance(value, annotation) or (annotation is int and isinstance(value, bool)):
            raise UserError(f"{key}: expected {annotation.__name__}, got {type(value).__name__} {value!r}")
        return value
    return value


def check_types_and_finite(cfg: Config) -> None:
    """Every leaf has its annotated type and every number is finite (``inf`` and ``nan`` are never a setting)."""
    for key, (owner, f) in _leaf_fields(cfg).items():
        value = _check_type(key, getattr(owner, f.name), _field_type(owner, f.name))
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, float) and not math.isfinite(item):
                raise UserError(f"{key} must be a finite number, got {getattr(owner, f.name)}")


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """The JSON layout: the shared sections and the method's section under its own name."""
    out = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "options"}
    out = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) and not isinstance(v, type) else v
           for k, v in out.items()}
    out[cfg.options.section] = dataclasses.asdict(cfg.options)
    return out


def parse_setting(cfg: Config, key: str, text: str) -> Any:
    """``text`` cast to the type of ``cfg``'s setting ``key`` as :func:`parse_overrides` casts it, without setting
    it or checking the config (a value may be valid only together with others)."""
    return _typed(cfg, _leaf_fields(cfg), key, text)


def config_differences(a: Config, b: Config, ignore: set[str] | frozenset[str] = frozenset()) -> dict[str, tuple]:
    """Dotted key -> (value in ``a``, value in ``b``) for every setting that differs, except the keys in ``ignore``.
    A key only one of them has (configs of different methods) pairs its value with None."""
    values_a = {key: getattr(owner, f.name) for key, (owner, f) in _leaf_fields(a).items()}
    values_b = {key: getattr(owner, f.name) for key, (owner, f) in _leaf_fields(b).items()}
    keys = [key for key in {**values_a, **values_b} if key not in ignore and values_a.get(key) != values_b.get(key)]
    return {key: (values_a.get(key), values_b.get(key)) for key in keys}


V1_METHOD_SECTIONS = ("daps", "relaxed", "fsq", "vq", "ppo", "reinforce", "vae")
"""The per-method sections every version-1 ``config.json`` carried, whatever its method."""


def migrate_config(data: dict[str, Any]) -> dict[str, Any]:
    """A ``config.json`` of an earlier layout in the current one (a new dict; the current layout unchanged).

    Version 1 (no ``version`` key) carried the sections of all methods; only the chosen method's is kept (the
    others were defaults that no method read).
    """
    if not isinstance(data, dict):
        raise UserError(f"expected an object of settings, got {type(data).__name__}")
    version = data.get("version", 1)
    if version == CONFIG_VERSION:
        return dict(data)
    if version != 1:
        raise UserError(f"version: this daps reads config layouts 1 to {CONFIG_VERSION}, got {version!r}")
    from daps.methods import method_spec

    out = {k: v for k, v in data.items() if k not in V1_METHOD_SECTIONS}
    section = method_spec(data.get("method", "daps")).config_type.section
    if section in data:
        out[section] = data[section]
    out["version"] = CONFIG_VERSION
    return out


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a :class:`Config` from :func:`config_to_dict` output (e.g. a run's ``config.json``, of any layout
    version: see :func:`migrate_config`) and validate it.

    Missing keys keep their defaults; an unknown key or a value of the wrong type raises ``ValueError`` naming
    the key (``train.steps: expected int, got str '10'``). Lists become tuples; ints are accepted as floats.
    """
    from daps.methods import method_spec

    def build(cls: Any, values: Any, prefix: str) -> Any:
        if not isinstance(values, dict):
            where = f"{prefix[:-1]}: " if prefix else ""
            raise UserError(f"{where}expected an object of settings, got {type(values).__name__} {values!r}")
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            key, keys = prefix + str(unknown[0]), [prefix + n for n in sorted(names)]
            raise UserError(f"unknown config key {key!r}{did_you_mean(key, keys)}; valid keys here: {', '.join(keys)}")
        kwargs = {}
        for name, value in values.items():
            annotation = hints[name]
            if dataclasses.is_dataclass(annotation):
                kwargs[name] = build(annotation, value, f"{prefix}{name}.")
            else:
                kwargs[name] = _check_type(prefix + name, value, annotation)
        return cls(**kwargs)

    data = migrate_config(data)
    method = data.get("method", "daps")
    if not isinstance(method, str):
        raise UserError(f"method: expected str, got {type(method).__name__} {method!r}")
    try:
        options_type = method_spec(method).config_type
    except ValueError as err:
        raise UserError(f"method: {err}") from None
    if "options" in data:
        raise UserError(f"unknown config key 'options' (the method's settings are under {options_type.section!r})")
    shared = {k: v for k, v in data.items() if k != options_type.section}
    cfg = build(Config, {**shared, "options": None}, "")
    cfg.options = build(options_type, data.get(options_type.section, {}), options_type.section + ".")
    validate(cfg)
    return cfg


def absolute_data_dir(cfg: Config, resolve: bool = False) -> Config:
    """``cfg`` with ``data.data_dir`` as an absolute path without ``..`` (a copy; unchanged when empty or already
    so), so that the run's config.json leads ``daps eval``, ``export-codes`` or a resume started in another folder
    to the same data. ``resolve``: also through symbolic links (to tell whether two settings name one place)."""
    given = cfg.data.data_dir
    if not given:
        return cfg
    path = Path(given).expanduser()
    absolute = str(path.resolve()) if resolve else os.path.normpath(path.absolute())
    if absolute == given:
        return cfg
    out = copy.deepcopy(cfg)
    out.data.data_dir = absolute
    return out
