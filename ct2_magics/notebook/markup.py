"""Untrusted text made inert: markdown rendered to sanitised HTML (no active content), plain text without control characters.

Everything a model writes and everything a chat file holds goes through here before it reaches a
front end. markdown-it-py parses with raw HTML disabled (so tags stay text), links are kept only
for http, https and mailto, images become a visible link unless remote images are allowed, and nh3
(ammonia) then removes every element, attribute, class and style that is not on a short allow-list.
Each piece of markdown is rendered on its own, so one turn's markup cannot reach into the next.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

LINK_SCHEMES = ("http", "https", "mailto")
# Pygments' short token classes all start with one of these letters; each maps to a colour of
# JupyterLab's editor theme, so highlighted code looks as it does in a markdown cell.
_TOKEN_COLOURS = {
    "k": "keyword", "s": "string", "c": "comment", "m": "number", "o": "operator", "nb": "builtin",
    "bp": "builtin", "nf": "def", "fm": "def", "nc": "def", "nd": "meta", "nt": "tag", "na": "attribute",
    "p": "punctuation", "il": "number", "ni": "atom", "kc": "atom",
}  # fmt: skip
_CSS = "".join(
    f".ct2-md .ct2-code span[class^={c}]{{color:var(--jp-mirror-editor-{name}-color)}}" if len(c) == 1
    else f".ct2-md .ct2-code .{c}{{color:var(--jp-mirror-editor-{name}-color)}}"
    for c, name in _TOKEN_COLOURS.items()
) + ".ct2-md .ct2-image{font-style:italic}.ct2-md>:first-child{margin-top:0}" + (
    # Code in a box that ends before the next paragraph; the fallbacks serve hosts without JupyterLab's variables.
    ".ct2-md pre.ct2-code{background:var(--jp-cell-editor-background,rgba(127,127,127,.1));"
    "border:1px solid var(--jp-border-color2,rgba(127,127,127,.25));border-radius:4px;padding:6px 10px;"
    "margin:6px 0 10px;overflow-x:auto}.ct2-md pre.ct2-code code{background:none;padding:0}"
    ".ct2-md :not(pre)>code{background:var(--jp-layout-color2,rgba(127,127,127,.12));padding:0 .25em;border-radius:3px}"
    # How a reply ended, after it: a square drawn by CSS (no font has every symbol; Debian's lack U+23F9), then words.
    ".ct2-md .ct2-end{opacity:.75}.ct2-md .ct2-end::before{content:'';display:inline-block;width:.6em;height:.6em;"
    "margin-right:.45em;background:currentColor}"
)
# Our own stylesheet, added after sanitising (never built from model text).
STYLE = f"<style>{_CSS}</style>"
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def inert_text(text: str) -> str:
    """`text` for plain-text displays: control characters (ANSI escapes, carriage returns) shown as visible escapes."""
    text = str(text).replace("\r\n", "\n")
    return _CONTROL.sub(lambda m: _picture(m.group(0)), text)


def _picture(ch: str) -> str:
    code = ord(ch)
    if code < 0x20:
        return chr(0x2400 + code)  # the Unicode "control picture" of the character (␛ for ESC)
    return "\u2421" if code == 0x7F else f"\\x{code:02x}"


def escaped(text: str) -> str:
    """Untrusted text as HTML text: control characters made visible (inert_text), then <, >, & and quotes escaped."""
    import html

    return html.escape(inert_text(text), quote=True)


def sanitised(fragment: str) -> str:
    """An HTML fragment built here around escaped() text, through the allow-list replies go through as well."""
    return _cleaner(False).clean(fragment)


def is_safe_link(url: str) -> bool:
    """True for the link targets a reply may hold: http, https, mailto and same-page anchors."""
    url = unicodedata.normalize("NFKC", url).strip()
    if url.startswith("#"):
        return True
    scheme, sep, _ = url.partition(":")
    return bool(sep) and scheme.lower() in LINK_SCHEMES and "/" not in scheme


def to_html(text: str, *, remote_images: bool = False) -> str:
    """The markdown `text` as a sanitised HTML fragment, ready for a `text/html` output."""
    return _styled(_block(text, remote_images))


def _block(text: str, remote_images: bool) -> str:
    body = _cleaner(remote_images).clean(_markdown(remote_images).render(text))
    return f'<div class="ct2-md">{body}</div>'


def _styled(html: str) -> str:
    # Our style sheet (highlighting colours), once per output, only where there is something to style.
    return (STYLE + html) if 'class="ct2-code"' in html or "ct2-image" in html or "ct2-end" in html else html


def end_mark(html: str, words: str) -> str:
    """`html` (from to_html) with a line after it that says how the reply ended (our words, never the model's)."""
    from markdown_it.common.utils import escapeHtml

    html = html[len(STYLE):] if html.startswith(STYLE) else html
    return _styled(f'{html}<div class="ct2-md"><p class="ct2-end"><em>{escapeHtml(words)}</em></p></div>')


def bundle(text: str, *, remote_images: bool = False, plain: str | None = None) -> dict[str, str]:
    """A display bundle for untrusted markdown: sanitised HTML plus inert plain text (never text/markdown)."""
    return {"text/html": to_html(text, remote_images=remote_images), "text/plain": inert_text(text if plain is None else plain)}


def sections_html(sections: Iterable[tuple[str, str]], *, remote_images: bool = False) -> str:
    """Labelled pieces of markdown (a transcript's turns), each rendered on its own, the label leading its first paragraph."""
    from markdown_it.common.utils import escapeHtml

    parts = []
    opening = '<div class="ct2-md"><p>'
    for label, text in sections:
        head = f"<strong>{escapeHtml(label)}:</strong>"
        body = _block(text, remote_images)
        if body.startswith(opening):
            body = f"{opening}{head} {body[len(opening):]}"
        else:
            body = f"<p>{head}</p>{body}"
        parts.append(f'<div class="ct2-turn">{body}</div>')
    return _styled("".join(parts))


class Streaming:
    """Renders a reply that grows: finished blocks are rendered once, only the block being written is redone.

    Partial views only: the final view of a reply is `to_html` of the whole text, in one pass.
    """

    def __init__(self, *, remote_images: bool = False) -> None:
        self.remote_images = remote_images
        self._done: list[tuple[str, str]] = []  # (markdown, html) of the blocks rendered so far

    def html(self, text: str) -> str:
        blocks = split_blocks(text)
        keep = 0
        while keep < min(len(self._done), len(blocks) - 1) and self._done[keep][0] == blocks[keep]:
            keep += 1
        del self._done[keep:]
        for block in blocks[keep:-1]:
            self._done.append((block, self._render(block)))
        body = "".join(h for _, h in self._done) + (self._render(blocks[-1]) if blocks else "")
        return _styled(f'<div class="ct2-md">{body}</div>')

    def _render(self, block: str) -> str:
        return _cleaner(self.remote_images).clean(_markdown(self.remote_images).render(block))


_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")  # for cutting a stream into blocks; fenced_code parses for real


def fenced_code(text: str) -> list[str]:
    """The bodies of the fenced code blocks in markdown `text`, in order, as the renderer reads them (in list items too)."""
    return [token.content for token in _markdown(False).parse(text) if token.type == "fence"]


def split_blocks(text: str) -> list[str]:
    """`text` cut at blank lines that no later line can reach back over (not in code or math, no indented follow-on)."""
    lines = text.split("\n")
    blocks, start, fence, dollars = [], 0, None, False
    for i, line in enumerate(lines):
        m = _FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)
        elif fence is not None and m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) and not m.group(2).strip():
            fence = None
        elif fence is None and line.count("$$") % 2:
            dollars = not dollars
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if (fence is None and not dollars and not line.strip() and i > start and i + 1 < len(lines)
                and nxt[:1] not in ("", " ", "\t")):
            blocks.append("\n".join(lines[start:i + 1]))
            start = i + 1
    blocks.append("\n".join(lines[start:]))
    return blocks


