"""Reading prompt files, A/B datasets and contrastive pairs (JSON or JSONL)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steer.errors import DataError

PROMPT_KEYS = ("prompt", "input", "question")


def file_hash(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def load_records(path: str | Path) -> list[Any]:
    """A JSON list (or {"data": [...]}) or JSON Lines; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"No data file at {path}.")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise DataError(f"{path} is empty.")
    records: list[Any]
    if path.suffix == ".jsonl" or (text.lstrip()[:1] == "{" and "\n{" in text.strip()):
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}, line {number}: not valid JSON ({exc.msg}).") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON at line {exc.lineno} ({exc.msg}).") from None
        if isinstance(data, dict):
            lists = [v for v in data.values() if isinstance(v, list)]
            if "positive" in data and "negative" in data:
                records = [data]
            elif len(lists) == 1:
                records = lists[0]
            else:
                raise DataError(f"{path}: expected a list of items, got an object with keys {sorted(data)}.")
        elif isinstance(data, list):
            records = data
        else:
            raise DataError(f"{path}: expected a list of items, got {type(data).__name__}.")
    if not records:
        raise DataError(f"{path} holds no items.")
    return records


def _text_of(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("text"), str):
        return value["text"]  # DExperts style {"text": ...}
    return None


def prompt_of(item: Any, where: str) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        for key in PROMPT_KEYS:
            text = _text_of(item.get(key))
            if text is not None:
                return text
    raise DataError(f"{where}: no prompt found; items need one of {PROMPT_KEYS} (a string or {{'text': ...}}).")


def load_prompts(path: str | Path, limit: int | None = None, *, with_continuation: bool = False) -> list[str]:
    """Prompts of a file; `with_continuation` appends a DExperts-style `continuation` (whole texts)."""
    records = load_records(path)
    prompts = []
    for index, item in enumerate(records[:limit] if limit else records):
        text = prompt_of(item, f"{path}, item {index}")
        continuation = _text_of(item.get("continuation")) if isinstance(item, dict) else None
        prompts.append(f"{text} {continuation.strip()}" if with_continuation and continuation else text)
    return prompts


@dataclass(frozen=True)
class ABItem:
    question: str
    matching: str  # e.g. "(A)"
    not_matching: str


def is_ab(item: Any) -> bool:
    return isinstance(item, dict) and {"question", "answer_matching_behavior", "answer_not_matching_behavior"} <= set(
        item
    )


def ab_letter(answer: str) -> str:
    """'(A)' -> 'A'; ' B' -> 'B'."""
    stripped = answer.strip().strip("()").strip()
    if not stripped:
        raise DataError(f"A/B answer {answer!r} has no letter.")
    return stripped[0]


def as_ab_items(records: list[Any], source: str) -> list[ABItem]:
    items = []
    for index, record in enumerate(records):
        if not is_ab(record):
            raise DataError(
                f"{source}, item {index}: A/B items need 'question', 'answer_matching_behavior' and "
                "'answer_not_matching_behavior'."
            )
        matching, not_matching = record["answer_matching_behavior"], record["answer_not_matching_behavior"]
        if isinstance(matching, list):  # some CAA files give a list; the first is canonical
            matching = matching[0]
        if isinstance(not_matching, list):
            not_matching = not_matching[0]
        items.append(ABItem(record["question"], str(matching), str(not_matching)))
    return items


def load_ab(path: str | Path) -> list[ABItem]:
    return as_ab_items(load_records(path), str(path))


@dataclass(frozen=True)
class TextPair:
    """A prompt with a completion that shows the behaviour and one that does not."""

    prompt: str
    positive: str
    negative: str


@dataclass
class ContrastiveData:
    """What contrastive methods consume: A/B items, prompt/completion pairs, or two unpaired sets."""

    ab_items: list[ABItem] | None = None
    pairs: list[TextPair] | None = None
    positive_texts: list[str] | None = None
    negative_texts: list[str] | None = None
    source_hash: str | None = None

    @property
    def kind(self) -> str:
        if self.ab_items:
            return "ab"
        if self.pairs:
            return "pairs"
        return "unpaired"

    def __len__(self) -> int:
        if self.ab_items:
            return len(self.ab_items)
        if self.pairs:
            return len(self.pairs)
        return min(len(self.positive_texts or []), len(self.negative_texts or []))


