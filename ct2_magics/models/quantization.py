"""The weight types a converted model is stored in, and the one stored when none is asked: one table for
`%llama load`, `%llama convert`, `ct2-magics convert` and their help."""

from __future__ import annotations

from ct2_magics.errors import LlamaError

# What we write, as CTranslate2 names it. CTranslate2 also accepts int16, which we refuse (INT16).
STORAGE_TYPES = ("int8", "int8_float32", "int8_float16", "int8_bfloat16", "float16", "bfloat16", "float32")
INT16 = ("int16 is not offered: CTranslate2 stores an int16 tensor with one scale for the whole tensor, and a "
         "model converted so wrote gibberish; use int8 (or float16 to keep more precision).")
# convert only: keep the checkpoint's own dtype.
KEEP = "none"
# Words that ask for no type in particular, as --compute-type takes them.
UNSAID = ("", "auto", "default")


def default_storage(compute_type: str | None = None, *, elsewhere: bool = False) -> str:
    """The type stored when none is asked: int8 weights, the other tensors in the precision the model will run in.

    `%llama load` converts into this machine's cache, to run here with `compute_type`: that type when it is one
    we store (float16, float32 ...), else int8, whose other tensors are float32, as a CPU computes them (an
    int8_float16 model is cast on every CPU load, with a notice; a GPU runs int8 as int8_float16).
    `convert` writes a folder to run elsewhere, most often on a GPU (as the reference model does): int8_float16,
    which a GPU runs as it is and a CPU as int8. README promises both: int8 on load, int8_float16 from convert.
    """
    if elsewhere:
        return "int8_float16"
    asked = (compute_type or "").strip().lower()
    return asked if asked in STORAGE_TYPES else "int8"


def storage_type(quantization: str | None, compute_type: str | None = None, *, elsewhere: bool = False) -> str:
    """The type to store: `quantization` when it names one (LlamaError when it names none we write), else the default."""
    asked = (quantization or "").strip().lower()
    if asked in UNSAID:
        return default_storage(compute_type, elsewhere=elsewhere)
    if asked == "int16":
        raise LlamaError(INT16)
    if asked not in STORAGE_TYPES:
        raise LlamaError(f"unknown quantization {quantization!r}; use one of: {', '.join(STORAGE_TYPES)}.")
    return asked


def help_text(*, elsewhere: bool) -> str:
    """The types for --quantization help, the default first."""
    default = default_storage(elsewhere=elsewhere)
    return ", ".join([f"{default} (default)", *(t for t in STORAGE_TYPES if t != default)])


def bytes_per_weight(storage: str) -> int:
    """Bytes one weight of a matrix takes in this storage type."""
    return 1 if storage.startswith("int8") else 4 if storage == "float32" else 2


def value_bytes(compute_type: str) -> int:
    """Bytes of one activation (or cached K/V value) when a model computes in `compute_type`."""
    return 2 if compute_type.endswith(("float16", "bfloat16")) else 4