# -- markdown ---------------------------------------------------------------------------------------
_build_lock = threading.Lock()


@lru_cache(maxsize=2)
def _markdown(remote_images: bool) -> Any:
    with _build_lock:
        return _build_markdown(remote_images)


def _build_markdown(remote_images: bool) -> Any:
    from markdown_it import MarkdownIt
    from mdit_py_plugins.amsmath import amsmath_plugin
    from mdit_py_plugins.dollarmath import dollarmath_plugin
    from mdit_py_plugins.texmath import texmath_plugin

    # breaks: a single line break stays one (a poem, an address), as chat front ends show replies.
    md = MarkdownIt("commonmark", {"html": False, "linkify": True, "typographer": False, "breaks": True})
    md.enable(["table", "strikethrough", "linkify"])
    md.validateLink = is_safe_link  # a link that fails stays as its markdown text
    dollarmath_plugin(md, allow_space=False, allow_digits=False, double_inline=True)
    texmath_plugin(md, delimiters="brackets")  # \( \) and \[ \], which models write as often as $
    amsmath_plugin(md)
    from markdown_it.common.utils import escapeHtml as escape

    def inline_math(self: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
        return f'<span class="math">\\({escape(tokens[idx].content)}\\)</span>'

    def block_math(self: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
        return f'<div class="math">\\[{escape(tokens[idx].content)}\\]</div>\n'

    def environment(self: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
        return f'<div class="math">{escape(tokens[idx].content)}</div>\n'

    def fence(self: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
        token = tokens[idx]
        language = token.info.strip().split(maxsplit=1)[0] if token.info.strip() else ""
        return f'<pre class="ct2-code"><code>{_highlight(token.content, language) or escape(token.content)}</code></pre>\n'

    def image(self: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
        token = tokens[idx]
        src = token.attrGet("src") or ""
        alt = self.renderInlineAsText(token.children or [], options, env)
        if remote_images and src.lower().startswith(("https:", "http:")):
            return f'<img src="{escape(src)}" alt="{escape(alt)}">'
        # Not loaded: a remote image leaks data the moment it renders. The address stays visible.
        return f'<a class="ct2-image" href="{escape(src)}">image: {escape(alt)} ({escape(src)})</a>'

    md.add_render_rule("math_inline", inline_math)
    for name in ("math_inline_double", "math_block", "math_block_label", "math_block_eqno"):
        md.add_render_rule(name, block_math)
    md.add_render_rule("amsmath", environment)
    md.add_render_rule("fence", fence)
    md.add_render_rule("code_block", fence)
    md.add_render_rule("image", image)
    return md


def _highlight(code: str, language: str) -> str | None:
    """Pygments' HTML for `code` (spans with short token classes), or None for an unknown language."""
    if not language:
        return None
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import get_lexer_by_name
    from pygments.util import ClassNotFound

    try:
        lexer = get_lexer_by_name(language)
    except ClassNotFound:
        return None
    return highlight(code, lexer, HtmlFormatter(nowrap=True))


# -- sanitising -------------------------------------------------------------------------------------
_TAGS = {"a", "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "del", "s", "code", "pre",
         "blockquote", "ul", "ol", "li", "table", "thead", "tbody", "tr", "th", "td", "span", "div"}  # fmt: skip


@lru_cache(maxsize=2)
def _cleaner(remote_images: bool) -> Any:
    import nh3
    from pygments.token import STANDARD_TYPES

    tags = _TAGS | ({"img"} if remote_images else set())
    attributes: dict[str, set[str]] = {"a": {"href", "title"}, "th": {"style"}, "td": {"style"}, "ol": {"start"}}
    if remote_images:
        attributes["img"] = {"src", "alt"}
    token_classes = {c for c in STANDARD_TYPES.values() if c}
    return nh3.Cleaner(
        tags=tags,
        clean_content_tags={"script", "style"},
        attributes=attributes,
        url_schemes=set(LINK_SCHEMES),
        link_rel="noopener noreferrer nofollow",
        strip_comments=True,
        filter_style_properties={"text-align"},  # table column alignment, nothing that can load anything
        allowed_classes={"span": token_classes | {"math"}, "div": {"math"}, "pre": {"ct2-code"}, "a": {"ct2-image"}},
    )
