"""`llama.generate` over 32 prompts against a bare `generate_batch` and against a loop of `llama.ask(..., once=True)`.

Greedy, same prompts and reply length (the bench model never ends a reply early), runs alternated.
Targets (issue 6): llama.generate / bare generate_batch (same batch size) >= 0.9; llama.generate /
the ask loop >= 3x. The default batch size (LlamaSettings.batch_size) is shown too.

--mixed instead measures prompts of very different lengths (8 to ~400 tokens), sorted by length into
batches (what llama.generate does) against the same batches in input order, same run, alternated:
CTranslate2 runs a batch's prompts together only up to the shortest one (OpenNMT/CTranslate2#1480).

--template instead measures llama.map with a ~300-token few-shot template against a ~10-token one over the same
rows (64 by default, 8-token replies, smollm2): the template's shared prefix read once per batch and cached across
calls (issue 22; benchmarks/batch_template.py says what each path is).

    python benchmarks/batch.py [--prompts 32] [--tokens 32] [--runs 3] [--mixed | --template [--model smollm2]]
"""

from __future__ import annotations

import argparse
import time

from common import BENCH, alternate, bench_model, header, load_average, median, save, spread, table, verdict

TOPICS = ["hash maps", "binary search", "garbage collection", "TCP handshakes", "SQL joins", "B-trees", "unicode",
          "floating point", "regular expressions", "git rebase", "virtual memory", "DNS", "TLS", "mutexes",
          "bloom filters", "quicksort", "dynamic programming", "gradient descent", "HTTP caching", "recursion",
          "closures", "generators", "async IO", "CRDTs", "consistent hashing", "the GIL", "numpy broadcasting",
          "pandas groupby", "list comprehensions", "decorators", "type hints", "unit tests"]


def prompts(count: int) -> list[str]:
    """Varied questions of varied length, like a column of a data frame."""
    out = []
    for i in range(count):
        topic = TOPICS[i % len(TOPICS)]
        out.append(f"Explain {topic} to a student." + " Give one example and one pitfall." * (i % 4))
    return out


def mixed_prompts(count: int) -> list[str]:
    """Short and long prompts interleaved, as a column of notes or documents would be."""
    filler = " Keep in mind the details of the previous paragraph and the reader's background."
    return [f"Explain {TOPICS[i % len(TOPICS)]} to a student." + filler * ((i * 7) % 13) for i in range(count)]


