"""Chats on disk: one JSON file per notebook, written atomically as chats change, read back on load."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from ct2_magics.core.conversation import Chat, Chats, Turn
from ct2_magics.errors import LlamaError

if TYPE_CHECKING:
    from ct2_magics.core.session import Session

VERSION = 1


class Unreadable(LlamaError):
    """A save file that cannot be read, is not JSON, or is not in this format."""


# -- where ----------------------------------------------------------------------------------------
def data_root() -> Path:
    """Where ct2-magics keeps data: $CT2_MAGICS_DATA, or the user's data directory."""
    root = os.environ.get("CT2_MAGICS_DATA")
    if root:
        return Path(root).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("ct2-magics"))


def notebook_of(shell: Any) -> str | None:
    """The absolute path of the notebook this kernel runs, when the front end told the kernel."""
    ns = getattr(shell, "user_ns", None) or {}
    for value in (ns.get("__session__"), ns.get("__vsc_ipynb_file__"), os.environ.get("JPY_SESSION_NAME")):
        # JupyterLab names a console's session "console-1-<uuid>": no suffix, and never the same twice.
        if isinstance(value, str) and value.strip() and Path(value).suffix:
            return os.path.abspath(os.path.expanduser(value.strip()))
    return None


def notebook_file(notebook: str) -> Path:
    """The save file of a notebook: a readable stem plus a hash of its absolute path."""
    path = os.path.abspath(notebook)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(path).stem).strip("._")[:40] or "notebook"
    digest = hashlib.sha256(os.fsencode(path)).hexdigest()[:16]
    return data_root() / "chats" / f"{stem}-{digest}.json"


def private_dir(path: Path) -> Path:
    """Make `path` (and its missing parents) a directory only its owner can read (0700)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


# -- format ---------------------------------------------------------------------------------------
def to_dict(chats: Iterable[Chat], notebook: str | None = None) -> dict[str, Any]:
    """The save-file form of some chats."""
    return {
        "version": VERSION,
        "notebook": notebook,
        "chats": {
            chat.name: {
                "system": chat.system,
                "turns": [{"user": t.user, "assistant": t.assistant, "status": t.status, "cell_id": t.cell_id}
                          for t in list(chat.turns)],
            }
            for chat in chats
        },
    }


# A save file is data from disk: everything in it is checked before any of it reaches a chat.
MAX_FILE_BYTES = 64 * 2**20
MAX_TEXT_CHARS = 1_000_000  # one prompt or reply; far beyond any context window
MAX_NAME_CHARS = 200
STATUSES = ("complete", "interrupted", "stopped")
_FILE_KEYS, _CHAT_KEYS, _TURN_KEYS = {"version", "notebook", "chats"}, {"system", "turns"}, {"user", "assistant", "status", "cell_id"}


def from_dict(data: Any) -> list[Chat]:
    """Detached chats from save-file data; raises Unreadable when anything in it is not as this format says."""
    if not isinstance(data, dict) or not isinstance(data.get("chats"), dict):
        raise Unreadable("not a ct2-magics chat file")
    if data.get("version") != VERSION:
        raise Unreadable(f"format version {data.get('version')!r}, this ct2-magics reads version {VERSION}")
    _known_keys(data, _FILE_KEYS, "the file")
    _text(data.get("notebook"), "the notebook path", optional=True, limit=MAX_TEXT_CHARS)
    chats = []
    for name, body in data["chats"].items():
        _text(name, "a chat name", limit=MAX_NAME_CHARS)
        if name != name.strip() or not name.strip():
            raise Unreadable(f"chat name {name!r} is blank or has spaces around it")
        if not isinstance(body, dict) or not isinstance(body.get("turns", []), list):
            raise Unreadable(f"chat {name!r} is malformed")
        _known_keys(body, _CHAT_KEYS, f"chat {name!r}")
        system = _text(body.get("system"), f"the system prompt of chat {name!r}", optional=True)
        chats.append(Chat(name, system=system, turns=[_turn(name, t) for t in body.get("turns", [])]))
    return chats


def _turn(chat: str, data: Any) -> Turn:
    if not isinstance(data, dict):
        raise Unreadable(f"chat {chat!r} has a malformed turn")
    _known_keys(data, _TURN_KEYS, f"a turn of chat {chat!r}")
    status = data.get("status", "complete")
    if status not in STATUSES:
        raise Unreadable(f"chat {chat!r} has a turn with status {str(status)[:40]!r}; one of {', '.join(STATUSES)} was expected")
    return Turn(_text(data.get("user"), f"a prompt of chat {chat!r}"), _text(data.get("assistant"), f"a reply of chat {chat!r}"),
                status, _text(data.get("cell_id"), f"a cell id of chat {chat!r}", optional=True, limit=MAX_NAME_CHARS))


def _known_keys(data: dict, known: set[str], where: str) -> None:
    unknown = sorted(str(k)[:40] for k in set(data) - known)
    if unknown:
        raise Unreadable(f"{where} has unknown fields ({', '.join(map(repr, unknown[:3]))})")


def _text(value: Any, what: str, *, optional: bool = False, limit: int = MAX_TEXT_CHARS) -> Any:
    """`value` if it is acceptable text (or None when optional); Unreadable otherwise."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise Unreadable(f"{what} is not text")
    if len(value) > limit:
        raise Unreadable(f"{what} is {len(value):,} characters long, more than the {limit:,} a chat file may hold")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Unreadable(f"{what} holds an invalid character (a lone surrogate)") from None
    return value


