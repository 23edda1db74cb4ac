"""Shipped editing hyper-parameters (real models, depth-relative defaults) and progress output."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import pytest
import transformers as T

from steer.config import hparams_source, load_hparams
from steer.edit import Editor, EditRequest
from steer.edit.methods import edit_methods
from tiny import _common, tiny_model, tiny_tokenizer

EDIT_FOLDERS = ("rome", "r_rome", "memit", "emmet", "alphaedit", "ft_l", "ft_m", "lora", "grace", "kn", "dinm", "wise")
REAL_MODELS = ("llama-2-7b-hf", "llama-2-7b-chat-hf", "meta-llama-3-8b", "meta-llama-3-8b-instruct", "qwen2.5-7b",
               "qwen2.5-7b-instruct", "mistral-7b-v0.1", "gpt2-xl", "gpt-j-6b", "gemma-2-9b", "gemma-2-2b")


def _files(method: str) -> list[Path]:
    return sorted(Path(str(p)) for p in resources.files("steer.hparams").joinpath(method).iterdir()
                  if p.name.endswith(".yaml"))


@pytest.mark.parametrize("method", EDIT_FOLDERS)
def test_every_shipped_edit_yaml_parses_for_its_model(method: str) -> None:
    spec = edit_methods().get(method)
    names = {p.stem for p in _files(method)}
    # real-model files for the locate-then-edit and FT methods; EasyEdit's LoRA files train AdaLoRA on attention,
    # and its GRACE/KN files would need their own mapping (not done yet): those folders hold the defaults only
    if method not in ("lora", "grace", "kn", "dinm", "wise"):
        assert set(REAL_MODELS) <= names, set(REAL_MODELS) - names
    for path in _files(method):
        text = path.read_text()
        # each model file says its depth and cites where its values come from
        depth = int(m.group(1)) if (m := re.search(r"\((\d+) layers", text)) else 30
        if path.stem in REAL_MODELS:
            assert "# Source:" in text, path
        hp = load_hparams(spec.hparams, method, config=path, num_layers=depth)
        assert type(hp) is spec.hparams and hparams_source(hp) == str(path)
        layers = hp.layers if hasattr(hp, "layers") else [hp.layer]
        assert all(0 <= layer < depth for layer in layers), (path, layers)


def test_published_layers_are_kept() -> None:
    rome = load_hparams(edit_methods().get("rome").hparams, "rome", model_id="gpt2-xl")
    memit = load_hparams(edit_methods().get("memit").hparams, "memit", model_id="meta-llama/Llama-2-7b-hf")
    ft = load_hparams(edit_methods().get("ft_m").hparams, "ft_m", model_id="Qwen/Qwen2.5-7B-Instruct")
    assert rome.layer == 17 and memit.layers == [4, 5, 6, 7, 8] and ft.layers == [27] and ft.loss_on == "target"
    gemma = load_hparams(edit_methods().get("memit").hparams, "memit", model_id="google/gemma-2-9b", num_layers=42)
    assert gemma.layers == [5, 6, 7, 8, 9, 10]


def test_an_unknown_model_gets_layers_relative_to_its_depth() -> None:
    deep = T.AutoModelForCausalLM.from_config(T.LlamaConfig(**_common(num_hidden_layers=12)))
    deep.config._name_or_path = "tiny-llama-12"
    tok = tiny_tokenizer()
    rome = Editor(deep, tok, "rome", progress=False)
    assert rome.hparams.layer == 2 and hparams_source(rome.hparams).endswith("rome/default.yaml")
    assert Editor(deep, tok, "memit", progress=False).hparams.layers == [2, 3]
    assert Editor(deep, tok, "ft_l", progress=False).hparams.layers == [2]
    shallow = Editor(tiny_model("llama"), tok, "memit", progress=False)
    assert shallow.hparams.layers == [0, 1]


def test_edit_shows_progress_per_request_and_phase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("STEER_CACHE", str(tmp_path))
    editor = Editor(tiny_model("llama"), tiny_tokenizer(), "rome",
                    {"layer": 1, "v_num_grad_steps": 3, "nll_stop": 0.0, "mom2_n_samples": 4, "mom2_seq_len": 16})
    editor.edit(prompts=["What is the capital of France?", "I love this wonderful day"], target_new=["the dog", "bad"],
                subject=["France", "wonderful day"])
    err = capsys.readouterr().err
    assert "rome: edits" in err and "2/2" in err
    assert "key statistics, layers 1" in err and "value optimisation at mlp_out.1" in err and "/3 [" in err
    quiet = Editor(tiny_model("llama"), tiny_tokenizer(), "rome", {"layer": 1, "v_num_grad_steps": 2}, progress=False)
    quiet.apply([EditRequest("What is the capital of France?", "the dog", "France")])
    assert capsys.readouterr().err == ""


def test_cli_edit_says_which_hparams_file_it_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from steer.cli.main import main

    monkeypatch.setenv("STEER_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    requests = tmp_path / "edits.json"
    requests.write_text(json.dumps([{"prompt": "What is the capital of France?", "target_new": "the dog"}]))
    out = tmp_path / "report.json"
    assert main(["edit", "--method", "ft_m", "--requests", str(requests), "--model", str(folder), "--device", "cpu",
                 "--out", str(out), "num_steps=2"]) == 0
    captured = capsys.readouterr()
    assert re.search(r"hparams: \S*ft_m/default\.yaml", captured.out)
    assert "ft_m: edits" in captured.err  # progress on stderr without --quiet
    report = json.loads(out.read_text())
    assert report["hparams_file"].endswith("ft_m/default.yaml") and report["hparams"]["layers"] == [1]
    # ROME needs the subject: a clear error, not a crash
    code = main(["edit", "--method", "rome", "--requests", str(requests), "--model", str(folder), "--device", "cpu",
                 "--quiet", "v_num_grad_steps=1"])
    assert code != 0 and "has no subject" in capsys.readouterr().err
