"""Prompts that use the notebook: `{name}`, `{In[n]}`, `{Out[n]}` in a cell, and the `%llama explain` prompt."""

from __future__ import annotations

import linecache
import re
import sys
import traceback
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

VALUE_LIMIT = 4000  # characters of one substituted value
TABLE_ROWS, TABLE_COLS = 20, 10
CELL_LIMIT = 3000  # characters of the failing cell in an explain prompt
TRACEBACK_FRAMES = 6

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
_HISTORY = re.compile(r"(In|Out)\[(-?\d+)\]")


def truncate(text: str, limit: int = VALUE_LIMIT) -> str:
    """`text`, or its first `limit` characters and a note saying how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit].rstrip()}\n… [truncated, {len(text):,} characters in all]"


def compact(value: Any, limit: int = VALUE_LIMIT) -> str:
    """A value as prompt text: strings as they are, pandas objects as a capped table, others by repr; all capped."""
    if isinstance(value, str):
        text = value
    else:
        pd = sys.modules.get("pandas")  # a value cannot be a DataFrame unless pandas is already imported
        try:
            if pd is not None and isinstance(value, pd.DataFrame):
                text = value.to_string(max_rows=TABLE_ROWS, max_cols=TABLE_COLS, show_dimensions=True)
            elif pd is not None and isinstance(value, pd.Series):
                text = value.to_string(max_rows=TABLE_ROWS, length=True, dtype=True, name=True)
            else:
                text = repr(value)
        except Exception as e:  # a broken __repr__ must not cost the prompt
            text = f"<{type(value).__name__}: cannot be shown ({type(e).__name__})>"
    return truncate(text, limit)


def python_name(name: str) -> str:
    """A name as Python reads it in code: NFKC-normalised, so the ligature in 'ﬁle' (pasted from a PDF) is 'fi'."""
    return unicodedata.normalize("NFKC", name)


def _lookup(expr: str, namespace: Mapping[str, Any]) -> tuple[bool, Any]:
    """(found, value) for a bare name, In[n] or Out[n]; nothing else is looked up, nothing is evaluated."""
    if expr.isidentifier():
        name = python_name(expr)
        return (True, namespace[name]) if name in namespace else (False, None)
    m = _HISTORY.fullmatch(expr)
    if m is None:
        return False, None
    n = int(m.group(2))
    try:
        if n < 0:  # counted back from this cell: In[-1] is the cell before it (In[len(In) - 1] is this one)
            n += len(namespace["In"]) - 1
        return (True, namespace[m.group(1)][n]) if n > 0 else (False, None)
    except (KeyError, IndexError, TypeError):
        return False, None


def substitute(text: str, namespace: Mapping[str, Any], limit: int = VALUE_LIMIT) -> tuple[str, list[str]]:
    """Fill `{name}`, `{In[n]}`, `{Out[n]}` (`{{`/`}}` are literal braces); return the text and the names not found."""
    # Anything else in braces (expressions, attributes, format specs, JSON) stays exactly as written:
    # a prompt must never run code.
    missing: list[str] = []

    def fill(m: re.Match[str]) -> str:
        if m.group(1) is None:
            return m.group(0)[0]
        expr = m.group(1)
        found, value = _lookup(expr, namespace)
        if found:
            return compact(value, limit)
        if expr.isidentifier() or _HISTORY.fullmatch(expr):
            missing.append(m.group(0))
        return m.group(0)

    return _PLACEHOLDER.sub(fill, text), missing


@dataclass
class ErrorReport:
    """What a learner saw when a cell failed, in plain text."""

    kind: str
    traceback: str
    cell: str | None = None
    cell_label: str | None = None


# `cells` is IPython's private shell.compile._filename_map: IPython has no public way to tell which execution
# count a traceback's file name belongs to. pyproject bounds ipython below 9, and tests/test_private_names.py
# fails by name if it goes.
def error_report(error: BaseException, cells: Mapping[str, int], inputs: Sequence[str] = ()) -> ErrorReport:
    """Describe `error` from its traceback; `cells` maps cell file names to execution counts (shell.compile._filename_map)."""
    frames = traceback.extract_tb(error.__traceback__)
    first_cell = next((i for i, f in enumerate(frames) if f.filename in cells), None)
    if first_cell is not None:
        frames = frames[first_cell:]  # the frames before the first cell are IPython running it

    def label(filename: str) -> str:
        return f"In[{cells[filename]}]" if filename in cells else filename

    lines = ["Traceback (most recent call last):"]
    if len(frames) > TRACEBACK_FRAMES:
        lines.append(f"  … ({len(frames) - TRACEBACK_FRAMES} earlier frames left out)")
    for f in frames[-TRACEBACK_FRAMES:]:
        lines.append(f"  File {label(f.filename)}, line {f.lineno}, in {f.name}")
        if f.line:
            lines.append(f"    {f.line.strip()}")
    error_file = frames[0].filename if first_cell is not None else None
    if isinstance(error, SyntaxError):
        lines, error_file = [], error.filename  # its frames are the compiler's; its text points into the cell
    only = "".join(traceback.format_exception_only(type(error), error)).rstrip()
    if error_file in cells:
        only = only.replace(f'"{error_file}"', label(error_file))
    lines.append(only)

    cell = None
    if error_file in cells:
        n = cells[error_file]
        cell = inputs[n] if 0 < n < len(inputs) else "".join(linecache.getlines(error_file))
    return ErrorReport(
        kind=type(error).__name__,
        traceback="\n".join(lines),
        cell=truncate(cell.strip("\n"), CELL_LIMIT) if cell else None,
        cell_label=label(error_file) if error_file in cells else None,
    )


def _fenced(text: str, lang: str = "") -> str:
    """`text` in a code fence longer than any backtick run inside it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text}\n{fence}"


EXPLAIN_INSTRUCTIONS = (
    "I am learning Python. Explain briefly and kindly, in plain words: what this error means, why this code "
    "raised it, and how to fix it. Keep it short; show at most a small corrected snippet."
)


def explain_question(report: ErrorReport) -> str:
    """What the learner asks %llama explain, as their chat shows it: the error and the cell that raised it."""
    parts = [f"Why did my cell{f' ({report.cell_label})' if report.cell_label else ''} raise {report.kind}?"]
    if report.cell:
        parts.append(f"The cell I ran:\n{_fenced(report.cell, 'python')}")
    parts.append(f"The error:\n{_fenced(report.traceback, 'text')}")
    return "\n\n".join(parts)
