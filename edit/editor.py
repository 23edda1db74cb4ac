"""The Editor: permanent, rollback-able weight edits through the site layer.

    editor = Editor(model, tokenizer, "rome")
    metrics, model = editor.edit(prompts=[...], target_new=[...], subject=[...])
    editor.rollback()                       # the model is bitwise what it was

Rollback semantics. `rollback(id)` makes the weights bitwise what they were before that
edit. If a later edit that is still applied changed one of the same layers, that would
also erase the later edit, so this is refused with an error naming the later edits;
`rollback(id, cascade=True)` rolls them back too (newest first). Edits on other layers are
never touched.

What rollback keeps: one copy of each edited weight from before the first still-applied
edit of its layer (the base), plus each edit's change in the form it was written: a
low-rank factorisation for ROME, R-ROME, MEMIT, EMMET, AlphaEdit and LoRA (rank 1, the batch
size, r), dense only for FT. Rolling back restores the base and re-adds the changes of the
edits that stay, in order, with the same operations as the first time (`steer.edit.lowrank`
expands factors without matrix products), so the result is bitwise the state before the
rolled-back edit. A sequence of T ROME edits on one layer keeps one weight copy plus T
vectors pairs, not T weight copies (`rollback_bytes()`).

Adapters (GRACE) are the second kind of applied edit: hooks at a layer's down-projection
that change no weight (`steer.edit.adapters`). Rolling one back removes its hook, so the
model computes exactly what it did before; they never block or cascade with weight edits.

In-context edits (IKE) are the third kind: a context (the new fact and retrieved
demonstrations, `steer.edit.ike`) that the Editor puts in front of every prompt it measures
(`evaluate`) or generates from (`generate`, `prompt_with_edits`). The model itself is never
touched, so rolling one back restores exactly the behaviour before it; they cannot be saved
as deltas or with the model (an error says so).
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
from steer.edit.context import EditContext, editing_backend, model_id, running_on
from steer.edit.deltas import load_deltas, save_deltas
from steer.edit.errors import EditError
from steer.edit.ike import InContextEdit, in_context_prompt, with_context
from steer.edit.lowrank import Change, compact, dense, nbytes
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
    changes: dict[int, Change]  # layer -> [out, in] change this edit added, as written (dense or LowRank)
    preserved: dict[int, torch.Tensor] = field(default_factory=dict)
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    adapters: list[Any] = field(default_factory=list)  # installed adapters (steer.edit.adapters)
    handles: list[Any] = field(default_factory=list, repr=False)  # their hooks, removed on rollback
    contexts: list[InContextEdit] = field(default_factory=list)  # in-context edits (IKE), put in front of prompts

    @property
    def layers(self) -> list[int]:
        """Layers whose weights this edit changed (adapters change none)."""
        return sorted(self.changes)

    @property
    def deltas(self) -> dict[int, torch.Tensor]:
        """layer -> the [out, in] float32 change this edit added (expanded from its kept form)."""
        return {layer: dense(change) for layer, change in self.changes.items()}


class Editor:
    def __init__(
        self, model: Any, tokenizer: Any, method: str, hparams: Any = None, *, progress: bool = True,
        arch: ArchTable | None = None, value_cache: ValueCache | None = None, backend: Any = None,
    ) -> None:
        self.spec: EditMethod = edit_methods().get(method)
        self.model = model
        self.tokenizer = tokenizer
        self.sites = SiteMap(model, arch)
        # how reads, statistics and value optimisation run: "torch" hooks or "nnsight"
        # (None: the model's default backend); weights are written directly either way
        self.backend = editing_backend(model, tokenizer, self.spec.name, backend)
        self._hparams_given = hparams
        self.hparams = self._resolve_hparams(hparams)
        self._batch_hparams: Any = None
        # one cache per Editor unless shared: single and batched MEMIT/AlphaEdit runs on the
        # same weights then optimise each request's target value once
        self.ctx = EditContext(self.sites.model, tokenizer, self.sites, progress=progress,
                               values=value_cache if value_cache is not None else ValueCache(), backend=self.backend)
        self._applied: list[AppliedEdit] = []
        # layer -> the stored weight before the first still-applied edit of that layer (bitwise, CPU)
        self._bases: dict[int, torch.Tensor] = {}
        self._counter = 0

    def _resolve_hparams(self, hparams: Any, batch: bool = False) -> Any:
        kind = self.spec.hparams
        if isinstance(hparams, kind):
            return hparams
        # depth fractions ("40%") in layer fields resolve against this model's depth
        depth = self.sites.num_layers
        if hparams is None or isinstance(hparams, dict):
            return load_hparams(kind, self.spec.name, model_id=model_id(self.sites.model), overrides=hparams,
                                num_layers=depth, batch=batch)
        if isinstance(hparams, (str, Path)):
            return load_hparams(kind, self.spec.name, config=hparams, num_layers=depth)
        raise EditError(f"hparams for {self.spec.name} must be a {kind.__name__}, a dict of overrides or a YAML path.")

    @property
    def batch_hparams(self) -> Any:
        """The hyper-parameters `batch_edit_requests` uses for a batch of several requests.

        With hparams from the shipped files (none given, or a dict of overrides), the shipped
        `hparams/<method>/<model>-batch.yaml` where the method has one (values tuned for batches
        of 100, README_2 "Batches of 100"), with the same overrides; otherwise `self.hparams`
        (an explicit YAML path or instance is used as given). `hparams_source(...)` names the file.
        """
        if self._batch_hparams is None:
            given = self._hparams_given
            self._batch_hparams = (self._resolve_hparams(given, batch=True)
                                   if given is None or isinstance(given, dict) else self.hparams)
        return self._batch_hparams

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

    def apply(self, requests: Sequence[EditRequest], hparams: Any = None) -> AppliedEdit:
        """Compute and write one edit (all `requests` at once); returns it with its id.

        `hparams`: an instance of the method's hparams class for this edit only (default
        `self.hparams`; `batch_edit_requests` passes `batch_hparams`)."""
        if hparams is not None and not isinstance(hparams, self.spec.hparams):
            raise EditError(f"hparams for one {self.spec.name} edit must be a {self.spec.hparams.__name__}, "
                            f"not {type(hparams).__name__}; load one with steer.config.load_hparams.")
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
        with running_on(self.ctx):  # nnsight: every pass of the method goes through its trace
            output = self.spec.apply(self.ctx, list(requests), hparams if hparams is not None else self.hparams)
        changes = self._write({layer: compact(change) for layer, change in output.deltas.items()})
        handles = [install(self.sites, adapter) for adapter in output.adapters]
        self._counter += 1
        edit = AppliedEdit(f"{self.spec.name}-{self._counter}", self.spec.name, list(requests), changes,
                           output.preserved, time.perf_counter() - start, output.info, list(output.adapters), handles,
                           list(output.contexts))
        self._applied.append(edit)
        return edit

    def _write(self, changes: dict[int, Change]) -> dict[int, Change]:
        """Add `changes` to the weights (keeping a layer's base copy on its first edit)."""
        with torch.no_grad():
            for layer, change in changes.items():
                if layer not in self._bases:
                    self._bases[layer] = self.sites.weight(layer).detach().to("cpu", copy=True)
                self._add(layer, change)
        return changes

    def _add(self, layer: int, change: Change) -> None:
        # the one way a change is written, so replaying it in rollback gives the same bits
        view = self.sites.down_weight_as_out_in(layer)
        view.add_(dense(change).to(view.device, view.dtype))

    def rollback_bytes(self) -> int:
        """Bytes kept for rollback: the base copies plus every applied edit's kept change."""
        bases = sum(t.numel() * t.element_size() for t in self._bases.values())
        return bases + sum(nbytes(c) for e in self._applied for c in e.changes.values())

    def weights_before(self, edit_id: str) -> dict[int, torch.Tensor]:
        """The stored weights (the parameter's own layout, CPU) just before edit `edit_id`, per layer it changed."""
        index = next((i for i, e in enumerate(self._applied) if e.id == edit_id), None)
        if index is None:
            raise EditError(f"No applied edit {edit_id!r}.")
        out: dict[int, torch.Tensor] = {}
        for layer in self._applied[index].layers:
            weight = self._bases[layer].clone()
            view = weight if self.sites.arch.down_weight_layout == "out_in" else weight.T
            for earlier in self._applied[:index]:
                if layer in earlier.changes:
                    view.add_(dense(earlier.changes[layer]).to(view.dtype))
            out[layer] = weight
        return out

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
        ids = {e.id for e in chosen}
        remaining = [e for e in self._applied if e.id not in ids]
        with torch.no_grad():
            for edit in reversed(chosen):
                for handle in edit.handles:
                    handle.remove()
            for layer in sorted({layer for e in chosen for layer in e.layers}):
                self.sites.weight(layer).copy_(self._bases[layer])
                kept = [e for e in remaining if layer in e.changes]
                for edit in kept:  # re-add, in order, what stays applied on this layer
                    self._add(layer, edit.changes[layer])
                if not kept:
                    del self._bases[layer]
        self._applied = remaining
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
                pre = self.evaluate(request)
                previous = self.apply([request])
                post = self.evaluate(request, before=pre)
                results.append(self._record(case_id, request, previous, pre, post, previous.seconds))
                bar.set_postfix(rewrite=f"{post['rewrite_acc']:.2f}", refresh=False)
                bar.update(1)
        return results

    # ---- in-context edits (IKE) and generation ---------------------------------------
    def in_context_edits(self) -> list[InContextEdit]:
        """The applied in-context edits (IKE), oldest first."""
        return [c for e in self._applied for c in e.contexts]

    def prompt_with_edits(self, prompt: str) -> str:
        """`prompt` as the model must read it for the applied in-context edits (IKE) to hold: their
        demonstrations and new facts in front of it. Unchanged when none is applied (weight edits
        and adapters act on the plain prompt)."""
        return in_context_prompt(self.in_context_edits(), prompt)

    def evaluate(self, request: EditRequest, before: dict[str, Any] | None = None) -> dict[str, Any]:
        """`steer.edit.metrics.evaluate` of the model as edited now: every probe's prompt behind the
        applied in-context edits, if any (as EasyEdit measures IKE)."""
        return evaluate(self.model, self.tokenizer, with_context(request, self.in_context_edits()), before=before)

    def generate(self, prompt: str, max_new_tokens: int = 32, **generate_kwargs: Any) -> str:
        """The edited model's continuation of `prompt` (raw text, no chat template, greedy unless
        `generate_kwargs` say otherwise), with the applied in-context edits in front."""
        from steer.prompts import pad_id

        text = self.prompt_with_edits(prompt)
        batch = self.tokenizer(text, return_tensors="pt").to(self.ctx.device)
        generate_kwargs.setdefault("do_sample", False)
        with torch.no_grad():
            out = self.sites.model.generate(**batch, max_new_tokens=max_new_tokens, pad_token_id=pad_id(self.tokenizer),
                                            **generate_kwargs)
        return self.tokenizer.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)

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
                pres = [self.evaluate(r) for r in chunk]
                edit = self.apply(chunk, self.batch_hparams if len(chunk) > 1 else None)
                for offset, (request, pre) in enumerate(zip(chunk, pres)):
                    post = self.evaluate(request, before=pre)
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
        for layer, original in sorted(self._bases.items()):
            base = original if self.sites.arch.down_weight_layout == "out_in" else original.T
            current = self.sites.down_weight_as_out_in(layer).detach().cpu()
            deltas[layer] = current.float() - base.float()
        return deltas

    def _refuse_in_context(self, what: str) -> None:
        if in_context := [e.id for e in self._applied if e.contexts]:
            raise EditError(f"Edits {', '.join(in_context)} are in-context edits (IKE): a context put in front of "
                            f"prompts, not a change of the model, so {what} would not hold them. Use "
                            "editor.generate(...) or editor.prompt_with_edits(prompt), or roll them back first.")

    def save_deltas(self, path: str | Path) -> Path:
        self._refuse_in_context("a delta file")
        if adapters := [e.id for e in self._applied if e.adapters]:
            raise EditError(f"Edits {', '.join(adapters)} are adapters at a layer (not weight changes) and cannot be "
                            "exported as weight deltas; roll them back first, or keep the model in memory.")
        edits = [{"id": e.id, "method": e.method, "requests": [r.as_dict() for r in e.requests],
                  "hparams": asdict(self.hparams) if is_dataclass(self.hparams) else None} for e in self._applied]
        return save_deltas(path, self.sites, self.weight_deltas(), edits)

    def apply_deltas(self, path: str | Path) -> AppliedEdit:
        """Add a delta file's changes (rolled back like any other edit)."""
        deltas, meta = load_deltas(path, self.sites)
        changes = self._write({layer: compact(delta) for layer, delta in deltas.items()})
        self._counter += 1
        edit = AppliedEdit(f"deltas-{self._counter}", "deltas", [], changes, info={"file": str(path), **meta})
        self._applied.append(edit)
        return edit

    def save_pretrained(self, folder: str | Path) -> Path:
        """The edited model (and tokenizer) as a Hugging Face folder."""
        self._refuse_in_context("the saved model")
        folder = Path(folder)
        self.sites.model.save_pretrained(folder)
        if hasattr(self.tokenizer, "save_pretrained"):
            self.tokenizer.save_pretrained(folder)
        return folder
