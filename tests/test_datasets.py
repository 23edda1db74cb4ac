"""Prompt files, A/B items and contrastive pairs in every accepted shape, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from steer.errors import DataError
from steer.io.datasets import load_ab, load_contrastive, load_prompts, load_unpaired


def write(path: Path, data) -> Path:
    path.write_text(json.dumps(data) if path.suffix == ".json" else "\n".join(json.dumps(d) for d in data))
    return path


def test_prompt_fields(tmp_path: Path) -> None:
    rows = [{"prompt": "a"}, {"prompt": {"text": "b"}}, {"input": "c"}, {"question": "d"}, "e"]
    assert load_prompts(write(tmp_path / "p.json", rows)) == ["a", "b", "c", "d", "e"]
    assert load_prompts(write(tmp_path / "p.jsonl", rows[:4]), limit=2) == ["a", "b"]
    dexperts = [{"prompt": {"text": "Hello"}, "continuation": {"text": " world"}}]
    assert load_prompts(write(tmp_path / "d.jsonl", dexperts), with_continuation=True) == ["Hello world"]


def test_contrastive_shapes(tmp_path: Path) -> None:
    ab = [{"question": "q", "answer_matching_behavior": "(A)", "answer_not_matching_behavior": "(B)"}]
    assert load_contrastive(write(tmp_path / "ab.json", ab)).kind == "ab"
    easyedit = [{"question": "q", "matching": "yes", "not_matching": "no"}]
    data = load_contrastive(write(tmp_path / "ee.jsonl", easyedit))
    assert data.kind == "pairs" and data.pairs[0].positive == "yes"
    pairs = [{"prompt": "p", "positive": "good", "negative": "bad"}]
    assert load_contrastive(write(tmp_path / "pairs.json", pairs)).pairs[0].negative == "bad"
    unpaired = {"positive": ["x", "y"], "negative": ["z"]}
    data = load_contrastive(write(tmp_path / "u.json", unpaired))
    assert data.kind == "unpaired" and data.positive_texts == ["x", "y"]
    labelled = [{"text": "x", "label": 1}, {"text": "z", "label": -1}]
    assert load_contrastive(write(tmp_path / "l.jsonl", labelled)).negative_texts == ["z"]
    two = load_unpaired(write(tmp_path / "pos.jsonl", [{"prompt": "x"}]), write(tmp_path / "neg.jsonl", [{"prompt": "z"}]))
    assert two.kind == "unpaired" and two.source_hash


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="No data file"):
        load_prompts(tmp_path / "missing.json")
    empty = tmp_path / "empty.json"
    empty.write_text("")
    with pytest.raises(DataError, match="is empty"):
        load_prompts(empty)
    with pytest.raises(DataError, match="holds no items"):
        load_prompts(write(tmp_path / "none.json", []))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "a"}\n{"prompt": \n')
    with pytest.raises(DataError, match="line 2"):
        load_prompts(broken)
    with pytest.raises(DataError, match="no prompt found"):
        load_prompts(write(tmp_path / "odd.json", [{"text_field": 1}]))
    with pytest.raises(DataError, match="not a contrastive item"):
        load_contrastive(write(tmp_path / "c.json", [{"prompt": "only"}]))
    with pytest.raises(DataError, match="answer_matching_behavior"):
        load_ab(write(tmp_path / "ab.json", [{"question": "q"}]))
