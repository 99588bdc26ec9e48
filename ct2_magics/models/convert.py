"""`%llama convert` / `ct2-magics convert`: a GGUF, safetensors or transformers model to a CTranslate2 folder.

What to read and where to write; the converters themselves are convert_numpy (no torch) and convert_torch.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ct2_magics.errors import LlamaError
from ct2_magics.models import sources
from ct2_magics.models.cache import human_size
from ct2_magics.models.convert_numpy import NumpyConversion, convertible
from ct2_magics.models.convert_torch import TorchConversion
from ct2_magics.models.gguf_model import check_magic
from ct2_magics.models.hub import SAFETENSORS_FILES, SAFETENSORS_IGNORE, download, fetch, is_repo_id
from ct2_magics.models.quantization import default_storage, storage_type


@dataclass(frozen=True)
class ConvertSummary:
    """What `convert` wrote."""

    output: Path
    size_bytes: int
    quantization: str | None
    llama3_rope: bool
    model_type: str
    source: str = ""

    def describe(self) -> str:
        """One line for the user: path, size, quantization, RoPE note."""
        quant = self.quantization or "checkpoint dtype"
        rope = ", Llama 3 RoPE scaling kept" if self.llama3_rope else ""
        return f"{self.output} ({human_size(self.size_bytes)}, {self.model_type}, {quant}{rope})"


def convert(
    source: str,
    output: str | Path,
    *,
    quantization: str | None = default_storage(elsewhere=True),
    revision: str | None = None,
    file: str | None = None,
    force: bool = False,
    progress: Callable[[str], None] = print,
    bar: Callable[[str, int], Any] | None = None,
) -> ConvertSummary:
    """Convert a GGUF file, a local model dir or a Hub repo id into a CTranslate2 model dir.

    GGUF files and Llama/Qwen2 safetensors checkpoints are converted with numpy (no torch); other
    transformers architectures go through CTranslate2's own converter, which needs torch.
    quantization=None keeps the checkpoint's dtype.
    """
    if quantization is not None:
        quantization = storage_type(quantization, elsewhere=True)
    out = Path(output).expanduser()
    local = _local_source(source, file)
    if local is not None and revision:
        raise LlamaError(f"--revision applies to a Hugging Face repo id, not to the local directory {source}")
    _check_output(out, local, force)

    if local is None:
        what = "one GGUF file" if file else "safetensors, configs, tokenizer"
        progress(f"Downloading {source}{f' @ {revision}' if revision else ''} ({what}) ...")
        local = _download(source, revision, file)
    else:
        progress(f"Reading {local} ...")
    _check_output(out, local, force)
    if convertible(local):
        job: NumpyConversion | TorchConversion = NumpyConversion(local, quantization, progress, bar)
    else:
        job = TorchConversion(source, local, quantization, progress)
    with _staged(out, progress) as built:
        job.write(built)
    summary = ConvertSummary(output=out, size_bytes=_dir_size(out), quantization=job.quantization,
                             llama3_rope=job.llama3_rope, model_type=job.model_type, source=source)
    progress(f"Converted: {summary.describe()}")
    return summary


@contextlib.contextmanager
def _staged(out: Path, progress: Callable[[str], None]) -> Iterator[Path]:
    """A folder to build the model in, beside `out`; it replaces `out` only when the build has succeeded."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        built = staging / "model"
        yield built
        progress(f"Writing {out} ...")
        if out.exists():
            shutil.rmtree(out)
        os.replace(built, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _local_source(source: str, file: str | None = None) -> Path | None:
    """The local GGUF file or model directory `source` names, None for a Hub repo id; LlamaError if neither."""
    path = Path(source).expanduser()
    if path.exists():
        if path.is_file():
            check_magic(path)
            return path.resolve()
        if file or (any(path.glob("*.gguf")) and not (path / "config.json").is_file()):
            found = sources.local(path, file)
            if found.kind == sources.GGUF:
                return found.path.resolve()
        if not (path / "config.json").is_file():
            raise LlamaError(f"{source} is not a transformers model directory (no config.json in it)")
        return path.resolve()
    if is_repo_id(source) and not source.startswith((".", "~")):
        return None
    raise LlamaError(f"{source} does not exist and is not a Hugging Face repo id like meta-llama/Llama-3.2-1B-Instruct")


def _check_output(out: Path, source_dir: Path | None, force: bool) -> None:
    """Refuse an output that is a file, non-empty without force, or would swallow the source."""
    if out.exists() and not out.is_dir():
        raise LlamaError(f"output {out} is a file; give a directory path")
    if source_dir is not None:
        src, dst = source_dir.resolve(), out.resolve()
        if src == dst or dst in src.parents:
            raise LlamaError(f"output {out} would replace the source model; choose another directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise LlamaError(f"output {out} exists and is not empty; choose another directory or pass --force to replace it")


def _download(repo: str, revision: str | None, file: str | None = None) -> Path:
    """Fetch one GGUF file (with --file), or the safetensors, configs and tokenizer of a Hub repo."""
    if file:
        return fetch(repo, revision=revision, file=file).path
    model_dir = download(repo, revision=revision, patterns=SAFETENSORS_FILES, ignore=SAFETENSORS_IGNORE)
    if not (model_dir / "config.json").is_file():
        raise LlamaError(f"{repo} has no config.json; it is not a transformers model repo (for a GGUF repo, add --file)")
    if not any(model_dir.glob("*.safetensors")):
        raise LlamaError(f"{repo} has no .safetensors weights; ct2-magics does not download pickled (.bin) checkpoints")
    return model_dir


def _dir_size(path: Path) -> int:
    """Total bytes of the files under `path`."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
