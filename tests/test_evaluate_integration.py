"""The evaluators on the real default model (SmolLM2-135M-Instruct); about 20 s on 2 cores."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from steer import Steer, SteeringVector
from steer.evaluate import EvalContext, TextGroup, run, settings_for

pytestmark = pytest.mark.integration


def test_corpus_ppl_is_sane_and_catches_a_broken_vector(smol, test_data: Path) -> None:
    model, tokenizer = smol
    torch.manual_seed(0)
    noise = torch.randn(model.config.hidden_size)
    vector = SteeringVector({"resid_post.10": noise / noise.norm() * 400.0})
    ctx = EvalContext(steers=[Steer(vector, 1.0)])
    ctx.add_model(None, model, tokenizer)
    settings = settings_for("ppl", {"corpus": str(test_data / "text" / "wikitext-2-raw-test.txt"),
                                    "max_tokens": 384, "window": 256, "stride": 128})
    report = run([], ["ppl"], ctx, {"ppl": settings})
    clean = report["groups"]["unsteered"]["metrics"]["corpus-ppl"]
    broken = report["groups"]["steered x1"]["metrics"]["corpus-ppl"]
    assert 5 < clean < 100  # a 135M model on WikiText: tens
    assert broken > 1.5 * clean


def test_generation_ppl_prefers_fluent_text(smol) -> None:
    model, tokenizer = smol
    ctx = EvalContext()
    ctx.add_model(None, model, tokenizer)
    group = TextGroup("g", ["is Paris, a city on the Seine.", "purple Seine of is city the a, Paris."],
                      ["The capital of France", "The capital of France"])
    per = run([group], ["ppl"], ctx)["per_sample"]["g"]["ppl/ppl"]
    assert per[0] < per[1]


def test_ab_unsteered_probabilities(smol, test_data: Path, tmp_path: Path) -> None:
    import json

    model, tokenizer = smol
    items = json.loads((test_data / "caa" / "refusal" / "test_dataset_ab.json").read_text())[:4]
    data = tmp_path / "ab.json"
    data.write_text(json.dumps(items))
    ctx = EvalContext()
    ctx.add_model(None, model, tokenizer)
    report = run([], ["ab"], ctx, {"ab": settings_for("ab", {"data": str(data)})})
    scores = report["per_sample"]["unsteered"]["ab/ab-p(matching)"]
    assert len(scores) == 4 and all(0.0 <= s <= 1.0 for s in scores)
