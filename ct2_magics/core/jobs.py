"""One generate/map call's turns on the model: each chunk of prompts is answered in a turn of its own (so the magic or
the panel can take the model between chunks), on the model the prompts were encoded for, and a chunk that fails as a
whole (e.g. out of memory) is answered again prompt by prompt, so one prompt never loses the others."""

from __future__ import annotations

import threading
from typing import Any

from ct2_magics.core.context import Context
from ct2_magics.core.items import Progress
from ct2_magics.core.owner import Stopped, Use
from ct2_magics.errors import LlamaError, first_line


class Job:
    """A subclass answers one chunk in `answer` (engine held): (position, value, None), or (position, None, why)."""

    failed = "generation failed"  # how a prompt that failed alone is described

    def __init__(self, session: Context, engine: Any, progress: Progress) -> None:
        self.session, self.engine, self.progress = session, engine, progress
        self.stop = threading.Event()  # set by stop_all, unload, load, and a kernel interrupt

    def answer(self, engine: Any, prompts: list[list[int]], positions: list[int]) -> list[tuple[int, Any, str | None]]:
        raise NotImplementedError

    def run(self, prompts: list[list[int]], positions: list[int]) -> list[tuple[int, Any, str | None]]:
        """(position, value, None) for each prompt, or (position, None, why) for one that failed."""
        waiting = lambda waited: self.progress.note("waiting for the model" if waited else "")  # noqa: E731
        try:
            with self.session.owner.turn(Use(self.stop), waiting) as engine:
                if engine is not self.engine:
                    raise LlamaError("Another model was loaded while the job ran; rerun it.")
                try:
                    answers = self.answer(engine, prompts, positions)
                except RuntimeError as e:  # e.g. out of memory on a GPU: one prompt failing must not lose the others
                    if len(prompts) == 1:
                        return [(positions[0], None, f"{self.failed} ({first_line(e)})")]
                    answers = None
                if self.stop.is_set():
                    raise Stopped()
                if answers is not None:
                    return answers
        except Stopped:
            raise LlamaError("The job was stopped (the model was unloaded or replaced); rerun it.") from None
        return [r for one, p in zip(prompts, positions) for r in self.run([one], [p])]
