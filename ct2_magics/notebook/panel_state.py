"""The chat panel's one widget (an AnyWidget: its synced state, its ES module) and the Python handles on that state."""

from __future__ import annotations

import html
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anywidget  # imported with the first panel, not with the extension
import traitlets as t

from ct2_magics.core.conversation import Turn
from ct2_magics.core.options import OPTIONS
from ct2_magics.core.response import Response
from ct2_magics.core.session import Session
from ct2_magics.notebook.markup import bundle, inert_text
from ct2_magics.notebook.render import reply_bundle

STATIC = Path(__file__).with_name("static")
SHORTCUT = "Ctrl+Enter"
PLACEHOLDER = "Message…"


class PanelWidget(anywidget.AnyWidget):
    """The panel on the page. The kernel writes what it shows; the page writes back only the settings fields
    and sends the rest (typed text, button presses) as messages."""

    _esm = (STATIC / "panel.js").read_text(encoding="utf-8")
    _css = (STATIC / "panel.css").read_text(encoding="utf-8")
    chat_name = t.Unicode("").tag(sync=True)
    # {"role": "user" | "assistant", "html": sanitised HTML, "text": inert plain text, "status": turn status}
    messages = t.List(t.Dict()).tag(sync=True)
    pending = t.List(t.Dict()).tag(sync=True)  # this panel's exchange in flight (updated as it streams)
    status = t.Unicode("").tag(sync=True)  # one line of text, never markup
    status_error = t.Bool(False).tag(sync=True)
    busy = t.Bool(False).tag(sync=True)
    cleared = t.Int(0).tag(sync=True)  # how many exchanges "Undo new chat" can bring back (0: none)
    fields = t.List(t.Dict()).tag(sync=True)
    options = t.Dict().tag(sync=True)  # option name -> the text in its field ("" means the model's default)
    system_prompt = t.Unicode("").tag(sync=True)
    draft = t.Unicode("").tag(sync=True)  # text the kernel puts in the input box (a message that was not asked)
    placeholder = t.Unicode(PLACEHOLDER).tag(sync=True)
    shortcut = t.Unicode(SHORTCUT).tag(sync=True)
    note_id = t.Unicode("").tag(sync=True)  # the data-ct2-note of the line that stands in for the panel
    side = t.Bool(False).tag(sync=True)  # in the side area: a view in a cell shows one line (the panel where there is none)
    sidecar_id = t.Unicode("").tag(sync=True)  # the model id of the side area's widget

    def __init__(self, **kwargs: Any) -> None:
        fields = [{"name": o.name, "label": o.label, "help": o.help} for o in OPTIONS]
        super().__init__(fields=fields, options={o.name: "" for o in OPTIONS}, note_id=uuid.uuid4().hex, **kwargs)

    def __repr__(self) -> str:  # the text/plain beside the widget: what a saved notebook shows where widgets are not drawn
        return fallback_text(self.chat_name, self.messages)


def fallback_text(chat: str, messages: list[dict[str, Any]], last: int = 4, width: int = 300) -> str:
    """The chat's last messages as plain text under one line saying what this was, for a saved notebook."""
    head = f"[ct2-magics chat panel, chat {inert_text(chat)!r}: it needs a running kernel; run this cell to open it]"
    lines = [head]
    for m in messages[-last:]:
        text = " ".join(m.get("text", "").split())
        lines.append(f"{'You' if m['role'] == 'user' else 'Llama'}: {text[:width]}{'…' if len(text) > width else ''}")
    return "\n".join(lines)


def note_bundle(text: str, note_id: str | None = None) -> dict[str, str]:
    """One line about the panel, as our own markup around escaped text. With `note_id`, it explains a page where
    the panel cannot show (its kernel has gone), and the panel's view hides it once the panel is there."""
    mark = f' data-ct2-note="{html.escape(note_id)}"' if note_id else ""
    look = "font-size: var(--jp-ui-font-size1, 13px); color: var(--jp-ui-font-color2, #777)"
    return {"text/html": f'<div class="ct2-panel-note"{mark} style="{look}">{html.escape(inert_text(text))}</div>',
            "text/plain": inert_text(text)}


def gone_note(chat: str) -> str:
    return (f"Chat panel for chat {chat!r}. If the line above says 'model not found', the kernel that made it has "
            "restarted or stopped: run this cell again (the chat comes back from its saved copy).")


def idle_line(session: Session, chat: str) -> str:
    e = session.engine
    model = f"{e.name} · {e.device} · {e.compute_type}" if e else f"the first message loads {session.settings.model}"
    return f"chat {chat!r} · {model} · {SHORTCUT} sends"


def reply_line(response: Response, final: bool = False) -> str:
    """The status line while a reply streams, and once it has ended."""
    s, e = response.stats, response.engine
    if e is None:  # it ended while it waited for the model
        return f"{response.status} before the model began" if final else "thinking…"
    parts = [e.name, e.device, f"{s.reply_tokens} tokens", f"{s.tokens_per_s:.1f} tokens/s"]
    if final and response.status != "complete":
        parts.append(response.status)
    return " · ".join(parts + (response.notices if final else []))


def message(role: str, text: str, status: str = "complete", *, remote_images: bool = False) -> dict[str, Any]:
    """One message as the page gets it: sanitised HTML and inert text (the user's own line breaks kept)."""
    if role == "user":
        out = bundle(text.replace("\n", "  \n"), remote_images=remote_images, plain=text)
    else:
        out = reply_bundle(text, status, remote_images=remote_images)
    return {"role": role, "html": out["text/html"], "text": out["text/plain"], "status": status}


def turn_messages(turns: list[Turn], cache: dict[tuple[str, str, str], dict[str, Any]], remote_images: bool) -> list[dict[str, Any]]:
    """The turns as messages, each rendered once (`cache` keeps those still shown)."""
    out, kept = [], {}
    for turn in turns:
        for role, text, status in (("user", turn.user, "complete"), ("assistant", turn.assistant, turn.status)):
            key = (role, text, status)
            kept[key] = cache.get(key) or message(role, text, status, remote_images=remote_images)
            out.append(kept[key])
    cache.clear()
    cache.update(kept)
    return out


class Field:
    """A handle on one piece of the panel's synced state, as `.value` (the settings fields, the input box)."""

    def __init__(self, get: Callable[[], str], put: Callable[[str], None], placeholder: str = "") -> None:
        self._get, self._put, self.placeholder = get, put, placeholder

    @property
    def value(self) -> str:
        return self._get()

    @value.setter
    def value(self, text: str) -> None:
        self._put(text)


def option_field(widget: PanelWidget, name: str) -> Field:
    return Field(lambda: widget.options.get(name, ""), lambda text: setattr(widget, "options", {**widget.options, name: text}),
                 "model default")


class Status:
    """The status line: `.value` (one line of text) and `.error` (shown as an error)."""

    def __init__(self, widget: PanelWidget) -> None:
        self._widget = widget

    @property
    def value(self) -> str:
        return self._widget.status

    @property
    def error(self) -> bool:
        return self._widget.status_error


class Button:
    """A button of the panel: its label, whether the page shows it enabled now, and `click()` (what a press does)."""

    def __init__(self, description: str, action: Callable[[], Any], enabled: Callable[[], bool]) -> None:
        self.description, self._action, self._enabled = description, action, enabled

    @property
    def disabled(self) -> bool:
        return not self._enabled()

    def click(self) -> Any:
        return self._action()
