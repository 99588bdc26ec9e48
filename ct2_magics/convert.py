"""Convert a transformers checkpoint to CTranslate2, keeping Llama 3.1/3.2 RoPE scaling."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ct2_magics.errors import LlamaError
from ct2_magics.hub import is_repo_id
from ct2_magics.modelfile import check_llama3_rope, read_rope_attributes

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

# What a Hub download may fetch: safetensors weights, JSON configs, tokenizer files and
# templates. Never pickled checkpoints (*.bin, *.pt, *.pth, *.pkl) and never *.py code.
DOWNLOAD_PATTERNS: list[str] = [
    "*.safetensors",
    "*.json",
    "*.model",
    "*.jinja",
    "merges.txt",
]
# Meta's raw checkpoint folder duplicates the weights in another format.
DOWNLOAD_IGNORE: list[str] = ["original/*"]

# Files copied beside model.bin so AutoTokenizer and chat templates work from the output.
SIDE_FILES: tuple[str, ...] = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)
# CTranslate2 writes these itself; a same-named source file must never replace them.
CT2_FILES: frozenset[str] = frozenset({"model.bin", "config.json", "vocabulary.json", "vocabulary.txt"})

TORCH_HINT = (
    'converting needs torch, which is not installed: run `pip install torch` '
    '(the CPU build is enough) or `pip install "ct2-magics[convert]"`'
)



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


@dataclass(frozen=True)
class Llama3Rope:
    """The llama3 `rope_scaling` parameters of a transformers config."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int
    rope_theta: float


def valid_quantizations() -> tuple[str, ...]:
    """The weight types CTranslate2 accepts for `quantization`."""
    from ctranslate2.specs.model_spec import ACCEPTED_MODEL_TYPES

    return tuple(ACCEPTED_MODEL_TYPES)


