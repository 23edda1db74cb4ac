"""Seconds per edit for each editing method on the default model (SmolLM2-135M-Instruct).

"uncached" is the first edit with an empty statistics cache, a fresh one per method (it
includes computing the key statistics); "cached" is the mean over the following edits,
which reuse them from disk. Methods without statistics (ft_l, ft_m) report the same kind of number for both.

    python benchmarks/edit_latency.py --edits 2 --out benchmarks/edit_latency.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

DEFAULT_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "zsre", "zsre_mend_eval_head.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["rome", "memit", "alphaedit", "ft_l", "ft_m"])
    parser.add_argument("--edits", type=int, default=3, help="edits per method (the first is the uncached one)")
    parser.add_argument("--data", default=DEFAULT_DATA, help="ZsRE or EasyEdit-style requests")
    parser.add_argument("--out", help="write the numbers as JSON")
    args = parser.parse_args()
    import torch

    from steer.edit import Editor, load_requests
    from steer.io.atomic import write_json_atomic
    from steer.io.table import format_table
    from steer.models.loading import load_model

    # load from the user's cache (the converted model lives there); each method then gets an
    # empty statistics cache, so its first edit really computes them (MEMIT, AlphaEdit and
    # ROME share layers, and one shared folder would let a later method find them on disk)
    model, tokenizer = load_model(dtype="float32", device="cpu")
    requests = load_requests(args.data, args.edits)
    rows, report = [], {"model": "HuggingFaceTB/SmolLM2-135M-Instruct", "threads": torch.get_num_threads(), "methods": {}}
    for method in args.methods:
        os.environ["STEER_CACHE"] = tempfile.mkdtemp(prefix=f"steer-edit-bench-{method}-")
        editor = Editor(model, tokenizer, method, progress=False)
        times = []
        for request in requests:
            start = time.perf_counter()
            editor.apply([request])
            times.append(time.perf_counter() - start)
            editor.rollback()
        cached = statistics.fmean(times[1:]) if len(times) > 1 else None
        report["methods"][method] = {"uncached_first_edit_s": times[0], "cached_mean_s": cached, "all_s": times}
        rows.append([method, times[0], "-" if cached is None else cached, len(times)])
    print(format_table(["method", "first edit, uncached stats (s)", "later edits, cached stats (s/edit)", "edits"], rows))
    if args.out:
        write_json_atomic(args.out, report)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
