"""The project's own error types: each carries a message for a person (what was wrong, what to do).

The CLI prints these as one line (exit 2); any other exception is a bug and keeps its traceback.
Each subclass also derives from the built-in type callers caught before (ValueError, OSError, ...), so
existing `except ValueError` code keeps working.
"""
from __future__ import annotations

__all__ = ["FocalNetError"]


class FocalNetError(Exception):
    """Base of every error the user can fix; printed as one line by the CLI."""
