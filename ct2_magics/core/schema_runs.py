"""Schema replies for the front ends: one streamed reply (ask, %%llama), a batch of them (generate, map), and their
values: a dict or an instance, a list, or a table with one typed column per top-level property."""

from __future__ import annotations

import json
import threading
from typing import Any

from ct2_magics.core.constrained import Reply, decode, failure
from ct2_magics.core.decoding import Stats
from ct2_magics.core.options import Sampling
from ct2_magics.core.schema import Schema
from ct2_magics.core.worker_stream import WorkerStream
from ct2_magics.errors import LlamaError


class SchemaStream(WorkerStream):
    """Text pieces of one schema reply as they are written (decoded on a worker thread); `problem` says, once it has
    ended, why it holds no value (None: its JSON is complete)."""

    thread_name = "ct2-magics schema reply"

    def __init__(self, engine: Any, schema: Schema, prompt_ids: list[int], sampling: Sampling, stats: Stats,
                 stop: threading.Event, *, split: int = 0) -> None:
        self.sampling, self.split = sampling, split
        self.problem: str | None = "the reply was stopped before its JSON was complete, so there is no value"
        super().__init__(engine, prompt_ids, stats, stop)
        self.reply = Reply(engine, schema, prompt_ids, sampling.max_tokens, on_token=self.put)

    def work(self) -> None:
        decode(self.engine, [self.reply], self.sampling, self.stop, split=self.split)

    def finish(self) -> str:
        self.problem = failure(self.reply, self.sampling.max_tokens)
        return {"complete": "stop", "failed": "stop", "length": "length"}.get(self.reply.state, "interrupted")


def generate_batch(engine: Any, prompts: list[list[int]], sampling: Sampling, stop: threading.Event,
                   schema: Schema) -> list[list[int] | str]:
    """For each prompt, the reply ids of complete JSON, or why there is none (one line), in input order."""
    replies = [Reply(engine, schema, p, sampling.max_tokens, on_token=lambda token: None) for p in prompts]
    decode(engine, replies, sampling, stop, generator=engine.batch_generator(), workers=engine.batch_workers)
    return [r.ids if r.state == "complete" else (failure(r, sampling.max_tokens) or "") for r in replies]


def reply_value(response: Any) -> Any:
    """A finished schema reply's value; LlamaError (one line) when its JSON is not complete."""
    schema = response.request.schema
    if schema is None:
        raise LlamaError("This reply was not asked with schema=, so it has no value; use its text.")
    if response.status != "complete" or response.problem is not None:
        problem = response.problem or "the reply was stopped before its JSON was complete"
        raise LlamaError(f"{problem[0].upper()}{problem[1:]}.")
    return schema.value(response.text)


def shaped(rows: Any, schema: Schema) -> Any:
    """The replies of generate (a list of values, None where none) or map (a DataFrame on the input's index)."""
    rows.result()  # puts the failures in order
    if rows.what != "llama.map":
        return [None if t is None else schema.value(t) for t in rows.replies]
    try:
        import pandas as pd
    except ImportError:
        raise LlamaError("map with schema= returns a pandas DataFrame; pip install pandas.") from None
    data = [None if t is None else json.loads(t) for t in rows.replies]
    index = rows.series.index if rows.series is not None else pd.RangeIndex(len(data))
    properties = schema.properties
    if not properties:
        return pd.DataFrame({"value": pd.Series(data, index=index, dtype=_dtype(schema.json))})
    columns = {name: pd.Series([None if d is None else d.get(name) for d in data], index=index, dtype=object)
               for name in properties}
    return pd.DataFrame({name: _typed(col, _dtype(properties[name])) for name, col in columns.items()}, index=index)


def _typed(column: Any, dtype: str) -> Any:
    try:
        return column.astype(dtype)
    except (TypeError, ValueError, OverflowError):  # e.g. an integer beyond Int64: the values stay as they are
        return column


def _dtype(node: dict[str, Any]) -> str:
    """pandas' dtype for a property's values: nullable Int64, float64, boolean or string; object for the rest."""
    kinds = _kinds(node) - {"null"}
    if kinds == {"integer"}:
        return "Int64"
    if kinds and kinds <= {"integer", "number"}:
        return "float64"
    return {"boolean": "boolean", "string": "string"}.get(next(iter(kinds)), "object") if len(kinds) == 1 else "object"


def _kinds(node: dict[str, Any]) -> set[str]:
    if "const" in node or "enum" in node:
        values = [node["const"]] if "const" in node else node["enum"]
        return {_kind(v) for v in values}
    kinds = node.get("type")
    found = set(kinds) if isinstance(kinds, list) else {kinds} if kinds else set()
    for arm in node.get("anyOf", []):
        found |= _kinds(arm)
    return found if found and (kinds or "anyOf" in node) else {"any"}


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return "string" if isinstance(value, str) else "object"

