"""A GGUF file read with the `gguf` package: its decoder's shape, its weights dequantized to float32, its vocabulary."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np

from ct2_magics.errors import LlamaError, first_line
from ct2_magics.models.rope import llama3_rope_from_factors
from ct2_magics.models.spec import DecoderShape
from ct2_magics.models.tokenizer_files import Vocab, gguf_tokenizer_files

MAGIC = b"GGUF"
# GGUF architectures this loader converts, and whether llama.cpp permuted their q/k rows for its rotary layout.
ARCHITECTURES = {"llama": True, "qwen2": False}
# Hugging Face tensor names (as the spec filler asks for them) -> GGUF names.
_GLOBAL = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}  # fmt: skip
_LAYER = {
    "input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias", "self_attn.v_proj.bias": "attn_v.bias",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight",
}  # fmt: skip


def check_magic(path: Path) -> None:
    """LlamaError unless `path` starts like a GGUF file."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise LlamaError(f"Cannot read {path} ({e.strerror or e}).") from None
    if head != MAGIC:
        raise LlamaError(f"{path} is not a GGUF file (it does not start with 'GGUF'); give a .gguf model file, "
                         "a model folder or a Hub repo id.")


class GGUFModel:
    """One GGUF file, memory-mapped; tensors are dequantized one at a time, when asked for."""

    def __init__(self, path: Path | str) -> None:
        import gguf

        self.path = Path(path)
        self._vocab: Vocab | None = None
        check_magic(self.path)
        try:
            self.reader = gguf.GGUFReader(str(self.path))
        except (ValueError, IndexError, KeyError, OSError, struct.error, UnicodeDecodeError) as e:
            raise LlamaError(f"{self.path.name} is not a complete GGUF file (it ends early or its header is damaged: "
                             f"{first_line(e, 80)}); download or copy it again.") from None
        self.tensors = {t.name: t for t in self.reader.tensors}
        self.arch = str(self.field("general.architecture") or "")
        if self.arch not in ARCHITECTURES:
            raise LlamaError(f"{self.path.name} holds a {self.arch or 'unnamed'} model; this loader converts "
                             f"{' and '.join(sorted(ARCHITECTURES))} GGUF models (Llama 3.x, SmolLM2, Qwen2/2.5).")
        self.shape = self._shape()
        self._check_types()

    def field(self, key: str, default: Any = None) -> Any:
        field = self.reader.fields.get(key)
        if field is None:
            return default
        value = field.contents()
        return value if value is not None else default

    def _arch(self, key: str, default: Any = None) -> Any:
        return self.field(f"{self.arch}.{key}", default)

    def _shape(self) -> DecoderShape:
        heads = int(self._arch("attention.head_count"))
        hidden = int(self._arch("embedding_length"))
        head_dim = int(self._arch("attention.key_length", 0) or 0)
        dim = head_dim or hidden // heads
        theta = float(self._arch("rope.freq_base", 10000.0))
        rope = None
        if "rope_freqs.weight" in self.tensors:
            rope = llama3_rope_from_factors(self._array("rope_freqs.weight"), theta, dim)
        embeddings = self.tensors.get("token_embd.weight")
        if embeddings is None:
            raise LlamaError(f"{self.path.name} has no token_embd.weight tensor; it is not a complete language model.")
        return DecoderShape(
            layers=int(self._arch("block_count")), heads=heads,
            kv_heads=int(self._arch("attention.head_count_kv", heads) or heads), hidden=hidden,
            intermediate=int(self._arch("feed_forward_length")), vocab_size=int(embeddings.shape[-1]),
            head_dim=head_dim if head_dim and head_dim != hidden // heads else 0,
            norm_eps=float(self._arch("attention.layer_norm_rms_epsilon", 1e-5)), rope_theta=theta, rope=rope,
            qkv_bias="blk.0.attn_q.bias" in self.tensors, tied="output.weight" not in self.tensors,
            context=int(self._arch("context_length", 0) or 0),
        )  # fmt: skip

    def _check_types(self) -> None:
        """Fail before converting anything when a tensor is stored in a type `gguf` cannot dequantize."""
        import gguf.quants

        plain = {gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16}
        # gguf has no public list of the types dequantize() handles; its private table _type_traits is that list.
        # pyproject bounds gguf below its next minor, and tests/test_private_names.py fails by name if it goes.
        known = plain | set(getattr(gguf.quants, "_type_traits", {}))
        bad = sorted({t.tensor_type.name for t in self.reader.tensors if t.tensor_type not in known})
        if bad:
            raise LlamaError(f"{self.path.name} stores tensors as {', '.join(bad)}, which the gguf package cannot "
                             "dequantize; use another quantization of this model (Q4_K_M, Q8_0, F16 ...).")

    def weight(self, name: str) -> np.ndarray:
        """A tensor under its Hugging Face name, as float32 in Hugging Face's layout."""
        gguf_name = _GLOBAL.get(name)
        layer = None
        if gguf_name is None and name.startswith("model.layers."):
            layer, _, rest = name[len("model.layers."):].partition(".")
            gguf_name = f"blk.{layer}.{_LAYER[rest]}"
        if gguf_name is None or gguf_name not in self.tensors:
            raise LlamaError(f"{self.path.name} has no tensor {gguf_name or name}; it is not a complete {self.arch} model.")
        array = self._array(gguf_name)
        if ARCHITECTURES[self.arch] and gguf_name.endswith(("attn_q.weight", "attn_k.weight")):
            heads = self.shape.heads if "attn_q" in gguf_name else self.shape.kv_heads
            array = unpermute(array, heads)
        return array

    def _array(self, gguf_name: str) -> np.ndarray:
        import gguf.quants

        tensor = self.tensors[gguf_name]
        try:
            array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        except (NotImplementedError, ValueError) as e:
            raise LlamaError(f"Cannot dequantize {gguf_name} of {self.path.name} ({first_line(e)}).") from None
        rows = [int(d) for d in reversed(tensor.shape.tolist())]
        array = np.ascontiguousarray(array.reshape(rows), dtype=np.float32)
        # F32 tensors come back as views of the read-only memory map; quantizing works in place.
        return array if array.flags.writeable else array.copy()

    def vocabulary(self) -> list[str]:
        """Token strings by id, one per embedding row."""
        tokens = self.vocab().tokens
        if len(tokens) != self.shape.vocab_size:
            raise LlamaError(f"{self.path.name} lists {len(tokens)} tokens for {self.shape.vocab_size} embedding rows; "
                             "it is damaged or not a complete model.")
        return tokens

    def write_side_files(self, dest: Path) -> dict[str, str]:
        """Write the tokenizer, chat template and generation config built from the metadata; return the special tokens."""
        return gguf_tokenizer_files(dest, self.vocab(), context=self.shape.context, generation=self.sampling(),
                                    name=self.path.name)

    def vocab(self) -> Vocab:
        if self._vocab is None:
            self._vocab = self._read_vocab()
        return self._vocab

    def _read_vocab(self) -> Vocab:
        def token_id(key: str) -> int | None:
            value = self.field(f"tokenizer.ggml.{key}")
            return None if value is None else int(value)

        add_bos = self.field("tokenizer.ggml.add_bos_token")
        return Vocab(
            model=str(self.field("tokenizer.ggml.model", "")), pre=str(self.field("tokenizer.ggml.pre", "default")),
            tokens=list(self.field("tokenizer.ggml.tokens", [])),
            types=[int(t) for t in self.field("tokenizer.ggml.token_type", [])],
            merges=list(self.field("tokenizer.ggml.merges", [])), bos=token_id("bos_token_id"),
            eos=token_id("eos_token_id"), eot=token_id("eot_token_id"), eom=token_id("eom_token_id"),
            unk=token_id("unknown_token_id"), pad=token_id("padding_token_id"),
            add_bos=None if add_bos is None else bool(add_bos), chat_template=self.field("tokenizer.chat_template"),
        )  # fmt: skip

    def sampling(self) -> dict[str, Any]:
        """generation_config.json defaults from the general.sampling.* keys, where the file has them."""
        names = {"temp": "temperature", "top_k": "top_k", "top_p": "top_p", "penalty_repeat": "repetition_penalty"}
        out = {}
        for key, ours in names.items():
            value = self.field(f"general.sampling.{key}")
            if value is not None:
                out[ours] = value
        if "temperature" in out:
            out["do_sample"] = out["temperature"] > 0
        return out


def unpermute(weight: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's reordering of q/k rows (pairs interleaved per head) back to Hugging Face's halves."""
    rows = weight.shape[0]
    return np.ascontiguousarray(weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2)
                                .reshape(weight.shape))

