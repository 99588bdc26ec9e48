"""Telling that a reply has fallen into a loop: its end is one short span written over and over.

Small models can lock into a cycle ("il Coriobella, il Coriobella, ...", a table that becomes line after line of
"|") and would write it until max_tokens. A reply loops when its end is one span of at most MAX_SPAN characters
repeated back to back, either MIN_REPEATS times or more over MIN_CHARS characters or more, or, when the span is
whole lines, LINE_REPEATS times or more. The numbers come from benchmarks/loops.py: over a fixed set of prompts
for smollm2 (greedy and sampled), they stop every loop and cut no reply that ended by itself, where
smaller ones did (see BENCHMARKS.md). The sampling itself is left as the user and the model's generation_config
set it: no repetition penalty is added to every reply.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

MAX_SPAN = 200  # characters in the repeated span: a sentence or a table row, not a paragraph
MIN_REPEATS = 3  # back-to-back copies of the span at the end of the reply
MIN_CHARS = 200  # characters the copies cover together: "=====" or a poem's refrain are not loops
LINE_REPEATS = 12  # copies of a span of whole lines (the same row of a table, twelve times)
_PROBE = 8  # the last characters, looked for further back to find the candidate spans cheaply


class LoopWatch:
    """Fed a reply's pieces as they come; `feed` turns True once the reply's end is a loop (then `span` holds it).

    Each piece costs a few `str.rfind` calls on a bounded window, whatever the reply's length.
    """

    def __init__(self, max_span: int = MAX_SPAN, min_repeats: int = MIN_REPEATS, min_chars: int = MIN_CHARS,
                 line_repeats: int | None = LINE_REPEATS) -> None:
        if max_span < 1 or min_repeats < 2 or min_chars < 1 or (line_repeats is not None and line_repeats < 2):
            raise ValueError("max_span >= 1, min_repeats >= 2, min_chars >= 1, line_repeats >= 2 or None")
        self.max_span, self.min_repeats, self.min_chars, self.line_repeats = max_span, min_repeats, min_chars, line_repeats
        self._keep = max(min_chars, min_repeats * max_span, (line_repeats or 0) * max_span) + _PROBE
        self._tail = ""
        self.span: str | None = None  # the repeated span, once found

    def feed(self, piece: str) -> bool:
        """Add a piece of the reply; True if its end is now a loop."""
        if self.span is None and piece:
            tail = self._tail + piece
            if len(tail) > 2 * self._keep:
                tail = tail[-self._keep:]
            self._tail = tail
            self.span = self._loop(tail)
        return self.span is not None

    def _loop(self, tail: str) -> str | None:
        """The shortest span whose copies end `tail` and make a loop, or None."""
        probe = tail[-_PROBE:]
        end = len(tail) - 1
        while len(tail) > len(probe):
            # The probe's previous occurrence, at most max_span characters back, gives a candidate period.
            at = tail.rfind(probe, max(0, len(tail) - len(probe) - self.max_span), end)
            if at < 0:
                return None
            end = at + len(probe) - 1
            period = len(tail) - len(probe) - at
            need = max(self.min_chars, self.min_repeats * period)
            if self.line_repeats is not None and "\n" in tail[-period:]:
                need = min(need, self.line_repeats * period)
            if need <= len(tail) and tail[-(need - period):] == tail[-need:-period]:
                return tail[-period:]
        return None


class BatchWatch:
    """One LoopWatch per reply of a batch, fed by CTranslate2's generate_batch callback: call it with each step; True
    (which stops that reply) once the reply has fallen into a loop, or had before.

    decoder() makes a reply's token -> text-piece function (pieces as a streamed reply gets them); end_ids are not text.
    It runs on CTranslate2's thread with the GIL held: a decoder step and a few `str.rfind` per token.
    """

    def __init__(self, rows: int, decoder: Callable[[], Callable[[int], str]], end_ids: set[int]) -> None:
        self._pieces = [decoder() for _ in range(rows)]
        self._watches = [LoopWatch() for _ in range(rows)]
        self._tokens = [0] * rows
        self._end = end_ids
        self.stopped: dict[int, tuple[int, str]] = {}  # row -> (its tokens up to the loop's end, the repeated span)

    def __call__(self, step: Any) -> bool:
        row = step.batch_id
        if row in self.stopped:
            return True
        if step.token_id in self._end:
            return False
        self._tokens[row] += 1
        watch = self._watches[row]
        if watch.feed(self._pieces[row](step.token_id)):
            self.stopped[row] = (self._tokens[row], watch.span or "")
            return True
        return False
