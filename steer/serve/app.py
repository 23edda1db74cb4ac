"""The ASGI app of `steer serve`: OpenAI-compatible routes, SSE streaming, vectors, the playground.

Routes:
- `POST /v1/chat/completions`, `POST /v1/completions` (stream or not), `GET /v1/models`;
- `GET /v1/vectors` (library, start-up and uploaded vectors), `POST /v1/vectors?name=NAME`
  (a safetensors body, size-limited, validated against the model, never unpickled);
- `GET /health` (batching counters), `GET /` (the playground page) and `/static/...`.

Built on Starlette (with uvicorn to run it): the ASGI toolkit FastAPI is made of, without
FastAPI's pydantic request validation, whose automatic 422 answers do not have the
shape OpenAI's clients read; every request here is checked by `steer.serve.protocol`,
which answers in OpenAI's error format with a message that says what to fix.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from steer.errors import SteerError
from steer.serve.batcher import Batcher, Ticket
from steer.serve.engine import Engine, RowRequest
from steer.serve.protocol import ApiError, Limits, ParsedRequest, VectorStore, parse_request
from steer.vector import SteeringVector


def static_folder() -> Path:
    return Path(str(resources.files("steer.serve").joinpath("static")))


def _error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


class _TextStream:
    """Incremental detokenization of one row: new text per token, holding back split characters and stops."""

    def __init__(self, tokenizer: Any, stop: list[str]) -> None:
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.sent = ""
        self.stop = stop
        self.stopped = False

    def push(self, token: int) -> str:
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # a character split across tokens: wait for the rest
            return ""
        for stop in self.stop:
            at = text.find(stop)
            if at != -1:
                text, self.stopped = text[:at], True
        # hold back a tail that could be the start of a stop string
        hold = 0
        if not self.stopped:
            for stop in self.stop:
                for size in range(min(len(stop) - 1, len(text)), 0, -1):
                    if text.endswith(stop[:size]):
                        hold = max(hold, size)
                        break
        ready = text[: len(text) - hold] if hold else text
        delta = ready[len(self.sent):] if ready.startswith(self.sent) else ""
        self.sent = ready if ready.startswith(self.sent) else self.sent
        return delta

    def flush(self) -> str:
        """Text held back at the end (a partial stop string that never completed)."""
        if self.stopped or not self.tokens:
            return ""
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        delta = text[len(self.sent):] if text.startswith(self.sent) else ""
        self.sent += delta
        return delta


class ServerState:
    """Everything the routes share: engine, batcher, vectors, limits."""

    def __init__(self, engine: Engine, limits: Limits, batcher: Batcher) -> None:
        self.engine = engine
        self.limits = limits
        self.batcher = batcher
        self.vectors = VectorStore(engine)
        self.created = int(time.time())


async def _json_body(request: Request) -> Any:
    try:
        raw = await request.body()
    except ClientDisconnect:
        raise ApiError(400, "The client went away before the request body arrived.") from None
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"The request body is not valid JSON ({exc}); send a JSON object with "
                            "Content-Type: application/json.", code="invalid_json") from None


def _usage(parsed: ParsedRequest, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": len(parsed.prompt_ids), "completion_tokens": completion_tokens,
            "total_tokens": len(parsed.prompt_ids) + completion_tokens}


def _finish_reason(reason: str | None, text: _TextStream) -> str:
    if text.stopped or reason == "stop":
        return "stop"
    return "length" if reason == "length" else "stop"


async def _tokens(ticket: Ticket, state: ServerState) -> AsyncIterator[tuple[int | None, str | None]]:
    while True:
        token, finish = await ticket.queue.get()
        if finish == "error":
            raise ApiError(500, ticket.error or "generation failed", type="server_error", code="generation_failed")
        yield token, finish
        if finish is not None:
            return


def create_app(
    engine: Engine,
    *,
    vectors: dict[str, SteeringVector | tuple[SteeringVector, float]] | None = None,
    limits: Limits | None = None,
    max_batch: int = 32,
    batch_window_s: float = 0.02,
) -> Starlette:
    """The server as an ASGI app; run it with `uvicorn.run(app)` (or `steer serve`).

    `engine` is any `steer.serve.Engine`, e.g. `TorchEngine(model, tokenizer)`; `vectors`
    are named vectors requests may use, optionally with the multiplier a request that
    gives none gets (checked against the engine here).
    """
    limits = limits or Limits()
    state = ServerState(engine, limits, Batcher(engine, max_batch=max_batch, window_s=batch_window_s))
    for name, item in (vectors or {}).items():
        vector, default = item if isinstance(item, tuple) else (item, None)
        try:
            state.vectors.register(name, vector, "start-up file", default)
        except ApiError as exc:
            raise SteerError(exc.message) from None

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await state.batcher.start()
        try:
            yield
        finally:
            await state.batcher.stop()

    async def completions(request: Request, kind: str) -> Response:
        try:
            parsed = parse_request(kind, await _json_body(request), engine, state.vectors, limits)  # type: ignore[arg-type]
        except ApiError as error:
            return _error_response(error)
        stop_ids = frozenset() if parsed.ignore_eos else engine.stop_token_ids
        ticket = state.batcher.submit(RowRequest(parsed.prompt_ids, parsed.sampling, parsed.steers, parsed.decoding,
                                                 stop_ids))
        ident = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        # The body is read, so the next ASGI message is the disconnect: watch for it and free the row
        watcher = asyncio.get_running_loop().create_task(_free_on_disconnect(request, ticket))
        if parsed.stream:
            return StreamingResponse(_stream(ticket, parsed, ident, watcher), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            return await _complete(ticket, parsed, ident)
        finally:
            watcher.cancel()

    def _chunk(parsed: ParsedRequest, ident: str, created: int, text: str | None, finish: str | None,
               first: bool = False) -> dict[str, Any]:
        if parsed.kind == "chat":
            delta: dict[str, Any] = {}
            if first:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            return {"id": ident, "object": "chat.completion.chunk", "created": created, "model": parsed.model,
                    "choices": [choice]}
        return {"id": ident, "object": "text_completion", "created": created, "model": parsed.model,
                "choices": [{"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}]}

    async def _stream(ticket: Ticket, parsed: ParsedRequest, ident: str,
                      watcher: asyncio.Task[None]) -> AsyncIterator[str]:
        created = int(time.time())
        text = _TextStream(engine.tokenizer, parsed.stop)
        count = 0
        try:
            if parsed.kind == "chat":
                yield _sse(_chunk(parsed, ident, created, "", None, first=True))
            reason = None
            async for token, finish in _tokens(ticket, state):
                if token is not None:
                    count += 1
                    delta = text.push(token)
                    if delta:
                        yield _sse(_chunk(parsed, ident, created, delta, None))
                    if text.stopped:
                        ticket.cancel()  # a stop string ended it: free the row
                        break
                reason = finish
            tail = text.flush()
            if tail:
                yield _sse(_chunk(parsed, ident, created, tail, None))
            yield _sse(_chunk(parsed, ident, created, None if parsed.kind == "chat" else "",
                              _finish_reason(reason, text)))
            if parsed.include_usage:
                usage = {"id": ident, "object": "chat.completion.chunk" if parsed.kind == "chat" else "text_completion",
                         "created": created, "model": parsed.model, "choices": [], "usage": _usage(parsed, count)}
                yield _sse(usage)
            yield "data: [DONE]\n\n"
        except ApiError as error:
            yield _sse(error.body())
            yield "data: [DONE]\n\n"
        finally:
            ticket.cancel()  # the client disconnected (the generator is closed) or we are done: free the row
            watcher.cancel()

    async def _complete(ticket: Ticket, parsed: ParsedRequest, ident: str) -> Response:
        text = _TextStream(engine.tokenizer, parsed.stop)
        count, reason = 0, None
        try:
            while True:
                token, finish = await ticket.queue.get()
                if finish == "cancelled":
                    return Response(status_code=499)  # the client went away; nobody reads this
                if finish == "error":
                    return _error_response(ApiError(500, ticket.error or "generation failed", type="server_error",
                                                    code="generation_failed"))
                if token is not None:
                    count += 1
                    text.push(token)
                    if text.stopped:
                        break
                if finish is not None:
                    reason = finish
                    break
            content = text.sent + text.flush()
        finally:
            ticket.cancel()
        created = int(time.time())
        finish_reason = _finish_reason(reason, text)
        steer_info = {"steer": parsed.steer_echo} if parsed.steer_echo else {}
        if parsed.kind == "chat":
            body = {"id": ident, "object": "chat.completion", "created": created, "model": parsed.model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                 "finish_reason": finish_reason, "logprobs": None}],
                    "usage": _usage(parsed, count), **steer_info}
        else:
            body = {"id": ident, "object": "text_completion", "created": created, "model": parsed.model,
                    "choices": [{"index": 0, "text": content, "finish_reason": finish_reason, "logprobs": None}],
                    "usage": _usage(parsed, count), **steer_info}
        return JSONResponse(body)

    async def chat_completions(request: Request) -> Response:
        return await completions(request, "chat")

    async def text_completions(request: Request) -> Response:
        return await completions(request, "completion")

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": engine.model_name, "object": "model", "created": state.created, "owned_by": "steer"}]})

    async def list_vectors(request: Request) -> Response:
        from steer import library

        data = []
        for entry in library.entries():
            low, high = entry.multiplier_range
            data.append({"id": f"library:{entry.name}", "object": "vector", "source": "library",
                         "concept": str(entry.manifest.get("concept", "")), "model": str(entry.manifest.get("model")),
                         "recommended_multiplier": entry.recommended_multiplier, "multiplier_range": [low, high],
                         "layers": entry.manifest.get("layers")})
        for name, item in sorted(state.vectors.named.items()):
            data.append({"id": name, "object": "vector", "source": item.source, "model": item.vector.meta.model_id,
                         "recommended_multiplier": item.default_multiplier if item.default_multiplier is not None
                         else 1.0, "multiplier_range": [-4.0, 4.0],
                         "layers": item.vector.layers})
        return JSONResponse({"object": "list", "served_model": engine.model_name, "data": data})

    async def upload_vector(request: Request) -> Response:
        name = request.query_params.get("name", "")
        if not name:
            return _error_response(ApiError(400, "Name the vector: POST /v1/vectors?name=NAME with the safetensors "
                                                 "file (written by `steer generate`) as the body.", param="name",
                                            code="missing_name"))
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limits.max_upload_bytes:
            return _error_response(_too_large(limits))
        with tempfile.TemporaryDirectory(prefix="steer-upload-") as folder:
            path = Path(folder) / "vector.safetensors"
            size = 0
            try:
                with path.open("wb") as handle:
                    async for chunk in request.stream():
                        size += len(chunk)
                        if size > limits.max_upload_bytes:
                            return _error_response(_too_large(limits))
                        handle.write(chunk)
            except ClientDisconnect:
                return Response(status_code=499)
            if size == 0:
                return _error_response(ApiError(400, "The body is empty; send the vector's safetensors file as the "
                                                     "request body.", param="file", code="invalid_vector_file"))
            try:
                vector = SteeringVector.load(path)  # safetensors only: never unpickled
            except SteerError as exc:
                message = str(exc).replace(str(path), "the uploaded file")
                return _error_response(ApiError(400, f"{message} Upload a steering vector file written by "
                                                     "`steer generate` (safetensors).", param="file",
                                                code="invalid_vector_file"))
        try:
            entry = state.vectors.register(name, vector, "upload")
        except ApiError as error:
            return _error_response(error)
        return JSONResponse({"id": name, "object": "vector", "source": entry.source,
                             "sites": [str(s) for s in vector.sites], "hidden_size": vector.meta.hidden_size,
                             "model": vector.meta.model_id}, status_code=201)

    async def health(request: Request) -> Response:
        stats = state.batcher.stats
        return JSONResponse({"status": "ok", "model": engine.model_name, "queued": state.batcher.queued,
                             "running_rows": stats.running_rows, "batches": stats.batches, "rows": stats.rows,
                             "largest_batch": stats.largest_batch, "cancelled_rows": stats.cancelled_rows,
                             "generated_tokens": stats.generated_tokens, "busy_s": round(stats.busy_s, 3)})

    async def playground(request: Request) -> Response:
        return FileResponse(static_folder() / "index.html", media_type="text/html")

    async def not_found(request: Request, exc: Exception) -> Response:
        return _error_response(ApiError(404, f"No route {request.method} {request.url.path}; see GET /v1/models, "
                                             "POST /v1/chat/completions, POST /v1/completions, /v1/vectors.",
                                        code="not_found"))

    async def wrong_method(request: Request, exc: Exception) -> Response:
        return _error_response(ApiError(405, f"{request.method} is not allowed on {request.url.path}.",
                                        code="method_not_allowed"))

    routes = [
        Route("/", playground, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", text_completions, methods=["POST"]),
        Route("/v1/vectors", list_vectors, methods=["GET"]),
        Route("/v1/vectors", upload_vector, methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=str(static_folder())), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: not_found, 405: wrong_method})
    app.state.steer = state
    return app


async def _free_on_disconnect(request: Request, ticket: Ticket) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            ticket.cancel()
            return


def _too_large(limits: Limits) -> ApiError:
    return ApiError(413, f"The upload is larger than {limits.max_upload_bytes} bytes; a steering vector is a few "
                         "KB per layer. Check the file, or start the server with a larger --max-upload-mb.",
                    param="file", code="file_too_large")


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