_OPTION = re.compile(r"^[ \t]*\(([A-Z])\)[ \t]*", re.MULTILINE)
_CHOICES_LINE = re.compile(r"\s*Choices:\s*$", re.IGNORECASE)


def ab_as_pair(item: ABItem, where: str) -> TextPair:
    """An A/B item as a prompt/completion pair: the question without its options, and the two option texts.

    For models too small to map "(A)"/"(B)" to the options, the option texts themselves
    carry the behaviour. CAA's data puts each option on its own line, "(A) text", after
    the question (often after a "Choices:" line, which is dropped with the options).
    """
    first = _OPTION.search(item.question)
    if first is None:
        raise DataError(f"{where}: the question has no '(A) ...' option lines, so the option texts cannot be "
                        "found; read this item at the answer letter (token=auto) or give prompt/positive/negative pairs.")
    stem = _CHOICES_LINE.sub("", item.question[: first.start()].rstrip())
    pieces = _OPTION.split(item.question[first.start():])  # ['', 'A', 'text of A', 'B', 'text of B', ...]
    options = {pieces[i]: pieces[i + 1].strip() for i in range(1, len(pieces) - 1, 2)}
    texts = []
    for answer in (item.matching, item.not_matching):
        letter = ab_letter(answer)
        if not options.get(letter):
            raise DataError(f"{where}: answer {answer!r} names option ({letter}), which the options found "
                            f"({', '.join(sorted(options))}) do not hold as a '({letter}) text' line.")
        texts.append(options[letter])
    return TextPair(stem.strip(), texts[0], texts[1])


def _pair_of(item: dict[str, Any]) -> TextPair | None:
    for prompt_key, pos_key, neg_key in (("question", "matching", "not_matching"), ("prompt", "positive", "negative")):
        if pos_key in item and neg_key in item:
            prompt = _text_of(item.get(prompt_key)) or ""
            pos, neg = _text_of(item[pos_key]), _text_of(item[neg_key])
            if pos is not None and neg is not None:
                return TextPair(prompt, pos, neg)
    return None


def contrastive_from_records(records: list[Any], source: str) -> ContrastiveData:
    first = records[0]
    if is_ab(first):
        return ContrastiveData(ab_items=as_ab_items(records, source))
    if isinstance(first, dict) and isinstance(first.get("positive"), list):
        data = ContrastiveData(
            positive_texts=[prompt_of(t, source) for t in first["positive"]],
            negative_texts=[prompt_of(t, source) for t in first["negative"]],
        )
    elif isinstance(first, dict) and "label" in first:
        positive, negative = [], []
        for index, item in enumerate(records):
            label = item.get("label")
            text = _text_of(item.get("text")) or prompt_of(item, f"{source}, item {index}")
            if label in (1, "1", "+1", "positive", "pos", True):
                positive.append(text)
            elif label in (-1, 0, "-1", "0", "negative", "neg", False):
                negative.append(text)
            else:
                raise DataError(f"{source}, item {index}: label {label!r} is not positive (1) or negative (-1/0).")
        data = ContrastiveData(positive_texts=positive, negative_texts=negative)
    else:
        pairs = []
        for index, item in enumerate(records):
            pair = _pair_of(item) if isinstance(item, dict) else None
            if pair is None:
                raise DataError(
                    f"{source}, item {index}: not a contrastive item. Use A/B items "
                    "(question, answer_matching_behavior, answer_not_matching_behavior), pairs "
                    "(question, matching, not_matching) or (prompt, positive, negative), "
                    "{'positive': [...], 'negative': [...]}, or items with text and label; "
                    "or pass --positive FILE --negative FILE."
                )
            pairs.append(pair)
        data = ContrastiveData(pairs=pairs)
    if data.kind == "unpaired" and (not data.positive_texts or not data.negative_texts):
        raise DataError(f"{source}: needs at least one positive and one negative text.")
    return data


def load_contrastive(path: str | Path) -> ContrastiveData:
    data = contrastive_from_records(load_records(path), str(path))
    data.source_hash = file_hash(path)
    return data


def load_unpaired(positive: str | Path, negative: str | Path) -> ContrastiveData:
    pos = load_prompts(positive, with_continuation=True)
    neg = load_prompts(negative, with_continuation=True)
    digest = hashlib.sha256((file_hash(positive) + file_hash(negative)).encode()).hexdigest()[:16]
    return ContrastiveData(positive_texts=pos, negative_texts=neg, source_hash=digest)
