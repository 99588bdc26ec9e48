"""Tiny random Llama / Qwen2 models written as GGUF (gguf.GGUFWriter) and as safetensors (safetensors.numpy),
and an exact float64 numpy forward pass of the Llama block to judge conversions against."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CORPUS = [
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs!",
    "In 1969, 3 astronauts flew 384400 km to the Moon; 12 people have walked there since.",
    "def area(r):\n    return 3.14159 * r ** 2\n\nprint(area(2))  # 12.56636",
    "Bonjour, ça va? Très bien, merci. Ünïcödé text, naïve café, 東京 and 北京, emoji 🙂🚀.",
    "I've told you: they're here, we'll see, you'd know, she's gone, it's 10:30 p.m.",
    "   leading spaces,\ttabs,\n\nblank lines   and trailing spaces   ",
]
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}<|eot_id|>{% endfor %}"
                 "{% if add_generation_prompt %}assistant: {% endif %}")


@dataclass
class Tiny:
    """Shape and RoPE of a tiny model."""

    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    hidden: int = 64
    intermediate: int = 128
    eps: float = 1e-5
    theta: float = 10000.0
    qkv_bias: bool = False
    tied: bool = False
    llama3: dict[str, float] | None = None  # factor, low_freq_factor, high_freq_factor, original_max_position_embeddings
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return self.hidden // self.heads


def train_tokenizer(merges: int = 400, corpus: list[str] | None = None, split: bool = True):
    """A byte-level BPE trained on CORPUS, with Llama 3 style special tokens at the end.

    split=False trains without any pre-tokenizer split, so merges cross word, digit and space
    boundaries: then only a tokenizer that splits text exactly as llama.cpp does gives llama.cpp's ids.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=split)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=256 + merges, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator((corpus or CORPUS) * 4, trainer)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    return tokenizer


