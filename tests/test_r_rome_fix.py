"""R-ROME (edit/r_rome.py) against a reference computation on tiny models.

The reference reads every key with the site recorder, builds C independently
(test_edit._reference_moment), and computes R-ROME's update by hand:
    k* = mean of the context rows' keys, u = C^-1 k* / |C^-1 k*|, s_i = u . k_i / u . k*,
    delta = the value optimised with s_i * delta in row i,   dW = delta u^T / (u . k*).
The published form the old code shipped, dW = (o_plain + delta - W k*) u^T / (u . k*) with delta
optimised as if every row got all of it, fails these tests.
"""

from __future__ import annotations

import pytest
import torch

from steer.edit import Editor, EditRequest
from steer.edit.tokens import encode
from steer.edit.value import AddAtSubject, optimise_value
from steer.sites.hooks import record
from steer.sites.resolve import Site, SiteMap
from test_edit import REQUESTS, STATS, _reference_moment, corpus  # noqa: F401  (corpus is a fixture)
from tiny import tiny_model, tiny_tokenizer


def _rows_at_subject(model, tok, request: EditRequest, sites: list[Site], prefixes: list[str]) -> dict[Site, torch.Tensor]:
    """[rows, dim] per site at the subject's last token: the prompt behind each prefix, then "{subject} is a"."""
    encoded = [encode(tok, request.prompt, None, request.subject, context=p) for p in prefixes]
    encoded.append(encode(tok, f"{request.subject} is a", None, request.subject))
    out: dict[Site, list[torch.Tensor]] = {s: [] for s in sites}
    for enc in encoded:
        with torch.no_grad(), record(model, sites) as rec:
            model(input_ids=torch.tensor([enc.ids]))
        for s in sites:
            out[s].append(rec[s].values[0][0, enc.subject_last].double())
    return {s: torch.stack(v) for s, v in out.items()}


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_r_rome_equals_the_reference_update_and_each_row_gets_what_was_optimised(family: str, corpus: str) -> None:
    model, tok = tiny_model(family), tiny_tokenizer()
    hp = {"corpus": corpus, **STATS, "layer": 1, "v_num_grad_steps": 5}
    editor = Editor(model, tok, "r_rome", hp, progress=False)
    sites = SiteMap(model)
    before = sites.down_weight_as_out_in(1).detach().clone().double()
    edit = editor.apply([REQUESTS[0]])
    after = sites.down_weight_as_out_in(1).detach().clone().double()
    prefixes = next(iter(editor.ctx.templates.values()))
    editor.rollback()
    assert torch.equal(sites.down_weight_as_out_in(1).detach().double(), before)

    # the reference, from keys read here and C accumulated here
    key, out = Site("mlp_key", 1), Site("mlp_out", 1)
    read = _rows_at_subject(model, tok, REQUESTS[0], [key, out], prefixes)
    keys, outs = read[key], read[out]
    k_star = keys[:-1].mean(0)
    u = torch.linalg.solve(_reference_moment(editor, model, 1), k_star)
    u = u / u.norm()
    scales = keys @ u / (u @ k_star)
    assert len(scales) == len(prefixes) + 1 and not torch.allclose(scales, torch.ones_like(scales), atol=1e-3)
    fresh = Editor(model, tok, "r_rome", hp, progress=False)  # its own value cache: a fresh optimisation
    fresh.ctx.templates.update(editor.ctx.templates)
    value = optimise_value(fresh.ctx, REQUESTS[0], out, fresh.hparams, scales=scales.tolist())
    delta = (value.target - value.original).double()
    expected = torch.outer(delta / (u @ k_star), u)
    torch.testing.assert_close(after - before, expected, rtol=1e-4, atol=1e-6)

    # after the edit, every row's output moved by exactly s_i * delta: the plain prompt (row 0), each
    # prefixed prompt and the KL row, each as the value optimisation saw it
    editor.apply([REQUESTS[0]])
    edited = _rows_at_subject(model, tok, REQUESTS[0], [out], prefixes)[out]
    editor.rollback()
    torch.testing.assert_close(edited - outs, scales.unsqueeze(1) * delta.unsqueeze(0), rtol=1e-3, atol=1e-4)
    # the layer maps the averaged key k* to W k* + delta
    torch.testing.assert_close(after @ k_star, before @ k_star + delta, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(edit.info["scales"].double(), scales, rtol=1e-4, atol=1e-5)

    # the published form (target o_plain + delta, delta optimised unscaled) is a different update
    unscaled = optimise_value(fresh.ctx, REQUESTS[0], out, fresh.hparams)
    published = torch.outer((unscaled.target.double() - outs[:-1].mean(0)) / (u @ k_star), u)
    assert not torch.allclose(after - before, published, rtol=1e-3, atol=1e-5)


def test_value_scales_multiply_delta_per_row_and_ones_change_nothing(corpus: str) -> None:
    hidden = torch.zeros(3, 4, 2)
    add = AddAtSubject(Site("mlp_out", 1), torch.arange(3), torch.tensor([1, 0, 3]), torch.tensor([1.0, -2.0]),
                       scales=torch.tensor([0.5, 1.0, 2.0]))
    moved = add(hidden, None)  # type: ignore[arg-type]
    torch.testing.assert_close(moved[[0, 1, 2], [1, 0, 3]], torch.tensor([[0.5, -1.0], [1.0, -2.0], [2.0, -4.0]]))
    assert float(moved.abs().sum()) == pytest.approx(0.5 * 3 + 3 + 2 * 3)

    model, tok = tiny_model("llama"), tiny_tokenizer()
    editor = Editor(model, tok, "rome", {"corpus": corpus, **STATS, "layer": 1, "v_num_grad_steps": 3}, progress=False)
    site = Site("mlp_out", 1)
    plain = optimise_value(editor.ctx, REQUESTS[0], site, editor.hparams)
    rows = len(next(iter(editor.ctx.templates.values()))) + 1
    ones = optimise_value(editor.ctx, REQUESTS[0], site, editor.hparams, scales=[1.0] * rows)
    torch.testing.assert_close(ones.target, plain.target)
    assert editor.ctx.values.misses == 2  # scaled values are cached apart from unscaled ones
    halved = optimise_value(editor.ctx, REQUESTS[0], site, editor.hparams, scales=[0.5] * rows)
    assert not torch.allclose(halved.target, plain.target)
    with pytest.raises(ValueError, match="scales"):
        optimise_value(editor.ctx, REQUESTS[0], site, editor.hparams, scales=[1.0])


def test_r_rome_takes_romes_key_statistics_settings(corpus: str) -> None:
    """preserve_weight (and mom2_entity_weight) change C for r_rome as for rome: one covariance for both."""
    model, tok = tiny_model("llama"), tiny_tokenizer()
    base = {"corpus": corpus, **STATS, "layer": 1, "v_num_grad_steps": 3}
    first = Editor(model, tok, "r_rome", base, progress=False)
    plain_u = first.apply([REQUESTS[0]]).info["u"].clone()
    first.rollback()
    editor = Editor(model, tok, "r_rome", {**base, "preserve_weight": 10.0}, progress=False)
    edit = editor.apply([REQUESTS[0]])
    editor.rollback()
    assert edit.info["preserved_keys"] > 0
    assert not torch.allclose(edit.info["u"], plain_u)
