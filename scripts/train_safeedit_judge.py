"""Retrain steer's offline refusal judge and write it as package data (JSON weights, no pickle).

    python scripts/train_safeedit_judge.py --refusal-dir ../shared/data/caa/refusal \
        --safeedit ../shared/data/safeedit/SafeEdit_test_head.json

Prints held-out accuracies and stores them in the file's meta; tests check the shipped
weights equal a fresh retrain.
"""

from __future__ import annotations

import argparse
import json

from steer.evaluate.judge import shipped_judge_path
from steer.evaluate.judge_train import train, validate
from steer.io.atomic import write_json_atomic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refusal-dir", required=True, help="folder with CAA refusal generate/test datasets")
    parser.add_argument("--safeedit", help="SafeEdit JSON with safe/unsafe generations (extra test set)")
    parser.add_argument("--out", default=str(shipped_judge_path()))
    args = parser.parse_args()
    judge, _ = train(args.refusal_dir)
    report = validate(judge, args.refusal_dir, args.safeedit)
    judge.meta = {**(judge.meta or {}), "validation": report}
    print(json.dumps(report, indent=2))
    print(f"wrote {write_json_atomic(args.out, judge.to_json())}")


if __name__ == "__main__":
    main()
