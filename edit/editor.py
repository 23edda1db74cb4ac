"""The Editor: permanent, rollback-able weight edits through the site layer.

    editor = Editor(model, tokenizer, "rome")
    metrics, model = editor.edit(prompts=[...], target_new=[...], subject=[...])
    editor.rollback()                       # the model is bitwise what it was

Rollback semantics. Each applied edit keeps a bitwise copy of every weight it changed,
taken just before it wrote. `rollback(id)` copies those back, so the weights become
exactly what they were before that edit. If a later edit that is still applied changed
one of the same layers, restoring the copy would also erase the later edit, so this is
refused with an error naming the later edits; `rollback(id, cascade=True)` rolls them
back too (newest first). Edits on other layers are never touched. The copies cost one
weight matrix per edited layer per edit (on the CPU).

Adapters (GRACE) are the second kind of applied edit: hooks at a layer's down-projection
that change no weight (`steer.edit.adapters`). Rolling one back removes its hook, so the
model computes exactly what it did before; they never block or cascade with weight edits.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from steer.config import load_hparams
from steer.edit.adapters import install
from steer.edit.context import EditContext, model_id
from steer.edit.deltas import load_deltas, save_deltas
from steer.edit.errors import EditError
from steer.edit.methods import EditMethod, edit_methods
from steer.edit.metrics import evaluate, public
from steer.edit.requests import EditRequest, build_requests
from steer.edit.value import ValueCache
from steer.sites.resolve import SiteMap
from steer.sites.table import ArchTable


@dataclass
class AppliedEdit:
    id: str
    method: str
    requests: list[EditRequest]
    originals: dict[int, torch.Tensor]  # layer -> the stored weight just before this edit (bitwise)
    deltas: dict[int, torch.Tensor]  # layer -> [out, in] change this edit added
    preserved: dict[int, torch.Tensor] = field(default_factory=dict)
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    adapters: list[Any] = field(default_factory=list)  # installed adapters (steer.edit.adapters)
    handles: list[Any] = field(default_factory=list, repr=False)  # their hooks, removed on rollback

    @property
    def layers(self) -> list[int]:
        """Layers whose weights this edit changed (adapters change none)."""
        return sorted(self.deltas)


class Editor:
    def __init__(
        self, model: Any, tokenizer: Any, method: str, hparams: Any = None, *, progress: bool = True,
        arch: ArchTable | None = None, value_cache: ValueCache | None = None,
    ) -> None:
        self.spec: EditMethod = edit_methods().get(method)
        self.model = model
        self.tokenizer = tokenizer
        self.sites = SiteMap(model, arch)
        self.hparams = self._resolve_hparams(hparams)
        # one cache per Editor unless shared: single and batched MEMIT/AlphaEdit runs on the
        # same weights then optimise each request's target value once
        self.ctx = EditContext(self.sites.model, tokenizer, self.sites, progress=progress,
                               values=value_cache if value_cache is not None else ValueCache())
        self._applied: list[AppliedEdit] = []
        self._counter = 0

    def _resolve_hparams(self, hparams: Any) -> Any:
        kind = self.spec.hparams
        if isinstance(hparams, kind):
            return hparams
        # depth fractions ("40%") in layer fields resolve against this model's depth
        depth = self.sites.num_layers
        if hparams is None or isinstance(hparams, dict):
            return load_hparams(kind, self.spec.name, model_id=model_id(self.sites.model), overrides=hparams,
                                num_layers=depth)
        if isinstance(hparams, (str, Path)):
            return load_hparams(kind, self.spec.name, config=hparams, num_layers=depth)
        raise EditError(f"hparams for {self.spec.name} must be a {kind.__name__}, a dict of overrides or a YAML path.")

    # ---- applying and undoing ---------------------------------------------------------
    @property
    def applied(self) -> list[AppliedEdit]:
        return list(self._applied)

    def _preserved_sum(self) -> dict[int, torch.Tensor]:
        total: dict[int, torch.Tensor] = {}
        for edit in self._applied:
            for layer, gram in edit.preserved.items():
                total[layer] = total[layer] + gram if layer in total else gram.clone()
        return total

    def apply(self, requests: Sequence[EditRequest]) -> AppliedEdit:
        """Compute and write one edit (all `requests` at once); returns it with its id."""
        if len(requests) > 1 and not self.spec.batched:
            raise EditError(f"{self.spec.name} edits one request at a time; use memit, alphaedit or ft_* for batches.")
        if self.spec.needs_subject and (missing := [r.prompt for r in requests if not r.subject]):
            without = ", ".join(n for n in edit_methods().names() if not edit_methods().get(n).needs_subject)
            raise EditError(
                f"{self.spec.name} edits at the subject's last token, but {missing[0]!r} has no subject. Give "
                f"subject=... (as written in the prompt), or use a method that needs none ({without})."
            )
        self.ctx.preserved = self._preserved_sum()
        start = time.perf_counter()
        output = self.spec.apply(self.ctx, list(requests), self.hparams)
        originals = {layer: self.sites.weight(layer).detach().to("cpu", copy=True) for layer in output.deltas}
        with torch.no_grad():
            for layer, delta in output.deltas.items():
                view = self.sites.down_weight_as_out_in(layer)
                view.add_(delta.to(view.device, view.dtype))
        handles = [install(self.sites, adapter) for adapter in output.adapters]
        self._counter += 1
        edit = AppliedEdit(f"{self.spec.name}-{self._counter}", self.spec.name, list(requests), originals,
                           {k: v.detach().cpu() for k, v in output.deltas.items()}, output.preserved,
                           time.perf_counter() - start, output.info, list(output.adapters), handles)
        self._applied.append(edit)
        return edit

    def rollback(self, edit_id: str | None = None, *, cascade: bool = False) -> list[str]:
        """Undo edit `edit_id` (bitwise), or all edits when None. Returns the ids rolled back."""
        if edit_id is None:
            chosen = list(self._applied)
        else:
            index = next((i for i, e in enumerate(self._applied) if e.id == edit_id), None)
            if index is None:
                known = ", ".join(e.id for e in self._applied) or "none"
                raise EditError(f"No applied edit {edit_id!r}; applied edits: {known}.")
            chosen = [self._applied[index]]
            layers = set(self._applied[index].layers)
            for later in self._applied[index + 1 :]:
                if layers & set(later.layers):
                    chosen.append(later)
                    layers |= set(later.layers)
            if len(chosen) > 1 and not cascade:
                blockers = ", ".join(e.id for e in chosen[1:])
                raise EditError(
                    f"Edits {blockers} changed the same layers after {edit_id}; rolling {edit_id} back alone would "
                    f"erase them. Roll them back first, or call rollback({edit_id!r}, cascade=True)."
                )
        with torch.no_grad():
            for edit in reversed(chosen):
                for handle in edit.handles:
                    handle.remove()
                for layer, original in edit.originals.items():
                    self.sites.weight(layer).copy_(original)
        ids = {e.id for e in chosen}
        self._applied = [e for e in self._applied if e.id not in ids]
        return [e.id for e in reversed(chosen)]

    # ---- EasyEdit-style editing with metrics -------------------------------------------
    def edit(
        self,
        prompts: str | Sequence[str],
        target_new: str | Sequence[str],
        ground_truth: str | Sequence[str | None] | None = None,
        subject: str | Sequence[str] | None = None,
        rephrase_prompts: Any = None,
        locality_inputs: dict[str, Any] | None = None,
        portability_inputs: dict[str, Any] | None = None,
        sequential_edit: bool = False,
    ) -> tuple[list[dict[str, Any]], Any]:
        """One edit per prompt, each with `pre` and `post` metrics.

        sequential_edit=False: each edit is measured alone (the previous one is rolled back
        first); the last edit stays applied. True: edits accumulate, measured after each.
        """
        requests = build_requests(prompts, target_new, ground_truth, subject, rephrase_prompts,
                                  locality_inputs, portability_inputs)
        return self.edit_requests(requests, sequential_edit=sequential_edit), self.model

    def edit_requests(self, requests: Sequence[EditRequest], *, sequential_edit: bool = False) -> list[dict[str, Any]]:
        results = []
        previous: AppliedEdit | None = None
        with self._bar(len(requests), "edits") as bar:
            for case_id, request in enumerate(requests):
                if previous is not None and not sequential_edit:
                    self.rollback(previous.id)
                pre = evaluate(self.model, self.tokenizer, request)
                previous = self.apply([request])
                post = evaluate(self.model, self.tokenizer, request, before=pre)
                results.append(self._record(case_id, request, previous, pre, post, previous.seconds))
                bar.set_postfix(rewrite=f"{post['rewrite_acc']:.2f}", refresh=False)
                bar.update(1)
        return results

    def _bar(self, total: int, what: str) -> tqdm:
        """Progress over requests (stderr). The phases inside one edit (key statistics, value
        optimisation) show their own bars beneath it."""
        return tqdm(total=total, desc=f"{self.spec.name}: {what}", unit="edit", disable=not self.ctx.progress)

    def batch_edit(
        self,
        prompts: str | Sequence[str],
        target_new: str | Sequence[str],
        ground_truth: str | Sequence[str | None] | None = None,
        subject: str | Sequence[str] | None = None,
        rephrase_prompts: Any = None,
        locality_inputs: dict[str, Any] | None = None,
        portability_inputs: dict[str, Any] | None = None,
        batch_size: int | None = None,
    ) -> tuple[list[dict[str, Any]], Any]:
        """All requests as batched edits of `batch_size` (default: one batch); edits are kept."""
        requests = build_requests(prompts, target_new, ground_truth, subject, rephrase_prompts,
                                  locality_inputs, portability_inputs)
        return self.batch_edit_requests(requests, batch_size=batch_size), self.model

    def batch_edit_requests(self, requests: Sequence[EditRequest], *, batch_size: int | None = None) -> list[dict[str, Any]]:
        if not self.spec.batched:
            raise EditError(f"{self.spec.name} cannot edit in batches; use edit(...) or memit/alphaedit/ft_*.")
        size = batch_size or len(requests)
        results: list[dict[str, Any]] = []
        with self._bar(len(requests), f"batches of {size}") as bar:
            for start in range(0, len(requests), size):
                chunk = list(requests[start : start + size])
                pres = [evaluate(self.model, self.tokenizer, r) for r in chunk]
                edit = self.apply(chunk)
                for offset, (request, pre) in enumerate(zip(chunk, pres)):
                    post = evaluate(self.model, self.tokenizer, request, before=pre)
                    results.append(self._record(start + offset, request, edit, pre, post, edit.seconds / len(chunk)))
                bar.update(len(chunk))
        return results

    @staticmethod
    def _record(case_id: int, request: EditRequest, edit: AppliedEdit, pre: dict[str, Any], post: dict[str, Any],
                seconds: float) -> dict[str, Any]:
        return {"case_id": case_id, "edit_id": edit.id, "requested_rewrite": request.as_dict(),
                "pre": public(pre), "post": public(post), "seconds": seconds}

    # ---- export --------------------------------------------------------------------------
    def weight_deltas(self) -> dict[int, torch.Tensor]:
        """Current weight minus the weight before the first applied edit, per edited layer ([out, in])."""
        deltas: dict[int, torch.Tensor] = {}
        for edit in self._applied:
            for layer, original in edit.originals.items():
                if layer not in deltas:
                    base = original if self.sites.arch.down_weight_layout == "out_in" else original.T
                    current = self.sites.down_weight_as_out_in(layer).detach().cpu()
                    deltas[layer] = current.float() - base.float()
        return deltas

    def save_deltas(self, path: str | Path) -> Path:
        if adapters := [e.id for e in self._applied if e.adapters]:
            raise EditError(f"Edits {', '.join(adapters)} are adapters at a layer (not weight changes) and cannot be "
                            "exported as weight deltas; roll them back first, or keep the model in memory.")
        edits = [{"id": e.id, "method": e.method, "requests": [r.as_dict() for r in e.requests],
                  "hparams": asdict(self.hparams) if is_dataclass(self.hparams) else None} for e in self._applied]
        return save_deltas(path, self.sites, self.weight_deltas(), edits)

    def apply_deltas(self, path: str | Path) -> AppliedEdit:
        """Add a delta file's changes (rolled back like any other edit)."""
        deltas, meta = load_deltas(path, self.sites)
        originals = {layer: self.sites.weight(layer).detach().to("cpu", copy=True) for layer in deltas}
        with torch.no_grad():
            for layer, delta in deltas.items():
                view = self.sites.down_weight_as_out_in(layer)
                view.add_(delta.to(view.device, view.dtype))
        self._counter += 1
        edit = AppliedEdit(f"deltas-{self._counter}", "deltas", [], originals, deltas, info={"file": str(path), **meta})
        self._applied.append(edit)
        return edit

    def save_pretrained(self, folder: str | Path) -> Path:
        """The edited model (and tokenizer) as a Hugging Face folder."""
        folder = Path(folder)
        self.sites.model.save_pretrained(folder)
        if hasattr(self.tokenizer, "save_pretrained"):
            self.tokenizer.save_pretrained(folder)
        return folder
