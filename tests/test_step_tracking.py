"""Step tracking reads every call style the same way, on whatever transformers is installed.

Each test records, for every forward pass, the columns it covered, the prompt length and
whether it started a sequence, and compares with what the call must mean. The ways of
calling: `generate` with and without an attention mask, a left-padded batch, plain
forward calls on whole sequences, and a hand-written decoding loop with a KV cache.
"""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

import steer
from steer.application import Steer
from steer.prompts import encode_batch
from steer.sites.tracking import ForwardState, next_state, past_length
from steer.vector import SteeringVector
from tiny import tiny_model, tiny_tokenizer


class Probe:
    """Records (first column, number of columns, prompt length, prefill?) of each pass."""

    def __init__(self) -> None:
        self.site = steer.Site("resid_post", 0)
        self.passes: list[tuple[int, int, int, bool]] = []

    def __call__(self, hidden: torch.Tensor, state: ForwardState) -> torch.Tensor:
        assert state.columns is not None
        self.passes.append((int(state.columns[0]), len(state.columns), state.prompt_length, state.is_prefill))
        return hidden


def expected_generate(prompt: int, new: int) -> list[tuple[int, int, int, bool]]:
    return [(0, prompt, prompt, True)] + [(prompt + i, 1, prompt, False) for i in range(new - 1)]


def run(model, call) -> list[tuple[int, int, int, bool]]:
    probe = Probe()
    with torch.no_grad(), steer.intervene(model, [probe]):
        call()
    return probe.passes


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")


def test_generate_with_and_without_attention_mask(model) -> None:
    tok = tiny_tokenizer()
    batch = encode_batch(tok, ["the cat sat on the mat"], templated=False)
    n = batch["input_ids"].shape[1]
    kwargs = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert run(model, lambda: model.generate(**batch, **kwargs)) == expected_generate(n, 4)
    assert run(model, lambda: model.generate(batch["input_ids"], **kwargs)) == expected_generate(n, 4)
    # two generations in a row in one block: the second starts a new sequence
    both = run(model, lambda: (model.generate(**batch, **kwargs), model.generate(batch["input_ids"], **kwargs)))
    assert both == expected_generate(n, 4) * 2


def test_left_padded_batch_reads_pads_from_the_mask(model) -> None:
    tok = tiny_tokenizer()
    batch = encode_batch(tok, ["the cat sat on the mat", "hi"], templated=False)
    width = batch["input_ids"].shape[1]
    pads: list[list[int]] = []

    class PadProbe(Probe):
        def __call__(self, hidden, state):
            assert state.pad_offsets is not None
            pads.append(state.pad_offsets.tolist())
            return super().__call__(hidden, state)

    probe = PadProbe()
    with torch.no_grad(), steer.intervene(model, [probe]):
        model.generate(**batch, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert probe.passes == expected_generate(width, 3)
    short = int((batch["attention_mask"][1] == 0).sum())
    assert short > 0 and all(p == [0, short] for p in pads)


def test_plain_forward_calls_each_start_a_sequence(model) -> None:
    ids = torch.tensor([[5, 6, 7, 8]])
    passes = run(model, lambda: [model(input_ids=ids), model(input_ids=ids, attention_mask=torch.ones_like(ids)),
                                 model(input_ids=ids, use_cache=False)])
    assert passes == [(0, 4, 4, True)] * 3


def test_manual_decoding_loop_with_a_cache(model) -> None:
    ids = torch.tensor([[5, 6, 7, 8]])

    def loop() -> None:
        cache = DynamicCache()
        out = model(input_ids=ids, past_key_values=cache, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
        for _ in range(3):
            out = model(input_ids=token, past_key_values=out.past_key_values, use_cache=True)
            token = out.logits[:, -1:].argmax(-1)

    assert run(model, loop) == expected_generate(4, 4)


def test_manual_loop_with_positional_cache_and_no_mask_steers_like_generate(model) -> None:
    """positions='prompt' in a hand-written loop gives generate's tokens (the 5.24 failure mode)."""
    tok = tiny_tokenizer()
    vec = SteeringVector({"resid_post.1": torch.randn(32, generator=torch.Generator().manual_seed(3)) * 4})
    batch = encode_batch(tok, ["the cat sat on the mat"], templated=False)
    ids = batch["input_ids"]
    with torch.no_grad(), steer.steering(model, Steer(vec, 2.0, "prompt")):
        generated = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)[0, ids.shape[1]:]
        out = model(input_ids=ids, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
        loop = [int(token)]
        for _ in range(4):
            out = model(input_ids=token, past_key_values=out.past_key_values, use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
            loop.append(int(token))
    assert generated.tolist() == loop
    # and steering the prompt only really differs from steering everything
    with torch.no_grad(), steer.steering(model, Steer(vec, 2.0, "all")):
        everywhere = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)[0, ids.shape[1]:]
    assert everywhere.tolist() != loop


def test_past_length_ignores_keyword_names() -> None:
    cache = DynamicCache()
    cache.update(torch.zeros(1, 2, 7, 8), torch.zeros(1, 2, 7, 8), 0)
    for keyword in ("past_key_values", "cache", "some_future_name"):
        assert past_length((), {keyword: cache, "input_ids": torch.zeros(1, 1)}, 1)[0] == 7
    legacy = ((torch.zeros(1, 2, 5, 8), torch.zeros(1, 2, 5, 8)),)
    assert past_length((), {"past_key_values": legacy}, 1)[0] == 5
    assert past_length((), {"attention_mask": torch.ones(2, 9)}, 1)[0] == 8
    assert past_length((), {"attention_mask": torch.ones(2, 9)}, 9)[0] == 0


def test_a_pass_that_does_not_continue_the_last_one_starts_a_sequence() -> None:
    first = next_state(None, (), {"input_ids": torch.zeros(2, 6, dtype=torch.long)})
    step = next_state(first, (), {"input_ids": torch.zeros(2, 1, dtype=torch.long), "attention_mask": torch.ones(2, 7)})
    assert not step.is_prefill and step.prompt_length == 6 and int(step.columns[0]) == 6
    # a cache of another length (prefix caching): a new sequence whose prompt is all of it
    other = next_state(step, (), {"input_ids": torch.zeros(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 13)})
    assert other.is_prefill and other.prompt_length == 13
    # another batch size: also new
    resized = next_state(step, (), {"input_ids": torch.zeros(3, 1, dtype=torch.long), "attention_mask": torch.ones(3, 8)})
    assert resized.is_prefill
