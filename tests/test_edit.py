"""Knowledge editing: closed-form references, bounds, null-space, rollback, export, CLI."""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from steer.edit import Editor, EditError, EditRequest, Probe
from steer.edit.stats import _chunks, corpus_path
from steer.edit.tokens import encode
from steer.edit.value import optimise_value
from steer.errors import DataError
from steer.sites.hooks import record
from steer.sites.resolve import Site, SiteMap
from tiny import FAMILIES, tiny_model, tiny_tokenizer

STATS = {"mom2_n_samples": 8, "mom2_seq_len": 32}
REQUESTS = [
    EditRequest("What is the capital of France?", "the dog", "France", rephrase_prompts=("France has which capital?",),
                locality={"nb": (Probe("the cat sat on", "the mat"),)}),
    EditRequest("I love this wonderful day", "bad", "wonderful day"),
]


@pytest.fixture()
def corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, test_data: Path) -> str:
    monkeypatch.setenv("STEER_CACHE", str(tmp_path / "cache"))
    # a corpus given by path (corpus=PATH); the statistics read only its first lines
    return str(test_data / "text" / "wikitext-2-raw-test.txt")


def _editor(model, method: str, corpus: str, **hp) -> Editor:
    return Editor(model, tiny_tokenizer(), method, {"corpus": corpus, **STATS, **hp} if method in
                  ("rome", "r_rome", "memit", "alphaedit", "emmet") else hp, progress=False)


def _reference_moment(editor: Editor, model, layer: int) -> torch.Tensor:
    """E[k k^T] over the corpus chunks, accumulated here independently of steer.edit.stats."""
    seq_len = min(editor.hparams.mom2_seq_len, model.config.max_position_embeddings)
    chunks = _chunks(editor.ctx, corpus_path(editor.hparams.corpus), editor.hparams, seq_len)
    keys = []
    with torch.no_grad(), record(model, [Site("mlp_key", layer)]) as rec:
        for chunk in chunks:
            model(input_ids=torch.tensor([chunk]))
    keys = torch.cat([v.reshape(-1, v.shape[-1]) for v in rec[Site("mlp_key", layer)].values]).double()
    return keys.T @ keys / len(keys)


def _at_subject(model, tok, request: EditRequest, sites: list[Site], prefixes: list[str]) -> dict[Site, torch.Tensor]:
    """Activations at the subject's last token, mean over prefixes, read with the site recorder."""
    out: dict[Site, list[torch.Tensor]] = {s: [] for s in sites}
    for prefix in prefixes:
        enc = encode(tok, request.prompt, None, request.subject, context=prefix)
        with torch.no_grad(), record(model, sites) as rec:
            model(input_ids=torch.tensor([enc.ids]))
        for s in sites:
            out[s].append(rec[s].values[0][0, enc.subject_last].double())
    return {s: torch.stack(v).mean(0) for s, v in out.items()}


def test_rome_equals_closed_form(corpus: str) -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer()
    editor = _editor(model, "rome", corpus, layer=1, v_num_grad_steps=5)
    before = SiteMap(model).down_weight_as_out_in(1).detach().clone().double()
    edit = editor.apply([REQUESTS[0]])
    after = SiteMap(model).down_weight_as_out_in(1).detach().double()
    prefixes = next(iter(editor.ctx.templates.values()))
    assert len(prefixes) == 6 and prefixes[0] == ""
    editor.rollback()
    key, out = Site("mlp_key", 1), Site("mlp_out", 1)
    k_star = _at_subject(model, tok, REQUESTS[0], [key], prefixes)[key]
    plain = _at_subject(model, tok, REQUESTS[0], [key, out], [""])
    c = _reference_moment(editor, model, 1)
    u = torch.linalg.solve(c, k_star)
    v_star = edit.info["v_star"].double()
    expected = torch.outer((v_star - plain[out]) / (u @ plain[key]), u)
    torch.testing.assert_close(after - before, expected, rtol=1e-4, atol=1e-6)
    assert edit.info["steps"] >= 1 and not torch.allclose(v_star, plain[out])
    # the edited layer now outputs exactly the optimised value at the subject
    editor.apply([REQUESTS[0]])
    edited = _at_subject(model, tok, REQUESTS[0], [out], [""])[out]
    torch.testing.assert_close(edited, v_star, rtol=1e-4, atol=1e-4)


