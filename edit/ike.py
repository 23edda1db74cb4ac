"""IKE (Zheng et al., 2023, "Can We Edit Factual Knowledge by In-Context Learning?"): an edit as a context.

No weight and no module changes. An IKE edit is the new fact plus `k` demonstrations
retrieved from a pool of other edit records, and the Editor puts them in front of every
prompt it evaluates or generates from (`Editor.evaluate`, `Editor.generate`,
`Editor.prompt_with_edits`). Rolling the edit back drops the context, so the model's
behaviour is exactly what it was: nothing else was ever touched.

Demonstrations, as EasyEdit builds them from its `train_ds`: every pool record gives three,
    copy:    "New Fact: {prompt} {target}\\nPrompt: {prompt} {target}\\n\\n"
    update:  "New Fact: {prompt} {target}\\nPrompt: {rephrase} {target}\\n\\n"
    retain:  "New Fact: {prompt} {target}\\nPrompt: {locality prompt} {locality answer}\\n\\n"
(update needs a rephrasing, retain a locality probe; a record without one gives fewer).
The `k` nearest to "New Fact: {prompt} {target}\\nPrompt: {prompt}\\n\\n" are kept, nearest
first (EasyEdit's order). EasyEdit ranks by a sentence-transformers embedding
(all-MiniLM-L6-v2); no such model is available offline here, so steer ranks by the cosine
similarity of TF-IDF vectors over the pool's words (scikit-learn's `TfidfVectorizer`: smoothed
idf, raw term counts, l2 norm): no download, no extra dependency.

A prompt x is then seen as (EasyEdit's layout for one edit)
    "".join(demonstrations) + "New Fact: {prompt} {target}\\nPrompt: " + x
With several in-context edits applied, all their demonstrations come first (in edit order),
then one "New Fact: ...\\n" line per edit, then "Prompt: " + x.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from steer.edit.context import EditContext
from steer.edit.errors import EditError
from steer.edit.hparams import IKEHparams
from steer.edit.methods import EditMethod, MethodOutput
from steer.edit.requests import EditRequest, Probe, load_requests, requests_from_record
from steer.errors import DataError

@dataclass(frozen=True)
class InContextEdit:
    """One IKE edit: the new fact and the demonstrations retrieved for it."""

    fact: str  # "{prompt} {target_new}"
    demonstrations: tuple[str, ...]


def new_fact(request: EditRequest) -> str:
    return f"{request.prompt} {request.target_new}"


def demonstrations_of(request: EditRequest) -> list[str]:
    """The copy, update and retain demonstrations of one pool record (EasyEdit's three)."""
    fact = new_fact(request)
    out = [f"New Fact: {fact}\nPrompt: {fact}\n\n"]
    if request.rephrase_prompts:
        out.append(f"New Fact: {fact}\nPrompt: {request.rephrase_prompts[0]} {request.target_new}\n\n")
    probe = next((probes[0] for probes in request.locality.values() if probes), None)
    if probe is not None:
        out.append(f"New Fact: {fact}\nPrompt: {probe.prompt} {probe.answer}\n\n")
    return out


class TfidfIndex:
    """Cosine similarity of TF-IDF vectors (scikit-learn's, smoothed idf, l2 norm) over a fixed set of sentences."""

    def __init__(self, sentences: Sequence[str]) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.sentences = list(sentences)
        # every word, one-letter ones included (sklearn's default pattern drops them)
        self.vectorizer = TfidfVectorizer(token_pattern=r"(?u)\b\w+\b", lowercase=True, smooth_idf=True, norm="l2")
        self.matrix = self.vectorizer.fit_transform(self.sentences)

    def similarities(self, query: str) -> list[float]:
        return (self.matrix @ self.vectorizer.transform([query]).T).toarray().ravel().tolist()

    def nearest(self, query: str, k: int) -> list[int]:
        """Indices of the k most similar sentences, most similar first (ties: pool order)."""
        scores = self.similarities(query)
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        return order[:k]


def pool_requests(pool: str | list[dict[str, Any]] | None, limit: int | None = None,
                  skipped: list[str] | None = None) -> list[EditRequest]:
    """The pool's records as requests: a file `load_requests` reads, or the records themselves.

    A record that is not a valid edit (ZsRE has some with an empty target) is left out, and
    its reason appended to `skipped`: a pool is a bulk source of demonstrations, not edits."""
    skipped = [] if skipped is None else skipped
    if pool is None:
        return []
    if isinstance(pool, str):
        return load_requests(pool, limit, on_invalid=skipped.append)
    out: list[EditRequest] = []
    for i, record in enumerate(pool[:limit] if limit else pool):
        try:
            out += requests_from_record(record, f"IKE pool, item {i}")
        except DataError as error:
            skipped.append(str(error))
    return out


def retrieve(index: TfidfIndex | None, request: EditRequest, k: int) -> tuple[str, ...]:
    if index is None or k == 0:
        return ()
    query = f"New Fact: {new_fact(request)}\nPrompt: {request.prompt}\n\n"
    return tuple(index.sentences[i] for i in index.nearest(query, k))


def in_context_prompt(edits: Sequence[InContextEdit], prompt: str) -> str:
    """`prompt` behind the applied in-context edits (unchanged when there are none)."""
    if not edits:
        return prompt
    demos = "".join(d for e in edits for d in e.demonstrations)
    facts = "".join(f"New Fact: {e.fact}\n" for e in edits)
    return f"{demos}{facts}Prompt: {prompt}"


def with_context(request: EditRequest, edits: Sequence[InContextEdit]) -> EditRequest:
    """The request with every prompt it is measured on (rewrite, rephrase, locality, portability) put
    behind the in-context edits, so the ordinary metrics measure the model as IKE makes it answer."""
    if not edits:
        return request

    def wrap(probes: dict[str, tuple[Probe, ...]]) -> dict[str, tuple[Probe, ...]]:
        return {k: tuple(replace(p, prompt=in_context_prompt(edits, p.prompt)) for p in v) for k, v in probes.items()}

    return replace(request, prompt=in_context_prompt(edits, request.prompt),
                   rephrase_prompts=tuple(in_context_prompt(edits, p) for p in request.rephrase_prompts),
                   locality=wrap(request.locality), portability=wrap(request.portability))


def apply_ike(ctx: EditContext, requests: Sequence[EditRequest], hp: IKEHparams) -> MethodOutput:
    if not requests:
        raise EditError("IKE needs at least one request.")
    skipped: list[str] = []
    pool = pool_requests(hp.pool, hp.pool_limit, skipped)
    sentences = [d for r in pool for d in demonstrations_of(r)]
    if hp.k > 0 and hp.pool is not None and not sentences:
        raise EditError("The IKE pool holds no records; give pool=PATH (ZsRE, CounterFact or EasyEdit-style records).")
    index = TfidfIndex(sentences) if sentences else None
    edits = [InContextEdit(new_fact(r), retrieve(index, r, hp.k)) for r in requests]
    info = {"pool_size": len(pool), "pool_skipped": skipped, "demonstrations": [list(e.demonstrations) for e in edits],
            "retrieval": "tfidf" if index is not None else None}
    return MethodOutput({}, info, contexts=edits)


METHODS = (
    EditMethod("ike", IKEHparams, apply_ike, batched=True, needs_stats=False,
               description="in-context editing: the new fact and k retrieved demonstrations in front of every "
                           "prompt, no weight change (Zheng et al., 2023)", needs_subject=False),
)
