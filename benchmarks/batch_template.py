"""`python benchmarks/batch.py --template`: llama.map with a ~300-token few-shot template against a ~10-token one.

Same 64 words, greedy, alternated in one run (issue 22). Paths:
- short template: "Which category is this word: {}" (no shared prefix long enough to cut; as before);
- long template, today: the same rows' whole prompts through the engine's batch Generator, batched as
  llama.map batches them, nothing cut (what llama.map did before issue 22);
- long template, 1st call: llama.map after the prompt cache was emptied (its chunks cut at the template's
  shared prefix; the first chunk on each worker computes it and caches it);
- long template, 2nd call: llama.map again at once (the prefix is read from the cache).
Targets: 1st and 2nd call <= 2x the short template; 2nd call no slower than the 1st; the cache's count within
prefix_cache_mb. Replies: the three ways of cutting (cache emptied, cache hit, prefix_cache_mb=0) must agree;
how many differ from the whole prompt (today) is counted (int8 near-ties, BENCHMARKS.md Findings J).
"""

from __future__ import annotations

import time
from pathlib import Path

from common import BENCH, alternate, bench_model, header, load_average, median, save, spread, table, verdict

EXAMPLES = [("cat", "animal", "a small furry pet that purrs"), ("apple", "food", "a sweet fruit that grows on trees"),
            ("hammer", "tool", "it drives nails into wood"), ("red", "colour", "the colour of blood and ripe tomatoes"),
            ("horse", "animal", "a large animal people ride"), ("bread", "food", "baked from flour, water and yeast"),
            ("saw", "tool", "it cuts wood with a toothed blade"), ("blue", "colour", "the colour of a clear sky"),
            ("eagle", "animal", "a bird of prey with sharp eyes"), ("cheese", "food", "made from milk, aged for months"),
            ("wrench", "tool", "it turns nuts and bolts"), ("green", "colour", "the colour of grass and leaves")]
LONG = ("Sort each word into one of four categories: animal, food, tool or colour. Answer with the category, then "
        "say why in a few words.\n\n" + "".join(f"Word: {w}\nCategory: {c}\nWhy: {y}.\n\n" for w, c, y in EXAMPLES)
        + "Word: {}\nCategory:")
SHORT = "Which category is this word: {}"
WORDS = ("dog rice drill yellow sheep soup pliers purple lion pasta chisel orange whale bean shovel pink goat honey "
         "axe brown mouse plum rake grey tiger salad spanner white frog lemon ladder black duck melon screwdriver "
         "violet bear onion trowel silver wolf grape file gold camel bacon mallet beige snake carrot clamp crimson "
         "otter walnut level teal rabbit pepper vice navy owl biscuit sickle ivory").split()


def rss_mb() -> float:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmRSS"))
    return int(line.split()[1]) / 1024


