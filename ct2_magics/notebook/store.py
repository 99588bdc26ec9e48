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
import threading
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, TYPE_CHECKING

from ct2_magics.core.conversation import Chat, Chats
from ct2_magics.notebook import chat_files

if TYPE_CHECKING:
    from ct2_magics.core.session import Session

# The locks of this process's kernels, by path, held until the process ends (or AutoSaver.close): while a kernel
# runs, even with the extension unloaded, no other kernel takes its file over.
_held: dict[str, IO[bytes]] = {}
_held_lock = threading.Lock()


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
        candidate = name[:chat_files.MAX_NAME_CHARS - len(suffix)] + suffix
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
        self.kernel = kernel or chat_files.KERNEL  # tests name kernels to play several in one process
        self.path = chat_files.kernel_file(notebook, self.kernel)
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
        files += chat_files.newest_first(self._taken)
        read_back: list[tuple[Path, list[Chat]]] = []
        replaced: set[str] = set()
        for path in files:
            try:
                data = chat_files.load(path)
                chats = chat_files.from_dict(data)
            except chat_files.Unreadable as e:
                self._set_aside(path, e)
                continue
            read_back.append((path, chats))
            replaced.update(chat_files.replaced_files(data))
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
                chat_files.private_dir(self.path.parent)
                self._claim()
                chat_files.write(self.path, self.session.chats, self.notebook, [p.name for p in self._taken])
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
            f = chat_files.try_lock(lock)
            if f is None:  # another process has this kernel's name (only a name given by hand can): take a new one
                self.kernel = uuid.uuid4().hex[:12]
                self.path = chat_files.kernel_file(self.notebook, self.kernel)
                lock = self._lock_path(self.path)
                f = chat_files.try_lock(lock)
                if f is None:
                    raise OSError(f"{lock} is locked by another process")
            _held[str(lock)] = f

    def _take_ended(self) -> int:
        """Lock the files of this notebook's other kernels that have ended (into _taken); return how many still run."""
        running = 0
        for kernel in {*chat_files.files(self.notebook, ".json"), *chat_files.files(self.notebook, ".lock")}:
            file = chat_files.kernel_file(self.notebook, kernel) if kernel else chat_files.notebook_file(self.notebook)
            lock = self._lock_path(file)
            if file == self.path or file in self._taken:
                continue
            with _held_lock:
                alive = str(lock) in _held
            try:
                f = None if alive else chat_files.try_lock(lock)
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
            backup = chat_files.set_aside(path)
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
