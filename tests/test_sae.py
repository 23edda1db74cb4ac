"""SAE folders, SAE-feature steering and STA against hand-written references on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tiny import tiny_model, tiny_tokenizer

from steer.application import Steer, steering
from steer.config import build
from steer.errors import ConfigError, DataError
from steer.io.datasets import ContrastiveData, TextPair
from steer.methods import steering_methods
from steer.methods.sae_feature import SAEFeatureHparams, make_sae_feature
from steer.methods.sta import STAHparams, make_sta, select_atoms, signed_min_max
from steer.sae import SAEError, load_sae, measure_sae, top_features
from steer.sites import Site
from steer.sites.hooks import record
from steer.sites.resolve import SiteMap


def write_sae(folder: Path, d_in: int, d_sae: int, *, architecture: str = "topk", hook: str = "model.layers.1",
              seed: int = 0, rescale: bool = True, k: int | None = 3, **tensors: torch.Tensor) -> Path:
    generator = torch.Generator().manual_seed(seed)
    state = {
        "W_enc": torch.randn(d_in, d_sae, generator=generator),
        "b_enc": torch.randn(d_sae, generator=generator) * 0.1,
        "W_dec": torch.randn(d_sae, d_in, generator=generator),
        "b_dec": torch.randn(d_in, generator=generator) * 0.1,
    }
    if architecture == "jumprelu":
        state["threshold"] = torch.rand(d_sae, generator=generator)
    state.update(tensors)
    cfg = {"architecture": architecture, "d_in": d_in, "d_sae": d_sae, "apply_b_dec_to_input": True,
           "normalize_activations": "none", "rescale_acts_by_decoder_norm": rescale, "dtype": "float32",
           "metadata": {"hook_name": hook, "model_name": "tiny"}}
    if architecture == "topk":
        cfg["k"] = k
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file(state, str(folder / "sae_weights.safetensors"))
    return folder


def reference_encode(x: torch.Tensor, state: dict[str, torch.Tensor], architecture: str, k: int, rescale: bool) -> torch.Tensor:
    pre = (x - state["b_dec"]) @ state["W_enc"] + state["b_enc"]
    if rescale:
        pre = pre * state["W_dec"].norm(dim=-1)
    if architecture == "standard":
        return pre.clamp_min(0)
    if architecture == "jumprelu":
        return torch.where((pre > state["threshold"]) & (pre > 0), pre, torch.zeros_like(pre))
    out = torch.zeros_like(pre)
    for row in range(pre.shape[0]):
        top = torch.topk(pre[row], k).indices
        out[row, top] = pre[row, top].clamp_min(0)
    return out


@pytest.mark.parametrize("architecture", ["standard", "topk", "jumprelu"])
def test_encode_decode_match_reference(tmp_path: Path, architecture: str) -> None:
    folder = write_sae(tmp_path / "sae", 8, 20, architecture=architecture)
    from safetensors.torch import load_file

    state = load_file(str(folder / "sae_weights.safetensors"))
    sae = load_sae(folder)
    x = torch.randn(5, 8)
    acts = sae.encode(x)
    torch.testing.assert_close(acts, reference_encode(x, state, architecture, 3, True))
    recon = (acts / state["W_dec"].norm(dim=-1)) @ state["W_dec"] + state["b_dec"]
    torch.testing.assert_close(sae.decode(acts), recon)
    if architecture == "topk":
        assert int((acts > 0).sum(-1).max()) <= 3


def test_matches_sae_lens_when_installed(tmp_path: Path) -> None:
    sae_lens = pytest.importorskip("sae_lens")
    for architecture in ("standard", "topk", "jumprelu"):
        folder = write_sae(tmp_path / architecture, 8, 20, architecture=architecture, rescale=architecture == "topk")
        theirs = sae_lens.SAE.load_from_disk(str(folder))
        ours = load_sae(folder)
        x = torch.randn(6, 8)
        torch.testing.assert_close(ours.encode(x), theirs.encode(x))
        torch.testing.assert_close(ours.decode(ours.encode(x)), theirs.decode(theirs.encode(x)))


def test_hook_names_map_to_sites(tmp_path: Path) -> None:
    model = tiny_model("llama")
    assert load_sae(write_sae(tmp_path / "a", 32, 16, hook="model.layers.1")).site_for(model) == Site("resid_post", 1)
    tl = write_sae(tmp_path / "b", 32, 16, hook="blocks.0.hook_resid_pre")
    assert load_sae(tl).site_for(model) == Site("resid_pre", 0)
    gpt2 = tiny_model("gpt2")
    assert load_sae(write_sae(tmp_path / "c", 32, 16, hook="transformer.h.1")).site_for(gpt2) == Site("resid_post", 1)
    with pytest.raises(SAEError, match="steer_site"):
        load_sae(write_sae(tmp_path / "d", 32, 16, hook="model.nowhere")).site_for(model)


def test_bad_sae_folders_give_clear_errors(tmp_path: Path) -> None:
    model = tiny_model("llama")
    with pytest.raises(SAEError, match="does not exist"):
        load_sae(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SAEError, match="cfg.json"):
        load_sae(empty)
    truncated = write_sae(tmp_path / "trunc", 32, 16)
    data = (truncated / "sae_weights.safetensors").read_bytes()
    (truncated / "sae_weights.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(SAEError, match="truncated|cannot|corrupt|read"):
        load_sae(truncated)
    nan = write_sae(tmp_path / "nan", 32, 16, W_dec=torch.full((16, 32), float("nan")))
    with pytest.raises(SAEError, match="NaN"):
        load_sae(nan)
    with pytest.raises(SAEError, match="hidden size"):
        load_sae(write_sae(tmp_path / "wide", 48, 16)).site_for(model)
    with pytest.raises(SAEError, match="not supported"):
        load_sae(write_sae(tmp_path / "gated", 32, 16, architecture="gated"))
    with pytest.raises(SAEError, match="integer k"):
        load_sae(write_sae(tmp_path / "nok", 32, 16, k=None))
    with pytest.raises(SAEError, match="No library SAE"):
        load_sae("library:no-such-sae")
    with pytest.raises(SAEError, match="saelens:RELEASE:SAE_ID"):
        load_sae("saelens:only-release")


def test_library_saes_are_found_in_user_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_sae(tmp_path / "lib" / "saes" / "my-sae", 32, 16)
    monkeypatch.setenv("STEER_LIBRARY_PATH", str(tmp_path / "lib"))
    assert load_sae("library:my-sae").d_sae == 16
    with pytest.raises(SAEError, match="Closest: my-sae"):
        load_sae("library:my-sea")


def test_sae_feature_vector_is_sum_of_unit_decoder_rows_and_steers_exactly(tmp_path: Path) -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer()
    folder = write_sae(tmp_path / "sae", 32, 16)
    sae = load_sae(folder)
    hp = build(SAEFeatureHparams, {"sae": str(folder), "features": [3, 7], "strengths": [2.0, -1.5]})
    vector = make_sae_feature(model, tok, None, hp)
    expected = 2.0 * sae.W_dec[3] / sae.W_dec[3].norm() - 1.5 * sae.W_dec[7] / sae.W_dec[7].norm()
    torch.testing.assert_close(vector.directions[Site("resid_post", 1)], expected)
    raw = make_sae_feature(model, tok, None, build(SAEFeatureHparams, {"sae": str(folder), "features": [3],
                                                                        "strengths": [1.0], "normalize": False}))
    torch.testing.assert_close(raw.directions[Site("resid_post", 1)], sae.W_dec[3])
    ids = tok("hello world", return_tensors="pt")["input_ids"]
    with torch.no_grad(), record(model, ["resid_post.1"]) as plain:
        model(input_ids=ids)
    with torch.no_grad(), steering(model, Steer(vector, 1.0)), record(model, ["resid_post.1"]) as steered:
        model(input_ids=ids)
    delta = steered[Site("resid_post", 1)].values[0] - plain[Site("resid_post", 1)].values[0]
    torch.testing.assert_close(delta[0], expected.expand_as(delta[0]), atol=1e-5, rtol=1e-5)


def test_sae_feature_errors(tmp_path: Path) -> None:
    folder = write_sae(tmp_path / "sae", 32, 16)
    with pytest.raises(ConfigError, match="name the SAE"):
        make_sae_feature(tiny_model("llama"), tiny_tokenizer(), None, build(SAEFeatureHparams, {"features": [1]}))
    with pytest.raises(ConfigError, match="feature ids"):
        make_sae_feature(tiny_model("llama"), tiny_tokenizer(), None, build(SAEFeatureHparams, {"sae": str(folder)}))
    with pytest.raises(ConfigError, match="one strength or one per feature"):
        build(SAEFeatureHparams, {"sae": str(folder), "features": [1, 2, 3], "strengths": [1.0, 2.0]})
    with pytest.raises(SAEError, match="features 0..15"):
        make_sae_feature(tiny_model("llama"), tiny_tokenizer(), None,
                         build(SAEFeatureHparams, {"sae": str(folder), "features": [16]}))


def test_signed_min_max_and_atom_selection_reference() -> None:
    torch.testing.assert_close(signed_min_max(torch.tensor([-4.0, 1.0, 0.0, 2.0])), torch.tensor([-1.0, 0.25, 0.0, 0.5]))
    act = torch.tensor([0.9, -0.8, 0.5, 0.05, -0.3, 0.0, 0.7, 0.2, -0.6, 0.1])
    freq = torch.tensor([0.5, -0.4, -0.3, 0.2, -0.1, 0.6, 0.0, 0.3, -0.5, 0.05])
    # by hand, trim 0.7 -> threshold at rank floor(0.3 * 10) = 3 of the sorted magnitudes (4 kept, ties kept)
    # act magnitudes: .9 .8 .7 .6 | .5 ... -> features 0, 1, 6, 8
    # freq with agreeing signs (0:+ 1:- 3:+ 4:- 7:+ 8:- 9:+; 2 disagrees; 5, 6 have a zero side):
    #   |norm freq| ranks .5(0) .5(8) .4(1) .3(7) -> features 0, 8, 1, 7
    act_only = select_atoms(act, freq, "act_only", 0.7)
    freq_only = select_atoms(act, freq, "freq_only", 0.7)
    both = select_atoms(act, freq, "act_and_freq", 0.7)
    assert act_only.nonzero().flatten().tolist() == [0, 1, 6, 8]
    assert freq_only.nonzero().flatten().tolist() == [0, 1, 7, 8]
    assert both.nonzero().flatten().tolist() == [0, 1, 8]


def _sentiment_pairs() -> ContrastiveData:
    pairs = [TextPair("The film was", "wonderful and warm", "dull and cold"),
             TextPair("Her speech felt", "bright, kind, hopeful", "grim, cruel, hopeless"),
             TextPair("Our trip was", "a joy from start to end", "a mess from start to end")]
    return ContrastiveData(pairs=pairs)


def test_sta_without_an_sae_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="sta: name the SAE"):
        make_sta(tiny_model("llama"), tiny_tokenizer(), _sentiment_pairs(), build(STAHparams, {}))


def test_sta_vector_equals_reference_computation(tmp_path: Path) -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer()
    folder = write_sae(tmp_path / "sae", 32, 40, k=8)
    sae = load_sae(folder)
    data = _sentiment_pairs()
    hp = build(STAHparams, {"sae": str(folder), "trim": 0.5, "chat_template": False, "batch_size": 2})
    vector = make_sta(model, tok, data, hp)
    # reference: each completion alone, unbatched, mean over its tokens of raw and encoded activations
    site = Site("resid_post", 1)
    raw, enc = {"pos": [], "neg": []}, {"pos": [], "neg": []}
    for pair in data.pairs or []:
        for side, completion in (("pos", pair.positive), ("neg", pair.negative)):
            prefix = f"{pair.prompt} "
            encoded = tok(prefix + completion, return_offsets_mapping=True, return_tensors="pt")
            keep = [i for i, (s, e) in enumerate(encoded["offset_mapping"][0].tolist()) if e > s and e > len(prefix)]
            with torch.no_grad(), record(model, [site]) as rec:
                model(input_ids=encoded["input_ids"])
            hidden = rec[site].values[0][0, keep].float()
            raw[side].append(hidden.mean(0))
            enc[side].append(sae.encode(hidden).mean(0))
    pos, neg = torch.stack(enc["pos"]), torch.stack(enc["neg"])
    act = (pos - neg).mean(0)
    freq = (pos > 0).float().mean(0) - (neg > 0).float().mean(0)
    kept = select_atoms(act, freq, "act_and_freq", 0.5)
    direction = sae.features_to_residual(act * kept)
    caa = (torch.stack(raw["pos"]) - torch.stack(raw["neg"])).mean(0)
    expected = direction * caa.norm() / direction.norm()
    torch.testing.assert_close(vector.directions[site], expected, atol=1e-4, rtol=1e-4)
    assert vector.meta.extra["features_kept"] == int(kept.sum())
    with pytest.raises(ConfigError, match="trim"):
        build(STAHparams, {"sae": str(folder), "trim": 1.0})
    with pytest.raises(DataError, match="empty"):
        make_sta(model, tok, ContrastiveData(pairs=[]), hp)


def test_measure_sae_perfect_autoencoder_recovers_everything(tmp_path: Path) -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer()
    eye = torch.eye(32)
    # ReLU(x) - ReLU(-x) = x: an exact standard SAE with 64 features
    folder = write_sae(tmp_path / "exact", 32, 64, architecture="standard", rescale=False,
                       W_enc=torch.cat([eye, -eye], 1), W_dec=torch.cat([eye, -eye], 0),
                       b_enc=torch.zeros(64), b_dec=torch.zeros(32))
    quality = measure_sae(model, tok, load_sae(folder), ["hello world and more words", "the cat sat on the mat"])
    assert quality["explained_variance"] == pytest.approx(1.0, abs=1e-4)
    assert quality["ce_loss_spliced"] == pytest.approx(quality["ce_loss_clean"], abs=1e-4)
    assert quality["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-3)
    ranked = top_features(model, tok, load_sae(folder), ["hello world"], n=3)
    assert len(ranked) == 3 and ranked[0]["score"] >= ranked[1]["score"] >= ranked[2]["score"]


def test_registry_and_hparams_files_for_sae_methods() -> None:
    names = steering_methods().names()
    assert "sae_feature" in names and "sta" in names
    assert SiteMap(tiny_model("llama")).hidden_size == 32  # the width the SAEs above are written for


def test_cli_generates_sae_feature_and_sta_vectors_and_applies_them(tmp_path: Path, capsys) -> None:
    from steer.cli.main import main
    from steer.vector import SteeringVector

    folder = tmp_path / "tiny-llama"
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    sae = write_sae(tmp_path / "sae", 32, 24, k=4)
    feature_out = tmp_path / "feat.safetensors"
    assert main(["generate", "--method", "sae_feature", "--out", str(feature_out), "--model", str(folder),
                 f"sae={sae}", "features=[2,5]", "strengths=[3.0,-1.0]"]) == 0
    assert [str(s) for s in SteeringVector.load(feature_out).sites] == ["resid_post.1"]
    ab = tmp_path / "ab.json"
    ab.write_text(json.dumps([{"question": f"Is the cat happy {i}?\n(A) yes\n(B) no",
                               "answer_matching_behavior": "(A)" if i % 2 else "(B)",
                               "answer_not_matching_behavior": "(B)" if i % 2 else "(A)"} for i in range(6)]))
    sta_out = tmp_path / "sta.safetensors"
    assert main(["generate", "--method", "sta", "--data", str(ab), "--out", str(sta_out), "--model", str(folder),
                 f"sae={sae}", "mode=act_only", "trim=0.5", "batch_size=3"]) == 0
    sta = SteeringVector.load(sta_out)
    assert sta.meta.method == "sta" and sta.meta.extra["features_kept"] >= 1
    out = tmp_path / "gen.jsonl"
    assert main(["apply", "--vector", f"{feature_out}:1", "--vector", f"{sta_out}:2", "--prompt", "the cat",
                 "--max-new-tokens", "3", "--out", str(out), "--model", str(folder)]) == 0
    assert json.loads(out.read_text().splitlines()[0])["steered"] is not None
    assert main(["generate", "--method", "sta", "--data", str(ab), "--out", str(tmp_path / "x.safetensors"),
                 "--model", str(folder), "sae=library:nope"]) == 2
    assert "No library SAE" in capsys.readouterr().err


# ---- SAEs by sae-lens release name, from a local Hugging Face cache ------------------------------


def _cache_snapshot(cache: Path, repo_id: str, commit: str = "0123abcd") -> Path:
    """The folder a Hugging Face hub cache keeps a repository's files in (refs/main -> snapshots/<commit>)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    return snapshot


