"""What %%llama and %llama accept: the parsers (the sampling options from options.py), the help text, and the
`%llama system` line, read as typed."""

from __future__ import annotations

import difflib
import re
import shlex

from IPython.core.error import UsageError
from IPython.core.magic_arguments import MagicArgumentParser

from ct2_magics.core import options
from ct2_magics.errors import LlamaError

HELP = "\n".join([
    "%%llama [options]        ask the model; the cell is the prompt, the reply streams into the cell",
    "  -s/--system TEXT       system prompt for this chat        --chat NAME   chat to use (default: default)",
    "  --new                  clear the chat first               --once        neither read nor write history",
    *options.help_lines(),
    "  -o/--out VAR           store the reply in variable VAR (with -f code: the code; -f json: the parsed value)",
    "  -f/--format F          markdown (default) | text: plain text | code: offer the reply's first ``` block",
    "                         as the next cell, never run | json: the first JSON value in the reply, fenced",
    "                         or not; if it holds none (or no code block) that is one error line and VAR holds",
    "                         the raw reply as a str",
    "  --schema NAME          the reply is JSON that fits the schema in variable NAME (a JSON Schema dict, a",
    "                         pydantic model, a dataclass or a TypedDict); with -o VAR, VAR holds its value",
    "  --no-vars              send {...} as written",
    '  --choices "A, B, C"    reply with the most probable of these labels (comma-separated), each scored whole;',
    "                         shows each one's probability as a bar; -o VAR stores the label; no sampling options",
    "  --probs [K]            tint each token of the reply by its probability; hover a token for the K (default",
    "                         5, at most 20) tokens the model weighed at that step, the chosen one marked",
    "  In the cell, {name} is that variable's value, {In[3]} / {Out[3]} a cell's input / output ({In[-1]}: the",
    "  cell before this one); tables and long values are cut short; {{ and }} are literal braces; anything else",
    "  in braces stays as written.",
    "%llama explain [--chat NAME] [-n N] [-t T]",
    "                         explain the last error (its cell and traceback) for a learner; recorded in a fresh",
    "                         chat named explain (ask follow-ups with %%llama --chat explain); --chat NAME adds",
    "                         it to that chat instead",
    "%llama load MODEL [--device auto|cpu|cuda] [--compute-type T] [--revision R] [--file F] [--quantization Q]",
    "                         MODEL: smollm2, a .gguf file, a model folder (CTranslate2 or safetensors), or a",
    "                         Hub repo id; GGUF and safetensors models are converted once into the cache",
    "                         (int8 unless --quantization/--compute-type say float16 or float32); --file picks",
    "                         a repo's GGUF by name or quantization (Q4_K_M)",
    "%llama unload            free the model (stops any reply first)",
    "%llama status            model, device, compute type, chats",
    "%llama history [--chat NAME]   %llama reset [--chat NAME]   %llama undo [--chat NAME]",
    "%llama system [--chat NAME] TEXT   set a chat's system prompt: the rest of the line, as typed",
    "%llama system [--chat NAME]        show it          %llama system [--chat NAME] --clear   clear it",
    "%llama chat [--chat NAME] [--side]  open the chat panel (--side: in JupyterLab's side area)",
    "%llama save FILE [--chat NAME]     write the chats (or one) to JSON; a notebook's chats also save as they change",
    "%llama restore FILE [--chat NAME]  read chats back from FILE, replacing those of the same name",
    "%llama convert SOURCE OUTPUT [--quantization Q|none] [--revision R] [--file F] [--force]",
    "%llama help              this text",
    "Defaults: %config LlamaSettings (e.g. %config LlamaSettings.max_tokens = 256)",
])

FORMATS = ("markdown", "text", "code", "json")
_SYSTEM_OPTION = re.compile(r"""\A(?:--chat(?:=|\s+)("[^"]*"|'[^']*'|\S+)|--clear)(?:\s+|\Z)""")


