"""`steer apply`: generate with steering vectors, or score an A/B dataset across multipliers."""

from __future__ import annotations

import argparse
import hashlib
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
from steer.application import Steer, model_id_of
from steer.errors import DataError, SteerError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "apply",
        help="generate with steering vectors, or sweep multipliers on an A/B dataset",
        description="Steered next to unsteered generations (JSONL), or CAA A/B scores per multiplier (JSON). "
                    "Without --vector: --decoding dola|deco alone (next to plain decoding), or a plain unsteered "
                    "baseline run.",
    )
    parser.add_argument("--vector", action="append", default=[], metavar="FILE[:MULTIPLIER]",
                        help="a vector, LM-Steer (.safetensors) or prompt-steer (.json) file, a llama.cpp/repeng "
                             "control vector (.gguf), EasyEdit2 layer_<L>.pt tensors or their folder, or library:NAME; "
                             "repeat to compose several, each with its own multiplier")
    parser.add_argument("--steer-prompt", action="append", default=[], metavar="TEXT",
                        help="prompt steering: a system prompt (chat template) or prefix (raw text) for the steered run")
    parser.add_argument("--multiplier", type=finite_float, default=1.0, help="for vectors given without one")
    parser.add_argument("--multipliers", type=finite_float, nargs="+", help="sweep the first vector over these")
    parser.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    parser.add_argument("--data", help="prompts (JSON/JSONL with prompt/input/question) or an A/B dataset")
    parser.add_argument("--limit", type=int, help="use only the first N items of --data")
    parser.add_argument("--out", help="JSONL (free text) or JSON (A/B) results")
    parser.add_argument("--plot", help="PNG of the A/B score against the multiplier (a heat map with --layers-sweep)")
    parser.add_argument("--layers-sweep", type=int, nargs="+", metavar="LAYER",
                        help="A/B score per layer and multiplier, with each layer's direction alone")
    parser.add_argument("--sweep-data", metavar="FILE",
                        help="contrastive data to make the CAA vector for --layers-sweep (else the first --vector)")
    add_generation_args(parser)
    add_model_args(parser)
    parser.set_defaults(run=run)


def _load_steers(args: argparse.Namespace, model: Any) -> tuple[list[Any], list[str], list[Any]]:
    """(activation steers, their files, prompt steers): prompt steers change inputs, not activations."""
    from steer.methods.artifacts import load_steer
    from steer.methods.prompt import PromptSteer

    steers, paths, prompts = [], [], [PromptSteer(text) for text in args.steer_prompt]
    for spec in args.vector:
        path, multiplier = split_vector_spec(spec)
        loaded = load_steer(path, args.multiplier if multiplier is None else multiplier, args.positions)
        if isinstance(loaded, PromptSteer):
            prompts.append(loaded)
        else:
            steers.append(loaded)
            paths.append(spec)
    return steers, paths, prompts


def _with_multiplier(steer_: Any, multiplier: float, positions: str | None = None) -> Any:
    """The same steer (vector or LM-Steer) at another multiplier."""
    from dataclasses import replace


    positions = positions or steer_.positions
    if isinstance(steer_, Steer):
        return Steer(steer_.vector, multiplier, positions, steer_.layer_multipliers)  # type: ignore[arg-type]
    return replace(steer_, values=multiplier, positions=positions)


def _vector_record(steer_: Any, path: str) -> dict[str, Any]:
    vector = getattr(steer_, "vector", None) or getattr(steer_, "steer")
    sites = [str(s) for s in vector.sites] if hasattr(vector, "sites") else ["final_norm"]
    return {"file": path, "multiplier": steer_.multiplier, "positions": steer_.positions,
            "sites": sites, "method": vector.meta.method,
            "operation": vector.meta.extra.get("operation", "add")}


def _prompt_records(prompt_steers: list[Any]) -> list[dict[str, Any]]:
    return [{"prompt_steer": p.text, "mode": p.mode} for p in prompt_steers]


