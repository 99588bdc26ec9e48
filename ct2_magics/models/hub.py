"""Turn what `%llama load` names (demo, smollm2, a path, a Hub repo id) into a local CTranslate2 model directory."""

from __future__ import annotations

import contextlib
import contextvars
import errno
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ct2_magics.errors import LlamaError, first_line
from ct2_magics.models import sources
from ct2_magics.models.quiet import quiet_libraries

# What a converted model needs, by exact name (a wildcard such as vocabulary.* would also fetch
# vocabulary.py); never code (*.py) and never pickles.
MODEL_FILES = [
    "model.bin",
    "config.json",
    "vocabulary.json",
    "vocabulary.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
    "tokenizer.model",
]
# What a transformers repo may give: safetensors weights, JSON configs, tokenizer files and templates.
# Never pickled checkpoints (*.bin, *.pt, *.pth, *.pkl) and never *.py code.
SAFETENSORS_FILES = ["*.safetensors", "*.json", "*.model", "*.jinja", "merges.txt"]
# Meta's raw checkpoint folder duplicates the weights in another format.
SAFETENSORS_IGNORE = ["original/*"]
KNOWN_FILES = [*MODEL_FILES, *SAFETENSORS_FILES, "*.gguf"]

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class HubUnreachable(LlamaError):
    """The Hub cannot be reached and what was asked for is not in the local cache."""


def is_repo_id(name: str) -> bool:
    """True for 'owner/name' that is not an existing local path."""
    return bool(_REPO_ID.match(name)) and not Path(name).expanduser().exists()


def resolve(model: str, *, revision: str | None = None, file: str | None = None, quantization: str | None = None,
            compute_type: str | None = None, notify: Callable[[str], None] = lambda line: None,
            bar: Callable[[str, int], Any] | None = None) -> Path:
    """A local CTranslate2 directory for `model`, converting a GGUF or safetensors model on first load (telling
    `bar`, a factory like tqdm's, each layer written; see models/cache.py)."""
    from ct2_magics.models import smollm2

    model = model.strip()
    if not model:
        raise LlamaError("No model given. Use %llama load MODEL (smollm2, a .gguf file, a model folder, a Hub repo id).")
    if model == "demo":
        if file or quantization:
            raise LlamaError("--file and --quantization do not apply to the demo model.")
        from ct2_magics.models.demo import ensure_demo

        return ensure_demo()
    label = None
    if model == smollm2.NAME:
        model, label = smollm2.location(), smollm2.LABEL
    path = Path(model).expanduser()
    if path.exists():
        if revision:
            raise LlamaError(f"--revision applies to a Hugging Face repo id, not to the local {model}.")
        source = sources.local(path, file)
    elif is_repo_id(model):
        source = fetch(model, revision=revision, file=file)
    else:
        raise LlamaError(f"No such directory: {model} (nor such a file). Give smollm2, a .gguf file, a model folder, "
                         "or a Hub repo id (owner/name).")
    return prepare(source, label or _label(model, source), quantization=quantization, compute_type=compute_type,
                   notify=notify, bar=bar)


def prepare(source: sources.Source, label: str, *, quantization: str | None, compute_type: str | None,
            notify: Callable[[str], None], bar: Callable[[str, int], Any] | None = None) -> Path:
    """A converted folder as it is; a GGUF file or safetensors folder converted into the cache (once)."""
    from ct2_magics.models import cache as model_cache
    from ct2_magics.models.quantization import storage_type

    if source.kind == sources.CT2:
        if quantization:
            raise LlamaError(f"{source.path} is converted already, so --quantization does not apply; "
                             "use --compute-type to run it in another type.")
        return check_model_dir(source.path)
    storage = storage_type(quantization, compute_type)
    return model_cache.cached(source.path, label=label, quantization=storage, open_model=_opener(source.kind),
                              notify=notify, bar=bar or model_cache.no_bar)


def _opener(kind: str) -> Callable[[Path], Any]:
    if kind == sources.GGUF:
        from ct2_magics.models.gguf_model import GGUFModel

        return GGUFModel
    from ct2_magics.models.safetensors_model import SafetensorsModel

    return SafetensorsModel


def _label(model: str, source: sources.Source) -> str:
    if source.kind == sources.GGUF:
        return source.path.name
    return model if is_repo_id(model) else Path(model).expanduser().resolve().name


def check_model_dir(path: Path) -> Path:
    """Make sure `path` holds a CTranslate2 model and its tokenizer."""
    if not path.is_dir():
        raise LlamaError(f"{path} is a file; give the directory that holds model.bin.")
    if not (path / "model.bin").is_file():
        raise LlamaError(f"{path} has no model.bin, so it is not a CTranslate2 model.")
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        raise LlamaError(f"{path} has no tokenizer files (tokenizer.json, tokenizer_config.json); "
                         "copy them from the original model.")
    return path


# -- the Hub --------------------------------------------------------------------------------------------
def fetch(repo_id: str, *, revision: str | None = None, file: str | None = None) -> sources.Source:
    """Download what the repo's kind of model needs (one GGUF file, or a folder's files); never code or pickles.

    Before listing the repo, the Hub is asked once, without retries, whether it can be reached: when it cannot, what
    the local cache holds is used at once (the listing would retry a dead network for some 25 seconds). One named
    file needs no probe: hf_hub_download tries once and falls back to the cache by itself.
    """
    if file and file.lower().endswith(".gguf"):
        return sources.Source(sources.GGUF, download_file(repo_id, file, revision=revision))
    if not _offline() and not reachable(repo_id, revision):
        with _cache_only():
            return fetch(repo_id, revision=revision, file=file)
    names = repo_files(repo_id, revision=revision)
    kind = sources.kind_of_listing(names, file, repo_id)
    if kind == sources.GGUF:
        name = sources.pick_gguf(names, file, repo_id)
        return sources.Source(kind, download_file(repo_id, name, revision=revision))
    if kind == sources.CT2:
        return sources.Source(kind, download(repo_id, revision=revision))
    return sources.Source(kind, download(repo_id, revision=revision, patterns=SAFETENSORS_FILES, ignore=SAFETENSORS_IGNORE))


