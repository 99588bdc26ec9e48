"""Showing a streaming reply in a cell (throttled updates of one display, or plain text in a terminal), and reading it as code or JSON."""

from __future__ import annotations

import json
import re
import sys
import time
from typing import Any

_FENCE = re.compile(r"^([ \t]*)(`{3,}|~{3,})(.*)$", re.MULTILINE)  # any indent: fences nest in list items
_MARKS = {"interrupted": "⏹ *interrupted*", "stopped": "⏹ *stopped*"}


def close_open_fence(text: str) -> str:
    """Close a code fence the model has opened but not yet closed, so the partial reply renders as code."""
    opener: tuple[str, str] | None = None  # (indent, fence)
    for m in _FENCE.finditer(text):
        indent, fence, rest = m.groups()
        if opener is None:
            opener = (indent, fence)
        elif fence[0] == opener[1][0] and len(fence) >= len(opener[1]) and not rest.strip():
            opener = None
    if opener is None:
        return text
    return text + ("" if text.endswith("\n") else "\n") + opener[0] + opener[1]


def wants_markdown(shell: Any, mode: str = "auto") -> bool:
    """Markdown in a notebook front end; plain text in a terminal IPython (or when asked)."""
    if mode != "auto":
        return mode == "markdown"
    if shell is None:
        return False
    from IPython.core.displaypub import DisplayPublisher

    return type(shell.display_pub) is not DisplayPublisher


def with_mark(text: str, status: str, marks: dict[str, str] = _MARKS) -> str:
    mark = marks.get(status)
    return text if mark is None else f"{text}\n\n{mark}" if text else mark


# Each update re-sends the whole reply, so long replies update less often: about this many characters
# a second at most, which keeps the traffic linear in the reply's length instead of quadratic.
CHARS_PER_SECOND = 32768


class MarkdownStream:
    """One display, updated with markdown at most `rate` times a second, and once more in full at the end."""

    marks = _MARKS
    partial_type = "text/markdown"  # what updates while streaming carry; the final one carries text/plain too

    def __init__(self, rate: float = 15.0) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.handle = None
        self.updates = 0
        self._last = 0.0

    def _bundle(self, text: str) -> dict[str, str]:
        return {"text/markdown": text, "text/plain": text}

    def _shape(self, text: str) -> str:
        return close_open_fence(text)

    def start(self, placeholder: str = "…") -> None:
        from IPython.display import display

        self.handle = display(self._bundle(placeholder), raw=True, display_id=True)
        self._last = float("-inf")  # the first piece of text shows at once

    def waiting(self, waiting: bool) -> None:
        self.handle.update(self._bundle("*waiting for the model…*" if waiting else "…"), raw=True)

    def update(self, text: str) -> None:
        now = time.perf_counter()
        if now - self._last >= max(self.interval, len(text) / CHARS_PER_SECOND):
            self._last = now
            self.updates += 1
            self.handle.update({self.partial_type: self._shape(text)}, raw=True)

    def finish(self, text: str, status: str, metadata: dict[str, Any]) -> None:
        self.updates += 1
        self.handle.update(self._bundle(with_mark(self._shape(text), status, self.marks)), raw=True,
                           metadata={"ct2_magics": metadata})


class PlainStream(MarkdownStream):
    """Like MarkdownStream, but the display holds text/plain only (-f text in a notebook)."""

    marks = {status: f"[{status}]" for status in _MARKS}
    partial_type = "text/plain"

    def _bundle(self, text: str) -> dict[str, str]:
        return {"text/plain": text}

    def _shape(self, text: str) -> str:
        return text


class TextStream:
    """Plain text printed as it comes (terminal IPython, scripts)."""

    def __init__(self, out: Any = None) -> None:
        self.out = out or sys.stdout
        self._shown = 0

    def start(self, placeholder: str = "") -> None:
        pass

    def waiting(self, waiting: bool) -> None:
        if waiting:
            self.out.write("(waiting for the model…)\n")

    def update(self, text: str) -> None:
        self.out.write(text[self._shown:])
        self.out.flush()
        self._shown = len(text)

    def finish(self, text: str, status: str, metadata: dict[str, Any]) -> None:
        self.update(text)
        mark = _MARKS.get(status)
        self.out.write(f"\n[{status}]\n" if mark else "\n")
        self.out.flush()


def show(response: Any, shell: Any, *, mode: str = "auto", rate: float = 15.0, plain: bool = False,
         quiet: bool = False) -> None:
    """Stream `response` into the current cell; a KeyboardInterrupt keeps the partial reply, then propagates."""
    if not wants_markdown(shell, mode):
        view: MarkdownStream | TextStream = TextStream()
    else:
        view = PlainStream(rate) if plain else MarkdownStream(rate)
    if not quiet:
        for line in response.notices:
            print(line)
    view.start()
    response.on_waiting = view.waiting
    try:
        for _ in response:
            view.update(response.text)
    except KeyboardInterrupt:
        response.interrupt()
        view.finish(response.text, response.status, response.metadata())
        raise
    view.finish(response.text, response.status, response.metadata())


def show_markdown(text: str, shell: Any, mode: str = "auto") -> None:
    """A finished piece of markdown (history, status) in the cell, or plain text in a terminal."""
    if wants_markdown(shell, mode):
        from IPython.display import display

        display({"text/markdown": text, "text/plain": text}, raw=True)
    else:
        print(text)


def code_block(text: str) -> str | None:
    """The body of the first fenced code block in `text` (an unclosed one runs to the end), or None."""
    opener = _FENCE.search(text)
    if opener is None:
        return None
    fence = opener.group(2)
    body_start = text.find("\n", opener.end())
    if body_start < 0:
        return None
    closer = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$", re.MULTILINE)
    end = closer.search(text, body_start + 1)
    body = text[body_start + 1:end.start() if end else len(text)]
    return body.strip("\n")


def json_value(text: str) -> Any:
    """The reply parsed as JSON, alone or in a (```json) fence; ValueError (json's message) if it is neither."""
    try:
        return json.loads(text)
    except ValueError as first:
        block = code_block(text)
        if block is None:
            raise ValueError(str(first)) from None
        try:
            return json.loads(block)
        except ValueError as e:
            raise ValueError(f"{e}, in its code block") from None