# -- files ----------------------------------------------------------------------------------------
def write(path: str | Path, chats: Iterable[Chat], notebook: str | None = None) -> None:
    """Write chats to `path` atomically: a reader sees the old file or the new one, never half of one."""
    path = Path(path).expanduser()
    text = json.dumps(to_dict(chats, notebook))
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp makes the file readable by its owner only (0600), and os.replace keeps that.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())  # else a power cut after the rename can leave an empty file
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read(path: str | Path) -> list[Chat]:
    """Chats from a save file; raises Unreadable (a missing file included) with the reason."""
    path = Path(path).expanduser()
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise Unreadable(f"{path.stat().st_size:,} bytes, more than the {MAX_FILE_BYTES:,} a chat file may hold")
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise Unreadable(e.strerror or str(e)) from None
    except (ValueError, RecursionError) as e:  # bad UTF-8, bad JSON, absurd nesting
        raise Unreadable(f"not valid JSON: {e}") from None
    return from_dict(data)


def set_aside(path: Path) -> Path:
    """Rename a save file to <name>.corrupt-<timestamp>.json, keeping it as a backup."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    backup = path.with_name(f"{path.stem}.corrupt-{stamp}{path.suffix}")
    n = 1
    while backup.exists():
        n += 1
        backup = path.with_name(f"{path.stem}.corrupt-{stamp}-{n}{path.suffix}")
    os.replace(path, backup)
    return backup


def put(chats: Chats, saved: Chat) -> int:
    """Make the chat named like `saved` hold its system prompt and turns; return how many turns it held."""
    return chats.get(saved.name).replace(saved.turns, saved.system)


def count(chats: Iterable[Chat]) -> str:
    """'2 chats (7 turns)', for one-line messages."""
    chats = list(chats)
    turns = sum(len(c.turns) for c in chats)
    return f"{len(chats)} chat{'s' if len(chats) != 1 else ''} ({turns} turn{'s' if turns != 1 else ''})"


# -- autosave -------------------------------------------------------------------------------------
class AutoSaver:
    """Keeps a notebook's save file in step with the session's chats while settings.autosave is on."""

    def __init__(self, session: Session, notebook: str) -> None:
        self.session = session
        self.notebook = notebook
        self.path = notebook_file(notebook)
        self.disabled = False  # set when an unreadable file could not be set aside: never overwrite it
        self._lock = threading.Lock()
        self._watched: dict[str, Callable[[], None]] = {}
        self._failing = False

    def restore(self) -> list[Chat]:
        """Fill the session's empty chats from the notebook's save file; return the chats brought back."""
        try:
            if not self.path.exists():
                return []
            saved = read(self.path)
        except (OSError, Unreadable) as e:
            self._set_aside(e)
            return []
        held = {c.name for c in self.session.chats}
        back = []
        for chat in saved:
            if chat.name in held or not (chat.turns or chat.system):
                continue  # a chat this kernel already has (after %reload_ext) is newer than the file, even an empty one
            put(self.session.chats, chat)
            back.append(chat)
        return back

    def start(self) -> None:
        """Save after every change to any chat, those made later included."""
        self.session.chats.on_new.append(self._watch)
        for chat in self.session.chats:
            self._watch(chat)

    def stop(self) -> None:
        if self._watch in self.session.chats.on_new:
            self.session.chats.on_new.remove(self._watch)
        for unobserve in self._watched.values():
            unobserve()
        self._watched.clear()

    def save(self) -> bool:
        """Write all chats now; on failure warn once (until a save works again) and return False."""
        with self._lock:
            if self.disabled:
                return False
            try:
                private_dir(self.path.parent)
                write(self.path, self.session.chats, self.notebook)
            except Exception as e:
                if not self._failing:
                    self.session.notify(f"Could not save this notebook's chats to {self.path} "
                                        f"({_reason(e)}); they are kept in memory only.")
                self._failing = True
                return False
            self._failing = False
            return True

    def _watch(self, chat: Chat) -> None:
        if chat.name not in self._watched:
            self._watched[chat.name] = chat.observe(self._changed)

    def _changed(self, chat: Chat) -> None:
        if self.session.settings.autosave:
            self.save()

    def _set_aside(self, error: Exception) -> None:
        try:
            backup = set_aside(self.path)
        except OSError as e:
            self.disabled = True
            self.session.notify(f"Could not read this notebook's saved chats {self.path} ({_reason(error)}) nor set the "
                                f"file aside ({_reason(e)}); nothing was restored, and nothing is saved this session.")
            return
        self.session.notify(f"Could not read this notebook's saved chats ({_reason(error)}); "
                            f"kept the file as {backup}; nothing was restored.")


def _reason(error: BaseException) -> str:
    text = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return " ".join(text.split()) or type(error).__name__
