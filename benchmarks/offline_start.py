"""The first `%%llama` cell of a fresh kernel with no model loaded, when the Hub cannot be reached.

Each run is a fresh process: an InteractiveShell, `%load_ext ct2_magics`, then the timed cell
(`%%llama --once -t 0 -n 1`), which looks for the reference model, finds neither it nor the Hub, and falls back to
smollm2. The Hub is a closed local port (refused at once, as a missing network or DNS is) with HF_HUB_OFFLINE unset
and an empty Hugging Face cache. The baseline is the same cell with HF_HUB_OFFLINE=1 (the Hub never asked),
alternated. Target (issue 23): the cell within 3 s, and one notice line, nothing on stderr.

    python benchmarks/offline_start.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile

from common import ROOT, alternate, header, median, save, spread, table, verdict

CHILD = """
import json, sys, time
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
shell.run_line_magic("load_ext", "ct2_magics")
t = time.perf_counter()
shell.run_cell_magic("llama", "--once -t 0 -n 1", "Hi")
sys.stdout.flush()
print(json.dumps({"seconds": time.perf_counter() - t}), file=sys.stderr)
"""


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_cell(offline: bool, hf_home: str):
    def run() -> dict:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               "HF_HOME": hf_home}
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "CT2_MAGICS_MODEL"):
            env.pop(name, None)
        if offline:
            env["HF_HUB_OFFLINE"] = "1"
        else:
            env["HF_ENDPOINT"] = f"http://127.0.0.1:{closed_port()}"
        done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, timeout=600)
        *stderr, last = done.stderr.strip().splitlines() or ["{}"]
        out = json.loads(last) if done.returncode == 0 else {"seconds": float("nan")}
        out["stdout_lines"] = len([line for line in done.stdout.splitlines() if "neither cached nor reachable" in line])
        out["stderr_lines"] = len([line for line in stderr if "Warning" not in line and "warnings.warn" not in line])
        return out
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    info = header("First %%llama cell with no model loaded and the Hub unreachable")
    from ct2_magics.models import hub

    hub.resolve("smollm2")  # converted once, before any timing
    with tempfile.TemporaryDirectory() as hf_home:
        results = alternate({"Hub unreachable": first_cell(False, hf_home), "HF_HUB_OFFLINE=1": first_cell(True, hf_home)},
                            args.runs)
    rows = [[name, median(r, "seconds"), spread(r, "seconds"), max(x["stdout_lines"] for x in r),
             max(x["stderr_lines"] for x in r)] for name, r in results.items()]
    print(table(rows, ["path", "cell s (median)", "range", "notice lines", "stderr lines"]))
    cell = median(results["Hub unreachable"], "seconds")
    extra = cell - median(results["HF_HUB_OFFLINE=1"], "seconds")
    quiet = all(x["stdout_lines"] == 1 and x["stderr_lines"] == 0 for x in results["Hub unreachable"])
    print(f"\nfirst cell with the Hub unreachable: {cell:.2f} s (target <= 3) {verdict(cell <= 3)}; "
          f"{extra:+.2f} s over HF_HUB_OFFLINE=1; one notice line and a quiet stderr: {verdict(quiet)}")
    save("offline_start", {"machine": info, "results": results})


if __name__ == "__main__":
    main()
