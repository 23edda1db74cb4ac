"""Run several evaluators over text groups (and the model), and shape the report."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from steer.config import build
from steer.errors import ConfigError, SteerError
from steer.evaluate.base import EVALUATORS, EvalContext, Result, TextGroup


def split_overrides(values: dict[str, Any], methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """{'ppl.window': 256} -> {'ppl': {'window': 256}}; keys must name a chosen method."""
    per: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for key, value in values.items():
        method, dot, field = key.partition(".")
        if not dot or method not in per:
            raise ConfigError(f"Setting {key!r} must look like METHOD.key=value with METHOD one of {list(methods)} "
                              "(e.g. ppl.window=256, toxicity.threshold=0.7).")
        per[method][field] = value
    return per


def settings_for(method: str, values: dict[str, Any] | None = None) -> Any:
    return build(EVALUATORS.get(method).settings, values or {}, f"{method} settings")


def _clean(value: Any) -> Any:
    """NaN -> None so the JSON report stays standard JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def run(
    groups: Sequence[TextGroup],
    methods: Sequence[str],
    ctx: EvalContext,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Every chosen evaluator on every group, plus its model-level scores. Returns the report body."""
    if not methods:
        raise SteerError("Choose at least one evaluator.")
    settings = settings or {}
    report_groups: dict[str, dict[str, Any]] = {
        g.name: {"multiplier": g.multiplier, "n": len(g.texts), "model": g.model, "metrics": {}} for g in groups}
    per_sample: dict[str, dict[str, Any]] = {g.name: {} for g in groups}
    method_info: dict[str, Any] = {}
    for method in methods:
        evaluator = EVALUATORS.get(method)
        chosen = settings.get(method) or settings_for(method)
        info: dict[str, Any] = {}
        results: list[tuple[str, float | None, Result]] = []
        if evaluator.score_texts is not None:
            results += [(g.name, g.multiplier, evaluator.score_texts(g, chosen, ctx)) for g in groups]
        if evaluator.score_model is not None:
            model_results = evaluator.score_model(chosen, ctx)
            multipliers = {ctx.group_name(None): None}
            if ctx.steers:
                multipliers[ctx.group_name(float(ctx.steers[0].multiplier))] = float(ctx.steers[0].multiplier)
            results += [(name, multipliers.get(name), r) for name, r in model_results.items()]
        if not results:
            raise SteerError(f"The {method} evaluator had nothing to score: give --input generations"
                             + (" or the data it needs (see `steer eval --help`)." if evaluator.score_model else "."))
        for name, multiplier, result in results:
            entry = report_groups.setdefault(name, {"multiplier": multiplier, "n": None, "model": None, "metrics": {}})
            entry["metrics"].update(result.metrics)
            per_sample.setdefault(name, {}).update({f"{method}/{k}": v for k, v in result.per_sample.items()})
            info.setdefault(name, {}).update(result.info)
        method_info[method] = {"version": evaluator.version, "settings": dataclasses.asdict(chosen), "info": info}
    return _clean({"evaluators": method_info, "groups": report_groups, "per_sample": per_sample})


def table_rows(report: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Metrics as rows, groups as columns (unsteered first, then by multiplier)."""
    groups = report["groups"]
    names = sorted(groups, key=lambda g: (groups[g]["multiplier"] is not None, groups[g]["multiplier"] or 0, g))
    metrics: list[str] = []
    for name in names:
        metrics += [m for m in groups[name]["metrics"] if m not in metrics]
    rows = []
    for metric in metrics:
        row: list[Any] = [metric]
        for name in names:
            value = groups[name]["metrics"].get(metric)
            row.append("-" if value is None else value)
        rows.append(row)
    return ["metric", *names], rows
