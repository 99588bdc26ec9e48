"""A JupyterLab server for tests, and helpers that drive it from a Playwright page.

Server side (no browser needed): :class:`LabServer` starts ``python -m jupyter
lab`` on a free loopback port with a random token, an isolated config/data/
runtime dir and everything that would reach the internet switched off (see
:data:`OFFLINE_FLAGS`).

Browser side: the helpers below take a Playwright *sync* ``Page``.  They use
``window.jupyterapp`` (the server runs with ``--LabApp.expose_app_in_browser``)
to execute JupyterLab commands and read the kernel status, and fall back to
the DOM (menus, ``.jp-Notebook-ExecutionIndicator[data-status]``) when the app
object is not exposed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterable

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-dev-shm-usage",
]

# JupyterLab 4.6 settings that keep the server (and the page) from reaching out:
OFFLINE_FLAGS = [
    # no news feed (also tells the page not to ask "get notified about news?")
    "--LabApp.news_url=None",
    # no "a new JupyterLab is available" check against pypi.org
    "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    # the extension manager's default provider ("pypi") queries pypi.org
    "--LabApp.extension_manager=readonly",
    # no listings of allowed/blocked extensions are fetched (empty anyway)
    "--LabServerApp.blocked_extensions_uris=",
    "--LabServerApp.allowed_extensions_uris=",
]

KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


# --------------------------------------------------------------------------- availability


def browser_unavailable_reason() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} is missing (apt-get install -y chromium; tests/run.sh does it)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the machine
        return f"playwright (Python) is not importable: {exc} (pip install -e '.[test]')"
    return None


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def require_browser() -> None:
    """Skip when chromium/playwright is missing -- but fail under CI=true."""
    import pytest

    reason = browser_unavailable_reason()
    if reason is None:
        return
    if in_ci():
        pytest.fail(f"browser tests cannot run under CI=true: {reason}", pytrace=False)
    pytest.skip(f"browser tests skipped: {reason}")


# --------------------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabServer:
    """A running ``jupyter lab`` process.

    Attributes: ``url`` (``http://127.0.0.1:PORT/``, with trailing slash),
    ``token``, ``root`` (the server's root_dir, a Path), ``home`` (the temp dir
    holding config/data/runtime dirs), ``log_path`` (server stdout+stderr).
    """

    def __init__(self, home: Path | None = None, *, extra_args: Iterable[str] = (), startup_timeout: float = 120):
        self._own_home = home is None
        self.home = Path(home or tempfile.mkdtemp(prefix="ct2-lab-"))
        self.root = self.home / "root"
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.token = uuid.uuid4().hex
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = self.home / "jupyterlab.log"
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        self._log_file = None

    # -- environment -------------------------------------------------------
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        cfg = self.home / "config"
        data = self.home / "data"
        (cfg / "lab" / "user-settings").mkdir(parents=True, exist_ok=True)
        (cfg / "lab" / "workspaces").mkdir(parents=True, exist_ok=True)
        data.mkdir(parents=True, exist_ok=True)
        env.update(
            {
                # Private config dir: no user config/settings/workspaces leak in.
                # The ENV paths (sys.prefix/etc/jupyter, sys.prefix/share/jupyter)
                # are still searched, so server extensions, the python3
                # kernelspec and the @jupyter-widgets lab extension are found.
                "JUPYTER_CONFIG_DIR": str(cfg),
                "JUPYTER_DATA_DIR": str(data),
                "JUPYTER_RUNTIME_DIR": str(self.home / "runtime"),
                "JUPYTERLAB_SETTINGS_DIR": str(cfg / "lab" / "user-settings"),
                "JUPYTERLAB_WORKSPACES_DIR": str(cfg / "lab" / "workspaces"),
                "IPYTHONDIR": str(self.home / "ipython"),
                "HF_HUB_OFFLINE": "1",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.pop("JUPYTER_PATH", None)
        env.pop("JUPYTER_PREFER_ENV_PATH", None)
        # Kernels import ct2_magics from this checkout even if it isn't installed.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        # CT2_MAGICS_CACHE (if set) passes through unchanged via os.environ.
        return env

    def _write_user_settings(self) -> None:
        settings = self.home / "config" / "lab" / "user-settings" / "@jupyterlab"
        nb = settings / "notebook-extension"
        nb.mkdir(parents=True, exist_ok=True)
        # Render every cell (no virtual scrolling), so nth-cell locators always exist.
        (nb / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
        ap = settings / "apputils-extension"
        ap.mkdir(parents=True, exist_ok=True)
        (ap / "notification.jupyterlab-settings").write_text(
            json.dumps({"fetchNews": "false", "checkForUpdates": False})
        )

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "jupyter",
            "lab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={self.port}",
            "--ServerApp.port_retries=0",
            "--ServerApp.allow_root=True",  # CI and dev machines run as root
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root}",
            "--LabApp.expose_app_in_browser=True",
            *OFFLINE_FLAGS,
            *self.extra_args,
        ]

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> "LabServer":
        self._write_user_settings()
        self._log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.command(),
            cwd=str(self.root),
            env=self.env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kernels die with it
        )
        deadline = time.monotonic() + self.startup_timeout
        last_err: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"jupyter lab exited with {self.proc.returncode} during startup:\n{self.log_tail()}"
                )
            try:
                status = self.api("GET", "api/status")
                if isinstance(status, dict):
                    return self
            except Exception as exc:  # connection refused while starting
                last_err = exc
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"jupyter lab did not answer within {self.startup_timeout}s ({last_err}):\n{self.log_tail()}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                self.shutdown_kernels()
            except Exception:
                pass
            try:  # graceful: stops kernels and the server
                self.api("POST", "api/shutdown", timeout=10)
            except Exception:
                pass
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
            # Anything it left in its own process group (orphaned kernels).
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def cleanup(self) -> None:
        self.stop()
        if self._own_home:
            shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> "LabServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()

    def log_tail(self, n: int = 80) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    # -- REST --------------------------------------------------------------
    def api(self, method: str, path: str, body: Any = None, *, timeout: float = 30) -> Any:
        """Call the server's REST API (``path`` like ``"api/kernels"``); returns parsed JSON or None."""
        url = urllib.parse.urljoin(self.url, path.lstrip("/"))
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method.upper())
        req.add_header("Authorization", f"token {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode(errors="replace")

    def kernels(self) -> list[dict]:
        return self.api("GET", "api/kernels")

    def sessions(self) -> list[dict]:
        return self.api("GET", "api/sessions")

    def shutdown_kernels(self) -> None:
        """Delete every session and kernel (between tests, to free the 2 cores)."""
        for s in self.sessions() or []:
            try:
                self.api("DELETE", f"api/sessions/{s['id']}")
            except urllib.error.HTTPError:
                pass
        for k in self.kernels() or []:
            try:
                self.api("DELETE", f"api/kernels/{k['id']}")
            except urllib.error.HTTPError:
                pass

    def contents(self, path: str) -> dict:
        return self.api("GET", "api/contents/" + urllib.parse.quote(path))

    # -- files -------------------------------------------------------------
    def write_notebook(self, name: str, cells: Iterable[Any], *, kernel: str | None = "python3") -> Path:
        """Write ``root/name`` (.ipynb) from cells: a str is a code cell's source;
        ``("markdown", src)`` / ``("code", src)`` tuples and nbformat cells work too.
        ``kernel=None`` leaves the kernelspec out (JupyterLab then asks which kernel)."""
        import nbformat
        from nbformat import v4

        nb = v4.new_notebook()
        for c in cells:
            if isinstance(c, str):
                nb.cells.append(v4.new_code_cell(c))
            elif isinstance(c, tuple):
                kind, src = c
                maker = {"code": v4.new_code_cell, "markdown": v4.new_markdown_cell, "raw": v4.new_raw_cell}[kind]
                nb.cells.append(maker(src))
            else:
                nb.cells.append(c)
        if kernel is not None:
            spec = dict(KERNELSPEC) if kernel == "python3" else {"name": kernel, "display_name": kernel, "language": "python"}
            nb.metadata["kernelspec"] = spec
            nb.metadata["language_info"] = {"name": "python"}
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, str(path))
        return path

    # Alias that reads well in tests.
    notebook = write_notebook

    def lab_url(self, path: str = "", *, workspace: str | None = None) -> str:
        """URL of ``/lab[/workspaces/<ws>]/tree/<path>?token=...``."""
        ws = f"workspaces/{workspace}/" if workspace else ""
        tree = f"tree/{urllib.parse.quote(path)}" if path else ""
        return f"{self.url}lab/{ws}{tree}?token={self.token}"


