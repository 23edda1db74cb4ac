"""`steer export`: write a vector in another tool's format (llama.cpp/repeng GGUF), or import one into steer's.

Reads any vector file `SteeringVector.load` reads (steer safetensors, GGUF control vectors,
EasyEdit2 layer_<L>.pt files or folders, `library:NAME`) and writes the format asked for,
so the same command exports (`--format gguf`) and imports (`--format safetensors`).
"""

from __future__ import annotations

import argparse
from typing import Any

from steer.errors import VectorError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from steer.io.codecs import writable_kinds

    parser = subparsers.add_parser(
        "export",
        help="convert a vector: to a llama.cpp control vector (gguf), or from GGUF/EasyEdit2 into steer's safetensors",
        description=(
            "Convert a vector between file kinds. --format gguf writes a llama.cpp control vector "
            "(llama-cli --control-vector FILE; repeng's ControlVector.import_gguf reads it): steer's "
            "resid_post.N becomes direction.N, the output of block N counted from 0 (llama.cpp has no "
            "slot for N = 0). --format safetensors writes steer's own file, e.g. from a repeng .gguf or "
            "an EasyEdit2 caa_vector/ folder."
        ),
    )
    parser.add_argument("vector", metavar="VECTOR[:MULTIPLIER]",
                        help="a vector file or folder (.safetensors, .gguf, EasyEdit2 layer_<L>.pt or its folder) "
                             "or library:NAME; a multiplier is multiplied into the written directions")
    parser.add_argument("--format", required=True, choices=writable_kinds(), help="the file kind to write")
    parser.add_argument("--out", required=True, help="the file to write")
    parser.add_argument("--model-hint", default=None,
                        help="gguf: controlvector.model_hint (repeng writes the model's config.model_type, e.g. "
                             "llama; default: the vector's model_type or model id)")
    parser.add_argument("--num-layers", type=int, default=None,
                        help="gguf: the model's number of layers, to turn negative layers (resid_post.-1) into "
                             "llama.cpp's absolute numbers when the vector does not record it")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from steer.io.codecs import codec, kind_of
    from steer.refs import parse_vector_ref
    from steer.vector import SteeringVector

    ref = parse_vector_ref(args.vector)
    vector = SteeringVector.load(ref.path)
    if ref.multiplier is not None and ref.multiplier != 1.0:
        vector = vector * ref.multiplier
    options: dict[str, Any] = {}
    if args.format == "gguf":
        options = {"model_hint": args.model_hint, "num_layers": args.num_layers}
    elif args.model_hint is not None or args.num_layers is not None:
        raise VectorError("--model-hint and --num-layers describe GGUF control vectors; drop them for "
                          f"--format {args.format}.")
    written = codec(args.format).write(vector, args.out, **options)
    source_kind = kind_of(ref.path)
    scaled = f" x{ref.multiplier:g}" if ref.multiplier not in (None, 1.0) else ""
    print(f"read {ref.path} ({source_kind}){scaled}: {', '.join(str(s) for s in vector.sites)}")
    if args.format == "gguf":
        from steer.io.gguf_vector import gguf_layers

        layers = gguf_layers(vector, args.num_layers)
        print("llama.cpp layers: " + ", ".join(f"direction.{n}" for n in layers)
              + " (direction.N is added to the output of block N, counting from 0, like steer's resid_post.N)")
        print(f"wrote {written}; use it with: llama-cli -m MODEL.gguf --control-vector-scaled {written} 1.0")
    else:
        print(f"wrote {written}")
    return 0
