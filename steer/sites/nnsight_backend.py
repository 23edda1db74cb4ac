"""Reading and steering an nnsight model directly, by steer's site names.

The backend itself is `steer.sites.backends.nnsight.NnsightBackend` (selected with
`backend="nnsight"` in `steer.steering`, `steer.attach`, `make_vector` and the CLI's
`--backend`). These two functions are the short form for a caller who holds an
nnsight model (local, or remote with `remote=True`) and a list of interventions:

    from nnsight import TransformersModel
    nn_model = TransformersModel(hf_model, tokenizer=tok)
    values = read(nn_model, batch, ["resid_post.6"])
    sites = SiteMap(nn_model)
    tokens = steered_generate(nn_model, batch, Steer(vector, 2.0).interventions(sites, 1), max_new_tokens=32)

This module sits in the site layer: it takes interventions, not `Steer` objects
(`steer.application` turns those into interventions).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from steer.errors import SteerError
from steer.sites.backends.nnsight import NnsightBackend, envoy_at
from steer.sites.resolve import Site

__all__ = ["envoy_at", "read", "steered_generate"]


def _check(nn_model: Any) -> None:
    if isinstance(nn_model, torch.nn.Module):
        raise SteerError("Expected an nnsight model (nnsight.TransformersModel(hf_model, tokenizer=tok)); "
                         "for a plain model use steer.steering(..., backend='nnsight') or steer.record.")


def read(nn_model: Any, inputs: Mapping[str, torch.Tensor], sites: Sequence[Site | str],
         **trace_kwargs: Any) -> dict[Site, torch.Tensor]:
    """Activations at `sites` for one forward pass (pass remote=True to run on NDIF)."""
    _check(nn_model)
    return NnsightBackend(**trace_kwargs).read(nn_model, inputs, sites)


def steered_generate(nn_model: Any, inputs: Mapping[str, torch.Tensor], interventions: Sequence[Any],
                     *, trace_kwargs: Mapping[str, Any] | None = None, **generate_kwargs: Any) -> torch.Tensor:
    """`generate` with `interventions` acting on every step; keyword arguments go to `generate`."""
    _check(nn_model)
    backend = NnsightBackend(**dict(trace_kwargs or {}))
    with backend.intervene(nn_model, interventions):
        return backend.generate(nn_model, inputs, **generate_kwargs)