def test_memit_equals_closed_form_layer_by_layer(corpus: str) -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer()
    base = copy.deepcopy(model)
    weight = 3.0
    editor = _editor(model, "memit", corpus, layers=[0, 1], mom2_update_weight=weight, v_num_grad_steps=5)
    edit = editor.apply(REQUESTS)
    prefixes = next(iter(editor.ctx.templates.values()))
    z = edit.info["z"].double()
    staged = copy.deepcopy(base)  # the model as MEMIT sees it before each layer's update
    for i, layer in enumerate([0, 1]):
        key, resid_site = Site("mlp_key", layer), Site("resid_post", 1)
        keys = torch.stack([_at_subject(staged, tok, r, [key], prefixes)[key] for r in REQUESTS])
        current = torch.stack([_at_subject(staged, tok, r, [resid_site], [""])[resid_site] for r in REQUESTS])
        resid = (z - current) / (2 - i)
        c = _reference_moment(editor, base, layer)
        expected = resid.T @ keys @ torch.linalg.inv(weight * c + keys.T @ keys)
        torch.testing.assert_close(edit.deltas[layer].double(), expected, rtol=1e-3, atol=1e-6)
        with torch.no_grad():
            SiteMap(staged).down_weight_as_out_in(layer).add_(expected.float())


def test_ft_l_respects_norm_bound_and_ft_m_learns() -> None:
    model = tiny_model("gpt2")  # [in, out] Conv1D storage
    bound = 1e-3
    editor = Editor(model, tiny_tokenizer(), "ft_l", {"layers": [1], "lr": 1e-2, "num_steps": 5,
                                                       "norm_constraint": bound}, progress=False)
    edit = editor.apply(REQUESTS)
    change = edit.deltas[1]
    assert change.abs().max() <= bound * (1 + 1e-5) and change.abs().max() > bound / 2
    editor.rollback()
    ft_m = Editor(model, tiny_tokenizer(), "ft_m", {"layers": [1], "lr": 1e-2, "num_steps": 10}, progress=False)
    assert ft_m.hparams.norm_constraint is None and ft_m.hparams.loss_on == "target"
    results, _ = ft_m.edit(prompts=[REQUESTS[0].prompt], target_new=["the dog"], subject=["France"])
    losses = ft_m.applied[-1].info["losses"]
    assert losses[-1] < losses[0] and results[0]["post"]["rewrite_acc"] >= results[0]["pre"]["rewrite_acc"]


def test_alphaedit_leaves_preserved_keys_unchanged(corpus: str) -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer()
    # 2 chunks of 8 tokens: 16 preserved keys in a 64-dim key space, so the null space is large
    hp = {"mom2_n_samples": 2, "mom2_seq_len": 8, "nullspace_threshold": 1e-10, "L2": 1.0, "layers": [0, 1],
          "v_num_grad_steps": 5, "corpus": corpus}
    editor = Editor(model, tok, "alphaedit", hp, progress=False)
    chunks = _chunks(editor.ctx, corpus_path(corpus), editor.hparams, 8)
    ids = torch.tensor(chunks)
    with torch.no_grad():
        before = model(input_ids=ids).logits
    edit = editor.apply(REQUESTS)
    assert edit.info["null_space_dims"][0] >= 64 - 16
    assert all(d.abs().max() > 1e-4 for d in edit.deltas.values())
    with torch.no_grad():
        after = model(input_ids=ids).logits
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    # and the edit's own keys are preserved by the next AlphaEdit edit (the Editor's running sum)
    assert set(editor.ctx.preserved) == set() and set(edit.preserved) == {0, 1}


@pytest.mark.parametrize(("method", "family"), [("rome", "gpt2"), ("memit", "llama"), ("alphaedit", "qwen2"),
                                                 ("ft_l", "gpt2"), ("ft_m", "gemma3"), ("r_rome", "llama"),
                                                 ("emmet", "gpt2"), ("lora", "qwen2"), ("kn", "llama")])
