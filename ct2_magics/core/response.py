"""One request and its reply: checked when made, asked when first read, recorded in its chat when it ends."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ct2_magics.core.context import Context
from ct2_magics.core.conversation import Turn, chat_name, fit_to_context
from ct2_magics.core.decoding import Stats
from ct2_magics.core.loops import LoopWatch
from ct2_magics.core.options import Sampling, check_options, resolve
from ct2_magics.core.owner import Stopped, Use
from ct2_magics.core.planning import prompt_budget
from ct2_magics.errors import LlamaError, check_text

if TYPE_CHECKING:
    from ct2_magics.core.engine import Engine

FINAL = ("complete", "cut", "looping", "stopped", "interrupted", "failed")
# How a reply that was read to its end ended: the model ended it, max_tokens cut it, or it fell into a loop.
_ENDED = {"stop": "complete", "length": "cut", "loop": "looping"}
# What an empty prompt is told, in the words of the front end it came from.
EMPTY_PROMPT = {"magic": "write something after the %%llama line", "panel": "type a message first",
                "python": "pass the text to ask"}


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
    # Sent before the prompt for this turn only and never kept in the chat (e.g. %llama explain's instructions).
    instructions: str | None = None
    origin: str = "python"  # the front end that asked: python | magic | panel (its words are used in messages)
    schema: Any = None  # a JSON Schema (dict, pydantic model, dataclass, TypedDict): the reply is JSON that fits it
    logprobs: Any = None  # keep each token's probability and this many alternatives (Response.tokens)

    def checked(self) -> Request:
        """This request with its names and values checked; LlamaError saying what is wrong otherwise."""
        if not isinstance(self.prompt, str):
            raise LlamaError(f"The prompt must be text (a str); got {type(self.prompt).__name__}.")
        if not self.prompt.strip():
            raise LlamaError(f"The prompt is empty; {EMPTY_PROMPT.get(self.origin, EMPTY_PROMPT['python'])}.")
        check_text(self.prompt, "prompt")
        if self.system is not None:
            if not isinstance(self.system, str):
                raise LlamaError(f"The system prompt must be text (a str); got {type(self.system).__name__}.")
            check_text(self.system, "system prompt")
        schema = None
        if self.schema is not None:
            from ct2_magics.core.schema import as_schema

            schema = as_schema(self.schema)
        from ct2_magics.core.weighing import checked_k

        k = checked_k(self.logprobs, "--probs" if self.origin == "magic" else "logprobs")
        if k is not None and schema is not None:
            raise LlamaError("Token probabilities are kept for free replies; leave out the schema, or the probabilities.")
        return Request(self.prompt, chat_name(self.chat), self.system, bool(self.new), bool(self.once), self.cell_id,
                       check_options(self.options), self.instructions, self.origin, schema, k)


class Response:
    """A reply: iterate it for text pieces as they are written; iterating a finished one replays them.

    It ends "complete" (the model ended it), "cut" (max_tokens reached) or "looping" (it fell into a loop, see
    core/loops.py, and was stopped). It holds the model only while it is read: leaving the loop (break, an exception, close(), the end of a
    `with` block, or the reader being garbage-collected) stops decoding within a step and records the partial
    turn, marked stopped (interrupted after a KeyboardInterrupt).
    """

    def __init__(self, session: Context, request: Request) -> None:
        from ct2_magics.core.engine import Stats

        self.session = session
        self.request = request.checked()
        self.text = ""
        self.pieces: list[str] = []
        self.stats: Stats = Stats()
        self.status = "pending"  # pending | streaming | complete | cut | looping | stopped | interrupted | failed
        self.notices: list[str] = []
        self.problem: str | None = None  # why a schema reply holds no value (see value())
        # With logprobs=K: each token's TokenProb (core/weighing.py) as it is written; "".join(t.text ...) is the text.
        self.tokens: list[Any] | None = [] if self.request.logprobs else None
        self.engine: Engine | None = None
        self.sampling: Sampling | None = None
        self.prompt_ids: list[int] | None = None
        self._history: list[dict[str, str]] = []  # the prompt's messages before the new one
        # Lists, so that one consumer (the magic, the panel, a test) never replaces another's.
        self.on_waiting: list[Callable[[bool], None]] = []  # told while another request holds the model
        self.on_start: list[Callable[[], None]] = []  # told when the prompt is ready and decoding begins
        self._stop = threading.Event()
        self._ending: str | None = None  # how a stream closed from outside ends: "interrupted" after a Ctrl-C
        self._lock = threading.Lock()
        self.turn: Turn | None = None  # the turn it recorded in its chat, once it has ended (None: nothing recorded)
        self._reader: weakref.ref | None = None  # never a strong reference: a dropped reader must be collectable
        self._reader_thread: int | None = None

    # -- reading --------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[str]:
        with self._lock:
            live = self._reader() if self._reader is not None else None
            if self.status == "pending" and live is None:
                reader = self._read()
                self._reader, self._reader_thread = weakref.ref(reader), threading.get_ident()
                return reader
        if live is not None and self.status not in FINAL:
            if self._reader_thread != threading.get_ident():
                raise LlamaError("This reply is being read in another thread; read it there, or wait for it to end.")
            return self._follow(live)
        return iter(list(self.pieces))

    def _follow(self, live: Iterator[str]) -> Iterator[str]:
        """A second loop over a reply an earlier loop in this thread left unfinished: what it read, then the rest."""
        yield from list(self.pieces)
        yield from live

    def _read(self) -> Iterator[str]:
        use = Use(self._stop, on_lost=lambda: self._finish("stopped"))
        owner = self.session.owner
        try:
            self.session.ensure_engine()  # loads the default model when none is loaded
            with owner.turn(use, self._waiting) as engine:
                self._begin(engine)
                stream = self._stream(engine, engine.chat_split(self._history, self.prompt_ids))
                loops = LoopWatch() if self.session.settings.stop_loops and self.request.schema is None else None
                try:
                    for piece in stream:
                        self.text += piece
                        self.pieces.append(piece)
                        owner.pause(use)
                        yield piece
                        if not owner.resume(use):
                            self._finish("stopped")  # the model was taken from it while its reader was away
                            return
                        if loops is not None and loops.feed(piece):
                            break
                finally:
                    stream.close()
                    self.problem = getattr(stream, "problem", None)
                if loops is not None and loops.span is not None:
                    self.stats.finish = "loop"
                self._finish(_ENDED.get(self.stats.finish, "stopped"))
        except Stopped:
            self._finish("stopped")
        except GeneratorExit:
            self._finish(self._ending or "stopped")
            raise
        except LlamaError:
            self._finish("failed" if self.status == "pending" else "interrupted")
            raise
        except BaseException:
            self._finish(self._ending or "interrupted")
            raise

    def _stream(self, engine: Engine, split: int) -> Any:
        if self.tokens is not None:
            from ct2_magics.core.weighing import ProbStream

            return ProbStream(engine, self.prompt_ids, self.sampling, self.stats, self._stop, self.request.logprobs,
                              self.tokens, split=split)
        if self.request.schema is None:
            return engine.stream(self.prompt_ids, self.sampling, self.stats, self._stop, split=split)
        from ct2_magics.core.schema_runs import SchemaStream

        return SchemaStream(engine, self.request.schema, self.prompt_ids, self.sampling, self.stats, self._stop, split=split)

    def _begin(self, engine: Engine) -> None:
        """Build the prompt from the chat as it is now (this runs in the request's turn, so nothing is stale)."""
        req, settings = self.request, self.session.settings
        self.engine = engine
        self.sampling = resolve(req.options, settings, engine.defaults)
        chat = None if req.once else self.session.chats.get(req.chat)
        default_system = chat.system if chat is not None else settings.system
        system = req.system if req.system is not None else default_system
        turns = [] if chat is None or req.new else chat.history_for(req.cell_id)
        history = ([{"role": "system", "content": system}] if system else []) + [m for t in turns for m in t.messages()]
        prompt = req.prompt if not req.instructions else f"{req.instructions}\n\n{req.prompt}"
        messages = history + [{"role": "user", "content": prompt}]
        budget = prompt_budget(settings, engine, self.sampling.max_tokens, origin=req.origin)
        messages, dropped = fit_to_context(messages, engine.count_tokens, budget)
        if dropped:
            self.notices.append(f"Left the {dropped} oldest exchange(s) of chat {req.chat!r} out of the prompt to fit "
                                f"{budget} tokens.")
        if messages[0]["role"] == "system":
            engine.register_system(messages[0]["content"])
        self.prompt_ids = engine.prompt_ids(messages)
        self._history = messages[:-1]  # where the prompt is split (Engine.chat_split)
        if req.schema is not None:
            from ct2_magics.core.constrained import ll_tokenizer

            ll_tokenizer(engine)  # a model schema= cannot serve (a slow tokenizer) fails here, before the chat changes
        # Only now, with every check passed, change the chat: a bad request never costs its history.
        if chat is not None and req.new:
            chat.reset()
        if chat is not None and req.system is not None:
            chat.set_system(req.system)
        self.status = "streaming"
        for fn in list(self.on_start):
            fn()

    def _waiting(self, waiting: bool) -> None:
        for fn in list(self.on_waiting):
            fn(waiting)

    def _finish(self, status: str) -> None:
        with self._lock:
            if self.status in FINAL:
                return
            started, self.status = self.status == "streaming", status
        if started and not self.request.once:
            self.turn = Turn(self.request.prompt, self.text, status=status, cell_id=self.request.cell_id)
            self.session.chats.record(self.request.chat, self.turn)  # the session's hooks follow (e.g. the prefill)

    # -- ending -----------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop decoding within a step (from any thread); the partial reply is kept, marked stopped."""
        self._stop.set()

    def interrupt(self) -> None:
        """Mark that a KeyboardInterrupt ends this reply, and stop it: the partial turn is marked interrupted."""
        self._ending = "interrupted"
        self._stop.set()

    def close(self) -> None:
        """End the reply now, keeping what it wrote (marked stopped); a no-op once it has ended."""
        self._stop.set()
        reader = self._reader() if self._reader is not None else None
        if reader is not None and self._reader_thread == threading.get_ident() and not reader.gi_running:
            reader.close()
        elif self.status == "pending" and reader is None:
            self._finish("stopped")  # never read: nothing to record

    def __enter__(self) -> Response:
        return self

    def __exit__(self, kind: Any, error: Any, tb: Any) -> None:
        if kind is not None and issubclass(kind, KeyboardInterrupt):
            self.interrupt()
        self.close()

    def consume(self) -> str:
        """Read to the end; the whole reply."""
        for _ in self:
            pass
        return self.text

    def value(self) -> Any:
        """A schema reply's value (a dict, or an instance of the pydantic model or dataclass); LlamaError in one line
        when its JSON is not complete (max_tokens ran out, or it was stopped)."""
        from ct2_magics.core.schema_runs import reply_value

        self.consume()
        return reply_value(self)

    # -- what it did ------------------------------------------------------------------------------
    @property
    def model_info(self) -> dict[str, Any]:
        e = self.engine
        return {"model": None, "device": None, "compute_type": None} if e is None else {
            "model": e.name, "device": e.device, "compute_type": e.compute_type}

    def metadata(self) -> dict[str, Any]:
        s = self.stats
        return {
            **self.model_info,
            "chat": None if self.request.once else self.request.chat,
            "settings": None if self.sampling is None else self.sampling.as_dict(),
            "prompt_tokens": s.prompt_tokens,
            "reply_tokens": s.reply_tokens,
            "cached_prompt_tokens": s.cached_tokens,
            "time_to_first_token_s": None if s.first_token_s is None else round(s.first_token_s, 4),
            "tokens_per_s": round(s.tokens_per_s, 2),
            "status": self.status,
        }

    def __repr__(self) -> str:
        return f"<ct2_magics reply {self.status}, {len(self.text)} characters: {self.text[:40]!r}>"
