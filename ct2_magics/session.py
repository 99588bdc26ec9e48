"""The kernel-wide session: one engine, all chats; the magic, the panel and `llama` all reach it here."""

from __future__ import annotations

import threading
from typing import Any, Callable

from .conversation import Chat, Chats, Turn, transcript
from .response import Request, Response
from .settings import LlamaSettings


class Session:
    """One model and all chats of this kernel."""

    def __init__(self, settings: LlamaSettings | None = None) -> None:
        self.settings = settings or LlamaSettings()
        self.engine = None
        self.chats = Chats(default_system=lambda: self.settings.system)
        self._load_lock = threading.RLock()
        self.active: set[Response] = set()  # replies streaming now (at most one per engine)
        self.last_errors: list[Any] = []  # per-item failures of the last generate/map
        self.notify: Callable[[str], None] = lambda line: None  # one-line notices; the magics set a printer

    # -- model --------------------------------------------------------------------------------
    def load(self, model: str | None = None, *, device: str | None = None, compute_type: str | None = None,
             revision: str | None = None) -> Any:
        """Load a model (a directory, a Hub repo id, or 'demo'); a no-op if it is already loaded."""
        from . import hub
        from .engine import Engine

        model = model or self.settings.model
        device = device or self.settings.device
        compute_type = compute_type or self.settings.compute_type
        with self._load_lock:
            old = self.engine
            if old is not None and (old.name, old.requested, old.revision) == (model, (device, compute_type), revision):
                return old
            path = hub.resolve(model, revision=revision)
            self.stop_all()
            room = _Room(old)
            try:
                engine = Engine(path, name=model, device=device, compute_type=compute_type,
                                threads=self.settings.threads, make_room=room.make)
            except BaseException:
                room.restore()  # a model that fails to load never costs the one that was loaded
                raise
            engine.revision = revision
            self.engine = engine
            if old is not None:
                with old.lock:
                    old.close()
        notices = list(engine.notices)
        if model == "demo":
            notices.append("Loaded the offline demo model: its weights are random, so its text is gibberish. Use it to try the tools.")
        for line in notices if not self.settings.quiet else ():
            self.notify(line)
        return engine

    def stop_all(self) -> None:
        """Stop every reply that is streaming (the panel's too), so the model can be freed or replaced."""
        for response in list(self.active):
            response.stop()

    def unload(self) -> bool:
        self.stop_all()
        with self._load_lock:
            engine, self.engine = self.engine, None
        if engine is None:
            return False
        with engine.lock:  # let a running reply finish its step first
            engine.close()
        return True

    def ensure_engine(self) -> Any:
        return self.engine if self.engine is not None else self.load()

    @property
    def generator(self) -> Any:
        return None if self.engine is None else self.engine.generator

    @property
    def tokenizer(self) -> Any:
        return None if self.engine is None else self.engine.tokenizer

    # -- asking -------------------------------------------------------------------------------
    def respond(self, request: Request) -> Response:
        return Response(self, request)

    def stream(self, prompt: str, chat: str = "default", *, system: str | None = None, new: bool = False,
               once: bool = False, **settings: Any) -> Response:
        """Ask and iterate the reply's text pieces as they are generated."""
        return self.respond(Request(prompt, chat=chat, system=system, new=new, once=once, options=settings))

    def ask(self, prompt: str, chat: str = "default", **kwargs: Any) -> str:
        """Ask and return the whole reply."""
        return self.stream(prompt, chat, **kwargs).consume()

    def generate(self, prompts: list[str], **kwargs: Any) -> list[str | None]:
        """Answer many independent prompts in batches, in input order; see ct2_magics.batch.generate."""
        from .batch import generate

        return generate(self, prompts, **kwargs)

    def map(self, items: Any, template: str = "{}", **kwargs: Any) -> Any:
        """Fill `template` with each item and answer each, batched; a Series keeps its index."""
        from .batch import map_items

        return map_items(self, items, template, **kwargs)

    def panel(self, chat: str = "default") -> Any:
        """An ipywidgets chat panel over `chat`, sharing this session's model and history."""
        from .panel import ChatPanel

        return ChatPanel(self, chat)

    # -- chats --------------------------------------------------------------------------------
    def chat(self, name: str = "default", create: bool = True) -> Chat:
        return self.chats.get(name, create=create)

    def history(self, chat: str = "default") -> list[dict[str, str]]:
        """The chat as {'role', 'content'} messages, ready for a chat template."""
        return self.chats.get(chat, create=False).messages()

    def transcript(self, chat: str = "default") -> str:
        """The chat as readable plain text."""
        c = self.chats.get(chat, create=False)
        return transcript(c.turns, c.system)

    def reset(self, chat: str = "default") -> None:
        self.chats.get(chat).reset()

    def undo(self, chat: str = "default") -> Turn:
        return self.chats.get(chat, create=False).undo()

    def status(self) -> dict[str, Any]:
        e = self.engine
        return {
            "model": None if e is None else e.name,
            "path": None if e is None else str(e.model_dir),
            "device": None if e is None else e.device,
            "compute_type": None if e is None else e.compute_type,
            "context_length": None if e is None else min(e.context_length, self.settings.max_context),
            "chats": {c.name: len(c.turns) for c in self.chats},
        }

    def __repr__(self) -> str:
        e = self.engine
        return f"<ct2_magics session: {'no model' if e is None else e.name + ' on ' + e.device}, {len(self.chats)} chat(s)>"


class _Room:
    """Frees the loaded model's memory for a new one, and can bring it back if the new one fails."""

    def __init__(self, engine: Any) -> None:
        self.engine, self.freed = engine, False

    def make(self) -> None:
        if self.engine is not None and self.engine.generator is not None:
            with self.engine.lock:
                self.engine.generator.unload_model()
            self.freed = True

    def restore(self) -> None:
        if self.freed:
            self.engine.generator.load_model()


_session: Session | None = None
_session_lock = threading.Lock()


def get_session() -> Session:
    """The one session of this process (kernel)."""
    global _session
    with _session_lock:
        if _session is None:
            _session = Session()
        return _session


def drop_session() -> None:
    """Free the model and forget the session (used by %unload_ext)."""
    global _session
    with _session_lock:
        session, _session = _session, None
    if session is not None:
        session.unload()
