"""JSON that fits its schema (`schema=`) against free JSON over the same rows, prompt and max_tokens.

Default: smollm2 (int8) labels short product reviews as JSON, greedy, through `llama.map` (batched) and `llama.ask`
(one streamed row), with and without `schema=`, runs alternated in one process: share of rows whose reply is JSON
that validates against the schema (free replies: the first {...} in the reply), seconds per row, reply tokens per
second. Target (issue 21): schema within 3x the time of free JSON.

--designs compares ways to build constrained decoding on CTranslate2 4.8.5 (no logits processor), same rows and
masks (llguidance), alternated: A forward_batch over prompt + reply at every step; B generate_batch(max_length=1,
return_logits_vocab=True) at every step; C (what ct2-magics does) the model's own generate_batch, stopped at the
first pick the schema refuses, that step's logits giving the allowed token, then a new round; C without
fast-forward; B' (one row at a time) B with the prompt as CTranslate2's cached static prompt; and free
generation. On smollm2 (a model that mostly writes what the schema wants) and on the random bench model (every
pick refused until it is inside a string).

    python benchmarks/schema_bench.py [--rows 24] [--tokens 60] [--runs 3] [--designs] [--quick]
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import threading
import time

from common import BENCH, alternate, bench_model, header, load_average, median, save, spread, table, verdict

SCHEMA = {"type": "object", "properties": {"sentiment": {"enum": ["positive", "negative"]},
                                           "rating": {"type": "integer", "minimum": 1, "maximum": 5},
                                           "topic": {"type": "string", "maxLength": 30}},
          "required": ["sentiment", "rating", "topic"]}
TEMPLATE = ('Reply with one JSON object only, with the keys "sentiment" (positive or negative), "rating" (a whole '
            'number from 1 to 5) and "topic" (one or two words).\n\nReview: {}')
PRODUCTS = ["headphones", "kettle", "backpack", "lamp", "chair", "phone case", "blender", "umbrella"]
VERDICTS = ["Great {}, works perfectly and I love it.", "Terrible {}. It broke after two days.",
            "The {} is fine, nothing special.", "Excellent {}, fast delivery and sturdy.",
            "Awful {}, a waste of money.", "Wonderful {}, my family uses it every day."]


def rows(count: int) -> list[str]:
    return [VERDICTS[i % len(VERDICTS)].format(PRODUCTS[(i // len(VERDICTS) + i) % len(PRODUCTS)]) for i in range(count)]


def valid(value: object) -> bool:
    try:
        import jsonschema
    except ImportError:  # the test extra has it; without it, the shape by hand
        return isinstance(value, dict) and set(value) == set(SCHEMA["properties"]) and value["sentiment"] in (
            "positive", "negative") and value["rating"] in range(1, 6) and isinstance(value["topic"], str)
    return jsonschema.Draft202012Validator({**SCHEMA, "additionalProperties": False}).is_valid(value)


def parse_free(reply: str | None) -> object:
    """What an analyst does with a free reply: the first {...} block, parsed."""
    match = re.search(r"\{.*\}", reply or "", re.DOTALL)
    try:
        return json.loads(match.group(0)) if match else None
    except ValueError:
        return None


def product(args) -> None:
    info = header("schema= against free JSON: validity, seconds per row, tokens/s")
    from ct2_magics import llama

    model = "demo" if args.quick else "smollm2"
    llama.load(model)
    texts = rows(args.rows)
    count = lambda replies: sum(len(llama.tokenizer.encode(r, add_special_tokens=False)) for r in replies if r)  # noqa: E731
    common = {"temperature": 0, "max_tokens": args.tokens}

    def free_map() -> dict[str, float]:
        t = time.perf_counter()
        replies = llama.map(texts, TEMPLATE, progress=False, errors="ignore", **common)
        s = time.perf_counter() - t
        return {"s_row": s / len(texts), "valid": sum(valid(parse_free(r)) for r in replies) / len(texts),
                "tok_s": count(replies) / s}

    def schema_map() -> dict[str, float]:
        t = time.perf_counter()
        table_ = llama.map(texts, TEMPLATE, schema=SCHEMA, progress=False, errors="ignore", **common)
        s = time.perf_counter() - t
        values = [None if r.isna().any() else {"sentiment": r["sentiment"], "rating": int(r["rating"]), "topic": r["topic"]}
                  for _, r in table_.iterrows()]
        replies = [json.dumps(v) for v in values if v is not None]
        return {"s_row": s / len(texts), "valid": sum(valid(v) for v in values) / len(texts), "tok_s": count(replies) / s}

    def one_by_one(schema: object):
        def run() -> dict[str, float]:
            seconds, tokens, ok = 0.0, 0, 0
            for text in texts[:args.stream_rows]:
                reply = llama.stream(TEMPLATE.format(text), schema=schema, once=True, **common)
                t = time.perf_counter()
                body = reply.consume()
                seconds += time.perf_counter() - t
                tokens += reply.metadata()["reply_tokens"]
                ok += valid(parse_free(body) if schema is None else json.loads(body) if reply.problem is None else None)
            return {"s_row": seconds / args.stream_rows, "valid": ok / args.stream_rows, "tok_s": tokens / seconds}
        return run

    paths = {"free JSON, llama.map": free_map, "schema=, llama.map": schema_map,
             "free JSON, llama.ask one row at a time": one_by_one(None), "schema=, llama.ask one row at a time": one_by_one(SCHEMA)}
    results = alternate(paths, args.runs, warmup=0 if args.quick else 1)
    print(f"{model}, {args.rows} rows (llama.ask: the first {args.stream_rows}), max_tokens {args.tokens}, greedy, "
          f"{args.runs} alternated runs; load after: {load_average()}\n")
    print(table([[name, median(r, "valid"), median(r, "s_row"), spread(r, "s_row"), median(r, "tok_s")]
                 for name, r in results.items()], ["path", "valid share", "s/row (median)", "s/row range", "reply tok/s"]))
    for kind in ("llama.map", "llama.ask one row at a time"):
        ratio = median(results[f"schema=, {kind}"], "s_row") / median(results[f"free JSON, {kind}"], "s_row")
        print(f"\nschema / free JSON time, {kind}: {ratio:.2f}x (target <= 3x) {verdict(ratio <= 3)}")
    save("schema_bench", {"machine": info, "args": vars(args), "results": results})


def one_model(model: str, args, schema, sampling) -> dict:
    """The designs on one model, batch 1 and args.batch: printed tables, and the results by name."""
    import numpy as np

    from ct2_magics import llama
    from ct2_magics.core import constrained

    report = {}
    llama.load(model)
    engine = llama.engine
    prompts = [engine.prompt_ids([{"role": "user", "content": TEMPLATE.format(t)}]) for t in rows(args.rows)]
    tokens = engine.tokenizer.convert_ids_to_tokens
    # Every path on the Generator llama.map uses (a one-thread worker per core for a small model), split the same way.
    generator, workers = engine.batch_generator(), engine.batch_workers

    def stepwise(batch: list[list[int]], forward: bool, static: bool = False) -> list[constrained.Reply]:
        """A and B: one model call per step over prompt + reply so far, the masked argmax of its last position.
        static (B', one row at a time): the prompt as CTranslate2's cached static prompt, so a step reads the reply only."""
        replies = [constrained.Reply(engine, schema, p, args.tokens, lambda t: None) for p in batch]
        while True:
            for r in replies:
                r.fast_forward()
            live = [r for r in replies if r.state == "running"]
            if not live:
                return replies
            seqs = [tokens(r.prompt + r.ids) for r in live]
            if forward:
                out = np.array(generator.forward_batch(seqs, return_log_probs=True))
                last = [out[k, len(s) - 1] for k, s in enumerate(seqs)]
            elif static:
                (r,) = live
                res = engine.generator.generate_batch([tokens(r.prompt[-1:] + r.ids)], static_prompt=tokens(r.prompt[:-1]),
                                                      cache_static_prompt=True, max_length=1, return_logits_vocab=True,
                                                      end_token=engine.end_tokens, include_prompt_in_result=False)
                last = [np.asarray(res[0].logits[0][-1])]
            else:
                res = generator.generate_batch(seqs, max_length=1, return_logits_vocab=True, end_token=engine.end_tokens,
                                               include_prompt_in_result=False, max_batch_size=-(-len(seqs) // workers))
                last = [np.asarray(x.logits[0][-1]) for x in res]
            for r, logits in zip(live, last):
                r.replace(logits, sampling, np.random.default_rng())

    def speculative(batch: list[list[int]], fast_forward: bool = True) -> list[constrained.Reply]:
        replies = [constrained.Reply(engine, schema, p, args.tokens, lambda t: None) for p in batch]
        if not fast_forward:
            for r in replies:  # the same rounds, forced tokens left to the model (each refused one costs a round)
                r.fast_forward = lambda r=r: setattr(r, "state", "running") if r.state == "refused" else None
        constrained.decode(engine, replies, sampling, threading.Event(), generator=generator, workers=workers)
        return replies

    def free(batch: list[list[int]]) -> list[list[int]]:
        return engine.generate_batch(batch, sampling, threading.Event())

    def path(fn, size: int):
        def run() -> dict[str, float]:
            t = time.perf_counter()
            written = 0
            for i in range(0, len(prompts), size):
                for r in on_thread(fn, prompts[i:i + size]):
                    written += len(r) if isinstance(r, list) else len(r.ids)
            s = time.perf_counter() - t
            return {"s_row": s / len(prompts), "tok_s": written / s, "tokens": written}
        return run

    for size in (1, args.batch):
        paths = {"free generation": path(free, size),
                 "A forward_batch every step": path(lambda b: stepwise(b, True), size),
                 "B generate_batch(max_length=1) every step": path(lambda b: stepwise(b, False), size),
                 "B' the same, prompt as cached static_prompt": path(lambda b: stepwise(b, False, True), size),
                 "C speculative rounds (ct2-magics)": path(speculative, size),
                 "C without fast-forward": path(lambda b: speculative(b, False), size)}
        if size > 1:
            del paths["B' the same, prompt as cached static_prompt"]  # one static prompt per call: one row at a time
        rss = resident_mb()
        results = alternate(paths, args.runs, warmup=0 if args.quick else 1)
        name = f"{engine.name.rsplit('/', 1)[-1]}, batch {size}"
        report[name] = results
        print(f"\n{name}: {args.rows} rows, max_tokens {args.tokens}, greedy; load after: {load_average()}; process grew "
              f"{resident_mb() - rss:.0f} MB (B' keeps every row's prompt in CTranslate2's cache until unload)\n")
        free_s = median(results["free generation"], "s_row")
        print(table([[n, median(r, "s_row"), spread(r, "s_row"), median(r, "s_row") / free_s, median(r, "tokens"),
                      median(r, "tok_s")] for n, r in results.items()],
                    ["design", "s/row (median)", "range", "x free", "tokens written", "tok/s"]))
    return report


def designs(args) -> None:
    info = header("Constrained decoding on CTranslate2: four designs against free generation")
    from ct2_magics.core.options import Sampling
    from ct2_magics.core.schema import as_schema

    report = {}
    for model in (["demo"] if args.quick else ["smollm2", str(bench_model(BENCH))]):
        report.update(one_model(model, args, as_schema(SCHEMA), Sampling({"temperature": 0.0, "max_tokens": args.tokens})))
    save("schema_designs", {"machine": info, "args": vars(args), "results": report})


def resident_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def on_thread(fn, *args):
    """fn(*args) on a worker thread, as ct2-magics runs CTranslate2 with a callback: a generate_batch with a callback
    made from the main thread can abort the process at exit ("terminate called without an active exception")."""
    out = {}
    worker = threading.Thread(target=lambda: out.update(value=fn(*args)))
    worker.start()
    worker.join()
    return out["value"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=24)
    p.add_argument("--stream-rows", type=int, default=6, help="rows asked one at a time with llama.ask")
    p.add_argument("--tokens", type=int, default=60, help="max_tokens of every reply")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--batch", type=int, default=8, help="--designs: rows per batch besides 1")
    p.add_argument("--designs", action="store_true", help="compare the ways to build constrained decoding")
    p.add_argument("--quick", action="store_true", help="the demo model, 3 rows, 1 run: checks that the script works")
    args = p.parse_args()
    if args.quick:
        args.rows, args.stream_rows, args.tokens, args.runs, args.batch = 3, 2, 24, 1, 2
    (designs if args.designs else product)(args)
    # Collected now rather than during interpreter shutdown: the design loops' CTranslate2 calls with a callback,
    # left to the shutdown's collection, aborted the process there about one run in two (never the product's paths).
    gc.collect()


if __name__ == "__main__":
    main()