class NotebookServer(LabServer):
    """A running Jupyter Notebook 7 (``jupyter notebook``), set up as :class:`LabServer` sets up JupyterLab:
    the same isolated dirs, offline flags and exposed app, so the page helpers below work in it too."""

    def command(self) -> list[str]:
        lab = super().command()
        flags = [a for a in lab[4:] if not a.startswith("--LabApp.")]
        return [*lab[:3], "notebook", *flags, "--JupyterNotebookApp.expose_app_in_browser=True"]  # no news, no update check

    def notebook_url(self, path: str) -> str:
        """URL of Notebook 7's page for the notebook ``path`` (relative to ``root``)."""
        return f"{self.url}notebooks/{urllib.parse.quote(path)}?token={self.token}"


# --------------------------------------------------------------------------- page helpers

_NB = ".jp-NotebookPanel:not(.lm-mod-hidden)"

_STATUS_JS = """
() => {
  const out = {app: !!window.jupyterapp};
  const app = window.jupyterapp;
  const w = app && app.shell ? app.shell.currentWidget : null;
  if (w && w.sessionContext && w.content && w.content.widgets) {
    const sc = w.sessionContext;
    const k = sc.session ? sc.session.kernel : null;
    out.status = k ? k.status : (sc.hasNoKernel ? 'no-kernel' : 'starting');
    out.connection = k ? k.connectionStatus : null;
    out.ready = !!sc.isReady;
  }
  const panel = document.querySelector('""" + _NB + """');
  const ind = panel && panel.querySelector('.jp-Notebook-ExecutionIndicator');
  out.domStatus = ind ? ind.getAttribute('data-status') : null;
  out.pending = panel ? Array.from(panel.querySelectorAll('.jp-InputPrompt'))
      .filter(e => e.textContent.includes('*')).length : 0;
  out.dialog = Array.from(document.querySelectorAll('.jp-Dialog'))
      .map(d => (d.querySelector('.jp-Dialog-header') || d).textContent.trim());
  return out;
}
"""


