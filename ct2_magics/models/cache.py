"""Models converted on first load: kept in the cache, keyed by the source's identity, written atomically."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ct2_magics.errors import LlamaError
from ct2_magics.models.libraries import import_converting

# Bump when the conversion itself changes, so older cache entries are converted again.
FORMAT = 1
CACHE_ENV = "CT2_MAGICS_CACHE"
CACHE_SUBDIR = "converted"
DONE = "source.json"  # written last: a cache entry without it was never finished
# Room beyond the weights themselves: tokenizer and vocabulary files.
DISK_MARGIN = 64 * 2**20


def cache_root() -> Path:
    """ct2-magics' cache, where converted models and the demo model live: $CT2_MAGICS_CACHE, else the user cache."""
    root = os.environ.get(CACHE_ENV)
    if not root:
        import platformdirs

        root = platformdirs.user_cache_dir("ct2-magics")
    return Path(root)


def identity(source: Path) -> dict[str, Any]:
    """What makes a source this source: path, size and mtime of its files; a Hub blob's hash instead of its path."""
    source = Path(source)
    files = [source] if source.is_file() else sorted(
        p for p in source.iterdir() if p.is_file() and p.suffix in (".safetensors", ".json", ".gguf", ".jinja", ".model"))

    def one(path: Path) -> dict[str, Any]:
        real = path.resolve()
        stat = real.stat()
        if real.parent.name == "blobs":  # huggingface_hub's cache names each blob by its hash (sha256 for LFS files)
            return {"name": path.name, "blob": real.name, "size": stat.st_size}
        return {"name": path.name, "path": str(real), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}

    return {"kind": "file" if source.is_file() else "folder", "files": [one(p) for p in files]}


class _NoBar:
    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def update(self, n: int = 1) -> None:
        pass


def no_bar(description: str, total: int) -> Any:
    """The bar a conversion reports its layers to when the caller shows none. A front end passes its own factory:
    (description, total) -> a context manager with update(n), as tqdm is (this layer never draws)."""
    return _NoBar()


def cached(source: Path, *, label: str, quantization: str, open_model: Callable[[Path], Any],
           notify: Callable[[str], None] = lambda line: None, bar: Callable[[str, int], Any] = no_bar) -> Path:
    """The converted model for `source` in the cache, converting it first when it is not there."""
    ident = identity(source)
    key = hashlib.sha256(json.dumps({"format": FORMAT, "source": ident, "quantization": quantization},
                                    sort_keys=True).encode()).hexdigest()[:16]
    root = cache_root() / CACHE_SUBDIR
    target = root / f"{_slug(label)}-{quantization}-{key}"
    if (target / DONE).is_file() and (target / "model.bin").is_file():
        return target
    started = time.perf_counter()
    import_converting()  # whole, Ctrl-C or not: an import cut short breaks the library until a restart
    model = open_model(source)  # reads and checks the source before anything is written
    root.mkdir(parents=True, exist_ok=True)
    _clear_leftovers(root, target)
    _check_room(root, model.shape.stored_bytes(quantization), label)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".converting", dir=root))
    try:
        staging.chmod(0o755)
        convert_into(model, staging, quantization, label=label, bar=bar)
        (staging / DONE).write_text(json.dumps({"label": label, "source": ident, "quantization": quantization,
                                                "format": FORMAT}, indent=2) + "\n", encoding="utf-8")
        publish(staging, target, lambda path: (path / DONE).is_file())
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise LlamaError(f"The disk filled up while converting {label} into {root}; free some space "
                             "(or set CT2_MAGICS_CACHE to a bigger disk) and load it again.") from None
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    size = sum(p.stat().st_size for p in target.iterdir() if p.is_file())
    notify(f"Converted {label} to CTranslate2 ({quantization}) in {time.perf_counter() - started:.1f} s: "
           f"{human_size(size)} in {target}; later loads use it directly.")
    return target


def convert_into(model: Any, out: Path, quantization: str, *, label: str, bar: Callable[[str, int], Any] = no_bar) -> None:
    """Write `model` (a GGUFModel or SafetensorsModel) as a CTranslate2 model into the folder `out`, telling `bar`
    each layer written."""
    from ct2_magics.models.spec import write_decoder

    special = model.write_side_files(out)
    vocabulary = model.vocabulary()
    with bar(f"Converting {label}", model.shape.layers + 1) as shown:
        write_decoder(out, model.shape, model.weight, vocabulary, quantization=quantization, step=shown.update, **special)


def _clear_leftovers(root: Path, target: Path) -> None:
    """Remove what killed conversions of this model left behind (their process is gone)."""
    prefix = f".{target.name}."
    for leftover in root.glob(f"{prefix}*.converting"):
        pid = leftover.name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _check_room(root: Path, needed: int, label: str) -> None:
    free = shutil.disk_usage(root).free
    if free < needed + DISK_MARGIN:
        raise LlamaError(f"Not enough disk to convert {label}: it needs about {human_size(needed + DISK_MARGIN)} in {root}, "
                         f"which has {human_size(free)} free; free some space or set CT2_MAGICS_CACHE to a bigger disk.")


def publish(staging: Path, target: Path, complete: Callable[[Path], bool]) -> None:
    """Rename a finished build into place; when another process got there first (`complete(target)`), keep its copy."""
    try:
        os.rename(staging, target)
    except OSError:
        if complete(target):
            return
        shutil.rmtree(target, ignore_errors=True)  # an unfinished leftover (files deleted by hand, a killed build)
        os.rename(staging, target)


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-.")[:80] or "model"


def human_size(size: float) -> str:
    """Bytes as a short human string (135.0 MB)."""
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"