def run(args: argparse.Namespace) -> int:
    from steer.io.datasets import as_ab_items, file_hash, is_ab, load_records, prompt_of

    if not args.prompt and not args.data:
        raise DataError("Give --prompt TEXT (repeatable) or --data FILE.")
    records: list[Any] = []
    if args.data:
        records = load_records(args.data)[: args.limit] if args.limit else load_records(args.data)
    # no --vector / --steer-prompt: decoding alone (--decoding dola|deco, next to plain greedy)
    # or an unsteered baseline (plain generation, or the A/B scores of the model as it is)
    if args.multipliers and not args.vector and not args.steer_prompt and not args.sweep_data:
        raise DataError("--multipliers sweeps a vector's strength; give --vector FILE (or drop --multipliers "
                        "for an unsteered baseline).")
    if args.sweep_data and not args.layers_sweep:
        raise DataError("--sweep-data makes the vector for --layers-sweep; give --layers-sweep LAYER ... too.")
    model, tokenizer = load_model_from_args(args)
    steers, paths, prompt_steers = _load_steers(args, model)
    args.vector = paths  # records below pair steers with their files
    if args.multipliers and not steers and not args.layers_sweep:
        raise DataError("--multipliers sweeps a vector; a prompt steer has no strength to sweep. Give --vector FILE.")
    if records and is_ab(records[0]):
        items = _prompted_items(as_ab_items(records, args.data), prompt_steers, not args.no_chat_template)
        if args.layers_sweep:
            return _run_layer_sweep(args, model, tokenizer, items, steers, prompt_steers, file_hash(args.data))
        return _run_ab(args, model, tokenizer, items, steers, file_hash(args.data), prompt_steers)
    if args.layers_sweep:
        raise DataError("--layers-sweep scores an A/B dataset; give one with --data (e.g. CAA's test_dataset_ab.json).")
    prompts = list(args.prompt or []) + [prompt_of(r, f"{args.data}, item {i}") for i, r in enumerate(records)]
    return _run_free_text(args, model, tokenizer, prompts, steers, prompt_steers)


def _prompted_items(items: list[Any], prompt_steers: list[Any], chat_template: bool) -> list[Any]:
    """A/B questions with the prefix prompt steers written in (system ones go to the system prompt)."""
    from dataclasses import replace

    for prompt_steer in prompt_steers:
        if prompt_steer.resolved_mode(chat_template) == "prefix":
            items = [replace(item, question=f"{prompt_steer.text} {item.question}") for item in items]
    return items


def _system_prompt(system_prompt: str | None, prompt_steers: list[Any], chat_template: bool) -> str | None:
    for prompt_steer in prompt_steers:
        if prompt_steer.resolved_mode(chat_template) == "system":
            _, system_prompt = prompt_steer.apply([], system_prompt, chat_template)
    return system_prompt


