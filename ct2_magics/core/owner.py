"""The one owner of the loaded model: whose turn it is, stopping every use, and loading, unloading or replacing it."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

from ct2_magics.core.ctrl_c import TurnGuard, deferred, guard_locks_of
from ct2_magics.core.idle import IdleWork
from ct2_magics.errors import LlamaError

if TYPE_CHECKING:
    from ct2_magics.core.engine import Engine

# A reply that holds the model but whose reader has not come back for a piece in this long, while another
# request waits, is taken to be abandoned (a loop left with `break`, an iterator kept in a variable).
ABANDONED_AFTER_S = 2.0
UNLOADED = "No model is loaded (it was unloaded while this request waited); load one with %llama load MODEL."


class Stopped(Exception):
    """Raised to a use that was stopped while it waited for its turn."""


class Use:
    """One claim on the model: a streamed reply or a batch chunk, made in the current thread."""

    def __init__(self, stop: threading.Event | None = None, on_lost: Callable[[], None] = lambda: None) -> None:
        self.stop = stop or threading.Event()
        self.thread = threading.get_ident()
        self.on_lost = on_lost  # told when the model was taken from it while its reader was away
        self.lost = False
        self.paused_since: float | None = None  # while its reader holds a piece and has not asked for the next
        self.frame: FrameType | None = None  # the frame that runs its `with owner.turn(...)`, while it holds the model
        self.guard: TurnGuard | None = None  # its Ctrl-C guard, on the main thread


class ModelOwner(IdleWork):
    """Hands out the model one use at a time; load, unload and replace first take it back from every use."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.engine: Engine | None = None
        self._holder: Use | None = None
        self._uses: set[Use] = set()  # holding or waiting
        self._swapping = False
        self._idle = Use()  # the holder while an idle job runs; never in _uses
        self._idle_job = None  # the newest idle job, and how long the model must be idle first (core/idle.py)
        self._idle_since = time.monotonic()  # when the model was last handed back
        self._worker: threading.Thread | None = None
        self.on_idle_error: Callable[[BaseException], None] = lambda error: None

    @property
    def busy(self) -> bool:
        """Whether a request holds the model now (idle-time work does not count)."""
        with self._cond:
            holder = self._holder
            if holder is None or holder is self._idle:
                return False
            left = self._left(holder)
            if left:
                holder.lost = True
        if not left:
            return True
        self._take_from(holder)  # its turn was left without handing the model back: take it now
        holder = self._holder
        return holder is not None and holder is not self._idle

    def turn(self, use: Use, on_waiting: Callable[[bool], None] = lambda waiting: None) -> _Turn:
        """Wait for the model (telling on_waiting), hold it in the block, then hand it on once decoding has stopped.

        On the main thread a Ctrl-C cannot cut the hand-back short (ct2_magics.core.ctrl_c).
        """
        return _Turn(self, use, on_waiting)

    def pause(self, use: Use) -> None:
        """The use's reader has a piece and is away with it."""
        with self._cond:
            use.paused_since = time.monotonic()

    def resume(self, use: Use) -> bool:
        """The reader is back for the next piece; False if the model was taken from it meanwhile."""
        with self._cond:
            use.paused_since = None
            lost = use.lost
        if use.guard is not None:
            use.guard.resumed()
        return not lost

    def stop_all(self) -> None:
        """Tell every use, running or waiting, to stop (within a step)."""
        with self._cond:
            uses = list(self._uses)
        for use in uses:
            use.stop.set()

    def replace(self, build: Callable[[Callable[[], None]], Engine]) -> Engine:
        """Make the engine with build(make_room); make_room takes the model from every use and frees the old weights.

        If build fails, the old model is loaded again and stays: a model that fails to load never costs the loaded one.
        """
        old, freed = self.engine, False

        def make_room() -> None:
            nonlocal freed
            self._take_all()
            if old is not None and old.generator is not None:
                old.generator.unload_model()
                freed = True

        try:
            engine = build(make_room)
        except BaseException:
            self._restore(old, freed)
            raise
        with self._cond:
            self.engine, self._swapping = engine, False
            self._cond.notify_all()
        if old is not None:
            old.close()
        return engine

    def unload(self) -> bool:
        """Stop every use and free the model; False if none was loaded."""
        try:
            self._take_all()
            with self._cond:
                old, self.engine = self.engine, None
        finally:
            self._end_swap()
        if old is None:
            return False
        old.close()
        return True

    # -- inside -----------------------------------------------------------------------------------
    def _acquire(self, use: Use, on_waiting: Callable[[bool], None]) -> Engine:
        waited = False
        with self._cond:
            self._uses.add(use)
        try:
            while True:
                victim = None
                with self._cond:
                    if use.stop.is_set():
                        raise Stopped()
                    if self._holder is None and not self._swapping:
                        if self.engine is None:
                            raise LlamaError(UNLOADED)
                        self._holder = use
                        break
                    if self._holder is not None and (self._abandoned(self._holder, use) or self._left(self._holder)):
                        victim = self._holder
                        victim.lost = True  # under the lock, so its reader cannot come back for more meanwhile
                if victim is not None:
                    self._take_from(victim)
                    continue
                if not waited:
                    waited = True
                    on_waiting(True)
                with self._cond:
                    self._cond.wait(0.05)
        except BaseException:
            with self._cond:
                self._uses.discard(use)
            raise
        if waited:
            on_waiting(False)
        return self.engine

    def _abandoned(self, holder: Use, waiter: Use) -> bool:
        # A holder paused in the waiter's own thread can never come back while the waiter waits: that would hang.
        paused = holder.paused_since
        return paused is not None and (holder.thread == waiter.thread or time.monotonic() - paused >= ABANDONED_AFTER_S)

    def _left(self, holder: Use) -> bool:
        """Whether the holder's turn was left without handing the model back: it is not paused, and the frame that
        ran its `with owner.turn(...)` runs on no thread. The caller holds the lock, so the holder cannot pause or
        resume meanwhile. A backstop: on the main thread, ctrl_c's guard keeps a Ctrl-C out of the hand-back."""
        frame = holder.frame
        if frame is None or holder.paused_since is not None:
            return False
        for top in sys._current_frames().values():
            while top is not None:
                if top is frame:
                    return False
                top = top.f_back
        return True

    @deferred
    def _take_from(self, victim: Use) -> None:
        """Stop a use whose reader is away (or gone) and give its turn back (the caller set victim.lost)."""
        victim.stop.set()
        self._wait_idle()
        with self._cond:
            if self._holder is victim:
                self._holder = None
                self._idle_since = time.monotonic()
                victim.frame = None
                self._cond.notify_all()
        if victim.guard is not None:
            victim.guard.done = True  # it steps aside at the next Ctrl-C (only the main thread may touch handlers)
        victim.on_lost()

    @deferred
    def _release(self, use: Use, stop: bool = False) -> None:
        """Hand the model back once decoding has stopped (idempotent); stop: tell decoding to stop first."""
        if stop:
            use.stop.set()
        with self._cond:
            self._uses.discard(use)
            mine = self._holder is use
        if mine:
            self._wait_idle()  # the next use must not queue behind a step that is still decoding
            with self._cond:
                if self._holder is use:
                    self._holder = None
                    self._idle_since = time.monotonic()
                    use.frame = None
                    self._cond.notify_all()

    def _wait_idle(self) -> None:
        engine = self.engine
        if engine is not None:
            engine.wait_idle()

    def _take_all(self) -> None:
        """Let no new use start, stop the one that holds the model and wait until it has let go.

        Uses still waiting keep waiting: after a replace they run on the new model, after an unload they fail.
        """
        with self._cond:
            self._swapping = True
        try:
            while True:
                with self._cond:
                    holder = self._holder
                    if holder is None:
                        return
                    holder.stop.set()
                    away = holder.paused_since is not None or self._left(holder)
                    if away:
                        holder.lost = True
                    else:
                        self._cond.wait(0.05)  # a running use stops within a step and hands the model back
                if away:
                    self._take_from(holder)
        except BaseException:
            self._end_swap()
            raise

    def _end_swap(self) -> None:
        with self._cond:
            self._swapping = False
            self._cond.notify_all()

    def _restore(self, old: Engine | None, freed: bool) -> None:
        try:
            if freed and old is not None and old.generator is not None:
                old.reload()
        except Exception:  # the old weights no longer fit: nothing is loaded, and the load's own error is shown
            with self._cond:
                self.engine = None
        finally:
            self._end_swap()


class _Turn:
    """ModelOwner.turn's context manager: on the main thread, a Ctrl-C guard from the wait to the hand-back."""

    def __init__(self, owner: ModelOwner, use: Use, on_waiting: Callable[[bool], None]) -> None:
        self.owner, self.use, self.on_waiting = owner, use, on_waiting

    def __enter__(self) -> Engine:
        use = self.use
        use.frame = sys._getframe(1)
        use.guard = TurnGuard.make(use.frame)
        try:
            if use.guard is not None:
                use.guard.install()
            return self.owner._acquire(use, self.on_waiting)
        except BaseException:
            self.__exit__(None, None, None)  # it may hold the model already (an interrupt after it got its turn)
            raise

    @deferred
    def __exit__(self, kind: Any, error: Any, tb: Any) -> None:
        try:
            self.owner._release(self.use, stop=kind is not None)
        finally:
            guard, self.use.guard = self.use.guard, None
            if guard is not None:
                guard.ended()


guard_locks_of(__name__)
