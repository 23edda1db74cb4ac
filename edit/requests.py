"""Edit requests: EasyEdit's argument names in, one typed record per edit out.

File formats read by `load_requests` (each record's format is recognised by its keys;
`steer.edit.datasets` converts the benchmark formats):
- EasyEdit-style requests: prompt, subject, target_new, ground_truth, rephrase_prompt(s),
  locality / portability as {key: {prompt, ground_truth}} or, as KnowEdit ships them,
  {key: [{prompt, ground_truth}, ...]} (list-valued probes, answers with aliases);
- ZsRE as MEND/EasyEdit ship it (subject, src, pred, rephrase, alt, answers, loc, loc_ans,
  and the optional portability {"New Question", "New Answer"});
- CounterFact (requested_rewrite, paraphrase_prompts, neighborhood_prompts);
- KnowEdit's WikiBio (text, labels, concept, locality);
- MQuAKE (requested_rewrite list, questions, new_answer, new_answer_alias).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from steer.errors import DataError


@dataclass(frozen=True)
class Probe:
    """A prompt and the answer to score it against (teacher forcing).

    `aliases` are other acceptable answers (KnowEdit and MQuAKE list them): portability
    scores the best-matching one. Locality compares predictions on `answer` only.
    """

    prompt: str
    answer: str
    aliases: tuple[str, ...] = ()

    @property
    def answers(self) -> tuple[str, ...]:
        return (self.answer, *self.aliases)


@dataclass(frozen=True)
class EditRequest:
    prompt: str
    target_new: str
    subject: str | None = None  # None only for methods that do not edit at the subject (ft_l, ft_m)
    ground_truth: str | None = None
    rephrase_prompts: tuple[str, ...] = ()
    # key -> one or more probes (KnowEdit and CounterFact have several per key)
    locality: dict[str, tuple[Probe, ...]] = field(default_factory=dict)
    portability: dict[str, tuple[Probe, ...]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _as_list(value: Any, n: int, name: str) -> list[Any]:
    if value is None:
        return [None] * n
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or len(value) != n:
        raise DataError(f"{name} must be a list with one entry per prompt ({n}); got {value!r:.120}.")
    return list(value)


def _flatten(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [text for item in value for text in _flatten(item)]
    return [] if value is None else [str(value)]


def answers_of(value: Any, where: str) -> tuple[str, ...]:
    """An answer, a list of aliases, or KnowEdit's list of alias lists -> (answer, *aliases)."""
    answers = tuple(dict.fromkeys(a for a in _flatten(value) if a.strip()))
    if not answers:
        raise DataError(f"{where}: the answer is empty.")
    return answers


def _first(value: Any) -> str:
    # EasyEdit lets ground truths be lists of acceptable answers; the first is the target.
    return answers_of(value, "answer")[0]


def _optional(value: Any) -> str | None:
    """The first non-empty answer, or None (an absent or empty ground truth)."""
    found = [a for a in _flatten(value) if a.strip()]
    return found[0] if found else None


def make_probes(prompt: Any, answer: Any, where: str) -> tuple[Probe, ...]:
    """One probe, or several when `prompt` is a list (then `answer` has one entry per prompt)."""
    if isinstance(prompt, (list, tuple)):
        answers = answer if isinstance(answer, (list, tuple)) and len(answer) == len(prompt) else None
        if answers is None:
            raise DataError(f"{where}: {len(prompt)} prompts need a ground_truth list of the same length.")
        return tuple(p for one, a in zip(prompt, answers) for p in make_probes(one, a, where))
    found = answers_of(answer, where)
    return (Probe(str(prompt), found[0], found[1:]),)


def _probes(inputs: dict[str, Any] | None, n: int, name: str) -> list[dict[str, tuple[Probe, ...]]]:
    """EasyEdit's {'key': {'prompt': [...], 'ground_truth': [...]}} -> one {key: probes} per edit.

    Each edit's prompt may itself be a list of prompts (with a list of answers)."""
    per_edit: list[dict[str, tuple[Probe, ...]]] = [{} for _ in range(n)]
    for key, spec in (inputs or {}).items():
        if not isinstance(spec, dict) or "prompt" not in spec or "ground_truth" not in spec:
            raise DataError(f"{name}[{key!r}] needs 'prompt' and 'ground_truth' lists.")
        prompts, answers = spec["prompt"], spec["ground_truth"]
        if n == 1 and (isinstance(prompts, str) or (isinstance(prompts, (list, tuple)) and len(prompts) != 1)):
            prompts, answers = [prompts], [answers]
        prompts = _as_list(prompts, n, f"{name}[{key!r}]['prompt']")
        answers = _as_list(answers, n, f"{name}[{key!r}]['ground_truth']")
        for i, (prompt, answer) in enumerate(zip(prompts, answers)):
            if prompt is not None and answer is not None:
                per_edit[i][key] = make_probes(prompt, answer, f"{name}[{key!r}], edit {i}")
    return per_edit


