"""ct2-magics: a local Llama model in the Jupyter kernel (%%llama, %llama, a chat panel), on CTranslate2."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["llama", "load_ipython_extension", "unload_ipython_extension"]


def __getattr__(name: str) -> Any:
    # `from ct2_magics import llama` gives the kernel-wide session without importing heavy modules.
    if name == "llama":
        from ct2_magics.api import get_llama

        return get_llama()
    raise AttributeError(name)


def load_ipython_extension(ipython: Any) -> None:
    """%load_ext ct2_magics: register the magics over the kernel-wide session."""
    from ct2_magics.notebook.extension import load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """%unload_ext ct2_magics: unregister everything and free the model; chats stay in the session."""
    from ct2_magics.notebook.extension import unload

    unload(ipython)
