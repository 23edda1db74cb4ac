"""Editing through the nnsight backend gives the torch backend's weight deltas, bitwise.

For every architecture family in tests/tiny.py (all have a single MLP down-projection,
so all take weight edits): the ROME delta computed with `Editor(..., backend="nnsight")`
(context prefixes sampled by nnsight's generate, key statistics, the subject keys and the
value optimisation, gradients included, all inside nnsight's trace) equals the torch
backend's bit for bit. MEMIT on two families, and R-ROME, EMMET and AlphaEdit on one each.
Each nnsight run is checked to have gone through nnsight: its passes are counted, and a
plain forward pass inside the editing block is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny import FAMILIES, tiny_model, tiny_tokenizer

from steer.edit import Editor, EditError, EditRequest
from steer.errors import SteerError

nnsight = pytest.importorskip("nnsight")
from steer.sites.backends.nnsight import NnsightBackend  # noqa: E402  (needs nnsight)

STATS = {"mom2_n_samples": 4, "mom2_seq_len": 16, "v_num_grad_steps": 3}
REQUESTS = [EditRequest("What is the capital of France?", "the dog", "France"),
            EditRequest("I love this wonderful day", "bad", "wonderful day")]


@pytest.fixture()
def corpus(test_data: Path) -> str:
    return str(test_data / "text" / "wikitext-2-raw-test.txt")


@pytest.fixture()
def nnsight_passes(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How often each NnsightBackend entry point ran (a spy on steer's own class)."""
    counts = {"read": 0, "forward": 0, "generate": 0}
    for name in counts:
        original = getattr(NnsightBackend, name)

        def spy(self, *args, _name=name, _original=original, **kwargs):
            counts[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(NnsightBackend, name, spy)
    return counts


def _edit(family: str, method: str, backend: str, corpus: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
          requests: list[EditRequest], **hp) -> tuple[dict[int, torch.Tensor], Editor]:
    # each backend computes its own key statistics (a shared disk cache would hide the nnsight read)
    monkeypatch.setenv("STEER_CACHE", str(tmp_path / f"cache-{backend}"))
    editor = Editor(tiny_model(family), tiny_tokenizer(), method, {"corpus": corpus, **STATS, **hp}, progress=False,
                    backend=backend)
    edit = editor.apply(requests)
    return edit.deltas, editor


def _assert_same(family: str, method: str, corpus: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                 counts: dict[str, int], requests: list[EditRequest], **hp) -> None:
    expected, _ = _edit(family, method, "torch", corpus, tmp_path, monkeypatch, requests, **hp)
    assert counts == {"read": 0, "forward": 0, "generate": 0}, "the torch run went through nnsight"
    got, editor = _edit(family, method, "nnsight", corpus, tmp_path, monkeypatch, requests, **hp)
    assert editor.backend.name == "nnsight"
    # nnsight sampled the prefixes, read statistics and keys, and ran every value step
    assert counts["generate"] >= 1 and counts["read"] >= 2 and counts["forward"] >= STATS["v_num_grad_steps"]
    assert len(editor.ctx.templates) == 1 and len(next(iter(editor.ctx.templates.values()))) > 1
    assert expected.keys() == got.keys()
    for layer, delta in expected.items():
        assert delta.abs().max() > 0, f"{family} {method}: the edit changed nothing"
        assert torch.equal(got[layer], delta), f"{family} {method} layer {layer}: the backends differ"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_rome_delta_through_nnsight_equals_torch(family: str, corpus: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch, nnsight_passes) -> None:
    _assert_same(family, "rome", corpus, tmp_path, monkeypatch, nnsight_passes, REQUESTS[:1], layer=1)


@pytest.mark.parametrize(("family", "method"), [("llama", "memit"), ("gpt2", "memit"), ("qwen2", "r_rome"),
                                                ("gpt_neox", "emmet"), ("gemma2", "alphaedit"),
                                                ("llama", "pmet")])
def test_batched_and_other_methods_through_nnsight_equal_torch(family: str, method: str, corpus: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch, nnsight_passes) -> None:
    single = method == "r_rome"
    _assert_same(family, method, corpus, tmp_path, monkeypatch, nnsight_passes, REQUESTS[:1] if single else REQUESTS,
                 **({"layer": 1} if single else {"layers": [0, 1]}))


def test_methods_that_cannot_edit_through_nnsight_refuse_at_the_start() -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer()
    for method in ("ft_l", "lora", "grace", "kn"):
        with pytest.raises(EditError, match=rf"{method} cannot edit through nnsight: only rome, r_rome, memit"):
            Editor(model, tok, method, backend="nnsight")
    with pytest.raises(EditError, match="cannot run remotely"):
        Editor(model, tok, "rome", backend=NnsightBackend(remote=True))
    # nnsight wraps a plain model with its tokenizer: without one the error comes now
    with pytest.raises(SteerError, match="needs its tokenizer"):
        Editor(tiny_model("gpt2"), None, "rome", backend="nnsight")
    # the model's default backend (what --backend nnsight sets) is the Editor's when none is named
    from steer.sites.backend import set_default_backend

    set_default_backend(model, "nnsight")
    assert Editor(model, tok, "rome").backend.name == "nnsight"
    assert Editor(model, tok, "ft_l", backend="torch").backend.name == "torch"


def test_a_plain_pass_inside_an_nnsight_edit_is_refused(corpus: str) -> None:
    from steer.edit.context import running_on

    model, tok = tiny_model("llama"), tiny_tokenizer()
    editor = Editor(model, tok, "rome", {"corpus": corpus, **STATS, "layer": 1}, progress=False, backend="nnsight")
    ids = torch.tensor([[5, 6, 7]])
    with running_on(editor.ctx):
        with pytest.raises(SteerError, match="backend='nnsight'"):
            model(input_ids=ids)
    model(input_ids=ids)  # the guard went with the block


def test_cli_edit_with_nnsight_backend_writes_the_torch_deltas(corpus: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from steer.cli.main import main
    from steer.io.tensors import read_tensors

    folder = tmp_path / "tiny"
    tiny_model("gpt2").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    requests = tmp_path / "edits.json"
    requests.write_text(json.dumps([{"prompt": REQUESTS[0].prompt, "subject": "France", "target_new": "the dog"}]))
    saved = {}
    for backend in ("torch", "nnsight"):
        monkeypatch.setenv("STEER_CACHE", str(tmp_path / f"cache-{backend}"))
        deltas = tmp_path / f"{backend}.safetensors"
        code = main(["edit", "--method", "rome", "--requests", str(requests), "--model", str(folder), "--device", "cpu",
                     "--backend", backend, "--save-deltas", str(deltas), "--quiet", "layer=1", "v_num_grad_steps=2",
                     f"corpus={corpus}", "mom2_n_samples=4", "mom2_seq_len=16"])
        assert code == 0
        saved[backend] = read_tensors(deltas)[1]
    assert saved["torch"].keys() == saved["nnsight"].keys()
    assert all(torch.equal(saved["nnsight"][k], v) for k, v in saved["torch"].items())
    assert main(["edit", "--method", "ft_l", "--requests", str(requests), "--model", str(folder), "--device", "cpu",
                 "--backend", "nnsight", "--quiet"]) != 0


def test_an_nnsight_model_of_the_callers_own_is_edited_through_itself(corpus: str, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import copy

    expected, _ = _edit("llama", "rome", "torch", corpus, tmp_path, monkeypatch, REQUESTS[:1], layer=1)
    model, tok = tiny_model("llama"), tiny_tokenizer()
    nn_model = nnsight.TransformersModel(model, tokenizer=copy.copy(tok))
    monkeypatch.setenv("STEER_CACHE", str(tmp_path / "cache-own"))
    editor = Editor(nn_model, tok, "rome", {"corpus": corpus, **STATS, "layer": 1}, progress=False, backend="nnsight")
    edit = editor.apply(REQUESTS[:1])
    assert model.__dict__["_steer_nnsight_model"] is nn_model  # used as it is, not wrapped a second time
    assert torch.equal(edit.deltas[1], expected[1])
    editor.rollback()
    assert torch.equal(model.model.layers[1].mlp.down_proj.weight, tiny_model("llama").model.layers[1].mlp.down_proj.weight)


def test_the_easyedit_layer_takes_the_backend(corpus: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from steer.edit.easyedit import BaseEditor, ROMEHyperParams

    deltas = {}
    for backend in ("torch", "nnsight"):
        monkeypatch.setenv("STEER_CACHE", str(tmp_path / f"cache-easyedit-{backend}"))
        hparams = ROMEHyperParams(alg_name="ROME", model_name=(tiny_model("llama"), tiny_tokenizer()), layers=[1],
                                  corpus=corpus, **STATS)
        editor = BaseEditor.from_hparams(hparams, backend=backend)
        assert editor.editor.backend.name == backend
        deltas[backend] = editor.editor.apply(REQUESTS[:1]).deltas[1]
    assert deltas["torch"].abs().max() > 0 and torch.equal(deltas["nnsight"], deltas["torch"])
