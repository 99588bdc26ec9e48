"""llama.map(list or pandas Series, cluster=client): partitions out as tasks, replies back in input order."""

from __future__ import annotations

import math
import sys
import uuid
from typing import TYPE_CHECKING, Any

from ct2_magics.core.batch import ItemError, _as_series, _items, _prompts, _summary, _template_filler
from ct2_magics.errors import LlamaError

if TYPE_CHECKING:
    from ct2_magics.cluster.worker import Job
    from ct2_magics.core.session import Session


def run(session: Session, client: Any, items: Any, job: Job, *, partition_size: int | None, progress: bool | None,
        errors: str) -> Any:
    """Answer `items` on the cluster's workers; a list, or a Series on the same index for a Series."""
    import distributed

    from ct2_magics.cluster.client import BATCHES_PER_PARTITION
    from ct2_magics.cluster.worker import answer

    series = _as_series(items)
    values, labels = _values(items, series)
    size = job.batch_size * BATCHES_PER_PARTITION if partition_size is None else partition_size
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise LlamaError(f"partition_size must be a whole number >= 1; got {size!r}.")
    texts, problems = _prompts(values, _template_filler(job.template))
    if problems and errors == "raise":
        failed = [ItemError(p, labels[p], problems[p]) for p in sorted(problems)]
        session.last_errors = failed
        raise LlamaError(f"llama.map: {_summary(failed, len(values), raised=True)}")
    parts = partitions(session, texts, problems, job, size)
    token = f"ct2-magics-map-{uuid.uuid4().hex[:12]}"
    results: list[str | None] = [None] * len(values)
    failures: list[ItemError] = []
    show = progress if progress is not None else len(parts) > 1
    from tqdm.auto import tqdm  # a widget in a notebook, text in a terminal

    bar = tqdm(total=len(parts), disable=not show, desc=f"llama.map on {len(client.nthreads())} workers",
               unit="partition", dynamic_ncols=True)
    futures: list[Any] = []
    try:
        # One message for the whole job; each partition is one task, named so that it can be found and cancelled.
        futures = client.map(answer, [[values[p] for p in part] for part in parts], job=job,
                             key=[f"{token}-{i}" for i in range(len(parts))])
        index = {future.key: i for i, future in enumerate(futures)}
        for future in distributed.as_completed(futures):
            part = parts[index[future.key]]
            replies, failed = _result(future, distributed)
            for pos, reply in zip(part, replies):
                results[pos] = reply
            new = [ItemError(part[q], labels[part[q]], reason) for q, reason in failed]
            failures.extend(new)
            if new and errors == "raise":
                session.last_errors = new
                line = _summary(new, len(values), raised=True).replace("nothing was generated", "the job was stopped")
                raise LlamaError(f"llama.map: {line}")
            bar.update(1)
    finally:
        bar.close()
        pending = [f for f in futures if not f.done()]
        if pending:  # an interrupt or an error: the rest of the job is not wanted
            client.cancel(pending)
    failures.sort(key=lambda f: f.position)
    session.last_errors = failures
    if failures and errors == "warn":
        from ct2_magics.notebook.markup import inert_text

        print(inert_text(f"llama.map: {_summary(failures, len(values))}"), file=sys.stderr)
    if series is None:
        return results
    pd = sys.modules["pandas"]
    return pd.Series(results, index=series.index, name=series.name, dtype=object)


def _values(items: Any, series: Any) -> tuple[list[Any], list[Any]]:
    if series is not None:
        return series.tolist(), list(series.index)
    values = _items(items, "map", "items")
    return values, list(range(len(values)))


def _result(future: Any, distributed: Any) -> tuple[list[str | None], list[tuple[int, str]]]:
    try:
        return future.result()
    except LlamaError as e:  # raised on a worker: its one line, without the remote traceback
        raise LlamaError(f"llama.map: {e}") from None
    except distributed.KilledWorker as e:
        raise LlamaError(f"llama.map: the workers running a partition kept dying ({e}); they may be out of memory.") from None


def partitions(session: Session, texts: list[str], problems: dict[int, str], job: Job, size: int) -> list[list[int]]:
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
