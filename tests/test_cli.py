"""The CLI end to end on a tiny model saved to disk; bad input exits 2 with a message, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from steer.cli.main import build_parser, main
from steer.vector import SteeringVector

AB = [{"question": f"Is the cat happy {i}?\n(A) yes\n(B) no", "answer_matching_behavior": "(A)" if i % 2 else "(B)",
       "answer_not_matching_behavior": "(B)" if i % 2 else "(A)"} for i in range(6)]




@pytest.fixture()
def ab_file(tmp_path: Path) -> Path:
    path = tmp_path / "ab.json"
    path.write_text(json.dumps(AB))
    return path


def test_generate_then_apply_free_text_and_ab(model_dir: Path, ab_file: Path, tmp_path: Path, capsys) -> None:
    vec_path = tmp_path / "v.safetensors"
    assert main(["generate", "--method", "caa", "--data", str(ab_file), "--layers", "1", "--out", str(vec_path),
                 "--model", str(model_dir), "batch_size=2"]) == 0
    vector = SteeringVector.load(vec_path)
    assert [str(s) for s in vector.sites] == ["resid_post.1"] and vector.meta.extra["items"] == 6
    assert vector.meta.model_id == str(model_dir) and vector.meta.data_hash

    out = tmp_path / "gen.jsonl"
    assert main(["apply", "--vector", f"{vec_path}:3", "--prompt", "the cat", "--prompt", "I love",
                 "--max-new-tokens", "4", "--out", str(out), "--model", str(model_dir)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and {"prompt", "steered", "unsteered", "vectors", "generation", "multiplier"} <= set(rows[0])
    assert rows[0]["vectors"][0]["multiplier"] == 3.0 and rows[0]["generation"]["max_new_tokens"] == 4

    report, plot = tmp_path / "ab_report.json", tmp_path / "sweep.png"
    assert main(["apply", "--vector", str(vec_path), "--multipliers", "-2", "0", "2", "--data", str(ab_file),
                 "--out", str(report), "--plot", str(plot), "--model", str(model_dir)]) == 0
    data = json.loads(report.read_text())
    assert [r["multiplier"] for r in data["results"]] == [-2.0, 0.0, 2.0]
    assert all(0.0 <= r["mean_p_matching"] <= 1.0 and len(r["per_item"]) == 6 for r in data["results"])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "mean p(matching)" in capsys.readouterr().out


def test_layer_sweep_table_json_and_heatmap(model_dir: Path, ab_file: Path, tmp_path: Path, capsys) -> None:
    vec_path = tmp_path / "layers.safetensors"
    assert main(["generate", "--method", "caa", "--data", str(ab_file), "--layers", "0", "1", "2",
                 "--out", str(vec_path), "--model", str(model_dir)]) == 0
    report, plot = tmp_path / "sweep.json", tmp_path / "sweep.png"
    assert main(["apply", "--vector", str(vec_path), "--layers-sweep", "0", "2", "--multipliers", "-1", "0", "1",
                 "--data", str(ab_file), "--out", str(report), "--plot", str(plot), "--model", str(model_dir)]) == 0
    data = json.loads(report.read_text())
    assert data["kind"] == "ab_layer_sweep" and data["layers"] == [0, 2] and data["multipliers"] == [-1.0, 0.0, 1.0]
    grid = data["mean_p_matching"]
    assert len(grid) == 2 and all(len(row) == 3 and all(0.0 <= p <= 1.0 for p in row) for row in grid)
    assert grid[0][1] == grid[1][1], "multiplier 0 is the unsteered score, whatever the layer"
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert "layer" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "--method", "caa", "--data", "{ab}", "--layers", "9", "--out", "{tmp}/x.safetensors"], "out of range"),
        (["generate", "--method", "caa", "--data", "{ab}", "--out", "{tmp}/x.safetensors", "layer=3"], "Did you mean 'layers'"),
        (["generate", "--method", "caa", "--data", "{tmp}/missing.json", "--out", "{tmp}/x.safetensors"], "No data file"),
        (["apply", "--vector", "{tmp}/corrupt.safetensors", "--prompt", "hi"], "corrupt or truncated"),
        (["apply", "--vector", "{tmp}/wide.safetensors", "--prompt", "hi"], "hidden size 64"),
        (["apply", "--vector", "{tmp}/wide.safetensors"], "--prompt"),
        (["generate", "--method", "caa", "--data", "{ab}", "--out", "{tmp}/x.safetensors", "--model", "{tmp}/nowhere"], "No model file or folder"),
        (["generate", "--method", "caa", "--data", "{ab}", "--out", "{tmp}/x.safetensors", "--model", "someone/not-cached-model"], "local Hugging Face cache"),
    ],
)
def test_bad_input_exits_2_with_a_fix(args, message, model_dir: Path, ab_file: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "corrupt.safetensors").write_bytes(b"garbage!")
    import torch

    SteeringVector({"resid_post.1": torch.ones(64)}).save(tmp_path / "wide.safetensors")
    argv = [a.format(ab=ab_file, tmp=tmp_path) for a in args]
    if "--model" not in argv:
        argv += ["--model", str(model_dir)]
    existing = tmp_path / "x.safetensors"
    existing.write_bytes(b"keep me")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert existing.read_bytes() == b"keep me", "a failed run must not touch existing outputs"


def test_method_choices_come_from_the_registry() -> None:
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["generate", "--method", "nope", "--out", "x"])
    args = parser.parse_args(["generate", "--method", "caa", "--out", "x", "layers=[1]"])
    assert args.overrides == ["layers=[1]"]


def test_layers_flag_gives_back_overrides_it_swallowed() -> None:
    from steer.cli.generate_cmd import _split_layers
    from steer.errors import ConfigError

    assert _split_layers(["6", "max_items=300"], ["batch_size=2"]) == ([6], {"batch_size": 2, "max_items": 300})
    with pytest.raises(ConfigError, match="layer numbers"):
        _split_layers(["six"], [])
