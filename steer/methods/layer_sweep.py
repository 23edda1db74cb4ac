"""Layer sweep: the A/B score of one direction per layer and multiplier, as a grid.

`steer apply --layers-sweep 4 6 8 --multipliers -1 0 1 --data ab.json` takes each layer's
direction from the --vector file (made with `steer generate --layers 4 6 8`), or, with
`--sweep-data FILE`, makes a CAA vector for those layers first. Each cell steers with that
layer's direction alone. Multiplier 0 is the unsteered score, read once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from steer.application import Steer
from steer.errors import VectorError
from steer.io.atomic import atomic_write
from steer.vector import SteeringVector


def layer_sweep(model: Any, tokenizer: Any, items: Sequence[Any], vector: SteeringVector, layers: Sequence[int],
                multipliers: Sequence[float], extra_steers: Sequence[Any] = (), **ab_kwargs: Any) -> list[list[float]]:
    """grid[i][j]: mean p(matching) with `vector` at layers[i] only, times multipliers[j]."""
    from steer.evaluate.ab import ab_scores

    missing = [layer for layer in layers if layer not in vector.layers]
    if missing:
        raise VectorError(f"The vector has no direction at layers {missing} (it has {vector.layers}); make one with "
                          f"`steer generate --layers {' '.join(map(str, layers))}` or pass --sweep-data FILE.")
    unsteered: float | None = None
    grid = []
    for layer in layers:
        row = []
        for multiplier in multipliers:
            if multiplier == 0 and unsteered is not None:
                row.append(unsteered)
                continue
            steer_ = Steer(vector.select([layer]), float(multiplier), "after_instruction")
            scores = ab_scores(model, tokenizer, items, steers=[steer_, *extra_steers], **ab_kwargs)
            row.append(sum(scores) / len(scores))
            if multiplier == 0:
                unsteered = row[-1]
        grid.append(row)
    return grid


def plot_heatmap(path: str | Path, layers: Sequence[int], multipliers: Sequence[float], grid: list[list[float]],
                 title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(multipliers), 1.2 + 0.5 * len(layers)), dpi=120)
    image = ax.imshow(grid, cmap="RdBu_r", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(multipliers)), [f"{m:g}" for m in multipliers])
    ax.set_yticks(range(len(layers)), [str(layer) for layer in layers])
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xlabel("multiplier")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="mean p(matching)")
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
