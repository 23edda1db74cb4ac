"""The nnsight backend: steer's interventions inside nnsight's trace and generate.

    from steer.sites.backends.nnsight import NnsightBackend

    with steer.steering(model, Steer(vector, [2.0, -1.0], "generated"), tokenizer=tok, backend="nnsight"):
        tokens = steer.sites.backend.generate(model, batch, max_new_tokens=32)

The same `Intervention` objects as the torch backend (anything with a `site` and
`__call__(hidden, state)`) run on every forward pass of nnsight's `generate`: each
decoding step is visited with `tracer.all()`, its `ForwardState` is computed by
`steer.sites.tracking.next_state` from the root module's own inputs (so every position
policy and per-row multiplier works), and each site's module input (resid_pre,
mlp_key) or output (everything else) is read and replaced in execution order.

`model` is a plain Hugging Face model (wrapped once in `nnsight.TransformersModel`,
which needs its tokenizer; nnsight's controller then sits on every module, inert
outside a trace) or an nnsight model of the caller's own. `NnsightBackend(remote=True)`
passes `remote=True` to nnsight (NDIF); see README_2 "Other engines" for what was and
was not tested.

Reads (`read`, and `steer.sites.reader` inside a block) and single passes (`forward`)
carry gradients when the caller's mode does: nnsight runs the model on real tensors, its
intervention code in greenlets on the caller's thread, so an activation swapped in keeps
its autograd graph. Editing uses this (`steer.edit.Editor(..., backend="nnsight")`: keys,
statistics and the value optimisation's passes). steer's inputs run exactly as given
(`_inputs_as_given`).

Blocks are local to the caller's context, like the torch backend's; nnsight runs on
one model take turns (nnsight keeps one interleaver per model). Generation inside
a block must go through `steer.sites.backend.generate(model, ...)` (steer's own
commands do): a plain `model.generate` cannot be seen by nnsight, so it is refused at
its first forward pass instead of running unsteered.
"""

from __future__ import annotations

import contextvars
import copy
import threading
import warnings
import weakref
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from steer.errors import SteerError
from steer.sites.resolve import Site, SiteMap, unwrap_model
from steer.sites.table import ArchTable
from steer.sites.tracking import ForwardState, next_state

__all__ = ["NnsightBackend", "active_backend", "envoy_at", "execution_order", "wrap"]

# where a site sits inside its layer, in the order a forward pass reaches it
_LAYER_ORDER = {"resid_pre": 0, "attn_out": 1, "mlp_key": 2, "mlp_out": 3, "resid_post": 4}
_WRAPPER_ATTRIBUTE = "_steer_nnsight_model"
_WRAP_LOCK = threading.Lock()
# the batch of a generate call (what one nnsight invoke carries); everything else is a setting
_MODEL_INPUTS = ("input_ids", "attention_mask", "inputs_embeds", "position_ids", "token_type_ids")


def execution_order(site: Site) -> tuple[int, int]:
    """A sort key that puts sites in the order one forward pass reaches them."""
    if site.layer is None:
        return {"embed": (-1, 0), "final_norm": (10**9, 0), "lm_head": (10**9, 1)}[site.name]
    return site.layer, _LAYER_ORDER[site.name]


def envoy_at(nn_model: Any, path: str) -> Any:
    """Walk a dotted module path ("model.layers.12.mlp") on an nnsight envoy."""
    envoy = nn_model
    for part in path.split("."):
        envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
    return envoy


def _import_nnsight() -> Any:
    try:
        import nnsight
    except ImportError:
        raise SteerError("The nnsight backend needs the nnsight package: pip install 'nnsight>=0.8'.") from None
    return nnsight


def _is_nnsight_model(model: Any) -> bool:
    return not isinstance(model, nn.Module) and hasattr(model, "trace") and hasattr(model, "interleaver")


def wrap(model: Any, tokenizer: Any | None = None) -> Any:
    """The nnsight model for `model`: itself when it already is one, else one wrapper per model.

    An nnsight model of the caller's own becomes its torch module's wrapper when that has
    none yet, so later calls that hold only the torch module (reads, editing) use it rather
    than wrapping the same modules a second time.
    """
    if _is_nnsight_model(model):
        if type(model).__name__ == "VLLM":
            raise SteerError("nnsight's vLLM models run a flattened token axis ([tokens, hidden], rows mixed by vLLM's "
                             "scheduler); steer's interventions expect [batch, tokens, hidden] per row, so the nnsight "
                             "backend does not steer vLLM models yet. Use a transformers model (local or remote=True).")
        plain = getattr(model, "_module", None)
        if isinstance(plain, nn.Module):
            with _WRAP_LOCK:
                plain.__dict__.setdefault(_WRAPPER_ATTRIBUTE, model)
        return model
    plain = unwrap_model(model)
    with _WRAP_LOCK:  # two threads must not wrap one model twice (two interleavers on its modules)
        wrapper = plain.__dict__.get(_WRAPPER_ATTRIBUTE)
        if wrapper is None:
            wrapper = _new_wrapper(plain, tokenizer)
    return wrapper


