"""Showing a streaming reply in a cell (throttled updates of one display, or plain text in a terminal), and reading it as code or JSON."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from ct2_magics.notebook.markup import Streaming, bundle, end_mark, fenced_code, inert_text, sections_html, to_html

# How a reply that did not end by itself ended, in words (after it: in HTML behind a square CSS draws).
END_WORDS = {"interrupted": "interrupted", "stopped": "stopped", "cut": "cut short: it reached the max tokens limit",
          "looping": "stopped: it was repeating itself (a loop)"}
_PLAIN_MARKS = {status: f"[{words}]" for status, words in END_WORDS.items()}


def wants_markdown(shell: Any, mode: str = "auto") -> bool:
    """Markdown in a notebook front end; plain text in a terminal IPython (or when asked)."""
    if mode != "auto":
        return mode == "markdown"
    if shell is None:
        return False
    from IPython.core.displaypub import DisplayPublisher

    return type(shell.display_pub) is not DisplayPublisher


def with_mark(text: str, status: str, marks: dict[str, str] = _PLAIN_MARKS) -> str:
    """Plain text with its status mark ([interrupted], [stopped]) after it."""
    mark = marks.get(status)
    return text if mark is None else f"{text}\n\n{mark}" if text else mark


def reply_bundle(text: str, status: str = "complete", *, remote_images: bool = False) -> dict[str, str]:
    """A finished (or stopped) reply as sanitised HTML and inert plain text, with its status mark."""
    out = bundle(text, remote_images=remote_images, plain=with_mark(text, status))
    mark = END_WORDS.get(status)
    if mark is not None:  # a block of its own, so an unclosed code fence in the reply cannot swallow it
        out["text/html"] = end_mark(out["text/html"], mark)
    return out


# Each update re-sends the whole reply, so long replies update less often: about this many characters
# a second at most, which keeps the traffic linear in the reply's length instead of quadratic.
CHARS_PER_SECOND = 32768


class MarkdownStream:
    """One display, updated with sanitised HTML at most `rate` times a second, and once more in full at the end.

    The reply is untrusted: it is shown only as HTML made by `markup` (raw HTML from the model is text)
    and as inert plain text; it is never sent as text/markdown, which JupyterLab renders with raw HTML.
    """

    def __init__(self, rate: float = 15.0, *, remote_images: bool = False) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.remote_images = remote_images
        self.handle = None
        self.updates = 0
        self._last = 0.0
        self._partial = Streaming(remote_images=remote_images)

    def _final(self, text: str, status: str) -> dict[str, str]:
        return reply_bundle(text, status, remote_images=self.remote_images)

    def _partial_bundle(self, text: str) -> dict[str, str]:
        return {"text/html": self._partial.html(text)}  # partial updates carry one type: half the bytes

    def start(self, placeholder: str = "…") -> None:
        from IPython.display import display

        self.handle = display(self._placeholder(placeholder), raw=True, display_id=True)
        self._last = float("-inf")  # the first piece of text shows at once

    def waiting(self, waiting: bool) -> None:
        self.handle.update(self._placeholder("*waiting for the model…*" if waiting else "…"), raw=True)

    def _placeholder(self, text: str) -> dict[str, str]:
        return self._final(text, "complete")

    def update(self, text: str) -> None:
        now = time.perf_counter()
        if now - self._last >= max(self.interval, len(text) / CHARS_PER_SECOND):
            self._last = now
            self.updates += 1
            self.handle.update(self._partial_bundle(text), raw=True)

    def finish(self, text: str, status: str, metadata: dict[str, Any]) -> None:
        self.updates += 1
        self.handle.update(self._final(text, status), raw=True, metadata={"ct2_magics": metadata})


class PlainStream(MarkdownStream):
    """Like MarkdownStream, but the display holds inert text/plain only (-f text in a notebook)."""

    def _final(self, text: str, status: str) -> dict[str, str]:
        return {"text/plain": inert_text(with_mark(text, status))}

    def _partial_bundle(self, text: str) -> dict[str, str]:
        return {"text/plain": inert_text(text)}


class JsonStream(MarkdownStream):
    """Like MarkdownStream, showing the reply as a ```json code block (a schema reply: JSON is data, not markdown)."""

    def _final(self, text: str, status: str) -> dict[str, str]:
        return {**reply_bundle(json_fenced(text), status), "text/plain": inert_text(with_mark(text, status))}

    def _partial_bundle(self, text: str) -> dict[str, str]:
        return {"text/html": to_html(json_fenced(text))}

    def _placeholder(self, text: str) -> dict[str, str]:
        return reply_bundle(text)  # "…", "waiting for the model…": our words, shown as markdown


def json_fenced(text: str) -> str:
    """`text` in a json code fence longer than any run of backticks inside it, so nothing in it can close the fence."""
    longest = max((len(run) for run in re.findall("`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}json\n{text}\n{fence}" if text else ""


