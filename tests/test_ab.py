"""The A/B score is p(matching letter) normalised over the two letters, as computed by hand."""

from __future__ import annotations

import torch
from tiny import tiny_model, tiny_tokenizer

from steer.evaluate.ab import ab_scores, ab_sweep
from steer.io.datasets import ABItem
from steer.application import Steer
from steer.vector import SteeringVector

ITEMS = [ABItem("Is the cat happy?\n(A) yes\n(B) no", "(A)", "(B)"),
         ABItem("Is the day bad?\n(A) yes\n(B) no", "(B)", "(A)"),
         ABItem("Paris is the capital of France?\n(A) no\n(B) yes", "(B)", "(A)")]


def reference(model, tok, item: ABItem) -> float:
    text = tok.apply_chat_template([{"role": "user", "content": item.question}], tokenize=False,
                                   add_generation_prompt=True) + "("
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        probs = torch.softmax(model(ids).logits[0, -1], -1)
    a = tok(text + "A", add_special_tokens=False)["input_ids"][-1]
    b = tok(text + "B", add_special_tokens=False)["input_ids"][-1]
    p_match, p_other = (probs[a], probs[b]) if item.matching == "(A)" else (probs[b], probs[a])
    return float(p_match / (p_match + p_other))


def test_scores_match_hand_computation_in_a_padded_batch() -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer()
    scores = ab_scores(model, tok, ITEMS, batch_size=3, progress=False)
    for score, item in zip(scores, ITEMS):
        assert abs(score - reference(model, tok, item)) < 1e-5


def test_sweep_at_zero_equals_unsteered_and_moves_with_the_multiplier() -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer()
    vec = SteeringVector({"resid_post.1": torch.randn(32, generator=torch.Generator().manual_seed(0)) * 5})
    base = ab_scores(model, tok, ITEMS, progress=False)
    results = ab_sweep(model, tok, ITEMS, [Steer(vec)], [-2.0, 0.0, 2.0], progress=False)
    assert [r.multiplier for r in results] == [-2.0, 0.0, 2.0]
    assert results[1].per_item == base
    assert results[0].mean_p_matching != results[2].mean_p_matching
