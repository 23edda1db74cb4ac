"""Interventions at sites for the length of a `with` block, local to the caller's context.

`intervene(model, interventions)` makes the interventions act on every forward pass of
`model` that runs in the same thread or asyncio task (and in contexts copied from it,
for example `contextvars.copy_context().run(model.generate, ...)` or
`asyncio.to_thread`). Forward passes of other threads and tasks on the same model are
untouched, so a chat server can steer each user differently on one shared model.
Nested blocks in one context compose, in the order they were entered.

How: the active blocks of a context are a tuple in a `ContextVar`. Each site that any
block needs carries one torch hook, shared by every context and installed while at
least one block anywhere uses that site; the hook applies the blocks found in the
context of the thread that runs it. A root pre-hook tracks where each forward pass is
(`steer.sites.tracking`), also per context. Hooks are removed when the last block that
needs them exits, also after an exception. The model's modules are never replaced.

These plain torch hooks are the default backend: they cost nothing measurable per
decoding step (benchmarks/steering_overhead.py) and work inside a user's unmodified
`model.generate`. The nnsight backend (`steer.sites.backends.nnsight`, chosen with
`backend="nnsight"`) runs the same interventions inside nnsight's trace, for nnsight's
remote (NDIF) execution; `steer.sites.backend` is the interface both implement.
"""

from __future__ import annotations

import contextvars
import functools
import threading
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

import torch
from torch import nn

from steer.errors import SteerError
from steer.sites.resolve import Site, SiteMap
from steer.sites.table import ArchTable
from steer.sites.tracking import POSITION_POLICIES, ForwardState, next_state

PositionPolicy = Literal["all", "prompt", "generated", "after_instruction"]

__all__ = [
    "POSITION_POLICIES", "ForwardState", "Intervention", "PositionPolicy", "Recorder", "active_interventions",
    "in_this_context", "intervene", "record",
]


class Intervention(Protocol):
    """Something that rewrites the activation at one site. Must not modify `hidden` in place."""

    site: Site

    def __call__(self, hidden: torch.Tensor, state: ForwardState) -> torch.Tensor: ...


@dataclass(eq=False)
class _Block:
    """One `intervene` block: its interventions by site, for one model."""

    model_key: int
    by_site: dict[Site, list[Intervention]]
    closed: bool = False


# The blocks active in this context, outermost first; and each model's last forward state here.
_BLOCKS: contextvars.ContextVar[tuple[_Block, ...]] = contextvars.ContextVar("steer_blocks", default=())
_STATES: contextvars.ContextVar[dict[int, ForwardState]] = contextvars.ContextVar("steer_states", default={})


def _state_for(model_key: int) -> ForwardState:
    state = _STATES.get().get(model_key)
    return state if state is not None else ForwardState()


