"""`llama.map` locally and on a Dask LocalCluster: the same 512-item job, throughput and overhead, in one run.

Greedy, the bench model (which never ends a reply early, so every item writes --tokens tokens). Measured:
the job locally (the kernel's CTranslate2 threads on all cores) and on 2 worker processes of 1 thread each,
partitions aligned with local batches (the kernel holds the model) and in input order (it does not), and as
a Dask Series (with --one-worker, also 1 worker of 2 threads); start-up per worker; per-worker tokens/s from Dask's task stream;
the scheduler's overhead per partition (tiny model, 1-token replies, partition sizes swept); replies that
differ from local llama.map; worker memory; and, in plain processes, what Dask's nanny's malloc setting
costs CTranslate2 without the plugin's fix.

    python benchmarks/cluster.py [--items 512] [--tokens 16] [--partition 64] [--runs 2] [--one-worker] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from common import BENCH, ROOT, TINY, bench_model, header, load_average, save, table

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



CHILD = """
import os, sys, time
sys.path.insert(0, {root!r})
if {fix!r}:
    from ct2_magics.cluster.worker import _malloc_for_decoding
    _malloc_for_decoding()
from ct2_magics import llama
llama.settings.threads = 1
llama.load({model!r})
items = {items!r}
llama.map(items[:2], "{{}}", temperature=0, max_tokens=2, progress=False)
t = time.perf_counter()
llama.map(items, "{{}}", temperature=0, max_tokens={tokens}, progress=False)
print(time.perf_counter() - t)
"""


def malloc_costs(model: str, items: list[str], tokens: int, runs: int) -> dict[str, list[float]]:
    """One-thread decoding in fresh processes: glibc as usual, with Dask's MALLOC_TRIM_THRESHOLD_, and with our fix."""
    cases = {"as usual": ({}, False), "MALLOC_TRIM_THRESHOLD_=65536 (Dask's nanny)": ({"MALLOC_TRIM_THRESHOLD_": "65536"}, False),
             "the same, with the plugin's mallopt fix": ({"MALLOC_TRIM_THRESHOLD_": "65536"}, True)}
    out: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(runs):
        for name, (env, fix) in list(cases.items())[r % 3:] + list(cases.items())[:r % 3]:
            env = {**{k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}, **env}
            code = CHILD.format(root=str(ROOT), fix=fix, model=model, items=items, tokens=tokens)
            done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
            out[name].append(float(done.stdout.strip().splitlines()[-1]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--batch", type=int, default=16, help="batch_size (LlamaSettings.batch_size)")
    ap.add_argument("--partition", type=int, default=64, help="partition_size of the cluster jobs")
    ap.add_argument("--runs", type=int, default=2, help="alternated rounds of the local and the cluster job")
    ap.add_argument("--sweep", default="4,16,64,256", help="partition sizes for the overhead sweep (tiny model)")
    ap.add_argument("--one-worker", action="store_true", help="also 1 worker x 2 threads (erratic on a loaded 2-core VM)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes and model: checks that the script runs")
    args = ap.parse_args()
    if args.quick:
        args.items, args.tokens, args.batch, args.partition, args.sweep, args.runs = 16, 2, 4, 8, "4,16", 1
    info = header("llama.map locally and on a 2-worker Dask LocalCluster")

    import dask.dataframe as dd
    import pandas as pd

    from ct2_magics import llama

    llama.settings.batch_size = args.batch
    model = bench_model(TINY if args.quick else BENCH, name="cluster-tiny" if args.quick else None)
    tiny = bench_model(TINY, name="cluster-tiny")
    items = reviews(args.items)
    n, T = args.items, args.tokens
    report: dict[str, Any] = {"machine": info, "items": n, "tokens": T, "batch_size": args.batch, "runs": args.runs,
                              "partition_size": args.partition, "model_bytes": (model / "model.bin").stat().st_size}
    malloc = malloc_costs(str(model), items[:max(4, n // 16)], T, 1 if args.quick else 4)
    report["malloc_s"] = malloc

    t = time.perf_counter()
    llama.load(str(model))
    report["local_load_s"] = time.perf_counter() - t
    timed_map(llama, items[:args.batch], max_tokens=T)  # warm-up
    times: dict[str, list[float]] = {}
    rows: list[list[Any]] = []

    def row(name: str, key: str) -> list[Any]:
        seconds, base = statistics.median(times[key]), statistics.median(times["local"])
        return [name, f"{seconds:.1f} ({min(times[key]):.1f}-{max(times[key]):.1f})", n / seconds, n * T / seconds,
                base / seconds, 1e3 * (seconds - base) / n]

    cluster, client, up_s = start(2, 1)
    try:
        t = time.perf_counter()
        llama.map(items[:1], "{}", cluster=client, max_tokens=1, progress=False)
        load_s = time.perf_counter() - t
        report.update(cluster_start_s=up_s, worker_load_s=load_s, worker_rss_mb=client.run(rss_mb),
                      kernel_rss_mb=rss_mb())
        per_worker: dict[str, Any] = {}
        for r in range(args.runs):  # alternated, so both paths see the same machine
            order = ["local", "aligned"] if r % 2 == 0 else ["aligned", "local"]
            for path in order:
                if path == "local":
                    seconds, local = timed_map(llama, items, max_tokens=T)
                else:
                    seconds, aligned, per_worker = cluster_job(llama, client, items, T, args.partition)
                times.setdefault(path, []).append(seconds)
        report["per_worker"] = per_worker
        series = dd.from_pandas(pd.Series(items, name="review"), npartitions=max(1, n // args.partition))
        timed_map(llama, series.partitions[:1].head(2, compute=False), max_tokens=1)  # workers import dask.dataframe
        seconds, lazy = timed_map(llama, series, max_tokens=T)
        times["lazy"] = [seconds]
        llama.unload()
        llama.settings.model = str(model)  # no model in the kernel: partitions in input order
        odd = args.batch + 1  # each partition ends with a batch of one prompt
        seconds, contiguous = timed_map(llama, items, cluster=client, max_tokens=T, partition_size=args.partition)
        times["contiguous"] = [seconds]
        uneven_series = dd.from_pandas(pd.Series(items, name="review"), chunksize=odd)  # Dask's partitions: no rounding
        seconds, uneven = timed_map(llama, uneven_series, max_tokens=T)
        times["uneven"] = [seconds]
        differ = {f"aligned partitions of {args.partition}": sum(a != b for a, b in zip(aligned, local)),
                  f"Dask Series, {series.npartitions} partitions": sum(a != b for a, b in zip(lazy.tolist(), local)),
                  f"partitions of {args.partition} in input order": sum(a != b for a, b in zip(contiguous, local)),
                  f"Dask Series, partitions of {odd} (each ends in a batch of one)":
                      sum(a != b for a, b in zip(uneven.tolist(), local))}
        report["differ_from_local"] = differ

        # Overhead per partition: the tiny model, 1-token replies, only the partition size changes.
        llama.settings.model = str(tiny)
        llama.map(items[:1], "{}", cluster=client, max_tokens=1, progress=False)
        sizes = [int(s) for s in args.sweep.split(",")]
        sweep: dict[int, list[float]] = {s: [] for s in sizes}
        for r in range(2):
            for size in sizes if r == 0 else sizes[::-1]:
                sweep[size].append(timed_map(llama, items, cluster=client, max_tokens=1, partition_size=size)[0])
        parts = {s: -(-n // s) for s in sizes}
        xs, ys = [parts[s] for s in sizes], [statistics.mean(sweep[s]) for s in sizes]
        mx, my = statistics.mean(xs), statistics.mean(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
        overhead_ms = 1e3 * slope * 2  # two workers share the partitions
        report.update(sweep_s=sweep, overhead_per_partition_ms=overhead_ms)
    finally:
        client.close()
        cluster.close()
    rows += [row("local llama.map (kernel, CTranslate2 picks the threads)", "local"),
             row(f"2 workers x 1 thread, partitions of {args.partition} aligned with local batches", "aligned"),
             row(f"2 workers, Dask Series of {series.npartitions} partitions", "lazy"),
             row(f"2 workers, partitions of {args.partition} in input order (no model in the kernel)", "contiguous"),
             row(f"2 workers, Dask Series of {odd}-item partitions", "uneven")]

    if args.one_worker and not args.quick:
        llama.settings.model = str(model)
        cluster, client, up1 = start(1, 2)
        try:
            llama.map(items[:1], "{}", cluster=client, max_tokens=1, progress=False)
            times["one"] = [cluster_job(llama, client, items, T, args.partition)[0]]
            rows.append(row(f"1 worker x 2 threads, partitions of {args.partition}", "one"))
        finally:
            client.close()
            cluster.close()
    report["seconds"] = times

    print(table(rows, ["path", "seconds (range)", "items/s", "tokens/s", "vs local", "overhead ms/item"]))
    print(f"\n{n} items x {T} tokens, greedy, batch_size {args.batch}; local and aligned: {args.runs} alternated runs "
          f"(median), the others one run.")
    print(f"start-up: LocalCluster(2 workers) {up_s:.1f} s, then each worker loads the model itself: {load_s:.1f} s "
          f"(in parallel; the kernel's own load took {report['local_load_s']:.1f} s)")
    print("per worker (Dask task stream, last aligned run): " + "; ".join(
        f"{w.rsplit(':', 1)[-1]}: {s['partitions']} partitions, {s['tok_s']:.1f} tok/s computing"
        for w, s in per_worker.items()))
    print("overhead sweep (tiny model, 1 token, mean of 2): " + ", ".join(
        f"partitions of {s}: {statistics.mean(sweep[s]):.2f} s" for s in sizes)
        + f" -> {overhead_ms:.1f} ms per partition (least squares over the partition count, 2 workers)")
    print("replies differing from local llama.map: " + "; ".join(f"{k}: {v} of {n}" for k, v in differ.items()))
    print("worker memory (RSS): " + ", ".join(f"{v:.0f} MB" for v in report["worker_rss_mb"].values())
          + f"; the kernel {report['kernel_rss_mb']:.0f} MB; model.bin {report['model_bytes'] / 2**20:.0f} MB")
    print("malloc, plain processes, 1 thread, median s: " + "; ".join(
        f"{k}: {statistics.median(v):.2f} ({min(v):.2f}-{max(v):.2f})" for k, v in malloc.items()))
    print(f"load at the end: {load_average()}")
    save("cluster", {**report, "rows": rows})


if __name__ == "__main__":
    main()
