"""Cheap reads of a CTranslate2 model directory: the variable index of model.bin, never its tensors."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import BinaryIO, NamedTuple

from ct2_magics.models.quantization import default_storage

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


def read_vocabulary(model_dir: str | Path) -> list[str] | None:
    """The tokens of a converted model, by id (vocabulary.json, or an older conversion's vocabulary.txt); None if unreadable."""
    model_dir = Path(model_dir)
    try:
        if (model_dir / "vocabulary.json").is_file():
            with open(model_dir / "vocabulary.json", encoding="utf-8") as f:
                tokens = json.load(f)
        else:
            tokens = (model_dir / "vocabulary.txt").read_text(encoding="utf-8").split("\n")
            tokens = tokens[:-1] if tokens and tokens[-1] == "" else tokens
    except (OSError, ValueError):
        return None
    return tokens if isinstance(tokens, list) and all(isinstance(t, str) for t in tokens) else None


def read_json(path: Path) -> dict:
    """A JSON file as a dict; {} when missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


LLAMA3_CONTEXT = 131072
_LLAMA3_BOS = "<|begin_of_text|>"
_ROPE_SCALARS = ("rotary_scaling_type", "rotary_scaling_factor", "original_max_position_embeddings")
_SCALAR_FORMATS = {"float32": "<f", "int8": "<b", "int16": "<h", "int32": "<i", "float16": "<e"}


def read_rope_attributes(model_bin: Path) -> dict[str, dict[str, float | int]] | None:
    """Per self-attention layer, the RoPE scalars stored in a CTranslate2 model.bin; None if unreadable."""
    try:
        index = read_index(Path(model_bin).parent)
    except (OSError, ValueError, struct.error, UnicodeDecodeError):
        return None
    layers: dict[str, dict[str, float | int]] = {}
    for name, var in index.items():
        scope, _, attr = name.rpartition("/")
        if scope.endswith("/self_attention") and "/layer_" in scope:
            layers.setdefault(scope, {})
        fmt = _SCALAR_FORMATS.get(var.dtype)
        if attr in _ROPE_SCALARS and not var.shape and fmt and var.data is not None and len(var.data) == struct.calcsize(fmt):
            layers.setdefault(scope, {})[attr] = struct.unpack(fmt, var.data)[0]
    return layers


def check_llama3_rope(model_dir: str | Path) -> str | None:
    """A one-line warning when a converted model looks like Llama 3.1/3.2 without llama3 RoPE scaling."""
    model_dir = Path(model_dir).expanduser()
    rope = read_rope_attributes(model_dir / "model.bin")
    if rope is None:
        return None
    scaling_types = {attrs.get("rotary_scaling_type") for attrs in rope.values()}
    if 2 in scaling_types:
        # CTranslate2's stock Llama loader marks llama3 but omits the factor and original
        # context, whose C++ defaults (1 and 0) turn the scaling into plain RoPE.
        broken = any(
            attrs.get("rotary_scaling_type") == 2
            and (not attrs.get("rotary_scaling_factor") or not attrs.get("original_max_position_embeddings"))
            for attrs in rope.values()
        )
        reason = "was converted with an incomplete llama3 RoPE scaling (CTranslate2's stock converter leaves out its factor)"
        return _rope_warning(model_dir, reason) if broken else None
    if scaling_types - {None}:
        return None
    if _looks_like_llama31(model_dir):
        reason = "looks like Llama 3.1/3.2 (Llama 3 tokens, 131072-token context) but was converted without llama3 RoPE scaling"
        return _rope_warning(model_dir, reason)
    return None


def _looks_like_llama31(model_dir: Path) -> bool:
    """Llama 3 vocabulary plus a 131072-token context in the tokenizer config."""
    config = read_json(model_dir / "config.json")
    tokenizer_config = read_json(model_dir / "tokenizer_config.json")
    llama3_vocab = _LLAMA3_BOS in (config.get("bos_token"), tokenizer_config.get("bos_token"))
    return llama3_vocab and tokenizer_config.get("model_max_length") == LLAMA3_CONTEXT


def _base_model(model_dir: Path) -> str | None:
    """The `base_model:` a Hub README front matter names, if any."""
    try:
        head = (model_dir / "README.md").read_text(encoding="utf-8")[:4000]
    except OSError:
        return None
    match = re.search(r"^base_model:\s*(?:\n\s*-\s*)?['\"]?([\w.-]+/[\w.-]+)", head, re.MULTILINE)
    return match.group(1) if match else None


def _rope_warning(model_dir: Path, reason: str) -> str:
    """The one-line warning with the command that fixes it."""
    source = _base_model(model_dir) or "<original-repo-or-dir>"
    return (
        f"{model_dir} {reason}, so its output drifts from the original model (most on long prompts); "
        f"reconvert it: %llama convert {source} <out> --quantization {default_storage(elsewhere=True)}"
    )


def remote_code(model_dir: str | Path) -> str | None:
    """The code a model folder asks to run (an `auto_map` entry in its configs), or None.

    ct2-magics never runs a model's own code; transformers would ask on stdin, in the cell.
    """
    for name in ("config.json", "tokenizer_config.json", "processor_config.json"):
        auto_map = read_json(Path(model_dir) / name).get("auto_map")
        if not auto_map:
            continue
        refs = auto_map.values() if isinstance(auto_map, dict) else [auto_map]
        for ref in refs:
            for item in ref if isinstance(ref, list) else [ref]:
                if isinstance(item, str) and item:
                    module = item.split("--")[-1].rsplit(".", 1)[0]
                    return f"{name} names {module}.py"
        return f"{name} has an auto_map"
    return None
