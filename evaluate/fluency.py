"""Fluency as weighted n-gram entropy of each generation (higher: less repetitive).

Formula from ROME's `compute_n_gram_entropy` (kmeng01/rome, experiments/py/eval_utils_counterfact.py),
copied unchanged into EasyEdit/EasyEdit2 `n_gram_entropy`: for n in (2, 3), the Shannon entropy
(bits) of the text's n-gram frequency distribution, multiplied by weights (2/3, 4/3), and the
arithmetic mean of those two weighted entropies; the group score is the mean over texts.
ROME tokenizes with `nltk.word_tokenize`, whose Punkt data cannot be downloaded here; we use
the Treebank word tokenizer it wraps, which gives the same tokens for single sentences.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from steer.errors import ConfigError
from steer.evaluate.base import EVALUATORS, EvalContext, Evaluator, Result, TextGroup, mean
from steer.evaluate.text import ngrams, words

VERSION = "1"


@dataclass
class FluencySettings:
    orders: list[int] = field(default_factory=lambda: [2, 3])
    weights: list[float] = field(default_factory=lambda: [2 / 3, 4 / 3])

    def validate(self) -> None:
        if len(self.orders) != len(self.weights) or not self.orders:
            raise ConfigError("fluency: give one weight per n-gram order (defaults: orders [2, 3], weights [2/3, 4/3]).")


def ngram_entropy(tokens: list[str], n: int) -> float:
    """Entropy in bits of the n-gram distribution (0 when there are no n-grams)."""
    counts = Counter(ngrams(tokens, n))
    total = sum(counts.values())
    return -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0


def fluency(text: str, settings: FluencySettings | None = None) -> float:
    settings = settings or FluencySettings()
    tokens = words(text)
    weighted = [w * ngram_entropy(tokens, n) for n, w in zip(settings.orders, settings.weights)]
    return sum(weighted) / len(weighted)


def _score(group: TextGroup, settings: FluencySettings, ctx: EvalContext) -> Result:
    values: list[float | None] = [fluency(t, settings) for t in group.texts]
    return Result({"ngram-entropy": mean(values)}, {"ngram-entropy": values},
                  {"tokenizer": "nltk TreebankWordTokenizer", "orders": settings.orders, "weights": settings.weights})


EVALUATORS.register("fluency", Evaluator(
    "fluency", VERSION, "weighted bigram/trigram entropy (ROME/EasyEdit)", FluencySettings, score_texts=_score))
