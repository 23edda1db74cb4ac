"""Sentiment of generations: share positive / negative and mean score.

Default: VADER (lexicon shipped inside vaderSentiment), positive when compound > 0.05 and
negative when < -0.05, the thresholds VADER's authors recommend. Optional: a Hugging Face
classifier from a local folder (score = p(positive label)).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from typing import Any, Literal

from steer.errors import ConfigError
from steer.evaluate.base import EVALUATORS, EvalContext, Evaluator, Result, TextGroup, mean

VERSION = "1"


@dataclass
class SentimentSettings:
    backend: Literal["vader", "classifier"] = "vader"
    classifier_path: str | None = None
    positive_label: str = "positive"
    negative_label: str = "negative"

    def validate(self) -> None:
        if self.backend == "classifier" and not self.classifier_path:
            raise ConfigError("sentiment.backend=classifier needs sentiment.classifier_path=DIR (a local folder).")


@lru_cache(maxsize=1)
def _vader() -> Any:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def vader_compound(texts: Sequence[str]) -> list[float]:
    return [float(_vader().polarity_scores(t)["compound"]) for t in texts]


def _classifier(texts: Sequence[str], settings: SentimentSettings) -> tuple[list[float], list[float], list[float]]:
    from steer.evaluate.classifier import classify, label_index

    model, rows = classify(str(settings.classifier_path), texts)
    pos, neg = label_index(model, settings.positive_label), label_index(model, settings.negative_label)
    p_pos = [r[pos] for r in rows]
    labels = [max(range(len(r)), key=r.__getitem__) for r in rows]
    return p_pos, [float(x == pos) for x in labels], [float(x == neg) for x in labels]


def _score(group: TextGroup, settings: SentimentSettings, ctx: EvalContext) -> Result:
    if settings.backend == "vader":
        scores = vader_compound(group.texts)
        positive = [float(s > 0.05) for s in scores]
        negative = [float(s < -0.05) for s in scores]
        info = {"backend": f"vaderSentiment {metadata.version('vaderSentiment')}", "thresholds": [-0.05, 0.05]}
        return Result({"sentiment": mean(scores), "positive": mean(positive), "negative": mean(negative)},
                      {"sentiment": list(scores)}, info)
    p_pos, positive, negative = _classifier(group.texts, settings)
    return Result({"p(positive)": mean(p_pos), "positive": mean(positive), "negative": mean(negative)},
                  {"p(positive)": list(p_pos)}, {"backend": "classifier", "classifier_path": settings.classifier_path})


EVALUATORS.register("sentiment", Evaluator(
    "sentiment", VERSION, "sentiment (offline VADER; a local HF classifier by name)", SentimentSettings,
    score_texts=_score))
