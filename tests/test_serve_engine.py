"""The serving engine: a row's tokens in a mixed batch are the tokens it gets alone.

Tiny random models, so the whole file runs in seconds. The batches mix unsteered rows,
rows steered by different vectors and multipliers, every position policy, greedy and
seeded sampling, different prompt lengths (left padding) and different lengths of
output (rows leave the batch at different steps).
"""

from __future__ import annotations

import pytest
import torch

from steer.application import Steer, steering
from steer.serve.engine import RowRequest, RowSteer, Sampling, TorchEngine, row_steers
from steer.vector import SteeringVector, VectorMeta
from tiny import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def engine() -> TorchEngine:
    return TorchEngine(tiny_model("llama"), tiny_tokenizer())


@pytest.fixture(scope="module")
def vectors() -> dict[str, SteeringVector]:
    generator = torch.Generator().manual_seed(7)
    return {
        "a": SteeringVector({"resid_post.1": 4 * torch.randn(32, generator=generator)}, VectorMeta(model_id="tiny-llama")),
        "b": SteeringVector({"resid_pre.2": 3 * torch.randn(32, generator=generator),
                             "resid_post.0": 2 * torch.randn(32, generator=generator)}, VectorMeta(model_id="tiny-llama")),
    }


def ids(text: str) -> list[int]:
    return tiny_tokenizer()(text)["input_ids"]


def run(engine: TorchEngine, rows: list[RowRequest]) -> tuple[dict[int, list[int]], dict[int, str]]:
    tokens: dict[int, list[int]] = {i: [] for i in range(len(rows))}
    finish: dict[int, str] = {}

    def sink(index: int, token: int | None, reason: str | None) -> None:
        assert index not in finish, "a row reported after it finished"
        if token is not None:
            tokens[index].append(token)
        if reason is not None:
            finish[index] = reason

    engine.generate(rows, sink)
    return tokens, finish


def mixed_rows(v: dict[str, SteeringVector]) -> list[RowRequest]:
    """Fresh requests (a RowRequest carries a cancel flag, so each run gets its own)."""
    return [
        RowRequest(ids("the cat sat on the mat"), Sampling(10)),
        RowRequest(ids("I love this"), Sampling(7), (RowSteer(v["a"], 2.0),)),
        RowRequest(ids("What is the capital of France?"), Sampling(10), (RowSteer(v["a"], -1.5, "after_instruction", 3),
                                                                         RowSteer(v["b"], 1.0, "generated"))),
        RowRequest(ids("the dog"), Sampling(9), (RowSteer(v["b"], 2.5, "prompt"),)),
        RowRequest(ids("I hate this terrible sad day"), Sampling(10, temperature=0.9, seed=11), (RowSteer(v["a"], 1.0),)),
        RowRequest(ids("yes no maybe"), Sampling(6, temperature=1.2, top_p=0.8, top_k=30, seed=3,
                                                 repetition_penalty=1.3)),
        RowRequest(ids("0 1 2 3"), Sampling(10), (RowSteer(v["a"], 1.0), RowSteer(v["a"], 1.0))),  # adds up to 2
    ]


def test_each_row_of_a_mixed_batch_matches_the_row_alone(engine: TorchEngine, vectors) -> None:
    batched, reasons = run(engine, mixed_rows(vectors))
    for index, row in enumerate(mixed_rows(vectors)):
        alone, alone_reasons = run(engine, [row])
        assert alone[0] == batched[index], f"row {index} differs in the batch"
        assert alone_reasons[0] == reasons[index]
    assert [len(t) for t in batched.values()] == [10, 7, 10, 9, 10, 6, 10]  # no EOS on this model: lengths hold
    # steering reached the rows that asked for it: the same prompt unsteered differs
    plain, _ = run(engine, [RowRequest(ids("I love this"), Sampling(7))])
    assert plain[0] != batched[1]
    doubled, _ = run(engine, [RowRequest(ids("0 1 2 3"), Sampling(10), (RowSteer(vectors["a"], 2.0),))])
    assert doubled[0] == batched[6]


def test_rows_match_hugging_face_generate_under_steer_steering(engine: TorchEngine, vectors) -> None:
    """Greedy rows equal `model.generate` inside `steer.steering`, for every position policy."""
    model = engine.model
    prompt = ids("What is the capital")
    for policy in ("all", "prompt", "generated", "after_instruction"):
        (tokens, _) = run(engine, [RowRequest(prompt, Sampling(8), (RowSteer(vectors["b"], 2.0, policy, 2),))])
        with steering(model, Steer(vectors["b"], 2.0, positions=policy), instruction_suffix=2), torch.inference_mode():
            reference = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                       max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None)
        assert tokens[0] == reference[0, len(prompt):].tolist(), policy


