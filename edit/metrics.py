"""EasyEdit's metrics, computed by teacher forcing over the answer's tokens.

- rewrite_acc / rephrase_acc / portability: the fraction of answer tokens that are the
  model's argmax given the prompt and the answer's earlier tokens (token-level accuracy).
- locality (after an edit): the fraction of the locality answer's positions where the
  edited model's argmax equals the unedited model's argmax (EasyEdit's definition: the
  edit should not change what the model predicted). Before an edit, `locality` holds the
  plain token accuracy against the given answer instead, for reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from steer.edit.requests import EditRequest
from steer.edit.tokens import encode, pad_right


@dataclass(frozen=True)
class Scored:
    accuracy: float
    predicted: list[int]  # argmax token at each answer position


def score(model: Any, tokenizer: Any, probes: Sequence[tuple[str, str]], batch_size: int = 16) -> list[Scored]:
    rows = [encode(tokenizer, prompt, answer) for prompt, answer in probes]
    device = next(model.parameters()).device
    out: list[Scored] = []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            ids, mask = pad_right(tokenizer, batch, device)
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            for i, row in enumerate(batch):
                positions = torch.tensor(row.target, device=device)
                predicted = logits[i, positions - 1].argmax(-1)
                accuracy = (predicted == ids[i, positions]).float().mean()
                out.append(Scored(float(accuracy), predicted.tolist()))
    return out


def _probes(request: EditRequest) -> list[tuple[str, str, str, str | None]]:
    """(kind, key, prompt, answer) for everything measured about one request."""
    items: list[tuple[str, str, str, str | None]] = [("rewrite", "", request.prompt, request.target_new)]
    items += [("rephrase", str(i), p, request.target_new) for i, p in enumerate(request.rephrase_prompts)]
    items += [("locality", k, p.prompt, p.answer) for k, p in request.locality.items()]
    items += [("portability", k, p.prompt, p.answer) for k, p in request.portability.items()]
    return items


def evaluate(
    model: Any, tokenizer: Any, request: EditRequest, before: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Metrics of one request; pass the `before` result to get locality as agreement with it."""
    probes = _probes(request)
    scored = score(model, tokenizer, [(p, a) for _, _, p, a in probes])  # type: ignore[misc]
    metrics: dict[str, Any] = {"rewrite_acc": None, "rephrase_acc": None, "locality": {}, "portability": {}}
    rephrase: list[float] = []
    predictions: dict[str, list[int]] = {}
    for (kind, key, _, _), result in zip(probes, scored):
        if kind == "rewrite":
            metrics["rewrite_acc"] = result.accuracy
        elif kind == "rephrase":
            rephrase.append(result.accuracy)
        elif kind == "portability":
            metrics["portability"][key] = result.accuracy
        else:
            predictions[key] = result.predicted
            if before is None:
                metrics["locality"][key] = result.accuracy
            else:
                old = before["_locality_predictions"][key]
                metrics["locality"][key] = sum(a == b for a, b in zip(old, result.predicted)) / len(old)
    if rephrase:
        metrics["rephrase_acc"] = sum(rephrase) / len(rephrase)
    metrics["_locality_predictions"] = predictions
    return metrics


def public(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics without internal bookkeeping (what reports show)."""
    return {k: v for k, v in metrics.items() if not k.startswith("_")}
