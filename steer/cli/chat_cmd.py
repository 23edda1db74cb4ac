"""`steer chat`: an interactive, streamed, steered chat in the terminal.

Vectors are resolved exactly as `steer apply` resolves `--vector` (so every kind of
reference it accepts works here), attached with `steer.attach`, and changed between
turns with slash commands. A bad command prints why and the chat goes on.
"""

from __future__ import annotations

import argparse
import contextvars
import sys
import threading
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from steer.cli.common import (
    add_generation_args,
    add_model_args,
    finite_float,
    load_model_from_args,
    settings_from_args,
    split_vector_spec,
)
from steer.errors import SteerError
from steer.refs import finite_multiplier

HELP = """commands:
  /mult NAME|INDEX VALUE   set a vector's multiplier
  /add FILE[:MULT]         attach another vector
  /remove NAME|INDEX       detach one vector
  /list                    show the attached vectors
  /compare                 toggle: also show the unsteered reply next to the steered one
  /reset                   forget the conversation so far
  /help                    this text
  /quit                    leave (also Ctrl-D)"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("chat", help="chat with a steered model in the terminal",
                                   description="An interactive chat; change vectors between turns with /commands.")
    parser.add_argument("--vector", action="append", default=[], metavar="FILE[:MULTIPLIER]",
                        help="a vector or LM-Steer file, as for `steer apply`; repeatable")
    parser.add_argument("--multiplier", type=finite_float, default=1.0, help="for vectors given without one")
    parser.add_argument("--compare", action="store_true", help="start with /compare on")
    add_generation_args(parser)
    add_model_args(parser)
    parser.set_defaults(run=run)


def resolve_vector(spec: str, args: argparse.Namespace, model: Any) -> Any:
    """The steer for one `--vector` reference, through `steer apply`'s own loader."""
    from steer.cli.apply_cmd import _load_steers

    loaded = argparse.Namespace(vector=[spec], steer_prompt=[], multiplier=args.multiplier, positions=args.positions)
    steers, _, prompt_steers = _load_steers(loaded, model)
    if prompt_steers or not steers:
        raise SteerError(f"{spec} is a prompt steer; in a chat, put its text in --system-prompt instead.")
    return steers[0]


def vector_name(spec: str) -> str:
    reference, _ = split_vector_spec(spec)
    return Path(reference).stem or reference


