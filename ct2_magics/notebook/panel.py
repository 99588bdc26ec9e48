"""The chat panel: one AnyWidget (panel_state.py, static/panel.js) over one chat of the session, inline under a
cell or in JupyterLab's side area; replies stream on a worker thread into a synced trait, throttled."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from ct2_magics.core.conversation import Chat, Turn
from ct2_magics.core.options import OPTIONS
from ct2_magics.core.response import Request, Response
from ct2_magics.core.session import Session
from ct2_magics.errors import LlamaError
from ct2_magics.notebook import panel_state as view
from ct2_magics.notebook.markup import Streaming, inert_text
from ct2_magics.notebook.panel_state import Button, Field, PanelWidget, message

ACTIONS = ("send", "stop", "retry", "undo", "new_chat", "undo_new_chat")


class ChatPanel:
    """A chat view over `session.chat(name)`: messages, input, Send/Stop/Retry/Undo/New chat, settings, status.

    `root` is the widget; `send`, `stop`, `retry`, `undo`, `new_chat` and `undo_new_chat` are what its
    buttons do; `input`, `status`, `system_prompt` and one field per option (`temperature`, ...) are handles
    on what the page shows."""

    def __init__(self, session: Session, chat: str = "default", *, side: bool = False) -> None:
        self.session = session
        self.chat: Chat = session.chat(chat)
        self._lock = threading.RLock()
        self._worker: threading.Thread | None = None
        self._response: Response | None = None  # set once the worker has built it
        self._pending: str | None = None  # the user text this panel is asking about, until its turn is recorded
        self._waiting = self._closed = False
        self._cleared: list[Turn] = []  # what the last New chat cleared, while Undo new chat can bring it back
        self._rendered: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._partial = Streaming()  # renders the reply being written
        self.sidecar: Any = None  # the side area's widget (jupyterlab-sidecar), once open_side has run
        self.root = PanelWidget(chat_name=self.chat.name, system_prompt=self.chat.system or "")
        self.root.on_msg(self._on_msg)
        self.root.observe(lambda _change: self._apply_system(), "system_prompt")
        self.root.observe(lambda change: self.close() if change["new"] is None else None, "comm")
        self.input = Field(lambda: self.root.draft, lambda text: setattr(self.root, "draft", text), view.PLACEHOLDER)
        self.status = view.Status(self.root)
        self.system_prompt = Field(lambda: self.root.system_prompt, lambda text: setattr(self.root, "system_prompt", text))
        for o in OPTIONS:  # the same options, ranges and messages as %%llama and llama.ask
            setattr(self, o.name, view.option_field(self.root, o.name))
        editable = lambda: not self.root.busy and bool(self.root.messages)
        self.send_button = Button("Send", lambda: self.send(), lambda: not self.root.busy)
        self.stop_button = Button("Stop", self.stop, lambda: self.root.busy)
        self.retry_button = Button("Retry", self.retry, editable)
        self.undo_button = Button("Undo", self.undo, editable)
        self.new_chat_button = Button("New chat", self.new_chat, editable)
        self.undo_new_chat_button = Button("Undo new chat", self.undo_new_chat,
                                           lambda: not self.root.busy and self.root.cleared > 0)
        self._unobserve = self.chat.observe(self._on_chat_changed)
        self._refresh()
        self._say(view.idle_line(self.session, self.chat.name))
        if side:
            self.open_side()

    # -- showing ---------------------------------------------------------------------------------------
    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.root._repr_mimebundle_(**kwargs)  # opened with side=True, the page shows one line here instead

    def note(self) -> dict[str, str]:
        """The line shown under the panel: it explains a page where the panel cannot show (its kernel has gone)."""
        return view.note_bundle(view.gone_note(self.chat.name), self.root.note_id)

    def open_side(self) -> None:
        """Show the panel in JupyterLab's side area (jupyterlab-sidecar); the same chat, the same widget."""
        from sidecar import Sidecar  # a dependency; its front end ships prebuilt with it

        self.root.side = True
        if self.sidecar is None:
            self.sidecar = Sidecar(title=f"Chat: {self.chat.name}"[:40])
            self.sidecar.outputs = ({"output_type": "display_data", "data": self.root._repr_mimebundle_()[0],
                                      "metadata": {}},)
            self.root.sidecar_id = self.sidecar.model_id

    @property
    def messages(self) -> list[dict[str, Any]]:
        """What the panel shows: the chat's turns, then this panel's exchange in flight ({"role", "html", "text", "status"})."""
        return list(self.root.messages) + list(self.root.pending)

    @property
    def busy(self) -> bool:
        """Whether this panel is asking the model (from Send until the reply is recorded)."""
        return self._pending is not None

    # -- actions ---------------------------------------------------------------------------------------
    def send(self, text: str | None = None, *, _restore: Turn | None = None, _typed: bool = False) -> bool:
        """Ask `text` (default: the input box, which is then cleared) on a worker thread; False if nothing was sent."""
        from_input = text is None
        text = self.input.value if text is None else text
        self._apply_system()
        with self._lock:
            if self.busy or not text.strip():
                self._say("Still answering; press Stop first." if self.busy else "Type a message first.", error=True)
                return False
            options = {name: value for name, value in self.root.options.items() if str(value).strip()}
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
            if from_input or _typed:
                self.root.draft = ""
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
        """Clear the chat's history (its system prompt stays); `undo_new_chat` brings it back until the chat moves on."""
        turns = list(self.chat.turns)
        if self._edit(self.chat.reset) is None:
            return
        if not turns:
            self._say("New chat.")
        else:
            with self._lock:
                self._cleared = turns
                self.root.cleared = len(turns)
            n = f"{len(turns)} exchange{'s' if len(turns) != 1 else ''}"
            self._say(f"New chat: {n} cleared. Undo new chat brings {'them' if len(turns) != 1 else 'it'} back.")

    def undo_new_chat(self) -> bool:
        """Bring back the turns the last New chat cleared, while the chat has had no new turn since."""
        with self._lock:
            turns, self._cleared = self._cleared, []
            self.root.cleared = 0
        if not turns:
            self._say("There is no New chat to undo.", error=True)
            return False
        if self._edit(lambda: self.chat.replace(turns, self.chat.system)) is None:
            return False
        self._say(f"Brought back {len(turns)} exchange{'s' if len(turns) != 1 else ''}.")
        return True

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
        """Stop observing the chat, stop a running reply, and close the widget (and its side area)."""
        if self._closed:
            return
        self._closed = True
        self._unobserve()
        self.stop()
        self.root.close()
        if self.sidecar is not None:
            self.sidecar.close()

    # -- from the page -----------------------------------------------------------------------------------
    def _on_msg(self, _widget: Any, content: Any, _buffers: Any) -> None:
        """A press or the typed text, sent by the page; answered with an ack so that the page knows the kernel heard."""
        if not isinstance(content, dict) or content.get("action") not in ACTIONS:
            return
        action, ok = content["action"], True
        try:
            if action in ("send", "retry"):
                self._take_settings(content)
            if action == "send":
                ok = self.send(str(content.get("text", "")), _typed=True)
            elif action == "retry":
                ok = self.retry()
            elif action == "undo_new_chat":
                ok = self.undo_new_chat()
            else:
                getattr(self, action)()
        except Exception as e:  # a message from the page must never raise in the kernel
            self._say(f"{type(e).__name__}: {e}", error=True)
            ok = False
        self.root.send({"type": "ack", "seq": content.get("seq"), "ok": bool(ok), "clear": action == "send" and bool(ok)})

    def _take_settings(self, content: dict[str, Any]) -> None:
        """The settings as the page had them at the press (a state sync may still be on its way)."""
        options = content.get("options")
        if isinstance(options, dict):
            self.root.options = {o.name: str(options.get(o.name, "")) for o in OPTIONS}
        if isinstance(content.get("system"), str):
            self.root.system_prompt = content["system"]

    # -- the worker and the view ---------------------------------------------------------------------------
    def _work(self, response: Response, restore: Turn | None) -> None:
        error: str | None = None
        interval = 1.0 / max(self.session.settings.updates_per_second, 0.1)
        try:
            last = 0.0
            for _ in response:
                if time.perf_counter() - last >= interval:
                    last = time.perf_counter()
                    self._refresh_pending()
                    self._say(view.reply_line(response))
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
            self._say(error if error is not None else view.reply_line(response, final=True), error=error is not None)

    def _on_waiting(self, waiting: bool) -> None:
        self._waiting = waiting
        self._refresh_pending()
        self._say("waiting for the model…" if waiting else "thinking…")

    def _pending_messages(self) -> list[dict[str, Any]]:
        response, user = self._response, self._pending
        if user is None or (response is not None and response.status not in ("pending", "streaming")):
            return []
        text = response.text if response is not None else ""
        shown = self._partial.html(text) if text else message("assistant", "*waiting for the model…*" if self._waiting
                                                              else "…")["html"]
        return [message("user", user), {"role": "assistant", "html": shown, "text": inert_text(text), "status": "streaming"}]

    def _refresh_pending(self) -> None:
        with self._lock:
            if not self._closed:
                self.root.pending = self._pending_messages()

    def _refresh(self) -> None:
        """Show the chat's turns and this panel's exchange in flight, and whether it is busy."""
        with self._lock:
            if self._closed:
                return
            turns = list(self.chat.turns)
            with self.root.hold_sync():
                self.root.messages = view.turn_messages(turns, self._rendered, self.session.settings.remote_images)
                self.root.pending = self._pending_messages()
                self.root.busy = self.busy

    def _say(self, text: str, error: bool = False) -> None:
        with self._lock:
            with self.root.hold_sync():
                self.root.status = " ".join(inert_text(text).split())  # always one line, never markup
                self.root.status_error = error

    def _on_chat_changed(self, chat: Chat) -> None:
        if chat.turns and self._cleared:  # the chat has moved on: New chat can no longer be undone
            with self._lock:
                self._cleared = []
                self.root.cleared = 0
        self._refresh()
        if (self.root.system_prompt.strip() or None) != chat.system:
            self.root.system_prompt = chat.system or ""

    def _apply_system(self) -> None:
        if (value := self.root.system_prompt.strip() or None) != self.chat.system:
            self.chat.set_system(value)
