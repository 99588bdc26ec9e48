"""Cheap reads of a CTranslate2 model directory: the variable index of model.bin, never its tensors."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import BinaryIO, NamedTuple

_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")


class Variable(NamedTuple):
    """One entry of model.bin's index: shape, dtype, and the bytes of small variables."""

    shape: tuple[int, ...]
    dtype: str
    data: bytes | None


def _read(f: BinaryIO, fmt: str) -> int:
    size = struct.calcsize(fmt)
    raw = f.read(size)
    if len(raw) != size:
        raise ValueError("model.bin ends early")
    return struct.unpack(fmt, raw)[0]


def _read_string(f: BinaryIO) -> str:
    length = _read(f, "H")
    raw = f.read(length)
    if len(raw) != length:
        raise ValueError("model.bin ends early")
    return raw[:-1].decode("utf-8")


def read_index(model_dir: str | Path, keep_bytes: int = 64) -> dict[str, Variable]:
    """Return every variable's shape and dtype, seeking past tensor data (ms even for 8 GB files)."""
    index: dict[str, Variable] = {}
    path = Path(model_dir) / "model.bin"
    size = path.stat().st_size
    with open(path, "rb") as f:
        _read(f, "I")  # binary version
        _read_string(f)  # spec name
        _read(f, "I")  # spec revision
        for _ in range(_read(f, "I")):
            name = _read_string(f)
            shape = tuple(_read(f, "I") for _ in range(_read(f, "B")))
            type_id = _read(f, "B")
            num_bytes = _read(f, "I")
            if type_id >= len(_DTYPES) or f.tell() + num_bytes > size:
                raise ValueError("model.bin is corrupt or truncated")
            data = f.read(num_bytes) if num_bytes <= keep_bytes else None
            if data is None:
                f.seek(num_bytes, 1)
            index[name] = Variable(shape, _DTYPES[type_id], data)
    return index


def saved_compute_type(model_dir: str | Path) -> str | None:
    """The quantization the model was saved with (e.g. int8_float16), or None if unreadable."""
    try:
        index = read_index(model_dir)
    except (OSError, ValueError, struct.error):
        return None
    weights = [v for n, v in index.items() if n.endswith("/weight") and len(v.shape) == 2]
    if not weights:
        return None
    big = max(weights, key=lambda v: v.shape[0] * v.shape[1]).dtype
    others = {v.dtype for n, v in index.items() if v.dtype.startswith(("float", "bfloat")) and len(v.shape) >= 1}
    if big == "int8":
        for t in ("bfloat16", "float16"):
            if t in others:
                return f"int8_{t}"
        return "int8_float32" if "float32" in others else "int8"
    return big


def read_json(path: Path) -> dict:
    """A JSON file as a dict; {} when missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
