"""Named chats: messages, system prompt, turns keyed by cell, trimming to the context window."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Iterable

from .errors import LlamaError

Message = dict[str, str]


@dataclass
class Turn:
    """One exchange: the user's prompt and the assistant's reply (complete, interrupted or stopped)."""

    user: str
    assistant: str
    status: str = "complete"
    cell_id: str | None = None

    def messages(self) -> list[Message]:
        return [{"role": "user", "content": self.user}, {"role": "assistant", "content": self.assistant}]


@dataclass
class Chat:
    """A conversation shared by the magic, the panel and the Python API."""

    name: str
    system: str | None = None
    turns: list[Turn] = field(default_factory=list)
    _observers: list[Callable[[Chat], None]] = field(default_factory=list, repr=False)

    def messages(self, before: int | None = None) -> list[Message]:
        """System prompt and turns (all, or those before index `before`) as chat-template messages."""
        out: list[Message] = [{"role": "system", "content": self.system}] if self.system else []
        for turn in self.turns[:before]:
            out.extend(turn.messages())
        return out

    def index_of_cell(self, cell_id: str | None) -> int | None:
        if cell_id is None:
            return None
        return next((i for i, t in enumerate(self.turns) if t.cell_id == cell_id), None)

    def record(self, turn: Turn, at: int | None = None) -> None:
        """Add a turn, or replace the turn at index `at` (a re-run cell)."""
        if at is None:
            self.turns.append(turn)
        else:
            self.turns[at] = turn
        self.changed()

    def undo(self) -> Turn:
        if not self.turns:
            raise LlamaError(f"Chat {self.name!r} is empty; there is nothing to undo.")
        turn = self.turns.pop()
        self.changed()
        return turn

    def reset(self) -> None:
        self.turns.clear()
        self.changed()

    def set_system(self, text: str | None) -> None:
        self.system = text or None
        self.changed()

    def observe(self, fn: Callable[[Chat], None]) -> Callable[[], None]:
        """Call fn(chat) after every change; returns a function that stops it."""
        self._observers.append(fn)
        return lambda: self._observers.remove(fn) if fn in self._observers else None

    def changed(self) -> None:
        for fn in list(self._observers):
            try:
                fn(self)
            except Exception:  # a broken view must never break the conversation
                pass


class Chats:
    """All chats of this kernel, by name."""

    def __init__(self, default_system: Callable[[], str | None] = lambda: None) -> None:
        self._chats: dict[str, Chat] = {}
        self._lock = threading.RLock()
        self._default_system = default_system
        self.on_new: list[Callable[[Chat], None]] = []  # told of each chat created, e.g. to save it as it changes

    def get(self, name: str = "default", create: bool = True) -> Chat:
        name = (name or "default").strip()
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


def transcript_sections(turns: Iterable[Turn], system: str | None) -> list[tuple[str, str]]:
    """A chat's history as (label, text) pieces: the system prompt, then each prompt and reply."""
    sections = [("System", system)] if system else []
    for turn in turns:
        mark = "" if turn.status == "complete" else f" [{turn.status}]"
        sections += [("You", turn.user), (f"Llama{mark}", turn.assistant)]
    return sections


def transcript(turns: Iterable[Turn], system: str | None) -> str:
    """A readable plain-text history of a chat."""
    sections = transcript_sections(turns, system)
    return "\n\n".join(f"{label}: {text}" for label, text in sections) if sections else "(empty)"
