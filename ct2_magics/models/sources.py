"""What `%llama load X` points to: a GGUF file, a converted CTranslate2 folder, a transformers safetensors folder."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ct2_magics.errors import LlamaError

CT2, GGUF, SAFETENSORS = "ctranslate2", "gguf", "safetensors"
# A quantization name inside a GGUF file name: Q4_K_M, Q8_0, IQ4_XS, F16, BF16 ...
_QUANT = re.compile(r"(?<![A-Za-z0-9])(I?Q\d(?:_[A-Z0-9]+)*|BF16|F16|F32)(?![A-Za-z0-9])", re.IGNORECASE)
_SPLIT = re.compile(r"-\d{5}-of-\d{5}\.gguf$", re.IGNORECASE)


@dataclass(frozen=True)
class Source:
    """A local model source: its kind and where it is (a file for GGUF, else a folder)."""

    kind: str
    path: Path


def quantization_of(name: str) -> str | None:
    """The quantization a GGUF file name carries (SmolLM2-135M-Instruct.Q4_1.gguf -> Q4_1), if any."""
    found = _QUANT.findall(PurePosixPath(name).stem)
    return found[-1].upper() if found else None


def pick_gguf(names: Iterable[str], wanted: str | None, where: str) -> str:
    """The one GGUF file among `names` that `wanted` (a file name or a quantization) selects."""
    ggufs = sorted(n for n in names if n.lower().endswith(".gguf"))
    if wanted:
        exact = [n for n in ggufs if n == wanted or PurePosixPath(n).name == wanted]
        by_quant = [n for n in ggufs if (quantization_of(n) or "").lower() == wanted.lower().removesuffix(".gguf")]
        matches = exact or by_quant
        if not matches:
            raise LlamaError(f"{where} has no GGUF file {wanted!r}; it has: {_listing(ggufs)}.")
        ggufs = matches
    if not ggufs:
        raise LlamaError(f"{where} holds no .gguf file.")
    if len(ggufs) > 1:
        raise LlamaError(f"{where} holds several GGUF files; pick one with --file NAME.gguf or a quantization "
                         f"({_listing(ggufs)}).")
    if _SPLIT.search(ggufs[0]):
        raise LlamaError(f"{ggufs[0]} is one part of a split GGUF; merge the parts with llama.cpp's gguf-split "
                         "--merge first, or load the model's safetensors repo.")
    return ggufs[0]


def kind_of_listing(names: Iterable[str], file: str | None, where: str) -> str:
    """Which kind of model a folder or repo holds, from its file names."""
    names = set(names)
    top = {n for n in names if "/" not in n}
    if file:
        return GGUF
    if "model.bin" in top:
        return CT2
    if "config.json" in top and any(n.endswith(".safetensors") for n in top):
        return SAFETENSORS
    if any(n.lower().endswith(".gguf") for n in names):
        return GGUF
    if "config.json" in top:
        raise LlamaError(f"{where} has a config.json but no weights this loader reads (model.bin, .safetensors "
                         "or .gguf); ct2-magics never loads pickled (.bin/.pt) checkpoints.")
    raise LlamaError(f"{where} holds no model weights (no model.bin, .safetensors or .gguf files).")


def local(path: Path, file: str | None = None) -> Source:
    """Identify a local file or folder."""
    if path.is_file():
        if file:
            raise LlamaError(f"--file picks a file inside a folder or Hub repo; {path} is already a file.")
        return Source(GGUF, path)
    # A folder's own .cache (huggingface_hub's download bookkeeping) is not the model; the folder itself may
    # well sit under ~/.cache.
    inside = (p.relative_to(path) for p in path.rglob("*") if p.is_file())
    names = [rel.as_posix() for rel in inside if ".cache" not in rel.parts]
    kind = kind_of_listing(names, file, str(path))
    if kind == GGUF:
        return Source(GGUF, path / pick_gguf(names, file, str(path)))
    return Source(kind, path)


def _listing(names: list[str], most: int = 8) -> str:
    shown = [f"{quantization_of(n) or '?'} ({PurePosixPath(n).name})" for n in names[:most]]
    return ", ".join(shown) + (f", and {len(names) - most} more" if len(names) > most else "") if names else "none"
