"""`steer generate`: make a steering vector from data."""

from __future__ import annotations

import argparse
from contextlib import nullcontext

from steer.cli.common import add_model_args, load_model_from_args
from steer.config import parse_overrides
from steer.errors import ConfigError
from steer.methods import steering_methods


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="make a steering vector from contrastive data",
        description="Make a steering vector. Hyper-parameters: method defaults < --config YAML < key=value overrides.",
    )
    parser.add_argument("--method", required=True, choices=steering_methods().names())
    parser.add_argument("--data", help="contrastive data: A/B items, text pairs, or {positive, negative} (JSON/JSONL)")
    parser.add_argument("--positive", help="file of texts showing the behaviour (unpaired; with --negative)")
    parser.add_argument("--negative", help="file of texts not showing it")
    parser.add_argument("--vectors", nargs="+", metavar="FILE", help="input vectors (merge; ablation of a given direction)")
    parser.add_argument("--layers", nargs="+", metavar="LAYER",
                        help="shortcut for layers=[...]; a number or a depth fraction such as 40%%")
    parser.add_argument("--config", help="YAML of hyper-parameters (default: hparams/<method>/<model>.yaml)")
    parser.add_argument("--out", required=True, help="where to write the vector (.safetensors; .json for --method prompt)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="hyper-parameter overrides")
    add_model_args(parser)
    parser.set_defaults(run=run)


def _split_layers(values: list[str], loose: list[str]) -> tuple[list[int | str], dict[str, object]]:
    """`--layers 6 max_items=300`: argparse hands the override to --layers; give it back."""
    layers: list[int | str] = []
    extra = list(loose)
    for value in values:
        if "=" in value:
            extra.append(value)
            continue
        if value.strip().endswith("%"):  # a depth fraction, resolved against the model
            layers.append(value.strip())
            continue
        try:
            layers.append(int(value))
        except ValueError:
            raise ConfigError(f"--layers takes layer numbers or depth fractions (40%); {value!r} is neither.") from None
    return layers, parse_overrides(extra)


def run(args: argparse.Namespace) -> int:
    from steer.methods.artifacts import describe
    from steer.methods.inputs import make_artifact

    layers, overrides = _split_layers(args.layers or [], args.overrides)
    if layers:
        overrides["layers"] = layers
    # merge and prompt never touch the model, so they do not pay for loading it
    needs_model = steering_methods().get(args.method).needs_model
    model, tokenizer = load_model_from_args(args) if needs_model else (None, None)
    from steer.application import model_id_of
    from steer.config import config_source

    print(f"hparams: {config_source(args.method, model_id_of(model) if model is not None else args.model, args.config)}")
    reads = nullcontext()
    if model is not None and getattr(args, "backend", "torch") == "nnsight":
        from steer.sites.backend import get_backend

        # an nnsight block with no interventions: the method's reads go through nnsight
        reads = get_backend("nnsight").intervene(model, [], tokenizer=tokenizer)
    with reads:
        artifact = make_artifact(
            model, tokenizer, args.method, data=args.data, positive=args.positive, negative=args.negative,
            vectors=args.vectors, config=args.config, overrides=overrides, model_id=args.model,
        )
    path = artifact.save(args.out)
    print(f"wrote {path} ({describe(artifact)})")
    return 0
