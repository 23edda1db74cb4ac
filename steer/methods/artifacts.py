"""Load whatever `steer generate` wrote, as something `steer apply` can use.

- `*.json`: a prompt steer (steer.methods.prompt), applied to the inputs;
- safetensors with `steer.kind: lm_steer` in the header: an LM-Steer transform;
- any other safetensors: a SteeringVector (add, or ablate when its metadata says so).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from steer.application import Steer
from steer.errors import ConfigError
from steer.io.tensors import read_header
from steer.sites.hooks import PositionPolicy
from steer.vector import SteeringVector


def file_kind(path: str | Path) -> str:
    path = Path(path)
    if path.suffix.lower() == ".json":
        return "prompt_steer"
    header = read_header(path)
    # unreadable: SteeringVector.load gives the precise error
    return "vector" if header is None else header.get("steer.kind", "vector")


def load_steer(path: str | Path, multiplier: float, positions: PositionPolicy = "all") -> Any:
    """A Steer, an LMSteerApplication, or a PromptSteer (which has no strength: multiplier must be 1)."""
    kind = file_kind(path)
    if kind == "prompt_steer":
        from steer.methods.prompt import PromptSteer

        if multiplier != 1.0:
            raise ConfigError(f"{path} is a prompt steer, which has no strength; drop ':{multiplier:g}'.")
        return PromptSteer.load(path)
    if kind == "lm_steer":
        from steer.methods.lm_steer import LMSteer

        return LMSteer.load(path).at(multiplier, positions)
    return Steer(SteeringVector.load(path), multiplier, positions)


def describe(artifact: Any) -> str:
    """One line for `steer generate` to print."""
    if isinstance(artifact, SteeringVector):
        norms = ", ".join(f"{s} |v|={artifact.directions[s].norm():.3f}" for s in artifact.sites)
        operation = artifact.meta.extra.get("operation", "add")
        return f"{artifact.meta.method}, {operation}, {artifact.meta.extra.get('items', '?')} items; {norms}"
    text = getattr(artifact, "text", None)
    if text is not None:
        return f"prompt steer ({artifact.mode}): {text!r}"
    extra = getattr(artifact, "meta").extra
    return (f"lm_steer, {artifact.num_steers} steer(s), rank {artifact.projector1.shape[-1]}, "
            f"trained in {extra.get('train_seconds')} s, loss {extra.get('first_loss', 0):.3f} -> {extra.get('last_loss', 0):.3f}")
