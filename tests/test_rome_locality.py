"""ROME's `update_keys` (the keys its rank-one update is solved for) against closed forms on a tiny
model, and the held-apart counterfactual set of benchmarks/rome_locality.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from steer.edit import Editor, EditError, EditRequest
from steer.edit.metrics import counterfact_scores
from steer.edit.requests import load_requests
from steer.edit.rome import generic_subjects, preserve_prompts
from steer.edit.stats import _chunks, _flagged_chunks, corpus_path, entity_ends
from steer.sites.hooks import record
from steer.errors import ConfigError
from steer.sites.resolve import Site, SiteMap
from test_edit import REQUESTS, STATS, _at_subject, _reference_moment, corpus  # noqa: F401  (corpus is a fixture)
from tiny import tiny_model, tiny_tokenizer

DATA = Path(__file__).resolve().parents[1] / "benchmarks" / "data"


def _edit(corpus: str, update_keys: str) -> tuple[Editor, torch.Tensor, object, list[str]]:
    model, tok = tiny_model("llama"), tiny_tokenizer()
    editor = Editor(model, tok, "rome", {"corpus": corpus, **STATS, "layer": 1, "v_num_grad_steps": 5,
                                         "update_keys": update_keys}, progress=False)
    before = SiteMap(model).down_weight_as_out_in(1).detach().clone().double()
    edit = editor.apply([REQUESTS[0]])
    delta = SiteMap(model).down_weight_as_out_in(1).detach().double() - before
    prefixes = next(iter(editor.ctx.templates.values()))
    editor.rollback()
    return editor, delta, edit, prefixes


def test_update_keys_prompt_is_the_smallest_change_exact_at_the_plain_key(corpus: str) -> None:
    editor, delta, edit, _ = _edit(corpus, "prompt")
    model, tok = editor.model, editor.tokenizer
    key, out = Site("mlp_key", 1), Site("mlp_out", 1)
    plain = _at_subject(model, tok, REQUESTS[0], [key, out], [""])
    u = torch.linalg.solve(_reference_moment(editor, model, 1), plain[key])
    v_star = edit.info["v_star"].double()
    torch.testing.assert_close(delta, torch.outer((v_star - plain[out]) / (u @ plain[key]), u), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(delta @ plain[key], v_star - plain[out], rtol=1e-4, atol=1e-5)
    assert edit.info["update_keys"] == "prompt"


def test_update_keys_every_prefix_meets_every_context_and_is_smallest(corpus: str) -> None:
    editor, delta, edit, prefixes = _edit(corpus, "every_prefix")
    model, tok = editor.model, editor.tokenizer
    key, out = Site("mlp_key", 1), Site("mlp_out", 1)
    keys = torch.stack([_at_subject(model, tok, REQUESTS[0], [key], [p])[key] for p in prefixes])
    plain_out = _at_subject(model, tok, REQUESTS[0], [out], [""])[out]
    change = edit.info["v_star"].double() - plain_out
    assert len(prefixes) == 6 and torch.linalg.matrix_rank(delta, rtol=1e-3) == 1  # float32 weights: noise below
    # every context row's output moves by the same change the value optimisation added there
    for k in keys:
        torch.testing.assert_close(delta @ k, change, rtol=1e-3, atol=1e-5)
    # and no smaller change under C does: c = C^-1 K^T (K C^-1 K^T)^-1 1, computed independently
    c = _reference_moment(editor, model, 1)
    c_inv_k = torch.linalg.solve(c, keys.T)
    direction = c_inv_k @ torch.linalg.solve(keys @ c_inv_k, torch.ones(len(keys), dtype=keys.dtype))
    torch.testing.assert_close(delta, torch.outer(change, direction), rtol=1e-3, atol=1e-6)


def test_update_keys_rome_keeps_the_papers_form_and_bad_values_are_refused(corpus: str) -> None:
    rome_editor, rome_delta, _, _ = _edit(corpus, "rome")
    _, prompt_delta, _, _ = _edit(corpus, "prompt")
    assert not torch.allclose(rome_delta, prompt_delta, atol=1e-6)
    with pytest.raises(ConfigError, match="update_keys"):
        Editor(rome_editor.model, rome_editor.tokenizer, "rome", {"update_keys": "sideways"}, progress=False)
    r_rome = Editor(rome_editor.model, rome_editor.tokenizer, "r_rome",
                    {"corpus": corpus, **STATS, "layer": 1, "update_keys": "prompt"}, progress=False)
    with pytest.raises(EditError, match="r_rome always solves"):
        r_rome.apply([REQUESTS[0]])


def test_counterfactual_splits_are_held_apart_and_counterfact_shaped() -> None:
    splits = {s: load_requests(str(DATA / f"rome_locality_{s}.json")) for s in ("tune", "eval")}
    assert len(splits["tune"]) >= 30 and len(splits["eval"]) >= 55
    # no fact (subject under a relation) of one split, edited or as a neighbour, is in the other; a subject
    # may recur under another relation (Austria's continent in one, its language in the other)
    facts = {s: {r.prompt.lower() for r in reqs} | {p.prompt.lower() for r in reqs for p in r.locality["neighborhood"]}
             for s, reqs in splits.items()}
    assert not facts["tune"] & facts["eval"]
    for reqs in splits.values():
        for r in reqs:
            neighbours = r.locality["neighborhood"]
            assert neighbours and all(p.answer == r.ground_truth != r.target_new for p in neighbours)
            assert r.prompt not in {p.prompt for p in neighbours} and r.rephrase_prompts
    for split in splits:
        header = json.loads((DATA / f"rome_locality_{split}.json").read_text(encoding="utf-8"))
        assert header["split"] == split and "teacher forcing" in header["filter"]


def test_counterfact_scores_apply_to_the_set() -> None:
    # CounterFact's ES / PS / NS are defined for these records (neighbours answered by the true object)
    model, tok = tiny_model("llama"), tiny_tokenizer()
    request = load_requests(str(DATA / "rome_locality_tune.json"), 1)[0]
    scores = counterfact_scores(model, tok, request)
    assert scores is not None and set(scores) == {"efficacy_score", "paraphrase_score", "neighborhood_score"}
    assert all(v in (0.0, 0.5, 1.0) for v in scores.values())


def _edit_with(corpus: str, **hp: object) -> tuple[Editor, torch.Tensor, object]:
    model, tok = tiny_model("llama"), tiny_tokenizer()
    editor = Editor(model, tok, "rome", {"corpus": corpus, **STATS, "layer": 1, "v_num_grad_steps": 5,
                                         "update_keys": "prompt", **hp}, progress=False)
    before = SiteMap(model).down_weight_as_out_in(1).detach().clone().double()
    edit = editor.apply([REQUESTS[0]])
    delta = SiteMap(model).down_weight_as_out_in(1).detach().double() - before
    editor.rollback()
    return editor, delta, edit


def _prompt_form(editor: Editor, edit: object, c: torch.Tensor) -> torch.Tensor:
    """ROME's update_keys=prompt with the given C, from keys read with the site recorder."""
    key, out = Site("mlp_key", 1), Site("mlp_out", 1)
    plain = _at_subject(editor.model, editor.tokenizer, REQUESTS[0], [key, out], [""])
    u = torch.linalg.solve(c, plain[key])
    return torch.outer((edit.info["v_star"].double() - plain[out]) / (u @ plain[key]), u)  # type: ignore[attr-defined]


