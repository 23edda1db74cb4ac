"""SteeringVector: per-site tensors plus the metadata that says what they were made for.

Vectors are values: they add, subtract, scale and negate, and they save to and load
from safetensors with their metadata in the header (never pickle). They are checked
against a model before they touch it.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from steer._version import __version__
from steer.errors import SteerError, VectorError
from steer.io.tensors import read_tensors, write_tensors
from steer.sites.resolve import Site, SiteMap

FORMAT_VERSION = "1"


@dataclass
class VectorMeta:
    method: str = "unknown"
    model_id: str | None = None
    hidden_size: int | None = None
    num_layers: int | None = None
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    library_version: str = __version__
    data_hash: str | None = None
    # Anything else worth keeping: hyper-parameters, data source, counts.
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class SteeringVector:
    """Directions keyed by site, e.g. {Site('resid_post', 12): tensor[hidden]}."""

    directions: dict[Site, torch.Tensor]
    meta: VectorMeta = field(default_factory=VectorMeta)

    def __post_init__(self) -> None:
        if not self.directions:
            raise VectorError("A steering vector needs at least one site.")
        self.directions = {Site.parse(s): t for s, t in self.directions.items()}
        sizes = {int(t.shape[-1]) for t in self.directions.values()}
        if len(sizes) != 1 or any(t.dim() != 1 for t in self.directions.values()):
            raise VectorError(f"Every direction must be a 1-D tensor of one hidden size; got sizes {sizes}.")
        size = sizes.pop()
        if self.meta.hidden_size is None:
            self.meta.hidden_size = size
        elif self.meta.hidden_size != size:
            raise VectorError(
                f"The directions have {size} values but the vector's metadata says hidden size "
                f"{self.meta.hidden_size}: the file was edited or written wrongly. Re-create it with "
                "`steer generate`, or fix meta.hidden_size."
            )
        if self.meta.num_layers is not None:
            beyond = [str(s) for s in self.directions if s.layer is not None and s.layer >= self.meta.num_layers]
            if beyond:
                raise VectorError(
                    f"The vector has directions at {', '.join(beyond)} but its metadata says the model has "
                    f"{self.meta.num_layers} layers: the file was edited or written wrongly. Re-create it with "
                    "`steer generate`, or fix meta.num_layers."
                )
        for site, tensor in self.directions.items():
            if not torch.isfinite(tensor).all():
                raise VectorError(f"The direction at {site} contains NaN or infinite values.")

    # ---- inspection -------------------------------------------------------------------
    @property
    def sites(self) -> list[Site]:
        return sorted(self.directions)

    @property
    def layers(self) -> list[int]:
        return sorted({s.layer for s in self.directions if s.layer is not None})

    def __repr__(self) -> str:
        norms = ", ".join(f"{s}: |{self.directions[s].norm():.3g}|" for s in self.sites)
        return f"SteeringVector(method={self.meta.method!r}, model={self.meta.model_id!r}, {norms})"

    # ---- arithmetic ---------------------------------------------------------------------
    def _combine(self, other: SteeringVector, sign: float) -> SteeringVector:
        if not isinstance(other, SteeringVector):
            return NotImplemented  # type: ignore[return-value]
        if self.meta.hidden_size != other.meta.hidden_size:
            raise VectorError(
                f"Cannot combine vectors of hidden size {self.meta.hidden_size} and {other.meta.hidden_size}."
            )
        if self.meta.model_id and other.meta.model_id and self.meta.model_id != other.meta.model_id:
            warnings.warn(
                f"Combining vectors made for different models ({self.meta.model_id} and {other.meta.model_id}).",
                stacklevel=3,
            )
        out = {s: t.clone() for s, t in self.directions.items()}
        for site, tensor in other.directions.items():
            tensor = tensor.to(out[site].dtype) if site in out else tensor
            out[site] = out[site] + sign * tensor if site in out else sign * tensor
        method = self.meta.method if self.meta.method == other.meta.method else "composite"
        meta = replace(self.meta, method=method, data_hash=None, extra={"parents": [self._summary(), other._summary()]})
        return SteeringVector(out, meta)

    def _summary(self) -> dict[str, Any]:
        return {"method": self.meta.method, "sites": [str(s) for s in self.sites], "data_hash": self.meta.data_hash}

    def __add__(self, other: SteeringVector) -> SteeringVector:
        return self._combine(other, 1.0)

    def __sub__(self, other: SteeringVector) -> SteeringVector:
        return self._combine(other, -1.0)

    def __mul__(self, scale: float) -> SteeringVector:
        if not isinstance(scale, (int, float)):
            return NotImplemented
        return SteeringVector({s: t * float(scale) for s, t in self.directions.items()}, replace(self.meta))

    __rmul__ = __mul__

    def __neg__(self) -> SteeringVector:
        return self * -1.0

    def __truediv__(self, scale: float) -> SteeringVector:
        return self * (1.0 / scale)

    def scale_layers(self, multipliers: dict[int, float]) -> SteeringVector:
        """Per-layer multipliers; layers not named keep scale 1."""
        return SteeringVector(
            {s: t * multipliers.get(s.layer, 1.0) if s.layer is not None else t for s, t in self.directions.items()},
            replace(self.meta),
        )

    def select(self, layers: list[int]) -> SteeringVector:
        """Keep only the directions at `layers`."""
        kept = {s: t for s, t in self.directions.items() if s.layer in layers}
        if not kept:
            raise VectorError(f"This vector has no direction at layers {layers}; it has {self.layers}.")
        return SteeringVector(kept, replace(self.meta))

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> SteeringVector:
        return SteeringVector({s: t.to(device=device, dtype=dtype) for s, t in self.directions.items()}, self.meta)

    # ---- validation ---------------------------------------------------------------------
    def validate(self, sites: SiteMap, model_id: str | None = None) -> None:
        """Error if the vector cannot act on this model; warn if it was made for another one."""
        made_for = (
            f"made for {self.meta.model_id or 'an unnamed model'} "
            f"(hidden size {self.meta.hidden_size}, {self.meta.num_layers or '?'} layers)"
        )
        if self.meta.hidden_size != sites.hidden_size:
            raise VectorError(
                f"This vector was {made_for}, but the model has hidden size {sites.hidden_size}. "
                "Make a vector for this model with `steer generate --model ...`."
            )
        for site in self.directions:
            if site.layer is not None and not -sites.num_layers <= site.layer < sites.num_layers:
                raise VectorError(
                    f"This vector acts at {site}, but the model has only {sites.num_layers} layers "
                    f"(0..{sites.num_layers - 1}); it was {made_for}."
                )
        if model_id and self.meta.model_id and model_id != self.meta.model_id:
            warnings.warn(
                f"Vector was made for {self.meta.model_id} but is applied to {model_id}; "
                "hidden sizes match, so it will run, but its effect may differ.",
                stacklevel=2,
            )

    # ---- files --------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write safetensors with metadata in the header, atomically."""
        header = {"steer.format_version": FORMAT_VERSION, "steer.meta": json.dumps(asdict(self.meta))}
        return write_tensors(path, {str(s): t for s, t in self.directions.items()}, header)

    @classmethod
    def load(cls, path: str | Path) -> SteeringVector:
        """Read a vector file of any kind steer knows: its own safetensors, a llama.cpp/repeng GGUF
        control vector, or EasyEdit2 `layer_<L>.pt` tensors (the codec table in steer.io.codecs)."""
        from steer.io.codecs import read_vector

        vector = read_vector(path)
        return vector if cls is SteeringVector else cls(vector.directions, vector.meta)

    @classmethod
    def _read_safetensors(cls, path: str | Path) -> SteeringVector:
        path = Path(path)
        header, tensors = read_tensors(path, error=VectorError, what="vector file",
                                       fix="Re-create it with `steer generate`.")
        if header.get("steer.kind", "vector") != "vector":
            raise VectorError(
                f"{path} is a {header['steer.kind']} file, not a steering vector; pass it to "
                "`steer apply --vector` or load it with steer.methods.artifacts.load_steer."
            )
        if "steer.meta" not in header:
            raise VectorError(
                f"{path} is a safetensors file but not a steer vector (no 'steer.meta' in its header). "
                "Wrap raw tensors with SteeringVector({'resid_post.12': tensor}, VectorMeta(...))."
            )
        if header.get("steer.format_version") != FORMAT_VERSION:
            raise VectorError(
                f"{path} uses vector format {header.get('steer.format_version')!r}; this steer reads {FORMAT_VERSION!r}."
            )
        try:
            raw_meta = json.loads(header["steer.meta"])
            known = {f for f in VectorMeta.__dataclass_fields__}
            meta = VectorMeta(**{k: v for k, v in raw_meta.items() if k in known})
            return cls({Site.parse(k): v for k, v in tensors.items()}, meta)
        except (json.JSONDecodeError, TypeError, SteerError) as exc:
            raise VectorError(f"{path} has an unreadable steer header: {exc}") from None


def read_steer_safetensors(path: str | Path) -> SteeringVector:
    """The `steer` codec's reader (steer.io.codecs)."""
    return SteeringVector._read_safetensors(path)


def write_steer_safetensors(vector: SteeringVector, path: str | Path) -> Path:
    """The `steer` codec's writer (steer.io.codecs)."""
    return vector.save(path)
