"""Running a contrastive decoding mode inside a model's ordinary forward passes.

    with steer.decoding.decoding(model, "dola", layers="high") as trace:
        model.generate(**batch, max_new_tokens=32)   # every step decoded with DoLa
    model(**batch).logits[:, -1]                    # plain again

How: a pre-hook at `resid_pre.i` (through `steer.sites.hooks.intervene`) keeps the
last position of each early layer the mode needs; a forward hook on the model root
then replaces the last position of `outputs.logits` with the mode's logits, computed
from the model's own final logits and the early layers read through the model's own
final norm and head. Nothing is modified in place and nothing of the user's model is
replaced; all hooks are removed on exit.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

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


@dataclass
class _LastPosition:
    """Keeps a copy of the last position of the activation at `site` (left padding aligns it)."""

    site: Site
    index: int
    store: dict[int, torch.Tensor]

    def __call__(self, hidden: torch.Tensor, state: ForwardState) -> torch.Tensor:
        # A copy: a block may update its input buffer in place after this hook has run.
        self.store[self.index] = hidden[:, -1, :].detach().clone()
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
    """Decode with `mode` ("dola", "deco") on every forward pass of `model` inside the block.

    Hyper-parameters: `hparams` (a DolaHParams / DecoHParams), or the shipped YAML for
    this model (or `config`) with keyword `overrides` on top, e.g. `layers="low"`.
    Compose with steering by entering `steer.steering(...)` around or inside it.
    """
    from steer.decoding import decoding_modes

    sites = SiteMap(model, arch)
    spec = decoding_modes().get(mode)
    hp = resolve_hparams(mode, hparams, model_id=_model_id(sites.model), config=config, overrides=overrides or None)
    step = spec.build(hp, sites.num_layers, _tied(sites.model))
    head = EarlyExitHead(sites)
    early_exit = head if getattr(step, "early_exit_norm", True) else head.unembed
    store: dict[int, torch.Tensor] = {}
    captures = [_LastPosition(hidden_state_site(i, sites.num_layers), i, store) for i in step.layers]
    trace = DecodingTrace(mode, hp, list(step.layers))

    def rewrite(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        logits = getattr(output, "logits", None)
        if not isinstance(logits, torch.Tensor):
            raise SteerError(f"Decoding mode {mode!r} needs the model to return an output with .logits "
                             "(call it with return_dict=True).")
        missing = [i for i in step.layers if i not in store]
        if missing:
            raise SteerError(f"Decoding mode {mode!r} saw no activation at layers {missing} in this forward pass.")
        hidden = torch.stack([store.pop(i) for i in step.layers])  # [C, B, H]
        final = logits[:, -1, :].float()
        # Named ranges (free unless a torch.profiler is running): benchmarks/decoding_overhead.py --profile
        with record_function("steer.decoding.early_exit_head"):
            early = early_exit(hidden.to(final.device))
        with record_function("steer.decoding.step"):
            new_last, chosen = step(final, early)
        trace.chosen.append(chosen)
        if logits.shape[1] == 1:
            new_logits = new_last[:, None, :]
        else:
            new_logits = torch.cat([logits[:, :-1, :].to(new_last.dtype), new_last[:, None, :]], dim=1)
        output.logits = new_logits  # a new tensor on the output record; the old one is untouched
        return output

    with intervene(sites.model, captures, arch):
        handle = sites.model.register_forward_hook(rewrite)
        try:
            yield trace
        finally:
            handle.remove()
            store.clear()


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
