"""User-facing errors: one line that says what is wrong and what to do."""

from __future__ import annotations


class LlamaError(Exception):
    """A mistake the user can fix; shown as one line, never as a traceback."""
