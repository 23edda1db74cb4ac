"""One-file experiments (`steer run`): keys, EasyEdit2 keys, and a tiny run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from steer.errors import ConfigError, DataError, SteerError
from steer.experiment import load_experiment, run_experiment, translate_easyedit2

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "experiments"




def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_easyedit2_keys_map_onto_steer_keys(tmp_path: Path) -> None:
    exp, base = load_experiment(write(tmp_path / "e.yaml", {
        "alg_name": "caa", "steer_train_dataset": ["sentiment"], "layers": [1], "multipliers": [-1, 1],
        "generation_data": ["demo_prompts"], "generation_data_size": 2, "num_responses": 1,
        "model_name_or_path": "some/model", "use_chat_template": False, "system_prompt": "",
        "generation_params": {"max_new_tokens": 5, "do_sample": False}, "steer_from_end_position": True,
        "generate_orig_output": True, "seed": 3}))
    assert base == tmp_path.resolve()
    assert exp.vectors == [{"name": "sentiment", "method": "caa", "data": "sentiment", "hparams": {}}]
    assert (exp.model, exp.layers, exp.multipliers, exp.prompts, exp.prompt_size) == (
        "some/model", [1], [-1.0, 1.0], ["demo_prompts"], 2)
    assert exp.generation == {"max_new_tokens": 5, "do_sample": False, "chat_template": False, "system_prompt": None}
    assert (exp.positions, exp.baseline, exp.seed) == ("generated", True, 3)


def test_keys_without_a_steer_meaning_name_the_steer_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="steer_train_hparam_paths.*no steer equivalent.*vectors"):
        translate_easyedit2({"steer_train_hparam_paths": ["hparams/Steer/caa_hparams/generate_caa.yaml"]})
    with pytest.raises(ConfigError, match="steer_vector_output_dir.*output"):
        translate_easyedit2({"steer_vector_output_dir": ["vectors/"]})
    with pytest.raises(ConfigError, match="unknown key 'multiplier'. Did you mean 'multipliers'"):
        load_experiment(write(tmp_path / "a.yaml", {"multiplier": [1]}))
    with pytest.raises(ConfigError, match="'generation_data_sizes'. Did you mean 'generation_data_size'.*prompt_size"):
        load_experiment(write(tmp_path / "b.yaml", {"generation_data_sizes": 3}))
    with pytest.raises(ConfigError, match="generation: unknown key 'max_tokens'. Did you mean 'max_new_tokens'"):
        run_experiment(write(tmp_path / "c.yaml", {"method": "caa", "data": "sentiment",
                                                   "generation": {"max_tokens": 4}}), output=tmp_path / "o")
    with pytest.raises(ConfigError, match="do_sample"):
        run_experiment(write(tmp_path / "d.yaml", {"method": "caa", "data": "sentiment", "num_responses": 2}),
                       output=tmp_path / "o")
    with pytest.raises(ConfigError, match="scores the model, not generated texts"):
        run_experiment(write(tmp_path / "e.yaml", {"method": "caa", "data": "sentiment", "evaluate": ["ab"]}),
                       output=tmp_path / "o")
    with pytest.raises(DataError, match="neither a bundled data set.*Did you mean the bundled 'demo_prompts'"):
        run_experiment(write(tmp_path / "f.yaml", {"method": "caa", "data": "sentiment", "prompts": ["demo_prompt"]}),
                       output=tmp_path / "o")
    with pytest.raises(DataError, match="vector toxicity: data: 'toxicity' is neither a bundled data set"):
        run_experiment(write(tmp_path / "h.yaml", {"alg_name": "caa", "steer_train_dataset": "toxicity",
                                                   "model_name_or_path": "/nowhere"}), output=tmp_path / "o")
    with pytest.raises(ConfigError, match="makes no vector"):
        run_experiment(write(tmp_path / "g.yaml", {"prompts": ["demo_prompts"]}), output=tmp_path / "o")
    assert not (tmp_path / "o").exists(), "a refused experiment writes nothing"


def test_shipped_examples_load_strictly() -> None:
    files = sorted(EXAMPLES.glob("*.yaml"))
    assert len(files) >= 2
    for path in files:
        exp, _ = load_experiment(path)
        assert exp.model in (None, "gemma-3-270m"), f"{path.name} must run on a bundled model"


def test_tiny_experiment_end_to_end(model_dir: Path, tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps([{"positive": "I love this happy day", "negative": "I hate this sad day"},
                                 {"positive": "what a great good day", "negative": "what an awful bad day"}]))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p}) for p in ["the cat", "I love", "What is", "the dog"]))
    exp = write(tmp_path / "exp.yaml", {
        "name": "tiny", "alg_name": "caa", "steer_train_dataset": "pairs.json",  # relative to the file
        "layers": ["0%", "100%"], "sweep_layers": True, "multipliers": [-2, 0, 2],
        "generation_data": [{"data": "prompts.jsonl", "start": 1}], "generation_data_size": 2,
        "num_responses": 2, "generation_params": {"max_new_tokens": 4, "do_sample": True, "temperature": 1.0},
        "evaluate": ["distinctness", "sentiment"], "use_chat_template": False})
    out = tmp_path / "report"
    assert run_experiment(exp, output=out, progress=False, log=lambda _: None,
                          overrides={"model": str(model_dir)}) == out
    report = json.loads((out / "report.json").read_text())
    assert report["vectors"][0]["layers"] == [0, 2]  # 0% and 100% of 3 layers
    assert report["vectors"][0]["hparams_source"].endswith("default.yaml")
    assert report["prompt_sets"] == [{"name": "prompts", "data": "prompts.jsonl", "start": 1, "n": 2,
                                      "data_hash": report["prompt_sets"][0]["data_hash"]}]
    labels = [r["condition"] for r in report["results"]]
    # unsteered, the vector at both layers x3 multipliers, then each layer alone x3
    assert labels == ["unsteered", "pairs x-2", "pairs x0", "pairs x2", "pairs @L0 x-2", "pairs @L0 x0",
                      "pairs @L0 x2", "pairs @L2 x-2", "pairs @L2 x0", "pairs @L2 x2"]
    assert all(r["n"] == 4 and 0 <= r["metrics"]["dist-1"] <= 1 for r in report["results"])
    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 10 * 2 * 2 and {r["prompt"] for r in rows} == {"I love", "What is"}
    by = {(r["condition"], r["response"], r["prompt"]): r["text"] for r in rows}
    assert by[("pairs x0", 0, "I love")] == by[("unsteered", 0, "I love")]  # x0 is the unsteered model
    assert any(by[("unsteered", 0, p)] != by[("unsteered", 1, p)] for p in ("I love", "What is")), \
        "each response is sampled with its own seed"
    assert any(by[("pairs x2", 0, p)] != by[("unsteered", 0, p)] for p in ("I love", "What is"))
    assert (out / "dist-2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "layers_pairs_dist-2.png").is_file() and (out / "vectors" / "pairs.safetensors").is_file()
    summary = (out / "summary.md").read_text()
    assert "| pairs @L2 x2 |" in summary and "![dist-2.png](dist-2.png)" in summary
    # a second run refuses to replace the report unless told to
    with pytest.raises(SteerError, match="exists and is not empty"):
        run_experiment(exp, output=out, progress=False, log=lambda _: None, overrides={"model": str(model_dir)})


def test_steer_run_cli(model_dir: Path, tmp_path: Path, capsys) -> None:
    from steer.cli.main import main

    exp = write(tmp_path / "exp.yaml", {"method": "caa", "data": "sentiment", "hparams": {"layers": [1], "max_items": 4},
                                        "prompts": [{"data": "demo_prompts", "size": 2}], "multipliers": [4],
                                        "generation": {"max_new_tokens": 3}, "evaluate": ["sentiment"]})
    out = tmp_path / "run"
    assert main(["run", str(exp), "multipliers=[-4,4]", "--model", str(model_dir), "--out", str(out),
                 "--no-progress", "--set", "prompt_size=1"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert [r["condition"] for r in report["results"]] == ["unsteered", "caa-sentiment x-4", "caa-sentiment x4"]
    assert report["prompt_sets"][0]["n"] == 2  # a set's own size wins over prompt_size
    assert "hparams: " not in capsys.readouterr().err
    assert main(["run", str(exp), "--model", str(model_dir), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
