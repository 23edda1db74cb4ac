"""Merge several steering vectors into one: linear, TIES or DARE, with per-vector weights.

Per site (a vector without a site contributes nothing there):
- linear: sum_i w_i v_i.
- ties (Yadav et al. 2023): trim each v_i to its top-`density` fraction of entries by
  magnitude; elect each entry's sign as the sign of sum_i w_i trim(v_i); keep the
  entries whose sign agrees and take their weighted mean,
  sum_agree w_i trim(v_i) / sum_agree w_i (mergekit's normalisation; equal weights give
  TIES's disjoint mean).
- dare (Yu et al. 2024): drop each entry of v_i with probability `drop`, rescale the
  rest by 1 / (1 - drop), then sum_i w_i v_i. Seeded, so a merge is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from steer.errors import ConfigError, DataError
from steer.methods import SteeringMethod
from steer.sites.resolve import Site
from steer.vector import SteeringVector, VectorMeta


@dataclass
class MergeHparams:
    mode: Literal["linear", "ties", "dare"] = "linear"
    weights: list[float] | None = None  # one per vector; default all 1
    density: float = 0.2  # ties: fraction of entries kept per vector
    drop: float = 0.5  # dare: probability of dropping an entry
    seed: int = 0  # dare: random seed

    def validate(self) -> None:
        if not 0.0 < self.density <= 1.0:
            raise ConfigError("merge: density must be in (0, 1]; 0.2 keeps the largest 20% of entries.")
        if not 0.0 <= self.drop < 1.0:
            raise ConfigError("merge: drop must be in [0, 1).")


def trim(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the round(density * n) largest-magnitude entries (at least one), zero the rest."""
    keep = max(1, int(round(density * tensor.numel())))
    threshold = tensor.abs().topk(keep).values[-1]
    return torch.where(tensor.abs() >= threshold, tensor, torch.zeros_like(tensor))


def ties(tensors: list[torch.Tensor], weights: list[float], density: float) -> torch.Tensor:
    trimmed = torch.stack([w * trim(t, density) for t, w in zip(tensors, weights)])
    sign = torch.sign(trimmed.sum(0))
    agree = (torch.sign(trimmed) == sign) & (trimmed != 0)
    weight = torch.tensor(weights, dtype=trimmed.dtype).abs().view(-1, 1)
    total = (agree * weight).sum(0)
    return torch.where(total > 0, (trimmed * agree).sum(0) / total.clamp_min(1e-12), torch.zeros_like(total))


def dare(tensors: list[torch.Tensor], weights: list[float], drop: float, generator: torch.Generator) -> torch.Tensor:
    out = torch.zeros_like(tensors[0])
    for tensor, weight in zip(tensors, weights):
        keep = torch.rand(tensor.shape, generator=generator) >= drop
        out = out + weight * tensor * keep / (1.0 - drop)
    return out


def merge_vectors(vectors: list[SteeringVector], hp: MergeHparams) -> SteeringVector:
    if len(vectors) < 2:
        raise DataError("merge needs at least two vectors: --vectors a.safetensors b.safetensors.")
    weights = hp.weights if hp.weights is not None else [1.0] * len(vectors)
    if len(weights) != len(vectors):
        raise ConfigError(f"merge: {len(weights)} weights for {len(vectors)} vectors; give one weight per vector.")
    sizes = {v.meta.hidden_size for v in vectors}
    if len(sizes) != 1:
        raise DataError(f"merge: the vectors have different hidden sizes {sorted(sizes)}; merge vectors of one model.")
    operations = {v.meta.extra.get("operation", "add") for v in vectors}
    if len(operations) != 1:
        raise DataError(f"merge: cannot merge different operations {sorted(operations)} (e.g. ablation with addition).")
    generator = torch.Generator().manual_seed(hp.seed)
    merged: dict[Site, torch.Tensor] = {}
    for site in sorted({s for v in vectors for s in v.directions}):
        present = [(v.directions[site].float(), w) for v, w in zip(vectors, weights) if site in v.directions]
        tensors, site_weights = [t for t, _ in present], [w for _, w in present]
        if hp.mode == "linear":
            merged[site] = sum((w * t for t, w in present), torch.zeros_like(tensors[0]))
        elif hp.mode == "ties":
            merged[site] = ties(tensors, site_weights, hp.density)
        else:
            merged[site] = dare(tensors, site_weights, hp.drop, generator)
    first = vectors[0].meta
    models = {v.meta.model_id for v in vectors if v.meta.model_id}
    extra: dict[str, Any] = {"hparams": hp.__dict__.copy(), "parents": [v._summary() for v in vectors]}
    extra.update({k: v for k, v in first.extra.items() if k in ("operation", "alpha")})
    meta = VectorMeta(method="merge", model_id=first.model_id if len(models) <= 1 else None,
                      hidden_size=first.hidden_size, num_layers=first.num_layers, extra=extra)
    return SteeringVector(merged, meta)


def make_merge(model: Any, tokenizer: Any, vectors: list[SteeringVector], hp: MergeHparams,
               model_id: str | None = None) -> SteeringVector:
    return merge_vectors(vectors, hp)


METHOD = SteeringMethod(
    name="merge",
    hparams=MergeHparams,
    make=make_merge,
    description="Merge vectors: weighted linear sum, TIES (trim, elect sign, disjoint mean) or DARE (drop and rescale).",
    inputs=("vectors",),
    needs_model=False,
)
