"""Every family in the site table resolves every site it declares, or says which it lacks and why.

Each family is a tiny random model built from its transformers config; Hugging Face's own
`output_hidden_states` and logits are the ground truth for what a site must read.
"""

from __future__ import annotations

import pytest
import torch
from tiny import ALL_FAMILIES, tiny_model

import steer
from steer.errors import SiteError
from steer.sites import Site, SiteMap, known_architectures
from steer.sites.hooks import record
from steer.vector import SteeringVector

LAYER_SITES = ("resid_pre", "resid_post", "attn_out", "mlp_out", "mlp_key", "mlp_down_weight")
GLOBAL_SITES = ("embed", "final_norm", "lm_head")


def test_every_family_in_the_table_has_a_tiny_model() -> None:
    assert set(known_architectures()) == set(ALL_FAMILIES), \
        "a family in steer/sites/table.py needs a tiny config in tests/tiny.py (and the other way round)"


@pytest.mark.parametrize("family", sorted(ALL_FAMILIES))
def test_declared_sites_resolve_and_read_what_transformers_computes(family: str) -> None:
    model = tiny_model(family)
    sites = SiteMap(model)
    assert sites.model_type == family and sites.num_layers == 3 and sites.hidden_size == 32
    readable, lacking = [], []
    for name in (*LAYER_SITES, *GLOBAL_SITES):
        site = Site(name, 1) if name in LAYER_SITES else Site(name)
        try:
            sites.module(site)
        except SiteError as exc:
            lacking.append(name)
            assert "has no site" in str(exc) and sites.arch.lacking("mlp_down") in str(exc)
            continue
        if site.side != "weight":
            readable.append(site)
    declared_lacking = {"mlp_key", "mlp_down_weight"} if sites.arch.lacking("mlp_down") else set()
    assert set(lacking) == declared_lacking
    ids = torch.tensor([[5, 6, 7, 8]])
    with record(model, readable) as rec, torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    hidden = out.hidden_states
    torch.testing.assert_close(rec[Site("resid_post", 1)].values[0], hidden[2])
    torch.testing.assert_close(rec[Site("resid_pre", 1)].values[0], hidden[1])
    torch.testing.assert_close(rec[Site("final_norm")].values[0], hidden[-1])
    text_config = model.config.get_text_config()
    cap = getattr(text_config, "final_logit_softcapping", None)
    raw = rec[Site("lm_head")].values[0]
    torch.testing.assert_close(torch.tanh(raw / cap) * cap if cap else raw, out.logits)
    for site in readable:
        assert rec[site].values[0].shape[:2] == (1, 4)


@pytest.mark.parametrize("family", sorted(ALL_FAMILIES))
def test_steering_works_on_every_family(family: str) -> None:
    model = tiny_model(family)
    vector = SteeringVector({"resid_post.1": torch.randn(32, generator=torch.Generator().manual_seed(0)) * 4})
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with steer.steering(model, (vector, 2.0)):
            steered = model(input_ids=ids).logits
        again = model(input_ids=ids).logits
    assert not torch.allclose(plain, steered) and torch.equal(plain, again)


@pytest.mark.parametrize("family", ["mixtral", "qwen3_moe"])
def test_weight_edits_on_a_mixture_of_experts_say_why_not(family: str) -> None:
    sites = SiteMap(tiny_model(family))
    with pytest.raises(SiteError, match="mixture of experts.*ROME"):
        sites.weight(1)
