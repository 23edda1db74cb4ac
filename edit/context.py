"""What an editing method gets to work with, and the reads and writes it may do.

Every activation is read through `steer.sites.reader.read_forward` and every weight is
written through `SiteMap.down_weight_as_out_in` (a view, so writing it writes the
model's own parameter whatever its storage layout). Methods compute deltas on a
scratch copy of the weights (`scratch_writes`) that is always restored, and the
`Editor` applies the returned deltas and keeps what rollback needs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from steer.edit.requests import EditRequest
from steer.edit.tokens import Encoded, encode, pad_right
from steer.sites.reader import read_forward
from steer.sites.resolve import Site, SiteMap


def model_id(model: nn.Module) -> str | None:
    """The id the model was loaded under (what stats caches and delta files record)."""
    return getattr(getattr(model, "config", None), "_name_or_path", None) or None


@dataclass
class EditContext:
    """The model plus per-editor memos. Nothing here is global: two Editors share nothing."""

    model: nn.Module
    tokenizer: Any
    sites: SiteMap
    progress: bool = True
    # (layer, stats key) -> second moment; filled from the disk cache on first use
    stats: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)
    # context-template settings -> prefixes, generated once from the model before editing
    templates: dict[tuple[Any, ...], list[str]] = field(default_factory=dict)
    # AlphaEdit: sum of K^T K of the edits applied so far, per layer (kept by the Editor)
    preserved: dict[int, torch.Tensor] = field(default_factory=dict)
    # optimised target values (steer.edit.value.ValueCache); None disables reuse
    values: Any = None

    @property
    def device(self) -> torch.device:
        return next(self.sites.model.parameters()).device

    def read_at(
        self, rows: Sequence[Encoded], positions: Sequence[int], sites: Sequence[Site], batch_size: int = 16
    ) -> dict[Site, torch.Tensor]:
        """[len(rows), dim] per site: the activation at `positions[i]` of row i (no grad, float32)."""
        out: dict[Site, list[torch.Tensor]] = {s: [] for s in sites}
        model = self.sites.model
        with torch.no_grad():
            for start in range(0, len(rows), batch_size):
                batch = rows[start : start + batch_size]
                ids, mask = pad_right(self.tokenizer, batch, self.device)
                read = read_forward(model, {"input_ids": ids, "attention_mask": mask}, list(sites))
                index = torch.arange(len(batch), device=ids.device)
                cols = torch.tensor(positions[start : start + batch_size], device=ids.device)
                for site in sites:
                    out[site].append(read[site][index, cols].float())
        return {s: torch.cat(v) for s, v in out.items()}

    def subject_rows(self, requests: Sequence[EditRequest], prefixes: Sequence[str]) -> list[Encoded]:
        """Each request's prompt behind each context prefix: request-major order."""
        return [encode(self.tokenizer, r.prompt, None, r.subject, context=p) for r in requests for p in prefixes]

    def mean_keys(self, requests: Sequence[EditRequest], layer: int, prefixes: Sequence[str]) -> torch.Tensor:
        """[n, d_in]: the key at the subject's last token, averaged over context prefixes (ROME's k*)."""
        rows = self.subject_rows(requests, prefixes)
        site = Site("mlp_key", layer)
        keys = self.read_at(rows, [r.subject_last for r in rows], [site])[site]  # type: ignore[misc]
        return keys.view(len(requests), len(prefixes), -1).mean(dim=1)


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """No parameter collects gradients inside (value optimisation needs only the delta's)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class ScratchWrites:
    """Writes to down-projection weights that are undone, bitwise, when the block exits."""

    def __init__(self, sites: SiteMap) -> None:
        self.sites = sites
        self.saved: dict[int, torch.Tensor] = {}

    def add(self, layer: int, delta_out_in: torch.Tensor) -> None:
        view = self.sites.down_weight_as_out_in(layer)
        if layer not in self.saved:
            self.saved[layer] = self.sites.weight(layer).detach().clone()
        with torch.no_grad():
            view.add_(delta_out_in.to(view.device, view.dtype))

    def restore(self) -> None:
        with torch.no_grad():
            for layer, original in self.saved.items():
                self.sites.weight(layer).copy_(original)
        self.saved.clear()


@contextmanager
def scratch_writes(sites: SiteMap) -> Iterator[ScratchWrites]:
    scratch = ScratchWrites(sites)
    try:
        yield scratch
    finally:
        scratch.restore()
