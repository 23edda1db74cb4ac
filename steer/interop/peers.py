"""steering-vectors and repeng vector objects as steer vectors (Python; no import of either library).

Both libraries count layers like steer (0 = the first block) and both steer the output of a
decoder block by default, which is steer's `resid_post.L`:

| library | object | layer key | site |
|---|---|---|---|
| steering-vectors | `SteeringVector(layer_activations, layer_type)` | `layer_activations[L]` | `decoder_block` -> `resid_post.L`, `self_attn` -> `attn_out.L`, `mlp` -> `mlp_out.L` |
| repeng | `ControlVector(model_type, directions)` | `directions[L]` (`model.layers[L]`'s output) | `resid_post.L` |

The objects are read by their attributes, so any object with the same fields converts.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from steer.errors import VectorError
from steer.sites.resolve import Site
from steer.vector import SteeringVector, VectorMeta

# steering-vectors' LayerType -> steer site name
STEERING_VECTORS_SITES = {"decoder_block": "resid_post", "self_attn": "attn_out", "mlp": "mlp_out"}


def _as_direction(value: Any, where: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().to("cpu")
    elif isinstance(value, np.ndarray):
        tensor = torch.from_numpy(np.array(value, copy=True))
    else:
        raise VectorError(f"{where} is a {type(value).__name__}, not a tensor or numpy array.")
    if tensor.dim() == 2 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.dim() != 1:
        raise VectorError(f"{where} has shape {tuple(tensor.shape)}; a direction is one vector of the hidden size.")
    return tensor.to(torch.float32) if not tensor.is_floating_point() else tensor


def from_steering_vectors(vector: Any, *, model_id: str | None = None, num_layers: int | None = None) -> SteeringVector:
    """A steering-vectors `SteeringVector` (fields `layer_activations`, `layer_type`) as a steer vector."""
    if not hasattr(vector, "layer_activations"):
        raise VectorError(f"Expected a steering_vectors.SteeringVector (with layer_activations); got {type(vector).__name__}.")
    layer_type = getattr(vector, "layer_type", "decoder_block")
    if layer_type not in STEERING_VECTORS_SITES:
        raise VectorError(
            f"steering-vectors layer_type {layer_type!r} has no steer site (steer steers "
            f"{', '.join(f'{k} -> {v}' for k, v in STEERING_VECTORS_SITES.items())}); train it with one of those."
        )
    site_name = STEERING_VECTORS_SITES[layer_type]
    directions = {Site(site_name, int(layer)): _as_direction(value, f"layer_activations[{layer}]")
                  for layer, value in vector.layer_activations.items()}
    if not directions:
        raise VectorError("This steering-vectors SteeringVector has no layer_activations.")
    meta = VectorMeta(method="steering-vectors", model_id=model_id, num_layers=num_layers,
                      extra={"imported_from": "steering-vectors", "layer_type": layer_type})
    return SteeringVector(directions, meta)


def from_repeng(vector: Any, *, model_id: str | None = None, num_layers: int | None = None) -> SteeringVector:
    """A repeng `ControlVector` (fields `model_type`, `directions`) as a steer vector at resid_post."""
    if not hasattr(vector, "directions") or not isinstance(vector.directions, dict):
        raise VectorError(f"Expected a repeng.ControlVector (with a directions dict); got {type(vector).__name__}.")
    directions = {Site("resid_post", int(layer)): _as_direction(value, f"directions[{layer}]")
                  for layer, value in vector.directions.items()}
    if not directions:
        raise VectorError("This repeng ControlVector has no directions.")
    model_type = getattr(vector, "model_type", None)
    meta = VectorMeta(method="repeng", model_id=model_id, num_layers=num_layers,
                      extra={"imported_from": "repeng", "model_type": model_type})
    return SteeringVector(directions, meta)