def run(args) -> None:
    info = header("llama.map: a ~300-token few-shot template against a ~10-token one (shared prefix, issue 22)")
    from ct2_magics import llama

    rows = WORDS[:args.prompts] if args.prompts <= len(WORDS) else (WORDS * (args.prompts // len(WORDS) + 1))[:args.prompts]
    llama.load(str(bench_model(BENCH)) if args.model == "bench" else args.model)
    engine = llama.engine
    options = {"temperature": 0, "max_tokens": args.tokens, "progress": False}
    rss_loaded = rss_mb()
    llama.map(rows[:2], SHORT, **options)  # makes the batch workers' Generator, as any first call does
    sizes = {n: len(engine.prompt_ids([{"role": "user", "content": t.format(rows[0])}])) for n, t in (("short", SHORT),
                                                                                                      ("long", LONG))}
    generator = engine.generators()[engine.batch_place]
    workers, step = engine.batch_workers, llama.settings.batch_size * engine.batch_workers
    long_ids = [engine.prompt_ids([{"role": "user", "content": LONG.format(w)}]) for w in rows]
    replies: dict[str, list] = {}

    def today() -> dict[str, float]:
        """The whole prompts, sorted by length and chunked as llama.map does, on the same workers; nothing cut."""
        t, cpu = time.perf_counter(), time.process_time()
        order = sorted(range(len(long_ids)), key=lambda p: len(long_ids[p]))
        out: dict[int, str] = {}
        for i in range(0, len(order), step):
            part = order[i:i + step]
            tokens = [engine.tokenizer.convert_ids_to_tokens(long_ids[p]) for p in part]
            results = generator.generate_batch(tokens, max_batch_size=-(-len(part) // workers), max_length=args.tokens,
                                               sampling_topk=1, end_token=engine.end_tokens, include_prompt_in_result=False)
            out.update((p, engine.decode(r.sequences_ids[0])) for p, r in zip(part, results))
        seconds = time.perf_counter() - t
        replies["today"] = [out[p] for p in range(len(rows))]
        return {"seconds": seconds, "cpu": time.process_time() - cpu}

    def short() -> dict[str, float]:
        t, cpu = time.perf_counter(), time.process_time()
        llama.map(rows, SHORT, **options)
        return {"seconds": time.perf_counter() - t, "cpu": time.process_time() - cpu}

    peak = {"bytes": 0, "rss": 0.0}

    def long_calls() -> dict[str, float]:
        engine.clear_cache()  # a first call: nothing of this template is cached
        t, cpu = time.perf_counter(), time.process_time()
        replies["first"] = llama.map(rows, LONG, **options)
        first, first_cpu = time.perf_counter() - t, time.process_time() - cpu
        t, cpu = time.perf_counter(), time.process_time()
        replies["second"] = llama.map(rows, LONG, **options)
        second, second_cpu = time.perf_counter() - t, time.process_time() - cpu
        peak["bytes"] = max(peak["bytes"], llama.status()["prompt_cache"]["bytes"])
        peak["rss"] = max(peak["rss"], rss_mb())
        return {"first": first, "second": second, "first_cpu": first_cpu, "second_cpu": second_cpu}

    results = alternate({"short template": short, "long template, today (whole prompts)": today,
                         "long template (1st and 2nd call)": long_calls}, args.runs)
    cache = llama.status()["prompt_cache"]
    shared = max((h["tokens"] for h in cache["held"] if h["use"] == "batch"), default=0)
    llama.settings.prefix_cache_mb = 0  # cut at the same place, never cached
    time.sleep(1.5)  # the lower budget empties the cache in idle time
    replies["off"] = llama.map(rows, LONG, **options)

    base = median(results["short template"], "seconds")
    calls = results["long template (1st and 2nd call)"]
    lines = [("short template", results["short template"], "seconds", "cpu", sizes["short"]),
             ("long template, today (whole prompts)", results["long template, today (whole prompts)"], "seconds", "cpu",
              sizes["long"]),
             ("long template, 1st call (cache emptied)", calls, "first", "first_cpu", sizes["long"]),
             ("long template, 2nd call (cache hit)", calls, "second", "second_cpu", sizes["long"])]
    cpu_base = median(results["short template"], "cpu")
    print(f"{len(rows)} rows, {args.tokens}-token greedy replies, {args.runs} alternated runs, {workers} batch workers, "
          f"{step} rows a chunk; shared prefix cut and cached: {shared} tokens\n")
    print(table([[n, p, f"{median(r, k):.2f} ({spread(r, k)})", f"{median(r, k) / base:.2f}x",
                  f"{median(r, c):.2f} ({spread(r, c)})", f"{median(r, c) / cpu_base:.2f}x"] for n, r, k, c, p in lines],
                ["path", "prompt tokens (row 1)", "seconds (range)", "vs short", "CPU seconds (range)", "CPU vs short"]))
    first = median(results["long template (1st and 2nd call)"], "first")
    second = median(results["long template (1st and 2nd call)"], "second")
    today_s = median(results["long template, today (whole prompts)"], "seconds")
    pairs = [(r["first"], r["second"]) for r in results["long template (1st and 2nd call)"]]
    same = replies["first"] == replies["second"] == replies["off"]
    differ = sum(a != b for a, b in zip(replies["second"], replies["today"]))
    print(f"\ntoday: long / short {today_s / base:.2f}x; with the shared prefix: {today_s / second:.1f}x faster (2nd call)")
    print(f"1st call / short template: {first / base:.2f}x (target <= 2x): {verdict(first / base <= 2)}")
    print(f"2nd call / short template: {second / base:.2f}x (target <= 2x): {verdict(second / base <= 2)}")
    print(f"2nd call / 1st call: {second / first:.2f} (pairs: {', '.join(f'{b / a:.2f}' for a, b in pairs)}; "
          f"target <= 1): {verdict(second <= first)}")
    print(f"cache count at most {peak['bytes'] / 2**20:.1f} MB of {cache['limit'] / 2**20:.0f} MB "
          f"(target: within): {verdict(peak['bytes'] <= cache['limit'])}; RSS {rss_loaded:.0f} MB after load, "
          f"at most {peak['rss']:.0f} MB")
    print(f"replies: cache emptied / cache hit / prefix_cache_mb=0 identical: {same}; "
          f"differing from the whole prompt (today): {differ} of {len(rows)}")
    shares = workers_share_cache(engine, LONG * (3 if len(rows) >= 16 else 1)) if workers > 1 else None
    print(f"load at the end: {load_average()}")
    save("batch_template", {"machine": info, "raw": results, "sizes": sizes, "shared": shared, "same": same,
                            "differ_from_whole": differ, "peak_cache_bytes": peak["bytes"], "peak_rss_mb": peak["rss"],
                            "replies": replies, "workers_share_cache": shares})


def workers_share_cache(engine, text: str) -> dict[str, float]:
    """Whether the workers of one Generator (inter_threads > 1) share its static-prompt cache (Findings L).

    A fresh Generator like the engine's batch one. A one-row call caches a long prefix (one worker computes
    it: "compute"); then 4 one-row batches per worker send it again. Had each worker a cache of its own, the
    others would each compute it once more, and that call would take at least one compute more than its hits.
    """
    import ctranslate2

    workers = engine.batch_workers
    generator = ctranslate2.Generator(str(engine.model_dir), device=engine.device, compute_type=engine.compute_type,
                                      intra_threads=1, inter_threads=workers)
    tokenize = engine.tokenizer.convert_ids_to_tokens
    prefix = tokenize(engine.prompt_ids([{"role": "user", "content": text}]))
    rows = [tokenize(engine.tokenizer.encode(f" row {i}, and the rest of its prompt", add_special_tokens=False))
            for i in range(4 * workers)]
    seen = {}
    for name, n, cache in (("one row, computed and cached", 1, True),
                           (f"{len(rows)} one-row batches on {workers} workers, cached", len(rows), True),
                           (f"{workers} one-row batches, uncached (one compute each)", workers, False)):
        before, t = rss_mb(), time.perf_counter()
        generator.generate_batch(rows[:n], max_batch_size=1, static_prompt=prefix, cache_static_prompt=cache,
                                 max_length=1)
        seen[name] = {"seconds": time.perf_counter() - t, "rss_mb": rss_mb() - before}
    counted = engine.prefixes.size(len(prefix)) / 2**20
    first, hits, _ = (v["seconds"] for v in seen.values())
    print(f"\nworkers' caches ({workers} workers, a {len(prefix)}-token prefix, {counted:.0f} MB counted): " + "; ".join(
        f"{n}: {v['seconds']:.2f} s, RSS {v['rss_mb']:+.0f} MB" for n, v in seen.items()))
    print(f"the other workers {'read it from the one cache' if hits < 0.5 * first else 'may have computed it again'} "
          f"(cached batches {hits:.2f} s against one compute {first:.2f} s)")
    del generator
    return {"prefix_tokens": len(prefix), "counted_mb": counted, **seen}
