"""Tokens/s of DoLa and DeCo next to plain greedy decoding on the default model.

    python benchmarks/decoding_overhead.py [--batch-size 1] [--new-tokens 32] [--repeats 3]

Every mode generates exactly the same number of tokens (EOS suppressed with
min_new_tokens) from the same prompts in one process, best of several repeats; the
ratio is mode time / plain greedy time (target: at most 1.25).
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext

import torch

import steer
from steer.decoding import decoding
from steer.prompts import encode_batch, render_prompt

PROMPTS = ["What is the capital of France?", "Tell me a short story about a dragon.",
           "How do vaccines work?", "Give me three tips for sleeping well.", "Why is the sky blue?",
           "Explain photosynthesis simply.", "What is a prime number?", "Describe the moon."]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model, tokenizer = steer.load_model(dtype="float32", device="cpu")
    texts = [render_prompt(tokenizer, p) for p in PROMPTS[: args.batch_size]]
    batch = encode_batch(tokenizer, texts, templated=True)
    modes = {"plain greedy": None, "dola (high)": ("dola", {"layers": "high"}), "deco": ("deco", {})}
    best: dict[str, float] = {}
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits every mode alike
        for name, spec in modes.items():
            context = decoding(model, spec[0], **spec[1]) if spec else nullcontext()
            with context, torch.inference_mode():
                start = time.perf_counter()
                model.generate(**batch, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                               do_sample=False, pad_token_id=tokenizer.pad_token_id or 0)
                elapsed = time.perf_counter() - start
            best[name] = min(best.get(name, float("inf")), elapsed)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch_size}, "
          f"{args.new_tokens} new tokens, best of {args.repeats}")
    print("| mode | tokens/s | time ratio vs plain greedy |")
    print("|---|---|---|")
    tokens = args.new_tokens * args.batch_size
    for name, seconds in best.items():
        print(f"| {name} | {tokens / seconds:.1f} | {seconds / best['plain greedy']:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