class _Parser(MagicArgumentParser):
    """A magic's parser whose refusal of a misspelt option names the option meant (--temprature: --temperature)."""

    def error(self, message: str) -> None:
        unknown = message.partition("unrecognized arguments: ")[2].split()
        typed = next((a.partition("=")[0] for a in unknown if a.startswith("-")), None)
        if typed is not None:
            close = difflib.get_close_matches(typed, [o for o in self._option_string_actions if o.startswith("--")], n=1)
            if close:
                message += f" (did you mean {close[0]}?)"
        super().error(message)


def _parser(prog: str) -> MagicArgumentParser:
    return _Parser(prog=prog, add_help=False)


def cell_parser() -> MagicArgumentParser:
    p = _parser("%%llama")
    p.add_argument("-s", "--system")
    p.add_argument("--chat", default="default")
    p.add_argument("--new", action="store_true")
    p.add_argument("--once", action="store_true")
    options.add_arguments(p)
    p.add_argument("-o", "--out")
    p.add_argument("-f", "--format", choices=FORMATS, default="markdown")
    p.add_argument("--no-vars", action="store_true")
    p.add_argument("--schema")
    p.add_argument("--choices")
    p.add_argument("--probs", nargs="?", const=5, type=int)
    return p


def check_together(args: object) -> None:
    """LlamaError for %%llama options that cannot go together (each shows or reads the reply its own way)."""
    choices, schema, probs, fmt = (getattr(args, n) for n in ("choices", "schema", "probs", "format"))
    if choices is not None and (schema is not None or probs is not None):
        raise LlamaError(f"Give --choices or {'--schema' if probs is None else '--probs'}, not both.")
    if choices is not None and fmt in ("code", "json"):
        raise LlamaError(f"-f {fmt} reads a written reply, and --choices picks a label; leave one out.")
    if probs is not None and fmt != "markdown":
        raise LlamaError(f"--probs shows the reply's tokens tinted; -f {fmt} shows it otherwise: leave one out.")


def line_parsers() -> dict[str, MagicArgumentParser]:
    from ct2_magics.models.convert_args import add_convert_arguments

    parsers: dict[str, MagicArgumentParser] = {}
    load = parsers["load"] = _parser("%llama load")
    load.add_argument("model", nargs="?")
    load.add_argument("--device")
    load.add_argument("--compute-type")
    load.add_argument("--revision")
    load.add_argument("--file")
    load.add_argument("--quantization")
    for name in ("history", "reset", "undo", "chat"):
        parsers[name] = _parser(f"%llama {name}")
        parsers[name].add_argument("--chat", default="default")
    parsers["chat"].add_argument("--side", action="store_true")
    explain = parsers["explain"] = _parser("%llama explain")
    explain.add_argument("--chat")
    options.add_arguments(explain)
    add_convert_arguments(convert := _parser("%llama convert"))
    parsers["convert"] = convert
    for name in ("save", "restore"):
        parsers[name] = _parser(f"%llama {name}")
        parsers[name].add_argument("file")
        parsers[name].add_argument("--chat")
    for name in ("unload", "status", "help"):
        parsers[name] = _parser(f"%llama {name}")
    return parsers


def split(line: str) -> list[str]:
    """Shell-like split; quotes work, an unterminated quote is a usage error."""
    try:
        return shlex.split(line)
    except ValueError as e:
        raise UsageError(f"Cannot read the options ({e}); check the quotes.") from None


def system_line(rest: str) -> tuple[str, bool, str]:
    """(chat, clear, text) of `%llama system ...`: options first, then the text as typed (one pair of quotes dropped)."""
    chat, clear = "default", False
    while (m := _SYSTEM_OPTION.match(rest)) is not None:
        if m.group(1) is None:
            clear = True
        else:
            chat = m.group(1)[1:-1] if m.group(1)[:1] in "\"'" else m.group(1)
        rest = rest[m.end():]
    text = rest.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'" and text[0] not in text[1:-1]:
        text = text[1:-1]
    return chat, clear, text