def _new_wrapper(plain: nn.Module, tokenizer: Any | None) -> Any:
    if tokenizer is None:
        raise SteerError("The nnsight backend wraps a plain model in nnsight, which needs its tokenizer: pass "
                         "tokenizer=... (steer.steering, steer.attach), or pass an nnsight model instead.")
    nnsight = _import_nnsight()
    # a copy: nnsight sets the pad token and padding side of the tokenizer it is given
    wrapper = nnsight.TransformersModel(plain, tokenizer=copy.copy(tokenizer))
    # kept on the model's own __dict__ (not a module registry): it lives and dies with the model
    plain.__dict__[_WRAPPER_ATTRIBUTE] = wrapper
    return wrapper


@dataclass(eq=False)
class _Block:
    """One nnsight `intervene` block: its interventions by (module path, side), for one model."""

    model_key: int
    backend: NnsightBackend
    wrapper: Any
    by_place: dict[tuple[str, str], list[Any]]
    order: dict[tuple[str, str], tuple[int, int]]
    closed: bool = False


_BLOCKS: contextvars.ContextVar[tuple[_Block, ...]] = contextvars.ContextVar("steer_nnsight_blocks", default=())
# True while this context runs the model through nnsight (the guard lets those passes by)
_IN_RUN: contextvars.ContextVar[bool] = contextvars.ContextVar("steer_nnsight_run", default=False)


def _mine(model_key: int) -> list[_Block]:
    return [b for b in _BLOCKS.get() if b.model_key == model_key and not b.closed]


def active_backend(model: Any) -> NnsightBackend | None:
    """The nnsight backend of the blocks active on `model` in this context, or None."""
    blocks = _BLOCKS.get()
    if not blocks:
        return None
    try:
        key = id(unwrap_model(model))
    except Exception:  # noqa: BLE001 - not a model: nothing active on it
        return None
    mine = _mine(key)
    return mine[-1].backend if mine else None


_RUN_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.Lock] = weakref.WeakKeyDictionary()
_RUN_LOCKS_LOCK = threading.Lock()


@contextmanager
def _running(wrapper: Any) -> Iterator[None]:
    """One nnsight run at a time per model (its interleaver is shared); this context's passes pass the guard."""
    plain = unwrap_model(wrapper)
    with _RUN_LOCKS_LOCK:
        lock = _RUN_LOCKS.setdefault(plain, threading.Lock())
    token = _IN_RUN.set(True)
    try:
        with lock:
            yield
    finally:
        _IN_RUN.reset(token)


@contextmanager
def _inputs_as_given(wrapper: Any) -> Iterator[None]:
    """nnsight runs steer's inputs exactly as given, position_ids included or not.

    nnsight adds mask-derived position_ids to a padded batch when its tokenizer pads on the
    left (`nnsight.modeling.processing.supply_position_ids`). steer builds complete inputs
    itself (the torch backend passes them to the model unchanged), and in `generate` those
    prefill positions would be kept for every decoding step by transformers 4.x (4.56.2:
    each step at the prompt's last position). So for the length of one run (under the
    model's run lock) the tokenizer reads as padding on the right; steer's batches arrive
    padded already, in one invoke, so nothing else depends on that side.
    """
    tokenizer = getattr(wrapper, "tokenizer", None)
    side = getattr(tokenizer, "padding_side", None)
    if side != "left":
        yield
        return
    tokenizer.padding_side = "right"
    try:
        yield
    finally:
        tokenizer.padding_side = side


