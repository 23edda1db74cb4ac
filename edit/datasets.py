"""Knowledge-editing benchmarks as edit requests: ZsRE, CounterFact, KnowEdit, MQuAKE.

Each format is recognised by its own keys (`record_format`), so one `load_requests(path)`
(and `steer edit --requests`) reads them all:

| format | keys | request | rephrase | locality | portability |
|---|---|---|---|---|---|
| ZsRE (MEND/ROME) | src, alt, subject | src -> alt | rephrase | `neighborhood`: loc -> loc_ans | `one_hop`: portability["New Question"] -> ["New Answer"] |
| CounterFact | requested_rewrite (a dict), neighborhood_prompts | prompt.format(subject) -> target_new.str | paraphrase_prompts | `neighborhood`: each neighbourhood prompt -> target_true.str | - |
| KnowEdit ZsRE / wiki_counterfact / WikiData_recent | prompt, target_new, locality/portability as {key: [probes]} | prompt -> target_new | rephrase(_prompt) | each key, every probe | each key, every probe; answers with aliases |
| KnowEdit WikiBio | text, labels, concept | text -> labels (subject: concept) | - | each key | - |
| MQuAKE | requested_rewrite (a list), questions, new_answer | one request per rewrite | the rewrite's question | - | `multi_hop`: each question -> new_answer (+ aliases), on the case's last rewrite |
| SafeEdit | adversarial prompt, safe generation, unsafe generation | adversarial prompt -> safe generation (ground_truth: the unsafe one) | - | `general knowledge constraint`: knowledge constrain prompt -> answer | - |

An MQuAKE case with several rewrites becomes several requests; its multi-hop
questions are attached to the last, so they measure the chain only when the edits
are kept (`sequential_edit=True`, `steer edit --sequential`).
"""

from __future__ import annotations

import ast
from typing import Any

from steer.edit.requests import EditRequest, Probe, answers_of, easyedit_request, make_probes
from steer.errors import DataError


def record_format(record: dict[str, Any]) -> str:
    """'zsre', 'counterfact', 'mquake', 'wikibio', 'safeedit' or 'easyedit' (which includes KnowEdit's other sets)."""
    if {"src", "alt", "subject"} <= set(record):
        return "zsre"
    rewrite = record.get("requested_rewrite")
    if isinstance(rewrite, list) and "questions" in record:
        return "mquake"
    if isinstance(rewrite, dict):
        return "counterfact"
    if {"text", "labels", "concept"} <= set(record):
        return "wikibio"
    if {"adversarial prompt", "safe generation"} <= set(record):
        return "safeedit"
    return "easyedit"


def _text(value: Any) -> str:
    return str(value.get("str", "")) if isinstance(value, dict) else str(value or "")


def zsre_request(record: dict[str, Any], where: str) -> EditRequest:
    if not str(record["alt"]).strip() or not str(record["subject"]).strip():
        raise DataError(f"{where}: 'alt' (the new target) and 'subject' must be non-empty; fix or drop this record "
                        "(steer edit --skip-invalid skips such records and lists them).")
    answers = record.get("answers") or [None]
    portability: dict[str, tuple[Probe, ...]] = {}
    port = record.get("portability")
    if isinstance(port, dict) and port.get("New Question") and port.get("New Answer"):
        portability["one_hop"] = make_probes(port["New Question"], port["New Answer"], f"{where}: portability")
    return EditRequest(
        prompt=record["src"],
        target_new=record["alt"],
        subject=record["subject"],
        ground_truth=answers[0],
        rephrase_prompts=(record["rephrase"],) if record.get("rephrase") else (),
        locality={"neighborhood": (Probe(record["loc"], record["loc_ans"]),)} if record.get("loc") else {},
        portability=portability,
    )


def _rewrite_parts(rewrite: Any, where: str) -> tuple[str, str, str, str | None]:
    """CounterFact/MQuAKE rewrite -> (prompt with the subject filled in, subject, target_new, target_true)."""
    if not isinstance(rewrite, dict) or "prompt" not in rewrite or "subject" not in rewrite:
        raise DataError(f"{where}: requested_rewrite needs prompt, subject and target_new.")
    subject, template = str(rewrite["subject"]), str(rewrite["prompt"])
    prompt = template.replace("{}", subject) if "{}" in template else template
    target = _text(rewrite.get("target_new")).strip()
    if not target or not subject.strip():
        raise DataError(f"{where}: the rewrite's subject and target_new.str must be non-empty.")
    true = _text(rewrite.get("target_true")).strip() or None
    return prompt, subject, target, true


