"""`steer serve`: an OpenAI-compatible server where every request carries its own steering."""

from __future__ import annotations

import argparse
from typing import Any

from steer.cli.common import add_model_args, load_model_from_args
from steer.errors import SteerError

BACKENDS = ("torch", "nnsight")  # steer.sites.backend: how steering blocks act on the model


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve the model over HTTP (OpenAI API) with per-request steering",
        description="An OpenAI-compatible server (POST /v1/chat/completions, /v1/completions, GET /v1/models) "
                    "where each request steers with its own vectors (the 'steer' body field); concurrent "
                    "requests are batched. A playground page is served at /.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--vector", action="append", default=[], metavar="NAME=FILE[:MULT]",
                        help="a vector requests may name (FILE or library:NAME; MULT is its default multiplier); "
                             "repeatable")
    parser.add_argument("--backend", choices=BACKENDS, default="torch",
                        help="how steering acts: torch (steer's hooks; fastest) or nnsight (each pass an nnsight "
                             "trace, steer.sites.backend)")
    parser.add_argument("--max-batch", type=int, default=32, help="most requests in one batch")
    parser.add_argument("--batch-window-ms", type=float, default=20.0,
                        help="how long a batch waits for more requests before it starts")
    parser.add_argument("--max-tokens-limit", type=int, default=1024, help="most new tokens one request may ask for")
    parser.add_argument("--default-max-tokens", type=int, default=256, help="new tokens when a request gives none")
    parser.add_argument("--max-upload-mb", type=float, default=64.0, help="largest vector upload (POST /v1/vectors)")
    parser.add_argument("--model-name", default=None, help="the id clients use (default: the model's own name)")
    add_model_args(parser)
    parser.set_defaults(run=run)


def parse_named_vectors(specs: list[str]) -> dict[str, tuple[Any, float | None]]:
    """`NAME=FILE[:MULT]` -> {NAME: (SteeringVector, MULT or None)}; FILE may be library:NAME."""
    from steer.refs import parse_vector_ref
    from steer.vector import SteeringVector

    named: dict[str, tuple[Any, float | None]] = {}
    for spec in specs:
        name, sep, ref = spec.partition("=")
        if not sep or not name or not ref:
            raise SteerError(f"--vector {spec!r}: write NAME=FILE, e.g. --vector happy=happy.safetensors "
                             "or --vector pos=library:sentiment-positive:3.")
        if name in named:
            raise SteerError(f"--vector: the name {name!r} is given twice; give each vector its own name.")
        parsed = parse_vector_ref(ref)
        named[name] = (SteeringVector.load(parsed.path), parsed.multiplier)
    return named


def check_args(args: argparse.Namespace) -> None:
    if args.max_batch < 1:
        raise SteerError("--max-batch must be at least 1.")
    if args.batch_window_ms < 0:
        raise SteerError("--batch-window-ms cannot be negative.")
    if args.max_tokens_limit < 1 or args.default_max_tokens < 1:
        raise SteerError("--max-tokens-limit and --default-max-tokens must be at least 1.")
    if args.max_upload_mb <= 0:
        raise SteerError("--max-upload-mb must be positive.")
    if not 0 <= args.port < 65536:
        raise SteerError(f"--port {args.port} is not a TCP port (0-65535).")


def build_app(args: argparse.Namespace, model: Any = None, tokenizer: Any = None) -> Any:
    """The ASGI app for these arguments; `model`/`tokenizer` given (tests) skip loading."""
    try:
        from steer.serve.app import create_app
        from steer.serve.engine import TorchEngine
        from steer.serve.protocol import Limits
    except ImportError as exc:
        raise SteerError(f"steer serve needs the server extra ({exc.name} is missing): "
                         "pip install 'steer[serve]'.") from None
    check_args(args)
    vectors = parse_named_vectors(args.vector)  # before the model loads: a typo fails fast
    if model is None:
        model, tokenizer = load_model_from_args(args)
    engine = TorchEngine(model, tokenizer, model_name=args.model_name, backend=args.backend)
    limits = Limits(max_tokens=args.max_tokens_limit, default_max_tokens=args.default_max_tokens,
                    max_upload_bytes=int(args.max_upload_mb * 1024 * 1024))
    named = {name: (vector, mult) if mult is not None else vector for name, (vector, mult) in vectors.items()}
    return create_app(engine, vectors=named, limits=limits, max_batch=args.max_batch,
                      batch_window_s=args.batch_window_ms / 1000)


def run(args: argparse.Namespace) -> int:
    app = build_app(args)
    try:
        import uvicorn
    except ImportError:
        raise SteerError("steer serve needs uvicorn: pip install 'steer[serve]'.") from None
    print(f"steer serve: http://{args.host}:{args.port}/ (playground), OpenAI API at http://{args.host}:{args.port}/v1")
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
