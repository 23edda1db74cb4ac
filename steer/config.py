"""Typed hyper-parameters loaded strictly from YAML.

Precedence: `key=value` overrides (CLI) > the YAML file > the dataclass defaults.
Unknown keys are errors that name the closest valid key; values are checked
against the field's type.

Depth-relative layers: in a layer field (`layer`, `layers`, or a key ending in
`_layer`/`_layers`) a value such as `"40%"` means that fraction of the model's depth,
resolved by `load_hparams(..., num_layers=N)` to `round(0.40 * N)` (capped at N - 1):
40% is layer 13 of Llama-2-7B's 32 and layer 12 of SmolLM2-135M's 30.
`hparams_source(hp)` names the YAML file an instance came from.
"""

from __future__ import annotations

import dataclasses
import math
import re
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


def default_config_path(method: str, model_id: str | None, *, batch: bool = False) -> Path | None:
    """The shipped YAML for (method, model), falling back to the method's `default.yaml`.

    `batch`: for a batched edit of many requests, `<model>-batch.yaml` first where a method
    ships one (values tuned for batches; see README_2 "Batches of 100"), else the same files."""
    folder = resources.files("steer.hparams").joinpath(method)
    names = [f"{model_slug(model_id)}.yaml", "default.yaml"]
    if batch:
        names.insert(0, f"{model_slug(model_id)}-batch.yaml")
    for name in names:
        candidate = folder.joinpath(name)
        if candidate.is_file():
            return Path(str(candidate))
    return None


_DEPTH = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


def is_layer_key(key: str) -> bool:
    """Keys whose values are layer numbers and may be written as depth fractions ("40%")."""
    return key in ("layer", "layers") or key.endswith(("_layer", "_layers"))


def depth_layer(value: str, num_layers: int, where: str = "layers") -> int:
    """'40%' -> round(0.40 * num_layers), capped at the last layer (0..num_layers-1)."""
    match = _DEPTH.match(value)
    if match is None:
        raise ConfigError(f"{where}: {value!r} is not a depth fraction; write a percentage such as '40%'.")
    fraction = float(match.group(1)) / 100.0
    if fraction > 1.0:
        raise ConfigError(f"{where}: {value!r} is deeper than the model (use 0% to 100%).")
    if num_layers < 1:
        raise ConfigError(f"{where}: cannot resolve {value!r} on a model with {num_layers} layers.")
    return min(int(math.floor(fraction * num_layers + 0.5)), num_layers - 1)


def _is_depth(value: Any) -> bool:
    return isinstance(value, str) and _DEPTH.match(value) is not None


def resolve_depths(values: dict[str, Any], num_layers: int | None, source: str = "hyper-parameters") -> dict[str, Any]:
    """Replace depth fractions ("40%") in layer fields by layer numbers of a model with `num_layers`.

    A list keeps its order and drops layers that two fractions map to twice. Other values
    (numbers, "all", "auto", null) pass unchanged. Without `num_layers` a fraction is an
    error that says how to give the depth.
    """
    resolved = dict(values)
    for key, value in values.items():
        if not is_layer_key(key):
            continue
        items = value if isinstance(value, (list, tuple)) else [value]
        if not any(_is_depth(item) for item in items):
            continue
        where = f"{source}: {key}"
        if num_layers is None:
            fractions = [item for item in items if _is_depth(item)]
            raise ConfigError(
                f"{where}: {fractions[0]!r} is a fraction of the model's depth, and no model depth was given. "
                f"Load the hparams with the model (load_hparams(..., num_layers=SiteMap(model).num_layers)) "
                f"or write layer numbers, e.g. {key}=[12]."
            )
        out: list[Any] = []
        for item in items:
            layer = depth_layer(item, num_layers, where) if _is_depth(item) else item
            if layer not in out:
                out.append(layer)
        resolved[key] = out if isinstance(value, (list, tuple)) else out[0]
    return resolved


def config_source(method: str, model_id: str | None = None, config: str | Path | None = None, *,
                  batch: bool = False) -> str:
    """The file `load_hparams` reads for (method, model, config, batch), or '<method> defaults' if none."""
    path = Path(config) if config else default_config_path(method, model_id, batch=batch)
    return str(path) if path else f"{method} defaults"


def hparams_source(hparams: Any) -> str | None:
    """The YAML file (or '<method> defaults') an instance made by `load_hparams` came from."""
    return getattr(hparams, "_hparams_source", None)


def load_hparams(
    cls: type[H],
    method: str,
    *,
    model_id: str | None = None,
    config: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    num_layers: int | None = None,
    batch: bool = False,
) -> H:
    """Method defaults, then the YAML (given, or shipped for this model), then overrides.

    `num_layers` (the model's depth, `SiteMap(model).num_layers`) resolves depth fractions
    such as `layers: ["40%"]`; `hparams_source(result)` names the file used. `batch`: the
    shipped file for batched edits (`<model>-batch.yaml`) where there is one.
    """
    path = Path(config) if config else default_config_path(method, model_id, batch=batch)
    values: dict[str, Any] = read_yaml(path) if path else {}
    source = str(path) if path else f"{method} defaults"
    values.update(overrides or {})
    instance = build(cls, resolve_depths(values, num_layers, source), source)
    try:
        object.__setattr__(instance, "_hparams_source", source)
    except (AttributeError, TypeError):  # a slotted class: the source is not recorded
        pass
    return instance
