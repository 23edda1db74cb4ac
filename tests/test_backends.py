"""Both backends (torch hooks, nnsight) read and steer every tiny family identically.

For each architecture family in tests/tiny.py: activations at every kind of site,
steered greedy generations of a left-padded batch under every position policy with
per-row multipliers (adding, ablating, an input site, LM-Steer), and CAA vectors.
Plus the nnsight backend's errors, which come at the start of a block.
"""

from __future__ import annotations

import threading

import pytest
import torch
from tiny import FAMILIES, tiny_model, tiny_tokenizer

from steer.application import AddVector, Steer, steering
from steer.errors import SteerError
from steer.prompts import encode_batch
from steer.sites import Site, SiteMap
from steer.sites import backend as backends
from steer.sites.backend import TorchBackend, get_backend
from steer.sites.tracking import POSITION_POLICIES
from steer.vector import SteeringVector, VectorMeta

nnsight = pytest.importorskip("nnsight")
from steer.sites.backends.nnsight import NnsightBackend  # noqa: E402  (needs nnsight)

PROMPTS = ["the cat sat", "I love this wonderful happy day"]  # different lengths: left padding
GENERATE = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
READ_SITES = ["embed", "resid_pre.0", "attn_out.1", "mlp_key.1", "mlp_out.2", "resid_post.2", "final_norm", "lm_head"]


