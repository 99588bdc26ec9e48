"""The paths that read logits back from CTranslate2 (`logprobs`/`--probs`, `next_tokens`, `schema=`), on a GPU against
the CPU: on CUDA the logits are a device StorageView, which the CPU never shows. The demo model (built here, a byte-level
BPE tokenizer that schema= can use), greedy.

    python benchmarks/gpu_paths.py [--compute-type int8_float16]

Prints one JSON object: for each path, whether it ran on cuda, and how close its numbers are to the CPU's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QUESTION = "Tell me about the sea and the sky."
SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}, "mood": {"enum": ["calm", "rough"]}},
          "required": ["ok", "mood"], "additionalProperties": False}


def run(model: str, device: str, compute_type: str) -> dict:
    from ct2_magics.api import Llama
    from ct2_magics.core.session import Session

    session = Session()
    session.settings.system = None
    session.load(model, device=device, compute_type=compute_type)
    llama = Llama(session)
    out: dict = {"device": session.engine.device, "compute_type": session.engine.compute_type}
    t = time.perf_counter()
    reply = llama.stream(QUESTION, once=True, logprobs=5, temperature=0, max_tokens=24)
    out["text"] = reply.consume()
    out["probs"] = [round(tok.prob, 4) for tok in reply.tokens]
    out["ranks"] = [tok.rank for tok in reply.tokens]
    out["joined"] = "".join(tok.text for tok in reply.tokens) == reply.text
    table = llama.next_tokens(QUESTION, top=5, temperature=0.7, top_k=3)
    out["next"] = [[str(t), round(float(p), 4), round(float(s), 4)] for t, p, s in
                   zip(table["token"], table["prob"], table["sampled"])]
    try:
        out["schema_value"] = llama.ask(QUESTION, once=True, schema=SCHEMA, temperature=0, max_tokens=64)
    except Exception as e:
        out["schema_value"] = f"{type(e).__name__}: {e}"
    out["seconds"] = round(time.perf_counter() - t, 2)
    session.unload()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--compute-type", default="int8_float16")
    args = ap.parse_args()
    model = args.model
    report: dict = {}
    for name, device, compute in (("cpu", "cpu", "int8"), ("cuda", "cuda", args.compute_type)):
        try:
            report[name] = run(model, device, compute)
        except Exception as e:  # report what failed where, and go on
            report[name] = {"error": f"{type(e).__name__}: {e}"}
    cpu, gpu = report.get("cpu", {}), report.get("cuda", {})
    if "probs" in cpu and "probs" in gpu:
        same = [a == b for a, b in zip(cpu["text"].split(), gpu["text"].split())]  # int8 rounding differs by device
        report["agreement"] = {
            "same_reply": cpu["text"] == gpu["text"], "same_words": sum(same), "words": len(same),
            "max_prob_diff_while_same": max((abs(a - b) for a, b in zip(cpu["probs"], gpu["probs"])), default=None)
            if cpu["text"] == gpu["text"] else None,
            "same_next_tokens": [r[0] for r in cpu["next"]] == [r[0] for r in gpu["next"]],
            "schema_value_types": [type(cpu.get("schema_value")).__name__, type(gpu.get("schema_value")).__name__]}
    print(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
