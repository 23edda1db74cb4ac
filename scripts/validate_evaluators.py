"""Accuracy of the offline classifiers on labelled data they were not trained on.

    python scripts/validate_evaluators.py --data ../shared/data

- toxicity (alt-profanity-check): RealToxicityPrompts texts (DExperts' nontoxic_prompts random 2000:
  prompts and their continuations) labelled toxic when Perspective toxicity >= 0.5.
- refusal judge: the held-out splits (see scripts/train_safeedit_judge.py).
- sentiment (VADER): DExperts' positive vs negative prompt sets (compound > 0 => positive).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _binary(scores: list[float], labels: list[int], threshold: float) -> dict[str, float]:
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    predicted = [int(s >= threshold) for s in scores]
    return {"n": len(labels), "positives": sum(labels),
            "accuracy": sum(int(p == y) for p, y in zip(predicted, labels)) / len(labels),
            "balanced_accuracy": float(balanced_accuracy_score(labels, predicted)),
            "auroc": float(roc_auc_score(labels, scores))}


def toxicity(path: Path) -> dict[str, Any]:
    from steer.evaluate.toxicity import profanity_check_scores

    texts, labels = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        for part in ("prompt", "continuation"):
            if row[part].get("toxicity") is not None:
                texts.append(row[part]["text"])
                labels.append(int(row[part]["toxicity"] >= 0.5))
    return _binary(profanity_check_scores(texts), labels, 0.5)


def sentiment(positive: Path, negative: Path) -> dict[str, Any]:
    from steer.evaluate.sentiment import vader_compound
    from steer.io.datasets import load_prompts

    pos, neg = load_prompts(positive, with_continuation=True), load_prompts(negative, with_continuation=True)
    scores = vader_compound(pos + neg)
    return _binary([(s + 1) / 2 for s in scores], [1] * len(pos) + [0] * len(neg), 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the shared data folder")
    args = parser.parse_args()
    data = Path(args.data)
    from steer.evaluate.judge import load_judge
    from steer.evaluate.judge_train import validate

    report = {
        "toxicity (alt-profanity-check vs Perspective>=0.5)":
            toxicity(data / "prompts" / "nontoxic_prompts-10k_random2000.jsonl"),
        "sentiment (VADER, DExperts positive vs negative prompts)":
            sentiment(data / "prompts" / "positive_prompts.jsonl", data / "prompts" / "negative_prompts.jsonl"),
        "refusal judge": validate(load_judge(), data / "caa" / "refusal",
                                  data / "safeedit" / "SafeEdit_test_head.json"),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
