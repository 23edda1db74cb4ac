"""PMET: joint attention/MLP targets, the MLP's share spread over layers by PMET's closed form, bitwise rollback."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from steer.edit import Editor, EditRequest
from steer.edit.tokens import encode
from steer.errors import ConfigError
from steer.sites.resolve import Site, SiteMap
from test_edit import REQUESTS, STATS, _at_subject, _reference_moment, corpus  # noqa: F401  (corpus is a fixture)
from tiny import tiny_model, tiny_tokenizer


def _target_nll(model, tok, request: EditRequest, layer: int, add: dict[str, torch.Tensor]) -> float:
    """Mean NLL of the target at the plain prompt with vectors added at the subject by plain torch hooks."""
    row = encode(tok, request.prompt, request.target_new, request.subject)
    sites = SiteMap(model)
    handles = []
    for name, vector in add.items():
        def hook(_m, _args, output, vector=vector):
            hidden = output[0] if isinstance(output, tuple) else output
            hidden = hidden.clone()
            hidden[0, row.subject_last] += vector.to(hidden.dtype)
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden
        handles.append(sites.module(Site(name, layer)).register_forward_hook(hook))
    try:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([row.ids])).logits[0]
    finally:
        for h in handles:
            h.remove()
    positions = torch.tensor(row.target)
    log_probs = torch.log_softmax(logits[positions - 1].float(), -1)
    return float(-log_probs.gather(1, torch.tensor(row.ids)[positions].unsqueeze(1)).mean())


@pytest.mark.parametrize("family", ["llama", "gpt2"])  # gpt2: [in, out] Conv1D storage
def test_pmet_equals_closed_form_and_rolls_back_bitwise(family: str, corpus: str) -> None:
    model, tok = tiny_model(family), tiny_tokenizer()
    base = copy.deepcopy(model)
    original = {k: v.detach().clone() for k, v in model.state_dict().items()}
    weight = 3.0
    editor = Editor(model, tok, "pmet", {"corpus": corpus, **STATS, "layers": [0, 1], "mom2_update_weight": weight,
                                         "v_num_grad_steps": 8, "clamp_norm_factor": 4.0}, progress=False)
    edit = editor.apply(REQUESTS)
    prefixes = next(iter(editor.ctx.templates.values()))
    z = edit.info["z"].double()
    # the original outputs the targets start from, read here with the site recorder
    attn, mlp = Site("attn_out", 1), Site("mlp_out", 1)
    for i, request in enumerate(REQUESTS):
        plain = _at_subject(base, tok, request, [attn, mlp], [""])
        torch.testing.assert_close(edit.info["attn_orig"][i].double(), plain[attn], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(edit.info["mlp_orig"][i].double(), plain[mlp], rtol=1e-4, atol=1e-5)
    staged = copy.deepcopy(base)  # the model as PMET sees it before each layer's update
    for i, layer in enumerate([0, 1]):
        key = Site("mlp_key", layer)
        keys = torch.stack([_at_subject(staged, tok, r, [key], prefixes)[key] for r in REQUESTS])
        current = torch.stack([_at_subject(staged, tok, r, [mlp], [""])[mlp] for r in REQUESTS])
        resid = (z - current) / math.sqrt(2 - i)  # PMET: the square root of the layers left
        c = _reference_moment(editor, base, layer)
        expected = resid.T @ keys @ torch.linalg.inv(weight * c + keys.T @ keys)
        torch.testing.assert_close(edit.deltas[layer].double(), expected, rtol=1e-3, atol=1e-6)
        with torch.no_grad():
            SiteMap(staged).down_weight_as_out_in(layer).add_(expected.float())
    # only the MLP down-projections changed
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, original[k])}
    down = {SiteMap(model).module_path(Site("mlp_down_weight", layer)) + ".weight" for layer in (0, 1)}
    assert changed == down
    editor.rollback()
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())


def test_pmet_optimises_attention_and_mlp_targets_jointly(corpus: str) -> None:
    model, tok = tiny_model("llama", seed=1), tiny_tokenizer()
    clamp = 0.5
    editor = Editor(model, tok, "pmet", {"corpus": corpus, **STATS, "layers": [0, 1], "v_num_grad_steps": 15,
                                         "clamp_norm_factor": clamp, "nll_stop": 0.0}, progress=False)
    edit = editor.apply(REQUESTS[:1])
    editor.rollback()
    d_attn = edit.info["z_attn"][0] - edit.info["attn_orig"][0]
    d_mlp = edit.info["z"][0] - edit.info["mlp_orig"][0]
    assert d_attn.norm() > 0 and d_mlp.norm() > 0  # both shares moved
    assert d_attn.norm() <= clamp * edit.info["attn_orig"][0].norm() * (1 + 1e-5)
    assert d_mlp.norm() <= clamp * edit.info["mlp_orig"][0].norm() * (1 + 1e-5)
    # added at the subject by plain hooks, the pair lowers the target's NLL more than either alone
    nll = {name: _target_nll(model, tok, REQUESTS[0], 1, add) for name, add in
           {"none": {}, "attn": {"attn_out": d_attn}, "mlp": {"mlp_out": d_mlp},
            "both": {"attn_out": d_attn, "mlp_out": d_mlp}}.items()}
    assert nll["both"] < min(nll["attn"], nll["mlp"]) and nll["both"] < nll["none"]


def test_easyedit_pmet_files_map_and_attention_rewrites_are_refused() -> None:
    from steer.edit.easyedit import HyperParams, steer_method, steer_overrides

    # EasyEdit's hparams/PMET/llama-7b.yaml
    values = {"alg_name": "PMET", "model_name": "x", "stats_dir": "./data/stats", "device": 0,
              "layers": [4, 5, 6, 7, 8], "clamp_norm_factor": 1, "layer_selection": "all",
              "fact_token": "subject_last", "v_num_grad_steps": 20, "v_lr": "5e-1", "v_loss_layer": 31,
              "v_weight_decay": 0.5, "kl_factor": 0.0625, "mom2_adjustment": True, "mom2_update_weight": 15000,
              "rewrite_module_tmp": "model.layers.{}.mlp.down_proj",
              "rewrite_module_tmps": ["model.layers.{}.mlp.down_proj"], "layer_module_tmp": "model.layers.{}",
              "mlp_module_tmp": "model.layers.{}.mlp.down_proj", "attn_module_tmp": "model.layers.{}.self_attn.o_proj",
              "ln_f_module": "model.norm", "lm_head_module": "lm_head", "mom2_dataset": "wikipedia",
              "mom2_n_samples": 100000, "mom2_dtype": "float32", "model_parallel": False, "nll_loss_factor": 1}
    hparams = HyperParams(**values)
    assert steer_method(hparams) == "pmet"
    assert steer_overrides(hparams, "pmet") == {"layers": [4, 5, 6, 7, 8], "clamp_norm_factor": 1,
                                                "v_num_grad_steps": 20, "v_lr": 0.5, "v_weight_decay": 0.5,
                                                "kl_factor": 0.0625, "mom2_update_weight": 15000}
    both = HyperParams(**{**values, "rewrite_module_tmps": ["model.layers.{}.self_attn.o_proj",
                                                            "model.layers.{}.mlp.down_proj"]})
    with pytest.raises(ConfigError, match="attention output projections are not supported"):
        steer_overrides(both, "pmet")


@pytest.mark.integration
def test_pmet_on_default_model(smol, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEER_CACHE", str(tmp_path))
    model, tok = smol
    hp = {"mom2_n_samples": 16, "mom2_seq_len": 128, "context_template_lengths": [[3, 2]]}
    editor = Editor(model, tok, "pmet", hp, progress=False)
    results, _ = editor.edit(prompts="What university did Watts Humphrey attend?", target_new="University of Michigan",
                             subject="Watts Humphrey", locality_inputs={"nq": {"prompt": "who played desmond doss father in hacksaw ridge",
                                                                               "ground_truth": "Hugo Weaving"}})
    editor.rollback()
    assert results[0]["pre"]["rewrite_acc"] < 0.9 and results[0]["post"]["rewrite_acc"] >= 0.9
    assert results[0]["post"]["locality"]["nq"] >= 0.5
