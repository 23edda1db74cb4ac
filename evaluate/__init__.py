"""Evaluators for steered and edited models, all offline by default (`steer eval`).

    from steer.evaluate import evaluate_texts, EVALUATORS
    report = evaluate_texts(["a generated text", ...], methods=["distinctness", "fluency"])

Each evaluator is a small module registering itself in `EVALUATORS` (the choices of
`steer eval --methods`); importing this package registers them all. Heavy libraries
(torch, scikit-learn, classifiers) load only when an evaluator runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from steer.evaluate import ab_eval, distinct, fluency, perplexity, safeedit, sentiment, toxicity  # noqa: F401
from steer.evaluate.base import EVALUATORS, EvalContext, Evaluator, Result, TextGroup
from steer.evaluate.distinct import corpus_distinct_n, distinct_n
from steer.evaluate.fluency import fluency as fluency_score
from steer.evaluate.fluency import ngram_entropy
from steer.evaluate.inputs import load_generations
from steer.evaluate.perplexity import corpus_perplexity, generation_nll
from steer.evaluate.runner import run, settings_for
from steer.evaluate.safeedit import safe_scores
from steer.evaluate.sentiment import vader_compound
from steer.evaluate.toxicity import toxicity_scores


def evaluate_texts(
    texts: Sequence[str],
    methods: Sequence[str],
    *,
    prompts: Sequence[str] | None = None,
    settings: dict[str, dict[str, Any]] | None = None,
    model: Any = None,
    tokenizer: Any = None,
) -> dict[str, Any]:
    """Score one list of texts; `settings` maps method -> {key: value}; ppl needs model + tokenizer."""
    ctx = EvalContext()
    if model is not None:
        ctx.add_model(None, model, tokenizer)
    chosen = {m: settings_for(m, (settings or {}).get(m)) for m in methods}
    group = TextGroup("text", list(texts), list(prompts or []))
    return run([group], list(methods), ctx, chosen)


__all__ = [
    "EVALUATORS", "EvalContext", "Evaluator", "Result", "TextGroup", "corpus_distinct_n", "corpus_perplexity",
    "distinct_n", "evaluate_texts", "fluency_score", "generation_nll", "load_generations", "ngram_entropy",
    "run", "safe_scores", "settings_for", "toxicity_scores", "vader_compound",
]
