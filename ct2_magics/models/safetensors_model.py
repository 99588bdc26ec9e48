"""A transformers model folder read without torch: config.json, safetensors weights (safetensors.numpy), tokenizer."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ct2_magics.errors import LlamaError, first_line
from ct2_magics.models.modelfile import read_json
from ct2_magics.models.rope import llama3_rope_from_config
from ct2_magics.models.spec import DecoderShape

# Architectures this loader converts; each is a Llama block (Qwen2 adds q/k/v biases).
ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}
# Copied beside model.bin so AutoTokenizer, the chat template and generation defaults work from the output.
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
              "tokenizer.model", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
              "generation_config.json")  # fmt: skip
# CTranslate2 writes these itself; a same-named source file must never replace them.
CT2_FILES = frozenset({"model.bin", "config.json", "vocabulary.json", "vocabulary.txt"})


def architecture(model_dir: Path) -> str | None:
    """The transformers class a config.json names (e.g. LlamaForCausalLM), or None."""
    config = _read_config(model_dir, required=False)
    names = config.get("architectures") or []
    return str(names[0]) if names else None


def is_supported(model_dir: Path) -> bool:
    return architecture(model_dir) in ARCHITECTURES


class SafetensorsModel:
    """A local transformers checkpoint in safetensors; tensors are read one at a time, when asked for."""

    def __init__(self, model_dir: Path | str) -> None:
        import ml_dtypes  # noqa: F401  # registers bfloat16 with numpy, so safetensors.numpy reads bf16 checkpoints

        self.path = Path(model_dir)
        self.config = _read_config(self.path, required=True)
        arch = architecture(self.path)
        if arch not in ARCHITECTURES:
            raise LlamaError(f"{self.path} holds a {arch or 'model of unnamed architecture'}; this loader converts "
                             f"{', '.join(sorted(ARCHITECTURES))} without torch (for others: %llama convert, with torch).")
        self.arch = ARCHITECTURES[arch]
        self.files = self._index()
        self.shape = self._shape()

    def _index(self) -> dict[str, Path]:
        """Tensor name -> the safetensors file that holds it."""
        from safetensors import safe_open

        files = sorted(self.path.glob("*.safetensors"))
        if not files:
            raise LlamaError(f"{self.path} has no .safetensors weights; ct2-magics never loads pickled (.bin) checkpoints.")
        index: dict[str, Path] = {}
        for file in files:
            try:
                with safe_open(str(file), framework="np") as f:
                    index.update(dict.fromkeys(f.keys(), file))
            except Exception as e:  # safetensors raises its own SafetensorError for a bad header
                raise LlamaError(f"{file.name} is not a readable safetensors file ({first_line(e)}); "
                                 "download it again.") from None
        return index

    def _shape(self) -> DecoderShape:
        c = self.config
        try:
            heads, hidden = int(c["num_attention_heads"]), int(c["hidden_size"])
            head_dim = int(c.get("head_dim") or 0)
            return DecoderShape(
                layers=int(c["num_hidden_layers"]), heads=heads, kv_heads=int(c.get("num_key_value_heads") or heads),
                hidden=hidden, intermediate=int(c["intermediate_size"]), vocab_size=int(c["vocab_size"]),
                head_dim=head_dim if head_dim and head_dim != hidden // heads else 0,
                norm_eps=float(c.get("rms_norm_eps", 1e-6)), rope_theta=float(self._rope_theta()),
                rope=llama3_rope_from_config(c), qkv_bias=self.arch == "qwen2" or bool(c.get("attention_bias")),
                tied=bool(c.get("tie_word_embeddings", False)) or "lm_head.weight" not in self.files,
                context=int(c.get("max_position_embeddings") or 0),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as e:
            raise LlamaError(f"{self.path}/config.json lacks a usable {e} entry.") from None

    def _rope_theta(self) -> float:
        rope = self.config.get("rope_parameters") or self.config.get("rope_scaling") or {}
        kind = rope.get("rope_type") or rope.get("type") if isinstance(rope, dict) else None
        if kind not in (None, "default", "llama3"):
            raise LlamaError(f"{self.path} uses {kind} RoPE scaling; this loader keeps only llama3 scaling (Llama 3.1/3.2).")
        return (rope.get("rope_theta") if isinstance(rope, dict) else None) or self.config.get("rope_theta") or 10000.0

    def weight(self, name: str) -> np.ndarray:
        """A tensor as float32."""
        from safetensors import safe_open

        file = self.files.get(name)
        if file is None:
            raise LlamaError(f"{self.path} has no tensor {name}; it is not a complete {self.arch} checkpoint.")
        with safe_open(str(file), framework="np") as f:
            array = np.ascontiguousarray(f.get_tensor(name), dtype=np.float32)
        return array if array.flags.writeable else array.copy()

    def vocabulary(self) -> list[str]:
        """Token strings by id from tokenizer.json, padded to the embedding rows as CTranslate2's converter does."""
        from tokenizers import Tokenizer

        path = self.path / "tokenizer.json"
        if not path.is_file():
            raise LlamaError(f"{self.path} has no tokenizer.json; copy the original model's tokenizer files there.")
        tokenizer = Tokenizer.from_file(str(path))
        size = self.shape.vocab_size
        tokens = [tokenizer.id_to_token(i) for i in range(min(size, tokenizer.get_vocab_size(with_added_tokens=True)))]
        tokens = [t if t is not None else f"<extra_id_{i}>" for i, t in enumerate(tokens)]
        return tokens + [f"<extra_id_{i}>" for i in range(size - len(tokens))]

    def special_tokens(self) -> dict[str, str]:
        """bos, eos and unk for CTranslate2's config.json, from tokenizer_config.json."""
        config = read_json(self.path / "tokenizer_config.json")

        def token(key: str) -> str | None:
            value = config.get(key)
            return value.get("content") if isinstance(value, dict) else value

        eos = token("eos_token")
        if not eos:
            raise LlamaError(f"{self.path}/tokenizer_config.json names no eos_token; the model could not end a reply.")
        return {"bos": token("bos_token") or token("pad_token") or eos, "eos": eos, "unk": token("unk_token") or ""}

    def write_side_files(self, dest: Path) -> dict[str, str]:
        """Copy the tokenizer, chat template and generation config; return the special tokens."""
        special = self.special_tokens()
        copy_side_files(self.path, dest)
        return special


def copy_side_files(model_dir: Path, dest: Path) -> list[str]:
    """Copy tokenizer, chat template and generation config files beside model.bin; return their names."""
    names = list(SIDE_FILES) + sorted(p.name for p in model_dir.glob("*.model"))
    copied = []
    for name in dict.fromkeys(names):
        src = model_dir / name
        if name not in CT2_FILES and src.is_file() and not (dest / name).exists():
            shutil.copyfile(src, dest / name)
            copied.append(name)
    return copied


def _read_config(model_dir: Path, *, required: bool) -> dict[str, Any]:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        if required:
            raise LlamaError(f"{model_dir} has no config.json; it is not a transformers model folder.")
        return {}
    data = read_json(path)
    if required and not data:
        raise LlamaError(f"{path} is not valid JSON; download or copy it again.")
    return data

