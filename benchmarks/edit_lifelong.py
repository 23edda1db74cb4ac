"""Lifelong editing: T sequential ZsRE edits per method, measured after the last one.

For each method and each T, the first T valid ZsRE records are edited one after another
(every edit kept, `Editor.apply`), and only then are all T measured: rewrite and rephrase
accuracy (how many earlier edits survive the later ones: retention) and locality (agreement
of each record's locality answer with the unedited model's predictions, read before the
first edit). Each edit's rewrite right after it is made is kept too (`rewrite_at_edit`), so
an edit that never took is told apart from one a later edit undid. Also reported: seconds
per edit (`apply` wall time), the bytes the Editor keeps to roll the whole sequence back
(`rollback_bytes`), and the process's peak RSS. After each run the sequence is rolled back
and the weights are checked to be bitwise the original ones. Probes are measured through
`Editor.evaluate`, so IKE's in-context edits are in front of them.

    python benchmarks/edit_lifelong.py --T 10 100 --methods rome r_rome memit emmet alphaedit pmet ft_m ft_l lora \
        kn ike grace wise --out benchmarks/edit_lifelong.json

Every method uses its shipped hparams for the model (`hparams/<method>/<model>.yaml`);
`--set method.key=value` overrides one (e.g. `--set rome.v_num_grad_steps=20`). Each run
records the command that made it; the runs already in --out are kept (a run of the same
method, T and --set replaces its earlier one unless that is marked `superseded`), so long
runs can be made one at a time.
`--budget S` starts no edit after S wall seconds of a run: the run is measured on the edits
made by then, its T is the length reached and it says `stopped_at_budget` (never
extrapolated). An edit the method refuses is listed under `refused` and left out.

T = 1 is a single edit, which the method table measures on many records (each edit alone):
`--table` prints the README table, its T = 1 rows from those reports, the rest from --out:

    python benchmarks/edit_lifelong.py --table benchmarks/edit_lifelong.json --single benchmarks/zsre_report.json \
        benchmarks/zsre_report_new_methods.json

(a `steer edit --out` report kept in a JSON object under a key is read as FILE:KEY.)
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
METHODS = ["rome", "r_rome", "memit", "emmet", "alphaedit", "pmet", "ft_m", "ft_l", "lora", "kn", "ike", "grace",
           "wise"]
HEADER = ["| method | T | rewrite | rephrase | locality | s/edit | rollback MB | peak RSS MB |",
          "|---|---|---|---|---|---|---|---|"]


def _mean(values: list[Any]) -> float | None:
    values = [float(v) for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def row(run: dict[str, Any]) -> str:
    t = f"{run['T']}*" if run.get("stopped_at_budget") else str(run["T"])  # *: stopped at --budget
    return (f"| {run['method']} | {t} | {_fmt(run['rewrite'])} | {_fmt(run['rephrase'])} | "
            f"{_fmt(run['locality'])} | {_fmt(run['seconds_per_edit'], 1)} | {_fmt(run['rollback_mb'], 1)} | "
            f"{_fmt(run['peak_rss_mb'], 0)} |")


def single_edit_rows(spec: str) -> list[dict[str, Any]]:
    """T = 1 rows from a report of single edits, each measured alone on its own (the method table's).

    `spec` is FILE (a `zsre_edit_report.py` report: its runs of mode "single") or FILE:KEY (one
    `steer edit --out` report kept under KEY in a JSON object, as benchmarks/zsre_pmet_ike.json)."""
    path, _, key = spec.partition(":")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    source = os.path.basename(path) + (f":{key}" if key else "")
    if key:
        if key not in data:
            raise SystemExit(f"--single {spec}: no report {key!r} in {path} (it has {', '.join(data)})")
        report = data[key]
        summary = report["summary"]
        return [{"method": report["method"], "T": 1, "n": summary["edits"], "complete": None,
                 "rewrite": summary["post"]["rewrite_acc"], "rephrase": summary["post"]["rephrase_acc"],
                 "locality": summary["post"]["locality"], "seconds_per_edit": summary["seconds_per_edit"],
                 "rollback_mb": None, "peak_rss_mb": None, "source": source}]
    return [{"method": r["method"], "T": 1, "n": r.get("n", len(r.get("edits", []))), "complete": r.get("complete"),
             "rewrite": r["rewrite_post"], "rephrase": r["rephrase_post"], "locality": r["locality_post"],
             "seconds_per_edit": r["seconds_per_edit"], "rollback_mb": None, "peak_rss_mb": None,
             "source": source} for r in data["runs"] if r.get("mode") == "single"]


def table(lifelong: str, singles: list[str]) -> str:
    """The lifelong table: T = 1 from the single-edit reports, longer sequences from `lifelong`.

    Runs marked `superseded` (say why: an earlier form of a method, lighter settings), runs
    with --set overrides and one-record T = 1 runs are left out; T = 1 cells name their
    source and record count."""
    with open(lifelong, encoding="utf-8") as f:
        runs = [r for r in json.load(f)["runs"] if "superseded" not in r and not r.get("set") and r["T"] > 1]
    firsts = {r["method"]: r for spec in singles for r in single_edit_rows(spec)}
    lines = list(HEADER)
    order = METHODS + sorted({r["method"] for r in runs} - set(METHODS))
    for method in order:
        if method in firsts:
            first = firsts[method]
            lines.append(row(first).replace("| 1 |", f"| 1 ({first['n']} single edits, {first['source']}) |", 1))
        for run in sorted((r for r in runs if r["method"] == method), key=lambda r: r["T"]):
            lines.append(row(run))
    return "\n".join(lines)


def overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    from steer.config import parse_overrides

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        method, dot, rest = item.partition(".")
        if not dot:
            raise SystemExit(f"--set {item!r}: write method.key=value, e.g. rome.v_num_grad_steps=20")
        out.setdefault(method, {}).update(parse_overrides([rest]))
    return out


def run_one(model: Any, tokenizer: Any, method: str, requests: list[Any], hp: dict[str, Any] | None,
            budget: float | None = None) -> dict[str, Any]:
    """Edit `requests` in order (every edit kept), then measure them all, roll back, check the bits.

    `budget` (wall seconds from the first edit): no further edit starts once it is spent; the run is then
    measured on the edits made so far and says so (`stopped_at_budget`, `T_requested`). An edit
    the method refuses (`EditError`, e.g. KN when the new answer starts with the old one) is
    listed in `refused` and left out of the means; the sequence goes on."""
    import torch
    from tqdm.auto import tqdm

    from steer.edit import Editor
    from steer.edit.errors import EditError

    editor = Editor(model, tokenizer, method, hp or None, progress=False)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    # pre: the unedited model, read before the first edit (locality compares against it)
    pres = [editor.evaluate(r) for r in tqdm(requests, desc=f"{method}: before", leave=False)]
    seconds: list[float] = []
    at_edit: list[float] = []  # rewrite right after each edit, before the later ones: retention = rewrite vs this
    edited: list[Any] = []
    refused: list[dict[str, Any]] = []
    stopped = False
    began = time.perf_counter()
    with tqdm(total=len(requests), desc=f"{method}: edits", leave=False) as bar:
        for i, request in enumerate(requests):
            if budget is not None and time.perf_counter() - began >= budget:
                stopped = True
                break
            start = time.perf_counter()
            try:
                editor.apply([request])
            except EditError as error:
                refused.append({"index": i, "error": str(error)})
            else:
                edited.append(i)
            seconds.append(time.perf_counter() - start)
            if edited and edited[-1] == i:
                at_edit.append(editor.evaluate(request, before=pres[i])["rewrite_acc"])
            bar.set_postfix(s_per_edit=f"{statistics.fmean(seconds):.1f}", refresh=False)
            bar.update(1)
    # post: the model with every edit applied (Editor.evaluate puts IKE's contexts in front)
    pres = [pres[i] for i in edited]
    posts = [editor.evaluate(requests[i], before=pre)
             for i, pre in zip(edited, tqdm(pres, desc=f"{method}: after", leave=False))]
    kept = editor.rollback_bytes()
    editor.rollback()
    restored = all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    if not restored:
        raise SystemExit(f"{method}: the weights are not bitwise the original ones after rollback")
    out = {
        "method": method, "T": len(seconds),
        "rewrite": _mean([p["rewrite_acc"] for p in posts]),
        "rephrase": _mean([p["rephrase_acc"] for p in posts]),
        "locality": _mean([_mean(list(p["locality"].values())) for p in posts]),
        "rewrite_pre": _mean([p["rewrite_acc"] for p in pres]), "rewrite_at_edit": _mean(at_edit),
        "seconds_per_edit": statistics.fmean(seconds) if seconds else None, "rollback_mb": kept / 2**20,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "restored_bitwise": restored,
    }
    if refused:
        out["refused"] = refused
    if stopped:
        out |= {"stopped_at_budget": True, "T_requested": len(requests), "budget_s": budget}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=int, nargs="+", default=[1, 10, 100], help="sequence lengths")
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--data", default=DEFAULT_DATA, help="ZsRE records (MEND/ROME format)")
    parser.add_argument("--set", nargs="*", default=[], metavar="METHOD.KEY=VALUE", help="hparam overrides")
    parser.add_argument("--out", help="write every run as JSON")
    parser.add_argument("--budget", type=float, metavar="SECONDS",
                        help="per run: start no edit after this many wall seconds from the first; the run is "
                             "then measured on the edits made (its row says stopped_at_budget and T_requested)")
    parser.add_argument("--table", metavar="LIFELONG_JSON",
                        help="print the README table from this report (no runs): T = 1 from --single reports")
    parser.add_argument("--single", nargs="*", default=[], metavar="REPORT[:KEY]",
                        help="with --table: single-edit reports whose means are the T = 1 rows")
    args = parser.parse_args()
    if args.table:
        print(table(args.table, args.single))
        return
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
            measured = run_one(model, tokenizer, method, requests[:t], hp.get(method), args.budget)
            run = {**measured, "set": hp.get(method, {}),
                   "command": command, "threads": torch.get_num_threads(),
                   "load_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
            key = (method, run["T"], run["set"], run.get("stopped_at_budget", False))
            runs = [r for r in runs if "superseded" in r  # kept, marked: an earlier form or lighter settings
                    or (r["method"], r["T"], r.get("set"), r.get("stopped_at_budget", False)) != key] + [run]
            print(row(run), flush=True)
            if args.out:
                write_json_atomic(args.out, {**earlier, "kind": "edit-lifelong", "data": os.path.basename(args.data),
                                             "skipped": skipped, "runs": runs})


if __name__ == "__main__":
    main()
