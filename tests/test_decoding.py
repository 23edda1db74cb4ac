"""DoLa and DeCo: one step against reference computations from `output_hidden_states`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import transformers as T
from tiny import FAMILIES, tiny_tokenizer

from steer.application import steering
from steer.decoding import Deco, DecoHParams, Dola, DolaHParams, decoding, decoding_modes
from steer.decoding.dola import candidate_divergences, candidate_layers, reference_divergence
from steer.decoding.early_exit import EarlyExitHead
from steer.errors import ConfigError, SteerError
from steer.prompts import encode_batch
from steer.sites import Site, SiteMap
from steer.sites.hooks import record

FAMILY_SET = ["llama", "gpt2", "gpt_neox", "gemma2", "gemma3", "qwen2", "phi3"]


def deep_model(family: str = "llama", layers: int = 6, seed: int = 0):
    """A tiny random model with more layers than tests/tiny.py's three (room for buckets)."""
    torch.manual_seed(seed)
    config = FAMILIES[family]()
    config.num_hidden_layers = layers
    if hasattr(config, "layer_types"):  # gemma2/3 list one attention type per layer
        config.layer_types = (list(config.layer_types) * layers)[:layers]
    model = T.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    model.config._name_or_path = f"tiny-{family}"
    return model.eval()


def padded_batch(seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 250, (3, 7), generator=generator)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding
    mask[2, :1] = 0
    ids = ids.masked_fill(mask == 0, 0)
    return {"input_ids": ids, "attention_mask": mask}


def reference_states(model, batch, final_norm: bool = True):
    """(final logits [B, V], early-exit logits {layer: [B, V]}) from output_hidden_states, by hand."""
    sites = SiteMap(model)
    norm, head = sites.module(Site("final_norm")), sites.module(Site("lm_head"))
    if not final_norm:  # HF <= 4.55 reads early layers through the head alone
        norm = torch.nn.Identity()
    cap = getattr(model.config, "final_logit_softcapping", None)
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
        early = {}
        for index, hidden in enumerate(out.hidden_states[:-1]):
            logits = head(norm(hidden[:, -1, :])).float()
            early[index] = torch.tanh(logits / cap) * cap if cap else logits
    return out.logits[:, -1, :].float(), early


def reference_dola(final, early, layers, relative_top=0.1):
    """DoLa written out per row: reference divergence, argmax layer, relative-top mask, contrast."""
    rows, chosen = [], []
    for b in range(final.shape[0]):
        p, log_p = torch.softmax(final[b], -1), torch.log_softmax(final[b], -1)
        divergences = []
        for layer in layers:
            q, log_q = torch.softmax(early[layer][b], -1), torch.log_softmax(early[layer][b], -1)
            m = 0.5 * (p + q)
            # the DoLa reference's KL(M || P), averaged over the vocabulary (0 log 0 = 0)
            kl_mp = (torch.xlogy(m, m) - m * log_p).mean()
            kl_mq = (torch.xlogy(m, m) - m * log_q).mean()
            divergences.append(float(0.5 * (kl_mp + kl_mq)))
        layer = layers[max(range(len(layers)), key=lambda i: divergences[i])] if len(layers) > 1 else layers[0]
        q = torch.softmax(early[layer][b], -1)
        keep = p >= relative_top * p.max()
        # log_softmax, not softmax().log(): tiny premature probabilities underflow otherwise
        contrast = torch.log_softmax(final[b], -1) - torch.log_softmax(early[layer][b], -1)
        rows.append(torch.where(keep, contrast, torch.tensor(-math.inf)))
        chosen.append(layer)
    return torch.stack(rows), chosen