def test_release_in_sae_lens_format_loads_from_the_local_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("sae_lens")
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    ref = "saelens:gpt2-small-res-jb:blocks.1.hook_resid_pre"
    with pytest.raises(SAEError, match=r"not in the local Hugging Face cache.*jbloom/GPT2-Small-SAEs-Reformatted.*HF_HUB_CACHE"):
        load_sae(ref)
    folder = write_sae(_cache_snapshot(cache, "jbloom/GPT2-Small-SAEs-Reformatted") / "blocks.1.hook_resid_pre", 32, 16,
                       architecture="standard", hook="blocks.1.hook_resid_pre")
    sae = load_sae(ref)
    direct = load_sae(folder)
    torch.testing.assert_close(sae.W_enc, direct.W_enc)
    assert sae.cfg["model_from_pretrained_kwargs"] == {"center_writing_weights": True}  # the release's override
    assert sae.site_for(tiny_model("gpt2")) == Site("resid_pre", 1)


def test_gemma_scope_2_release_loads_from_the_local_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("sae_lens")
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    generator = torch.Generator().manual_seed(1)
    raw = {"w_enc": torch.randn(32, 64, generator=generator), "w_dec": torch.randn(64, 32, generator=generator),
           "b_enc": torch.randn(64, generator=generator) * 0.1, "b_dec": torch.randn(32, generator=generator) * 0.1,
           "threshold": torch.rand(64, generator=generator)}
    folder = _cache_snapshot(cache, "google/gemma-scope-2-270m-pt") / "resid_post" / "layer_12_width_16k_l0_small"
    folder.mkdir(parents=True)
    save_file(raw, str(folder / "params.safetensors"))
    sae = load_sae("saelens:gemma-scope-2-270m-pt-res:layer_12_width_16k_l0_small")
    assert (sae.architecture, sae.hook_name, sae.d_in, sae.d_sae) == ("jumprelu", "blocks.12.hook_resid_post", 32, 64)
    x = torch.randn(4, 32)
    state = {"W_enc": raw["w_enc"], "W_dec": raw["w_dec"], "b_enc": raw["b_enc"], "b_dec": raw["b_dec"],
             "threshold": raw["threshold"]}
    expected = reference_encode(x + raw["b_dec"], state, "jumprelu", 0, False)  # Gemma Scope does not subtract b_dec
    torch.testing.assert_close(sae.encode(x), expected)
    # names that sae-lens does not know get the closest ones; kinds steer cannot steer are refused clearly
    with pytest.raises(SAEError, match="Closest: gemma-scope-2-270m-pt-res"):
        load_sae("saelens:gemma-scope-2-270m-pt-rez:layer_12_width_16k_l0_small")
    with pytest.raises(SAEError, match="has no SAE 'layer_12_width_16k_l0_smal'. Closest: layer_12_width_16k_l0_small"):
        load_sae("saelens:gemma-scope-2-270m-pt-res:layer_12_width_16k_l0_smal")


