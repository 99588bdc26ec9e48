"""What the model weighed, on screen: `%%llama --probs` (each token tinted by its probability, the alternatives at
that step in its tooltip) and `llama.next_tokens` (a table of tokens with text bars).

Every token and alternative is model text: it is escaped (control characters made visible) and the fragment goes
through an allow-list of its own (spans with a tint class and a title, nothing else); the tooltip is a `title`
attribute, which browsers show as text. Tints are classes of our stylesheet: a blue-to-red scale of translucent
backgrounds, readable on light and dark themes and by people who do not tell red from green.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from ct2_magics.notebook.choice_view import bar
from ct2_magics.notebook.markup import escaped, inert_text
from ct2_magics.notebook.render import END_WORDS, MarkdownStream, with_mark

# (lowest probability of the band, its label, its background): most probable first.
BANDS = ((0.9, "90% or more", "hsla(210,85%,55%,.16)"), (0.7, "70-90%", "hsla(190,85%,45%,.30)"),
         (0.4, "40-70%", "hsla(48,95%,50%,.38)"), (0.1, "10-40%", "hsla(28,95%,52%,.45)"),
         (0.0, "under 10%", "hsla(0,85%,55%,.55)"))
_CSS = "".join(f".ct2-probs .ct2-p{n}{{background:{colour}}}" for n, (_, _, colour) in enumerate(BANDS)) + (
    ".ct2-probs .ct2-tokens{white-space:pre-wrap;line-height:1.75;font-family:var(--jp-content-font-family,sans-serif)}"
    ".ct2-probs .ct2-tokens span{border-radius:3px;padding:1px 0}"
    ".ct2-probs .ct2-tokens span:hover{outline:1px solid currentColor}"
    ".ct2-probs .ct2-legend{font-size:85%;opacity:.85;margin-bottom:.4em}"
    ".ct2-probs .ct2-legend span{padding:0 .4em;margin-left:.3em;border-radius:3px}"
    ".ct2-probs .ct2-end{opacity:.75;font-style:italic;margin-top:.5em}"
    ".ct2-probs .ct2-end::before{content:'';display:inline-block;width:.6em;height:.6em;margin-right:.45em;"
    "background:currentColor}"
)
STYLE = f"<style>{_CSS}</style>"
LEGEND = ('<div class="ct2-legend">Probability of each token (hover for the alternatives):'
          + "".join(f'<span class="ct2-p{n}">{label}</span>' for n, (_, label, _) in enumerate(BANDS)) + "</div>")


def band(prob: float) -> int:
    return next(n for n, (low, _, _) in enumerate(BANDS) if prob >= low)


def visible(text: str) -> str:
    """A token's text with its white space shown: spaces as ␣, line breaks as ↵, tabs as →."""
    return inert_text(text.replace(" ", "\u2423").replace("\n", "\u21b5").replace("\t", "\u2192")) if text else "(nothing)"


CHOSEN = "  \u2190 chosen"


def tooltip(token: Any) -> str:
    """The alternatives at a token's step, one a line, the chosen one marked (plain text for a title attribute)."""
    lines = [f"{visible(token.text)}  {token.prob:.1%}", "At this step:"]
    for n, (text, prob) in enumerate(token.alternatives):
        lines.append(f"{prob:6.1%}  {visible(text)}{CHOSEN if n == token.rank else ''}")
    if token.rank is None:
        lines.append(f"(chosen: {visible(token.text)}, {token.prob:.1%}, below the top {len(token.alternatives)})")
    return "\n".join(lines)


def tokens_html(tokens: list[Any], *, tips: bool = True, status: str = "complete") -> str:
    """The reply as tinted token spans (with tooltips when `tips`), its legend, and how it ended."""
    spans = []
    for token in tokens:
        if not token.text:
            continue  # part of a character: its text comes with the next token
        shown = escaped(token.text).replace("\n", "\u21b5\n")
        title = f' title="{escaped(tooltip(token))}"' if tips else ""
        spans.append(f'<span class="ct2-p{band(token.prob)}"{title}>{shown}</span>')
    mark = END_WORDS.get(status)
    end = f'<p class="ct2-end">{escaped(mark)}</p>' if mark else ""
    body = _cleaner().clean(f'<div class="ct2-probs">{LEGEND}<div class="ct2-tokens">{"".join(spans)}</div>{end}</div>')
    return STYLE + body


@lru_cache(maxsize=1)
def _cleaner() -> Any:
    import nh3

    return nh3.Cleaner(tags={"div", "span", "p"}, attributes={"span": {"title"}}, clean_content_tags={"script", "style"},
                       allowed_classes={"div": {"ct2-probs", "ct2-legend", "ct2-tokens"}, "p": {"ct2-end"},
                                        "span": {f"ct2-p{n}" for n in range(len(BANDS))}},
                       strip_comments=True, url_schemes=set())


class TokenStream(MarkdownStream):
    """Like MarkdownStream, showing the reply's tokens tinted by probability; tooltips in the final view only (partial
    updates stay small)."""

    def __init__(self, response: Any, rate: float = 15.0) -> None:
        super().__init__(rate)
        self.response = response

    def _final(self, text: str, status: str) -> dict[str, str]:
        tokens = self.response.tokens or []
        return {"text/html": tokens_html(tokens, status=status), "text/plain": inert_text(with_mark(text, status))}

    def _partial_bundle(self, text: str) -> dict[str, str]:
        return {"text/html": tokens_html(list(self.response.tokens or []), tips=False, status="streaming")}

    def _placeholder(self, text: str) -> dict[str, str]:
        return {"text/html": f"<em>{escaped(text)}</em>", "text/plain": inert_text(text)}


def table_html(frame: Any) -> str:
    """next_tokens' DataFrame as a table of tokens, text bars and percentages (a `sampled` column, if any, likewise)."""
    columns = [c for c in ("prob", "sampled") if c in frame.columns]
    head = "".join(f'<th style="text-align: left">{"model" if c == "prob" else "sampled"}</th><th></th>' for c in columns)
    rows = []
    for _, row in frame.iterrows():
        cells = "".join(f'<td style="text-align: left">{bar(row[c])}</td><td style="text-align: right">{row[c]:.1%}</td>'
                        for c in columns)
        rows.append(f'<tr><td style="text-align: left"><code>{escaped(visible(str(row["token"])))}</code></td>{cells}</tr>')
    from ct2_magics.notebook.markup import sanitised

    fragment = f'<table><thead><tr><th style="text-align: left">next token</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    return f'<div class="ct2-md ct2-choices">{sanitised(fragment)}</div>'


def next_tokens_frame(rows: list[tuple[str, float, float | None]], reshaped: bool) -> Any:
    """A DataFrame (token, prob[, sampled]), most probable first, shown in a notebook as a bar chart."""
    frame = _table_class()({"token": [r[0] for r in rows], "prob": [r[1] for r in rows]})
    if reshaped:
        frame["sampled"] = [r[2] for r in rows]
    return frame


@lru_cache(maxsize=1)
def _table_class() -> type:
    import pandas as pd

    class NextTokenTable(pd.DataFrame):
        """A DataFrame of next tokens; in a notebook, a bar chart. Any operation on it gives a plain DataFrame."""

        @property
        def _constructor(self) -> type:
            return pd.DataFrame

        def _repr_html_(self) -> str:
            if {"token", "prob"} <= set(self.columns):
                return table_html(self)
            return pd.DataFrame(self)._repr_html_()

    return NextTokenTable
