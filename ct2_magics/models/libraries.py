"""The libraries a load needs, imported whole on the first load: a Ctrl-C that comes meanwhile waits for them.

An import cut short by KeyboardInterrupt does not undo what it did: C extensions stay initialised, submodules stay
in sys.modules, an import lock can stay taken. The next import of the same library trips over the half: seen after
interrupting a first `%llama load` in a fresh kernel, `AttributeError: module 'numpy' has no attribute 'void'`,
torch's `RuntimeError: Only a single TORCH_LIBRARY can be used...`, and a second load that hung for good, all
until the kernel was restarted. So the first load imports them (numpy, ctranslate2, tokenizers, huggingface_hub,
transformers with its tokenizer classes, and torch, which transformers imports whenever it is installed) with
Ctrl-C held on the main thread, then raises the interrupt as one line. Later loads find them imported.

Nothing heavy is imported before the first load: `%load_ext ct2_magics` stays fast.
"""

from __future__ import annotations

import importlib
import importlib.util
import signal
import sys
import threading
from typing import Any

from ct2_magics.errors import LlamaInterrupted
from ct2_magics.models.quiet import quiet_libraries

# Imported in this order; the optional ones only when installed (each is a few tens of milliseconds).
REQUIRED = ("numpy", "ctranslate2", "ctranslate2.specs", "tokenizers", "huggingface_hub", "transformers")
OPTIONAL = ("gguf", "gguf.quants", "safetensors", "ml_dtypes", "jinja2")
# transformers' lazy attributes a load reaches: AutoTokenizer brings configuration_utils and with it torch.
TRANSFORMERS_NAMES = ("AutoTokenizer", "PreTrainedTokenizerFast", "AutoConfig")
INTERRUPTED = ("the load stopped once its libraries were imported (an import cut short would have broken "
               "them until a restart); nothing was loaded: load again.")

_ready = False


def import_libraries() -> None:
    """Import what a load needs, complete; a Ctrl-C on the main thread meanwhile ends it as LlamaInterrupted, after."""
    global _ready
    if _ready:
        return
    held: list[int] = []
    hold = lambda signum, frame: held.append(signum)  # noqa: E731
    previous = _put(hold)
    try:
        _import_all()
    finally:
        if previous is not None and signal.getsignal(signal.SIGINT) is hold:
            signal.signal(signal.SIGINT, previous)
    _ready = True
    if held:
        raise LlamaInterrupted(INTERRUPTED)


def _import_all() -> None:
    """Each library in turn. One that fails to import is left for the load to report where it always did."""
    with quiet_libraries():  # transformers' first import logs notices
        for name in REQUIRED + tuple(n for n in OPTIONAL if _installed(n)):
            try:
                importlib.import_module(name)
            except Exception:
                continue
        transformers = sys.modules.get("transformers")
        for name in TRANSFORMERS_NAMES if transformers is not None else ():
            try:
                getattr(transformers, name)
            except Exception:
                continue


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _put(handler: Any) -> Any:
    """Make `handler` take Ctrl-C (main thread, where one would raise); the handler it replaced, or None if it did not."""
    if threading.current_thread() is not threading.main_thread():
        return None  # KeyboardInterrupt only ever reaches the main thread
    previous = signal.getsignal(signal.SIGINT)
    if not callable(previous):  # SIG_IGN or SIG_DFL: nothing raises KeyboardInterrupt
        return None
    signal.signal(signal.SIGINT, handler)
    return previous
