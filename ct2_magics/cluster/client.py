"""llama.map over a Dask cluster: the same call, each worker answering partitions with a model it keeps loaded.

`llama.map(items, template, cluster=client)` returns what local `llama.map` returns; `llama.map(dask_series, ...)`
returns a lazy Dask Series on the same index and divisions. Dask itself is imported only here, on first use.
"""

from __future__ import annotations

import hashlib
import pickle
import tempfile
import uuid
from pathlib import Path
from typing import Any

from ct2_magics.core.batch import check_call
from ct2_magics.core.context import Context
from ct2_magics.core.items import Progress, Silent, template_filler
from ct2_magics.errors import LlamaError

INSTALL = 'llama.map on a cluster needs Dask: pip install "ct2-magics[dask]" (dask[distributed]).'


def _distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise LlamaError(INSTALL) from None
    return distributed


def map_on_cluster(session: Context, items: Any, template: str, cluster: Any, *, system: str | None = None,
                   batch_size: int | None = None, partition_size: int | None = None, progress: Progress | None = None,
                   errors: str = "warn", **options: Any) -> Any:
    """llama.map's cluster path (see the module's docstring); options as for llama.map, plus partition_size."""
    distributed = _distributed()
    # Every check local llama.map makes before it loads a model (template, options, batch size, errors).
    template_filler(template)
    size, options = check_call(session, system=system, batch_size=batch_size, errors=errors, options=options)
    lazy = _is_dask(items)
    if lazy:
        _check_dask_series(items, partition_size)
    client = _client(distributed, cluster, lazy=lazy)
    from ct2_magics.cluster.worker import Job, bind

    spec = model_spec(session, client)
    # The kernel's settings travel with the job, so workers fit prompts and fill defaults alike; what loading
    # takes (model, device, compute type, threads) is in the spec.
    settings = {name: getattr(session.settings, name) for name in session.settings.trait_names(config=True)
                if name not in ("model", "device", "compute_type", "threads")}
    job = Job(spec, template, system if system is not None else session.settings.system, size, options, settings,
              token=f"ct2-magics-map-{uuid.uuid4().hex}")
    bind(job, session)  # partitions Dask runs in this process use this session, never another
    if client is not None:
        ensure_model(client, spec, settings)
    if lazy:
        return _lazy(session, items, job, client)
    from ct2_magics.cluster.eager import run

    return run(session, client, items, job, partition_size=partition_size, progress=progress or Silent(), errors=errors)


def _is_dask(items: Any) -> bool:
    return type(items).__module__.startswith("dask")  # dask.dataframe, and dask_expr before dask 2025.1


def _check_dask_series(items: Any, partition_size: Any) -> None:
    import dask.dataframe as dd

    if isinstance(items, dd.DataFrame):
        raise LlamaError("map takes one column (ddf['text']) or a list, not a whole DataFrame.")
    if not isinstance(items, dd.Series):
        raise LlamaError(f"map takes a Dask Series (ddf['text']); got a {type(items).__name__}.")
    if partition_size is not None:
        raise LlamaError("A Dask Series keeps its own partitions; repartition it (series.repartition(npartitions=N)) "
                         "instead of passing partition_size.")


def _client(distributed: Any, cluster: Any, lazy: bool) -> Any:
    if cluster is None:
        if not lazy:
            raise LlamaError("cluster= needs a dask.distributed Client.")
        try:
            return distributed.default_client()  # the Client a Dask Series will be computed on
        except ValueError:
            return None  # no Client: Dask's local scheduler runs the partitions in this process
    if isinstance(cluster, distributed.Client):
        if cluster.status not in ("running", "newly-created"):
            raise LlamaError(f"The Dask client is {cluster.status}; connect a new one: Client(scheduler_address).")
        return cluster
    if isinstance(cluster, distributed.deploy.Cluster):
        raise LlamaError("cluster= takes a Client, not the cluster itself: client = Client(cluster), then cluster=client.")
    raise LlamaError(f"cluster= takes a dask.distributed Client; got {type(cluster).__name__}.")


