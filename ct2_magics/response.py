"""One request and its streamed reply: building the prompt from the chat, taking turns on the model, recording the turn."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator

from .conversation import Chat, Turn, fit_to_context
from .errors import LlamaError
from .settings import Sampling, resolve_sampling

if TYPE_CHECKING:
    from .session import Session


@dataclass
class Request:
    """One prompt to answer: what to ask, in which chat, with which settings."""

    prompt: str
    chat: str = "default"
    system: str | None = None
    new: bool = False
    once: bool = False
    cell_id: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


def check_text(text: str, what: str) -> None:
    """Refuse text a tokenizer cannot encode (lone surrogates, e.g. from broken clipboard data)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise LlamaError(f"The {what} holds an invalid character (a lone surrogate) at position {e.start}; remove it.") from None


class Response:
    """A reply being streamed; iterate it for text pieces. The turn is recorded when the stream ends."""

    def __init__(self, session: Session, request: Request) -> None:
        from .engine import Stats

        self.session = session
        self.request = request
        self.text = ""
        self.stats = Stats()
        self.status = "pending"  # pending | streaming | complete | interrupted | stopped
        self.notices: list[str] = []
        self._stop = threading.Event()
        self._pieces: Iterator[str] | None = None
        self.on_waiting: Callable[[bool], None] = lambda waiting: None  # told when another request holds the model
        self._prepare()

    def _prepare(self) -> None:
        req, session = self.request, self.session
        if not req.prompt.strip():
            raise LlamaError("The prompt is empty; write something after the %%llama line.")
        check_text(req.prompt, "prompt")
        if req.system:
            check_text(req.system, "system prompt")
        resolve_sampling(req.options, session.settings, {})  # a bad option fails before any model loads
        self.engine = session.ensure_engine()
        self.sampling: Sampling = resolve_sampling(req.options, session.settings, self.engine.defaults)
        self.chat: Chat | None = None if req.once else session.chats.get(req.chat)
        self.replace_at: int | None = None
        if self.chat is not None:
            system = req.system if req.system is not None else self.chat.system
            if not req.new:
                self.replace_at = self.chat.index_of_cell(req.cell_id)
            turns = [] if req.new else self.chat.turns[: self.replace_at]
            history = ([{"role": "system", "content": system}] if system else []) + [m for t in turns for m in t.messages()]
        else:
            system = req.system if req.system is not None else session.settings.system
            history = [{"role": "system", "content": system}] if system else []
        messages = history + [{"role": "user", "content": req.prompt}]
        context = min(session.settings.max_context, self.engine.context_length)
        budget = context - self.sampling.max_tokens
        if budget <= 0:
            raise LlamaError(f"max_tokens ({self.sampling.max_tokens}) leaves no room for the prompt in a {context}-token context; lower -n.")
        messages, dropped = fit_to_context(messages, self.engine.count_tokens, budget)
        if dropped:
            self.notices.append(f"Left the {dropped} oldest exchange(s) of chat {req.chat!r} out of the prompt to fit {budget} tokens.")
        if messages[0]["role"] == "system":
            self.engine.register_system(messages[0]["content"])
        self.prompt_ids = self.engine.prompt_ids(messages)
        # Only now, with every check passed, change the chat: a bad request never costs its history.
        if self.chat is not None and req.new:
            self.chat.reset()
        if self.chat is not None and req.system is not None:
            self.chat.set_system(req.system)

    @property
    def model_info(self) -> dict[str, Any]:
        e = self.engine
        return {"model": e.name, "device": e.device, "compute_type": e.compute_type}

    def metadata(self) -> dict[str, Any]:
        s = self.stats
        return {
            **self.model_info,
            "chat": None if self.request.once else self.request.chat,
            "settings": self.sampling.as_dict(),
            "prompt_tokens": s.prompt_tokens,
            "reply_tokens": s.reply_tokens,
            "time_to_first_token_s": None if s.first_token_s is None else round(s.first_token_s, 4),
            "tokens_per_s": round(s.tokens_per_s, 2),
            "status": self.status,
        }

    def __iter__(self) -> Iterator[str]:
        if self._pieces is None:
            self._pieces = self._run()
        return self._pieces

    def _run(self) -> Iterator[str]:
        engine = self.engine
        waited = False
        while not engine.lock.acquire(timeout=0.05):
            if not waited:
                waited = True
                self.on_waiting(True)
            if self._stop.is_set():
                self._finish("stopped")
                return
        if waited:
            self.on_waiting(False)
        self.status = "streaming"
        self.session.active.add(self)
        try:
            for piece in engine.stream(self.prompt_ids, self.sampling, self.stats, self._stop):
                self.text += piece
                yield piece
            self._finish("complete" if self.stats.finish in ("stop", "length") else "stopped")
        except GeneratorExit:
            self._finish("stopped")
            raise
        except BaseException:
            self._finish("interrupted")
            raise
        finally:
            engine.lock.release()  # first: nothing may stand between a KeyboardInterrupt and this
            self.session.active.discard(self)

    def stop(self) -> None:
        """Stop decoding within a step; the partial reply is kept, marked stopped."""
        self._stop.set()

    def interrupt(self) -> None:
        """Close the stream after a KeyboardInterrupt; the partial reply is kept, marked interrupted."""
        self._stop.set()
        if self.status in ("pending", "streaming"):
            self._finish("interrupted")
        if self._pieces is not None:
            self._pieces.close()  # the interrupt may have landed in the display code: free the model now

    def _finish(self, status: str) -> None:
        if self.status in ("complete", "interrupted", "stopped"):
            return
        self.status = status
        if self.chat is not None:
            turn = Turn(self.request.prompt, self.text, status=status, cell_id=self.request.cell_id)
            self.chat.record(turn, at=self.replace_at)

    def consume(self) -> str:
        for _ in self:
            pass
        return self.text
