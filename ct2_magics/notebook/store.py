"""Chats on disk: per notebook, one JSON file per kernel, written atomically as its chats change, read back on load.

Two kernels may run one notebook (opened twice, or in two front ends). Each writes only its own file, so neither
overwrites the other's turns. A kernel holds a lock on its file while it runs; a kernel that starts takes over the
files of kernels that have ended (their lock is free): it restores their chats, saves them in its own file, then
removes theirs, so a turn comes back once. The files of a kernel still running are left to it, with one line saying
so: its chats are its own conversation and never mix into another kernel's.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ct2_magics.core.conversation import Chat, Chats, Turn
from ct2_magics.errors import LlamaError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

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
    """A notebook's save file before there was one per kernel (still read): a readable stem plus a hash of its path."""
    path = os.path.abspath(notebook)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(path).stem).strip("._")[:40] or "notebook"
    digest = hashlib.sha256(os.fsencode(path)).hexdigest()[:16]
    return data_root() / "chats" / f"{stem}-{digest}.json"


# This process's kernel: a name for its save files, the same across %reload_ext.
KERNEL = uuid.uuid4().hex[:12]
_KERNEL_NAME = re.compile(r"[0-9a-z]{1,32}")


def kernel_file(notebook: str, kernel: str) -> Path:
    """The save file kernel `kernel` writes for `notebook`: <stem>-<hash>.<kernel>.json."""
    if not _KERNEL_NAME.fullmatch(kernel):
        raise ValueError(f"a kernel's name is 1 to 32 lowercase letters and digits, not {kernel!r}")
    shared = notebook_file(notebook)
    return shared.with_name(f"{shared.stem}.{kernel}.json")


def _files(notebook: str, suffix: str) -> dict[str, Path]:
    """{kernel: path} of a notebook's save files (suffix .json) or locks (.lock); kernel '' is the shared file's."""
    shared = notebook_file(notebook)
    pattern = re.compile(rf"{re.escape(shared.stem)}(?:\.({_KERNEL_NAME.pattern}))?{re.escape(suffix)}")
    try:
        names = os.listdir(shared.parent)
    except OSError:
        return {}
    return {m.group(1) or "": shared.parent / name for name in names if (m := pattern.fullmatch(name))}


def notebook_files(notebook: str) -> list[Path]:
    """A notebook's save files, one per kernel that saved and is running or not yet taken over; newest first."""
    return _newest_first(_files(notebook, ".json").values())


def _newest_first(paths: Iterable[Path]) -> list[Path]:
    def age(path: Path) -> tuple[int, str]:
        try:
            return -path.stat().st_mtime_ns, path.name
        except OSError:
            return 0, path.name
    return sorted(paths, key=age)


def private_dir(path: Path) -> Path:
    """Make `path` (and its missing parents) a directory only its owner can read (0700)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def _try_lock(path: Path) -> IO[bytes] | None:
    """`path` (made if missing, 0600) open and exclusively locked, or None when another process holds its lock.
    The lock lasts while the file stays open, and ends with the process however it ends (SIGKILL included)."""
    f = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o600), "r+b")
    try:
        if fcntl is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:  # Windows
            import msvcrt

            msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
    except OSError:
        f.close()
        return None
    return f


# The locks of this process's kernels, by path, held until the process ends (or AutoSaver.close): while a kernel
# runs, even with the extension unloaded, no other kernel takes its file over.
_held: dict[str, IO[bytes]] = {}
_held_lock = threading.Lock()


# -- format ---------------------------------------------------------------------------------------
def to_dict(chats: Iterable[Chat], notebook: str | None = None, replaces: Iterable[str] = ()) -> dict[str, Any]:
    """The save-file form of some chats; `replaces` names the save files (of ended kernels) these chats took over."""
    extra = {"replaces": sorted(replaces)} if replaces else {}
    return {
        "version": VERSION,
        **extra,
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
MAX_REPLACES = 1000
_FILE_KEYS, _CHAT_KEYS = {"version", "notebook", "chats", "replaces"}, {"system", "turns"}
_TURN_KEYS = {"user", "assistant", "status", "cell_id"}


def from_dict(data: Any) -> list[Chat]:
    """Detached chats from save-file data; raises Unreadable when anything in it is not as this format says."""
    if not isinstance(data, dict) or not isinstance(data.get("chats"), dict):
        raise Unreadable("not a ct2-magics chat file")
    if data.get("version") != VERSION:
        raise Unreadable(f"format version {data.get('version')!r}, this ct2-magics reads version {VERSION}")
    _known_keys(data, _FILE_KEYS, "the file")
    _text(data.get("notebook"), "the notebook path", optional=True, limit=MAX_TEXT_CHARS)
    replaced_files(data)
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


def replaced_files(data: Any) -> list[str]:
    """The names of the save files whose chats a save file took over (its "replaces"); Unreadable if malformed."""
    names = data.get("replaces", []) if isinstance(data, dict) else []
    if not isinstance(names, list) or len(names) > MAX_REPLACES or not all(
            isinstance(n, str) and 0 < len(n) <= MAX_NAME_CHARS and Path(n).name == n and "\x00" not in n for n in names):
        raise Unreadable("its list of the files it took over (replaces) is malformed")
    return names


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
def write(path: str | Path, chats: Iterable[Chat], notebook: str | None = None, replaces: Iterable[str] = ()) -> None:
    """Write chats to `path` atomically: a reader sees the old file or the new one, never half of one."""
    path = Path(path).expanduser()
    text = json.dumps(to_dict(chats, notebook, replaces))
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
    return from_dict(_load(path))


def _load(path: str | Path) -> Any:
    path = Path(path).expanduser()
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise Unreadable(f"{path.stat().st_size:,} bytes, more than the {MAX_FILE_BYTES:,} a chat file may hold")
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise Unreadable(e.strerror or str(e)) from None
    except (ValueError, RecursionError) as e:  # bad UTF-8, bad JSON, absurd nesting
        raise Unreadable(f"not valid JSON: {e}") from None


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


def restored_line(back: list[Chat], renamed: dict[str, str]) -> str:
    """'Restored 2 chats (3 turns) saved for this notebook; another kernel's chat 'x' came back as 'x-2'.'"""
    line = f"Restored {count(back)} saved for this notebook"
    pairs = list(renamed.items())
    if len(pairs) == 1:
        line += f"; another kernel's chat {pairs[0][1]!r} came back as {pairs[0][0]!r}"
    elif pairs:
        shown = ", ".join(f"{old!r} as {new!r}" for new, old in pairs[:3])
        more = f" and {len(pairs) - 3} more" if len(pairs) > 3 else ""
        line += f"; chats of other kernels came back under new names: {shown}{more}"
    return line + "."


