"""The chat panel (one AnyWidget) in its hosts: JupyterLab inline and in the side area, and Jupyter Notebook 7.

Send, streaming, Stop, Retry, Undo, New chat and its undo, code blocks' Copy and Insert, a page reload, a
kernel restart (the panel says what happened and what to do) and the plain-text fallback a saved notebook keeps.
"""

from __future__ import annotations

import json

import pytest

from .lab import (
    add_cell,
    cell,
    cell_output,
    cells,
    open_notebook,
    open_notebook7,
    restart_kernel,
    run_all,
    run_new_cell,
    save_notebook,
    select_cell,
    wait_kernel_idle,
)

CODE_REPLY = "Here is a function:\n\n```python\ndef add(a, b):\n    return a + b\n```\n\nIt adds **two** numbers."
CODE = "def add(a, b):\n    return a + b"
BUTTONS = ("Send", "Stop", "Retry", "Undo", "New chat", "Undo new chat")

# Records the last assistant message's text length every 10 ms (each change once), to see a reply grow.
SAMPLE = """(panel) => {
  const seen = [];
  panel.__ct2Timer = setInterval(() => {
    const boxes = panel.querySelectorAll('.ct2-assistant');
    const n = boxes.length ? boxes[boxes.length - 1].innerText.length : -1;
    if (seen[seen.length - 1] !== n) seen.push(n);
  }, 10);
  panel.__ct2Seen = seen;
}"""
GROWTH = "(panel) => { clearInterval(panel.__ct2Timer); return panel.__ct2Seen; }"


def controls(panel) -> dict:
    return {name: panel.get_by_role("button", name=name, exact=True) for name in BUTTONS}


def ask(panel, text: str, *, answers: int, timeout: float = 60_000) -> None:
    """Type `text`, press Send, wait until the panel shows `answers` replies and is idle again."""
    from playwright.sync_api import expect

    b = controls(panel)
    panel.get_by_placeholder("Message…").fill(text)
    b["Send"].click()
    expect(panel.locator(".ct2-assistant")).to_have_count(answers, timeout=timeout)
    expect(b["Stop"]).to_be_disabled(timeout=timeout)
    expect(b["Send"]).to_be_enabled()


def set_option(panel, label: str, value: str) -> None:
    settings = panel.locator("details.ct2-settings")
    if settings.get_attribute("open") is None:
        settings.locator("summary").click()
    field = panel.get_by_label(label, exact=True)
    field.fill(value)
    field.press("Tab")  # the field's change event saves it


def stream_and_stop(page, panel, answers: int) -> None:
    """With a model that never stops: Ctrl+Enter sends, the reply grows on screen, Stop ends it marked stopped."""
    from playwright.sync_api import expect

    b = controls(panel)
    set_option(panel, "max tokens", "3000")
    panel.evaluate(SAMPLE)
    box = panel.get_by_placeholder("Message…")
    box.click()
    page.keyboard.type("Write forever.")
    page.keyboard.press("Control+Enter")
    expect(b["Stop"]).to_be_enabled(timeout=30_000)
    expect(box).to_have_value("")
    page.wait_for_function("([p, n]) => p.querySelectorAll('.ct2-assistant').length === n && "
                           "p.querySelectorAll('.ct2-assistant')[n - 1].innerText.length > 200",
                           arg=[panel.element_handle(), answers], timeout=30_000)
    b["Stop"].click()
    expect(b["Send"]).to_be_enabled(timeout=10_000)
    expect(panel.locator(".ct2-assistant").nth(answers - 1)).to_contain_text("stopped")
    expect(panel.locator(".ct2-status")).to_contain_text("stopped")
    lengths = [n for n in panel.evaluate(GROWTH) if n > 0]
    assert sum(1 for a, b_ in zip(lengths, lengths[1:]) if b_ > a) >= 3, f"the reply did not grow on screen: {lengths}"


def retry_undo_new_chat(panel) -> None:
    """Two exchanges; Retry keeps two; Undo drops one; New chat clears; Undo new chat brings them back."""
    from playwright.sync_api import expect

    b = controls(panel)
    user = panel.locator(".ct2-user")
    n = user.count()
    ask(panel, "first", answers=n + 1)
    ask(panel, "second", answers=n + 2)
    b["Retry"].click()
    expect(b["Send"]).to_be_enabled(timeout=30_000)
    expect(user).to_have_count(n + 2)
    expect(user.last).to_contain_text("second")
    b["Undo"].click()
    expect(user).to_have_count(n + 1)
    expect(b["Undo new chat"]).to_be_hidden()
    b["New chat"].click()
    expect(panel.locator(".ct2-msg")).to_have_count(0)
    expect(panel.locator(".ct2-status")).to_contain_text("Undo new chat brings")
    for name in ("Retry", "Undo", "New chat"):
        expect(b[name]).to_be_disabled()
    b["Undo new chat"].click()
    expect(user).to_have_count(n + 1)
    expect(user.last).to_contain_text("first")
    expect(b["Undo new chat"]).to_be_hidden()


