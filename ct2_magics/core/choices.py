"""Choices: a label from a given list, with the probabilities of the list, for `llama.ask`, `llama.generate`,
`llama.map` and `%%llama --choices`.

A choice's score is the log probability of the whole reply the chat template would write for it: the
choice's tokens as the template writes the assistant's message, then the end-of-turn token, after the
prompt's own ids. CTranslate2's `score_batch` computes it over prompt + tail (whole sequences:
`max_input_length=0`), summed over the tail. A prompt's scores, normalised over its choices (softmax), are
its probabilities, and its label is the most probable choice (the first listed among equals). So a choice
of several tokens counts all of them, and choices that share their first tokens are told apart by the rest
and by where the turn ends.

Cost: `score_batch` has no static prompt, so each prompt is read once per choice (N choices: N forwards over
prompt + tail, against one forward and the reply's steps for free generation), and every position's
distribution over the vocabulary is computed (a batch holds TOKENS_PER_BATCH tokens x vocabulary x 4 bytes
of them). BENCHMARKS.md ("Choices") has the figures and the one-read alternative measured against it.
"""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from ct2_magics.core.items import Progress, Rows
from ct2_magics.core.jobs import Job
from ct2_magics.core.options import spell
from ct2_magics.core.owner import Stopped, Use
from ct2_magics.core.response import Response
from ct2_magics.errors import LlamaError, check_text

# Tokens (padding included) in one batch of score_batch: it holds a distribution over the vocabulary for each
# (smollm2: 49,152 x 4 bytes a token, 25 MB a batch; Llama 3: 66 MB). Measured with smollm2 on 2 cores
# (BENCHMARKS.md, section 13): 128 was fastest; 64 took 14% longer, 256 4%, 512 34%, 1024 45%.
TOKENS_PER_BATCH = 128
_EXAMPLE = "['positive', 'negative']"


def checked(choices: Any, probs: Any, options: Mapping[str, Any], *, origin: str = "python",
            table: bool = False) -> list[str] | None:
    """The choices as a list of distinct labels, or None when none were asked for; LlamaError for bad ones.

    options: the request's checked sampling options (none applies to choices); table: the probabilities come
    back as a DataFrame with a `label` column (generate, map).
    """
    if not isinstance(probs, bool):
        raise LlamaError(f"probs is True or False; got {probs!r}.")
    if choices is None:
        if probs:
            raise LlamaError(f"probs=True gives the probabilities of choices; pass the choices too (choices={_EXAMPLE}).")
        return None
    labels = _labels(choices, origin)
    given = [name for name, value in options.items() if value is not None]
    if given:
        raise LlamaError(f"{spell(given[0], origin)} does not apply to choices: each choice is scored whole and nothing "
                         "is sampled; leave it out.")
    if probs and table and "label" in labels:
        raise LlamaError("A choice named 'label' would share its column with the label column of probs=True; rename it "
                         "(e.g. 'Label').")
    if probs and table and "pandas" not in sys.modules:
        try:
            import pandas  # noqa: F401
        except ImportError:
            raise LlamaError("probs=True returns a pandas DataFrame: pip install pandas, or leave probs out.") from None
    return labels


