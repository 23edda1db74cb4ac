"""llama.cpp control vectors (GGUF): the files `llama-cli --control-vector FILE` reads and repeng writes.

The format, as llama.cpp's loader (`common_control_vector_load_one`) and repeng's
`ControlVector.export_gguf` / `import_gguf` define it:

- `general.architecture = "controlvector"`, `controlvector.model_hint` (repeng stores the
  model's `config.model_type`, e.g. "llama"; llama.cpp does not check it) and
  `controlvector.layer_count` (the number of direction tensors);
- one 1-D F32 tensor per layer, named `direction.N`, all of the model's hidden size.

**Layer numbering.** llama.cpp adds `direction.N` to the output of block N, counting
blocks from 0 (in its graph, `build_cvec(cur, il)` runs at the end of block `il`, and
`direction.N` fills `tensors[N]`). That is steer's `resid_post.N`, so the numbers are the
same on both sides: steer's `resid_post.12` is written as `direction.12`. What makes the
numbering look 1-based is that llama.cpp keeps no slot for N = 0: a `direction.0` tensor
makes it refuse the whole file, so the output of the first block (`resid_post.0`) cannot
be steered there, and steer refuses to export it. repeng uses the same numbers (its key N
is `model.layers[N]`'s output, read as `hidden_states[N + 1]`). Only `resid_post` sites
map onto control vectors; other sites are refused with an error.

llama.cpp adds the direction at every position, prompt included (steer's `--positions
all`), times the strength given with `--control-vector-scaled FILE STRENGTH`; several
files, and repeated layers within one file, are summed, and this reader sums repeats too.
steer also stores its own metadata as JSON under `steer.meta` (llama.cpp and repeng ignore
extra keys), so a steer -> GGUF -> steer round trip keeps method, model and provenance.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from steer.errors import VectorError
from steer.io.atomic import atomic_write

if TYPE_CHECKING:
    from steer.vector import SteeringVector

ARCH = "controlvector"
STEER_META_KEY = "steer.meta"


def _model_hint(vector: SteeringVector) -> str:
    extra = vector.meta.extra or {}
    return str(extra.get("model_type") or vector.meta.model_id or "unknown")


def gguf_layers(vector: SteeringVector, num_layers: int | None = None) -> dict[int, torch.Tensor]:
    """{llama.cpp layer N: direction} for a vector's resid_post sites; clear errors for anything else."""
    others = [str(s) for s in vector.sites if s.name != "resid_post"]
    if others:
        raise VectorError(
            f"llama.cpp control vectors act only on the residual stream after a block (steer's resid_post.L); "
            f"this vector also acts at {', '.join(others)}. Keep its resid_post sites with "
            "SteeringVector({s: t for s, t in v.directions.items() if s.name == 'resid_post'}, v.meta), "
            "or export a vector made at resid_post."
        )
    depth = num_layers or vector.meta.num_layers
    out: dict[int, torch.Tensor] = {}
    for site, tensor in vector.directions.items():
        layer = int(site.layer)  # type: ignore[arg-type]
        if layer < 0:
            if not depth:
                raise VectorError(
                    f"{site} counts from the end, but the vector does not say how many layers its model has; "
                    "llama.cpp needs absolute layer numbers: pass num_layers (steer export --num-layers N)."
                )
            layer += depth
        if layer == 0:
            raise VectorError(
                "resid_post.0 (the output of the first block) has no slot in a llama.cpp control vector: "
                "llama.cpp refuses direction.0. Export the other layers with vector.select([...]) or move the "
                "direction to a later layer."
            )
        out[layer] = out.get(layer, 0) + tensor.detach().to("cpu", torch.float32)
    return dict(sorted(out.items()))


def write_gguf_vector(vector: SteeringVector, path: str | Path, *, model_hint: str | None = None,
                      num_layers: int | None = None) -> Path:
    """Write `vector` as a llama.cpp control vector (atomically); returns the path."""
    import gguf

    layers = gguf_layers(vector, num_layers)
    hint = model_hint or _model_hint(vector)
    meta = json.dumps(asdict(vector.meta))

    def write(tmp: Path) -> None:
        writer = gguf.GGUFWriter(str(tmp), ARCH)
        writer.add_string(f"{ARCH}.model_hint", hint)
        writer.add_uint32(f"{ARCH}.layer_count", len(layers))
        writer.add_string(STEER_META_KEY, meta)
        for layer, tensor in layers.items():
            writer.add_tensor(f"direction.{layer}", tensor.numpy().astype(np.float32, copy=False))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    return atomic_write(path, write)


def _field(reader: Any, key: str) -> Any:
    field = reader.get_field(key)
    return None if field is None or not len(field.parts) else field.contents()


def read_gguf_vector(path: str | Path) -> SteeringVector:
    """A llama.cpp/repeng control vector as a SteeringVector at resid_post.N (see the module docstring)."""
    import gguf

    from steer.sites.resolve import Site
    from steer.vector import SteeringVector, VectorMeta

    path = Path(path)
    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError, KeyError, IndexError) as exc:
        raise VectorError(f"{path} is not a readable GGUF file (corrupt or truncated?): {exc}") from None
    arch = _field(reader, "general.architecture")
    if arch != ARCH:
        raise VectorError(
            f"{path} is a GGUF file of architecture {arch!r}, not a control vector ({ARCH!r}); "
            "a model GGUF goes to --model, a control vector (from repeng or `steer export --format gguf`) to --vector."
        )
    directions: dict[Site, torch.Tensor] = {}
    for tensor in reader.tensors:
        prefix, _, number = tensor.name.partition(".")
        if prefix != "direction" or not number.isdigit():
            raise VectorError(f"{path}: tensor {tensor.name!r} is not named direction.N (N a layer number); "
                              "llama.cpp would refuse this file too.")
        if tensor.tensor_type not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            raise VectorError(f"{path}: {tensor.name} is stored as {tensor.tensor_type.name}; control vectors are "
                              "F32 1-D tensors (llama.cpp refuses other types).")
        layer = int(number)
        if layer == 0:
            warnings.warn(f"{path} has direction.0, which llama.cpp refuses; steer reads it as resid_post.0.",
                          stacklevel=2)
        values = torch.from_numpy(np.array(tensor.data, dtype=np.float32).reshape(-1))
        site = Site("resid_post", layer)
        directions[site] = directions[site] + values if site in directions else values
    if not directions:
        raise VectorError(f"{path} is a control vector with no direction tensors.")
    hint = _field(reader, f"{ARCH}.model_hint")
    stored = _field(reader, STEER_META_KEY)
    if stored is not None:
        try:
            raw = json.loads(stored)
            known = set(VectorMeta.__dataclass_fields__)
            meta = VectorMeta(**{k: v for k, v in raw.items() if k in known})
        except (json.JSONDecodeError, TypeError) as exc:
            raise VectorError(f"{path} has an unreadable {STEER_META_KEY} entry: {exc}") from None
    else:
        meta = VectorMeta(method="control_vector", model_id=None,
                          extra={"model_type": hint, "imported_from": "gguf", "source": path.name,
                                 "layer_numbering": "llama.cpp direction.N = resid_post.N"})
    return SteeringVector(directions, meta)
