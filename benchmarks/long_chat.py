"""First token as a chat grows: prefilled in idle time (a pause to read), sent back to back, and as today.

For each model (the bench model; smollm2, `%llama load smollm2`), a chat of --turns turns is played three ways:
  today     LlamaSettings.prefill = False: the whole conversation is read again every turn
  no pause  prefill on, each turn sent as soon as the last reply ended (no prefill can start)
  pause     prefill on, each turn sent after the prefill of the chat so far has ended (a user who reads)
"today" and "no pause" run in one loop, alternating turn by turn (order rotating), on two chats that differ
in their first token, so neither reuses the other's cache. At the checkpoint turns the "pause" turn is
re-run --reps times (a cell run again; the prefill before each) and, before that, sent once the way a fast
typist does: while the prefill of that turn runs (the wait for the rest of it counts). First token is the
wall time from the request to its first text piece. Memory: the process RSS and the cache's own count
(status()['prompt_cache']) after each pause turn, against --budget-mb.

    python benchmarks/long_chat.py [--models bench,smollm2] [--turns 20] [--checkpoints 1,5,10,12,20]
                                   [--reps 3] [--reply 64] [--budget-mb 1024]
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import BENCH, bench_model, header, load_average, save, table

SYSTEM = "You are a patient teaching assistant for a data science course. Answer in plain, friendly English."
QUESTIONS = ["How do I read a CSV file with a date column, and make pandas parse the dates?",
             "Why does my groupby drop the rows whose key is NaN, and how do I keep them?",
             "What is the difference between loc and iloc when the index is made of integers?",
             "How can I plot two columns of a data frame against each other with matplotlib?",
             "Why is my loop over the rows of a data frame so slow, and what should I do instead?",
             "What does SettingWithCopyWarning mean, and how do I make it go away properly?",
             "How do I merge two data frames on two key columns and keep the unmatched rows?",
             "When should I report a median instead of a mean, for example for incomes?"]
MB = 2**20


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def question(turn: int) -> str:
    return f"{QUESTIONS[turn % len(QUESTIONS)]} (question {turn})"


class Chat:
    """One chat of the run, played turn by turn through `llama`."""

    def __init__(self, llama, name: str, system: str, reply: int) -> None:
        self.llama, self.name, self.reply = llama, name, reply
        llama.chat(name).set_system(system)

    def turn(self, turn: int, *, prefill: bool, typist: bool = False) -> dict:
        """Ask this chat's question `turn` (as cell turn-N: a re-run replaces the reply); first token and metadata."""
        from ct2_magics.core.response import Request

        llama = self.llama
        llama.settings.prefill = prefill
        if typist:  # a fast typist: the request comes while the prefill of this very turn runs
            while llama.status()["prompt_cache"]["state"] != "prefilling" and llama.status()["prompt_cache"]["pending"]:
                time.sleep(0.001)
        t = time.perf_counter()
        response = llama.session.respond(Request(question(turn), chat=self.name, cell_id=f"turn-{turn}",
                                                 options={"temperature": 0, "max_tokens": self.reply}))
        first = None
        for _ in response:
            first = first or time.perf_counter() - t
        meta = response.metadata()
        return {"ms": (first or float("nan")) * 1e3, "prompt": meta["prompt_tokens"],
                "cached": meta["cached_prompt_tokens"], "tokens": response.text}


def bare_reply(llama, chat: str, reply: int, split: bool) -> str:
    """The chat's last reply computed again by bare CTranslate2, greedy, uncached: the prompt cut where the
    engine cuts it (Engine.chat_split: what a run with prefix_cache_mb = 0 gives), or whole (split=False)."""
    engine = llama.engine
    messages = llama.history(chat)[:-1]
    ids = engine.prompt_ids(messages)
    n = engine.chat_split(messages[:-1], ids) if split else 0
    tokens = engine.tokenizer.convert_ids_to_tokens(ids)
    static = {"static_prompt": tokens[:n], "cache_static_prompt": False} if n else {}
    result = engine.generator.generate_batch([tokens[n:]], max_length=reply, end_token=engine.end_tokens,
                                             include_prompt_in_result=False, sampling_topk=1, **static)
    ends = set(engine.tokenizer.convert_tokens_to_ids(engine.end_tokens))
    return engine.decode([i for i in result[0].sequences_ids[0] if i not in ends])


