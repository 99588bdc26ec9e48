"""User-facing errors: one line that says what is wrong and what to do."""

from __future__ import annotations


class LlamaError(Exception):
    """A mistake the user can fix; shown as one line, never as a traceback."""


class LlamaInterrupted(KeyboardInterrupt):
    """A kernel interrupt that ended a reply: IPython shows it as this one line, not a traceback through the model."""

    def _render_traceback_(self) -> list[str]:  # IPython's hook for an exception that draws itself
        return [f"KeyboardInterrupt: {self}"]


def check_text(text: str, what: str) -> None:
    """Refuse text a tokenizer cannot encode (lone surrogates, e.g. from broken clipboard data)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise LlamaError(f"The {what} holds an invalid character (a lone surrogate) at position {e.start}; remove it.") from None


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first non-empty line of an exception's message (its type name when it has none)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()[:limit]
    return type(exc).__name__
