"""The `ct2-magics` console script: `ct2-magics convert`, with the arguments `%llama convert` takes too."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ct2_magics.errors import LlamaError
from ct2_magics.models.convert_args import add_convert_arguments, run_convert


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with its one subcommand, convert."""
    parser = argparse.ArgumentParser(prog="ct2-magics", description="Tools for the ct2_magics Jupyter extension.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    convert = subparsers.add_parser(
        "convert",
        help="convert a GGUF file or a transformers model (local or a Hub repo id) to CTranslate2",
        description=(
            "Convert a GGUF file or a Hugging Face transformers model to a CTranslate2 model directory, "
            "keeping Llama 3.1/3.2 RoPE scaling and writing the tokenizer and chat template beside it. "
            "GGUF files and Llama/Qwen2 safetensors models need no torch."
        ),
    )
    add_convert_arguments(convert)
    convert.set_defaults(handler=lambda args: run_convert(args, bar=_bar))
    return parser


def _bar(description: str, total: int) -> object:
    from tqdm import tqdm  # text on stderr, one step a layer

    return tqdm(total=total, desc=description, unit="layer", leave=False, dynamic_ncols=True)


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
