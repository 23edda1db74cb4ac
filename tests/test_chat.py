"""steer.attach: steering a chat loop's own `model.generate` between turns, exactly undone on detach."""

from __future__ import annotations

import contextvars
import threading
from pathlib import Path

import pytest
import torch
from tiny import tiny_model, tiny_tokenizer
from transformers import TextIteratorStreamer

import steer
from steer.application import Steer
from steer.errors import SteerError
from steer.prompts import encode_batch
from steer.vector import SteeringVector, VectorMeta

PROMPTS = ["the cat sat", "I love this wonderful happy day", "What is"]


def vector(seed: int = 1, layer: int = 1, size: int = 32, scale: float = 4.0) -> SteeringVector:
    direction = torch.randn(size, generator=torch.Generator().manual_seed(seed)) * scale
    return SteeringVector({f"resid_post.{layer}": direction}, VectorMeta(method="test"))


def hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def greedy(model, batch, new: int = 8, **kw) -> torch.Tensor:
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=new, do_sample=False, pad_token_id=0, **kw)
    return out[:, batch["input_ids"].shape[1]:]


def test_detach_leaves_the_model_bitwise_unsteered() -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer()
    batch = encode_batch(tok, PROMPTS, templated=False)
    before, hooks = logits(model, batch), hook_count(model)
    with steer.attach(model, tok) as steerer:
        steerer.add(vector(1), 2.0)
        steerer.add(vector(2, layer=2), -1.0)
        assert not torch.equal(logits(model, batch), before)
        steerer.set_multiplier(0, 3.0)
        steerer.remove(1)
        assert steerer.active
    assert hook_count(model) == hooks
    assert torch.equal(logits(model, batch), before)
    with pytest.raises(SteerError, match="detached"):
        steerer.add(vector(1))


def test_changes_between_turns_equal_a_fresh_steering_context() -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer()
    batch = encode_batch(tok, PROMPTS[:1], templated=False)
    plain, vec = greedy(model, batch), vector(1)
    steerer = steer.attach(model, tok, (vec, 2.0))
    first = greedy(model, batch)  # the loop's own generate call
    with steer.steering(model, (vec, 2.0), tokenizer=tok):
        pass  # same hooks at the same multiplier, entered elsewhere, must agree:
    steerer.detach()
    with steer.steering(model, (vec, 2.0), tokenizer=tok):
        assert torch.equal(first, greedy(model, batch))
    assert not torch.equal(first, plain), "the vector should change the greedy continuation"

    steerer = steer.attach(model, tok, (vec, 2.0))
    steerer.set_multiplier("test", -3.0)
    turn_two = greedy(model, batch)
    steerer.remove("test")
    assert not steerer.active and hook_count(model) == 0
    assert torch.equal(greedy(model, batch), plain)
    steerer.detach()
    with steer.steering(model, (vec, -3.0), tokenizer=tok):
        assert torch.equal(turn_two, greedy(model, batch))


def test_clear_and_unsteered_remove_every_hook_and_restore_after() -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer()
    batch = encode_batch(tok, PROMPTS, templated=False)
    before = logits(model, batch)
    steerer = steer.attach(model, tok, (vector(1), 2.0))
    steered = logits(model, batch)
    with steerer.unsteered():
        assert hook_count(model) == 0 and torch.equal(logits(model, batch), before)
    assert torch.equal(logits(model, batch), steered)
    steerer.clear()
    assert hook_count(model) == 0 and torch.equal(logits(model, batch), before)
    steerer.detach()


def test_per_row_multipliers_give_each_prompt_its_own_steering() -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer()
    vec, multipliers = vector(1), [2.0, -2.0, 0.0]
    steerer = steer.attach(model, tok, (vec, 1.0))
    batch = encode_batch(tok, PROMPTS, templated=False)
    together = steerer.generate(batch, multipliers_per_row=multipliers, max_new_tokens=8, do_sample=False,
                                pad_token_id=0)[:, batch["input_ids"].shape[1]:]
    with steerer.per_row(multipliers):
        assert torch.equal(greedy(model, batch), together)
    steerer.detach()
    for row, (prompt, m) in enumerate(zip(PROMPTS, multipliers)):
        alone = encode_batch(tok, [prompt], templated=False)
        with steer.steering(model, Steer(vec, m)):
            assert torch.equal(greedy(model, alone)[0], together[row]), f"row {row} at x{m}"
    assert not torch.equal(together[0], together[1])


def test_per_row_mapping_sets_one_vector_and_keeps_the_others() -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer()
    a, b = vector(1), vector(2, layer=2)
    batch = encode_batch(tok, PROMPTS[:2], templated=False)
    with steer.attach(model, tok, (a, 1.0), (b, 2.0)) as steerer:
        assert [v.name for v in steerer.vectors] == ["test", "test-2"]
        with steerer.per_row({"test": [1.5, -1.0]}):
            mixed = logits(model, batch)
    with steer.steering(model, Steer(a, [1.5, -1.0]), (b, 2.0)):
        assert torch.equal(mixed, logits(model, batch))


