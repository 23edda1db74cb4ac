"""EasyEdit's metrics, computed by teacher forcing over the answer's tokens.

- rewrite_acc / rephrase_acc / portability: the fraction of answer tokens that are the
  model's argmax given the prompt and the answer's earlier tokens (token-level accuracy).
  A key with several probes (KnowEdit, CounterFact's neighbourhood, MQuAKE's questions)
  reports their mean; a portability answer with aliases counts its best-scoring alias,
  so "Kai Wegner" and "Kai Peter Wegner" are both right.
- counterfact (CounterFact-shaped requests only: a ground truth and neighbourhood prompts
  answered by it): ROME's efficacy, paraphrase and neighbourhood scores, by comparing the
  mean token NLL of the new and the true answer (`counterfact_scores`).
- locality (after an edit): the fraction of the locality answer's positions where the
  edited model's argmax equals the unedited model's argmax (EasyEdit's definition: the
  edit should not change what the model predicted). Before an edit, `locality` holds the
  plain token accuracy against the given answer instead, for reference.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from steer.edit.requests import EditRequest
from steer.edit.tokens import encode, pad_right


@dataclass(frozen=True)
class Scored:
    accuracy: float
    predicted: list[int]  # argmax token at each answer position


def _answer_logits(
    model: Any, tokenizer: Any, probes: Sequence[tuple[str, str]], batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(logits [A, V] at the positions that predict each answer token, the answer's ids [A]) per probe, in order.

    One teacher-forced pass per batch of right-padded (prompt + answer) rows; every metric
    here reads its answer tokens through this.
    """
    rows = [encode(tokenizer, prompt, answer) for prompt, answer in probes]
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            ids, mask = pad_right(tokenizer, batch, device)
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            for i, row in enumerate(batch):
                positions = torch.tensor(row.target, device=device)
                yield logits[i, positions - 1], ids[i, positions]


def score(model: Any, tokenizer: Any, probes: Sequence[tuple[str, str]], batch_size: int = 16) -> list[Scored]:
    out: list[Scored] = []
    for logits, answer in _answer_logits(model, tokenizer, probes, batch_size):
        predicted = logits.argmax(-1)
        out.append(Scored(float((predicted == answer).float().mean()), predicted.tolist()))
    return out


def mean_nll(model: Any, tokenizer: Any, probes: Sequence[tuple[str, str]], batch_size: int = 16) -> list[float]:
    """Mean negative log-likelihood per answer token, by teacher forcing (as ROME's CounterFact tests)."""
    out: list[float] = []
    for logits, answer in _answer_logits(model, tokenizer, probes, batch_size):
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        out.append(float(-log_probs.gather(1, answer.unsqueeze(1)).mean()))
    return out


def counterfact_scores(model: Any, tokenizer: Any, request: EditRequest) -> dict[str, float | None] | None:
    """CounterFact's scores (Meng et al., 2022), for a request shaped like a CounterFact record.

    efficacy / paraphrase: share of the prompt / rephrasings where the new target is more likely
    than the true one (lower mean token NLL); neighborhood_score: share of the neighbourhood
    prompts (locality key "neighborhood" with the true answer) where the true one stays more
    likely. None when the request has no ground truth or no such neighbourhood.
    """
    true = request.ground_truth
    neighbours = [p.prompt for p in request.locality.get("neighborhood", ()) if p.answer == true]
    if not true or not neighbours:
        return None
    groups = {"efficacy_score": [request.prompt], "paraphrase_score": list(request.rephrase_prompts),
              "neighborhood_score": neighbours}
    prompts = [p for group in groups.values() for p in group]
    nll_new = mean_nll(model, tokenizer, [(p, request.target_new) for p in prompts])
    nll_true = mean_nll(model, tokenizer, [(p, true) for p in prompts])
    scores: dict[str, float | None] = {}
    start = 0
    for name, group in groups.items():
        pairs = list(zip(nll_new[start : start + len(group)], nll_true[start : start + len(group)]))
        start += len(group)
        wins = [(new < old) if name != "neighborhood_score" else (old < new) for new, old in pairs]
        scores[name] = sum(wins) / len(wins) if wins else None
    return scores


def _probes(request: EditRequest) -> list[tuple[str, str, int, str, str]]:
    """(kind, key, probe index, prompt, answer) for everything measured about one request.

    A portability probe with aliases is scored once per alias (the best one counts)."""
    items: list[tuple[str, str, int, str, str]] = [("rewrite", "", 0, request.prompt, request.target_new)]
    items += [("rephrase", "", i, p, request.target_new) for i, p in enumerate(request.rephrase_prompts)]
    items += [("locality", k, i, p.prompt, p.answer) for k, probes in request.locality.items()
              for i, p in enumerate(probes)]
    items += [("portability", k, i, p.prompt, a) for k, probes in request.portability.items()
              for i, p in enumerate(probes) for a in p.answers]
    return items


def evaluate(
    model: Any, tokenizer: Any, request: EditRequest, before: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Metrics of one request; pass the `before` result to get locality as agreement with it.

    Public keys: rewrite_acc, rephrase_acc (mean over rephrasings), locality {key: mean over
    its probes}, portability {key: mean over its probes of the best alias}. `_per_probe`
    keeps every probe's value (EasyEdit's list layout is built from it)."""
    probes = _probes(request)
    scored = score(model, tokenizer, [(p, a) for _, _, _, p, a in probes])
    per_probe: dict[str, Any] = {"rewrite": [], "rephrase": [], "locality": {}, "portability": {}}
    predictions: dict[str, list[list[int]]] = {}
    for (kind, key, index, _, _), result in zip(probes, scored):
        if kind in ("rewrite", "rephrase"):
            per_probe[kind].append(result.accuracy)
        elif kind == "portability":
            values = per_probe["portability"].setdefault(key, [])
            if index == len(values):
                values.append(result.accuracy)
            else:  # another alias of the same probe: keep the best
                values[index] = max(values[index], result.accuracy)
        else:
            predictions.setdefault(key, []).append(result.predicted)
            if before is None:
                per_probe["locality"].setdefault(key, []).append(result.accuracy)
            else:
                old = before["_locality_predictions"][key][index]
                per_probe["locality"].setdefault(key, []).append(
                    sum(a == b for a, b in zip(old, result.predicted)) / len(old))
    metrics: dict[str, Any] = {
        "rewrite_acc": per_probe["rewrite"][0],
        "rephrase_acc": sum(per_probe["rephrase"]) / len(per_probe["rephrase"]) if per_probe["rephrase"] else None,
        "locality": {k: sum(v) / len(v) for k, v in per_probe["locality"].items()},
        "portability": {k: sum(v) / len(v) for k, v in per_probe["portability"].items()},
        "_locality_predictions": predictions,
        "_per_probe": per_probe,
    }
    counterfact = counterfact_scores(model, tokenizer, request)
    if counterfact is not None:
        metrics["counterfact"] = counterfact
    return metrics


def public(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics without internal bookkeeping (what reports show)."""
    return {k: v for k, v in metrics.items() if not k.startswith("_")}
