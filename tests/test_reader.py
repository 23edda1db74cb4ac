"""`read_forward`, the one activation reader: exact values, and it stops after the deepest site."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_model, tiny_tokenizer

from steer.prompts import encode_batch, forward_inputs
from steer.sites import Site, SiteMap
from steer.sites.hooks import record
from steer.sites.reader import read_forward, stop_site

PROMPTS = ["the cat sat on the mat", "I love", "What is the capital of France?"]


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "gemma2"])
@pytest.mark.parametrize("sites", [["resid_post.0"], ["mlp_key.1", "attn_out.0"], ["embed"], ["final_norm", "resid_pre.2"],
                                   ["lm_head"]])
def test_reads_equal_a_full_forward_pass(family: str, sites: list[str]) -> None:
    model, tok = tiny_model(family), tiny_tokenizer()
    inputs = forward_inputs(encode_batch(tok, PROMPTS, templated=False))
    with torch.no_grad():
        with record(model, sites) as full:
            model(**inputs, use_cache=False)
        read = read_forward(model, inputs, sites)
    for site in sites:
        torch.testing.assert_close(read[Site.parse(site)], full[Site.parse(site)].values[0], rtol=0, atol=0)


def test_the_pass_stops_after_the_deepest_block() -> None:
    model = tiny_model("llama")
    ran: list[str] = []
    handles = [module.register_forward_hook(lambda m, a, o, name=name: ran.append(name))
               for name, module in model.named_modules() if name in ("model.layers.0", "model.layers.1",
                                                                      "model.layers.2", "model.norm", "lm_head")]
    try:
        with torch.no_grad():
            read_forward(model, {"input_ids": torch.tensor([[5, 6, 7]])}, ["mlp_key.1", "resid_post.0"])
            assert ran == ["model.layers.0", "model.layers.1"]
            ran.clear()
            read_forward(model, {"input_ids": torch.tensor([[5, 6, 7]])}, ["final_norm"])
            assert ran == ["model.layers.0", "model.layers.1", "model.layers.2", "model.norm"]
            ran.clear()
            read_forward(model, {"input_ids": torch.tensor([[5, 6, 7]])}, ["mlp_key.1"], stop_early=False)
            assert ran[-1] == "lm_head"
    finally:
        for handle in handles:
            handle.remove()


def test_no_hook_is_left_behind_and_the_model_still_runs() -> None:
    model = tiny_model("llama")
    count = lambda: sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())  # noqa: E731
    before = count()
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        plain = model(ids).logits
        read_forward(model, {"input_ids": ids}, ["resid_post.0"])
        assert count() == before
        torch.testing.assert_close(model(ids).logits, plain, rtol=0, atol=0)


def test_stop_site_order() -> None:
    parse = lambda names: [Site.parse(n) for n in names]  # noqa: E731
    assert stop_site(parse(["mlp_key.4", "resid_post.2", "embed"])) == Site("resid_post", 4)
    assert stop_site(parse(["embed"])) == Site("embed")
    assert stop_site(parse(["final_norm", "resid_pre.29"])) == Site("final_norm")
    assert stop_site(parse(["lm_head", "embed"])) is None
    assert SiteMap(tiny_model("llama")).num_layers == 3
