"""One resolver for vector references and one check for multipliers.

A vector reference is what a user types wherever steer takes a vector: the CLI's
`--vector`, `steer chat`'s `/add`, `steer eval`, `steer.attach`, the server's
`"vector"` field. Its forms:

- `PATH` or `PATH:MULTIPLIER` (a file written by `steer generate` or imported);
- `library:NAME` or `library:NAME:MULTIPLIER` (a vector library entry, `steer.library`).

Every multiplier, from a reference, a flag, a library manifest or Python, goes through
`finite_multiplier`, so `:abc`, `:inf` and `:nan` are refused with the same message
everywhere instead of steering with garbage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steer.errors import SteerError

LIBRARY_PREFIX = "library:"


class MultiplierError(SteerError):
    """A multiplier that is not a finite number."""


def finite_multiplier(value: Any, where: str = "multiplier") -> float:
    """`value` as a finite float, or a MultiplierError that says how to write one."""
    if isinstance(value, bool):
        raise MultiplierError(f"{where}: {value!r} is not a number; give a finite number such as 2 or -1.5.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise MultiplierError(f"{where}: {value!r} is not a number; give a finite number such as 2 or -1.5.") from None
    if not math.isfinite(number):
        raise MultiplierError(f"{where}: {value!r} is not finite; give a finite number such as 2 or -1.5.")
    return number


@dataclass(frozen=True)
class VectorRef:
    """A parsed reference: the file to load, and the multiplier written after it (None when absent)."""

    path: Path
    multiplier: float | None
    text: str  # what the user wrote, for messages
    library_name: str | None = None


def parse_vector_ref(spec: str | Path) -> VectorRef:
    """Parse `PATH[:MULT]` or `library:NAME[:MULT]`; the file itself is not opened here."""
    text = str(spec)
    if isinstance(spec, Path):
        return VectorRef(spec, None, text)
    if text.startswith(LIBRARY_PREFIX):
        from steer import library  # local: the library module reads manifests from disk

        body = text[len(LIBRARY_PREFIX):]
        name, sep, tail = body.rpartition(":")
        if not sep:
            name, tail = body, ""
        multiplier = finite_multiplier(tail, f"{text!r}: the multiplier after the name") if sep else None
        return VectorRef(library.get(name).vector_path, multiplier, text, name)
    if Path(text).exists() or ":" not in text:
        return VectorRef(Path(text), None, text)
    head, _, tail = text.rpartition(":")
    multiplier = finite_multiplier(
        tail, f"{text!r}: the multiplier after the last ':' (write FILE or FILE:2.0)")
    return VectorRef(Path(head), multiplier, text)
