"""Answers an analysis can use, part 1: choices against labels read by hand out of free text.

Two labelled sets built here: cities of the time-zone database (Python's zoneinfo / tzdata: zone.tab and
iso3166.tab) with four candidate countries per group of cities, and short reviews written for this script
(positive / negative). For each: accuracy and the share of usable labels (free text counts when it names
exactly one candidate), seconds per row. Then the cost: `llama.map` with two choices against free
generation of 8 tokens over the same rows, alternated in one run, medians (target: choices <= 2x), with
CTranslate2's bare score_batch on the same sequences and a one-read alternative (the prompt as a static
prompt, then each choice's prefixes: one call per prefix length) measured beside them.

    python benchmarks/structured.py [--model smollm2] [--rows 64] [--runs 5] [--cities 120] [--quick]
    python benchmarks/structured.py --batch-tokens 128,256,512,1024   # score batch sizes, wall and CPU time
"""

from __future__ import annotations

import argparse
import math
import random
import re
import statistics
import time
from pathlib import Path

from common import alternate, header, load_average, median, save, spread, table, verdict

REVIEWS = [
    ("Great sound, comfortable, and the battery lasts all week.", "positive"),
    ("Stopped working after two days and the seller ignored me.", "negative"),
    ("The kettle boils fast and it looks lovely in the kitchen.", "positive"),
    ("It leaks from the bottom. A waste of money.", "negative"),
    ("My kids love this game; we play it every evening.", "positive"),
    ("The pages fell out of the binding within a week.", "negative"),
    ("Fast delivery, well packed, exactly as described.", "positive"),
    ("Smells of plastic and the colour is nothing like the photo.", "negative"),
    ("Best pizza in town, friendly staff, fair prices.", "positive"),
    ("Cold food, rude waiter, and we waited an hour.", "negative"),
    ("Comfortable shoes, I walked ten miles without a blister.", "positive"),
    ("The zip broke on the first trip and the strap frayed.", "negative"),
    ("A gripping story with characters I will miss.", "positive"),
    ("Boring plot and a predictable ending; I gave up halfway.", "negative"),
    ("The lamp gives a warm light, perfect for reading.", "positive"),
    ("It flickers constantly and gives me a headache.", "negative"),
    ("Sturdy, easy to assemble, and the desk does not wobble.", "positive"),
    ("Missing screws and the instructions made no sense.", "negative"),
    ("The hotel room was spotless and the view was stunning.", "positive"),
    ("Noisy room, dirty towels, and the wifi never worked.", "negative"),
    ("Sharp knife, good balance, a joy to cook with.", "positive"),
    ("Rusted after one wash. Do not buy.", "negative"),
    ("Clear instructions and the app connected at once.", "positive"),
    ("The app crashes every time I open it.", "negative"),
]
REVIEW_TEMPLATE = "Is this review positive or negative? Answer with one word.\n\nReview: {}"
CITY_TEMPLATE = "In which country is the city of {}? Answer with the country's name only."


def tz_table(name: str) -> str:
    """A table of the time-zone database: from the tzdata package, else from zoneinfo's search path."""
    try:
        from importlib.resources import files

        return (files("tzdata") / "zoneinfo" / name).read_text()
    except (ImportError, FileNotFoundError, ModuleNotFoundError):
        import zoneinfo

        for root in zoneinfo.TZPATH:
            if (Path(root) / name).is_file():
                return (Path(root) / name).read_text()
    raise SystemExit(f"no {name}: pip install tzdata")


def city_groups(limit: int, per_country: int = 3, seed: int = 21) -> list[tuple[list[str], list[tuple[str, str]]]]:
    """Groups of four countries with their cities of zoneinfo.available_timezones(): (candidates, [(city, country)])."""
    import zoneinfo

    names = dict(line.split("\t")[:2] for line in tz_table("iso3166.tab").splitlines() if line and line[0] != "#")
    zones = zoneinfo.available_timezones()
    by_country: dict[str, list[str]] = {}
    for line in tz_table("zone.tab").splitlines():
        if line and line[0] != "#":
            code, _, zone = line.split("\t")[:3]
            if zone in zones:
                by_country.setdefault(names[code], []).append(zone.rsplit("/", 1)[1].replace("_", " "))
    rng = random.Random(seed)
    countries = sorted(by_country)
    rng.shuffle(countries)
    groups, total = [], 0
    for i in range(0, len(countries) - 3, 4):
        candidates = sorted(countries[i:i + 4])
        rows = [(city, c) for c in candidates for city in sorted(by_country[c])[:per_country]]
        rng.shuffle(rows)
        rows = rows[:max(0, limit - total)]
        if rows:
            groups.append((candidates, rows))
            total += len(rows)
    return groups


def read_by_hand(reply: str | None, candidates: list[str]) -> str | None:
    """What an analyst does with a free reply: the one candidate it names (as a word), else nothing."""
    named = [c for c in candidates if re.search(rf"(?<!\w){re.escape(c)}(?!\w)", reply or "", re.IGNORECASE)]
    return named[0] if len(named) == 1 else None


