"""The same weights through transformers `generate` + TextIteratorStreamer (torch, CPU) and through ct2_magics.

Builds a random LlamaForCausalLM of the bench shape with the demo tokenizer (cached), converts it
with `ct2_magics.models.convert.convert` to int8 and to float32, then times end-to-end streaming of the same
prompt and length (greedy, end tokens off so every path writes exactly N tokens), runs alternated.
Target (issue 6): report our end-to-end tokens/s as a ratio to transformers'.

    python benchmarks/vs_transformers.py [--tokens 128] [--runs 3]
"""

from __future__ import annotations

import argparse
import shutil
import threading
import time
from pathlib import Path

from common import BENCH, PROMPT, alternate, bench_model, cache_root, header, load_average, median, save, spread, table

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def hf_model(shape: dict) -> Path:
    """A random transformers Llama of `shape` with the demo tokenizer, saved once (safetensors)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    target = cache_root() / ("hf-llama-" + "-".join(f"{k}{v}" for k, v in shape.items()))
    if (target / "config.json").is_file():
        return target
    source = bench_model(shape)
    tok = AutoTokenizer.from_pretrained(str(source))
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=shape["hidden"], intermediate_size=shape["intermediate"],
        num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"], num_key_value_heads=shape["kv_heads"],
        max_position_embeddings=8192, rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    staging = target.with_name(target.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)
    LlamaForCausalLM(config).save_pretrained(str(staging))
    for name in TOKENIZER_FILES:
        shutil.copy(source / name, staging / name)
    staging.rename(target)
    return target


def converted(hf_dir: Path, quantization: str) -> Path:
    from ct2_magics.models.convert import convert

    out = hf_dir.with_name(f"{hf_dir.name}-ct2-{quantization}")
    if not (out / "model.bin").is_file():
        convert(str(hf_dir), out, quantization=quantization, force=True, progress=lambda line: None)
    return out


def ours_path(model_dir: Path, tokens: int):
    """ct2_magics' Python API: chat template, streaming text pieces, history bookkeeping."""
    from ct2_magics.api import Llama
    from ct2_magics.core.session import Session

    session = Session()
    session.load(str(model_dir), device="cpu")
    session.engine.end_tokens = []  # random weights may pick an end token: keep every path at N tokens

    def run() -> dict:
        t = time.perf_counter()
        first = None
        response = Llama(session).stream(PROMPT, once=True, temperature=0, max_tokens=tokens)
        for _ in response:
            if first is None:
                first = time.perf_counter() - t
        total = time.perf_counter() - t
        assert response.stats.reply_tokens == tokens, response.stats.reply_tokens
        return {"tok_s": tokens / total, "ttft_ms": first * 1e3}

    return run, session


def transformers_path(hf_dir: Path, tokens: int):
    """transformers generate on a thread, read through a TextIteratorStreamer, as its docs show."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer

    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None  # as above: exactly N tokens
    model.generation_config.pad_token_id = tok.bos_token_id

    def run() -> dict:
        t = time.perf_counter()
        inputs = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                         return_tensors="pt", return_dict=True)
        streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
        out: dict = {}
        kwargs = dict(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, streamer=streamer)
        worker = threading.Thread(target=lambda: out.update(ids=model.generate(**kwargs)))
        worker.start()
        first = None
        for text in streamer:
            if first is None and text:
                first = time.perf_counter() - t
        worker.join()
        total = time.perf_counter() - t
        new = out["ids"].shape[1] - inputs["input_ids"].shape[1]
        assert new == tokens, new
        return {"tok_s": tokens / total, "ttft_ms": first * 1e3}

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    info = header("ct2_magics vs transformers generate + TextIteratorStreamer, same weights")
    try:
        import torch
    except ImportError:
        print("torch is not installed: skipped (pip install torch, the CPU build is enough).")
        return
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    info["torch"] = torch.__version__
    info["torch_threads"] = torch.get_num_threads()
    hf_dir = hf_model(BENCH)
    int8, f32 = converted(hf_dir, "int8"), converted(hf_dir, "float32")
    ours_int8, s1 = ours_path(int8, args.tokens)
    ours_f32, s2 = ours_path(f32, args.tokens)
    paths = {"ct2_magics, CTranslate2 int8": ours_int8, "ct2_magics, CTranslate2 float32": ours_f32,
             "transformers float32, TextIteratorStreamer": transformers_path(hf_dir, args.tokens)}
    res = alternate(paths, args.runs)
    hf = median(res[list(paths)[2]], "tok_s")
    rows = [[name, f"{median(r, 'tok_s'):.1f} ({spread(r, 'tok_s')})", f"{median(r, 'tok_s') / hf:.2f}",
             f"{median(r, 'ttft_ms'):.1f}"] for name, r in res.items()]
    print(table(rows, ["path (end to end, streaming)", "tokens/s (range)", "vs transformers", "first text ms"]))
    print(f"\n{args.tokens} tokens, greedy, {args.runs} alternated runs; torch {torch.__version__} with "
          f"{torch.get_num_threads()} threads; CTranslate2 with its default threads")
    print(f"load at the end: {load_average()}")
    save("vs_transformers", {"machine": info, "tokens": args.tokens, "raw": res,
                             "ratios": {name: median(r, "tok_s") / hf for name, r in res.items()}})


if __name__ == "__main__":
    main()