def test_per_row_length_must_match_the_batch() -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer()
    with steer.attach(model, tok, vector(1)) as steerer, pytest.raises(SteerError, match="one per prompt"):
        steerer.generate(encode_batch(tok, PROMPTS, templated=False), multipliers_per_row=[1.0, 2.0],
                         max_new_tokens=2)


def test_file_references_and_a_bad_vector_keeps_the_old_steering(tmp_path: Path) -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer()
    path = tmp_path / "happy.safetensors"
    vector(1).save(path)
    batch = encode_batch(tok, PROMPTS, templated=False)
    with steer.attach(model, tok) as steerer:
        assert steerer.add(str(path), 2.0) == "happy"
        steered = logits(model, batch)
        with pytest.raises(SteerError):
            steerer.add(vector(3, size=48))  # wrong hidden size for this model
        with pytest.raises(SteerError, match="No vector named 'sad'"):
            steerer.remove("sad")
        assert [v.name for v in steerer.vectors] == ["happy"]
        assert torch.equal(logits(model, batch), steered)
    with steer.steering(model, (vector(1), 2.0)):
        assert torch.equal(logits(model, batch), steered)


class RecordingStreamer(TextIteratorStreamer):
    """TextIteratorStreamer that also keeps the token ids it was given, to compare token for token."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.ids: list[int] = []
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if self._prompt_seen:  # the first put is the prompt (skip_prompt drops it from the text too)
            self.ids.extend(value.reshape(-1).tolist())
        self._prompt_seen = True
        super().put(value)


def streamed(model, tok, batch, **kwargs) -> tuple[list[int], str]:
    """Generate in a thread and read the streamer, as Hugging Face documents for chat UIs."""
    streamer = RecordingStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    torch.manual_seed(kwargs.pop("seed"))
    # steering is context-local: the worker runs in a copy of this context, as README_2 documents
    thread = threading.Thread(target=contextvars.copy_context().run, args=(model.generate,),
                              kwargs={**batch, **kwargs, "streamer": streamer})
    thread.start()
    text = "".join(streamer)
    thread.join()
    return streamer.ids, text


def plain(model, tok, batch, **kwargs) -> tuple[list[int], str]:
    torch.manual_seed(kwargs.pop("seed"))
    with torch.no_grad():
        new = model.generate(**batch, **kwargs)[0, batch["input_ids"].shape[1]:]
    return new.tolist(), tok.decode(new, skip_special_tokens=True)


def chat_inputs(tok, text: str) -> dict[str, torch.Tensor]:
    rendered = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
    return encode_batch(tok, [rendered], templated=True)


@pytest.mark.parametrize("sampling", [False, True])
def test_streaming_equals_non_streaming_token_for_token(sampling: bool) -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer()
    batch = chat_inputs(tok, "the cat sat")
    settings = dict(max_new_tokens=12, do_sample=sampling, pad_token_id=0, seed=7)
    if sampling:
        # a random tiny model's logits are nearly flat; a low temperature makes the samples depend on them
        settings.update(temperature=0.1)
    with steer.attach(model, tok, (vector(1), 2.0)) as steerer:
        ids, text = plain(model, tok, batch, **settings)
        assert streamed(model, tok, batch, **settings) == (ids, text)
        steerer.set_multiplier(0, -2.0)  # a change between turns reaches the streaming path too
        flipped = plain(model, tok, batch, **settings)
        assert streamed(model, tok, batch, **settings) == flipped
        assert flipped[0] != ids
    assert len(ids) == 12 or ids[-1] == tok.eos_token_id


@pytest.mark.integration
def test_streaming_equals_non_streaming_on_the_default_model(smol) -> None:
    model, tok = smol
    hidden = model.config.hidden_size
    direction = torch.randn(hidden, generator=torch.Generator().manual_seed(0)) * 6
    text = tok.apply_chat_template([{"role": "user", "content": "Tell me about cats."}], tokenize=False,
                                   add_generation_prompt=True)
    batch = encode_batch(tok, [text], templated=True)
    settings = dict(max_new_tokens=16, do_sample=True, temperature=0.8, pad_token_id=tok.pad_token_id, seed=3)
    unsteered = plain(model, tok, batch, **settings)
    with steer.attach(model, tok, (SteeringVector({"resid_post.10": direction}), 4.0)):
        ids, reply = plain(model, tok, batch, **settings)
        assert streamed(model, tok, batch, **settings) == (ids, reply)
    assert ids != unsteered[0]
    assert plain(model, tok, batch, **settings) == unsteered