def _labels(choices: Any, origin: str) -> list[str]:
    how = '--choices "a, b, c"' if origin == "magic" else f"choices={_EXAMPLE}"
    if isinstance(choices, (str, bytes)):
        raise LlamaError(f"choices takes a list of labels ({how}), not one string.")
    if isinstance(choices, Mapping) or isinstance(choices, type):
        raise LlamaError(f"choices takes a list of labels ({how}), not a {getattr(choices, '__name__', type(choices).__name__)}.")
    try:
        labels = list(choices)
    except TypeError:
        raise LlamaError(f"choices takes a list of labels ({how}); got {type(choices).__name__}.") from None
    if len(labels) < 2:
        got = "none" if not labels else f"only {labels[0]!r}"
        raise LlamaError(f"choices needs two or more labels to choose between ({how}); got {got}.")
    seen: dict[str, str] = {}
    for n, label in enumerate(labels, 1):
        if not isinstance(label, str):
            kind = type(label).__name__
            raise LlamaError(f"Choice {n} ({label!r}) is not text (a{'n' if kind[:1] in 'aeiou' else ''} {kind}); "
                             f"choices are labels like {_EXAMPLE}.")
        if not label.strip():
            raise LlamaError(f"Choice {n} is blank; every choice needs some text.")
        check_text(label, f"choice {n}")
        key = label.strip()  # templates that trim a reply would score 'yes' and ' yes' alike
        if key in seen:
            same = "twice" if seen[key] == label else f"as {seen[key]!r} and {label!r}, the same but for spaces"
            raise LlamaError(f"The choice {key!r} is listed {same}; list each choice once.")
        seen[key] = label
    return labels


def tails(engine: Any, messages: list[dict[str, str]], labels: list[str]) -> list[list[int]]:
    """The ids the chat template adds after the prompt of `messages` for each choice as the assistant's reply,
    through its end-of-turn token; LlamaError for a template that does not write a reply that way."""
    prompt = engine.prompt_ids(messages)
    ends = set(engine.tokenizer.convert_tokens_to_ids(engine.end_tokens))
    out = []
    for label in labels:
        full = engine.encoder.encode(messages + [{"role": "assistant", "content": label}], add_generation_prompt=False)
        tail = full[len(prompt):]
        end = next((i for i, t in enumerate(tail) if t in ends), None)
        if full[:len(prompt)] != prompt or not end:  # None, or 0: an empty reply
            raise LlamaError(f"The chat template of {engine.name} does not write the reply {label!r} after its own prompt, "
                             "ended by an end-of-turn token, so choices cannot be scored on it; use another model.")
        out.append(tail[:end + 1])
    return out


def score(engine: Any, prompts: list[list[int]], ends: list[list[int]], stop: threading.Event) -> list[list[float]]:
    """log P(tail | prompt) of each tail after each prompt, prompt by prompt.

    A few batches a call (about one per batch worker), so that `stop` and a kernel interrupt take effect
    between calls: score_batch itself cannot be stopped.
    """
    sequences = [p + t for p in prompts for t in ends]
    per_call = TOKENS_PER_BATCH * engine.batch_workers
    logs: list[list[float]] = []
    start = 0
    while start < len(sequences):
        if stop.is_set():
            raise Stopped()
        end, tokens = start + 1, len(sequences[start])
        while end < len(sequences) and tokens + len(sequences[end]) <= per_call:
            tokens += len(sequences[end])
            end += 1
        logs += engine.score_batch(sequences[start:end], TOKENS_PER_BATCH)
        start = end
    n = len(ends)
    return [[math.fsum(logs[row * n + i][-len(t):]) for i, t in enumerate(ends)] for row in range(len(prompts))]


def normalised(scores: list[float]) -> list[float]:
    """Probabilities from log scores (softmax)."""
    top = max(scores)
    weights = [math.exp(s - top) for s in scores]
    total = math.fsum(weights)
    return [w / total for w in weights]


def best(labels: list[str], probabilities: list[float]) -> str:
    """The most probable label; the first listed among equals."""
    return labels[max(range(len(labels)), key=probabilities.__getitem__)]


