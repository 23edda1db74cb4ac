"""The site table resolves every site on every supported family, and batched reads equal single reads."""

from __future__ import annotations

import pytest
import torch
from tiny import FAMILIES, tiny_model, tiny_tokenizer

from steer.errors import SiteError
from steer.prompts import encode_batch, forward_inputs
from steer.sites import ArchTable, Site, SiteMap, register_architecture
from steer.sites.hooks import record
from steer.sites.read import Span, pooled_activations

PROMPTS = ["the cat sat on the mat", "I love this day", "What is the capital of France? Paris is"]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_site_resolves_and_records(family: str) -> None:
    model = tiny_model(family)
    sites = SiteMap(model)
    assert sites.num_layers == 3 and sites.hidden_size == 32
    layer_sites = [Site(n, 1) for n in ("resid_pre", "resid_post", "attn_out", "mlp_out", "mlp_key")]
    global_sites = [Site("embed"), Site("final_norm"), Site("lm_head")]
    ids = torch.tensor([[5, 6, 7, 8]])
    before = hook_ids(model)
    with record(model, layer_sites + global_sites) as rec, torch.no_grad():
        out = model(ids, output_hidden_states=True)
    hidden = out.hidden_states
    # resid_post.L is the block output = hidden_states[L + 1]; resid_pre.L is its input = hidden_states[L]
    torch.testing.assert_close(rec[Site("resid_post", 1)].values[0], hidden[2])
    torch.testing.assert_close(rec[Site("resid_pre", 1)].values[0], hidden[1])
    raw_logits = rec[Site("lm_head")].values[0]
    cap = getattr(model.config, "final_logit_softcapping", None)  # gemma2/3 cap logits after the LM head
    torch.testing.assert_close(torch.tanh(raw_logits / cap) * cap if cap else raw_logits, out.logits)
    torch.testing.assert_close(rec[Site("final_norm")].values[0], hidden[-1])  # HF applies the final norm to the last
    assert rec[Site("mlp_key", 1)].values[0].shape[-1] == sites.weight(1).shape[1 if sites.arch.down_weight_layout == "out_in" else 0]
    for site in (Site("attn_out", 1), Site("mlp_out", 1), Site("embed")):
        assert rec[site].values[0].shape == (1, 4, 32)
    # resid_post = resid_pre + attn_out + mlp_out for sequential pre-norm blocks without extra norms
    if family in ("llama", "mistral", "qwen2", "qwen3", "gemma", "phi3"):
        summed = rec[Site("resid_pre", 1)].values[0] + rec[Site("attn_out", 1)].values[0] + rec[Site("mlp_out", 1)].values[0]
        torch.testing.assert_close(summed, rec[Site("resid_post", 1)].values[0], atol=1e-5, rtol=1e-5)
    # ours are gone after the block (transformers adds capture hooks of its own on first use)
    assert hook_ids(model) - before == {k for k in hook_ids(model) if "output_capturing" in k}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_batched_left_padded_read_equals_single(family: str) -> None:
    model, tok = tiny_model(family), tiny_tokenizer()
    sites = [Site("resid_post", 0), Site("resid_post", 2), Site("mlp_key", 1)]
    batched = pooled_activations(model, tok, [Span(p) for p in PROMPTS], sites, templated=False,
                                 batch_size=3, progress=False)
    for index, prompt in enumerate(PROMPTS):
        single = pooled_activations(model, tok, [Span(prompt)], sites, templated=False, progress=False)
        for site in sites:
            torch.testing.assert_close(batched[site][index], single[site][0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2"])
def test_batched_per_token_activations_equal_single(family: str) -> None:
    """Every real token of a left-padded row gets exactly the activations of the prompt alone."""
    model, tok = tiny_model(family), tiny_tokenizer()
    batch = encode_batch(tok, PROMPTS, templated=False)
    with record(model, ["resid_post.2"]) as rec, torch.no_grad():
        model(**forward_inputs(batch))
    padded = rec[Site("resid_post", 2)].values[0]
    for row, prompt in enumerate(PROMPTS):
        alone = encode_batch(tok, [prompt], templated=False)
        with record(model, ["resid_post.2"]) as rec1, torch.no_grad():
            model(**alone)
        n = alone["input_ids"].shape[1]
        torch.testing.assert_close(padded[row, -n:], rec1[Site("resid_post", 2)].values[0][0], atol=1e-5, rtol=1e-4)


def test_errors_name_the_fix() -> None:
    model = tiny_model("llama")
    sites = SiteMap(model)
    with pytest.raises(SiteError, match="out of range.*3 layers"):
        sites.module("resid_post.7")
    with pytest.raises(SiteError, match="Did you mean 'resid_post'"):
        Site.parse("resid_pots.3")
    with pytest.raises(SiteError, match="needs a layer"):
        Site("mlp_out")
    assert sites.normalise("resid_post.-1") == Site("resid_post", 2)


def test_unknown_architecture_says_how_to_register(monkeypatch: pytest.MonkeyPatch) -> None:
    import steer.sites.table as table

    # a registry of this test's own, so "mystery" does not outlive it
    monkeypatch.setattr(table, "_ARCHITECTURES", dict(table._ARCHITECTURES))
    model = tiny_model("llama")
    model.config.model_type = "mystery"
    with pytest.raises(SiteError, match="register_architecture"):
        SiteMap(model)
    register_architecture("mystery", ArchTable(layers="model.layers", attn="self_attn", mlp="mlp",
                                               mlp_down="mlp.down_proj", embed="model.embed_tokens",
                                               final_norm="model.norm", lm_head="lm_head"))
    assert SiteMap(model).num_layers == 3
    with pytest.raises(SiteError, match="already registered"):
        register_architecture("llama", ArchTable("a", "b", "c", "d", "e", "f", "g"))


def test_hooks_removed_even_when_forward_raises() -> None:
    model = tiny_model("llama")
    before = hook_ids(model)
    with pytest.raises(IndexError):
        with record(model, ["resid_post.1"]):
            model(torch.tensor([[10_000]]))  # token id out of the vocabulary
    assert hook_ids(model) == before


def hook_ids(model: torch.nn.Module) -> set[str]:
    return {f"{name}:{id(fn)}:{getattr(fn, '__qualname__', '')}" for name, m in model.named_modules()
            for fn in [*m._forward_hooks.values(), *m._forward_pre_hooks.values()]}
