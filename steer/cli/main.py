"""The `steer` command line. Parsing lives in `build_parser`; each command body is a plain function."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from steer._version import __version__
from steer.errors import SteerError

_COMMANDS = ("steer.cli.generate_cmd", "steer.cli.apply_cmd", "steer.cli.demo_cmd", "steer.cli.eval_cmd", "steer.cli.edit_cmd", "steer.cli.chat_cmd")
_COMMANDS += ("steer.cli.library_cmd",)  # the vector library (steer.library)
_COMMANDS += ("steer.cli.export_cmd",)  # vector file conversion: llama.cpp GGUF, EasyEdit2 (steer.io.codecs)
_COMMANDS += ("steer.cli.serve_cmd",)  # OpenAI-compatible server with per-request steering (steer.serve)
_COMMANDS += ("steer.cli.run_cmd",)  # one-file experiments (steer.experiment)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="steer", description="Steer, decode and edit language models.")
    parser.add_argument("--version", action="version", version=f"steer {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in _COMMANDS:
        importlib.import_module(module).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except SteerError as exc:
        print(f"steer {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
