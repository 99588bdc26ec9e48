"""A fresh kernel, no model loaded, and a Hub that cannot be reached: the first %%llama cell falls back to smollm2 with
one notice line, at once. Here HF_HUB_OFFLINE is unset and the real huggingface_hub talks to a local address that
refuses or drops every connection (HF_ENDPOINT), so nothing of ours is faked and no real network is tried.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from ct2_magics.core.settings import REFERENCE_MODEL

ROOT = Path(__file__).resolve().parents[1]


class DroppingHub:
    """A local port that reads each request's first line and closes the connection unanswered; it keeps the paths."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.paths: list[str] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while not self._done.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                try:
                    line = conn.recv(4096).split(b"\r\n", 1)[0].decode("latin-1")
                except OSError:
                    line = ""
                self.paths.append(line.split(" ")[1] if line.count(" ") >= 2 else line)

    def close(self) -> None:
        self._done.set()
        self._thread.join()
        self.sock.close()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # released: nothing listens there


def kernel_env(tmp_path: Path, endpoint: str) -> dict[str, str]:
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf"), "CT2_MAGICS_DATA": str(tmp_path / "data"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "CT2_MAGICS_MODEL"):
        env.pop(name, None)  # the reference model, an empty Hugging Face cache, and the Hub asked for real
    return env


def run_cells(env: dict[str, str], cells: list[str]) -> dict[str, Any]:
    """Run the cells in a fresh kernel; what the last one wrote on stdout and stderr, and whether it displayed HTML."""
    from jupyter_client import KernelManager

    km = KernelManager(kernel_name="python3")
    km.start_kernel(env=env)
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        for code in cells:
            out: dict[str, Any] = {"stdout": "", "stderr": "", "html": False}

            def hook(msg: dict, out: dict = out) -> None:
                kind, content = msg["msg_type"], msg["content"]
                if kind == "stream":
                    out[content["name"]] += content["text"]
                elif kind in ("display_data", "update_display_data", "execute_result"):
                    out["html"] = out["html"] or "text/html" in content["data"]
                elif kind == "error":
                    out["stderr"] += f"{content['ename']}: {content['evalue']}\n"

            reply = kc.execute_interactive(code, timeout=180, output_hook=hook)
            out["status"] = reply["content"]["status"]
        return out
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


@pytest.mark.parametrize("hub", ["refuses", "drops"])
def test_first_cell_without_a_model_falls_back_at_once_when_the_hub_is_unreachable(tmp_path, smollm2_int8, hub):
    dropping = DroppingHub() if hub == "drops" else None
    try:
        env = kernel_env(tmp_path, dropping.url if dropping else closed_port_url())
        out = run_cells(env, ["%load_ext ct2_magics", "%%llama --once -t 0 -n 5\nWhat is 2 + 2?"])
    finally:
        if dropping is not None:
            dropping.close()
    assert out["status"] == "ok" and out["html"], out  # smollm2 answered, as sanitised HTML
    assert out["stderr"] == ""  # no retry warnings, no tracebacks
    lines = out["stdout"].splitlines()
    assert len(lines) == 1 and "neither cached nor reachable: using smollm2" in lines[0], lines
    if dropping is not None:  # found out once: one request about the model, no retries
        assert [p for p in dropping.paths if p.startswith("/api/models/")] == [f"/api/models/{REFERENCE_MODEL}?expand=sha"]
        # huggingface_hub's own first request of a process (its registry of coding agents, for its user agent), if any
        assert [p for p in dropping.paths if not p.startswith("/api/models/")] in ([], ["/api/agent-harnesses"])


def test_library_warnings_stay_out_of_a_cell_even_on_huggingface_hubs_first_use():
    """huggingface_hub resets its log level when a lazy import first loads its logging module: inside our quiet block too."""
    code = ("import logging, huggingface_hub\n"
            "from ct2_magics.models.quiet import quiet_libraries\n"
            "with quiet_libraries():\n"
            "    huggingface_hub.list_repo_files  # its lazy import, as hub.repo_files makes it\n"
            "    logging.getLogger('huggingface_hub.utils._http').warning('Retrying in 1s [Retry 1/5].')\n"
            "logging.getLogger('huggingface_hub.utils._http').warning('after the block')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and done.stderr.strip() == "after the block", done.stderr
