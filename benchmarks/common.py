"""Shared benchmark helpers: the cached bench models, the alternating runner, medians, machine facts."""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python benchmarks/NAME.py` works from a clean checkout, uninstalled
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# One decode step of BENCH costs ~10 ms on 2 cores (int8): per-token overheads of a few 0.1 ms show.
BENCH = {"hidden": 1024, "layers": 8, "heads": 16, "kv_heads": 4, "intermediate": 2816}
# The demo's own shape: 0.3-2 ms a step here (it depends on the threads), so display throttling dominates.
TINY = {"hidden": 256, "layers": 4, "heads": 8, "kv_heads": 2, "intermediate": 512}

PROMPT = "Explain, step by step, how a hash map handles collisions, and when a tree would be better."


def cache_root() -> Path:
    """$CT2_MAGICS_CACHE/bench when set, else ~/.cache/ct2-magics-bench."""
    env = os.environ.get("CT2_MAGICS_CACHE")
    return Path(env) / "bench" if env else Path.home() / ".cache" / "ct2-magics-bench"


def bench_model(shape: dict[str, int] | None = None, name: str | None = None) -> Path:
    """Build (once, atomically) a demo-style int8 model of `shape` that never ends a reply; return its directory."""
    from ct2_magics.models.demo import MODEL_FILES, build_model

    shape = dict(BENCH if shape is None else shape)
    name = name or "llama-" + "-".join(f"{k}{v}" for k, v in shape.items())
    target = cache_root() / name
    if all((target / f).is_file() for f in MODEL_FILES):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target.parent))
    try:
        t = time.perf_counter()
        build_model(staging, **shape, eot_bias=-1e4, quantization="int8")
        print(f"built {name} in {time.perf_counter() - t:.1f} s -> {target}", file=sys.stderr)
        try:
            os.rename(staging, target)
        except OSError:  # another process finished first: keep its model
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def alternate(paths: dict[str, Callable[[], dict[str, float]]], runs: int, warmup: int = 1) -> dict[str, list[dict[str, float]]]:
    """Run each path `warmup` times, then `runs` rounds of all paths in turn (order rotating); results per path."""
    names = list(paths)
    for _ in range(warmup):
        for name in names:
            paths[name]()
    out: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for r in range(runs):
        for name in names[r % len(names):] + names[:r % len(names)]:
            out[name].append(paths[name]())
    return out


def median(results: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in results)


def spread(results: list[dict[str, float]], key: str) -> str:
    """min-max of a metric, to show how noisy a median is."""
    values = [r[key] for r in results]
    return f"{min(values):.4g}-{max(values):.4g}"


def table(rows: list[list[Any]], header: list[str]) -> str:
    """A markdown table, numbers rounded to 4 significant digits."""
    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def machine() -> dict[str, Any]:
    """What a result depends on: CPU, cores, load, library versions, date."""
    import ctranslate2

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "cpu": cpu, "cores": os.cpu_count(),
            "load": load_average(), "python": platform.python_version(), "ctranslate2": ctranslate2.__version__}


def wait_for_quiet(max_load: float, patience_s: float = 600.0) -> str:
    """Sleep (up to patience_s) until the 1-minute load is under max_load; return the load seen."""
    deadline = time.time() + patience_s
    while float(load_average().split()[0]) > max_load and time.time() < deadline:
        time.sleep(15)
    return load_average()


def header(title: str) -> dict[str, Any]:
    """Print what the results depend on; with $BENCH_MAX_LOAD set, first wait (up to 10 min) for a quieter machine."""
    if os.environ.get("BENCH_MAX_LOAD"):
        wait_for_quiet(float(os.environ["BENCH_MAX_LOAD"]))
    info = machine()
    print(f"# {title}\n{info['date']}  {info['cpu']}, {info['cores']} cores, load {info['load']}, "
          f"ctranslate2 {info['ctranslate2']}, Python {info['python']}\n")
    return info


def save(name: str, report: dict[str, Any]) -> None:
    """Write the report as JSON where $BENCH_JSON_DIR says (nothing when unset)."""
    where = os.environ.get("BENCH_JSON_DIR")
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
        (Path(where) / f"{name}.json").write_text(json.dumps(report, indent=1, default=str))


def kernel_shell() -> tuple[Any, Any]:
    """A real InteractiveShell whose displays are serialised like ipykernel's iopub messages, with ct2_magics loaded."""
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    publisher = _publisher_class()(shell=shell)
    shell.display_pub = publisher
    shell.run_line_magic("load_ext", "ct2_magics")
    return shell, publisher


def _publisher_class() -> type:
    from IPython.core.displaypub import DisplayPublisher

    class KernelPublisher(DisplayPublisher):
        """Builds and signs the display_data / update_display_data message a kernel would send; counts its bytes."""

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            try:
                from ipykernel.jsonutil import json_clean
                from jupyter_client.session import Session
            except ImportError:  # no Jupyter here: count the JSON content alone (no header, no signature)
                self.session = None
            else:
                self._clean = json_clean
                self.session = Session(key=b"benchmark", username="bench")
            self.reset()

        def reset(self) -> None:
            """Forget what was sent; times count from now."""
            self.t0 = time.perf_counter()
            self.events: list[dict[str, Any]] = []  # t, update, bytes, chars (text/plain, else text/html), text
            self.publish_s = 0.0  # time spent building and serialising messages
            self.last_metadata: dict[str, Any] = {}

        def publish(self, data: dict, metadata: dict | None = None, source: Any = None, *, transient: dict | None = None,
                    update: bool = False, **kwargs: Any) -> None:
            t = time.perf_counter()
            sys.stdout.flush()
            content = {"data": data, "metadata": metadata or {}, "transient": transient or {}}
            if self.session is None:
                size = len(json.dumps(content, ensure_ascii=False).encode())
            else:
                msg = self.session.msg("update_display_data" if update else "display_data", self._clean(content))
                size = sum(len(frame) for frame in self.session.serialize(msg, ident=b"display_data"))
            text = data.get("text/plain", data.get("text/html", ""))
            self.events.append({"t": t - self.t0, "update": update, "bytes": size, "chars": len(text), "text": text,
                                "html": data.get("text/html")})
            self.last_metadata = metadata or {}
            self.publish_s += time.perf_counter() - t

    return KernelPublisher

