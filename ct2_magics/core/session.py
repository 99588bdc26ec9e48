"""The kernel-wide session: the model's owner, all chats and the settings; every front end reaches them here."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ct2_magics.core.conversation import Chat, Chats, Turn, transcript
from ct2_magics.core.owner import ModelOwner
from ct2_magics.core.planning import context_window
from ct2_magics.core.prefill import watch
from ct2_magics.core.response import Request, Response
from ct2_magics.core.settings import LlamaSettings
from ct2_magics.errors import LlamaError

if TYPE_CHECKING:
    from ct2_magics.core.engine import Engine

DEMO_NOTICE = "Loaded the offline demo model: its weights are random, so its text is gibberish. Use it to try the tools."


def _text_or_none(value: Any, what: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise LlamaError(f"{what} must be text; got {value!r}.")
    return value


class Session:
    """One model and all chats of this kernel."""

    def __init__(self, settings: LlamaSettings | None = None) -> None:
        self.settings = settings or LlamaSettings()
        self.owner = ModelOwner()
        self.chats = Chats(default_system=lambda: self.settings.system)
        self._load_lock = threading.RLock()
        self.last_errors: list[Any] = []  # per-item failures of the last generate/map
        self.last_loops: list[Any] = []  # items of the last generate/map whose replies were stopped in a loop
        self.last_cut: list[Any] = []  # items of the last generate/map whose replies reached max_tokens
        self.last_result: Any = None  # what an interrupted generate/map had answered
        self.notify: Callable[[str], None] = lambda line: None  # one-line notices; the magics set a printer
        # A conversion's progress: a factory like tqdm's, (description, total) -> a bar with update(n); front ends set it.
        self.conversion_bar: Callable[[str, int], Any] | None = None
        self.idle_error: str | None = None  # why the last idle-time prefill failed, for status()
        self.owner.on_idle_error = lambda e: setattr(self, "idle_error", f"{type(e).__name__}: {e}")
        watch(self)  # prefill after each complete reply; a lower prefix_cache_mb empties the cache in idle time

    # -- model --------------------------------------------------------------------------------
    @property
    def engine(self) -> Engine | None:
        return self.owner.engine

    @property
    def busy(self) -> bool:
        """Whether a reply or a batch holds the model now."""
        return self.owner.busy

    def load(self, model: str | None = None, *, device: str | None = None, compute_type: str | None = None,
             revision: str | None = None, file: str | None = None, quantization: str | None = None) -> Engine:
        """Load a model (smollm2, a .gguf file, a folder, a Hub repo id, or 'demo'); a no-op if it is already loaded.

        The new model is checked in full before the loaded one is freed; if it fails, the loaded one stays.
        """
        from ct2_magics.core.device import check_request
        from ct2_magics.core.engine import Engine
        from ct2_magics.models import hub
        from ct2_magics.models.libraries import import_libraries

        if model is not None and not isinstance(model, str) and hasattr(model, "__fspath__"):
            model = str(model)
        model = _text_or_none(model, "The model (a directory, a Hub repo id, or demo)") or self.settings.model
        device = _text_or_none(device, "device") or self.settings.device
        compute_type = _text_or_none(compute_type, "compute_type") or self.settings.compute_type
        source = tuple(_text_or_none(v, what) for v, what in ((revision, "revision"), (file, "file"),
                                                              (quantization, "quantization")))
        with self._load_lock:
            old = self.engine
            if old is not None and (old.name, old.requested, old.source) == (model, (device, compute_type), source):
                return old
            import_libraries()  # whole, Ctrl-C or not: an import cut short breaks the library until a restart
            check_request(device, compute_type)  # a device or compute type this machine lacks fails before any download
            path = hub.resolve(model, revision=source[0], file=source[1], quantization=source[2],
                               compute_type=compute_type, notify=(lambda line: None) if self.settings.quiet else self.notify,
                               bar=None if self.settings.quiet else self.conversion_bar)

            def build(make_room: Callable[[], None]) -> Engine:
                return Engine(path, name=model, device=device, compute_type=compute_type, threads=self.settings.threads,
                              cache_limit=self.settings.prefix_cache_mb * 2**20, make_room=make_room)

            engine = self.owner.replace(build)
            engine.source = source
        notices = list(engine.notices) + ([DEMO_NOTICE] if model == "demo" else [])
        for line in notices if not self.settings.quiet else ():
            self.notify(line)
        return engine

    def stop_all(self) -> None:
        """Stop every reply and batch (the panel's too), within a step."""
        self.owner.stop_all()

    def unload(self) -> bool:
        """Stop everything that uses the model and free it; False if none was loaded."""
        with self._load_lock:
            return self.owner.unload()

    def ensure_engine(self) -> Engine:
        """The loaded model, loading the default one (LlamaSettings.model, or smollm2 when that cannot be had) if none is."""
        engine = self.engine
        if engine is not None:
            return engine
        from ct2_magics.core.default_model import load_default

        return load_default(self)

    @property
    def generator(self) -> Any:
        e = self.engine
        return None if e is None else e.generator

    @property
    def tokenizer(self) -> Any:
        e = self.engine
        return None if e is None else e.tokenizer

    # -- asking -------------------------------------------------------------------------------
    def respond(self, request: Request) -> Response:
        """A reply to `request`, checked now; it asks the model when it is first read."""
        return Response(self, request)

    def generate(self, prompts: Any, **kwargs: Any) -> list[str | None]:
        """Answer many independent prompts in batches, in input order; see core/batch.py generate."""
        from ct2_magics.core.batch import generate

        return generate(self, prompts, **kwargs)

    def map(self, items: Any, template: str = "{}", **kwargs: Any) -> Any:
        """Fill `template` with each item and answer each, batched, on this kernel's model; a Series keeps its index."""
        from ct2_magics.core.batch import map_items

        return map_items(self, items, template, **kwargs)

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
            "threads": None if e is None else e.threads,
            "batch_workers": None if e is None else e.batch_workers,
            "context_length": None if e is None else context_window(self.settings, e),
            "chats": {c.name: len(c.turns) for c in self.chats},
            "prompt_cache": None if e is None else {**e.prefixes.summary(), "pending": self.owner.idle_pending,
                                                    "error": self.idle_error},
        }

    def __repr__(self) -> str:
        e = self.engine
        return f"<ct2_magics session: {'no model' if e is None else e.name + ' on ' + e.device}, {len(self.chats)} chat(s)>"


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
    """Free the model and forget the session (a fresh start, as after a kernel restart)."""
    global _session
    with _session_lock:
        session, _session = _session, None
    if session is not None:
        session.unload()
