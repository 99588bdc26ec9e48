"""Registering and unregistering the extension on an IPython shell, symmetrically."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from traitlets import TraitError

from ct2_magics.errors import LlamaError

if TYPE_CHECKING:
    from ct2_magics.core.session import Session
    from ct2_magics.notebook.store import AutoSaver

_state: dict[int, dict[str, Any]] = {}


def _show_llama_error(shell: Any, etype: type, value: BaseException, tb: Any, tb_offset: Any = None) -> None:
    # llama.ask(...) and friends in a cell: one line, as for a magic's usage error.
    from ct2_magics.notebook.markup import inert_text

    print(inert_text(f"{etype.__name__}: {value}"), file=sys.stderr)


def _notify(line: str) -> None:
    from ct2_magics.notebook.markup import inert_text

    print(inert_text(line))


def _start_autosave(shell: Any, session: Session) -> AutoSaver | None:
    """Restore this notebook's saved chats and save them as they change; None outside a notebook."""
    from ct2_magics.notebook.chat_files import notebook_of
    from ct2_magics.notebook.store import AutoSaver, restored_line

    notebook = notebook_of(shell)
    if notebook is None:
        return None
    saver = AutoSaver(session, notebook)
    if session.settings.autosave:
        back = saver.restore()
        if back and (saver.renamed or not session.settings.quiet):  # a chat under a new name is said even when quiet
            session.notify(restored_line(back, saver.renamed))
    saver.start()
    return saver


def load(shell: Any) -> None:
    from ct2_magics.core.session import get_session
    from ct2_magics.notebook.magics import LlamaMagics
    from ct2_magics.notebook.render import layer_bar

    if id(shell) in _state:
        return
    session = get_session()
    session.notify = _notify
    session.conversion_bar = layer_bar
    try:  # a bad value in ipython_config.py is one line; the other settings still apply
        session.settings.update_config(shell.config)
    except TraitError as e:
        session.notify(f"Ignored the LlamaSettings from the IPython config: {e}")
    if session.settings not in shell.configurables:
        shell.configurables.append(session.settings)
    magics = LlamaMagics(shell, session)
    shell.register_magics(magics)
    magics.attach()
    saver = _start_autosave(shell, session)
    custom = not shell.custom_exceptions
    if custom:
        shell.set_custom_exc((LlamaError,), _show_llama_error)
    _state[id(shell)] = {"magics": magics, "custom_exc": custom, "session": session, "saver": saver}


def unload(shell: Any) -> None:
    state = _state.pop(id(shell), None)
    if state is None:
        return
    manager = shell.magics_manager
    for kind in ("line", "cell"):
        manager.magics[kind].pop("llama", None)
    manager.registry.pop(type(state["magics"]).__name__, None)
    state["magics"].detach()
    if state["saver"] is not None:
        state["saver"].stop()
    session = state["session"]
    for configurable in (session.settings, state["magics"]):  # IPython's Magics() adds itself there too
        if configurable in shell.configurables:
            shell.configurables.remove(configurable)
    if state["custom_exc"] and shell.custom_exceptions == (LlamaError,):
        shell.custom_exceptions = ()
    session.notify = lambda line: None
    session.conversion_bar = None
    session.unload()