def test_preserve_weight_adds_the_generic_subjects_keys_to_c(corpus: str) -> None:
    editor, delta, edit = _edit_with(corpus, preserve_weight=10.0)
    subjects = generic_subjects()
    assert edit.info["preserved_keys"] == len(subjects) > 50  # "France" is not in the list
    # each generic subject in the request's own prompt, its key read independently
    key = Site("mlp_key", 1)
    others = torch.stack([_at_subject(editor.model, editor.tokenizer, EditRequest(
        REQUESTS[0].prompt.replace("France", s), "x", s), [key], [""])[key] for s in subjects])
    c = _reference_moment(editor, editor.model, 1) + 10.0 * others.T @ others / len(others)
    torch.testing.assert_close(delta, _prompt_form(editor, edit, c), rtol=1e-3, atol=1e-6)
    # the generic subjects' outputs move less than with ROME's C alone; the edit stays exact at its key
    _, plain_delta, _ = _edit_with(corpus)
    assert (others @ delta.T).norm() < 0.5 * (others @ plain_delta.T).norm()
    plain = _at_subject(editor.model, editor.tokenizer, REQUESTS[0], [key], [""])[key]
    torch.testing.assert_close(delta @ plain, plain_delta @ plain, rtol=1e-3, atol=1e-5)


