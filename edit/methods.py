"""The edit-method registry. Built-in methods are imported on first use.

A method is `apply(ctx, requests, hparams) -> MethodOutput`: it reads activations and
may write scratch weights through the site layer, but must leave the model exactly as
it found it and return its change as per-layer deltas of the down-projection weight
in [out, in] layout, or as adapters at a down-projection (`steer.edit.adapters`) for
edits that are not weight changes (GRACE), or as in-context edits (IKE: a demonstration
context put in front of prompts). The Editor writes or installs them and keeps what
rollback needs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from steer.registry import Registry

_BUILTIN = ("steer.edit.rome", "steer.edit.r_rome", "steer.edit.memit", "steer.edit.alphaedit", "steer.edit.emmet", "steer.edit.ft", "steer.edit.lora",
            "steer.edit.grace", "steer.edit.kn", "steer.edit.dinm", "steer.edit.wise", "steer.edit.ike",
            "steer.edit.pmet")
_registry: Registry[EditMethod] | None = None


@dataclass
class MethodOutput:
    # layer -> [out, in] change of the down-projection weight: dense, or a LowRank factorisation
    # (kept compactly for rollback, expanded the same way every time; steer.edit.lowrank)
    deltas: dict[int, Any]
    info: dict[str, Any] = field(default_factory=dict)  # intermediate values (tests check them)
    # AlphaEdit: K^T K of this edit's keys per layer, preserved by later edits
    preserved: dict[int, torch.Tensor] = field(default_factory=dict)
    # edits that are not weight deltas: installed by the Editor, removed on rollback
    adapters: list[Any] = field(default_factory=list)
    # in-context edits (IKE): text the Editor puts in front of every prompt it evaluates or
    # generates from (`steer.edit.ike`); no weight and no module is touched
    contexts: list[Any] = field(default_factory=list)


@dataclass(frozen=True)
class EditMethod:
    name: str
    hparams: type
    apply: Callable[..., MethodOutput]
    batched: bool  # can take several requests in one update
    needs_stats: bool
    description: str
    needs_subject: bool = True  # edits at the subject's last token (False: the subject may be omitted)


def edit_methods() -> Registry[EditMethod]:
    global _registry
    if _registry is None:
        registry: Registry[EditMethod] = Registry("edit method")
        for module_name in _BUILTIN:
            methods: Sequence[EditMethod] = importlib.import_module(module_name).METHODS
            for method in methods:
                registry.register(method.name, method)
        _registry = registry
    return _registry
