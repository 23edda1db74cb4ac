"""ROME's locality on neighbours of the same relation (issue #16, item 6).

A held-apart set of hand-written counterfactual edits, each with neighbour probes of the
same relation ("the Eiffel Tower is located in the city of" -> Rome; neighbour "the Louvre
is located in the city of" must stay Paris), in CounterFact's format, so steer's metrics
give EasyEdit's rewrite / locality and CounterFact's efficacy / paraphrase / neighbourhood
scores for every edit.

    python benchmarks/rome_locality.py build                 # re-derive the two data files
    python benchmarks/rome_locality.py tune --out benchmarks/rome_locality.json   # the lever table
    python benchmarks/rome_locality.py eval --zsre 20 --out benchmarks/rome_locality.json  # shipped hparams, eval split
    python benchmarks/rome_locality.py counterfact --out benchmarks/rome_locality.json     # real CounterFact record(s)

`build` writes benchmarks/data/rome_locality_{tune,eval}.json from the candidate facts
below, filtered by the unedited default model (the rule is in `FILTER_RULE` and in each
file). `tune` runs every lever on the tuning split only; `eval` runs the shipped
`hparams/rome/smollm2-135m-instruct.yaml` once on the evaluation split, next to the settings
before (`update_keys: rome`) and the evaluated `preserve_weight: 10`, and `--zsre 20` spot-checks
the first 20 ZsRE records with all three.
`--values FILE` keeps the optimised values in a safetensors file: the levers that change only
the rank-one solve reuse them (the value depends on the prompt, target, layer and value
settings only), so a rerun costs seconds per edit. Every run is merged into the JSON file
under its section (tune, eval, counterfact).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")
SPLIT_FILES = {s: os.path.join(DATA, f"rome_locality_{s}.json") for s in ("tune", "eval")}
MAX_EDITS_PER_GROUP = 3  # edits per (relation, true object); every known subject may still be a neighbour
MAX_NEIGHBOURS = 2
TUNE_SHARE = 1 / 3  # groups go to the tuning split while it holds less than this share

FILTER_RULE = (
    "A subject is kept when the unedited model (SmolLM2-135M-Instruct, fp32, steer.load_model()) predicts its true "
    "object by greedy teacher forcing on every answer token (steer's token accuracy = 1.0) after the relation's "
    "prompt. An edit's subject and its neighbours are all such subjects of the same relation and true object; its "
    "target_new is the first other object of the relation (in the order listed) that the unedited model does not "
    f"already predict for it (token accuracy < 1.0). At most {MAX_EDITS_PER_GROUP} edits per (relation, true "
    f"object), each with up to {MAX_NEIGHBOURS} neighbours (the next known subjects of its group). Whole groups are "
    f"split: a group goes to the tuning split while that holds fewer than {TUNE_SHARE:.2f} of the edits made so far "
    "(in the order relations and objects are listed), so no fact (a subject under a relation) of one split, edited "
    "or as a neighbour, occurs in the other."
)

# (relation, prompt, paraphrase, {true object: [subjects]}): hand-written facts, most of which a
# 135M model may not know; `build` keeps the ones it does.
RELATIONS: list[tuple[str, str, str, dict[str, list[str]]]] = [
    ("landmark_city", "{} is located in the city of", "One of the sights of {} is in the city of", {
        "Paris": ["the Eiffel Tower", "the Louvre", "Notre-Dame Cathedral", "the Arc de Triomphe", "the Champs-Elysees",
                  "the Sacre-Coeur Basilica", "the Musee d'Orsay"],
        "Rome": ["the Colosseum", "the Trevi Fountain", "the Pantheon", "the Roman Forum", "the Spanish Steps",
                 "the Circus Maximus"],
        "London": ["Big Ben", "Tower Bridge", "Buckingham Palace", "Westminster Abbey", "the British Museum",
                   "the London Eye", "Trafalgar Square"],
        "New York": ["the Statue of Liberty", "the Empire State Building", "Central Park", "Times Square",
                     "the Brooklyn Bridge", "Wall Street", "the Metropolitan Museum of Art"],
        "Berlin": ["the Brandenburg Gate", "the Reichstag building", "Checkpoint Charlie", "Alexanderplatz"],
        "Moscow": ["Red Square", "the Kremlin", "Saint Basil's Cathedral", "the Bolshoi Theatre"],
        "Beijing": ["the Forbidden City", "Tiananmen Square", "the Temple of Heaven", "the Summer Palace"],
        "Barcelona": ["the Sagrada Familia", "Park Guell", "Camp Nou", "La Rambla"],
        "Athens": ["the Acropolis", "the Parthenon"],
        "San Francisco": ["the Golden Gate Bridge", "Alcatraz Island", "Fisherman's Wharf"],
        "Venice": ["St Mark's Basilica", "the Rialto Bridge", "the Grand Canal", "the Doge's Palace"],
        "Istanbul": ["the Hagia Sophia", "the Blue Mosque", "the Grand Bazaar", "Topkapi Palace"],
        "Washington": ["the White House", "the Lincoln Memorial", "the Capitol building", "the Smithsonian"],
        "Amsterdam": ["the Anne Frank House", "the Rijksmuseum", "the Van Gogh Museum"],
        "Sydney": ["the Opera House", "Bondi Beach", "the Harbour Bridge"],
        "Agra": ["the Taj Mahal", "Agra Fort"],
        "Cairo": ["the Egyptian Museum", "Tahrir Square"],
    }),
    ("city_country", "{} is a city in the country of", "The city of {} lies in", {
        "Germany": ["Munich", "Hamburg", "Frankfurt", "Cologne", "Stuttgart", "Dresden", "Leipzig", "Dusseldorf",
                    "Bremen", "Hanover"],
        "France": ["Lyon", "Marseille", "Toulouse", "Nice", "Bordeaux", "Lille", "Strasbourg", "Nantes"],
        "Italy": ["Milan", "Naples", "Turin", "Florence", "Bologna", "Palermo", "Genoa", "Verona"],
        "Spain": ["Seville", "Valencia", "Bilbao", "Malaga", "Granada", "Zaragoza"],
        "Japan": ["Osaka", "Kyoto", "Yokohama", "Nagoya", "Sapporo", "Hiroshima", "Kobe", "Fukuoka"],
        "China": ["Shanghai", "Guangzhou", "Shenzhen", "Chengdu", "Wuhan", "Nanjing", "Hangzhou", "Xi'an"],
        "India": ["Mumbai", "Kolkata", "Chennai", "Bangalore", "Hyderabad", "Jaipur", "Pune"],
        "Brazil": ["Sao Paulo", "Rio de Janeiro", "Salvador", "Recife", "Fortaleza"],
        "Australia": ["Melbourne", "Brisbane", "Perth", "Adelaide"],
        "Canada": ["Toronto", "Vancouver", "Montreal", "Calgary", "Winnipeg"],
        "Russia": ["Novosibirsk", "Kazan", "Yekaterinburg", "Vladivostok"],
        "England": ["Manchester", "Liverpool", "Birmingham", "Leeds", "Bristol"],
        "Mexico": ["Guadalajara", "Monterrey", "Cancun", "Puebla"],
        "Turkey": ["Ankara", "Izmir", "Antalya"],
        "Egypt": ["Alexandria", "Luxor", "Aswan"],
        "Poland": ["Krakow", "Gdansk", "Wroclaw"],
    }),
    ("country_language", "The official language of {} is", "Most people in {} speak", {
        "Spanish": ["Mexico", "Argentina", "Colombia", "Peru", "Chile", "Venezuela", "Cuba", "Bolivia", "Ecuador",
                    "Uruguay"],
        "Portuguese": ["Brazil", "Portugal", "Angola", "Mozambique"],
        "Arabic": ["Egypt", "Saudi Arabia", "Iraq", "Syria", "Jordan", "Morocco", "Libya", "Yemen"],
        "German": ["Germany", "Austria"],
        "French": ["France", "Senegal", "Ivory Coast"],
        "English": ["Australia", "New Zealand", "Jamaica", "Ireland"],
    }),
    ("company_country", "{} is a company based in", "The headquarters of {} are in", {
        "Japan": ["Toyota", "Sony", "Honda", "Nintendo", "Panasonic", "Nissan", "Canon", "Mitsubishi", "Yamaha"],
        "Germany": ["BMW", "Volkswagen", "Siemens", "Adidas", "Bosch", "Porsche", "Audi", "Lufthansa", "Bayer"],
        "South Korea": ["Samsung", "Hyundai", "Kia"],
        "France": ["Renault", "Peugeot", "Michelin", "Airbus"],
        "Italy": ["Ferrari", "Fiat", "Lamborghini", "Gucci", "Prada"],
        "Sweden": ["Volvo", "IKEA", "Ericsson", "Spotify"],
        "China": ["Huawei", "Alibaba", "Xiaomi", "Lenovo", "Tencent"],
        "Switzerland": ["Nestle", "Rolex", "Novartis"],
    }),
    ("person_occupation", "{} was a famous", "By profession, {} was a", {
        "physicist": ["Albert Einstein", "Isaac Newton", "Niels Bohr", "Richard Feynman", "Max Planck", "Enrico Fermi"],
        "painter": ["Pablo Picasso", "Vincent van Gogh", "Claude Monet", "Rembrandt", "Salvador Dali", "Paul Cezanne"],
        "composer": ["Wolfgang Amadeus Mozart", "Ludwig van Beethoven", "Johann Sebastian Bach", "Frederic Chopin",
                     "Franz Schubert", "Johannes Brahms"],
        "writer": ["Charles Dickens", "Mark Twain", "Leo Tolstoy", "Ernest Hemingway"],
        "philosopher": ["Immanuel Kant", "Friedrich Nietzsche", "Aristotle", "Plato"],
    }),
    ("country_continent", "{} is a country in", "{} is located on the continent of", {
        "Africa": ["Nigeria", "Kenya", "Ghana", "Ethiopia", "Tanzania", "Uganda", "Zambia", "Zimbabwe", "Cameroon"],
        "Europe": ["Belgium", "Austria", "Switzerland", "Hungary", "Denmark", "Norway", "Finland", "Czechia"],
        "Asia": ["Vietnam", "Thailand", "Cambodia", "Mongolia", "Nepal", "Bangladesh", "Laos", "Malaysia"],
        "South America": ["Paraguay", "Guyana", "Suriname"],
    }),
    ("country_currency", "The currency of {} is the", "In {}, people pay with the", {
        "euro": ["Germany", "France", "Italy", "Spain", "Portugal", "Greece", "the Netherlands", "Ireland", "Finland"],
        "dollar": ["the United States", "Canada", "Australia", "New Zealand"],
        "peso": ["Mexico", "Argentina", "Chile", "Colombia"],
        "rupee": ["India", "Pakistan", "Sri Lanka", "Nepal"],
        "pound": ["the United Kingdom", "Egypt"],
    }),
]


def _prompt(template: str, subject: str) -> str:
    text = template.format(subject)
    return text[0].upper() + text[1:]  # "the Louvre is ..." -> "The Louvre is ..."; the subject search ignores case


def build(model: Any, tokenizer: Any) -> dict[str, list[dict[str, Any]]]:
    """The two splits as CounterFact records, filtered by `model` (see FILTER_RULE)."""
    from steer.edit.metrics import score

    facts = [(rel, obj, s) for rel, _, _, groups in RELATIONS for obj, subjects in groups.items() for s in subjects]
    templates = {rel: (prompt, para) for rel, prompt, para, _ in RELATIONS}
    known_scores = score(model, tokenizer, [(_prompt(templates[r][0], s), o) for r, o, s in facts])
    known = {(r, o, s) for (r, o, s), sc in zip(facts, known_scores) if sc.accuracy == 1.0}
    splits: dict[str, list[dict[str, Any]]] = {"tune": [], "eval": []}
    for rel, prompt, para, groups in RELATIONS:
        objects = list(groups)
        for obj, subjects in groups.items():
            members = [s for s in subjects if (rel, obj, s) in known]
            if len(members) < 2:
                continue  # no neighbour of the same relation and object
            records = []
            for i, subject in enumerate(members[:MAX_EDITS_PER_GROUP]):
                others = objects[objects.index(obj) + 1:] + objects[: objects.index(obj)]
                found = score(model, tokenizer, [(_prompt(prompt, subject), o) for o in others])
                target = next((o for o, sc in zip(others, found) if sc.accuracy < 1.0), None)
                if target is None:
                    continue
                neighbours = [members[(i + j) % len(members)] for j in range(1, len(members))][:MAX_NEIGHBOURS]
                records.append({
                    "relation": rel,
                    # the subject as it is written in the prompt (capitalised at the start of a sentence)
                    "requested_rewrite": {"prompt": prompt, "subject": _prompt("{}", subject) if prompt.startswith("{}")
                                          else subject, "target_new": {"str": target}, "target_true": {"str": obj}},
                    "paraphrase_prompts": [_prompt(para, subject)],
                    "neighborhood_prompts": [_prompt(prompt, n) for n in neighbours],
                })
            total = len(splits["tune"]) + len(splits["eval"])
            split = "tune" if len(splits["tune"]) < TUNE_SHARE * (total + len(records)) else "eval"
            splits[split].extend(records)
    for split, records in splits.items():
        for i, record in enumerate(records):
            record["case_id"] = i
    return splits


def write_splits(splits: dict[str, list[dict[str, Any]]]) -> None:
    from steer.io.atomic import write_json_atomic

    for split, records in splits.items():
        write_json_atomic(SPLIT_FILES[split], {
            "about": f"Hand-written counterfactual edits with same-relation neighbours, {split} split of "
                     "benchmarks/rome_locality.py (issue #16 item 6); CounterFact's record format (Meng et al., 2022). "
                     "Written for steer, no third-party text; see benchmarks/data/SOURCES.md.",
            "split": split,
            "filter": FILTER_RULE,
            "data": records,
        })
        print(f"{SPLIT_FILES[split]}: {len(records)} edits, "
              f"{sum(len(r['neighborhood_prompts']) for r in records)} neighbour probes")


# ---- measuring -----------------------------------------------------------------------------
# Levers measured on the tuning split: (name, method, hparam overrides on top of the shipped file).
# Levers that change only the rank-one solve (statistics, key prefixes, R-ROME) reuse the
# optimised values of the shipped settings (steer.edit.ValueCache), so they cost seconds per edit.
# Every lever names the settings it changes from ROME's C (no extra keys), so its row does not follow
# later changes to the shipped file.
PLAIN_C = {"preserve_weight": 0.0, "mom2_entity_weight": 0.0}
BEFORE = {"update_keys": "rome", **PLAIN_C}  # the shipped file before this study
EVERY_PREFIX = {"update_keys": "every_prefix", **PLAIN_C}  # shipped before the extra keys
LEVERS: list[tuple[str, str, dict[str, Any]]] = [
    ("rome, update_keys=rome (before: u = C^-1 k*, exact at k)", "rome", BEFORE),
    ("rome, no covariance (u = k*)", "rome", {**BEFORE, "mom2_adjustment": False, "preserve_weight": 0.0}),
    ("r_rome (u = C^-1 k*, exact at k*)", "r_rome", BEFORE),
    ("rome, C from 250 chunks instead of 100", "rome", {**BEFORE, "mom2_n_samples": 250}),
    ("rome, update_keys=every_prefix", "rome", EVERY_PREFIX),
    ("rome, update_keys=prompt (u = C^-1 k, exact at k)", "rome", {"update_keys": "prompt", **PLAIN_C}),
    # keys of other subjects weighed into C (edit/rome.py): generic subjects in the request's own prompt
    # (edit/data/generic-subjects.txt, none of them in this benchmark), or entity ends in the corpus
    *[(f"rome, every_prefix, preserve_weight={w:g}", "rome", {**EVERY_PREFIX, "preserve_weight": w})
      for w in (1, 10, 100)],
    *[(f"rome, every_prefix, mom2_entity_weight={w:g}", "rome", {**EVERY_PREFIX, "mom2_entity_weight": w})
      for w in (1, 10)],
    # another layer: new values (the value is optimised at the edited layer), 15-45 s per edit
    ("rome, every_prefix, layer 4", "rome", {**EVERY_PREFIX, "layer": 4}),
]


def value_store(path: str | None) -> Any:
    """A ValueCache that also keeps its values in a safetensors file, so a later run reuses them."""
    import hashlib

    import torch

    from steer.edit import ValueCache
    from steer.edit.value import ValueResult
    from steer.io.tensors import read_tensors, write_tensors

    class Stored(ValueCache):
        def __init__(self) -> None:
            super().__init__()
            self.file: dict[str, torch.Tensor] = {}
            if path and os.path.exists(path):
                _, self.file = read_tensors(path)

        @staticmethod
        def _name(key: tuple[Any, ...]) -> str:
            return hashlib.sha256(repr(key).encode()).hexdigest()[:32]

        def get(self, key: tuple[Any, ...]) -> ValueResult | None:
            name = self._name(key)
            if name + ".target" in self.file and super().get(key) is None:
                self.misses -= 1  # a hit from the file, not a miss
                self.hits += 1
                f = self.file
                return ValueResult(f[name + ".target"], f[name + ".original"], float(f[name + ".nll"]),
                                   int(f[name + ".steps"]))
            return super().get(key)

        def put(self, key: tuple[Any, ...], value: ValueResult) -> None:
            super().put(key, value)
            if path:
                name = self._name(key)
                self.file.update({name + ".target": value.target.cpu(), name + ".original": value.original.cpu(),
                                  name + ".nll": torch.tensor(value.nll), name + ".steps": torch.tensor(value.steps)})
                write_tensors(path, self.file, {"kind": "rome-locality-values"})

    return Stored()


def _mean(values: list[float | None]) -> float | None:
    kept = [float(v) for v in values if v is not None]
    return statistics.fmean(kept) if kept else None


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over edits; `moved`: the edits whose neighbours' predictions changed."""
    post = [r["post"] for r in records]
    counterfact = [p.get("counterfact") or {} for p in post]
    return {
        "edits": len(records),
        "rewrite": _mean([p["rewrite_acc"] for p in post]),
        "rephrase": _mean([p["rephrase_acc"] for p in post]),
        "locality": _mean([p["locality"].get("neighborhood") for p in post]),
        "efficacy_score": _mean([c.get("efficacy_score") for c in counterfact]),
        "paraphrase_score": _mean([c.get("paraphrase_score") for c in counterfact]),
        "neighborhood_score": _mean([c.get("neighborhood_score") for c in counterfact]),
        "seconds_per_edit": _mean([r["seconds"] for r in records]),
        "per_edit": [[r["requested_rewrite"]["prompt"], r["post"]["rewrite_acc"],
                      r["post"]["locality"].get("neighborhood")] for r in records],
        "moved": [{"prompt": r["requested_rewrite"]["prompt"], "target_new": r["requested_rewrite"]["target_new"],
                   "locality": r["post"]["locality"].get("neighborhood")}
                  for r in records if r["post"]["locality"].get("neighborhood", 1.0) < 1.0],
    }


