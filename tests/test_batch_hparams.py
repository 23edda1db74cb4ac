"""Batch hyper-parameters: `<model>-batch.yaml` is chosen for batched edits, and only for them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import steer.config
from steer.config import default_config_path, hparams_source, load_hparams
from steer.edit import Editor, EditRequest, Probe
from steer.edit.hparams import AlphaEditHparams, EMMETHparams, MEMITHparams
from tiny import tiny_model, tiny_tokenizer

SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"
STATS = {"mom2_n_samples": 8, "mom2_seq_len": 32}
REQUESTS = [
    EditRequest("What is the capital of France?", "the dog", "France",
                locality={"nb": (Probe("the cat sat on", "the mat"),)}),
    EditRequest("I love this wonderful day", "bad", "wonderful day"),
]


HPARAMS = Path(__file__).resolve().parent.parent / "hparams"
KINDS = {"memit": MEMITHparams, "alphaedit": AlphaEditHparams, "emmet": EMMETHparams}


@pytest.mark.parametrize("batch_file", sorted(HPARAMS.glob("*/*-batch.yaml")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_batch_files_are_chosen_for_batches_and_keep_value_settings(batch_file: Path) -> None:
    method, slug = batch_file.parent.name, batch_file.name.removesuffix("-batch.yaml")
    model = SMOL if slug == "smollm2-135m-instruct" else slug
    assert default_config_path(method, model, batch=True).name == batch_file.name
    assert default_config_path(method, model).name == f"{slug}.yaml"
    hp = load_hparams(KINDS[method], method, model_id=model, num_layers=30, batch=True)
    plain = load_hparams(KINDS[method], method, model_id=model, num_layers=30)
    # the same value settings and last layer: batched and single edits share target values
    for key in ("v_num_grad_steps", "v_lr", "clamp_norm_factor", "kl_factor", "nll_stop", "context_template_lengths"):
        assert getattr(hp, key) == getattr(plain, key), key
    assert max(hp.layers) == max(plain.layers)


def test_without_a_batch_file_batches_use_the_single_edit_file() -> None:
    for method in ("rome", *KINDS):
        expected = "smollm2-135m-instruct-batch.yaml" if (HPARAMS / method / "smollm2-135m-instruct-batch.yaml").is_file() \
            else "smollm2-135m-instruct.yaml"
        assert default_config_path(method, SMOL, batch=True).name == expected
    assert default_config_path("memit", "some/unknown-model", batch=True).name == "default.yaml"


@pytest.fixture()
def batch_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, test_data: Path) -> dict[str, Path]:
    """memit YAMLs for the tiny model: single (lambda 1) and batch (lambda 1000), picked by `batch`."""
    monkeypatch.setenv("STEER_CACHE", str(tmp_path / "cache"))
    corpus = test_data / "text" / "wikitext-2-raw-test.txt"
    files = {}
    for name, weight in (("single", 1.0), ("batch", 1000.0)):
        files[name] = tmp_path / f"{name}.yaml"
        files[name].write_text(f"layers: [0, 1]\nmom2_update_weight: {weight}\ncorpus: {json.dumps(str(corpus))}\n"
                               f"mom2_n_samples: 8\nmom2_seq_len: 32\nv_num_grad_steps: 2\n")
    real = steer.config.default_config_path

    def fake(method: str, model_id: str | None, *, batch: bool = False) -> Path | None:
        return files["batch" if batch else "single"] if method == "memit" else real(method, model_id, batch=batch)

    monkeypatch.setattr(steer.config, "default_config_path", fake)
    return files


def test_editor_batches_use_the_batch_file_with_the_same_overrides(batch_files: dict[str, Path]) -> None:
    model = tiny_model("llama")
    editor = Editor(model, tiny_tokenizer(), "memit", {"v_lr": 0.25}, progress=False)
    assert editor.hparams.mom2_update_weight == 1.0 and editor.hparams.v_lr == 0.25
    batch_hp = editor.batch_hparams
    assert batch_hp.mom2_update_weight == 1000.0 and batch_hp.v_lr == 0.25  # overrides apply to both
    assert hparams_source(batch_hp) == str(batch_files["batch"])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    records = editor.batch_edit_requests(REQUESTS)
    assert len(records) == 2
    batched = editor.weight_deltas()
    editor.rollback()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    # the same batch through apply() with each set of values: only the batch file's matches
    editor.apply(REQUESTS, editor.batch_hparams)
    with_batch = editor.weight_deltas()
    editor.rollback()
    editor.apply(REQUESTS)
    with_single = editor.weight_deltas()
    editor.rollback()
    for layer in batched:
        assert torch.allclose(batched[layer], with_batch[layer], atol=1e-6)
    assert any(not torch.allclose(batched[layer], with_single[layer], atol=1e-4) for layer in batched)
    # a batch of one request is a single edit: the single-edit file
    editor.batch_edit_requests(REQUESTS[:1])
    one = editor.weight_deltas()
    editor.rollback()
    editor.apply(REQUESTS[:1])
    assert all(torch.allclose(one[layer], d, atol=1e-6) for layer, d in editor.weight_deltas().items())
    editor.rollback()


def test_explicit_hparams_are_used_for_batches_as_given(batch_files: dict[str, Path]) -> None:
    editor = Editor(tiny_model("llama"), tiny_tokenizer(), "memit", str(batch_files["single"]), progress=False)
    assert editor.batch_hparams is editor.hparams
    with pytest.raises(Exception, match="MEMITHparams"):
        editor.apply(REQUESTS, {"mom2_update_weight": 5.0})


def test_cli_batch_says_which_file_it_used(batch_files: dict[str, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from steer.cli.main import main

    folder = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    requests = tmp_path / "edits.json"
    requests.write_text(json.dumps([{"prompt": r.prompt, "subject": r.subject, "target_new": r.target_new}
                                    for r in REQUESTS]))
    out = tmp_path / "report.json"
    common = ["edit", "--method", "memit", "--requests", str(requests), "--model", str(folder), "--device", "cpu",
              "--quiet", "--out", str(out)]
    assert main([*common, "--batch"]) == 0
    assert f"hparams: {batch_files['batch']}" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["hparams_file"] == str(batch_files["batch"]) and report["hparams"]["mom2_update_weight"] == 1000.0
    assert main(common) == 0
    assert f"hparams: {batch_files['single']}" in capsys.readouterr().out
