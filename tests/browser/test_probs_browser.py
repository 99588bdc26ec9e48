"""`%%llama --probs` and `llama.next_tokens` in a real JupyterLab: every token tinted and carrying its alternatives as
a text tooltip, markup written by the model shown as text (nothing runs, nothing loads), every character drawn with a
glyph, readable in the light and the dark theme.

With CT2_SCREENSHOTS=DIR set, the outputs are also saved there as PNG files, to look at.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from .lab import GLYPHLESS_JS, cell, execute_command, open_notebook, run_all

# A reply whose tokens are markup: each would run script or fetch something if it became HTML.
HOSTILE = 'Paris <img src=x onerror="self.xa=1"> is <script>top.yb=2</SCRIPT>\n<b onmouseover="parent.zc=3">big</b> &amp; old.'
PWNED = "() => [self.xa, self.yb, self.zc].filter(v => v !== undefined)"

INSPECT = """(root) => {
  const bad = [];
  for (const el of root.querySelectorAll('.jp-RenderedHTMLCommon *')) {
    const tag = el.tagName.toLowerCase();
    if (!['div', 'span', 'p', 'style', 'table', 'thead', 'tbody', 'tr', 'th', 'td', 'code'].includes(tag)) bad.push('<' + tag + '>');
    for (const a of el.attributes) if (!['class', 'title', 'style'].includes(a.name)) bad.push(tag + '[' + a.name + ']');
  }
  for (const st of root.querySelectorAll('style')) if (!/^\\.ct2-(probs|md)/.test(st.textContent)) bad.push('foreign <style>');
  """ + GLYPHLESS_JS + """
  const tofu = glyphless(root.querySelectorAll('.ct2-probs, .ct2-choices'));
  const spans = Array.from(root.querySelectorAll('.ct2-tokens span'));
  return {bad, tofu, text: (root.querySelector('.ct2-tokens') || {}).textContent,
          titles: spans.map(s => s.getAttribute('title')),
          tints: spans.map(s => getComputedStyle(s).backgroundColor), colour: spans.length ? getComputedStyle(spans[0]).color : null,
          legend: Array.from(root.querySelectorAll('.ct2-legend span')).map(s => getComputedStyle(s).backgroundColor),
          rows: root.querySelectorAll('.ct2-choices tr').length};
}"""


def _shoot(page, index: int, name: str) -> None:
    where = os.environ.get("CT2_SCREENSHOTS")
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
        cell(page, index).locator(".jp-OutputArea").first.screenshot(path=str(Path(where) / f"{name}.png"))


@pytest.mark.browser
def test_probs_tint_tokens_with_text_tooltips_and_markup_stays_inert(page, lab, script_model):
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    shutil.copytree(script_model(HOSTILE), lab.root / "markup-model")
    lab.write_notebook("probs.ipynb", ["%load_ext ct2_magics\n%llama load markup-model",
                                       "%%llama --probs 3 -t 0.8 --seed 1 --once\nWhat is the capital of France?",
                                       "from ct2_magics import llama\nllama.next_tokens('Paris <img', top=6)"])
    open_notebook(page, lab, "probs.ipynb")
    assert run_all(page, timeout=300) is True
    page.wait_for_timeout(1000)
    reports = {}
    for theme in ("JupyterLab Light", "JupyterLab Dark"):
        execute_command(page, "apputils:change-theme", {"theme": theme})
        page.wait_for_timeout(1500)
        reports[theme] = [cell(page, i).locator(".jp-OutputArea").first.evaluate(INSPECT) for i in (1, 2)]
        _shoot(page, 1, f"probs-{theme.split()[-1].lower()}")
        _shoot(page, 2, f"next-tokens-{theme.split()[-1].lower()}")
    light, table = reports["JupyterLab Light"]
    dark, _ = reports["JupyterLab Dark"]

    assert light["bad"] == [] and table["bad"] == [], (light["bad"], table["bad"])
    assert page.evaluate(PWNED) == [] and not dialogs
    # The reply is there as text, token by token, line breaks marked; every token has its alternatives.
    assert light["text"].replace("\u21b5", "") == HOSTILE
    assert light["titles"] and all(t and "At this step:" in t for t in light["titles"])
    assert any(t.startswith("\u2423<") for t in light["titles"])  # a token that is markup: text in its tooltip
    assert all(c not in ("rgba(0, 0, 0, 0)", "transparent") for c in light["tints"] + light["legend"])
    assert len(set(light["legend"])) == 5
    # Readable in both themes: the text takes the theme's colour over the same translucent tints.
    assert light["colour"] != dark["colour"] and light["tints"] == dark["tints"]
    assert light["tofu"] == [] and table["tofu"] == [], (light["tofu"], table["tofu"])
    assert table["rows"] == 7  # the header and six tokens