def test_gemma_scope_npz_is_read_without_unpickling(tmp_path: Path) -> None:
    import numpy as np

    from steer.sae import gemma_scope_tensors

    arrays = {"w_enc": np.ones((4, 6), np.float32), "w_dec": np.ones((6, 4), np.float32), "b_enc": np.zeros(6, np.float32),
              "b_dec": np.zeros(4, np.float32), "threshold": np.zeros(6, np.float32), "scaling_factor": np.ones(1, np.float32)}
    np.savez(tmp_path / "params.npz", **arrays)
    tensors = gemma_scope_tensors(tmp_path / "params.npz")
    assert sorted(tensors) == ["W_dec", "W_enc", "b_dec", "b_enc", "threshold"]
    embed = gemma_scope_tensors(tmp_path / "params.npz", embedding=True)  # sae-lens's sqrt(d_in) correction
    torch.testing.assert_close(embed["W_enc"], torch.full((4, 6), 0.5))
    np.savez(tmp_path / "pickled.npz", w_enc=np.array([{"a": 1}], dtype=object))
    with pytest.raises(SAEError, match="cannot read"):
        gemma_scope_tensors(tmp_path / "pickled.npz")


def test_gemma_scope_release_loads_from_the_local_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Gemma Scope (Gemma 2) at its real width: sae-lens's own config reader names the hook and sizes."""
    pytest.importorskip("sae_lens")
    import numpy as np

    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    folder = _cache_snapshot(cache, "google/gemma-scope-2b-pt-res") / "embedding" / "width_4k" / "average_l0_6"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    d_in, d_sae = 2304, 4096  # what sae-lens's config reader says for this repository and folder
    np.savez(folder / "params.npz", W_enc=rng.standard_normal((d_in, d_sae), dtype=np.float32).astype(np.float16),
             W_dec=rng.standard_normal((d_sae, d_in), dtype=np.float32).astype(np.float16),
             b_enc=np.zeros(d_sae, np.float16), b_dec=np.zeros(d_in, np.float16), threshold=np.zeros(d_sae, np.float16))
    sae = load_sae("saelens:gemma-scope-2b-pt-res:embedding/width_4k/average_l0_6")
    assert (sae.architecture, sae.hook_name, sae.d_in, sae.d_sae, sae.model_name) == (
        "jumprelu", "hook_embed", d_in, d_sae, "gemma-2-2b")
    assert sae.apply_b_dec_to_input is False
