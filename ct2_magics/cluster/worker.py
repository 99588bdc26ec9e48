"""The worker side of llama.map on Dask: a plugin that keeps one model loaded per worker, and the partition tasks."""

from __future__ import annotations

import asyncio
import ctypes
import os
import pickle
import sys
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distributed import WorkerPlugin, get_worker

from ct2_magics.core.context import Context
from ct2_magics.core.items import ItemError
from ct2_magics.core.session import Session, get_session
from ct2_magics.errors import LlamaError, first_line

PLUGIN = "ct2-magics-model"
# glibc's mallopt parameters, and the largest thresholds its own sliding policy reaches on 64-bit machines.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_MAX = 32 * 2**20
_LOCAL_LOCK = threading.Lock()  # partitions that run in the client's own process (Dask's local schedulers)
_JOBS: dict[str, list[Any]] = {}  # per-item failures of lazy jobs, by job token, in the client's process
# The session each job was made from, for partitions that Dask runs in the client's own process.
_SESSIONS: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()


@dataclass(frozen=True)
class PartitionItemError(ItemError):
    """An item of a Dask Series that got no result: `position` counts within its partition."""

    partition: int = 0


@dataclass(frozen=True)
class ModelSpec:
    """What a worker loads: ship names and options, never the Generator (CTranslate2 objects cannot be pickled)."""

    model: str  # "demo", "smollm2", a Hub repo id, or an absolute path
    source: tuple[str | None, str | None, str | None]  # llama.load's revision, file and quantization
    device: str
    compute_type: str
    threads: int
    is_path: bool
    shipped: str | None = None  # the folder, in each worker's local directory, that ship() copied the model to


@dataclass(frozen=True)
class Job:
    """One llama.map call, as each of its partitions needs it."""

    spec: ModelSpec
    template: str
    system: str | None
    batch_size: int
    options: dict[str, Any]
    settings: dict[str, Any]  # the client's LlamaSettings, so the worker fits prompts and fills defaults alike
    token: str = ""  # names the job: its tasks, its failures, and the session it was made from


class ModelPlugin(WorkerPlugin):
    """Loads the model once when the worker starts (or joins) and keeps it for the worker's life."""

    name = PLUGIN
    idempotent = False  # registering another model replaces this one (teardown frees it first)

    def __init__(self, spec: ModelSpec, settings: dict[str, Any]) -> None:
        self.spec, self.settings = spec, settings
        self.session: Session | None = None  # the worker's own, made at setup

    def setup(self, worker: Any) -> None:
        _malloc_for_decoding()
        self.where = f"worker {worker.address}" + (f" (name {worker.name})" if str(worker.name) != worker.address else "")
        self.error: str | None = None
        self.ready = threading.Event()
        self.lock = threading.Lock()  # one partition at a time: the worker has one model, and last_errors is per session
        # The worker process's own session (what `client.run(lambda: ct2_magics.llama.status())` shows there); the
        # partition tasks use this one, handed to them by the plugin.
        self.session = get_session()
        # Loading can take minutes (a Hub download); a thread keeps the worker answering its scheduler meanwhile.
        threading.Thread(target=self._load, args=(worker.local_directory, worker.state.nthreads), name="ct2-magics-load",
                         daemon=True).start()

    def _load(self, local_directory: str, nthreads: int) -> None:
        session = self.session
        try:
            _apply(session, self.settings)
            # A worker's threads are the cores it may use: its model decodes on that many (Dask's nanny sets
            # OMP_NUM_THREADS=1 otherwise), and a one-thread worker gets no extra batch workers of its own.
            session.settings.threads = self.spec.threads or nthreads
            session.settings.quiet = True  # notices would only reach the worker's log
            model = self._model(Path(local_directory))
            # A shipped copy is the converted folder itself: the revision, file and quantization are spent.
            revision, file, quantization = self.spec.source if self.spec.shipped is None else (None, None, None)
            session.load(model, device=self.spec.device, compute_type=self.spec.compute_type, revision=revision,
                         file=file, quantization=quantization)
        except LlamaError as e:
            self.error = str(e)
        except Exception as e:  # a broken install or a full disk must still name the worker, in one line
            first = first_line(e)
            self.error = type(e).__name__ if first == type(e).__name__ else f"{type(e).__name__}: {first}"
        finally:
            self.ready.set()

    def _model(self, local_directory: Path) -> str:
        spec = self.spec
        if spec.shipped is not None:
            # Dask's UploadDirectory unpacks into the nanny's directory: the parent of the worker's, shared on a machine.
            copy = next((d / spec.shipped for d in (local_directory, local_directory.parent) if (d / spec.shipped).is_dir()),
                        None)
            if copy is None:
                raise LlamaError(f"the copy of {spec.model} that ct2_magics.cluster.ship() sends is not in {local_directory} "
                                 "(only workers started by a nanny receive it); give a path every worker sees, or a Hub id.")
            return str(copy)
        if spec.is_path and not Path(spec.model).is_dir():
            raise LlamaError(f"there is no {spec.model} on this worker. A path must be on a file system every worker sees; "
                             "otherwise copy it to the workers with ct2_magics.cluster.ship(client), or give a Hub id.")
        return spec.model

    async def wait(self) -> str | None:
        """The reason the model could not be loaded, once loading has ended (None: it is loaded)."""
        await asyncio.to_thread(self.ready.wait)
        return None if self.error is None else f"{self.where} cannot load {self.spec.model}: {self.error}"

    async def teardown(self, worker: Any) -> None:
        await asyncio.to_thread(self.ready.wait)
        if self.session is not None:
            await asyncio.to_thread(self.session.unload)