def test_preserve_prompts_put_each_subject_where_the_requests_subject_is() -> None:
    request = EditRequest("The Louvre is located in the city of", "Rome", "The Louvre")
    pairs = preserve_prompts(request, ["the Prado Museum", "the louvre", "Vienna"])
    assert pairs == [("The Prado Museum is located in the city of", "The Prado Museum"),
                     ("Vienna is located in the city of", "Vienna")]
    mid = EditRequest("The official language of Chile is", "French", "Chile")
    assert preserve_prompts(mid, ["the Philippines"]) == [("The official language of the Philippines is",
                                                           "the Philippines")]


def test_generic_subjects_are_none_of_the_benchmarks_facts() -> None:
    # the preserved subjects come from steer's own list, never from the locality benchmark's splits
    texts = []
    for split in ("tune", "eval"):
        for r in load_requests(str(DATA / f"rome_locality_{split}.json")):
            texts += [r.prompt, r.target_new, str(r.ground_truth), *r.rephrase_prompts,
                      *(p.prompt for p in r.locality["neighborhood"])]
    joined = "\n".join(texts).lower()
    for subject in generic_subjects():
        name = subject.lower().removeprefix("the ")
        assert not re.search(rf"\b{re.escape(name)}\b", joined), subject
    assert re.search(r"\bthe louvre\b", joined)  # (the search does find the benchmark's own subjects)


def test_entity_statistics_weigh_keys_at_the_ends_of_capitalised_runs(corpus: str) -> None:
    text = "The Van Gogh Museum opened . It lies near the Rijksmuseum in Amsterdam , said I .\n"
    assert [text[: e + 1].split()[-1] for e in entity_ends(text)] == ["Museum", "Rijksmuseum", "Amsterdam"]
    editor, delta, edit = _edit_with(corpus, mom2_entity_weight=2.0)
    ctx, hp = editor.ctx, editor.hparams
    chunks, marks = _flagged_chunks(ctx, corpus_path(hp.corpus), hp, 32)
    assert chunks == _chunks(ctx, corpus_path(hp.corpus), hp, 32) and 0 < sum(map(sum, marks)) < 0.5 * 8 * 32
    key = Site("mlp_key", 1)
    with torch.no_grad(), record(editor.model, [key]) as rec:
        for chunk in chunks:
            editor.model(input_ids=torch.tensor([chunk]))
    keys = torch.cat([v[0][torch.tensor(m)] for v, m in zip(rec[key].values, marks)]).double()
    c = _reference_moment(editor, editor.model, 1) + 2.0 * keys.T @ keys / len(keys)
    torch.testing.assert_close(delta, _prompt_form(editor, edit, c), rtol=1e-3, atol=1e-6)
    with pytest.raises(ConfigError, match="mom2_adjustment"):
        Editor(editor.model, editor.tokenizer, "rome", {"preserve_weight": 1.0, "mom2_adjustment": False},
               progress=False)
    with pytest.raises(ConfigError, match="finite number"):
        Editor(editor.model, editor.tokenizer, "rome", {"mom2_entity_weight": -1.0}, progress=False)
