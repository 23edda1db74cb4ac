"""Batch hyper-parameters for MEMIT, AlphaEdit and EMMET, tuned on held-apart ZsRE records.

One batched edit of all tuning records per variant (a method and a few hyper-parameter
overrides), measured by rewrite, rephrase and locality, then rolled back:

    python benchmarks/batch_tuning.py --start 200 --stop 300 --out benchmarks/batch_tuning.json

The records are ZsRE's records START..STOP-1 (invalid ones skipped and listed), held apart
from the first 100 that the reports evaluate on. The expensive part, each request's target
value, does not depend on the hyper-parameters swept here (the solve's lambda, the layers
below the last one, AlphaEdit's null-space threshold and L2, EMMET's lambda): it is
optimised once per request with the base YAML's value settings and kept in a
`steer.edit.ValueCache`, and written to `--values` (safetensors, with the value settings and
a fingerprint of the weights, so a rerun or an interrupted run reuses them and a changed
model or setting recomputes them). Each variant then costs its solve and its evaluation.

`--value-settings nll_stop=0.3` (with its own `--values` file) optimises and uses values with other
value settings; `--ordinary-text PATH` takes the held-out "ordinary" keys from the end of another
text. benchmarks/batch_tuning_levers.json holds the second round (covariance from more text, a
ridge, smaller targets, more layers; README_2 §10 "Batches of 100").

Besides the metrics, each variant records why locality falls: the relative size of each
layer's update (|dW|_F / |W|_F), how far the update moves the tuning requests' own keys
against ordinary text's keys, which locality probes changed their answer, and how well the key
statistics C describe text they did not read (their spectrum and the mean k^T C^-1 k / d_in).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from typing import Any

DEFAULT_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "zsre", "zsre_mend_eval_head.json")

# (method, label, overrides of hparams/<method>/smollm2-135m-instruct.yaml)
LAYERS_1_7 = [1, 2, 3, 4, 5, 6, 7]
VARIANTS: list[tuple[str, str, dict[str, Any]]] = [
    ("memit", "single-edit YAML (lambda 100, layers 3-7)", {}),
    ("memit", "lambda 300", {"mom2_update_weight": 300.0}),
    ("memit", "lambda 1000", {"mom2_update_weight": 1000.0}),
    ("memit", "lambda 3000", {"mom2_update_weight": 3000.0}),
    ("memit", "lambda 10000", {"mom2_update_weight": 10000.0}),
    ("memit", "layers 1-7, lambda 1000", {"layers": LAYERS_1_7, "mom2_update_weight": 1000.0}),
    ("memit", "layers 1-7, lambda 3000", {"layers": LAYERS_1_7, "mom2_update_weight": 3000.0}),
    # EMMET's solve equals MEMIT's with lambda = mom2_update_weight * emmet_lambda (update_norm_lambda 0)
    ("emmet", "single-edit YAML (lambda 10000 x emmet_lambda 0.1)", {}),
    ("emmet", "emmet_lambda 0.3", {"emmet_lambda": 0.3}),
    ("alphaedit", "single-edit YAML (threshold 0.02, L2 10)", {}),
    # C's eigenvalues on layers 3-7 lie in 0.0014-1.9 (no exact null space): 0.02 keeps 1103-1344 of 1536 directions
    ("alphaedit", "threshold 0.01", {"nullspace_threshold": 0.01}),
    ("alphaedit", "threshold 0.005", {"nullspace_threshold": 0.005}),
    ("alphaedit", "L2 1", {"L2": 1.0}),
    ("alphaedit", "L2 100", {"L2": 100.0}),
]


def parse_variant(text: str) -> tuple[str, str, dict[str, Any]]:
    """`METHOD` or `METHOD:KEY=VALUE,KEY=VALUE` (values as YAML scalars or lists: layers=[1,2,3])."""
    import yaml

    method, _, rest = text.partition(":")
    overrides: dict[str, Any] = {}
    if rest:
        for part in _split_top(rest):
            key, sep, value = part.partition("=")
            if not sep:
                raise SystemExit(f"--variant {text!r}: write KEY=VALUE pairs, e.g. memit:mom2_update_weight=1000")
            overrides[key.strip()] = yaml.safe_load(value)
    return method, rest or "YAML", overrides


def _split_top(text: str) -> list[str]:
    """Split on commas outside brackets."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return parts + [current] if current else parts


