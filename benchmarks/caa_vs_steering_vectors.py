"""Reading a CAA vector: steer vs the steering-vectors library, same pairs, same vector.

    pip install steering-vectors     # a peer no one here wrote (in the test extra)
    python benchmarks/caa_vs_steering_vectors.py [--pairs 96] [--layers 6 20] [--repeats 3]

Both read the last token of each positive and negative text (steer's shipped DExperts
sentiment prompts with their continuations) on the default model and take the mean
difference (steer: `token=last`, no chat template; steering-vectors:
`read_token_index=-1`). The vectors are compared (cosine, relative difference) and the
time of each, best of --repeats, is printed side by side with the ratio steer / peer.
steer's reader ends each forward pass after the deepest layer it needs
(`steer.sites.reader`); steering-vectors runs the whole model. Target at layer 6 of 30:
steer at most 0.35x the peer's time.
"""

from __future__ import annotations

import argparse
import json
import time
from importlib import resources

import torch

import steer
from steer.api import make_vector
from steer.io.datasets import ContrastiveData
from steer.io.table import format_table


def texts(count: int) -> tuple[list[str], list[str]]:
    """Positive and negative texts (prompt + continuation) from steer's shipped sentiment data."""
    data = resources.files("steer.data")
    out = []
    for name in ("sentiment_positive.jsonl", "sentiment_negative.jsonl"):
        rows = [json.loads(line) for line in data.joinpath(name).read_text().splitlines()][:count]
        if len(rows) < count:
            raise SystemExit(f"only {len(rows)} texts in steer/data/{name}")
        out.append([f"{r['prompt']['text']} {r['continuation']['text']}".strip() for r in rows])
    return out[0], out[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=96)
    parser.add_argument("--layers", type=int, nargs="+", default=[6, 20])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    from steering_vectors import train_steering_vector

    torch.set_grad_enabled(False)
    model, tok = steer.load_model()
    positive, negative = texts(args.pairs)
    data = ContrastiveData(positive_texts=positive, negative_texts=negative)
    rows = []
    for layer in args.layers:
        best = {"steer": float("inf"), "steering-vectors": float("inf")}
        ours = theirs = None
        for _ in range(args.repeats):  # interleaved, so drift hits both alike
            start = time.perf_counter()
            ours = make_vector(model, tok, "caa", data,
                               overrides={"layers": [layer], "token": "last", "chat_template": False,
                                          "batch_size": args.batch_size})
            best["steer"] = min(best["steer"], time.perf_counter() - start)
            start = time.perf_counter()
            theirs = train_steering_vector(model, tok, list(zip(positive, negative)), layers=[layer], read_token_index=-1,
                                           batch_size=args.batch_size, show_progress=False)
            best["steering-vectors"] = min(best["steering-vectors"], time.perf_counter() - start)
        a = ours.directions[steer.Site("resid_post", layer)].float()
        b = theirs.layer_activations[layer].float()
        cosine = torch.nn.functional.cosine_similarity(a, b, dim=0).item()
        relative = ((a - b).norm() / b.norm()).item()
        rows.append([layer, f"{best['steer']:.2f}", f"{best['steering-vectors']:.2f}",
                     f"{best['steer'] / best['steering-vectors']:.2f}", f"{cosine:.6f}", f"{relative:.1e}"])
    print(f"{steer.DEFAULT_MODEL_ID} ({model.config.num_hidden_layers} layers), {args.pairs} pairs, batch "
          f"{args.batch_size}, best of {args.repeats}, {torch.get_num_threads()} threads")
    print(format_table(["layer", "steer s", "steering-vectors s", "steer / peer", "cosine", "rel. diff"], rows))


if __name__ == "__main__":
    main()
