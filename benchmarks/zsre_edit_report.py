"""ZsRE accuracy and seconds per edit for every editing method on the default model.

Runs each method on the first N ZsRE records as single edits (each measured alone, the
model restored in between) and MEMIT/AlphaEdit also as one batched edit of all N, then
prints one table (markdown, as pasted into README_2.md) and writes every per-edit record.

    python benchmarks/zsre_edit_report.py --n 100 --out benchmarks/zsre_report.json

The same script measures other data in any format `load_requests` reads (CounterFact,
KnowEdit; several --data files are joined in order): portability is reported where the
records have it, and CounterFact's efficacy / paraphrase / neighbourhood scores where they
have a true answer and neighbourhood prompts.

    python benchmarks/zsre_edit_report.py --n 100 --single grace lora wise kn r_rome emmet --batched \
        --budget 720 --out benchmarks/zsre_report_new_methods.json

`--budget S` stops a run of single edits before the next chunk of 5 edits that would, at
the pace so far, end past S seconds: such a run reports the records it finished (its `n`,
with `complete: false`), never an extrapolation. Long runs can be split: `--resume` keeps
the runs already in --out and runs the missing ones; `--part K/P` runs single edits on one
slice of the records (one process per core), `--from K` on the records from the K-th on
(to finish a run stopped at --budget), and `--merge A.json B.json ... --out report.json`
joins parts and whole runs into one.

The runs share one `ValueCache`: MEMIT and AlphaEdit (same layers and value settings)
optimise identical target values on the unedited model, so each is optimised once.
Seconds per edit are the `Editor.apply` wall time; the "targets reused" column says how
many of a run's target values came from the cache (their optimisation is not in its time,
it is in the run that first computed them).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from typing import Any

DEFAULT_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "zsre", "zsre_mend_eval_head.json")
SHARED_DATA = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
SINGLE = ["rome", "ft_l", "ft_m", "memit", "alphaedit"]


def shown_path(path: str) -> str:
    """A data path as the report shows it: $SHARED_DATA/... or relative to the repository, never this machine's."""
    full = os.path.abspath(path)
    if full.startswith(SHARED_DATA + os.sep):
        return "$SHARED_DATA/" + os.path.relpath(full, SHARED_DATA)
    return os.path.relpath(full, os.path.join(os.path.dirname(__file__), ".."))
BATCHED = ["memit", "alphaedit"]
CHUNK = 5  # single edits are run (and saved) in chunks of this many


def summarise(records: list[dict[str, Any]]) -> dict[str, float]:
    def mean(stage: str, key: str) -> float | None:  # None: no record has it (e.g. no rephrasings)
        values = [float(r[stage][key]) for r in records if r[stage].get(key) is not None]
        return statistics.fmean(values) if values else None

    def pooled(stage: str, key: str) -> float | None:  # locality / portability: the mean over every key's value
        values = [float(v) for r in records for v in r[stage].get(key, {}).values()]
        return statistics.fmean(values) if values else None

    def counterfact(stage: str, key: str) -> float | None:
        values = [float(r[stage]["counterfact"][key]) for r in records
                  if r[stage].get("counterfact", {}).get(key) is not None]
        return statistics.fmean(values) if values else None

    summary: dict[str, Any] = {
        "n": len(records),
        "rewrite_pre": mean("pre", "rewrite_acc"), "rewrite_post": mean("post", "rewrite_acc"),
        "rephrase_pre": mean("pre", "rephrase_acc"), "rephrase_post": mean("post", "rephrase_acc"),
        "locality_post": pooled("post", "locality"),
        "portability_pre": pooled("pre", "portability"), "portability_post": pooled("post", "portability"),
        "seconds_per_edit": statistics.fmean(float(r["seconds"]) for r in records),
    }
    for key in ("efficacy_score", "paraphrase_score", "neighborhood_score"):
        if (post := counterfact("post", key)) is not None:
            summary[f"{key}_pre"], summary[f"{key}_post"] = counterfact("pre", key), post
    return summary


TABLE_HEADER = ["| method | mode | N | rewrite (pre → post) | rephrase (pre → post) | locality "
                "| portability (pre → post) | s/edit | targets reused |",
                "|---|---|---|---|---|---|---|---|---|"]


def _f(value: Any, digits: int = 2) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"  # None / NaN: not measured


def _pair(run: dict[str, Any], key: str) -> str:
    return "-" if run.get(f"{key}_post") is None else f"{_f(run.get(f'{key}_pre'))} → {_f(run[f'{key}_post'])}"