def accuracy(llama, name: str, groups: list[tuple[list[str], list[tuple[str, str]]]], template: str) -> list:
    """Free text read by hand against choices on one labelled set: [set, method, right, usable, rows, s/row]."""
    out = {"free text, read by hand": [0, 0, 0.0], "choices": [0, 0, 0.0]}
    rows = 0
    for candidates, labelled in groups:
        items = [item for item, _ in labelled]
        gold = [label for _, label in labelled]
        rows += len(items)
        began = time.perf_counter()
        free = llama.map(items, template, temperature=0, max_tokens=16, progress=False)
        free_s = time.perf_counter() - began
        began = time.perf_counter()
        chosen = llama.map(items, template, choices=candidates, progress=False)
        chosen_s = time.perf_counter() - began
        read = [read_by_hand(r, candidates) for r in free]
        for method, labels, seconds in (("free text, read by hand", read, free_s), ("choices", chosen, chosen_s)):
            out[method][0] += sum(a == b for a, b in zip(labels, gold))
            out[method][1] += sum(a is not None for a in labels)
            out[method][2] += seconds
    chance = sum(len(labelled) / len(candidates) for candidates, labelled in groups)
    return [[name, method, f"{right} ({right / rows:.0%})", f"{usable / rows:.0%}", f"{seconds / rows:.3f}",
             f"{chance:.0f} ({chance / rows:.0%})"] for method, (right, usable, seconds) in out.items()]


def one_read(engine, generator, prompts: list[list[int]], tails: list[list[int]]) -> list[list[float]]:
    """Each tail's log probability after each prompt, reading the prompt once per prefix length of the tails:
    the prompt less its last token as an uncached static prompt, then (last token + each tail's prefix of one
    length) in one generate_batch step that returns its distribution. Bare CTranslate2, for comparison only."""
    import numpy as np

    tokens = engine.tokenizer.convert_ids_to_tokens
    lengths: dict[int, list[tuple[int, ...]]] = {}
    for t in tails:
        for j in range(len(t)):
            lengths.setdefault(j, []).append(tuple(t[:j]))
    lengths = {j: sorted(set(p)) for j, p in lengths.items()}
    pending = []
    for p in prompts:
        for prefixes in lengths.values():
            pending.append((prefixes, generator.generate_batch(
                [tokens(p[-1:] + list(x)) for x in prefixes], static_prompt=tokens(p[:-1]), cache_static_prompt=False,
                max_length=1, return_logits_vocab=True, include_prompt_in_result=False, asynchronous=True)))
    scores, it = [], iter(pending)
    for _ in prompts:
        logp: dict[tuple[int, ...], np.ndarray] = {}
        for _ in lengths:
            prefixes, results = next(it)
            for x, r in zip(prefixes, results):
                v = np.asarray(r.result().logits[0], dtype=np.float64).ravel()
                logp[x] = v - v.max() - math.log(np.exp(v - v.max()).sum())
        scores.append([math.fsum(logp[tuple(t[:j])][t[j]] for j in range(len(t))) for t in tails])
    return scores


def cost(llama, args) -> tuple[list, dict]:
    """Two-choice map against free 8-token generation over the same rows, alternated; medians."""
    import ctranslate2

    from ct2_magics.core import choices as core_choices

    engine = llama.engine
    texts = [REVIEWS[i % len(REVIEWS)][0] for i in range(args.rows)]
    labels = ["positive", "negative"]
    prompts = [engine.prompt_ids([{"role": "user", "content": REVIEW_TEMPLATE.format(t)}]) for t in texts]
    tails = core_choices.tails(engine, [{"role": "user", "content": REVIEW_TEMPLATE.format(texts[0])}], labels)
    workers = llama.status()["batch_workers"]
    bare_generator = engine.generator if workers == 1 else ctranslate2.Generator(
        str(engine.model_dir), device=engine.device, compute_type=engine.compute_type, intra_threads=1,
        inter_threads=workers)
    sequences = [engine.tokenizer.convert_ids_to_tokens(p + t) for p in prompts for t in tails]
    seen: dict[str, object] = {}

    def timed(name, fn):
        def run() -> dict[str, float]:
            began = time.perf_counter()
            seen[name] = fn()
            return {"seconds": time.perf_counter() - began}
        return run

    free_name = "free generation, 8 tokens (llama.map)"
    paths = {
        free_name: timed(free_name, lambda: llama.map(texts, REVIEW_TEMPLATE, temperature=0, max_tokens=8, progress=False)),
        "2 choices (llama.map)": timed("2", lambda: llama.map(texts, REVIEW_TEMPLATE, choices=labels, probs=True,
                                                                 progress=False)),
        "2 choices, bare score_batch": timed("bare", lambda: bare_generator.score_batch(
            sequences, max_batch_size=core_choices.TOKENS_PER_BATCH, batch_type="tokens", max_input_length=0)),
        "2 choices, one read (static prompt)": timed("one", lambda: one_read(engine, bare_generator, prompts, tails)),
        "4 choices (llama.map)": timed("4", lambda: llama.map(texts, REVIEW_TEMPLATE, progress=False,
                                                              choices=labels + ["mixed", "neutral"])),
    }
    results = alternate(paths, args.runs)
    base = median(results[free_name], "seconds")
    rows = [[name, f"{median(r, 'seconds'):.2f} ({spread(r, 'seconds')})", f"{1000 * median(r, 'seconds') / args.rows:.1f}",
             f"{median(r, 'seconds') / base:.2f}x"] for name, r in results.items()]
    free_tokens = statistics.mean(len(engine.tokenizer.encode(t, add_special_tokens=False)) for t in seen[free_name])
    table_ = seen["2"]
    one = seen["one"]
    agree = sum((s[0] >= s[1]) == (p >= q) for s, (p, q) in zip(one, table_[labels].to_numpy()))
    facts = {"ratio": median(results["2 choices (llama.map)"], "seconds") / base, "free_reply_tokens": free_tokens,
             "one_read_label_agreement": agree, "prompt_tokens": statistics.median(map(len, prompts)),
             "tail_tokens": [len(t) for t in tails], "raw": results}
    return rows, facts


