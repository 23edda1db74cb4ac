"""Time of DoLa and DeCo next to plain greedy decoding on the default model, and a profile.

    python benchmarks/decoding_overhead.py [--batch-size 1] [--new-tokens 32] [--repeats 5]
    python benchmarks/decoding_overhead.py --batch-size 8 --profile      # where a DoLa step's time goes
    python benchmarks/decoding_overhead.py --batch-size 8 --modes "DoLa high,DeCo" --repeats 10
    /tmp/ref455/bin/python benchmarks/decoding_overhead.py --reference   # HF transformers 4.55's own DoLa

Every mode generates exactly the same number of tokens (EOS suppressed with
min_new_tokens) from the same raw-text prompts (the first --batch-size of 8, left
padded), greedy, no repetition penalty. Modes run interleaved inside one process, each
repeated, and the best time of each is kept, so drift in machine load hits every mode
alike. The ratio is mode time / plain greedy time in the same process; the median of
the ratios within each round is printed next to it (on a shared machine a slow spell
can hit one mode's every run; a round's ratio shares its load).

--reference runs Hugging Face transformers 4.55's `generate(dola_layers=...)` against
its own plain greedy, with the same prompts and settings. It imports nothing from steer
(steer needs transformers 5), so run it under the venv described in
tests/data/dola_reference/README.md; it reads the model from steer's cache.

--profile runs DoLa `high` under torch.profiler and prints where a decoding step's time
goes: the model's own forward, the early-exit head, the divergence, the rest of the
step, and the top operators.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch.profiler import record_function

PROMPTS = ["The capital of France is", "Water boils at a temperature of", "Once upon a time, a dragon",
           "Vaccines work by", "The sky is blue because", "Photosynthesis is the process by which",
           "A prime number is", "The moon is"]


def _steer_modes(model: Any) -> dict[str, Callable[[], Any]]:
    from steer.decoding import decoding

    specs: dict[str, tuple[str, dict[str, Any]] | None] = {
        "plain greedy": None,
        "DoLa high": ("dola", {"layers": "high"}),
        "DoLa high, no final norm": ("dola", {"layers": "high", "early_exit_norm": False}),
        "DoLa low": ("dola", {"layers": "low"}),
        "DoLa static (layer 16)": ("dola", {"premature_layer": 16}),
        "DeCo": ("deco", {}),
    }
    return {name: (lambda spec=spec: decoding(model, spec[0], **spec[1]) if spec else nullcontext())
            for name, spec in specs.items()}


def _reference_modes() -> dict[str, dict[str, Any]]:
    return {"plain greedy": {}, "DoLa high": {"dola_layers": "high"}, "DoLa low": {"dola_layers": "low"}}


def _load_reference() -> tuple[Any, Any]:
    path = Path(__file__).resolve().parents[1] / "tests" / "data" / "dola_reference" / "make_reference.py"
    spec = importlib.util.spec_from_file_location("make_reference", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.load(module.default_model_dir())


def _batch(tokenizer: Any, size: int) -> dict[str, torch.Tensor]:
    rows = [tokenizer(p)["input_ids"] for p in PROMPTS[:size]]
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.tensor([[pad] * (width - len(r)) + list(r) for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return {"input_ids": ids, "attention_mask": mask}


class _ModuleRange:
    """A named profiler range around every call of one module (opened by a pre-hook, closed by a hook).

    Benchmark-only: it lets the profile show the LM-head call, which runs inside the
    model's forward with the early exits appended to its input.
    """

    def __init__(self, module: torch.nn.Module, name: str) -> None:
        self.name, self.open = name, []
        self.handles = [module.register_forward_pre_hook(self._enter),
                        module.register_forward_hook(self._exit, prepend=True)]

    def _enter(self, module: Any, args: Any) -> None:
        span = record_function(self.name)
        span.__enter__()
        self.open.append(span)

    def _exit(self, module: Any, args: Any, output: Any) -> None:
        self.open.pop().__exit__(None, None, None)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _profile(model: Any, batch: dict[str, torch.Tensor], new_tokens: int, pad: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    from steer.decoding import decoding
    from steer.sites import Site, SiteMap

    def run() -> None:
        model.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                       pad_token_id=pad)

    head = SiteMap(model).module(Site("lm_head"))
    spans = _ModuleRange(head, "lm_head call")  # registered before decoding's hooks: it sees the widened input
    try:
        with torch.inference_mode():
            run()  # warm up plain
            with profile(activities=[ProfilerActivity.CPU]) as plain_prof:
                start = time.perf_counter()
                run()
                plain = time.perf_counter() - start
            with decoding(model, "dola", layers="high"):
                run()  # warm up
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    start = time.perf_counter()
                    run()
                    total = time.perf_counter() - start
    finally:
        spans.remove()

    def ms(profiled: Any, key: str) -> float:
        event = {e.key: e for e in profiled.key_averages()}.get(key)
        return event.cpu_time_total / 1e3 / new_tokens if event else 0.0

    step = ms(prof, "steer.decoding.step")
    head_dola, head_plain = ms(prof, "lm_head call"), ms(plain_prof, "lm_head call")
    rows = batch["input_ids"].shape[0]
    print(f"\nDoLa high, batch {rows}: {total / new_tokens * 1e3:.1f} ms a token under the profiler; "
          f"plain greedy {plain / new_tokens * 1e3:.1f} ms under the profiler")
    print("| part (per generated token) | DoLa high, ms | plain greedy, ms |")
    print("|---|---|---|")
    print(f"| LM-head call (DoLa: final + 8 early-exit rows per row, one matmul) | {head_dola:.1f} | {head_plain:.1f} |")
    print(f"| final norm of the early-exit rows | {ms(prof, 'steer.decoding.early_exit_head'):.1f} | - |")
    print(f"| divergence (log-softmaxes, one log pass, product-sum) | {ms(prof, 'steer.decoding.divergence'):.1f} | - |")
    print(f"| rest of the step (filter, contrast, layer pick) | {step - ms(prof, 'steer.decoding.divergence'):.1f} | - |")
    print("\nTop operators by self CPU time (DoLa high):")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    _head_once_versus_twice(head, rows, SiteMap(model).hidden_size)
    _step_versus_reference_form(rows, model.config.vocab_size)


def _head_once_versus_twice(head: torch.nn.Module, rows: int, hidden: int, candidates: int = 8,
                            repeats: int = 20) -> None:
    """The LM head over final + early-exit rows: one call (steer) vs a call for each (the reference's way)."""
    generator = torch.Generator().manual_seed(0)
    final = torch.randn(rows, 1, hidden, generator=generator)
    early = torch.randn(rows, candidates, hidden, generator=generator)
    joined = torch.cat([final, early], dim=1)
    best = {"two calls": float("inf"), "one call": float("inf")}
    with torch.inference_mode():
        for _ in range(repeats):  # interleaved, best of `repeats`
            for name, run in (("two calls", lambda: (head(final), head(early))), ("one call", lambda: head(joined))):
                start = time.perf_counter()
                run()
                best[name] = min(best[name], time.perf_counter() - start)
    print(f"\nLM head over {rows} final + {rows * candidates} early-exit rows, best of {repeats}: "
          f"two calls {best['two calls'] * 1e3:.1f} ms, one call {best['one call'] * 1e3:.1f} ms")


def _step_versus_reference_form(rows: int, vocab: int, candidates: int = 8, repeats: int = 20) -> None:
    """One DoLa step as written in the reference (two kl_div passes, filter redoing the log-softmaxes) vs steer's."""
    from steer.decoding import Dola, DolaHParams
    from steer.decoding.dola import reference_divergence, relative_top_filter

    generator = torch.Generator().manual_seed(0)
    final = torch.randn(rows, vocab, generator=generator) * 4
    early = torch.randn(candidates, rows, vocab, generator=generator) * 4
    step = Dola(DolaHParams(layers=list(range(candidates))), candidates + 1, False)

    def reference_form() -> None:
        chosen = reference_divergence(final, early).argmax(dim=0)
        final_norm, base_norm = relative_top_filter(final, early[chosen, torch.arange(rows)])
        _ = final_norm - base_norm

    best = {"reference form": float("inf"), "steer": float("inf")}
    for _ in range(repeats):  # interleaved, best of `repeats`
        for name, run in (("reference form", reference_form), ("steer", lambda: step(final, early))):
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    print(f"\nOne DoLa step after the head ({candidates} candidates, {rows} rows, vocabulary {vocab}), "
          f"best of {repeats}: reference form {best['reference form'] * 1e3:.1f} ms, "
          f"steer {best['steer'] * 1e3:.1f} ms ({best['reference form'] / best['steer']:.1f}x faster)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--reference", action="store_true", help="HF transformers 4.55's DoLa (run in its venv)")
    parser.add_argument("--profile", action="store_true", help="also profile one DoLa high generation")
    parser.add_argument("--modes", default="", help="comma-separated mode names to time besides plain greedy "
                        "(default: all), e.g. 'DoLa high,DeCo': fewer modes, more repeats in the same time")
    args = parser.parse_args()
    if not 1 <= args.batch_size <= len(PROMPTS):
        parser.error(f"--batch-size must be 1..{len(PROMPTS)}")
    if args.reference:
        model, tokenizer = _load_reference()
        contexts = None
        modes: dict[str, Any] = _reference_modes()
    else:
        import steer

        model, tokenizer = steer.load_model(dtype="float32", device="cpu")
        contexts = _steer_modes(model)
        modes = {name: {} for name in contexts}
    if args.modes:
        wanted = {"plain greedy", *(m.strip() for m in args.modes.split(","))}
        unknown = wanted - set(modes)
        if unknown:
            parser.error(f"--modes: unknown {sorted(unknown)}; choose from {sorted(modes)}")
        modes = {name: kwargs for name, kwargs in modes.items() if name in wanted}
    batch = _batch(tokenizer, args.batch_size)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    best: dict[str, float] = {}
    rounds: list[dict[str, float]] = []  # each round's times: a ratio within one round shares its load
    with torch.inference_mode():
        for repeat in range(args.repeats + 1):  # the first round warms up and is not counted
            for name, kwargs in modes.items():
                context = contexts[name]() if contexts else nullcontext()
                with context:
                    start = time.perf_counter()
                    model.generate(**batch, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                   do_sample=False, pad_token_id=pad, **kwargs)
                    elapsed = time.perf_counter() - start
                if repeat:
                    best[name] = min(best.get(name, float("inf")), elapsed)
                    if name == next(iter(modes)):
                        rounds.append({})
                    rounds[-1][name] = elapsed
    import transformers

    side = "HF transformers reference" if args.reference else "steer"
    print(f"{side}: transformers {transformers.__version__}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, batch {args.batch_size}, {args.new_tokens} new tokens, "
          f"best of {args.repeats} interleaved repeats")
    print("| mode | tokens/s | time ratio vs plain greedy (best times) | median of per-round ratios |")
    print("|---|---|---|---|")
    tokens = args.new_tokens * args.batch_size
    for name, seconds in best.items():
        median = statistics.median(r[name] / r["plain greedy"] for r in rounds)
        print(f"| {name} | {tokens / seconds:.1f} | {seconds / best['plain greedy']:.2f}x | {median:.2f}x |")
    if args.profile and not args.reference:
        _profile(model, batch, args.new_tokens, pad)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
