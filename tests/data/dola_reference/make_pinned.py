"""Pin the tokens steer's DoLa and DeCo produce on the default model (run in the project's virtual environment).

    OMP_NUM_THREADS=1 python tests/data/dola_reference/make_pinned.py

Writes steer_pinned.json next to this file: chat-templated prompts, their left-padded
input ids, and the greedy tokens of DoLa (high, low) and DeCo with steer's defaults
(final norm on early exits, per-row layer choice), at batch 4 and at batch 1 for two
prompts. tests/test_decoding.py replays them, so any change to the DoLa/DeCo math that
changes a token fails. It was run once, before the speed work of issue #18.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
import transformers

import steer
from steer.decoding import decoding
from steer.prompts import encode_batch, render_prompt

PROMPTS = ["What is the capital of France?", "Tell me a short story about a dragon.",
           "How do vaccines work?", "Why is the sky blue?"]
NEW_TOKENS = 20
MODES = {"dola_high": ("dola", {"layers": "high"}, 1.2), "dola_low": ("dola", {"layers": "low"}, 1.2),
         "deco": ("deco", {}, 1.0)}
BATCH1 = {"dola_high": [0, 1], "deco": [0, 1]}  # (mode -> prompt indices) also pinned at batch 1


def generate(model, ids, mask, mode):
    name, overrides, penalty = MODES[mode]
    with torch.inference_mode(), decoding(model, name, **overrides):
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW_TOKENS,
                             min_new_tokens=NEW_TOKENS, do_sample=False, repetition_penalty=penalty,
                             pad_token_id=0)
    return out[:, ids.shape[1]:].tolist()


def main() -> None:
    model, tok = steer.load_model(dtype="float32", device="cpu")
    batch = encode_batch(tok, [render_prompt(tok, p) for p in PROMPTS], templated=True)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    record = {"model": "SmolLM2-135M-Instruct (steer.load_model(dtype='float32'))",
              "torch": torch.__version__, "transformers": transformers.__version__,
              "prompts": PROMPTS, "new_tokens": NEW_TOKENS,
              "modes": {k: {"mode": v[0], "overrides": v[1], "repetition_penalty": v[2]} for k, v in MODES.items()},
              "input_ids": ids.tolist(), "attention_mask": mask.tolist(), "batch": {}, "single": {}}
    for mode in MODES:
        record["batch"][mode] = generate(model, ids, mask, mode)
    for mode, rows in BATCH1.items():
        record["single"][mode] = {}
        for row in rows:
            keep = mask[row].bool()
            record["single"][mode][str(row)] = generate(model, ids[row, keep][None], mask[row, keep][None], mode)[0]
    target = Path(__file__).with_name("steer_pinned.json")
    with tempfile.NamedTemporaryFile("w", dir=target.parent, delete=False, suffix=".tmp") as handle:
        json.dump(record, handle, indent=1)
    os.replace(handle.name, target)
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
