"""Many independent one-shot prompts through one batched CTranslate2 call: `llama.generate` and `llama.map`."""

from __future__ import annotations

import math
import numbers
import string
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from ct2_magics.errors import LlamaError, check_text
from ct2_magics.core.options import Sampling, check_options, resolve
from ct2_magics.core.owner import Stopped, Use

if TYPE_CHECKING:
    from ct2_magics.core.response import Context as Session

ERROR_MODES = ("warn", "raise", "ignore")


@dataclass(frozen=True)
class ItemError:
    """Why one item got no result: its position, its label (the Series index, else the position) and the reason."""

    position: int
    label: Any
    reason: str


def generate(session: Session, prompts: Sequence[str], *, system: str | None = None, batch_size: int | None = None,
             progress: bool | None = None, errors: str = "warn", **settings: Any) -> list[str | None]:
    """Answer each prompt on its own ([system?, user] through the chat template), batched; replies in input order.

    Failed prompts (too long for the context, not text) come back as None, listed in `session.last_errors`
    and summarised in one line on stderr (errors="warn"), or raise before anything is generated
    (errors="raise"), or stay quiet (errors="ignore"). temperature=0 (greedy) gives the same replies
    as `ask(..., once=True, temperature=0)`, except where two tokens tie to within rounding: a batch
    adds its numbers in another order than a single prompt, so such a tie can go the other way
    (1 prompt in 32 on the bench model, at a 1% logit margin). A `seed` only takes effect on a
    freshly loaded model: CTranslate2 seeds each worker thread once (OpenNMT/CTranslate2#1757), so
    sampled replies are not reproducible call to call.
    """
    if isinstance(prompts, str):
        raise LlamaError("generate takes a list of prompts; for one prompt use llama.ask(prompt, once=True).")
    texts, problems = _prompts(_items(prompts, "generate", "prompts"), str)
    return _run(session, texts, problems, list(range(len(texts))), system=system, batch_size=batch_size,
                progress=progress, errors=errors, options=settings, what="llama.generate")


def map_items(session: Session, items: Iterable[Any], template: str = "{}", *, system: str | None = None,
              batch_size: int | None = None, progress: bool | None = None, errors: str = "warn", cluster: Any = None,
              **settings: Any) -> Any:
    """Fill `template` with each item and answer each; a list, or a Series on the same index for a Series.

    "Summarise: {}" puts the item at {}; a template without {} gets the item appended after a blank
    line; write literal braces as {{ }}. Missing, empty or non-text items and prompts too long for the
    context are None; the other options are those of `generate`. With `cluster=` a dask.distributed
    Client, or given a Dask Series, the workers answer (ct2_magics.cluster.client).
    """
    if cluster is not None or type(items).__module__.startswith("dask"):
        from ct2_magics.cluster.client import map_on_cluster

        return map_on_cluster(session, items, template, cluster, system=system, batch_size=batch_size,
                              progress=progress, errors=errors, options=settings)
    series = _as_series(items)
    values = _items(items, "map", "items") if series is None else series.tolist()
    labels = list(range(len(values))) if series is None else list(series.index)
    texts, problems = _prompts(values, _template_filler(template))
    results = _run(session, texts, problems, labels, system=system, batch_size=batch_size, progress=progress,
                   errors=errors, options=settings, what="llama.map")
    if series is None:
        return results
    pd = sys.modules["pandas"]
    return pd.Series(results, index=series.index, name=series.name, dtype=object)


def _items(items: Any, what: str, noun: str) -> list[Any]:
    """The items of a list-like argument; LlamaError for text, a mapping or something that is not a collection."""
    if isinstance(items, (str, bytes)):
        raise LlamaError(f"{what} takes a list of {noun}; a single string would be asked letter by letter.")
    if isinstance(items, Mapping) or isinstance(items, type):
        hint = " (for a dict, pass list(d.values()) or pd.Series(d))" if isinstance(items, Mapping) or items is dict else ""
        raise LlamaError(f"{what} takes a list of {noun} or a pandas Series, not a {type(items).__name__}{hint}.")
    try:
        return list(items)
    except TypeError:
        raise LlamaError(f"{what} takes a list of {noun} or a pandas Series; got {type(items).__name__}.") from None


