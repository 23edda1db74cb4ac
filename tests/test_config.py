"""Strict hyper-parameters: unknown keys name the closest valid key; precedence CLI > YAML > defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from steer.config import (
    build,
    config_source,
    default_config_path,
    depth_layer,
    hparams_source,
    load_hparams,
    parse_overrides,
    read_yaml,
)
from steer.errors import ConfigError, SiteError
from steer.methods import steering_methods
from steer.methods.caa import CAAHparams
from steer.registry import Registry


def test_unknown_key_names_the_closest() -> None:
    with pytest.raises(ConfigError, match="unknown key 'layer'. Did you mean 'layers'"):
        build(CAAHparams, {"layer": [3]})


def test_types_are_checked() -> None:
    with pytest.raises(ConfigError, match="batch_size: expected an integer"):
        build(CAAHparams, {"batch_size": "eight"})
    with pytest.raises(ConfigError, match="token.*not one of"):
        build(CAAHparams, {"token": "middle"})
    with pytest.raises(SiteError, match="Did you mean 'resid_post'"):
        build(CAAHparams, {"site": "resid_postt"})
    assert build(CAAHparams, {"layers": 7}).layers == [7]


def test_precedence_overrides_over_yaml_over_defaults(tmp_path: Path) -> None:
    config = tmp_path / "caa.yaml"
    config.write_text("layers: [4]\nbatch_size: 2\n")
    hp = load_hparams(CAAHparams, "caa", config=config, overrides=parse_overrides(["batch_size=3"]))
    assert (hp.layers, hp.batch_size, hp.site) == ([4], 3, "resid_post")


def test_bad_yaml_and_bad_override(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("layers: [4\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_hparams(CAAHparams, "caa", config=broken)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_hparams(CAAHparams, "caa", config=listy)
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["layers"])
    with pytest.raises(ConfigError, match="No config file"):
        load_hparams(CAAHparams, "caa", config=tmp_path / "missing.yaml")


def test_every_shipped_yaml_loads_strictly() -> None:
    registry = steering_methods()
    for name in registry:
        method = registry.get(name)
        for model_id in (None, "HuggingFaceTB/SmolLM2-135M-Instruct"):
            path = default_config_path(name, model_id)
            assert path is not None, f"hparams/{name}/ has no YAML"
            load_hparams(method.hparams, name, model_id=model_id, num_layers=30)
    assert default_config_path("caa", "HuggingFaceTB/SmolLM2-135M-Instruct").name == "smollm2-135m-instruct.yaml"


def test_registry_rejects_duplicates() -> None:
    registry: Registry[int] = Registry("thing")
    registry.register("a", 1)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("a", 2)
    with pytest.raises(Exception, match="Did you mean 'a'"):
        registry.get("aa")


# ---- depth-relative layers ("40%") and the hparams source ---------------------------------


def test_depth_fractions_resolve_against_the_model_depth() -> None:
    assert depth_layer("40%", 32) == 13  # the CAA paper's layer 13 of Llama-2-7B's 32
    assert depth_layer("40%", 30) == 12  # SmolLM2-135M
    assert depth_layer("0%", 30) == 0 and depth_layer("100%", 30) == 29  # capped at the last layer
    assert depth_layer(" 12.5 % ", 8) == 1
    with pytest.raises(ConfigError, match="deeper than the model"):
        depth_layer("140%", 30)
    with pytest.raises(ConfigError, match="percentage such as '40%'"):
        depth_layer("0.4", 30)


def test_load_hparams_resolves_fractions_in_yaml_and_overrides(tmp_path: Path) -> None:
    config = tmp_path / "caa.yaml"
    config.write_text('layers: ["40%", "50%", 16]\nbatch_size: 2\n')
    hp = load_hparams(CAAHparams, "caa", config=config, num_layers=32)
    assert hp.layers == [13, 16]  # 50% of 32 is 16, given twice: kept once, in order
    hp = load_hparams(CAAHparams, "caa", config=config, overrides=parse_overrides(["layers=25%"]), num_layers=30)
    assert hp.layers == [8]
    # plain numbers need no depth; a fraction without one says how to give it
    assert load_hparams(CAAHparams, "caa", config=config, overrides={"layers": [3]}).layers == [3]
    with pytest.raises(ConfigError, match=r"fraction of the model's depth.*num_layers.*layers=\[12\]"):
        load_hparams(CAAHparams, "caa", config=config)


def test_fractions_only_in_layer_fields(tmp_path: Path) -> None:
    from steer.methods.ablation import AblationHparams

    hp = load_hparams(AblationHparams, "ablation", overrides={"layers": "50%", "apply_layers": ["10%", "90%"]},
                      num_layers=10)
    assert (hp.layers, hp.apply_layers) == ([5], [1, 9])
    assert load_hparams(AblationHparams, "ablation", overrides={"apply_layers": "all"}, num_layers=10).apply_layers == "all"
    with pytest.raises(ConfigError, match="system_prompt|batch_size"):
        load_hparams(CAAHparams, "caa", overrides={"batch_size": "40%"}, num_layers=10)


def test_default_yamls_use_depth_fractions_and_family_files_cite_sources() -> None:
    for method in ("caa", "vector_prompt", "ablation"):
        layers = read_yaml(default_config_path(method, None))["layers"]
        assert all(isinstance(x, str) and x.endswith("%") for x in layers), (method, layers)
    expected = {"meta-llama/Llama-2-7b-chat-hf": 13, "meta-llama/Meta-Llama-3-8B-Instruct": 13,
                "Qwen/Qwen2.5-7B-Instruct": 14, "mistralai/Mistral-7B-Instruct-v0.2": 13,
                "google/gemma-2-2b-it": 10, "google/gemma-3-270m": None}
    for model_id, layer in expected.items():
        path = default_config_path("caa", model_id)
        assert path.name != "default.yaml", f"no CAA hparams shipped for {model_id}"
        text = path.read_text()
        assert "arXiv" in text or "EasyEdit" in text or "measured" in text, f"{path.name} does not say where its layer came from"
        hp = load_hparams(CAAHparams, "caa", model_id=model_id, num_layers=64)
        if layer is not None:
            assert hp.layers == [layer]
        assert hparams_source(hp) == str(path)


def test_hparams_source_and_config_source(tmp_path: Path) -> None:
    smol = "HuggingFaceTB/SmolLM2-135M-Instruct"
    hp = load_hparams(CAAHparams, "caa", model_id=smol)
    assert hparams_source(hp) == config_source("caa", smol) == str(default_config_path("caa", smol))
    assert config_source("caa", "some/unknown").endswith("default.yaml")
    config = tmp_path / "mine.yaml"
    config.write_text("layers: [1]\n")
    assert hparams_source(load_hparams(CAAHparams, "caa", config=config)) == str(config) == config_source("caa", smol, config)


def test_generate_prints_hparams_file_and_takes_depth_fractions(tmp_path: Path, capsys) -> None:
    import json

    from tiny import tiny_model, tiny_tokenizer

    from steer.cli.main import main
    from steer.vector import SteeringVector

    folder = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(folder)  # 3 layers
    tiny_tokenizer().save_pretrained(folder)
    data = tmp_path / "pairs.json"
    data.write_text(json.dumps([{"positive": "I love it", "negative": "I hate it"}] * 2))
    out = tmp_path / "v.safetensors"
    assert main(["generate", "--method", "caa", "--data", str(data), "--model", str(folder),
                 "--layers", "34%", "100%", "--out", str(out)]) == 0
    assert "hparams: " in capsys.readouterr().out
    assert [s.layer for s in SteeringVector.load(out).sites] == [1, 2]
    out2 = tmp_path / "d.safetensors"  # the shipped default.yaml: 40% of 3 layers is layer 1
    assert main(["generate", "--method", "caa", "--data", str(data), "--model", str(folder), "--out", str(out2)]) == 0
    printed = capsys.readouterr().out
    assert f"hparams: {default_config_path('caa', None)}" in printed
    assert [s.layer for s in SteeringVector.load(out2).sites] == [1]
