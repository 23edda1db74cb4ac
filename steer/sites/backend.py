"""How steer runs a model: one small interface, two implementations.

A backend does three things for the rest of steer:

- `intervene(model, interventions)`: a `with` block in which the interventions (anything
  with a `site` and `__call__(hidden, state)`: AddVector, AblateDirection, LM-Steer's,
  SAE and STA ones, recorders) act on every forward pass of `model` run in this context,
  each pass told where it is (`ForwardState`: prefill or decoding step, padded columns);
- `generate(model, inputs, **generate_kwargs)` and `forward(model, inputs)`: run the
  model so that the interventions of the active blocks act on it;
- `read(model, inputs, sites)`: the activations at `sites` for one forward pass.

Two backends:

- `"torch"` (`TorchBackend`, the default): plain torch hooks (`steer.sites.hooks`). They
  act inside a user's unmodified `model.generate` and cost nothing measurable per step.
- `"nnsight"` (`steer.sites.backends.nnsight.NnsightBackend`): the same interventions
  run inside nnsight's trace and generate, on a local model wrapped in nnsight or on an
  nnsight model of the user's own (remote on NDIF with `NnsightBackend(remote=True)`).
  Generation goes through `steer.sites.backend.generate(model, ...)`, which steer's own
  generation paths call; a plain `model.generate` inside an nnsight block is refused at
  its first forward pass rather than run unsteered.

`generate(model, inputs, ...)` and `forward(model, inputs, ...)` here run `model` with
whatever is active on it in this context: nnsight blocks through nnsight, torch blocks
through their hooks (which also act inside nnsight's run).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from steer.errors import SteerError
from steer.sites.resolve import Site, SiteMap, unwrap_model
from steer.sites.table import ArchTable
from steer.sites.tracking import ForwardState

BACKEND_NAMES: tuple[str, ...] = ("torch", "nnsight")

__all__ = [
    "BACKEND_NAMES", "Backend", "TorchBackend", "default_backend", "forward", "generate", "get_backend", "intervene",
    "read", "reading_backend", "set_default_backend",
]


@runtime_checkable
class Backend(Protocol):
    """What steer needs from a way of running a model; see the module docstring."""

    name: str

    def intervene(self, model: Any, interventions: Sequence[Any], arch: ArchTable | None = None,
                  tokenizer: Any | None = None) -> AbstractContextManager[ForwardState]:
        """The interventions act on every forward pass of `model` in this context inside the block."""
        ...

    def generate(self, model: Any, inputs: Mapping[str, torch.Tensor], **generate_kwargs: Any) -> torch.Tensor:
        """`generate` on `inputs` (input_ids, attention_mask), steered by this context's active blocks."""
        ...

    def forward(self, model: Any, inputs: Mapping[str, torch.Tensor], **kwargs: Any) -> Any:
        """One forward pass on `inputs`, steered by this context's active blocks."""
        ...

    def read(self, model: Any, inputs: Mapping[str, torch.Tensor], sites: Sequence[Site | str],
             arch: ArchTable | None = None, tokenizer: Any | None = None,
             stop_early: bool = True, *, positions_from_mask: bool = True) -> dict[Site, torch.Tensor]:
        """[batch, tokens, dim] activations at `sites` for one forward pass over `inputs`.

        `stop_early`: end the pass once the deepest site is read. `positions_from_mask`:
        a batch with an attention mask and no position_ids is taken as left-padded and
        gets positions from its mask; False runs `inputs` exactly as given (what
        `steer.sites.reader`, which builds its own inputs, asks for). Blocks active on
        `model` in this context act on the pass, as on any other.
        """
        ...


def _call_inputs(inputs: Mapping[str, torch.Tensor], **kwargs: Any) -> dict[str, Any]:
    return {**dict(inputs), **kwargs}


class TorchBackend:
    """Plain torch hooks on the model's modules (`steer.sites.hooks`): the default."""

    name = "torch"

    def intervene(self, model: Any, interventions: Sequence[Any], arch: ArchTable | None = None,
                  tokenizer: Any | None = None) -> AbstractContextManager[ForwardState]:
        from steer.sites.hooks import intervene

        return intervene(unwrap_model(model), interventions, arch)

    def generate(self, model: Any, inputs: Mapping[str, torch.Tensor], **generate_kwargs: Any) -> torch.Tensor:
        return unwrap_model(model).generate(**_call_inputs(inputs, **generate_kwargs))

    def forward(self, model: Any, inputs: Mapping[str, torch.Tensor], **kwargs: Any) -> Any:
        return unwrap_model(model)(**_call_inputs(inputs, **kwargs))

    def read(self, model: Any, inputs: Mapping[str, torch.Tensor], sites: Sequence[Site | str],
             arch: ArchTable | None = None, tokenizer: Any | None = None,
             stop_early: bool = True, *, positions_from_mask: bool = True) -> dict[Site, torch.Tensor]:
        from steer.prompts import forward_inputs
        from steer.sites.reader import read_forward

        batch = dict(inputs)
        if positions_from_mask and "attention_mask" in batch and "position_ids" not in batch:
            batch = forward_inputs(batch)  # left padding: positions from the mask
        # gradients follow the caller's mode (torch.no_grad() / inference_mode() when only reading)
        return read_forward(unwrap_model(model), batch, sites, stop_early=stop_early, arch=arch)

    def __repr__(self) -> str:
        return "TorchBackend()"


