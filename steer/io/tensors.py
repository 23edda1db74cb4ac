"""safetensors files with a string header: every tensor file steer writes or reads goes here.

One place for the atomic write and for turning a missing, corrupt or truncated file
into an error that says what to do (never pickle).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from steer.errors import SteerError
from steer.io.atomic import atomic_write


def write_tensors(path: str | Path, tensors: dict[str, torch.Tensor], header: dict[str, str]) -> Path:
    """Write CPU copies of `tensors` with `header` as safetensors metadata, atomically."""
    plain = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(plain, str(tmp), metadata=header))


def read_tensors(
    path: str | Path, *, error: type[SteerError] = SteerError, what: str = "tensor file", fix: str = ""
) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(header, tensors) of a safetensors file; `error(...)` naming `what` and `fix` if unreadable."""
    path = Path(path)
    suffix = f" {fix}" if fix else ""
    if not path.is_file():
        raise error(f"No {what} at {path}.{suffix}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise error(f"{path} is not a readable safetensors file (corrupt or truncated?): {exc}.{suffix}") from None
    return header, tensors


def read_header(path: str | Path) -> dict[str, str] | None:
    """The metadata of a safetensors file, or None when it cannot be read (callers decide the error)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except (SafetensorError, OSError, ValueError):
        return None
