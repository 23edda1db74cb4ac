"""The short form for a caller holding an nnsight model: read and steered_generate by site names."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_model, tiny_tokenizer

from steer.application import Steer, steering
from steer.errors import SteerError
from steer.prompts import encode_batch, forward_inputs
from steer.sites import Site, SiteMap
from steer.sites.hooks import record
from steer.vector import SteeringVector

nnsight = pytest.importorskip("nnsight")
from steer.sites.nnsight_backend import read, steered_generate  # noqa: E402  (needs nnsight)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_read_matches_hooks(family: str) -> None:
    model, tok = tiny_model(family), tiny_tokenizer()
    batch = encode_batch(tok, ["the cat sat on the mat", "I love"], templated=False)
    sites = ["resid_post.1", "attn_out.2", "mlp_out.0", "embed"]
    with record(model, sites) as reference, torch.no_grad():
        model(**forward_inputs(batch))
    nn_model = nnsight.TransformersModel(model, tokenizer=tok)
    values = read(nn_model, batch, sites)
    for site in sites:
        torch.testing.assert_close(values[Site.parse(site)], reference[Site.parse(site)].values[0])
    with pytest.raises(SteerError, match="Expected an nnsight model"):
        read(model, batch, sites)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_steered_generate_matches_hooks(family: str) -> None:
    model, tok = tiny_model(family), tiny_tokenizer()
    vec = SteeringVector({"resid_post.1": torch.randn(32, generator=torch.Generator().manual_seed(0)) * 4,
                          "mlp_out.2": torch.randn(32, generator=torch.Generator().manual_seed(1))})
    batch = encode_batch(tok, ["the cat sat", "I love this wonderful day"], templated=False)
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    spec = Steer(vec, [1.5, -1.0], "generated")
    with steering(model, spec), torch.no_grad():
        expected = model.generate(**batch, **kwargs)
    plain = model.generate(**batch, **kwargs)
    nn_model = nnsight.TransformersModel(model, tokenizer=tok)
    got = steered_generate(nn_model, batch, spec.interventions(SiteMap(nn_model), 1), **kwargs)
    assert torch.equal(got, expected) and not torch.equal(got, plain)


def test_site_layer_does_not_import_the_application_layer() -> None:
    import ast
    from pathlib import Path

    import steer.sites as sites_package

    for path in Path(sites_package.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            assert not any(n.startswith("steer.application") for n in names), f"{path} imports steer.application"
