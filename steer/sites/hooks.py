"""Hooks at sites, installed for the length of a `with` block and always removed.

One root pre-hook per context tracks where the current forward pass is in the
sequence (prefill or a decoding step with the KV cache, and which padded columns it
covers), so position policies act on exactly the right tokens on every step. Each
site gets one torch hook that runs all interventions for that site in order.

We use plain torch hooks here rather than an nnsight trace because they cost nothing
measurable per decoding step (see benchmarks/steering_overhead.py) and work inside a
user's unmodified `model.generate`; `steer.sites.nnsight_backend` offers the same
sites on an nnsight model for remote and vLLM execution.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
from torch import nn

from steer.errors import SteerError
from steer.sites.resolve import Site, SiteMap
from steer.sites.table import ArchTable

PositionPolicy = Literal["all", "prompt", "generated", "after_instruction"]
POSITION_POLICIES: tuple[str, ...] = ("all", "prompt", "generated", "after_instruction")


@dataclass
class ForwardState:
    """Where the current forward pass is. Shared by every site hook of one context.

    Columns are indices into the left-padded sequence (prompt plus generated tokens):
    left padding aligns all prompt ends at column `prompt_length`.
    """

    columns: torch.Tensor | None = None  # [L] columns of the tokens in this forward pass
    prompt_length: int = 0  # padded prompt length, set by the prefill pass
    pad_offsets: torch.Tensor | None = None  # [B] left pads per row
    is_prefill: bool = True
    _masks: dict[tuple[str, int], torch.Tensor | None] = field(default_factory=dict)

    def position_mask(self, policy: str, instruction_suffix: int = 1) -> torch.Tensor | None:
        """[1, L, 1] mask of positions the policy acts on, or None for all positions.

        `instruction_suffix` is how many prompt tokens close the instruction (the chat
        template's assistant header); `after_instruction` acts from there onward.
        """
        if policy == "all":
            return None  # pads are masked out of attention, so adding there is harmless
        key = (policy, instruction_suffix)
        if key not in self._masks:
            assert self.columns is not None
            if policy == "prompt":
                mask = self.columns < self.prompt_length
            elif policy == "generated":
                # the last prompt token produces the first new token, so it counts
                mask = self.columns >= self.prompt_length - 1
            elif policy == "after_instruction":
                mask = self.columns >= self.prompt_length - max(instruction_suffix, 1)
            else:
                raise SteerError(f"Unknown position policy {policy!r}; use one of {POSITION_POLICIES}.")
            self._masks[key] = mask.view(1, -1, 1)
        return self._masks[key]


class Intervention(Protocol):
    """Something that rewrites the activation at one site. Must not modify `hidden` in place."""

    site: Site

    def __call__(self, hidden: torch.Tensor, state: ForwardState) -> torch.Tensor: ...


def _input_ids_length(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[int, int]:
    for value in (kwargs.get("input_ids"), kwargs.get("inputs_embeds"), args[0] if args else None):
        if isinstance(value, torch.Tensor):
            return int(value.shape[0]), int(value.shape[1])
    raise SteerError("steer could not find input_ids or inputs_embeds in the model call.")


class _StepTracker:
    def __init__(self) -> None:
        self.state = ForwardState()

    def __call__(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        batch, length = _input_ids_length(args, kwargs)
        mask = kwargs.get("attention_mask")
        state = self.state
        state._masks = {}
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            total = int(mask.shape[1])
            start = total - length
            if start == 0:
                state.pad_offsets = (mask.cumsum(dim=1) == 0).sum(dim=1)
        else:
            cache_position = kwargs.get("cache_position")
            past = kwargs.get("past_key_values")
            if isinstance(cache_position, torch.Tensor) and cache_position.numel():
                start = int(cache_position.reshape(-1)[0])
            elif past is not None and hasattr(past, "get_seq_length"):
                start = int(past.get_seq_length())
            else:
                start = 0
            if start == 0:
                state.pad_offsets = torch.zeros(batch, dtype=torch.long)
        state.is_prefill = start == 0
        if state.is_prefill:
            state.prompt_length = length
        device = mask.device if isinstance(mask, torch.Tensor) else None
        state.columns = torch.arange(start, start + length, device=device)


def _output_hook(interventions: Sequence[Intervention], state: ForwardState) -> Callable[..., Any]:
    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        for intervention in interventions:
            hidden = intervention(hidden, state)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    return hook


def _input_hook(interventions: Sequence[Intervention], state: ForwardState) -> Callable[..., Any]:
    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if args:
            hidden = args[0]
            for intervention in interventions:
                hidden = intervention(hidden, state)
            return (hidden, *args[1:]), kwargs
        hidden = kwargs["hidden_states"]
        for intervention in interventions:
            hidden = intervention(hidden, state)
        return args, {**kwargs, "hidden_states": hidden}

    return hook


@contextmanager
def intervene(
    model: nn.Module, interventions: Sequence[Intervention], arch: ArchTable | None = None
) -> Iterator[ForwardState]:
    """Run `interventions` on every forward pass inside the block; remove all hooks on exit."""
    sites = SiteMap(model, arch)
    by_site: dict[Site, list[Intervention]] = defaultdict(list)
    for intervention in interventions:
        by_site[sites.normalise(intervention.site)].append(intervention)
    tracker = _StepTracker()
    handles: list[torch.utils.hooks.RemovableHandle] = []
    try:
        handles.append(sites.model.register_forward_pre_hook(tracker, with_kwargs=True, prepend=True))
        for site, group in by_site.items():
            module = sites.module(site)
            if site.side == "output":
                # Appended, so nested contexts act in the order they were entered. Caveat:
                # transformers installs permanent output-capture hooks the first time
                # output_hidden_states=True is used; those run first and so report a
                # steered block's output before the vector is added (later layers see it).
                handles.append(module.register_forward_hook(_output_hook(group, tracker.state)))
            elif site.side == "input":
                handles.append(
                    module.register_forward_pre_hook(_input_hook(group, tracker.state), with_kwargs=True)
                )
            else:
                raise SteerError(f"Site {site} is a weight; steering acts on activations.")
        yield tracker.state
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class Recorder:
    """An intervention that keeps a copy of the activation of each forward pass."""

    site: Site
    detach: bool = True
    values: list[torch.Tensor] = field(default_factory=list)

    def __call__(self, hidden: torch.Tensor, state: ForwardState) -> torch.Tensor:
        self.values.append(hidden.detach() if self.detach else hidden)
        return hidden


@contextmanager
def record(
    model: nn.Module, sites: Sequence[Site | str], arch: ArchTable | None = None
) -> Iterator[dict[Site, Recorder]]:
    """Record activations at `sites` for every forward pass inside the block."""
    site_map = SiteMap(model, arch)
    recorders = {site_map.normalise(s): Recorder(site_map.normalise(s)) for s in sites}
    with intervene(model, list(recorders.values()), arch):
        yield recorders
