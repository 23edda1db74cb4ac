"""Hugging Face sequence classifiers loaded from a local folder only (never downloaded, never unpickled).

Shared by the optional backends: Detoxify/toxic-bert (toxicity), a sentiment classifier,
and SafeEdit's RoBERTa safety judge.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from steer.errors import ModelNotFoundError, SteerError


@lru_cache(maxsize=4)
def _load(path: str) -> tuple[Any, Any]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise ModelNotFoundError(
            f"No Hugging Face classifier at {folder} (expected config.json and weights). Download it on a "
            "machine with hub access (e.g. `huggingface-cli download unitary/toxic-bert --local-dir DIR`) and pass DIR."
        )
    if not any(folder.glob("*.safetensors")):
        # .bin checkpoints are pickles; we only load safetensors weights.
        raise SteerError(
            f"{folder} has no .safetensors weights. Convert it once with "
            "`AutoModelForSequenceClassification.from_pretrained(DIR).save_pretrained(DIR, safe_serialization=True)`."
        )
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(str(folder), local_files_only=True,
                                                               use_safetensors=True)
    return model.eval(), tokenizer


def label_index(model: Any, label: str | int) -> int:
    """Index of a label given by name (case-insensitive) or number."""
    if isinstance(label, int) or (isinstance(label, str) and label.isdigit()):
        return int(label)
    names = {str(v).lower(): int(k) for k, v in model.config.id2label.items()}
    if label.lower() not in names:
        raise SteerError(f"The classifier has no label {label!r}; its labels are {sorted(names)}.")
    return names[label.lower()]


def classify(path: str, texts: Sequence[str], *, batch_size: int = 16, max_length: int = 512) -> tuple[Any, list[float]]:
    """(model, per-text probability rows). Multi-label models get sigmoids, others a softmax."""
    import torch

    model, tokenizer = _load(str(path))
    multi = getattr(model.config, "problem_type", None) == "multi_label_classification"
    rows: list[list[float]] = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(list(texts[start : start + batch_size]), padding=True, truncation=True,
                              max_length=max_length, return_tensors="pt")
            logits = model(**batch).logits.float()
            probs = torch.sigmoid(logits) if multi else torch.softmax(logits, dim=-1)
            rows.extend(probs.tolist())
    return model, rows  # type: ignore[return-value]
