"""Reading generations: the JSONL `steer apply` writes (steered next to unsteered, per multiplier)
or plain JSON/JSONL rows with a text field."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from steer.errors import DataError
from steer.evaluate.base import EvalContext, TextGroup

TEXT_KEYS = ("text", "generation", "output", "completion", "response")


def _prompt(row: dict[str, Any]) -> str:
    for key in ("prompt", "input", "question"):
        value = row.get(key)
        if isinstance(value, dict):
            value = value.get("text")
        if isinstance(value, str):
            return value
    return ""


def _text(row: Any, where: str) -> str:
    if isinstance(row, str):
        return row
    if isinstance(row, dict):
        for key in TEXT_KEYS:
            value = row.get(key)
            if isinstance(value, dict):
                value = value.get("text")
            if isinstance(value, str):
                return value
    raise DataError(f"{where}: no generation found; rows need 'steered'/'unsteered' (steer apply output) "
                    f"or one of {TEXT_KEYS}.")


def groups_from_records(records: Sequence[Any], source: str, prefix: str = "") -> list[TextGroup]:
    first = records[0]
    model = first.get("model") if isinstance(first, dict) else None
    if isinstance(first, dict) and "steered" in first and "unsteered" in first:
        by_multiplier: dict[float, list[dict[str, Any]]] = {}
        for index, row in enumerate(records):
            if not isinstance(row, dict) or "steered" not in row or "unsteered" not in row:
                raise DataError(f"{source}, row {index}: mixes steer-apply rows with other rows.")
            by_multiplier.setdefault(float(row.get("multiplier", 1.0)), []).append(row)
        # `steer apply` repeats the unsteered text for every multiplier: take it once.
        base_rows = next(iter(by_multiplier.values()))
        groups = [TextGroup(prefix + EvalContext.group_name(None), [str(r["unsteered"]) for r in base_rows],
                            [_prompt(r) for r in base_rows], None, model)]
        for multiplier, rows in by_multiplier.items():
            groups.append(TextGroup(prefix + EvalContext.group_name(multiplier), [str(r["steered"]) for r in rows],
                                    [_prompt(r) for r in rows], multiplier, model))
        return groups
    texts = [_text(row, f"{source}, row {i}") for i, row in enumerate(records)]
    prompts = [_prompt(row) if isinstance(row, dict) else "" for row in records]
    return [TextGroup(prefix + "text" if prefix else "text", texts, prompts, None, model)]


def load_generations(paths: Sequence[str | Path]) -> list[TextGroup]:
    """Text groups of one or more files; group names get the file's stem when there are several."""
    from steer.io.datasets import load_records

    groups: list[TextGroup] = []
    for path in paths:
        prefix = f"{Path(path).stem}: " if len(paths) > 1 else ""
        groups.extend(groups_from_records(load_records(path), str(path), prefix))
    return groups
