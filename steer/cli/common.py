"""Arguments and helpers shared by CLI commands."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from steer.generation import GenerationSettings
from steer.sites.hooks import POSITION_POLICIES


def add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", default=None, help="Hugging Face id, local folder or .gguf file (default: bundled SmolLM2-135M-Instruct)")
    group.add_argument("--dtype", default="auto", help="float32, bfloat16, float16 or auto (default)")
    group.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    group.add_argument("--device-map", default=None, help="accelerate device map, e.g. auto, for models larger than one device")
    group.add_argument("--allow-download", action="store_true", help="let transformers download a model from the hub")
    try:
        group.add_argument("--backend", choices=("torch", "nnsight"), default="torch",
                           help="how steering runs: torch hooks (default, fastest) or inside nnsight's trace/generate")
    except argparse.ArgumentError:
        pass  # the command defines its own --backend (steer serve)


def load_model_from_args(args: argparse.Namespace) -> tuple[Any, Any]:
    from steer.models.loading import load_model

    model, tokenizer = load_model(
        args.model, dtype=args.dtype, device=args.device, device_map=args.device_map, allow_download=args.allow_download
    )
    backend = getattr(args, "backend", "torch")
    if backend == "nnsight":
        from steer.sites.backend import set_default_backend
        from steer.sites.backends.nnsight import wrap

        set_default_backend(model, backend)  # steering and make_vector on this model now use nnsight
        wrap(model, tokenizer)  # nnsight missing or unable to wrap this model: an error now, before any work
    return model, tokenizer


def add_generation_args(parser: argparse.ArgumentParser) -> None:
    defaults = GenerationSettings()
    group = parser.add_argument_group("generation (Hugging Face generate names)")
    group.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    group.add_argument("--do-sample", action="store_true")
    group.add_argument("--temperature", type=float, default=defaults.temperature)
    group.add_argument("--top-p", type=float, default=defaults.top_p)
    group.add_argument("--top-k", type=int, default=None)
    group.add_argument("--repetition-penalty", type=float, default=None)
    group.add_argument("--seed", type=int, default=defaults.seed)
    group.add_argument("--batch-size", type=int, default=defaults.batch_size)
    group.add_argument("--no-chat-template", action="store_true", help="feed prompts as raw text")
    group.add_argument("--system-prompt", default=None)
    group.add_argument("--positions", choices=POSITION_POLICIES, default="all",
                       help="where vectors act: all positions, prompt only, generated tokens only, or after the instruction")
    add_decoding_args(parser)


def add_decoding_args(parser: argparse.ArgumentParser) -> None:
    from steer.decoding import PLAIN, decoding_modes

    group = parser.add_argument_group("contrastive decoding (composes with --vector)")
    group.add_argument("--decoding", choices=[PLAIN, *decoding_modes().names()], default=PLAIN,
                       help="plain: the model's own logits; dola or deco: contrast with early layers "
                            "(greedy, or sampled with --do-sample)")
    group.add_argument("--dola-layers", default=None, metavar="low|high|I,J,...",
                       help="DoLa candidate layers (hidden-state indices, 0 = embeddings); shortcut for layers=...")
    group.add_argument("--dola-no-final-norm", action="store_true",
                       help="DoLa early exits through the LM head alone, without the final norm: the exact tokens "
                            "of Hugging Face transformers <= 4.55 at batch 1; shortcut for early_exit_norm=false")
    group.add_argument("--decoding-config", default=None, metavar="YAML",
                       help="the mode's hyper-parameters (default: hparams/<mode>/<model>.yaml)")
    group.add_argument("--decoding-set", action="append", default=[], metavar="key=value",
                       help="override one hyper-parameter of the mode (repeatable), e.g. relative_top=0.05")


def decoding_overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    from steer.config import parse_overrides
    from steer.errors import ConfigError

    overrides = parse_overrides(getattr(args, "decoding_set", None))
    layers = getattr(args, "dola_layers", None)
    if layers is not None:
        if args.decoding != "dola":
            raise ConfigError("--dola-layers needs --decoding dola.")
        text = layers.strip()
        try:
            overrides["layers"] = text if text in ("low", "high") else [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise ConfigError(f"--dola-layers {layers!r}: use low, high, or comma-separated layer indices.") from None
    if getattr(args, "dola_no_final_norm", False):
        if args.decoding != "dola":
            raise ConfigError("--dola-no-final-norm needs --decoding dola.")
        overrides["early_exit_norm"] = False
    return overrides


def settings_from_args(args: argparse.Namespace) -> GenerationSettings:
    return GenerationSettings(
        max_new_tokens=args.max_new_tokens,
        do_sample=args.do_sample,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        batch_size=args.batch_size,
        chat_template=not args.no_chat_template,
        system_prompt=args.system_prompt,
        decoding=getattr(args, "decoding", "plain"),
        decoding_config=getattr(args, "decoding_config", None),
        decoding_overrides=decoding_overrides_from_args(args),
    )


def finite_float(text: str) -> float:
    """argparse type for a multiplier: a finite number (argparse's float takes 'inf' and 'nan')."""
    from steer.refs import MultiplierError, finite_multiplier

    try:
        return finite_multiplier(text, "multiplier")
    except MultiplierError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def split_vector_spec(spec: str) -> tuple[str, float | None]:
    """'path.safetensors:2.5' -> ('path.safetensors', 2.5); 'path' -> ('path', None).

    'library:NAME[:MULTIPLIER]' resolves to the library entry's file. Parsing is
    `steer.refs.parse_vector_ref`, the one resolver every command and the API share.
    """
    from steer.refs import parse_vector_ref

    parsed = parse_vector_ref(spec)
    return str(parsed.path), parsed.multiplier


def output_path(value: str | None) -> Path | None:
    return Path(value) if value else None
