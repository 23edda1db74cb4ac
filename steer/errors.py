"""Errors that carry a fix. The CLI turns every `SteerError` into a message and exit code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SteerError(Exception):
    """Base for all errors a user can fix by changing their input."""


class ConfigError(SteerError):
    """A hyper-parameter file or override is wrong (unknown key, bad type, bad YAML)."""


class ModelNotFoundError(SteerError):
    """A model could not be found locally and downloads are not allowed."""


class SiteError(SteerError):
    """A site name, layer or architecture cannot be resolved."""


class VectorError(SteerError):
    """A steering vector file is corrupt, or does not fit the model it is applied to."""


class DataError(SteerError):
    """A dataset is missing, empty, malformed, or an item is too long for the model."""


def closest(word: str, options: Iterable[str]) -> str:
    """A ' Did you mean X?' suffix for error messages ('' when nothing is close)."""
    matches = difflib.get_close_matches(word, list(options), n=1, cutoff=0.5)
    return f" Did you mean {matches[0]!r}?" if matches else ""
