"""The nnsight backend reads and steers the same sites as the torch-hook path, with identical results."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_model, tiny_tokenizer

from steer.application import steering
from steer.errors import SteerError
from steer.prompts import encode_batch, forward_inputs
from steer.sites import Site
from steer.sites.hooks import record
from steer.sites.nnsight_backend import read, steered_generate
from steer.application import Steer
from steer.vector import SteeringVector, VectorMeta

nnsight = pytest.importorskip("nnsight")


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_read_matches_hooks(family: str) -> None:
    model, tok = tiny_model(family), tiny_tokenizer()
    batch = encode_batch(tok, ["the cat sat on the mat", "I love"], templated=False)
    sites = ["resid_post.1", "attn_out.2", "mlp_out.0", "embed"]
    with record(model, sites) as reference, torch.no_grad():
        model(**forward_inputs(batch))
    nn_model = nnsight.LanguageModel(model, tokenizer=tok)
    values = read(nn_model, batch, sites)
    for site in sites:
        torch.testing.assert_close(values[Site.parse(site)], reference[Site.parse(site)].values[0])


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_steered_generate_matches_hooks(family: str) -> None:
    model, tok = tiny_model(family), tiny_tokenizer()
    vec = SteeringVector({"resid_post.1": torch.randn(32, generator=torch.Generator().manual_seed(0)) * 4,
                          "mlp_out.2": torch.randn(32, generator=torch.Generator().manual_seed(1))})
    batch = encode_batch(tok, ["the cat sat", "I love this wonderful day"], templated=False)
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    with steering(model, (vec, 1.5)), torch.no_grad():
        expected = model.generate(**batch, **kwargs)
    plain = model.generate(**batch, **kwargs)
    nn_model = nnsight.LanguageModel(model, tokenizer=tok)
    got = steered_generate(nn_model, batch, [(vec, 1.5)], **kwargs)
    assert torch.equal(got, expected) and not torch.equal(got, plain)
    with pytest.raises(SteerError, match="position policies"):
        steered_generate(nn_model, batch, [Steer(vec, 1.0, "prompt")], **kwargs)
    ablation = SteeringVector(dict(vec.directions), VectorMeta(extra={"operation": "ablate"}))
    with pytest.raises(SteerError, match="additive steering vectors only"):
        steered_generate(nn_model, batch, [(ablation, 1.0)], **kwargs)