def batch_sizes(llama, args) -> None:
    """The 2-choice map with score batches of each size in --batch-tokens, alternated; wall and CPU seconds."""
    from ct2_magics.core import choices as core_choices

    texts = [REVIEWS[i % len(REVIEWS)][0] for i in range(args.rows)]
    kept = core_choices.TOKENS_PER_BATCH

    def run(size: int):
        def one() -> dict[str, float]:
            core_choices.TOKENS_PER_BATCH = size
            wall, cpu = time.perf_counter(), time.process_time()
            llama.map(texts, REVIEW_TEMPLATE, choices=["positive", "negative"], progress=False)
            return {"seconds": time.perf_counter() - wall, "cpu": time.process_time() - cpu}
        return one

    try:
        results = alternate({int(n): run(int(n)) for n in args.batch_tokens.split(",")}, args.runs)
    finally:
        core_choices.TOKENS_PER_BATCH = kept
    print(table([[n, f"{median(r, 'seconds'):.2f} ({spread(r, 'seconds')})", f"{median(r, 'cpu'):.2f} ({spread(r, 'cpu')})"]
                 for n, r in results.items()], ["tokens per score batch", "wall seconds (range)", "CPU seconds (range)"]))
    print(f"{args.rows} rows, 2 choices, {args.runs} alternated runs; load at the end: {load_average()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--quantization", default=None, help="for smollm2: int8 (default) or float32")
    ap.add_argument("--rows", type=int, default=64, help="rows of the cost comparison")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cities", type=int, default=120)
    ap.add_argument("--quick", action="store_true", help="a few rows on the demo model: checks that the script runs")
    ap.add_argument("--batch-tokens", help="instead: the 2-choice map with these score batch sizes, e.g. 128,256,512")
    args = ap.parse_args()
    if args.quick:
        args.model, args.rows, args.runs, args.cities = "demo", 6, 1, 8
    info = header("Choices: score batch sizes" if args.batch_tokens else "Choices against labels read out of free text")
    from ct2_magics import llama

    llama.load(args.model, quantization=args.quantization)
    llama.settings.quiet = True
    print(f"model: {args.model} ({llama.engine.compute_type}), batch workers: {llama.status()['batch_workers']}\n")
    if args.batch_tokens:
        return batch_sizes(llama, args)

    groups = city_groups(args.cities)
    reviews = REVIEWS[:8] if args.quick else REVIEWS
    sets = [accuracy(llama, f"cities -> country ({sum(len(g[1]) for g in groups)})", groups, CITY_TEMPLATE),
            accuracy(llama, f"review sentiment ({len(reviews)})", [(["negative", "positive"], reviews)], REVIEW_TEMPLATE)]
    print(table([row for rows in sets for row in rows],
                ["labelled set", "method", "right", "usable labels", "s/row", "chance"]))
    rows, facts = cost(llama, args)
    print(f"\n{args.rows} review rows, median prompt {facts['prompt_tokens']:.0f} tokens, choice tails "
          f"{facts['tail_tokens']} tokens; free replies {facts['free_reply_tokens']:.1f} tokens on average; "
          f"{args.runs} alternated runs\n")
    print(table(rows, ["path", "seconds (range)", "ms/row", "vs free 8 tokens"]))
    print(f"\n2-choice llama.map / free 8-token llama.map: {facts['ratio']:.2f}x (target <= 2) {verdict(facts['ratio'] <= 2)}")
    print(f"one-read labels equal to score_batch labels: {facts['one_read_label_agreement']} of {args.rows}")
    print(f"load at the end: {load_average()}")
    save("structured", {"machine": info, "sets": sets, "cost": rows, **facts})


if __name__ == "__main__":
    main()
