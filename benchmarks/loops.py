"""Which rule stops a reply that has fallen into a loop: smollm2's raw replies to a fixed set of prompts, then every
candidate rule (core/loops.py's LoopWatch with other numbers) replayed over them, piece by piece as they streamed.

A reply that ended by itself is normal: a rule that fires on it cuts it wrongly. A reply that ran to the token limit
with its second half one span repeated is a loop: a rule that fires on it stops it, and saves the tokens after that
point. Replies that ran to the limit without repeating are listed, for a look by eye. Greedy (-t 0) and sampled
(the default temperature, --samples seeds) replies are both measured: the rule must hold for both.

    python benchmarks/loops.py [--tokens 512] [--samples 2] [--quantization int8|float32] [--tiny] [--show]

--map: what the rule saves a batch. `llama.map` over the same prompts (greedy), with LlamaSettings.stop_loops on and
off in turn (--runs rounds, order rotating, after one warm-up each): wall and CPU time, tokens written, the rows
stopped, and the rows whose reply differs (every one must be a stopped row, cut where its loop was seen).

    python benchmarks/loops.py --map [--runs 3] [--tokens 512] [--batch-size 16] [--tiny]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import threading
import time
from pathlib import Path

from common import alternate, header, load_average, median, save, spread, table, verdict

PROMPTS = [
    # the two, then what analysts, teachers and researchers ask
    "What is the capital of Italy?",
    "Make a table of the five largest countries by area, with their capitals and populations.",
    "What is the capital of France?",
    "What is the capital of Japan? Answer in one word.",
    "Who wrote Romeo and Juliet?",
    "How many legs does a spider have?",
    "What is 17 times 23?",
    "Translate 'good morning, how are you?' into Spanish.",
    "Translate 'the cat sleeps on the sofa' into French.",
    "Write a short poem about the sea.",
    "Write a haiku about autumn leaves.",
    "Write a limerick about a cat who loves coffee.",
    "List five fruits that are red.",
    "List the days of the week.",
    "List the planets of the solar system in order.",
    "Give three tips for a job interview.",
    "Explain photosynthesis to a ten-year-old.",
    "Explain what a linear regression is, in three sentences.",
    "What is the difference between a list and a tuple in Python?",
    "Write a Python function that returns the factorial of n.",
    "Write a Python function that checks whether a string is a palindrome.",
    "Write a SQL query that counts the orders per customer.",
    "How do I read a CSV file with pandas?",
    "Return a JSON object with the keys name and age for a person called Ada, aged 36.",
    "Give me a JSON list of three colours.",
    "Classify the sentiment of this review as positive or negative: 'The battery died after two days.'",
    "Summarise in one sentence: The meeting was moved from Monday to Wednesday because the manager was ill.",
    "Extract the year from: 'The bridge was opened in 1932 after six years of work.'",
    "Make a markdown table of three programming languages and the year each appeared.",
    "Make a table with two columns, animal and sound, for four animals.",
    "Write a short story about a robot who learns to paint.",
    "Describe the water cycle.",
    "What causes the seasons on Earth?",
    "Give a recipe for pancakes.",
    "What are the primary colours?",
    "Write an email to a colleague asking to move our meeting to Friday.",
    "What is the boiling point of water in Fahrenheit?",
    "Name three famous paintings by Leonardo da Vinci.",
    "What is a prime number? Give five examples.",
    "Count from one to ten in German.",
    "Spell the word 'necessary' letter by letter.",
    "Write the multiplication table of 7 up to 7 x 10.",
    "What is the capital of Australia?",
    "Which is larger, 9.11 or 9.9?",
    "Write a tweet announcing a new coffee shop.",
    "Explain recursion with an example.",
    "What is machine learning?",
    "Suggest five names for a pet rabbit.",
    # asked to repeat: a rule should leave a reply that repeats on request alone if it can
    "Write the word 'hello' ten times, separated by commas.",
    "Repeat the sentence 'I will not talk in class.' five times.",
]
TINY_PROMPTS = PROMPTS[:3]

# The candidate rules: LoopWatch(max_span, min_repeats, min_chars, line_repeats).
GRID = list(itertools.product((50, 100, 200, 300), (2, 3, 4, 6), (120, 150, 200, 300), (None, 8, 12, 16)))


def replies(engine, prompts: list[str], tokens: int, temperature: float, seed: int | None) -> list[tuple[list[str], bool]]:
    """Each prompt's raw reply (no loop rule) as the pieces it streams in, and whether it ended by itself."""
    from ct2_magics.core.decoding import IncrementalDecoder
    from ct2_magics.core.options import Sampling

    ids = [engine.prompt_ids([{"role": "user", "content": p}]) for p in prompts]
    sampling = Sampling({"temperature": temperature, "max_tokens": tokens, "seed": seed})
    out = []
    for reply in engine.generate_batch(ids, sampling, threading.Event()):
        decoder = IncrementalDecoder(engine.tokenizer)
        out.append(([decoder.step(i) for i in reply], len(reply) < tokens))
    return out


