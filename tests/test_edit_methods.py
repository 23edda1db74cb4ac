"""Second-wave editing methods (R-ROME, EMMET, LoRA, GRACE, WISE, KN, DINM) against reference computations on tiny models."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from steer.edit import Editor, EditError, EditRequest
from steer.sites.hooks import record
from steer.sites.resolve import Site, SiteMap
from test_edit import REQUESTS, STATS, _at_subject, _reference_moment, corpus  # noqa: F401  (corpus is a fixture)
from tiny import tiny_model, tiny_tokenizer


# R-ROME: tests/test_r_rome_fix.py


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_emmet_equals_closed_form_and_meets_its_constraints(family: str, corpus: str) -> None:
    model, tok = tiny_model(family), tiny_tokenizer()
    base = copy.deepcopy(model)
    weight, norm_lambda = 5.0, 0.01
    editor = Editor(model, tok, "emmet", {"corpus": corpus, **STATS, "layers": [0, 1], "mom2_update_weight": weight,
                                          "update_norm_lambda": norm_lambda, "emmet_lambda": 0.0,
                                          "v_num_grad_steps": 5}, progress=False)
    edit = editor.apply(REQUESTS)
    prefixes = next(iter(editor.ctx.templates.values()))
    z = edit.info["z"].double()
    staged = copy.deepcopy(base)
    for i, layer in enumerate([0, 1]):
        key, resid_site = Site("mlp_key", layer), Site("resid_post", 1)
        keys = torch.stack([_at_subject(staged, tok, r, [key], prefixes)[key] for r in REQUESTS])
        current = torch.stack([_at_subject(staged, tok, r, [resid_site], [""])[resid_site] for r in REQUESTS])
        resid = (z - current) / (2 - i)
        c = weight * _reference_moment(editor, base, layer) + norm_lambda * torch.eye(keys.shape[1], dtype=torch.float64)
        c_inv = torch.linalg.inv(c)
        expected = resid.T @ torch.linalg.inv(keys @ c_inv @ keys.T) @ keys @ c_inv
        delta = edit.deltas[layer].double()
        torch.testing.assert_close(delta, expected, rtol=1e-3, atol=1e-6)
        # the equality constraints: each edited key gets exactly its share of the residual
        torch.testing.assert_close(delta @ keys.T, resid.T, rtol=1e-3, atol=1e-5)
        with torch.no_grad():
            SiteMap(staged).down_weight_as_out_in(layer).add_(expected.float())


@pytest.mark.parametrize("family", ["llama", "gpt2"])  # gpt2: peft's fan_in_fan_out Conv1D path
def test_lora_merges_peft_adapters_as_a_rank_limited_delta(family: str) -> None:
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    model, tok = tiny_model(family), tiny_tokenizer()
    reference = copy.deepcopy(model)
    editor = Editor(model, tok, "lora", {"layers": [1, 2], "rank": 2, "lora_alpha": 4.0, "num_steps": 12, "lr": 0.05},
                    progress=False)
    results, _ = editor.edit(prompts=["What is the capital of France?"], target_new=["the dog"])  # no subject needed
    edit = editor.applied[-1]
    losses = edit.info["losses"]
    assert losses[-1] < losses[0] and results[0]["post"]["rewrite_acc"] >= results[0]["pre"]["rewrite_acc"]
    assert not any("lora" in type(m).__name__.lower() for m in model.modules()) and not hasattr(model, "peft_config")
    for layer in (1, 2):
        a, b = edit.info["adapters"][layer]["A"], edit.info["adapters"][layer]["B"]
        assert a.shape[0] == 2 and torch.linalg.matrix_rank(edit.deltas[layer]) <= 2
        torch.testing.assert_close(edit.deltas[layer], b @ a * 2.0)
    # peft's own merge of the same adapters gives the edited weights
    names = edit.info["modules"]
    config = LoraConfig(r=2, lora_alpha=4.0, target_modules=sorted(names.values()), fan_in_fan_out=family == "gpt2")
    wrapped = get_peft_model(reference, config)
    state = {f"base_model.model.{names[layer]}.lora_{part}.weight": edit.info["adapters"][layer][part]
             for layer in (1, 2) for part in "AB"}
    set_peft_model_state_dict(wrapped, state)
    merged = wrapped.merge_and_unload()
    for layer in (1, 2):
        torch.testing.assert_close(SiteMap(model).weight(layer), SiteMap(merged).weight(layer), rtol=1e-5, atol=1e-6)


def test_grace_is_an_adapter_that_changes_no_weight_and_comes_off_exactly() -> None:
    from steer.edit.tokens import encode

    model, tok = tiny_model("gpt2"), tiny_tokenizer()  # gpt2: the down-projection is a Conv1D
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    prompt, unrelated = "What is the capital of France?", "0 1 2 3 4 5 6 7 8 9"
    ids = torch.tensor([encode(tok, prompt).ids])
    far = torch.tensor([encode(tok, unrelated).ids])
    with torch.no_grad():
        before, before_far = model(input_ids=ids).logits, model(input_ids=far).logits
    editor = Editor(model, tok, "grace", {"layer": 1, "eps": 1e-3, "num_steps": 30, "lr": 1.0}, progress=False)
    results, _ = editor.edit(prompts=[prompt], target_new=["the dog"])  # no subject: GRACE keys on the last token
    edit = editor.applied[-1]
    assert edit.layers == [] and len(edit.adapters) == 1 and edit.info["losses"][-1] < edit.info["losses"][0]
    for name, tensor in model.state_dict().items():  # no weight changed
        assert torch.equal(tensor, snapshot[name]), name
    key, value = edit.info["key"], edit.info["value"]
    with torch.no_grad(), record(model, [Site("mlp_key", 1), Site("mlp_out", 1)]) as rec:
        model(input_ids=ids)
        edited = model(input_ids=far).logits
    keys, outs = rec[Site("mlp_key", 1)].values[0][0], rec[Site("mlp_out", 1)].values[0][0]
    # reference: exactly the positions whose key lies within eps of the entry's key get the value
    hit = (keys - key).norm(dim=-1) <= 1e-3
    assert hit[-1] and hit.sum() == 1
    torch.testing.assert_close(outs[-1], value)
    assert torch.equal(edited, before_far)  # an input far from the key: bitwise unchanged
    assert results[0]["post"]["rewrite_acc"] >= results[0]["pre"]["rewrite_acc"]
    with pytest.raises(EditError, match="adapters"):
        editor.save_deltas("unused.safetensors")
    editor.rollback()
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, before)
    assert not model.transformer.h[1].mlp.c_proj._forward_hooks


def test_long_sequences_roll_back_bitwise_from_compact_changes(corpus: str) -> None:
    """Rollback keeps one base copy per layer and each edit's factors, not a weight copy per edit."""
    model, tok = tiny_model("llama"), tiny_tokenizer()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    rome = Editor(model, tok, "rome", {"corpus": corpus, **STATS, "layer": 1, "v_num_grad_steps": 1}, progress=False)
    requests = [REQUESTS[i % 2] for i in range(12)]
    states, ids = [], []
    for request in requests:
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        ids.append(rome.apply([request]).id)
    weight = SiteMap(model).weight(1)
    per_copy = weight.numel() * weight.element_size()
    # one base copy plus 12 rank-one factor pairs, against 12 copies before
    assert rome.rollback_bytes() == per_copy + 12 * (weight.shape[0] + weight.shape[1]) * 4
    assert all(rome.applied[i].changes[1].rank == 1 for i in range(12))
    before_7 = rome.weights_before(ids[7])[1]
    assert torch.equal(before_7, states[7]["model.layers.1.mlp.down_proj.weight"])
    assert rome.rollback(ids[7], cascade=True) == ids[7:][::-1]
    for name, tensor in model.state_dict().items():  # bitwise the state before edit 7, replayed from factors
        assert torch.equal(tensor, states[7][name]), name
    rome.rollback()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, original[name]), name
    assert rome.rollback_bytes() == 0


