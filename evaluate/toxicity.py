"""Toxicity of generations: mean score and share above a threshold.

Default backend: alt-profanity-check (TF-IDF + calibrated linear SVM, shipped with its
weights, fully offline). Stronger backends are chosen by name and never silently:
`detoxify` (a Detoxify / toxic-bert model as a local Hugging Face folder) and
`perspective` (Google's Perspective API; key from an environment variable).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Literal

from steer.errors import ConfigError, SteerError
from steer.evaluate.base import EVALUATORS, EvalContext, Evaluator, Result, TextGroup, mean

VERSION = "1"
Backend = Literal["profanity-check", "detoxify", "perspective"]
PERSPECTIVE_URL = "https://commentanalyzer.googleapis.com/v1alpha1/comments:analyze"


@dataclass
class ToxicitySettings:
    backend: Backend = "profanity-check"
    threshold: float = 0.5
    classifier_path: str | None = None  # detoxify: a local Hugging Face folder (e.g. unitary/toxic-bert)
    label: str = "toxic"  # detoxify: which output is toxicity
    api_key_env: str = "PERSPECTIVE_API_KEY"
    requests_per_second: float = 1.0  # Perspective's default quota

    def validate(self) -> None:
        if not 0 <= self.threshold <= 1:
            raise ConfigError("toxicity.threshold must lie in [0, 1].")
        if self.backend == "detoxify" and not self.classifier_path:
            raise ConfigError("toxicity.backend=detoxify needs toxicity.classifier_path=DIR (a local model folder).")


def profanity_check_scores(texts: Sequence[str]) -> list[float]:
    try:
        from profanity_check import predict_prob
    except ImportError:
        raise SteerError("The default toxicity backend needs alt-profanity-check: "
                         "pip install alt-profanity-check==1.9.1") from None
    return [float(p) for p in predict_prob(list(texts))] if texts else []


def _detoxify_scores(texts: Sequence[str], settings: ToxicitySettings) -> list[float]:
    from steer.evaluate.classifier import classify, label_index

    model, rows = classify(str(settings.classifier_path), texts)
    index = label_index(model, settings.label)
    return [row[index] for row in rows]


def _perspective_scores(texts: Sequence[str], settings: ToxicitySettings) -> list[float]:
    import urllib.error
    import urllib.request

    key = os.environ.get(settings.api_key_env)
    if not key:
        raise SteerError(f"toxicity.backend=perspective needs an API key in ${settings.api_key_env}; "
                         "export it, or use the offline default backend (profanity-check).")
    scores = []
    for text in texts:
        body = json.dumps({"comment": {"text": text or " "}, "languages": ["en"],
                           "requestedAttributes": {"TOXICITY": {}}}).encode()
        request = urllib.request.Request(f"{PERSPECTIVE_URL}?key={key}", data=body,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                reply = json.load(response)
        except (urllib.error.URLError, OSError) as exc:
            raise SteerError(f"Perspective API request failed ({exc}); check the key and network.") from None
        scores.append(float(reply["attributeScores"]["TOXICITY"]["summaryScore"]["value"]))
        time.sleep(1.0 / settings.requests_per_second)
    return scores


def toxicity_scores(texts: Sequence[str], settings: ToxicitySettings | None = None) -> list[float]:
    settings = settings or ToxicitySettings()
    if settings.backend == "profanity-check":
        return profanity_check_scores(texts)
    if settings.backend == "detoxify":
        return _detoxify_scores(texts, settings)
    return _perspective_scores(texts, settings)


def backend_version(backend: str) -> str:
    if backend == "profanity-check":
        try:
            return f"alt-profanity-check {metadata.version('alt-profanity-check')}"
        except metadata.PackageNotFoundError:
            return "alt-profanity-check (not installed)"
    return backend


def _score(group: TextGroup, settings: ToxicitySettings, ctx: EvalContext) -> Result:
    values = toxicity_scores(group.texts, settings)
    flagged = [float(v > settings.threshold) for v in values]
    return Result({"toxicity": mean(values), f"toxic>{settings.threshold:g}": mean(flagged)},
                  {"toxicity": list(values)},
                  {"backend": backend_version(settings.backend), "classifier_path": settings.classifier_path,
                   "threshold": settings.threshold})


EVALUATORS.register("toxicity", Evaluator(
    "toxicity", VERSION, "toxicity (offline profanity-check; detoxify / perspective by name)", ToxicitySettings,
    score_texts=_score))
