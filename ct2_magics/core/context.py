"""What a reply, a batch, the prefill and the default model need of the session: the one link between them,
typed here so that none of them imports the session (which imports them)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ct2_magics.core.conversation import Chats
    from ct2_magics.core.engine import Engine
    from ct2_magics.core.owner import ModelOwner
    from ct2_magics.core.settings import LlamaSettings


class Context(Protocol):
    """The session as its parts see it: settings, chats, the model's owner, the loaded model and notices."""

    settings: LlamaSettings
    chats: Chats
    owner: ModelOwner
    last_errors: list[Any]
    last_loops: list[Any]
    last_cut: list[Any]
    last_result: Any
    notify: Callable[[str], None]

    @property
    def engine(self) -> Engine | None: ...

    def ensure_engine(self) -> Engine: ...

    def load(self, model: str | None = None, **options: Any) -> Engine: ...
