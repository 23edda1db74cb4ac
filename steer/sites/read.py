"""Batched activation reading: pooled over a character span of each text.

Texts are left-padded into batches; each row's activations are exactly those the
text gets on its own (the attention mask hides the pads, and rotary positions are
taken from the mask by transformers), which tests check for every family. Each batch
is one `steer.sites.reader.read_forward`, which stops after the deepest site read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from steer.errors import DataError
from steer.prompts import max_positions, pad_id, position_ids_for
from steer.sites.reader import read_forward
from steer.sites.resolve import Site, SiteMap

Pool = Literal["mean", "last"]


@dataclass(frozen=True)
class Span:
    """Pool the activations of the tokens of `text` that overlap characters [start, end)."""

    text: str
    start: int = 0
    end: int | None = None


def _tokenize(tokenizer: Any, span: Span, templated: bool, limit: int | None) -> tuple[list[int], list[int]]:
    encoded = tokenizer(span.text, add_special_tokens=not templated, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    if limit is not None and len(ids) > limit:
        raise DataError(f"A text is {len(ids)} tokens long; the model takes at most {limit}: {span.text[:80]!r}...")
    end = len(span.text) if span.end is None else span.end
    chosen = [
        i for i, (s, e) in enumerate(encoded["offset_mapping"]) if e > s and e > span.start and s < end
    ]
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
    device = next(site_map.model.parameters()).device
    results: dict[Site, dict[int, torch.Tensor]] = {s: {} for s in wanted}
    # Longest first keeps padding small and makes the first batch's memory the peak.
    order = sorted(range(len(spans)), key=lambda i: -len(tokenized[i][0]))
    with torch.inference_mode(), tqdm(total=len(spans), desc=desc, disable=not progress, leave=False) as bar:
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = max(len(tokenized[i][0]) for i in batch)
            ids = torch.full((len(batch), width), pad_id(tokenizer), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, index in enumerate(batch):
                row_ids = tokenized[index][0]
                ids[row, width - len(row_ids) :] = torch.tensor(row_ids)
                mask[row, width - len(row_ids) :] = 1
            read = read_forward(site_map.model, {"input_ids": ids.to(device), "attention_mask": mask.to(device),
                                                 "position_ids": position_ids_for(mask).to(device)}, wanted)
            for site in wanted:
                hidden = read[site].float()
                for row, index in enumerate(batch):
                    offset = width - len(tokenized[index][0])
                    positions = [offset + p for p in tokenized[index][1]]
                    picked = hidden[row, positions[-1:] if pool == "last" else positions]
                    if transform is not None:
                        picked = transform(site, picked)
                    chosen = picked.mean(0)
                    results[site][index] = chosen.cpu()
            bar.update(len(batch))
    return {site: torch.stack([by_index[i] for i in range(len(spans))]) for site, by_index in results.items()}
