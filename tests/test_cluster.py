"""llama.map on a real Dask LocalCluster (2 worker processes): same results as local, faults, bad input."""

from __future__ import annotations

import _thread
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ct2_magics.errors import LlamaError
from test_batch import WORDS, continuation_model  # noqa: F401 (a fixture)
from test_endings import mixed_prompts, router_model  # noqa: F401 (a fixture)

distributed = pytest.importorskip("distributed")
dd = pytest.importorskip("dask.dataframe")
pd = pytest.importorskip("pandas")

ROOT = Path(__file__).resolve().parents[1]
GREEDY = {"temperature": 0, "max_tokens": 8}


@pytest.fixture(scope="module")
def client(_cache_dir):
    """Two worker processes with one thread each; they inherit this process's environment and sys.path."""
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = distributed.Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


@pytest.fixture
def llama(llama):
    llama.settings.batch_size = 4
    return llama


def prompts(n: int) -> list[str]:
    return [f"Once upon a time the {w}" if i % 3 else f"{w} {WORDS[(i * 7) % len(WORDS)]}"
            for i, w in enumerate((WORDS * (n // len(WORDS) + 1))[:n])]


def scheduler_keys(client) -> list[str]:
    return client.run_on_scheduler(lambda dask_scheduler: [str(k) for k in dask_scheduler.tasks if "ct2-magics" in str(k)])


def test_cluster_map_equals_local_map_in_input_order(llama, client, continuation_model, capsys):
    llama.load(str(continuation_model))
    items = prompts(40)
    local = llama.map(items, "{}", **GREEDY)
    assert len(set(local)) > 10  # replies differ by prompt, so a shuffled result would show
    out = llama.map(items, "{}", cluster=client, partition_size=5, **GREEDY)
    assert out == local and llama.last_errors == []
    assert "5/5" in capsys.readouterr().err  # the bar counts partitions: 5 items rounded up to 2 batches of 4
    workers = client.run(lambda: __import__("ct2_magics").llama.status()["model"])
    assert set(workers.values()) == {str(continuation_model)}  # each worker loaded the kernel's model itself
    series = pd.Series(items, index=[f"row{i}" for i in range(40)][::-1], name="text")
    got = llama.map(series, "{}", cluster=client, partition_size=8, progress=False, **GREEDY)
    assert isinstance(got, pd.Series) and got.name == "text" and list(got.index) == list(series.index)
    assert got.tolist() == local


def test_workers_keep_the_model_between_calls(llama, client, continuation_model):
    llama.load(str(continuation_model))
    llama.map(["warm"], "{}", cluster=client, **GREEDY)
    pids = client.run(os.getpid)
    loaded = client.run(lambda: id(__import__("ct2_magics").llama.generator))
    llama.map(prompts(12), "Say: {}", cluster=client, **GREEDY)
    assert client.run(os.getpid) == pids
    assert client.run(lambda: id(__import__("ct2_magics").llama.generator)) == loaded  # not loaded again


def test_dask_series_keeps_index_and_divisions(llama, client, continuation_model):
    llama.load(str(continuation_model))
    frame = pd.DataFrame({"text": prompts(30)}, index=[f"id{i:02d}" for i in range(30)])
    frame.loc["id07", "text"] = None
    frame.loc["id21", "text"] = ""
    ddf = dd.from_pandas(frame, npartitions=4)
    lazy = llama.map(ddf["text"], "{}", **GREEDY)
    assert isinstance(lazy, dd.Series) and lazy.npartitions == 4 and lazy.divisions == ddf.divisions
    computed = lazy.compute()
    assert computed.index.equals(frame.index) and computed.name == "text"
    # Each partition is batched on its own: equal to local llama.map partition by partition.
    parts = [ddf["text"].get_partition(i).compute() for i in range(4)]
    assert computed.tolist() == pd.concat([llama.map(p, "{}", **GREEDY) for p in parts]).tolist()
    assert lazy.compute(scheduler="sync").tolist() == computed.tolist()  # no cluster: the kernel's model answers
    ddf["summary"] = llama.map(ddf["text"], "{}", **GREEDY)
    result = ddf.compute()
    assert result["summary"].isna().sum() == 2
    assert [(e.label, e.reason) for e in llama.last_errors] == [("id07", "missing value"), ("id21", "empty text")]
    assert {e.partition for e in llama.last_errors} == {0, 2} and llama.last_errors[0].position == 7


def test_bad_items_are_none_with_the_same_reasons(llama, client, continuation_model, capsys):
    llama.load(str(continuation_model))
    llama.settings.max_context = 64  # the workers fit prompts to the kernel's settings too
    items = pd.Series(["short", "word " * 200, None, float("nan"), 7, "", {"a": 1}, "also short", "bad \ud800"] * 2,
                      index=[f"{c}{n}" for n in (1, 2) for c in "abcdefghi"])
    local = llama.map(items, "Say: {}", **GREEDY)
    local_errors = [(e.position, e.label, e.reason) for e in llama.last_errors]
    capsys.readouterr()
    out = llama.map(items, "Say: {}", cluster=client, partition_size=4, **GREEDY)
    assert out.tolist() == local.tolist() and out.isna().sum() == 12
    assert [(e.position, e.label, e.reason) for e in llama.last_errors] == local_errors
    assert any(r.startswith("prompt is ") for _, _, r in local_errors)
    lines = capsys.readouterr().err.strip().splitlines()
    warning = next(line for line in lines if "failed" in line)  # rows cut at max_tokens have a line of their own
    assert warning.startswith("llama.map: 12 of 18 items failed") and "last_errors" in warning
    with pytest.raises(LlamaError, match="nothing was generated"):
        llama.map(["ok", None], cluster=client, errors="raise", max_tokens=4)
    with pytest.raises(LlamaError, match=r"item 1: prompt is \d+ tokens.*the job was stopped"):
        llama.map(["ok", "word " * 200], cluster=client, errors="raise", max_tokens=4)


def test_rows_stopped_in_a_loop_on_the_workers_are_reported_as_locally(llama, client, router_model, capsys):
    llama.load(str(router_model))
    items, looping = mixed_prompts(12)
    local = llama.map(items, "{}", temperature=0, max_tokens=300)
    local_loops = [(e.position, e.reason) for e in llama.last_loops]
    assert [p for p, _ in local_loops] == looping
    capsys.readouterr()
    out = llama.map(items, "{}", cluster=client, partition_size=4, progress=False, temperature=0, max_tokens=300)
    assert out == local and [(e.position, e.reason) for e in llama.last_loops] == local_loops
    assert capsys.readouterr().err.startswith("llama.map: 4 of 12 items fell into a loop and were stopped")
    llama.map(items[:2], "{}", temperature=0, max_tokens=300)
    lazy = llama.map(dd.from_pandas(pd.Series(items), npartitions=2), "{}", temperature=0, max_tokens=300)
    assert llama.last_loops == [] and lazy.compute().tolist() == local  # a lazy job stops them, reports none
    cut_here = llama.map(items, "{}", temperature=0, max_tokens=3)
    local_cut = [(e.position, e.reason) for e in llama.last_cut]
    assert len(local_cut) == len(items)  # three tokens: every reply is cut
    assert llama.map(items, "{}", cluster=client, partition_size=4, progress=False, temperature=0, max_tokens=3) == cut_here
    assert [(e.position, e.reason) for e in llama.last_cut] == local_cut  # the workers' cut rows, as locally


def test_wrong_arguments_are_one_line(llama, client):
    llama.load("demo")
    with pytest.raises(LlamaError, match="takes a Client, not the cluster itself"):
        llama.map(["a"], cluster=client.cluster)
    with pytest.raises(LlamaError, match="takes a dask.distributed Client; got str"):
        llama.map(["a"], cluster="tcp://127.0.0.1:8786")
    with pytest.raises(LlamaError, match="Unknown setting"):
        llama.map(["a"], cluster=client, temprature=0)
    with pytest.raises(LlamaError, match="double literal braces"):
        llama.map(["a"], '{"label": 1} {}', cluster=client)
    with pytest.raises(LlamaError, match="partition_size"):
        llama.map(["a"], cluster=client, partition_size=0)
    with pytest.raises(LlamaError, match="not a whole DataFrame"):
        llama.map(dd.from_pandas(pd.DataFrame({"a": ["x"]}), npartitions=1), "{}")
    assert llama.map([], cluster=client) == []


def test_a_path_missing_on_the_workers_is_one_line(llama, client, demo_model, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(demo_model, model)
    llama.load(str(model))
    model.rename(tmp_path / "elsewhere")  # the kernel holds the model in memory; the workers find no such path
    with pytest.raises(LlamaError) as caught:
        llama.map(["a", "b"], cluster=client, **GREEDY)
    line = str(caught.value)
    assert "\n" not in line and line.startswith("worker tcp://127.0.0.1:")
    assert f"cannot load {model}: there is no {model} on this worker" in line
    assert "file system every worker sees" in line and "ship(client)" in line and "(and 1 more of 2 workers)" in line
    assert llama.map(["a"], **GREEDY)[0]  # the kernel's model is untouched


def test_a_hub_id_the_workers_cannot_download_is_one_line(llama, client):
    llama.settings.model = "someone/not-in-any-cache"  # no model here: the workers fetch it themselves
    with pytest.raises(LlamaError, match=r"^worker tcp://\S+ \(name \d\) cannot load someone/not-in-any-cache: Cannot download "
                                         r"someone/not-in-any-cache: the Hub is unreachable"):
        llama.map(["a"], cluster=client, **GREEDY)
    assert llama.engine is None  # the kernel did not load it either


def test_ship_copies_the_model_to_each_worker(llama, client, demo_model, tmp_path):
    from ct2_magics.cluster import ship

    model = tmp_path / "shipped"
    shutil.copytree(demo_model, model)
    llama.load(str(model))
    folder = ship(client)
    model.rename(tmp_path / "hidden")  # from now on only the copies can serve the workers
    items = prompts(10)
    assert llama.map(items, "{}", cluster=client, **GREEDY) == llama.map(items, "{}", **GREEDY)
    paths = client.run(lambda dask_worker: (__import__("ct2_magics").llama.status()["path"], dask_worker.local_directory))
    assert all(path == str(Path(local).parent / folder) for path, local in paths.values())  # the nanny's directory


def test_without_dask_cluster_says_what_to_install_and_import_never_loads_dask(demo_model):
    code = (
        "import sys\n"
        "import ct2_magics\n"
        "from ct2_magics import llama\n"
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "InteractiveShell.instance().run_line_magic('load_ext', 'ct2_magics')\n"
        "llama.load('demo'); llama.map(['a', 'b'], max_tokens=2, progress=False)\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')], 'dask imported'\n"
        "sys.modules['distributed'] = None  # as if Dask were not installed\n"
        "from ct2_magics.errors import LlamaError\n"
        "try:\n    llama.map(['a'], cluster=object())\nexcept LlamaError as e:\n    print(e)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == 'llama.map on a cluster needs Dask: pip install "ct2-magics[dask]" (dask[distributed]).'


def _when_processing(client, then) -> threading.Thread:
    """Call then(worker address) from a thread once a worker is running a partition of ours."""
    def watch() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            busy = [w for w, keys in client.processing().items() if any("ct2-magics-map" in str(k) for k in keys)]
            if busy:
                then(busy[0])
                return
            time.sleep(0.01)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_an_interrupt_cancels_the_futures(llama, client, continuation_model):
    llama.load(str(continuation_model))
    items = prompts(160)
    llama.map(items[:2], "{}", cluster=client, **GREEDY)  # the workers hold the model before the clock starts
    old = signal.signal(signal.SIGINT, signal.default_int_handler)  # a background shell may ignore SIGINT
    fired = threading.Event()
    try:
        watcher = _when_processing(client, lambda _: (fired.set(), _thread.interrupt_main()))
        returned = False
        with pytest.raises(KeyboardInterrupt):
            llama.map(items, "{}", cluster=client, partition_size=4, **GREEDY)
            returned = True
            time.sleep(5)  # the interrupt lands here if the job ended first
        watcher.join(5)
    finally:
        signal.signal(signal.SIGINT, old)
    assert fired.is_set() and not returned, "the interrupt came after the job"
    deadline = time.monotonic() + 30
    while scheduler_keys(client) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert scheduler_keys(client) == []  # cancelled: nothing of the job is left queued or running
    assert llama.map(items[:6], "{}", cluster=client, **GREEDY) == llama.map(items[:6], "{}", **GREEDY)


def test_a_worker_killed_mid_job_is_replaced_and_the_job_completes(llama, client, continuation_model):
    """Last in the module: it leaves one freshly started worker behind."""
    llama.load(str(continuation_model))
    items = prompts(120)
    local = llama.map(items, "{}", **GREEDY)
    llama.map(items[:2], "{}", cluster=client, **GREEDY)
    pids = client.run(os.getpid)
    killed: list[int] = []

    def kill(address: str) -> None:
        killed.append(pids[address])
        os.kill(pids[address], signal.SIGKILL)

    watcher = _when_processing(client, kill)
    out = llama.map(items, "{}", cluster=client, partition_size=8, **GREEDY)
    watcher.join(5)
    assert killed, "no worker was killed while it ran the job"
    assert out == local and llama.last_errors == []
    client.wait_for_workers(2, timeout=120)
    assert killed[0] not in client.run(os.getpid).values()  # the nanny started a new worker process
    assert llama.map(items[:8], "{}", cluster=client, **GREEDY) == local[:8]  # which loaded the model itself