def load_split(path: str, start: int, stop: int) -> tuple[list[int], list[Any], list[str]]:
    """Records START..STOP-1 as requests, with their record indices; invalid ones skipped."""
    from steer.edit.requests import requests_from_record
    from steer.errors import DataError
    from steer.io.datasets import load_records

    records = load_records(path)
    if stop > len(records):
        raise SystemExit(f"--stop {stop}: {path} has only {len(records)} records")
    ids, requests, skipped = [], [], []
    for i in range(start, stop):
        try:
            found = requests_from_record(records[i], f"record {i}")
        except DataError as error:  # an invalid record (e.g. an empty target)
            skipped.append(str(error))
            continue
        ids += [i] * len(found)
        requests += found
    return ids, requests, skipped


def summarise(pre: list[dict[str, Any]], post: list[dict[str, Any]]) -> dict[str, Any]:
    def mean(rows: list[dict[str, Any]], key: str) -> float | None:
        values = [float(r[key]) for r in rows if r.get(key) is not None]
        return statistics.fmean(values) if values else None

    locality = [float(v) for r in post for v in r["locality"].values()]
    return {"rewrite_pre": mean(pre, "rewrite_acc"), "rewrite_post": mean(post, "rewrite_acc"),
            "rephrase_pre": mean(pre, "rephrase_acc"), "rephrase_post": mean(post, "rephrase_acc"),
            "locality_post": statistics.fmean(locality) if locality else None}