def model_spec(session: Context, client: Any) -> Any:
    """The kernel's model (the loaded one, else LlamaSettings.model) as the workers will load it."""
    from ct2_magics.cluster.worker import ModelSpec

    engine = session.engine
    if engine is not None:
        name, source, (device, compute_type) = engine.name, engine.source, engine.requested
    else:
        s = session.settings
        name, source, device, compute_type = s.model, (None, None, None), s.device, s.compute_type
    model, is_path = worker_name(name)
    shipped = _upload_name(model, source)
    if client is None or not client.run_on_scheduler(_has_nanny_plugin, "upload-directory-" + shipped):
        shipped = None
    return ModelSpec(model, source, device, compute_type, session.settings.threads, is_path, shipped)


def worker_name(name: str) -> tuple[str, bool]:
    """The model's name as every worker should resolve it (a path made absolute), and whether it is a path."""
    from ct2_magics.models.hub import is_repo_id
    from ct2_magics.models.smollm2 import NAME as SMOLLM2

    if name in ("demo", SMOLLM2) or is_repo_id(name):  # names each worker resolves itself
        return name, False
    return str(Path(name).expanduser().absolute()), True


def _upload_name(model: str, source: tuple[str | None, ...]) -> str:
    key = "\0".join([model, *(part or "" for part in source)])
    return "ct2-magics-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def _has_nanny_plugin(name: str, dask_scheduler: Any = None) -> bool:
    return name in dask_scheduler.nanny_plugins


def ensure_model(client: Any, spec: Any, settings: dict[str, Any]) -> None:
    """Have every worker load `spec` (once: a worker keeps it) and wait; one line naming a worker that cannot."""
    from ct2_magics.cluster.worker import ModelPlugin, current_spec, load_report

    workers = client.run(current_spec)
    if not workers:
        raise LlamaError("The Dask cluster has no workers; start some (cluster.scale(2)) and rerun.")
    if any(s != spec for s in workers.values()):
        client.register_plugin(ModelPlugin(spec, settings))
    reports = client.run(load_report)
    failed = [line for line in reports.values() if line is not None]
    if failed:
        more = f" (and {len(failed) - 1} more of {len(reports)} workers)" if len(failed) > 1 else ""
        raise LlamaError(failed[0].rstrip(".") + more + ".")


def ship(client: Any, model: str | Path | None = None) -> str:
    """Copy a model directory (default: the kernel's loaded model) to every worker's local disk, now and as workers join.

    Dask's UploadDirectory zips it in memory and the scheduler keeps that copy for workers that start later,
    so this suits models up to a few GB; a bigger model belongs on a shared file system or the Hub.
    Returns the folder name the copy has in each worker's local directory.
    """
    distributed = _distributed()
    from distributed.diagnostics.plugin import UploadDirectory

    from ct2_magics.core.session import get_session

    _client(distributed, client, lazy=False)
    session = get_session()
    engine = session.engine
    if model is None:
        if engine is None:
            raise LlamaError("ship() sends the loaded model, and none is loaded: llama.load(MODEL) first, or pass its directory.")
        folder, name, source = Path(engine.model_dir), engine.name, engine.source
    else:
        folder, name, source = Path(model).expanduser(), str(model), (None, None, None)
        if not folder.is_dir():
            raise LlamaError(f"No such directory: {model}; ship() sends a converted model's directory.")
    copy = _upload_name(worker_name(name)[0], source)
    with tempfile.TemporaryDirectory(prefix="ct2-magics-ship-") as tmp:
        staging = Path(tmp) / copy
        staging.mkdir()
        for f in folder.iterdir():
            if f.is_file():  # the zip follows the links: the files themselves travel
                (staging / f.name).symlink_to(f.resolve())
        client.register_plugin(UploadDirectory(str(staging), skip_words=(), skip=()))
    return copy


def _lazy(session: Context, items: Any, job: Any, client: Any) -> Any:
    import pandas as pd

    from ct2_magics.cluster.worker import answer_series, job_errors, record

    token = job.token
    session.last_errors = job_errors(token)  # filled in as the partitions are computed
    session.last_loops, session.last_cut = [], []  # neither loops nor cut replies are reported from a lazy job's partitions
    if client is not None:
        client.subscribe_topic(token, lambda event: record(token, pickle.loads(event[1]["failures"])))
    meta = pd.Series([], dtype=object, name=items.name)
    return items.map_partitions(answer_series, job, token, meta=meta)