class ChatSession:
    """The conversation and the commands; `write` is where the screen output goes."""

    def __init__(self, args: argparse.Namespace, model: Any, tokenizer: Any, write: Callable[[str], None]) -> None:
        from steer.chat import Steerer

        self.args, self.model, self.tokenizer, self.write = args, model, tokenizer, write
        self.settings = settings_from_args(args)
        self.steerer = Steerer(model, tokenizer, positions=args.positions)
        self.history: list[dict[str, str]] = []
        self.compare = bool(args.compare)
        self.decode_kwargs: dict[str, Any] = {}  # set by run() from --decoding

    def add(self, spec: str) -> str:
        return self.steerer.add(resolve_vector(spec, self.args, self.model), name=vector_name(spec), source=spec)

    # ---- commands ----------------------------------------------------------------------
    def command(self, line: str) -> bool:
        """Run one /command; False means quit."""
        name, *rest = line[1:].split()
        if name in ("quit", "exit", "q"):
            return False
        if name == "help":
            self.write(HELP + "\n")
        elif name == "list":
            self.write(self.listing() + "\n")
        elif name == "mult":
            if len(rest) != 2:
                raise SteerError("usage: /mult NAME|INDEX VALUE, e.g. /mult 0 2.5")
            value = finite_multiplier(rest[1], "/mult")
            self.steerer.set_multiplier(rest[0], value)
            self.write(f"{self.steerer.vectors[self.steerer.index_of(rest[0])].name} now x{value:g}\n")
        elif name == "add":
            if len(rest) != 1:
                raise SteerError("usage: /add FILE[:MULT]")
            self.write(f"added {self.add(rest[0])}\n")
        elif name == "remove":
            if len(rest) != 1:
                raise SteerError("usage: /remove NAME|INDEX")
            self.write(f"removed {self.steerer.remove(rest[0]).name}\n")
        elif name == "compare":
            self.compare = not self.compare
            self.write(f"compare {'on' if self.compare else 'off'}\n")
        elif name == "reset":
            self.history = []
            self.write("history cleared\n")
        else:
            raise SteerError(f"unknown command /{name}; type /help for the list.")
        return True

    def listing(self) -> str:
        if not self.steerer.vectors:
            return "no vectors attached (the model is unsteered); /add FILE[:MULT] attaches one"
        return "\n".join(f"{i}  {v.name}  x{v.multiplier:g}  {v.source}" for i, v in enumerate(self.steerer.vectors))

    # ---- turns --------------------------------------------------------------------------
    def inputs(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        from steer.prompts import encode_batch, max_positions, uses_template

        templated = uses_template(self.tokenizer, self.settings.chat_template)
        system = [{"role": "system", "content": self.settings.system_prompt}] if self.settings.system_prompt else []
        if templated:
            text = self.tokenizer.apply_chat_template(system + messages, tokenize=False, add_generation_prompt=True)
        else:  # raw text models: a plain transcript
            text = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in system + messages) + "Assistant:"
        limit = max_positions(self.model)
        device = next(self.model.parameters()).device
        return encode_batch(self.tokenizer, [text], templated=templated,
                            limit=limit - self.settings.max_new_tokens if limit else None, device=device)

    def reply(self, inputs: dict[str, Any], stream: bool) -> str:
        """Generate one reply, streamed to the screen token by token when `stream`."""
        import torch
        from transformers import TextIteratorStreamer

        from steer.prompts import pad_id
        from steer.sites.backend import generate as backend_generate  # torch hooks or nnsight, as steered

        kwargs = {**inputs, **self.decode_kwargs, **self.settings.generate_kwargs(), "pad_token_id": pad_id(self.tokenizer)}
        if self.settings.seed is not None:
            torch.manual_seed(self.settings.seed)
        if not stream:
            with torch.inference_mode():
                new = backend_generate(self.model, kwargs)[0, inputs["input_ids"].shape[1]:]
            return self.tokenizer.decode(new, skip_special_tokens=True).strip()
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        failure: list[BaseException] = []

        def work() -> None:
            try:
                with torch.inference_mode():
                    backend_generate(self.model, kwargs, streamer=streamer)
            except BaseException as exc:  # re-raised in the main thread, which owns the screen
                failure.append(exc)
                streamer.end()

        # steering is local to this context: the worker thread runs in a copy of it
        thread = threading.Thread(target=contextvars.copy_context().run, args=(work,), daemon=True)
        thread.start()
        parts = []
        for piece in streamer:
            parts.append(piece)
            self.write(piece)
        thread.join()
        self.write("\n")
        if failure:
            raise failure[0]
        return "".join(parts).strip()

    def turn(self, text: str) -> None:
        from steer.io.table import format_table

        messages = [*self.history, {"role": "user", "content": text}]
        inputs = self.inputs(messages)
        self.write("bot> ")
        steered = self.reply(inputs, stream=True)
        if self.compare:
            with self.steerer.unsteered():
                unsteered = self.reply(inputs, stream=False)
            self.write(format_table(["steered", "unsteered"], [[steered, unsteered]], max_width=38) + "\n")
        self.history = [*messages, {"role": "assistant", "content": steered}]

    def loop(self, read: Callable[[str], str]) -> int:
        self.write("steer chat: type a message, or /help for commands.\n")
        while True:
            try:
                line = read("you> ").strip()
            except EOFError:
                self.write("\n")
                return 0
            if not line:
                continue
            try:
                if line.startswith("/"):
                    if not self.command(line):
                        return 0
                else:
                    self.turn(line)
            except SteerError as exc:  # user-fixable: say why, keep chatting
                self.write(f"error: {exc}\n")


def run(args: argparse.Namespace) -> int:
    from steer.decoding.base import settings_decoding

    model, tokenizer = load_model_from_args(args)

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    session = ChatSession(args, model, tokenizer, write)
    decode_context, session.decode_kwargs = settings_decoding(model, session.settings)
    # decoding outside steering, as in `steer apply`: the steering hooks then run first
    with ExitStack() as stack:
        stack.enter_context(decode_context)
        stack.callback(session.steerer.detach)
        for spec in args.vector:
            session.add(spec)
        return session.loop(input)
