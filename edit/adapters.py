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
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from steer.sites.resolve import Site, SiteMap


class Adapter(Protocol):
    """Acts at the down-projection of `layer`: (keys [..., d_in], values [..., d_out]) -> new values."""

    layer: int

    def __call__(self, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor: ...


def install(sites: SiteMap, adapter: Adapter) -> RemovableHandle:
    """Hook `adapter` onto layer `adapter.layer`'s down-projection; `handle.remove()` takes it off."""
    module = sites.module(Site("mlp_down_weight", sites.check_layer(adapter.layer)))

    def hook(_module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        return adapter(args[0], output)

    return module.register_forward_hook(hook)
