"""`%%llama` streaming in a real InteractiveShell (kernel-style display messages) against a bare generate_tokens loop.

Same model, prompt and length (greedy; the bench models never end a reply early), runs alternated.
Targets (issue 6): tokens/s ratio >= 0.97 and time to first token at most 5 ms more, on the bench
model (~10-15 ms a step on 2 cores). The tiny model (~1 ms a step) is shown too: there per-token
overheads are 10x more visible.

    python benchmarks/streaming.py [--tokens 256] [--runs 7] [--profile]
    python benchmarks/streaming.py --probs [--tokens 256] [--runs 7] [--profile]   # issue 24, on smollm2 (probs_bench.py)
"""

from __future__ import annotations

import argparse
import time

from common import (BENCH, PROMPT, TINY, alternate, bench_model, header, kernel_shell, load_average, median, save, spread,
                    table, verdict)

PLACEHOLDERS = ("…", "*waiting for the model…*")


def _placeholder(event: dict) -> bool:
    from ct2_magics.notebook.markup import to_html

    return event["text"] in PLACEHOLDERS or event["html"] in {to_html(p) for p in PLACEHOLDERS}


def bare_path(engine, prompt: str, tokens: int):
    """A bare loop: prompt tokens made beforehand, generate_tokens, collect ids."""
    ids = engine.prompt_ids([{"role": "user", "content": prompt}])
    toks = engine.tokenizer.convert_ids_to_tokens(ids)
    gen = engine.generator

    def run() -> dict[str, float]:
        t0 = time.perf_counter()
        first, out = None, []
        for step in gen.generate_tokens(toks, max_length=tokens, sampling_topk=1, end_token=engine.end_tokens):
            if first is None:
                first = time.perf_counter() - t0
            out.append(step.token_id)
        total = time.perf_counter() - t0
        n = len(out)
        decode = (n - 1) / (total - first) if n > 1 else 0.0
        return {"tokens": n, "e2e_tok_s": n / total, "decode_tok_s": decode, "ttft_ms": first * 1e3}

    return run


def ours_path(shell, publisher, prompt: str, tokens: int):
    """The whole cell: `%%llama --once -t 0 -n N` through run_cell, displays serialised like a kernel's."""
    cell = f"%%llama --once -t 0 -n {tokens}\n{prompt}"

    def run() -> dict[str, float]:
        publisher.reset()
        t0 = time.perf_counter()
        shell.run_cell(cell).raise_error()
        total = time.perf_counter() - t0
        return summarise(publisher, total)

    return run


def summarise(publisher, total: float) -> dict[str, float]:
    """What one %%llama run did, read from the messages it published."""
    meta = publisher.last_metadata["ct2_magics"]
    events = [e for e in publisher.events if e["t"] >= 0]
    placeholder = next(e["t"] for e in events if not e["update"])
    visible = next(e["t"] for e in events if e["update"] and not _placeholder(e))
    final = events[-1]["t"]
    middle = [e for e in events[1:-1] if e["update"]]
    n = meta["reply_tokens"]
    return {
        "tokens": n,
        "e2e_tok_s": n / total,
        "decode_tok_s": meta["tokens_per_s"],
        # The engine's first token, from the cell's start: preparing the prompt + the decoder's first step.
        "ttft_ms": (placeholder + meta["time_to_first_token_s"]) * 1e3,
        # When the front end first gets text to show.
        "visible_ttft_ms": visible * 1e3,
        "updates_per_s": len(middle) / max(final - placeholder, 1e-9),
        "updates": len(middle) + 2,
        "bytes": sum(e["bytes"] for e in events),
        "publish_ms": publisher.publish_s * 1e3,
    }


def measure(shell, publisher, tokens: int, runs: int) -> dict:
    from ct2_magics import llama

    paths = {"bare": bare_path(llama.engine, PROMPT, tokens), "ours": ours_path(shell, publisher, PROMPT, tokens)}
    results = alternate(paths, runs)
    got = {r["tokens"] for rs in results.values() for r in rs}
    assert got == {tokens}, f"replies of unequal length: {got}"
    return results


