"""Every steering method changes behaviour on the real default model, on held-apart prompts.

The shared task of README_2's method table: the share of continuations of the first 48
neutral prompts that VADER scores positive. Vectors are made from the DExperts
positive/negative prompts, never from the neutral prompts. Greedy decoding, so the
numbers are those `benchmarks/method_table.py` prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from steer.api import make_vector
from steer.application import Steer
from steer.config import build
from steer.evaluate.ab import ab_scores
from steer.generation import GenerationSettings, generate_texts
from steer.io.datasets import load_ab, load_prompts
from steer.methods.ablation import AblationHparams, make_ablation
from steer.methods.inputs import make_artifact
from steer.methods.merge import MergeHparams, merge_vectors
from steer.methods.prompt import PromptSteer
from steer.sites import Site

pytestmark = pytest.mark.integration
SETTINGS = GenerationSettings(max_new_tokens=20, chat_template=False, repetition_penalty=1.3, batch_size=16)


class Task:
    def __init__(self, smol: Any, test_data: Path) -> None:
        self.model, self.tok = smol
        self.dir = test_data / "prompts"
        self.held = load_prompts(self.dir / "neutral_prompts.jsonl")[:48]
        self.analyzer = SentimentIntensityAnalyzer()
        self.base = self.share([])
        self.caa = self.contrastive("caa", layers=[6])
        self.sta = self.contrastive("sta", chat_template=False)

    def contrastive(self, method: str, **overrides: Any) -> Any:
        return make_vector(self.model, self.tok, method, positive=self.dir / "positive_prompts.jsonl",
                           negative=self.dir / "negative_prompts.jsonl",
                           overrides={"max_items": 200, "batch_size": 16, **overrides})

    def share(self, steers: list[Any], prompts: list[str] | None = None) -> float:
        texts = generate_texts(self.model, self.tok, prompts or self.held, SETTINGS, steers=steers, progress=False)
        return sum(self.analyzer.polarity_scores(t)["compound"] > 0.05 for t in texts) / len(texts)


@pytest.fixture(scope="module")
def task(smol, test_data: Path) -> Task:
    return Task(smol, test_data)


def test_sta_keeps_few_sae_features_and_raises_positive_share(task: Task) -> None:
    site = Site("resid_post", 6)
    assert list(task.sta.directions) == [site]
    extra = task.sta.meta.extra
    assert 0 < extra["features_kept"] < extra["d_sae"] / 4
    assert extra["cosine_with_caa"] > 0.5
    torch.testing.assert_close(task.sta.directions[site].norm(), task.caa.directions[site].norm())
    steered = task.share([Steer(task.sta, 4.0)])
    print(f"sta: positive share {task.base:.2f} -> {steered:.2f}")
    assert steered >= task.base + 0.1


def test_sae_feature_along_stas_top_feature_raises_positive_share(task: Task) -> None:
    feature = task.sta.meta.extra["top_features"][0]
    strength = 4 * float(task.caa.directions[Site("resid_post", 6)].norm())
    vector = make_artifact(task.model, task.tok, "sae_feature", overrides={"features": [feature], "strengths": [strength]})
    steered = task.share([Steer(vector, 1.0)])
    print(f"sae_feature {feature} x {strength:.1f}: positive share {task.base:.2f} -> {steered:.2f}")
    assert steered >= task.base + 0.08


def test_lm_steer_raises_positive_share(task: Task) -> None:
    transform = make_vector(task.model, task.tok, "lm_steer", positive=task.dir / "positive_prompts.jsonl",
                            negative=task.dir / "negative_prompts.jsonl")
    steered = task.share([transform.at(5.0)])
    print(f"lm_steer: positive share {task.base:.2f} -> {steered:.2f}")
    assert steered >= task.base + 0.08


def test_merge_of_caa_and_sta_raises_positive_share(task: Task) -> None:
    merged = merge_vectors([task.caa, task.sta], build(MergeHparams, {"mode": "linear", "weights": [0.5, 0.5]}))
    steered = task.share([Steer(merged, 4.0)])
    print(f"merge: positive share {task.base:.2f} -> {steered:.2f}")
    assert steered >= task.base + 0.1


def test_ablating_the_caa_direction_cancels_caa(task: Task) -> None:
    # Projecting r = v/|v| out after adding 4v leaves exactly what ablating alone leaves: the
    # push is gone, and so is the model's own positive component along r.
    ablation = make_ablation(task.model, task.tok, [task.caa], build(AblationHparams, {}))
    added = task.share([Steer(task.caa, 4.0)])
    cancelled = task.share([Steer(task.caa, 4.0), Steer(ablation, 1.0)])
    ablated = task.share([Steer(ablation, 1.0)])
    print(f"caa x4 {added:.2f}; then ablated {cancelled:.2f}; ablated alone {ablated:.2f}; unsteered {task.base:.2f}")
    assert added >= task.base + 0.1
    assert abs(cancelled - ablated) <= 0.05
    assert cancelled <= task.base + 0.05


def test_prompt_steer_raises_positive_share(task: Task) -> None:
    steer = PromptSteer("Write something very positive, happy and kind.", "prefix")
    steered = task.share([], steer.apply(task.held, None, False)[0])
    print(f"prompt: positive share {task.base:.2f} -> {steered:.2f}")
    assert steered >= task.base + 0.1


def test_sta_refusal_vector_moves_ab_scores_in_the_sign_of_the_multiplier(task: Task, test_data: Path) -> None:
    folder = test_data / "caa" / "refusal"
    vector = make_vector(task.model, task.tok, "sta", folder / "generate_dataset.json",
                         overrides={"max_items": 200, "batch_size": 16})
    items = load_ab(folder / "test_dataset_ab.json")  # held apart from generate_dataset.json

    def mean_p(multiplier: float) -> float:
        steers = [Steer(vector, multiplier, "after_instruction")] if multiplier else []
        scores = ab_scores(task.model, task.tok, items, steers=steers, progress=False)
        return sum(scores) / len(scores)

    down, plain, up = mean_p(-4.0), mean_p(0.0), mean_p(4.0)
    print(f"sta refusal A/B: {down:.4f} (-4) {plain:.4f} (0) {up:.4f} (+4)")
    assert down < plain < up


def test_vector_prompt_in_the_chat_setting_raises_positive_share_at_multiplier_1(task: Task) -> None:
    # vector_prompt's natural setting is a chat model's system prompt. On raw-text
    # continuation it makes the task worse (README_2 §8), and in chat it overshoots above x1.
    vector = make_artifact(task.model, task.tok, "vector_prompt", data=task.dir / "nontoxic_prompts-10k_first50.jsonl",
                           overrides={"layers": [6], "chat_template": True, "token": "last",
                                      "steering_prompt": "Always answer in a very positive, happy and enthusiastic way."})
    chat = GenerationSettings(max_new_tokens=30, chat_template=True, repetition_penalty=1.3, batch_size=16)

    def share(steers: list[Any]) -> float:
        texts = generate_texts(task.model, task.tok, task.held, chat, steers=steers, progress=False)
        return sum(task.analyzer.polarity_scores(t)["compound"] > 0.05 for t in texts) / len(texts)

    plain, steered = share([]), share([Steer(vector, 1.0)])
    print(f"vector_prompt (chat, x1): positive share {plain:.2f} -> {steered:.2f}")
    assert steered >= plain + 0.05