class ValueStore:
    """Target values on disk (safetensors + JSON metadata), checked against settings and weights."""

    def __init__(self, path: str | None) -> None:
        self.path = path

    def load(self, signature: str) -> dict[str, Any]:
        if not self.path or not os.path.isfile(self.path):
            return {}
        from safetensors import safe_open

        with safe_open(self.path, framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("signature") != signature:
                print(f"{self.path}: other value settings or weights; recomputing", flush=True)
                return {}
            extra = json.loads(meta["extra"])
            return {key: (f.get_tensor(f"{key}.target"), f.get_tensor(f"{key}.original"), *extra[key])
                    for key in extra}

    def save(self, signature: str, values: dict[str, Any]) -> None:
        if not self.path:
            return
        from safetensors.torch import save_file

        tensors, extra = {}, {}
        for key, (target, original, nll, steps) in values.items():
            tensors[f"{key}.target"] = target.contiguous().cpu()
            tensors[f"{key}.original"] = original.contiguous().cpu()
            extra[key] = [nll, steps]
        tmp = f"{self.path}.tmp{os.getpid()}"
        save_file(tensors, tmp, metadata={"signature": signature, "extra": json.dumps(extra)})
        os.replace(tmp, self.path)  # atomic


def request_key(request: Any) -> str:
    return json.dumps([request.prompt, request.subject, request.target_new])


def fill_values(model: Any, tokenizer: Any, requests: list[Any], cache: Any, store: ValueStore,
                stored_only: bool = False, value_settings: dict[str, Any] | None = None) -> tuple[int, set[str]]:
    """Optimise (or load) every request's target value into `cache`, with MEMIT's YAML value settings
    changed by `value_settings` (e.g. {"clamp_norm_factor": 2.0}).

    Returns how many were optimised and the `request_key` of every request with a value."""

    import torch
    from tqdm.auto import tqdm

    from steer.edit import Editor
    from steer.edit.context import running_on
    from steer.edit.hparams import ValueHparams
    from steer.edit.templates import context_prefixes
    from steer.edit.value import ValueResult, optimise_value, weights_fingerprint
    from steer.sites.resolve import Site

    editor = Editor(model, tokenizer, "memit", hparams=dict(value_settings or {}), progress=False, value_cache=cache)
    hp = editor.hparams
    site = Site("resid_post", max(hp.layers))
    prefixes = context_prefixes(editor.ctx, hp.context_template_lengths, hp.seed)
    value_fields = {f.name: getattr(hp, f.name) for f in dataclasses.fields(ValueHparams)}
    signature = json.dumps([value_fields, str(site), prefixes, weights_fingerprint(model)], sort_keys=True)
    stored = store.load(signature)
    for request in requests:
        if (found := stored.get(request_key(request))) is not None:
            target, original, nll, steps = found
            cache.put(cache.key(model, request, site, hp, prefixes), ValueResult(target, original, nll, steps))
    without = [r for r in requests if request_key(r) not in stored]
    missing = [] if stored_only else without
    print(f"target values: {len(requests) - len(without)} loaded, {len(missing)} to optimise", flush=True)
    for i, request in enumerate(tqdm(missing, desc="target values", unit="request")):
        with running_on(editor.ctx), torch.enable_grad():
            result = optimise_value(editor.ctx, request, site, hp)
        stored[request_key(request)] = (result.target, result.original, result.nll, result.steps)
        if (i + 1) % 10 == 0 or i + 1 == len(missing):
            store.save(signature, stored)
    return len(missing), set(stored)


def run_variant(model: Any, tokenizer: Any, requests: list[Any], ids: list[int], pre: list[dict[str, Any]],
                cache: Any, method: str, overrides: dict[str, Any], ordinary_keys: dict[int, Any]) -> dict[str, Any]:
    from steer.edit import Editor
    from steer.edit.metrics import evaluate, public

    editor = Editor(model, tokenizer, method, hparams=dict(overrides), progress=False, value_cache=cache)
    hits = cache.hits
    start = time.perf_counter()
    edit = editor.apply(requests)
    solve_seconds = time.perf_counter() - start
    post = [evaluate(model, tokenizer, r, before=p) for r, p in zip(requests, pre)]
    deltas = editor.weight_deltas()
    sizes, moved = {}, {}
    for layer, delta in deltas.items():
        weight = editor.sites.down_weight_as_out_in(layer).detach().cpu().float() - delta
        sizes[layer] = float(delta.norm() / weight.norm())
        if layer in ordinary_keys:  # |dW k| / |W k| on keys of ordinary text (WikiText chunks)
            keys = ordinary_keys[layer]
            moved[layer] = float((keys @ delta.T).norm(dim=1).mean() / (keys @ weight.T).norm(dim=1).mean())
    editor.rollback()
    spectrum = key_statistics_quality(editor, ordinary_keys)
    changed = [ids[i] for i, p in enumerate(post) if any(v < 1.0 for v in p["locality"].values())]
    summary = summarise(pre, post)
    return {"method": method, "overrides": overrides, "hparams": {k: v for k, v in vars(editor.hparams).items()
                                                                  if not k.startswith("_")},
            **summary, "targets_reused": cache.hits - hits, "solve_seconds": solve_seconds,
            "update_size": sizes, "ordinary_key_shift": moved, "locality_changed_records": changed,
            "null_space_dims": edit.info.get("null_space_dims"), "key_statistics": spectrum,
            "target_nll": edit.info.get("nll"),
            "per_request": [{"record": ids[i], "rewrite": p["rewrite_acc"], "rephrase": p["rephrase_acc"],
                             "locality": public(p)["locality"]} for i, p in enumerate(post)]}


def key_statistics_quality(editor: Any, ordinary_keys: dict[int, Any]) -> dict[int, dict[str, float]]:
    """Per edited layer: C's eigenvalues (smallest, 1st / 10th / 50th percentile, largest) and how C
    scores keys of text it did not read, mean k^T C^-1 k over `ordinary_keys` divided by d_in (1.0 when
    C is the keys' true second moment; far above 1 when C underestimates directions they use)."""
    import torch

    from steer.edit.stats import second_moments

    hp = editor.hparams
    layers = sorted(set(getattr(hp, "layers", [])))
    found: dict[int, dict[str, float]] = {}
    if not layers or not hasattr(hp, "mom2_n_samples"):
        return found
    stats = second_moments(editor.ctx, layers, hp)
    for layer in layers:
        c = stats[layer].double()
        eig = torch.linalg.eigvalsh(c)
        row = {"eig_min": float(eig[0]), "eig_p01": float(eig.quantile(0.01)), "eig_p10": float(eig.quantile(0.10)),
               "eig_median": float(eig.median()), "eig_max": float(eig[-1])}
        if layer in ordinary_keys:
            keys = ordinary_keys[layer].double()
            row["heldout_mahalanobis"] = float((keys * torch.linalg.solve(c, keys.T).T).sum(1).mean() / c.shape[0])
        found[layer] = row
    return found


def ordinary_text_keys(model: Any, tokenizer: Any, layers: list[int], n_chunks: int = 8,
                       text: str | None = None) -> dict[int, Any]:
    """Down-projection inputs over N chunks of 256 tokens from the end of `text` (default: the shipped
    WikiText sample; text the key statistics, which read a file's start, did not see): 'ordinary' keys."""
    import torch

    from steer.edit.stats import corpus_path
    from steer.sites.reader import read_rows
    from steer.sites.resolve import Site

    lines = [line.strip() for line in corpus_path(text).read_text(encoding="utf-8").splitlines() if line.strip()]
    ids: list[int] = []
    for line in reversed(lines):
        ids[:0] = tokenizer(line + "\n", add_special_tokens=False)["input_ids"]
        if len(ids) >= n_chunks * 256:
            break
    chunks = [ids[i : i + 256] for i in range(0, n_chunks * 256, 256)]
    sites = [Site("mlp_key", layer) for layer in layers]
    found: dict[int, list[Any]] = {layer: [] for layer in layers}
    with torch.no_grad():
        for batch in read_rows(model, chunks, sites, padding="none", batch_size=4):
            for site in sites:
                read = batch.activations[site]
                found[site.layer].append(read.reshape(-1, read.shape[-1]).float().cpu())
    return {layer: torch.cat(values) for layer, values in found.items()}


def table(runs: list[dict[str, Any]]) -> str:
    lines = ["| method | variant | rewrite | rephrase | locality | largest |dW|/|W| | ordinary-key shift | s (solve) |",
             "|---|---|---|---|---|---|---|---|"]
    for run in runs:
        size = max(run["update_size"].values()) if run["update_size"] else float("nan")
        shift = max(run["ordinary_key_shift"].values()) if run["ordinary_key_shift"] else float("nan")
        lines.append(f"| {run['method']} | {run['label']} | {run['rewrite_post']:.2f} | {run['rephrase_post']:.2f} "
                     f"| {run['locality_post']:.2f} | {size:.4f} | {shift:.4f} | {run['solve_seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="ZsRE records (default: $SHARED_DATA/zsre/zsre_mend_eval_head.json)")
    parser.add_argument("--start", type=int, default=200, help="first record of the tuning split (default 200)")
    parser.add_argument("--stop", type=int, default=300, help="one past the last record (default 300)")
    parser.add_argument("--variant", action="append", metavar="METHOD[:KEY=VALUE,...]",
                        help="run these variants instead of the built-in sweep (repeatable), e.g. "
                             "memit:mom2_update_weight=3000,layers=[1,2,3,4,5,6,7]")
    parser.add_argument("--values", help="a .safetensors file where target values are kept between runs "
                                         "(default: $STEER_CACHE/batch_tuning/values-START-STOP.safetensors; '' keeps none)")
    parser.add_argument("--values-only", action="store_true",
                        help="optimise and store the target values, then stop (run the sweep later)")
    parser.add_argument("--stored-only", action="store_true",
                        help="tune on the split's records whose values --values already holds (optimise none), "
                             "e.g. after a --values-only run stopped early; the report says how many")
    parser.add_argument("--value-settings", metavar="KEY=VALUE,...",
                        help="value-optimisation settings other than MEMIT's YAML (clamp_norm_factor, nll_stop, "
                             "v_num_grad_steps, ...), used for the stored values and added to every variant; "
                             "keep one --values file per setting")
    parser.add_argument("--ordinary-text", metavar="PATH",
                        help="take the 'ordinary text' keys (update shift, held-out C score) from the last 2048 "
                             "tokens of PATH instead of the shipped WikiText sample; give a corpus variant "
                             "mom2_n_samples small enough that it does not read them")
    parser.add_argument("--limit", type=int, help="tune on the first K of those records only (a smaller batch)")
    parser.add_argument("--out", help="write every variant's summary and per-request results as JSON (atomically)")
    args = parser.parse_args()
    if not 0 <= args.start < args.stop:
        parser.error("--start must be >= 0 and below --stop")
    if args.start < 100:
        print("warning: records below 100 are the reports' evaluation records; tune above them", file=sys.stderr)
    variants = [parse_variant(v) for v in args.variant] if args.variant else VARIANTS
    value_settings = parse_variant(f"memit:{args.value_settings}")[2] if args.value_settings else {}
    from steer.edit.hparams import ValueHparams

    allowed = {f.name for f in dataclasses.fields(ValueHparams)}
    if unknown := sorted(set(value_settings) - allowed):
        parser.error(f"--value-settings: {unknown} are not value settings; choose from {sorted(allowed)}")
    variants = [(m, label, {**value_settings, **o}) for m, label, o in variants]
    if args.values is None:
        from steer.models.loading import cache_dir

        folder = cache_dir() / "batch_tuning"
        folder.mkdir(parents=True, exist_ok=True)
        args.values = str(folder / f"values-{args.start}-{args.stop}.safetensors")

    import torch

    from steer.edit import ValueCache
    from steer.edit.metrics import evaluate
    from steer.io.atomic import write_json_atomic
    from steer.models.loading import load_model

    model, tokenizer = load_model(dtype="float32", device="cpu")
    ids, requests, skipped = load_split(args.data, args.start, args.stop)
    for message in skipped:
        print(f"skipped: {message}", flush=True)
    cache = ValueCache()
    optimised, available = fill_values(model, tokenizer, requests, cache, ValueStore(args.values or None),
                                       stored_only=args.stored_only, value_settings=value_settings)
    if args.values_only:
        return
    if args.stored_only:
        kept = [i for i, r in enumerate(requests) if request_key(r) in available]
        ids, requests = [ids[i] for i in kept], [requests[i] for i in kept]
        print(f"--stored-only: tuning on the {len(requests)} records with stored values", flush=True)
    if args.limit:
        ids, requests = ids[: args.limit], requests[: args.limit]
    pre = [evaluate(model, tokenizer, r) for r in requests]
    keys = ordinary_text_keys(model, tokenizer, sorted({l for _, _, o in variants for l in o.get("layers", [])} |
                                                        {3, 4, 5, 6, 7}), text=args.ordinary_text)
    report: dict[str, Any] = {"model": "HuggingFaceTB/SmolLM2-135M-Instruct", "records": [args.start, args.stop],
                              "tuned_on": len(requests), "record_ids": ids, "skipped": skipped, "threads": torch.get_num_threads(),
                              "targets_optimised": optimised, "value_settings": value_settings,
                              "ordinary_text": args.ordinary_text or "shipped WikiText sample", "runs": []}
    for method, label, overrides in variants:
        run = run_variant(model, tokenizer, requests, ids, pre, cache, method, overrides, keys)
        run["label"] = label
        report["runs"].append(run)
        print(table([run]).splitlines()[-1], flush=True)
        if args.out:
            write_json_atomic(args.out, report)
    print(table(report["runs"]))


if __name__ == "__main__":
    main()