def reference_deco(final, early, layers, alpha=0.6, top_p=0.9, top_k=20):
    """DeCo per row, after the authors' code: top-k then top-p candidates, anchor = argmax prob."""
    rows, anchors = [], []
    for b in range(final.shape[0]):
        probs, ids = torch.softmax(final[b], -1).topk(top_k)
        cumulative = probs.cumsum(-1)
        cut = min(int((cumulative < top_p).sum()) + 1, top_k)
        candidates = ids[:cut]
        best, anchor = -1.0, None
        for layer in layers:
            value = float(torch.softmax(early[layer][b], -1)[candidates].max())
            if value > best:
                best, anchor = value, layer
        corrected = final[b] + alpha * best * early[anchor][b]
        mask = torch.full_like(corrected, -math.inf)
        mask[candidates] = 0
        rows.append(corrected + mask)
        anchors.append(anchor)
    return torch.stack(rows), anchors


@pytest.mark.parametrize("family", FAMILY_SET)
def test_early_exit_of_last_block_equals_model_logits(family: str) -> None:
    model = deep_model(family, layers=3)
    batch = padded_batch()
    last = SiteMap(model).num_layers - 1
    with torch.no_grad(), record(model, [f"resid_post.{last}", "resid_pre.1"]) as rec:
        out = model(**batch, output_hidden_states=True)
    head = EarlyExitHead(SiteMap(model))
    torch.testing.assert_close(head(rec[Site("resid_post", last)].values[0]), out.logits.float(), rtol=1e-4, atol=1e-4)
    # hidden-state index i is the input of block i
    torch.testing.assert_close(rec[Site("resid_pre", 1)].values[0], out.hidden_states[1])


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2"])
def test_dola_step_matches_reference(family: str) -> None:
    model, batch = deep_model(family), padded_batch()
    final, early = reference_states(model, batch)
    layers = [0, 1, 2, 3, 4, 5]
    expected, chosen = reference_dola(final, early, layers)
    with torch.no_grad(), decoding(model, "dola", layers=layers) as trace:
        got = model(**batch).logits
    torch.testing.assert_close(got[:, -1, :], expected, rtol=1e-4, atol=1e-4)
    assert trace.chosen[0].tolist() == chosen
    torch.testing.assert_close(got[:, :-1, :], model(**batch).logits[:, :-1, :].float())  # earlier positions kept


def test_dola_without_final_norm_reads_the_head_alone() -> None:
    model, batch = deep_model(), padded_batch()
    final, early = reference_states(model, batch, final_norm=False)
    expected, chosen = reference_dola(final, early, [1, 2, 3, 4])
    with torch.no_grad(), decoding(model, "dola", layers=[1, 2, 3, 4], early_exit_norm=False) as trace:
        got = model(**batch).logits[:, -1, :]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert trace.chosen[0].tolist() == chosen
    with torch.no_grad(), decoding(model, "dola", layers=[1, 2, 3, 4]):
        assert not torch.allclose(model(**batch).logits[:, -1, :], got)  # the norm does matter
    with pytest.raises(ConfigError, match="true or false"):
        DolaHParams(early_exit_norm="no").validate()  # type: ignore[arg-type]


def test_fast_divergence_equals_the_reference_form() -> None:
    torch.manual_seed(4)
    final, early = torch.randn(3, 5000) * 4, torch.randn(6, 3, 5000) * 4
    early[1, 0, :50] = -300.0  # probabilities that underflow to 0 in both P and M: 0 log 0 = 0
    final[0, :50] = -300.0
    log_q, fast = candidate_divergences(final.log_softmax(-1), early, final.softmax(-1))  # one candidate at a time
    slow = reference_divergence(final, early)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-10)
    assert torch.equal(fast.argmax(0), slow.argmax(0)) and torch.isfinite(fast).all()
    assert torch.equal(log_q, early.log_softmax(-1))  # bit-identical: the chosen layer's contrast uses it
    _, from_log_p = candidate_divergences(final.log_softmax(-1), early)  # P as exp(log P) when not given
    torch.testing.assert_close(from_log_p, slow, rtol=1e-5, atol=1e-10)


def test_static_dola_uses_the_fixed_layer() -> None:
    model, batch = deep_model(), padded_batch()
    final, early = reference_states(model, batch)
    expected, _ = reference_dola(final, early, [2], relative_top=0.2)
    with torch.no_grad(), decoding(model, "dola", premature_layer=2, relative_top=0.2) as trace:
        got = model(**batch).logits[:, -1, :]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert trace.layer_counts() == {2: 3}


