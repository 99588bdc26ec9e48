"""`%llama convert` / `ct2-magics convert`: a GGUF, safetensors or transformers model to a CTranslate2 folder."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ct2_magics.errors import LlamaError, first_line
from ct2_magics.models.hub import SAFETENSORS_FILES, SAFETENSORS_IGNORE, is_repo_id
from ct2_magics.models.modelfile import check_llama3_rope, read_rope_attributes
from ct2_magics.models.rope import Llama3Rope, apply_llama3_rope, llama3_rope_from_config

if TYPE_CHECKING:
    from ctranslate2.specs.model_spec import ModelSpec

__all__ = [
    "ConvertSummary",
    "DOWNLOAD_PATTERNS",
    "Llama3Rope",
    "apply_llama3_rope",
    "check_llama3_rope",
    "convert",
    "llama3_rope_from_config",
    "read_rope_attributes",
    "valid_quantizations",
]

# What a Hub download may fetch (hub.py owns the lists; these names are kept for existing callers).
DOWNLOAD_PATTERNS: list[str] = SAFETENSORS_FILES
DOWNLOAD_IGNORE: list[str] = SAFETENSORS_IGNORE

TORCH_HINT = (
    'converting this model needs torch, which is not installed: run `pip install torch` '
    '(the CPU build is enough) or `pip install "ct2-magics[convert]"`'
)
DEFAULT_QUANTIZATION = "int8_float16"


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
        return f"{self.output} ({_human_size(self.size_bytes)}, {self.model_type}, {quant}{rope})"


def valid_quantizations() -> tuple[str, ...]:
    """The weight types CTranslate2 accepts for `quantization`."""
    from ctranslate2.specs.model_spec import ACCEPTED_MODEL_TYPES

    return tuple(ACCEPTED_MODEL_TYPES)


def convert(
    source: str,
    output: str | Path,
    *,
    quantization: str | None = DEFAULT_QUANTIZATION,
    revision: str | None = None,
    file: str | None = None,
    force: bool = False,
    progress: Callable[[str], None] = print,
) -> ConvertSummary:
    """Convert a GGUF file, a local model dir or a Hub repo id into a CTranslate2 model dir.

    GGUF files and Llama/Qwen2 safetensors checkpoints are converted with numpy (no torch); other
    transformers architectures go through CTranslate2's own converter, which needs torch.
    """
    if quantization is not None and quantization not in valid_quantizations():
        raise LlamaError(
            f"unknown quantization {quantization!r}; choose one of: {', '.join(valid_quantizations())}"
        )
    out = Path(output).expanduser()
    local = _local_source(source, file)
    if local is not None and revision:
        raise LlamaError(f"--revision applies to a Hugging Face repo id, not to the local directory {source}")
    _check_output(out, local, force)

    if local is None:
        progress(f"Downloading {source}{f' @ {revision}' if revision else ''} ({'one GGUF file' if file else 'safetensors, configs, tokenizer'}) ...")
        local = _download(source, revision, file)
    else:
        progress(f"Reading {local} ...")
    _check_output(out, local, force)
    if local.is_file() or _numpy_convertible(local):
        return _convert_without_torch(source, local, out, quantization, progress)
    return _convert_with_torch(source, local, out, quantization, progress)


def _numpy_convertible(model_dir: Path) -> bool:
    from ct2_magics.models.safetensors_model import is_supported

    return is_supported(model_dir) and any(model_dir.glob("*.safetensors"))


def _convert_without_torch(source: str, local: Path, out: Path, quantization: str | None,
                           progress: Callable[[str], None]) -> ConvertSummary:
    """A GGUF file or Llama/Qwen2 safetensors folder, read with numpy and written with CTranslate2's spec."""
    from ct2_magics.models.cache import convert_into

    if local.is_file():
        from ct2_magics.models.gguf_model import GGUFModel

        model: Any = GGUFModel(local)
        storage = quantization or "float32"
    else:
        from ct2_magics.models.safetensors_model import SafetensorsModel

        model = SafetensorsModel(local)
        storage = quantization or _checkpoint_dtype(model.config)
    rope = model.shape.rope
    extra = " with Llama 3 RoPE scaling" if rope else ""
    progress(f"Converting {model.arch} to CTranslate2 ({storage}){extra}, layer by layer, without torch ...")
    with _staged(out, progress) as built:
        built.mkdir()
        convert_into(model, built, storage, label=local.name)
    return _summary(out, storage, rope is not None, model.arch, source, progress)


