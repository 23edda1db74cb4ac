"""`steer serve`: an OpenAI-compatible HTTP server where every request carries its own steering.

    from steer.serve import create_app, TorchEngine
    app = create_app(TorchEngine(model, tokenizer))   # an ASGI app; run it with uvicorn

Layers: `engine` (batched steered generation behind a small interface), `batcher`
(dynamic batching on an asyncio loop), `protocol` (OpenAI request parsing and errors),
`app` (Starlette routes, streaming, the playground page).
"""

from __future__ import annotations

from steer.serve.engine import DecodingChoice, Engine, RowRequest, RowSteer, Sampling, TorchEngine

__all__ = ["DecodingChoice", "Engine", "RowRequest", "RowSteer", "Sampling", "TorchEngine", "create_app"]


def __getattr__(name: str):  # the app pulls in Starlette; import it only when asked for
    if name == "create_app":
        from steer.serve.app import create_app

        return create_app
    raise AttributeError(name)