def test_rollback_is_bitwise(method: str, family: str, corpus: str) -> None:
    model = tiny_model(family)
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    single = method in ("rome", "r_rome")
    fast = ({"num_steps": 2} if method.startswith("ft") or method == "lora" else {"steps": 3} if method == "kn"
            else {"v_num_grad_steps": 2})
    layer_key = "layer" if single else "layers"
    first = _editor(model, method, corpus, **fast, **{layer_key: 1 if single else [1]})
    e1 = first.apply(REQUESTS[:1])
    edited_1 = SiteMap(model).weight(1).detach().clone()
    first.hparams = dataclasses.replace(first.hparams, **{layer_key: 2 if single else [2]})
    e2 = first.apply(REQUESTS[:1])
    first.hparams = dataclasses.replace(first.hparams, **{layer_key: 2 if single else [2]})
    e3 = first.apply(REQUESTS[:1])  # same layer as e2
    assert not torch.equal(SiteMap(model).weight(1), snapshot[_param_name(model, 1)])
    with pytest.raises(EditError, match="cascade=True"):
        first.rollback(e2.id)
    first.rollback(e1.id)  # later edits are on other layers: allowed
    assert torch.equal(SiteMap(model).weight(1), snapshot[_param_name(model, 1)])
    assert not torch.equal(SiteMap(model).weight(2), snapshot[_param_name(model, 2)])
    assert not torch.equal(edited_1, snapshot[_param_name(model, 1)])
    assert first.rollback(e2.id, cascade=True) == [e3.id, e2.id]
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, snapshot[name]), name
    with pytest.raises(EditError, match="No applied edit"):
        first.rollback(e1.id)


def _param_name(model, layer: int) -> str:
    weight = SiteMap(model).weight(layer)
    return next(name for name, p in model.named_parameters() if p is weight)


def test_rollback_all_and_non_sequential_edits_restore(corpus: str) -> None:
    model = tiny_model("llama")
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    editor = _editor(model, "rome", corpus, layer=1, v_num_grad_steps=2)
    results, returned = editor.edit(prompts=[r.prompt for r in REQUESTS], target_new=[r.target_new for r in REQUESTS],
                                    subject=[r.subject for r in REQUESTS], rephrase_prompts=["France has which capital?", None],
                                    locality_inputs={"nb": {"prompt": ["the cat sat on", "the dog ran"],
                                                            "ground_truth": ["the mat", "in the park"]}})
    assert returned is model and len(results) == 2 and len(editor.applied) == 1  # earlier edit was rolled back
    assert set(results[0]["post"]) == {"rewrite_acc", "rephrase_acc", "locality", "portability"}
    assert results[1]["post"]["rephrase_acc"] is None and set(results[1]["post"]["locality"]) == {"nb"}
    editor.rollback()
    assert all(torch.equal(v, snapshot[k]) for k, v in model.state_dict().items())
    results, _ = editor.edit(prompts=[r.prompt for r in REQUESTS], target_new=[r.target_new for r in REQUESTS],
                             subject=[r.subject for r in REQUESTS], sequential_edit=True)
    assert len(editor.applied) == 2
    with pytest.raises(EditError, match="one request at a time"):
        editor.apply(REQUESTS)


def test_deltas_export_and_reapply(corpus: str, tmp_path: Path) -> None:
    model = tiny_model("gpt2")
    editor = _editor(model, "memit", corpus, layers=[1, 2], v_num_grad_steps=2)
    editor.apply(REQUESTS)
    path = editor.save_deltas(tmp_path / "deltas.safetensors")
    fresh = tiny_model("gpt2")
    other = Editor(fresh, tiny_tokenizer(), "rome", progress=False)
    applied = other.apply_deltas(path)
    assert applied.layers == [1, 2]
    for layer in (0, 1, 2):
        torch.testing.assert_close(SiteMap(fresh).weight(layer), SiteMap(model).weight(layer), rtol=0, atol=1e-6)
    other.rollback()
    assert torch.equal(SiteMap(fresh).weight(1), SiteMap(tiny_model("gpt2")).weight(1))
    with pytest.raises(EditError, match="shape"):
        Editor(tiny_model("llama"), tiny_tokenizer(), "rome", progress=False).apply_deltas(path)