def build_requests(
    prompts: str | Sequence[str],
    target_new: str | Sequence[str],
    ground_truth: str | Sequence[str | None] | None = None,
    subject: str | Sequence[str] | None = None,
    rephrase_prompts: str | Sequence[str | Sequence[str] | None] | None = None,
    locality_inputs: dict[str, Any] | None = None,
    portability_inputs: dict[str, Any] | None = None,
) -> list[EditRequest]:
    """EasyEdit's `editor.edit(...)` arguments -> requests."""
    prompt_list = [prompts] if isinstance(prompts, str) else list(prompts)
    n = len(prompt_list)
    if n == 0:
        raise DataError("No prompts to edit.")
    targets = _as_list(target_new, n, "target_new")
    truths = _as_list(ground_truth, n, "ground_truth")
    subjects = _as_list(subject, n, "subject")
    rephrases = [rephrase_prompts] if n == 1 and isinstance(rephrase_prompts, str) else rephrase_prompts
    rephrases = _as_list(rephrases, n, "rephrase_prompts")
    localities = _probes(locality_inputs, n, "locality_inputs")
    portabilities = _probes(portability_inputs, n, "portability_inputs")
    requests = []
    for i in range(n):
        if not targets[i]:
            raise DataError(f"Edit {i}: target_new must be non-empty.")
        if subjects[i] is not None and not str(subjects[i]).strip():
            raise DataError(f"Edit {i}: the subject is empty; give it as written in the prompt, or leave subject unset "
                            "for methods that do not use it (ft_l, ft_m).")
        rephrase = rephrases[i]
        rephrase_tuple = () if rephrase is None else (rephrase,) if isinstance(rephrase, str) else tuple(rephrase)
        requests.append(
            EditRequest(
                prompt=str(prompt_list[i]),
                target_new=_first(targets[i]),
                subject=None if subjects[i] is None else str(subjects[i]),
                ground_truth=_optional(truths[i]),
                rephrase_prompts=rephrase_tuple,
                locality=localities[i],
                portability=portabilities[i],
            )
        )
    return requests


def record_probes(value: Any, where: str) -> dict[str, tuple[Probe, ...]]:
    """{key: {prompt, ground_truth}} or KnowEdit's {key: [{prompt, ground_truth}, ...]} -> {key: probes}."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DataError(f"{where}: expected {{key: {{'prompt': ..., 'ground_truth': ...}}}} or {{key: [...]}}.")
    out: dict[str, tuple[Probe, ...]] = {}
    for key, spec in value.items():
        items = spec if isinstance(spec, list) else [spec]
        probes: list[Probe] = []
        for item in items:
            if not isinstance(item, dict) or "prompt" not in item or "ground_truth" not in item:
                raise DataError(f"{where}[{key!r}] needs 'prompt' and 'ground_truth'.")
            probes += make_probes(item["prompt"], item["ground_truth"], f"{where}[{key!r}]")
        if probes:
            out[key] = tuple(probes)
    return out


def easyedit_request(record: dict[str, Any], where: str) -> EditRequest:
    """An EasyEdit-style (or KnowEdit ZsRE / wiki_counterfact / WikiData_recent) record."""
    missing = [k for k in ("prompt", "target_new") if not _flatten(record.get(k))]
    if missing:
        raise DataError(
            f"{where}: missing {', '.join(missing)}. Requests need prompt, subject and target_new "
            "(EasyEdit style) or subject, src and alt (ZsRE); CounterFact, KnowEdit and MQuAKE records are "
            "recognised by their own keys."
        )
    rephrase = record.get("rephrase_prompts", record.get("rephrase_prompt", record.get("rephrase")))
    rephrase_tuple = () if not rephrase else (rephrase,) if isinstance(rephrase, str) else tuple(rephrase)
    locality = record_probes(record.get("locality"), f"{where}: locality")
    if "locality_prompt" in record and "locality_ground_truth" in record:
        locality["neighborhood"] = make_probes(record["locality_prompt"], record["locality_ground_truth"], where)
    subject = record.get("subject")
    return EditRequest(
        prompt=str(record["prompt"]),
        target_new=_first(record["target_new"]),
        subject=str(subject) if subject is not None and str(subject).strip() else None,
        ground_truth=_optional(record.get("ground_truth")),
        rephrase_prompts=rephrase_tuple,
        locality=locality,
        portability=record_probes(record.get("portability"), f"{where}: portability"),
    )


def requests_from_record(record: Any, where: str) -> list[EditRequest]:
    """The requests of one record in any format `load_requests` reads (MQuAKE cases can hold several)."""
    from steer.edit.datasets import convert_record

    if not isinstance(record, dict):
        raise DataError(f"{where}: each request must be a JSON object.")
    converted = convert_record(record, where)
    return converted if converted is not None else [easyedit_request(record, where)]


def request_from_record(record: Any, where: str) -> EditRequest:
    """One request from a record that holds one edit."""
    requests = requests_from_record(record, where)
    if len(requests) != 1:
        raise DataError(f"{where}: this record holds {len(requests)} edits; read it with load_requests.")
    return requests[0]


def load_requests(path: str, limit: int | None = None, *,
                  on_invalid: Callable[[str], None] | None = None) -> list[EditRequest]:
    """Requests from the first `limit` records of a file.

    An invalid record (for example an empty target) is an error naming it, unless
    `on_invalid` is given: then it gets the message and the record is skipped.
    """
    from steer.io.datasets import load_records

    records = load_records(path)
    if limit:
        records = records[:limit]
    requests = []
    for i, record in enumerate(records):
        try:
            requests.extend(requests_from_record(record, f"{path}, item {i}"))
        except DataError as error:
            if on_invalid is None:
                raise
            on_invalid(str(error))
    if not requests:
        raise DataError(f"{path}: no valid edit requests.")
    return requests
