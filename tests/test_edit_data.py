"""Editing benchmarks read as requests (CounterFact, KnowEdit, MQuAKE, ZsRE portability) and the
portability / list-valued locality metrics, checked against a plain teacher-forcing reference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from steer.edit import EditRequest, Probe, load_requests
from steer.edit.datasets import record_format
from steer.edit.metrics import evaluate
from steer.edit.tokens import encode
from steer.errors import DataError
from tiny import tiny_model, tiny_tokenizer

DATA = Path(__file__).resolve().parent / "data" / "edit"


def test_counterfact_reads_paraphrases_and_neighbourhood() -> None:
    (request,) = load_requests(str(DATA / "counterfact.json"))
    assert request.prompt == "The mother tongue of Danielle Darrieux is" and request.subject == "Danielle Darrieux"
    assert (request.target_new, request.ground_truth) == ("English", "French")
    assert len(request.rephrase_prompts) == 2 and request.rephrase_prompts[0].endswith("Danielle Darrieux, a native")
    neighbours = request.locality["neighborhood"]
    assert len(neighbours) == 10 and {p.answer for p in neighbours} == {"French"}
    assert neighbours[0].prompt == "The mother tongue of Léon Blum is"


def test_knowedit_list_valued_probes_and_aliases() -> None:
    (recent,) = load_requests(str(DATA / "knowedit_wikidata_recent.json"))
    assert recent.target_new == "Berlin" and recent.ground_truth is None
    assert set(recent.portability) == {"Logical_Generalization", "Reasoning", "Subject_Aliasing"}
    (alive,) = recent.portability["Logical_Generalization"]
    assert alive.answers == ("no", "incorrect", "false", "is not alive", "is dead")
    reasoning = recent.portability["Reasoning"]
    assert len(reasoning) == 2 and reasoning[0].answers == ("Kai Wegner", "Kai Peter Wegner")
    assert [p.answer for p in recent.locality["Relation_Specificity"]] == ["Albert Arons", "experimental physics"]

    (cf,) = load_requests(str(DATA / "knowedit_wiki_counterfact.json"))
    assert cf.ground_truth == "mayor of Vienna" and set(cf.locality) == {"Relation_Specificity", "Forgetfulness"}
    assert cf.portability["Subject_Aliasing"][0].answer == "Archbishop of León, Mexico"

    (bio,) = load_requests(str(DATA / "knowedit_wikibio.json"))
    assert bio.subject == "john russell reynolds" and bio.target_new.startswith("He received general education")
    assert bio.prompt.startswith("This is a Wikipedia passage") and len(bio.locality["Relation_Specificity"]) == 2

    (zsre,) = load_requests(str(DATA / "knowedit_zsre.json"))
    assert zsre.rephrase_prompts == ("What family are Epaspidoceras?",) and zsre.ground_truth == "Aspidoceratidae"
    assert zsre.portability["Reasoning"][0] == Probe(
        "What is the common name for the family Epaspidoceras belongs to?", "Owlet moths")


def test_mquake_multi_hop_portability_on_the_last_rewrite(tmp_path: Path) -> None:
    (request,) = load_requests(str(DATA / "mquake.json"))
    assert request.prompt == "Dudley Town F.C. is associated with the sport of" and request.target_new == "cricket"
    assert request.ground_truth == "association football"
    assert request.rephrase_prompts == ("Which sport is Dudley Town F.C. associated with?",)
    hops = request.portability["multi_hop"]
    assert len(hops) == 3 and {p.answer for p in hops} == {"Oderzo"}
    # a case with two rewrites: two requests, the multi-hop questions on the second
    case = json.loads((DATA / "mquake.json").read_text())[0]
    second = {**case["requested_rewrite"][0], "prompt": "{} was founded in", "subject": "Dudley Town F.C.",
              "target_new": {"str": "1893"}, "question": None}
    case["requested_rewrite"].append(second)
    case["new_answer_alias"] = ["Oderzo, Italy"]
    path = tmp_path / "mq.json"
    path.write_text(json.dumps([case]))
    first, last = load_requests(str(path))
    assert first.portability == {} and last.portability["multi_hop"][0].answers == ("Oderzo", "Oderzo, Italy")


def test_zsre_portability_field_is_read(tmp_path: Path) -> None:
    """The MEND/EasyEdit ZsRE format with Yao et al.'s portability pair ({"New Question", "New Answer"}).

    The record is the first of zsre_mend_eval.json; its portability pair is written here (a format test)."""
    record = {"subject": "Watts Humphrey", "src": "What university did Watts Humphrey attend?",
              "alt": "University of Michigan", "answers": ["Illinois Institute of Technology"],
              "rephrase": "What university did Watts Humphrey take part in?",
              "loc": "nq question: who played desmond doss father in hacksaw ridge", "loc_ans": "Hugo Weaving"}
    assert record_format(record) == "zsre"
    record = {**record, "portability": {"New Question": f"Which state is the university {record['subject']} attended in?",
                                        "New Answer": "Michigan"}}
    path = tmp_path / "zsre.json"
    path.write_text(json.dumps([record]))
    (request,) = load_requests(str(path))
    assert request.portability["one_hop"][0].answer == "Michigan"
    assert request.locality["neighborhood"][0].answer == record["loc_ans"]


def test_bad_benchmark_records_are_named(tmp_path: Path) -> None:
    case = json.loads((DATA / "counterfact.json").read_text())[0]
    del case["requested_rewrite"]["target_true"]
    path = tmp_path / "cf.json"
    path.write_text(json.dumps([case]))
    with pytest.raises(DataError, match=r"item 0: neighborhood_prompts are scored against target_true"):
        load_requests(str(path))
    path.write_text(json.dumps([{"prompt": "p", "target_new": "t", "portability": {"k": [{"prompt": "q"}]}}]))
    with pytest.raises(DataError, match="needs 'prompt' and 'ground_truth'"):
        load_requests(str(path))


def _reference_accuracy(model, tok, prompt: str, answer: str) -> tuple[float, list[int]]:
    """Token accuracy of `answer` after `prompt` with one plain forward pass (no batching, no padding)."""
    row = encode(tok, prompt, answer)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([row.ids])).logits[0]
    predicted = [int(logits[t - 1].argmax()) for t in row.target]
    return sum(p == row.ids[t] for p, t in zip(predicted, row.target)) / len(row.target), predicted


def test_portability_scores_the_best_alias_and_locality_every_probe() -> None:
    model, tok = tiny_model("llama", seed=1), tiny_tokenizer()
    request = EditRequest(
        "the cat sat on", "the mat", "cat",
        locality={"nb": (Probe("I love this", "wonderful day"), Probe("the dog ran", "in the park"))},
        portability={"hop": (Probe("What is the capital of France?", "Paris", ("the capital", "good")),
                             Probe("I hate this", "sad day"))},
    )
    before = evaluate(model, tok, request)
    alias_scores = [_reference_accuracy(model, tok, "What is the capital of France?", a)[0]
                    for a in ("Paris", "the capital", "good")]
    second = _reference_accuracy(model, tok, "I hate this", "sad day")[0]
    assert before["_per_probe"]["portability"]["hop"] == pytest.approx([max(alias_scores), second])
    assert before["portability"]["hop"] == pytest.approx((max(alias_scores) + second) / 2)
    # locality after a change: agreement with the unchanged predictions, per probe, then the mean
    with torch.no_grad():
        for p in model.model.layers[1].mlp.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    after = evaluate(model, tok, request, before=before)
    agreements = []
    for probe, old in zip(request.locality["nb"], before["_locality_predictions"]["nb"]):
        new = _reference_accuracy(model, tok, probe.prompt, probe.answer)[1]
        agreements.append(sum(a == b for a, b in zip(old, new)) / len(old))
    assert after["_per_probe"]["locality"]["nb"] == pytest.approx(agreements)
    assert after["locality"]["nb"] == pytest.approx(sum(agreements) / 2)


def test_counterfact_scores_compare_new_and_true_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from steer.edit.metrics import counterfact_scores

    model, tok = tiny_model("llama", seed=5), tiny_tokenizer()
    (request,) = load_requests(str(DATA / "counterfact.json"))

    def nll(prompt: str, answer: str) -> float:  # plain reference: one row, no padding
        row = encode(tok, prompt, answer)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([row.ids])).logits[0]
        log_probs = torch.log_softmax(logits[[t - 1 for t in row.target]], dim=-1)
        return float(-log_probs[range(len(row.target)), [row.ids[t] for t in row.target]].mean())

    def share(prompts, new_wins: bool) -> float:
        wins = [(nll(p, "English") < nll(p, "French")) == new_wins for p in prompts]
        return sum(wins) / len(wins)

    scores = counterfact_scores(model, tok, request)
    assert scores["efficacy_score"] == share([request.prompt], True)
    assert scores["paraphrase_score"] == pytest.approx(share(request.rephrase_prompts, True))
    assert scores["neighborhood_score"] == pytest.approx(
        share([p.prompt for p in request.locality["neighborhood"]], False))
    assert evaluate(model, tok, request)["counterfact"] == scores
    zsre_like = EditRequest("Where is Paris?", "Peru", "Paris", ground_truth="France",
                            locality={"neighborhood": (Probe("who is x", "Hugo"),)})
    assert counterfact_scores(model, tok, zsre_like) is None  # its locality probe is not a CounterFact neighbour
    # the CLI reports them for CounterFact records
    from steer.cli.main import main

    monkeypatch.setenv("STEER_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "tiny"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    assert main(["edit", "--method", "ft_m", "--requests", str(DATA / "counterfact.json"), "--model", str(folder),
                 "--device", "cpu", "--quiet", "num_steps=2"]) == 0
    assert "CounterFact post: efficacy_score" in capsys.readouterr().out