def has_app(page) -> bool:
    return bool(page.evaluate("() => !!(window.jupyterapp && window.jupyterapp.commands)"))


def kernel_status(page) -> dict:
    """``{"status", "connection", "domStatus", "pending", "dialog", "app"}`` of the current notebook."""
    return page.evaluate(_STATUS_JS)


def execute_command(page, command: str, args: dict | None = None, *, timeout: float = 120) -> Any:
    """Run a JupyterLab command via ``window.jupyterapp.commands`` and wait for its
    promise (with a timeout). Returns a JSON-able result (objects become True)."""
    key = uuid.uuid4().hex
    page.evaluate(
        """([cmd, args, key]) => {
          window.__labtest = window.__labtest || {};
          window.__labtest[key] = {done: false};
          const simple = v => (v === undefined || v === null || ['boolean','number','string'].includes(typeof v)) ? v : true;
          Promise.resolve().then(() => window.jupyterapp.commands.execute(cmd, args)).then(
            v => { window.__labtest[key] = {done: true, value: simple(v)}; },
            e => { window.__labtest[key] = {done: true, error: String((e && e.message) || e)}; });
        }""",
        [command, args or {}, key],
    )
    page.wait_for_function("k => window.__labtest[k].done", arg=key, timeout=timeout * 1000, polling=100)
    res = page.evaluate("k => { const r = window.__labtest[k]; delete window.__labtest[k]; return r; }", key)
    if "error" in res:
        raise RuntimeError(f"JupyterLab command {command!r} failed: {res['error']}")
    return res.get("value")


def dismiss_kernel_dialog(page) -> bool:
    """Accept JupyterLab's "Select Kernel" dialog if it is open (keeps the proposed kernel)."""
    dialog = page.locator(".jp-Dialog").filter(has_text="Select Kernel")
    if dialog.count() and dialog.first.is_visible():
        dialog.first.locator(".jp-Dialog-button.jp-mod-accept").click()
        return True
    return False


