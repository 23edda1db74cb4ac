"""`steer demo`: the main job on the bundled default model, end to end.

Builds a CAA sentiment vector from the bundled positive/negative texts and prints
steered next to unsteered continuations of neutral prompts, with VADER sentiment.
"""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

from steer.cli.common import add_model_args, finite_float, load_model_from_args


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="make a sentiment vector on the default model and generate with it")
    parser.add_argument("--out-dir", default="steer-demo", help="where the vector and generations go")
    parser.add_argument("--multiplier", type=finite_float, default=4.0)
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    add_model_args(parser)
    parser.set_defaults(run=run)


def _bundled(name: str) -> Path:
    return Path(str(resources.files("steer.data").joinpath(name)))


def run(args: argparse.Namespace) -> int:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    from steer.api import make_vector
    from steer.generation import GenerationSettings, generate_texts
    from steer.io.atomic import write_jsonl_atomic
    from steer.io.datasets import load_prompts
    from steer.io.table import format_table
    from steer.application import Steer

    out_dir = Path(args.out_dir)
    model, tokenizer = load_model_from_args(args)
    print(f"1/3 building a CAA sentiment vector at layer {args.layer} from bundled positive vs negative texts")
    vector = make_vector(
        model, tokenizer, "caa",
        positive=_bundled("sentiment_positive.jsonl"), negative=_bundled("sentiment_negative.jsonl"),
        overrides={"layers": [args.layer]},
    )
    vector_path = vector.save(out_dir / "sentiment.safetensors")
    print(f"    wrote {vector_path}")
    prompts = load_prompts(_bundled("demo_prompts.jsonl"))
    # Continuations of raw text show the shift best: no chat template here.
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, chat_template=False,
                                  repetition_penalty=1.3)
    print("2/3 generating unsteered and steered continuations")
    columns = {
        "unsteered": generate_texts(model, tokenizer, prompts, settings, desc="unsteered"),
        f"+{args.multiplier:g} (positive)": generate_texts(
            model, tokenizer, prompts, settings, steers=[Steer(vector, args.multiplier)], desc="positive"),
        f"-{args.multiplier:g} (negative)": generate_texts(
            model, tokenizer, prompts, settings, steers=[Steer(vector, -args.multiplier)], desc="negative"),
    }
    analyzer = SentimentIntensityAnalyzer()
    print("3/3 results")
    names = list(columns)
    rows = [[p, *(columns[n][i] for n in names)] for i, p in enumerate(prompts)]
    print(format_table(["prompt", *names], rows, max_width=30))
    scores = {n: sum(analyzer.polarity_scores(t)["compound"] for t in texts) / len(texts) for n, texts in columns.items()}
    print(format_table(["condition", "mean VADER compound"], [[n, s] for n, s in scores.items()]))
    records = [{"prompt": p, **{n: columns[n][i] for n in names}} for i, p in enumerate(prompts)]
    print(f"wrote {write_jsonl_atomic(out_dir / 'generations.jsonl', records)}")
    return 0
