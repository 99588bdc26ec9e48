"""Decode speed of a model shaped like the reference (Llama 3 8B text) with random int8 weights.

Builds the model on the machine it runs on (no download), then measures, alternating runs:
a bare CTranslate2 `generate_tokens` loop, and the same prompt through ct2_magics' session
(chat template, incremental decoding, history). Prints both, their ratio, and the decode speed
the memory bandwidth allows: measured copy bandwidth (bytes read + written per second) divided by
the bytes of weights read per generated token.

    python benchmarks/reference_shape.py --device cuda              # the GPU check (an 8 GB model.bin)
    python benchmarks/reference_shape.py --device cpu --tokens 16   # the same shape on this CPU (~9 GB RAM)
    python benchmarks/reference_shape.py --device cpu --small       # a dry run of the script (seconds)
    python benchmarks/reference_shape.py --device cuda --check      # small shape: do GPU and CPU agree?
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LLAMA3_8B = {"layers": 32, "hidden": 4096, "intermediate": 14336, "heads": 32, "kv_heads": 8, "vocab": 128256}
SMALL = {"layers": 2, "hidden": 256, "intermediate": 512, "heads": 8, "kv_heads": 2, "vocab": 128256}
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
TEMPLATE = (
    "{{ '<|begin_of_text|>' }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n'"
    " + m['content'] + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def build(path: Path, shape: dict, seed: int = 0) -> int:
    """Write a random int8 Llama model of `shape` and a word-level tokenizer; return bytes read per token."""
    import ctranslate2
    from ctranslate2.specs import common_spec, transformer_spec

    rng = np.random.default_rng(seed)
    h, inter, vocab = shape["hidden"], shape["intermediate"], shape["vocab"]
    head = h // shape["heads"]
    kv = shape["kv_heads"] * head
    block = rng.integers(-24, 25, size=1 << 24, dtype=np.int8)  # tiled: random values, fast to make
    read = 0

    def int8(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
        nonlocal read
        read += rows * cols + 4 * rows
        w = np.resize(block[rng.integers(0, 1 << 20):], rows * cols).reshape(rows, cols)
        # CTranslate2 reads int8 / scale (its quantizer writes scale = 127 / max|w|): weights of a standard
        # deviation near 1/sqrt(cols), so activations and logits stay in float16's range. Distinct scales:
        # CTranslate2 aliases variables with equal values, which breaks int8 pairs.
        scale = (1.0 + rng.random(rows)) * 14 * np.sqrt(cols)
        return w, scale.astype(np.float32)

    spec = transformer_spec.TransformerDecoderModelSpec.from_config(
        shape["layers"], shape["heads"], pre_norm=True, activation=common_spec.Activation.SWISH, ffn_glu=True,
        rms_norm=True, rotary_dim=0, rotary_interleave=False, rotary_base=500000.0, num_heads_kv=shape["kv_heads"],
    )
    dec = spec.decoder
    dec.scale_embeddings = False
    dec.embeddings.weight = (rng.standard_normal((vocab, h), dtype=np.float32) * 0.02).astype(np.float16)
    dec.layer_norm.gamma = np.ones(h, dtype=np.float16)
    dec.projection.weight, dec.projection.weight_scale = int8(vocab, h)
    for layer in dec.layer:
        att, ffn = layer.self_attention, layer.ffn
        att.layer_norm.gamma = np.ones(h, dtype=np.float16)
        ffn.layer_norm.gamma = np.ones(h, dtype=np.float16)
        att.linear[0].weight, att.linear[0].weight_scale = int8(h + 2 * kv, h)
        att.linear[1].weight, att.linear[1].weight_scale = int8(h, h)
        ffn.linear_0.weight, ffn.linear_0.weight_scale = int8(inter, h)
        ffn.linear_0_noact.weight, ffn.linear_0_noact.weight_scale = int8(inter, h)
        ffn.linear_1.weight, ffn.linear_1.weight_scale = int8(h, inter)
    tokens = [f"w{i}" for i in range(vocab - 256)] + SPECIALS + [f"<|reserved_{i}|>" for i in range(256 - len(SPECIALS))]
    spec.register_vocabulary(tokens)
    spec.config.bos_token, spec.config.eos_token, spec.config.unk_token = SPECIALS[0], SPECIALS[4], SPECIALS[1]
    spec.config.layer_norm_epsilon = 1e-5
    spec.validate()
    # optimize() would only compare every same-shaped pair of weights for aliasing: minutes at 8B.
    path.mkdir(parents=True, exist_ok=True)
    spec.save(str(path))
    _tokenizer(path, tokens)
    del ctranslate2
    return read


def _tokenizer(path: Path, tokens: list[str]) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token=SPECIALS[1]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.add_special_tokens(SPECIALS)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=SPECIALS[0], eos_token=SPECIALS[4])
    fast.chat_template = TEMPLATE
    fast.save_pretrained(str(path))
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": [tokens.index(SPECIALS[1]), tokens.index(SPECIALS[4])]}))


def bandwidth_gbs(device: str) -> float | None:
    """Copy bandwidth in GB/s, counting bytes read and written: torch on the GPU, numpy threads on the CPU."""
    if device == "cpu":
        return _cpu_bandwidth_gbs()
    try:
        import torch
    except ImportError:
        return None
    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(20):
        y.copy_(x)
    torch.cuda.synchronize()
    gbs = 2 * 20 * x.numel() / (time.perf_counter() - t) / 1e9
    del x, y
    torch.cuda.empty_cache()
    return gbs


def _cpu_bandwidth_gbs(size: int = 1 << 30, rounds: int = 5) -> float:
    """One numpy copy per core at once (numpy lets go of the GIL while it copies), best of `rounds`."""
    import threading

    cores = os.cpu_count() or 1
    src = np.ones(size, dtype=np.uint8)
    dst = np.empty_like(src)
    parts = [slice(i * size // cores, (i + 1) * size // cores) for i in range(cores)]
    best = 0.0
    for _ in range(rounds):
        threads = [threading.Thread(target=np.copyto, args=(dst[p], src[p])) for p in parts]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        best = max(best, 2 * size / (time.perf_counter() - t) / 1e9)
    return best


def check_agreement(model: Path, device: str, tokens: int = 256, compute_type: str | None = None) -> dict:
    """Logits of the small shape on `device` against the CPU's int8: a broken CUDA set-up shows here.

    On the GPU the other side is `compute_type` (int8_float16 by default); without one (a dry run), the CPU's
    float32."""
    import ctranslate2

    build(model, SMALL)
    prompt = [SPECIALS[0]] + [f"w{(i * 7919) % 5000}" for i in range(tokens)]
    out = {}
    other = ("cuda", compute_type or "int8_float16") if device == "cuda" else ("cpu", compute_type or "float32")
    for side, (dev, compute) in (("reference", ("cpu", "int8")), ("other", other)):
        g = ctranslate2.Generator(str(model), device=dev, compute_type=compute)
        logits = g.forward_batch([prompt]).to(ctranslate2.DataType.float32).to_device(ctranslate2.Device.cpu)
        out[side] = np.array(logits)[0]
        del g
    diff = np.abs(out["other"] - out["reference"])
    return {"compared": f"{other[0]} {other[1]} vs cpu int8", "positions": tokens, "logit_std": float(out["reference"].std()),
            "max_abs_diff": float(diff.max()),
            "top1_agreement": float((out["other"].argmax(-1) == out["reference"].argmax(-1)).mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="/tmp/llama3-8b-shape")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json")
    ap.add_argument("--check", action="store_true", help="only compare GPU and CPU logits on the small shape")
    ap.add_argument("--compute-type", help="default: int8_float16 on cuda, int8 on cpu")
    args = ap.parse_args()
    if args.check:
        print(json.dumps(check_agreement(Path(args.model), args.device, compute_type=args.compute_type), indent=1))
        return
    shape = SMALL if args.small else LLAMA3_8B
    t0 = time.perf_counter()
    per_token = build(Path(args.model), shape)
    built_s = time.perf_counter() - t0
    bw = bandwidth_gbs(args.device)

    import ctranslate2

    from ct2_magics.api import Llama
    from ct2_magics.core.session import Session

    session = Session()
    t0 = time.perf_counter()
    session.load(args.model, device=args.device, compute_type=args.compute_type or ("int8_float16" if args.device == "cuda" else "int8"))
    load_s = time.perf_counter() - t0
    engine = session.engine
    prompt = "w1 w2 w3 w4 w5 w6 w7 w8 " * 8
    ids = engine.prompt_ids([{"role": "user", "content": prompt}])
    toks = engine.tokenizer.convert_ids_to_tokens(ids)
    gen = engine.generator

    def bare() -> tuple[float, float, int]:
        t = time.perf_counter()
        first, n = None, 0
        for step in gen.generate_tokens(toks, max_length=args.tokens, sampling_topk=1, end_token=[]):
            n += 1
            if first is None:
                first = time.perf_counter() - t
        total = time.perf_counter() - t
        return (n - 1) / (total - first), first, n

    def ours() -> tuple[float, float, int]:
        engine.end_tokens = []  # same length as the bare loop: random weights may pick an end token
        r = Llama(session).stream(prompt, once=True, temperature=0, max_tokens=args.tokens)
        r.consume()
        return r.stats.tokens_per_s, r.stats.first_token_s, r.stats.reply_tokens

    long_toks = engine.tokenizer.convert_ids_to_tokens(
        engine.prompt_ids([{"role": "user", "content": "w1 w2 w3 w4 w5 w6 w7 w8 " * 256}]))

    def prefill() -> float:
        """Prompt tokens read per second: a long prompt and one new token (its time is the prompt's)."""
        t = time.perf_counter()
        for _ in gen.generate_tokens(long_toks, max_length=1, sampling_topk=1, end_token=[]):
            pass
        return len(long_toks) / (time.perf_counter() - t)

    bare(), ours(), prefill()  # warm-up
    results = {"bare": [], "ours": []}
    for _ in range(args.runs):
        results["bare"].append(bare())
        results["ours"].append(ours())
    prefill_tps = statistics.median(prefill() for _ in range(args.runs))
    med = {k: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v)) for k, v in results.items()}
    name = _cpu_name()
    if args.device == "cuda":
        import subprocess

        name = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    # build() counts int8 weights; a 16-bit compute type holds (and reads) two bytes a weight, float32 four.
    per_token *= {"float16": 2, "bfloat16": 2, "float32": 4}.get(engine.compute_type, 1)
    limit = bw * 1e9 / per_token if bw else None  # every weight byte crosses the memory bus once a token
    report = {
        "device": name, "shape": shape, "ctranslate2": ctranslate2.__version__, "compute_type": engine.compute_type,
        "weight_bytes_read_per_token": per_token, "build_s": round(built_s, 1), "load_s": round(load_s, 1),
        "copy_bandwidth_GBps": None if bw is None else round(bw, 1),
        "bandwidth_limit_tokens_per_s": None if limit is None else round(limit, 1),
        "bare_tokens_per_s": round(med["bare"][0], 2), "ours_tokens_per_s": round(med["ours"][0], 2),
        "ratio_ours_over_bare": round(med["ours"][0] / med["bare"][0], 4),
        "bare_first_token_ms": round(med["bare"][1] * 1000, 2), "ours_first_token_ms": round(med["ours"][1] * 1000, 2),
        "prefill_prompt_tokens": len(long_toks), "prefill_tokens_per_s": round(prefill_tps, 1),
        "tokens": args.tokens, "runs": args.runs, "raw": results,
    }
    print(json.dumps({k: v for k, v in report.items() if k != "raw"}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


def _cpu_name() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "cpu")
    return f"{cpu}, {os.cpu_count()} cores"


if __name__ == "__main__":
    main()
