"""Steered vs plain Hugging Face `generate` on the default model: tokens/s and time ratios.

    python benchmarks/steering_overhead.py [--new-tokens 64] [--repeats 5] [--device cpu]

Conditions run interleaved inside one process, each repeated, and the best time of
each is kept (these machines are noisy). Every run generates exactly --new-tokens
tokens per row (min_new_tokens), so tokens/s compare like for like. The ratio is
steered time / plain time; the target is at most 1.05.

"plain, while another thread steers" is an unsteered caller while a second thread sits
inside a steering block on the same model: steering is context-local, so the caller's
passes go through the shared hooks but are not changed (and should cost nothing).

The "nnsight" rows steer through the nnsight backend (`backend="nnsight"`): the same
interventions inside nnsight's generate, every step. They run on a second copy of the
model, wrapped in nnsight (its controllers sit on every module), so the plain and torch
rows measure a model nnsight never touched; "plain generate, nnsight-wrapped copy" shows
what the wrapping costs outside a trace, "nnsight generate, unsteered" nnsight's own cost.
Every generation goes through `steer.sites.backend.generate`, which is `model.generate`
when no nnsight block is active.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch

import steer
from steer.io.table import format_table
from steer.prompts import encode_batch, render_prompt
from steer.application import Steer
from steer.sites.backend import generate as backend_generate
from steer.sites.backends.nnsight import NnsightBackend

PROMPTS = [
    "Tell me about the sea.", "What is the capital of France?", "Write a short poem about rain.",
    "How do I bake bread?", "Explain gravity to a child.", "Give me three tips for sleeping well.",
    "What is a steering vector?", "Describe your favourite city.",
]


@contextmanager
def steered_elsewhere(model: torch.nn.Module, vector: steer.SteeringVector) -> Iterator[None]:
    """Another thread holds a steering block on `model` for the length of this block."""
    inside, done = threading.Event(), threading.Event()

    def hold() -> None:
        with steer.steering(model, (vector, 2.0)):
            inside.set()
            done.wait()

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    inside.wait()
    try:
        yield
    finally:
        done.set()
        holder.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", nargs="+", default=None, metavar="WORD",
                        help="run only the conditions whose name contains one of these words (plain generate always runs)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model, tok = steer.load_model(device=args.device)
    vector = steer.SteeringVector({"resid_post.12": torch.randn(576, generator=torch.Generator().manual_seed(0))},
                                  steer.VectorMeta(model_id=steer.DEFAULT_MODEL_ID))
    two_layers = steer.SteeringVector({f"resid_post.{layer}": torch.randn(576) for layer in (6, 12, 18)},
                                      steer.VectorMeta(model_id=steer.DEFAULT_MODEL_ID))
    conditions: dict[str, Callable[[], AbstractContextManager[object]]] = {
        "plain generate": nullcontext,
        "steered, 1 layer, all positions": lambda: steer.steering(model, (vector, 2.0)),
        "steered, 1 layer, after_instruction": lambda: steer.steering(model, Steer(vector, 2.0, "after_instruction"), tokenizer=tok),
        "steered, 3 layers, all positions": lambda: steer.steering(model, (two_layers, 1.0)),
        "plain, while another thread steers": lambda: steered_elsewhere(model, two_layers),
        "plain generate, nnsight-wrapped copy": nullcontext,
        "nnsight generate, unsteered": nullcontext,
        "nnsight, 1 layer, all positions": lambda: steer.steering(wrapped, (vector, 2.0), tokenizer=tok,
                                                                  backend="nnsight"),
        "nnsight, 1 layer, after_instruction": lambda: steer.steering(wrapped, Steer(vector, 2.0, "after_instruction"),
                                                                      tokenizer=tok, backend="nnsight"),
        "nnsight, 3 layers, all positions": lambda: steer.steering(wrapped, (two_layers, 1.0), tokenizer=tok,
                                                                   backend="nnsight"),
    }
    if args.only:
        conditions = {name: c for name, c in conditions.items()
                      if name == "plain generate" or any(word in name for word in args.only)}
    wrapped, _ = steer.load_model(device=args.device)  # a second copy, for the nnsight rows only
    nnsight_plain = NnsightBackend()

    def run(name: str, batch: dict[str, torch.Tensor], **kwargs: object) -> torch.Tensor:
        if name == "nnsight generate, unsteered":
            return nnsight_plain.generate(wrapped, batch, **kwargs)
        target = wrapped if "nnsight" in name else model
        return backend_generate(target, batch, **kwargs)  # model.generate unless an nnsight block is active
    rows = []
    for batch_size in args.batch_sizes:
        texts = [render_prompt(tok, p) for p in (PROMPTS * 8)[:batch_size]]
        batch = encode_batch(tok, texts, templated=True, device=args.device)
        kwargs = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                      pad_token_id=tok.pad_token_id)
        model.generate(**batch, max_new_tokens=4, pad_token_id=tok.pad_token_id)  # warm-up
        with steer.steering(wrapped, (vector, 2.0), tokenizer=tok, backend="nnsight"):  # wraps the copy once
            backend_generate(wrapped, batch, max_new_tokens=4, pad_token_id=tok.pad_token_id)
        best = {name: float("inf") for name in conditions}
        best_cpu = dict(best)  # this process's CPU time: less sensitive than wall time to other jobs' load
        for _ in range(args.repeats):
            for name, context in conditions.items():  # interleaved: drift hits every condition alike
                with context():
                    start, start_cpu = time.perf_counter(), time.process_time()
                    run(name, batch, **kwargs)
                    best[name] = min(best[name], time.perf_counter() - start)
                    best_cpu[name] = min(best_cpu[name], time.process_time() - start_cpu)
        plain, plain_cpu = best["plain generate"], best_cpu["plain generate"]
        for name, seconds in best.items():
            rows.append([batch_size, name, batch_size * args.new_tokens / seconds, seconds / plain,
                         best_cpu[name] / plain_cpu])
    print(f"{steer.DEFAULT_MODEL_ID}, {args.new_tokens} new tokens, best of {args.repeats}, device {args.device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(format_table(["batch", "condition", "tokens/s", "time vs plain", "CPU time vs plain"], rows, max_width=40))


if __name__ == "__main__":
    main()
