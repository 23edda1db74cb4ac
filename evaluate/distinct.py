"""dist-1/2/3: how many distinct n-grams a generation uses, per word.

Follows the DExperts evaluation code (Liu et al., 2021, `scripts/evaluation/evaluate_generations.py`,
also used by EasyEdit2): words are split on single spaces, and for each generation
dist-n = |distinct n-grams| / |words|; the report is the mean over generations. Note the
denominator is the number of words, not of n-grams, so dist-2/3 of a short text stay below 1.
`corpus-dist-n` (Li et al., 2016) pools a group's generations: distinct / total n-grams.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from steer.evaluate.base import EVALUATORS, EvalContext, Evaluator, Result, TextGroup, mean

VERSION = "1"
ORDERS = (1, 2, 3)


@dataclass
class DistinctSettings:
    """No settings: the definition is fixed so numbers compare across papers."""


def _grams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def distinct_n(text: str, n: int) -> float | None:
    """DExperts dist-n of one text; None for an empty text."""
    words = text.split(" ") if text else []
    if not words:
        return None
    return len(set(_grams(words, n))) / len(words)


def corpus_distinct_n(texts: Sequence[str], n: int) -> float | None:
    distinct: set[tuple[str, ...]] = set()
    total = 0
    for text in texts:
        grams = _grams(text.split(), n)
        distinct.update(grams)
        total += len(grams)
    return len(distinct) / total if total else None


def _score(group: TextGroup, settings: Any, ctx: EvalContext) -> Result:
    metrics: dict[str, float] = {}
    per_sample: dict[str, list[float | None]] = {}
    for n in ORDERS:
        values = [distinct_n(t, n) for t in group.texts]
        per_sample[f"dist-{n}"] = values
        metrics[f"dist-{n}"] = mean(values)
    for n in ORDERS:
        value = corpus_distinct_n(group.texts, n)
        metrics[f"corpus-dist-{n}"] = float("nan") if value is None else value
    return Result(metrics, per_sample, {"definition": "DExperts per-text mean; corpus = Li et al. 2016"})


EVALUATORS.register("distinctness", Evaluator(
    "distinctness", VERSION, "dist-1/2/3 (DExperts) and corpus dist-n", DistinctSettings, score_texts=_score))
