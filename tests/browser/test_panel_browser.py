"""The chat panel in a real JupyterLab: send, streaming markdown, Stop, the shortcut, sharing with %%llama."""

from __future__ import annotations

import os
import time

import pytest

from .lab import cell, cell_output, cells, open_notebook, run_all, run_new_cell, wait_kernel_idle

# Samples the last assistant message's rendered text length every 10 ms, keyed by how many messages there are.
SAMPLER = """() => {
  window.__ct2Lengths = [];
  const panel = document.querySelector('.ct2-panel');
  window.__ct2Sampler = setInterval(() => {
    const boxes = panel.querySelectorAll('.ct2-assistant');
    const md = boxes.length ? boxes[boxes.length - 1].querySelector('.jp-RenderedHTMLCommon') : null;
    const sample = [boxes.length, md ? md.innerText.length : -1];
    const seen = window.__ct2Lengths;
    const last = seen[seen.length - 1];
    if (!last || last[0] !== sample[0] || last[1] !== sample[1]) seen.push(sample);
  }, 10);
}"""


@pytest.mark.browser
def test_chat_panel_streams_stops_and_shares_the_chat(page, lab, demo_model, long_model):
    from playwright.sync_api import expect

    lab.write_notebook("chat.ipynb", ["%load_ext ct2_magics\n%llama load demo", "%llama chat"])
    open_notebook(page, lab, "chat.ipynb")
    assert run_all(page) is True
    panel = cell(page, 1).locator(".ct2-panel")
    textarea = panel.get_by_placeholder("Message…")
    send = panel.get_by_role("button", name="Send", exact=True)
    stop = panel.get_by_role("button", name="Stop", exact=True)
    status = panel.locator(".ct2-status")
    assistant = panel.locator(".ct2-assistant")
    expect(status).to_contain_text("demo", timeout=30_000)
    expect(stop).to_be_disabled()
    for name in ("Retry", "Undo", "New chat"):
        expect(panel.get_by_role("button", name=name, exact=True)).to_be_visible()

    # The demo model: type, Send, a reply rendered as markdown by the front end.
    textarea.fill("Hello, **bold** and `code`")
    send.click()
    expect(assistant).to_have_count(1, timeout=30_000)
    expect(stop).to_be_disabled(timeout=30_000)
    expect(send).to_be_enabled()
    expect(status).to_contain_text("tokens/s")
    user = panel.locator(".ct2-user").first
    expect(user.locator(".jp-RenderedHTMLCommon strong")).to_have_text("bold")
    expect(user.locator(".jp-RenderedHTMLCommon code")).to_have_text("code")
    assert assistant.first.locator(".jp-RenderedHTMLCommon").inner_text().strip()

    # A model that never ends a reply by itself, so the answer takes long enough to watch it grow.
    run_new_cell(page, f"%llama load {long_model}")
    panel.get_by_text("Settings", exact=True).click()
    max_tokens = panel.get_by_label("max tokens")
    max_tokens.fill("400")
    max_tokens.press("Tab")
    page.evaluate(SAMPLER)
    textarea.fill("Tell me a long story.")
    send.click()
    expect(assistant).to_have_count(2, timeout=30_000)
    expect(stop).to_be_disabled(timeout=60_000)
    expect(status).to_contain_text("400 tokens")
    page.wait_for_timeout(200)
    lengths = [n for count, n in page.evaluate("() => { clearInterval(window.__ct2Sampler); return window.__ct2Lengths; }")
               if count == 2]
    growth = sum(1 for a, b in zip(lengths[:-1], lengths[1:-1]) if b > a)
    assert growth >= 2, f"the answer did not grow while streaming: {lengths}"
    assert "stopped" not in assistant.nth(1).inner_text()

    # Shift+Enter is a new line (JupyterLab does not run the cell); Ctrl+Enter sends.
    max_tokens.fill("3000")
    max_tokens.press("Tab")
    runs_before = cell(page, 1).locator(".jp-InputPrompt").inner_text()
    textarea.click()
    page.keyboard.type("Write forever.")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("Please.")
    assert textarea.input_value() == "Write forever.\nPlease."
    page.keyboard.press("Control+Enter")
    expect(stop).to_be_enabled(timeout=30_000)
    expect(textarea).to_have_value("")
    assert cells(page).count() == 3 and cell(page, 1).locator(".jp-InputPrompt").inner_text() == runs_before

    # The kernel stays free while the panel streams: a cell runs meanwhile.
    page.wait_for_function("() => { const b = document.querySelectorAll('.ct2-panel .ct2-assistant');"
                           " return b.length === 3 && b[2].innerText.length > 200; }", timeout=30_000)
    i = run_new_cell(page, "print(6 * 7)", timeout=30)
    assert cell_output(page, i) == "42"
    expect(stop).to_be_enabled()
    started = time.perf_counter()
    stop.click()
    expect(send).to_be_enabled(timeout=10_000)
    stop_s = time.perf_counter() - started
    expect(status).to_contain_text("stopped")
    expect(assistant.nth(2)).to_contain_text("stopped")
    assert stop_s < 3, f"Stop took {stop_s:.2f}s to show"
    wait_kernel_idle(page, timeout=10)
    i = run_new_cell(page, "from ct2_magics import llama\nt = llama.chat().turns[-1]\n"
                           "print(llama.generator.num_active_batches, t.status, repr(t.user), len(t.assistant) > 100)")
    assert cell_output(page, i) == "0 stopped 'Write forever.\\nPlease.' True"

    # A question asked with %%llama in a cell shows up in the panel.
    run_new_cell(page, "%%llama -n 5\nasked from a cell")
    expect(panel.locator(".ct2-user")).to_have_count(4)
    expect(panel.locator(".ct2-user").nth(3)).to_contain_text("asked from a cell")
    expect(assistant).to_have_count(4)
    assert "Error displaying widget" not in cell_output(page, 1)
    assert not [line for line in page.console_log if line.startswith("[pageerror]")]
    if os.environ.get("CT2_PANEL_SCREENSHOT"):
        panel.scroll_into_view_if_needed()
        page.screenshot(path=os.environ["CT2_PANEL_SCREENSHOT"], full_page=True)
    print(f"Stop to idle in the browser: {stop_s:.2f}s")
