"""Typed hyper-parameters loaded strictly from YAML.

Precedence: `key=value` overrides (CLI) > the YAML file > the dataclass defaults.
Unknown keys are errors that name the closest valid key; values are checked
against the field's type.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

from steer.errors import ConfigError, closest

H = TypeVar("H")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check (and gently convert) `value` to the annotated type `tp`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: {value!r} is not a {_type_name(tp)}.")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}.{closest(str(value), map(str, args))}")
        return value
    if origin in (list, tuple):
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            value = [value]  # `layers: 12` means [12]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}.")
        inner = args[0] if args else Any
        return [_coerce(v, inner, key) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}.")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}.")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}.")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}.")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}.")
    return value


def build(cls: type[H], values: dict[str, Any], source: str = "hyper-parameters") -> H:
    """Instantiate dataclass `cls` from `values`, strictly."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    checked: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(
                f"{source}: unknown key {key!r}.{closest(key, fields)} Valid keys: {', '.join(sorted(fields))}."
            )
        checked[key] = _coerce(value, hints[key], f"{source}: {key}")
    try:
        instance = cls(**checked)
    except TypeError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    validate = getattr(instance, "validate", None)
    if callable(validate):
        validate()
    return instance


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"No config file at {path}.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of key: value, not {type(data).__name__}.")
    return data


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """['layers=[10,12]', 'batch_size=4'] -> {'layers': [10, 12], 'batch_size': 4} (values are YAML)."""
    values: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"Override {item!r} must look like key=value.")
        try:
            values[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            values[key.strip()] = raw
    return values


def model_slug(model_id: str | None) -> str:
    """'HuggingFaceTB/SmolLM2-135M-Instruct' -> 'smollm2-135m-instruct' (the hparams file name)."""
    return (model_id or "default").rstrip("/").split("/")[-1].lower().replace(".gguf", "")


def default_config_path(method: str, model_id: str | None) -> Path | None:
    """The shipped YAML for (method, model), falling back to the method's `default.yaml`."""
    folder = resources.files("steer.hparams").joinpath(method)
    for name in (f"{model_slug(model_id)}.yaml", "default.yaml"):
        candidate = folder.joinpath(name)
        if candidate.is_file():
            return Path(str(candidate))
    return None


def load_hparams(
    cls: type[H],
    method: str,
    *,
    model_id: str | None = None,
    config: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> H:
    """Method defaults, then the YAML (given, or shipped for this model), then overrides."""
    path = Path(config) if config else default_config_path(method, model_id)
    values: dict[str, Any] = read_yaml(path) if path else {}
    source = str(path) if path else f"{method} defaults"
    values.update(overrides or {})
    return build(cls, values, source)
