"""`%load_ext ct2_magics` in a fresh process, and `%llama load` of the model that is already loaded.

Each fresh process starts an InteractiveShell, then times only the `%load_ext`; the baseline is
`%load_ext storemagic` (IPython's own light extension) in the same kind of process, alternated.
Targets (issue 6): %load_ext within 0.3 s (ctranslate2, transformers, torch not imported);
loading an already-loaded model within 10 ms.

    python benchmarks/startup.py [--runs 7] [--importtime]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from common import BENCH, ROOT, alternate, bench_model, header, load_average, median, save, spread, table, verdict

HEAVY = ("ctranslate2", "transformers", "torch", "tokenizers", "numpy", "huggingface_hub", "pandas", "ipywidgets",
         "tqdm", "jinja2", "platformdirs")
CHILD = """
import json, sys, time
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
before = set(sys.modules)
print("--- load_ext ---", file=sys.stderr, flush=True)
t = time.perf_counter()
shell.run_line_magic("load_ext", {ext!r})
seconds = time.perf_counter() - t
new = set(sys.modules) - before
print(json.dumps({{"seconds": seconds, "modules": len(new), "heavy": [m for m in {heavy!r} if m in new]}}))
"""


def child(ext: str, *flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, *flags, "-c", CHILD.format(ext=ext, heavy=HEAVY)], capture_output=True,
                          text=True, env=env, check=True)


def load_ext_path(ext: str):
    def run() -> dict:
        t = time.perf_counter()
        out = json.loads(child(ext).stdout.strip().splitlines()[-1])
        out["process_s"] = time.perf_counter() - t
        return out
    return run


def import_profile(top: int = 12) -> list[tuple[int, str]]:
    """The slowest imports (cumulative microseconds) of `%load_ext ct2_magics` itself, from python -X importtime."""
    rows = []
    lines = child("ct2_magics", "-X", "importtime").stderr.splitlines()
    for line in lines[lines.index("--- load_ext ---") + 1:]:
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            rows.append((int(parts[1]), parts[2].rstrip()))
    return sorted(rows, reverse=True)[:top]


def reload_paths(model: str):
    """In this process: `%llama load MODEL` again, and `llama.load(MODEL)`, against `%llama status`."""
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.io import capture_output

    from ct2_magics import llama

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "ct2_magics")
    t = time.perf_counter()
    with capture_output():
        shell.run_line_magic("llama", f"load {model}")
    first = time.perf_counter() - t

    def timed(fn):
        def run() -> dict:
            with capture_output():
                t = time.perf_counter()
                fn()
                return {"ms": (time.perf_counter() - t) * 1e3}
        return run

    paths = {
        "%llama load (already loaded)": timed(lambda: shell.run_line_magic("llama", f"load {model}")),
        "llama.load (already loaded)": timed(lambda: llama.load(model)),
        "%llama status (baseline)": timed(lambda: shell.run_line_magic("llama", "status")),
    }
    return first, paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--importtime", action="store_true", help="also list the slowest imports of %%load_ext ct2_magics")
    args = ap.parse_args()
    info = header("%load_ext ct2_magics and reloading a loaded model")
    res = alternate({"ct2_magics": load_ext_path("ct2_magics"), "storemagic": load_ext_path("storemagic")}, args.runs)
    ours, base = res["ct2_magics"], res["storemagic"]
    rows = [[f"%load_ext {name}", f"{median(r, 'seconds') * 1e3:.1f} ({spread([{'v': x['seconds'] * 1e3} for x in r], 'v')})",
             f"{median(r, 'process_s') * 1e3:.0f}", r[-1]["modules"], ", ".join(r[-1]["heavy"]) or "none"]
            for name, r in res.items()]
    print(table(rows, ["fresh process", "load_ext ms (range)", "whole process ms", "modules imported", "heavy modules imported"]))
    load_ext_s = median(ours, "seconds")
    heavy = set(ours[-1]["heavy"]) & {"ctranslate2", "transformers", "torch"}
    print(f"\n%load_ext ct2_magics: {load_ext_s * 1e3:.0f} ms, {load_ext_s / median(base, 'seconds'):.1f}x storemagic's; "
          f"whole process +{(median(ours, 'process_s') - median(base, 'process_s')) * 1e3:.0f} ms "
          f"(target <= 300 ms, no ctranslate2/transformers/torch): {verdict(load_ext_s <= 0.3 and not heavy)}")
    if args.importtime:
        print("\nslowest imports under %load_ext ct2_magics (cumulative ms):")
        for us, name in import_profile():
            print(f"  {us / 1e3:7.1f}  {name}")

    first, paths = reload_paths(str(bench_model(BENCH)))
    again = alternate(paths, max(args.runs, 15))
    rows = [[name, f"{median(r, 'ms'):.3f} ({spread(r, 'ms')})"] for name, r in again.items()]
    print(f"\nfirst %llama load of the bench model: {first * 1e3:.0f} ms")
    print(table(rows, ["already-loaded model", "ms (range)"]))
    worst = max(median(again[n], "ms") for n in list(paths)[:2])
    print(f"\nloading an already-loaded model: {worst:.3f} ms (target <= 10 ms): {verdict(worst <= 10)}")
    print(f"load at the end: {load_average()}")
    save("startup", {"machine": info, "load_ext": res, "first_load_s": first, "reload": again})


if __name__ == "__main__":
    main()