def convert(
    source: str,
    output: str | Path,
    *,
    quantization: str | None = "int8_float16",
    revision: str | None = None,
    force: bool = False,
    progress: Callable[[str], None] = print,
) -> ConvertSummary:
    """Convert a local transformers model dir or Hub repo id into a CTranslate2 model dir."""
    if quantization is not None and quantization not in valid_quantizations():
        raise LlamaError(
            f"unknown quantization {quantization!r}; choose one of: {', '.join(valid_quantizations())}"
        )
    out = Path(output).expanduser()
    local = _local_source(source)
    if local is not None and revision:
        raise LlamaError(f"--revision applies to a Hugging Face repo id, not to the local directory {source}")
    _check_output(out, local, force)
    _require_torch()

    if local is None:
        progress(f"Downloading {source}{f' @ {revision}' if revision else ''} (safetensors, configs, tokenizer) ...")
        model_dir = _download(source, revision)
    else:
        progress(f"Reading {local} ...")
        model_dir = local
    _check_output(out, model_dir, force)

    config = _load_config(model_dir)
    model_type = str(getattr(config, "model_type", "") or "unknown")
    _check_supported(config, model_type)
    rope = llama3_rope_from_config(config)

    quant = quantization or "the checkpoint's dtype"
    extra = " with Llama 3 RoPE scaling" if rope else ""
    progress(f"Converting {model_type} to CTranslate2 ({quant}){extra}; this loads the whole model into memory ...")

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        built = staging / "model"
        converter = _converter_class()(str(model_dir), rope)
        try:
            converter.convert(str(built), quantization=quantization)
        except (ValueError, NotImplementedError) as exc:
            raise LlamaError(f"CTranslate2 could not convert {source}: {_first_line(exc)}") from None
        if rope is not None and not converter.llama3_applied:
            raise LlamaError(f"{source} asks for llama3 RoPE scaling but its converted spec has no decoder layers to carry it")
        progress(f"Writing {out} ...")
        _copy_side_files(model_dir, built)
        if out.exists():
            shutil.rmtree(out)
        os.replace(built, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    summary = ConvertSummary(
        output=out,
        size_bytes=_dir_size(out),
        quantization=quantization,
        llama3_rope=rope is not None,
        model_type=model_type,
        source=source,
    )
    progress(f"Converted: {summary.describe()}")
    return summary


def llama3_rope_from_config(config: Any) -> Llama3Rope | None:
    """The llama3 RoPE parameters of a transformers config, or None for other RoPE types."""
    # transformers 5 names the dict rope_parameters; 4.x keeps rope_scaling plus top-level rope_theta.
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    if not isinstance(rope, dict):
        return None
    if (rope.get("rope_type") or rope.get("type")) != "llama3":
        return None
    try:
        return Llama3Rope(
            factor=float(rope["factor"]),
            low_freq_factor=float(rope["low_freq_factor"]),
            high_freq_factor=float(rope["high_freq_factor"]),
            original_max_position_embeddings=int(rope["original_max_position_embeddings"]),
            rope_theta=float(rope.get("rope_theta") or getattr(config, "rope_theta", None) or 10000.0),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise LlamaError(f"config.json has llama3 rope_scaling without a usable {exc} entry") from None


def apply_llama3_rope(spec: ModelSpec, rope: Llama3Rope) -> bool:
    """Write llama3 RoPE scaling into every decoder self-attention of a spec; False if none."""
    import numpy as np
    from ctranslate2.specs.attention_spec import RotaryScalingType

    layers = getattr(getattr(spec, "decoder", None), "layer", None) or []
    values = {
        "rotary_scaling_type": np.int8(RotaryScalingType.Llama3),
        "rotary_scaling_factor": np.float32(rope.factor),
        "rotary_low_freq_factor": np.float32(rope.low_freq_factor),
        "rotary_high_freq_factor": np.float32(rope.high_freq_factor),
        "original_max_position_embeddings": np.int32(rope.original_max_position_embeddings),
        # The stock loader reads rope_theta from rope_scaling only, which transformers 4.x leaves out.
        "rotary_base": np.float32(rope.rope_theta),
    }
    patched = 0
    for layer in layers:
        attention = getattr(layer, "self_attention", None)
        if attention is None:
            continue
        for name, value in values.items():
            # Specs refuse new attributes after __init__; these are ones the C++ side reads.
            object.__setattr__(attention, name, value)
        patched += 1
    return patched > 0


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


def _local_source(source: str) -> Path | None:
    """The local model directory `source` names, None for a Hub repo id; LlamaError if neither."""
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise LlamaError(f"{source} is a file; give a transformers model directory or a Hugging Face repo id")
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


def _download(repo: str, revision: str | None) -> Path:
    """Fetch the safetensors, configs and tokenizer of a Hub repo; return the snapshot dir."""
    from .hub import download

    model_dir = download(repo, revision=revision, patterns=DOWNLOAD_PATTERNS, ignore=DOWNLOAD_IGNORE)
    if not (model_dir / "config.json").is_file():
        raise LlamaError(f"{repo} has no config.json; it is not a transformers model repo")
    if not any(model_dir.glob("*.safetensors")):
        raise LlamaError(f"{repo} has no .safetensors weights; ct2-magics does not download pickled (.bin) checkpoints")
    return model_dir


def _load_config(model_dir: Path) -> Any:
    """The transformers config of `model_dir`, without running repository code."""
    import transformers

    from .modelfile import remote_code

    code = remote_code(model_dir)
    if code is not None:
        raise LlamaError(f"{model_dir} asks to run its own Python code ({code}); ct2-magics never runs code from a model")
    try:
        return transformers.AutoConfig.from_pretrained(str(model_dir), trust_remote_code=False)
    except Exception as exc:  # unknown model_type, custom code, malformed JSON all surface differently
        raise LlamaError(f"{model_dir} is not a model transformers can read: {_first_line(exc)}") from None


def _check_supported(config: Any, model_type: str) -> None:
    """Fail early when CTranslate2 has no loader for this config class."""
    try:
        from ctranslate2.converters.transformers import _MODEL_LOADERS
    except ImportError:  # private table; without it the converter reports the problem itself
        return
    if type(config).__name__ not in _MODEL_LOADERS:
        raise LlamaError(f"CTranslate2 cannot convert {model_type} models ({type(config).__name__})")


def _copy_side_files(model_dir: Path, dest: Path) -> list[str]:
    """Copy tokenizer, chat template and generation config files beside model.bin."""
    names = list(SIDE_FILES) + sorted(p.name for p in model_dir.glob("*.model"))
    copied: list[str] = []
    for name in dict.fromkeys(names):
        src = model_dir / name
        if name in CT2_FILES or not src.is_file() or (dest / name).exists():
            continue
        shutil.copyfile(src, dest / name)
        copied.append(name)
    return copied


def _dir_size(path: Path) -> int:
    """Total bytes of the files under `path`."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _human_size(size: int) -> str:
    """Bytes as a short human string."""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def _first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception message."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


# ---------------------------------------------------------------------------
# Cheap check of an already converted model
