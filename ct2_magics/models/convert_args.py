"""The arguments of `ct2-magics convert` and `%llama convert`, declared once for both, and what they run."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from ct2_magics.models.quantization import KEEP, default_storage, help_text


def _quantization(text: str) -> str | None:
    """--quantization: 'none' keeps the checkpoint's dtype (None for convert()); convert() checks the others."""
    return None if text.strip().lower() == KEEP else text.strip()


def add_convert_arguments(parser: Any) -> None:
    """The arguments of `ct2-magics convert` and `%llama convert` (an argparse parser or IPython's MagicArgumentParser)."""
    parser.add_argument("source", help="a .gguf file, a model folder, or a Hugging Face repo id")
    parser.add_argument("output", help="directory to write the converted model to")
    parser.add_argument("--quantization", type=_quantization, default=default_storage(elsewhere=True),
                        help=f"weight type: {help_text(elsewhere=True)}, or {KEEP} to keep the checkpoint's dtype")
    parser.add_argument("--revision", default=None, help="branch, tag or commit of a Hub repo")
    parser.add_argument("--file", default=None, help="which GGUF of a repo or folder: a file name or a quantization (Q4_K_M)")
    parser.add_argument("--force", action="store_true", help="replace a non-empty output directory")


def run_convert(args: argparse.Namespace, progress: Callable[[str], None] = print,
                bar: Callable[[str, int], Any] | None = None) -> int:
    """Convert what the parsed `args` say."""
    from ct2_magics.models.convert import convert
    from ct2_magics.models.libraries import import_converting, import_libraries

    import_libraries()  # whole, Ctrl-C or not: an import cut short in a kernel breaks it until a restart
    import_converting()
    convert(args.source, args.output, quantization=args.quantization, revision=args.revision, file=args.file,
            force=args.force, progress=progress, bar=bar)
    return 0
