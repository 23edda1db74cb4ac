"""Lifelong editing: T sequential ZsRE edits per method, measured after the last one.

For each method and each T, the first T valid ZsRE records are edited one after another
(every edit kept, `Editor.apply`), and only then are all T measured: rewrite and rephrase
accuracy (how many earlier edits survive the later ones: retention) and locality (agreement
of each record's locality answer with the unedited model's predictions, read before the
first edit). Also reported: seconds per edit (`apply` wall time), the bytes the Editor
keeps to roll the whole sequence back (`rollback_bytes`), and the process's peak RSS. After
each run the sequence is rolled back and the weights are checked to be bitwise the
original ones.

    python benchmarks/edit_lifelong.py --T 1 10 100 --methods rome r_rome memit emmet alphaedit ft_m lora grace wise \
        --out benchmarks/edit_lifelong.json

Every method uses its shipped hparams for the model (`hparams/<method>/<model>.yaml`);
`--set method.key=value` overrides one (e.g. `--set rome.v_num_grad_steps=20`). Each run
records the command that made it; the runs already in --out are kept (a run of the same
method, T and --set replaces its earlier one), so long runs can be made one at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import sys
import time
from typing import Any

DEFAULT_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "zsre", "zsre_mend_eval_head.json")
METHODS = ["rome", "r_rome", "memit", "emmet", "alphaedit", "ft_m", "ft_l", "lora", "grace", "wise"]
HEADER = ["| method | T | rewrite | rephrase | locality | s/edit | rollback MB | peak RSS MB |",
          "|---|---|---|---|---|---|---|---|"]


def _mean(values: list[Any]) -> float | None:
    values = [float(v) for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def row(run: dict[str, Any]) -> str:
    return (f"| {run['method']} | {run['T']} | {_fmt(run['rewrite'])} | {_fmt(run['rephrase'])} | "
            f"{_fmt(run['locality'])} | {_fmt(run['seconds_per_edit'], 1)} | {_fmt(run['rollback_mb'], 1)} | "
            f"{_fmt(run['peak_rss_mb'], 0)} |")


def overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    from steer.config import parse_overrides

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        method, dot, rest = item.partition(".")
        if not dot:
            raise SystemExit(f"--set {item!r}: write method.key=value, e.g. rome.v_num_grad_steps=20")
        out.setdefault(method, {}).update(parse_overrides([rest]))
    return out


def run_one(model: Any, tokenizer: Any, method: str, requests: list[Any], hp: dict[str, Any] | None) -> dict[str, Any]:
    import torch

    from steer.edit import Editor
    from steer.edit.metrics import evaluate

    editor = Editor(model, tokenizer, method, hp or None, progress=False)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    pres = [evaluate(model, tokenizer, r) for r in requests]
    seconds = []
    for request in requests:
        start = time.perf_counter()
        editor.apply([request])
        seconds.append(time.perf_counter() - start)
    posts = [evaluate(model, tokenizer, r, before=pre) for r, pre in zip(requests, pres)]
    kept = editor.rollback_bytes()
    editor.rollback()
    restored = all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    if not restored:
        raise SystemExit(f"{method}: the weights are not bitwise the original ones after rollback")
    return {
        "method": method, "T": len(requests),
        "rewrite": _mean([p["rewrite_acc"] for p in posts]),
        "rephrase": _mean([p["rephrase_acc"] for p in posts]),
        "locality": _mean([_mean(list(p["locality"].values())) for p in posts]),
        "rewrite_pre": _mean([p["rewrite_acc"] for p in pres]),
        "seconds_per_edit": statistics.fmean(seconds), "rollback_mb": kept / 2**20,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "restored_bitwise": restored,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=int, nargs="+", default=[1, 10, 100], help="sequence lengths")
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--data", default=DEFAULT_DATA, help="ZsRE records (MEND/ROME format)")
    parser.add_argument("--set", nargs="*", default=[], metavar="METHOD.KEY=VALUE", help="hparam overrides")
    parser.add_argument("--out", help="write every run as JSON")
    args = parser.parse_args()
    import torch

    from steer.edit import load_requests
    from steer.io.atomic import write_json_atomic
    from steer.models.loading import load_model

    hp = overrides(args.set)
    model, tokenizer = load_model(dtype="float32", device="cpu")
    skipped: list[str] = []
    requests = load_requests(args.data, max(args.T) + 10, on_invalid=skipped.append)
    command = "python benchmarks/edit_lifelong.py " + shlex.join(sys.argv[1:])
    earlier: dict[str, Any] = {}
    if args.out and os.path.isfile(args.out):
        with open(args.out, encoding="utf-8") as f:
            earlier = json.load(f)
        if earlier.get("kind") != "edit-lifelong":
            raise SystemExit(f"{args.out} is not an edit_lifelong.py report; give another --out")
    runs: list[dict[str, Any]] = list(earlier.get("runs", []))
    print("\n".join(HEADER), flush=True)
    for method in args.methods:
        for t in args.T:
            if t > len(requests):
                raise SystemExit(f"--T {t}: only {len(requests)} valid records in {args.data}")
            load_before = os.getloadavg()[0]
            run = {**run_one(model, tokenizer, method, requests[:t], hp.get(method)), "set": hp.get(method, {}),
                   "command": command, "threads": torch.get_num_threads(),
                   "load_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
            runs = [r for r in runs if (r["method"], r["T"], r.get("set")) != (method, t, run["set"])] + [run]
            print(row(run), flush=True)
            if args.out:
                write_json_atomic(args.out, {**earlier, "kind": "edit-lifelong", "data": os.path.basename(args.data),
                                             "skipped": skipped, "runs": runs})


if __name__ == "__main__":
    main()
