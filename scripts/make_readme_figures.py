"""Regenerate the pictures README.md shows, with the commands README.md documents.

    OMP_NUM_THREADS=1 python scripts/make_readme_figures.py          # about 6 minutes on 2 CPU cores

Runs the two shipped experiments on the bundled default model,

    steer run examples/experiments/sentiment_caa.yaml     -> docs/figures/multiplier_curve.png
    steer run examples/experiments/easyedit2_layers.yaml  -> docs/figures/layer_sweep.png

in a scratch folder, and copies their plots (and the summaries they came with, for the
numbers) into docs/figures/. Generation is greedy and seeded, so a rerun on the same
versions draws the same pictures.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIGURES = {
    # experiment file -> (plot in its report folder, name under docs/figures)
    "sentiment_caa.yaml": ("sentiment.png", "multiplier_curve"),
    "easyedit2_layers.yaml": ("layers_sentiment_sentiment.png", "layer_sweep"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "figures"), help="where the PNGs go")
    args = parser.parse_args(argv)
    from steer.cli.main import main as steer_main
    from steer.io.atomic import atomic_write

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="steer-figures-") as scratch:
        for experiment, (plot, name) in FIGURES.items():
            report = Path(scratch) / name
            command = ["run", str(ROOT / "examples" / "experiments" / experiment), "--out", str(report)]
            print("steer " + " ".join(command), flush=True)
            if steer_main(command) != 0:
                return 1
            source = report / plot
            atomic_write(out / f"{name}.png", lambda tmp, source=source: shutil.copyfile(source, tmp))
            summary = (report / "summary.md").read_text(encoding="utf-8").replace(str(ROOT) + "/", "")
            atomic_write(out / f"{name}.md", lambda tmp, text=summary: Path(tmp).write_text(text, encoding="utf-8"))
            print(f"wrote {out / (name + '.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
