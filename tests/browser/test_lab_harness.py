"""The browser harness itself: widgets and display updates render in a real JupyterLab."""

from __future__ import annotations

import pytest

from . import lab as labmod
from .lab import cell, cell_output, open_notebook, run_all, run_new_cell

WIDGET_CELL = """\
import ipywidgets as widgets
from IPython.display import display

status = widgets.HTML(value="<b>not pressed</b>")
button = widgets.Button(description="Press me")
presses = []

def on_click(b):
    presses.append(1)
    status.value = f"<b>pressed {len(presses)}</b>"

button.on_click(on_click)
display(widgets.VBox([button, status]))
"""


@pytest.mark.browser
def test_button_click_updates_html_widget(page, lab):
    from playwright.sync_api import expect

    lab.write_notebook("widgets.ipynb", [WIDGET_CELL])
    open_notebook(page, lab, "widgets.ipynb")
    assert run_all(page) is True

    out = cell(page, 0)
    button = out.locator(".jupyter-widgets.widget-button", has_text="Press me")
    html = out.locator(".jupyter-widgets.widget-html")
    expect(button).to_be_visible(timeout=30_000)
    expect(html).to_contain_text("not pressed")

    button.click()
    expect(html).to_contain_text("pressed 1", timeout=30_000)
    button.click()
    expect(html).to_contain_text("pressed 2", timeout=30_000)
    # The value really went kernel -> comm -> widget view: the kernel saw both clicks.
    i = run_new_cell(page, "print(len(presses), status.value)")
    assert cell_output(page, i) == "2 <b>pressed 2</b>"
    assert "Error displaying widget" not in cell_output(page, 0)


@pytest.mark.browser
def test_display_handle_update_renders_markdown(page, lab):
    from playwright.sync_api import expect

    lab.write_notebook(
        "display.ipynb",
        [
            "from IPython.display import display, Markdown\n"
            "handle = display(Markdown('# Hello'), display_id=True)\n"
            "handle.update(Markdown('**bold**'))",
            "print(6 * 7)",
        ],
    )
    open_notebook(page, lab, "display.ipynb")
    assert run_all(page) is True

    md = cell(page, 0).locator(".jp-RenderedMarkdown")
    expect(md.locator("strong")).to_have_text("bold")
    assert md.locator("h1").count() == 0
    assert cell_output(page, 0) == "bold"
    assert cell_output(page, 1) == "42"

    # An update from a later cell replaces the output of the first one in place.
    run_new_cell(page, "handle.update(Markdown('*later*'))")
    expect(md.locator("em")).to_have_text("later")
    assert md.locator("strong").count() == 0


def test_missing_browser_skips_locally_but_fails_in_ci(monkeypatch):
    monkeypatch.setattr(labmod, "CHROMIUM", "/nonexistent/chromium")
    assert "missing" in labmod.browser_unavailable_reason()

    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        labmod.require_browser()

    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        labmod.require_browser()