def wait_kernel_idle(page, timeout: float = 90, *, settle: float = 0.3) -> dict:
    """Wait until the current notebook's kernel is idle and connected, no cell shows
    ``[*]``, and that holds for ``settle`` seconds. Raises TimeoutError / RuntimeError
    (dead kernel). Returns the last status dict."""
    deadline = time.monotonic() + timeout
    idle_since: float | None = None
    st: dict = {}
    while True:
        st = kernel_status(page)
        if any("Select Kernel" in d for d in st.get("dialog", [])):
            dismiss_kernel_dialog(page)
        status = st.get("status") if st.get("app") and "status" in st else st.get("domStatus")
        if status in ("dead",):
            raise RuntimeError(f"kernel died: {st}")
        idle = (
            status == "idle"
            and st.get("connection") in (None, "connected")
            and (st.get("domStatus") in (None, "idle"))
            and st.get("pending", 0) == 0
        )
        now = time.monotonic()
        if idle:
            idle_since = idle_since or now
            if now - idle_since >= settle:
                return st
        else:
            idle_since = None
        if now > deadline:
            raise TimeoutError(f"kernel not idle after {timeout}s: {st}")
        page.wait_for_timeout(100)


def notebook(page):
    """Locator of the visible notebook (``.jp-Notebook`` in the active panel)."""
    return page.locator(f"{_NB} .jp-Notebook").first


def cells(page):
    """Locator of all cells (code and markdown) of the visible notebook."""
    return page.locator(f"{_NB} .jp-Notebook .jp-Cell")


def cell(page, index: int):
    return cells(page).nth(index)


def open_notebook(page, lab: LabServer, name: str, *, timeout: float = 120, workspace: str | None = None):
    """Open ``name`` (relative to ``lab.root``) in a fresh JupyterLab workspace and wait
    until its kernel is idle. Returns the notebook locator."""
    # A unique workspace per visit, so tabs from earlier tests are not restored.
    ws = workspace or ("t" + uuid.uuid4().hex[:12])
    page.goto(lab.lab_url(name, workspace=ws), wait_until="domcontentloaded", timeout=timeout * 1000)
    deadline = time.monotonic() + timeout
    # The notebook widget appears once the app has started and opened the file.
    page.locator(f"{_NB} .jp-Notebook").first.wait_for(state="visible", timeout=timeout * 1000)
    if has_app(page):
        page.wait_for_function(
            """() => { const w = window.jupyterapp.shell.currentWidget;
                       return !!(w && w.sessionContext && w.content && w.context && w.context.isReady); }""",
            timeout=max(1, deadline - time.monotonic()) * 1000,
            polling=100,
        )
    wait_kernel_idle(page, timeout=max(1.0, deadline - time.monotonic()))
    return notebook(page)


def _menu_command(page, menu: str, item: str) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=menu).first.click()
    page.locator(".lm-Menu-itemLabel", has_text=item).first.click()


def run_all(page, *, timeout: float = 300) -> bool:
    """Run > Run All Cells; wait for completion and kernel idle.
    Returns True when every cell ran ok (False if one raised; later ones are aborted)."""
    ok = True
    if has_app(page):
        res = execute_command(page, "notebook:run-all-cells", timeout=timeout)
        ok = res is not False
    else:
        _menu_command(page, "Run", "Run All Cells")
    wait_kernel_idle(page, timeout=timeout)
    if not has_app(page):
        ok = not error_outputs(page)
    return ok


def select_cell(page, index: int) -> None:
    """Make cell ``index`` the active (and only selected) cell, in command mode."""
    if has_app(page):
        page.evaluate(
            """i => { const nb = window.jupyterapp.shell.currentWidget.content;
                      nb.mode = 'command'; nb.activeCellIndex = i; nb.deselectAll(); }""",
            index,
        )
    else:
        c = cell(page, index)
        c.locator(".jp-InputPrompt, .jp-Cell-inputCollapser").first.click()
        page.keyboard.press("Escape")


def run_cell(page, index: int, *, timeout: float = 300) -> bool:
    """Run cell ``index`` (0-based, all cell types counted) without advancing; wait
    for kernel idle. Returns True when it ran ok."""
    select_cell(page, index)
    ok = True
    if has_app(page):
        res = execute_command(page, "notebook:run-cell", timeout=timeout)
        ok = res is not False
    else:
        page.keyboard.press("Control+Enter")
    wait_kernel_idle(page, timeout=timeout)
    return ok


