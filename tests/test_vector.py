"""SteeringVector: arithmetic, safetensors round trip with metadata, and clear errors on bad files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from steer.errors import VectorError
from steer.io.atomic import write_text_atomic
from steer.sites import Site
from steer.vector import SteeringVector, VectorMeta


def make(values: dict[str, list[float]], **meta) -> SteeringVector:
    return SteeringVector({k: torch.tensor(v) for k, v in values.items()}, VectorMeta(**meta))


def test_arithmetic() -> None:
    a = make({"resid_post.1": [1.0, 2.0], "resid_post.2": [0.0, 1.0]}, method="caa")
    b = make({"resid_post.1": [1.0, 1.0], "mlp_out.0": [3.0, 3.0]}, method="caa")
    total = a + b
    assert total.directions[Site("resid_post", 1)].tolist() == [2.0, 3.0]
    assert total.directions[Site("mlp_out", 0)].tolist() == [3.0, 3.0]
    assert (a - b).directions[Site("mlp_out", 0)].tolist() == [-3.0, -3.0]
    assert (2 * a).directions[Site("resid_post", 1)].tolist() == [2.0, 4.0]
    assert (-a).directions[Site("resid_post", 2)].tolist() == [0.0, -1.0]
    assert (a / 2).directions[Site("resid_post", 1)].tolist() == [0.5, 1.0]
    assert a.scale_layers({2: 10.0}).directions[Site("resid_post", 2)].tolist() == [0.0, 10.0]
    assert a.select([2]).sites == [Site("resid_post", 2)]
    assert a.directions[Site("resid_post", 1)].tolist() == [1.0, 2.0], "operations must not modify operands"
    with pytest.raises(VectorError, match="hidden size"):
        _ = a + make({"resid_post.1": [1.0, 2.0, 3.0]})


def test_save_load_round_trip_keeps_metadata(tmp_path: Path) -> None:
    vec = make({"resid_post.12": [0.5, -1.5]}, method="caa", model_id="m", num_layers=30, data_hash="abc",
               extra={"hparams": {"layers": [12]}})
    path = vec.save(tmp_path / "v.safetensors")
    loaded = SteeringVector.load(path)
    assert loaded.directions[Site("resid_post", 12)].tolist() == [0.5, -1.5]
    assert loaded.meta == vec.meta
    assert list(tmp_path.iterdir()) == [path], "no temporary files left behind"


def test_corrupt_truncated_and_foreign_files(tmp_path: Path) -> None:
    good = make({"resid_post.1": [1.0] * 64}).save(tmp_path / "good.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(VectorError, match="corrupt or truncated"):
        SteeringVector.load(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 3)
    with pytest.raises(VectorError, match="corrupt or truncated"):
        SteeringVector.load(garbage)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.ones(3)}, str(foreign))
    with pytest.raises(VectorError, match="not a steer vector"):
        SteeringVector.load(foreign)
    with pytest.raises(VectorError, match="No vector file"):
        SteeringVector.load(tmp_path / "missing.safetensors")
    bad_header = tmp_path / "bad_header.safetensors"
    save_file({"resid_post.1": torch.ones(3)}, str(bad_header),
              metadata={"steer.format_version": "1", "steer.meta": "{not json"})
    with pytest.raises(VectorError, match="unreadable steer header"):
        SteeringVector.load(bad_header)


def test_save_does_not_clobber_on_failure(tmp_path: Path) -> None:
    path = make({"resid_post.1": [1.0, 2.0]}).save(tmp_path / "v.safetensors")
    before = path.read_bytes()
    vec = make({"resid_post.1": [3.0, 4.0]})
    vec.meta.extra = {"unserialisable": object()}
    with pytest.raises(TypeError):
        vec.save(path)
    assert path.read_bytes() == before and len(list(tmp_path.iterdir())) == 1


def test_nan_is_rejected() -> None:
    with pytest.raises(VectorError, match="NaN"):
        make({"resid_post.1": [float("nan"), 1.0]})
    with pytest.raises(VectorError, match="at least one site"):
        SteeringVector({})


def test_header_is_plain_json(tmp_path: Path) -> None:
    path = make({"resid_post.3": [1.0]}, method="caa", model_id="m").save(tmp_path / "v.safetensors")
    size = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8 : 8 + size])
    meta = json.loads(header["__metadata__"]["steer.meta"])
    assert meta["method"] == "caa" and meta["model_id"] == "m" and meta["hidden_size"] == 1
    assert {"created", "library_version", "num_layers", "data_hash"} <= set(meta)


def test_atomic_writes_get_the_usual_file_mode(tmp_path: Path) -> None:
    """mkstemp's 0600 must not leak: a new file gets 0666 minus the umask, a replaced one keeps its mode."""
    old = os.umask(0o022)
    try:
        fresh = write_text_atomic(tmp_path / "new.txt", "a")
        assert fresh.stat().st_mode & 0o777 == 0o644
        os.umask(0o027)
        assert write_text_atomic(tmp_path / "group.txt", "a").stat().st_mode & 0o777 == 0o640
        kept = tmp_path / "kept.txt"
        kept.write_text("old")
        kept.chmod(0o640)
        write_text_atomic(kept, "new")
        assert kept.stat().st_mode & 0o777 == 0o640 and kept.read_text() == "new"
    finally:
        os.umask(old)
