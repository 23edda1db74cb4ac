"""Word tokenization that needs no downloaded data (NLTK's Punkt models cannot be fetched offline)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def _treebank() -> Any:
    from nltk.tokenize import TreebankWordTokenizer

    return TreebankWordTokenizer()


def words(text: str) -> list[str]:
    """Penn-Treebank word tokens, the tokenizer `nltk.word_tokenize` applies after Punkt sentence splitting."""
    return list(_treebank().tokenize(text))


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