def add_cell(page, source: str, *, typing: bool = True) -> int:
    """Append a code cell after the last one with ``source``; returns its index.

    ``typing=True`` puts the text in through the cell's CodeMirror editor as a
    user's paste would (``keyboard.insert_text``: no auto-indent / bracket
    closing mangling); ``typing=False`` sets the model's source directly."""
    n = cells(page).count()
    if n:
        select_cell(page, n - 1)
    if has_app(page):
        execute_command(page, "notebook:insert-cell-below" if n else "notebook:insert-cell-above")
    else:
        page.keyboard.press("b")
    cells(page).nth(n).wait_for(state="attached")
    if typing:
        editor = cells(page).nth(n).locator(".cm-content").first
        editor.click()
        page.keyboard.insert_text(source)
        page.keyboard.press("Escape")
    else:
        page.evaluate(
            """([i, src]) => window.jupyterapp.shell.currentWidget.content.widgets[i].model.sharedModel.setSource(src)""",
            [n, source],
        )
    if has_app(page):
        got = page.evaluate("i => window.jupyterapp.shell.currentWidget.content.widgets[i].model.sharedModel.getSource()", n)
        if got != source:
            raise AssertionError(f"cell {n} source is {got!r}, wanted {source!r}")
    return n


def run_new_cell(page, source: str, *, timeout: float = 300, typing: bool = True) -> int:
    """Append a code cell with ``source``, run it, wait for idle; returns its index."""
    i = add_cell(page, source, typing=typing)
    run_cell(page, i, timeout=timeout)
    return i


def output_area(page, index: int):
    """Locator of cell ``index``'s output items (``.jp-OutputArea-output``)."""
    return cell(page, index).locator(".jp-OutputArea-output")


def cell_output(page, index: int) -> str:
    """Visible text of cell ``index``'s outputs, one output per line."""
    return "\n".join(t.rstrip("\n") for t in output_area(page, index).all_inner_texts())


def error_outputs(page) -> list[str]:
    """Texts of stderr/error outputs anywhere in the visible notebook."""
    loc = page.locator(f'{_NB} .jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
    return loc.all_inner_texts()


def save_notebook(page, *, timeout: float = 60) -> None:
    if has_app(page):
        execute_command(page, "docmanager:save", timeout=timeout)
    else:
        page.keyboard.press("Control+s")


def restart_kernel(page, *, timeout: float = 120) -> None:
    """Kernel > Restart Kernel…, confirmed in its dialog, as a user does (JupyterLab and Notebook 7); waits for idle."""
    page.evaluate("() => { window.jupyterapp.commands.execute('kernelmenu:restart'); }")
    page.locator(".jp-Dialog .jp-Dialog-button.jp-mod-accept").first.click()
    page.wait_for_timeout(500)
    wait_kernel_idle(page, timeout=timeout)


def open_notebook7(page, server: "NotebookServer", name: str, *, timeout: float = 120):
    """Open ``name`` in Notebook 7's own page and wait until its kernel is idle. Returns the notebook locator."""
    page.goto(server.notebook_url(name), wait_until="domcontentloaded", timeout=timeout * 1000)
    page.locator(f"{_NB} .jp-Notebook").first.wait_for(state="visible", timeout=timeout * 1000)
    page.wait_for_function(
        """() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
                   return !!(w && w.sessionContext && w.context && w.context.isReady); }""",
        timeout=timeout * 1000, polling=100)
    wait_kernel_idle(page, timeout=timeout)
    return notebook(page)


# A JavaScript function for page.evaluate snippets: the characters of `elements`' text that have no glyph in this
# browser's fonts (each drawn in its element's font and compared with a character no font has, U+10FFFD).
GLYPHLESS_JS = """const glyphless = (elements) => {
  const canvas = document.createElement('canvas');
  canvas.width = 64; canvas.height = 64;
  const g = canvas.getContext('2d', {willReadFrequently: true});
  const draw = (ch, font) => { g.clearRect(0, 0, 64, 64); g.font = font; g.fillText(ch, 8, 44);
                               return g.getImageData(0, 0, 64, 64).data.join(','); };
  const tofu = [];
  for (const el of elements) {
    const font = getComputedStyle(el).font;
    const nothing = draw(String.fromCodePoint(0x10FFFD), font);
    for (const ch of new Set(Array.from(el.textContent))) {
      if (ch.codePointAt(0) > 0x7e && ch.trim() && draw(ch, font) === nothing) tofu.push(ch);
    }
  }
  return tofu;
};"""
