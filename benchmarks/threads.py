"""CPU decoding on 1 thread against 2, per model size: the measurements behind engine.py's thread rule.

Each model is loaded twice (intra_threads=1 and 2) and the two decode the same greedy prompt in
alternated runs, forced to the same length (min_length). Models: the demo's shape (tiny), the bench
model, SmolLM2-135M-Instruct converted from the bundled GGUF (int8 and float32), and a random 1B
Llama shape (int8; --large adds it, ~1 GB to build).

--batch measures what engine.py does with batches of such a model instead: 64 short prompts on one
worker of 1 thread, on one worker of 2 threads, and on 2 one-thread workers (inter_threads=2),
each batch split into one per worker.

    python benchmarks/threads.py [--tokens 128] [--runs 5] [--large] [--batch]
"""

from __future__ import annotations

import argparse
import time

from common import BENCH, PROMPT, TINY, alternate, bench_model, header, load_average, median, save, spread, table

LARGE = {"hidden": 2048, "layers": 16, "heads": 32, "kv_heads": 8, "intermediate": 8192}


def models(large: bool) -> dict[str, object]:
    from ct2_magics.models import hub
    from ct2_magics.models import smollm2

    found = {"tiny": bench_model(TINY, name="threads-tiny"), "bench": bench_model(BENCH)}
    if smollm2.bundled_gguf() is not None:
        found["smollm2 int8"] = hub.resolve("smollm2", quantization="int8")
        found["smollm2 float32"] = hub.resolve("smollm2", quantization="float32")
    if large:
        found["1B shape int8"] = bench_model(LARGE, name="threads-1b")
    return found


def path(model_dir, threads: int, tokens: int):
    import ctranslate2
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    text = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True, tokenize=False)
    prompt = tokenizer.convert_ids_to_tokens(tokenizer.encode(text, add_special_tokens=False))
    from ct2_magics.models.modelfile import saved_compute_type

    generator = ctranslate2.Generator(str(model_dir), device="cpu", compute_type=saved_compute_type(model_dir) or "default",
                                      intra_threads=threads)

    def run() -> dict[str, float]:
        t0 = time.perf_counter()
        first, n = None, 0
        for _ in generator.generate_tokens(prompt, max_length=tokens, min_length=tokens, sampling_topk=1):
            if first is None:
                first = time.perf_counter() - t0
            n += 1
        total = time.perf_counter() - t0
        return {"decode_tok_s": (n - 1) / (total - first) if n > 1 else 0.0, "ttft_ms": (first or 0.0) * 1e3}

    return run


def batch_path(model_dir, prompts: list[str], threads: int, workers: int, per_call: int, tokens: int):
    import ctranslate2
    from transformers import AutoTokenizer

    from ct2_magics.models.modelfile import saved_compute_type

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    batch = sorted((tokenizer.convert_ids_to_tokens(tokenizer.encode(tokenizer.apply_chat_template(
        [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False), add_special_tokens=False))
        for p in prompts), key=len)
    generator = ctranslate2.Generator(str(model_dir), device="cpu", compute_type=saved_compute_type(model_dir) or "default",
                                      intra_threads=threads, inter_threads=workers)

    def run() -> dict[str, float]:
        t0, n = time.perf_counter(), 0
        for i in range(0, len(batch), per_call):
            part = batch[i:i + per_call]
            results = generator.generate_batch(part, max_batch_size=-(-len(part) // workers), max_length=tokens,
                                               min_length=tokens, sampling_topk=1, include_prompt_in_result=False)
            n += sum(len(r.sequences_ids[0]) for r in results)
        return {"tok_s": n / (time.perf_counter() - t0)}

    return run


def batches(args) -> None:
    info = header("Batches of 64 prompts: one worker of 1 or 2 threads, or 2 one-thread workers")
    prompts = [f"Answer in one sentence: what is {w}?" for w in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!?"]
    rows, report = [], {"machine": info, "models": {}}
    for name, model_dir in models(False).items():
        if name == "smollm2 float32":
            continue
        paths = {"1 worker x 1 thread, 16 a batch": batch_path(model_dir, prompts, 1, 1, 16, args.tokens),
                 "1 worker x 2 threads, 16 a batch": batch_path(model_dir, prompts, 2, 1, 16, args.tokens),
                 "2 workers x 1 thread, 16 each": batch_path(model_dir, prompts, 1, 2, 32, args.tokens)}
        results = alternate(paths, runs=args.runs)
        base = median(results["1 worker x 1 thread, 16 a batch"], "tok_s")
        rows += [[name, k, median(r, "tok_s"), spread(r, "tok_s"), median(r, "tok_s") / base] for k, r in results.items()]
        report["models"][name] = results
    print(table(rows, ["model", "how", "tokens/s in all", "range", "vs 1 worker x 1 thread"]))
    print(f"\n64 prompts, {args.tokens} tokens each, {args.runs} alternated runs; load at the end {load_average()}")
    save("threads_batch", report)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--large", action="store_true", help="also a random 1B Llama shape (int8, ~1 GB)")
    parser.add_argument("--batch", action="store_true", help="batches on 1 or 2 threads or 2 one-thread workers instead")
    args = parser.parse_args()
    if args.batch:
        return batches(args)
    info = header("Decoding on 1 thread vs 2 threads, per model size")
    rows, report = [], {"machine": info, "models": {}}
    for name, model_dir in models(args.large).items():
        size = (model_dir / "model.bin").stat().st_size / 2**20
        results = alternate({"1": path(model_dir, 1, args.tokens), "2": path(model_dir, 2, args.tokens)}, runs=args.runs)
        one, two = median(results["1"], "decode_tok_s"), median(results["2"], "decode_tok_s")
        rows.append([name, f"{size:.0f}", one, spread(results["1"], "decode_tok_s"), two,
                     spread(results["2"], "decode_tok_s"), one / two, median(results["1"], "ttft_ms"),
                     median(results["2"], "ttft_ms")])
        report["models"][name] = {"model_bin_mb": size, **results}
    print(table(rows, ["model", "model.bin MB", "1 thread tok/s", "range", "2 threads tok/s", "range",
                       "1 / 2", "1 thread first token ms", "2 threads first token ms"]))
    save("threads", report)


if __name__ == "__main__":
    main()
