"""The model owner's idle-time work (prefilling the next turn): one job at a time, on the owner's worker thread,
at the lowest priority. A mixin of ModelOwner: it uses the owner's condition, holder and uses."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ct2_magics.core.ctrl_c import guard_locks_of

if TYPE_CHECKING:
    from ct2_magics.core.engine import Engine

IdleJob = Callable[["Engine", Callable[[], bool]], None]  # job(engine, waiting): waiting() tells a request waits


class IdleWork:
    """ModelOwner's idle side."""

    _cond: threading.Condition
    _holder: Any
    _idle: Any
    _uses: set[Any]
    _swapping: bool
    _idle_since: float
    _idle_job: tuple[IdleJob, float, Any] | None
    _worker: threading.Thread | None
    engine: Engine | None
    on_idle_error: Callable[[BaseException], None]
    _release: Callable[..., None]

    def when_idle(self, job: IdleJob, after: float = 0.0, key: Any = None) -> None:
        """Run job(engine, waiting) on the owner's worker thread once the model has been idle `after` seconds.

        Lowest priority: it never starts while a request holds or waits for the model, and a request that
        comes while it runs waits for it to end (so it must be one bounded step; waiting() says when to stop
        before the next one). A newer job replaces one that has not started; `key` names it for drop_idle.
        """
        with self._cond:
            self._idle_job = (job, after, key)
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="ct2-magics idle work", daemon=True)
                self._worker.start()
            self._cond.notify_all()

    def drop_idle(self, key: Any) -> None:
        """Forget the idle job named `key` if it has not started (a running one ends as it would)."""
        with self._cond:
            if self._idle_job is not None and key is not None and self._idle_job[2] == key:
                self._idle_job = None
                self._cond.notify_all()

    @property
    def idle_pending(self) -> bool:
        """Whether an idle job waits to start (once the model has been idle long enough) or runs now."""
        with self._cond:
            return self._idle_job is not None or self._holder is self._idle

    def _work(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._idle_job is None or self.engine is None:
                        self._idle_job, self._worker = None, None
                        return
                    job, after, _ = self._idle_job
                    due = self._idle_since + after
                    free = self._holder is None and not self._uses and not self._swapping
                    if free and time.monotonic() >= due:
                        self._idle_job, self._holder, engine = None, self._idle, self.engine
                        break
                    self._cond.wait(max(0.005, due - time.monotonic()) if free else 0.05)
            try:
                job(engine, lambda: bool(self._uses))
            except BaseException as error:  # idle work must never take the worker down silently
                self.on_idle_error(error)
            finally:
                self._release(self._idle)


guard_locks_of(__name__)  # when_idle runs on the kernel's main thread: its lock must not be cut by a Ctrl-C
