"""Config = plain dataclasses loaded from YAML and overridden by ``key=value`` command-line arguments.

The same object flows from the CLI into library code; there is no global state.

    cfg = load_config(TrainConfig, "configs/ppocr_finetune.yaml", ["optim.lr=1e-4", "max_steps=50"])
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit the config class; names the offending key."""


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def from_dict(cls: type[T], data: dict[str, Any], path: str = "") -> T:
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys (typos must not pass silently)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(path + k for k in unknown)} for {cls.__name__}; "
            f"known: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for key, value in data.items():
        tp = _unwrap_optional(hints[key])
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            value = from_dict(tp, value, f"{path}{key}.")
        else:
            value = _coerce(value, tp, path + key)
        kwargs[key] = value
    return cls(**kwargs)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Coerce YAML scalars to the field's type (YAML reads ``5e-5`` as a string); name the key on failure."""
    if value is None:
        return None
    origin = typing.get_origin(tp) or tp
    try:
        if tp is float and isinstance(value, (str, int)) and not isinstance(value, bool):
            return float(value)
        if tp is int and isinstance(value, str):
            return int(value)
        if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if origin is tuple and isinstance(value, list):
            return tuple(value)
    except ValueError as exc:
        raise ConfigError(f"{key}: cannot read {value!r} as {getattr(tp, '__name__', tp)}") from exc
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides (values parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else None
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r}: {part!r} is not a section")
        node[parts[-1]] = value
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Load ``cls`` from a YAML file (optional) and ``key=value`` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: invalid YAML: {exc}") from exc
    base = to_dict(cls()) if _all_defaults(cls) else {}
    merged = _deep_merge(base, data)
    apply_overrides(merged, overrides)
    return from_dict(cls, merged)


def _all_defaults(cls: type) -> bool:
    return all(
        f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        for f in dataclasses.fields(cls)
    )


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