def test_seeded_sampling_repeats_and_depends_on_the_seed(engine: TorchEngine) -> None:
    def sampled(seed: int) -> list[int]:
        return run(engine, [RowRequest(ids("the cat"), Sampling(12, temperature=1.0, seed=seed))])[0][0]

    assert sampled(5) == sampled(5)
    assert sampled(5) != sampled(6)


def test_a_cancelled_row_leaves_the_batch_and_the_others_are_unchanged(engine: TorchEngine, vectors) -> None:
    rows = mixed_rows(vectors)
    seen: dict[int, int] = {}
    finish: dict[int, str] = {}
    tokens: dict[int, list[int]] = {i: [] for i in range(len(rows))}
    batch_sizes: list[int] = []
    original_forward = engine._forward

    def counting_forward(cache, **inputs):
        batch_sizes.append(int(inputs["input_ids"].shape[0]))
        return original_forward(cache, **inputs)

    def sink(index: int, token: int | None, reason: str | None) -> None:
        if token is not None:
            tokens[index].append(token)
            seen[index] = seen.get(index, 0) + 1
            if index == 2 and seen[index] == 3:
                rows[2].cancelled.set()  # the client of row 2 disconnects after 3 tokens
        if reason is not None:
            finish[index] = reason

    engine._forward = counting_forward  # type: ignore[method-assign]
    try:
        engine.generate(rows, sink)
    finally:
        del engine._forward
    assert finish[2] == "cancelled" and len(tokens[2]) == 3
    assert batch_sizes[0] == 7 and batch_sizes[4] == 6, "the cancelled row should be gone from the next step on"
    reference, _ = run(engine, mixed_rows(vectors))
    for index in range(len(rows)):
        if index != 2:
            assert tokens[index] == reference[index]


def test_rows_stop_at_their_end_of_sequence_token(engine: TorchEngine) -> None:
    prompt = ids("the cat sat")
    free, _ = run(engine, [RowRequest(prompt, Sampling(6))])
    stop_at = free[0][3]
    tokens, reasons = run(engine, [RowRequest(prompt, Sampling(6), stop_token_ids=frozenset({stop_at})),
                                   RowRequest(prompt, Sampling(6))])
    first = free[0].index(stop_at)
    assert tokens[0] == free[0][:first] and reasons[0] == "stop"
    assert tokens[1] == free[0] and reasons[1] == "length"


def test_dola_rows_batch_like_alone(engine: TorchEngine, vectors) -> None:
    choice = engine.resolve_decoding("dola", {"layers": [1, 2]})

    def rows() -> list[RowRequest]:
        return [RowRequest(ids("the cat"), Sampling(6, repetition_penalty=1.2), decoding=choice),
                RowRequest(ids("What is the capital of France?"), Sampling(6), (RowSteer(vectors["a"], 2.0),),
                           decoding=choice)]

    batched, _ = run(engine, rows())
    for index, row in enumerate(rows()):
        assert run(engine, [row])[0][0] == batched[index]
    # DoLa rows never share a batch with plain rows
    assert engine.batch_key(rows()[0]) != engine.batch_key(RowRequest(ids("x"), Sampling(1)))


def test_row_steers_give_zero_to_rows_that_did_not_ask(vectors) -> None:
    rows = [RowRequest([1], Sampling(1)), RowRequest([1], Sampling(1), (RowSteer(vectors["a"], 2.0, "prompt"),)),
            RowRequest([1], Sampling(1), (RowSteer(vectors["a"], -1.0, "generated"),))]
    steers = row_steers(rows)
    assert [(s.steer.positions, list(s.steer.multiplier)) for s in steers] == [("prompt", [0.0, 2.0, 0.0]),
                                                                                ("generated", [0.0, 0.0, -1.0])]
    decode = row_steers(rows, decode_step=True)  # after the prefill: prompt acts nowhere, generated everywhere
    assert [(s.steer.positions, list(s.steer.multiplier)) for s in decode] == [("all", [0.0, 0.0, -1.0])]


def test_the_nnsight_backend_gives_the_same_tokens(vectors) -> None:
    """The server does not assume torch hooks: the same batch through nnsight traces, token for token."""
    pytest.importorskip("nnsight")
    model, tok = tiny_model("llama"), tiny_tokenizer()
    hooks, _ = run(TorchEngine(model, tok), mixed_rows(vectors))
    traced, _ = run(TorchEngine(model, tok, backend="nnsight"), mixed_rows(vectors))
    assert traced == hooks
