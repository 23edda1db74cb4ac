"""`steer serve` end to end: the official `openai` client against a server on a loopback port.

A tiny random model serves most tests (fast); one integration test uses the real default
model with a library vector. Bad requests each get a 4xx OpenAI-style error while the
server keeps serving; a client that disconnects mid-stream frees its batch row.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

openai = pytest.importorskip("openai", reason="the server tests need the test extra: pip install -e '.[test]'")
httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette", reason="steer serve needs the serve extra: pip install -e '.[serve]'")
pytest.importorskip("uvicorn", reason="steer serve needs the serve extra: pip install -e '.[serve]'")

from steer.serve import TorchEngine, create_app  # noqa: E402
from steer.serve.background import running_server  # noqa: E402
from steer.serve.engine import RowRequest, RowSteer, Sampling  # noqa: E402
from steer.serve.protocol import Limits  # noqa: E402
from steer.vector import SteeringVector, VectorMeta  # noqa: E402
from tiny import tiny_model, tiny_tokenizer  # noqa: E402

MODEL = "tiny-llama"
PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


def _vector(seed: int, hidden: int = 32, site: str = "resid_post.1") -> SteeringVector:
    generator = torch.Generator().manual_seed(seed)
    return SteeringVector({site: 4 * torch.randn(hidden, generator=generator)}, VectorMeta(model_id=MODEL))


@pytest.fixture(scope="module")
def server():
    engine = TorchEngine(tiny_model("llama"), tiny_tokenizer())
    app = create_app(engine, vectors={"happy": _vector(1), "sad": (_vector(2), -2.0)},
                     limits=Limits(max_tokens=64, default_max_tokens=8, max_upload_bytes=64 * 1024),
                     batch_window_s=0.1)
    with running_server(app) as url:
        yield url, engine, app


@pytest.fixture(scope="module")
def client(server):
    url, _, _ = server
    return openai.OpenAI(base_url=url + "/v1", api_key="not-needed", max_retries=0, timeout=60)


def _alone(engine: TorchEngine, steers: tuple[RowSteer, ...] = (), max_new: int = 8) -> str:
    """The reply the engine gives this chat prompt alone, decoded as the server decodes it."""
    tok = engine.tokenizer
    ids = tok.apply_chat_template(PROMPT, tokenize=True, add_generation_prompt=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    tokens: list[int] = []
    engine.generate([RowRequest(ids, Sampling(max_new), steers, stop_token_ids=engine.stop_token_ids)],
                    lambda i, t, f: tokens.append(t) if t is not None else None)
    return tok.decode(tokens, skip_special_tokens=True)


def test_models_lists_the_served_model(client) -> None:
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_concurrent_openai_requests_batch_and_each_gets_its_own_steering(server, client) -> None:
    url, engine, app = server
    from steer.prompts import instruction_suffix_length
    from steer.serve.engine import RowSteer as RS

    suffix = instruction_suffix_length(engine.tokenizer)
    cases = [
        ({}, ()),
        ({"steer": [{"vector": "happy", "multiplier": 3}]}, (RS(app.state.steer.vectors.named["happy"].vector, 3.0,
                                                                  "all", suffix),)),
        ({"steer": [{"vector": "happy:-2", "positions": "after_instruction"}]},
         (RS(app.state.steer.vectors.named["happy"].vector, -2.0, "after_instruction", suffix),)),
        ({"steer": [{"vector": "sad"}]}, (RS(app.state.steer.vectors.named["sad"].vector, -2.0, "all", suffix),)),
    ]
    before = httpx.get(url + "/health").json()["batches"]

    def ask(extra: dict, stream: bool) -> str:
        if stream:
            chunks = client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=8, temperature=0,
                                                    stream=True, extra_body=extra)
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        reply = client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=8, temperature=0,
                                               extra_body=extra)
        assert reply.usage.completion_tokens <= 8 and reply.choices[0].finish_reason in ("length", "stop")
        return reply.choices[0].message.content

    jobs = [(extra, stream) for extra, _ in cases for stream in (False, True)]
    with ThreadPoolExecutor(len(jobs)) as pool:
        replies = list(pool.map(lambda job: ask(*job), jobs))
    health = httpx.get(url + "/health").json()
    assert health["largest_batch"] >= 2, health  # they really shared batches
    assert health["batches"] - before < len(jobs)
    for (extra, steers), streamed, plain in zip(cases, replies[1::2], replies[0::2]):
        expected = _alone(engine, steers)
        assert plain == expected, extra
        assert streamed == expected, extra
    assert len(set(replies[0::2])) > 1, "steering changed nothing: the test vectors are too weak"


def test_completions_endpoint_streams_and_takes_decoding(client) -> None:
    reply = client.completions.create(model=MODEL, prompt="the cat sat", max_tokens=6, temperature=0,
                                      extra_body={"decoding": {"mode": "dola", "layers": [1, 2]}})
    streamed = client.completions.create(model=MODEL, prompt="the cat sat", max_tokens=6, temperature=0, stream=True,
                                         extra_body={"decoding": {"mode": "dola", "layers": [1, 2]}})
    assert "".join(c.choices[0].text for c in streamed if c.choices) == reply.choices[0].text
    assert reply.usage.completion_tokens == 6


def test_seeded_sampling_is_repeatable_over_http(client) -> None:
    def ask() -> str:
        return client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=8, temperature=1.0, seed=42,
                                              extra_body={"steer": [{"vector": "happy", "multiplier": 1}]}
                                              ).choices[0].message.content

    with ThreadPoolExecutor(3) as pool:
        replies = list(pool.map(lambda _: ask(), range(3)))
    assert replies[0] == replies[1] == replies[2]


BAD_REQUESTS = [
    ({"steer": [{"vector": "nope"}]}, 404, "unknown_vector", "POST /v1/vectors"),
    ({"steer": [{"vector": "library:no-such-entry"}]}, 400, "unknown_vector", "Available"),
    ({"steer": [{"vector": "library:sentiment-positive"}]}, 400, "vector_model_mismatch", "hidden size"),
    ({"steer": [{"vector": "happy", "multiplier": "NaN"}]}, 400, "invalid_multiplier", "finite number"),
    ({"steer": [{"vector": "happy", "multiplier": "lots"}]}, 400, "invalid_multiplier", "not a number"),
    ({"steer": [{"vector": "happy:abc"}]}, 400, "invalid_multiplier", "not a number"),
    ({"steer": [{"vector": "happy:2", "multiplier": 1}]}, 400, "invalid_multiplier", "give it once"),
    ({"steer": [{"vector": "happy", "positions": "middle"}]}, 400, "invalid_positions", "after_instruction"),
    ({"steer": [{"vector": "happy", "strength": 2}]}, 400, "invalid_value", "multiplier"),
    ({"steer": "happy:1", "decoding": "dolla"}, 400, "invalid_decoding", "dola"),
    ({"decoding": {"mode": "dola", "layers": [99]}}, 400, "invalid_decoding", "out of range"),
    ({"max_tokens": 65}, 400, "max_tokens_too_large", "--max-tokens-limit"),
    ({"max_tokens": 0}, 400, "invalid_value", ">= 1"),
    ({"temperature": "hot"}, 400, "invalid_value", "temperature"),
    ({"n": 2}, 400, "unsupported_value", "n=1"),
    ({"model": "gpt-4o"}, 404, "model_not_found", MODEL),
    ({"messages": "hi"}, 400, "invalid_value", "messages"),
]


@pytest.mark.parametrize(("extra", "status", "code", "hint"), BAD_REQUESTS, ids=[b[2] + "-" + str(i) for i, b in
                                                                               enumerate(BAD_REQUESTS)])
def test_bad_requests_get_openai_errors_that_say_how_to_fix(server, extra, status, code, hint) -> None:
    url, _, _ = server
    body = {"model": MODEL, "messages": PROMPT, "max_tokens": 4, **extra}
    response = httpx.post(url + "/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["type"] == "invalid_request_error"
    assert hint in error["message"], error["message"]


def test_the_openai_client_raises_the_servers_message(client) -> None:
    with pytest.raises(openai.BadRequestError, match="position policy"):
        client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=4,
                                       extra_body={"steer": [{"vector": "happy", "positions": "middle"}]})


def test_malformed_json_too_long_prompt_and_the_server_keeps_serving(server, client) -> None:
    url, _, _ = server
    response = httpx.post(url + "/v1/chat/completions", content=b'{"model": "tiny-llama", "messages": [',
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"
    long_prompt = [{"role": "user", "content": "the cat sat on the mat " * 40}]  # context is 128 tokens
    response = httpx.post(url + "/v1/chat/completions", json={"model": MODEL, "messages": long_prompt})
    assert response.status_code == 400 and response.json()["error"]["code"] == "context_length_exceeded"
    assert "Shorten" in response.json()["error"]["message"]
    near = [{"role": "user", "content": "the cat sat on the mat " * 7}]
    response = httpx.post(url + "/v1/chat/completions", json={"model": MODEL, "messages": near, "max_tokens": 64})
    assert response.status_code == 400 and "ask for at most" in response.json()["error"]["message"]
    assert httpx.get(url + "/v1/nothing").json()["error"]["code"] == "not_found"
    ok = client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=3, temperature=0)
    assert ok.usage.completion_tokens == 3


def test_upload_a_vector_then_steer_with_it(server, client, tmp_path: Path) -> None:
    url, engine, app = server
    vector = _vector(9, site="resid_pre.2")
    path = vector.save(tmp_path / "v.safetensors")
    response = httpx.post(url + "/v1/vectors", params={"name": "uploaded"}, content=path.read_bytes())
    assert response.status_code == 201, response.text
    assert response.json()["sites"] == ["resid_pre.2"]
    again = httpx.post(url + "/v1/vectors", params={"name": "uploaded"}, content=path.read_bytes())
    assert again.status_code == 409 and again.json()["error"]["code"] == "vector_exists"
    reply = client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=8, temperature=0,
                                           extra_body={"steer": [{"vector": "uploaded", "multiplier": 2}]})
    stored = app.state.steer.vectors.named["uploaded"].vector
    assert torch.equal(stored.directions[vector.sites[0]], vector.directions[vector.sites[0]])
    from steer.prompts import instruction_suffix_length

    expected = _alone(engine, (RowSteer(stored, 2.0, "all", instruction_suffix_length(engine.tokenizer)),))
    assert reply.choices[0].message.content == expected
    listed = {v["id"] for v in httpx.get(url + "/v1/vectors").json()["data"]}
    assert {"uploaded", "happy", "library:sentiment-positive"} <= listed


def test_bad_uploads_are_refused(server, tmp_path: Path) -> None:
    url, _, _ = server
    wrong = _vector(3, hidden=48).save(tmp_path / "wide.safetensors")
    response = httpx.post(url + "/v1/vectors", params={"name": "wide"}, content=wrong.read_bytes())
    assert response.status_code == 400 and response.json()["error"]["code"] == "vector_model_mismatch"
    assert "hidden size 32" in response.json()["error"]["message"]
    pickled = tmp_path / "v.pt"
    torch.save({"resid_post.1": torch.zeros(32)}, pickled)
    response = httpx.post(url + "/v1/vectors", params={"name": "pickled"}, content=pickled.read_bytes())
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_vector_file"
    assert "safetensors" in response.json()["error"]["message"]
    response = httpx.post(url + "/v1/vectors", params={"name": "big"}, content=b"\0" * (64 * 1024 + 1))
    assert response.status_code == 413 and "--max-upload-mb" in response.json()["error"]["message"]
    response = httpx.post(url + "/v1/vectors", content=b"x")
    assert response.status_code == 400 and response.json()["error"]["code"] == "missing_name"
    response = httpx.post(url + "/v1/vectors", params={"name": "../etc"}, content=wrong.read_bytes())
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_vector_name"
    names = {v["id"] for v in httpx.get(url + "/v1/vectors").json()["data"]}
    assert not names & {"wide", "pickled", "big", "../etc"}


class SlowEngine(TorchEngine):
    """The tiny model at the pace of a real one (20 ms a step), so a client can leave mid-generation."""

    def _forward(self, cache, **inputs):
        time.sleep(0.02)
        return super()._forward(cache, **inputs)


def test_a_client_that_disconnects_mid_stream_frees_its_row() -> None:
    engine = SlowEngine(tiny_model("llama"), tiny_tokenizer())
    with running_server(create_app(engine, vectors={"happy": _vector(1)}, batch_window_s=0.3)) as url:
        body = {"model": MODEL, "messages": PROMPT, "max_tokens": 64, "temperature": 0, "stream": True,
                "steer": [{"vector": "happy", "multiplier": 1}]}
        other = {**body, "stream": False, "max_tokens": 40, "steer": []}
        with ThreadPoolExecutor(1) as pool, httpx.Client(timeout=60) as http:
            staying = pool.submit(httpx.post, url + "/v1/chat/completions", json=other, timeout=60)
            with http.stream("POST", url + "/v1/chat/completions", json=body) as response:
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        break  # the first event (the assistant role) has come: generation is under way
                # (a random model's bytes rarely form whole characters, so text may only come at the end)
                time.sleep(0.3)
            # here the connection is closed mid-generation
            deadline = time.monotonic() + 30
            while True:
                health = httpx.get(url + "/health").json()
                if health["cancelled_rows"] == 1:
                    break
                assert time.monotonic() < deadline, f"the row was not freed: {health}"
                time.sleep(0.02)
            # the other row of that batch carries on to its end, alone in the batch
            reply = staying.result()
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 40
        health = httpx.get(url + "/health").json()
        assert health["running_rows"] == 0
        assert health["generated_tokens"] < 40 + 64 - 10, f"the disconnected row ran on: {health}"


def test_stop_strings_and_usage_in_the_stream(client) -> None:
    full = client.completions.create(model=MODEL, prompt="the cat sat", max_tokens=12, temperature=0).choices[0].text
    assert len(full) > 3
    stop = full[2:4]
    cut = client.completions.create(model=MODEL, prompt="the cat sat", max_tokens=12, temperature=0, stop=[stop])
    assert cut.choices[0].text == full[: full.index(stop)] and cut.choices[0].finish_reason == "stop"
    chunks = list(client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=5, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage.completion_tokens == 5 and chunks[0].choices[0].delta.role == "assistant"


def test_serve_cli_builds_the_app_and_refuses_bad_vector_flags(tmp_path: Path) -> None:
    from steer.cli.main import build_parser
    from steer.cli.serve_cmd import build_app
    from steer.errors import SteerError

    path = _vector(4).save(tmp_path / "v.safetensors")
    args = build_parser().parse_args(["serve", "--vector", f"mine={path}:2.5"])
    app = build_app(args, tiny_model("llama"), tiny_tokenizer())
    assert app.state.steer.vectors.named["mine"].default_multiplier == 2.5
    for bad in (["--vector", "nofile"], ["--vector", f"x={path}:inf"], ["--vector", f"x={tmp_path / 'none'}"],
                ["--max-batch", "0"]):
        with pytest.raises(SteerError):
            build_app(build_parser().parse_args(["serve", *bad]), tiny_model("llama"), tiny_tokenizer())


@pytest.mark.integration
def test_default_model_with_a_library_vector(smol) -> None:
    """The real default model: openai client, a library vector, streamed equals non-streamed."""
    model, tokenizer = smol
    engine = TorchEngine(model, tokenizer, model_name="smollm2")
    with running_server(create_app(engine)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="-", max_retries=0, timeout=120)
        messages = [{"role": "user", "content": "Describe your day in one sentence."}]
        steer = {"steer": [{"vector": "library:sentiment-negative", "multiplier": 6, "positions": "after_instruction"}]}
        with ThreadPoolExecutor(3) as pool:
            plain, steered, streamed = pool.map(lambda job: job(), [
                lambda: client.chat.completions.create(model="smollm2", messages=messages, max_tokens=16,
                                                       temperature=0).choices[0].message.content,
                lambda: client.chat.completions.create(model="smollm2", messages=messages, max_tokens=16,
                                                       temperature=0, extra_body=steer).choices[0].message.content,
                lambda: "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
                    model="smollm2", messages=messages, max_tokens=16, temperature=0, stream=True, extra_body=steer)
                    if c.choices),
            ])
        assert plain and steered and plain != steered
        assert streamed == steered
        health = json.loads(httpx.get(url + "/health").text)
        assert health["generated_tokens"] > 0
