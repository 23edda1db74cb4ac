"""Steering reads: activations pooled over a character span of each text, and the one
span-to-token rule steer uses (steering spans here, edit subjects and targets in
`steer.edit.tokens`).

Texts are left-padded into batches; each row's activations are exactly those the
text gets on its own (the attention mask hides the pads, and positions are taken from
the mask), which tests check for every family. Batching, padding and the forward pass
(stopped after the deepest site, on the active backend) are `steer.sites.reader.read_rows`,
the reader editing uses too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from steer.errors import DataError
from steer.prompts import max_positions, pad_id
from steer.sites.reader import read_rows
from steer.sites.resolve import Site, SiteMap

Pool = Literal["mean", "last"]


@dataclass(frozen=True)
class Span:
    """Pool the activations of the tokens of `text` that overlap characters [start, end)."""

    text: str
    start: int = 0
    end: int | None = None


def tokenize_with_offsets(tokenizer: Any, text: str, *, add_special_tokens: bool = True
                          ) -> tuple[list[int], list[tuple[int, int]]]:
    """(token ids, each token's character span [start, end) in `text`)."""
    try:
        encoded = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    except NotImplementedError:
        raise DataError(f"The tokenizer {type(tokenizer).__name__} gives no character offsets; steer needs a fast "
                        "tokenizer (AutoTokenizer.from_pretrained(..., use_fast=True)).") from None
    return list(encoded["input_ids"]), [tuple(o) for o in encoded["offset_mapping"]]


def tokens_in_span(offsets: Sequence[tuple[int, int]], start: int, end: int) -> list[int]:
    """Indices of the tokens that cover any of characters [start, end).

    A token counts when it overlaps the span by at least one character; tokens with no
    characters (special tokens, offsets (0, 0)) never count.
    """
    return [i for i, (s, e) in enumerate(offsets) if e > s and e > start and s < end]


def _tokenize(tokenizer: Any, span: Span, templated: bool, limit: int | None) -> tuple[list[int], list[int]]:
    ids, offsets = tokenize_with_offsets(tokenizer, span.text, add_special_tokens=not templated)
    if limit is not None and len(ids) > limit:
        raise DataError(f"A text is {len(ids)} tokens long; the model takes at most {limit}: {span.text[:80]!r}...")
    end = len(span.text) if span.end is None else span.end
    chosen = tokens_in_span(offsets, span.start, end)
    if not chosen:
        raise DataError(f"No token covers characters {span.start}..{end} of {span.text[:80]!r}.")
    return ids, chosen


def pooled_activations(
    model: nn.Module,
    tokenizer: Any,
    spans: Sequence[Span],
    sites: Sequence[Site | str],
    *,
    templated: bool,
    pool: Pool = "mean",
    batch_size: int = 8,
    progress: bool = True,
    desc: str = "reading activations",
    transform: Callable[[Site, torch.Tensor], torch.Tensor] | None = None,
) -> dict[Site, torch.Tensor]:
    """[len(spans), hidden] per site: the mean (or last) activation over each span's tokens.

    `transform(site, activations [tokens, hidden])` is applied to each span's tokens before
    pooling (for example an SAE encoder: the mean of encodings, not the encoding of a mean).
    """
    if not spans:
        raise DataError("No texts to read activations from.")
    site_map = SiteMap(model)
    wanted = [site_map.normalise(s) for s in sites]
    limit = max_positions(site_map.model)
    tokenized = [_tokenize(tokenizer, s, templated, limit) for s in spans]
    results: dict[Site, dict[int, torch.Tensor]] = {s: {} for s in wanted}
    with torch.inference_mode():
        # longest first keeps padding small and makes the first batch's memory the peak
        for batch in read_rows(site_map.model, [ids for ids, _ in tokenized], wanted, padding="left",
                               pad_token_id=pad_id(tokenizer), batch_size=batch_size, longest_first=True,
                               progress=progress, desc=desc):
            for site in wanted:
                hidden = batch.activations[site].float()
                for row, (index, offset) in enumerate(zip(batch.indices, batch.offsets)):
                    positions = [offset + p for p in tokenized[index][1]]
                    picked = hidden[row, positions[-1:] if pool == "last" else positions]
                    if transform is not None:
                        picked = transform(site, picked)
                    results[site][index] = picked.mean(0).cpu()
    return {site: torch.stack([by_index[i] for i in range(len(spans))]) for site, by_index in results.items()}