def _free_name(name: str, taken: set[str]) -> str:
    """`name` with the first suffix -2, -3, ... that no chat in `taken` has (cut to fit a chat file's limit)."""
    n = 2
    while True:
        suffix = f"-{n}"
        candidate = name[:MAX_NAME_CHARS - len(suffix)] + suffix
        if candidate not in taken:
            return candidate
        n += 1


# -- autosave -------------------------------------------------------------------------------------
class AutoSaver:
    """Keeps this kernel's save file for a notebook in step with the session's chats while settings.autosave is on;
    restores them, and takes over the files of kernels of the same notebook that have ended."""

    def __init__(self, session: Session, notebook: str, kernel: str | None = None) -> None:
        self.session = session
        self.notebook = notebook
        self.kernel = kernel or KERNEL  # tests name kernels to play several in one process
        self.path = kernel_file(notebook, self.kernel)
        self.disabled = False  # set when an unreadable file could not be set aside: never overwrite it
        self.renamed: dict[str, str] = {}  # after restore(): {new name: old name} of other kernels' chats
        self._lock = threading.Lock()
        self._watched: dict[str, Callable[[], None]] = {}
        self._failing = False
        self._taken: dict[Path, IO[bytes]] = {}  # files of ended kernels taken over, with their locks, until removed

    def restore(self) -> list[Chat]:
        """Fill the session's chats from this kernel's file and those of ended kernels; return the chats brought back.

        The chats of a kernel still running are left to it (one line says so). A chat whose name is taken by an
        earlier one comes back under a new name (see `renamed`): two kernels' chats are two conversations."""
        self.renamed = {}
        if not self.path.parent.is_dir():
            return []
        with contextlib.suppress(OSError):
            self._claim()
        running = self._take_ended()
        # this kernel's own file first (after %reload_ext), then the ended kernels' newest first: the newest keeps the names
        files = [self.path] if self.path.exists() else []
        files += _newest_first(self._taken)
        read_back: list[tuple[Path, list[Chat]]] = []
        replaced: set[str] = set()
        for path in files:
            try:
                data = _load(path)
                chats = from_dict(data)
            except Unreadable as e:
                self._set_aside(path, e)
                continue
            read_back.append((path, chats))
            replaced.update(replaced_files(data))
        held = {c.name for c in self.session.chats}
        back = []
        for path, chats in read_back:
            if path.name in replaced:
                continue  # a kernel that took this file over saved its chats, and ended before it removed the file
            for chat in chats:
                if not (chat.turns or chat.system):
                    continue
                if chat.name in held:
                    if path == self.path:
                        continue  # a chat this kernel already has (after %reload_ext) is newer than its file
                    name = _free_name(chat.name, held)
                    self.renamed[name] = chat.name
                    chat = Chat(name, system=chat.system, turns=chat.turns)
                put(self.session.chats, chat)
                held.add(chat.name)
                back.append(chat)
        if running:
            self.session.notify(f"{'Another kernel is' if running == 1 else f'{running} other kernels are'} running "
                                "this notebook and saving its own chats: they stay apart from this kernel's, and a "
                                "restart brings all of them back.")
        if self._taken:
            self.save()  # this kernel's file now holds what it took over; then the old files go
        return back

    def start(self) -> None:
        """Save after every change to any chat, those made later included."""
        self.session.chats.on_new.append(self._watch)
        for chat in self.session.chats:
            self._watch(chat)

    def stop(self) -> None:
        """Stop saving; this kernel keeps its file (and its lock) while its process runs."""
        if self._watch in self.session.chats.on_new:
            self.session.chats.on_new.remove(self._watch)
        for unobserve in self._watched.values():
            unobserve()
        self._watched.clear()

    def close(self) -> None:
        """Stop saving and let this kernel's file be taken over, as when its process ends."""
        self.stop()
        with self._lock, _held_lock:
            for f in [*self._taken.values(), _held.pop(str(self._lock_path(self.path)), None)]:
                if f is not None:
                    f.close()
            self._taken.clear()
        if not self.path.exists():
            with contextlib.suppress(OSError):
                self._lock_path(self.path).unlink(missing_ok=True)

    def save(self) -> bool:
        """Write all chats now; on failure warn once (until a save works again) and return False."""
        with self._lock:
            if self.disabled:
                return False
            try:
                private_dir(self.path.parent)
                self._claim()
                write(self.path, self.session.chats, self.notebook, [p.name for p in self._taken])
            except Exception as e:
                if not self._failing:
                    self.session.notify(f"Could not save this notebook's chats to {self.path} "
                                        f"({_reason(e)}); they are kept in memory only.")
                self._failing = True
                return False
            self._failing = False
            self._remove_taken()
            return True

    # -- several kernels ----------------------------------------------------------------------------
    @staticmethod
    def _lock_path(file: Path) -> Path:
        return file.with_suffix(".lock")

    def _claim(self) -> None:
        """Hold this kernel's lock, so that no other kernel takes its file over while it runs."""
        lock = self._lock_path(self.path)
        with _held_lock:
            if str(lock) in _held:
                return
            f = _try_lock(lock)
            if f is None:  # another process has this kernel's name (only a name given by hand can): take a new one
                self.kernel = uuid.uuid4().hex[:12]
                self.path = kernel_file(self.notebook, self.kernel)
                lock = self._lock_path(self.path)
                f = _try_lock(lock)
                if f is None:
                    raise OSError(f"{lock} is locked by another process")
            _held[str(lock)] = f

    def _take_ended(self) -> int:
        """Lock the files of this notebook's other kernels that have ended (into _taken); return how many still run."""
        running = 0
        for kernel in {*_files(self.notebook, ".json"), *_files(self.notebook, ".lock")}:
            file = kernel_file(self.notebook, kernel) if kernel else notebook_file(self.notebook)
            lock = self._lock_path(file)
            if file == self.path or file in self._taken:
                continue
            with _held_lock:
                alive = str(lock) in _held
            try:
                f = None if alive else _try_lock(lock)
            except OSError:  # cannot even open its lock (a read-only folder): leave that kernel's file alone
                continue
            if f is None:
                running += 1
            elif file.exists():
                self._taken[file] = f
            else:  # an ended kernel that never saved: only its lock is left
                f.close()
                with contextlib.suppress(OSError):
                    lock.unlink()
        return running

    def _remove_taken(self) -> None:
        """Once this kernel's file holds them, remove the files taken over (and what their kernels left beside them)."""
        for file, f in list(self._taken.items()):
            try:
                file.unlink(missing_ok=True)
                for tmp in file.parent.glob(f".{glob.escape(file.name)}.*.tmp"):  # a write cut short by the kernel's end
                    tmp.unlink(missing_ok=True)
            except OSError:
                continue  # still listed in `replaces`, and still locked: a later save tries again
            f.close()
            del self._taken[file]
            with contextlib.suppress(OSError):  # after closing it (Windows removes no open file); a lock alone is stale
                self._lock_path(file).unlink(missing_ok=True)

    def _watch(self, chat: Chat) -> None:
        if chat.name not in self._watched:
            self._watched[chat.name] = chat.observe(self._changed)

    def _changed(self, chat: Chat) -> None:
        if self.session.settings.autosave:
            self.save()

    def _set_aside(self, path: Path, error: Exception) -> None:
        try:
            backup = set_aside(path)
        except OSError as e:
            if path == self.path:
                self.disabled = True
                also = "nothing is saved this session"
            else:  # never remove a file that could be neither read nor kept: leave it, and its kernel's lock
                self._taken.pop(path).close()
                also = "it is left as it is"
            self.session.notify(f"Could not read this notebook's saved chats {path} ({_reason(error)}) nor set the "
                                f"file aside ({_reason(e)}); nothing was restored from it, and {also}.")
            return
        if path in self._taken:  # an ended kernel's file, now kept aside: its lock has nothing left to guard
            self._taken.pop(path).close()
            with contextlib.suppress(OSError):
                self._lock_path(path).unlink(missing_ok=True)
        self.session.notify(f"Could not read this notebook's saved chats ({_reason(error)}); "
                            f"kept the file as {backup}; nothing was restored from it.")


def _reason(error: BaseException) -> str:
    text = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return " ".join(text.split()) or type(error).__name__
