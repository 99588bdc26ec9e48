"""Many independent one-shot prompts through batched CTranslate2 calls: `llama.generate` and `llama.map`."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from ct2_magics.core.choices import Picker
from ct2_magics.core.choices import checked as checked_choices
from ct2_magics.core.context import Context
from ct2_magics.core.items import Progress, Rows, Silent, check_errors_mode, cut_reason, loop_reason, summary, whole_number
from ct2_magics.core.jobs import Job
from ct2_magics.core.options import Sampling, check_options, resolve
from ct2_magics.core.planning import prompt_budget
from ct2_magics.core.prefill import share
from ct2_magics.errors import LlamaError, LlamaInterrupted, check_text

# How often the kernel's main thread looks up from a running batch: a kernel interrupt takes effect this soon.
POLL_S = 0.05


def generate(session: Context, prompts: Sequence[str], *, system: str | None = None, batch_size: int | None = None,
             progress: Progress | None = None, errors: str = "warn", schema: Any = None, choices: Any = None,
             probs: bool = False, **settings: Any) -> Any:
    """Answer each prompt on its own ([system?, user] through the chat template), batched; replies in input order.

    Failed prompts (too long for the context, not text) come back as None and are listed in
    `session.last_errors` (errors="warn" or "ignore"; the front end says so for "warn"), or raise before
    anything is generated (errors="raise"). temperature=0 (greedy) gives the same replies as
    `ask(..., once=True, temperature=0)`, except where two tokens tie to within rounding: a batch adds its
    numbers in another order than a single prompt, so such a tie can go the other way (1 prompt in 32 on the
    bench model, at a 1% logit margin). A `seed` only takes effect on a freshly loaded model: CTranslate2
    seeds each worker thread once (OpenNMT/CTranslate2#1757), so sampled replies are not reproducible call
    to call.

    choices=[...]: each reply is the most probable of these labels (core/choices.py); probs=True: a DataFrame
    with a label column and each choice's probability.
    """
    if isinstance(prompts, str):
        raise LlamaError("generate takes a list of prompts; for one prompt use llama.ask(prompt, once=True).")
    rows = Rows(prompts, None, what="llama.generate", noun="prompts")
    return run(session, rows, system=system, batch_size=batch_size, progress=progress, errors=errors, options=settings,
               schema=schema, choices=choices, probs=probs)


def map_items(session: Context, items: Any, template: str = "{}", *, system: str | None = None,
              batch_size: int | None = None, progress: Progress | None = None, errors: str = "warn", schema: Any = None,
              choices: Any = None, probs: bool = False, **settings: Any) -> Any:
    """Fill `template` with each item and answer each; a list, or a Series on the same index for a Series.

    "Summarise: {}" puts the item at {}; a template without {} gets the item appended after a blank
    line; write literal braces as {{ }}. Missing, empty or non-text items and prompts too long for the
    context are None; the other options (choices and probs too) are those of `generate`.
    """
    rows = Rows(items, template, what="llama.map", noun="items")
    return run(session, rows, system=system, batch_size=batch_size, progress=progress, errors=errors, options=settings,
               schema=schema, choices=choices, probs=probs)


def check_call(session: Context, *, system: str | None, batch_size: int | None, errors: str,
               options: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Every check a call makes before it loads a model: (batch size, checked options); LlamaError otherwise."""
    check_errors_mode(errors)
    size = whole_number(session.settings.batch_size if batch_size is None else batch_size, "batch_size")
    options = check_options(options)
    if system is not None and not isinstance(system, str):
        raise LlamaError(f"The system prompt must be text (a str); got {type(system).__name__}.")
    return size, options


def run(session: Context, rows: Rows, *, system: str | None, batch_size: int | None, progress: Progress | None,
        errors: str, options: dict[str, Any], schema: Any = None, choices: Any = None, probs: bool = False) -> Any:
    """Answer `rows` on the loaded model (loading the default one if none is), batch by batch; the result in their shape.

    schema: each reply is JSON that fits it (core/constrained.py); the result holds values (map: a DataFrame).
    choices: each reply is one of them, scored whole (core/choices.py); probs=True: with their probabilities.
    """
    size, options = check_call(session, system=system, batch_size=batch_size, errors=errors, options=options)
    if schema is not None and (choices is not None or probs):
        raise LlamaError("Give choices= or schema=, not both: a reply is either one of the choices or JSON that fits the schema.")
    labels = checked_choices(choices, probs, options, table=True)
    pick = None if labels is None else Picker(labels, probs)  # the replies are choices, scored (core/choices.py)
    if schema is not None:
        from ct2_magics.core.schema import as_schema
        from ct2_magics.core.schema_runs import shaped

        schema = as_schema(schema)
    result = (rows.result if pick is None and schema is None
              else (lambda: pick.result(rows)) if pick is not None else (lambda: shaped(rows, schema)))
    session.last_errors, session.last_loops, session.last_cut = [], rows.loops, rows.cut
    if not len(rows):
        return result()
    engine = session.ensure_engine()
    sampling = resolve(options, session.settings, engine.defaults)
    system = system if system is not None else session.settings.system
    if system:
        check_text(system, "system prompt")
    head = [{"role": "system", "content": system}] if system else []
    room = sampling.max_tokens if pick is None else pick.room(engine, head, rows)
    budget = prompt_budget(session.settings, engine, room, origin="python")
    engine.register_system(system)

    encoded: dict[int, list[int]] = {}
    for pos, prompt in enumerate(rows.prompts):
        if pos in rows.problems:
            rows.fail(pos, rows.problems[pos])
            continue
        ids = engine.prompt_ids(head + [{"role": "user", "content": prompt}])
        if len(ids) > budget:
            rows.fail(pos, f"prompt is {len(ids)} tokens; the context allows {budget} (the context less "
                           f"{'max_tokens' if pick is None else 'the longest choice'} {room})")
        else:
            encoded[pos] = ids
    session.last_errors = rows.failures
    if rows.failures and errors == "raise":
        raise LlamaError(f"{rows.what}: {summary(rows.failures, len(rows), raised=True)}")
    share(session, engine, rows, head, list(encoded.values()))  # what every prompt shares is read once per batch

    # Similar lengths share a batch, so little time goes on padding; results go back by position.
    order = sorted(encoded, key=lambda p: len(encoded[p]))
    step = size * engine.batch_workers  # each of the engine's batch workers takes batch_size prompts
    chunks = [order[i:i + step] for i in range(0, len(order), step)]
    progress = progress or Silent()
    progress.start(len(order), "prompt", long=len(chunks) > 1)
    # A reply that falls into a loop is stopped there, as a streamed one is (never a schema's: its JSON must end).
    on_loop = (lambda pos, span: rows.looped(pos, loop_reason(span))) if session.settings.stop_loops else None
    on_cut = lambda pos: rows.was_cut(pos, cut_reason(sampling.max_tokens))  # noqa: E731
    job = (_Job(session, engine, sampling, progress, schema, on_loop, on_cut) if pick is None
           else pick.job(session, engine, progress))
    done = 0
    try:
        for chunk in chunks:
            # Chunk by chunk: the bar moves, and the magic or the panel can take its turn on the model during a long job.
            for pos, reply, reason in job.run([encoded[p] for p in chunk], chunk):
                rows.replies[pos] = reply
                if reason is not None:
                    rows.fail(pos, reason)
            done += len(chunk)
            progress.advance(len(chunk))
    except KeyboardInterrupt:
        for pos in order[done:]:
            rows.fail(pos, "not answered: interrupted")
        session.last_result = result()
        session.last_errors = rows.failures
        raise LlamaInterrupted(f"{rows.what} stopped: {done} of {len(rows)} rows were answered; llama.last_result holds "
                               "them (None for the rest).") from None
    finally:
        progress.close()
    return result()


class _Job(Job):
    """Free or schema replies for the chunks of one generate/map call."""

    def __init__(self, session: Context, engine: Any, sampling: Sampling, progress: Progress, schema: Any = None,
                 on_loop: Callable[[int, str], None] | None = None, on_cut: Callable[[int], None] | None = None) -> None:
        super().__init__(session, engine, progress)
        self.sampling, self.schema = sampling, schema
        self.on_loop = on_loop if schema is None else None  # told (position, repeated span) of each reply stopped in a loop
        self.on_cut = on_cut if schema is None else None  # told the position of each reply that reached max_tokens

    def answer(self, engine: Any, prompts: list[list[int]], positions: list[int]) -> list[tuple[int, Any, str | None]]:
        loops: dict[int, str] = {}  # index in prompts -> the repeated span, when on_loop is set
        replies = self._decode(engine, prompts, None if self.on_loop is None else loops)
        if self.on_loop is not None and not self.stop.is_set():
            for i, span in loops.items():
                self.on_loop(positions[i], span)
        if self.on_cut is not None and not self.stop.is_set():
            for i, reply in enumerate(replies):
                if i not in loops and not isinstance(reply, str) and len(reply) >= self.sampling.max_tokens:
                    self.on_cut(positions[i])
        # A schema reply without a value comes back as why (a str).
        return [(p, None, r) if isinstance(r, str) else (p, engine.decode(r), None) for p, r in zip(positions, replies)]

    def _decode(self, engine: Any, prompts: list[list[int]], loops: dict[int, str] | None) -> list[list[int]]:
        """engine.generate_batch on a thread of its own: this thread looks up every POLL_S, so a kernel interrupt
        lands within that and stops every sequence of the running batch within a step."""
        out: dict[str, Any] = {}

        def work() -> None:
            try:
                if self.schema is None:
                    out["replies"] = engine.generate_batch(prompts, self.sampling, self.stop, loops)
                else:
                    from ct2_magics.core.schema_runs import generate_batch

                    out["replies"] = generate_batch(engine, prompts, self.sampling, self.stop, self.schema)
            except BaseException as e:  # handed to the caller's thread
                out["error"] = e

        worker = threading.Thread(target=work, name="ct2-magics batch", daemon=True)
        worker.start()
        try:
            while worker.is_alive():
                worker.join(POLL_S)
        except BaseException:
            self.stop.set()
            while worker.is_alive():  # the decoder stops within a step; a second interrupt must not leave it running
                try:
                    worker.join()
                except KeyboardInterrupt:
                    pass
            raise
        if "error" in out:
            raise out["error"]
        return out["replies"]