def test_edited_model_can_be_steered(corpus: str) -> None:
    import steer
    from steer.vector import SteeringVector

    model = tiny_model("llama")
    editor = _editor(model, "rome", corpus, layer=1, v_num_grad_steps=2)
    editor.apply(REQUESTS[:1])
    ids = torch.tensor([encode(tiny_tokenizer(), REQUESTS[0].prompt).ids])
    with torch.no_grad():
        edited = model(input_ids=ids).logits
        vector = SteeringVector({Site("resid_post", 1): torch.ones(32)})
        with steer.steering(model, (vector, 4.0)):
            steered = model(input_ids=ids).logits
        again = model(input_ids=ids).logits
    assert not torch.allclose(steered, edited) and torch.equal(again, edited)
    editor.rollback()
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=ids).logits, edited)


def test_stats_are_cached_on_disk_and_reused(corpus: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import steer.edit.stats as stats

    model = tiny_model("llama")
    first = _editor(model, "rome", corpus, layer=1)
    computed = stats.second_moments(first.ctx, [1], first.hparams)[1]
    files = list((tmp_path / "cache" / "stats").rglob("*.safetensors"))
    assert len(files) == 1 and "layer1" in files[0].name and "n8" in files[0].name

    def fail(*args, **kwargs):
        raise AssertionError("statistics were recomputed")

    monkeypatch.setattr(stats, "_compute", fail)
    again = stats.second_moments(_editor(model, "rome", corpus, layer=1).ctx, [1], first.hparams)[1]
    assert torch.equal(again, computed)
    with pytest.raises(DataError, match="No corpus file"):
        stats.second_moments(first.ctx, [1], _editor(model, "rome", str(tmp_path / "missing.txt")).hparams)


def test_default_hparams_valid_for_every_family() -> None:
    from steer.config import load_hparams
    from steer.edit.methods import edit_methods

    for name in edit_methods().names():
        spec = edit_methods().get(name)
        for family in FAMILIES:
            sites = SiteMap(tiny_model(family))
            hp = load_hparams(spec.hparams, name, model_id="some/unknown-model", num_layers=sites.num_layers)
            assert hp.__class__ is spec.hparams
            # IKE has no layer (it changes no weight)
            for layer in hp.layers if hasattr(hp, "layers") else [hp.layer] if hasattr(hp, "layer") else []:
                sites.check_layer(layer)
        smol = load_hparams(spec.hparams, name, model_id="HuggingFaceTB/SmolLM2-135M-Instruct")
        assert smol.__class__ is spec.hparams


def test_requests_formats_and_errors(tmp_path: Path) -> None:
    from steer.edit.requests import load_requests

    zsre = [{"subject": "Watts Humphrey", "src": "What university did Watts Humphrey attend?", "pred": "Trinity College",
             "rephrase": "What university did Watts Humphrey take part in?", "alt": "University of Michigan",
             "answers": ["Illinois Institute of Technology"], "loc": "nq question: who is x", "loc_ans": "Hugo"}]
    path = tmp_path / "z.json"
    path.write_text(json.dumps(zsre))
    (request,) = load_requests(str(path))
    assert request.target_new == "University of Michigan" and request.locality["neighborhood"][0].answer == "Hugo"
    assert request.rephrase_prompts == ("What university did Watts Humphrey take part in?",)
    with pytest.raises(DataError, match="does not occur"):
        encode(tiny_tokenizer(), "What is this?", "x", subject="Paris")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"prompt": "p"}]))
    with pytest.raises(DataError, match="missing target_new"):
        load_requests(str(bad))


