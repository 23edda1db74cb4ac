"""Errors of the editing half of steer (all user-fixable, so all `SteerError`s: CLI exit 2)."""

from __future__ import annotations

from steer.errors import SteerError


class EditError(SteerError):
    """An edit cannot be made, rolled back, exported or re-applied as asked."""