def _reference_attributions(model, tok, prompt: str, token: int, layer: int, steps: int) -> torch.Tensor:
    """Integrated gradients one scaled copy at a time, with a plain pre-hook on the down-projection."""
    from steer.edit.tokens import encode

    ids = torch.tensor([encode(tok, prompt).ids])
    module = SiteMap(model).module(Site("mlp_down_weight", layer))
    seen: list[torch.Tensor] = []
    handle = module.register_forward_pre_hook(lambda _m, args: seen.append(args[0][0, -1].detach()))
    with torch.no_grad():
        model(input_ids=ids)
    handle.remove()
    activation, total = seen[0], torch.zeros_like(seen[0])
    for k in range(1, steps + 1):
        scaled = (activation * k / steps).clone().requires_grad_(True)

        def swap(_m, args, scaled=scaled):
            hidden = args[0].clone()
            hidden[0, -1] = scaled
            return (hidden,)

        handle = module.register_forward_pre_hook(swap)
        probability = torch.softmax(model(input_ids=ids).logits[0, -1], dim=-1)[token]
        handle.remove()
        (grad,) = torch.autograd.grad(probability, scaled)
        total += grad
    return activation * total / steps


def test_kn_attributes_by_integrated_gradients_and_moves_value_vectors() -> None:
    from steer.edit.kn import first_token

    model, tok = tiny_model("llama", seed=2), tiny_tokenizer()
    base = copy.deepcopy(model)
    prompt = "What is the capital of France?"
    editor = Editor(model, tok, "kn", {"layers": [1, 2], "steps": 6, "adaptive_threshold": 0.5}, progress=False)
    edit = editor.apply([EditRequest(prompt, "the dog", ground_truth="Paris")])
    old, new = first_token(tok, prompt, "Paris"), first_token(tok, prompt, "the dog")
    assert (edit.info["old_token"], edit.info["new_token"]) == (old, new)
    for layer in (1, 2):
        reference = _reference_attributions(base, tok, prompt, old, layer, 6)
        torch.testing.assert_close(edit.info["attributions"][layer], reference, rtol=1e-4, atol=1e-7)
    scores = torch.cat([edit.info["attributions"][layer] for layer in (1, 2)])
    chosen = {(layer, int(i)) for layer in (1, 2)
              for i in torch.nonzero(edit.info["attributions"][layer] > 0.5 * scores.max()).flatten()}
    assert set(edit.info["neurons"]) == chosen and chosen
    embed = base.model.embed_tokens.weight.detach()
    direction = 2.0 * (embed[new] - embed[old])
    for layer in (1, 2):
        change = SiteMap(model).down_weight_as_out_in(layer).detach() - SiteMap(base).down_weight_as_out_in(layer)
        for i in range(change.shape[1]):
            if (layer, i) in chosen:
                torch.testing.assert_close(change[:, i], direction, rtol=1e-5, atol=1e-6)
            else:
                assert torch.count_nonzero(change[:, i]) == 0
    editor.rollback()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, base.state_dict()[name]), name


