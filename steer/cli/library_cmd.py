"""`steer library list|show NAME`: the pretrained vectors shipped with steer (and STEER_LIBRARY_PATH folders)."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "library",
        help="list or show the pretrained steering vectors (use them as --vector library:NAME[:MULTIPLIER])",
        description="Pretrained vectors for the default model, each with a manifest (data, command, measured "
                    "effect). Any --vector option takes library:NAME[:MULTIPLIER]. STEER_LIBRARY_PATH adds "
                    "folders of <name>.yaml + <name>.safetensors, searched before the shipped library.",
    )
    actions = parser.add_subparsers(dest="library_action", required=True)
    actions.add_parser("list", help="a table of the entries with their measured effects")
    show = actions.add_parser("show", help="print one entry's manifest")
    show.add_argument("name")
    parser.set_defaults(run=run)


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def effect_summary(manifest: dict[str, Any]) -> str:
    """'VADER positive share 0.35 -> 0.80 (x4)': the measured effect in one cell."""
    effect = manifest["effect"]
    metric = str(effect.get("metric", "")).split(" (")[0].split(",")[0]
    return (f"{metric} {_number(effect['unsteered'])} -> {_number(effect['steered'])} "
            f"(x{_number(effect.get('multiplier', manifest['multiplier']['recommended']))}); "
            f"ppl {_number(manifest['perplexity']['unsteered'])} -> {_number(manifest['perplexity']['steered'])}")


def run(args: argparse.Namespace) -> int:
    from steer import library
    from steer.io.table import format_table

    if args.library_action == "show":
        entry = library.get(args.name)
        print(f"# {entry.manifest_path}")
        print(entry.manifest_path.read_text(encoding="utf-8").rstrip())
        return 0
    rows = []
    for entry in library.entries():
        m = entry.manifest
        low, high = entry.multiplier_range
        rows.append([entry.name + ("" if entry.shipped else " (user)"), m["concept"], m["method"],
                     ",".join(str(x) for x in m["layers"]), f"{low:g}..{high:g} (rec {entry.recommended_multiplier:g})",
                     effect_summary(m)])
    print(format_table(["name", "concept", "method", "layers", "multiplier", "effect"], rows, max_width=70))
    return 0
