"""The project's own error types: each carries a message for a person (what was wrong, what to do).

The CLI prints these as one line (exit 2); any other exception is a bug and keeps its traceback.
Each subclass also derives from the built-in type callers caught before (ValueError, OSError, ...), so
existing `except ValueError` code keeps working.
"""
from __future__ import annotations

import os

__all__ = ["FocalNetError", "limit_from_env"]


class FocalNetError(Exception):
    """Base of every error the user can fix; printed as one line by the CLI."""


def limit_from_env(name: str, default: int, unit: str, error: type[FocalNetError]) -> int:
    """A configurable bound: the positive integer in $`name` (written as an integer or a float, e.g. 4e9), else
    `default`; anything else raises `error` naming the variable, so that a typo never lifts a bound."""
    raw = os.environ.get(name, "").strip()
    try:
        value = int(float(raw)) if raw else default
    except (ValueError, OverflowError):
        value = 0
    if value < 1:
        raise error(f"{name} must be a positive number of {unit}, got {raw!r}")
    return value
