"""Interop: llama.cpp/repeng GGUF control vectors, steering-vectors and repeng objects, EasyEdit2 .pt files.

The checks against repeng and steering-vectors run those libraries' own code (installed
with `pip install --no-deps repeng==0.4.0 steering-vectors==0.12.2`: their declared pins,
numpy<2 and transformers<5, would replace this project's versions). repeng 0.4.0 names
`np.float_`, which numpy 2 removed, so repeng runs in a child process that restores that
one alias before importing it; this test process never patches numpy.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import tiny_model, tiny_tokenizer

from steer.application import Steer, steering
from steer.cli.main import main
from steer.errors import VectorError
from steer.io import codecs
from steer.io.gguf_vector import read_gguf_vector, write_gguf_vector
from steer.vector import SteeringVector, VectorMeta

TESTS = Path(__file__).resolve().parent
PEERS_MISSING = "needs repeng and steering-vectors: pip install --no-deps repeng==0.4.0 steering-vectors==0.12.2"


def _needs(module: str) -> pytest.MarkDecorator:
    """Skip without the peer library locally; in CI (CI=true) it must be there, so its tests never skip there."""
    missing = importlib.util.find_spec(module) is None
    if missing and os.environ.get("CI"):
        raise RuntimeError(f"CI must install the peers the interop tests check against: {PEERS_MISSING}")
    return pytest.mark.skipif(missing, reason=PEERS_MISSING)


needs_repeng = _needs("repeng")
needs_steering_vectors = _needs("steering_vectors")

HIDDEN = 32  # tiny models' hidden size


def _vector(layers=(1, 2), site="resid_post", seed=0, **meta) -> SteeringVector:
    generator = torch.Generator().manual_seed(seed)
    return SteeringVector({f"{site}.{layer}": torch.randn(HIDDEN, generator=generator) for layer in layers},
                          VectorMeta(method="caa", model_id="tiny-llama", **meta))


def _same(a: SteeringVector, b: SteeringVector) -> None:
    assert a.sites == b.sites
    for site in a.sites:
        assert torch.equal(a.directions[site].float(), b.directions[site].float()), site


# ---- GGUF control vectors ---------------------------------------------------------------------


def test_gguf_round_trip_keeps_directions_numbering_and_metadata(tmp_path: Path) -> None:
    import gguf

    vector = _vector(layers=(1, 2), num_layers=3)
    path = write_gguf_vector(vector, tmp_path / "v.gguf", model_hint="llama")
    reader = gguf.GGUFReader(str(path))
    assert reader.get_field("general.architecture").contents() == "controlvector"
    assert reader.get_field("controlvector.model_hint").contents() == "llama"
    assert reader.get_field("controlvector.layer_count").contents() == 2
    # steer's resid_post.N is llama.cpp's direction.N (the output of block N, counting from 0)
    assert sorted(t.name for t in reader.tensors) == ["direction.1", "direction.2"]
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 and list(t.shape) == [HIDDEN] for t in reader.tensors)
    back = SteeringVector.load(path)  # dispatched by the codec registry from the file's magic bytes
    _same(vector, back)
    assert back.meta.method == "caa" and back.meta.model_id == "tiny-llama" and back.meta.num_layers == 3
    assert codecs.kind_of(path) == "gguf"


def test_gguf_export_refuses_what_llama_cpp_cannot_hold(tmp_path: Path) -> None:
    with pytest.raises(VectorError, match="resid_post"):
        write_gguf_vector(_vector(site="attn_out"), tmp_path / "a.gguf")
    with pytest.raises(VectorError, match="direction.0"):
        write_gguf_vector(_vector(layers=(0, 1)), tmp_path / "b.gguf")
    with pytest.raises(VectorError, match="num_layers"):
        write_gguf_vector(_vector(layers=(-1,)), tmp_path / "c.gguf")
    assert not list(tmp_path.iterdir())  # nothing half-written
    read = read_gguf_vector(write_gguf_vector(_vector(layers=(-1,)), tmp_path / "d.gguf", num_layers=3))
    assert read.sites == [steer_site("resid_post.2")]


def steer_site(text: str):
    from steer.sites.resolve import Site

    return Site.parse(text)


def test_a_model_gguf_is_not_taken_for_a_control_vector(tmp_path: Path) -> None:
    import gguf

    path = tmp_path / "model.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("token_embd.weight", np.zeros((4, HIDDEN), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(VectorError, match="not a control vector.*--model"):
        SteeringVector.load(path)


def test_export_cli_scales_and_converts_back(tmp_path: Path, capsys) -> None:
    source = _vector(layers=(1, 2)).save(tmp_path / "v.safetensors")
    gguf_path, back_path = tmp_path / "v.gguf", tmp_path / "back.safetensors"
    assert main(["export", f"{source}:2", "--format", "gguf", "--out", str(gguf_path)]) == 0
    assert "direction.1, direction.2" in capsys.readouterr().out
    assert main(["export", str(gguf_path), "--format", "safetensors", "--out", str(back_path)]) == 0
    _same(_vector(layers=(1, 2)) * 2, SteeringVector.load(back_path))
    attn = _vector(site="attn_out").save(tmp_path / "attn.safetensors")
    assert main(["export", str(attn), "--format", "gguf", "--out", str(tmp_path / "x.gguf")]) == 2
    err = capsys.readouterr().err
    assert "resid_post" in err and "Traceback" not in err and not (tmp_path / "x.gguf").exists()


def test_codec_registry_rejects_duplicates_and_names_the_kinds() -> None:
    with pytest.raises(VectorError, match="already registered"):
        codecs.register_codec(codecs.Codec("gguf", "again", "x:y"))
    assert codecs.writable_kinds() == ["gguf", "safetensors"]
    with pytest.raises(VectorError, match="Did you mean 'gguf'"):
        codecs.codec("ggfu")


# ---- repeng (its own reader, writer and steering, in a child process) ----------------------------

_REPENG_CHILD = textwrap.dedent("""
    import json, sys
    import numpy
    if not hasattr(numpy, "float_"):
        numpy.float_ = numpy.float64  # repeng 0.4.0 names it; numpy 2 removed it (same type)
    import repeng, torch
    from safetensors.torch import save_file
    sys.path.insert(0, sys.argv[2])
    from tiny import tiny_model, tiny_tokenizer
    from steer.interop import from_repeng

    task = json.loads(sys.argv[1])
    out = {}
    cv = repeng.ControlVector.import_gguf(task["steer_gguf"])  # repeng reads steer's export
    out["read"] = {"model_type": cv.model_type,
                   "directions": {str(k): [float(x) for x in v] for k, v in cv.directions.items()}}
    mine = repeng.ControlVector(model_type="llama", directions={
        int(k): numpy.array(v, dtype=numpy.float32) for k, v in task["directions"].items()})
    mine.export_gguf(task["repeng_gguf"])  # repeng writes; steer reads it in the parent
    from_repeng(mine).save(task["from_repeng"])  # the Python object, converted
    model, tok = tiny_model("llama"), tiny_tokenizer()
    controlled = repeng.ControlModel(model, list(cv.directions))
    controlled.set_control(cv, task["coeff"])
    with torch.no_grad():
        logits = controlled(**tok(task["prompt"], return_tensors="pt")).logits
    save_file({"logits": logits.contiguous()}, task["logits"])
    print(json.dumps(out))
