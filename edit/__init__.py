"""Knowledge editing as permanent, rollback-able weight writes through steer's site layer.

    from steer.edit import Editor
    editor = Editor(model, tokenizer, "rome")
    metrics, model = editor.edit(prompts="Who wrote Hamlet?", target_new="Marlowe", subject="Hamlet")

Methods: rome, r_rome, memit, emmet, alphaedit, pmet, ft_l, ft_m, lora, kn, dinm (weight
deltas), grace and wise (adapters at a layer, no weight change) and ike (a context in front
of prompts, `Editor.generate` / `Editor.prompt_with_edits`); see `edit_methods()`.
EasyEdit's API is `steer.edit.easyedit`. This folder installs as `steer.edit`; never
import it as top-level `edit`. Names load lazily.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "Editor": "steer.edit.editor",
    "AppliedEdit": "steer.edit.editor",
    "EditRequest": "steer.edit.requests",
    "Probe": "steer.edit.requests",
    "build_requests": "steer.edit.requests",
    "load_requests": "steer.edit.requests",
    "edit_methods": "steer.edit.methods",
    "load_deltas": "steer.edit.deltas",
    "EditError": "steer.edit.errors",
    "ValueCache": "steer.edit.value",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'steer.edit' has no attribute {name!r}")
