"""Showing a streaming reply in a cell: throttled markdown updates of one display, or plain text in a terminal."""

from __future__ import annotations

import re
import sys
import time
from typing import Any

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})", re.MULTILINE)
_MARKS = {"interrupted": "⏹ *interrupted*", "stopped": "⏹ *stopped*"}


def close_open_fence(text: str) -> str:
    """Close a code fence the model has opened but not yet closed, so the partial reply renders as code."""
    opener = None
    for m in _FENCE.finditer(text):
        fence = m.group(1)
        if opener is None:
            opener = fence
        elif fence[0] == opener[0] and len(fence) >= len(opener):
            opener = None
    if opener is None:
        return text
    return text + ("" if text.endswith("\n") else "\n") + opener


def wants_markdown(shell: Any, mode: str = "auto") -> bool:
    """Markdown in a notebook front end; plain text in a terminal IPython (or when asked)."""
    if mode != "auto":
        return mode == "markdown"
    if shell is None:
        return False
    from IPython.core.displaypub import DisplayPublisher

    return type(shell.display_pub) is not DisplayPublisher


def with_mark(text: str, status: str) -> str:
    mark = _MARKS.get(status)
    return text if mark is None else f"{text}\n\n{mark}" if text else mark


class MarkdownStream:
    """One display, updated with markdown at most `rate` times a second, and once more in full at the end."""

    def __init__(self, rate: float = 15.0) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.handle = None
        self.updates = 0
        self._last = 0.0

    def _bundle(self, text: str) -> dict[str, str]:
        return {"text/markdown": text, "text/plain": text}

    def start(self, placeholder: str = "…") -> None:
        from IPython.display import display

        self.handle = display(self._bundle(placeholder), raw=True, display_id=True)
        self._last = time.perf_counter()

    def waiting(self, waiting: bool) -> None:
        self.handle.update(self._bundle("*waiting for the model…*" if waiting else "…"), raw=True)

    def update(self, text: str) -> None:
        now = time.perf_counter()
        if now - self._last >= self.interval:
            self._last = now
            self.updates += 1
            self.handle.update(self._bundle(close_open_fence(text)), raw=True)

    def finish(self, text: str, status: str, metadata: dict[str, Any]) -> None:
        self.updates += 1
        self.handle.update(self._bundle(with_mark(close_open_fence(text), status)), raw=True,
                           metadata={"ct2_magics": metadata})


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


def show(response: Any, shell: Any, *, mode: str = "auto", rate: float = 15.0) -> None:
    """Stream `response` into the current cell; a KeyboardInterrupt keeps the partial reply, then propagates."""
    view = MarkdownStream(rate) if wants_markdown(shell, mode) else TextStream()
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