def mixed(args) -> None:
    """Batches sorted by prompt length against the same batch size in input order."""
    info = header("Prompts of mixed lengths: batches sorted by length vs input order")
    from ct2_magics import llama
    from ct2_magics.core.options import Sampling

    llama.load(str(bench_model(BENCH)))
    engine = llama.engine
    texts = mixed_prompts(args.prompts)
    ids = [engine.prompt_ids([{"role": "user", "content": t}]) for t in texts]
    step = llama.settings.batch_size * engine.batch_workers  # what llama.generate puts in one call
    sampling = Sampling({"temperature": 0.0, "max_tokens": args.tokens})
    total = args.prompts * args.tokens
    outputs = {}

    def chunks(order: list[int], name: str):
        def run() -> dict[str, float]:
            import threading

            t = time.perf_counter()
            out: dict[int, list[int]] = {}
            for i in range(0, len(order), step):
                part = order[i:i + step]
                out.update(zip(part, engine.generate_batch([ids[p] for p in part], sampling, threading.Event())))
            seconds = time.perf_counter() - t
            outputs[name] = [out[p] for p in range(len(ids))]
            return {"seconds": seconds, "tok_s": total / seconds}
        return run

    def product() -> dict[str, float]:
        t = time.perf_counter()
        llama.generate(texts, temperature=0, max_tokens=args.tokens, progress=False)
        seconds = time.perf_counter() - t
        return {"seconds": seconds, "tok_s": total / seconds}

    paths = {"input order": chunks(list(range(len(ids))), "input"),
             "sorted by length": chunks(sorted(range(len(ids)), key=lambda p: len(ids[p])), "sorted"),
             "llama.generate (sorts)": product}
    results = alternate(paths, args.runs)
    base = median(results["input order"], "seconds")
    rows = [[n, f"{median(r, 'seconds'):.2f} ({spread(r, 'seconds')})", f"{median(r, 'tok_s'):.1f}",
             f"{base / median(r, 'seconds'):.2f}x"] for n, r in results.items()]
    lengths = sorted(len(i) for i in ids)
    print(f"{args.prompts} prompts of {lengths[0]}-{lengths[-1]} tokens (median {lengths[len(lengths) // 2]}), "
          f"{args.tokens}-token greedy replies, {step} prompts a call, {args.runs} alternated runs\n")
    print(table(rows, ["batches", "seconds (range)", "reply tokens/s", "speed-up over input order"]))
    differ = sum(a != b for a, b in zip(outputs["input"], outputs["sorted"]))
    print(f"\nreplies that differ between the two orders: {differ} of {args.prompts}")
    print(f"load at the end: {load_average()}")
    save("batch_mixed", {"machine": info, "raw": results, "differ": differ, "lengths": lengths, "per_call": step})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=None, help="32 (--template: 64)")
    ap.add_argument("--tokens", type=int, default=None, help="32 (--template: 8)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mixed", action="store_true", help="prompts of mixed lengths: sorted batches vs input order")
    ap.add_argument("--template", action="store_true", help="a ~300-token few-shot template vs a ~10-token one")
    ap.add_argument("--model", default="smollm2", help="--template's model: smollm2 (default), bench, or a path")
    args = ap.parse_args()
    if args.template:
        import batch_template

        args.prompts, args.tokens = args.prompts or 64, args.tokens or 8
        return batch_template.run(args)
    args.prompts, args.tokens = args.prompts or 32, args.tokens or 32
    if args.mixed:
        return mixed(args)
    info = header("llama.generate vs bare generate_batch vs a loop of llama.ask")

    from ct2_magics import llama

    llama.load(str(bench_model(BENCH)))
    engine = llama.engine
    texts = prompts(args.prompts)
    size = args.prompts
    tokens = [engine.tokenizer.convert_ids_to_tokens(engine.prompt_ids([{"role": "user", "content": t}])) for t in texts]
    total = args.prompts * args.tokens

    def timed(fn):
        def run() -> dict[str, float]:
            t = time.perf_counter()
            out = fn()
            seconds = time.perf_counter() - t
            run.last = out
            return {"seconds": seconds, "tok_s": total / seconds}
        return run

    # The bare baseline decodes as llama.generate does: on as many one-thread workers as the engine gives its
    # batches (status()["batch_workers"]; more than 1 for a small CPU model), each taking its share of the prompts.
    import ctranslate2

    workers = llama.status()["batch_workers"]
    generator = engine.generator if workers == 1 else ctranslate2.Generator(
        str(engine.model_dir), device=engine.device, compute_type=engine.compute_type, intra_threads=1,
        inter_threads=workers)
    print(f"batch workers: {workers} (the bare baseline uses as many)\n")

    def bare():
        results = generator.generate_batch(tokens, max_batch_size=-(-size // workers), max_length=args.tokens,
                                           sampling_topk=1, end_token=engine.end_tokens, include_prompt_in_result=False)
        return [engine.tokenizer.decode(r.sequences_ids[0], skip_special_tokens=True) for r in results]

    paths = {
        "bare generate_batch": timed(bare),
        f"llama.generate(batch_size={size})": timed(lambda: llama.generate(texts, temperature=0, max_tokens=args.tokens,
                                                                            batch_size=size, progress=False)),
        f"llama.generate() (default batch_size={llama.settings.batch_size})": timed(
            lambda: llama.generate(texts, temperature=0, max_tokens=args.tokens, progress=False)),
        "loop of llama.ask(once=True)": timed(lambda: [llama.ask(t, once=True, temperature=0, max_tokens=args.tokens)
                                                       for t in texts]),
    }
    results = alternate(paths, args.runs)
    names = list(paths)
    replies = [paths[n].last for n in names]
    # Batched and single GEMMs add in different orders, so a near-tie between two tokens may go either way.
    differ = {n: sum(a != b for a, b in zip(paths[n].last, replies[0])) for n in names[1:]}
    same = not any(differ.values())
    base = median(results[names[0]], "tok_s")
    rows = [[n, f"{median(results[n], 'seconds'):.2f}", f"{median(results[n], 'tok_s'):.1f} ({spread(results[n], 'tok_s')})",
             f"{median(results[n], 'tok_s') / base:.3f}"] for n in names]
    print(table(rows, ["path", "seconds", "tokens/s in all (range)", "vs bare"]))
    ours = median(results[names[1]], "tok_s")
    vs_bare = ours / base
    vs_loop = ours / median(results[names[3]], "tok_s")
    print(f"\n{args.prompts} prompts x {args.tokens} tokens, greedy, {args.runs} alternated runs; replies that differ from "
          f"the bare path's: " + ", ".join(f"{n}: {k}" for n, k in differ.items()))
    print(f"llama.generate / bare generate_batch: {vs_bare:.3f} (target >= 0.9): {verdict(vs_bare >= 0.9)}")
    print(f"llama.generate / loop of llama.ask: {vs_loop:.2f}x (target >= 3x): {verdict(vs_loop >= 3)}")
    print(f"load at the end: {load_average()}")
    save("batch", {"machine": info, "prompts": args.prompts, "tokens": args.tokens, "raw": results, "same_replies": same,
                   "replies_differing": differ, "vs_bare": vs_bare, "vs_loop": vs_loop})


if __name__ == "__main__":
    main()
