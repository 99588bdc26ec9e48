"""What `%%llama` sends to the front end while it streams: display updates per second and bytes per generated token.

Every message is serialised and signed here exactly as ipykernel would send it. Targets (issue 6):
at most 15 updates a second whatever the token rate (tiny model: hundreds of tokens a second;
bench: tens); bytes per token for a 2,000-token answer reported, with how they grow with the
answer's length. Baseline, same run, same reply: a plain streaming loop that updates the display
with the whole reply (sanitised HTML and plain text) at every piece of text, as a simple magic would.

    python benchmarks/display_traffic.py [--lengths 250,500,1000,2000] [--bench-lengths 250,2000]
"""

from __future__ import annotations

import argparse
import math
import time

from common import BENCH, PROMPT, TINY, bench_model, header, kernel_shell, load_average, save, table, verdict

RATE = 15.0  # LlamaSettings.updates_per_second's default


def run_cell(shell, publisher, tokens: int) -> dict:
    publisher.reset()
    t0 = time.perf_counter()
    shell.run_cell(f"%%llama --once -t 0 -n {tokens}\n{PROMPT}").raise_error()
    total = time.perf_counter() - t0
    meta = publisher.last_metadata["ct2_magics"]
    events = publisher.events
    start, final = events[0]["t"], events[-1]["t"]
    middle = [e for e in events[1:-1] if e["update"]]
    gaps = [b["t"] - a["t"] for a, b in zip(middle, middle[1:])]
    sent = sum(e["bytes"] for e in events)
    return {
        "tokens": meta["reply_tokens"], "tok_s": meta["tokens_per_s"], "seconds": total,
        "updates": len(events), "updates_per_s": len(middle) / (final - start),
        "max_updates_in_any_1s": max_in_window([e["t"] for e in middle], 1.0),
        "min_gap_ms": min(gaps) * 1e3 if gaps else None,
        "bytes": sent, "bytes_per_token": sent / meta["reply_tokens"], "last_message_bytes": events[-1]["bytes"],
        "reply_chars": events[-1]["chars"], "publish_ms": publisher.publish_s * 1e3, "events": list(events),
    }


def max_in_window(times: list[float], width: float) -> int:
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] > width:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def naive_cell(publisher, tokens: int) -> dict:
    """The baseline: the same greedy reply, the display updated with the whole reply at every piece of text."""
    from IPython.display import DisplayHandle

    from ct2_magics import llama
    from ct2_magics.notebook.markup import bundle

    publisher.reset()
    handle = DisplayHandle()
    handle.display(bundle("…"), raw=True)
    text = ""
    for piece in llama.stream(PROMPT, once=True, temperature=0, max_tokens=tokens):
        text += piece
        handle.update(bundle(text), raw=True)
    return {"messages": len(publisher.events), "bytes": sum(e["bytes"] for e in publisher.events), "reply_chars": len(text),
            "text": text}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="250,500,1000,2000", help="reply lengths for the tiny model")
    ap.add_argument("--bench-lengths", default="250,2000", help="reply lengths for the bench model (2000: ~2 min)")
    args = ap.parse_args()
    info = header("%%llama display traffic")
    shell, publisher = kernel_shell()
    report = {"machine": info, "runs": {}}
    rows = []
    for name, shape, lengths in (("tiny", TINY, args.lengths), ("bench", BENCH, args.bench_lengths)):
        shell.run_line_magic("llama", f"load {bench_model(shape)}")
        run_cell(shell, publisher, 32)  # warm-up
        for n in (int(x) for x in lengths.split(",")):
            r = run_cell(shell, publisher, n)
            r["naive"] = naive = naive_cell(publisher, n)
            shown = r["events"][-1]["text"]  # the cell's final text/plain: the reply, then its end mark if it was cut
            assert shown.startswith(naive["text"]) and not shown[len(naive["text"]):].strip("\n")[:1].isalnum(), \
                "the baseline wrote another reply"
            report["runs"][f"{name}-{n}"] = r
            rows.append([name, n, r["tok_s"], r["updates"], r["updates_per_s"], r["max_updates_in_any_1s"],
                         r["reply_chars"], r["bytes"], r["bytes_per_token"], r["last_message_bytes"], r["publish_ms"],
                         naive["messages"], naive["bytes"] / n, f"{naive['bytes'] / r['bytes']:.1f}x"])
    print(table(rows, ["model", "tokens", "tok/s", "messages", "updates/s", "most in 1 s", "reply chars", "bytes sent",
                       "bytes/token", "last message bytes", "kernel publish ms", "baseline messages",
                       "baseline bytes/token", "baseline / ours"]))
    worst = max(r["max_updates_in_any_1s"] for r in report["runs"].values())
    print(f"\nmost updates in any 1 s window: {worst} (target <= 15): {verdict(worst <= 15)}")
    for name in ("tiny", "bench"):
        runs = {int(k.split("-")[1]): v for k, v in report["runs"].items() if k.startswith(name)}
        lo, hi = min(runs), max(runs)
        if lo == hi:
            continue  # one length: no growth to report
        growth = math.log(runs[hi]["bytes"] / runs[lo]["bytes"]) / math.log(hi / lo)
        report[f"{name}_exponent"] = growth
        print(f"{name}: bytes sent grow as tokens^{growth:.2f} from {lo} to {hi} tokens (2 = quadratic); "
              f"bytes/token {runs[lo]['bytes_per_token']:.0f} -> {runs[hi]['bytes_per_token']:.0f}")

    print(f"load at the end: {load_average()}")
    for r in report["runs"].values():
        del r["events"]
    save("display_traffic", report)


if __name__ == "__main__":
    main()
