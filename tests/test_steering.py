"""Steering acts on every generated token with the KV cache, is exactly undone on exit, and composes."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_model, tiny_tokenizer

import steer
from steer.errors import SteerError, VectorError
from steer.prompts import encode_batch, forward_inputs
from steer.sites.hooks import record
from steer.application import Steer
from steer.vector import SteeringVector, VectorMeta

PROMPTS = ["the cat sat", "I love this wonderful happy day", "What is"]


def vector(layer: int = 1, seed: int = 1, scale: float = 3.0, site: str = "resid_post") -> SteeringVector:
    torch.manual_seed(seed)
    return SteeringVector({f"{site}.{layer}": torch.randn(32) * scale}, VectorMeta(method="test", model_id="tiny-llama"))


def greedy(model, batch, new: int = 8, **kw):
    return model.generate(**batch, max_new_tokens=new, do_sample=False, pad_token_id=0, **kw)


def test_steered_activation_is_plain_plus_vector() -> None:
    model, vec = tiny_model("llama"), vector()
    ids = torch.tensor([[5, 6, 7, 8]])
    with record(model, ["resid_post.1"]) as plain, torch.no_grad():
        model(ids)
    with steer.steering(model, (vec, 2.0)), record(model, ["resid_post.1", "resid_pre.2"]) as steered, torch.no_grad():
        model(ids)
    expected = plain[steer.Site("resid_post", 1)].values[0] + 2.0 * vec.directions[steer.Site("resid_post", 1)]
    torch.testing.assert_close(steered[steer.Site("resid_post", 1)].values[0], expected)
    torch.testing.assert_close(steered[steer.Site("resid_pre", 2)].values[0], expected)


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2", "gemma3"])
def test_kv_cache_generation_equals_full_recompute(family: str) -> None:
    """With the cache each step sees one new token; steering must act on it exactly as on a full pass."""
    model, tok = tiny_model(family), tiny_tokenizer()
    vec = SteeringVector({"resid_post.1": torch.randn(32, generator=torch.Generator().manual_seed(3)) * 4})
    batch = encode_batch(tok, PROMPTS[:1], templated=False)
    with steer.steering(model, (vec, 1.5)), torch.no_grad():
        cached = greedy(model, batch, use_cache=True)
        recomputed = greedy(model, batch, use_cache=False)
    plain = greedy(model, batch)
    assert torch.equal(cached, recomputed)
    assert not torch.equal(cached, plain), "the vector should change the greedy continuation"


def test_every_new_token_is_steered() -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer()
    batch = encode_batch(tok, PROMPTS[:1], templated=False)
    calls = []

    class Count:
        site = steer.Site("resid_post", 1)

        def __call__(self, hidden, state):
            calls.append(hidden.shape[1])
            return hidden

    with steer.intervene(model, [Count()]), torch.no_grad():
        greedy(model, batch, new=6)
    assert calls == [batch["input_ids"].shape[1]] + [1] * 5  # prefill, then one token per step


def test_left_padded_batch_generates_what_each_prompt_generates_alone() -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer()
    vec = vector(scale=4.0)
    for positions in ("all", "generated", "prompt", "after_instruction"):
        spec = Steer(vec, 2.0, positions)
        with steer.steering(model, spec, instruction_suffix=2), torch.no_grad():
            batch = encode_batch(tok, PROMPTS, templated=False)
            together = greedy(model, batch)[:, batch["input_ids"].shape[1]:]
            for row, prompt in enumerate(PROMPTS):
                alone = encode_batch(tok, [prompt], templated=False)
                single = greedy(model, alone)[:, alone["input_ids"].shape[1]:]
                assert torch.equal(together[row], single[0]), (positions, prompt)


def test_exactly_unsteered_on_exit_and_after_exception() -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer()
    batch = encode_batch(tok, PROMPTS, templated=False)
    with torch.no_grad():
        before = model(**forward_inputs(batch)).logits
        with steer.steering(model, (vector(), 3.0)):
            during = model(**forward_inputs(batch)).logits
        after = model(**forward_inputs(batch)).logits
        with pytest.raises(RuntimeError, match="boom"):
            with steer.steering(model, (vector(), 3.0)):
                raise RuntimeError("boom")
        after_error = model(**forward_inputs(batch)).logits
    assert not torch.equal(before, during)
    assert torch.equal(before, after) and torch.equal(before, after_error)


def test_vectors_compose_by_adding() -> None:
    model = tiny_model("llama")
    a, b = vector(seed=1), vector(seed=2)
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        with steer.steering(model, (a, 2.0), (b, -1.0)):
            composed = model(ids).logits
        with steer.steering(model, (a * 2.0 - b, 1.0)):
            summed = model(ids).logits
    torch.testing.assert_close(composed, summed)


def test_position_policies_touch_the_right_tokens() -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer()
    vec = SteeringVector({"resid_post.0": torch.ones(32)})
    batch = encode_batch(tok, ["the cat sat on the mat"], templated=False)
    prompt_len = batch["input_ids"].shape[1]

    def deltas(positions: str) -> list[torch.Tensor]:
        with torch.no_grad(), record(model, ["resid_post.0"]) as plain:
            out = greedy(model, batch, new=3)
        full = {"input_ids": out, "attention_mask": torch.ones_like(out)}
        with torch.no_grad(), steer.steering(model, Steer(vec, 1.0, positions), instruction_suffix=2), \
                record(model, ["resid_post.0"]) as steered:
            model(**full)
        with torch.no_grad(), record(model, ["resid_post.0"]) as unsteered:
            model(**full)
        diff = steered[steer.Site("resid_post", 0)].values[0] - unsteered[steer.Site("resid_post", 0)].values[0]
        return diff[0, :, 0].round(decimals=4)

    n = prompt_len + 3
    assert deltas("all").tolist() == [1.0] * n
    # a single full pass is a prefill, so every column is a prompt column here
    assert deltas("prompt").tolist() == [1.0] * n
    during_generation = {}
    for policy in ("prompt", "generated", "after_instruction"):
        seen: list[tuple[int, torch.Tensor]] = []

        class Probe:
            site = steer.Site("resid_post", 0)

            def __call__(self, hidden, state, policy=policy):
                mask = state.position_mask(policy, 2)
                seen.append((int(state.columns[0]), mask.view(-1).clone()))
                return hidden

        with torch.no_grad(), steer.intervene(model, [Probe()]):
            greedy(model, batch, new=3)
        during_generation[policy] = seen
    prefill = {p: v[0][1].tolist() for p, v in during_generation.items()}
    assert prefill["prompt"] == [True] * prompt_len
    assert prefill["generated"] == [False] * (prompt_len - 1) + [True]
    assert prefill["after_instruction"] == [False] * (prompt_len - 2) + [True] * 2
    for policy, steps in during_generation.items():  # decoding steps: only 'prompt' stays off
        assert all(m.tolist() == [policy != "prompt"] for _, m in steps[1:])


def test_per_row_multipliers_match_separate_runs() -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer()
    vec = vector(scale=4.0)
    batch = encode_batch(tok, PROMPTS[:2], templated=False)
    with torch.no_grad():
        with steer.steering(model, Steer(vec, [2.0, -2.0])):
            mixed = model(**forward_inputs(batch)).logits
        with steer.steering(model, (vec, 2.0)):
            plus = model(**forward_inputs(batch)).logits
        with steer.steering(model, (vec, -2.0)):
            minus = model(**forward_inputs(batch)).logits
    torch.testing.assert_close(mixed[0], plus[0])
    torch.testing.assert_close(mixed[1], minus[1])
    with pytest.raises(SteerError, match="per-row multipliers"):
        with steer.steering(model, Steer(vec, [1.0, 2.0, 3.0])), torch.no_grad():
            model(**forward_inputs(batch))


def test_steering_validates_the_vector_against_the_model() -> None:
    model = tiny_model("llama")
    wrong_size = SteeringVector({"resid_post.1": torch.ones(64)}, VectorMeta(model_id="big-model", num_layers=40))
    with pytest.raises(VectorError, match="made for big-model.*hidden size 64.*model has hidden size 32"):
        with steer.steering(model, wrong_size):
            pass
    wrong_layer = SteeringVector({"resid_post.9": torch.ones(32)})
    with pytest.raises(VectorError, match="only 3 layers"):
        with steer.steering(model, wrong_layer):
            pass
    other_model = SteeringVector({"resid_post.1": torch.ones(32)}, VectorMeta(model_id="another-model"))
    with pytest.warns(UserWarning, match="made for another-model"):
        with steer.steering(model, other_model):
            pass


def test_bfloat16_model_gets_a_cast_vector() -> None:
    model = tiny_model("llama").to(torch.bfloat16)
    with steer.steering(model, (vector(), 1.0)), torch.no_grad():
        logits = model(torch.tensor([[5, 6]])).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()
