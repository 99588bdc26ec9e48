"""`streaming.py --probs` (issue 24): what keeping each token's probability and K alternatives costs, on smollm2.

Alternated runs, greedy, the same prompt and length: (a) a plain `%%llama` cell against (b) `%%llama --probs K`, both
through the real shell with kernel-style display messages (so building the tinted HTML counts), and (c) plain
`llama.stream` against `llama.stream(logprobs=K)`, each read to its end without a display. Target: probs / plain
tokens/s >= 0.8.
"""

from __future__ import annotations

import time
from typing import Any

from common import PROMPT, alternate, load_average, median, spread, table, verdict

K = 5
TARGET = 0.8


def cell_path(shell: Any, publisher: Any, tokens: int, probs: int | None):
    """One `%%llama` cell (with `--probs K` when `probs`), read from the display messages it published."""
    from streaming import summarise

    flag = f" --probs {probs}" if probs else ""
    cell = f"%%llama --once -t 0 -n {tokens}{flag}\n{PROMPT}"

    def run() -> dict[str, Any]:
        publisher.reset()
        t0, cpu = time.perf_counter(), time.process_time()
        shell.run_cell(cell).raise_error()
        total, cpu = time.perf_counter() - t0, time.process_time() - cpu
        out = summarise(publisher, total)
        return {**out, "cpu_ms_per_token": cpu / out["tokens"] * 1e3, "text": publisher.events[-1]["text"]}

    return run


def api_path(tokens: int, probs: int | None):
    """`llama.stream(...)` (with `logprobs=K` when `probs`) read to its end, nothing displayed."""
    from ct2_magics import llama

    def run() -> dict[str, Any]:
        t0, cpu = time.perf_counter(), time.process_time()
        reply = llama.stream(PROMPT, once=True, temperature=0, max_tokens=tokens, logprobs=probs)
        text = reply.consume()
        total, cpu = time.perf_counter() - t0, time.process_time() - cpu
        meta = reply.metadata()
        n = meta["reply_tokens"]
        return {"tokens": n, "e2e_tok_s": n / total, "decode_tok_s": meta["tokens_per_s"],
                "ttft_ms": meta["time_to_first_token_s"] * 1e3, "cpu_ms_per_token": cpu / n * 1e3, "text": text}

    return run


def _same(results: dict[str, list[dict[str, Any]]], tokens: int) -> str:
    """Every reply has `tokens` tokens (else the rates are not comparable); say whether the texts are the same too."""
    got = {r["tokens"] for rs in results.values() for r in rs}
    assert got == {tokens}, f"replies of unequal length: {got} (pick a prompt the model does not end early)"
    texts = {r["text"] for rs in results.values() for r in rs}
    return "the same text" if len(texts) == 1 else f"{len(texts)} different texts"


