"""`steer eval`: score generations (and the model) with registered evaluators; JSON report + table."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from steer.cli.common import add_model_args, finite_float, split_vector_spec
from steer.evaluate.base import EVALUATORS


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate generations: perplexity, distinctness, fluency, toxicity, sentiment, SafeEdit, A/B",
        description=("Evaluate the JSONL of `steer apply` (steered and unsteered side by side) or rows with a "
                     "text/generation/output field. Settings: METHOD.key=value, e.g. toxicity.threshold=0.7. "
                     "Evaluators: " + "; ".join(f"{n}: {EVALUATORS.get(n).summary}" for n in EVALUATORS.names())),
    )
    parser.add_argument("--methods", nargs="+", required=True, choices=EVALUATORS.names(), metavar="METHOD",
                        help=f"evaluators to run: {', '.join(EVALUATORS.names())}")
    parser.add_argument("--input", nargs="+", default=[], metavar="FILE", help="generations (JSONL); several files "
                        "are compared as separate runs")
    parser.add_argument("--limit", type=int, help="use the first N rows of each input (and N prompts of --prompt-set)")
    parser.add_argument("--corpus", help="ppl: also score this text file with sliding windows (e.g. WikiText-2 test)")
    parser.add_argument("--data", help="ab: an A/B dataset")
    parser.add_argument("--prompt-set", help="safeedit: generate responses to advbench, harmbench, donotanswer, "
                        "safeedit:FILE[:FIELD] or a prompt file, and judge them")
    parser.add_argument("--vector", action="append", metavar="FILE[:MULTIPLIER]",
                        help="model-level evaluators (ppl --corpus, ab, safeedit --prompt-set) also run steered")
    parser.add_argument("--multiplier", type=finite_float, default=1.0, help="for vectors given without one")
    parser.add_argument("--no-chat-template", action="store_true", help="ab / safeedit: feed prompts as raw text")
    parser.add_argument("--out", help="write the JSON report here")
    parser.add_argument("--plot", help="write a PNG: each metric against the multiplier")
    parser.add_argument("settings", nargs="*", metavar="METHOD.key=value", help="evaluator settings (keep them together)")
    parser.add_argument("--set", dest="more_settings", action="extend", nargs="+", default=[], metavar="METHOD.key=value",
                        help="more settings, anywhere on the line (argparse reads positional ones only once)")
    add_model_args(parser)
    parser.set_defaults(run=run)


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    from steer.config import parse_overrides
    from steer.evaluate.runner import settings_for, split_overrides

    values = split_overrides(parse_overrides([*args.settings, *args.more_settings]), args.methods)
    shortcuts = {"ppl": {"corpus": args.corpus}, "ab": {"data": args.data},
                 "safeedit": {"prompt_set": args.prompt_set, "limit": args.limit}}
    for method, extra in shortcuts.items():
        if method in values:
            values[method].update({k: v for k, v in extra.items() if v is not None and k not in values[method]})
    if args.no_chat_template:
        for method in ("ab", "safeedit"):
            if method in values:
                values[method].setdefault("chat_template", False)
    return {method: settings_for(method, values[method]) for method in args.methods}


def _context(args: argparse.Namespace) -> Any:
    from steer.evaluate.base import EvalContext
    from steer.models.loading import DEFAULT_MODEL_ID

    def loader(name: str | None) -> tuple[Any, Any]:
        from steer.models.loading import load_model

        model, tokenizer = load_model(name, dtype=args.dtype, device=args.device, device_map=args.device_map,
                                      allow_download=args.allow_download)
        if args.backend == "nnsight":  # steering (and its scoring passes) then run through nnsight
            from steer.sites.backend import set_default_backend
            from steer.sites.backends.nnsight import wrap

            set_default_backend(model, args.backend)
            wrap(model, tokenizer)
        return model, tokenizer

    steers = []
    if args.vector:
        from steer import Steer
        from steer.vector import SteeringVector

        for spec in args.vector:
            path, multiplier = split_vector_spec(spec)
            steers.append(Steer(SteeringVector.load(path), args.multiplier if multiplier is None else multiplier))
    return EvalContext(loader, steers, progress=True, override_model=args.model, default_model=DEFAULT_MODEL_ID)


def run(args: argparse.Namespace) -> int:
    from steer._version import __version__
    from steer.evaluate.inputs import groups_from_records
    from steer.evaluate.runner import run as run_evaluators
    from steer.evaluate.runner import table_rows
    from steer.io.atomic import write_json_atomic
    from steer.io.datasets import file_hash, load_records
    from steer.io.table import format_table

    settings = _settings(args)
    groups = []
    for path in args.input:
        records = load_records(path)
        prefix = f"{path.rsplit('/', 1)[-1].rsplit('.', 1)[0]}: " if len(args.input) > 1 else ""
        groups += groups_from_records(records[: args.limit] if args.limit else records, path, prefix)
    ctx = _context(args)
    body = run_evaluators(groups, args.methods, ctx, settings)
    report = {
        "kind": "eval",
        "steer_version": __version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs": [{"file": p, "sha256_16": file_hash(p), "limit": args.limit} for p in args.input],
        "model": args.model or sorted({g.model for g in groups if g.model}) or None,
        "vectors": [{"file": s, "multiplier": st.multiplier} for s, st in zip(args.vector or [], ctx.steers)],
        **body,
    }
    headers, rows = table_rows(report)
    print(format_table(headers, rows))
    for method, entry in report["evaluators"].items():
        judges = {i.get("judge") or i.get("backend") or i.get("model") for i in entry["info"].values()} - {None}
        if judges:
            print(f"{method}: {', '.join(sorted(map(str, judges)))}")
    if args.out:
        print(f"wrote {write_json_atomic(args.out, report)}")
    if args.plot:
        from steer.evaluate.plots import plot_report

        print(f"wrote {plot_report(args.plot, report)}")
    return 0
