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


def test_grace_answer_entries_fire_only_after_their_prompt_matched() -> None:
    from steer.edit.grace import CodebookEntry

    keys = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])  # the prompt's last token, then two answer tokens
    values = torch.tensor([[10.0], [20.0], [30.0]])
    far = [5.0, 5.0]

    def replaced(entry: CodebookEntry, queries: list[list[float]]) -> list[float]:
        outputs = torch.zeros(1, len(queries), 1)
        return entry(torch.tensor([queries]), outputs)[0, :, 0].tolist()

    chained = CodebookEntry(0, keys, values, radius=0.1)
    assert replaced(chained, [[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]]) == [10.0, 20.0, 30.0]  # the edit's own text
    assert replaced(chained, [far, [1.0, 0.0], [2.0, 0.0]]) == [0.0, 0.0, 0.0]  # answer tokens without the prompt
    assert replaced(chained, [[0.0, 0.0], far, [2.0, 0.0]]) == [10.0, 0.0, 0.0]  # a broken chain stops
    assert replaced(chained, [[1.0, 0.0], [0.0, 0.0], [1.0, 0.0]]) == [0.0, 10.0, 20.0]
    unchained = CodebookEntry(0, keys, values, radius=0.1, chain=False)  # answer_after_prompt: false
    assert replaced(unchained, [far, [1.0, 0.0], [2.0, 0.0]]) == [0.0, 20.0, 30.0]
    # incremental decoding: a pass of one token continues the chain of this thread's previous pass
    assert replaced(chained, [far, [0.0, 0.0]]) == [0.0, 10.0]
    assert replaced(chained, [[1.0, 0.0]]) == [20.0]
    assert replaced(chained, [[2.0, 0.0]]) == [30.0]
    assert replaced(chained, [[far[0], far[1]], [0.5, 3.0]]) == [0.0, 0.0]  # a new prefill: no chain carried in
    assert replaced(chained, [[1.0, 0.0]]) == [0.0]
    # keys without a batch dimension are one sequence: the chain holds there too
    flat = chained(torch.tensor([far, [1.0, 0.0], [0.0, 0.0], [1.0, 0.0]]), torch.zeros(4, 1))
    assert flat[:, 0].tolist() == [0.0, 0.0, 10.0, 20.0]


def test_grace_unrelated_text_with_the_answer_tokens_is_not_replaced() -> None:
    """Keys at answer tokens are generic: unrelated text ending in the same words comes within eps of them."""
    model, tok = tiny_model("llama"), tiny_tokenizer()
    prompt, target = "What is the capital of France?", "the dog ran in the park"
    row = encode(tok, prompt, target)
    positions = [t - 1 for t in row.target]
    unrelated = torch.tensor([encode(tok, "I love the dog ran in the park").ids])
    site = Site("mlp_key", 1)
    with torch.no_grad(), record(model, [site]) as rec:
        model(input_ids=torch.tensor([row.ids]))
        before = model(input_ids=unrelated).logits
    own, other = rec[site].values[0][0][positions], rec[site].values[1][0]
    distance = torch.cdist(other, own)
    near_answer, near_prompt = float(distance[:, 1:].min()), float(distance[:, 0].min())
    assert near_answer < near_prompt  # the set-up: an answer key of this text is nearer than any prompt key
    eps = (near_answer + near_prompt) / 2
    for chain in (False, True):
        hp = {"layer": 1, "eps": eps, "num_steps": 60, "lr": 1.0, "answer_after_prompt": chain}
        editor = Editor(model, tok, "grace", hp, progress=False)
        results, _ = editor.edit(prompts=[prompt], target_new=[target])
        assert results[0]["post"]["rewrite_acc"] == 1.0
        with torch.no_grad():
            after = model(input_ids=unrelated).logits
        if chain:
            assert torch.equal(after, before)  # nothing of the unrelated text is replaced
            # greedy generation with a KV cache still produces the whole answer: the chain carries over passes
            prompt_ids = torch.tensor([encode(tok, prompt).ids])
            out = model.generate(input_ids=prompt_ids, attention_mask=torch.ones_like(prompt_ids),
                                 max_new_tokens=len(row.target), do_sample=False, use_cache=True,
                                 pad_token_id=tok.pad_token_id)
            assert out[0, prompt_ids.shape[1]:].tolist() == [row.ids[t] for t in row.target]
        else:
            assert not torch.equal(after, before)  # the behaviour before answer_after_prompt
        editor.rollback()


