"""Steering methods against hand-written references on tiny inputs and tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny import tiny_model, tiny_tokenizer

from steer.application import steering
from steer.config import build
from steer.errors import ConfigError, DataError, VectorError
from steer.io.datasets import ContrastiveData, TextPair
from steer.methods import steering_methods
from steer.methods.ablation import AblationHparams, make_ablation, project_out
from steer.methods.aggregators import aggregate
from steer.methods.artifacts import load_steer
from steer.methods.caa import CAAHparams, make_caa
from steer.methods.lm_steer import LMSteer, LMSteerHparams, make_lm_steer
from steer.methods.merge import MergeHparams, merge_vectors
from steer.methods.prompt import PromptSteer
from steer.methods.vector_prompt import VectorPromptHparams, make_vector_prompt
from steer.sites import Site
from steer.sites.hooks import record
from steer.vector import SteeringVector, VectorMeta


def vec(values: list[float], site: str = "resid_post.0") -> SteeringVector:
    return SteeringVector({site: torch.tensor(values)}, VectorMeta(method="caa", model_id="m"))


def test_registry_has_every_method() -> None:
    assert {"caa", "vector_prompt", "prompt", "merge", "ablation", "lm_steer"} <= set(steering_methods().names())


# ---- merge -------------------------------------------------------------------------------
def test_linear_merge_is_weighted_sum_over_union_of_sites() -> None:
    a, b = vec([1.0, 2.0, 3.0]), vec([4.0, -1.0, 0.5])
    c = vec([1.0, 1.0, 1.0], "resid_post.1")
    out = merge_vectors([a, b, c], build(MergeHparams, {"weights": [1, 0.5, 2]}))
    torch.testing.assert_close(out.directions[Site("resid_post", 0)], torch.tensor([3.0, 1.5, 3.25]))
    torch.testing.assert_close(out.directions[Site("resid_post", 1)], torch.tensor([2.0, 2.0, 2.0]))
    assert out.meta.method == "merge" and len(out.meta.extra["parents"]) == 3


def test_ties_trims_elects_sign_and_takes_disjoint_mean() -> None:
    a = vec([3.0, -1.0, 0.1, 2.0, 0.0])
    b = vec([-0.9, -4.0, 0.2, 1.0, 0.05])
    c = vec([-2.0, 2.0, 0.0, -0.5, 5.0])
    out = merge_vectors([a, b, c], build(MergeHparams, {"mode": "ties", "density": 0.4}))
    # by hand: top-2 of 5 entries per vector
    # a -> [3, 0, 0, 2, 0]; b -> [0, -4, 0, 1, 0]; c -> [-2, 2, 0, 0, 5]
    # summed: [1, -2, 0, 3, 5] -> signs [+, -, 0, +, +]
    # agreeing entries: e0 {3} -> 3; e1 {-4} -> -4; e2 none -> 0; e3 {2, 1} -> 1.5; e4 {5} -> 5
    torch.testing.assert_close(out.directions[Site("resid_post", 0)], torch.tensor([3.0, -4.0, 0.0, 1.5, 5.0]))


def test_ties_weights_enter_election_and_mean() -> None:
    a, b = vec([1.0, 2.0]), vec([-3.0, 2.0])
    out = merge_vectors([a, b], build(MergeHparams, {"mode": "ties", "density": 1.0, "weights": [2.0, 0.5]}))
    # weighted: a -> [2, 4]; b -> [-1.5, 1]; signs [+, +]; e0: 2/2 = 1; e1: (4 + 1)/(2 + 0.5) = 2
    torch.testing.assert_close(out.directions[Site("resid_post", 0)], torch.tensor([1.0, 2.0]))


def test_dare_drops_and_rescales_reproducibly() -> None:
    a, b = vec([1.0] * 64), vec([2.0] * 64)
    hp = build(MergeHparams, {"mode": "dare", "drop": 0.5, "seed": 3, "weights": [1.0, 1.0]})
    out = merge_vectors([a, b], hp).directions[Site("resid_post", 0)]
    generator = torch.Generator().manual_seed(3)  # reference: the same draws, in order
    keep_a = torch.rand(64, generator=generator) >= 0.5
    keep_b = torch.rand(64, generator=generator) >= 0.5
    torch.testing.assert_close(out, keep_a * 2.0 + keep_b * 4.0)
    assert set(out.unique().tolist()) <= {0.0, 2.0, 4.0, 6.0}
    torch.testing.assert_close(merge_vectors([a, b], hp).directions[Site("resid_post", 0)], out)


def test_merge_errors() -> None:
    with pytest.raises(ConfigError, match="one weight per vector"):
        merge_vectors([vec([1.0]), vec([2.0])], build(MergeHparams, {"weights": [1.0]}))
    with pytest.raises(DataError, match="at least two"):
        merge_vectors([vec([1.0])], build(MergeHparams, {}))
    with pytest.raises(ConfigError, match="density"):
        build(MergeHparams, {"density": 0})


# ---- ablation ----------------------------------------------------------------------------
def test_ablation_intervention_equals_projection_formula() -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer()
    direction = torch.randn(32, generator=torch.Generator().manual_seed(1))
    base = SteeringVector({"resid_post.1": direction}, VectorMeta(model_id="tiny-llama"))
    ids = tok("the cat sat on the mat", return_tensors="pt")
    with torch.no_grad():
        hidden = model(**ids, output_hidden_states=True).hidden_states[2][0]  # resid_post.1, unsteered
    for alpha, strength in ((0.0, 1.0), (2.5, 1.0), (0.0, 0.5)):
        ablation = make_ablation(model, tok, [base], build(AblationHparams, {"alpha": alpha}), "tiny-llama")
        assert ablation.meta.extra["operation"] == "ablate"
        with steering(model, (ablation, strength)), record(model, ["resid_post.1"]) as rec, torch.no_grad():
            model(**ids)
        seen = rec[Site("resid_post", 1)].values[0][0]
        unit = direction / direction.norm()
        expected = hidden - strength * ((hidden @ unit) - alpha)[:, None] * unit  # by hand
        torch.testing.assert_close(seen, expected, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(project_out(hidden, direction, alpha, strength), expected)
        if strength == 1.0:
            torch.testing.assert_close(seen @ unit, torch.full((seen.shape[0],), alpha), atol=1e-4, rtol=1e-4)


def test_ablation_file_roundtrip_apply_layers_and_unknown_operation(tmp_path: Path) -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer()
    data = ContrastiveData(positive_texts=["I love this", "good day"], negative_texts=["I hate this", "bad day"])
    ablation = make_ablation(model, tok, data, build(AblationHparams, {"layers": [1], "apply_layers": "all"}), "tiny-llama")
    assert ablation.layers == [0, 1, 2]
    caa = make_caa(model, tok, data, build(CAAHparams, {"layers": [1]}))
    torch.testing.assert_close(ablation.directions[Site("resid_post", 2)], caa.directions[Site("resid_post", 1)])
    path = ablation.save(tmp_path / "abl.safetensors")
    assert SteeringVector.load(path).meta.extra["operation"] == "ablate"
    odd = SteeringVector(ablation.directions, VectorMeta(extra={"operation": "rotate"}))
    with pytest.raises(Exception, match="operation 'rotate'"):
        with steering(model, odd):
            pass
    with pytest.raises(ConfigError, match="exactly one direction"):
        make_ablation(model, tok, data, build(AblationHparams, {"layers": [0, 1], "apply_layers": [2]}))


# ---- aggregators -------------------------------------------------------------------------
def test_pca_aggregator_matches_sklearn_and_is_sign_aligned() -> None:
    from sklearn.decomposition import PCA

    g = torch.Generator().manual_seed(0)
    pos = torch.randn(12, 6, generator=g, dtype=torch.float64) + torch.tensor([3.0, 0, 0, 0, 0, 0], dtype=torch.float64)
    neg = torch.randn(12, 6, generator=g, dtype=torch.float64)
    out = aggregate("pca", pos, neg, paired=True)
    component = torch.from_numpy(PCA(n_components=1).fit((pos - neg).numpy()).components_[0])
    mean_diff = (pos - neg).mean(0)
    expected = component * torch.sign(component @ mean_diff) * mean_diff.norm()
    torch.testing.assert_close(out, expected)
    # unpaired: activations around the class midpoint, not centred again
    mid = (pos.mean(0) + neg.mean(0)) / 2
    rows = torch.cat([pos, neg]) - mid
    top = torch.linalg.eigh(rows.T @ rows).eigenvectors[:, -1]
    unpaired = aggregate("pca", pos, neg, paired=False)
    ref = top * torch.sign(top @ mean_diff) * mean_diff.norm()
    torch.testing.assert_close(unpaired, ref)
    assert float(unpaired[0]) > 0  # the separating axis, pointing to the positives


def test_logistic_aggregator_is_sklearn_direction_scaled_to_mean_diff() -> None:
    from sklearn.linear_model import LogisticRegression

    g = torch.Generator().manual_seed(1)
    pos = torch.randn(20, 5, generator=g, dtype=torch.float64) + 1.0
    neg = torch.randn(15, 5, generator=g, dtype=torch.float64) - 1.0
    out = aggregate("logistic", pos, neg, paired=False)
    coef = torch.from_numpy(LogisticRegression(max_iter=2000).fit(torch.cat([pos, neg]).numpy(), [1] * 20 + [0] * 15).coef_[0])
    expected = coef / coef.norm() * (pos.mean(0) - neg.mean(0)).norm()
    torch.testing.assert_close(out, expected)


def test_caa_aggregator_key_and_mean_diff_default() -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer()
    pairs = [TextPair("How is it?", "I love this wonderful day", "I hate this terrible day"),
             TextPair("And the cat?", "the cat is happy", "the cat is sad and bad"),
             TextPair("Day?", "good great day", "bad awful day")]
    data = ContrastiveData(pairs=pairs)
    mean = make_caa(model, tok, data, build(CAAHparams, {"layers": [0], "chat_template": False}))
    pca = make_caa(model, tok, data, build(CAAHparams, {"layers": [0], "chat_template": False, "aggregator": "pca"}))
    a, b = mean.directions[Site("resid_post", 0)], pca.directions[Site("resid_post", 0)]
    torch.testing.assert_close(a.norm(), b.norm())
    assert float(a @ b) > 0 and pca.meta.extra["hparams"]["aggregator"] == "pca"
    with pytest.raises(ConfigError, match="not one of"):
        build(CAAHparams, {"aggregator": "median"})


# ---- vector_prompt -----------------------------------------------------------------------
def test_vector_prompt_is_difference_with_and_without_prompt() -> None:
    model, tok = tiny_model("qwen2"), tiny_tokenizer()
    prompts = ["How is the day?", "What is the cat?"]
    hp = build(VectorPromptHparams, {"layers": [1], "steering_prompt": "I love this", "batch_size": 2})
    out = make_vector_prompt(model, tok, prompts, hp, "tiny-qwen2")

    def last(text: str) -> torch.Tensor:
        ids = tok(text, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            return model(**ids, output_hidden_states=True).hidden_states[2][0, -1]

    def render(prompt: str, system: str | None) -> str:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    expected = torch.stack([last(render(p, "I love this")) - last(render(p, None)) for p in prompts]).mean(0)
    torch.testing.assert_close(out.directions[Site("resid_post", 1)], expected, atol=1e-5, rtol=1e-4)
    assert out.meta.extra["steering_prompt"] == "I love this"
    with pytest.raises(ConfigError, match="steering_prompt"):
        make_vector_prompt(model, tok, prompts, build(VectorPromptHparams, {}))


def test_vector_prompt_prefix_placement_and_description() -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer()
    hp = build(VectorPromptHparams, {"layers": [0], "steering_prompt": "good", "chat_template": False, "token": "mean"})
    out = make_vector_prompt(model, tok, ["the cat"], hp)

    def mean_over_prompt(text: str, start: int) -> torch.Tensor:
        enc = tok(text, return_offsets_mapping=True)
        idx = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if e > s and e > start]
        with torch.no_grad():
            h = model(input_ids=torch.tensor([enc["input_ids"]]), output_hidden_states=True).hidden_states[1][0]
        return h[idx].mean(0)

    expected = mean_over_prompt("good the cat", 5) - mean_over_prompt("the cat", 0)
    torch.testing.assert_close(out.directions[Site("resid_post", 0)], expected, atol=1e-5, rtol=1e-4)
    # description: the model writes the prompt (greedy), which is recorded
    written = make_vector_prompt(model, tok, ["the cat"], build(VectorPromptHparams, {
        "layers": [0], "description": "be happy", "max_new_tokens": 4}))
    assert written.meta.extra["steering_prompt"]


# ---- LM-Steer ----------------------------------------------------------------------------
def test_lm_steer_transform_matches_reference_and_composes(tmp_path: Path) -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer()
    g = torch.Generator().manual_seed(0)
    p1, p2 = torch.randn(2, 32, 3, generator=g), torch.randn(2, 32, 3, generator=g)
    steer_ = LMSteer(p1, p2, 0.01, VectorMeta(method="lm_steer", model_id="tiny-llama"))
    path = steer_.save(tmp_path / "s.safetensors")
    loaded = LMSteer.load(path)
    ids = tok("the cat sat", return_tensors="pt")
    with torch.no_grad():
        h = model.model(**ids).last_hidden_state[0]  # final_norm output
        values = torch.tensor([2.0, -1.0])
        ref = h + 0.01 * sum(values[i] * (h @ p1[i]) @ p2[i].T for i in range(2))  # the paper's formula
        with steering(model, loaded.at([2.0, -1.0])):
            logits = model(**ids).logits[0]
    torch.testing.assert_close(logits, model.lm_head(ref), atol=1e-5, rtol=1e-4)
    with pytest.raises(VectorError, match="lm_steer file"):
        SteeringVector.load(path)
    assert isinstance(load_steer(path, 3.0), type(loaded.at(3.0)))
    with pytest.raises(ConfigError, match="2 steers"):
        with steering(model, loaded.at([1.0])):
            pass


def test_lm_steer_training_lowers_loss_and_moves_towards_positive_texts() -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer()
    positive = ["I love this wonderful happy day", "good great happy day", "I love the cat"] * 4
    negative = ["I hate this terrible sad day", "bad awful sad day", "I hate the dog"] * 4
    hp = build(LMSteerHparams, {"rank": 4, "epochs": 8, "lr": 0.05, "batch_size": 6, "epsilon": 0.01})
    trained = make_lm_steer(model, tok, ContrastiveData(positive_texts=positive, negative_texts=negative), hp, "tiny-llama")
    assert trained.meta.extra["last_loss"] < trained.meta.extra["first_loss"]
    ids = tok("I love this wonderful happy", return_tensors="pt")
    target = tok(" day", add_special_tokens=False)["input_ids"][0]

    def logprob(values: float) -> float:
        with torch.no_grad(), steering(model, trained.at(values)):
            return float(model(**ids).logits[0, -1].log_softmax(-1)[target])

    assert logprob(1.0) > logprob(-1.0)


# ---- prompt steer ------------------------------------------------------------------------
def test_prompt_steer_file_and_application(tmp_path: Path) -> None:
    steer_ = PromptSteer("Be very positive.")
    path = steer_.save(tmp_path / "pos.prompt.json")
    loaded = load_steer(path, 1.0)
    assert isinstance(loaded, PromptSteer) and loaded.text == "Be very positive."
    assert loaded.apply(["Hi"], None, chat_template=True) == (["Hi"], "Be very positive.")
    assert loaded.apply(["Hi"], "Sys", chat_template=True) == (["Hi"], "Sys\nBe very positive.")
    assert loaded.apply(["Hi"], None, chat_template=False) == (["Be very positive. Hi"], None)
    with pytest.raises(ConfigError, match="no strength"):
        load_steer(path, 2.0)
    (tmp_path / "bad.json").write_text(json.dumps({"text": "x"}))
    with pytest.raises(VectorError, match="not a prompt steer"):
        PromptSteer.load(tmp_path / "bad.json")
