"""The ipywidgets chat panel: a thin view over one chat of the session; replies stream on a worker thread."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from ct2_magics.core.conversation import Chat, Turn
from ct2_magics.core.options import OPTIONS
from ct2_magics.core.response import Request, Response
from ct2_magics.core.session import Session
from ct2_magics.errors import LlamaError
from ct2_magics.notebook.markup import Streaming, inert_text
from ct2_magics.notebook.render import reply_bundle

# The shortcut appends this to the input and fires its input event: the send signal then rides in the same
# ordered state sync as the text, where a click (a custom message) could overtake text the front end still buffers.
SEND_KEY = "\x04"
STATIC = Path(__file__).with_name("static")
SHORTCUT = "Ctrl+Enter"


@functools.lru_cache(maxsize=1)
def _assets_class() -> type:
    import anywidget  # imported with the first panel, not with the extension

    class PanelAssets(anywidget.AnyWidget):
        """An invisible widget that brings the panel's style sheet and its keyboard shortcut to the page."""

        _esm = (STATIC / "panel.js").read_text(encoding="utf-8")
        _css = (STATIC / "panel.css").read_text(encoding="utf-8")

    return PanelAssets


def _message(role: str, data: dict[str, str]) -> dict[str, Any]:
    return {"output_type": "display_data", "data": data, "metadata": {"role": role}}


