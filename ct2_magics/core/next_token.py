"""`llama.next_tokens`: the model's distribution for the token that comes next, most probable first.

Without a chat, the prompt is text to continue exactly as written (no chat template): what a language model does at
heart, and the picture a teacher wants for "The capital of France is". With a chat, the prompt is the next message in
it and the distribution is that of the reply's first token. Nothing is recorded in any chat.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ct2_magics.core.options import resolve
from ct2_magics.core.owner import Stopped, Use
from ct2_magics.core.response import Request, Response
from ct2_magics.core.weighing import TokenTexts, next_distribution, probabilities, sampled, top
from ct2_magics.errors import LlamaError

MAX_TOP = 1000
_SAMPLING = ("temperature", "top_k", "top_p")


def checked_top(top: Any) -> int:
    if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= MAX_TOP:
        raise LlamaError(f"top is how many tokens to list, 1 to {MAX_TOP} (e.g. top=10); got {top!r}.")
    return top


class NextTokens(Response):
    """The next token's distribution after a prompt: `rows` holds (text, probability, sampled) for the `top` most
    probable tokens, where `sampled` is the probability the sampler draws it with once temperature, top-k and top-p
    have reshaped the distribution (None unless one of them was given)."""

    def __init__(self, session: Any, prompt: str, top: int = 10, chat: str | None = None, *, system: str | None = None,
                 **options: Any) -> None:
        if chat is not None and system is not None:
            raise LlamaError("system= is the chat's own when a chat is named: set it with %llama system, or leave chat out.")
        given = [name for name in options if name not in _SAMPLING]
        if given:
            raise LlamaError(f"next_tokens takes temperature, top_k and top_p (to show what they make of the distribution); "
                             f"{given[0]} does not apply to one token.")
        super().__init__(session, Request(prompt, chat=chat or "default", system=system, once=chat is None,
                                          options=options))
        self.top = checked_top(top)
        self.reshaped = any(self.request.options.get(name) is not None for name in _SAMPLING)
        self.rows: list[tuple[str, float, float | None]] = []

    def _read(self) -> Iterator[str]:
        try:
            self.session.ensure_engine()
            with self.session.owner.turn(Use(self._stop), self._waiting) as engine:
                split = 0
                if self.request.once:  # text to continue, as written
                    self.engine = engine
                    self.sampling = resolve(self.request.options, self.session.settings, engine.defaults)
                    self.prompt_ids = list(engine.tokenizer.encode(self.request.prompt))
                else:
                    self._begin(engine)
                    split = engine.chat_split(self._history, self.prompt_ids)
                logits = next_distribution(engine, self.prompt_ids, split)
                probs = probabilities(logits)
                after = sampled(logits, self.sampling) if self.reshaped else None
                ids, chances = top(probs, self.top)
                names = TokenTexts(engine)
                before = self.prompt_ids[-1] if self.prompt_ids else None
                self.rows = [(text, float(p), None if after is None else float(after[i]))
                             for text, i, p in zip(names.texts(ids, before), ids, chances)]
                self.stats.prompt_tokens = len(self.prompt_ids)
                self.status = "complete"
        except Stopped:
            self.status = "stopped"
        except BaseException:
            self.status = "failed"
            raise
        yield from ()

    def _finish(self, status: str) -> None:
        self.status = status  # a look at the distribution is no turn: nothing is recorded

    def result(self) -> list[tuple[str, float, float | None]]:
        self.consume()
        if self.status != "complete":
            raise LlamaError("The distribution was not computed: the request was stopped (the model was unloaded or "
                             "replaced).")
        return self.rows
