"""Turning an edit's texts into token ids plus the positions editing needs.

Editing works on raw text (no chat template), as ROME/MEMIT/EasyEdit do: a prompt,
a space, then the target. The joint text is tokenized once so the target's first
token is the one the model really sees after the prompt (tokenizing the pieces
separately can split differently at the boundary).

Which tokens a character span covers is decided by `steer.sites.read.tokens_in_span`,
the rule steering reads use too; padding is `steer.sites.reader.pad_rows`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from steer.errors import DataError
from steer.prompts import pad_id
from steer.sites.read import tokenize_with_offsets, tokens_in_span
from steer.sites.reader import pad_rows


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
    ids, offsets = tokenize_with_offsets(tokenizer, text)
    subject_last = None
    if subject is not None:
        start, end = _subject_span(text, subject, len(context))
        covering = tokens_in_span(offsets, start, end)
        if not covering:
            raise DataError(f"No token covers the subject {subject!r} in {text!r}.")
        subject_last = covering[-1]
    targets: list[int] = []
    if target:
        targets = tokens_in_span(offsets, len(prefix), len(text))
        if not targets or targets[0] == 0:
            raise DataError(f"The target {target!r} has no tokens after the prompt {prompt!r}.")
    return Encoded(ids, subject_last, targets)


def pad_right(tokenizer: Any, rows: Sequence[Encoded], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask: positions stay the natural 0..len-1 for every row."""
    return pad_rows([row.ids for row in rows], pad_id(tokenizer), "right", device)


def target_log_probs(logits: torch.Tensor, rows: Sequence[Encoded], ids: torch.Tensor) -> list[torch.Tensor]:
    """Per row: log p(target token t | tokens before t) for each target token (teacher forcing)."""
    out = []
    for i, row in enumerate(rows):
        positions = torch.tensor(row.target, device=logits.device)
        log_probs = torch.log_softmax(logits[i, positions - 1].float(), dim=-1)
        out.append(log_probs.gather(1, ids[i, positions].unsqueeze(1)).squeeze(1))
    return out
