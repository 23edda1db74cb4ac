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
