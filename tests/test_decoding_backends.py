"""DoLa and DeCo under both backends, and only in the context that entered the block.

The decoding block reads early layers with context-local site hooks and rewrites the
logits with hooks on the model's LM head and root; under the nnsight backend those
hooks act inside nnsight's generate, so a steered DoLa generation is token-identical
whichever backend runs it.
"""

from __future__ import annotations

import threading

import pytest
import torch
from tiny import tiny_model, tiny_tokenizer

from steer.application import Steer, steering
from steer.decoding import decoding
from steer.prompts import encode_batch
from steer.sites import SiteMap
from steer.sites import backend as backends
from steer.vector import SteeringVector

PROMPTS = ["the cat sat", "I love this wonderful happy day"]
GENERATE = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
MODES = {"dola": {"layers": [0, 1, 2]}, "deco": {"layers": [1, 2], "top_k": 10}}


def _vector(model) -> SteeringVector:
    hidden = SiteMap(model).hidden_size
    return SteeringVector({"resid_post.1": torch.randn(hidden, generator=torch.Generator().manual_seed(0)) * 4})


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2"])
@pytest.mark.parametrize("mode", list(MODES))
def test_decoding_is_identical_through_nnsight(family: str, mode: str) -> None:
    pytest.importorskip("nnsight")
    model, tok = tiny_model(family), tiny_tokenizer()
    batch = encode_batch(tok, PROMPTS, templated=False)
    spec = Steer(_vector(model), [1.5, -2.0])
    with torch.no_grad():
        plain = model.generate(**batch, **GENERATE)
        with steering(model, spec, tokenizer=tok), decoding(model, mode, **MODES[mode]) as torch_trace:
            expected = model.generate(**batch, **GENERATE)
        with steering(model, spec, tokenizer=tok, backend="nnsight"), decoding(model, mode, **MODES[mode]) as trace:
            got = backends.generate(model, batch, **GENERATE)
    assert torch.equal(got, expected), f"{family} {mode}: the backends differ"
    assert not torch.equal(got, plain)
    assert [c.tolist() for c in trace.chosen] == [c.tolist() for c in torch_trace.chosen]


def test_other_threads_decode_plainly_while_a_block_is_open() -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer()
    batch = encode_batch(tok, PROMPTS, templated=False)
    with torch.no_grad():
        plain = model.generate(**batch, **GENERATE)
        with decoding(model, "dola", layers=[0, 1, 2]):
            with decoding(model, "dola", layers=[0, 1, 2]) as _:
                pass  # a nested block that closed must not disturb the open one
            dola = model.generate(**batch, **GENERATE)
    assert not torch.equal(dola, plain)

    entered, done = threading.Event(), threading.Event()
    seen: dict[str, torch.Tensor] = {}
    errors: list[BaseException] = []

    def decode_with_dola() -> None:
        try:
            with torch.no_grad(), decoding(model, "dola", layers=[0, 1, 2]):
                entered.set()
                seen["dola"] = model.generate(**batch, **GENERATE)
                done.wait(timeout=60)  # keep the block open while the other thread runs
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)
            entered.set()

    worker = threading.Thread(target=decode_with_dola)
    worker.start()
    entered.wait(timeout=60)
    try:
        with torch.no_grad():
            seen["plain"] = model.generate(**batch, **GENERATE)
    finally:
        done.set()
        worker.join()
    assert not errors, errors
    assert torch.equal(seen["plain"], plain), "a decoding block in another thread reached this one"
    assert torch.equal(seen["dola"], dola)


def test_concurrent_passes_through_one_block_and_plain_passes_stay_apart() -> None:
    """Two threads decode through one block (copied contexts) while two run the model plainly.

    The block's hooks sit on the shared model, so a pass's early rows and head state must
    not leak into another thread's pass. A tiny switch interval makes the threads interleave
    inside single forward passes; every result must equal its sequential reference.
    """
    import sys

    from steer.sites.hooks import in_this_context

    model, tok = tiny_model("llama"), tiny_tokenizer()
    batch = encode_batch(tok, PROMPTS, templated=False)
    with torch.no_grad():
        plain = model.generate(**batch, **GENERATE)
        with decoding(model, "dola", layers=[0, 1, 2]):
            dola = model.generate(**batch, **GENERATE)
    assert not torch.equal(dola, plain)

    results: list[tuple[str, torch.Tensor]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def run(kind: str, generate) -> None:
        try:
            start.wait(timeout=60)
            for _ in range(4):
                with torch.no_grad():
                    results.append((kind, generate(**batch, **GENERATE)))
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        with decoding(model, "dola", layers=[0, 1, 2]):  # held open here while the workers run
            workers = [threading.Thread(target=run, args=("dola", in_this_context(model.generate))) for _ in range(2)]
            workers += [threading.Thread(target=run, args=("plain", model.generate)) for _ in range(2)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors
    assert len(results) == 16
    for kind, tokens in results:
        assert torch.equal(tokens, dola if kind == "dola" else plain), f"a {kind} pass was disturbed"


def test_a_remote_nnsight_backend_is_refused_at_the_start() -> None:
    pytest.importorskip("nnsight")
    from steer.errors import SteerError
    from steer.sites.backend import set_default_backend
    from steer.sites.backends.nnsight import NnsightBackend

    model = tiny_model("llama")
    set_default_backend(model, NnsightBackend(remote=True))  # nothing connects until a run
    try:
        with pytest.raises(SteerError, match="remote nnsight run"):
            with decoding(model, "dola", layers=[0, 1]):
                pass
    finally:
        set_default_backend(model, "torch")