def counterfact_requests(record: dict[str, Any], where: str) -> list[EditRequest]:
    prompt, subject, target, true = _rewrite_parts(record["requested_rewrite"], where)
    neighbours = [str(p) for p in record.get("neighborhood_prompts") or []]
    locality: dict[str, tuple[Probe, ...]] = {}
    if neighbours:
        if true is None:
            raise DataError(f"{where}: neighborhood_prompts are scored against target_true.str, which is missing.")
        # neighbourhood prompts are sometimes dicts {"prompt", "target"} (MEND-style conversions)
        locality["neighborhood"] = tuple(
            Probe(str(n["prompt"]), str(n["target"])) if isinstance(n, dict) else Probe(n, true)
            for n in record["neighborhood_prompts"]
        )
    return [EditRequest(prompt=prompt, target_new=target, subject=subject, ground_truth=true,
                        rephrase_prompts=tuple(str(p) for p in record.get("paraphrase_prompts") or []),
                        locality=locality)]


def wikibio_request(record: dict[str, Any], where: str) -> EditRequest:
    return easyedit_request({"prompt": record["text"], "target_new": record["labels"], "subject": record["concept"],
                             "locality": record.get("locality")}, where)


def mquake_requests(record: dict[str, Any], where: str) -> list[EditRequest]:
    rewrites = record["requested_rewrite"]
    if not rewrites:
        raise DataError(f"{where}: an MQuAKE case needs at least one requested_rewrite.")
    questions = [str(q) for q in record.get("questions") or []]
    portability: dict[str, tuple[Probe, ...]] = {}
    if questions:
        answers = answers_of([record.get("new_answer"), record.get("new_answer_alias") or []],
                             f"{where}: new_answer")
        portability["multi_hop"] = tuple(Probe(q, answers[0], answers[1:]) for q in questions)
    requests = []
    for i, rewrite in enumerate(rewrites):
        prompt, subject, target, true = _rewrite_parts(rewrite, f"{where}, rewrite {i}")
        question = rewrite.get("question")
        requests.append(EditRequest(prompt=prompt, target_new=target, subject=subject, ground_truth=true,
                                    rephrase_prompts=(str(question),) if question else (),
                                    portability=portability if i == len(rewrites) - 1 else {}))
    return requests


def safeedit_request(record: dict[str, Any], where: str) -> EditRequest:
    """A SafeEdit record: detoxify the answer to the adversarial prompt, keep general knowledge."""
    knowledge = record.get("knowledge constrain")
    if isinstance(knowledge, str):  # some copies store the dict as its Python text
        try:
            knowledge = ast.literal_eval(knowledge)
        except (ValueError, SyntaxError):
            raise DataError(f"{where}: 'knowledge constrain' is neither a mapping nor its literal text.") from None
    locality: dict[str, tuple[Probe, ...]] = {}
    if isinstance(knowledge, dict) and knowledge.get("prompt") and knowledge.get("answer"):
        locality["general knowledge constraint"] = (Probe(str(knowledge["prompt"]), str(knowledge["answer"])),)
    unsafe = record.get("unsafe generation")
    return EditRequest(prompt=str(record["adversarial prompt"]), target_new=str(record["safe generation"]),
                       ground_truth=str(unsafe) if unsafe else None, locality=locality)


def convert_record(record: dict[str, Any], where: str) -> list[EditRequest] | None:
    """Requests from a benchmark record, or None for EasyEdit-style records (read by `easyedit_request`)."""
    kind = record_format(record)
    if kind == "zsre":
        return [zsre_request(record, where)]
    if kind == "counterfact":
        return counterfact_requests(record, where)
    if kind == "mquake":
        return mquake_requests(record, where)
    if kind == "wikibio":
        return [wikibio_request(record, where)]
    if kind == "safeedit":
        return [safeedit_request(record, where)]
    return None
