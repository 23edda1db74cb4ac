"""Steering for an existing chat loop: attach once, change vectors between turns, detach.

    steerer = steer.attach(model, tokenizer)
    steerer.add("honesty.safetensors", 2.0)          # a file, a SteeringVector or a Steer
    model.generate(**inputs, streamer=streamer)      # the loop's own call, now steered
    steerer.set_multiplier("honesty", -1.0)          # next turn: re-enters the hooks
    steerer.detach()                                 # model exactly unsteered again

The handle owns one `steer.application.steering` context. Every change (add, remove,
multiplier) enters a new context with the new steers and then closes the old one, so
`model.generate` itself is never patched and no module is swapped: the model only
carries torch hooks while something is attached. Change steering between turns, not
while a generation thread is running.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from steer.application import Steer, SteerSpec, as_steer, steering
from steer.errors import SteerError
from steer.sites.hooks import PositionPolicy
from steer.sites.table import ArchTable
from steer.vector import SteeringVector

VectorRef = str | Path | SteeringVector | Steer | SteerSpec
RowMultipliers = Sequence[float] | Mapping[str | int, Sequence[float]]


@dataclass
class AttachedVector:
    """One steer in the handle: its name, what was loaded, and its current multiplier."""

    name: str
    spec: Any  # a Steer, or another SteerSpec with a `values` strength (LM-Steer)
    multiplier: float
    source: str

    def at(self, multiplier: float | Sequence[float]) -> SteerSpec:
        """This steer at `multiplier` (one number, or one per batch row for vectors)."""
        if isinstance(self.spec, Steer):
            return replace(self.spec, multiplier=multiplier)
        if not isinstance(multiplier, (int, float)):
            raise SteerError(f"{self.name!r} is not a steering vector; per-row multipliers work with vectors only.")
        if hasattr(self.spec, "values"):  # LM-Steer: the multiplier is its steer value
            return replace(self.spec, values=float(multiplier))
        return self.spec


class Steerer:
    """Steering attached to a plain Hugging Face model; see the module docstring."""

    def __init__(self, model: nn.Module, tokenizer: Any | None = None, *, positions: PositionPolicy = "all",
                 arch: ArchTable | None = None, backend: str | Any | None = None) -> None:
        self.model, self.tokenizer, self.positions, self.arch = model, tokenizer, positions, arch
        # "torch" (hooks: the loop's own model.generate is steered) or "nnsight" (generate with
        # steerer.generate(...) or steer.sites.backend.generate); None: the model's default
        self.backend = backend
        self._entries: list[AttachedVector] = []
        self._rows: RowMultipliers | None = None
        self._hooks: ExitStack | None = None
        self._detached = False

    # ---- what is attached -------------------------------------------------------------
    @property
    def vectors(self) -> list[AttachedVector]:
        return list(self._entries)

    @property
    def active(self) -> bool:
        """Whether hooks are on the model right now."""
        return self._hooks is not None

    def index_of(self, key: str | int) -> int:
        """The position of a vector named `key`, or `key` itself as an index (also '0', '1' ...)."""
        if isinstance(key, str) and key.strip().lstrip("-").isdigit():
            key = int(key)
        if isinstance(key, int):
            if -len(self._entries) <= key < len(self._entries):
                return key % len(self._entries)
            raise SteerError(f"No vector at index {key}; {len(self._entries)} attached (see list()).")
        for index, entry in enumerate(self._entries):
            if entry.name == key:
                return index
        names = ", ".join(e.name for e in self._entries) or "none"
        raise SteerError(f"No vector named {key!r}; attached: {names}.")

    # ---- changes between turns --------------------------------------------------------
    def add(self, ref: VectorRef, multiplier: float | None = None, *, name: str | None = None,
            source: str | None = None) -> str:
        """Attach a vector (file path, SteeringVector, Steer or other SteerSpec); returns its name."""
        self._check_attached()
        spec, loaded_from = self._load(ref, 1.0 if multiplier is None else multiplier)
        source = source or loaded_from
        if multiplier is None:
            multiplier = float(getattr(spec, "multiplier", getattr(spec, "values", 1.0)))
        entry = AttachedVector(self._unique(name or _default_name(ref, spec)), spec, float(multiplier), source)
        self._apply([*self._entries, entry])
        return entry.name

    def remove(self, key: str | int) -> AttachedVector:
        self._check_attached()
        index = self.index_of(key)
        entries = list(self._entries)
        removed = entries.pop(index)
        self._apply(entries)
        return removed

    def set_multiplier(self, key: str | int, multiplier: float) -> None:
        self._check_attached()
        index = self.index_of(key)
        entries = list(self._entries)
        entries[index] = replace(entries[index], multiplier=float(multiplier))
        self._apply(entries)

    def clear(self) -> None:
        """Remove every vector; the model is unsteered (no hooks) until the next add."""
        self._check_attached()
        self._apply([])

    def detach(self) -> None:
        """Remove every hook for good; the model is exactly as before `attach`."""
        self._close()
        self._entries, self._rows, self._detached = [], None, True

    def __enter__(self) -> Steerer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    # ---- per-request multipliers and comparisons ---------------------------------------
    @contextmanager
    def per_row(self, multipliers: RowMultipliers) -> Iterator[Steerer]:
        """Different multipliers for the rows of one batch, inside the block.

        A list scales every vector per row (row i gets multiplier x list[i]: 0 unsteers
        that row, -1 flips it); a mapping {name or index: [one per row]} sets those
        vectors' multipliers per row and leaves the others at their own.
        """
        self._check_attached()
        if self._rows is not None:
            raise SteerError("per_row blocks do not nest.")
        self._rows = multipliers
        try:
            self._apply(self._entries)
            yield self
        finally:
            self._rows = None
            self._apply(self._entries)

    @contextmanager
    def unsteered(self) -> Iterator[Steerer]:
        """The model with no hooks inside the block (e.g. to show the unsteered reply); restored after."""
        self._check_attached()
        self._close()
        try:
            yield self
        finally:
            self._apply(self._entries)

    def generate(self, inputs: Mapping[str, Any] | None = None, *,
                 multipliers_per_row: RowMultipliers | None = None, **kwargs: Any) -> Any:
        """`model.generate(**inputs, **kwargs)`, with per-row multipliers when given (any backend)."""
        from steer.sites.backend import generate

        arguments = {**(dict(inputs) if inputs is not None else {}), **kwargs}
        if multipliers_per_row is None:
            return generate(self.model, arguments)
        rows = _rows_of(arguments)
        for values in _row_lists(multipliers_per_row):
            if rows is not None and len(values) != rows:
                raise SteerError(f"{len(values)} per-row multipliers for a batch of {rows} prompts; give one per prompt.")
        with self.per_row(multipliers_per_row):
            return generate(self.model, arguments)

    # ---- internals --------------------------------------------------------------------
    def _check_attached(self) -> None:
        if self._detached:
            raise SteerError("This steerer was detached; call steer.attach(model, tokenizer) again.")

    def _load(self, ref: VectorRef, multiplier: float) -> tuple[Any, str]:
        if isinstance(ref, (str, Path)):
            from steer.methods.artifacts import load_steer

            loaded = load_steer(ref, multiplier, self.positions)
            if not hasattr(loaded, "interventions"):
                raise SteerError(f"{ref} is a prompt steer: it changes the prompt, not activations; "
                                 "put its text in your system prompt instead.")
            return loaded, str(ref)
        if isinstance(ref, SteeringVector):
            return Steer(ref, multiplier, self.positions), "SteeringVector"
        return as_steer(ref), type(ref).__name__

    def _unique(self, name: str) -> str:
        taken = {e.name for e in self._entries}
        candidate, n = name, 2
        while candidate in taken:
            candidate, n = f"{name}-{n}", n + 1
        return candidate

    def _specs(self, entries: Sequence[AttachedVector]) -> list[SteerSpec]:
        rows = self._rows
        if rows is None:
            return [e.at(e.multiplier) for e in entries]
        if isinstance(rows, Mapping):
            chosen = {self._index_in(entries, k): [float(v) for v in values] for k, values in rows.items()}
            return [e.at(chosen[i]) if i in chosen else e.at(e.multiplier) for i, e in enumerate(entries)]
        return [e.at([e.multiplier * float(r) for r in rows]) for e in entries]

    def _index_in(self, entries: Sequence[AttachedVector], key: str | int) -> int:
        saved, self._entries = self._entries, list(entries)
        try:
            return self.index_of(key)
        finally:
            self._entries = saved

    def _apply(self, entries: list[AttachedVector]) -> None:
        """Install hooks for `entries`, then drop the old ones: a bad vector leaves the old steering in place."""
        fresh: ExitStack | None = None
        if entries:
            fresh = ExitStack()
            try:
                fresh.enter_context(steering(self.model, *self._specs(entries), tokenizer=self.tokenizer, arch=self.arch,
                                             backend=self.backend))
            except BaseException:
                fresh.close()
                raise
        self._close()
        self._hooks, self._entries = fresh, entries

    def _close(self) -> None:
        hooks, self._hooks = self._hooks, None
        if hooks is not None:
            hooks.close()


def attach(model: nn.Module, tokenizer: Any | None = None, *vectors: VectorRef | tuple[VectorRef, float],
           positions: PositionPolicy = "all", arch: ArchTable | None = None,
           backend: str | Any | None = None) -> Steerer:
    """A `Steerer` on `model`, with `vectors` (refs or (ref, multiplier) pairs) already added.

    `backend="nnsight"` steers through nnsight; then generate with `steerer.generate(...)`.
    """
    steerer = Steerer(model, tokenizer, positions=positions, arch=arch, backend=backend)
    for item in vectors:
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], (int, float)):
            steerer.add(item[0], float(item[1]))
        else:
            steerer.add(item)  # type: ignore[arg-type]
    return steerer


def _default_name(ref: VectorRef, spec: Any) -> str:
    if isinstance(ref, (str, Path)):
        return Path(ref).stem or str(ref)
    vector = getattr(spec, "vector", None) or getattr(spec, "steer", None)
    meta = getattr(vector, "meta", None)
    return str(getattr(meta, "method", None) or "vector")


def _rows_of(arguments: Mapping[str, Any]) -> int | None:
    for key in ("input_ids", "inputs_embeds", "inputs"):
        value = arguments.get(key)
        if value is not None and hasattr(value, "shape"):
            return int(value.shape[0])
    return None


def _row_lists(rows: RowMultipliers) -> list[Sequence[float]]:
    return list(rows.values()) if isinstance(rows, Mapping) else [rows]