def test_dinm_locates_the_layer_where_safe_and_unsafe_differ_and_tunes_it() -> None:
    from steer.edit import load_requests
    from steer.edit.tokens import encode

    model, tok = tiny_model("qwen2", seed=4), tiny_tokenizer()
    base = copy.deepcopy(model)
    (request,) = load_requests(str(Path(__file__).resolve().parent / "data" / "safeedit" / "SafeEdit_standin.json"), 1)
    assert request.target_new.startswith("I'm sorry") and request.ground_truth.startswith("[stand-in")
    assert request.locality["general knowledge constraint"][0].prompt == "What is the capital of France?"
    editor = Editor(model, tok, "dinm", {"num_steps": 6, "lr": 0.01}, progress=False)
    edit = editor.apply([request])
    # reference: each block's output, read with plain hooks on the blocks, over the responses' common positions
    safe, unsafe = encode(tok, request.target_new).ids, encode(tok, request.ground_truth).ids
    common = min(len(safe), len(unsafe))
    outputs: list[list[torch.Tensor]] = [[], []]
    for row, ids in enumerate((safe, unsafe)):
        handles = [block.register_forward_hook(
            lambda _m, _a, out, row=row: outputs[row].append((out[0] if isinstance(out, tuple) else out)[0]))
            for block in base.model.layers]
        with torch.no_grad():
            base(input_ids=torch.tensor([ids[:common]]))
        for handle in handles:
            handle.remove()
    distances = [float((outputs[0][i] - outputs[1][i]).norm()) for i in range(3)]
    assert edit.info["distances"] == pytest.approx(distances, rel=1e-4)
    located = max(range(3), key=distances.__getitem__)
    assert edit.info["layers"] == [located] and edit.layers == [located]
    assert edit.info["losses"][-1] < edit.info["losses"][0]
    for name, tensor in model.state_dict().items():  # only the located down-projection changed
        changed = not torch.equal(tensor, base.state_dict()[name])
        assert changed == (name == f"model.layers.{located}.mlp.down_proj.weight"), name
    editor.rollback()
    assert all(torch.equal(t, base.state_dict()[n]) for n, t in model.state_dict().items())


