"""Steering methods, each a small module that exposes `METHOD`; one registry for all.

Built-in methods are imported on first use (no import-time side effects); third-party
packages add theirs through the `steer.methods` entry-point group.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from steer.registry import Registry

_BUILTIN = ("steer.methods.caa",)
_registry: Registry[SteeringMethod] | None = None


@dataclass(frozen=True)
class SteeringMethod:
    """A method that makes a SteeringVector from data.

    `make(model, tokenizer, data, hparams, model_id)` returns the vector; `hparams`
    is an instance of the method's typed dataclass.
    """

    name: str
    hparams: type
    make: Callable[..., Any]
    description: str


def steering_methods() -> Registry[SteeringMethod]:
    global _registry
    if _registry is None:
        registry: Registry[SteeringMethod] = Registry("steering method")
        for module_name in _BUILTIN:
            method = importlib.import_module(module_name).METHOD
            registry.register(method.name, method)
        for entry in entry_points(group="steer.methods"):
            method = entry.load()
            registry.register(method.name, method)
        _registry = registry
    return _registry
