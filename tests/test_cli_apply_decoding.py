"""`steer apply` without a vector: DoLa/DeCo alone next to plain decoding, and a plain unsteered baseline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from steer.cli.main import main
from steer.generation import GenerationSettings, generate_texts

PROMPTS = ["the cat sat", "I love this"]
AB = [{"question": f"Is the cat happy {i}?\n(A) yes\n(B) no", "answer_matching_behavior": "(A)" if i % 2 else "(B)",
       "answer_not_matching_behavior": "(B)" if i % 2 else "(A)"} for i in range(4)]




def _reference(model_dir: Path, decoding: str, overrides: dict | None = None) -> list[str]:
    """What steer.generate_texts gives in Python for the same model folder and settings."""
    from steer.models.loading import load_model

    model, tokenizer = load_model(str(model_dir), dtype="float32", device="cpu")
    settings = GenerationSettings(max_new_tokens=5, decoding=decoding, decoding_overrides=overrides or {})
    return generate_texts(model, tokenizer, PROMPTS, settings)


def _apply(model_dir: Path, out: Path, *extra: str) -> list[dict]:
    argv = ["apply", *[a for p in PROMPTS for a in ("--prompt", p)], "--max-new-tokens", "5",
            "--out", str(out), "--model", str(model_dir), *extra]
    assert main(argv) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


# DeCo's default strength does not change this random model's greedy picks; a stronger one does
@pytest.mark.parametrize(("mode", "overrides"), [("dola", {}), ("deco", {"alpha": 100.0, "top_k": 100, "top_p": 1.0})])
def test_contrastive_decoding_alone_next_to_plain(mode: str, overrides: dict, model_dir: Path, tmp_path: Path,
                                                  capsys) -> None:
    sets = [a for k, v in overrides.items() for a in ("--decoding-set", f"{k}={v}")]
    rows = _apply(model_dir, tmp_path / f"{mode}.jsonl", "--decoding", mode, *sets)
    assert [r["prompt"] for r in rows] == PROMPTS
    assert all(r["decoding"] == mode and r["generation"]["decoding"] == mode for r in rows)
    assert "steered" not in rows[0] and "vectors" not in rows[0]
    # each column is exactly what the Python API gives for that decoding mode
    plain, decoded = _reference(model_dir, "plain"), _reference(model_dir, mode, overrides)
    assert plain != decoded  # so the two columns below tell the modes apart on this model
    assert [r["plain"] for r in rows] == plain
    assert [r["decoded"] for r in rows] == decoded
    assert f" {mode} " in capsys.readouterr().out


def test_unsteered_baseline_is_plain_generation(model_dir: Path, tmp_path: Path, capsys) -> None:
    rows = _apply(model_dir, tmp_path / "baseline.jsonl")
    assert [r["unsteered"] for r in rows] == _reference(model_dir, "plain")
    assert all(set(r) == {"prompt", "unsteered", "generation", "model", "prompt_hash"} for r in rows)
    assert rows[0]["generation"]["decoding"] == "plain"
    assert "unsteered" in capsys.readouterr().out


def test_ab_baseline_without_a_vector(model_dir: Path, tmp_path: Path) -> None:
    data, report = tmp_path / "ab.json", tmp_path / "ab_report.json"
    data.write_text(json.dumps(AB))
    assert main(["apply", "--data", str(data), "--out", str(report), "--model", str(model_dir)]) == 0
    result = json.loads(report.read_text())
    assert result["vectors"] == [] and [r["multiplier"] for r in result["results"]] == [0.0]
    assert 0.0 < result["results"][0]["mean_p_matching"] < 1.0 and len(result["results"][0]["per_item"]) == 4


def test_multipliers_without_a_vector_is_a_usage_error(model_dir: Path, capsys) -> None:
    assert main(["apply", "--prompt", "hi", "--multipliers", "1", "2", "--model", str(model_dir)]) == 2
    err = capsys.readouterr().err
    assert "--multipliers sweeps a vector" in err and "--vector FILE" in err and "Traceback" not in err