def expect_disconnected(panel) -> None:
    from playwright.sync_api import expect

    banner = panel.locator(".ct2-banner")
    expect(banner).to_be_visible(timeout=30_000)
    expect(banner).to_contain_text("kernel restarted")
    expect(banner).to_contain_text("Run the cell that opened it again")
    expect(panel.locator(".ct2-status")).to_have_class("ct2-status ct2-error")
    for name in ("Send", "Retry", "Undo", "New chat"):
        expect(controls(panel)[name]).to_be_disabled()
    expect(panel.get_by_placeholder("Message…")).to_be_disabled()


@pytest.mark.browser
def test_lab_panel_code_actions_edits_reload_and_restart(page, lab, script_model):
    from playwright.sync_api import expect

    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    lab.write_notebook("actions.ipynb", [f"%load_ext ct2_magics\n%llama load {script_model(CODE_REPLY)}", "%llama chat",
                                         "x = 1"])
    open_notebook(page, lab, "actions.ipynb")
    assert run_all(page) is True
    panel = cell(page, 1).locator(".ct2-panel")
    note = cell(page, 1).locator(".ct2-panel-note")
    expect(panel).to_be_visible(timeout=30_000)
    expect(note).to_be_hidden()  # it explains a missing panel: none to explain while the panel is here

    # The settings' fields show their whole placeholder (it was cut to "model defau").
    panel.locator("details.ct2-settings summary").click()
    cut = panel.locator(".ct2-field").evaluate_all("""fields => fields.filter(f => {
        const s = getComputedStyle(f), c = document.createElement('canvas').getContext('2d');
        c.font = s.font;
        return c.measureText(f.placeholder).width > f.clientWidth - parseFloat(s.paddingLeft) - parseFloat(s.paddingRight);
      }).map(f => f.name)""")
    assert cut == [], f"placeholders cut short: {cut}"
    panel.locator("details.ct2-settings summary").click()

    # A reply with a code block: Copy puts the code on the clipboard, Insert adds it as a cell below (not run).
    ask(panel, "Show me code", answers=1)
    box = panel.locator(".ct2-codebox")
    expect(box).to_have_count(1)
    box.get_by_role("button", name="Copy", exact=True).click()
    expect(panel.locator(".ct2-status")).to_have_text("Copied the code.")
    assert page.evaluate("() => navigator.clipboard.readText()") == CODE
    box.get_by_role("button", name="Insert as a cell below", exact=True).click()
    expect(cells(page)).to_have_count(4)
    sources = page.evaluate("() => window.jupyterapp.shell.currentWidget.content.model.sharedModel.cells"
                            ".map(c => [c.getSource(), c.execution_count === undefined ? null : c.execution_count])")
    assert sources[2] == [CODE, None] and sources[3][0] == "x = 1", sources
    expect(panel.locator(".ct2-status")).to_contain_text("Inserted the code as cell 3; it has not run.")

    retry_undo_new_chat(panel)  # one exchange from before: Undo new chat brings it back too
    expect(panel.locator(".ct2-user")).to_have_count(2)

    # A page reload with the kernel still running: the panel comes back with its chat.
    save_notebook(page)
    page.reload(wait_until="domcontentloaded")
    page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook").first.wait_for(state="visible")
    wait_kernel_idle(page)
    expect(panel.locator(".ct2-user")).to_have_count(2, timeout=30_000)
    expect(note).to_be_hidden()
    ask(panel, "after the reload", answers=3)

    # A kernel restart: the panel says what happened and what to do, instead of ignoring Send.
    restart_kernel(page)
    expect_disconnected(panel)
    expect(panel.locator(".ct2-user")).to_have_count(3)  # what it showed stays readable

    # Saved and reloaded with no panel left in the kernel: JupyterLab's "model not found", then our line on it.
    save_notebook(page)
    page.reload(wait_until="domcontentloaded")
    page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook").first.wait_for(state="visible")
    wait_kernel_idle(page)
    expect(cell(page, 1).locator(".jp-OutputArea")).to_contain_text("model not found", timeout=30_000)
    expect(note).to_be_visible()
    expect(note).to_contain_text("the kernel that made it has restarted or stopped: run this cell again")
    saved = json.loads((lab.root / "actions.ipynb").read_text())["cells"][1]["outputs"][0]["data"]["text/plain"]
    saved = "".join(saved) if isinstance(saved, list) else saved
    assert saved.startswith("[ct2-magics chat panel, chat 'default'") and "object at 0x" not in saved, saved

    # Doing what it says brings the chat back (from its saved copy).
    assert run_all(page) is True
    expect(panel.locator(".ct2-user")).to_have_count(3, timeout=30_000)
    expect(panel.locator(".ct2-banner")).to_be_hidden()
    assert not [line for line in page.console_log if line.startswith("[pageerror]")]