@pytest.mark.parametrize("family", ["llama", "gpt_neox", "gemma2"])
def test_deco_step_matches_reference(family: str) -> None:
    model, batch = deep_model(family), padded_batch()
    final, early = reference_states(model, batch)
    expected, anchors = reference_deco(final, early, [2, 3, 4], alpha=0.6, top_p=0.5, top_k=8)
    with torch.no_grad(), decoding(model, "deco", layers=[2, 3, 4], top_p=0.5, top_k=8) as trace:
        got = model(**batch).logits[:, -1, :]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert trace.chosen[0].tolist() == anchors


def test_steps_never_modify_their_inputs() -> None:
    torch.manual_seed(0)
    final, early = torch.randn(2, 50), torch.randn(3, 2, 50)
    for step in (Dola(DolaHParams(layers=[0, 1, 2]), 4, False), Deco(DecoHParams(layers=[0, 1, 2], top_k=5), 4, False)):
        f, e = final.clone(), early.clone()
        out, _ = step(f, e)
        assert torch.equal(f, final) and torch.equal(e, early)
        assert out.data_ptr() != f.data_ptr()


def test_model_logits_are_replaced_not_modified() -> None:
    model, batch = deep_model(), padded_batch()
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    handle = model.register_forward_hook(lambda m, a, out: seen.append((out.logits, out.logits.clone())))
    try:
        with torch.no_grad(), decoding(model, "dola", layers=[1, 3]):
            new = model(**batch).logits
    finally:
        handle.remove()
    original, copy = seen[0]
    assert torch.equal(original, copy) and not torch.equal(new[:, -1], original[:, -1].float())


