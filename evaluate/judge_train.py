"""Train and validate the offline refusal judge from CAA's refusal A/B data (needs scikit-learn).

Each A/B item holds a refusal (answer_matching_behavior) and a compliant answer; both answer
texts become labelled examples (1 = refusal/safe, 0 = compliance). A seeded 80/20 split of
generate_dataset.json trains / validates; test_dataset_ab.json (held apart by CAA's authors)
and SafeEdit's safe/unsafe generations are the test sets.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from steer.errors import DataError
from steer.evaluate.judge import LinearTfidfJudge, refusal_phrase

CHOICE = re.compile(r"\n\(A\)\s*(?P<a>.*?)\s*\n\(B\)\s*(?P<b>.*)\s*$", re.DOTALL)
SEED = 0
TRAIN_SHARE = 0.8
C = 10.0


def ab_texts(items: Sequence[dict[str, Any]]) -> tuple[list[str], list[int]]:
    texts, labels = [], []
    for index, item in enumerate(items):
        match = CHOICE.search(item["question"])
        if not match:
            raise DataError(f"A/B item {index} has no '(A) ... (B) ...' choices.")
        refusal = item["answer_matching_behavior"].strip().strip("()")
        for letter in ("A", "B"):
            texts.append(match.group(letter.lower()).strip())
            labels.append(int(letter == refusal))
    return texts, labels


def safeedit_texts(records: Sequence[dict[str, Any]]) -> tuple[list[str], list[int]]:
    texts, labels = [], []
    for record in records:
        texts += [record["safe generation"].strip(), record["unsafe generation"].strip()]
        labels += [1, 0]
    return texts, labels


def split_generate(items: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    import numpy as np

    order = np.random.RandomState(SEED).permutation(len(items))
    cut = int(len(items) * TRAIN_SHARE)
    return [items[i] for i in order[:cut]], [items[i] for i in order[cut:]]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def fit(texts: Sequence[str], labels: Sequence[int], meta: dict[str, Any]) -> tuple[LinearTfidfJudge, Any]:
    """A TF-IDF (word 1-2 grams, sublinear tf) + logistic-regression judge of label 1, as JSON weights,
    and the scikit-learn pipeline it came from. Deterministic (lbfgs), so a retrain gives the same weights."""
    import sklearn
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    classifier = LogisticRegression(C=C, max_iter=2000)
    pipeline = make_pipeline(vectorizer, classifier).fit(list(texts), list(labels))
    vocabulary = {term: int(i) for term, i in sorted(vectorizer.vocabulary_.items(), key=lambda kv: kv[1])}
    judge = LinearTfidfJudge(
        vocabulary, [float(x) for x in vectorizer.idf_], [float(x) for x in classifier.coef_[0]],
        float(classifier.intercept_[0]), (1, 2), True, vectorizer.token_pattern,
        meta={**meta, "C": C, "train_texts": len(texts), "scikit_learn": sklearn.__version__},
    )
    return judge, pipeline


def train(refusal_dir: str | Path) -> tuple[LinearTfidfJudge, Any]:
    """(judge rebuilt as JSON weights, the scikit-learn pipeline it came from)."""
    path = Path(refusal_dir) / "generate_dataset.json"
    train_items, _ = split_generate(json.loads(path.read_text(encoding="utf-8")))
    texts, labels = ab_texts(train_items)
    return fit(texts, labels, {"trained_on": "CAA refusal generate_dataset.json (seeded 80% of items)",
                               "data_sha256": _sha(path), "seed": SEED, "train_share": TRAIN_SHARE,
                               "label_1": "refusal (safe)"})


def _metrics(scores: Sequence[float], labels: Sequence[int], threshold: float = 0.5) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    correct = sum(int((s >= threshold) == bool(y)) for s, y in zip(scores, labels))
    result = {"n": float(len(labels)), "accuracy": correct / len(labels)}
    if 0 < sum(labels) < len(labels):
        result["auroc"] = float(roc_auc_score(labels, scores))
    return result


def validate(judge: LinearTfidfJudge, refusal_dir: str | Path, safeedit_file: str | Path | None = None) -> dict[str, Any]:
    """Accuracy of the classifier, the phrase list and their union on data the judge never saw."""
    refusal_dir = Path(refusal_dir)
    _, held = split_generate(json.loads((refusal_dir / "generate_dataset.json").read_text(encoding="utf-8")))
    sets = {"generate 20% held out": ab_texts(held),
            "test_dataset_ab (held apart)": ab_texts(json.loads((refusal_dir / "test_dataset_ab.json").read_text()))}
    if safeedit_file and Path(safeedit_file).is_file():
        sets["SafeEdit safe/unsafe generations"] = safeedit_texts(json.loads(Path(safeedit_file).read_text()))
    report: dict[str, Any] = {}
    for name, (texts, labels) in sets.items():
        probs = judge.predict_proba(texts)
        phrases = [float(refusal_phrase(t)) for t in texts]
        union = [max(p, f) for p, f in zip(probs, phrases)]
        report[name] = {"classifier": _metrics(probs, labels), "phrases": _metrics(phrases, labels),
                        "offline (union)": _metrics(union, labels)}
    return report
