"""steer: a steering-first inference runtime.

    import steer
    model, tokenizer = steer.load_model()                       # bundled SmolLM2-135M-Instruct
    vector = steer.SteeringVector.load("sycophancy.safetensors")
    with steer.steering(model, (vector, 2.0), tokenizer=tokenizer):
        model.generate(...)                                      # steered on every token

Names are imported lazily so `import steer` stays cheap and has no side effects.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from steer._version import __version__

_EXPORTS = {
    "load_model": "steer.models.loading",
    "LoadedModel": "steer.models.loading",
    "DEFAULT_MODEL_ID": "steer.models.loading",
    "SteeringVector": "steer.vector",
    "VectorMeta": "steer.vector",
    "steering": "steer.application",
    "Steer": "steer.application",
    "Site": "steer.sites.resolve",
    "SiteMap": "steer.sites.resolve",
    "record": "steer.sites.hooks",
    "intervene": "steer.sites.hooks",
    "in_this_context": "steer.sites.hooks",
    "GenerationSettings": "steer.generation",
    "generate_texts": "steer.generation",
    "make_vector": "steer.api",
    "SteerError": "steer.errors",
    "attach": "steer.chat", "Steerer": "steer.chat",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'steer' has no attribute {name!r}")
