"""Keeping library notices that mean nothing to the user out of the cell."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator

_VERBOSITY = "TRANSFORMERS_VERBOSITY"
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR,
           "critical": logging.CRITICAL}


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Keep library notices (PyTorch not found, tokenizer regex hints, deprecations) out of the cell."""
    # transformers sets its log level from TRANSFORMERS_VERBOSITY when it is first imported, and logs
    # "PyTorch was not found" right then: a first import inside this block must see "error" there.
    first_import = "transformers" not in sys.modules
    verbosity = os.environ.get(_VERBOSITY)
    if first_import:
        os.environ[_VERBOSITY] = "error"
    # huggingface_hub sets its logger's level when its logging module is first imported, which its lazy imports
    # can do inside this block (huggingface_hub.list_repo_files): import it first, or its retry warnings show.
    import huggingface_hub.utils.logging  # noqa: F401

    loggers = [logging.getLogger(n) for n in ("transformers", "huggingface_hub")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        if first_import:
            if verbosity is None:
                os.environ.pop(_VERBOSITY, None)
            else:
                os.environ[_VERBOSITY] = verbosity
            if "transformers" in sys.modules:  # the level the user's own use of transformers would have had
                loggers[0].setLevel(_LEVELS.get((verbosity or "warning").lower(), logging.WARNING))
