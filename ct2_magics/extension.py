"""Registering and unregistering the extension on an IPython shell, symmetrically."""

from __future__ import annotations

import sys
from typing import Any

from .errors import LlamaError

_state: dict[int, dict[str, Any]] = {}


def _show_llama_error(shell: Any, etype: type, value: BaseException, tb: Any, tb_offset: Any = None) -> None:
    # llama.ask(...) and friends in a cell: one line, as for a magic's usage error.
    print(f"{etype.__name__}: {value}", file=sys.stderr)


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

    shell.events.register("pre_run_cell", remember_cell)
    session.notify = print
    custom = not shell.custom_exceptions
    if custom:
        shell.set_custom_exc((LlamaError,), _show_llama_error)
    _state[id(shell)] = {"magics": magics, "hook": remember_cell, "custom_exc": custom, "session": session}


def unload(shell: Any) -> None:
    state = _state.pop(id(shell), None)
    if state is None:
        return
    manager = shell.magics_manager
    for kind in ("line", "cell"):
        manager.magics[kind].pop("llama", None)
    manager.registry.pop(type(state["magics"]).__name__, None)
    shell.events.unregister("pre_run_cell", state["hook"])
    session = state["session"]
    if session.settings in shell.configurables:
        shell.configurables.remove(session.settings)
    if state["custom_exc"] and shell.custom_exceptions == (LlamaError,):
        shell.custom_exceptions = ()
    session.notify = lambda line: None
    session.unload()