def _as_series(items: Any) -> Any:
    pd = sys.modules.get("pandas")  # only a Series needs pandas, and a Series means pandas is imported
    if pd is None:
        return None
    if isinstance(items, pd.DataFrame):
        raise LlamaError("map takes one column (df['text']) or a list, not a whole DataFrame.")
    return items if isinstance(items, pd.Series) else None


def _template_filler(template: str) -> Callable[[str], str]:
    if not isinstance(template, str):
        raise LlamaError(f"The template must be a string like 'Summarise: {{}}'; got {type(template).__name__}.")
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise LlamaError(f"The template {template!r} is not a valid format string ({e}); write literal braces as {{{{ }}}}.") from None
    if not fields:
        return lambda text: f"{template.rstrip()}\n\n{text}" if template.strip() else text
    named = [f for f in fields if f not in ("", "0") and not f.startswith(("0.", "0[", "0!", "0:"))]
    if named:
        raise LlamaError(f"The template has a field {{{named[0]}}}; use {{}} for the item, and double literal braces "
                         f"(JSON examples too): {{{{ }}}}.")
    try:
        template.format("x")
    except (IndexError, KeyError, ValueError, AttributeError) as e:
        raise LlamaError(f"The template {template!r} cannot be filled ({e}); use {{}} for the item.") from None
    return template.format


def _prompts(values: list[Any], fill: Callable[[str], str]) -> tuple[list[str], dict[int, str]]:
    """Prompt texts, and for the items that cannot be asked, why (by position)."""
    texts: list[str] = []
    problems: dict[int, str] = {}
    for pos, value in enumerate(values):
        if isinstance(value, str):
            text = value
        elif isinstance(value, numbers.Number) and not (isinstance(value, float) and math.isnan(value)):
            text = str(value)
        else:
            missing = value is None or isinstance(value, float) or type(value).__name__ in ("NAType", "NaTType")
            problems[pos] = "missing value" if missing else f"not text or a number (a {type(value).__name__})"
            text = ""
        if pos not in problems and not text.strip():
            problems[pos] = "empty text"
        elif pos not in problems and not _encodable(text):
            problems[pos] = "holds an invalid character (a lone surrogate)"
        texts.append(fill(text) if pos not in problems else "")
    return texts, problems


def _encodable(text: str) -> bool:
    try:
        check_text(text, "item")
    except LlamaError:
        return False
    return True