def run_probs(shell: Any, publisher: Any, tokens: int, runs: int) -> dict[str, Any]:
    """Load smollm2 (int8), run (a)-(b) and (c) alternated, print the table and the verdict; return the raw report."""
    shell.run_line_magic("llama", "load smollm2")
    from ct2_magics import llama

    llama.settings.system = None  # the same prompt on both paths, whatever the user's settings say
    load_before = load_average()
    pairs = {
        "%%llama cell": alternate({"plain": cell_path(shell, publisher, tokens, None),
                                   "probs": cell_path(shell, publisher, tokens, K)}, runs),
        "llama.stream, no display": alternate({"plain": api_path(tokens, None), "probs": api_path(tokens, K)}, runs),
    }
    rows, report = [], {"k": K, "tokens": tokens, "runs": runs, "load_before": load_before, "paths": {}}
    for name, res in pairs.items():
        same = _same(res, tokens)
        p, q = res["plain"], res["probs"]
        ratio = median(q, "decode_tok_s") / median(p, "decode_tok_s")
        pairwise = [b["decode_tok_s"] / a["decode_tok_s"] for a, b in zip(p, q)]
        e2e = median(q, "e2e_tok_s") / median(p, "e2e_tok_s")
        report["paths"][name] = {"raw": res, "decode_ratio": ratio, "e2e_ratio": e2e, "pairwise": pairwise, "replies": same}
        rows.append([name, f"{median(p, 'decode_tok_s'):.1f} ({spread(p, 'decode_tok_s')})",
                     f"{median(q, 'decode_tok_s'):.1f} ({spread(q, 'decode_tok_s')})",
                     f"**{ratio:.3f}** ({min(pairwise):.2f}-{max(pairwise):.2f})", f"{e2e:.3f}",
                     f"{median(p, 'ttft_ms'):.1f} ({spread(p, 'ttft_ms')})", f"{median(q, 'ttft_ms'):.1f} ({spread(q, 'ttft_ms')})",
                     f"{median(p, 'cpu_ms_per_token'):.2f} / {median(q, 'cpu_ms_per_token'):.2f}", same])
    report["load_after"] = load_average()
    print(table(rows, ["path", "plain decode tok/s (range)", f"--probs {K} decode tok/s (range)",
                       "probs / plain (pairwise range)", "e2e ratio", "plain TTFT ms (range)", "probs TTFT ms (range)",
                       "CPU ms/token plain / probs", "replies"]))
    print(f"(smollm2 int8, {llama.engine.vocabulary_size:,}-token vocabulary, greedy, {tokens}-token replies, {runs} "
          f"alternated runs each; decode tok/s = tokens after the first / their time; "
          "CPU: the process's, all threads, per reply token)")
    cell = report["paths"]["%%llama cell"]["decode_ratio"]
    print(f"\n--probs {K} / plain %%llama: {cell:.3f} (target >= {TARGET}): {verdict(cell >= TARGET)}")
    print(f"load before / after: {load_before} / {report['load_after']}")
    return report


def bare_paths(tokens: int) -> dict[str, Any]:
    """Bare CTranslate2 on smollm2's prompt: generate_tokens (what a plain reply uses) against generate_batch without
    logits, with the vocabulary's logits and a callback that does nothing, and with our callback's numpy work."""
    from ct2_magics import llama
    from ct2_magics.core.weighing import host_row, probabilities, top

    engine = llama.engine
    toks = engine.tokenizer.convert_ids_to_tokens(engine.prompt_ids([{"role": "user", "content": PROMPT}]))
    gen, size = engine.generator, engine.vocabulary_size

    def timed(count) -> dict[str, float]:
        t0, cpu = time.perf_counter(), time.process_time()
        n = count()
        return {"tokens": n, "ms_per_token": (time.perf_counter() - t0) / n * 1e3,
                "cpu_ms_per_token": (time.process_time() - cpu) / n * 1e3}

    def batch(callback: Any, logits: bool):
        return lambda: timed(lambda: len(gen.generate_batch(
            [toks], max_length=tokens, sampling_topk=1, end_token=engine.end_tokens, include_prompt_in_result=False,
            return_logits_vocab=logits, callback=callback)[0].sequences_ids[0]))

    def weigh(step: Any) -> bool:
        top(probabilities(host_row(step.logits, size)), K)
        return False

    return {"generate_tokens": lambda: timed(lambda: sum(1 for _ in gen.generate_tokens(
                toks, max_length=tokens, sampling_topk=1, end_token=engine.end_tokens))),
            "generate_batch": batch(None, False), "+ logits, callback doing nothing": batch(lambda _: False, True),
            f"+ logits, softmax and top {K} (our callback)": batch(weigh, True)}


def profile_probs(shell: Any, publisher: Any, tokens: int, runs: int = 5) -> dict[str, Any]:
    """cProfile one `--probs` cell (the main thread), then where the cost lies in CTranslate2's own thread (which
    cProfile does not see): bare decoding loops, alternated."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    cell_path(shell, publisher, tokens, K)()
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(12)
    res = alternate(bare_paths(tokens), runs)
    base = median(res["generate_tokens"], "cpu_ms_per_token")
    print(table([[name, f"{median(r, 'ms_per_token'):.2f} ({spread(r, 'ms_per_token')})",
                  f"{median(r, 'cpu_ms_per_token'):.2f}", f"{median(r, 'cpu_ms_per_token') - base:+.2f}"]
                 for name, r in res.items()], ["bare CTranslate2", "wall ms/token (range)", "CPU ms/token", "CPU vs generate_tokens"]))
    print(f"({tokens}-token greedy replies, {runs} alternated runs each; load {load_average()})")
    return res