class _Guards:
    """A root pre-hook per model while nnsight blocks exist: plain forward passes are refused."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count: weakref.WeakKeyDictionary[nn.Module, int] = weakref.WeakKeyDictionary()
        self.handles: weakref.WeakKeyDictionary[nn.Module, Any] = weakref.WeakKeyDictionary()

    def acquire(self, model: nn.Module) -> None:
        with self.lock:
            if self.count.get(model, 0) == 0:
                self.handles[model] = model.register_forward_pre_hook(_guard, with_kwargs=True, prepend=True)
            self.count[model] = self.count.get(model, 0) + 1

    def release(self, model: nn.Module) -> None:
        with self.lock:
            self.count[model] -= 1
            if self.count[model] == 0:
                self.handles.pop(model).remove()
                del self.count[model]


_GUARDS = _Guards()


def _guard(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    if _IN_RUN.get() or not _mine(id(module)):
        return
    raise SteerError(
        "This model is steered with backend='nnsight' here, but this forward pass is a plain call "
        "(model.generate or model(...)), which nnsight cannot see. Run it with "
        "steer.sites.backend.generate(model, inputs, ...) / forward(...) / read(...) (steer's own generation "
        "and scoring do), or use backend='torch'."
    )


class _Step:
    """What runs on each forward pass inside nnsight: track the pass, then apply each place in order."""

    def __init__(self, places: list[tuple[Any, str, list[Any]]]) -> None:
        self.places = places  # (envoy, "input" | "output", interventions), in execution order
        self.previous: ForwardState | None = None
        self.passes = 0

    def __call__(self, root: Any) -> None:
        args, kwargs = root.inputs
        state = next_state(self.previous, tuple(args), dict(kwargs))
        self.previous = state
        self.passes += 1
        for envoy, side, group in self.places:
            if side == "input":
                hidden = envoy.input
                for intervention in group:
                    hidden = intervention(hidden, state)
                envoy.input = hidden
            else:
                output = envoy.output
                hidden = output[0] if isinstance(output, tuple) else output
                for intervention in group:
                    hidden = intervention(hidden, state)
                envoy.output = (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def _quiet_open_loops() -> None:
    # `tracer.all()` runs until generation ends, by design; nnsight warns about the step it
    # waited for and never got. Only that message, only from nnsight's interleaver.
    warnings.filterwarnings("ignore", message=r".* was never reached: the loop asked for a step",
                            category=UserWarning, module=r"nnsight\.intervention\.interleaver")


class NnsightBackend:
    """Interventions inside nnsight's trace/generate; see the module docstring.

    `trace_kwargs` go to every nnsight trace and generate call (`remote=True` for NDIF,
    or a `backend=` of nnsight's own).
    """

    name = "nnsight"

    def __init__(self, remote: bool = False, **trace_kwargs: Any) -> None:
        self.trace_kwargs = {**trace_kwargs, **({"remote": True} if remote else {})}

    def __repr__(self) -> str:
        return f"NnsightBackend({', '.join(f'{k}={v!r}' for k, v in self.trace_kwargs.items())})"

    # ---- blocks ----------------------------------------------------------------------------
    @contextmanager
    def intervene(self, model: Any, interventions: Sequence[Any], arch: ArchTable | None = None,
                  tokenizer: Any | None = None) -> Iterator[ForwardState]:
        """The interventions act on `model`'s nnsight runs in this context inside the block.

        Everything is checked here, before any forward pass: each site resolves to a module
        of this model and of its nnsight tree, and is an activation (not a weight).
        """
        sites = SiteMap(unwrap_model(model), arch)
        wrapper = wrap(model, tokenizer)
        by_place: dict[tuple[str, str], list[Any]] = defaultdict(list)
        order: dict[tuple[str, str], tuple[int, int]] = {}
        for intervention in interventions:
            site = sites.normalise(intervention.site)
            if site.side == "weight":
                raise SteerError(f"Site {site} is a weight; steering acts on activations.")
            sites.module(site)  # a wrong site is an error now, not mid-generation
            path, side = sites.nnsight_path(site)
            try:
                envoy_at(wrapper, path)
            except (AttributeError, IndexError, KeyError) as exc:
                raise SteerError(f"Site {site} is {path!r} on this model, but its nnsight model has no such "
                                 f"module ({exc}); check the architecture table.") from None
            by_place[(path, side)].append(intervention)
            order[(path, side)] = min(order.get((path, side), execution_order(site)), execution_order(site))
        mine = _mine(id(sites.model))
        if mine and mine[-1].backend.trace_kwargs != self.trace_kwargs:
            raise SteerError("Nested nnsight blocks on one model must use the same nnsight options "
                             f"({mine[-1].backend!r} vs {self!r}).")
        block = _Block(id(sites.model), self, wrapper, dict(by_place), order)
        _GUARDS.acquire(sites.model)
        try:
            _BLOCKS.set((*_BLOCKS.get(), block))
            try:
                yield ForwardState()
            finally:
                block.closed = True
                _BLOCKS.set(tuple(b for b in _BLOCKS.get() if b is not block))
        finally:
            _GUARDS.release(sites.model)

    def _step(self, model: Any, wrapper: Any, extra: Sequence[_Block] = ()) -> _Step | None:
        """This context's interventions on `model` (then `extra`'s), merged across blocks, in execution order."""
        places: dict[tuple[str, str], list[Any]] = defaultdict(list)
        order: dict[tuple[str, str], tuple[int, int]] = {}
        for block in [*_mine(id(unwrap_model(model))), *extra]:
            for place, group in block.by_place.items():
                places[place].extend(group)
                order[place] = min(order.get(place, block.order[place]), block.order[place])
        if not places:
            return None
        ordered = sorted(places, key=lambda p: (order[p], p[1] == "output"))
        return _Step([(envoy_at(wrapper, path), side, places[(path, side)]) for path, side in ordered])

    def _wrapper(self, model: Any) -> Any:
        mine = _mine(id(unwrap_model(model)))
        return mine[-1].wrapper if mine else wrap(model)

    # ---- running the model -----------------------------------------------------------------
    def generate(self, model: Any, inputs: Mapping[str, torch.Tensor], **generate_kwargs: Any) -> torch.Tensor:
        """nnsight's `generate` on `inputs`, every step steered by this context's blocks."""
        wrapper = self._wrapper(model)
        step = self._step(model, wrapper)
        # the batch goes to the invoke; generation settings (and any stray tensors' keywords) to generate
        arguments = {**dict(inputs), **generate_kwargs}
        batch = {k: arguments.pop(k) for k in _MODEL_INPUTS if arguments.get(k) is not None}
        arguments.update(self.trace_kwargs)
        _quiet_open_loops()
        with _running(wrapper), _inputs_as_given(wrapper):
            with wrapper.generate(**arguments) as tracer:
                with tracer.invoke(batch):
                    if step is not None:
                        for _ in tracer.all():  # every forward pass: the prefill and each decoding step
                            step(wrapper)
                with tracer.invoke():  # its own invoke: code after an open-ended loop never runs
                    result = tracer.result.save()
        return result

    def forward(self, model: Any, inputs: Mapping[str, torch.Tensor], **kwargs: Any) -> Any:
        """One nnsight trace over `inputs`, steered by this context's blocks; the model's output."""
        wrapper = self._wrapper(model)
        step = self._step(model, wrapper)
        with _running(wrapper), _inputs_as_given(wrapper):
            with wrapper.trace(dict(inputs), **kwargs, **self.trace_kwargs):
                if step is not None:
                    step(wrapper)
                output = wrapper.output.save()
        return output

    def read(self, model: Any, inputs: Mapping[str, torch.Tensor], sites: Sequence[Site | str],
             arch: ArchTable | None = None, tokenizer: Any | None = None,
             stop_early: bool = True, *, positions_from_mask: bool = True) -> dict[Site, torch.Tensor]:
        """Activations at `sites` for one nnsight trace over `inputs` (no cache).

        Blocks active on `model` here act too, as they would on the torch backend.
        `stop_early` ends the pass (nnsight's `tracer.stop()`) once the deepest site is read.
        `positions_from_mask`: a batch with a mask and no position_ids is left-padded
        (positions from the mask); False runs `inputs` as given.
        """
        from steer.prompts import forward_inputs
        from steer.sites.hooks import Recorder

        site_map = SiteMap(unwrap_model(model), arch)
        wanted = [site_map.normalise(s) for s in sites]
        wrapper = self._wrapper(model) if _mine(id(site_map.model)) else wrap(model, tokenizer)
        recorders = {site: Recorder(site) for site in wanted}
        by_place: dict[tuple[str, str], list[Any]] = defaultdict(list)
        order: dict[tuple[str, str], tuple[int, int]] = {}
        for site, recorder in recorders.items():
            place = site_map.nnsight_path(site)
            by_place[place].append(recorder)
            order[place] = min(order.get(place, execution_order(site)), execution_order(site))
        step = self._step(model, wrapper, [_Block(id(site_map.model), self, wrapper, dict(by_place), order)])
        assert step is not None
        batch = dict(inputs)
        if positions_from_mask and "attention_mask" in batch and "position_ids" not in batch:
            batch = forward_inputs(batch)  # left padding: positions from the mask, as the torch reads do
        # gradients follow the caller's mode, as in steer.sites.reader
        with _running(wrapper), _inputs_as_given(wrapper):
            with wrapper.trace(batch, use_cache=False, **self.trace_kwargs) as tracer:
                step(wrapper)
                if stop_early:
                    tracer.stop()  # everything is read: the rest of the pass would be wasted
        return {site: recorders[site].values[0] for site in wanted}