def test_grace_chains_stay_in_their_own_context() -> None:
    """Two callers decoding token by token in one thread (asyncio tasks, copied contexts) keep their own chain."""
    import contextvars

    from steer.edit.grace import CodebookEntry

    keys = torch.tensor([[0.0, 0.0], [1.0, 0.0]])  # the prompt's last token, then the answer's first token
    entry = CodebookEntry(0, keys, torch.tensor([[10.0], [20.0]]), radius=0.1)

    def step(queries: list[list[float]]) -> list[float]:
        return entry(torch.tensor([queries]), torch.zeros(1, len(queries), 1))[0, :, 0].tolist()

    edited, other = contextvars.copy_context(), contextvars.copy_context()
    assert edited.run(step, [[3.0, 3.0], [0.0, 0.0]]) == [0.0, 10.0]  # prefill ends on the edit's prompt
    assert other.run(step, [[1.0, 0.0]]) == [0.0]  # another caller's step: its chain never started
    assert edited.run(step, [[1.0, 0.0]]) == [20.0]  # the edited caller's next step continues its chain


def test_grace_chain_carries_only_into_the_pass_that_continues_the_sequence() -> None:
    """A new prompt of one token right after a generation starts a new chain; the next cached step continues."""
    from steer.edit.adapters import _PASS_START
    from steer.edit.grace import CodebookEntry

    keys = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    entry = CodebookEntry(0, keys, torch.tensor([[10.0], [20.0], [30.0]]), radius=0.1)

    def step(start: int | None, queries: list[list[float]]) -> list[float]:
        _PASS_START.set(start)
        return entry(torch.tensor([queries]), torch.zeros(1, len(queries), 1))[0, :, 0].tolist()

    assert step(0, [[3.0, 3.0], [0.0, 0.0]]) == [0.0, 10.0]  # a prompt of two tokens ends on the edit's prompt
    assert step(0, [[1.0, 0.0]]) == [0.0]  # a new one-token prompt (nothing cached): no chain carried in
    assert step(0, [[0.0, 0.0]]) == [10.0]  # another new prompt that is the edit's last prompt token
    assert step(1, [[1.0, 0.0]]) == [20.0]  # its next cached step continues the chain
    assert step(5, [[2.0, 0.0]]) == [0.0]  # a pass that does not start where the last one ended: a new chain
    assert step(None, [[0.0, 0.0]]) == [10.0]  # outside a model pass (start unknown): one token continues
    assert step(None, [[1.0, 0.0]]) == [20.0]
    _PASS_START.set(None)


def test_adapters_see_where_each_pass_starts_and_their_hooks_leave_with_them() -> None:
    """The model-level hook an adapter installs records each pass's start in the sequence, then clears it."""
    from steer.edit.adapters import pass_start

    model, tok = tiny_model("llama"), tiny_tokenizer()
    pre_hooks, hooks = len(model._forward_pre_hooks), len(model._forward_hooks)
    editor = Editor(model, tok, "grace", {"layer": 1, "eps": 1.0, "num_steps": 5, "lr": 1.0}, progress=False)
    editor.edit(prompts=["What is the capital of France?"], target_new=["Paris"])
    seen: list[int | None] = []
    down = editor.sites.module(Site("mlp_down_weight", 1))
    handle = down.register_forward_hook(lambda *_: seen.append(pass_start()))
    prompt_ids = torch.tensor([encode(tok, "Hello there").ids])
    try:
        model.generate(input_ids=prompt_ids, attention_mask=torch.ones_like(prompt_ids), max_new_tokens=3,
                       do_sample=False, use_cache=True, pad_token_id=tok.pad_token_id)
    finally:
        handle.remove()
    length = prompt_ids.shape[1]
    assert seen == [0, length, length + 1]
    assert pass_start() is None  # cleared after the pass
    editor.rollback()
    assert (len(model._forward_pre_hooks), len(model._forward_hooks)) == (pre_hooks, hooks)


def test_adapters_share_one_pair_of_pass_hooks_per_model() -> None:
    """Many adapters on one model read each call once: one pre-hook and one hook, gone with the last adapter."""
    model, tok = tiny_model("llama"), tiny_tokenizer()
    pre_hooks, hooks = len(model._forward_pre_hooks), len(model._forward_hooks)
    editor = Editor(model, tok, "grace", {"layer": 1, "eps": 1.0, "num_steps": 3, "lr": 1.0}, progress=False)
    for prompt in ("What is the capital of France?", "Who wrote Hamlet?", "Where is Rome?"):
        editor.edit(prompts=[prompt], target_new=["Paris"], sequential_edit=True)
    assert (len(model._forward_pre_hooks), len(model._forward_hooks)) == (pre_hooks + 1, hooks + 1)
    editor.rollback(editor.applied[1].id)
    assert (len(model._forward_pre_hooks), len(model._forward_hooks)) == (pre_hooks + 1, hooks + 1)
    editor.rollback()
    assert (len(model._forward_pre_hooks), len(model._forward_hooks)) == (pre_hooks, hooks)
