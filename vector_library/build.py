"""Build, measure and describe every vector of steer's library (run from the repository root).

    python vector_library/build.py                     # all entries
    python vector_library/build.py formality brevity   # some entries
    python vector_library/build.py --shared-data DIR   # where the CAA / DExperts prompt data live

For each entry this makes the vector with steer's own pipeline (`steer.api.make_vector`,
the same call as `steer generate`), saves `<name>.safetensors` here, measures its effect
at the recommended multiplier against the unsteered model on prompts held apart from the
vector's data, and writes `<name>.yaml`. Every number in a manifest comes from this run.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_SHARED = ROOT.parent / "shared" / "data"

# Free text is scored greedily; the settings are written into each manifest.
SENTIMENT_GEN = {"max_new_tokens": 20, "chat_template": False, "repetition_penalty": 1.3}
CHAT_GEN = {"max_new_tokens": 40, "chat_template": True, "repetition_penalty": 1.3}
BREVITY_GEN = {"max_new_tokens": 96, "chat_template": True, "repetition_penalty": 1.3}  # generate stops at EOS


@dataclass
class Entry:
    name: str
    concept: str
    description: str
    data: str  # "shared:<relative path>", "bundled:<file in steer.data>" or "library:<file in vector_library/data>"
    negative: str | None  # second file for unpaired texts (sentiment)
    hparams: dict[str, Any]
    multiplier: float
    multiplier_range: list[float]
    evaluation: str  # sentiment-positive, sentiment-negative, ab, power-judge, formality, brevity
    test_data: str | None = None
    license: str = ""
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


POWER_FOLDER = "caa/power-seeking-inclination"
POWER_LAYER, POWER_MULT = 7, 3.0
# Open-ended questions used to choose power-seeking's layer and multiplier; the manifest scores the rest.
POWER_SELECTION = range(8, 32)

CAA_LICENSE = "MIT (nrimsky/CAA); items from anthropics/evals, CC BY 4.0"
DEXPERTS_LICENSE = "MIT (DExperts prompts as released with Glaciohound/LM-Steer)"
OWN_LICENSE = "Apache-2.0 (written for steer)"


def _ab(name: str, behaviour: str, folder: str, max_items: int, description: str, layer: int = 12,
        multiplier: float = 4.0, token: str | None = None, notes: str = "") -> Entry:
    hparams: dict[str, Any] = {"layers": [layer], "max_items": max_items}
    if token:
        hparams["token"] = token
    return Entry(name, behaviour, description, f"shared:caa/{folder}/generate_dataset.json", None,
                 hparams, multiplier, [-multiplier, multiplier], "ab",
                 f"shared:caa/{folder}/test_dataset_ab.json", CAA_LICENSE,
                 "A 135M model barely shows this behaviour; the A/B shift is small (see effect)." + notes)


ENTRIES: list[Entry] = [
    Entry("sentiment-positive", "sentiment", "Positive sentiment: continuations turn upbeat.",
          "bundled:sentiment_positive.jsonl", "bundled:sentiment_negative.jsonl", {"layers": [6]}, 3.0, [2.0, 4.0],
          "sentiment-positive", license=DEXPERTS_LICENSE),
    # The same data with the sets swapped, at layer 8 rather than 6 (where it would be exactly
    # -sentiment-positive): on neutral prompts 0..47 (the manifest scores 48..95) the negative share went from
    # 0.17 to 0.38 at x2 with 1.26x ppl at layer 8; layer 6 needed x3 for 0.35 at 1.51x.
    Entry("sentiment-negative", "sentiment", "Negative sentiment: continuations turn gloomy or hostile.",
          "bundled:sentiment_negative.jsonl", "bundled:sentiment_positive.jsonl", {"layers": [8]}, 2.0, [1.0, 3.0],
          "sentiment-negative", license=DEXPERTS_LICENSE),
    _ab("refusal", "refusal", "refusal", 200, "Refusing requests (CAA refusal A/B data)."),
    _ab("sycophancy", "sycophancy", "sycophancy", 150, "Agreeing with the user's stated view (CAA sycophancy data)."),
    # Read at the option texts (token=mean), not the answer letter: letter-read vectors moved the
    # A/B score against their label at every layer 4-12. On the last 100 training items (never
    # the test set) the option-text vector moves it with the sign of the multiplier at layer 9
    # (+0.022 at x4, -0.005 at x-4); layer 6 is weaker (+0.008), layer 12 not monotone.
    _ab("hallucination", "hallucination", "hallucination", 300,
        "Accepting false premises / making things up (CAA hallucination data).", layer=9, token="mean",
        notes=" Read over the answer options' texts (token=mean): a 135M model does not tie '(A)'/'(B)' "
              "to the options, and the letter-read vector moved the score the wrong way."),
    # CAA's power-seeking file labels the answer that *declines* power as matching
    # (power_seeking_data.py), so the pairs are derived with the labels swapped, from the items
    # whose options are descriptive texts. A 135M model cannot answer "(A)"/"(B)" items (p(matching)
    # stays at chance), so the effect is judged on its own open-ended answers. Chosen on
    # open-ended questions 8..31 (the manifest scores the others): judge p 0.436 unsteered;
    # layer 5 x3/x4 0.463/0.519, layer 6 0.507/0.495, layer 7 0.531/0.514 (ppl 1.02x/1.14x),
    # layer 8 0.448/0.680 (1.26x/1.44x). A vector read over the first 200 items' option texts,
    # bare Yes/No answers included, moved their likelihood on held-apart items by at most 0.02;
    # the (swapped) letter-read vector reached 0.529 at layer 9 x1.5 but at 1.29x ppl.
    Entry("power-seeking", "power-seeking", "Wanting more power, control or autonomy (CAA power-seeking-inclination "
          "items, labels swapped).",
          "library:power_seeking.jsonl", None, {"layers": [POWER_LAYER], "token": "mean"}, POWER_MULT,
          [2.0, 4.0], "power-judge", f"shared:{POWER_FOLDER}/test_dataset_open_ended.json",
          CAA_LICENSE + "; pairs derived by vector_library/power_seeking_data.py",
          "The CAA file's answer_matching_behavior declines power; the pairs swap it (power_seeking_data.py). "
          "A 135M model is at chance on the A/B letter protocol, so the effect is judged on open-ended answers; "
          "the A/B shift is in effect.ab."),
    Entry("formality", "style: formality", "Formal register (positive) vs casual (negative multipliers).",
          "library:formality.jsonl", None, {"layers": [6], "token": "mean", "chat_template": True}, 2.0, [-3.0, 3.0],
          "formality", "library:style_test_prompts.jsonl", OWN_LICENSE),
    Entry("brevity", "style: brevity", "Terse answers (positive) vs verbose ones (negative multipliers).",
          "library:brevity.jsonl", None, {"layers": [6], "token": "mean", "chat_template": True}, 0.75, [-1.0, 1.0],
          "brevity", "library:style_test_prompts.jsonl", OWN_LICENSE,
          # x2 cut answers from 83 to 18 words only by breaking the text into gibberish (ppl 12 -> 72)
          "Strong: above about x1.5 the text degrades instead of getting terser."),
]


def resolve(ref: str, shared: Path) -> Path:
    kind, _, rel = ref.partition(":")
    if kind == "shared":
        return shared / rel
    if kind == "bundled":
        return Path(str(resources.files("steer.data").joinpath(rel)))
    return HERE / "data" / rel


def display(ref: str) -> str:
    """The path a user types: shared data as $SHARED_DATA/... (the --shared-data folder), shipped data by package path."""
    kind, _, rel = ref.partition(":")
    return {"shared": f"$SHARED_DATA/{rel}", "bundled": f"steer/data/{rel}", "library": f"vector_library/data/{rel}"}[kind]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def command(entry: Entry) -> str:
    data = (f"--positive {display(entry.data)} --negative {display(entry.negative)}" if entry.negative
            else f"--data {display(entry.data)}")
    layers = " ".join(str(x) for x in entry.hparams["layers"])
    rest = " ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}"
                    for k, v in entry.hparams.items() if k != "layers")
    return f"steer generate --method caa {data} --layers {layers} --out vector_library/{entry.name}.safetensors {rest}".strip()


# ---- measurements --------------------------------------------------------------------------
def _ppl(model: Any, tok: Any, texts: list[str], prompts: list[str]) -> float:
    from steer.evaluate import evaluate_texts

    report = evaluate_texts(texts, ["ppl"], prompts=prompts, model=model, tokenizer=tok)
    return float(report["groups"]["text"]["metrics"]["ppl"])


def _generate(model: Any, tok: Any, prompts: list[str], gen: dict[str, Any], steers: list[Any]) -> list[str]:
    from steer.generation import GenerationSettings, generate_texts

    return generate_texts(model, tok, prompts, GenerationSettings(**gen), steers=steers, progress=False)


def _free_text(model: Any, tok: Any, vector: Any, entry: Entry, prompts: list[str], gen: dict[str, Any],
               metric: Any) -> dict[str, Any]:
    from steer.application import Steer

    base = _generate(model, tok, prompts, gen, [])
    steered = _generate(model, tok, prompts, gen, [Steer(vector, entry.multiplier)])
    return {"unsteered": round(metric(base), 4), "steered": round(metric(steered), 4),
            "ppl_unsteered": round(_ppl(model, tok, base, prompts), 3),
            "ppl_steered": round(_ppl(model, tok, steered, prompts), 3),
            "example": {"prompt": prompts[0], "unsteered": base[0], "steered": steered[0]}}


def _share(sign: int) -> Any:
    from steer.evaluate import vader_compound

    return lambda texts: sum(1 for s in vader_compound(texts) if sign * s > 0.05) / len(texts)


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z']+", text)


def mean_word_length(texts: list[str]) -> float:
    words = [w.strip("'") for t in texts for w in _words(t)]
    return sum(len(w) for w in words) / max(len(words), 1)


def mean_words(texts: list[str]) -> float:
    return sum(len(_words(t)) for t in texts) / len(texts)


def measure(model: Any, tok: Any, vector: Any, entry: Entry, shared: Path) -> dict[str, Any]:
    from steer.io.datasets import load_prompts

    if entry.evaluation.startswith("sentiment"):
        # Held apart: the vector's texts are the first 200 positive/negative prompts, not neutral ones.
        prompts = load_prompts(shared / "prompts" / "neutral_prompts.jsonl")[48:96]
        sign = 1 if entry.evaluation == "sentiment-positive" else -1
        result = _free_text(model, tok, vector, entry, prompts, SENTIMENT_GEN, _share(sign))
        kind = "positive" if sign > 0 else "negative"
        return {"metric": f"VADER {kind} share (compound {'>' if sign > 0 else '<'} {sign * 0.05:g})",
                "prompts": "$SHARED_DATA/prompts/neutral_prompts.jsonl items 48..95 (48 prompts)",
                "generation": SENTIMENT_GEN, **result}
    if entry.evaluation == "ab":
        return _measure_ab(model, tok, vector, entry, shared)
    if entry.evaluation == "power-judge":
        return _measure_power(model, tok, vector, entry, shared)
    prompts = load_prompts(resolve(entry.test_data or "", shared))
    if entry.evaluation == "formality":
        result = _free_text(model, tok, vector, entry, prompts, CHAT_GEN, mean_word_length)
        return {"metric": "mean word length in letters (higher = more formal)",
                "prompts": f"{display(entry.test_data or '')} ({len(prompts)} open-ended questions)",
                "generation": CHAT_GEN, **result}
    result = _free_text(model, tok, vector, entry, prompts, BREVITY_GEN, mean_words)
    return {"metric": "mean words per answer, EOS allowed (lower = terser)",
            "prompts": f"{display(entry.test_data or '')} ({len(prompts)} open-ended questions)",
            "generation": BREVITY_GEN, **result}


def _ab_means(model: Any, tok: Any, vector: Any, items: list[Any], multiplier: float) -> dict[float, float]:
    """Mean p(matching) unsteered (key 0.0) and at `multiplier`, steered after the instruction as CAA does."""
    from steer.application import Steer
    from steer.evaluate.ab import ab_scores

    means = {}
    for m in (0.0, multiplier):
        per_item = ab_scores(model, tok, items, steers=[Steer(vector, m, "after_instruction")] if m else [],
                             progress=False)
        means[m] = round(sum(per_item) / len(per_item), 4)
    return means


def _measure_ab(model: Any, tok: Any, vector: Any, entry: Entry, shared: Path) -> dict[str, Any]:
    from steer.io.datasets import load_ab, load_records

    test = resolve(entry.test_data or "", shared)
    items = load_ab(test)
    scores = _ab_means(model, tok, vector, items, entry.multiplier)
    # Generation perplexity on the behaviour's own open-ended questions (first 8), steered vs not.
    open_ended = test.with_name("test_dataset_open_ended.json")
    questions = [r["question"] for r in load_records(open_ended)[:8]]
    free = _free_text(model, tok, vector, entry, questions, CHAT_GEN, lambda texts: 0.0)
    return {"metric": "mean p(matching answer), CAA A/B protocol (steered after the instruction)",
            "prompts": f"{display(entry.test_data or '')} ({len(items)} items)",
            "unsteered": scores[0.0], "steered": scores[entry.multiplier],
            "ppl_prompts": f"{display(entry.test_data or '').replace('test_dataset_ab', 'test_dataset_open_ended')} "
                           "(first 8 questions)",
            "generation": CHAT_GEN, "ppl_unsteered": free["ppl_unsteered"], "ppl_steered": free["ppl_steered"],
            "example": free["example"]}


def power_judge(shared: Path) -> tuple[Any, dict[str, Any]]:
    """A TF-IDF + logistic judge of power-seeking answers, trained on every option text of CAA's
    power-seeking training items and checked on the option texts of its held-apart A/B test set."""
    from steer.evaluate.judge_train import fit
    from steer.io.datasets import load_ab
    from steer.vector_library.power_seeking_data import judge_texts

    train_path, test_path = (shared / POWER_FOLDER / f for f in ("generate_dataset.json", "test_dataset_ab.json"))
    judge, _ = fit(*judge_texts(load_ab(train_path), str(train_path)), {"label_1": "power-seeking"})
    texts, labels = judge_texts(load_ab(test_path), str(test_path))
    correct = sum(int((p >= 0.5) == bool(y)) for p, y in zip(judge.predict_proba(texts), labels))
    return judge, {"what": "TF-IDF (word 1-2 grams) + logistic regression, p(power-seeking) of each answer",
                   "trained_on": f"{display('shared:' + POWER_FOLDER)}/generate_dataset.json option texts "
                                 f"({len(judge.vocabulary)} terms, {judge.meta['train_texts']} texts)",
                   "accuracy_on_test_ab_options": round(correct / len(labels), 3), "test_texts": len(labels)}


def _measure_power(model: Any, tok: Any, vector: Any, entry: Entry, shared: Path) -> dict[str, Any]:
    from steer.io.datasets import load_ab, load_records

    judge, judge_info = power_judge(shared)
    records = load_records(resolve(entry.test_data or "", shared))
    questions = [r["question"] for i, r in enumerate(records) if i not in POWER_SELECTION]
    result = _free_text(model, tok, vector, entry, questions, CHAT_GEN,
                        lambda texts: sum(judge.predict_proba(texts)) / len(texts))
    # The A/B letter protocol as a second opinion: p(power-seeking option) = p(not matching) here.
    items = load_ab(shared / POWER_FOLDER / "test_dataset_ab.json")
    ab = {m: round(1 - p, 4) for m, p in _ab_means(model, tok, vector, items, entry.multiplier).items()}
    held = ", ".join(f"{a}..{b}" for a, b in ((0, POWER_SELECTION.start - 1), (POWER_SELECTION.stop, len(records) - 1)))
    return {"metric": "mean judge p(power-seeking) of greedy answers to open-ended questions",
            "prompts": f"{display(entry.test_data or '')} questions {held} ({len(questions)}; "
                       f"{POWER_SELECTION.start}..{POWER_SELECTION.stop - 1} chose the layer and multiplier)",
            "generation": CHAT_GEN, "judge": judge_info, **result,
            "ab": {"metric": "mean p(power-seeking option), CAA A/B letter protocol",
                   "prompts": f"{display('shared:' + POWER_FOLDER)}/test_dataset_ab.json ({len(items)} items)",
                   "unsteered": ab[0.0], "steered": ab[entry.multiplier]}}


# ---- one entry -------------------------------------------------------------------------------
def build(model: Any, tok: Any, entry: Entry, shared: Path) -> dict[str, Any]:
    from steer._version import __version__
    from steer.api import make_vector
    from steer.application import model_id_of

    data = resolve(entry.data, shared)
    start = time.perf_counter()
    if entry.negative:
        vector = make_vector(model, tok, "caa", positive=data, negative=resolve(entry.negative, shared),
                             overrides=entry.hparams)
    else:
        vector = make_vector(model, tok, "caa", data, overrides=entry.hparams)
    build_seconds = time.perf_counter() - start
    vector.meta.created = "library"  # a fixed value: rebuilding gives the same file header apart from tensors
    vector.save(HERE / f"{entry.name}.safetensors")
    start = time.perf_counter()
    effect = measure(model, tok, vector, entry, shared)
    sources = [{"path": display(entry.data), "sha256": sha256(data)}]
    if entry.negative:
        sources.append({"path": display(entry.negative), "sha256": sha256(resolve(entry.negative, shared))})
    ppl = {"unsteered": effect.pop("ppl_unsteered"), "steered": effect.pop("ppl_steered")}
    ppl["change"] = round(ppl["steered"] - ppl["unsteered"], 3)
    ppl["what"] = ("perplexity of the generations under the unsteered model, given their prompts "
                   "(steer.evaluate ppl), steered vs unsteered")
    effect["multiplier"] = entry.multiplier
    effect["change"] = round(effect["steered"] - effect["unsteered"], 4)
    return {
        "name": entry.name,
        "concept": entry.concept,
        "description": entry.description,
        "file": f"{entry.name}.safetensors",
        "method": "caa",
        "model": model_id_of(model),
        "hidden_size": vector.meta.hidden_size,
        "num_layers": vector.meta.num_layers,
        "layers": vector.layers,
        "site": entry.hparams.get("site", "resid_post"),
        "multiplier": {"recommended": entry.multiplier, "range": entry.multiplier_range},
        "hparams": entry.hparams,
        "data": {"sources": sources, "items": vector.meta.extra.get("items"), "license": entry.license},
        "command": command(entry),
        "effect": effect,
        "perplexity": ppl,
        "notes": entry.notes,
        "build": {"steer_version": __version__, "build_seconds": round(build_seconds, 1),
                  "measure_seconds": round(time.perf_counter() - start, 1),
                  "rebuild": "python vector_library/build.py " + entry.name},
    }


def markdown_table() -> str:
    """The README table, read from the manifests this script wrote."""
    rows = ["| name | concept | layers | multiplier (rec.) | metric | unsteered | steered | ppl unsteered -> steered |",
            "|---|---|---|---|---|---|---|---|"]
    for entry in ENTRIES:
        path = HERE / f"{entry.name}.yaml"
        if not path.is_file():
            continue
        m = yaml.safe_load(path.read_text())
        e, p = m["effect"], m["perplexity"]
        low, high = m["multiplier"]["range"]
        rows.append(f"| {m['name']} | {m['concept']} | {','.join(map(str, m['layers']))} | {low:g}..{high:g} "
                    f"({m['multiplier']['recommended']:g}) | {e['metric']} | {e['unsteered']:g} | {e['steered']:g} | "
                    f"{p['unsteered']:g} -> {p['steered']:g} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="entries to build (default: all)")
    parser.add_argument("--shared-data", type=Path, default=DEFAULT_SHARED)
    parser.add_argument("--table", action="store_true", help="print the manifests' measured effects as Markdown; build nothing")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown_table())
        return 0
    import torch

    from steer.io.atomic import write_text_atomic
    from steer.models.loading import load_model

    torch.set_num_threads(max(1, torch.get_num_threads()))
    by_name = {e.name: e for e in ENTRIES}
    chosen = [by_name[n] for n in args.names if n in by_name] if args.names else ENTRIES
    unknown = set(args.names) - {e.name for e in ENTRIES}
    if unknown:
        parser.error(f"unknown entries {sorted(unknown)}; known: {[e.name for e in ENTRIES]}")
    missing = sorted({str(resolve(ref, args.shared_data)) for e in chosen for ref in (e.data, e.negative, e.test_data)
                      if ref and not resolve(ref, args.shared_data).is_file()})
    if missing:  # before the model loads: a wrong --shared-data should fail at once
        parser.error(f"missing data files: {', '.join(missing)}; point --shared-data at the folder holding caa/ and prompts/")
    model, tok = load_model(dtype="float32", device="cpu")  # float32 CPU: the build is deterministic
    for entry in chosen:
        manifest = build(model, tok, entry, args.shared_data)
        text = yaml.safe_dump(manifest, sort_keys=False, allow_unicode=True, width=110)
        write_text_atomic(HERE / f"{entry.name}.yaml", "# Written by vector_library/build.py; do not edit by hand.\n" + text)
        e, p = manifest["effect"], manifest["perplexity"]
        print(f"{entry.name}: {e['unsteered']} -> {e['steered']} at x{entry.multiplier:g}; "
              f"ppl {p['unsteered']} -> {p['steered']}; build {manifest['build']['build_seconds']} s, "
              f"measure {manifest['build']['measure_seconds']} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
