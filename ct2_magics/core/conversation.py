"""Named chats: messages, system prompt, turns keyed by cell, trimming to the context window."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ct2_magics.errors import LlamaError, check_text

Message = dict[str, str]


@dataclass
class Turn:
    """One exchange: the user's prompt and the assistant's reply (complete, cut, looping, stopped or interrupted)."""

    user: str
    assistant: str
    status: str = "complete"
    cell_id: str | None = None

    def messages(self) -> list[Message]:
        return [{"role": "user", "content": self.user}, {"role": "assistant", "content": self.assistant}]


@dataclass
class Chat:
    """A conversation shared by the magic, the panel and the Python API; safe to change from several threads."""

    name: str
    system: str | None = None
    turns: list[Turn] = field(default_factory=list)
    _observers: list[Callable[[Chat], None]] = field(default_factory=list, repr=False, compare=False)
    _lock: Any = field(default_factory=threading.RLock, repr=False, compare=False)

    def messages(self, before: int | None = None) -> list[Message]:
        """System prompt and turns (all, or those before index `before`) as chat-template messages."""
        with self._lock:
            out: list[Message] = [{"role": "system", "content": self.system}] if self.system else []
            for turn in self.turns[:before]:
                out.extend(turn.messages())
        return out

    def history_for(self, cell_id: str | None) -> list[Turn]:
        """The turns a prompt from cell `cell_id` follows: those before that cell's earlier turn, else all."""
        with self._lock:
            at = next((i for i, t in enumerate(self.turns) if cell_id is not None and t.cell_id == cell_id), None)
            return list(self.turns[:at])

    def record(self, turn: Turn) -> None:
        """Add a turn, or replace the turn of the same cell (a re-run cell), found as the chat is now."""
        with self._lock:
            at = next((i for i, t in enumerate(self.turns) if turn.cell_id is not None and t.cell_id == turn.cell_id), None)
            if at is None:
                self.turns.append(turn)
            else:
                self.turns[at] = turn
        self.changed()

    def undo(self) -> Turn:
        with self._lock:
            if not self.turns:
                raise LlamaError(f"Chat {self.name!r} is empty; there is nothing to undo.")
            turn = self.turns.pop()
        self.changed()
        return turn

    def reset(self) -> None:
        with self._lock:
            self.turns.clear()
        self.changed()

    def set_system(self, text: str | None) -> None:
        if text is not None and not isinstance(text, str):
            raise LlamaError(f"A system prompt is text; got {type(text).__name__}.")
        if text:
            check_text(text, "system prompt")
        with self._lock:
            self.system = text or None
        self.changed()

    def observe(self, fn: Callable[[Chat], None]) -> Callable[[], None]:
        """Call fn(chat) after every change; returns a function that stops it."""
        self._observers.append(fn)
        return lambda: self._observers.remove(fn) if fn in self._observers else None

    @property
    def observers(self) -> int:
        """How many functions follow this chat's changes (panels, autosave): closed views must not stay."""
        return len(self._observers)

    def changed(self) -> None:
        for fn in list(self._observers):
            try:
                fn(self)
            except Exception:  # a broken view must never break the conversation
                pass

    def replace(self, turns: Iterable[Turn], system: str | None) -> int:
        """Hold exactly these turns and this system prompt, as one change; return how many turns it held before."""
        new = list(turns)  # read outside the lock: readers wait only for the change itself
        with self._lock:
            before = len(self.turns)
            self.system = system or None
            self.turns[:] = new
        self.changed()
        return before


def chat_name(name: Any) -> str:
    """A chat's name as given (None: 'default'); LlamaError for one that is not text or is blank."""
    if name is None:
        return "default"
    if not isinstance(name, str):
        raise LlamaError(f"A chat's name is text, like 'notes'; got {name!r}.")
    clean = name.strip()
    if not clean:
        raise LlamaError("A chat's name cannot be blank; give one like --chat notes (or leave it out for 'default').")
    check_text(clean, "chat name")
    return clean


class Chats:
    """All chats of this kernel, by name."""

    def __init__(self, default_system: Callable[[], str | None] = lambda: None) -> None:
        self._chats: dict[str, Chat] = {}
        self._lock = threading.RLock()
        self._default_system = default_system
        self.on_new: list[Callable[[Chat], None]] = []  # told of each chat created, e.g. to save it as it changes
        self.on_record: list[Callable[[Chat, Turn], None]] = []  # told of each reply recorded, e.g. to prefill the next

    def get(self, name: str | None = "default", create: bool = True) -> Chat:
        name = chat_name(name)
        with self._lock:
            if name not in self._chats:
                if not create:
                    known = ", ".join(sorted(self._chats)) or "none yet"
                    raise LlamaError(f"There is no chat named {name!r}; chats: {known}.")
                chat = self._chats[name] = Chat(name, system=self._default_system())
                for fn in list(self.on_new):
                    try:
                        fn(chat)
                    except Exception:  # a broken listener must never stop a chat from being made
                        pass
            return self._chats[name]

    def record(self, name: str, turn: Turn) -> None:
        """Record a reply's turn in chat `name` (made if need be), then tell the on_record hooks."""
        chat = self.get(name)
        chat.record(turn)
        for fn in list(self.on_record):
            fn(chat, turn)

    def __iter__(self):
        with self._lock:
            return iter(list(self._chats.values()))

    def __len__(self) -> int:
        return len(self._chats)


def fit_to_context(messages: list[Message], count: Callable[[list[Message]], int], budget: int) -> tuple[list[Message], int]:
    """Keep the system prompt and the newest turns that fit in `budget` tokens; return (messages, turns left out)."""
    system = [m for m in messages[:1] if m["role"] == "system"]
    rest = messages[len(system):]  # [user, assistant, ..., user]
    total = (len(rest) - 1) // 2

    def window(kept: int) -> list[Message]:
        return system + rest[len(rest) - 1 - 2 * kept:]

    def fits(kept: int) -> bool:
        return count(window(kept)) <= budget

    if fits(total):  # the usual case: the whole chat fits
        return messages, 0
    if not fits(0):
        raise LlamaError(
            f"The prompt alone is {count(window(0))} tokens, more than the {budget} the context allows; "
            "shorten it, or raise max_context (%config LlamaSettings.max_context)."
        )
    # Probe 1, 2, 4, ... newest exchanges, then bisect: the cost follows what fits, not the chat's length.
    good, bad = 0, None
    step = 1
    while bad is None and good < total:
        probe = min(good + step, total)
        if fits(probe):
            good, step = probe, step * 2
        else:
            bad = probe
    while bad is not None and bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if fits(mid) else (good, mid)
    return window(good), total - good


# How a history labels a reply that did not end by itself (stopped and interrupted ones by their status).
_LABELS = {"cut": "cut short", "looping": "stopped: repeating itself"}


def transcript_sections(turns: Iterable[Turn], system: str | None) -> list[tuple[str, str]]:
    """A chat's history as (label, text) pieces: the system prompt, then each prompt and reply."""
    sections = [("System", system)] if system else []
    for turn in turns:
        mark = "" if turn.status == "complete" else f" [{_LABELS.get(turn.status, turn.status)}]"
        sections += [("You", turn.user), (f"Llama{mark}", turn.assistant)]
    return sections


def transcript(turns: Iterable[Turn], system: str | None) -> str:
    """A readable plain-text history of a chat."""
    sections = transcript_sections(turns, system)
    return "\n\n".join(f"{label}: {text}" for label, text in sections) if sections else "(empty)"
