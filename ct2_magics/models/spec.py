"""CTranslate2's Llama-style decoder spec filled from numpy arrays and saved, without torch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ct2_magics.models.quantization import bytes_per_weight
from ct2_magics.models.rope import Llama3Rope, apply_llama3_rope

if TYPE_CHECKING:
    from ctranslate2.specs.transformer_spec import TransformerDecoderModelSpec


@dataclass(frozen=True)
class DecoderShape:
    """The hyperparameters of a Llama-architecture decoder (Llama 2/3, SmolLM2, Qwen2)."""

    layers: int
    heads: int
    kv_heads: int
    hidden: int
    intermediate: int
    vocab_size: int
    head_dim: int = 0  # 0: hidden // heads
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope: Llama3Rope | None = None
    qkv_bias: bool = False  # Qwen2
    tied: bool = False  # the output layer reuses the embeddings
    context: int = 0  # the model's context length, 0 when unknown

    @property
    def dim(self) -> int:
        return self.head_dim or self.hidden // self.heads

    def parameters(self) -> int:
        """How many weights the model holds (tied embeddings counted once)."""
        attention = self.hidden * self.dim * (2 * self.heads + 2 * self.kv_heads)
        layer = attention + 3 * self.hidden * self.intermediate + 2 * self.hidden
        return self.layers * layer + self.vocab_size * self.hidden * (1 if self.tied else 2) + self.hidden

    def stored_bytes(self, quantization: str) -> int:
        """About the size of model.bin in this storage type."""
        return self.parameters() * bytes_per_weight(quantization)


def new_spec(layers: int, heads: int, kv_heads: int, *, rope_theta: float, head_dim: int | None = None,
             rope: Llama3Rope | None = None) -> TransformerDecoderModelSpec:
    """An empty Llama-style decoder spec: pre-norm RMSNorm, SwiGLU, rotary embeddings in Hugging Face's layout."""
    from ctranslate2.specs import common_spec, transformer_spec

    spec = transformer_spec.TransformerDecoderModelSpec.from_config(
        layers, heads, pre_norm=True, activation=common_spec.Activation.SWISH, ffn_glu=True, rms_norm=True,
        rotary_dim=0, rotary_interleave=False, rotary_base=rope_theta, head_dim=head_dim,
        num_heads_kv=None if kv_heads == heads else kv_heads,
    )  # fmt: skip
    spec.decoder.scale_embeddings = False
    if rope is not None:
        apply_llama3_rope(spec, rope)
    return spec


def quantize_layer(layer: object, quantization: str | None) -> None:
    """Store one filled layer in its final type at once, so only one layer is ever held in float32."""
    layer.validate()  # type: ignore[attr-defined]  # wraps the arrays as CTranslate2 variables
    if quantization is not None:
        # CTranslate2's private LayerSpec._quantize: the public spec.optimize quantizes only the whole model at once,
        # after every layer was held in float32 (about 32 GB for an 8B model). pyproject bounds ctranslate2 below 5,
        # and tests/test_private_names.py fails by name if _quantize or _alias_variables goes.
        layer._quantize(quantization)  # type: ignore[attr-defined]


def finish(spec: TransformerDecoderModelSpec, path: Path, vocabulary: list[str], *, bos: str, eos: str, unk: str,
           norm_eps: float, quantization: str | None, done: tuple[str, ...] = ()) -> Path:
    """Register the vocabulary and special tokens, quantize what is left, and write model.bin and friends.

    done: the scopes quantize_layer stored already; a second pass would recompute their scales from int8 values.
    """
    spec.register_vocabulary(vocabulary)
    spec.config.bos_token, spec.config.eos_token, spec.config.unk_token = bos, eos, unk
    spec.config.layer_norm_epsilon = float(norm_eps)
    spec.validate()
    if done:
        # optimize() = _alias_variables() + _quantize(); called apart so that the layers stored already are skipped
        # (private names: see quantize_layer).
        spec._alias_variables()
        if quantization is not None:
            spec._quantize(quantization, variable_filter=lambda name: not name.startswith(done))
    else:
        spec.optimize(quantization=quantization)
    path.mkdir(parents=True, exist_ok=True)
    spec.save(str(path))
    return path


def write_decoder(path: Path, shape: DecoderShape, weight: Callable[[str], np.ndarray], vocabulary: list[str], *,
                  bos: str, eos: str, unk: str, quantization: str | None, step: Callable[[], None] = lambda: None) -> Path:
    """Fill a spec from `weight(name)` (Hugging Face tensor names, float32 arrays) and save it.

    Each tensor is stored in its final type as soon as it is filled, the embeddings first: what stays in
    memory is the converted model plus one float32 tensor at a time (about 8 GB for an 8B model as int8).
    """
    spec = new_spec(shape.layers, shape.heads, shape.kv_heads, rope_theta=shape.rope_theta,
                    head_dim=shape.head_dim or None, rope=shape.rope)
    decoder = spec.decoder
    decoder.embeddings.weight = weight("model.embed_tokens.weight")
    rows = decoder.embeddings.weight.shape[0]
    if len(vocabulary) != rows:
        raise ValueError(f"{len(vocabulary)} tokens for {rows} embedding rows")
    quantize_layer(decoder.embeddings, quantization)
    # Tied: the same variable; finish() turns it into an alias, as CTranslate2's own converters do.
    decoder.projection.weight = decoder.embeddings.weight if shape.tied else weight("lm_head.weight")
    if not shape.tied:
        quantize_layer(decoder.projection, quantization)
    decoder.layer_norm.gamma = weight("model.norm.weight")
    for i, layer in enumerate(decoder.layer):
        p = f"model.layers.{i}."
        attention = layer.self_attention
        attention.layer_norm.gamma = weight(p + "input_layernorm.weight")
        attention.linear[0].weight = np.concatenate([weight(p + f"self_attn.{x}_proj.weight") for x in "qkv"])
        if shape.qkv_bias:
            attention.linear[0].bias = np.concatenate([weight(p + f"self_attn.{x}_proj.bias") for x in "qkv"])
        attention.linear[1].weight = weight(p + "self_attn.o_proj.weight")
        layer.ffn.layer_norm.gamma = weight(p + "post_attention_layernorm.weight")
        layer.ffn.linear_0.weight = weight(p + "mlp.gate_proj.weight")
        layer.ffn.linear_0_noact.weight = weight(p + "mlp.up_proj.weight")
        layer.ffn.linear_1.weight = weight(p + "mlp.down_proj.weight")
        quantize_layer(layer, quantization)
        step()
    out = finish(spec, path, vocabulary, bos=bos, eos=eos, unk=unk, norm_eps=shape.norm_eps,
                 quantization=quantization, done=("decoder/layer_", "decoder/embeddings/", "decoder/projection/"))
    step()
    return out
