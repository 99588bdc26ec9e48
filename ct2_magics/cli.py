"""The `ct2-magics` console script, and the `convert` arguments it shares with `%llama convert`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ct2_magics.errors import LlamaError

QUANTIZATIONS = "int8_float16 (default), int8, int8_float32, int16, float16, bfloat16, float32, or none"


def _quantization(text: str) -> str | None:
    """--quantization: 'none' keeps the checkpoint's dtype (None for convert()); convert() checks the others."""
    return None if text.strip().lower() == "none" else text.strip()


def add_convert_arguments(parser: Any) -> None:
    """The arguments of `ct2-magics convert` and `%llama convert`, declared once for both."""
    parser.add_argument("source", help="a .gguf file, a model folder, or a Hugging Face repo id")
    parser.add_argument("output", help="directory to write the converted model to")
    parser.add_argument("--quantization", type=_quantization, default="int8_float16",
                        help=f"weight type: {QUANTIZATIONS} to keep the checkpoint's dtype")
    parser.add_argument("--revision", default=None, help="branch, tag or commit of a Hub repo")
    parser.add_argument("--file", default=None, help="which GGUF of a repo or folder: a file name or a quantization (Q4_K_M)")
    parser.add_argument("--force", action="store_true", help="replace a non-empty output directory")


def run_convert(args: argparse.Namespace, progress: Callable[[str], None] = print) -> int:
    """Convert what the parsed `args` say."""
    from ct2_magics.models.convert import convert

    convert(args.source, args.output, quantization=args.quantization, revision=args.revision, file=args.file,
            force=args.force, progress=progress)
    return 0


def _add_convert(subparsers: argparse._SubParsersAction) -> None:
    """Declare the `convert` subcommand."""
    parser = subparsers.add_parser(
        "convert",
        help="convert a GGUF file or a transformers model (local or a Hub repo id) to CTranslate2",
        description=(
            "Convert a GGUF file or a Hugging Face transformers model to a CTranslate2 model directory, "
            "keeping Llama 3.1/3.2 RoPE scaling and writing the tokenizer and chat template beside it. "
            "GGUF files and Llama/Qwen2 safetensors models need no torch."
        ),
    )
    add_convert_arguments(parser)
    parser.set_defaults(handler=run_convert)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="ct2-magics", description="Tools for the ct2_magics Jupyter extension.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in _SUBCOMMANDS:
        add(subparsers)
    return parser


_SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_convert]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse `argv`, run the subcommand, turn a LlamaError into one stderr line."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help and on usage errors
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return int(args.handler(args))
    except LlamaError as exc:
        message = " ".join(str(exc).split())
        print(f"ct2-magics: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ct2-magics: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