def settle(llama) -> dict:
    """Wait for the idle-time prefill (a user reading); the cache's state then."""
    while llama.status()["prompt_cache"]["pending"]:
        time.sleep(0.005)
    return llama.status()["prompt_cache"]


def run_model(llama, model: str, args) -> dict:
    llama.unload()
    llama.settings.prefix_cache_mb = args.budget_mb
    t = time.perf_counter()
    llama.load(model)
    load_s = time.perf_counter() - t
    name = "bench" if model != "smollm2" else "smollm2"
    engine = llama.engine
    per_token = engine.prefixes.bytes_per_token
    checkpoints = sorted({int(x) for x in args.checkpoints.split(",")} & set(range(1, args.turns + 1)))
    base_rss = rss_mb()
    print(f"\n## {name}: {engine.model_dir} ({engine.compute_type}, loaded in {load_s:.2f} s), RSS {base_rss:.0f} MB, "
          f"cache counts {per_token / 1024:.0f} KiB a token", flush=True)

    # today and no pause, alternating turn by turn
    today = Chat(llama, f"{name}-today", "Today. " + SYSTEM, args.reply)
    quick = Chat(llama, f"{name}-quick", "Quick. " + SYSTEM, args.reply)
    back_to_back: dict[int, dict[str, dict]] = {}
    for turn in range(1, args.turns + 1):
        order = [("today", today, False), ("no pause", quick, True)]
        row = {}
        for label, chat, prefill in order if turn % 2 else order[::-1]:
            row[label] = chat.turn(turn, prefill=prefill)
        back_to_back[turn] = row
    ratios = [r["no pause"]["ms"] / r["today"]["ms"] for t, r in back_to_back.items() if t > 1]

    # pause: prefilled while the user reads
    llama.settings.prefill = True
    paused = Chat(llama, f"{name}-pause", "Pause. " + SYSTEM, args.reply)
    pause: dict[int, dict] = {}
    memory = []
    typist_turns = {t for t in checkpoints if t > 1}
    for turn in range(1, args.turns + 1):
        rec: dict = {}
        if turn in typist_turns:  # the last turn did not wait: this turn's prefill is about to run
            rec["typist"] = paused.turn(turn, prefill=True, typist=True)
        runs = []
        for _ in range(args.reps if turn in checkpoints else 1):
            before = settle(llama)
            rss_before = rss_mb()
            runs.append(paused.turn(turn, prefill=True))
            runs[-1]["cache_before"], runs[-1]["rss_before"] = before, rss_before
        rec["runs"] = runs
        if turn in checkpoints:
            rec["same_uncached"] = runs[-1]["tokens"] == bare_reply(llama, paused.name, args.reply, split=True)
            rec["same_unsplit"] = runs[-1]["tokens"] == bare_reply(llama, paused.name, args.reply, split=False)
        pause[turn] = rec
        if turn + 1 in typist_turns:
            continue
        state = settle(llama)
        memory.append({"turn": turn, "rss_mb": rss_mb(), "cache_mb": state["bytes"] / MB, "tokens": state["tokens"],
                       "prefixes": state["prefixes"], "clears": state["clears"], "rss_before": runs[-1]["rss_before"],
                       "cache_before_mb": runs[-1]["cache_before"]["bytes"] / MB,
                       "tokens_before": runs[-1]["cache_before"]["tokens"]})

    rows = []
    first_pause = statistics.median(r["ms"] for r in pause[1]["runs"])
    for turn in checkpoints:
        b, p = back_to_back[turn], pause[turn]
        pm = statistics.median(r["ms"] for r in p["runs"])
        typ = p.get("typist")
        rows.append([turn, b["today"]["prompt"], f"{b['today']['ms']:.0f}", f"{b['no pause']['ms']:.0f}",
                     f"{b['no pause']['cached']}", f"{pm:.0f} ({min(r['ms'] for r in p['runs']):.0f}-"
                     f"{max(r['ms'] for r in p['runs']):.0f})", f"{p['runs'][-1]['cached']}",
                     f"{pm / first_pause:.1f}x", "-" if typ is None else f"{typ['ms']:.0f}"])
    print(table(rows, ["turn", "prompt tokens", "today ms", "no pause ms", "no pause cached", "pause ms (range)",
                       "pause cached", "pause / turn 1", "fast typist ms"]))
    late = [statistics.median(r["ms"] for r in pause[t]["runs"]) / first_pause for t in checkpoints if t >= 12]
    same = [pause[t]["same_uncached"] for t in checkpoints]
    unsplit = [pause[t]["same_unsplit"] for t in checkpoints]
    print(f"\nno pause / today, turns 2-{args.turns} (alternating): median {statistics.median(ratios) if ratios else 1:.2f}, "
          f"range {min(ratios, default=1):.2f}-{max(ratios, default=1):.2f} (target <= 1)")
    if late:
        print(f"pause, turns 12-{args.turns} / turn 1: {min(late):.1f}x-{max(late):.1f}x (target <= 3x)")
    peak = max(memory, key=lambda m: m["rss_mb"])
    grown = [(m["rss_mb"] - m["rss_before"], m["cache_mb"] - m["cache_before_mb"], m["tokens"] - m["tokens_before"])
             for m in memory if m["cache_mb"] > m["cache_before_mb"] + 1]
    ratio = statistics.median(r / c for r, c, _ in grown) if grown else float("nan")
    rss_token = statistics.median(r * 1024 / n for r, _, n in grown) if grown else float("nan")
    print(f"memory: RSS {base_rss:.0f} MB after load, peak {peak['rss_mb']:.0f} MB at turn {peak['turn']}; cache count "
          f"peak {max(m['cache_mb'] for m in memory):.0f} MB of a {args.budget_mb} MB budget, emptied "
          f"{memory[-1]['clears']} times; per prefill, RSS grown / counted: median {ratio:.2f} "
          f"({rss_token:.0f} KiB RSS a cached token, {per_token / 1024:.0f} KiB counted)")
    print(f"greedy replies at the checkpoints, pause path (cache hit) == the same prompt uncached through bare "
          f"CTranslate2: {sum(same)}/{len(same)}; == the prompt sent whole, unsplit: {sum(unsplit)}/{len(unsplit)}")
    return {"model": str(engine.model_dir), "compute_type": engine.compute_type, "bytes_per_token": per_token,
            "load_s": load_s, "back_to_back": back_to_back, "no_pause_over_today": ratios, "pause": pause,
            "memory": memory, "rss_over_count": ratio, "rss_kib_per_token": rss_token, "late_over_first": late, "same_uncached": same,
            "same_unsplit": unsplit}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="bench,smollm2")
    ap.add_argument("--turns", type=int, default=20)
    ap.add_argument("--checkpoints", default="1,5,10,12,20")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--reply", type=int, default=64, help="most tokens in each reply (the bench model never ends one)")
    ap.add_argument("--budget-mb", type=int, default=1024, help="LlamaSettings.prefix_cache_mb")
    args = ap.parse_args()
    info = header("First token as a chat grows: prefilled in idle time, back to back, and as today")
    from ct2_magics import llama

    llama.settings.quiet = True
    report = {"machine": info, "args": vars(args), "models": {}}
    for model in args.models.split(","):
        report["models"][model] = run_model(llama, str(bench_model(BENCH)) if model == "bench" else model, args)
    print(f"\nload at the end: {load_average()}")
    save("long_chat", report)


if __name__ == "__main__":
    main()
