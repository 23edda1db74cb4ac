"""What every evaluator shares: the text groups it scores, its result, its registry entry.

An evaluator scores texts (generations), the model itself (corpus perplexity, A/B
probabilities), or both. Heavy libraries are imported inside the functions so that
listing the evaluators for `steer eval --methods` stays cheap.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from steer.errors import SteerError
from steer.registry import Registry


@dataclass
class TextGroup:
    """One column of generations: e.g. the unsteered texts, or the steered ones at multiplier 4."""

    name: str
    texts: list[str]
    prompts: list[str] = field(default_factory=list)
    multiplier: float | None = None  # None: unsteered / not a steering run
    model: str | None = None  # the model that generated the texts, when the rows say


@dataclass
class Result:
    """Summary metrics (one number each), per-sample values, and what produced them."""

    metrics: dict[str, float]
    per_sample: dict[str, list[float | None]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


class EvalContext:
    """Models (loaded lazily, once each) and steering vectors for evaluators that need them."""

    def __init__(
        self,
        loader: Callable[[str | None], tuple[Any, Any]] | None = None,
        steers: Sequence[Any] = (),
        progress: bool = False,
        override_model: str | None = None,
        default_model: str | None = None,
    ) -> None:
        self._loader = loader
        self._models: dict[str | None, tuple[Any, Any]] = {}
        self.steers = list(steers)
        self.progress = progress
        self.override_model = override_model  # --model: wins over the model named in the rows
        self.default_model = default_model  # what `None` means (the bundled model in the CLI)

    def add_model(self, name: str | None, model: Any, tokenizer: Any) -> None:
        self._models[name] = (model, tokenizer)

    def model(self, name: str | None = None) -> tuple[Any, Any]:
        name = name or self.default_model
        if name not in self._models:
            if self._loader is None:
                raise SteerError(
                    f"This evaluator needs a model ({name or 'the default'}); pass model/tokenizer via "
                    "EvalContext.add_model or give the context a loader."
                )
            self._models[name] = self._loader(name)
        return self._models[name]

    @staticmethod
    def group_name(multiplier: float | None) -> str:
        return "unsteered" if multiplier is None else f"steered x{multiplier:g}"


TextScorer = Callable[[TextGroup, Any, EvalContext], Result]
ModelScorer = Callable[[Any, EvalContext], dict[str, Result]]


@dataclass(frozen=True)
class Evaluator:
    name: str
    version: str
    summary: str
    settings: type[Any]
    score_texts: TextScorer | None = None
    score_model: ModelScorer | None = None
    needs_model: bool = False


EVALUATORS: Registry[Evaluator] = Registry("evaluator")


def mean(values: Sequence[float | None]) -> float:
    """Mean over the defined values (NaN when none is)."""
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan
