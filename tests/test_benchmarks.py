"""Each benchmark script runs from the checkout with one command and prints its table and verdicts.

Tiny sizes: these check that the scripts work, not what they measure (BENCHMARKS.md has the figures).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # a minute and a half on 2 cores; tests/run.sh runs them


def bench(tmp_path: Path, script: str, *args: str, timeout: float = 300) -> str:
    env = {**os.environ, "CT2_MAGICS_CACHE": str(tmp_path / "cache"), "CT2_MAGICS_DATA": str(tmp_path / "data"),
           "BENCH_JSON_DIR": str(tmp_path / "json")}
    env.pop("BENCH_MAX_LOAD", None)
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the module, so the bench models are built once."""
    return tmp_path_factory.mktemp("bench")


def test_streaming(shared: Path) -> None:
    out = bench(shared, "streaming.py", "--tokens", "6", "--runs", "1", "--ttft-runs", "1")
    assert "| bench |" in out and "| tiny |" in out
    assert "tokens/s ratio" in out and "(target >= 0.97)" in out and "(target <= +5)" in out
    assert (shared / "json" / "streaming.json").is_file()


def test_streaming_probs(shared: Path, smollm2_gguf: Path) -> None:
    out = bench(shared, "streaming.py", "--probs", "--tokens", "6", "--runs", "1", "--profile")
    assert "| %%llama cell |" in out and "| llama.stream, no display |" in out and "| the same text |" in out
    assert "--probs 5 / plain %%llama:" in out and "(target >= 0.8)" in out and "load before / after:" in out
    assert "| generate_tokens |" in out and "(our callback) |" in out and (shared / "json" / "streaming_probs.json").is_file()


def test_display_traffic(shared: Path) -> None:
    out = bench(shared, "display_traffic.py", "--lengths", "8,16", "--bench-lengths", "8")
    assert "most updates in any 1 s window" in out and "(target <= 15)" in out


def test_batch(shared: Path) -> None:
    out = bench(shared, "batch.py", "--prompts", "3", "--tokens", "4", "--runs", "1")
    assert "llama.generate / bare generate_batch" in out and "llama.generate / loop of llama.ask" in out


def test_batch_template(shared: Path) -> None:
    out = bench(shared, "batch.py", "--template", "--model", "bench", "--prompts", "4", "--tokens", "2", "--runs", "1")
    assert "| long template, 2nd call (cache hit) |" in out and "2nd call / 1st call" in out
    assert "differing from the whole prompt (today)" in out and (shared / "json" / "batch_template.json").is_file()


def test_batch_mixed(shared: Path) -> None:
    out = bench(shared, "batch.py", "--mixed", "--prompts", "4", "--tokens", "3", "--runs", "1")
    assert "| input order |" in out and "| sorted by length |" in out and "replies that differ between the two orders" in out


def test_vs_llamacpp(shared: Path) -> None:
    pytest.importorskip("llama_cpp")
    from ct2_magics.models import smollm2

    if smollm2.bundled_gguf() is None:
        pytest.skip(f"needs the SmolLM2 GGUF ({smollm2.INSTALL})")
    out = bench(shared, "vs_llamacpp.py", "--tiny", timeout=600)
    assert "| ct2-magics 1 thread |" in out and "| llama.cpp 2 threads |" in out
    assert "| llama.cpp batched decoding, 2 threads |" in out and "greedy replies identical" in out
    assert "| 1 |" in out and "| 2 |" in out and (shared / "json" / "vs_llamacpp.json").is_file()


def test_vs_llamacpp_without_llama_cpp_says_how_to_install(shared: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "llama_cpp.py").write_text("raise ImportError('not here')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "vs_llamacpp.py"), "--tiny"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and "CMAKE_ARGS" in lines[0] and "GGML_AMX_INT8=OFF" in lines[0] and "build-essential" in lines[0]


def test_cluster(shared: Path) -> None:
    pytest.importorskip("distributed")
    pytest.importorskip("dask.dataframe")
    out = bench(shared, "cluster.py", "--quick")
    assert "| local llama.map" in out and "| 2 workers x 1 thread" in out and "ms per partition" in out
    assert "replies differing from local llama.map" in out and (shared / "json" / "cluster.json").is_file()


def test_kernel_streaming(shared: Path) -> None:
    out = bench(shared, "kernel_streaming.py", "--model", "demo", "--tokens", "8", "--runs", "1", "--profile", "3")
    assert "| bare |" in out and "| ours |" in out and "%%llama / bare:" in out and "ms/token" in out
    assert (shared / "json" / "kernel_streaming.json").is_file()


def test_startup(shared: Path) -> None:
    out = bench(shared, "startup.py", "--runs", "1")
    assert "%load_ext ct2_magics:" in out and "loading an already-loaded model" in out


def test_long_chat(shared: Path) -> None:
    out = bench(shared, "long_chat.py", "--models", "bench", "--turns", "2", "--checkpoints", "1,2", "--reps", "1",
                "--reply", "4")
    assert "| 1 |" in out and "| 2 |" in out and "fast typist ms" in out and "no pause / today" in out
    assert "pause path (cache hit) == the same prompt uncached through bare CTranslate2: 2/2" in out


@pytest.mark.torch
def test_vs_transformers(shared: Path) -> None:
    pytest.importorskip("torch")
    out = bench(shared, "vs_transformers.py", "--tokens", "4", "--runs", "1")
    assert "vs transformers" in out and "TextIteratorStreamer" in out


def test_reference_shape_dry_run(shared: Path) -> None:
    out = bench(shared, "reference_shape.py", "--device", "cpu", "--small", "--tokens", "4", "--runs", "1",
                "--model", str(shared / "small"))
    assert '"ratio_ours_over_bare"' in out and '"bandwidth_limit_tokens_per_s"' in out
    check = bench(shared, "reference_shape.py", "--device", "cpu", "--check", "--model", str(shared / "small"))
    assert '"top1_agreement"' in check


def test_threads(shared: Path) -> None:
    out = bench(shared, "threads.py", "--tokens", "4", "--runs", "1")
    assert "| tiny |" in out and "| bench |" in out and "1 / 2" in out
    out = bench(shared, "threads.py", "--batch", "--tokens", "2", "--runs", "1")
    assert "| tiny | 2 workers x 1 thread, 16 each |" in out and "vs 1 worker x 1 thread" in out


def test_convert_cost(shared: Path, smollm2_gguf: Path) -> None:
    out = bench(shared, "convert_cost.py")
    assert "| SmolLM2-135M Q4_1 GGUF | int8 |" in out and "peak RSS MB" in out


def test_schema_bench(shared: Path) -> None:
    out = bench(shared, "schema_bench.py", "--quick")
    assert "| schema=, llama.map |" in out and "| free JSON, llama.map |" in out and "(target <= 3x)" in out
    designs = bench(shared, "schema_bench.py", "--quick", "--designs")
    assert "| C speculative rounds (ct2-magics) |" in designs and "| A forward_batch every step |" in designs
    assert (shared / "json" / "schema_bench.json").is_file() and (shared / "json" / "schema_designs.json").is_file()


def test_loops(shared: Path) -> None:
    out = bench(shared, "loops.py", "--tiny", "--top", "3")
    assert "| rule (max_span, min_repeats, min_chars, line_repeats) | normal replies cut |" in out
    assert "ours (200, 3, 200, 12):" in out and (shared / "json" / "loops.json").is_file()
    out = bench(shared, "loops.py", "--map", "--tiny", "--runs", "1", "--tokens", "8")
    assert "| stop_loops on |" in out and "| stop_loops off |" in out and "rows changed: 0" in out
    assert "MISSED" not in out and (shared / "json" / "loops_map.json").is_file()


def test_offline_start(shared: Path, smollm2_gguf: Path) -> None:
    out = bench(shared, "offline_start.py", "--runs", "1")
    assert "| Hub unreachable |" in out and "| HF_HUB_OFFLINE=1 |" in out and "(target <= 3)" in out


def test_structured(shared: Path) -> None:
    out = bench(shared, "structured.py", "--quick")
    assert "| cities -> country (8) | choices |" in out and "| review sentiment (8) | free text, read by hand |" in out
    assert "2-choice llama.map / free 8-token llama.map:" in out and "(target <= 2)" in out
    assert "| 2 choices, one read (static prompt) |" in out and (shared / "json" / "structured.json").is_file()
    sizes = bench(shared, "structured.py", "--quick", "--batch-tokens", "64,256")
    assert "| 64 |" in sizes and "| 256 |" in sizes and "CPU seconds" in sizes
