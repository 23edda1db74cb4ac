"""EasyEdit compatibility: EasyEdit's hparams files and an EasyEdit-style script, run through steer.edit.easyedit."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import torch
import yaml

from steer.edit.easyedit import (BaseEditor, FTHyperParams, HyperParams, MEMITHyperParams, PMETHyperParams,
                                 ROMEHyperParams, steer_method, steer_overrides, summary_metrics)
from steer.edit import Editor, build_requests
from steer.edit.errors import EditError
from steer.errors import ConfigError
from tiny import tiny_model, tiny_tokenizer

HPARAMS = Path(__file__).resolve().parent / "data" / "edit" / "easyedit_hparams"

# Written the way EasyEdit's README and examples/run_zsre_llama2.py write it; only the import differs.
SCRIPT = '''
from steer.edit.easyedit import BaseEditor, ROMEHyperParams

prompts = ['What is the capital of France?', 'I love this wonderful day']
ground_truth = ['Paris', 'good']
target_new = ['the dog', 'bad']
subject = ['France', 'wonderful day']
rephrase_prompts = ['France has which capital?', 'I love this day']
locality_inputs = {
    'neighborhood': {
        'prompt': ['the cat sat on', 'the dog ran'],
        'ground_truth': ['the mat', 'in the park']
    },
}
portability_inputs = {
    'one_hop': {
        'prompt': ['The capital of France is', 'What a wonderful day'],
        'ground_truth': ['the dog', 'bad']
    },
}
hparams = ROMEHyperParams.from_hparams(HPARAMS_DIR)
editor = BaseEditor.from_hparams(hparams)
metrics, edited_model, _ = editor.edit(
    prompts=prompts,
    ground_truth=ground_truth,
    target_new=target_new,
    subject=subject,
    rephrase_prompts=rephrase_prompts,
    locality_inputs=locality_inputs,
    portability_inputs=portability_inputs,
    keep_original_weight=False
)
print(metrics)
'''


def _user_yaml(tmp_path: Path, source: str, **changes) -> Path:
    """EasyEdit's published file with the edits a user makes for their own model (model_name, layers...)."""
    values = yaml.safe_load((HPARAMS / source).read_text())
    values.update(changes)
    path = tmp_path / source
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.fixture()
def tiny_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("STEER_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "tiny-llama"
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def test_easyedit_script_runs_on_a_tiny_model(tiny_folder: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = _user_yaml(tmp_path, "ROME-llama-7b.yaml", model_name=str(tiny_folder), layers=[1], v_num_grad_steps=8,
                      context_template_length_params=[[3, 2]])
    script = tmp_path / "run_rome.py"
    script.write_text(SCRIPT)
    # EasyEdit's from_hparams takes the path without ".yaml"
    result = runpy.run_path(str(script), init_globals={"HPARAMS_DIR": str(path.with_suffix(""))})
    metrics, editor = result["metrics"], result["editor"]
    assert len(metrics) == 2 and [m["case_id"] for m in metrics] == [0, 1]
    first = metrics[0]
    assert set(first) == {"case_id", "requested_rewrite", "time", "pre", "post"}
    assert set(first["pre"]) == {"rewrite_acc", "rephrase_acc", "locality", "portability"}
    assert isinstance(first["post"]["rewrite_acc"], list) and len(first["post"]["rephrase_acc"]) == 1
    assert set(first["pre"]["locality"]) == {"neighborhood_output"}
    assert set(first["post"]["locality"]) == {"neighborhood_output", "neighborhood_acc"}
    assert set(first["post"]["portability"]) == {"one_hop_acc"}
    assert first["requested_rewrite"]["subject"] == "France" and first["requested_rewrite"]["ground_truth"] == "Paris"
    # the same edits through steer's own Editor with the mapped hyper-parameters give the same numbers
    own = Editor(tiny_model("llama"), tiny_tokenizer(), "rome", steer_overrides(result["hparams"], "rome"), progress=False)
    requests = build_requests(result["prompts"], result["target_new"], result["ground_truth"], result["subject"],
                              result["rephrase_prompts"], result["locality_inputs"], result["portability_inputs"])
    for ours, theirs in zip(own.edit_requests(requests), metrics):
        for stage in ("pre", "post"):
            assert theirs[stage]["rewrite_acc"] == [ours[stage]["rewrite_acc"]]
            assert theirs[stage]["rephrase_acc"] == [ours[stage]["rephrase_acc"]]
            assert theirs[stage]["portability"]["one_hop_acc"] == [ours[stage]["portability"]["one_hop"]]
        assert theirs["post"]["locality"]["neighborhood_acc"] == [ours["post"]["locality"]["neighborhood"]]
    # EasyEdit's non-sequential editing restores the weights after measuring each edit
    fresh = tiny_model("llama")
    for name, tensor in editor.model.state_dict().items():
        assert torch.equal(tensor, fresh.state_dict()[name]), name
    assert editor.editor.applied == [] and editor.editor.hparams.layer == 1
    assert editor.editor.hparams.mom2_adjustment is False  # the EasyEdit file's value, not steer's default
    out = capsys.readouterr().out
    assert "Metrics Summary: " in out and "'neighborhood_acc'" in out


def test_sequential_edits_stay_and_weights_copy_restores(tiny_folder: Path, tmp_path: Path) -> None:
    path = _user_yaml(tmp_path, "MEMIT-llama-7b.yaml", model_name=str(tiny_folder), layers=[0, 1],
                      v_num_grad_steps=3, mom2_n_samples=100000)  # EasyEdit's article count: accepted, ignored
    editor = BaseEditor.from_hparams(MEMITHyperParams.from_hparams(path))
    assert editor.method == "memit" and editor.editor.hparams.mom2_update_weight == 15000.0
    before = {k: v.clone() for k, v in editor.model.state_dict().items()}
    metrics, model, weights_copy = editor.edit(prompts=["What is the capital of France?", "I love this wonderful day"],
                                               target_new=["the dog", "bad"], subject=["France", "wonderful day"],
                                               sequential_edit=True, verbose=False)
    assert len(editor.editor.applied) == 2 and model is editor.model
    assert set(weights_copy) == {"model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"}
    assert not torch.equal(model.state_dict()["model.layers.1.mlp.down_proj.weight"],
                           before["model.layers.1.mlp.down_proj.weight"])
    with torch.no_grad():  # what EasyEdit users do with weights_copy
        for name, value in weights_copy.items():
            model.get_parameter(name).copy_(value)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    summary = summary_metrics(metrics)
    assert set(summary) == {"pre", "post"} and "rewrite_acc" in summary["post"]


def test_batch_edit_and_ft_without_subject(tiny_folder: Path, tmp_path: Path) -> None:
    ft = _user_yaml(tmp_path, "FT-llama-7b.yaml", model_name=str(tiny_folder), layers=[1], num_steps=5,
                    objective_optimization="target_new", lr=0.01, batch_size=2)
    hparams = FTHyperParams.from_hparams(ft)
    editor = BaseEditor.from_hparams(hparams)
    assert editor.method == "ft_m" and editor.editor.hparams.norm_constraint is None  # EasyEdit's false
    metrics, _, weights_copy = editor.batch_edit(prompts=["What is the capital of France?", "I love this wonderful day"],
                                                 target_new=["the dog", "bad"], verbose=False)
    assert len(metrics) == 2 and metrics[0]["time"] == metrics[1]["time"]  # one update for the batch of two
    assert list(weights_copy) == ["model.layers.1.mlp.down_proj.weight"] and editor.editor.applied == []
    hparams.objective_optimization = "prompt_last"  # attributes can be changed before building the editor
    assert BaseEditor(hparams, progress=False).method == "ft_l"
    rome = BaseEditor.from_hparams(ROMEHyperParams.from_hparams(
        _user_yaml(tmp_path, "ROME-llama-7b.yaml", model_name=str(tiny_folder), layers=[1], v_num_grad_steps=1)))
    with pytest.raises(EditError, match="can not batch edit"):
        rome.batch_edit(prompts=["a"], target_new=["b"])
    with pytest.raises(EditError, match="has no subject"):
        rome.edit(prompts="What is the capital of France?", target_new="the dog", verbose=False)
    with pytest.raises(TypeError, match="Did you mean 'subject'"):
        rome.edit(prompts="What is the capital of France?", target_new="the dog", subjects="France")


def test_hparams_keys_are_mapped_ignored_or_refused(tmp_path: Path) -> None:
    rome = ROMEHyperParams.from_hparams(HPARAMS / "ROME-llama-7b")
    assert rome.layers == [5] and rome.device == 0  # EasyEdit's attributes
    assert steer_overrides(rome, "rome") == {"layer": 5, "v_num_grad_steps": 25, "v_lr": 0.5, "v_weight_decay": 0.001,
                                             "clamp_norm_factor": 4, "kl_factor": 0.0625, "mom2_adjustment": False,
                                             "context_template_lengths": [[5, 10], [10, 10]]}
    alpha = HyperParams.from_hparams(HPARAMS / "AlphaEdit-llama3-8b.yaml")
    assert steer_method(alpha) == "alphaedit" and steer_overrides(alpha, "alphaedit")["L2"] == 1
    assert steer_method(HyperParams.from_hparams(HPARAMS / "FT-llama-7b")) == "ft_l"
    typo = HyperParams(**{**rome.to_dict(), "v_num_grad_step": 3})
    with pytest.raises(ConfigError, match="unknown key 'v_num_grad_step'. Did you mean 'v_num_grad_steps'"):
        steer_overrides(typo, "rome")
    with pytest.raises(ConfigError, match="MLP down-projection"):
        steer_overrides(HyperParams(**{**rome.to_dict(), "rewrite_module_tmp": "model.layers.{}.self_attn.o_proj"}), "rome")
    with pytest.raises(ConfigError, match="subject_last"):
        steer_overrides(HyperParams(**{**rome.to_dict(), "fact_token": "last"}), "rome")
    with pytest.raises(ConfigError, match="ROME edits one layer"):
        steer_overrides(HyperParams(**{**rome.to_dict(), "layers": [4, 5]}), "rome")
    with pytest.raises(ConfigError, match="MEMITHyperParams reads 'MEMIT' files"):
        MEMITHyperParams.from_hparams(HPARAMS / "ROME-llama-7b.yaml")
    with pytest.raises(ConfigError, match="PMETHyperParams reads 'PMET' files"):
        PMETHyperParams.from_hparams(HPARAMS / "ROME-llama-7b.yaml")
    kn = HyperParams(alg_name="KN", model_name="x", device=0, model_parallel=False, lr_scale=1.0, n_toks=10,
                     refine=False, batch_size=1, steps=1, adaptive_threshold=0.2, p=0.4)  # EasyEdit's KN/llama-7b.yaml
    assert steer_method(kn) == "kn" and steer_overrides(kn, "kn") == {"steps": 1, "adaptive_threshold": 0.2}
    r_rome = HyperParams(**{**rome.to_dict(), "alg_name": "R-ROME", "enable_random_prefix_keys": True})
    assert steer_method(r_rome) == "r_rome" and steer_overrides(r_rome, "r_rome")["layer"] == 5
    emmet = HyperParams(**{**MEMITHyperParams.from_hparams(HPARAMS / "MEMIT-llama-7b").to_dict(), "alg_name": "EMMET",
                           "emmet_lambda": 0.1, "update_norm_lambda": 0})
    assert steer_method(emmet) == "emmet" and steer_overrides(emmet, "emmet")["emmet_lambda"] == 0.1
    # EasyEdit's LoRA file (AdaLoRA on q/v of every layer) is refused with what to change; a down-projection one maps
    lora = {"alg_name": "LoRA", "model_name": "x", "lora_type": "adalora", "layers": [], "num_steps": 70, "lr": 5e-3,
            "rank": 8, "lora_alpha": 32, "lora_dropout": 0.1, "norm_constraint": False, "target_modules": ["q_proj"],
            "batch_size": 1, "max_length": 30, "weight_decay": 0, "kl_factor": 0, "device": 1, "model_parallel": False}
    with pytest.raises(ConfigError, match="plain LoRA"):
        steer_overrides(HyperParams(**lora), "lora")
    lora.update(lora_type="lora", target_modules=["down_proj"])
    with pytest.raises(ConfigError, match="layers is empty"):
        steer_overrides(HyperParams(**lora), "lora")
    lora["layers"] = [5]
    assert steer_overrides(HyperParams(**lora), "lora") == {"layers": [5], "num_steps": 70, "lr": 5e-3, "rank": 8,
                                                            "lora_alpha": 32, "lora_dropout": 0.1}
    with pytest.raises(ConfigError, match="No config file"):
        ROMEHyperParams.from_hparams(tmp_path / "missing")


@pytest.mark.integration
def test_easyedit_script_on_the_default_model(smol, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEER_CACHE", str(tmp_path / "cache"))
    # EasyEdit's ROME file for Llama, pointed at the default model (30 layers: layer 5 is kept)
    values = yaml.safe_load((HPARAMS / "ROME-llama-7b.yaml").read_text())
    values.update(v_num_grad_steps=25, context_template_length_params=[[5, 2]])
    hparams = ROMEHyperParams(**values)
    hparams.model_name = tuple(smol)  # EasyEdit also takes an already loaded (model, tokenizer)
    editor = BaseEditor.from_hparams(hparams)
    metrics, model, _ = editor.edit(prompts=["What university did Watts Humphrey attend?"],
                                    ground_truth=["Illinois Institute of Technology"],
                                    target_new=["University of Michigan"], subject=["Watts Humphrey"],
                                    locality_inputs={"nq": {"prompt": ["who played desmond doss father in hacksaw ridge"],
                                                            "ground_truth": ["Hugo Weaving"]}},
                                    keep_original_weight=False, verbose=False)
    assert model is smol.model and editor.editor.applied == []
    assert metrics[0]["pre"]["rewrite_acc"][0] < 0.9 and metrics[0]["post"]["rewrite_acc"][0] >= 0.9
    assert metrics[0]["post"]["locality"]["nq_acc"][0] >= 0.5


def test_easyedit_grace_and_wise_files_run_on_a_tiny_model(tiny_folder: Path, tmp_path: Path) -> None:
    from steer.edit.easyedit import GraceHyperParams, WISEHyperParams

    grace = GraceHyperParams.from_hparams(_user_yaml(tmp_path, "GRACE-llama-7b.yaml", model_name=str(tiny_folder),
                                                     inner_params=["model.layers[1].mlp.down_proj.weight"], n_iter=5))
    assert steer_overrides(grace, "grace") == {"layer": 1, "lr": 1.0, "num_steps": 5, "eps": 1.0}
    editor = BaseEditor(grace, progress=False)
    metrics, model, weights_copy = editor.edit(prompts=["What is the capital of France?"], target_new=["the dog"],
                                               sequential_edit=True, verbose=False)
    assert editor.method == "grace" and len(editor.editor.applied[0].adapters) == 1 and weights_copy == {}
    assert set(metrics[0]["post"]) == {"rewrite_acc", "locality", "portability"}
    wise = WISEHyperParams.from_hparams(_user_yaml(tmp_path, "WISE-llama-7b.yaml", model_name=str(tiny_folder),
                                                   inner_params=["model.layers[2].mlp.down_proj.weight"], n_iter=3))
    assert steer_method(wise) == "wise" and steer_overrides(wise, "wise")["layer"] == 2
    BaseEditor(wise, progress=False).edit(prompts=["What is the capital of France?"], target_new=["the dog"],
                                          verbose=False)
    with pytest.raises(ConfigError, match="MLP down-projection"):
        steer_overrides(HyperParams(**{**grace.to_dict(), "inner_params": ["model.layers[1].self_attn.o_proj.weight"]}),
                        "grace")
