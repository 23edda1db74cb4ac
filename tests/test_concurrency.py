"""Steering is local to the thread or asyncio task that entered it.

Chat apps serve many users from one model; each caller's steering must reach only its
own forward passes. Every test runs several callers on one shared model at once, each
with its own vector, multiplier, position policy or none, and checks that every output
is exactly what that caller gets when it runs alone.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from transformers import DynamicCache

import steer
from steer.application import Steer
from steer.prompts import encode_batch
from steer.vector import SteeringVector
from tiny import tiny_model, tiny_tokenizer

PROMPTS = ["the cat sat on the mat", "I love this wonderful day", "What is the capital of France?"]
NEW = 8


def vector(seed: int, scale: float = 4.0) -> SteeringVector:
    g = torch.Generator().manual_seed(seed)
    return SteeringVector({"resid_post.1": torch.randn(32, generator=g) * scale})


# (prompt index, steer or None): some unsteered, some steered differently, one by position policy
CALLERS: list[tuple[int, Steer | None]] = [
    (0, None),
    (0, Steer(vector(1), 2.0)),
    (1, Steer(vector(2), -3.0)),
    (1, None),
    (2, Steer(vector(1), 2.0, "generated")),
    (2, Steer(vector(3), 1.5, "prompt")),
]


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)  # the callers are the parallelism here
    return tiny_model("llama")


def generate(model, prompt: int, spec: Steer | None) -> list[int]:
    tok = tiny_tokenizer()
    batch = encode_batch(tok, [PROMPTS[prompt]], templated=False)
    with torch.no_grad():
        if spec is None:
            out = model.generate(**batch, max_new_tokens=NEW, do_sample=False, pad_token_id=0)
        else:
            with steer.steering(model, spec):
                out = model.generate(**batch, max_new_tokens=NEW, do_sample=False, pad_token_id=0)
    return out[0, batch["input_ids"].shape[1]:].tolist()


@pytest.fixture(scope="module")
def alone(model) -> list[list[int]]:
    reference = [generate(model, p, s) for p, s in CALLERS]
    # the steered callers really differ from unsteered ones on the same prompt
    assert reference[0] != reference[1] and reference[2] != reference[3]
    return reference


def test_threads_on_one_model_see_only_their_own_steering(model, alone) -> None:
    for _ in range(3):  # several rounds: interleavings differ
        barrier = threading.Barrier(len(CALLERS))

        def call(i: int) -> list[int]:
            barrier.wait()
            prompt, spec = CALLERS[i]
            return generate(model, prompt, spec)

        with ThreadPoolExecutor(len(CALLERS)) as pool:
            results = list(pool.map(call, range(len(CALLERS))))
        assert results == alone


def test_a_long_steering_block_in_one_thread_does_not_reach_another(model, alone) -> None:
    """The issue's case: thread A sits inside steering while thread B generates unsteered."""
    inside, done = threading.Event(), threading.Event()

    def steered_holder() -> None:
        with steer.steering(model, (vector(1), 4.0)):
            inside.set()
            done.wait(timeout=60)

    holder = threading.Thread(target=steered_holder)
    holder.start()
    try:
        assert inside.wait(timeout=30)
        for _ in range(5):
            assert generate(model, 0, None) == alone[0]
    finally:
        done.set()
        holder.join()


async def _decode_stepwise(model, prompt: int, spec: Steer | None) -> list[int]:
    """A hand-written decoding loop that yields to the event loop between steps."""
    tok = tiny_tokenizer()
    ids = encode_batch(tok, [PROMPTS[prompt]], templated=False)["input_ids"]
    tokens: list[int] = []
    # torch's grad mode is per thread, not per task: a no_grad block held across an await
    # would be entered and left out of order by the interleaved tasks and leak into the
    # thread. So it wraps each synchronous step; steering (context-local) spans the awaits.
    with steer.steering(model, spec) if spec is not None else _nothing():
        cache = DynamicCache()
        with torch.no_grad():
            out = model(input_ids=ids, past_key_values=cache, use_cache=True)
        for _ in range(NEW):
            token = out.logits[:, -1:].argmax(-1)
            tokens.append(int(token))
            await asyncio.sleep(0)  # let the other tasks run their steps in between
            with torch.no_grad():
                out = model(input_ids=token, past_key_values=out.past_key_values, use_cache=True)
    return tokens


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_asyncio_tasks_interleaving_steps_on_one_thread(model, alone) -> None:
    async def main() -> list[list[int]]:
        return await asyncio.gather(*(_decode_stepwise(model, p, s) for p, s in CALLERS))

    assert torch.is_grad_enabled()
    assert asyncio.run(main()) == alone
    assert torch.is_grad_enabled()  # nothing leaked into the thread


def test_asyncio_tasks_generating_in_worker_threads(model, alone) -> None:
    async def one(prompt: int, spec: Steer | None) -> list[int]:
        tok = tiny_tokenizer()
        batch = encode_batch(tok, [PROMPTS[prompt]], templated=False)
        kwargs = dict(max_new_tokens=NEW, do_sample=False, pad_token_id=0)
        with steer.steering(model, spec) if spec is not None else _nothing():
            # to_thread copies this task's context, so the worker is steered like the task
            # (generate runs without gradients by itself)
            out = await asyncio.to_thread(model.generate, **batch, **kwargs)
        return out[0, batch["input_ids"].shape[1]:].tolist()

    async def main() -> list[list[int]]:
        return await asyncio.gather(*(one(p, s) for p, s in CALLERS))

    assert asyncio.run(main()) == alone


def test_nested_blocks_in_one_thread_compose(model) -> None:
    ids = torch.tensor([[5, 6, 7]])
    a, b = vector(1), vector(2)
    with torch.no_grad():
        with steer.steering(model, (a, 2.0)), steer.steering(model, (b, -1.0)):
            nested = model(ids).logits
        with steer.steering(model, (a * 2.0 - b, 1.0)):
            summed = model(ids).logits
    torch.testing.assert_close(nested, summed)


def test_attached_steerer_is_local_and_in_this_context_carries_it(model, alone) -> None:
    prompt, spec = CALLERS[1]
    tok = tiny_tokenizer()
    batch = encode_batch(tok, [PROMPTS[prompt]], templated=False)
    kwargs = dict(max_new_tokens=NEW, do_sample=False, pad_token_id=0)
    results: dict[str, list[int]] = {}

    def worker(name: str, function) -> None:
        with torch.no_grad():
            results[name] = function(**batch, **kwargs)[0, batch["input_ids"].shape[1]:].tolist()

    with steer.attach(model, tok, (spec.vector, spec.multiplier)):
        plain = threading.Thread(target=worker, args=("plain", model.generate))
        carried = threading.Thread(target=worker, args=("carried", steer.in_this_context(model.generate)))
        copied = threading.Thread(target=contextvars.copy_context().run, args=(worker, "copied", model.generate))
        for t in (plain, carried, copied):
            t.start()
        for t in (plain, carried, copied):
            t.join()
    assert results["plain"] == alone[0]  # a thread started without the context is not steered
    assert results["carried"] == alone[1] and results["copied"] == alone[1]


def test_hooks_are_gone_when_every_block_has_exited(model) -> None:
    def hook_count() -> int:
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())

    before = hook_count()
    barrier = threading.Barrier(4)

    def steer_briefly(seed: int) -> None:
        with steer.steering(model, (vector(seed), 1.0)):
            barrier.wait()
            with torch.no_grad():
                model(torch.tensor([[5, 6, 7]]))
            barrier.wait()

    threads = [threading.Thread(target=steer_briefly, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert hook_count() == before
