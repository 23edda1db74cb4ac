"""Edits that are not weight deltas: adapters at a layer's MLP down-projection, removable exactly.

An adapter sees what the down-projection of layer L reads and writes on every forward
pass, its keys (the site `mlp_key.L`) and its values (`mlp_out.L` for the usual MLPs),
and returns the values to use instead. Methods that keep a memory beside the weights
(GRACE's codebook; WISE's side memory would be another) return adapters in
`MethodOutput.adapters`, the Editor installs them, and `rollback` removes them: no weight is
ever touched, so after removal the model computes exactly what it computed before.

An adapter is a permanent edit of the model, like a weight delta: it acts on every forward
pass in every thread, unlike steering (`steer.steering`), which is local to the caller's
context. It is installed as a plain torch forward hook on the down-projection module that
the site layer resolves for `mlp_down_weight.L` (the module is never replaced), so it
composes with steering hooks and with weight edits of the same layer.

While an adapter is installed, a pre-hook on the model itself records, for each forward pass,
where it starts in its sequence (the tokens already in the KV cache; 0 for a new sequence), so
an adapter can tell the next step of a cached generation from a new one-token prompt
(`pass_start()`), and which of its positions are real tokens rather than padding (the call's
attention mask, `pass_mask()`), so a row is treated the same whatever the other rows of its
batch are. Both are kept per context (thread or asyncio task) and cleared after the pass.
"""

from __future__ import annotations

import threading
import weakref
from contextvars import ContextVar
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from steer.errors import SteerError
from steer.sites.resolve import Site, SiteMap
from steer.sites.tracking import input_shape, past_length

# Where this context's current forward pass starts in its sequence, and the real positions of
# its tokens; None outside a pass of the model an adapter is installed on (e.g. a direct call of
# one block).
_PASS_START: ContextVar[int | None] = ContextVar("steer_adapter_pass_start", default=None)
_PASS_MASK: ContextVar[torch.Tensor | None] = ContextVar("steer_adapter_pass_mask", default=None)


def pass_start() -> int | None:
    """Tokens already in the sequence (KV cache) before the current forward pass, or None if unknown."""
    return _PASS_START.get()


def pass_mask() -> torch.Tensor | None:
    """[batch, new tokens] bool: the current pass's real (not padding) positions, or None if the
    call gave no attention mask (every position is real) or the pass is unknown."""
    return _PASS_MASK.get()


class Adapter(Protocol):
    """Acts at the down-projection of `layer`: (keys [..., d_in], values [..., d_out]) -> new values."""

    layer: int

    def __call__(self, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor: ...


class Installed:
    """The hooks of one installed adapter; `remove()` takes them all off (idempotent)."""

    def __init__(self, handle: RemovableHandle, model: nn.Module) -> None:
        self.handle, self.model, self.removed = handle, model, False

    def remove(self) -> None:
        if not self.removed:
            self.removed = True
            self.handle.remove()
            _release_pass_hooks(self.model)


# One pair of pass-recording hooks per model, shared by all its adapters (a hundred GRACE edits
# must not read the same call a hundred times a step): model -> (adapters using it, handles).
_PASS_HOOKS: weakref.WeakKeyDictionary[nn.Module, tuple[int, list[RemovableHandle]]] = weakref.WeakKeyDictionary()
_PASS_HOOKS_LOCK = threading.Lock()


def _record_pass(_model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    try:
        batch, length, _device = input_shape(args, kwargs)
    except SteerError:  # a call without input_ids / inputs_embeds: nothing is known of it
        _clear_pass()
        return
    start, mask = past_length(args, kwargs, length)
    _PASS_START.set(start)
    # the mask covers the cached tokens and this pass's; its last `length` columns are this pass's
    usable = mask is not None and mask.shape[0] == batch and mask.shape[1] >= length
    _PASS_MASK.set(mask[:, mask.shape[1] - length:].bool() if usable and mask is not None else None)


def _clear_pass(*_: Any) -> None:
    _PASS_START.set(None)
    _PASS_MASK.set(None)


def _hold_pass_hooks(model: nn.Module) -> None:
    with _PASS_HOOKS_LOCK:
        count, handles = _PASS_HOOKS.get(model, (0, []))
        if not handles:
            handles = [model.register_forward_pre_hook(_record_pass, with_kwargs=True),
                       model.register_forward_hook(_clear_pass, always_call=True)]
        _PASS_HOOKS[model] = (count + 1, handles)


def _release_pass_hooks(model: nn.Module) -> None:
    with _PASS_HOOKS_LOCK:
        count, handles = _PASS_HOOKS.get(model, (0, []))
        if count <= 1:
            for handle in handles:
                handle.remove()
            _PASS_HOOKS.pop(model, None)
        else:
            _PASS_HOOKS[model] = (count - 1, handles)


def install(sites: SiteMap, adapter: Adapter) -> Installed:
    """Hook `adapter` onto layer `adapter.layer`'s down-projection; `handle.remove()` takes it off."""
    module = sites.module(Site("mlp_down_weight", sites.check_layer(adapter.layer)))

    def hook(_module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        return adapter(args[0], output)

    handle = module.register_forward_hook(hook)
    _hold_pass_hooks(sites.model)
    return Installed(handle, sites.model)