def _malloc_for_decoding() -> None:
    """Undo what Dask's nanny does to glibc's malloc in a worker, which made decoding about 2x slower (BENCHMARKS.md).

    The nanny sets MALLOC_TRIM_THRESHOLD_=65536, and setting it also freezes glibc's sliding mmap threshold at
    128 KB: every large buffer CTranslate2 allocates while decoding is then mapped and unmapped afresh, paying
    its page faults again. Put back the thresholds glibc's own policy would reach.
    """
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return
    libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)
    libc.mallopt(M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD_MAX)


def _apply(session: Any, settings: dict[str, Any]) -> None:
    for name, value in settings.items():
        if getattr(session.settings, name) != value:
            setattr(session.settings, name, value)


def _current_worker() -> Any:
    try:
        return get_worker()
    except ValueError:  # not on a worker: one of Dask's local schedulers runs the partition in this process
        return None


def current_spec(dask_worker: Any) -> ModelSpec | None:
    """The spec of the model this worker keeps (client.run calls it on every worker)."""
    plugin = dask_worker.plugins.get(PLUGIN)
    return None if plugin is None else plugin.spec


async def load_report(dask_worker: Any) -> str | None:
    """Wait until this worker's model has loaded; why it could not, or None (client.run calls it on every worker)."""
    plugin = dask_worker.plugins.get(PLUGIN)
    if plugin is None:
        return f"worker {dask_worker.address} has no ct2-magics model; rerun the call to load it there."
    return await plugin.wait()


def answer(values: list[Any], job: Job) -> tuple[list[str | None], list[tuple[int, str]], list[tuple[int, str]]]:
    """Replies to one partition through its session's own llama.map, and (position, reason) for each failed item and
    for each reply stopped in a loop."""
    worker = _current_worker()
    settings: dict[str, Any] = {}
    if worker is None:  # the session the job was made from: its model and settings are the job's
        session = _SESSIONS.get(job.token)
        if session is None:
            raise LlamaError("the session this job was made from is gone (the kernel was reset); rerun the call.")
        lock = _LOCAL_LOCK
        if session.engine is None:
            revision, file, quantization = job.spec.source
            session.load(job.spec.model, device=job.spec.device, compute_type=job.spec.compute_type,
                         revision=revision, file=file, quantization=quantization)
    else:
        plugin = worker.plugins.get(PLUGIN)
        if plugin is None or plugin.spec != job.spec:
            held = "no model" if plugin is None else f"another model ({plugin.spec.model})"
            raise LlamaError(f"worker {worker.address} holds {held}: another call replaced this job's model; rerun it.")
        plugin.ready.wait()
        if plugin.error is not None:
            raise LlamaError(f"{plugin.where} cannot load {job.spec.model}: {plugin.error}")
        session, lock, settings = plugin.session, plugin.lock, job.settings
    with lock:
        _apply(session, settings)
        replies = session.map(values, job.template, system=job.system, batch_size=job.batch_size, errors="ignore",
                              **job.options)
        failures = [(e.position, e.reason) for e in session.last_errors]
        loops = [(e.position, e.reason) for e in session.last_loops]
        cut = [(e.position, e.reason) for e in session.last_cut]
    return replies, failures, loops, cut


def answer_series(part: Any, job: Job, token: str, partition_info: dict | None = None) -> Any:
    """One partition of a Dask Series: a pandas Series on the partition's own index; failures reported to the client."""
    import pandas as pd

    replies, failures, _loops, _cut = answer(part.tolist(), job)  # a lazy job reports failures only
    if failures:
        number = (partition_info or {}).get("number", 0)
        report = [(number, pos, part.index[pos], reason) for pos, reason in failures]
        worker = _current_worker()
        if worker is None:
            record(token, report)
        else:  # the event travels on the same stream as the task's result, so it reaches the client first
            worker.log_event(token, {"failures": pickle.dumps(report)})
    return pd.Series(replies, index=part.index, name=part.name, dtype=object)


def bind(job: Job, session: Context) -> None:
    """The session that partitions of `job` run in this process use (Dask's local schedulers)."""
    _SESSIONS[job.token] = session


def job_errors(token: str) -> list[Any]:
    """A new lazy job's error list, which its partitions' failures are added to."""
    return _JOBS.setdefault(token, [])


def record(token: str, report: list[tuple[int, int, Any, str]]) -> None:
    """Add a partition's failures to its job's error list (again computing a partition replaces nothing twice)."""
    errors = _JOBS.get(token)
    if errors is None:
        return
    seen = {(e.partition, e.position) for e in errors}
    errors.extend(PartitionItemError(pos, label, reason, number) for number, pos, label, reason in report
                  if (number, pos) not in seen)
    errors.sort(key=lambda e: (e.partition, e.position))
