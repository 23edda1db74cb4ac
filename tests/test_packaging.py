"""Every package folder ships, under the one `steer` namespace, with its data."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_in_pyproject() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    mapping = config["package-dir"]
    found = set()
    for package, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            found.add(".".join([package, *relative.parts]))
    assert found <= listed, f"add these to [tool.setuptools] packages: {sorted(found - listed)}"
    assert not any(name.split(".")[0] != "steer" for name in listed), "everything installs under steer."


def test_shipped_data_is_importable_as_resources() -> None:
    from importlib import resources

    assert resources.files("steer.hparams").joinpath("caa", "default.yaml").is_file()
    assert resources.files("steer.data").joinpath("sentiment_positive.jsonl").is_file()


def _readme_test_command() -> str:
    text = (ROOT / "README.md").read_text()
    block = text.split("Run the tests", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines = [line for line in block.strip().splitlines() if line.strip()]
    assert len(lines) == 1, "README.md's test command is one line"
    return lines[0].strip()


def test_ci_runs_exactly_the_readme_test_command_in_a_fresh_environment() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    command = _readme_test_command()
    assert command in ci.splitlines(), "put README.md's test command verbatim into .ci/run"
    assert command.startswith("python3 -m venv .venv && . .venv/bin/activate")
    assert "-c constraints.txt" in command
    assert ci.index("rm -rf .venv") < ci.index(command), ".ci/run removes the venv first, so it is fresh"


def test_supported_ranges_constraints_and_range_script_agree() -> None:
    import re

    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    transformers = next(d for d in dependencies if d.startswith("transformers"))
    lower = re.search(r">=([\d.]+)", transformers).group(1)
    script = (ROOT / "scripts" / "test_transformers_range.sh").read_text()
    oldest = re.search(r'OLDEST="([\d.]+)"', script).group(1)
    assert oldest.startswith(lower), f"the range script tests {oldest}, pyproject admits >={lower}"
    pins = dict(line.split("==", 1) for line in (ROOT / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    for name in ("torch", "transformers", "nnsight"):
        assert name in pins, f"constraints.txt pins {name}"
    readme = (ROOT / "README.md").read_text()
    assert f"transformers {oldest}" in readme and pins["transformers"] in readme, \
        "README.md states the tested transformers range"
