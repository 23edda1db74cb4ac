"""ROME's locality on neighbours of the same relation (issue #16, item 6).

A held-apart set of hand-written counterfactual edits, each with neighbour probes of the
same relation ("the Eiffel Tower is located in the city of" -> Rome; neighbour "the Louvre
is located in the city of" must stay Paris), in CounterFact's format, so steer's metrics
give EasyEdit's rewrite / locality and CounterFact's efficacy / paraphrase / neighbourhood
scores for every edit.

    python benchmarks/rome_locality.py build                 # re-derive the two data files
    python benchmarks/rome_locality.py tune --out benchmarks/rome_locality.json   # the lever table
    python benchmarks/rome_locality.py eval --out benchmarks/rome_locality.json   # shipped hparams, eval split

`build` writes benchmarks/data/rome_locality_{tune,eval}.json from the candidate facts
below, filtered by the unedited default model (the rule is in `FILTER_RULE` and in each
file). `tune` runs every lever on the tuning split only; `eval` runs the shipped
`hparams/rome/smollm2-135m-instruct.yaml` once on the evaluation split (and `--zsre 20`
spot-checks ZsRE). Every run is merged into the JSON file under its name.
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
    "(in the order relations and objects are listed), so no subject or neighbour of one split occurs in the other."
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="re-derive benchmarks/data/rome_locality_{tune,eval}.json")
    args = parser.parse_args(argv)
    import steer

    model, tokenizer = steer.load_model()
    if args.command == "build":
        write_splits(build(model, tokenizer))


if __name__ == "__main__":
    main()