def _direction(size: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(size, generator=torch.Generator().manual_seed(seed)) * scale


def _steers(model, policy: str) -> tuple[list, list]:
    """Vectors (add at an output and an input site, ablate), LM-Steer, and a raw mlp_key intervention."""
    from steer.methods.lm_steer import LMSteer

    sites = SiteMap(model)
    hidden = sites.hidden_size
    add = SteeringVector({"resid_post.1": _direction(hidden, 0, 4.0), "resid_pre.0": _direction(hidden, 1, 2.0)})
    ablate = SteeringVector({"attn_out.2": _direction(hidden, 2)}, VectorMeta(extra={"operation": "ablate"}))
    lm_steer = LMSteer(_direction(2 * hidden * 2, 3).view(2, hidden, 2), _direction(2 * hidden * 2, 4).view(2, hidden, 2),
                       epsilon=0.5)
    specs = [Steer(add, [1.5, -2.0], policy), Steer(ablate, [1.0, 0.5], policy), lm_steer.at([2.0, -1.0], policy)]
    inner = sites.module(Site("mlp_key", 1)).in_features if hasattr(sites.module(Site("mlp_key", 1)), "in_features") \
        else sites.module(Site("mlp_key", 1)).weight.shape[0]  # GPT-2's Conv1D stores [in, out]
    key = AddVector(Site("mlp_key", 1), _direction(inner, 5, 3.0), torch.tensor([1.0, -1.0]), policy)
    return specs, [key]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_backends_agree(family: str) -> None:
    model, tok = tiny_model(family), tiny_tokenizer()
    batch = encode_batch(tok, PROMPTS, templated=False)
    plain_before = model.generate(**batch, **GENERATE)
    torch_backend, nn_backend = get_backend("torch"), get_backend("nnsight")

    # activations: the same tensors at every kind of site, with and without the early stop
    expected = torch_backend.read(model, batch, READ_SITES, stop_early=False)
    got = nn_backend.read(model, batch, READ_SITES, tokenizer=tok)
    for site in expected:
        torch.testing.assert_close(got[site], expected[site], rtol=0, atol=0, msg=f"{family} {site}")
    stopped = nn_backend.read(model, batch, ["resid_post.1"], stop_early=True)[Site("resid_post", 1)]
    assert torch.equal(stopped, torch_backend.read(model, batch, ["resid_post.1"])[Site("resid_post", 1)])

    # steered greedy generation: every position policy, per-row multipliers, four kinds of intervention
    for policy in POSITION_POLICIES:
        specs, raw = _steers(model, policy)
        with torch.no_grad(), steering(model, *specs, tokenizer=tok), backends.intervene(model, raw):
            reference = model.generate(**batch, **GENERATE)
        with torch.no_grad(), steering(model, *specs, tokenizer=tok, backend="nnsight"), \
                backends.intervene(model, raw, backend="nnsight", tokenizer=tok):
            steered = backends.generate(model, batch, **GENERATE)
        assert torch.equal(steered, reference), f"{family} {policy}: the backends differ"
        assert not torch.equal(steered, plain_before), f"{family} {policy}: steering changed nothing"

    # wrapping in nnsight leaves the model's own plain generation exactly as it was
    assert torch.equal(model.generate(**batch, **GENERATE), plain_before)


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2"])
def test_every_decoding_step_sees_the_same_activations(family: str) -> None:
    """Not only the tokens: each pass of a left-padded generate, prefill and steps, bitwise.

    On transformers 4.56.2 nnsight's own mask-derived position_ids for a left-padded batch
    were kept by `generate` for every decoding step (each step at the prompt's last
    position); greedy tokens of a tiny model can survive that, activations cannot.
    """
    from steer.sites.hooks import Recorder

    model, tok = tiny_model(family), tiny_tokenizer()
    batch = encode_batch(tok, PROMPTS + ["I"], templated=False)
    passes = {}
    for backend in ("torch", "nnsight"):
        recorder = Recorder(Site("final_norm"))
        with torch.no_grad(), backends.intervene(model, [recorder], backend=backend, tokenizer=tok):
            backends.generate(model, batch, **GENERATE)
        passes[backend] = recorder.values
    assert len(passes["nnsight"]) == len(passes["torch"]) == GENERATE["max_new_tokens"]
    for step, (got, expected) in enumerate(zip(passes["nnsight"], passes["torch"])):
        assert torch.equal(got, expected), f"{family}: pass {step} differs"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_reader_batches_agree_under_every_padding(family: str) -> None:
    """`read_rows` (steering reads: left padding; edit reads: right; statistics: none) on both backends."""
    from steer.sites.backends.nnsight import wrap
    from steer.sites.reader import read_rows

    model, tok = tiny_model(family), tiny_tokenizer()
    wrap(model, tok)
    rows = [tok(text)["input_ids"] for text in PROMPTS + ["the cat"]]
    chunks = [row[:3] for row in rows]  # equal lengths, as the statistics' corpus chunks
    sites = ["mlp_key.1", "resid_post.2", "attn_out.0"]
    for padding, batch_rows in (("left", rows), ("right", rows), ("none", chunks)):
        with torch.no_grad():
            expected = list(read_rows(model, batch_rows, sites, padding=padding, batch_size=2, backend="torch"))
            got = list(read_rows(model, batch_rows, sites, padding=padding, batch_size=2, backend="nnsight"))
        for mine, theirs in zip(got, expected):
            assert mine.indices == theirs.indices and mine.offsets == theirs.offsets
            for site, values in theirs.activations.items():
                assert torch.equal(mine.activations[site], values), f"{family} {padding} {site}"


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_caa_vectors_identical(family: str) -> None:
    from steer.api import make_vector
    from steer.io.datasets import ContrastiveData, TextPair

    model, tok = tiny_model(family), tiny_tokenizer()
    data = ContrastiveData(pairs=[TextPair("Tell me about today.", "I love this day", "I hate this day"),
                                  TextPair("How is the cat?", "the cat is happy", "the cat is sad")])
    overrides = {"layers": [0, 2], "batch_size": 2}
    reference = make_vector(model, tok, "caa", data, overrides=overrides, backend="torch")
    got = make_vector(model, tok, "caa", data, overrides=overrides, backend="nnsight")
    for site, direction in reference.directions.items():
        assert torch.equal(got.directions[site], direction)


def test_plain_generate_inside_an_nnsight_block_is_refused_and_other_contexts_are_untouched() -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer()
    batch = encode_batch(tok, PROMPTS, templated=False)
    plain = model.generate(**batch, **GENERATE)
    vector = SteeringVector({"resid_post.1": _direction(32, 0, 8.0)})
    elsewhere: list[torch.Tensor] = []
    with steering(model, (vector, 2.0), tokenizer=tok, backend="nnsight"):
        with pytest.raises(SteerError, match="backend='nnsight'.*steer.sites.backend.generate"):
            model.generate(**batch, **GENERATE)
        # another thread has no block: its plain generation runs, unsteered
        thread = threading.Thread(target=lambda: elsewhere.append(model.generate(**batch, **GENERATE)))
        thread.start()
        thread.join()
        steered = backends.generate(model, batch, **GENERATE)
    assert torch.equal(elsewhere[0], plain) and not torch.equal(steered, plain)
    assert torch.equal(model.generate(**batch, **GENERATE), plain)  # the guard went with the block
    assert torch.equal(backends.generate(model, batch, **GENERATE), plain)  # no block: plain model.generate


def test_nnsight_errors_come_at_the_start() -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer()
    vector = SteeringVector({"resid_post.1": _direction(32, 0)})
    with pytest.raises(SteerError, match="needs its tokenizer"):
        with steering(model, (vector, 1.0), backend="nnsight"):
            pass
    with pytest.raises(SteerError, match="is a weight"):
        with backends.intervene(model, [AddVector(Site("mlp_down_weight", 0), _direction(32, 0))],
                                backend="nnsight", tokenizer=tok):
            pass
    with pytest.raises(SteerError, match="Unknown backend 'jax'"):
        get_backend("jax")
    with pytest.raises(SteerError, match="only 3 layers"):
        with steering(model, (SteeringVector({"resid_post.9": _direction(32, 0)}), 1.0), tokenizer=tok,
                      backend="nnsight"):
            pass
    assert isinstance(get_backend("nnsight"), NnsightBackend) and isinstance(get_backend(None), TorchBackend)

    class VLLM:  # stands in for nnsight's vLLM model class (vllm needs a GPU)
        trace = interleaver = None

    from steer.sites.backends.nnsight import wrap

    with pytest.raises(SteerError, match="does not steer vLLM models"):
        wrap(VLLM())


def test_attach_with_nnsight_backend_and_per_row_multipliers() -> None:
    import steer

    model, tok = tiny_model("qwen2"), tiny_tokenizer()
    batch = encode_batch(tok, PROMPTS, templated=False)
    vector = SteeringVector({"resid_post.1": _direction(32, 0, 6.0)})
    with steering(model, Steer(vector, [2.0, -3.0], "generated"), tokenizer=tok):
        reference = model.generate(**batch, **GENERATE)
    steerer = steer.attach(model, tok, positions="generated", backend="nnsight")
    steerer.add(vector, 1.0, name="v")
    got = steerer.generate(batch, multipliers_per_row=[2.0, -3.0], **GENERATE)
    steerer.detach()
    assert torch.equal(got, reference)


def test_default_backend_is_used_by_steering_and_the_cli_option() -> None:
    import argparse

    from steer.cli.common import add_model_args
    from steer.sites.backend import default_backend, set_default_backend

    parser = argparse.ArgumentParser()
    add_model_args(parser)  # generate, apply, chat, edit and eval all add these
    assert parser.parse_args(["--backend", "nnsight"]).backend == "nnsight"
    assert parser.parse_args([]).backend == "torch"
    with pytest.raises(SystemExit):
        parser.parse_args(["--backend", "jax"])
    serve_like = argparse.ArgumentParser()
    serve_like.add_argument("--backend", choices=["torch"], default="torch")  # a command's own option wins
    add_model_args(serve_like)
    assert serve_like.parse_args([]).backend == "torch"
    model, tok = tiny_model("gpt2"), tiny_tokenizer()
    batch = encode_batch(tok, PROMPTS, templated=False)
    vector = SteeringVector({"resid_post.0": _direction(32, 0, 6.0)})
    with steering(model, (vector, 1.0)):
        reference = model.generate(**batch, **GENERATE)
    set_default_backend(model, "nnsight")
    assert default_backend(model).name == "nnsight"
    with steering(model, (vector, 1.0), tokenizer=tok):  # no backend named: the model's default
        with pytest.raises(SteerError, match="backend='nnsight'"):
            model.generate(**batch, **GENERATE)
        assert torch.equal(backends.generate(model, batch, **GENERATE), reference)


def test_nnsight_blocks_are_local_to_their_thread() -> None:
    model, tok = tiny_model("mistral"), tiny_tokenizer()
    batch = encode_batch(tok, PROMPTS, templated=False)
    vector = SteeringVector({"resid_post.1": _direction(32, 0, 6.0)})
    expected = {}
    for multiplier in (2.0, -2.0):
        with steering(model, (vector, multiplier)):
            expected[multiplier] = model.generate(**batch, **GENERATE)
    got: dict[float, torch.Tensor] = {}
    failures: list[BaseException] = []

    def work(multiplier: float) -> None:
        try:
            with steering(model, (vector, multiplier), tokenizer=tok, backend="nnsight"):
                for _ in range(2):
                    got[multiplier] = backends.generate(model, batch, **GENERATE)
        except BaseException as exc:  # reported below, in the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(m,)) for m in expected]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures
    assert all(torch.equal(got[m], expected[m]) for m in expected)


def test_eval_scoring_passes_follow_the_models_backend() -> None:
    """`steer eval --backend nnsight`: A/B and corpus perplexity score through nnsight, identically."""
    from steer.evaluate.ab import ab_scores
    from steer.evaluate.perplexity import corpus_perplexity
    from steer.io.datasets import ABItem
    from steer.sites.backend import set_default_backend

    tok = tiny_tokenizer()
    items = [ABItem("Is the cat happy?\n(A) yes\n(B) no", "(A)", "(B)"),
             ABItem("Is the day bad?\n(A) yes\n(B) no", "(B)", "(A)")]
    vector = SteeringVector({"resid_post.1": _direction(32, 0, 6.0)})
    text = "the cat sat on the mat and the dog ran in the park. " * 3
    results = {}
    for backend in ("torch", "nnsight"):
        model = tiny_model("llama")
        if backend == "nnsight":
            set_default_backend(model, backend)
            from steer.sites.backends.nnsight import wrap

            wrap(model, tok)  # what `steer eval --backend nnsight` does at load
        scores = ab_scores(model, tok, items, steers=[Steer(vector, 2.0)], progress=False)
        with steering(model, (vector, 2.0), tokenizer=tok):
            ppl = corpus_perplexity(model, tok, text, window=16, stride=8)
        results[backend] = (scores, ppl)
    assert results["torch"] == results["nnsight"]
