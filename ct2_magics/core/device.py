"""Where the model runs: the device, the compute type, and the CPU threads CTranslate2 can count on."""

from __future__ import annotations

import os
from typing import Any

from ct2_magics.errors import LlamaError

# On a device that lacks the saved type, the nearest one it has (CPU: int8_float16 -> int8).
_NEAREST = {
    "cpu": {"int8_float16": "int8", "int8_bfloat16": "int8", "float16": "float32", "bfloat16": "float32"},
    "cuda": {"int8": "int8_float16", "int8_float32": "int8_float16", "int8_bfloat16": "int8_float16",
             "bfloat16": "float16", "int16": "float16"},
}


def choose_device(device: str) -> str:
    """Resolve auto|cpu|cuda to a device CTranslate2 has here."""
    import ctranslate2

    if device not in ("auto", "cpu", "cuda"):
        raise LlamaError(f"Unknown device {device!r}; use auto, cpu or cuda.")
    gpus = ctranslate2.get_cuda_device_count()
    if device == "cuda" and gpus == 0:
        raise LlamaError("--device cuda was asked for but no CUDA GPU is visible here; use --device cpu (or auto).")
    return "cuda" if device == "auto" and gpus > 0 else ("cpu" if device == "auto" else device)


def choose_compute_type(requested: str, device: str, saved: str | None) -> tuple[str, str | None]:
    """Return (compute type, a one-line notice or None)."""
    import ctranslate2

    supported = sorted(ctranslate2.get_supported_compute_types(device))
    requested = (requested or "auto").strip().lower()
    if requested in ("auto", "default"):
        if saved is None or saved in supported:
            return (saved or "default"), None
        nearest = _NEAREST.get(device, {}).get(saved, "default")
        if nearest not in supported:
            nearest = "default"
        return nearest, f"The model is stored as {saved}, which the {device} here cannot run; using {nearest}."
    if requested not in supported:
        raise LlamaError(f"Compute type {requested!r} is not supported on {device} here; use one of: {', '.join(supported)} (or auto).")
    return requested, None


def check_request(device: str, compute_type: str) -> None:
    """LlamaError now for a device or compute type this machine lacks, before anything is downloaded or converted."""
    choose_compute_type(compute_type, choose_device(device), None)


def openmp_safe_threads(threads: int, environ: Any = None) -> tuple[int, str | None]:
    """CPU threads CTranslate2 can count on getting, and a notice when the environment forces fewer.

    CTranslate2 splits its work for the threads it asked OpenMP for. When OpenMP hands out fewer, its
    results are wrong (logits off by 10, or NaN, seen here): that happens with OMP_DYNAMIC on, which
    sizes teams by the load average (so only on a busy machine), and with an OMP_THREAD_LIMIT below
    the request. A team of the size OpenMP will really give is always right.
    """
    env = os.environ if environ is None else environ

    def number(name: str) -> int:
        text = env.get(name, "").split(",")[0].strip()
        return int(text) if text.isdigit() else 0

    wanted = threads or number("OMP_NUM_THREADS") or min(4, os.cpu_count() or 1)  # CTranslate2's own default
    if env.get("OMP_DYNAMIC", "").strip().lower() in ("1", "true", "yes", "on") and wanted > 1:
        return 1, ("OMP_DYNAMIC is on, and with it OpenMP gives CTranslate2 fewer threads than it asks for on a busy "
                   "machine, which makes its results wrong: using 1 thread (unset OMP_DYNAMIC to use more).")
    limit = number("OMP_THREAD_LIMIT")
    if 0 < limit < wanted:
        return limit, f"OMP_THREAD_LIMIT is {limit}: using {limit} thread{'s' if limit > 1 else ''}, not {wanted}."
    return threads, None