def vocab_of(tokenizer) -> tuple[list[str], list[str], list[int]]:
    """Tokens by id, merges as 'a b' strings, llama.cpp token types (1 normal, 3 control)."""
    tokens = [tokenizer.id_to_token(i) for i in range(tokenizer.get_vocab_size())]
    raw = json.loads(tokenizer.to_str())["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in raw]
    types = [3 if t in SPECIALS else 1 for t in tokens]
    return tokens, merges, types


def random_weights(shape: Tiny, vocab: int, seed: int = 0, scale: float = 0.2) -> dict[str, np.ndarray]:
    """Hugging Face-named float32 weights; sharper than a trained model's so RoPE and attention matter."""
    rng = np.random.default_rng(seed)

    def w(*dims: int) -> np.ndarray:
        return (rng.standard_normal(dims) * scale).astype(np.float32)

    d, kv = shape.hidden, shape.kv_heads * shape.dim
    out = {"model.embed_tokens.weight": w(vocab, d) * 5, "model.norm.weight": 1 + w(d)}
    if not shape.tied:
        out["lm_head.weight"] = w(vocab, d)
    for i in range(shape.layers):
        p = f"model.layers.{i}."
        out |= {p + "input_layernorm.weight": 1 + w(d), p + "post_attention_layernorm.weight": 1 + w(d),
                p + "self_attn.q_proj.weight": w(d, d), p + "self_attn.k_proj.weight": w(kv, d),
                p + "self_attn.v_proj.weight": w(kv, d), p + "self_attn.o_proj.weight": w(d, d),
                p + "mlp.gate_proj.weight": w(shape.intermediate, d), p + "mlp.up_proj.weight": w(shape.intermediate, d),
                p + "mlp.down_proj.weight": w(d, shape.intermediate)}  # fmt: skip
        if shape.qkv_bias:
            out |= {p + "self_attn.q_proj.bias": w(d), p + "self_attn.k_proj.bias": w(kv), p + "self_attn.v_proj.bias": w(kv)}
    return out


def llama3_factors(shape: Tiny) -> np.ndarray | None:
    """llama.cpp's rope_freqs for shape.llama3 (its converter's formula), or None."""
    if not shape.llama3:
        return None
    r = shape.llama3
    freqs = 1.0 / shape.theta ** (np.arange(0, shape.dim, 2) / shape.dim)
    wavelen = 2 * np.pi / freqs
    old = r["original_max_position_embeddings"]
    smooth = (old / wavelen - r["low_freq_factor"]) / (r["high_freq_factor"] - r["low_freq_factor"])
    mid = 1 / ((1 - smooth) / r["factor"] + smooth)
    return np.where(wavelen < old / r["high_freq_factor"], 1.0,
                    np.where(wavelen > old / r["low_freq_factor"], r["factor"], mid)).astype(np.float32)


def permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter's reordering of q/k rows (convert_hf_to_gguf.py LlamaModel.permute)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


GGUF_NAMES = {"input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
              "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
              "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
              "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias",
              "self_attn.v_proj.bias": "attn_v.bias", "mlp.gate_proj.weight": "ffn_gate.weight",
              "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight"}  # fmt: skip


def write_gguf(path: Path, shape: Tiny, weights: dict[str, np.ndarray], vocab, *, arch: str = "llama",
               pre: str = "llama-bpe", qtype: str = "F32", chat_template: str | None = CHAT_TEMPLATE,
               add_bos: bool | None = None, extra_tensors: dict[str, Any] | None = None,
               tokenizer_model: str = "gpt2") -> Path:
    """A GGUF file as llama.cpp's converter writes one: q/k permuted for llama, 2-D weights stored as `qtype`.

    vocab: a tokenizers.Tokenizer, or (tokens, merges, types) as vocab_of gives them. extra_tensors: name ->
    a float32 array, or (raw bytes as uint8 rows, quantization type) for a type written as it is.
    """
    import gguf

    tokens, merges, types = vocab if isinstance(vocab, tuple) else vocab_of(vocab)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name("tiny test model")
    writer.add_block_count(shape.layers)
    writer.add_context_length(4096)
    writer.add_embedding_length(shape.hidden)
    writer.add_feed_forward_length(shape.intermediate)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_rope_freq_base(shape.theta)
    writer.add_layer_norm_rms_eps(shape.eps)
    writer.add_rope_dimension_count(shape.dim)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model(tokenizer_model)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index("<|begin_of_text|>"))
    writer.add_eos_token_id(tokens.index("<|eot_id|>"))
    if add_bos is not None:
        writer.add_add_bos_token(add_bos)
    if chat_template:
        writer.add_chat_template(chat_template)
    qt = gguf.GGMLQuantizationType[qtype]

    def add(name: str, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array, dtype=np.float32)
        if array.ndim == 2 and qt != gguf.GGMLQuantizationType.F32:
            data = gguf.quants.quantize(array, qt)
            writer.add_tensor(name, data, raw_shape=data.shape, raw_dtype=qt)
        else:
            writer.add_tensor(name, array)

    add("token_embd.weight", weights["model.embed_tokens.weight"])
    add("output_norm.weight", weights["model.norm.weight"])
    if "lm_head.weight" in weights:
        add("output.weight", weights["lm_head.weight"])
    factors = llama3_factors(shape)
    if factors is not None:
        add("rope_freqs.weight", factors)
    for i in range(shape.layers):
        for hf, name in GGUF_NAMES.items():
            array = weights.get(f"model.layers.{i}.{hf}")
            if array is None:
                continue
            if arch == "llama" and name in ("attn_q.weight", "attn_k.weight"):
                array = permute(array, shape.heads if name == "attn_q.weight" else shape.kv_heads)
            add(f"blk.{i}.{name}", array)
    for name, array in (extra_tensors or {}).items():
        if isinstance(array, tuple):
            raw, raw_type = array
            writer.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=raw_type)
        else:
            writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_safetensors(folder: Path, shape: Tiny, weights: dict[str, np.ndarray], tokenizer, *, arch: str = "llama",
                      dtype: str = "float32") -> Path:
    """A transformers model folder: config.json, model.safetensors (safetensors.numpy), tokenizer files."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    if dtype == "bfloat16":
        import ml_dtypes

        stored = {k: v.astype(ml_dtypes.bfloat16) for k, v in weights.items()}
    else:
        stored = {k: v.astype(dtype) for k, v in weights.items()}
    save_file(stored, str(folder / "model.safetensors"), metadata={"format": "pt"})
    tokens, _, _ = vocab_of(tokenizer)
    config = {
        "architectures": ["LlamaForCausalLM" if arch == "llama" else "Qwen2ForCausalLM"], "model_type": arch,
        "hidden_size": shape.hidden, "intermediate_size": shape.intermediate, "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads, "num_key_value_heads": shape.kv_heads, "vocab_size": len(tokens),
        "rms_norm_eps": shape.eps, "rope_theta": shape.theta, "max_position_embeddings": 4096,
        "tie_word_embeddings": shape.tied, "hidden_act": "silu", "torch_dtype": dtype,
        "bos_token_id": tokens.index("<|begin_of_text|>"), "eos_token_id": tokens.index("<|eot_id|>"),
        "rope_scaling": {"rope_type": "llama3", **shape.llama3} if shape.llama3 else None, **shape.extra,
    }  # fmt: skip
    if arch == "qwen2":
        config |= {"use_sliding_window": False, "sliding_window": None, "max_window_layers": shape.layers}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
        "chat_template": CHAT_TEMPLATE, "model_max_length": 4096}))  # fmt: skip
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [tokens.index("<|eot_id|>")],
                                                               "temperature": 0.3, "do_sample": True}))
    return folder


def reference_logits(weights: dict[str, np.ndarray], shape: Tiny, ids: list[int], *, rope: str = "halves",
                     factors: np.ndarray | None = None) -> np.ndarray:
    """Exact float64 logits of a Llama-block decoder for one sequence (causal attention, GQA, SwiGLU, RMSNorm).

    rope="halves" rotates (x[i], x[i + D/2]) as Hugging Face does; rope="pairs" rotates (x[2i], x[2i+1]), as
    llama.cpp does on its permuted q/k rows, so weights read raw from a GGUF need no unpermuting.
    """
    W = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}
    T, H, KV, D = len(ids), shape.heads, shape.kv_heads, shape.dim
    inv = 1.0 / shape.theta ** (np.arange(0, D, 2) / D)
    if factors is not None:
        inv = inv / np.asarray(factors, dtype=np.float64)
    angles = np.outer(np.arange(T), inv)  # T, D/2
    cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]

    def rotate(x: np.ndarray) -> np.ndarray:  # x: T, heads, D
        if rope == "halves":
            a, b = x[..., : D // 2], x[..., D // 2 :]
            return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)
        a, b = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2], out[..., 1::2] = a * cos - b * sin, b * cos + a * sin
        return out

    def norm(x: np.ndarray, gamma: np.ndarray) -> np.ndarray:
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + shape.eps) * gamma

    x = W["model.embed_tokens.weight"][ids]
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for i in range(shape.layers):
        p = f"model.layers.{i}."
        h = norm(x, W[p + "input_layernorm.weight"])
        q, k, v = (h @ W[p + f"self_attn.{n}_proj.weight"].T + W.get(p + f"self_attn.{n}_proj.bias", 0.0) for n in "qkv")
        q, k, v = rotate(q.reshape(T, H, D)), rotate(k.reshape(T, KV, D)), v.reshape(T, KV, D)
        k, v = np.repeat(k, H // KV, axis=1), np.repeat(v, H // KV, axis=1)
        scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(D) + mask
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        attn = np.einsum("hts,shd->thd", scores / scores.sum(axis=-1, keepdims=True), v).reshape(T, H * D)
        x = x + attn @ W[p + "self_attn.o_proj.weight"].T
        h = norm(x, W[p + "post_attention_layernorm.weight"])
        gate = h @ W[p + "mlp.gate_proj.weight"].T
        x = x + ((gate / (1 + np.exp(-gate))) * (h @ W[p + "mlp.up_proj.weight"].T)) @ W[p + "mlp.down_proj.weight"].T
    x = norm(x, W["model.norm.weight"])
    return x @ W.get("lm_head.weight", W["model.embed_tokens.weight"]).T


def ct2_logits(model_dir: Path, ids: list[int], compute_type: str = "float32") -> np.ndarray:
    """CTranslate2's logits for every position of one sequence."""
    import ctranslate2

    vocabulary = json.loads((Path(model_dir) / "vocabulary.json").read_text(encoding="utf-8"))
    generator = ctranslate2.Generator(str(model_dir), device="cpu", compute_type=compute_type, intra_threads=1)
    return np.asarray(generator.forward_batch([[vocabulary[i] for i in ids]]), dtype=np.float64)[0]