def _run(session: Session, prompts: list[str], problems: dict[int, str], labels: list[Any], *, system: str | None,
         batch_size: int | None, progress: bool | None, errors: str, options: dict[str, Any], what: str) -> list[str | None]:
    if errors not in ERROR_MODES:
        raise LlamaError(f"errors must be one of {', '.join(ERROR_MODES)}; got {errors!r}.")
    size = session.settings.batch_size if batch_size is None else batch_size
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise LlamaError(f"batch_size must be a whole number >= 1; got {size!r}.")
    options = check_options(options)  # a bad option fails before any model loads
    if system is not None and not isinstance(system, str):
        raise LlamaError(f"The system prompt must be text (a str); got {type(system).__name__}.")
    session.last_errors = []
    if not prompts:
        return []
    engine = session.ensure_engine()
    sampling = resolve(options, session.settings, engine.defaults)
    context = min(session.settings.max_context, engine.context_length)
    budget = context - sampling.max_tokens
    if budget <= 0:
        raise LlamaError(f"max_tokens ({sampling.max_tokens}) leaves no room for a prompt in a {context}-token context; lower max_tokens.")
    system = system if system is not None else session.settings.system
    if system:
        check_text(system, "system prompt")
    head = [{"role": "system", "content": system}] if system else []
    engine.register_system(system)

    failures: list[ItemError] = []
    encoded: dict[int, list[int]] = {}
    for pos, prompt in enumerate(prompts):
        if pos in problems:
            failures.append(ItemError(pos, labels[pos], problems[pos]))
        else:
            ids = engine.prompt_ids(head + [{"role": "user", "content": prompt}])
            if len(ids) > budget:
                failures.append(ItemError(pos, labels[pos], f"prompt is {len(ids)} tokens; the context allows {budget} "
                                                            f"({context} minus max_tokens {sampling.max_tokens})"))
            else:
                encoded[pos] = ids
    session.last_errors = failures
    if failures and errors == "raise":
        raise LlamaError(f"{what}: {_summary(failures, len(prompts), raised=True)}")

    results: list[str | None] = [None] * len(prompts)
    # Similar lengths share a batch, so little time goes on padding; results go back by position.
    order = sorted(encoded, key=lambda p: len(encoded[p]))
    step = size * engine.batch_workers  # each of the engine's batch workers takes batch_size prompts
    chunks = [order[i:i + step] for i in range(0, len(order), step)]
    bar = _progress_bar(len(order), progress if progress is not None else len(chunks) > 1, what)
    job = _Job(session, engine, sampling, bar)
    try:
        for chunk in chunks:
            # Chunk by chunk: the bar moves, a kernel interrupt lands between chunks, and the magic
            # or the panel can take its turn on the model during a long job.
            for pos, reply, reason in job.run([encoded[p] for p in chunk], chunk):
                results[pos] = reply
                if reason is not None:
                    failures.append(ItemError(pos, labels[pos], reason))
            bar.update(len(chunk))
    finally:
        bar.close()
    failures.sort(key=lambda f: f.position)
    if failures and errors == "warn":
        from ct2_magics.notebook.markup import inert_text

        print(inert_text(f"{what}: {_summary(failures, len(prompts))}"), file=sys.stderr)
    return results


class _Job:
    """The chunks of one generate/map call, each in its own turn on the model the prompts were encoded for."""

    def __init__(self, session: Session, engine: Any, sampling: Sampling, bar: Any) -> None:
        self.session, self.engine, self.sampling, self.bar = session, engine, sampling, bar
        self.stop = threading.Event()  # set by stop_all, unload and load

    def run(self, prompts: list[list[int]], positions: list[int]) -> list[tuple[int, str | None, str | None]]:
        """(position, reply, None) for each prompt, or (position, None, why) for one that failed."""
        waiting = lambda waited: self.bar.set_postfix_str("waiting for the model" if waited else "")  # noqa: E731
        try:
            with self.session.owner.turn(Use(self.stop), waiting) as engine:
                if engine is not self.engine:
                    raise LlamaError("Another model was loaded while the job ran; rerun it.")
                try:
                    replies = engine.generate_batch(prompts, self.sampling, self.stop)
                except RuntimeError as e:  # e.g. out of memory on a GPU: one prompt failing must not lose the others
                    if len(prompts) == 1:
                        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                        return [(positions[0], None, f"generation failed ({first})")]
                    replies = None
                if self.stop.is_set():
                    raise Stopped()
                if replies is not None:
                    return [(p, engine.decode(r), None) for p, r in zip(positions, replies)]
        except Stopped:
            raise LlamaError("The job was stopped (the model was unloaded or replaced); rerun it.") from None
        return [r for one, p in zip(prompts, positions) for r in self.run([one], [p])]


def _progress_bar(total: int, show: bool, what: str) -> Any:
    from tqdm.auto import tqdm  # a widget in a notebook, text in a terminal

    return tqdm(total=total, disable=not show, desc=what, unit="prompt", dynamic_ncols=True)


def _summary(failures: list[ItemError], total: int, raised: bool = False) -> str:
    shown = "; ".join(f"item {f.label!r}: {f.reason}" for f in failures[:3])
    more = f"; and {len(failures) - 3} more" if len(failures) > 3 else ""
    if raised:
        return f"{len(failures)} of {total} items cannot be answered ({shown}{more}); nothing was generated."
    return f"{len(failures)} of {total} items failed and are None ({shown}{more}); details in llama.last_errors."