@pytest.mark.browser
def test_side_panel_in_lab(page, lab, long_model, script_model):
    from playwright.sync_api import expect

    lab.write_notebook("side.ipynb", [f"%load_ext ct2_magics\n%llama load {long_model}", "%llama chat --side", "print(1)"])
    open_notebook(page, lab, "side.ipynb")
    assert run_all(page) is True
    side = page.locator(".jupyterlab-sidecar .ct2-panel")
    expect(side).to_be_visible(timeout=30_000)
    expect(cell(page, 1).locator(".ct2-side-line")).to_contain_text("is open in the side area", timeout=30_000)
    expect(cell(page, 1).locator(".ct2-panel")).to_have_count(0)
    assert side.bounding_box()["x"] > cell(page, 2).bounding_box()["x"] + 300  # beside the notebook, on the right

    runs_before = cell(page, 2).locator(".jp-InputPrompt").inner_text()
    stream_and_stop(page, side, answers=1)
    assert cell(page, 2).locator(".jp-InputPrompt").inner_text() == runs_before  # Ctrl+Enter did not run a cell
    run_new_cell(page, "%%llama -n 5\nasked from a cell")  # the same chat as the magic
    expect(side.locator(".ct2-user")).to_have_count(2)
    expect(side.locator(".ct2-user").nth(1)).to_contain_text("asked from a cell")

    # Insert goes below the notebook's active cell.
    run_new_cell(page, f"%llama load {script_model(CODE_REPLY)}")
    set_option(side, "max tokens", "")
    ask(side, "Show me code", answers=3)
    select_cell(page, 2)
    side.locator(".ct2-assistant").last.get_by_role("button", name="Insert as a cell below", exact=True).click()
    page.wait_for_function("() => window.jupyterapp.shell.currentWidget.content.model.sharedModel.cells[3]"
                           ".getSource().startsWith('def add')", timeout=10_000)

    # While a cell keeps the kernel busy, the panel still answers, and Stop still stops: JupyterLab sends widget
    # messages on a kernel subshell (ipykernel 7), so they need not wait for the cell.
    i = add_cell(page, "import time\ntime.sleep(20)", typing=False)
    select_cell(page, i)
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-cell'); }")
    prompt = cell(page, i).locator(".jp-InputPrompt")
    expect(prompt).to_contain_text("*")
    page.wait_for_timeout(1000)
    ask(side, "while a cell runs", answers=4, timeout=15_000)
    assert "*" in prompt.inner_text() and cell_output(page, i) == ""  # the cell is still running
    wait_kernel_idle(page, timeout=60)

    restart_kernel(page)
    expect_disconnected(side)
    assert not [line for line in page.console_log if line.startswith("[pageerror]")]


@pytest.mark.browser
def test_panel_in_notebook7(page, nb7, long_model):
    from playwright.sync_api import expect

    nb7.write_notebook("nb7.ipynb", [f"%load_ext ct2_magics\n%llama load {long_model}", "%llama chat",
                                     "%llama chat --side --chat other"])
    open_notebook7(page, nb7, "nb7.ipynb")
    assert run_all(page) is True
    panel = cell(page, 1).locator(".ct2-panel")
    expect(panel).to_be_visible(timeout=30_000)
    expect(panel.locator(".ct2-status")).to_contain_text("Ctrl+Enter sends")
    expect(cell(page, 1).locator(".ct2-panel-note")).to_be_hidden()  # the line on a missing panel: none missing

    set_option(panel, "max tokens", "8")
    retry_undo_new_chat(panel)
    stream_and_stop(page, panel, answers=2)

    # Notebook 7 has no side area for the sidecar: --side shows the panel in its cell, and says why.
    expect(cell(page, 2).locator(".ct2-side-line")).to_contain_text("did not open here (it is JupyterLab's)")
    expect(cell(page, 2).locator(".ct2-panel")).to_be_visible()
    expect(cell(page, 2).locator(".ct2-panel-note")).to_be_hidden()

    restart_kernel(page)
    expect_disconnected(panel)
    assert "Error displaying widget" not in cell_output(page, 1)
