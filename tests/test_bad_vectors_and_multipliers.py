"""Vectors that disagree with their own header, and multipliers that are not finite numbers.

Each is refused with a message that says how to fix it, wherever it comes in: a file,
the CLI (`FILE:MULT`, `library:NAME:MULT`, `--multiplier`, chat's `/mult`), or Python.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tiny import tiny_model, tiny_tokenizer

import steer
from steer.application import Steer
from steer.cli.main import main
from steer.errors import SteerError, VectorError
from steer.refs import MultiplierError, finite_multiplier, parse_vector_ref
from steer.vector import SteeringVector, VectorMeta




def good_vector(tmp_path: Path) -> Path:
    path = tmp_path / "good.safetensors"
    SteeringVector({"resid_post.1": torch.ones(32)}, VectorMeta(method="caa", num_layers=3)).save(path)
    return path


def with_meta(source: Path, target: Path, **changes: object) -> Path:
    """A copy of `source` whose header metadata says something else than its tensors."""
    with safe_open(str(source), framework="pt") as handle:
        header = dict(handle.metadata())
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    meta = json.loads(header["steer.meta"])
    meta.update(changes)
    header["steer.meta"] = json.dumps(meta)
    save_file(tensors, str(target), metadata=header)
    return target


@pytest.mark.parametrize("changes, words", [
    ({"hidden_size": 576}, "says hidden size 576"),
    ({"num_layers": 1}, "says the model has 1 layers"),
])
def test_a_header_that_disagrees_with_the_tensors_is_a_clear_error(tmp_path, model_dir, capsys, changes, words):
    bad = with_meta(good_vector(tmp_path), tmp_path / "bad.safetensors", **changes)
    with pytest.raises(VectorError, match=words):
        SteeringVector.load(bad)
    code = main(["apply", "--vector", str(bad), "--prompt", "the cat", "--max-new-tokens", "2",
                 "--model", str(model_dir)])
    err = capsys.readouterr().err
    assert code == 2 and words in err and "Traceback" not in err


@pytest.mark.parametrize("tail, words", [("abc", "is not a number"), ("inf", "is not finite"),
                                         ("nan", "is not finite"), ("-inf", "is not finite")])
def test_file_multipliers_must_be_finite_numbers(tmp_path, model_dir, capsys, tail, words):
    path = good_vector(tmp_path)
    with pytest.raises(MultiplierError, match=words):
        parse_vector_ref(f"{path}:{tail}")
    code = main(["apply", "--vector", f"{path}:{tail}", "--prompt", "the cat", "--max-new-tokens", "2",
                 "--model", str(model_dir)])
    err = capsys.readouterr().err
    assert code == 2 and words in err and "No vector file" not in err


def test_library_multipliers_must_be_finite_numbers():
    for tail in ("strong", "inf", "nan"):
        with pytest.raises(SteerError, match="not (a number|finite)"):
            parse_vector_ref(f"library:sentiment-positive:{tail}")
    assert parse_vector_ref("library:sentiment-positive:2.5").multiplier == 2.5


def test_flag_multipliers_must_be_finite_numbers(tmp_path, model_dir, capsys):
    for value in ("inf", "nan", "x"):
        with pytest.raises(SystemExit) as exit_info:
            main(["apply", "--vector", str(good_vector(tmp_path)), "--multiplier", value, "--prompt", "a",
                  "--model", str(model_dir)])
        assert exit_info.value.code == 2
        assert "finite number" in capsys.readouterr().err


def test_a_path_with_a_colon_that_exists_is_a_path(tmp_path):
    odd = tmp_path / "odd:name.safetensors"
    SteeringVector({"resid_post.1": torch.ones(32)}).save(odd)
    assert parse_vector_ref(str(odd)).path == odd and parse_vector_ref(str(odd)).multiplier is None
    assert parse_vector_ref(f"{odd}:2").multiplier == 2.0


def test_python_multipliers_must_be_finite_numbers():
    vector = SteeringVector({"resid_post.1": torch.ones(32)})
    model, tok = tiny_model("llama"), tiny_tokenizer()
    for bad in (float("nan"), float("inf"), "abc", True):
        with pytest.raises(MultiplierError):
            Steer(vector, bad)  # type: ignore[arg-type]
        with pytest.raises(MultiplierError):
            with steer.steering(model, (vector, bad)):  # type: ignore[arg-type]
                pass
    with pytest.raises(MultiplierError, match="per-row multiplier 1"):
        Steer(vector, [1.0, float("nan")])
    with pytest.raises(MultiplierError, match="layer 1 multiplier"):
        Steer(vector, 1.0, layer_multipliers={1: float("inf")})
    with steer.attach(model, tok, (vector, 1.0)) as steerer:
        with pytest.raises(MultiplierError):
            steerer.set_multiplier(0, float("inf"))
        assert steerer.vectors[0].multiplier == 1.0  # the old steering stays in place
    assert finite_multiplier("2") == 2.0 and finite_multiplier(-1) == -1.0
