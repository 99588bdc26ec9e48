"""`%%llama` and the `%llama` line commands: parse the line into a request, call the session, render."""

from __future__ import annotations

import shlex
from typing import Any, Callable

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import MagicArgumentParser

from . import render
from .errors import LlamaError
from .session import Request, Session

HELP = """\
%%llama [options]        ask the model; the cell is the prompt, the reply streams into the cell
  -s/--system TEXT       system prompt for this chat        --chat NAME   chat to use (default: default)
  --new                  clear the chat first               --once        neither read nor write history
  -t/--temperature T     0 means greedy                     --top-k K, --top-p P, --seed N
  -n/--max-tokens N      most tokens in the reply           --repetition-penalty R
%llama load MODEL [--device auto|cpu|cuda] [--compute-type T] [--revision R]
                         MODEL: a converted model's directory, a Hub repo id, or demo
%llama unload            free the model
%llama status            model, device, compute type, chats
%llama history [--chat NAME]   %llama reset [--chat NAME]   %llama undo [--chat NAME]
%llama system TEXT [--chat NAME]   set a chat's system prompt (empty TEXT clears it)
%llama chat [--chat NAME]  open the chat panel
%llama convert SOURCE OUTPUT [--quantization Q] [--revision R] [--force]
%llama help              this text
Defaults: %config LlamaSettings (e.g. %config LlamaSettings.max_tokens = 256)"""


def _parser(prog: str) -> MagicArgumentParser:
    return MagicArgumentParser(prog=prog, add_help=False)


def _cell_parser() -> MagicArgumentParser:
    p = _parser("%%llama")
    p.add_argument("-s", "--system")
    p.add_argument("--chat", default="default")
    p.add_argument("--new", action="store_true")
    p.add_argument("--once", action="store_true")
    p.add_argument("-t", "--temperature", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("-n", "--max-tokens", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--repetition-penalty", type=float)
    return p


def _line_parsers() -> dict[str, MagicArgumentParser]:
    parsers: dict[str, MagicArgumentParser] = {}
    load = parsers["load"] = _parser("%llama load")
    load.add_argument("model", nargs="?")
    load.add_argument("--device")
    load.add_argument("--compute-type")
    load.add_argument("--revision")
    for name in ("history", "reset", "undo", "chat"):
        parsers[name] = _parser(f"%llama {name}")
        parsers[name].add_argument("--chat", default="default")
    system = parsers["system"] = _parser("%llama system")
    system.add_argument("text", nargs="*")
    system.add_argument("--chat", default="default")
    convert = parsers["convert"] = _parser("%llama convert")
    convert.add_argument("source")
    convert.add_argument("output")
    convert.add_argument("--quantization", default="int8_float16")
    convert.add_argument("--revision")
    convert.add_argument("--force", action="store_true")
    for name in ("unload", "status", "help"):
        parsers[name] = _parser(f"%llama {name}")
    return parsers


def split(line: str) -> list[str]:
    """Shell-like split; quotes work, an unterminated quote is a usage error."""
    try:
        return shlex.split(line)
    except ValueError as e:
        raise UsageError(f"Cannot read the options ({e}); check the quotes.") from None


@magics_class
class LlamaMagics(Magics):
    """The %llama / %%llama magics, a thin face over the kernel-wide session."""

    def __init__(self, shell: Any, session: Session) -> None:
        super().__init__(shell)
        self.session = session
        self.cell_parser = _cell_parser()
        self.line_parsers = _line_parsers()
        self.cell_id: str | None = None

    @property
    def settings(self):
        return self.session.settings

    @line_cell_magic
    def llama(self, line: str, cell: str | None = None) -> None:
        """Ask a local Llama model (%%llama), or manage it (%llama load|status|history|...). See %llama help."""
        try:
            if cell is None:
                self._command(line)
            else:
                request = self._request(line, cell)
                render.show(self.session.respond(request), self.shell, mode=self.settings.render,
                            rate=self.settings.updates_per_second)
        except LlamaError as e:
            raise UsageError(str(e)) from None

    # -- the cell magic ---------------------------------------------------------------------------
    def _request(self, line: str, cell: str) -> Request:
        args = self.cell_parser.parse_args(split(line))
        options = {k: getattr(args, k) for k in ("temperature", "top_k", "top_p", "max_tokens", "seed", "repetition_penalty")}
        return Request(cell.strip(), chat=args.chat, system=args.system, new=args.new, once=args.once,
                       cell_id=self.cell_id, options={k: v for k, v in options.items() if v is not None})

    # -- line commands ----------------------------------------------------------------------------
    def _command(self, line: str) -> None:
        words = split(line)
        if not words:
            raise UsageError("Say what to do: %llama load MODEL, %llama status, ... (see %llama help); to ask, use %%llama in a cell.")
        name, rest = words[0], words[1:]
        if name not in self.line_parsers:
            raise UsageError(f"Unknown command %llama {name}; commands: {', '.join(sorted(self.line_parsers))}. To ask, use %%llama in a cell.")
        args = self.line_parsers[name].parse_args(rest)
        handler: Callable[[Any], None] = getattr(self, f"_cmd_{name}")
        handler(args)

    def _cmd_help(self, args: Any) -> None:
        print(HELP)

    def _cmd_load(self, args: Any) -> None:
        engine = self.session.load(args.model, device=args.device, compute_type=args.compute_type, revision=args.revision)
        print(f"Loaded {engine.name} on {engine.device} ({engine.compute_type}).")

    def _cmd_unload(self, args: Any) -> None:
        print("Model unloaded." if self.session.unload() else "No model was loaded.")

    def _cmd_status(self, args: Any) -> None:
        s = self.session.status()
        model = "no model loaded" if s["model"] is None else (
            f"{s['model']} on {s['device']} ({s['compute_type']}), context {s['context_length']} tokens")
        chats = ", ".join(f"{n} ({k} turn{'s' if k != 1 else ''})" for n, k in s["chats"].items()) or "none"
        print(f"Model: {model}\nChats: {chats}")

    def _cmd_history(self, args: Any) -> None:
        render.show_markdown(self.session.transcript(args.chat), self.shell, self.settings.render)

    def _cmd_reset(self, args: Any) -> None:
        self.session.reset(args.chat)
        print(f"Chat {args.chat!r} cleared.")

    def _cmd_undo(self, args: Any) -> None:
        turn = self.session.undo(args.chat)
        print(f"Removed the last exchange of chat {args.chat!r} ({turn.user[:60]!r}).")

    def _cmd_system(self, args: Any) -> None:
        text = " ".join(args.text).strip()
        self.session.chat(args.chat).set_system(text or None)
        print(f"System prompt of chat {args.chat!r} {'set' if text else 'cleared'}.")

    def _cmd_chat(self, args: Any) -> None:
        from IPython.display import display

        display(self.session.panel(args.chat))

    def _cmd_convert(self, args: Any) -> None:
        from .convert import convert

        convert(args.source, args.output, quantization=args.quantization, revision=args.revision, force=args.force)