def repo_files(repo_id: str, *, revision: str | None = None) -> list[str]:
    """The repo's file names; offline or unreachable, those of its copy in the local cache."""
    import huggingface_hub

    if not _offline():
        try:
            with quiet_libraries():
                return list(huggingface_hub.list_repo_files(repo_id, revision=revision))
        except Exception as e:  # network errors come as several types (httpx's, OSError's, the Hub's own)
            _raise_for_repo(e, repo_id, revision)
    # What the cache holds of the files any kind of model needs (the patterns only name what is looked for).
    snapshot = _cached(huggingface_hub.snapshot_download, repo_id, revision, {"allow_patterns": KNOWN_FILES})
    root = Path(snapshot)
    return [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]


def download(repo_id: str, *, revision: str | None = None, patterns: list[str] = MODEL_FILES,
             ignore: list[str] | None = None) -> Path:
    """Fetch the files matching `patterns` of a Hub repo (or find them in the local cache when offline)."""
    import huggingface_hub

    kwargs = {"revision": revision, "allow_patterns": list(patterns), "ignore_patterns": ignore}
    return Path(_with_cache_fallback(huggingface_hub.snapshot_download, repo_id, revision, kwargs))


def download_file(repo_id: str, filename: str, *, revision: str | None = None) -> Path:
    """Fetch one file of a Hub repo (a GGUF) with a progress bar, or find it in the local cache."""
    import huggingface_hub

    kwargs = {"filename": filename, "revision": revision}
    return Path(_with_cache_fallback(huggingface_hub.hf_hub_download, repo_id, revision, kwargs))


def reachable(repo_id: str, revision: str | None = None) -> bool:
    """Whether the Hub answers one request about the repo (any answer, "no such repo" included) within PROBE_S."""
    import huggingface_hub
    from huggingface_hub import errors as hf_errors

    try:
        with quiet_libraries():
            huggingface_hub.model_info(repo_id, revision=revision, timeout=PROBE_S, expand=["sha"])
    except hf_errors.HfHubHTTPError as e:  # the Hub's own answer; a 5xx is a Hub that is down
        return e.response is not None and e.response.status_code < 500
    except Exception:  # a network that is down: httpx's errors, OSError's, timeouts
        return False
    return True


# One try, this long: a refused or unresolvable address fails at once; this bounds a network that drops packets.
PROBE_S = 2.0
_CACHE_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("ct2_magics_hub_cache_only", default=False)


@contextlib.contextmanager
def _cache_only() -> Iterator[None]:
    token = _CACHE_ONLY.set(True)
    try:
        yield
    finally:
        _CACHE_ONLY.reset(token)


def _offline() -> bool:
    return _CACHE_ONLY.get() or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _with_cache_fallback(fn: Callable[..., str], repo_id: str, revision: str | None, kwargs: dict[str, Any]) -> str:
    if not _offline():
        try:
            with quiet_libraries():
                return fn(repo_id, **kwargs)
        except Exception as e:
            _raise_for_repo(e, repo_id, revision)
    return _cached(fn, repo_id, revision, kwargs)


def _cached(fn: Callable[..., str], repo_id: str, revision: str | None, kwargs: dict[str, Any] | None = None) -> str:
    """What the local cache holds; HubUnreachable when it holds nothing for this repo."""
    try:
        with quiet_libraries():
            return fn(repo_id, **{"revision": revision, **(kwargs or {})}, local_files_only=True)
    except Exception as e:
        _raise_for_repo(e, repo_id, revision)
        raise HubUnreachable(
            f"Cannot download {repo_id}: the Hub is unreachable and the model is not in the local cache. "
            "Connect once to download it, or use a local file or folder (or `%llama load smollm2`)."
        ) from None


def _raise_for_repo(error: BaseException, repo_id: str, revision: str | None) -> None:
    """Raise the one-line LlamaError for an answer of the Hub about this repo; return for network trouble."""
    from huggingface_hub import errors as hf_errors

    if isinstance(error, hf_errors.GatedRepoError):
        raise LlamaError(f"{repo_id} is gated: accept its licence on the Hub, then log in with `hf auth login`.") from None
    if isinstance(error, (hf_errors.RepositoryNotFoundError, hf_errors.RevisionNotFoundError)):
        what = f"revision {revision!r} of " if isinstance(error, hf_errors.RevisionNotFoundError) else ""
        raise LlamaError(
            f"The Hub has no {what}{repo_id} (or it is private), and there is no such local file or folder; check the spelling."
        ) from None
    if isinstance(error, hf_errors.EntryNotFoundError) and not isinstance(error, hf_errors.LocalEntryNotFoundError):
        raise LlamaError(f"{repo_id} has no such file ({first_line(error, 120)}).") from None
    if isinstance(error, hf_errors.HFValidationError):
        raise LlamaError(f"{repo_id} is neither a local file or folder nor a valid Hugging Face repo id.") from None
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        raise LlamaError(f"The disk filled up while downloading {repo_id}; free some space (or set HF_HOME to a "
                         "bigger disk) and load it again.") from None