class _ModelHooks:
    """The torch hooks on one model: one root tracker and one hook per site in use."""

    def __init__(self, sites: SiteMap) -> None:
        # a weak reference: this object is reachable from the model's hooks and the
        # registry's values, and must not keep the model alive
        self._model = weakref.ref(sites.model)
        self.arch = sites.arch
        self.key = id(sites.model)
        self.lock = threading.Lock()
        self.root: torch.utils.hooks.RemovableHandle | None = None
        self.handles: dict[Site, torch.utils.hooks.RemovableHandle] = {}
        self.users: dict[Site, int] = defaultdict(int)
        self.blocks = 0

    # ---- installation, shared by every context ------------------------------------------
    def acquire(self, sites: Sequence[Site]) -> None:
        with self.lock:
            if self.root is None:
                self.root = self._sites().model.register_forward_pre_hook(self._track, with_kwargs=True, prepend=True)
            self.blocks += 1
            taken: list[Site] = []
            try:
                for site in sites:
                    if self.users[site] == 0:
                        self.handles[site] = self._install(site)
                    self.users[site] += 1
                    taken.append(site)
            except BaseException:
                self._release(taken)  # a site that failed to install leaves nothing behind
                raise

    def release(self, sites: Sequence[Site]) -> None:
        with self.lock:
            self._release(sites)

    def _release(self, sites: Sequence[Site]) -> None:
        for site in sites:
            self.users[site] -= 1
            if self.users[site] == 0:
                self.handles.pop(site).remove()
                del self.users[site]
        self.blocks -= 1
        if self.blocks == 0 and self.root is not None:
            self.root.remove()
            self.root = None

    def _sites(self) -> SiteMap:
        model = self._model()
        if model is None:
            raise SteerError("The model was deleted while steering was being set up.")
        return SiteMap(model, self.arch)

    def _install(self, site: Site) -> torch.utils.hooks.RemovableHandle:
        module = self._sites().module(site)
        if site.side == "output":
            # Caveat: transformers installs permanent output-capture hooks the first time
            # output_hidden_states=True is used; hooks installed before ours run first, so
            # they report a steered block's output before the vector is added.
            return module.register_forward_hook(functools.partial(self._output_hook, site))
        if site.side == "input":
            return module.register_forward_pre_hook(functools.partial(self._input_hook, site), with_kwargs=True)
        raise SteerError(f"Site {site} is a weight; interventions act on activations.")

    # ---- what runs on each forward pass, in the running thread's context ---------------
    def _mine(self) -> list[_Block]:
        return [b for b in _BLOCKS.get() if b.model_key == self.key and not b.closed]

    def _track(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not self._mine():
            return
        states = _STATES.get()
        fresh = dict(states)  # copied, never mutated: another context may hold the old dict
        fresh[self.key] = next_state(states.get(self.key), args, kwargs)
        _STATES.set(fresh)

    def _apply(self, site: Site, hidden: torch.Tensor) -> torch.Tensor | None:
        blocks = _BLOCKS.get()
        if not blocks:
            return None  # the common case for other callers: nothing to do, fast
        state: ForwardState | None = None
        changed = False
        for block in blocks:
            if block.model_key != self.key or block.closed:
                continue
            group = block.by_site.get(site)
            if not group:
                continue
            if state is None:
                state = _state_for(self.key)
            for intervention in group:
                hidden = intervention(hidden, state)
            changed = True
        return hidden if changed else None

    def _output_hook(self, site: Site, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        new = self._apply(site, hidden)
        if new is None:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new

    def _input_hook(self, site: Site, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        hidden = args[0] if args else kwargs.get("hidden_states")
        if hidden is None:
            return None
        new = self._apply(site, hidden)
        if new is None:
            return None
        if args:
            return (new, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": new}


_MODELS: weakref.WeakKeyDictionary[nn.Module, _ModelHooks] = weakref.WeakKeyDictionary()
_MODELS_LOCK = threading.Lock()


def _hooks_for(sites: SiteMap) -> _ModelHooks:
    with _MODELS_LOCK:
        hooks = _MODELS.get(sites.model)
        if hooks is None or hooks.arch != sites.arch:
            if hooks is not None and hooks.blocks:
                raise SteerError("This model is already steered with another architecture table; "
                                 "use one ArchTable per model.")
            hooks = _MODELS[sites.model] = _ModelHooks(sites)
        return hooks


@contextmanager
def intervene(
    model: nn.Module, interventions: Sequence[Intervention], arch: ArchTable | None = None
) -> Iterator[ForwardState]:
    """Run `interventions` on every forward pass of `model` in this context inside the block.

    Yields the state of the latest forward pass in this context when the block was entered
    (read `current_state(model)` for the live one).
    """
    sites = SiteMap(model, arch)
    by_site: dict[Site, list[Intervention]] = defaultdict(list)
    for intervention in interventions:
        site = sites.normalise(intervention.site)
        if site.side == "weight":
            raise SteerError(f"Site {site} is a weight; steering acts on activations.")
        sites.module(site)  # resolve now: a wrong site is an error before any hook goes on
        by_site[site].append(intervention)
    hooks = _hooks_for(sites)
    block = _Block(hooks.key, dict(by_site))
    used = list(by_site)
    hooks.acquire(used)
    try:
        _BLOCKS.set((*_BLOCKS.get(), block))
        try:
            yield _state_for(hooks.key)
        finally:
            # by identity, not token: blocks may close out of order (a chat handle swaps its block)
            block.closed = True
            _BLOCKS.set(tuple(b for b in _BLOCKS.get() if b is not block))
    finally:
        hooks.release(used)


def current_state(model: nn.Module) -> ForwardState:
    """The state of the latest forward pass of `model` in this context (for diagnostics)."""
    return _state_for(id(SiteMap(model).model))


def active_interventions(model: nn.Module) -> list[Intervention]:
    """The interventions that act on `model` in this context, in the order they apply."""
    key = id(SiteMap(model).model)
    return [i for b in _BLOCKS.get() if b.model_key == key and not b.closed for g in b.by_site.values() for i in g]


F = TypeVar("F", bound=Callable[..., Any])


def in_this_context(function: F) -> F:
    """`function`, to be run in a copy of this context: steering active here acts there too.

    For the usual streaming pattern, where `generate` runs in a worker thread:

        with steer.steering(model, (vector, 2.0)):
            Thread(target=steer.in_this_context(model.generate), kwargs=...).start()

    A plain `Thread(target=model.generate)` starts in an empty context and is unsteered.
    """
    context = contextvars.copy_context()

    @functools.wraps(function)
    def run(*args: Any, **kwargs: Any) -> Any:
        # a copy per call: one Context cannot be entered by two threads at once
        return context.copy().run(function, *args, **kwargs)

    return run  # type: ignore[return-value]


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
    """Record activations at `sites` for every forward pass in this context inside the block."""
    site_map = SiteMap(model, arch)
    recorders = {site_map.normalise(s): Recorder(site_map.normalise(s)) for s in sites}
    with intervene(model, list(recorders.values()), arch):
        yield recorders
