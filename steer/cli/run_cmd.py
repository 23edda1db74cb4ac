"""`steer run experiment.yaml`: one-file experiments (steer.experiment)."""

from __future__ import annotations

import argparse

from steer.cli.common import add_model_args
from steer.config import parse_overrides


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run a one-file experiment: make vectors, generate over prompts and multipliers, evaluate, report",
        description="Run an experiment YAML (steer's keys, or EasyEdit2's top-level keys where they mean the same): "
                    "make the vectors, generate over the prompt sets and multipliers, evaluate, and write one report "
                    "folder (report.json, generations.jsonl, summary.md, PNG plots). Examples: examples/experiments/.",
    )
    parser.add_argument("experiment", help="the experiment YAML")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="override top-level keys, right after the file: multipliers=[-2,0,2] prompt_size=3")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a top-level key anywhere on the line (repeatable)")
    parser.add_argument("--out", help="the report folder (default: the file's output, else steer-runs/<name>)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_args(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from steer.experiment import run_experiment

    overrides = parse_overrides([*args.overrides, *args.set])
    # --model/--dtype/--device on the command line win over the file (as key=value would)
    for key in ("model", "dtype", "device"):
        value = getattr(args, key)
        if value is not None and not (key == "dtype" and value == "auto"):
            overrides[key] = value
    if getattr(args, "backend", "torch") != "torch":
        from steer.errors import ConfigError

        raise ConfigError("steer run steers with torch hooks; --backend nnsight is for steer generate, apply, chat "
                          "and eval (or backend='nnsight' in Python).")
    if getattr(args, "backend", None) not in (None, "torch"):
        from steer.errors import ConfigError

        raise ConfigError("steer run steers through the torch backend only; drop --backend.")
    if args.device_map or args.allow_download:
        from steer.errors import ConfigError

        raise ConfigError("steer run loads the model offline on one device; --device-map and --allow-download are "
                          "for steer generate/apply (load the model there once, then give its folder as --model).")
    run_experiment(args.experiment, overrides=overrides, output=args.out, overwrite=args.overwrite,
                   progress=not args.no_progress)
    return 0