def profile(shell, publisher, tokens: int) -> None:
    """cProfile one %%llama run (the decoder's own threads are invisible to it: what shows is Python-side)."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    ours_path(shell, publisher, PROMPT, tokens)()
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(15)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--ttft-runs", type=int, default=25, help="alternated 1-token runs for the first-token figure")
    ap.add_argument("--profile", action="store_true", help="also cProfile one run on the tiny model (--probs: on smollm2)")
    ap.add_argument("--probs", action="store_true", help="instead: --probs 5 against a plain reply, on smollm2 (issue 24)")
    args = ap.parse_args()
    if args.probs:
        return probs_main(args)
    info = header("%%llama streaming vs a bare generate_tokens loop")
    models = {"bench": bench_model(BENCH), "tiny": bench_model(TINY)}
    shell, publisher = kernel_shell()
    report = {"machine": info, "tokens": args.tokens, "runs": args.runs, "models": {}}
    rows = []
    for name, model in models.items():
        shell.run_line_magic("llama", f"load {model}")
        runs = args.runs * (3 if name == "tiny" else 1)  # tiny runs are short, so noisier: take more
        res = measure(shell, publisher, args.tokens, runs)
        first = measure(shell, publisher, 1, args.ttft_runs)  # many short runs: the first token alone
        b, o = res["bare"], res["ours"]
        ratio = median(o, "e2e_tok_s") / median(b, "e2e_tok_s")
        decode_ratio = median(o, "decode_tok_s") / median(b, "decode_tok_s")
        ttft = median(first["ours"], "ttft_ms") - median(first["bare"], "ttft_ms")
        visible = median(o, "visible_ttft_ms") - median(b, "ttft_ms")
        report["models"][name] = {"raw": res, "first_token_raw": first, "e2e_ratio": ratio, "decode_ratio": decode_ratio,
                                  "ttft_extra_ms": ttft, "visible_ttft_extra_ms": visible}
        rows.append([name, f"{median(b, 'e2e_tok_s'):.1f} ({spread(b, 'e2e_tok_s')})",
                     f"{median(o, 'e2e_tok_s'):.1f} ({spread(o, 'e2e_tok_s')})", f"{ratio:.3f}", f"{decode_ratio:.3f}",
                     f"{median(first['bare'], 'ttft_ms'):.2f}", f"{median(first['ours'], 'ttft_ms'):.2f}", f"{ttft:+.2f}",
                     f"{median(o, 'visible_ttft_ms') - median(o, 'ttft_ms'):+.1f}", f"{median(o, 'updates_per_s'):.1f}",
                     f"{median(o, 'publish_ms'):.1f}"])
    print(table(rows, ["model", "bare tok/s (range)", "ours tok/s (range)", "ratio e2e", "ratio decode",
                       "bare TTFT ms", "ours TTFT ms", "TTFT diff ms", "text shown after 1st token ms", "updates/s",
                       "publish ms/run"]))
    print(f"(tok/s: {args.tokens}-token replies, {args.runs} runs each (tiny: {3 * args.runs}); TTFT: {args.ttft_runs} alternated 1-token runs; "
          "ours TTFT = from the cell's start to the decoder's first token)")
    bench = report["models"]["bench"]
    print(f"\nbench: tokens/s ratio {bench['e2e_ratio']:.3f} (target >= 0.97): {verdict(bench['e2e_ratio'] >= 0.97)}; "
          f"TTFT {bench['ttft_extra_ms']:+.1f} ms (target <= +5): {verdict(bench['ttft_extra_ms'] <= 5)}; "
          f"the first text reaches the front end {bench['visible_ttft_extra_ms']:+.1f} ms after the bare loop's first token")
    print(f"load at the end: {load_average()}")
    save("streaming", report)
    if args.profile:
        shell.run_line_magic("llama", f"load {models['tiny']}")
        profile(shell, publisher, args.tokens)


def probs_main(args: argparse.Namespace) -> None:
    from probs_bench import profile_probs, run_probs

    info = header("%%llama --probs vs a plain reply (smollm2)")
    shell, publisher = kernel_shell()
    report = {"machine": info, **run_probs(shell, publisher, args.tokens, args.runs)}
    if args.profile:
        report["bare"] = profile_probs(shell, publisher, args.tokens)
    save("streaming_probs", report)


if __name__ == "__main__":
    main()
