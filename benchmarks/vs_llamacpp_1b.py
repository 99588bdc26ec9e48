"""`vs_llamacpp.py --shape 1b`: one greedy stream at a random 1B Llama shape, against the bytes each engine reads per token.

The same GGUF files (benchmarks/gguf_1b.py: Llama 3.2 1B's body, SmolLM2's vocabulary, seeded random weights)
go through both engines: ct2-magics loads the Q8_0 file with `llama.load(path)` (converted to CTranslate2
int8), llama.cpp runs Q8_0 (the same bytes), Q4_0 and Q4_K_M (its usual best). Runs alternated: decode
tokens/s and first token of one greedy stream, 1 and 2 threads each. Bytes read per token are the weights a
decode step reads (CTranslate2: model.bin, whose one int8 embedding matrix is also the output layer;
llama.cpp: the GGUF's tensors); tokens/s x bytes gives the effective read bandwidth, shown beside what numpy
reads from memory on 1 and 2 threads. Before the runs every file is loaded by both engines (ct2-magics
converts each once) and the first greedy tokens are compared.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import gguf_1b
import llamacpp_paths as cpp
import numpy as np
from common import alternate, header, load_average, median, save, spread, table

QUESTION = ("Write a short story about a lighthouse keeper who finds a message in a bottle. Describe the keeper, "
            "the storm on the night it washes ashore, and what the message says, in three short paragraphs.")
CHECK_TOKENS = 16


def read_gbs(threads: int, size: int = 2**30, repeats: int = 5) -> float:
    """GB/s numpy reads from memory summing a `size`-byte int64 array, split over `threads` (median of `repeats`)."""
    a = np.ones(size // 8, dtype=np.int64)
    parts = np.array_split(a, threads)
    times = []
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            t = time.perf_counter()
            list(pool.map(np.sum, parts))
            times.append(time.perf_counter() - t)
    return size / sorted(times)[len(times) // 2] / 1e9


def ct2_session(path: str, threads: int):
    from ct2_magics.api import Llama
    from ct2_magics.core.session import Session
    from ct2_magics.core.settings import LlamaSettings

    api = Llama(Session(LlamaSettings(threads=threads)))
    api.load(path)
    return api


def model_bin_bytes(api) -> int:
    return (api.engine.model_dir / "model.bin").stat().st_size


def check(files: dict, ids: list[int]) -> dict:
    """Each file through both engines: load (ct2-magics converts), CHECK_TOKENS greedy tokens; where they part."""
    from vs_llamacpp import agreement, ct2_stream

    out = {}
    for kind, file in files.items():
        t = time.perf_counter()
        api = ct2_session(str(file), 1)
        load_s = time.perf_counter() - t
        ours = ct2_stream(api, QUESTION, CHECK_TOKENS)
        llm = cpp.open_model(str(file), 2)
        theirs = cpp.stream(llm, ids, CHECK_TOKENS)
        agree = agreement(api, [ours["text"]], [theirs["text"]])
        out[kind] = {"ct2_load_s": load_s, "ct2_model_bin": model_bin_bytes(api), "ct2_tokens": ours["tokens"],
                     "cpp_tokens": theirs["tokens"], "identical": bool(agree["identical"]),
                     "part_at_token": (agree["part_at_token"] or [None])[0], "ct2_text": ours["text"],
                     "cpp_text": theirs["text"]}
        api.unload()
        del api, llm
    return out


def stream(args, files: dict) -> tuple[list, dict]:
    from vs_llamacpp import agreement, ct2_stream

    apis = {t: ct2_session(str(files["Q8_0"]), t) for t in (1, 2)}
    ct2_bytes = model_bin_bytes(apis[1])
    ids = apis[1].engine.prompt_ids([{"role": "user", "content": QUESTION}])
    llms = {(k, t): cpp.open_model(str(f), t) for k, f in files.items() for t in (1, 2)}
    read = {k: gguf_1b.tensor_bytes(f)["read_per_token"] for k, f in files.items()}
    paths, bytes_of = {}, {}
    for t in (1, 2):
        name = f"ct2-magics int8 (from Q8_0), {t} thread{'s' if t > 1 else ''}"
        paths[name] = (lambda a: lambda: ct2_stream(a, QUESTION, args.tokens))(apis[t])
        bytes_of[name] = ct2_bytes
        for k in files:
            name = f"llama.cpp {k}, {t} thread{'s' if t > 1 else ''}"
            paths[name] = (lambda m: lambda: cpp.stream(m, ids, args.tokens))(llms[k, t])
            bytes_of[name] = read[k]
    results = alternate(paths, runs=args.runs)
    rows = []
    for name, r in results.items():
        tok_s = median(r, "decode_tok_s")
        rows.append([name, bytes_of[name] / 1e6, tok_s, spread(r, "decode_tok_s"), tok_s * bytes_of[name] / 1e9,
                     median(r, "ttft_ms"), spread(r, "ttft_ms"), int(median(r, "tokens"))])
    texts = {name: r[-1]["text"] for name, r in results.items()}
    ours = texts["ct2-magics int8 (from Q8_0), 1 thread"]
    agree = {name: agreement(apis[1], [ours], [text]) for name, text in texts.items() if name.startswith("llama.cpp")}
    raw = {k: [{x: v for x, v in d.items() if x != "ids"} for d in r] for k, r in results.items()}
    return rows, {"prompt_tokens": len(ids), "ct2_model_bin": ct2_bytes, "gguf_read_per_token": read,
                  "compute_type": apis[1].engine.compute_type, "raw": raw, "agreement": agree}


def run(args) -> None:
    kinds = tuple(args.kinds.split(","))
    if "Q8_0" not in kinds:
        kinds = ("Q8_0", *kinds)
    files = gguf_1b.ensure(kinds)
    info = header("ct2-magics vs llama.cpp at a random 1B Llama shape (Llama 3.2 1B body, SmolLM2 vocabulary)")
    report: dict = {"machine": info, "shape": gguf_1b.SHAPE, "files": {k: str(f) for k, f in files.items()}}
    report["numpy_read_gbs_before"] = {t: read_gbs(t) for t in (1, 2)}
    if not args.no_check:
        api = ct2_session(str(files["Q8_0"]), 1)
        ids = api.engine.prompt_ids([{"role": "user", "content": QUESTION}])
        api.unload()
        del api
        report["check"] = check(files, ids)
        print(f"## Both engines on each file ({CHECK_TOKENS} greedy tokens; load {load_average()})\n")
        print(table([[k, c["ct2_load_s"], c["ct2_model_bin"] / 1e6, c["ct2_tokens"], c["cpp_tokens"],
                      "identical" if c["identical"] else f"part at token {c['part_at_token']}"]
                     for k, c in report["check"].items()],
                    ["file", "ct2-magics load s (converting)", "model.bin MB", "ct2 tokens", "llama.cpp tokens",
                     "greedy tokens"]))
    rows, report["stream"] = stream(args, files)
    report["numpy_read_gbs_after"] = {t: read_gbs(t) for t in (1, 2)}
    s = report["stream"]
    print(f"\n## One greedy stream ({s['prompt_tokens']}-token prompt, up to {args.tokens} tokens, {args.runs} "
          f"alternated runs; ct2-magics {s['compute_type']}; load {load_average()})\n")
    print(table(rows, ["path", "weights read per token MB", "decode tok/s", "range", "effective GB/s",
                       "first token ms", "range", "tokens"]))
    print("\nnumpy reading 1 GiB from memory (GB/s, before / after): " + ", ".join(
        f"{t} thread{'s' if t > 1 else ''} {report['numpy_read_gbs_before'][t]:.1f} / {report['numpy_read_gbs_after'][t]:.1f}"
        for t in (1, 2)))
    for name, a in s["agreement"].items():
        print(f"greedy stream vs ct2-magics 1 thread: {name}: "
              + ("identical" if a["identical"] else f"parts at token {a['part_at_token'][0]}"))
    print(f"load at the end: {load_average()}")
    save("vs_llamacpp_1b", report)