def _run_layer_sweep(args: argparse.Namespace, model: Any, tokenizer: Any, items: list[Any], steers: list[Any],
                     prompt_steers: list[Any], data_hash: str) -> int:
    from steer.io.atomic import write_json_atomic
    from steer.io.table import format_table
    from steer.methods.layer_sweep import layer_sweep, plot_heatmap

    if args.sweep_data:
        from steer.api import make_vector

        vector, source = make_vector(model, tokenizer, "caa", args.sweep_data,
                                     overrides={"layers": args.layers_sweep}), args.sweep_data
        extra = steers
    else:
        if not steers or not isinstance(steers[0], Steer):
            raise DataError("--layers-sweep needs a vector (--vector FILE made with --layers ...) or --sweep-data FILE.")
        vector, source, extra = steers[0].vector, args.vector[0], steers[1:]
    multipliers = args.multipliers or [-1.0, 0.0, 1.0]
    chat = not args.no_chat_template
    grid = layer_sweep(model, tokenizer, items, vector, args.layers_sweep, multipliers, extra,
                       chat_template=chat, system_prompt=_system_prompt(args.system_prompt, prompt_steers, chat),
                       batch_size=args.batch_size)
    print(format_table(["layer", *[f"x{m:g}" for m in multipliers]],
                       [[layer, *[f"{v:.3f}" for v in row]] for layer, row in zip(args.layers_sweep, grid)]))
    report = {"kind": "ab_layer_sweep", "model": model_id_of(model), "dataset": args.data, "dataset_hash": data_hash,
              "vector_source": source, "vector_method": vector.meta.method, "layers": args.layers_sweep,
              "multipliers": multipliers, "mean_p_matching": grid,
              "also_applied": [_vector_record(s, p) for s, p in zip(extra, args.vector[1:] if not args.sweep_data else args.vector)]
              + _prompt_records(prompt_steers),
              "settings": {"chat_template": chat, "system_prompt": args.system_prompt, "positions": "after_instruction"}}
    if args.out:
        print(f"wrote {write_json_atomic(args.out, report)}")
    if args.plot:
        print(f"wrote {plot_heatmap(args.plot, args.layers_sweep, multipliers, grid, f'A/B layer sweep: {args.data}')}")
    return 0


def _run_ab(args: argparse.Namespace, model: Any, tokenizer: Any, items: list[Any], steers: list[Any], data_hash: str,
            prompt_steers: list[Any] | None = None) -> int:
    from steer.evaluate.ab import ab_sweep
    from steer.io.atomic import write_json_atomic
    from steer.io.table import format_table

    from steer.decoding.base import settings_decoding

    from steer.evaluate.ab import ABResult, ab_scores

    prompt_steers = prompt_steers or []
    chat = not args.no_chat_template
    system_prompt = _system_prompt(args.system_prompt, prompt_steers, chat)
    multipliers = args.multipliers or ([steers[0].multiplier] if steers else [0.0])
    decode_context, _ = settings_decoding(model, settings_from_args(args))  # scores read the mode's logits
    common: dict[str, Any] = dict(chat_template=chat, system_prompt=system_prompt, batch_size=args.batch_size)
    with decode_context:
        if steers and isinstance(steers[0], Steer):
            results = ab_sweep(model, tokenizer, items, steers, multipliers, **common)
        else:  # an LM-Steer first, or prompt steers only: the same sweep over its values
            results = []
            for multiplier in multipliers:
                run = [_with_multiplier(steers[0], multiplier, "after_instruction"), *steers[1:]] if steers else []
                per_item = ab_scores(model, tokenizer, items, steers=run, **common)
                results.append(ABResult(float(multiplier), sum(per_item) / len(per_item), per_item))
    print(format_table(["multiplier", "mean p(matching)", "items"],
                       [[r.multiplier, r.mean_p_matching, len(r.per_item)] for r in results]))
    report = {
        "kind": "ab",
        "model": model_id_of(model),
        "dataset": args.data,
        "dataset_hash": data_hash,
        "vectors": [_vector_record(s, p) for s, p in zip(steers, args.vector)],
        "swept_vector": args.vector[0] if args.vector else None,
        "prompt_steers": _prompt_records(prompt_steers),
        "results": [{"multiplier": r.multiplier, "mean_p_matching": r.mean_p_matching, "per_item": r.per_item}
                    for r in results],
        "settings": {"chat_template": not args.no_chat_template, "system_prompt": system_prompt,
                     "positions": "after_instruction", "decoding": args.decoding,
                     "decoding_overrides": settings_from_args(args).decoding_overrides},
    }
    if args.out:
        print(f"wrote {write_json_atomic(args.out, report)}")
    if args.plot:
        from steer.plots import plot_sweep

        path = plot_sweep(args.plot, [r.multiplier for r in results], [r.mean_p_matching for r in results],
                          ylabel="mean p(matching answer)", title=f"A/B sweep: {Path(args.data).parent.name}/{Path(args.data).name}",
                          baseline=0.5, baseline_label="chance (0.5)")
        print(f"wrote {path}")
    return 0