def test_cli_edit_report_deltas_and_reapply(corpus: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from steer.cli.main import main

    folder = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    requests = tmp_path / "edits.json"
    requests.write_text(json.dumps([{"prompt": REQUESTS[0].prompt, "subject": "France", "target_new": "the dog",
                                     "locality": {"nb": {"prompt": "the cat sat on", "ground_truth": "the mat"}}}]))
    out, deltas = tmp_path / "report.json", tmp_path / "d.safetensors"
    code = main(["edit", "--method", "rome", "--requests", str(requests), "--out", str(out), "--model", str(folder),
                 "--device", "cpu", "--save-deltas", str(deltas), "--quiet", "layer=1", "v_num_grad_steps=2",
                 f"corpus={corpus}", "mom2_n_samples=4", "mom2_seq_len=16"])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["summary"]["edits"] == 1 and report["hparams"]["layer"] == 1
    assert "rewrite" in capsys.readouterr().out
    saved = tmp_path / "edited"
    assert main(["edit", "--apply-deltas", str(deltas), "--save-model", str(saved), "--model", str(folder),
                 "--device", "cpu"]) == 0
    assert (saved / "config.json").is_file()
    assert main(["edit", "--method", "rome", "--requests", str(requests), "--model", str(folder), "--device", "cpu",
                 "--quiet", "no_such_key=1"]) == 2


@pytest.mark.integration
def test_rome_on_default_model(smol, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEER_CACHE", str(tmp_path))
    model, tok = smol
    # small statistics and few contexts keep this near a minute on 2 CPU cores
    hp = {"mom2_n_samples": 16, "mom2_seq_len": 128, "context_template_lengths": [[3, 2]], "v_num_grad_steps": 25}
    editor = Editor(model, tok, "rome", hp, progress=False)
    results, _ = editor.edit(prompts="What university did Watts Humphrey attend?", target_new="University of Michigan",
                             subject="Watts Humphrey", locality_inputs={"nq": {"prompt": "who played desmond doss father in hacksaw ridge",
                                                                               "ground_truth": "Hugo Weaving"}})
    editor.rollback()
    assert results[0]["pre"]["rewrite_acc"] < 0.9 and results[0]["post"]["rewrite_acc"] >= 0.9
    assert results[0]["post"]["locality"]["nq"] >= 0.5


def test_value_cache_is_shared_between_editors_and_never_reused_on_other_weights(corpus: str) -> None:
    from steer.edit import ValueCache

    model = tiny_model("llama")
    cache = ValueCache()
    hp = {"corpus": corpus, **STATS, "layers": [0, 1], "v_num_grad_steps": 3}
    memit = Editor(model, tiny_tokenizer(), "memit", hp, progress=False, value_cache=cache)
    first = memit.apply(REQUESTS[:1])
    memit.rollback()
    alpha = Editor(model, tiny_tokenizer(), "alphaedit", hp, progress=False, value_cache=cache)
    again = alpha.apply(REQUESTS[:1])  # same request, same unedited weights, same value settings: reused
    assert (cache.hits, cache.misses) == (1, 1)
    torch.testing.assert_close(again.info["z"], first.info["z"])
    # with AlphaEdit's edit still applied the weights differ, so MEMIT must optimise afresh
    memit.apply(REQUESTS[:1])
    assert cache.misses == 2
    memit.rollback()
    alpha.rollback()
    # other value settings are another key
    Editor(model, tiny_tokenizer(), "memit", {**hp, "v_lr": 0.1}, progress=False, value_cache=cache).apply(REQUESTS[:1])
    assert cache.misses == 3


def test_invalid_records_stop_loading_unless_skipped(tmp_path: Path) -> None:
    from steer.edit import load_requests

    good = {"subject": "Paris", "src": "Where is Paris?", "alt": "Peru", "answers": ["France"], "rephrase": "",
            "loc": "nq question: who", "loc_ans": "me"}
    path = tmp_path / "zsre.json"
    path.write_text(json.dumps([good, {**good, "alt": ""}, good]))
    with pytest.raises(DataError, match=r"item 1: 'alt'.*--skip-invalid"):
        load_requests(str(path))
    skipped: list[str] = []
    assert len(load_requests(str(path), on_invalid=skipped.append)) == 2
    assert len(skipped) == 1 and "item 1" in skipped[0]


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2"])  # gemma2 soft-caps its logits
def test_value_optimisation_equals_a_full_logits_reference(family: str, corpus: str) -> None:
    """steer reads logits only where the loss needs them; the plain full-logits loop must find the same value."""
    model = tiny_model(family, seed=3)
    editor = _editor(model, "rome", corpus, v_num_grad_steps=6, nll_stop=0.0)
    for p in model.parameters():
        p.requires_grad_(False)
    site = Site("mlp_out", editor.hparams.layer)
    ours = optimise_value(editor.ctx, REQUESTS[0], site, editor.hparams)
    assert ours.steps == 6
    reference = _benchmark("value_optimisation").full_logits_value(editor.ctx, REQUESTS[0], site, editor.hparams)
    torch.testing.assert_close(ours.target, reference, atol=1e-5, rtol=1e-4)


def _benchmark(name: str):
    """A module of benchmarks/ (not a package): value_optimisation.py holds the plain reference loop."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module