def _convert_with_torch(source: str, model_dir: Path, out: Path, quantization: str | None,
                        progress: Callable[[str], None]) -> ConvertSummary:
    """Any architecture CTranslate2's TransformersConverter knows, through torch."""
    _require_torch()
    config = _load_config(model_dir)
    model_type = str(getattr(config, "model_type", "") or "unknown")
    _check_supported(config, model_type)
    rope = llama3_rope_from_config(config)

    quant = quantization or "the checkpoint's dtype"
    extra = " with Llama 3 RoPE scaling" if rope else ""
    progress(f"Converting {model_type} to CTranslate2 ({quant}){extra}; this loads the whole model into memory ...")

    from ct2_magics.models.safetensors_model import copy_side_files

    with _staged(out, progress) as built:
        converter = _converter_class()(str(model_dir), rope)
        try:
            converter.convert(str(built), quantization=quantization)
        except (ValueError, NotImplementedError) as exc:
            raise LlamaError(f"CTranslate2 could not convert {source}: {first_line(exc)}") from None
        if rope is not None and not converter.llama3_applied:
            raise LlamaError(f"{source} asks for llama3 RoPE scaling but its converted spec has no decoder layers to carry it")
        copy_side_files(model_dir, built)
    return _summary(out, quantization, rope is not None, model_type, source, progress)


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


def _summary(out: Path, quantization: str | None, rope: bool, model_type: str, source: str,
             progress: Callable[[str], None]) -> ConvertSummary:
    summary = ConvertSummary(output=out, size_bytes=_dir_size(out), quantization=quantization, llama3_rope=rope,
                             model_type=model_type, source=source)
    progress(f"Converted: {summary.describe()}")
    return summary


def _checkpoint_dtype(config: dict[str, Any]) -> str:
    """The weight type a transformers config names (torch_dtype / dtype), as a CTranslate2 storage type."""
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "float32")
    return dtype if dtype in ("float16", "bfloat16", "float32") else "float32"


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


def _local_source(source: str, file: str | None = None) -> Path | None:
    """The local GGUF file or model directory `source` names, None for a Hub repo id; LlamaError if neither."""
    path = Path(source).expanduser()
    if path.exists():
        if path.is_file():
            from ct2_magics.models.gguf_model import check_magic

            check_magic(path)
            return path.resolve()
        if file or (any(path.glob("*.gguf")) and not (path / "config.json").is_file()):
            from ct2_magics.models.sources import GGUF, local

            found = local(path, file)
            if found.kind == GGUF:
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


def _require_torch() -> None:
    """Raise LlamaError with the install command when torch is missing."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise LlamaError(TORCH_HINT) from None


def _download(repo: str, revision: str | None, file: str | None = None) -> Path:
    """Fetch one GGUF file (with --file), or the safetensors, configs and tokenizer of a Hub repo."""
    from ct2_magics.models.hub import download, fetch

    if file:
        return fetch(repo, revision=revision, file=file).path
    model_dir = download(repo, revision=revision, patterns=DOWNLOAD_PATTERNS, ignore=DOWNLOAD_IGNORE)
    if not (model_dir / "config.json").is_file():
        raise LlamaError(f"{repo} has no config.json; it is not a transformers model repo (for a GGUF repo, add --file)")
    if not any(model_dir.glob("*.safetensors")):
        raise LlamaError(f"{repo} has no .safetensors weights; ct2-magics does not download pickled (.bin) checkpoints")
    return model_dir


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
    try:
        from ctranslate2.converters.transformers import _MODEL_LOADERS
    except ImportError:  # private table; without it the converter reports the problem itself
        return
    if type(config).__name__ not in _MODEL_LOADERS:
        raise LlamaError(f"CTranslate2 cannot convert {model_type} models ({type(config).__name__})")


def _dir_size(path: Path) -> int:
    """Total bytes of the files under `path`."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _human_size(size: int) -> str:
    from ct2_magics.models.cache import human_size

    return human_size(size)
