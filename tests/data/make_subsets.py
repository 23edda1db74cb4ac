"""Regenerate the small data subsets in tests/data from the project's shared data folder.

    python tests/data/make_subsets.py --shared-data ../shared/data          # (re)write the files
    python tests/data/make_subsets.py --shared-data ../shared/data --check  # only compare; exit 1 on a difference

Every file keeps its source's path below the data folder and its source's format, so the tests
exercise the same loaders as on the full files. Three rules (see README.md beside this script):
- copy:  the whole file, byte for byte;
- items: the first N items of a JSON list, written as the source is (json.dumps(indent=4), no final newline);
- lines: the first N lines, byte for byte (a prefix of the source; line endings kept).

SafeEdit is not copied (CC BY-NC-SA 4.0, access gated by its authors): safeedit/SafeEdit_standin.json
is written by hand in its schema, and this script checks that schema against the real file's.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Subset:
    path: str  # relative to the data folder, the same in shared/data and tests/data
    rule: str  # "copy", "items" or "lines"
    count: int | None = None  # N for "items" and "lines"


SUBSETS = [
    # the refusal judge is retrained on the whole generate file and must equal the shipped judge
    Subset("caa/refusal/generate_dataset.json", "copy"),
    Subset("caa/refusal/test_dataset_ab.json", "copy"),
    # the shipped power-seeking pairs and judge are derived from the whole generate file
    Subset("caa/power-seeking-inclination/generate_dataset.json", "copy"),
    Subset("caa/power-seeking-inclination/test_dataset_ab.json", "copy"),
    # `steer generate ... max_items=32` and `steer apply ... --limit 12`: a few more than read, so the limits cut
    Subset("caa/sycophancy/generate_dataset.json", "items", 48),
    Subset("caa/sycophancy/test_dataset_ab.json", "items", 16),
    # the held-apart neutral prompts (first 48) and the vectors' training texts (max_items / max_texts 200)
    Subset("prompts/neutral_prompts.jsonl", "lines", 48),
    Subset("prompts/positive_prompts.jsonl", "lines", 200),
    Subset("prompts/negative_prompts.jsonl", "lines", 200),
    Subset("prompts/nontoxic_prompts-10k_first50.jsonl", "copy"),
    # the first two articles (Robert Boulter, Du Fu): lines 1-71, before " = Kiss You ( One Direction song ) = "
    Subset("text/wikitext-2-raw-test.txt", "lines", 71),
]

# hand-written stand-ins, checked to have the same fields (and field types) as the records of their source
STANDINS = {"safeedit/SafeEdit_standin.json": "safeedit/SafeEdit_test_head.json"}


def schema(value: object) -> object:
    """The nested field names and value types of a JSON value (list items must share one schema)."""
    if isinstance(value, dict):
        return {key: schema(item) for key, item in value.items()}
    if isinstance(value, list):
        shapes = [schema(item) for item in value]
        return [shapes[0]] if shapes and all(s == shapes[0] for s in shapes) else shapes
    return type(value).__name__


def cut(subset: Subset, source: Path) -> bytes:
    """The bytes of `subset` taken from `source`; raises ValueError when the source does not fit the rule."""
    data = source.read_bytes()
    if subset.rule == "copy":
        return data
    if subset.count is None:
        raise ValueError(f"{subset.path}: the rule {subset.rule!r} needs a count")
    if subset.rule == "items":
        text = data.decode("utf-8")
        items = json.loads(text)
        if not isinstance(items, list) or len(items) < subset.count:
            raise ValueError(f"{source}: expected a JSON list of at least {subset.count} items")
        if json.dumps(items, indent=4) != text:
            raise ValueError(f"{source} is not written as json.dumps(indent=4); its cut would not keep its format")
        return json.dumps(items[: subset.count], indent=4).encode("utf-8")
    if subset.rule == "lines":
        lines = data.splitlines(keepends=True)
        if len(lines) < subset.count:
            raise ValueError(f"{source}: {len(lines)} lines, fewer than the {subset.count} to keep")
        return b"".join(lines[: subset.count])
    raise ValueError(f"unknown rule {subset.rule!r} for {subset.path}")


def _write(path: Path, data: bytes) -> None:
    from steer.io.atomic import atomic_write

    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared-data", type=Path, required=True,
                        help="the folder holding caa/, prompts/, safeedit/ and text/ (the project's shared data)")
    parser.add_argument("--out", type=Path, default=HERE, help="where to write (default: this script's folder)")
    parser.add_argument("--check", action="store_true", help="compare with the files in --out; write nothing")
    args = parser.parse_args(argv)
    missing = [s.path for s in SUBSETS if not (args.shared_data / s.path).is_file()]
    missing += [source for source in STANDINS.values() if not (args.shared_data / source).is_file()]
    if missing:
        parser.error(f"{args.shared_data} lacks {', '.join(missing)}; point --shared-data at the folder that "
                     "holds caa/, prompts/, safeedit/ and text/ (e.g. ../shared/data)")
    differ = []
    for subset in SUBSETS:
        try:
            data = cut(subset, args.shared_data / subset.path)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        target = args.out / subset.path
        if args.check:
            same = target.is_file() and target.read_bytes() == data
            differ += [] if same else [subset.path]
            print(f"{'ok     ' if same else 'DIFFERS'} {subset.path}")
        else:
            _write(target, data)
            print(f"{len(data):>9,} bytes  {subset.rule:<5} {subset.count or '':>4}  {subset.path}")
    for standin, source in STANDINS.items():
        real = schema(json.loads((args.shared_data / source).read_text(encoding="utf-8")))
        ours = schema(json.loads((args.out / standin).read_text(encoding="utf-8")))
        if ours != real:
            differ.append(standin)
            print(f"error: {standin} has other fields than {source}: {ours} vs {real}", file=sys.stderr)
        else:
            print(f"{'schema ok':<25} {standin} (hand-written; same fields as {source})")
    if differ:
        print(f"{len(differ)} file(s) differ from what {args.shared_data} gives: rerun without --check to rewrite "
              "the copies; a stand-in is fixed by hand", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
