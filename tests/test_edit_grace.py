"""GRACE on answers of several tokens: one codebook entry per position that predicts an answer token."""

from __future__ import annotations

import torch

from steer.edit import Editor
from steer.edit.tokens import encode, pad_right
from steer.sites.hooks import record
from steer.sites.resolve import Site
from tiny import tiny_model, tiny_tokenizer


def test_grace_multi_token_answer_gets_an_entry_at_every_predicting_position() -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer()
    prompt, target = "What is the capital of France?", "the dog ran in the park"
    row = encode(tok, prompt, target)
    assert len(row.target) >= 3  # a multi-token answer
    ids, mask = pad_right(tok, [row], torch.device("cpu"))
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
        unrelated = torch.tensor([encode(tok, "0 1 2 3 4 5 6 7 8 9").ids])
        before_unrelated = model(input_ids=unrelated).logits
    editor = Editor(model, tok, "grace", {"layer": 1, "eps": 1e-3, "num_steps": 60, "lr": 1.0}, progress=False)
    results, _ = editor.edit(prompts=[prompt], target_new=[target])
    edit = editor.applied[-1]
    positions = [t - 1 for t in row.target]  # the prompt's last token, then every answer token but the last
    assert edit.info["positions"] == positions and len(edit.adapters) == 1
    keys, values = edit.info["keys"], edit.info["values"]
    assert keys.shape[0] == values.shape[0] == len(positions)
    # reference: run the unedited layer, read its keys, replace the outputs at exactly those positions by hand
    site_key, site_out = Site("mlp_key", 1), Site("mlp_out", 1)
    with torch.no_grad(), record(model, [site_key, site_out]) as rec:
        edited = model(input_ids=ids, attention_mask=mask).logits
    seen_keys, seen_outs = rec[site_key].values[0][0], rec[site_out].values[0][0]
    torch.testing.assert_close(seen_keys[positions], keys)  # keys do not depend on the codebook at their layer
    torch.testing.assert_close(seen_outs[positions], values)
    # teacher forcing: every answer token is now the argmax, not just the first
    predicted = edited[0, positions].argmax(-1)
    assert torch.equal(predicted, ids[0, row.target]), (predicted, ids[0, row.target])
    assert results[0]["post"]["rewrite_acc"] == 1.0 > results[0]["pre"]["rewrite_acc"]
    # positions before the prompt's last token are computed exactly as before
    first = positions[0]
    torch.testing.assert_close(edited[0, :first], before[0, :first], rtol=0, atol=0)
    with torch.no_grad():
        assert torch.equal(model(input_ids=unrelated).logits, before_unrelated)
    editor.rollback()
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, before)


def test_grace_nearest_entry_wins_within_one_edit_and_misses_stay_bitwise() -> None:
    from steer.edit.grace import CodebookEntry

    keys = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    values = torch.tensor([[10.0, 10.0, 10.0], [20.0, 20.0, 20.0]])
    entry = CodebookEntry(0, keys, values, radius=0.6)
    queries = torch.tensor([[[0.1, 0.0], [0.9, 0.0], [0.5, 3.0]]])  # near key 0, near key 1, near none
    outputs = torch.arange(9, dtype=torch.float32).view(1, 3, 3)
    replaced = entry(queries, outputs)
    assert torch.equal(replaced[0, 0], values[0]) and torch.equal(replaced[0, 1], values[1])
    assert torch.equal(replaced[0, 2], outputs[0, 2])
    far = torch.full((1, 2, 2), 50.0)
    assert torch.equal(entry(far, outputs[:, :2]), outputs[:, :2])
