"""The vector library: pretrained steering vectors with manifests, loadable by name.

    import steer.library
    steer.library.entries()                       # every entry, user folders first
    vector = steer.library.load("sentiment-positive")
    steer.library.get("formality").recommended_multiplier

An entry is `<name>.yaml` (its manifest) next to `<name>.safetensors`. The shipped
entries live in the `steer.vector_library` package; `STEER_LIBRARY_PATH` names more
folders (separated by os.pathsep), searched first, so a user's entry of the same name
shadows the shipped one. Everywhere a command takes a vector file it also takes
`library:NAME[:MULTIPLIER]` (resolved by `resolve_vector_ref`).
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from steer.errors import VectorError
from steer.vector import SteeringVector

ENV_VAR = "STEER_LIBRARY_PATH"
PREFIX = "library:"
# Keys every manifest must have; tests check the shipped ones and `load` checks user ones.
REQUIRED_KEYS = ("name", "concept", "method", "model", "layers", "site", "multiplier", "data", "command",
                 "effect", "perplexity")


class LibraryError(VectorError):
    """A library name that does not exist, or an entry whose manifest is broken."""


@dataclass(frozen=True)
class LibraryEntry:
    name: str
    manifest: dict[str, Any]
    manifest_path: Path
    vector_path: Path
    shipped: bool

    @property
    def recommended_multiplier(self) -> float:
        return float(self.manifest["multiplier"]["recommended"])

    @property
    def multiplier_range(self) -> tuple[float, float]:
        low, high = self.manifest["multiplier"]["range"]
        return float(low), float(high)

    def load(self) -> SteeringVector:
        return SteeringVector.load(self.vector_path)


def shipped_folder() -> Path:
    # The package is installed as real files (wheel or editable), so a plain path works.
    return Path(str(resources.files("steer.vector_library")))


def search_path() -> list[tuple[Path, bool]]:
    """(folder, shipped?) in search order: STEER_LIBRARY_PATH folders, then the shipped one."""
    user = [Path(p).expanduser() for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p.strip()]
    return [(p, False) for p in user] + [(shipped_folder(), True)]


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise LibraryError(f"Library manifest {path} cannot be read: {exc}") from None
    if not isinstance(manifest, dict):
        raise LibraryError(f"Library manifest {path} is not a YAML mapping.")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise LibraryError(f"Library manifest {path} lacks {', '.join(missing)}; "
                           f"a manifest needs {', '.join(REQUIRED_KEYS)}.")
    return manifest


def entries() -> list[LibraryEntry]:
    """Every entry, first found wins (user folders shadow the shipped library); sorted by name."""
    found: dict[str, LibraryEntry] = {}
    for folder, shipped in search_path():
        if not folder.is_dir():
            if not shipped:
                raise LibraryError(f"{ENV_VAR} names {folder}, which is not a folder.")
            continue
        for path in sorted(folder.glob("*.yaml")):
            name = path.stem
            if name in found:
                continue
            manifest = _read_manifest(path)
            vector_path = folder / str(manifest.get("file", f"{name}.safetensors"))
            found[name] = LibraryEntry(name, manifest, path, vector_path, shipped)
    return [found[n] for n in sorted(found)]


def names() -> list[str]:
    return [e.name for e in entries()]


def get(name: str) -> LibraryEntry:
    available = entries()
    for entry in available:
        if entry.name == name:
            if not entry.vector_path.is_file():
                raise LibraryError(f"Library entry {name!r} ({entry.manifest_path}) has no vector file at "
                                   f"{entry.vector_path}.")
            return entry
    all_names = [e.name for e in available]
    close = difflib.get_close_matches(name, all_names, n=3, cutoff=0.4)
    hint = f" Closest: {', '.join(close)}." if close else ""
    raise LibraryError(f"No library vector named {name!r}.{hint} Available: {', '.join(all_names) or 'none'} "
                       f"(`steer library list`; add folders with {ENV_VAR}).")


def load(name: str) -> SteeringVector:
    """The SteeringVector of a library entry (apply it at `get(name).recommended_multiplier`)."""
    return get(name).load()


def is_ref(spec: str) -> bool:
    return spec.startswith(PREFIX)


def resolve_vector_ref(ref: str) -> tuple[Path, float | None]:
    """'library:NAME[:MULTIPLIER]' -> (vector file, multiplier or None when not given)."""
    if not is_ref(ref):
        raise LibraryError(f"{ref!r} is not a library reference; write library:NAME[:MULTIPLIER].")
    from steer.refs import parse_vector_ref  # the one resolver of vector references

    parsed = parse_vector_ref(ref)
    return parsed.path, parsed.multiplier
