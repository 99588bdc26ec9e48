"""`llama.map` locally and on a Dask LocalCluster: the same 512-item job, throughput and overhead, in one run.

Greedy, the bench model (which never ends a reply early, so every item writes --tokens tokens). Measured:
the job locally (the kernel's CTranslate2 threads on all cores) and on 2 worker processes of 1 thread each,
partitions aligned with local batches (the kernel holds the model) and in input order (it does not), and as
a Dask Series; then 1 worker of 2 threads; start-up per worker; per-worker tokens/s from Dask's task stream;
the scheduler's overhead per partition (tiny model, 1-token replies, partition sizes swept); replies that
differ from local llama.map; worker memory.

    python benchmarks/cluster.py [--items 512] [--tokens 16] [--partition 64] [--quick]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from common import BENCH, TINY, bench_model, header, load_average, save, table

TOPICS = ["the delivery was late", "great value", "it broke after a week", "the colour is lovely", "too small",
          "works as described", "the seller never answered", "I would buy it again", "the battery is weak",
          "arrived damaged", "perfect for my kitchen", "the manual is confusing", "quiet and fast"]


def reviews(count: int) -> list[str]:
    """Short product reviews of varied length, like a column of a data frame."""
    return [f"Review {i}: {TOPICS[i % len(TOPICS)]}." + " Also, " + ", and ".join(TOPICS[(i + k) % len(TOPICS)]
            for k in range(i % 5)) for i in range(count)]


def rss_mb(dask_worker: Any = None) -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def timed_map(llama: Any, items: Any, **kw: Any) -> tuple[float, Any]:
    t = time.perf_counter()
    out = llama.map(items, "Summarise this review in one line: {}", temperature=0, progress=False, **kw)
    if hasattr(out, "compute"):
        out = out.compute()
    return time.perf_counter() - t, out


def task_stats(stream: list[dict[str, Any]], tokens_per_item: dict[str, int]) -> dict[str, dict[str, float]]:
    """Per worker: partitions run, seconds computing, tokens/s while computing, mean gap between its partitions."""
    out: dict[str, dict[str, float]] = {}
    for worker in sorted({t["worker"] for t in stream}):
        spans = sorted((s["start"], s["stop"], t["key"]) for t in stream if t["worker"] == worker
                       for s in t["startstops"] if s["action"] == "compute")
        busy = sum(b - a for a, b, _ in spans)
        tokens = sum(tokens_per_item.get(str(key), 0) for _, _, key in spans)
        gaps = [spans[i + 1][0] - spans[i][1] for i in range(len(spans) - 1)]
        out[worker] = {"partitions": len(spans), "busy_s": busy, "tok_s": tokens / busy if busy else 0.0,
                       "gap_ms": 1e3 * sum(gaps) / len(gaps) if gaps else 0.0}
    return out


def cluster_job(llama: Any, client: Any, items: list[str], tokens: int, partition: int) -> tuple[float, list, dict]:
    from distributed import get_task_stream

    with get_task_stream(client=client) as ts:
        seconds, out = timed_map(llama, items, cluster=client, max_tokens=tokens, partition_size=partition)
    sizes = {str(t["key"]): 0 for t in ts.data}
    for key in sizes:  # each task's key ends with its partition number; all partitions but the last are full
        number = int(key.rsplit("-", 1)[1])
        sizes[key] = tokens * max(0, min(partition, len(items) - number * partition))
    return seconds, out, task_stats(ts.data, sizes)


def start(workers: int, threads: int) -> tuple[Any, Any, float]:
    from distributed import Client, LocalCluster

    t = time.perf_counter()
    cluster = LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True, dashboard_address=None)
    client = Client(cluster)
    return cluster, client, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--batch", type=int, default=16, help="batch_size (LlamaSettings.batch_size)")
    ap.add_argument("--partition", type=int, default=64, help="partition_size of the cluster jobs")
    ap.add_argument("--sweep", default="4,16,64,256", help="partition sizes for the overhead sweep (tiny model)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes and model: checks that the script runs")
    args = ap.parse_args()
    if args.quick:
        args.items, args.tokens, args.batch, args.partition, args.sweep = 16, 2, 4, 8, "4,16"
    info = header("llama.map locally and on a 2-worker Dask LocalCluster")

    import pandas as pd
    import dask.dataframe as dd

    from ct2_magics import llama

    llama.settings.batch_size = args.batch
    model = bench_model(TINY if args.quick else BENCH, name="cluster-tiny" if args.quick else None)
    tiny = bench_model(TINY, name="cluster-tiny")
    items = reviews(args.items)
    n, T = args.items, args.tokens
    rows: list[list[Any]] = []
    report: dict[str, Any] = {"machine": info, "items": n, "tokens": T, "batch_size": args.batch,
                              "partition_size": args.partition, "model_bytes": (model / "model.bin").stat().st_size}

    t = time.perf_counter()
    llama.load(str(model))
    report["local_load_s"] = time.perf_counter() - t
    timed_map(llama, items[:args.batch], max_tokens=T)  # warm-up
    local_s, local = timed_map(llama, items, max_tokens=T)
    rows.append(["local llama.map (kernel, CTranslate2 picks the threads)", local_s, n / local_s, n * T / local_s, 1.0, 0.0])

    def row(name: str, seconds: float) -> list[Any]:
        return [name, seconds, n / seconds, n * T / seconds, local_s / seconds, 1e3 * (seconds - local_s) / n]

    cluster, client, up_s = start(2, 1)
    try:
        t = time.perf_counter()
        llama.map(items[:1], "{}", cluster=client, max_tokens=1, progress=False)
        load_s = time.perf_counter() - t
        report.update(cluster_start_s=up_s, worker_load_s=load_s, worker_rss_mb=client.run(rss_mb))
        aligned_s, aligned, per_worker = cluster_job(llama, client, items, T, args.partition)
        rows.append(row(f"cluster, 2 workers x 1 thread, partitions of {args.partition} aligned with local batches",
                        aligned_s))
        report["per_worker"] = per_worker
        series = dd.from_pandas(pd.Series(items, name="review"), npartitions=max(1, n // args.partition))
        lazy_s, lazy = timed_map(llama, series, max_tokens=T)
        rows.append(row(f"cluster, Dask Series of {series.npartitions} partitions (batches per partition)", lazy_s))
        llama.unload()
        llama.settings.model = str(model)  # no model in the kernel: partitions in input order
        contiguous_s, contiguous = timed_map(llama, items, cluster=client, max_tokens=T, partition_size=args.partition)
        rows.append(row(f"cluster, partitions of {args.partition} in input order (no model in the kernel)", contiguous_s))
        differ = {"aligned partitions": sum(a != b for a, b in zip(aligned, local)),
                  "Dask Series partitions": sum(a != b for a, b in zip(lazy.tolist(), local)),
                  "partitions in input order": sum(a != b for a, b in zip(contiguous, local))}
        report["differ_from_local"] = differ

        # Scheduler overhead per partition: the tiny model, 1-token replies, only the partition size changes.
        llama.settings.model = str(tiny)
        llama.map(items[:1], "{}", cluster=client, max_tokens=1, progress=False)
        sweep = {}
        for size in (int(s) for s in args.sweep.split(",")):
            sweep[size] = timed_map(llama, items, cluster=client, max_tokens=1, partition_size=size)[0]
        sizes = sorted(sweep)
        small, large = sizes[0], sizes[-1]
        parts = {s: -(-n // s) for s in sizes}
        overhead_ms = 1e3 * 2 * (sweep[small] - sweep[large]) / max(1, parts[small] - parts[large])
        report.update(sweep_s=sweep, overhead_per_partition_ms=overhead_ms)
    finally:
        client.close()
        cluster.close()

    one = None
    if not args.quick:
        llama.settings.model = str(model)
        cluster, client, up1 = start(1, 2)
        try:
            llama.map(items[:1], "{}", cluster=client, max_tokens=1, progress=False)
            one_s, _, one = cluster_job(llama, client, items, T, args.partition)
            rows.append(row(f"cluster, 1 worker x 2 threads, partitions of {args.partition}", one_s))
            report["one_worker"] = {"seconds": one_s, "per_worker": one, "cluster_start_s": up1}
        finally:
            client.close()
            cluster.close()

    print(table(rows, ["path", "seconds", "items/s", "tokens/s", "vs local", "overhead ms/item"]))
    print(f"\n{n} items x {T} tokens, greedy, batch_size {args.batch}; one run each (noisy machine: ratios, not digits).")
    print(f"start-up: LocalCluster(2 workers) {up_s:.1f} s, then each worker loads the model itself: {load_s:.1f} s "
          f"(in parallel; the kernel's own load took {report['local_load_s']:.1f} s)")
    print("per worker (Dask task stream): " + "; ".join(
        f"{w.rsplit(':', 1)[-1]}: {s['partitions']} partitions, {s['tok_s']:.1f} tok/s computing, gap {s['gap_ms']:.1f} ms"
        for w, s in per_worker.items()))
    if one:
        print("1 worker x 2 threads: " + "; ".join(f"{s['tok_s']:.1f} tok/s computing" for s in one.values()))
    print("overhead sweep (tiny model, 1 token): " + ", ".join(f"partitions of {s}: {sweep[s]:.2f} s" for s in sizes)
          + f" -> {overhead_ms:.1f} ms per partition per worker")
    print("replies differing from local llama.map: " + ", ".join(f"{k}: {v} of {n}" for k, v in differ.items()))
    print(f"worker memory (RSS): " + ", ".join(f"{v:.0f} MB" for v in report["worker_rss_mb"].values())
          + f"; model.bin {report['model_bytes'] / 2**20:.0f} MB")
    print(f"load at the end: {load_average()}")
    save("cluster", {**report, "rows": rows})


if __name__ == "__main__":
    main()
