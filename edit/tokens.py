"""Turning an edit's texts into token ids plus the positions editing needs.

Editing works on raw text (no chat template), as ROME/MEMIT/EasyEdit do: a prompt,
a space, then the target. The joint text is tokenized once so the target's first
token is the one the model really sees after the prompt (tokenizing the pieces
separately can split differently at the boundary).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from steer.errors import DataError
from steer.prompts import pad_id


@dataclass(frozen=True)
class Encoded:
    ids: list[int]
    subject_last: int | None  # index of the subject's last token, if a subject was given
    target: list[int]  # indices of the target's tokens (empty without a target)


def join(prefix: str, target: str | None) -> str:
    if not target:
        return prefix
    return prefix + target if prefix.endswith(" ") or target.startswith(" ") or not prefix else prefix + " " + target


def _subject_span(text: str, subject: str, search_from: int) -> tuple[int, int]:
    start = text.find(subject, search_from)
    if start < 0:  # EasyEdit data sometimes differs in case only ("the Eiffel Tower")
        start = text.lower().find(subject.lower(), search_from)
    if start < 0:
        raise DataError(
            f"The subject {subject!r} does not occur in the prompt {text[search_from:]!r}; "
            "give the subject exactly as it is written in the prompt."
        )
    return start, start + len(subject)


def encode(
    tokenizer: Any, prompt: str, target: str | None = None, subject: str | None = None, context: str = ""
) -> Encoded:
    """Encode `context + prompt [+ ' ' + target]`; the subject is searched inside `prompt`."""
    prefix = context + prompt
    text = join(prefix, target)
    encoded = tokenizer(text, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    offsets = encoded["offset_mapping"]
    subject_last = None
    if subject is not None:
        start, end = _subject_span(text, subject, len(context))
        covering = [i for i, (s, e) in enumerate(offsets) if e > s and s < end and e > start]
        if not covering:
            raise DataError(f"No token covers the subject {subject!r} in {text!r}.")
        subject_last = covering[-1]
    targets: list[int] = []
    if target:
        targets = [i for i, (s, e) in enumerate(offsets) if e > len(prefix) and e > s]
        if not targets or targets[0] == 0:
            raise DataError(f"The target {target!r} has no tokens after the prompt {prompt!r}.")
    return Encoded(ids, subject_last, targets)


def pad_right(tokenizer: Any, rows: Sequence[Encoded], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask: positions stay the natural 0..len-1 for every row."""
    width = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id(tokenizer), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row.ids)] = torch.tensor(row.ids, dtype=torch.long)
        mask[i, : len(row.ids)] = 1
    return ids.to(device), mask.to(device)


def target_log_probs(logits: torch.Tensor, rows: Sequence[Encoded], ids: torch.Tensor) -> list[torch.Tensor]:
    """Per row: log p(target token t | tokens before t) for each target token (teacher forcing)."""
    out = []
    for i, row in enumerate(rows):
        positions = torch.tensor(row.target, device=logits.device)
        log_probs = torch.log_softmax(logits[i, positions - 1].float(), dim=-1)
        out.append(log_probs.gather(1, ids[i, positions].unsqueeze(1)).squeeze(1))
    return out
