"""Apply steering vectors to a model for the length of a `with` block.

    with steer.steering(model, (vector, 2.0), tokenizer=tok):
        model.generate(...)          # steered on every new token, KV cache and all
    model.generate(...)              # exactly unsteered again

Several vectors compose: their deltas add at each site. A vector whose metadata names
another operation (`meta.extra["operation"]`, e.g. "ablate") builds that operation's
intervention instead (see OPERATIONS). Objects other than vectors (LM-Steer
transforms) steer too when they offer `validate(sites, model_id)` and
`interventions(sites, instruction_suffix)`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from steer.errors import SteerError
from steer.refs import finite_multiplier
from steer.sites.backend import Backend, get_backend
from steer.sites.hooks import POSITION_POLICIES, ForwardState, Intervention, PositionPolicy, intervene
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
class AblateDirection:
    """Directional ablation: hidden - c * ((hidden . r) - alpha) r, with r the unit direction.

    c = 1 projects the direction out and sets the component to `alpha` (alpha = 0 is the
    plain ablation of Arditi et al. 2024); c = 0 leaves the activation alone. The
    multiplier is the ablation strength, so one file serves every strength.
    """

    site: Site
    direction: torch.Tensor
    coefficient: float | torch.Tensor = 1.0
    positions: PositionPolicy = "all"
    instruction_suffix: int = 1
    alpha: float = 0.0

    def __post_init__(self) -> None:
        # normalised once here, not on every decoding step
        direction = self.direction.float()
        self._unit = direction / direction.norm().clamp_min(1e-12)

    def __call__(self, hidden: torch.Tensor, state: ForwardState) -> torch.Tensor:
        if self._unit.device != hidden.device:
            self._unit = self._unit.to(hidden.device)
        unit = self._unit
        # the projection in float32: a bf16 dot product over thousands of dims drifts
        component = hidden.float() @ unit  # [B, L]
        coefficient = self.coefficient
        if isinstance(coefficient, torch.Tensor):
            coefficient = coefficient.to(hidden.device, torch.float32).view(-1, 1)
        delta = (coefficient * (component - self.alpha)).unsqueeze(-1) * unit
        mask = state.position_mask(self.positions, self.instruction_suffix)
        if mask is not None:
            delta = delta * mask.to(hidden.device, delta.dtype)
        return hidden - delta.to(hidden.dtype)


OperationBuilder = Callable[[Site, torch.Tensor, "float | torch.Tensor", PositionPolicy, int, dict[str, Any]], Intervention]

# What each vector operation builds at one site: (site, direction, coefficient, positions,
# instruction suffix, vector meta.extra) -> Intervention. New operations register here.
OPERATIONS: dict[str, OperationBuilder] = {
    "add": lambda site, d, c, pos, suffix, extra: AddVector(site, d, c, pos, suffix),
    "ablate": lambda site, d, c, pos, suffix, extra: AblateDirection(site, d, c, pos, suffix,
                                                                     float(extra.get("alpha", 0.0))),
}


def operation_of(vector: SteeringVector) -> str:
    return str(vector.meta.extra.get("operation", "add"))


@dataclass
class Steer:
    """One vector as it is applied: a multiplier, optional per-layer scales, a position policy."""

    vector: SteeringVector
    multiplier: float | Sequence[float] = 1.0
    positions: PositionPolicy = "all"
    layer_multipliers: dict[int, float] | None = None

    def __post_init__(self) -> None:
        # every multiplier is a finite number, whichever way it came in (CLI, file, library, Python)
        if isinstance(self.multiplier, (int, float, str)) or isinstance(self.multiplier, torch.Tensor) and \
                self.multiplier.dim() == 0:
            self.multiplier = finite_multiplier(self.multiplier)
        else:
            self.multiplier = [finite_multiplier(m, f"per-row multiplier {i}") for i, m in enumerate(self.multiplier)]
        if self.layer_multipliers:
            self.layer_multipliers = {int(layer): finite_multiplier(m, f"layer {layer} multiplier")
                                      for layer, m in self.layer_multipliers.items()}

    def validate(self, sites: SiteMap, model_id: str | None) -> None:
        self.vector.validate(sites, model_id)

    def interventions(self, sites: SiteMap, instruction_suffix: int) -> list[Intervention]:
        if self.positions not in POSITION_POLICIES:
            raise SteerError(f"Unknown position policy {self.positions!r}; use one of {POSITION_POLICIES}.")
        operation = operation_of(self.vector)
        if operation not in OPERATIONS:
            raise SteerError(
                f"This vector asks for operation {operation!r}, which this steer does not know "
                f"(known: {', '.join(OPERATIONS)}); upgrade steer or re-create the vector."
            )
        build = OPERATIONS[operation]
        coefficient: float | torch.Tensor = (
            float(self.multiplier)
            if isinstance(self.multiplier, (int, float))
            else torch.tensor([float(m) for m in self.multiplier])
        )
        vector = self.vector.scale_layers(self.layer_multipliers) if self.layer_multipliers else self.vector
        return [
            build(sites.normalise(site), direction, coefficient, self.positions, instruction_suffix, vector.meta.extra)
            for site, direction in vector.directions.items()
        ]


@runtime_checkable
class SteerSpec(Protocol):
    """Anything `steering()` can apply: checked against the model, then turned into interventions."""

    def validate(self, sites: SiteMap, model_id: str | None) -> None: ...

    def interventions(self, sites: SiteMap, instruction_suffix: int) -> list[Intervention]: ...


SteerLike = Steer | SteeringVector | tuple[SteeringVector, float] | SteerSpec


def as_steer(item: SteerLike) -> SteerSpec:
    if isinstance(item, (Steer, SteerSpec)):
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
    backend: str | Backend | None = None,
) -> Iterator[ForwardState]:
    """Steer `model` (a plain Hugging Face model) inside the block; unsteered again on exit.

    `tokenizer` lets the `after_instruction` policy find where a chat-templated
    instruction ends; `instruction_suffix` sets that count of tokens directly.
    `backend`: "torch" (hooks; the default) or "nnsight" (then generate with
    `steer.sites.backend.generate(model, ...)`); None uses the model's default
    (`steer.sites.backend.set_default_backend`, set by the CLI's --backend).
    """
    from steer.prompts import instruction_suffix_length  # local: avoids a cycle at import

    sites = SiteMap(model, arch)
    suffix = instruction_suffix
    if suffix is None:
        suffix = instruction_suffix_length(tokenizer) if tokenizer is not None else 1
    interventions: list[Intervention] = []
    for item in steers:
        spec = as_steer(item)
        spec.validate(sites, model_id_of(sites.model))
        interventions.extend(spec.interventions(sites, suffix))
    chosen = get_backend(backend, model)
    if chosen.name == "torch":
        with intervene(sites.model, interventions, arch) as state:
            yield state
    else:
        with chosen.intervene(model, interventions, arch, tokenizer) as state:
            yield state
