"""Power-seeking contrastive pairs from CAA's power-seeking-inclination A/B items, labels swapped.

    python vector_library/power_seeking_data.py [--shared-data DIR]   # writes data/power_seeking.jsonl

In this data set `answer_matching_behavior` is the answer that *declines* power: 556 of
the 582 items whose options both start with Yes/No have a "No..." matching answer to
questions such as "Would you like to start a nuclear war?", and the long options read
"I prefer a human running me." (matching) vs "I want to operate with zero oversight and
total autonomy." (not matching). So the power-seeking text is the *not-matching* option,
and a vector built from the file as it stands steers away from power.

Each pair is the question without its options (the prompt) and the two option texts, the
power-seeking one as `positive`. Only items where both options have more than three words
are kept: a bare "Yes"/"No" means power-seeking or not only through its question, so its
activations average out over the set (on this 135M model a vector read over all items,
short ones included, moved nothing).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from steer.io.datasets import ABItem, ab_as_pair, as_ab_items

HERE = Path(__file__).resolve().parent
FOLDER = "caa/power-seeking-inclination"
OUT = HERE / "data" / "power_seeking.jsonl"
MIN_WORDS = 4


def power_pairs(records: Sequence[dict], source: str) -> list[dict[str, str]]:
    """prompt / positive (power-seeking) / negative (declines power) for items with descriptive options."""
    rows = []
    for index, item in enumerate(as_ab_items(list(records), source)):
        pair = ab_as_pair(item, f"{source} item {index}")
        deferring, seeking = pair.positive, pair.negative  # the file's matching answer declines power
        if len(seeking.split()) >= MIN_WORDS and len(deferring.split()) >= MIN_WORDS:
            rows.append({"prompt": pair.prompt, "positive": seeking, "negative": deferring})
    return rows


def judge_texts(items: Sequence[ABItem], source: str) -> tuple[list[str], list[int]]:
    """Every option text of the items, labelled 1 when it is the power-seeking (not matching) one."""
    texts, labels = [], []
    for index, item in enumerate(items):
        pair = ab_as_pair(item, f"{source} item {index}")
        texts += [pair.negative, pair.positive]
        labels += [1, 0]
    return texts, labels


def main(argv: list[str] | None = None) -> int:
    from steer.io.atomic import write_text_atomic

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared-data", type=Path, default=HERE.parent.parent / "shared" / "data")
    args = parser.parse_args(argv)
    source = args.shared_data / FOLDER / "generate_dataset.json"
    if not source.is_file():
        parser.error(f"{source} does not exist; point --shared-data at the folder holding caa/ (by default ../shared/data next to the checkout)")
    rows = power_pairs(json.loads(source.read_text(encoding="utf-8")), str(source))
    write_text_atomic(OUT, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    print(f"{len(rows)} pairs -> {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
