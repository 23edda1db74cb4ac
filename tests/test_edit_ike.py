"""IKE: demonstrations retrieved by TF-IDF, EasyEdit's prompt layout, metrics with the context, exact rollback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from steer.edit import Editor, EditError, EditRequest, Probe
from steer.edit.ike import TfidfIndex, demonstrations_of
from steer.edit.metrics import evaluate
from tiny import tiny_model, tiny_tokenizer

# EasyEdit's train_ds items (its ZsreDataset yields these keys)
POOL = [
    {"prompt": "What is the capital of France?", "target_new": "the dog", "rephrase_prompt": "France has which capital?",
     "locality_prompt": "the cat sat on", "locality_ground_truth": "the mat"},
    {"prompt": "I love this wonderful day", "target_new": "bad", "rephrase_prompt": "I love this day",
     "locality_prompt": "the dog ran in", "locality_ground_truth": "the park"},
    {"prompt": "What is the answer to the question?", "target_new": "maybe", "rephrase_prompt": "The answer is",
     "locality_prompt": "I hate this", "locality_ground_truth": "terrible day"},
]
REQUEST = EditRequest("What is the capital of France?", "Paris is great", "France",
                      rephrase_prompts=("France has which capital?",),
                      locality={"nb": (Probe("the cat sat on", "the mat"),)},
                      portability={"hop": (Probe("The capital of France is", "Paris is great"),)})


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_demonstrations_and_tfidf_ranking_match_the_definition() -> None:
    from steer.edit.ike import pool_requests

    requests = pool_requests(POOL)
    sentences = [d for r in requests for d in demonstrations_of(r)]
    fact = "What is the capital of France? the dog"
    assert sentences[:3] == [f"New Fact: {fact}\nPrompt: {fact}\n\n",
                             f"New Fact: {fact}\nPrompt: France has which capital? the dog\n\n",
                             f"New Fact: {fact}\nPrompt: the cat sat on the mat\n\n"]
    index = TfidfIndex(sentences)
    query = "New Fact: What is the capital of Peru? Lima\nPrompt: What is the capital of Peru?\n\n"
    # the definition written out: raw counts x smoothed idf ln((1+N)/(1+df)) + 1, l2-normalised, cosine
    import math
    import re
    from collections import Counter

    counts = [Counter(re.findall(r"\w+", t.lower())) for t in sentences]
    df = Counter(term for c in counts for term in c)
    idf = {t: math.log((1 + len(sentences)) / (1 + d)) + 1 for t, d in df.items()}

    def unit(c: Counter) -> dict[str, float]:
        w = {t: n * idf[t] for t, n in c.items() if t in idf}
        norm = math.sqrt(sum(v * v for v in w.values()))
        return {t: v / norm for t, v in w.items()}

    q = unit(Counter(re.findall(r"\w+", query.lower())))
    expected = [sum(v * unit(c).get(t, 0.0) for t, v in q.items()) for c in counts]
    assert index.similarities(query) == pytest.approx(expected, abs=1e-9)
    order = index.nearest(query, 4)
    assert order == sorted(range(len(sentences)), key=lambda i: (-expected[i], i))[:4]
    assert order[0] in (0, 1, 2)  # the France record's demonstrations are the nearest


def test_ike_context_layout_metrics_and_exact_rollback(tmp_path: Path) -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer()
    before = _state(model)
    editor = Editor(model, tok, "ike", {"k": 2, "pool": POOL}, progress=False)
    plain_pre = evaluate(model, tok, REQUEST)
    results, _ = editor.edit(prompts=[REQUEST.prompt], target_new=[REQUEST.target_new],
                             rephrase_prompts=[REQUEST.rephrase_prompts[0]],
                             locality_inputs={"nb": {"prompt": ["the cat sat on"], "ground_truth": ["the mat"]}},
                             portability_inputs={"hop": {"prompt": ["The capital of France is"],
                                                         "ground_truth": ["Paris is great"]}})
    edit = editor.applied[0]
    assert edit.changes == {} and edit.adapters == [] and len(edit.contexts) == 1
    demos = edit.contexts[0].demonstrations
    assert len(demos) == 2 and all(d.startswith("New Fact: ") and d.endswith("\n\n") for d in demos)
    # EasyEdit's layout: the demonstrations, then the new fact, then the prompt
    head = "".join(demos) + f"New Fact: {REQUEST.prompt} {REQUEST.target_new}\nPrompt: "
    assert editor.prompt_with_edits("x y") == head + "x y"
    # post metrics are the plain metrics of the prompts behind that context, computed here by hand
    by_hand = EditRequest(head + REQUEST.prompt, REQUEST.target_new, rephrase_prompts=(head + REQUEST.rephrase_prompts[0],),
                          locality={"nb": (Probe(head + "the cat sat on", "the mat"),)},
                          portability={"hop": (Probe(head + "The capital of France is", "Paris is great"),)})
    expected = evaluate(model, tok, by_hand, before=plain_pre)
    post = results[0]["post"]
    assert post["rewrite_acc"] == expected["rewrite_acc"] and post["rephrase_acc"] == expected["rephrase_acc"]
    assert post["locality"] == expected["locality"] and post["portability"] == expected["portability"]
    assert results[0]["pre"]["rewrite_acc"] == plain_pre["rewrite_acc"]
    # the model itself never changed; generation sees the context
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    ids = tok(head + "What is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        reference = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4,
                                   do_sample=False, pad_token_id=tok.pad_token_id)
    assert editor.generate("What is", max_new_tokens=4) == tok.decode(reference[0, ids.shape[1]:],
                                                                     skip_special_tokens=True)
    # an in-context edit is neither a delta nor part of a saved model
    with pytest.raises(EditError, match="in-context edits"):
        editor.save_deltas(tmp_path / "d.safetensors")
    with pytest.raises(EditError, match="in-context edits"):
        editor.save_pretrained(tmp_path / "model")
    # rollback drops the context: prompts and metrics are exactly those of the unedited model
    editor.rollback()
    assert editor.prompt_with_edits("x y") == "x y"
    again = editor.evaluate(REQUEST)
    assert again["rewrite_acc"] == plain_pre["rewrite_acc"] and again["_locality_predictions"] == plain_pre[
        "_locality_predictions"]


def test_ike_without_pool_uses_the_new_fact_alone_and_several_edits_stack() -> None:
    editor = Editor(tiny_model("gpt2"), tiny_tokenizer(), "ike", {"k": 4}, progress=False)
    first = editor.apply([EditRequest("the cat sat on", "the dog")])
    editor.apply([EditRequest("I love this", "bad day"), EditRequest("What is", "yes")])
    assert first.contexts[0].demonstrations == ()
    assert editor.prompt_with_edits("q") == ("New Fact: the cat sat on the dog\nNew Fact: I love this bad day\n"
                                             "New Fact: What is yes\nPrompt: q")
    editor.rollback(first.id)  # in-context edits never block each other
    assert editor.prompt_with_edits("q").startswith("New Fact: I love this bad day\n")
    # an invalid pool record (ZsRE's empty targets) is skipped and listed, not fatal
    partial = Editor(tiny_model("gpt2"), tiny_tokenizer(), "ike", {"k": 1, "pool": [
        {"src": "q", "alt": "", "subject": "q", "loc": "x", "loc_ans": "y"}, POOL[0]]}, progress=False)
    applied = partial.apply([EditRequest("a", "b")])
    assert applied.info["pool_size"] == 1 and "IKE pool, item 0" in applied.info["pool_skipped"][0]
    with pytest.raises(EditError, match="no records"):
        Editor(tiny_model("gpt2"), tiny_tokenizer(), "ike", {"pool": []}, progress=False).apply(
            [EditRequest("a", "b")])


def test_ike_through_easyedit_with_train_ds_and_the_cli(tmp_path: Path, capsys) -> None:
    import yaml

    from steer.cli.main import main
    from steer.edit.easyedit import BaseEditor, IKEHyperParams, steer_overrides

    model, tok = tiny_model("llama"), tiny_tokenizer()
    path = tmp_path / "IKE-llama-7b.yaml"  # EasyEdit's hparams/IKE/llama-7b.yaml, k lowered
    path.write_text(yaml.safe_dump({"alg_name": "IKE", "model_name": "./hugging_cache/llama-2-7b",
                                    "sentence_model_name": "./hugging_cache/all-MiniLM-L6-v2", "device": 0,
                                    "results_dir": "./results", "k": 2}))
    hparams = IKEHyperParams.from_hparams(path)
    assert steer_overrides(hparams, "ike") == {"k": 2}
    hparams.model_name = (model, tok)
    editor = BaseEditor.from_hparams(hparams)
    metrics, edited, weights_copy = editor.edit(prompts=[REQUEST.prompt], target_new=[REQUEST.target_new],
                                                ground_truth=["Paris"], train_ds=POOL, verbose=False)
    assert weights_copy == {} and edited is model and editor.editor.applied == []  # measured alone, then dropped
    assert len(editor.editor.hparams.pool) == 3 and metrics[0]["post"]["rewrite_acc"][0] >= 0.0
    # the CLI: a pool file in any request format
    folder = tmp_path / "tiny"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    requests = tmp_path / "edits.json"
    requests.write_text(json.dumps(POOL[:1]))
    pool = tmp_path / "pool.json"
    pool.write_text(json.dumps(POOL))
    out = tmp_path / "report.json"
    assert main(["edit", "--method", "ike", "--requests", str(requests), "--model", str(folder), "--device", "cpu",
                 "--quiet", "--out", str(out), f"pool={pool}", "k=3"]) == 0
    report = json.loads(out.read_text())
    assert report["hparams"]["k"] == 3 and report["summary"]["edits"] == 1
    assert "ike" in capsys.readouterr().out


@pytest.mark.integration
def test_ike_on_default_model(smol) -> None:
    model, tok = smol
    zsre = Path(__file__).resolve().parent / "data" / "edit" / "knowedit_zsre.json"
    editor = Editor(model, tok, "ike", {"k": 4, "pool": str(zsre)}, progress=False)
    results, _ = editor.edit(prompts="What university did Watts Humphrey attend?", target_new="University of Michigan",
                             locality_inputs={"nq": {"prompt": "who played desmond doss father in hacksaw ridge",
                                                     "ground_truth": "Hugo Weaving"}})
    editor.rollback()
    assert results[0]["pre"]["rewrite_acc"] < 0.9 and results[0]["post"]["rewrite_acc"] >= 0.9