def run_lever(model: Any, tokenizer: Any, requests: list[Any], method: str, overrides: dict[str, Any],
              cache: Any) -> dict[str, Any]:
    from steer.config import hparams_source
    from steer.edit import Editor

    editor = Editor(model, tokenizer, method, dict(overrides), value_cache=cache)
    started = time.perf_counter()
    records = editor.edit_requests(requests)
    editor.rollback()
    result = summarise(records)
    source = hparams_source(editor.hparams)
    if source and os.path.isabs(source):  # repository-relative in the report, never this machine's path
        source = os.path.relpath(source, os.path.join(HERE, ".."))
    result.update(method=method, overrides=overrides, hparams=source,
                  wall_seconds=time.perf_counter() - started)
    return result


HEADER = ["| lever | rewrite | rephrase | locality | ES | PS | NS | s/edit |", "|---|---|---|---|---|---|---|---|"]


def table_row(name: str, r: dict[str, Any]) -> str:
    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"
    return (f"| {name} | {f(r['rewrite'])} | {f(r['rephrase'])} | {f(r['locality'])} | {f(r['efficacy_score'])} | "
            f"{f(r['paraphrase_score'])} | {f(r['neighborhood_score'])} | {r['seconds_per_edit']:.1f} |")


def _save(path: str | None, section: str, runs: dict[str, Any], command: str) -> None:
    if not path:
        return
    from steer.io.atomic import write_json_atomic

    data: dict[str, Any] = {"kind": "rome-locality"}
    if os.path.exists(path):
        import json

        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    data[section] = {"command": command, "load": os.getloadavg()[0], "runs": runs}
    write_json_atomic(path, data)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="re-derive benchmarks/data/rome_locality_{tune,eval}.json")
    tune = sub.add_parser("tune", help="every lever on the tuning split")
    tune.add_argument("--levers", nargs="*", type=int, help="indices into LEVERS (default: all)")
    tune.add_argument("--limit", type=int, help="only the first N tuning edits")
    evaluate = sub.add_parser("eval", help="the shipped hparams (and the settings before) on the evaluation split")
    evaluate.add_argument("--limit", type=int)
    evaluate.add_argument("--levers", nargs="*", type=int,
                          help="evaluate these indices into LEVERS instead of the shipped / before / preserve runs")
    evaluate.add_argument("--zsre", type=int, default=0, help="also spot-check the first N ZsRE records")
    evaluate.add_argument("--zsre-data", default=os.path.join(HERE, "..", "..", "shared", "data", "zsre",
                                                              "zsre_mend_eval_head.json"))
    counterfact = sub.add_parser("counterfact", help="the shipped and the earlier hparams on real CounterFact records")
    counterfact.add_argument("--data", default=os.path.join(HERE, "..", "tests", "data", "edit", "counterfact.json"))
    for p in (tune, evaluate, counterfact):
        p.add_argument("--out", help="merge the runs into this JSON file (benchmarks/rome_locality.json)")
        p.add_argument("--values", help="keep optimised values in this safetensors file and reuse them")
    args = parser.parse_args(argv)
    import steer
    from steer.edit.requests import load_requests

    model, tokenizer = steer.load_model()
    command = "python benchmarks/rome_locality.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.command == "build":
        write_splits(build(model, tokenizer))
        return
    cache = value_store(args.values)
    runs: dict[str, Any] = {}
    if args.command == "tune":
        requests = load_requests(SPLIT_FILES["tune"], args.limit)
        chosen = [LEVERS[i] for i in args.levers] if args.levers else LEVERS
        print(HEADER[0] + "\n" + HEADER[1], flush=True)
        for name, method, overrides in chosen:
            runs[name] = run_lever(model, tokenizer, requests, method, overrides, cache)
            print(table_row(name, runs[name]), flush=True)
            _save(args.out, "tune", runs, command)
        return
    if args.command == "counterfact":
        requests = load_requests(args.data)
        print(HEADER[0] + "\n" + HEADER[1], flush=True)
        for name, method, overrides in [("rome, shipped hparams", "rome", {}), LEVERS[0]]:
            runs[name] = run_lever(model, tokenizer, requests, method, overrides, cache)
            print(table_row(name, runs[name]), flush=True)
            _save(args.out, "counterfact", runs, command)
        return
    requests = load_requests(SPLIT_FILES["eval"], args.limit)
    print(HEADER[0] + "\n" + HEADER[1], flush=True)
    # the evaluated choice of the extra keys (README_2 section 10: it did not carry over, so the file keeps it off)
    preserve = next(lever for lever in LEVERS if lever[2] == {**EVERY_PREFIX, "preserve_weight": 10})
    chosen = [LEVERS[i] for i in args.levers] if args.levers else [("rome, shipped hparams", "rome", {}), LEVERS[0],
                                                                    preserve]
    for name, method, overrides in chosen:
        runs[name] = run_lever(model, tokenizer, requests, method, overrides, cache)
        print(table_row(name, runs[name]), flush=True)
        _save(args.out, "eval", runs, command)
    if args.zsre:
        zsre = load_requests(args.zsre_data, args.zsre, on_invalid=lambda message: print("skipped:", message))
        zsre_runs = [("zsre: rome, shipped hparams", "rome", {}), ("zsre: " + LEVERS[0][0], *LEVERS[0][1:]),
                     ("zsre: " + preserve[0], *preserve[1:])]
        for name, method, overrides in zsre_runs:
            runs[name] = run_lever(model, tokenizer, zsre, method, overrides, cache)  # locality: ZsRE's loc probe
            print(table_row(name, runs[name]), flush=True)
            _save(args.out, "eval", runs, command)


if __name__ == "__main__":
    main()
