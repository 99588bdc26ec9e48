"""Time to first token as a chat grows to 50 turns, and what caching the system prompt (`static_prompt`) would save.

One chat with a 2,000-character system prompt (654 tokens with the demo tokenizer) is played turn by turn through `llama` (greedy replies of
--reply tokens). At checkpoint turns, alternated, several times each:
  ours         llama's own path: preparing the prompt (trimming to the context, chat template) + first token
  bare         generate_tokens on the full prompt, first step only
  bare+static  generate_tokens(rest, static_prompt=<system prefix tokens>, cache_static_prompt=True)
The engine does not pass static_prompt yet; the last row is what wiring it in would give.

    python benchmarks/long_chat.py [--turns 50] [--checkpoints 1,10,25,50] [--reps 3] [--reply 32]
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import BENCH, alternate, bench_model, header, load_average, save, table

SYSTEM = (
    "You are a patient teaching assistant inside a Jupyter notebook used in an introductory data science course. "
    "Students ask about Python, pandas, numpy, plotting, statistics and the errors they meet. Answer in plain, "
    "friendly English. Start with the short answer in one or two sentences, then explain why, step by step. "
    "When you show code, keep it short, runnable in one cell, and use only the standard library, pandas, numpy "
    "and matplotlib. Name variables clearly. Never invent functions that do not exist; if you are not sure an "
    "API exists, say so and suggest how to check it with help() or the documentation. When a student pastes a "
    "traceback, read it from the bottom: say which line failed, what the error means, and the smallest change "
    "that fixes it. Do not rewrite their whole cell. Prefer vectorised pandas operations over loops, but explain "
    "the loop first when the student is clearly a beginner. For statistics questions, state the assumptions of "
    "a method before using it, and warn about small samples, outliers and multiple comparisons. Use markdown: "
    "headings only for long answers, bullet lists for steps, and fenced code blocks with the language named. "
    "Keep answers under three hundred words unless the student asks for more detail. If a question is about "
    "graded homework, help the student understand the idea and give a similar example instead of the solution. "
    "If a question is ambiguous, ask one clarifying question before answering. Be encouraging: mistakes are how "
    "everyone learns to program, and a clear question is already half of the answer."
)
QUESTIONS = ["How do I read a CSV file with a date column?", "Why does my groupby drop NaN keys?",
             "What is the difference between loc and iloc?", "How can I plot two columns against each other?",
             "Why is my loop over rows so slow?", "What does SettingWithCopyWarning mean here?",
             "How do I merge two frames on two keys?", "When should I use a median instead of a mean?"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--turns", type=int, default=50)
    ap.add_argument("--checkpoints", default="1,10,25,50")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--reply", type=int, default=32, help="tokens in each reply of the chat")
    args = ap.parse_args()
    info = header("Time to first token as a chat grows; static_prompt for the system prompt")

    from ct2_magics import llama
    from ct2_magics.response import Request

    llama.load(str(bench_model(BENCH)))
    engine, gen = llama.engine, llama.engine.generator
    tok = engine.tokenizer
    chat = llama.chat("long")
    chat.set_system(SYSTEM)
    # The prefix to cache: the template applied to the system message alone, without the generation prompt.
    prefix = tok.apply_chat_template([{"role": "system", "content": SYSTEM}], tokenize=False)
    system_ids = tok.encode(prefix, add_special_tokens=False)
    static = tok.convert_ids_to_tokens(system_ids)
    checkpoints = {int(x) for x in args.checkpoints.split(",")}
    rows, report = [], {"machine": info, "system_tokens": len(system_ids), "turns": {}}
    first_checked = None

    for turn in range(1, args.turns + 1):
        question = f"{QUESTIONS[turn % len(QUESTIONS)]} (question {turn})"
        if turn in checkpoints:
            messages = chat.messages() + [{"role": "user", "content": question}]
            ids = engine.prompt_ids(messages)
            assert ids[: len(system_ids)] == system_ids, "the system prompt's tokens are not a prefix of the prompt"
            full, rest = tok.convert_ids_to_tokens(ids), tok.convert_ids_to_tokens(ids[len(system_ids):])

            def bare(prompt: list[str], **kwargs):
                def run() -> dict:
                    t = time.perf_counter()
                    steps = list(gen.generate_tokens(prompt, max_length=1, sampling_topk=1, end_token=engine.end_tokens,
                                                     **kwargs))
                    return {"ms": (time.perf_counter() - t) * 1e3, "token": steps[0].token_id}
                return run

            def ours() -> dict:
                engine._last_prompt = None  # the bare paths just encoded this prompt: time a real request's encode
                t = time.perf_counter()
                response = llama.session.respond(Request(question, chat="long", cell_id=f"turn-{turn}",
                                                         options={"temperature": 0, "max_tokens": 1}))
                response.consume()  # one token: its own first token
                prepared = response.stats.started - t  # checks, chat, fitting and encoding, until decoding starts
                return {"ms": (prepared + response.stats.first_token_s) * 1e3, "prepare_ms": prepared * 1e3}

            paths = {"bare": bare(full), "bare+static": bare(rest, static_prompt=static, cache_static_prompt=True),
                     "ours": ours}
            res = alternate(paths, args.reps)
            same = {r["token"] for r in res["bare"] + res["bare+static"]}
            med = {name: statistics.median(r["ms"] for r in rs) for name, rs in res.items()}
            prep = statistics.median(r["prepare_ms"] for r in res["ours"])
            report["turns"][turn] = {"prompt_tokens": len(ids), "median_ms": med, "prepare_ms": prep,
                                     "same_first_token": len(same) == 1, "raw": res}
            saved = med["bare"] - med["bare+static"]
            rows.append([turn, len(ids), f"{med['ours']:.0f}", f"{prep:.1f}", f"{med['bare']:.0f}",
                         f"{med['bare+static']:.0f}", f"{saved:.0f} ({saved / med['bare']:.0%})",
                         "yes" if len(same) == 1 else "NO"])
            first_checked = first_checked or turn
            print(f"turn {turn}: {len(ids)} prompt tokens, ours {med['ours']:.0f} ms, bare {med['bare']:.0f} ms, "
                  f"static {med['bare+static']:.0f} ms", flush=True)
        # The turn itself (a re-run of the checkpoint's cell replaces its 1-token reply).
        response = llama.session.respond(Request(question, chat="long", cell_id=f"turn-{turn}",
                                                 options={"temperature": 0, "max_tokens": args.reply}))
        response.consume()
        if response.notices:
            report.setdefault("notices", []).extend(response.notices)

    print()
    print(table(rows, ["turn", "prompt tokens", "ours TTFT ms", "ours prepare ms", "bare TTFT ms",
                       "bare + static_prompt ms", "saved by static_prompt", "same 1st token"]))
    print(f"\nsystem prompt: {len(system_ids)} tokens; replies {args.reply} tokens; {args.reps} alternated runs a "
          f"checkpoint; {len(chat.turns)} turns in the chat at the end")
    for line in dict.fromkeys(report.get("notices", [])):
        print(f"notice: {line}")
    print(f"load at the end: {load_average()}")
    save("long_chat", report)


if __name__ == "__main__":
    main()
