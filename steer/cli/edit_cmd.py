"""`steer edit`: knowledge edits (every method of `steer.edit`) with EasyEdit's metrics.

Progress goes to stderr: one bar over the requests (or batches), and beneath it the phases
of the current edit (key statistics on the first edit of a layer, value optimisation
steps). `--quiet` turns them off.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from steer.cli.common import add_model_args, load_model_from_args
from steer.errors import DataError



def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "edit",
        help="edit facts into a model's weights and report rewrite/rephrase/locality accuracy",
        description="Apply knowledge edits (EasyEdit-style or ZsRE requests), measure them before and after, "
        "and export the edited model or its weight deltas. key=value arguments override hyper-parameters.",
    )
    from steer.edit.methods import edit_methods

    parser.add_argument("--method", choices=edit_methods().names(), help="editing method")
    parser.add_argument("--requests", help="JSON/JSONL of EasyEdit-style requests or ZsRE records")
    parser.add_argument("--limit", type=int, help="edit only the first N requests")
    parser.add_argument("--skip-invalid", action="store_true",
                        help="skip requests that cannot be edited (e.g. an empty target) and list them, instead of stopping")
    parser.add_argument("--out", help="per-edit metrics as JSON")
    parser.add_argument("--config", help="hyper-parameter YAML (default: hparams/<method>/<model>.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="hyper-parameter overrides, e.g. layer=5")
    parser.add_argument("--sequential", action="store_true", help="keep every edit (default: each edit is measured alone)")
    parser.add_argument("--batch", action="store_true", help="one batched edit of all requests (memit, emmet, alphaedit, ft_*, lora)")
    parser.add_argument("--batch-size", type=int, help="with --batch: requests per batched edit")
    parser.add_argument("--save-deltas", help="write the kept edits as weight deltas (safetensors)")
    parser.add_argument("--save-model", help="write the edited model with save_pretrained to this folder")
    parser.add_argument("--apply-deltas", help="re-apply a --save-deltas file to the model (then evaluate/save)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_model_args(parser)
    parser.set_defaults(run=run)


def _mean(values: list[Any]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over edits; locality and portability averaged over their keys first."""

    def per_key(stage: str, name: str) -> list[Any]:
        return [_mean(list(r[stage][name].values())) for r in results]

    summary: dict[str, Any] = {"edits": len(results)}
    for stage in ("pre", "post"):
        summary[stage] = {
            "rewrite_acc": _mean([r[stage]["rewrite_acc"] for r in results]),
            "rephrase_acc": _mean([r[stage]["rephrase_acc"] for r in results]),
            "locality": _mean(per_key(stage, "locality")),
            "portability": _mean(per_key(stage, "portability")),
        }
        counterfact = [r[stage]["counterfact"] for r in results if r[stage].get("counterfact")]
        if counterfact:  # CounterFact records: efficacy, paraphrase and neighbourhood scores
            summary[stage]["counterfact"] = {k: _mean([c[k] for c in counterfact]) for k in counterfact[0]}
    summary["seconds_per_edit"] = _mean([r["seconds"] for r in results])
    return summary


def run(args: argparse.Namespace) -> int:
    from steer.config import hparams_source, parse_overrides
    from steer.edit.editor import Editor
    from steer.edit.requests import load_requests
    from steer.io.atomic import write_json_atomic
    from steer.io.table import format_table

    if not args.method and not args.apply_deltas:
        raise DataError("Give --method METHOD with --requests FILE, or --apply-deltas FILE.")
    if args.method and not args.requests:
        raise DataError("--method needs --requests FILE (EasyEdit-style requests or ZsRE records).")
    if args.apply_deltas and not (args.requests or args.save_model):
        raise DataError("--apply-deltas needs --save-model DIR or --requests FILE to evaluate.")
    def report_skipped(message: str) -> None:
        print(f"skipped: {message}", file=sys.stderr)

    on_invalid = report_skipped if args.skip_invalid else None
    requests = load_requests(args.requests, args.limit, on_invalid=on_invalid) if args.requests else []
    model, tokenizer = load_model_from_args(args)
    # --backend nnsight: the Editor reads keys, statistics and target values through nnsight's trace
    # (ROME, R-ROME, MEMIT, EMMET, AlphaEdit; other methods refuse before any work)
    method = args.method or "rome"  # only its registry entry is used when just applying deltas
    if args.config and args.overrides:
        raise DataError("Give either --config FILE or key=value overrides, not both (put the values into the file).")
    editor = Editor(model, tokenizer, method, parse_overrides(args.overrides) if not args.config else args.config,
                    progress=not args.quiet, backend=getattr(args, "backend", None))
    # a batch of several requests uses the shipped <model>-batch.yaml where the method has one
    used = editor.batch_hparams if args.batch and args.batch_size != 1 and len(requests) > 1 else editor.hparams
    hparams_file = hparams_source(used) if args.method else None
    if args.method:
        print(f"hparams: {hparams_file}", flush=True)
    results: list[dict[str, Any]] = []
    start = time.perf_counter()
    if args.apply_deltas:
        edit = editor.apply_deltas(args.apply_deltas)
        print(f"applied deltas from {args.apply_deltas} to layers {edit.layers}")
        if requests:
            from steer.edit.metrics import evaluate, public

            results = [{"case_id": i, "requested_rewrite": r.as_dict(), "post": public(evaluate(model, tokenizer, r))}
                       for i, r in enumerate(requests)]
    elif args.batch:
        results = editor.batch_edit_requests(requests, batch_size=args.batch_size)
    else:
        results = editor.edit_requests(requests, sequential_edit=args.sequential)
    wall = time.perf_counter() - start
    if results and "pre" in results[0]:
        summary = summarise(results)
        rows = [[args.method, summary["edits"], stage, summary[stage]["rewrite_acc"], summary[stage]["rephrase_acc"],
                 summary[stage]["locality"], summary[stage]["portability"], summary["seconds_per_edit"]]
                for stage in ("pre", "post")]
        print(format_table(["method", "edits", "stage", "rewrite", "rephrase", "locality", "portability", "s/edit"],
                           [[("-" if v is None else v) for v in row] for row in rows]))
        for stage in ("pre", "post"):
            if "counterfact" in summary[stage]:
                scores = ", ".join(f"{k} {'-' if v is None else f'{v:.3f}'}" for k, v in summary[stage]["counterfact"].items())
                print(f"CounterFact {stage}: {scores}")
    else:
        summary = {"edits": len(results)}
    if args.out:
        report = {
            "kind": "edit", "method": args.method, "model": editor.sites.model.config._name_or_path,
            "hparams": dataclasses.asdict(used) if args.method else None,
            "hparams_file": hparams_file,
            "requests_file": args.requests,
            "requests_hash": hashlib.sha256(Path(args.requests).read_bytes()).hexdigest()[:16] if args.requests else None,
            "mode": "apply-deltas" if args.apply_deltas else "batch" if args.batch else
                    "sequential" if args.sequential else "single",
            "wall_seconds": wall, "summary": summary, "results": results,
            "applied_edits": [e.id for e in editor.applied],
        }
        print(f"wrote {write_json_atomic(args.out, report)}")
    if args.save_deltas:
        print(f"wrote {editor.save_deltas(args.save_deltas)}")
    if args.save_model:
        print(f"wrote {editor.save_pretrained(args.save_model)}")
    return 0
