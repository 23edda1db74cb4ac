"""The one reader (`steer.sites.reader.read_rows`) and the one span-to-token rule.

Steering reads (left padding), editing reads (right padding) and key statistics (no
padding) all batch token rows through `read_rows`; subjects, targets and steering spans
all become tokens through `steer.sites.read.tokens_in_span`.
"""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_model, tiny_tokenizer

from steer.edit.tokens import encode
from steer.sites import Site
from steer.sites.read import Span, _tokenize, tokens_in_span
from steer.sites.reader import read_forward, read_rows, row_inputs

TEXTS = ["the cat sat on the mat", "I love", "What is the capital of France?", "the dog ran"]
SITES = [Site("resid_post", 1), Site("mlp_key", 2)]


def _rows() -> list[list[int]]:
    tok = tiny_tokenizer()
    return [tok(text)["input_ids"] for text in TEXTS]


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2"])
@pytest.mark.parametrize("padding", ["left", "right"])
def test_each_row_reads_as_it_would_alone(family: str, padding: str) -> None:
    model, rows = tiny_model(family), _rows()
    with torch.no_grad():
        alone = [read_forward(model, {"input_ids": torch.tensor([row])}, SITES) for row in rows]
        seen = []
        for batch in read_rows(model, rows, SITES, padding=padding, batch_size=3):  # type: ignore[arg-type]
            for b, (index, offset) in enumerate(zip(batch.indices, batch.offsets)):
                seen.append(index)
                for site in SITES:
                    got = batch.activations[site][b, offset : offset + len(rows[index])]
                    torch.testing.assert_close(got, alone[index][site][0], rtol=1e-5, atol=1e-5,
                                               msg=f"{family} {padding} row {index} {site}")
    assert seen == list(range(len(rows)))


def test_padding_modes_build_the_inputs_each_read_needs() -> None:
    rows = [[5, 6, 7], [8]]
    left, left_offsets = row_inputs(rows, "left", pad_token_id=0)
    assert left["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]] and left_offsets == [0, 2]
    assert left["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]  # the real token is at position 0
    right, right_offsets = row_inputs(rows, "right", pad_token_id=1)
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 1, 1]] and right_offsets == [0, 0]
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]] and "position_ids" not in right
    plain, _ = row_inputs([[5, 6], [7, 8]], "none")
    assert set(plain) == {"input_ids"}
    with pytest.raises(ValueError, match="rows of one length"):
        row_inputs(rows, "none")
    with pytest.raises(ValueError, match="no empty row"):
        row_inputs([[5], []], "left")
    with pytest.raises(ValueError, match="batch_size"):
        next(read_rows(tiny_model("llama"), rows, SITES, padding="left", batch_size=0))


def test_longest_first_order_and_progress() -> None:
    model, rows = tiny_model("llama"), _rows()
    with torch.no_grad():
        batches = list(read_rows(model, rows, SITES, padding="left", batch_size=2, longest_first=True, progress=True))
    order = [i for batch in batches for i in batch.indices]
    assert [len(rows[i]) for i in order] == sorted((len(r) for r in rows), reverse=True)


def test_one_span_rule_for_steering_spans_and_edit_subjects() -> None:
    offsets = [(0, 0), (0, 3), (3, 7), (7, 8), (8, 12)]  # a special token first, then words
    assert tokens_in_span(offsets, 0, 3) == [1]
    assert tokens_in_span(offsets, 2, 4) == [1, 2]  # partial overlaps count
    assert tokens_in_span(offsets, 7, 7) == []  # an empty span covers nothing
    assert tokens_in_span(offsets, 12, 20) == []
    tok = tiny_tokenizer()
    text = "What is the capital of France?"
    start = text.index("capital of France")
    # an edit's subject and a steering span over the same characters pick the same tokens
    encoded = encode(tok, text, None, "capital of France")
    _, chosen = _tokenize(tok, Span(text, start, start + len("capital of France")), templated=False, limit=None)
    assert encoded.subject_last == chosen[-1]
    with_target = encode(tok, text, "Paris", "France")
    assert tok.decode([with_target.ids[i] for i in with_target.target]).strip() == "Paris"