def table_row(run: dict[str, Any]) -> str:
    n = run.get("n", len(run.get("edits", [])))
    done = "" if run.get("complete", True) else " (stopped at --budget)"
    if run.get("refused"):
        done += f", {len(run['refused'])} refused"
    row = (f"| {run['method']} | {run['mode']} | {n}{done} | {_pair(run, 'rewrite')} | {_pair(run, 'rephrase')} "
           f"| {_f(run.get('locality_post'))} | {_pair(run, 'portability')} | {_f(run['seconds_per_edit'], 1)} "
           f"| {run['targets_reused']} |")
    if run.get("efficacy_score_post") is not None:
        row += (f" CounterFact efficacy {_pair(run, 'efficacy_score')}, paraphrase {_pair(run, 'paraphrase_score')}, "
                f"neighbourhood {_pair(run, 'neighborhood_score')}")
    return row


def merge_reports(paths: list[str]) -> dict[str, Any]:
    """One report from several: runs of the same method and mode (parts) are joined in case order."""
    reports = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            reports.append(json.load(f))
    if len({r["records"] for r in reports}) != 1:
        raise SystemExit(f"--merge: the reports cover different --n ({sorted({r['records'] for r in reports})})")
    by_run: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for report in reports:
        for run in report["runs"]:
            by_run.setdefault((run["method"], run["mode"]), []).append(run)
    merged = {key: value for key, value in reports[0].items() if key not in ("runs", "part", "from", "partial")}
    merged["threads"] = sorted({t for r in reports for t in (r["threads"] if isinstance(r["threads"], list) else [r["threads"]])})
    # what produced each input: a merged report's own list, a run's command line (and load), else its path
    merged["merged_from"] = []
    for path, report in zip(paths, reports):
        if report.get("merged_from"):
            merged["merged_from"] += report["merged_from"]
        elif report.get("command"):
            load = report.get("load_average")
            merged["merged_from"].append(report["command"] + (f" (1-minute load {load[0]:.1f} at its start, "
                                                              f"{load[1]:.1f} at its end)" if load else ""))
        else:
            merged["merged_from"].append(path)
    merged.pop("command", None)
    merged.pop("load_average", None)
    merged["runs"] = []
    for (method, mode), runs in by_run.items():
        edits = sorted((e for run in runs for e in run["edits"]), key=lambda e: e["case_id"])
        if len({e["case_id"] for e in edits}) != len(edits):
            raise SystemExit(f"--merge: {method} {mode} has the same record in two reports")
        merged["runs"].append({"method": method, "mode": mode, "wall_seconds": sum(r["wall_seconds"] for r in runs),
                               "targets_reused": sum(r["targets_reused"] for r in runs),
                               "complete": len(edits) >= merged.get("valid_records", len(edits)),
                               **summarise(edits), "refused": [x for r in runs for x in r.get("refused", [])],
                               "edits": edits})
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="records: the first N of each --data file")
    parser.add_argument("--data", nargs="+", default=[DEFAULT_DATA],
                        help="edit records (ZsRE, CounterFact, KnowEdit, ...); several files are joined in order")
    parser.add_argument("--single", nargs="*", default=SINGLE, help="methods run as single edits")
    parser.add_argument("--batched", nargs="*", default=BATCHED, help="methods also run as one batch of N")
    parser.add_argument("--out", help="write the summary and every per-edit record as JSON")
    parser.add_argument("--resume", action="store_true",
                        help="keep the runs already in --out (same --n) and run only the missing ones")
    parser.add_argument("--part", help="K/P: single edits on the K-th of P equal slices of the records only "
                                       "(run the parts in parallel, then --merge them)")
    parser.add_argument("--budget", type=float, metavar="SECONDS",
                        help="stop a run of single edits before a chunk of 5 that would end past SECONDS "
                             "at the pace so far (it reports the records it finished)")
    parser.add_argument("--from", dest="start", type=int, default=0, metavar="K",
                        help="single edits on the valid records from the K-th on (0-based) only, e.g. to finish a "
                             "run stopped at --budget; then --merge")
    parser.add_argument("--merge", nargs="+", metavar="REPORT",
                        help="combine reports (parts and whole runs) into --out; run nothing")
    args = parser.parse_args()
    if args.merge:
        if not args.out:
            parser.error("--merge needs --out")
        merged = merge_reports(args.merge)
        from steer.io.atomic import write_json_atomic

        write_json_atomic(args.out, merged)
        print("\n".join(TABLE_HEADER + [table_row(run) for run in merged["runs"]]))
        return
    if (args.part or args.start) and args.batched:
        parser.error("--part and --from run single edits only; add --batched with no methods (a batch needs every "
                     "record)")
    import torch

    from steer.edit import Editor, EditError, ValueCache, load_requests
    from steer.io.atomic import write_json_atomic
    from steer.models.loading import load_model

    model, tokenizer = load_model(dtype="float32", device="cpu")
    skipped: list[str] = []
    requests = []
    for path in args.data:  # the first N records of each file
        requests += load_requests(path, args.n, on_invalid=skipped.append)
    for message in skipped:
        print(f"skipped: {message}")
    for path in args.data:
        skipped = [message.replace(str(path), shown_path(path)) for message in skipped]
    offset, valid = 0, len(requests)
    if args.part:
        try:
            index, parts = (int(x) for x in args.part.split("/"))
        except ValueError:
            parser.error(f"--part {args.part!r}: write K/P, e.g. --part 1/2")
        if not 1 <= index <= parts:
            parser.error(f"--part {args.part}: K must be between 1 and P")
        size = -(-len(requests) // parts)
        offset = (index - 1) * size
        requests = requests[offset : offset + size]
    if args.start:
        offset += args.start
        requests = requests[args.start :]
    cache = ValueCache()
    runs: list[tuple[str, str]] = [(m, "single") for m in args.single] + [(m, f"batch of {len(requests)}") for m in args.batched]
    report: dict[str, Any] = {"model": "HuggingFaceTB/SmolLM2-135M-Instruct", "records": args.n,
                              "data": [shown_path(path) for path in args.data],
                              "threads": torch.get_num_threads(), "valid_records": valid,
                              "skipped": skipped, "part": args.part, "from": args.start,
                              "command": "python benchmarks/zsre_edit_report.py " + shlex.join(sys.argv[1:]),
                              "load_average": [os.getloadavg()[0]] * 2, "runs": []}
    if args.resume and args.out and os.path.isfile(args.out):
        with open(args.out, encoding="utf-8") as f:
            earlier = json.load(f)
        if earlier.get("records") != args.n:
            parser.error(f"--resume: {args.out} holds a report on {earlier.get('records')} records, not {args.n}")
        report["runs"] = earlier.get("runs", [])
        done = {(r["method"], r["mode"]) for r in report["runs"]}
        runs = [run for run in runs if run not in done]
        print(f"resuming: {len(done)} runs kept from {args.out}, {len(runs)} to go", flush=True)
    for method, mode in runs:
        editor = Editor(model, tokenizer, method, value_cache=cache)
        hits_before = cache.hits
        start = time.perf_counter()
        complete, refused = True, []
        if mode == "single":
            records = []
            for start_at in range(0, len(requests), CHUNK):
                elapsed = time.perf_counter() - start
                tried = len(records) + len(refused)
                if args.budget is not None and tried and elapsed * (1 + CHUNK / tried) > args.budget:
                    complete = False
                    print(f"  {method}: stopped at --budget {args.budget:g} s after {len(records)} edits", flush=True)
                    break  # in chunks, so progress is saved as it goes
                for i, request in enumerate(requests[start_at : start_at + CHUNK]):
                    case_id = offset + start_at + i
                    try:
                        record = editor.edit_requests([request])[0]
                    except EditError as error:  # a method that cannot make this edit (KN: same first token)
                        refused.append({"case_id": case_id, "error": str(error)})
                        print(f"  {method}: record {case_id} refused: {error}", flush=True)
                        continue
                    finally:
                        editor.rollback()  # every edit starts from the base model
                    record["case_id"] = case_id
                    records.append(record)
                if args.out and records:
                    partial = {**report, "partial": {"method": method, "mode": mode, "done": len(records),
                                                     **summarise(records), "refused": refused,
                                                     "edits": records}}
                    write_json_atomic(args.out, partial)
                if records:
                    print(f"  {method}: {len(records)}/{len(requests)} edits, {summarise(records)}", flush=True)
        else:
            records = editor.batch_edit_requests(requests)  # one batch of all of them
        wall = time.perf_counter() - start
        editor.rollback()
        summary = summarise(records)
        reused = cache.hits - hits_before
        report["runs"].append({"method": method, "mode": mode, "wall_seconds": wall, "targets_reused": reused,
                               "complete": complete, **summary, "refused": refused, "edits": records})
        print(table_row(report["runs"][-1]), flush=True)
        report["load_average"][1] = os.getloadavg()[0]  # the machine's load when the run ended
        if args.out:  # after every run, so a long report is never lost to a late failure
            write_json_atomic(args.out, report)
    print("\n".join(TABLE_HEADER + [table_row(run) for run in report["runs"]]))


if __name__ == "__main__":
    main()
