"""`from ct2_magics import llama`: the kernel's model and chats from Python, a front end like the magic and the panel."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ct2_magics.core.response import Request, Response
from ct2_magics.core.session import Session, get_session

if TYPE_CHECKING:
    from ct2_magics.core.conversation import Chat, Chats, Turn
    from ct2_magics.core.engine import Engine
    from ct2_magics.core.settings import LlamaSettings


class Llama:
    """Ask, stream, batch, and manage the model and the chats the magic and the panel share."""

    def __init__(self, session: Session) -> None:
        self.session = session

    # -- the model ----------------------------------------------------------------------------
    def load(self, model: str | None = None, *, device: str | None = None, compute_type: str | None = None,
             revision: str | None = None, file: str | None = None, quantization: str | None = None) -> Engine:
        """Load a model: smollm2, a .gguf file, a model folder, or a Hugging Face repo id (GGUF: file= picks one)."""
        return self.session.load(model, device=device, compute_type=compute_type, revision=revision, file=file,
                                 quantization=quantization)

    def unload(self) -> bool:
        """Stop every reply and free the model; False if none was loaded."""
        return self.session.unload()

    @property
    def engine(self) -> Engine | None:
        return self.session.engine

    @property
    def generator(self) -> Any:
        """The ctranslate2.Generator (None when no model is loaded)."""
        return self.session.generator

    @property
    def tokenizer(self) -> Any:
        """The transformers tokenizer (None when no model is loaded)."""
        return self.session.tokenizer

    @property
    def busy(self) -> bool:
        """Whether a reply or a batch holds the model now."""
        return self.session.busy

    @property
    def settings(self) -> LlamaSettings:
        return self.session.settings

    # -- asking ---------------------------------------------------------------------------------
    def stream(self, prompt: str, chat: str = "default", *, system: str | None = None, new: bool = False,
               once: bool = False, **options: Any) -> Response:
        """A reply whose text pieces you iterate as they are written (checked now, asked when first read)."""
        return self.session.respond(Request(prompt, chat=chat, system=system, new=new, once=once, options=options))

    def ask(self, prompt: str, chat: str = "default", **kwargs: Any) -> str:
        """Ask and return the whole reply."""
        return self.stream(prompt, chat, **kwargs).consume()

    def generate(self, prompts: Any, **kwargs: Any) -> list[str | None]:
        """Answer many independent prompts in batches, in input order (see ct2_magics.core.batch.generate)."""
        return self.session.generate(prompts, **kwargs)

    def map(self, items: Any, template: str = "{}", **kwargs: Any) -> Any:
        """Fill `template` with each item and answer each, batched; a Series keeps its index."""
        return self.session.map(items, template, **kwargs)

    @property
    def last_errors(self) -> list[Any]:
        """Why items of the last generate/map got no reply."""
        return self.session.last_errors

    # -- chats ----------------------------------------------------------------------------------
    @property
    def chats(self) -> Chats:
        return self.session.chats

    def chat(self, name: str = "default", create: bool = True) -> Chat:
        return self.session.chat(name, create=create)

    def history(self, chat: str = "default") -> list[dict[str, str]]:
        """The chat as {'role', 'content'} messages, ready for a chat template."""
        return self.session.history(chat)

    def transcript(self, chat: str = "default") -> str:
        """The chat as readable plain text."""
        return self.session.transcript(chat)

    def reset(self, chat: str = "default") -> None:
        self.session.reset(chat)

    def undo(self, chat: str = "default") -> Turn:
        return self.session.undo(chat)

    def status(self) -> dict[str, Any]:
        return self.session.status()

    def panel(self, chat: str = "default") -> Any:
        """An ipywidgets chat panel over `chat`, sharing this model and history."""
        from ct2_magics.notebook.panel import ChatPanel

        return ChatPanel(self.session, chat)

    def __repr__(self) -> str:
        return repr(self.session)


_facade: Llama | None = None


def get_llama() -> Llama:
    """The `llama` of this kernel, a view of the one session."""
    global _facade
    session = get_session()
    if _facade is None or _facade.session is not session:
        _facade = Llama(session)
    return _facade
