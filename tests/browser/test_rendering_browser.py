"""How replies look in a real JupyterLab (Debian's chromium, its stock fonts): line breaks kept, code in a box that
does not run into the next paragraph, and end marks (stopped, interrupted, cut) drawn with no missing glyph.

With CT2_SCREENSHOTS=DIR set, the outputs are also saved there as PNG files, to look at.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from .lab import GLYPHLESS_JS, cell, open_notebook, run_all

POEM = "The sea is wide,\nThe sea is deep,\nIt sings the moon\nAnd me to sleep."
CODE = "Here it is:\n```python\ndef add(a, b):\n    return a + b\n```\nThat adds two numbers."
LIVE = "Roses are red,\nviolets are blue,\nthis line is the third.\n\n```python\nprint('hi')\n```\nThe end of the reply."

# A stopped and an interrupted reply as the magic and the panel end them (stopping a live one is test_stop's business).
ENDINGS = ("from IPython.display import display\nfrom ct2_magics.notebook.render import reply_bundle\n"
           "for status in ('stopped', 'interrupted'):\n    display(reply_bundle(f'A reply that was {status}', status), raw=True)")

# Over one output area: the paragraphs' line breaks, the code blocks' box, and the characters of the end marks
# that have no glyph in any font here (drawn like a character no font has: U+10FFFD).
INSPECT = """(root) => {
  """ + GLYPHLESS_JS + """
  const marks = Array.from(root.querySelectorAll('.ct2-end'));
  const tofu = glyphless(Array.from(root.querySelectorAll('.ct2-md')).filter(el => !el.closest('pre')));
  const px = v => parseFloat(v) || 0;
  const code = Array.from(root.querySelectorAll('pre.ct2-code')).map(pre => {
    const s = getComputedStyle(pre), next = pre.nextElementSibling;
    return {background: s.backgroundColor, padding: px(s.paddingTop) + px(s.paddingLeft), margin: px(s.marginBottom),
            gap: next ? next.getBoundingClientRect().top - pre.getBoundingClientRect().bottom : null};
  });
  const paragraphs = Array.from(root.querySelectorAll('.ct2-md p')).map(p => ({
    text: p.textContent, breaks: p.querySelectorAll('br').length,
    lines: Math.round(p.getBoundingClientRect().height / (px(getComputedStyle(p).lineHeight) || 20))}));
  const squares = marks.map(m => { const s = getComputedStyle(m, '::before');
    return {width: px(s.width), background: s.backgroundColor}; });
  return {tofu, code, paragraphs, marks: marks.map(m => m.textContent.trim()), squares};
}"""


def _shoot(page, index: int, name: str) -> None:
    where = os.environ.get("CT2_SCREENSHOTS")
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
        cell(page, index).locator(".jp-OutputArea").first.screenshot(path=str(Path(where) / f"{name}.png"))


@pytest.mark.browser
def test_replies_keep_line_breaks_box_code_and_draw_their_marks(page, lab, script_model):
    turns = [("A poem about the sea, please.", POEM, "complete"), ("And code?", CODE, "complete"),
             ("Go on.", "A reply you stopped", "stopped"), ("And on.", "A reply cut short by Ctrl-C", "interrupted"),
             ("Longer?", "A reply that reached", "cut"), ("Again?", "again and again and again", "looping")]
    (lab.root / "look.json").write_text(json.dumps({"version": 1, "notebook": None, "chats": {"look": {
        "system": None, "turns": [{"user": u, "assistant": a, "status": s, "cell_id": None} for u, a, s in turns]}}}))
    shutil.copytree(script_model(LIVE), lab.root / "live-model")
    lab.write_notebook("look.ipynb", ["%load_ext ct2_magics\n%llama restore look.json", "%llama history --chat look",
                                      "%llama load live-model", "%%llama -t 0 --once\nA poem and some code.",
                                      "%%llama -t 0 --once -n 6\nThe same, cut short.", ENDINGS])
    open_notebook(page, lab, "look.ipynb")
    assert run_all(page, timeout=300) is True
    page.wait_for_timeout(1000)
    history, live, cut, ends = (cell(page, i).locator(".jp-OutputArea").first.evaluate(INSPECT) for i in (1, 3, 4, 5))
    for index, name in ((1, "history"), (3, "live"), (4, "cut"), (5, "endings")):
        _shoot(page, index, name)

    # Single line breaks stay line breaks: the poem is four lines, not one paragraph's run-on line.
    poem = next(p for p in history["paragraphs"] if "The sea is wide" in p["text"])
    assert poem["breaks"] == 3 and poem["lines"] >= 4, poem
    assert any(p["breaks"] == 2 and p["lines"] >= 3 for p in live["paragraphs"] if "Roses" in p["text"]), live
    # Code sits in a box: a background, padding, and room before the paragraph after it.
    for block in history["code"] + live["code"]:
        assert block["background"] not in ("rgba(0, 0, 0, 0)", "transparent") and block["padding"] >= 8, block
        assert block["margin"] >= 6 and (block["gap"] is None or block["gap"] >= 6), block
    # The end marks say how each reply ended, with nothing drawn as a missing-glyph box.
    labels = cell(page, 1).locator(".jp-OutputArea").first.inner_text()
    for label in ("Llama [stopped]:", "Llama [interrupted]:", "Llama [cut short]:", "Llama [stopped: repeating itself]:"):
        assert label in labels
    assert len(cut["marks"]) == 1 and cut["marks"][0].startswith("cut short"), cut
    assert live["marks"] == [], live
    assert ends["marks"] == ["stopped", "interrupted"], ends
    for report in (history, live, cut, ends):
        assert report["tofu"] == [], f"characters with no glyph in this browser: {report['tofu']}"
        assert all(sq["width"] > 0 and sq["background"] not in ("rgba(0, 0, 0, 0)", "transparent")
                   for sq in report["squares"]), report["squares"]