class ChatPanel:
    """A chat view over `session.chat(name)`: messages, input, Send/Stop/Retry/Undo/New chat, settings, status."""

    def __init__(self, session: Session, chat: str = "default") -> None:
        self.session = session
        self.chat: Chat = session.chat(chat)
        self._lock = threading.RLock()
        self._worker: threading.Thread | None = None
        self._response: Response | None = None  # set once the worker has built it
        self._pending: str | None = None  # the user text this panel is asking about, until its turn is recorded
        self._waiting = self._closed = False
        self._boxes: list[widgets.Output] = []
        self._shown: list[tuple[str, str]] = []
        self._partial = Streaming()  # renders the reply being written
        self._build()
        self._unobserve = self.chat.observe(self._on_chat_changed)
        self._refresh()
        self._say(self._idle_line())

    def _build(self) -> None:
        box = widgets.Layout
        self.messages = widgets.VBox(layout=box(width="100%", flex="0 0 auto"))
        # column-reverse keeps the scroll pinned to the newest message while a reply grows
        scroller = widgets.Box([self.messages], layout=box(display="flex", flex_flow="column-reverse",
                                                           max_height="32rem", overflow_y="auto"))
        self.input = widgets.Textarea(placeholder="Message…", rows=3, continuous_update=True,
                                      tooltip=f"{SHORTCUT} sends", layout=box(width="100%")).add_class("ct2-input")
        self.input.observe(self._on_input, "value")
        self.send_button = self._button("Send", lambda: self.send(), "primary", f"Send ({SHORTCUT})").add_class("ct2-send")
        self.stop_button = self._button("Stop", self.stop, "warning", "Stop the model now; the partial answer is kept")
        self.retry_button = self._button("Retry", self.retry, "", "Ask the last question again")
        self.undo_button = self._button("Undo", self.undo, "", "Drop the last exchange")
        self.new_chat_button = self._button("New chat", self.new_chat, "", "Clear this chat's history")
        self.status = widgets.Label(layout=box(width="100%")).add_class("ct2-status")
        self.system_prompt = widgets.Textarea(value=self.chat.system or "", description="System prompt", placeholder="none",
                                              rows=2, continuous_update=False, style={"description_width": "8rem"},
                                              layout=box(width="100%"))
        self.system_prompt.observe(lambda _change: self._apply_system(), "value")
        for o in OPTIONS:  # the same options, ranges and messages as %%llama and llama.ask
            setattr(self, o.name, widgets.Text(description=o.label, placeholder="model default", tooltip=o.help,
                                               continuous_update=False, style={"description_width": "initial"},
                                               layout=box(width="13rem")))
        numbers = widgets.HBox([getattr(self, o.name) for o in OPTIONS], layout=box(flex_flow="row wrap"))
        self.settings = widgets.Accordion([widgets.VBox([self.system_prompt, numbers])], titles=("Settings",),
                                          selected_index=None)
        buttons = widgets.HBox([self.send_button, self.stop_button, self.retry_button, self.undo_button,
                                self.new_chat_button], layout=box(flex_flow="row wrap"))
        assets = _assets_class()()
        self.root = widgets.VBox([assets, scroller, self.input, buttons, self.status, self.settings]).add_class("ct2-panel")
        self.root.observe(lambda change: self.close() if change["new"] is None else None, "comm")

    def _button(self, label: str, action: Callable[[], Any], style: str, tip: str) -> widgets.Button:
        button = widgets.Button(description=label, button_style=style, tooltip=tip)
        button.on_click(lambda _button: action())
        return button

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.root._repr_mimebundle_(**kwargs)

    @property
    def busy(self) -> bool:
        """Whether this panel is asking the model (from Send until the reply is recorded)."""
        return self._pending is not None

    def send(self, text: str | None = None, *, _restore: Turn | None = None) -> bool:
        """Ask `text` (default: the input box, which is then cleared) on a worker thread; False if nothing was sent."""
        from_input = text is None
        text = (self.input.value if text is None else text).replace(SEND_KEY, "")
        self._apply_system()
        with self._lock:
            if self.busy or not text.strip():
                self._say("Still answering; press Stop first." if self.busy else "Type a message first.", error=True)
                return False
            options = {o.name: getattr(self, o.name).value for o in OPTIONS if getattr(self, o.name).value.strip()}
            try:  # checked here, at once: a bad setting is one line and asks nothing, records nothing
                response = self.session.respond(Request(text, chat=self.chat.name, options=options, origin="panel"))
            except LlamaError as e:
                if _restore is not None:
                    self.chat.record(_restore)
                self._say(str(e), error=True)
                return False
            response.on_waiting.append(self._on_waiting)
            self._pending, self._response, self._waiting = text, response, False
            self._partial = Streaming(remote_images=self.session.settings.remote_images)
            if from_input:
                self.input.value = ""
            self._refresh()
            self._say("loading the model…" if self.session.engine is None else "thinking…")
            self._worker = threading.Thread(target=self._work, args=(response, _restore), daemon=True,
                                            name=f"ct2-panel-{self.chat.name}")
            self._worker.start()
        return True

    def stop(self) -> None:
        """Stop the model within a step; the partial answer is kept, marked stopped."""
        with self._lock:
            response = self._response
        if response is not None:
            response.stop()

    def retry(self) -> bool:
        """Regenerate the last answer: drop the last exchange and ask its question again."""
        turn = self._edit(self.chat.undo)
        return turn is not None and self.send(turn.user, _restore=turn)

    def undo(self) -> None:
        """Drop the last exchange of the chat."""
        if self._edit(self.chat.undo) is not None:
            self._say("Removed the last exchange.")

    def new_chat(self) -> None:
        """Clear the chat's history (its system prompt stays)."""
        if self._edit(self.chat.reset) is not None:
            self._say("New chat.")

    def _edit(self, change: Callable[[], Any]) -> Any:
        try:
            if self.busy:
                raise LlamaError("Still answering; press Stop first.")
            result = change()
            return True if result is None else result
        except LlamaError as e:
            self._say(str(e), error=True)
            return None

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the running reply (if any) to be recorded; True when the panel is idle."""
        if self._worker is not None:
            self._worker.join(timeout)
        return not self.busy

    def close(self) -> None:
        """Stop observing the chat, stop a running reply, and close the widgets."""
        if self._closed:
            return
        self._closed = True
        self._unobserve()
        self.stop()
        todo: list[Any] = [self.root]
        while todo:
            w = todo.pop()
            todo.extend(getattr(w, "children", ()))
            w.close()

    def _work(self, response: Response, restore: Turn | None) -> None:
        error: str | None = None
        interval = 1.0 / max(self.session.settings.updates_per_second, 0.1)
        try:
            last = 0.0
            for _ in response:
                if time.perf_counter() - last >= interval:
                    last = time.perf_counter()
                    self._refresh()
                    self._say(self._line(response))
        except LlamaError as e:
            error = str(e)
        except Exception as e:  # a failure inside generation: one line here; the partial turn is already recorded
            error = f"{type(e).__name__}: {e}"
        finally:
            with self._lock:
                self._pending, self._response, self._waiting = None, None, False
            if response.turn is None:  # nothing was recorded (an error, or stopped before it began)
                if restore is not None:  # a failed retry must not cost the exchange it replaced
                    self.chat.record(restore)
                elif not self.input.value:
                    self.input.value = response.request.prompt
            self._refresh()
            self._say(error if error is not None else self._line(response, final=True), error=error is not None)

    def _on_waiting(self, waiting: bool) -> None:
        self._waiting = waiting
        self._refresh()
        self._say("waiting for the model…" if waiting else "thinking…")

    def _items(self) -> list[tuple[str, str]]:
        response, user = self._response, self._pending
        asking = user is not None and (response is None or response.status in ("pending", "streaming"))
        items: list[tuple[str, str, str]] = []  # (role, markdown, status)
        for turn in list(self.chat.turns):
            items += [("user", turn.user, "complete"), ("assistant", turn.assistant, turn.status)]
        if asking:
            text = response.text if response is not None else ""
            items += [("user", user, "complete"),
                      ("assistant", text or ("*waiting for the model…*" if self._waiting else "…"), "streaming")]
        # the user's own line breaks are kept (markdown would join the lines)
        return [(role, text.replace("\n", "  \n") if role == "user" else text, status) for role, text, status in items]

    def _refresh(self) -> None:
        """Show the chat's turns (and this panel's exchange in flight); enable the buttons that apply now."""
        with self._lock:
            if self._closed:
                return
            items = self._items()
            while len(self._boxes) < len(items):
                self._boxes.append(widgets.Output().add_class("ct2-msg"))
                self._shown.append(("", ""))
            remote_images = self.session.settings.remote_images
            for i, (role, text, status) in enumerate(items):
                box, (old_role, old_text) = self._boxes[i], self._shown[i]
                if role != old_role:
                    box.remove_class(f"ct2-{old_role}")
                    box.add_class(f"ct2-{role}")
                if (role, text + status) != (old_role, old_text):
                    # The untrusted text as sanitised HTML (never text/markdown); a reply being written
                    # re-renders only its last block.
                    data = ({"text/html": self._partial.html(text)} if status == "streaming"
                            else reply_bundle(text, status, remote_images=remote_images))
                    box.outputs = (_message(role, data),)
                    self._shown[i] = (role, text + status)
            extra = self._boxes[len(items):]
            del self._boxes[len(items):], self._shown[len(items):]
            if tuple(self.messages.children) != tuple(self._boxes):
                self.messages.children = tuple(self._boxes)
            for box in extra:
                box.close()
            busy, empty = self.busy, not self.chat.turns
            self.send_button.disabled, self.stop_button.disabled = busy, not busy
            for button in (self.retry_button, self.undo_button, self.new_chat_button):
                button.disabled = busy or empty

    def _say(self, text: str, error: bool = False) -> None:
        with self._lock:
            self.status.value = " ".join(inert_text(text).split())  # always one line, never markup
            (self.status.add_class if error else self.status.remove_class)("ct2-error")

    def _idle_line(self) -> str:
        e = self.session.engine
        model = f"{e.name} · {e.device} · {e.compute_type}" if e else f"the first message loads {self.session.settings.model}"
        return f"chat {self.chat.name!r} · {model} · {SHORTCUT} sends"

    def _line(self, response: Response, final: bool = False) -> str:
        s, e = response.stats, response.engine
        if e is None:  # it ended while it waited for the model
            return f"{response.status} before the model began" if final else "thinking…"
        parts = [e.name, e.device, f"{s.reply_tokens} tokens", f"{s.tokens_per_s:.1f} tokens/s"]
        if final and response.status != "complete":
            parts.append(response.status)
        return " · ".join(parts + (response.notices if final else []))

    def _on_chat_changed(self, chat: Chat) -> None:
        self._refresh()
        if (self.system_prompt.value.strip() or None) != chat.system:
            self.system_prompt.value = chat.system or ""

    def _apply_system(self) -> None:
        if (value := self.system_prompt.value.strip() or None) != self.chat.system:
            self.chat.set_system(value)

    def _on_input(self, change: dict[str, Any]) -> None:
        if SEND_KEY in change["new"]:
            self.input.value = change["new"].replace(SEND_KEY, "")
            self.send()
