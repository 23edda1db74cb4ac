"""Running a contrastive decoding mode inside a model's ordinary forward passes.

    with steer.decoding.decoding(model, "dola", layers="high") as trace:
        model.generate(**batch, max_new_tokens=32)   # every step decoded with DoLa
    model(**batch).logits[:, -1]                    # plain again

How: a pre-hook at `resid_pre.i` (through `steer.sites.hooks.intervene`) keeps the
last position of each early layer the mode needs; those rows go through the model's
final norm and are appended to the input of the model's own LM-head call, so the head
weight is read once per step for the final and the early-exit logits alike (cut off its
output again before anything else sees it); a forward hook on the model root then
replaces the last position of `outputs.logits` with the mode's logits. Nothing is
modified in place and nothing of the user's model is replaced; all hooks are removed on
exit, and they act only on forward passes run in the context that entered the block.

Why rewrite the model's logits rather than add a LogitsProcessor: Hugging Face puts a
user's processors after its own (repetition penalty, min length, bad words), so a
processor would contrast already-penalised logits. Rewriting the logits the model
returns puts the contrast first and every generate processor after it, exactly the
order of HF's `_dola_decoding`; it also covers beam search and plain forward passes
(scoring, A/B evaluation) with no extra code.

Only the last position is rewritten (the one that predicts the next token). `generate`
asks for just that position (`logits_to_keep=1`); a full forward keeps final-layer
logits at earlier positions. Rows must be left-padded (generate's requirement too).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import threading

import torch
from torch import nn
from torch.profiler import record_function

from steer.errors import SteerError
from steer.sites.hooks import ForwardState, intervene
from steer.sites.resolve import Site, SiteMap
from steer.sites.table import ArchTable
from steer.decoding.early_exit import EarlyExitHead, hidden_state_site


class ContrastiveStep(Protocol):
    """One decoding step of a mode: (final [B, V], early-exit [C, B, V]) -> (logits [B, V], layer used [B])."""

    layers: list[int]  # hidden-state indices of the early layers it reads, in the order of early-exit rows
    early_exit_norm: bool  # read early layers through the final norm before the head (else the head alone)

    def __call__(self, final_logits: torch.Tensor, early_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclass(frozen=True)
class DecodingMode:
    """A registered decoding mode: its hyper-parameter dataclass and how to build its step."""

    name: str
    hparams: type
    build: Callable[[Any, int, bool], ContrastiveStep]  # (hparams, num_layers, tied_embeddings)
    description: str


class _PassState(threading.local):
    """What one forward pass of a decoding block carries from hook to hook, per thread.

    Why per thread: a block's hooks sit on the shared model, and two threads may run passes
    through the same block at once (a context copied with `steer.in_this_context`), or one
    thread may decode while another runs the model plainly. A pass runs all its hooks in the
    thread that called the model, so keeping its rows, the width of its head input and its
    raw early-exit logits per thread keeps concurrent passes apart.
    """

    def __init__(self) -> None:
        self.rows: dict[int, torch.Tensor] = {}  # early layer -> [B, H] last position
        self.columns: int | None = None  # T of the pass whose head input was extended
        self.raw: torch.Tensor | None = None  # [B, C, V] raw early-exit logits of that pass

    def clear(self) -> None:
        self.rows.clear()
        self.columns, self.raw = None, None


@dataclass
class _LastPosition:
    """Keeps a copy of the last position of the activation at `site` (left padding aligns it)."""

    site: Site
    index: int
    state: _PassState

    def __call__(self, hidden: torch.Tensor, state: ForwardState) -> torch.Tensor:
        # A copy: a block may update its input buffer in place after this hook has run.
        self.state.rows[self.index] = hidden[:, -1, :].detach().clone()
        return hidden


@dataclass
class DecodingTrace:
    """What the mode did: the early layer it used per forward pass (a [B] tensor each)."""

    mode: str
    hparams: Any
    layers: list[int]
    chosen: list[torch.Tensor] = field(default_factory=list)

    def layer_counts(self) -> dict[int, int]:
        """How often each early layer was chosen, over all rows and steps."""
        counts: dict[int, int] = {}
        for step in self.chosen:
            for layer in step.reshape(-1).tolist():
                counts[int(layer)] = counts.get(int(layer), 0) + 1
        return dict(sorted(counts.items()))


def _model_id(model: nn.Module) -> str | None:
    """The id the shipped hparams YAML is looked up by (set by steer.load_model)."""
    return getattr(getattr(model, "config", None), "_name_or_path", None) or None


def _tied(model: nn.Module) -> bool:
    config = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return bool(getattr(text, "tie_word_embeddings", False))


def resolve_hparams(
    mode: str,
    hparams: Any = None,
    *,
    model_id: str | None = None,
    config: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> Any:
    """An hparams instance: given as is, or mode defaults < YAML (given or shipped) < overrides."""
    from steer.config import load_hparams
    from steer.decoding import decoding_modes

    spec = decoding_modes().get(mode)
    if hparams is not None:
        if not isinstance(hparams, spec.hparams):
            raise SteerError(f"{mode} takes {spec.hparams.__name__}, not {type(hparams).__name__}.")
        if config or overrides:
            raise SteerError("Give either an hparams object or config/overrides, not both.")
        return hparams
    return load_hparams(spec.hparams, mode, model_id=model_id, config=config, overrides=overrides)


class _EarlyExitsThroughHead:
    """Puts the early exits through the model's own LM-head call, one matmul with the final position(s).

    Why: on a CPU at small batch a decoding step is bound by reading weights, and the
    LM head is a fifth of SmolLM2. Running the early exits through a second head call
    reads it twice; appending them as extra columns of the head's input reads it once
    (README_2 §9 measures the difference). A pre-hook on the head appends the C early
    rows (through the final norm when the mode wants it) to its input [B, T, H]; a
    forward hook registered first (`prepend=True`) cuts them off its output
    [B, T + C, V] before anything else sees it, so the model, steering hooks at the
    head and the caller all see [B, T, V] as usual. Models that compute logits without
    calling the head module never trigger the pre-hook; `decoding` then calls the head
    itself (`fallback` below).
    """

    def __init__(self, head: EarlyExitHead, layers: list[int], state: _PassState, norm: bool,
                 active: Callable[[], bool]) -> None:
        self.head, self.layers, self.state, self.norm, self.active = head, layers, state, norm, active

    def before_head(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if not self.active() or not args or not isinstance(args[0], torch.Tensor) or args[0].dim() != 3:
            return None
        rows = self.state.rows
        if any(i not in rows for i in self.layers):
            return None
        hidden = args[0]
        early = torch.stack([rows.pop(i) for i in self.layers], dim=1).to(hidden.device)  # [B, C, H]
        with record_function("steer.decoding.early_exit_head"):
            if self.norm:
                early = self.head.norm(early)
        self.state.columns = hidden.shape[1]
        return (torch.cat([hidden, early.to(hidden.dtype)], dim=1), *args[1:])

    def after_head(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        if not self.active():
            return None
        columns, self.state.columns = self.state.columns, None
        if columns is None or not isinstance(output, torch.Tensor):
            return None
        self.state.raw = output[:, columns:, :]
        return output[:, :columns, :]

    def early_logits(self) -> torch.Tensor | None:
        """[C, B, V] post-processed early-exit logits of the pass that just ran, if the head ran them."""
        raw, self.state.raw = self.state.raw, None
        if raw is None:
            return None
        return self.head.postprocess(raw).transpose(0, 1)

    def missing(self) -> list[int]:
        """Early layers this pass has not read (the pass skipped them, or the head already took them)."""
        return [i for i in self.layers if i not in self.state.rows]

    def fallback(self, device: torch.device) -> torch.Tensor:
        """The early exits through a head call of their own (for models that never call the head module)."""
        hidden = torch.stack([self.state.rows.pop(i) for i in self.layers]).to(device)  # [C, B, H]
        return self.head(hidden) if self.norm else self.head.unembed(hidden)

    def reset(self) -> None:
        self.state.clear()


def _refuse_remote(model: nn.Module) -> None:
    """Decoding modes are hooks in this process: a remote nnsight run (NDIF) would silently skip them."""
    from steer.sites.backend import default_backend, reading_backend

    for backend in (reading_backend(model), default_backend(model)):
        if backend is not None and getattr(backend, "trace_kwargs", {}).get("remote"):
            raise SteerError(
                "DoLa and DeCo run as hooks in this process, so they cannot act on a remote nnsight run (NDIF): "
                "decode with a local model (the torch backend, or nnsight without remote=True).")


# The decoding blocks active in this context (ids of their traces). The hooks of a block are
# on the model itself, so they see every caller's forward pass; they act only on passes
# run in the context that entered the block (or one copied from it), like steering does.
_ACTIVE_DECODING: ContextVar[frozenset[int]] = ContextVar("steer_active_decoding", default=frozenset())


@contextmanager
def decoding(
    model: nn.Module,
    mode: str,
    hparams: Any = None,
    *,
    config: str | Path | None = None,
    arch: ArchTable | None = None,
    **overrides: Any,
) -> Iterator[DecodingTrace]:
    """Decode with `mode` ("dola", "deco") on every forward pass of `model` run in this context inside the block.

    Hyper-parameters: `hparams` (a DolaHParams / DecoHParams), or the shipped YAML for
    this model (or `config`) with keyword `overrides` on top, e.g. `layers="low"`.
    Compose with steering by entering `steer.steering(...)` around or inside it. Other
    threads and asyncio tasks decode plainly unless they run in a copy of this context
    (`steer.in_this_context`).
    """
    from steer.decoding import decoding_modes

    sites = SiteMap(model, arch)
    _refuse_remote(sites.model)
    spec = decoding_modes().get(mode)
    hp = resolve_hparams(mode, hparams, model_id=_model_id(sites.model), config=config, overrides=overrides or None)
    step = spec.build(hp, sites.num_layers, _tied(sites.model))
    state = _PassState()
    captures = [_LastPosition(hidden_state_site(i, sites.num_layers), i, state) for i in step.layers]
    trace = DecodingTrace(mode, hp, list(step.layers))
    key = id(trace)

    def active() -> bool:
        return key in _ACTIVE_DECODING.get()

    exits = _EarlyExitsThroughHead(EarlyExitHead(sites), list(step.layers), state,
                                   bool(getattr(step, "early_exit_norm", True)), active)

    def rewrite(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        if not active():
            return None
        logits = getattr(output, "logits", None)
        if not isinstance(logits, torch.Tensor):
            exits.reset()
            raise SteerError(f"Decoding mode {mode!r} needs the model to return an output with .logits "
                             "(call it with return_dict=True).")
        final = logits[:, -1, :].float()
        early = exits.early_logits()
        if early is None:
            missing = exits.missing()
            if missing:
                exits.reset()
                raise SteerError(f"Decoding mode {mode!r} saw no activation at layers {missing} in this forward pass.")
            # Named ranges (free unless a torch.profiler is running): benchmarks/decoding_overhead.py --profile
            with record_function("steer.decoding.early_exit_head"):
                early = exits.fallback(final.device)
        with record_function("steer.decoding.step"):
            new_last, chosen = step(final, early.to(final.device))
        trace.chosen.append(chosen)
        if logits.shape[1] == 1:
            new_logits = new_last[:, None, :]
        else:
            new_logits = torch.cat([logits[:, :-1, :].to(new_last.dtype), new_last[:, None, :]], dim=1)
        output.logits = new_logits  # a new tensor on the output record; the old one is untouched
        return output

    token = _ACTIVE_DECODING.set(_ACTIVE_DECODING.get() | {key})
    handles: list[Any] = []
    try:
        with intervene(sites.model, captures, arch):
            head = exits.head.head
            handles.append(head.register_forward_pre_hook(exits.before_head))
            handles.append(head.register_forward_hook(exits.after_head, prepend=True))
            handles.append(sites.model.register_forward_hook(rewrite))
            yield trace
    finally:
        for handle in handles:
            handle.remove()
        exits.reset()
        _ACTIVE_DECODING.reset(token)


def settings_decoding(model: nn.Module, settings: Any) -> tuple[Any, dict[str, Any]]:
    """(context manager, extra generate kwargs) for `GenerationSettings.decoding`.

    The extra kwargs carry the mode's recommended repetition penalty (DoLa: 1.2); the
    settings' own generate kwargs are merged after them, so an explicit
    `repetition_penalty` wins.
    """
    from contextlib import nullcontext

    from steer.decoding import PLAIN

    mode = getattr(settings, "decoding", PLAIN) or PLAIN
    if mode == PLAIN:
        if getattr(settings, "decoding_config", None) or getattr(settings, "decoding_overrides", None):
            raise SteerError("Decoding settings were given without a decoding mode; add --decoding dola or deco.")
        return nullcontext(), {}
    hp = resolve_hparams(mode, model_id=_model_id(SiteMap(model).model), config=settings.decoding_config,
                         overrides=dict(settings.decoding_overrides) or None)
    extra: dict[str, Any] = {}
    penalty = getattr(hp, "repetition_penalty", None)
    if penalty is not None and penalty != 1.0:
        extra["repetition_penalty"] = penalty
    return decoding(model, mode, hp), extra
