"""A reply decoded on a worker thread and read as text pieces on the caller's: the shape shared by schema replies
(core/schema_runs.py) and replies with token probabilities (core/weighing.py), which drive CTranslate2's
`generate_batch` with a callback instead of iterating `generate_tokens`."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

from ct2_magics.core.decoding import IncrementalDecoder, Stats

POLL_S = 0.05  # how often the reading thread looks up: a kernel interrupt lands within this


class WorkerStream:
    """Text pieces of one reply as they are written. A subclass decodes in `work` (on the worker thread), handing each
    step to `put`; `token` says which token a step wrote (None: none of the reply's), `took` sees each token with its
    text piece, and `finish` says how the reply ended once the worker is done ("stop", "length" or "interrupted")."""

    thread_name = "ct2-magics reply"

    def __init__(self, engine: Any, prompt_ids: list[int], stats: Stats, stop: threading.Event) -> None:
        self.engine, self.prompt, self.stats, self.stop = engine, prompt_ids, stats, stop
        self._steps: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pieces = self._run()

    def __iter__(self) -> WorkerStream:
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self) -> None:
        self._pieces.close()

    # -- what a subclass writes -------------------------------------------------------------------------
    def work(self) -> None:
        raise NotImplementedError

    def token(self, step: Any) -> int | None:
        return step

    def took(self, step: Any, piece: str) -> None:
        pass

    def finish(self) -> str:
        return "interrupted" if self.stop.is_set() else "stop"

    def put(self, step: Any) -> None:
        """Hand one step to the reading thread (from the worker thread)."""
        self._steps.put(step)

    # -- the two threads --------------------------------------------------------------------------------
    def _run(self) -> Iterator[str]:
        stats = self.stats
        stats.prompt_tokens, stats.started = len(self.prompt), time.perf_counter()
        text = IncrementalDecoder(self.engine.tokenizer)
        out: dict[str, BaseException] = {}
        done = object()

        def work() -> None:
            try:
                self.work()
            except BaseException as e:  # handed to the reading thread
                out["error"] = e
            finally:
                self._steps.put(done)

        worker = threading.Thread(target=work, name=self.thread_name, daemon=True)
        worker.start()
        try:
            while True:
                try:
                    step = self._steps.get(timeout=POLL_S)
                except queue.Empty:
                    continue
                if step is done:
                    break
                token = self.token(step)
                if token is None:
                    continue
                stats.reply_tokens += 1
                stats.elapsed_s = time.perf_counter() - stats.started
                stats.first_token_s = stats.first_token_s or stats.elapsed_s
                piece = text.step(token)
                self.took(step, piece)
                if piece:
                    yield piece
            worker.join()
            if "error" in out:
                raise out["error"]
            stats.finish = self.finish()
        except BaseException:
            stats.finish = "interrupted"
            raise
        finally:
            self.stop.set()
            while worker.is_alive():  # decoding stops within a step; a second interrupt must not leave it running
                try:
                    worker.join()
                except KeyboardInterrupt:
                    pass
            stats.elapsed_s = time.perf_counter() - stats.started
