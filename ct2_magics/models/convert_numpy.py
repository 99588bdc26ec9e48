"""The converter without torch: a GGUF file or a Llama/Qwen2 safetensors folder, read with numpy one tensor at a
time and written with CTranslate2's spec."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ct2_magics.models.cache import convert_into, no_bar
from ct2_magics.models.safetensors_model import SafetensorsModel, is_supported


def convertible(local: Path) -> bool:
    """Whether this converter reads `local`: a GGUF file, or a safetensors folder of an architecture it knows."""
    return local.is_file() or (is_supported(local) and any(local.glob("*.safetensors")))


class NumpyConversion:
    """One conversion, checked and announced when made; `write` fills the output folder."""

    def __init__(self, local: Path, quantization: str | None, progress: Callable[[str], None],
                 bar: Callable[[str, int], Any] | None = None) -> None:
        self.bar = bar or no_bar
        if local.is_file():
            from ct2_magics.models.gguf_model import GGUFModel

            self.model: Any = GGUFModel(local)
            self.quantization: str | None = quantization or "float32"
        else:
            self.model = SafetensorsModel(local)
            self.quantization = quantization or _checkpoint_dtype(self.model.config)
        self.label = local.name
        self.model_type: str = self.model.arch
        self.llama3_rope = self.model.shape.rope is not None
        extra = " with Llama 3 RoPE scaling" if self.llama3_rope else ""
        progress(f"Converting {self.model_type} to CTranslate2 ({self.quantization}){extra}, layer by layer, "
                 "without torch ...")

    def write(self, built: Path) -> None:
        built.mkdir()
        convert_into(self.model, built, self.quantization, label=self.label, bar=self.bar)


def _checkpoint_dtype(config: dict[str, Any]) -> str:
    """The weight type a transformers config names (torch_dtype / dtype), as a CTranslate2 storage type."""
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "float32")
    return dtype if dtype in ("float16", "bfloat16", "float32") else "float32"
