"""Directional ablation: project a direction out of a site (Arditi et al. 2024, refusal).

    h <- h - m ((h . r) - alpha) r,   r the unit direction, m the multiplier at apply time

m = 1 with alpha = 0 removes the direction; alpha > 0 ablates then adds alpha r
("ablate then add"). The direction is the difference of mean activations on
contrastive data (as CAA computes it, with any aggregator), or is taken from existing
vectors (`--vectors caa.safetensors`). The file is an ordinary steer vector whose
metadata says `operation: ablate`, so `steering()` builds the ablation for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch

from steer.config import build
from steer.errors import ConfigError, DataError
from steer.io.datasets import ContrastiveData
from steer.methods import SteeringMethod
from steer.methods.caa import CAAHparams, make_caa
from steer.sites.resolve import Site, SiteMap
from steer.vector import SteeringVector, VectorMeta


@dataclass
class AblationHparams:
    layers: list[int] = field(default_factory=lambda: [12])  # where the direction is read
    site: str = "resid_post"
    # where it is projected out: the read layers (null), these layers, or every layer ("all",
    # as Arditi et al. do for refusal); with several apply layers give one read layer
    apply_layers: list[int] | Literal["all"] | None = None
    alpha: float = 0.0  # component along the unit direction after ablation (0 = remove it)
    token: Literal["auto", "answer", "mean", "last"] = "auto"
    aggregator: Literal["mean_diff", "pca", "logistic"] = "mean_diff"
    batch_size: int = 8
    chat_template: bool = True
    system_prompt: str | None = None
    max_items: int | None = None

    def validate(self) -> None:
        Site(self.site, 0)
        if not self.layers:
            raise ConfigError("ablation: give at least one layer (layers: [12]).")


def project_out(hidden: torch.Tensor, direction: torch.Tensor, alpha: float = 0.0, strength: float = 1.0) -> torch.Tensor:
    """The formula the ablation intervention applies, for users and tests."""
    unit = direction / direction.norm().clamp_min(1e-12)
    return hidden - strength * ((hidden @ unit) - alpha).unsqueeze(-1) * unit


def _directions_from_data(model: Any, tokenizer: Any, data: ContrastiveData, hp: AblationHparams) -> dict[Site, torch.Tensor]:
    caa_keys = {k: getattr(hp, k) for k in CAAHparams.__dataclass_fields__ if hasattr(hp, k)}
    vector = make_caa(model, tokenizer, data, build(CAAHparams, caa_keys, "ablation"), None)
    return vector.directions


def as_ablation(directions: dict[Site, torch.Tensor], hp: AblationHparams, num_layers: int,
                meta: VectorMeta) -> SteeringVector:
    if hp.apply_layers is not None:
        if len(directions) != 1:
            raise ConfigError(
                f"ablation: apply_layers needs exactly one direction, got {len(directions)} "
                f"({', '.join(map(str, directions))}); set layers to one layer."
            )
        (source, direction), = directions.items()
        layers = list(range(num_layers)) if hp.apply_layers == "all" else hp.apply_layers
        directions = {Site(source.name, layer): direction.clone() for layer in layers}  # own storage: safetensors refuses shared tensors
    extra = {**meta.extra, "operation": "ablate", "alpha": hp.alpha, "hparams": hp.__dict__.copy()}
    return SteeringVector(directions, replace(meta, method="ablation", extra=extra))


def make_ablation(model: Any, tokenizer: Any, data: ContrastiveData | list[SteeringVector], hp: AblationHparams,
                  model_id: str | None = None) -> SteeringVector:
    site_map = SiteMap(model)
    if isinstance(data, list):  # --vectors: reuse existing directions
        if not data:
            raise DataError("ablation: no vectors given.")
        directions: dict[Site, torch.Tensor] = {}
        for vector in data:
            for site, tensor in vector.directions.items():
                directions[site] = directions.get(site, torch.zeros_like(tensor)) + tensor
        meta = VectorMeta(model_id=model_id, hidden_size=site_map.hidden_size, num_layers=site_map.num_layers,
                          extra={"parents": [v._summary() for v in data]})
    else:
        directions = _directions_from_data(model, tokenizer, data, hp)
        meta = VectorMeta(model_id=model_id, hidden_size=site_map.hidden_size, num_layers=site_map.num_layers,
                          data_hash=data.source_hash, extra={"data_kind": data.kind, "items": len(data)})
    return as_ablation(directions, hp, site_map.num_layers, meta)


METHOD = SteeringMethod(
    name="ablation",
    hparams=AblationHparams,
    make=make_ablation,
    description="Directional ablation: project a (contrastive or given) direction out of a site, optionally add it back.",
    inputs=("contrastive", "vectors"),
)
