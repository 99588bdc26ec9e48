"""`%%llama` streaming in a real ipykernel, driven over its real channels, against a bare loop in the same kernel.

The model is a Llama 3 body (hidden 512, 8 layers) with a 128,256-token vocabulary, so each step
ends in the large output layer a real Llama 3 has (~10 ms a step on 2 cores). Both paths run as
cells of one kernel and are timed the same way, from the execute request to the kernel's idle
status, while this script reads every iopub message as a front end would. Runs alternate.
Target (issue 15): `%%llama` tokens/s >= 0.97 x the bare `generate_tokens` loop.

    python benchmarks/kernel_streaming.py [--tokens 256] [--runs 8] [--threads N] [--model NAME]

--model runs the same comparison on another model (e.g. smollm2, whose byte-level BPE tokenizer is
a real one; the body's tokenizer is word-level). Replies may then end early: each path's tokens/s
counts the tokens it really produced (the bare loop counts its steps, %%llama's reply says its
count in the final display's metadata).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from common import PROMPT, ROOT, cache_root, header, load_average, save, table, verdict

BODY = {"layers": 8, "hidden": 512, "intermediate": 1408, "heads": 8, "kv_heads": 8, "vocab": 128256}

SETUP = """
import json, time
from ct2_magics import llama
get_ipython().run_line_magic("load_ext", "ct2_magics")
llama.settings.threads = {threads}
llama.load({model!r})
_engine = llama.engine
_ids = _engine.prompt_ids([{{"role": "user", "content": {prompt!r}}}])
_toks = _engine.tokenizer.convert_ids_to_tokens(_ids)
_ends = set(_engine.tokenizer.convert_tokens_to_ids(_engine.end_tokens))

def _profiled(code, top):
    # main-thread CPU seconds of running `code` as a cell, and its top functions by own time
    import cProfile, io, pstats
    profile, cpu = cProfile.Profile(), time.thread_time()
    profile.enable()
    get_ipython().run_cell(code)
    profile.disable()
    cpu = time.thread_time() - cpu
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(top)
    lines = [l for l in out.getvalue().splitlines() if l.strip() and l.lstrip()[:1].isdigit()]
    print(json.dumps({{"cpu_s": cpu, "top": lines[-top:]}}))

def _bare(n):
    out = []
    for step in _engine.generator.generate_tokens(_toks, max_length=n, sampling_topk=1, end_token=_engine.end_tokens):
        if step.token_id not in _ends:
            out.append(step.token_id)
    return len(out)
"""


def body_model() -> Path:
    """The Llama 3 body, built once (random int8 weights, 128,256-token vocabulary)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from reference_shape import build

    target = cache_root() / "llama3-body-512x8-v128256"
    if not (target / "model.bin").is_file():
        t = time.perf_counter()
        build(target, BODY)
        print(f"built {target.name} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    return target


class Kernel:
    """A real ipykernel and a client that reads all its output, as JupyterLab would."""

    def __init__(self) -> None:
        from jupyter_client.manager import KernelManager

        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(env=env)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=120)

    def run(self, code: str, timeout: float = 600) -> dict:
        """Execute `code`; return its wall time, messages and bytes seen on iopub, and what it printed."""
        t0 = time.perf_counter()
        msg_id = self.kc.execute(code)
        messages = size = 0
        printed, error, tokens = [], None, None
        while True:
            msg = self.kc.get_iopub_msg(timeout=timeout)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            messages += 1
            size += len(json.dumps(msg["content"]))
            kind = msg["msg_type"]
            meta = msg["content"].get("metadata", {}).get("ct2_magics") if isinstance(msg["content"], dict) else None
            if isinstance(meta, dict) and "reply_tokens" in meta:
                tokens = meta["reply_tokens"]
            if kind == "stream":
                printed.append(msg["content"]["text"])
            elif kind == "error":
                error = "\n".join(msg["content"]["traceback"][-3:])
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                break
        if error:
            raise RuntimeError(error)
        out = "".join(printed)
        if tokens is None and out.strip().isdigit():
            tokens = int(out)
        return {"s": time.perf_counter() - t0, "messages": messages, "bytes": size, "out": out, "tokens": tokens}

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads for decoding (0: the engine's choice)")
    ap.add_argument("--model", default=None, help="a model name or path instead of the Llama 3 body")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="after the runs, profile each path's main thread once and print its N costliest functions")
    args = ap.parse_args()
    what = args.model or "Llama 3 body, 128k vocabulary"
    info = header(f"%%llama in a real ipykernel vs a bare loop in the same kernel ({what})")
    model = args.model or str(body_model())
    kernel = Kernel()
    try:
        kernel.run(SETUP.format(model=str(model), prompt=PROMPT, threads=args.threads))
        paths = {
            "bare": f"print(_bare({args.tokens}))",
            "ours": f"%%llama --once -t 0 -n {args.tokens}\n{PROMPT}",
        }
        for code in paths.values():  # warm-up
            kernel.run(code)
        results: dict[str, list[dict]] = {name: [] for name in paths}
        names = list(paths)
        for r in range(args.runs):
            for name in names[r % 2:] + names[:r % 2]:
                results[name].append(kernel.run(paths[name]))
        if args.model is None:
            assert all(x["tokens"] == args.tokens for x in results["bare"]), "the bare loop ended early"
        assert all(x["tokens"] for res in results.values() for x in res), "a path produced no tokens"
        profiles = {name: json.loads(kernel.run(f"_profiled({code!r}, {args.profile})")["out"].strip().splitlines()[-1])
                    for name, code in paths.items()} if args.profile else {}
    finally:
        kernel.close()
    rate = {name: [x["tokens"] / x["s"] for x in res] for name, res in results.items()}
    ratios = [o / b for o, b in zip(rate["ours"], rate["bare"])]
    ratio = statistics.median(rate["ours"]) / statistics.median(rate["bare"])
    rows = [[name, f"{statistics.median(v):.1f}", f"{min(v):.1f}-{max(v):.1f}",
             f"{statistics.median(x['messages'] for x in results[name]):.0f}",
             f"{statistics.median(x['bytes'] for x in results[name]) / 1e3:.0f}"] for name, v in rate.items()]
    print(table(rows, ["path", "tok/s (median)", "range", "iopub messages", "iopub KB"]))
    print(f"\n%%llama / bare: {ratio:.3f} (median of {args.runs} alternated runs; pairwise {min(ratios):.3f}-{max(ratios):.3f}); "
          f"target >= 0.97: {verdict(ratio >= 0.97)}")
    for name, prof in profiles.items():
        tokens = statistics.median(x["tokens"] for x in results[name])
        print(f"\n{name}: main-thread CPU {prof['cpu_s']:.3f} s for ~{tokens:.0f} tokens "
              f"({1e3 * prof['cpu_s'] / tokens:.2f} ms/token); costliest functions (ncalls tottime percall cumtime percall):")
        print("\n".join("    " + line.strip() for line in prof["top"]))
    print(f"load at the end: {load_average()}")
    save("kernel_streaming", {"machine": info, "model": what, "tokens": args.tokens, "runs": args.runs, "threads": args.threads,
                              "rates": rate, "ratio": ratio})


if __name__ == "__main__":
    main()
