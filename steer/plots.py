"""PNG charts (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from steer.io.atomic import atomic_write


def plot_sweep(
    path: str | Path,
    multipliers: Sequence[float],
    values: Sequence[float],
    *,
    ylabel: str,
    title: str,
    baseline: float | None = None,
    baseline_label: str = "baseline",
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot(list(multipliers), list(values), marker="o")
    if baseline is not None:
        ax.axhline(baseline, linestyle="--", color="grey", label=baseline_label)
        ax.legend()
    ax.set_xlabel("multiplier")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