def _manual_greedy(model, batch, mode_reference, steps: int) -> torch.Tensor:
    """Greedy decoding without a KV cache, each step's logits from the reference functions."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    for _ in range(steps):
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        final, early = reference_states(model, {"input_ids": ids, "attention_mask": mask, "position_ids": positions})
        logits, _ = mode_reference(final, early)
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return ids


@pytest.mark.parametrize("mode", ["dola", "deco"])
def test_generate_with_kv_cache_and_left_padding_matches_step_by_step(mode: str) -> None:
    model, batch = deep_model(), padded_batch()
    if mode == "dola":
        kwargs, ref = {"layers": [0, 2, 4]}, lambda f, e: reference_dola(f, e, [0, 2, 4])
    else:
        kwargs, ref = {"layers": [3, 4, 5], "top_k": 10}, lambda f, e: reference_deco(f, e, [3, 4, 5], top_k=10)
    with torch.no_grad(), decoding(model, mode, **kwargs) as trace:
        out = model.generate(**batch, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert len(trace.chosen) == 5  # one decoded step per forward pass: prefill + 4 cached steps
    assert torch.equal(out, _manual_greedy(model, batch, ref, 5))


@pytest.mark.parametrize("mode", ["dola", "deco"])
def test_sampling_only_draws_plausible_tokens(mode: str) -> None:
    model, batch = deep_model(), padded_batch()
    torch.manual_seed(3)
    # random tiny models are near-uniform: a strict filter makes the DoLa mask visible
    extra = {"relative_top": 0.95} if mode == "dola" else {"top_k": 10}
    with torch.no_grad(), decoding(model, mode, layers=[2, 4], **extra):
        out = model.generate(**batch, max_new_tokens=6, do_sample=True, top_k=0, pad_token_id=0,
                             return_dict_in_generate=True, output_scores=True)
    new = out.sequences[:, batch["input_ids"].shape[1]:]
    for step, scores in enumerate(out.scores):
        assert torch.isfinite(scores.gather(1, new[:, step : step + 1])).all()
        assert torch.isinf(scores).any()  # the filter / candidate mask did act


def test_context_exit_restores_plain_logits() -> None:
    model, batch = deep_model(), padded_batch()
    with torch.no_grad():
        before = model(**batch).logits
        with decoding(model, "deco", layers=[3]):
            model(**batch)
        after = model(**batch).logits
    assert torch.equal(before, after)


def test_composes_with_steering() -> None:
    from steer.vector import SteeringVector, VectorMeta

    model, batch = deep_model(), padded_batch()
    torch.manual_seed(5)
    direction = torch.randn(SiteMap(model).hidden_size) * 4
    # Steer inside block 1 (its MLP output): transformers' own hidden-state capture then
    # reports the steered stream; at a block output it may run before steering's hook.
    vector = SteeringVector({Site("mlp_out", 1): direction}, VectorMeta(model_id="tiny-llama"))
    with torch.no_grad():
        plain, _ = reference_dola(*reference_states(model, batch), [1, 2, 3])
        with steering(model, (vector, 1.0)):
            final, early = reference_states(model, batch)  # steered hidden states, read by hand
            expected, _ = reference_dola(final, early, [1, 2, 3])
            with decoding(model, "dola", layers=[1, 2, 3]):
                got = model(**batch).logits[:, -1, :]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, plain)  # the vector did change the contrast


def test_buckets_follow_hugging_face() -> None:
    assert candidate_layers("high", 30, True) == [15, 17, 19, 21, 23, 25, 27, 29]
    assert candidate_layers("low", 30, True) == [2, 4, 6, 8, 10, 12, 14]
    assert candidate_layers("low", 30, False)[0] == 0
    assert candidate_layers("low", 48, False) == list(range(0, 20, 2))
    assert candidate_layers("high", 48, False) == list(range(28, 48, 2))
    with pytest.raises(SteerError, match="final layer"):
        candidate_layers([3, 30], 30, True)


def test_errors_tell_the_fix() -> None:
    model = deep_model()
    with pytest.raises(SteerError, match="Known: deco, dola"):
        with decoding(model, "dolla"):
            pass
    with pytest.raises(ConfigError, match="Did you mean 'layers'"):
        with decoding(model, "dola", layer=[1]):
            pass
    with pytest.raises(ConfigError, match="low"):
        DolaHParams(layers="middle").validate()
    with pytest.raises(SteerError, match="out of range"):
        with decoding(model, "deco", layers=[6]):
            pass
    assert decoding_modes().names() == ["deco", "dola"]


def test_generate_texts_and_cli_wiring() -> None:
    from steer.cli.common import decoding_overrides_from_args, settings_from_args
    from steer.cli.main import build_parser
    from steer.generation import GenerationSettings, generate_texts

    model, tok = deep_model(), tiny_tokenizer()
    args = build_parser().parse_args(["apply", "--vector", "v.safetensors", "--prompt", "hi", "--decoding", "dola",
                                      "--dola-layers", "1,3", "--decoding-set", "relative_top=0.2"])
    settings = settings_from_args(args)
    assert settings.decoding == "dola" and settings.decoding_overrides == {"relative_top": 0.2, "layers": [1, 3]}
    settings.max_new_tokens, settings.chat_template = 4, False
    texts = generate_texts(model, tok, ["the cat sat", "I love"], settings, progress=False)
    encoded = tok(["the cat sat", "I love"], padding=True, return_tensors="pt", padding_side="left")
    batch = {key: encoded[key] for key in ("input_ids", "attention_mask")}  # older tokenizers add token_type_ids
    with torch.no_grad(), decoding(model, "dola", layers=[1, 3], relative_top=0.2):
        out = model.generate(**batch, max_new_tokens=4, do_sample=False, repetition_penalty=1.2, pad_token_id=0)
    assert texts == [t.strip() for t in tok.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)]
    plain = build_parser().parse_args(["apply", "--vector", "v", "--prompt", "hi", "--dola-layers", "high"])
    with pytest.raises(ConfigError, match="--decoding dola"):
        decoding_overrides_from_args(plain)
    parity = build_parser().parse_args(["apply", "--vector", "v", "--prompt", "hi", "--decoding", "dola",
                                        "--dola-no-final-norm"])
    assert decoding_overrides_from_args(parity) == {"early_exit_norm": False}
    deco = build_parser().parse_args(["apply", "--vector", "v", "--prompt", "hi", "--decoding", "deco",
                                      "--dola-no-final-norm"])
    with pytest.raises(ConfigError, match="--dola-no-final-norm needs --decoding dola"):
        decoding_overrides_from_args(deco)


@pytest.mark.integration
def test_default_model_dola_and_deco_steps(smol) -> None:
    model, tok = smol
    # steer's own left padding: it falls back to EOS where a tokenizer has no pad token (GGUF ones on 4.x)
    batch = encode_batch(tok, ["The capital of France is", "Water boils at a temperature of"], templated=False)
    final, early = reference_states(model, batch)
    with torch.no_grad(), decoding(model, "dola") as trace:  # shipped YAML: the "high" bucket
        got = model(**batch, logits_to_keep=1).logits[:, -1, :]
    expected, chosen = reference_dola(final, early, trace.layers)
    assert trace.layers == [15, 17, 19, 21, 23, 25, 27, 29]
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)
    assert trace.chosen[0].tolist() == chosen
    with torch.no_grad(), decoding(model, "deco") as trace:
        got = model(**batch, logits_to_keep=1).logits[:, -1, :]
    expected, anchors = reference_deco(final, early, trace.layers)
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)


DATA = Path(__file__).parent / "data" / "dola_reference"


def _pinned_generate(model, ids, mask, name, overrides, penalty, new_tokens):
    with torch.inference_mode(), decoding(model, name, **overrides):
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, repetition_penalty=penalty, pad_token_id=0)
    return out[:, ids.shape[1]:].tolist()


@pytest.mark.integration
def test_default_model_tokens_stay_pinned(smol) -> None:
    """DoLa/DeCo tokens on the default model equal those pinned before the speed work (make_pinned.py)."""
    model, _ = smol
    pinned = json.loads((DATA / "steer_pinned.json").read_text())
    ids, mask = torch.tensor(pinned["input_ids"]), torch.tensor(pinned["attention_mask"])
    for key, spec in pinned["modes"].items():
        args = (spec["mode"], spec["overrides"], spec["repetition_penalty"], pinned["new_tokens"])
        assert _pinned_generate(model, ids, mask, *args) == pinned["batch"][key], key
        for row, tokens in list(pinned["single"].get(key, {}).items())[-1:]:  # one batch-1 row per mode: time
            keep = mask[int(row)].bool()
            got = _pinned_generate(model, ids[int(row), keep][None], mask[int(row), keep][None], *args)[0]
            assert got == tokens, (key, row)


@pytest.mark.integration
def test_default_model_matches_transformers_455_dola_without_final_norm(smol) -> None:
    """`early_exit_norm: false` gives exactly the tokens of HF 4.55's generate(dola_layers=...) at batch 1.

    The fixture was produced once by tests/data/dola_reference/make_reference.py under
    transformers 4.55 (see the README there). Plain greedy is compared first: it checks
    that both sides ran the same model on the same input ids.
    """
    model, _ = smol
    ref = json.loads((DATA / "reference_455.json").read_text())
    settings = ref["settings"]
    new = 16  # a prefix of the fixture's 24 tokens (greedy, EOS suppressed): keeps the test under a minute
    for index, row in enumerate(ref["input_ids"][:4]):
        ids = torch.tensor([row])
        mask = torch.ones_like(ids)
        if index == 0:
            with torch.inference_mode():
                out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                                     do_sample=False, pad_token_id=settings["pad_token_id"])
            assert out[0, ids.shape[1]:].tolist() == ref["plain"][index][:new], "plain greedy differs: not the same model"
        for bucket, outputs in ref["dola"].items():
            got = _pinned_generate(model, ids, mask, "dola", {"layers": bucket, "early_exit_norm": False},
                                   settings["repetition_penalty_dola"], new)[0]
            assert got == outputs[index][:new], f"dola {bucket}, prompt {index}: {ref['prompts'][index]!r}"