def test_wise_routes_to_its_side_memory_only_above_the_threshold() -> None:
    from transformers.activations import ACT2FN

    from steer.edit.tokens import encode

    model, tok = tiny_model("llama", seed=6), tiny_tokenizer()
    base = copy.deepcopy(model)
    prompt, unrelated = "What is the capital of France?", "0 1 2 3 4 5 6 7 8 9"
    editor = Editor(model, tok, "wise", {"layer": 1, "mask_ratio": 0.5, "num_steps": 40, "lr": 0.5,
                                         "act_margin": [0.05, 0.5, 0.3], "norm_constraint": None}, progress=False)
    editor.edit(prompts=[prompt], target_new=["the dog"],
                locality_inputs={"nb": {"prompt": ["the cat sat on"], "ground_truth": ["the mat"]}})
    edit = editor.applied[-1]
    info, memory = edit.info, edit.adapters[0]
    assert edit.layers == [] and info["losses"][-1] < info["losses"][0]
    assert info["gap"] > max(info["irrelevant_gaps"]) and memory.threshold == pytest.approx(0.88 * info["gap"])
    mask = info["mask"].bool()
    assert torch.count_nonzero(memory.delta[~mask]) == 0  # only the masked share of entries changed
    assert all(torch.equal(t, base.state_dict()[n]) for n, t in model.state_dict().items())

    def reference(text: str) -> tuple[bool, torch.Tensor]:
        """Routing decided from the down-projection's own input and output, read with a plain hook."""
        ids = torch.tensor([encode(tok, text).ids])
        seen = []
        handle = base.model.layers[1].mlp.down_proj.register_forward_hook(lambda m, a, o: seen.append((a[0], o)))
        with torch.no_grad():
            plain = base(input_ids=ids).logits
        handle.remove()
        keys, out = seen[0]
        new = out + keys @ memory.delta.T
        act = ACT2FN[base.config.hidden_act]
        routed = bool((act(new) - act(out)).norm(dim=-1).mean() >= memory.threshold)
        if not routed:
            return False, plain
        side = copy.deepcopy(base)  # the side memory as a plain weight: W + delta
        with torch.no_grad():
            side.model.layers[1].mlp.down_proj.weight.add_(memory.delta)
            return True, side(input_ids=ids).logits

    for text, expect_routed in ((prompt, True), (unrelated, False)):
        routed, expected = reference(text)
        assert routed == expect_routed
        with torch.no_grad():
            got = model(input_ids=torch.tensor([encode(tok, text).ids])).logits
        if routed:
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        else:
            assert torch.equal(got, expected)
    editor.rollback()
    with torch.no_grad():
        ids = torch.tensor([encode(tok, prompt).ids])
        assert torch.equal(model(input_ids=ids).logits, base(input_ids=ids).logits)


def test_wise_routes_a_row_the_same_whatever_the_padding_of_its_batch() -> None:
    """A row's gap is taken over its real positions: padding it to a longer row's length changes nothing."""
    from steer.edit.tokens import encode

    model, tok = tiny_model("llama", seed=6), tiny_tokenizer()
    prompt, long_row = "What is the capital of France?", " ".join(str(i % 10) for i in range(60))
    editor = Editor(model, tok, "wise", {"layer": 1, "mask_ratio": 0.5, "num_steps": 40, "lr": 0.5,
                                         "act_margin": [0.05, 0.5, 0.3], "norm_constraint": None}, progress=False)
    editor.edit(prompts=[prompt], target_new=["the dog"])
    own, other = encode(tok, prompt).ids, encode(tok, long_row).ids
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([own])).logits[0]
        for side in ("right", "left"):
            padding = [pad] * (len(other) - len(own))
            row = own + padding if side == "right" else padding + own
            real = [1] * len(own) + [0] * len(padding) if side == "right" else [0] * len(padding) + [1] * len(own)
            ids, mask = torch.tensor([row, other]), torch.tensor([real, [1] * len(other)])
            batched = model(input_ids=ids, attention_mask=mask).logits[0]
            at = slice(0, len(own)) if side == "right" else slice(len(padding), None)
            torch.testing.assert_close(batched[at], alone, rtol=1e-4, atol=1e-4)
    editor.rollback()
