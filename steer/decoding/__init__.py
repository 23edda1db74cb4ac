"""Contrastive decoding modes (DoLa, DeCo) run inside the model's own forward passes.

    from steer.decoding import decoding
    with decoding(model, "dola", layers="high"):
        model.generate(**batch)

Modes are registered in `decoding_modes()`; the CLI's `--decoding` choices come from it.
"""

from __future__ import annotations

from steer.decoding.base import DecodingMode, DecodingTrace, decoding, resolve_hparams
from steer.decoding.deco import Deco, DecoHParams
from steer.decoding.dola import Dola, DolaHParams
from steer.registry import Registry

PLAIN = "plain"  # no contrastive mode: the model's own logits
_registry: Registry[DecodingMode] | None = None


def decoding_modes() -> Registry[DecodingMode]:
    global _registry
    if _registry is None:
        registry: Registry[DecodingMode] = Registry("decoding mode")
        registry.register("dola", DecodingMode("dola", DolaHParams, Dola,
                                               "DoLa: contrast the final layer with a premature layer"))
        registry.register("deco", DecodingMode("deco", DecoHParams, Deco,
                                               "DeCo: correct the final layer with an anchor early layer"))
        _registry = registry
    return _registry


__all__ = ["PLAIN", "Deco", "DecoHParams", "DecodingMode", "DecodingTrace", "Dola", "DolaHParams",
           "decoding", "decoding_modes", "resolve_hparams"]
