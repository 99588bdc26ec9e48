"""The libraries a load needs, imported whole on the first load: a Ctrl-C that comes meanwhile waits for them.

An import cut short by KeyboardInterrupt does not undo what it did: C extensions stay initialised, submodules stay
in sys.modules, an import lock can stay taken. The next import of the same library trips over the half: seen after
interrupting a first `%llama load` in a fresh kernel, `AttributeError: module 'numpy' has no attribute 'void'`,
torch's `RuntimeError: Only a single TORCH_LIBRARY can be used...`, `Could not import module 'AutoTokenizer'`, and a
second load that hung for good, all until the kernel was restarted. So the first load imports them (numpy,
ctranslate2, tokenizers, huggingface_hub, transformers and its PreTrainedTokenizerFast) with Ctrl-C held on the
main thread, then raises the interrupt as one line. Later loads find them imported.

torch stays out of a load where it can: transformers' AutoTokenizer imports configuration_utils, which imports torch
whenever it is installed (1-2 s and ~180 MB, for nothing ct2-magics uses). A tokenizer_config.json that names
PreTrainedTokenizerFast (every model ct2-magics converts, and Llama 3's) is loaded through that class, which is what
AutoTokenizer would pick; any other goes through AutoTokenizer, itself imported whole. transformers still sees torch
as installed: code that uses both later in the kernel works as before.

Nothing heavy is imported before the first load: `%load_ext ct2_magics` stays fast.
"""

from __future__ import annotations

import importlib
import importlib.util
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ct2_magics.errors import LlamaInterrupted
from ct2_magics.models.modelfile import read_json
from ct2_magics.models.quiet import quiet_libraries

T = TypeVar("T")

# Imported in this order; the optional ones only when installed (each is a few tens of milliseconds).
REQUIRED = ("numpy", "ctranslate2", "tokenizers", "huggingface_hub", "transformers")
# What a conversion (GGUF, safetensors) adds: ctranslate2's model specs, which import torch whenever it is installed,
# and the readers (ml_dtypes alone takes about a second to import, so a load of a converted model never imports them).
CONVERTING = ("ctranslate2.specs",)
CONVERTING_OPTIONAL = ("gguf", "gguf.quants", "safetensors", "ml_dtypes")
OPTIONAL = ("jinja2",)
# transformers' lazy attributes every load reaches (none of them imports torch).
TRANSFORMERS_NAMES = ("PreTrainedTokenizerFast",)
# tokenizer_class values that PreTrainedTokenizerFast loads as AutoTokenizer would (TokenizersBackend: transformers 5).
PLAIN_FAST = frozenset({"PreTrainedTokenizerFast", "TokenizersBackend"})
INTERRUPTED = ("the load stopped once its libraries were imported (an import cut short would have broken "
               "them until a restart); nothing was loaded: load again.")

_ready = False


def import_libraries() -> None:
    """Import what a load needs, complete; a Ctrl-C on the main thread meanwhile ends it as LlamaInterrupted, after."""
    global _ready
    if not _ready:
        whole(_import_all)
        _ready = True


def import_converting() -> None:
    """Import what a conversion adds, complete (see import_libraries)."""
    names = CONVERTING + tuple(n for n in CONVERTING_OPTIONAL if n not in sys.modules and _installed(n))
    if not all(name in sys.modules for name in names):
        whole(lambda: [_import(name) for name in names])


def tokenizer_class(model_dir: Path) -> Any:
    """The transformers class to load model_dir's tokenizer with: PreTrainedTokenizerFast when its tokenizer_config.json
    names it (no torch), else AutoTokenizer (imported whole: it brings torch when installed)."""
    import transformers

    if read_json(Path(model_dir) / "tokenizer_config.json").get("tokenizer_class") in PLAIN_FAST:
        return transformers.PreTrainedTokenizerFast
    return whole(lambda: transformers.AutoTokenizer)


def whole(work: Callable[[], T]) -> T:
    """work() with Ctrl-C held on the main thread; one that came meanwhile is raised after, as LlamaInterrupted."""
    held: list[int] = []
    hold = lambda signum, frame: held.append(signum)  # noqa: E731
    previous = _put(hold)
    try:
        result = work()
    finally:
        if previous is not None and signal.getsignal(signal.SIGINT) is hold:
            signal.signal(signal.SIGINT, previous)
    if held:
        raise LlamaInterrupted(INTERRUPTED)
    return result


def _import_all() -> None:
    """Each library in turn. One that fails to import is left for the load to report where it always did."""
    with quiet_libraries():  # transformers' first import logs notices
        for name in REQUIRED + tuple(n for n in OPTIONAL if _installed(n)):
            _import(name)
        transformers = sys.modules.get("transformers")
        for name in TRANSFORMERS_NAMES if transformers is not None else ():
            try:
                getattr(transformers, name)
            except Exception:
                continue


def _import(name: str) -> None:
    try:
        importlib.import_module(name)
    except Exception:
        pass


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
