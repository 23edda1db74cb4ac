"""Strict hyper-parameters: unknown keys name the closest valid key; precedence CLI > YAML > defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from steer.config import build, default_config_path, load_hparams, parse_overrides
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
            load_hparams(method.hparams, name, model_id=model_id)
    assert default_config_path("caa", "HuggingFaceTB/SmolLM2-135M-Instruct").name == "smollm2-135m-instruct.yaml"


def test_registry_rejects_duplicates() -> None:
    registry: Registry[int] = Registry("thing")
    registry.register("a", 1)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("a", 2)
    with pytest.raises(Exception, match="Did you mean 'a'"):
        registry.get("aa")
