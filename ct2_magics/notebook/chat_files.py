"""Chat files: where a notebook's chats are saved (one JSON file per kernel, each with a lock while its kernel
runs) and what a file holds, validated on read and written atomically. store.py keeps them in step with a session."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ct2_magics.core.conversation import Chat, Turn
from ct2_magics.errors import LlamaError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    pass

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


def files(notebook: str, suffix: str) -> dict[str, Path]:
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
    return newest_first(files(notebook, ".json").values())


def newest_first(paths: Iterable[Path]) -> list[Path]:
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


def try_lock(path: Path) -> IO[bytes] | None:
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
STATUSES = ("complete", "cut", "looping", "interrupted", "stopped")
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
    return from_dict(load(path))


def load(path: str | Path) -> Any:
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