class Picker:
    """What `llama.generate` / `llama.map` do differently with choices: the room a reply takes, the job, the result."""

    def __init__(self, labels: list[str], probs: bool) -> None:
        self.labels, self.probs = labels, probs
        self.tails: list[list[int]] = []

    def room(self, engine: Any, head: list[dict[str, str]], rows: Rows) -> int:
        """Tokens a reply takes (the longest choice's): the template's tails, from the first prompt that can be asked."""
        first = next((p for i, p in enumerate(rows.prompts) if i not in rows.problems), None)
        if first is None:
            return 1
        self.tails = tails(engine, head + [{"role": "user", "content": first}], self.labels)
        return max(map(len, self.tails))

    def job(self, session: Any, engine: Any, progress: Progress) -> ChoiceJob:
        return ChoiceJob(session, engine, self.tails, progress)

    def result(self, rows: Rows) -> Any:
        """Labels in the input's shape; with probs, a DataFrame on the input's index: label, then one column per choice."""
        if not self.probs:
            rows.replies = [None if r is None else best(self.labels, r) for r in rows.replies]
            return rows.result()
        import pandas as pd

        rows.failures.sort(key=lambda f: f.position)
        index = rows.series.index if rows.series is not None else pd.RangeIndex(len(rows))
        nan = [math.nan] * len(self.labels)
        table = pd.DataFrame([nan if r is None else r for r in rows.replies], index=index, columns=self.labels,
                             dtype=float)
        table.insert(0, "label", pd.Series([None if r is None else best(self.labels, r) for r in rows.replies],
                                           index=index, dtype=object))
        return table


class ChoiceJob(Job):
    """The chunks of one generate/map call with choices, each scored in its own turn on the model."""

    failed = "scoring failed"

    def __init__(self, session: Any, engine: Any, ends: list[list[int]], progress: Progress) -> None:
        super().__init__(session, engine, progress)
        self.tails = ends

    def answer(self, engine: Any, prompts: list[list[int]], positions: list[int]) -> list[tuple[int, Any, str | None]]:
        return [(p, normalised(s), None) for p, s in zip(positions, score(engine, prompts, self.tails, self.stop))]


class ChoiceReply(Response):
    """`llama.ask(prompt, choices=[...])` and `%%llama --choices`: the chat's prompt as for any reply, the label as
    the reply's text, recorded in the chat as a turn (unless once); `probabilities` maps each choice to its own."""

    def __init__(self, session: Any, request: Any, choices: Any, probs: bool = False) -> None:
        super().__init__(session, request)  # checks the request
        labels = checked(choices, probs, self.request.options, origin=self.request.origin)
        if labels is None:
            raise LlamaError(f"choices is None; give the labels to choose between (choices={_EXAMPLE}).")
        self.labels, self.probs = labels, probs
        self.probabilities: dict[str, float] | None = None

    def _begin(self, engine: Any) -> None:
        # The reply takes its longest choice's tokens: that is what the prompt leaves room for (never max_tokens).
        probe = tails(engine, [{"role": "user", "content": self.request.prompt}], self.labels)
        self.request.options = {"max_tokens": max(map(len, probe))}
        super()._begin(engine)
        self.status = "scoring"  # not streaming: an interrupt before the label is known records no turn

    def _read(self) -> Iterator[str]:
        try:
            self.session.ensure_engine()
            with self.session.owner.turn(Use(self._stop), self._waiting) as engine:
                self._begin(engine)
                messages = self._history + [{"role": "user", "content": self.request.prompt}]
                (scores,) = score(engine, [self.prompt_ids], tails(engine, messages, self.labels), self._stop)
                probabilities = normalised(scores)
                self.probabilities = dict(zip(self.labels, probabilities))
                self.text = best(self.labels, probabilities)
                self.pieces.append(self.text)
                self.stats.prompt_tokens = len(self.prompt_ids)
                self.status = "streaming"
                self._finish("complete")
        except Stopped:
            self._finish("stopped")
        except LlamaError:
            self._finish("failed")
            raise
        except BaseException:
            self._finish(self._ending or "interrupted")
            raise
        if self.status == "complete":
            yield self.text

    def answer(self) -> Any:
        """The label, or with probs the {choice: probability} dict; LlamaError when the reply was stopped."""
        self.consume()
        if self.probabilities is None:
            raise LlamaError("The choice was not scored: the request was stopped (the model was unloaded or replaced).")
        return dict(self.probabilities) if self.probs else self.text

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), "settings": None, "choices": self.probabilities}