def _run_free_text(args: argparse.Namespace, model: Any, tokenizer: Any, prompts: list[str], steers: list[Any],
                   prompt_steers: list[Any] | None = None) -> int:
    from steer.generation import generate_texts
    from steer.io.atomic import write_jsonl_atomic
    from steer.io.table import format_table

    if args.plot:
        raise SteerError("--plot draws A/B sweeps; give an A/B dataset with --data.")
    from dataclasses import replace

    settings = settings_from_args(args)
    if not steers and not prompt_steers:
        return _run_unsteered(args, model, tokenizer, prompts, settings)
    unsteered = generate_texts(model, tokenizer, prompts, settings, desc="unsteered")
    # prompt steers change only what the steered run sees
    steered_prompts, system_prompt = list(prompts), settings.system_prompt
    for prompt_steer in prompt_steers or []:
        steered_prompts, system_prompt = prompt_steer.apply(steered_prompts, system_prompt, settings.chat_template)
    steered_settings = replace(settings, system_prompt=system_prompt)
    multipliers = args.multipliers or [None]
    rows = []
    for multiplier in multipliers:
        run_steers = steers if multiplier is None else [_with_multiplier(steers[0], multiplier), *steers[1:]]
        steered = generate_texts(model, tokenizer, steered_prompts, steered_settings, steers=run_steers, desc="steered")
        for prompt, base, text in zip(prompts, unsteered, steered):
            rows.append({
                "prompt": prompt, "multiplier": run_steers[0].multiplier if run_steers else None,
                "steered": text, "unsteered": base,
                "vectors": [_vector_record(s, p) for s, p in zip(run_steers, args.vector)],
                "prompt_steers": _prompt_records(prompt_steers or []),
                "generation": settings.as_dict(), "model": model_id_of(model),
                "prompt_hash": hashlib.sha256(prompt.encode()).hexdigest()[:12],
            })
    print(format_table(["prompt", "multiplier", "unsteered", "steered"],
                       [[r["prompt"], r["multiplier"], r["unsteered"], r["steered"]] for r in rows], max_width=40))
    if args.out:
        print(f"wrote {write_jsonl_atomic(args.out, rows)}")
    return 0


def _run_unsteered(args: argparse.Namespace, model: Any, tokenizer: Any, prompts: list[str], settings: Any) -> int:
    """No vector: contrastive decoding alone next to plain decoding, or a plain baseline run."""
    from dataclasses import replace

    from steer.decoding import PLAIN
    from steer.generation import generate_texts
    from steer.io.atomic import write_jsonl_atomic
    from steer.io.table import format_table

    common = {"generation": settings.as_dict(), "model": model_id_of(model)}
    if settings.decoding != PLAIN:
        plain = generate_texts(model, tokenizer, prompts, replace(settings, decoding=PLAIN, decoding_config=None,
                                                                  decoding_overrides={}), desc="plain")
        decoded = generate_texts(model, tokenizer, prompts, settings, desc=settings.decoding)
        rows = [{"prompt": p, "decoding": settings.decoding, "plain": a, "decoded": b, **common,
                 "prompt_hash": hashlib.sha256(p.encode()).hexdigest()[:12]} for p, a, b in zip(prompts, plain, decoded)]
        print(format_table(["prompt", "plain", settings.decoding], [[r["prompt"], r["plain"], r["decoded"]] for r in rows],
                           max_width=40))
    else:
        texts = generate_texts(model, tokenizer, prompts, settings, desc="unsteered")
        rows = [{"prompt": p, "unsteered": t, **common, "prompt_hash": hashlib.sha256(p.encode()).hexdigest()[:12]}
                for p, t in zip(prompts, texts)]
        print(format_table(["prompt", "unsteered"], [[r["prompt"], r["unsteered"]] for r in rows], max_width=60))
    if args.out:
        print(f"wrote {write_jsonl_atomic(args.out, rows)}")
    return 0