_TORCH = TorchBackend()

# The backend a model uses when a caller names none (the CLI's --backend sets it at load).
_DEFAULTS: weakref.WeakKeyDictionary[nn.Module, Backend] = weakref.WeakKeyDictionary()
_DEFAULTS_LOCK = threading.Lock()


def get_backend(backend: str | Backend | None = None, model: Any | None = None) -> Backend:
    """A backend by name ("torch", "nnsight") or as given; None: `model`'s default, else torch."""
    if backend is None:
        return default_backend(model) if model is not None else _TORCH
    if isinstance(backend, str):
        name = backend.strip().lower()
        if name == "torch":
            return _TORCH
        if name == "nnsight":
            from steer.sites.backends.nnsight import NnsightBackend

            return NnsightBackend()
        raise SteerError(f"Unknown backend {backend!r}; use one of {', '.join(BACKEND_NAMES)}.")
    if isinstance(backend, Backend):
        return backend
    raise SteerError(f"A backend is a name ({', '.join(BACKEND_NAMES)}) or a Backend object, "
                     f"not {type(backend).__name__}.")


def set_default_backend(model: Any, backend: str | Backend | None) -> Backend:
    """Make `backend` the one `model` uses when a caller names none (e.g. `steer.steering`)."""
    chosen = get_backend(backend)
    with _DEFAULTS_LOCK:
        _DEFAULTS[unwrap_model(model)] = chosen
    return chosen


def default_backend(model: Any) -> Backend:
    """The backend set for `model` with `set_default_backend`, else the torch backend."""
    try:
        plain = unwrap_model(model)
    except Exception:  # noqa: BLE001 - anything not a model simply has no default
        return _TORCH
    with _DEFAULTS_LOCK:
        return _DEFAULTS.get(plain, _TORCH)


def _runner(model: Any) -> Backend:
    """The backend that must run `model` in this context: nnsight when an nnsight block is active."""
    from steer.sites.backends.nnsight import active_backend  # no nnsight import unless it is in use

    nnsight_backend = active_backend(model)
    return nnsight_backend if nnsight_backend is not None else _TORCH


def generate(model: Any, inputs: Mapping[str, torch.Tensor] | None = None, **generate_kwargs: Any) -> torch.Tensor:
    """`model.generate(**inputs, **generate_kwargs)` with every steering block active on `model` here.

    Use this (not `model.generate`) where a block may use the nnsight backend; with torch
    blocks only it is exactly `model.generate`.
    """
    return _runner(model).generate(model, inputs or {}, **generate_kwargs)


def reading_backend(model: Any) -> Backend | None:
    """The backend reads of `model` must go through in this context, when it is not torch hooks.

    `steer.sites.reader.read_forward` (the one reading path) asks this first: inside an
    nnsight block (steering, or `make_vector(..., backend="nnsight")`) reads go through
    nnsight, where a plain forward pass would be refused.
    """
    from steer.sites.backends.nnsight import active_backend

    return active_backend(model)


def read(model: Any, inputs: Mapping[str, torch.Tensor], sites: Sequence[Site | str], *,
         backend: str | Backend | None = None, arch: ArchTable | None = None, tokenizer: Any | None = None,
         stop_early: bool = True) -> dict[Site, torch.Tensor]:
    """Activations at `sites` for one pass, through `backend` (None: this context's, else `model`'s default)."""
    chosen = get_backend(backend) if backend is not None else (reading_backend(model) or default_backend(model))
    return chosen.read(model, inputs, sites, arch, tokenizer, stop_early)


def forward(model: Any, inputs: Mapping[str, torch.Tensor] | None = None, **kwargs: Any) -> Any:
    """`model(**inputs, **kwargs)` with every steering block active on `model` here."""
    return _runner(model).forward(model, inputs or {}, **kwargs)


@contextmanager
def intervene(model: Any, interventions: Sequence[Any], backend: str | Backend | None = None,
              arch: ArchTable | None = None, tokenizer: Any | None = None) -> Iterator[ForwardState]:
    """`backend.intervene(...)` for a backend given by name, object, or `model`'s default."""
    with get_backend(backend, model).intervene(model, interventions, arch, tokenizer) as state:
        yield state
