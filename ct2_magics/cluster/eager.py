"""llama.map(list or pandas Series, cluster=client): partitions out as tasks, replies back in input order."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ct2_magics.core.context import Context
from ct2_magics.core.items import Progress, Rows, summary, whole_number
from ct2_magics.errors import LlamaError

if TYPE_CHECKING:
    from ct2_magics.cluster.worker import Job

# Batches in a partition (llama.map on a list or pandas Series): enough work to hide the scheduler's
# few ms per task, few enough that progress, interrupts and a lost worker cost little (BENCHMARKS.md).
BATCHES_PER_PARTITION = 4


def run(session: Context, client: Any, items: Any, job: Job, *, partition_size: int | None, progress: Progress,
        errors: str) -> Any:
    """Answer `items` on the cluster's workers; a list, or a Series on the same index for a Series."""
    import distributed

    from ct2_magics.cluster.worker import answer

    rows = Rows(items, job.template, what="llama.map", noun="items")
    size = whole_number(job.batch_size * BATCHES_PER_PARTITION if partition_size is None else partition_size,
                        "partition_size")
    session.last_loops, session.last_cut = rows.loops, rows.cut
    try:
        rows.refused(errors)
    finally:
        session.last_errors = rows.failures
    parts = partitions(session, rows.prompts, rows.problems, job, size)
    progress.start(len(parts), "partition", long=len(parts) > 1)
    progress.note(f"on {len(client.nthreads())} workers")
    futures: list[Any] = []
    try:
        # One message for the whole job; each partition is one task, named so that it can be found and cancelled.
        futures = client.map(answer, [[rows.values[p] for p in part] for part in parts], job=job,
                             key=[f"{job.token}-{i}" for i in range(len(parts))])
        index = {future.key: i for i, future in enumerate(futures)}
        for future in distributed.as_completed(futures):
            part = parts[index[future.key]]
            replies, failed, looped, cut = _result(future, distributed)
            for pos, reply in zip(part, replies):
                rows.replies[pos] = reply
            for q, reason in looped:
                rows.looped(part[q], reason)
            for q, reason in cut:
                rows.was_cut(part[q], reason)
            new = [rows.fail(part[q], reason) for q, reason in failed]
            if new and errors == "raise":
                session.last_errors = new
                line = summary(new, len(rows), raised=True).replace("nothing was generated", "the job was stopped")
                raise LlamaError(f"llama.map: {line}")
            progress.advance(1)
    finally:
        progress.close()
        pending = [f for f in futures if not f.done()]
        if pending:  # an interrupt or an error: the rest of the job is not wanted
            client.cancel(pending)
    result = rows.result()
    session.last_errors = rows.failures
    return result


def _result(future: Any, distributed: Any) -> tuple[list[str | None], list[tuple[int, str]], list[tuple[int, str]],
                                                     list[tuple[int, str]]]:
    try:
        return future.result()
    except LlamaError as e:  # raised on a worker: its one line, without the remote traceback
        raise LlamaError(f"llama.map: {e}") from None
    except distributed.KilledWorker as e:
        raise LlamaError(f"llama.map: the workers running a partition kept dying ({e}); they may be out of memory.") from None


def partitions(session: Context, texts: list[str], problems: dict[int, str], job: Job, size: int) -> list[list[int]]:
    """Positions of each partition, in whole batches: local llama.map's own when the kernel holds the model, else in order.

    With the model here, items are put in the order local llama.map batches them (by prompt length), and each
    partition takes whole batches, so every batch has the same prompts as locally and greedy replies are equal
    even at near-ties. Items that cannot be asked go last: they join no batch.
    """
    size = math.ceil(size / job.batch_size) * job.batch_size  # no batch of one where locally there is none
    engine = session.engine
    if engine is None:
        order = list(range(len(texts)))
    else:
        head = [{"role": "system", "content": job.system}] if job.system else []
        lengths = {p: engine.count_tokens(head + [{"role": "user", "content": t}]) for p, t in enumerate(texts)
                   if p not in problems}
        order = sorted(lengths, key=lengths.__getitem__) + sorted(problems)  # stable: ties keep input order, as locally
    return [order[i:i + size] for i in range(0, len(order), size)]
