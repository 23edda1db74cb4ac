"""Weight deltas as files: safetensors keyed by site ("mlp_down_weight.12"), [out, in] layout,
with what they were made for in the header. Re-applied through the site layer, so a
delta made on GPT-2's [in, out] Conv1D applies the same way as on a Linear."""

from __future__ import annotations

import json
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from steer._version import __version__
from steer.edit.context import model_id
from steer.edit.errors import EditError
from steer.errors import SteerError
from steer.io.tensors import read_tensors, write_tensors
from steer.sites.resolve import Site, SiteMap

FORMAT_VERSION = "1"
KIND = "edit-deltas"


def save_deltas(path: str | Path, sites: SiteMap, deltas: dict[int, torch.Tensor], edits: list[dict[str, Any]]) -> Path:
    if not deltas:
        raise EditError("There is no applied edit to export; make an edit first.")
    tensors = {str(Site("mlp_down_weight", layer)): d.float() for layer, d in deltas.items()}
    meta = {
        "model_id": model_id(sites.model), "hidden_size": sites.hidden_size, "num_layers": sites.num_layers,
        "layout": "out_in", "library_version": __version__, "edits": edits,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    header = {"steer.format_version": FORMAT_VERSION, "steer.kind": KIND, "steer.meta": json.dumps(meta)}
    return write_tensors(path, tensors, header)


def load_deltas(path: str | Path, sites: SiteMap) -> tuple[dict[int, torch.Tensor], dict[str, Any]]:
    """Deltas checked against this model: {layer: [out, in]} and the file's metadata."""
    header, tensors = read_tensors(path, error=EditError, what="delta file",
                                   fix="Write one with `steer edit ... --save-deltas FILE`.")
    if header.get("steer.kind") != KIND or header.get("steer.format_version") != FORMAT_VERSION:
        raise EditError(f"{path} is not a steer edit-delta file (format {FORMAT_VERSION}); re-export it with --save-deltas.")
    meta = json.loads(header.get("steer.meta", "{}"))
    deltas: dict[int, torch.Tensor] = {}
    for key, tensor in tensors.items():
        try:
            site = sites.normalise(Site.parse(key))
        except SteerError as exc:
            raise EditError(f"{path}: {exc}") from None
        if site.name != "mlp_down_weight" or site.layer is None:
            raise EditError(f"{path}: tensor {key!r} is not a down-projection weight delta.")
        expected = tuple(sites.down_weight_as_out_in(site.layer).shape)
        if tuple(tensor.shape) != expected:
            raise EditError(
                f"{path}: {key} has shape {tuple(tensor.shape)} but this model's weight is {expected}; "
                f"the deltas were made for {meta.get('model_id')!r}."
            )
        deltas[site.layer] = tensor
    current = model_id(sites.model)
    if meta.get("model_id") and current and meta["model_id"] != current:
        warnings.warn(f"Deltas were made for {meta['model_id']} and are applied to {current}.", stacklevel=2)
    return deltas, meta
