"""Ctrl-C while the kernel's main thread holds the model: the hand-back can never be cut short.

Python raises KeyboardInterrupt between two bytecodes of the main thread, inside `finally` blocks and
`__exit__` methods too. A second Ctrl-C that lands while the first one is handled (the decoder is being
stopped, the model handed back, the partial turn recorded) would skip the rest of that work and leave the
model held for good. So while the main thread holds a turn, ModelOwner puts a TurnGuard in front of the
SIGINT handler that was there (ipykernel's default_int_handler while a cell runs):

- the first Ctrl-C of the turn goes to that handler, as before: KeyboardInterrupt where the code is;
- from then on, while that interrupt is still leaving the package's frames it ran through (the reply's reader,
  the display, the magic) and for REPEAT_S after it, further Ctrl-Cs are dropped: they are the same press
  repeated, the reply is being stopped already, and they could only cut the stopping short (or, in a kernel,
  land in ipykernel's own code after the cell, which then loses the cell's reply);
- a Ctrl-C that comes while the model is handed back (the functions marked with `deferred`, and the owner's
  lock) is posted again (`_thread.interrupt_main`) until it lands after the hand-back, so it still interrupts
  whatever comes next.

Only the main thread ever gets KeyboardInterrupt, so turns held by other threads need no guard.
"""

from __future__ import annotations

import _thread
import signal
import threading
import time
from collections.abc import Callable
from types import CodeType, FrameType
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

_DEFERRED: set[CodeType] = set()  # while one of these runs, a Ctrl-C waits
_LOCK_USERS: set[str] = set()  # modules whose `with condition:` blocks a Ctrl-C must not split
_PACKAGE = __name__.split(".")[0]
# A Ctrl-C this soon after the one that interrupted a reply is taken for the same press, repeated.
REPEAT_S = 0.5


def _condition_code() -> set[CodeType]:
    c = threading.Condition
    return {c.__enter__.__code__, c.__exit__.__code__, c.wait.__code__}


_CONDITION = _condition_code()


def deferred(fn: F) -> F:
    """Mark a function during which a Ctrl-C on the main thread waits until it has returned (if a guard is in place)."""
    _DEFERRED.add(fn.__code__)
    return fn


def guard_locks_of(module: str) -> None:
    """A Ctrl-C must not split a threading.Condition's acquire/release made by this module (it would stay locked)."""
    _LOCK_USERS.add(module)


def _stack(frame: FrameType | None) -> list[FrameType]:
    out = []
    while frame is not None:
        out.append(frame)
        frame = frame.f_back
    return out


def _must_wait(stack: list[FrameType]) -> bool:
    for f in stack:
        if f.f_code in _DEFERRED:
            return True
        if f.f_code in _CONDITION and f.f_back is not None and f.f_back.f_globals.get("__name__") in _LOCK_USERS:
            return True
    return False


def _ours(frame: FrameType) -> bool:
    name = frame.f_globals.get("__name__") or ""
    return name == _PACKAGE or name.startswith(_PACKAGE + ".")


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class TurnGuard:
    """The SIGINT handler while the main thread holds (or waits for) a turn; see the module's docstring."""

    def __init__(self, frame: FrameType, previous: Callable[..., Any]) -> None:
        self.frame: FrameType | None = frame  # the frame that runs `with owner.turn(...)`
        self.previous = previous  # the handler it stands in front of
        self.unwinding: list[FrameType] = []  # our frames a KeyboardInterrupt it let through is leaving
        self.raised_at: float | None = None  # when it let one through
        self.done = False  # the turn has ended

    @classmethod
    def make(cls, frame: FrameType) -> TurnGuard | None:
        """A guard for the turn run by `frame`, not yet in place (None off the main thread, or where no Ctrl-C raises)."""
        if not _on_main_thread():
            return None
        previous = _live(signal.getsignal(signal.SIGINT))
        if not callable(previous):  # SIG_IGN, SIG_DFL or not set from Python: nothing raises KeyboardInterrupt
            return None
        return cls(frame, previous)

    def install(self) -> None:
        """Put it in front of the handler it was made for (made first and kept by the caller, so that whatever
        happens from here on, the caller can end it)."""
        signal.signal(signal.SIGINT, self.handle)

    def handle(self, signum: int, frame: FrameType | None) -> Any:
        try:
            stack = _stack(frame)
            if self._repeated(stack):
                return None  # the first Ctrl-C is still being handled: this one would only cut that short
            if _must_wait(stack):
                _thread.interrupt_main(signum)  # again in a moment: it lands once the model is handed back
                return None
            if self.done:
                self.step_aside()  # the turn is over and unwound: the guard is no longer needed
                return self.previous(signum, frame)
        except Exception:  # the guard's own failure must never replace the Ctrl-C with another error
            stack = []
        self.unwinding = ([self.frame] if self.frame is not None else []) + [f for f in stack if _ours(f)]
        self.raised_at = time.monotonic()
        self.previous(signum, frame)  # normally raises KeyboardInterrupt, which keeps what was just noted
        self.unwinding, self.raised_at = [], None
        return None

    def _repeated(self, stack: list[FrameType]) -> bool:
        if self.raised_at is None:
            return False
        return time.monotonic() - self.raised_at < REPEAT_S or any(f is u for f in stack for u in self.unwinding)

    def resumed(self) -> None:
        """The reader is back for more (after catching an interrupt, or in a later cell): guard it afresh."""
        self.unwinding, self.raised_at = [], None
        if self.done:
            return  # the model was taken from its turn meanwhile
        current = signal.getsignal(signal.SIGINT)
        if current != self.handle and _on_main_thread():  # ipykernel puts its own handler back after each cell
            previous = _live(current)
            if callable(previous):
                self.previous = previous
                signal.signal(signal.SIGINT, self.handle)

    def ended(self) -> None:
        """The model has been handed back. Stay in place after an interrupt (see _repeated), else step aside."""
        self.done = True
        if self.raised_at is None:
            self.step_aside()

    def step_aside(self) -> None:
        """Put the handler it stood in front of back, if it is still the one in place."""
        self.done = True
        if _on_main_thread() and signal.getsignal(signal.SIGINT) == self.handle:
            signal.signal(signal.SIGINT, self.previous)
        self.frame, self.unwinding, self.raised_at = None, [], None


def _live(handler: Any) -> Any:
    """The handler a new guard stands in front of: past guards whose turns are over."""
    while isinstance(getattr(handler, "__self__", None), TurnGuard) and handler.__self__.done:
        guard = handler.__self__
        handler = guard.previous
        guard.frame, guard.unwinding, guard.raised_at = None, [], None
    return handler
