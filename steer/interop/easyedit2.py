"""EasyEdit2's saved steering vectors: `layer_<L>.pt` files, one plain tensor each.

EasyEdit2's vector generators (CAA, vector_prompt, SAE feature, STA) save each layer's
direction with `torch.save(vec, ".../<method>_vector/layer_<L>.pt")`, and its appliers add
it to the output of decoder block L (its `BlockOutputWrapper` wraps `model.model.layers[L]`):
steer's `resid_post.L`, with the same 0-based layer numbers.

Files are read with `torch.load(weights_only=True)` only: a file holding anything but a
tensor (a pickled object, a dict, a module) is refused with an error and never unpickled.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from steer.errors import VectorError
from steer.sites.resolve import Site
from steer.vector import SteeringVector, VectorMeta

_LAYER_FILE = re.compile(r"^layer_(-?\d+)\.pt$")


def _layer_of(path: Path) -> int:
    match = _LAYER_FILE.match(path.name)
    if match is None:
        raise VectorError(
            f"{path.name}: EasyEdit2 names each layer's vector layer_<L>.pt, and the layer is read from that name; "
            "rename the file (e.g. layer_12.pt) or pass the folder that holds the layer_<L>.pt files."
        )
    return int(match.group(1))


def read_plain_tensor(path: Path) -> torch.Tensor:
    """One tensor from a torch file, loaded with weights_only=True; anything else is refused."""
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ValueError, TypeError) as exc:
        # torch's message advises weights_only=False, which is exactly what must not happen: keep only the reason
        reasons = [line.strip() for line in str(exc).splitlines() if "unsupported" in line.lower()]
        first = reasons[0].rstrip(".") if reasons else type(exc).__name__
        raise VectorError(
            f"{path} is not a plain tensor file; steer loads .pt vectors only with "
            f"torch.load(weights_only=True) and never unpickles other objects ({first}). "
            "Save the vector with torch.save(tensor, path), or as safetensors."
        ) from None
    if not isinstance(value, torch.Tensor):
        raise VectorError(
            f"{path} holds a {type(value).__name__}, not a tensor; an EasyEdit2 vector file holds one tensor "
            "of the hidden size (torch.save(vec, 'layer_<L>.pt'))."
        )
    if value.dim() == 2 and value.shape[0] == 1:
        value = value[0]
    if value.dim() != 1:
        raise VectorError(f"{path} holds a tensor of shape {tuple(value.shape)}; expected one vector [hidden].")
    return value.to(torch.float32) if not value.is_floating_point() else value


def read_easyedit2_vector(path: str | Path) -> SteeringVector:
    """A `layer_<L>.pt` file, or a folder of them (e.g. EasyEdit2's caa_vector/), as one steer vector."""
    path = Path(path)
    files = sorted(path.glob("layer_*.pt")) if path.is_dir() else [path]
    if not files:
        raise VectorError(f"{path} holds no layer_<L>.pt files.")
    directions = {Site("resid_post", _layer_of(f)): read_plain_tensor(f) for f in files}
    folder = path if path.is_dir() else path.parent  # EasyEdit2 writes <method>_vector/layer_<L>.pt
    method = folder.name.removesuffix("_vector") if folder.name.endswith("_vector") else ""
    meta = VectorMeta(method=f"easyedit2:{method}" if method else "easyedit2",
                      extra={"imported_from": "easyedit2", "source": path.name, "files": [f.name for f in files]})
    return SteeringVector(directions, meta)
