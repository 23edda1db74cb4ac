"""`steer apply`: generate with steering vectors, or score an A/B dataset across multipliers."""

from __future__ import annotations

import argparse
import hashlib
from typing import Any

from steer.cli.common import (
    add_generation_args,
    add_model_args,
    load_model_from_args,
    settings_from_args,
    split_vector_spec,
)
from steer.errors import DataError, SteerError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "apply",
        help="generate with steering vectors, or sweep multipliers on an A/B dataset",
        description="Steered next to unsteered generations (JSONL), or CAA A/B scores per multiplier (JSON).",
    )
    parser.add_argument("--vector", action="append", required=True, metavar="FILE[:MULTIPLIER]",
                        help="a vector file; repeat to compose several, each with its own multiplier")
    parser.add_argument("--multiplier", type=float, default=1.0, help="for vectors given without one")
    parser.add_argument("--multipliers", type=float, nargs="+", help="sweep the first vector over these")
    parser.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    parser.add_argument("--data", help="prompts (JSON/JSONL with prompt/input/question) or an A/B dataset")
    parser.add_argument("--limit", type=int, help="use only the first N items of --data")
    parser.add_argument("--out", help="JSONL (free text) or JSON (A/B) results")
    parser.add_argument("--plot", help="PNG of the A/B score against the multiplier")
    add_generation_args(parser)
    add_model_args(parser)
    parser.set_defaults(run=run)


def _load_steers(args: argparse.Namespace, model: Any) -> list[Any]:
    from steer.application import Steer
    from steer.vector import SteeringVector

    steers = []
    for spec in args.vector:
        path, multiplier = split_vector_spec(spec)
        vector = SteeringVector.load(path)
        steers.append(Steer(vector, args.multiplier if multiplier is None else multiplier, args.positions))
    return steers


def _vector_record(steer_: Any, path: str) -> dict[str, Any]:
    return {"file": path, "multiplier": steer_.multiplier, "positions": steer_.positions,
            "sites": [str(s) for s in steer_.vector.sites], "method": steer_.vector.meta.method}


def run(args: argparse.Namespace) -> int:
    from steer.io.datasets import as_ab_items, file_hash, is_ab, load_records, prompt_of

    if not args.prompt and not args.data:
        raise DataError("Give --prompt TEXT (repeatable) or --data FILE.")
    records: list[Any] = []
    if args.data:
        records = load_records(args.data)[: args.limit] if args.limit else load_records(args.data)
    model, tokenizer = load_model_from_args(args)
    steers = _load_steers(args, model)
    if records and is_ab(records[0]):
        return _run_ab(args, model, tokenizer, as_ab_items(records, args.data), steers, file_hash(args.data))
    prompts = list(args.prompt or []) + [prompt_of(r, f"{args.data}, item {i}") for i, r in enumerate(records)]
    return _run_free_text(args, model, tokenizer, prompts, steers)


def _run_ab(args: argparse.Namespace, model: Any, tokenizer: Any, items: list[Any], steers: list[Any], data_hash: str) -> int:
    from steer.evaluate.ab import ab_sweep
    from steer.io.atomic import write_json_atomic
    from steer.io.table import format_table
    from steer.application import model_id_of

    from steer.decoding.base import settings_decoding

    multipliers = args.multipliers or [steers[0].multiplier]
    decode_context, _ = settings_decoding(model, settings_from_args(args))  # scores read the mode's logits
    with decode_context:
        results = ab_sweep(model, tokenizer, items, steers, multipliers, chat_template=not args.no_chat_template,
                           system_prompt=args.system_prompt, batch_size=args.batch_size)
    print(format_table(["multiplier", "mean p(matching)", "items"],
                       [[r.multiplier, r.mean_p_matching, len(r.per_item)] for r in results]))
    report = {
        "kind": "ab",
        "model": model_id_of(model),
        "dataset": args.data,
        "dataset_hash": data_hash,
        "vectors": [_vector_record(s, p) for s, p in zip(steers, args.vector)],
        "swept_vector": args.vector[0],
        "results": [{"multiplier": r.multiplier, "mean_p_matching": r.mean_p_matching, "per_item": r.per_item}
                    for r in results],
        "settings": {"chat_template": not args.no_chat_template, "system_prompt": args.system_prompt,
                     "positions": "after_instruction", "decoding": args.decoding,
                     "decoding_overrides": settings_from_args(args).decoding_overrides},
    }
    if args.out:
        print(f"wrote {write_json_atomic(args.out, report)}")
    if args.plot:
        from steer.plots import plot_sweep

        path = plot_sweep(args.plot, [r.multiplier for r in results], [r.mean_p_matching for r in results],
                          ylabel="mean p(matching answer)", title=f"A/B sweep: {args.data}", baseline=0.5)
        print(f"wrote {path}")
    return 0


def _run_free_text(args: argparse.Namespace, model: Any, tokenizer: Any, prompts: list[str], steers: list[Any]) -> int:
    from steer.generation import generate_texts
    from steer.io.atomic import write_jsonl_atomic
    from steer.io.table import format_table
    from steer.application import Steer, model_id_of

    if args.plot:
        raise SteerError("--plot draws A/B sweeps; give an A/B dataset with --data.")
    settings = settings_from_args(args)
    unsteered = generate_texts(model, tokenizer, prompts, settings, desc="unsteered")
    multipliers = args.multipliers or [None]
    rows = []
    for multiplier in multipliers:
        run_steers = steers if multiplier is None else [
            Steer(steers[0].vector, multiplier, steers[0].positions), *steers[1:]]
        steered = generate_texts(model, tokenizer, prompts, settings, steers=run_steers, desc="steered")
        for prompt, base, text in zip(prompts, unsteered, steered):
            rows.append({
                "prompt": prompt, "multiplier": run_steers[0].multiplier, "steered": text, "unsteered": base,
                "vectors": [_vector_record(s, p) for s, p in zip(run_steers, args.vector)],
                "generation": settings.as_dict(), "model": model_id_of(model),
                "prompt_hash": hashlib.sha256(prompt.encode()).hexdigest()[:12],
            })
    print(format_table(["prompt", "multiplier", "unsteered", "steered"],
                       [[r["prompt"], r["multiplier"], r["unsteered"], r["steered"]] for r in rows], max_width=40))
    if args.out:
        print(f"wrote {write_jsonl_atomic(args.out, rows)}")
    return 0
