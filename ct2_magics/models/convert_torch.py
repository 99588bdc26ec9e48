"""The converter with torch: any architecture CTranslate2's TransformersConverter knows, plus the llama3 RoPE
scaling its Llama loader leaves out."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ct2_magics.errors import LlamaError, first_line
from ct2_magics.models.rope import Llama3Rope, apply_llama3_rope, llama3_rope_from_config
from ct2_magics.models.safetensors_model import copy_side_files

if TYPE_CHECKING:
    from ctranslate2.specs.model_spec import ModelSpec

TORCH_HINT = (
    'converting this model needs torch, which is not installed: run `pip install torch` '
    '(the CPU build is enough) or `pip install "ct2-magics[convert]"`'
)


class TorchConversion:
    """One conversion, checked and announced when made (torch present, config readable, architecture known)."""

    def __init__(self, source: str, model_dir: Path, quantization: str | None, progress: Callable[[str], None]) -> None:
        _require_torch()
        config = _load_config(model_dir)
        self.model_type = str(getattr(config, "model_type", "") or "unknown")
        _check_supported(config, self.model_type)
        self.source, self.model_dir, self.quantization = source, model_dir, quantization
        self.rope = llama3_rope_from_config(config)
        self.llama3_rope = self.rope is not None
        quant = quantization or "the checkpoint's dtype"
        extra = " with Llama 3 RoPE scaling" if self.rope else ""
        progress(f"Converting {self.model_type} to CTranslate2 ({quant}){extra}; this loads the whole model into memory ...")

    def write(self, built: Path) -> None:
        converter = _converter_class()(str(self.model_dir), self.rope)
        try:
            converter.convert(str(built), quantization=self.quantization)
        except (ValueError, NotImplementedError) as exc:
            raise LlamaError(f"CTranslate2 could not convert {self.source}: {first_line(exc)}") from None
        if self.rope is not None and not converter.llama3_applied:
            raise LlamaError(f"{self.source} asks for llama3 RoPE scaling but its converted spec has no decoder layers "
                             "to carry it")
        copy_side_files(self.model_dir, built)


def _converter_class() -> type:
    """A TransformersConverter subclass that adds llama3 RoPE scaling (built lazily: ctranslate2 imports)."""
    from ctranslate2.converters import TransformersConverter

    class _Llama3AwareConverter(TransformersConverter):
        """Stock converter plus the llama3 RoPE fields its Llama loader leaves unset."""

        def __init__(self, model_dir: str, rope: Llama3Rope | None) -> None:
            super().__init__(model_dir, trust_remote_code=False)
            self._rope = rope
            self.llama3_applied = False

        def _load(self) -> ModelSpec:
            spec = super()._load()
            if spec is not None and self._rope is not None:
                self.llama3_applied = apply_llama3_rope(spec, self._rope)
            return spec

    return _Llama3AwareConverter


def _require_torch() -> None:
    """Raise LlamaError with the install command when torch is missing."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise LlamaError(TORCH_HINT) from None


def _load_config(model_dir: Path) -> Any:
    """The transformers config of `model_dir`, without running repository code."""
    import transformers

    from ct2_magics.models.modelfile import remote_code

    code = remote_code(model_dir)
    if code is not None:
        raise LlamaError(f"{model_dir} asks to run its own Python code ({code}); ct2-magics never runs code from a model")
    try:
        return transformers.AutoConfig.from_pretrained(str(model_dir), trust_remote_code=False)
    except Exception as exc:  # unknown model_type, custom code, malformed JSON all surface differently
        raise LlamaError(f"{model_dir} is not a model transformers can read: {first_line(exc)}") from None


def _check_supported(config: Any, model_type: str) -> None:
    """Fail early when CTranslate2 has no loader for this config class."""
    # CTranslate2 has no public list of the architectures its TransformersConverter reads; its private table
    # _MODEL_LOADERS is that list. pyproject bounds ctranslate2 below 5, and tests/test_private_names.py fails by
    # name if it goes (here we would only lose the early, clear refusal).
    try:
        from ctranslate2.converters.transformers import _MODEL_LOADERS
    except ImportError:  # private table; without it the converter reports the problem itself
        return
    if type(config).__name__ not in _MODEL_LOADERS:
        raise LlamaError(f"CTranslate2 cannot convert {model_type} models ({type(config).__name__})")
