"""Turn "a repo id, a path, or demo" into a local CTranslate2 model directory."""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import LlamaError
from .quiet import quiet_libraries

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

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_repo_id(name: str) -> bool:
    """True for 'owner/name' that is not an existing local path."""
    return bool(_REPO_ID.match(name)) and not Path(name).expanduser().exists()


def resolve(model: str, *, revision: str | None = None) -> Path:
    """Return a local directory for `model`: 'demo', a local directory, or a Hub repo id."""
    model = model.strip()
    if not model:
        raise LlamaError("No model given. Use %llama load MODEL (a directory, a Hub repo id, or demo).")
    if model == "demo":
        from .demo import ensure_demo

        return ensure_demo()
    path = Path(model).expanduser()
    if path.exists():
        return check_model_dir(path)
    if is_repo_id(model):
        return check_model_dir(download(model, revision=revision))
    raise LlamaError(f"No such directory: {model}. Give a converted model's directory, a Hub repo id (owner/name), or demo.")


def check_model_dir(path: Path) -> Path:
    """Make sure `path` holds a CTranslate2 model and its tokenizer."""
    if not path.is_dir():
        raise LlamaError(f"{path} is a file; give the directory that holds model.bin.")
    if not (path / "model.bin").is_file():
        hint = " It looks like a transformers model: convert it with %llama convert." if (path / "config.json").is_file() else ""
        raise LlamaError(f"{path} has no model.bin, so it is not a CTranslate2 model.{hint}")
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        raise LlamaError(f"{path} has no tokenizer files (tokenizer.json, tokenizer_config.json); copy them from the original model.")
    return path


def download(repo_id: str, *, revision: str | None = None, patterns: list[str] = MODEL_FILES,
             ignore: list[str] | None = None) -> Path:
    """Fetch the files matching `patterns` of a Hub repo (or find them in the local cache when offline)."""
    with quiet_libraries():
        return _download(repo_id, revision, patterns, ignore)


def _download(repo_id: str, revision: str | None, patterns: list[str], ignore: list[str] | None) -> Path:
    import huggingface_hub
    from huggingface_hub import errors as hf_errors

    kwargs = {"revision": revision, "allow_patterns": list(patterns), "ignore_patterns": ignore}
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    try:
        return Path(huggingface_hub.snapshot_download(repo_id, local_files_only=offline, **kwargs))
    except hf_errors.GatedRepoError:
        raise LlamaError(f"{repo_id} is gated: accept its licence on the Hub, then log in with `hf auth login`.") from None
    except (hf_errors.RepositoryNotFoundError, hf_errors.RevisionNotFoundError) as e:
        what = f"revision {revision!r} of " if isinstance(e, hf_errors.RevisionNotFoundError) else ""
        raise LlamaError(
            f"The Hub has no {what}{repo_id} (or it is private), and there is no such local directory; check the spelling."
        ) from None
    except hf_errors.HFValidationError:
        raise LlamaError(f"{repo_id} is neither a local directory nor a valid Hugging Face repo id.") from None
    except (hf_errors.LocalEntryNotFoundError, hf_errors.HfHubHTTPError, OSError):
        if not offline:
            try:
                return Path(huggingface_hub.snapshot_download(repo_id, local_files_only=True, **kwargs))
            except Exception:
                pass
        raise LlamaError(
            f"Cannot download {repo_id}: the Hub is unreachable and the model is not in the local cache. "
            "Connect once to download it, or use a local directory (or `%llama load demo`)."
        ) from None
