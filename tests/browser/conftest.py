"""Fixtures for real-browser tests of JupyterLab (Debian chromium + Playwright).

* ``jupyterlab`` (session): a running :class:`~.lab.LabServer` (url, token, root,
  write_notebook(), api(), ...). One server for the whole session.
* ``lab`` (function): the same server; after the test every session/kernel is shut down.
* ``notebook7`` (session) / ``nb7`` (function): the same for Jupyter Notebook 7
  (:class:`~.lab.NotebookServer`), started only by the tests that use it.
* ``browser`` (session): Playwright's chromium, launched from /usr/bin/chromium.
* ``page`` (function): a fresh context + page; on failure a screenshot and the
  console log go to ``test-artifacts/<test name>.png`` / ``.log`` at the repo root.

Missing chromium or playwright: the tests are skipped, except with ``CI=true``
where they fail.
"""

from __future__ import annotations

import re

import pytest

from .lab import CHROMIUM, CHROMIUM_ARGS, REPO_ROOT, LabServer, NotebookServer, require_browser

ARTIFACTS = REPO_ROOT / "test-artifacts"


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def _failed(request) -> bool:
    node = request.node
    return any(getattr(getattr(node, "rep_" + w, None), "failed", False) for w in ("setup", "call"))


def _artifact_stem(request) -> str:
    return re.sub(r"[^\w.\-]+", "_", request.node.name).strip("_")[:150] or "test"


@pytest.fixture(scope="session")
def jupyterlab(tmp_path_factory):
    server = LabServer(tmp_path_factory.mktemp("jupyterlab"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def notebook7(tmp_path_factory):
    """A running Jupyter Notebook 7 server (``jupyter notebook``), for the tests that need that host."""
    server = NotebookServer(tmp_path_factory.mktemp("notebook7"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nb7(notebook7, request):
    """The Notebook 7 server; after the test every session/kernel is shut down."""
    yield notebook7
    if _failed(request):
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / f"{_artifact_stem(request)}.server.log").write_text(notebook7.log_tail(400))
    try:
        notebook7.shutdown_kernels()
    except Exception:
        pass


@pytest.fixture
def lab(jupyterlab, request):
    yield jupyterlab
    if _failed(request):
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / f"{_artifact_stem(request)}.server.log").write_text(jupyterlab.log_tail(400))
    try:
        jupyterlab.shutdown_kernels()
    except Exception:
        pass


@pytest.fixture(scope="session")
def playwright_instance():
    require_browser()
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    try:
        yield pw
    finally:
        pw.stop()


@pytest.fixture(scope="session")
def browser(playwright_instance):
    b = playwright_instance.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def page(browser, request):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    log: list[str] = []
    pg.on("console", lambda m: log.append(f"[{m.type}] {m.text}"))
    pg.on("pageerror", lambda e: log.append(f"[pageerror] {e}"))
    pg.on("requestfailed", lambda r: log.append(f"[requestfailed] {r.method} {r.url} {r.failure}"))
    pg.console_log = log  # tests may inspect it
    try:
        yield pg
    finally:
        if _failed(request):
            ARTIFACTS.mkdir(exist_ok=True)
            stem = _artifact_stem(request)
            try:
                pg.screenshot(path=str(ARTIFACTS / f"{stem}.png"), full_page=True, timeout=15_000)
            except Exception as exc:  # page may be gone
                log.append(f"[harness] screenshot failed: {exc}")
            (ARTIFACTS / f"{stem}.log").write_text("\n".join(log) + "\n")
        context.close()
