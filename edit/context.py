"""What an editing method gets to work with, and the reads and writes it may do.

Every activation is read through `steer.sites.reader.read_rows` (the reader steering uses
too; right padding, so positions are the natural ones) on the context's backend (torch
hooks, or nnsight: `Editor(..., backend="nnsight")`), and every weight is written through `SiteMap.down_weight_as_out_in` (a view, so writing it writes the
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
from steer.edit.tokens import Encoded, encode
from steer.prompts import pad_id
from steer.sites.reader import read_rows
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
    # how the model is run (steer.sites.backend: a name or Backend); None: this context's, else torch hooks
    backend: Any = None

    @property
    def device(self) -> torch.device:
        return next(self.sites.model.parameters()).device

    def read_at(
        self, rows: Sequence[Encoded], positions: Sequence[int], sites: Sequence[Site], batch_size: int = 16
    ) -> dict[Site, torch.Tensor]:
        """[len(rows), dim] per site: the activation at `positions[i]` of row i (no grad, float32)."""
        out: dict[Site, list[torch.Tensor]] = {s: [] for s in sites}
        with torch.no_grad():
            for batch in read_rows(self.sites.model, [row.ids for row in rows], list(sites), padding="right",
                                   pad_token_id=pad_id(self.tokenizer), batch_size=batch_size, backend=self.backend,
                                   arch=self.sites.arch):
                index = torch.arange(len(batch.indices), device=self.device)
                cols = torch.tensor([positions[i] for i in batch.indices], device=self.device)
                for site in sites:
                    out[site].append(batch.activations[site][index, cols].float())
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


# Methods whose every pass goes through `EditContext` reads, `steer.edit.value`,
# `steer.edit.stats` and `steer.edit.templates`, and so can run on the nnsight backend. The
# others (FT, LoRA, KN, GRACE, WISE, DINM, PMET, IKE...) run the torch module directly
# (training, attribution, adapters, their own hooks) and refuse nnsight when the Editor is built.
NNSIGHT_METHODS: tuple[str, ...] = ("rome", "r_rome", "memit", "emmet", "alphaedit", "pmet")


def editing_backend(model: nn.Module, tokenizer: Any, method: str, backend: Any) -> Any:
    """The backend an Editor runs `method` on (None: `model`'s default, else torch), checked now.

    nnsight: only the locate-then-edit methods, only on a local model (weights are written
    to the local module, which nnsight wraps), and nnsight must be able to wrap the model.
    """
    from steer.edit.errors import EditError
    from steer.sites.backend import TorchBackend, get_backend

    chosen = get_backend(backend, model)
    if isinstance(chosen, TorchBackend):
        return chosen
    if chosen.name != "nnsight":
        raise EditError(f"Editing runs on the torch or nnsight backend, not {chosen!r}.")
    if method not in NNSIGHT_METHODS:
        raise EditError(
            f"{method} cannot edit through nnsight: only {', '.join(NNSIGHT_METHODS)} send every forward pass they "
            f"make (context prefixes, key statistics, keys, value optimisation) through the backend, and {method} "
            f"runs the torch module directly. Use backend='torch' (the default; --backend torch) for {method}."
        )
    if getattr(chosen, "trace_kwargs", {}).get("remote"):
        raise EditError(
            "Editing writes the weights of the local model, so it cannot run remotely (NnsightBackend(remote=True)): "
            "a remote model's weights live on the server. Edit a local copy with backend='nnsight' or 'torch'."
        )
    from steer.sites.backends.nnsight import wrap

    wrap(model, tokenizer)  # nnsight missing, or a model it cannot wrap: an error now, before any edit
    return chosen


@contextmanager
def running_on(ctx: EditContext) -> Iterator[None]:
    """While a method runs: an empty block of the context's backend when that is not torch hooks.

    Inside it every forward pass of the model goes through that backend (reads, the value
    optimisation's passes, the context prefixes' generation), and a plain forward pass that
    did not is refused by the backend's guard rather than run on torch unnoticed.
    """
    from steer.sites.backend import TorchBackend, get_backend

    chosen = get_backend(ctx.backend, ctx.sites.model)
    if isinstance(chosen, TorchBackend):
        yield
        return
    with chosen.intervene(ctx.sites.model, [], ctx.sites.arch, ctx.tokenizer):
        yield


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
