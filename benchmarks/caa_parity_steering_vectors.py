"""steer's CAA next to steering-vectors' train_steering_vector on the default model (README_2, "Interop").

    OMP_NUM_THREADS=1 python benchmarks/caa_parity_steering_vectors.py [--shared-data DIR] [--pairs 96]

Both read the last token of each text; the positive texts are the DExperts positive
prompts (prompt + continuation), the negative texts the negative ones, pair i with pair i.
Prints the cosine and relative difference per layer, and whether the greedy continuations
steered by each library's own hooks are identical. Needs
`pip install --no-deps steering-vectors==0.12.2`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def texts(path: Path, n: int) -> list[str]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()][:n]
    return [f"{r['prompt']['text']} {r['continuation']['text']}".strip() for r in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared-data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--pairs", type=int, default=96)
    parser.add_argument("--layers", type=int, nargs="+", default=[6, 12])
    parser.add_argument("--multiplier", type=float, default=4.0)
    args = parser.parse_args(argv)
    prompts_dir = args.shared_data / "prompts"
    if not (prompts_dir / "positive_prompts.jsonl").is_file():
        parser.error(f"no prompts/positive_prompts.jsonl under {args.shared_data}; point --shared-data at the "
                     "shared data folder")

    import torch
    from steering_vectors import train_steering_vector

    import steer
    from steer.api import make_vector
    from steer.application import Steer, steering
    from steer.io.datasets import ContrastiveData

    model, tokenizer = steer.load_model(dtype="float32", device="cpu")
    positive = texts(prompts_dir / "positive_prompts.jsonl", args.pairs)
    negative = texts(prompts_dir / "negative_prompts.jsonl", args.pairs)
    theirs = train_steering_vector(model, tokenizer, list(zip(positive, negative)), layers=args.layers,
                                   read_token_index=-1, show_progress=True)
    ours = make_vector(model, tokenizer, "caa", ContrastiveData(positive_texts=positive, negative_texts=negative),
                       overrides={"layers": args.layers, "token": "last", "chat_template": False})
    for layer in args.layers:
        a, b = ours.directions[steer.Site("resid_post", layer)], theirs.layer_activations[layer]
        cosine = torch.nn.functional.cosine_similarity(a, b, dim=0).item()
        print(f"layer {layer}: cosine {cosine:.6f}, relative difference {((a - b).norm() / b.norm()).item():.1e}")
    neutral = [json.loads(line)["prompt"]["text"] for line in
               (prompts_dir / "neutral_prompts.jsonl").read_text(encoding="utf-8").splitlines()[:5]]
    same = 0
    for prompt in neutral:
        ids = tokenizer(prompt, return_tensors="pt")
        kwargs = dict(max_new_tokens=16, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        with torch.no_grad():
            with theirs.apply(model, multiplier=args.multiplier):
                a = model.generate(**ids, **kwargs)
            with steering(model, Steer(ours, args.multiplier)):
                b = model.generate(**ids, **kwargs)
        same += int(torch.equal(a, b))
        print(f"{prompt!r} -> {tokenizer.decode(b[0, ids['input_ids'].shape[1]:])!r} (identical: {torch.equal(a, b)})")
    print(f"identical steered greedy continuations: {same} of {len(neutral)} (x{args.multiplier:g})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