class TextStream:
    """Plain text printed as it comes (terminal IPython, scripts), control characters made visible."""

    def __init__(self, out: Any = None) -> None:
        self.out = out or sys.stdout
        self._shown = 0

    def start(self, placeholder: str = "") -> None:
        pass

    def waiting(self, waiting: bool) -> None:
        if waiting:
            self.out.write("(waiting for the model…)\n")

    def update(self, text: str) -> None:
        self.out.write(inert_text(text[self._shown:]))
        self.out.flush()
        self._shown = len(text)

    def finish(self, text: str, status: str, metadata: dict[str, Any]) -> None:
        self.update(text)
        mark = _PLAIN_MARKS.get(status)
        self.out.write(f"\n{mark}\n" if mark else "\n")
        self.out.flush()


def show(response: Any, shell: Any, *, mode: str = "auto", rate: float = 15.0, plain: bool = False,
         quiet: bool = False, remote_images: bool = False, as_json: bool = False, tinted: Any = None) -> None:
    """Stream `response` into the current cell; whatever ends it (a KeyboardInterrupt in the display code too),
    the reply is closed, its turn recorded and the cell shows that same text, then the exception propagates."""
    if not wants_markdown(shell, mode):
        view: MarkdownStream | TextStream = TextStream()
    elif tinted is not None:  # --probs: the tokens, tinted by their probability (notebook/token_view.py)
        view = tinted
    else:
        view = PlainStream(rate) if plain else JsonStream(rate) if as_json else MarkdownStream(rate, remote_images=remote_images)
    started = False

    def start() -> None:  # the display appears only once there is something to show: an error before that is one line
        nonlocal started
        if not started:
            view.start()
            started = True  # only once it is there: a Ctrl-C can land inside start() too

    def begin() -> None:
        if not quiet:
            for line in response.notices:
                print(inert_text(line))
        start()

    def waiting(waiting: bool) -> None:
        start()
        view.waiting(waiting)

    response.on_waiting.append(waiting)
    response.on_start.append(begin)
    reader = iter(response)
    interrupted = False
    try:
        for _ in reader:
            view.update(response.text)
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        with sigint_deferred():
            if interrupted:
                response.interrupt()
            getattr(reader, "close", lambda: None)()
            if not started and response.turn is not None:  # the interrupt came before the display was up
                start()
            if started:
                view.finish(response.text, response.status, response.metadata())


def layer_bar(description: str, total: int) -> Any:
    """A conversion's bar, one step a layer: a widget in a notebook, text in a terminal (tqdm.auto)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="layer", leave=False, dynamic_ncols=True)


@contextlib.contextmanager
def sigint_deferred() -> Iterator[None]:
    """Hold a Ctrl-C that comes during the block until it ends (main thread only), so that it cannot cut it short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous in (signal.SIG_IGN, signal.SIG_DFL, None):  # nothing would raise KeyboardInterrupt anyway
        yield
        return
    held: list[Any] = []
    signal.signal(signal.SIGINT, lambda signum, frame: held.append((signum, frame)))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if held and callable(previous):
        previous(*held[0])


def show_transcript(sections: list[tuple[str, str]], shell: Any, mode: str = "auto", *,
                    remote_images: bool = False) -> None:
    """A chat's history in the cell: each labelled piece rendered on its own (sanitised), or plain text in a terminal."""
    plain = "\n\n".join(f"{label}: {text}" for label, text in sections) if sections else "(empty)"
    if wants_markdown(shell, mode):
        from IPython.display import display

        html = sections_html(sections, remote_images=remote_images) if sections else "<p>(empty)</p>"
        display({"text/html": html, "text/plain": inert_text(plain)}, raw=True)
    else:
        print(inert_text(plain))


def code_block(text: str) -> str | None:
    """The body of the first fenced code block in `text` (an unclosed one runs to the end), or None."""
    blocks = fenced_code(text)
    return blocks[0].strip("\n") if blocks else None


def json_value(text: str) -> Any:
    """The first complete JSON value the reply holds: the whole reply, else a code block's, else the first object or
    array in it (prose, a stray fence or more text after it are fine). ValueError saying what was found otherwise."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    for block in fenced_code(text):
        try:
            return json.loads(block)
        except ValueError:
            pass
    decoder = json.JSONDecoder()
    first: tuple[int, json.JSONDecodeError] | None = None
    starts = [i for i, ch in enumerate(text) if ch in "{["]
    for start in starts[:_MOST_STARTS]:
        try:
            return decoder.raw_decode(text, start)[0]
        except json.JSONDecodeError as e:
            first = first or (start, e)
    if first is None:
        raise ValueError(f"it has no {{ or [ and begins {_snippet(text)}" if text.strip() else "the reply is empty")
    start, e = first
    where = f"the {'object' if text[start] == '{' else 'array'} that starts on line {text.count(chr(10), 0, start) + 1}"
    if e.pos >= len(text.rstrip()):
        raise ValueError(f"{where} is unfinished: the reply ends inside it")
    raise ValueError(f"{where} does not parse ({e.msg} at line {e.lineno} column {e.colno})")


_MOST_STARTS = 200  # places a value may begin that are tried, so a reply full of brackets costs little


def _snippet(text: str, most: int = 40) -> str:
    """The start of the reply, quoted on one line (repr shows control characters as escapes)."""
    text = " ".join(text.split())
    return repr(text[:most] + ("…" if len(text) > most else ""))