""")


@needs_repeng
def test_repeng_reads_steer_gguf_writes_what_steer_reads_and_steers_the_same(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    exported = _vector(layers=(1, 2), seed=1)
    theirs = {str(layer): torch.randn(HIDDEN, generator=torch.Generator().manual_seed(layer)).tolist()
              for layer in (1, 2)}
    task = {"steer_gguf": str(write_gguf_vector(exported, tmp_path / "steer.gguf", model_hint="llama")),
            "directions": theirs, "repeng_gguf": str(tmp_path / "repeng.gguf"),
            "from_repeng": str(tmp_path / "from_repeng.safetensors"), "coeff": 2.0, "prompt": "the cat sat on",
            "logits": str(tmp_path / "logits.safetensors")}
    result = subprocess.run([sys.executable, "-c", _REPENG_CHILD, json.dumps(task), str(TESTS)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    read = json.loads(result.stdout.strip().splitlines()[-1])["read"]
    # repeng's own reader sees steer's directions under the same layer numbers
    assert read["model_type"] == "llama" and sorted(read["directions"]) == ["1", "2"]
    for layer, values in read["directions"].items():
        assert torch.equal(torch.tensor(values), exported.directions[steer_site(f"resid_post.{layer}")])
    # repeng's export, and repeng's Python object, load in steer identically
    expected = SteeringVector({f"resid_post.{k}": torch.tensor(v) for k, v in theirs.items()})
    _same(expected, SteeringVector.load(task["repeng_gguf"]))
    _same(expected, SteeringVector.load(task["from_repeng"]))
    assert SteeringVector.load(task["repeng_gguf"]).meta.extra["model_type"] == "llama"
    # and the numbering means the same place: repeng's ControlModel == steer at resid_post.N
    model, tok = tiny_model("llama"), tiny_tokenizer()
    with torch.no_grad(), steering(model, Steer(SteeringVector.load(task["steer_gguf"]), 2.0)):
        ours = model(**tok(task["prompt"], return_tensors="pt")).logits
    with torch.no_grad():
        plain = model(**tok(task["prompt"], return_tensors="pt")).logits
    theirs_logits = load_file(task["logits"])["logits"]
    assert torch.allclose(ours, theirs_logits, atol=1e-5, rtol=1e-5)
    assert (ours - plain).abs().max() > 1e-2  # the vector does move the logits


def test_from_repeng_duck_typed() -> None:
    from types import SimpleNamespace

    from steer.interop import from_repeng

    cv = SimpleNamespace(model_type="llama", directions={3: np.arange(HIDDEN, dtype=np.float32)})
    vector = from_repeng(cv, model_id="some/model")
    assert vector.sites == [steer_site("resid_post.3")] and vector.meta.model_id == "some/model"
    assert torch.equal(vector.directions[steer_site("resid_post.3")], torch.arange(HIDDEN, dtype=torch.float32))
    with pytest.raises(VectorError, match="repeng.ControlVector"):
        from_repeng(object())


# ---- steering-vectors ----------------------------------------------------------------------------

PAIRS = [("I love this wonderful day", "good", "bad"), ("What a happy park", "great", "awful"),
         ("The cat sat on the mat", "happy", "sad"), ("the dog ran in the park", "love", "hate"),
         ("It is a day", "wonderful", "terrible"), ("This answer is", "yes", "no")]
GEN_PROMPTS = ["the cat sat", "I love this", "What is the capital", "the dog ran", "It is great"]


@needs_steering_vectors
@pytest.mark.parametrize(("layer_type", "site"), [("decoder_block", "resid_post"), ("self_attn", "attn_out"),
                                                   ("mlp", "mlp_out")])
def test_steering_vectors_object_steers_like_it_does_there(layer_type: str, site: str) -> None:
    from steering_vectors import train_steering_vector

    from steer.interop import from_steering_vectors

    model, tok = tiny_model("llama"), tiny_tokenizer()
    samples = [(f"{p} {a}", f"{p} {b}") for p, a, b in PAIRS]
    theirs = train_steering_vector(model, tok, samples, layers=[1, 2], layer_type=layer_type)
    ours = from_steering_vectors(theirs, model_id="tiny-llama")
    assert ours.sites == [steer_site(f"{site}.1"), steer_site(f"{site}.2")]
    inputs = tok("the cat sat on", return_tensors="pt")
    with torch.no_grad():
        with theirs.apply(model, multiplier=3.0):
            expected = model(**inputs).logits
        with steering(model, Steer(ours, 3.0)):
            got = model(**inputs).logits
    assert torch.allclose(expected, got, atol=1e-5, rtol=1e-5)


def test_steering_vectors_layer_types_without_a_site_are_refused() -> None:
    from types import SimpleNamespace

    from steer.interop import from_steering_vectors

    with pytest.raises(VectorError, match="input_layernorm"):
        from_steering_vectors(SimpleNamespace(layer_activations={1: torch.zeros(HIDDEN)}, layer_type="input_layernorm"))


@needs_steering_vectors
def test_caa_parity_with_steering_vectors() -> None:
    """steer's CAA == steering_vectors.train_steering_vector on the same text pairs (last token, mean difference):
    the same vectors, and the same steered greedy continuations."""
    from steering_vectors import train_steering_vector

    from steer.api import make_vector
    from steer.io.datasets import ContrastiveData, TextPair

    model, tok = tiny_model("llama"), tiny_tokenizer()
    layers = [1, 2]
    theirs = train_steering_vector(model, tok, [(f"{p} {a}", f"{p} {b}") for p, a, b in PAIRS], layers=layers,
                                   read_token_index=-1)
    ours = make_vector(model, tok, "caa", ContrastiveData(pairs=[TextPair(p, a, b) for p, a, b in PAIRS]),
                       overrides={"layers": layers, "token": "last", "chat_template": False})
    for layer in layers:
        a, b = ours.directions[steer_site(f"resid_post.{layer}")], theirs.layer_activations[layer]
        assert torch.nn.functional.cosine_similarity(a, b, dim=0).item() > 1 - 1e-6
        assert ((a - b).norm() / b.norm()).item() < 1e-5
    changed = 0
    for prompt in GEN_PROMPTS:
        ids = tok(prompt, return_tensors="pt")
        kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
        with torch.no_grad():
            with theirs.apply(model, multiplier=4.0):
                expected = model.generate(**ids, **kwargs)
            with steering(model, Steer(ours, 4.0)):
                got = model.generate(**ids, **kwargs)
            plain = model.generate(**ids, **kwargs)
        assert torch.equal(expected, got), prompt
        changed += int(not torch.equal(plain, got))
    assert changed >= 3  # steering changes most continuations, so agreeing on them means something


# ---- EasyEdit2 -----------------------------------------------------------------------------------


def test_easyedit2_folder_and_file_load_as_resid_post(tmp_path: Path) -> None:
    folder = tmp_path / "caa_vector"
    folder.mkdir()
    tensors = {layer: torch.randn(HIDDEN) for layer in (1, 2)}
    for layer, tensor in tensors.items():
        torch.save(tensor, folder / f"layer_{layer}.pt")
    vector = SteeringVector.load(folder)
    assert vector.meta.method == "easyedit2:caa"
    _same(SteeringVector({f"resid_post.{k}": v for k, v in tensors.items()}), vector)
    single = SteeringVector.load(folder / "layer_2.pt")
    assert single.sites == [steer_site("resid_post.2")]
    torch.save(tensors[1][None], tmp_path / "layer_1.pt")  # [1, hidden] as some generators keep it
    assert SteeringVector.load(tmp_path / "layer_1.pt").directions[steer_site("resid_post.1")].shape == (HIDDEN,)
    # the CLI takes the folder too, and imports it into steer's format
    assert main(["export", str(folder), "--format", "safetensors", "--out", str(tmp_path / "v.safetensors")]) == 0
    _same(vector, SteeringVector.load(tmp_path / "v.safetensors"))


class _Payload:
    """A pickled object that would leave a marker file behind if it were ever unpickled."""

    marker: Path = Path()

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_easyedit2_refuses_anything_but_plain_tensors_without_unpickling(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    payload = _Payload()
    payload.marker = marker
    torch.save(payload, tmp_path / "layer_3.pt")
    with pytest.raises(VectorError, match="weights_only=True.*never unpickles"):
        SteeringVector.load(tmp_path / "layer_3.pt")
    assert not marker.exists()
    torch.save({"vector": torch.zeros(HIDDEN)}, tmp_path / "layer_4.pt")
    with pytest.raises(VectorError, match="holds a dict, not a tensor"):
        SteeringVector.load(tmp_path / "layer_4.pt")
    torch.save(torch.zeros(HIDDEN), tmp_path / "steering.pt")
    with pytest.raises(VectorError, match="layer_<L>.pt"):
        SteeringVector.load(tmp_path / "steering.pt")
    torch.save(torch.zeros(2, HIDDEN), tmp_path / "layer_5.pt")
    with pytest.raises(VectorError, match="shape"):
        SteeringVector.load(tmp_path / "layer_5.pt")


def test_apply_takes_gguf_and_easyedit2_files_like_steer_files(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    tiny_model("llama").save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    vector = _vector(layers=(1, 2), seed=3) * 4
    folder = tmp_path / "caa_vector"
    folder.mkdir()
    for site, tensor in vector.directions.items():
        torch.save(tensor, folder / f"layer_{site.layer}.pt")
    files = {"steer": vector.save(tmp_path / "v.safetensors"), "gguf": write_gguf_vector(vector, tmp_path / "v.gguf"),
             "easyedit2": folder}
    steered = {}
    for kind, path in files.items():
        out = tmp_path / f"{kind}.jsonl"
        assert main(["apply", "--vector", f"{path}:2", "--prompt", "the cat sat", "--max-new-tokens", "6",
                     "--no-chat-template", "--out", str(out), "--model", str(model_dir)]) == 0
        row = json.loads(out.read_text().splitlines()[0])
        steered[kind] = (row["steered"], row["unsteered"])
    assert steered["gguf"] == steered["steer"] == steered["easyedit2"]
    assert steered["steer"][0] != steered["steer"][1]  # the vector changes the text


def test_damaged_files_get_their_own_readers_error(tmp_path: Path) -> None:
    (tmp_path / "v.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(VectorError, match="not a readable GGUF file"):
        SteeringVector.load(tmp_path / "v.gguf")
    (tmp_path / "layer_1.pt").write_bytes(b"garbage")
    with pytest.raises(VectorError, match="weights_only=True"):
        SteeringVector.load(tmp_path / "layer_1.pt")
    (tmp_path / "v.safetensors").write_bytes(b"garbage")
    with pytest.raises(VectorError, match="not a readable safetensors file"):
        SteeringVector.load(tmp_path / "v.safetensors")
