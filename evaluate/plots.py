"""Charts for an evaluation report: each metric against the steering multiplier."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from steer.errors import SteerError
from steer.io.atomic import atomic_write


def plot_report(path: str | Path, report: dict[str, Any], metrics: list[str] | None = None) -> Path:
    """One panel per metric: value vs multiplier (unsteered at 0), one line per input file prefix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = report["groups"]
    names = sorted({m for g in groups.values() for m in g["metrics"]})
    metrics = [m for m in (metrics or names) if m in names]
    if not metrics:
        raise SteerError("Nothing to plot: the report has no metrics.")
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), dpi=110, squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        series: dict[str, list[tuple[float, float]]] = {}
        for name, group in groups.items():
            value = group["metrics"].get(metric)
            if value is None:
                continue
            run = name.rsplit(": ", 1)[0] if ": " in name else "run"
            series.setdefault(run, []).append((group["multiplier"] or 0.0, value))
        for run, points in series.items():
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=run)
        ax.set_title(metric)
        ax.set_xlabel("multiplier (0 = unsteered)")
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_visible(False)
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
