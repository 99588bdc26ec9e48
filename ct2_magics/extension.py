"""Registering and unregistering the extension on an IPython shell, symmetrically."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError

from .errors import LlamaError

if TYPE_CHECKING:
    from .session import Session
    from .store import AutoSaver

_state: dict[int, dict[str, Any]] = {}


def _show_llama_error(shell: Any, etype: type, value: BaseException, tb: Any, tb_offset: Any = None) -> None:
    # llama.ask(...) and friends in a cell: one line, as for a magic's usage error.
    from .markup import inert_text

    print(inert_text(f"{etype.__name__}: {value}"), file=sys.stderr)


def _notify(line: str) -> None:
    from .markup import inert_text

    print(inert_text(line))


def _is_real_failure(error: BaseException | None) -> bool:
    # Usage errors and one-line LlamaErrors are shown without a traceback: nothing there to explain.
    return error is not None and not isinstance(error, (UsageError, KeyboardInterrupt, LlamaError))


def _start_autosave(shell: Any, session: Session) -> AutoSaver | None:
    """Restore this notebook's saved chats and save them as they change; None outside a notebook."""
    from .store import AutoSaver, count, notebook_of

    notebook = notebook_of(shell)
    if notebook is None:
        return None
    saver = AutoSaver(session, notebook)
    if session.settings.autosave:
        back = saver.restore()
        if back and not session.settings.quiet:
            session.notify(f"Restored {count(back)} saved for this notebook.")
    saver.start()
    return saver


def load(shell: Any) -> None:
    from .magics import LlamaMagics
    from .session import get_session

    if id(shell) in _state:
        return
    session = get_session()
    session.settings.update_config(shell.config)
    if session.settings not in shell.configurables:
        shell.configurables.append(session.settings)
    magics = LlamaMagics(shell, session)
    shell.register_magics(magics)

    def remember_cell(info: Any) -> None:
        magics.cell_id = getattr(info, "cell_id", None)

    def remember_error(result: Any) -> None:
        # Recorded after every cell, so %llama explain finds the last real failure even when another
        # magic's usage error came after it.
        error = result.error_in_exec or result.error_before_exec
        if _is_real_failure(error):
            magics._last_error = error

    shell.events.register("pre_run_cell", remember_cell)
    shell.events.register("post_run_cell", remember_error)
    session.notify = _notify
    saver = _start_autosave(shell, session)
    custom = not shell.custom_exceptions
    if custom:
        shell.set_custom_exc((LlamaError,), _show_llama_error)
    _state[id(shell)] = {"magics": magics, "hook": remember_cell, "error_hook": remember_error, "custom_exc": custom,
                         "session": session, "saver": saver}


def unload(shell: Any) -> None:
    state = _state.pop(id(shell), None)
    if state is None:
        return
    manager = shell.magics_manager
    for kind in ("line", "cell"):
        manager.magics[kind].pop("llama", None)
    manager.registry.pop(type(state["magics"]).__name__, None)
    shell.events.unregister("pre_run_cell", state["hook"])
    shell.events.unregister("post_run_cell", state["error_hook"])
    if state["saver"] is not None:
        state["saver"].stop()
    session = state["session"]
    if session.settings in shell.configurables:
        shell.configurables.remove(session.settings)
    if state["custom_exc"] and shell.custom_exceptions == (LlamaError,):
        shell.custom_exceptions = ()
    session.notify = lambda line: None
    session.unload()
