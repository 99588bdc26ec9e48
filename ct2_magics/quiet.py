"""Keeping library notices that mean nothing to the user out of the cell."""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Iterator


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Keep library notices (tokenizer regex hints, deprecations) out of the cell."""
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