def loop_start(pieces: list[str]) -> int | None:
    """Ground truth, by brute force and stricter than any rule: if the text's whole second half is one span repeated,
    the piece (token) where that repetition began; else None."""
    text = "".join(pieces)
    half = text[len(text) // 2:]
    period = next((p for p in range(1, len(half) // 2 + 1) if half[p:] == half[:-p]), None)
    if period is None:
        return None
    start = len(text) - len(half)
    while start > 0 and text[start - 1] == text[start - 1 + period]:
        start -= 1
    seen = 0
    for i, piece in enumerate(pieces):
        seen += len(piece)
        if seen > start:
            return i
    return len(pieces)


def first_alarm(pieces: list[str], rule: tuple) -> int | None:
    """The number of pieces (tokens) read when the rule stops the reply, or None."""
    from ct2_magics.core.loops import LoopWatch

    watch = LoopWatch(*rule)
    return next((i + 1 for i, piece in enumerate(pieces) if watch.feed(piece)), None)


def measure(data: list[tuple], kinds: list[tuple[str, int | None]], rule: tuple) -> dict:
    """What a rule does to the replies: normal ones it cuts, loops and long replies it stops, tokens it saves."""
    out = {"rule": rule, "cut": [], "loops": 0, "long": 0, "saved": 0, "loop_tokens_shown": []}
    for (_run, prompt, pieces, _ended), (kind, start) in zip(data, kinds):
        alarm = first_alarm(pieces, rule)
        if alarm is None:
            continue
        if kind == "normal":
            out["cut"].append(prompt)
            continue
        out["saved"] += len(pieces) - alarm
        if kind == "loop":
            out["loops"] += 1
            out["loop_tokens_shown"].append(alarm - start)
        else:
            out["long"] += 1
    return out


def map_figure(args: argparse.Namespace) -> None:
    """llama.map over the prompts with stop_loops on and off, alternated: time, tokens, rows stopped and changed."""
    info = header("llama.map over prompts that include loops: stop_loops on vs off")
    from ct2_magics import llama

    prompts = TINY_PROMPTS if args.tiny else PROMPTS
    engine = llama.load("demo" if args.tiny else "smollm2", quantization=None if args.tiny else args.quantization)
    count = lambda text: len(engine.tokenizer.encode(text, add_special_tokens=False))  # noqa: E731
    replies: dict[bool, list[list[str]]] = {True: [], False: []}
    stopped: dict[bool, list[list[int]]] = {True: [], False: []}

    def path(on: bool):
        def run() -> dict[str, float]:
            llama.settings.stop_loops = on
            wall, cpu = time.perf_counter(), time.process_time()
            out = llama.map(prompts, temperature=0, max_tokens=args.tokens, batch_size=args.batch_size, progress=False)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            replies[on].append(out)
            stopped[on].append([e.position for e in llama.last_loops])
            return {"wall_s": wall, "cpu_s": cpu, "tokens": sum(count(r) for r in out)}
        return run

    results = alternate({"stop_loops on": path(True), "stop_loops off": path(False)}, runs=args.runs)
    print(f"{len(prompts)} prompts to {engine.name} ({engine.compute_type}), greedy, max_tokens {args.tokens}, batch_size "
          f"{args.batch_size} x {engine.batch_workers} workers; {args.runs} alternated rounds after a warm-up each\n")
    print(table([[name, median(r, "wall_s"), spread(r, "wall_s"), median(r, "cpu_s"), median(r, "tokens")]
                 for name, r in results.items()],
                ["llama.map", "wall s (median)", "wall s (range)", "CPU s (median)", "tokens written"]))
    on, off = replies[True][-1], replies[False][-1]
    cut = stopped[True][-1]
    changed = [i for i, (a, b) in enumerate(zip(on, off)) if a != b]
    same_runs = all(r == on for r in replies[True]) and all(r == off for r in replies[False])
    prefix = all(off[i].startswith(on[i]) for i in cut)
    ratio = median(results["stop_loops off"], "wall_s") / median(results["stop_loops on"], "wall_s")
    print(f"\nstop_loops on is {ratio:.2f}x faster (wall); rows stopped in a loop: {len(cut)} of {len(prompts)} "
          f"({', '.join(repr(prompts[i][:40]) for i in cut)}); rows changed: {len(changed)}, all of them stopped rows "
          f"{verdict(set(changed) <= set(cut))}; each stopped reply a prefix of the one that ran on {verdict(prefix)}; "
          f"the same replies every round {verdict(same_runs)}; with stop_loops off none reported "
          f"{verdict(not any(stopped[False]))}")
    for i in cut:
        print(f"  {prompts[i]!r}: {count(on[i])} tokens instead of {count(off[i])}; ends {on[i][-60:]!r}")
    save("loops_map", {"machine": info, "load_after": load_average(), "results": results, "stopped": cut,
                       "changed": changed})
    print(f"\nload after: {load_average()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=512, help="the token limit (the default max_tokens)")
    parser.add_argument("--samples", type=int, default=2, help="sampled runs (seeds 1..N) besides the greedy one")
    parser.add_argument("--quantization", default=None, help="smollm2's conversion (int8 by default)")
    parser.add_argument("--tiny", action="store_true", help="the demo model and three prompts: checks the script runs")
    parser.add_argument("--show", action="store_true", help="print every reply's end")
    parser.add_argument("--top", type=int, default=25, help="rows of the table (the best rules first)")
    parser.add_argument("--keep", help="a JSON file for the raw replies: read when it exists, else written (rules only)")
    parser.add_argument("--map", action="store_true", help="time llama.map with stop_loops on and off (see above)")
    parser.add_argument("--runs", type=int, default=3, help="--map: alternated rounds")
    parser.add_argument("--batch-size", type=int, default=16, help="--map: llama.map's batch_size")
    args = parser.parse_args()
    if args.map:
        return map_figure(args)
    info = header("Loop rules over smollm2's replies")
    from ct2_magics import llama
    from ct2_magics.core.loops import LINE_REPEATS, MAX_SPAN, MIN_CHARS, MIN_REPEATS

    prompts = TINY_PROMPTS if args.tiny else PROMPTS
    engine = llama.load("demo" if args.tiny else "smollm2", quantization=None if args.tiny else args.quantization)
    runs = [("greedy", 0.0, None)] + [(f"t={engine.defaults.get('temperature', 0.7)} seed {s}",
                                       engine.defaults.get("temperature", 0.7), s) for s in range(1, args.samples + 1)]
    data = []  # (run, prompt, pieces, ended)
    started = time.perf_counter()
    if args.keep and Path(args.keep).is_file():
        data = [tuple(d) for d in json.loads(Path(args.keep).read_text())]
    else:
        for name, temperature, seed in runs:
            for prompt, (pieces, ended) in zip(prompts, replies(engine, prompts, args.tokens, temperature, seed)):
                data.append((name, prompt, pieces, ended))
        if args.keep:
            Path(args.keep).write_text(json.dumps(data))
    print(f"{len(data)} replies of {engine.name} ({engine.compute_type}), limit {args.tokens} tokens, "
          f"generated in {time.perf_counter() - started:.0f} s; model defaults {engine.defaults}\n")

    kinds = []  # (normal | loop | long, the token where the loop began)
    for name, prompt, pieces, ended in data:
        start = None if ended else loop_start(pieces)
        kinds.append(("normal" if ended else "loop" if start is not None else "long", start))
        if args.show or kinds[-1][0] != "normal":
            print(f"[{kinds[-1][0]}] {name}: {prompt!r} ({len(pieces)} tokens) ends {''.join(pieces)[-100:]!r}")
    loops = sum(k == "loop" for k, _ in kinds)
    print(f"\n{sum(k == 'normal' for k, _ in kinds)} ended by themselves (normal), {loops} ran to the limit in a "
          f"loop, {sum(k == 'long' for k, _ in kinds)} ran to the limit otherwise (long: often a loop with variations)\n")

    ours = (MAX_SPAN, MIN_REPEATS, MIN_CHARS, LINE_REPEATS)
    results = [measure(data, kinds, rule) for rule in GRID + ([ours] if ours not in GRID else [])]
    # The choice: no normal reply cut, then the most loops stopped, then the most tokens saved, then the fewest loop
    # tokens shown; on a tie the shorter window, then the more cautious numbers. By design a span must come three
    # times: twice (a refrain, a sentence said again) is writing.
    results.sort(key=lambda r: (r["rule"][1] < 3, len(r["cut"]), -r["loops"], -r["saved"],
                                statistics.median(r["loop_tokens_shown"] or [0]), r["rule"][0],
                                [-(x or 99) for x in r["rule"][1:]]))
    rows = [[f"{r['rule']}{' (ours)' if r['rule'] == ours else ''}", len(r["cut"]), f"{r['loops']}/{loops}", r["long"],
             r["saved"], statistics.median(r["loop_tokens_shown"]) if r["loop_tokens_shown"] else "-"]
            for r in results[:args.top]]
    print(table(rows, ["rule (max_span, min_repeats, min_chars, line_repeats)", "normal replies cut", "loops stopped",
                       "long replies stopped", "tokens saved", "loop tokens shown (median)"]))
    mine = next(r for r in results if r["rule"] == ours)
    best = results[0]
    print(f"\nours {ours}: {len(mine['cut'])} normal replies cut, {mine['loops']}/{loops} loops and {mine['long']} long "
          f"replies stopped, {mine['saved']} of {sum(len(d[2]) for d in data)} tokens saved; the measured best is "
          f"{best['rule']} {verdict(mine['rule'] == best['rule'])}")
    print("\nWhere ours stops each loop (token, of the reply's; the loop began at):")
    for (run, prompt, pieces, _ended), (kind, start) in zip(data, kinds):
        if kind == "loop":
            print(f"  {first_alarm(pieces, ours)} of {len(pieces)} (loop from {start}): {run}: {prompt!r}")
    print("\nWhat the rules next to ours (a little less cautious) cut of the normal replies:")
    for rule in ((MAX_SPAN, MIN_REPEATS, 150, LINE_REPEATS), (MAX_SPAN, MIN_REPEATS, MIN_CHARS, 8),
                 (MAX_SPAN, MIN_REPEATS, MIN_CHARS, LINE_REPEATS)):
        cut = next(r for r in results if r["rule"] == rule)["cut"] if rule in GRID else measure(data, kinds, rule)["cut"]
        print(f"  {rule}: {len(cut)} {cut[:3]}")
    save("loops", {"machine": info, "replies": len(data), "kinds": kinds, "results": results})


if __name__ == "__main__":
    main()
