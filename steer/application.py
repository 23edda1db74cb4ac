"""Apply steering vectors to a model for the length of a `with` block.

    with steer.steering(model, (vector, 2.0), tokenizer=tok):
        model.generate(...)          # steered on every new token, KV cache and all
    model.generate(...)              # exactly unsteered again

Several vectors compose: their deltas add at each site.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from steer.errors import SteerError
from steer.sites.hooks import POSITION_POLICIES, ForwardState, PositionPolicy, intervene
from steer.sites.resolve import Site, SiteMap
from steer.sites.table import ArchTable
from steer.vector import SteeringVector


@dataclass
class AddVector:
    """hidden + coefficient * direction at the positions the policy selects.

    `coefficient` is one number, or one per batch row (different requests in one batch
    steered by different amounts).
    """

    site: Site
    direction: torch.Tensor
    coefficient: float | torch.Tensor = 1.0
    positions: PositionPolicy = "all"
    instruction_suffix: int = 1
    _cast: dict[tuple[torch.device, torch.dtype], torch.Tensor] = field(default_factory=dict, repr=False)

    def _delta(self, hidden: torch.Tensor) -> torch.Tensor:
        key = (hidden.device, hidden.dtype)
        if key not in self._cast:
            coefficient = self.coefficient
            if isinstance(coefficient, torch.Tensor):
                delta = coefficient.to(hidden.device, hidden.dtype).view(-1, 1, 1) * self.direction.to(
                    hidden.device, hidden.dtype
                )
            else:
                delta = (float(coefficient) * self.direction).to(hidden.device, hidden.dtype)
            self._cast[key] = delta
        return self._cast[key]

    def __call__(self, hidden: torch.Tensor, state: ForwardState) -> torch.Tensor:
        delta = self._delta(hidden)
        if delta.dim() == 3 and delta.shape[0] != hidden.shape[0]:
            raise SteerError(
                f"{delta.shape[0]} per-row multipliers were given for a batch of {hidden.shape[0]} rows "
                "(num_return_sequences or beam search multiply rows); give one multiplier per row."
            )
        mask = state.position_mask(self.positions, self.instruction_suffix)
        if mask is None:
            return hidden + delta
        return hidden + delta * mask.to(hidden.device, hidden.dtype)


@dataclass
class Steer:
    """One vector as it is applied: a multiplier, optional per-layer scales, a position policy."""

    vector: SteeringVector
    multiplier: float | Sequence[float] = 1.0
    positions: PositionPolicy = "all"
    layer_multipliers: dict[int, float] | None = None

    def interventions(self, sites: SiteMap, instruction_suffix: int) -> list[AddVector]:
        if self.positions not in POSITION_POLICIES:
            raise SteerError(f"Unknown position policy {self.positions!r}; use one of {POSITION_POLICIES}.")
        coefficient: float | torch.Tensor = (
            float(self.multiplier)
            if isinstance(self.multiplier, (int, float))
            else torch.tensor([float(m) for m in self.multiplier])
        )
        vector = self.vector.scale_layers(self.layer_multipliers) if self.layer_multipliers else self.vector
        return [
            AddVector(sites.normalise(site), direction, coefficient, self.positions, instruction_suffix)
            for site, direction in vector.directions.items()
        ]


SteerLike = Steer | SteeringVector | tuple[SteeringVector, float]


def as_steer(item: SteerLike) -> Steer:
    if isinstance(item, Steer):
        return item
    if isinstance(item, SteeringVector):
        return Steer(item)
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], SteeringVector):
        return Steer(item[0], item[1])
    raise SteerError(f"Cannot steer with {type(item).__name__}; pass a SteeringVector, (vector, multiplier) or Steer.")


def model_id_of(model: nn.Module) -> str | None:
    config = getattr(model, "config", None)
    return getattr(config, "_name_or_path", None) or None


@contextmanager
def steering(
    model: nn.Module,
    *steers: SteerLike,
    tokenizer: object | None = None,
    instruction_suffix: int | None = None,
    arch: ArchTable | None = None,
) -> Iterator[ForwardState]:
    """Steer `model` (a plain Hugging Face model) inside the block; unsteered again on exit.

    `tokenizer` lets the `after_instruction` policy find where a chat-templated
    instruction ends; `instruction_suffix` sets that count of tokens directly.
    """
    from steer.prompts import instruction_suffix_length  # local: avoids a cycle at import

    sites = SiteMap(model, arch)
    suffix = instruction_suffix
    if suffix is None:
        suffix = instruction_suffix_length(tokenizer) if tokenizer is not None else 1
    interventions: list[AddVector] = []
    for item in steers:
        spec = as_steer(item)
        spec.vector.validate(sites, model_id_of(sites.model))
        interventions.extend(spec.interventions(sites, suffix))
    with intervene(sites.model, interventions, arch) as state:
        yield state
