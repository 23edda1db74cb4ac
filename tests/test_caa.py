"""CAA equals the mean activation difference computed by hand (the reference formula)."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_model, tiny_tokenizer

from steer.config import build
from steer.errors import DataError
from steer.io.datasets import ABItem, ContrastiveData, TextPair, ab_as_pair
from steer.methods.caa import CAAHparams, make_caa
from steer.sites import Site


def hidden_at(model, tok, text: str, layer: int, templated: bool) -> torch.Tensor:
    """Reference: one text alone, full output_hidden_states, no steer code involved."""
    ids = tok(text, add_special_tokens=not templated, return_tensors="pt")
    with torch.no_grad():
        return model(**ids, output_hidden_states=True).hidden_states[layer + 1][0]


def token_span(tok, text: str, start: int, end: int, templated: bool) -> list[int]:
    offsets = tok(text, add_special_tokens=not templated, return_offsets_mapping=True)["offset_mapping"]
    return [i for i, (s, e) in enumerate(offsets) if e > s and e > start and s < end]


def test_ab_vector_is_mean_difference_at_the_answer_letter() -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer()
    items = [ABItem("Is the cat happy?\n(A) yes\n(B) no", "(A)", "(B)"),
             ABItem("Is the day bad?\n(A) yes\n(B) no", "(B)", "(A)")]
    hp = build(CAAHparams, {"layers": [0, 1], "batch_size": 2})
    vec = make_caa(model, tok, ContrastiveData(ab_items=items), hp, "tiny-llama")
    for layer in (0, 1):  # not the last: HF applies the final norm to hidden_states[-1]
        diffs = []
        for item in items:
            acts = []
            for answer in (item.matching, item.not_matching):
                prefix = tok.apply_chat_template([{"role": "user", "content": item.question}], tokenize=False,
                                                 add_generation_prompt=True)
                text = prefix + answer
                letter = len(prefix) + 1
                position = token_span(tok, text, letter, letter + 1, True)[-1]
                acts.append(hidden_at(model, tok, text, layer, True)[position])
            diffs.append(acts[0] - acts[1])
        torch.testing.assert_close(vec.directions[Site("resid_post", layer)], torch.stack(diffs).mean(0), atol=1e-5, rtol=1e-4)
    assert vec.meta.method == "caa" and vec.meta.num_layers == 3 and vec.meta.extra["items"] == 2


def test_pair_vector_is_mean_over_completion_tokens() -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer()
    pairs = [TextPair("How is the day?", "I love this wonderful day", "I hate this terrible day"),
             TextPair("And the cat?", "the cat is happy", "the cat is sad and bad")]
    hp = build(CAAHparams, {"layers": [0], "chat_template": False})
    vec = make_caa(model, tok, ContrastiveData(pairs=pairs), hp)
    diffs = []
    for pair in pairs:
        means = []
        for completion in (pair.positive, pair.negative):
            text = f"{pair.prompt} {completion}"
            span = token_span(tok, text, len(pair.prompt) + 1, len(text), False)
            means.append(hidden_at(model, tok, text, 0, False)[span].mean(0))
        diffs.append(means[0] - means[1])
    torch.testing.assert_close(vec.directions[Site("resid_post", 0)], torch.stack(diffs).mean(0), atol=1e-5, rtol=1e-4)


def test_unpaired_vector_is_difference_of_means_and_last_token_option() -> None:
    model, tok = tiny_model("gpt2"), tiny_tokenizer()
    positive = ["I love this", "what a wonderful happy day", "good"]
    negative = ["I hate this terrible day", "bad"]
    data = ContrastiveData(positive_texts=positive, negative_texts=negative)
    for token, pool in (("mean", lambda h: h.mean(0)), ("last", lambda h: h[-1])):
        vec = make_caa(model, tok, data, build(CAAHparams, {"layers": [1], "token": token}))

        def mean_of(texts):
            return torch.stack([pool(hidden_at(model, tok, t, 1, False)) for t in texts]).mean(0)

        torch.testing.assert_close(vec.directions[Site("resid_post", 1)], mean_of(positive) - mean_of(negative),
                                   atol=1e-5, rtol=1e-4)


def test_ab_items_read_as_option_texts_with_token_mean() -> None:
    """token=mean on A/B data: the matching option's text completes the bare question (reference: pairs CAA)."""
    model, tok = tiny_model("llama"), tiny_tokenizer()
    items = [ABItem("Is the cat happy?\n\nChoices:\n (A) yes it is\n (B) no, sad", "(A)", "(B)"),
             ABItem("Is the day bad?\n(A) it is fine\n(B) it is bad", "(B)", "(A)")]
    by_hand = [TextPair("Is the cat happy?", "yes it is", "no, sad"), TextPair("Is the day bad?", "it is bad", "it is fine")]
    hp = build(CAAHparams, {"layers": [1], "token": "mean"})
    from_ab = make_caa(model, tok, ContrastiveData(ab_items=items), hp)
    from_pairs = make_caa(model, tok, ContrastiveData(pairs=by_hand), hp)
    torch.testing.assert_close(from_ab.directions[Site("resid_post", 1)], from_pairs.directions[Site("resid_post", 1)])
    letter = make_caa(model, tok, ContrastiveData(ab_items=items), build(CAAHparams, {"layers": [1]}))
    assert not torch.allclose(letter.directions[Site("resid_post", 1)], from_ab.directions[Site("resid_post", 1)])


def test_ab_items_without_option_lines_are_a_clear_error() -> None:
    with pytest.raises(DataError, match="no '\\(A\\) ...' option lines"):
        ab_as_pair(ABItem("Pick A or B", "(A)", "(B)"), "item 0")
    with pytest.raises(DataError, match="names option \\(C\\)"):
        ab_as_pair(ABItem("q\n(A) x\n(B) y", "(C)", "(B)"), "item 0")
