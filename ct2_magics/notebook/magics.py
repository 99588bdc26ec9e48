"""`%%llama` and the `%llama` line commands: parse the line into a request, call the session, render."""

from __future__ import annotations

import builtins
import keyword
import re
from collections.abc import Callable
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class

from ct2_magics.core import options
from ct2_magics.core.conversation import transcript_sections
from ct2_magics.core.response import Request
from ct2_magics.core.schema import WHAT, as_schema
from ct2_magics.core.session import Session
from ct2_magics.errors import LlamaError, LlamaInterrupted
from ct2_magics.notebook import interpolate as prompts
from ct2_magics.notebook import render, token_view
from ct2_magics.notebook.magic_args import HELP, cell_parser, check_together, line_parsers, split, system_line
from ct2_magics.notebook.markup import inert_text

# IPython's own names in a notebook's namespace: the output and input caches.
_IPYTHON_NAMES = re.compile(r"_+|_i{1,3}|_i?\d+|_[ido]h")

@magics_class
class LlamaMagics(Magics):
    """The %llama / %%llama magics, a thin face over the kernel-wide session; they own their IPython state."""

    def __init__(self, shell: Any, session: Session) -> None:
        super().__init__(shell)
        self.session = session
        self.cell_parser = cell_parser()
        self.line_parsers = line_parsers()
        self.cell_id: str | None = None
        self.last_error: BaseException | None = None  # the last cell's failure that %llama explain explains

    @property
    def settings(self):
        return self.session.settings

    # -- IPython events: registered by attach(), removed by detach() --------------------------------
    def attach(self) -> None:
        self.shell.events.register("pre_run_cell", self.pre_run_cell)
        self.shell.events.register("post_run_cell", self.post_run_cell)

    def detach(self) -> None:
        self.shell.events.unregister("pre_run_cell", self.pre_run_cell)
        self.shell.events.unregister("post_run_cell", self.post_run_cell)

    def pre_run_cell(self, info: Any) -> None:
        self.cell_id = getattr(info, "cell_id", None)

    def post_run_cell(self, result: Any) -> None:
        # Usage errors, interrupts and one-line LlamaErrors have nothing to explain: the failure before them stays.
        error = result.error_in_exec or result.error_before_exec
        if error is not None and not isinstance(error, (UsageError, KeyboardInterrupt, LlamaError)):
            self.last_error = error

    # -- the magic ------------------------------------------------------------------------------
    @line_cell_magic
    def llama(self, line: str, cell: str | None = None) -> None:
        """Ask a local Llama model (%%llama), or manage it (%llama load|explain|status|...). See %llama help."""
        try:
            if cell is None:
                self._command(line)
            else:
                args = self.cell_parser.parse_args(split(line))
                args.out = self._check_variable(args.out)
                check_together(args)
                if args.choices is not None:
                    return self._choose(args, cell)
                schema = self._schema(args)
                response = self.session.respond(self._request(args, cell, schema))
                self._show(response, plain=args.format == "text", as_json=schema is not None)
                if schema is not None:
                    self._deliver_value(response, args.out)
                else:
                    self._deliver(response.text, args.format, args.out)
        except LlamaError as e:
            raise UsageError(inert_text(str(e))) from None
        except LlamaInterrupted:
            raise
        except KeyboardInterrupt:
            replied = cell is not None or line.split()[:1] == ["explain"]
            raise LlamaInterrupted("the reply stopped; what it wrote is kept in its chat, marked interrupted."
                                   if replied else f"%llama {inert_text(line.strip())} was interrupted.") from None

    @staticmethod
    def _say(line: str) -> None:
        """A one-line answer in the cell; it may quote names from a chat file, so control characters are made visible."""
        print(inert_text(line))

    def _show(self, response: Any, plain: bool = False, as_json: bool = False) -> None:
        rate = self.settings.updates_per_second
        tinted = None if response.tokens is None else token_view.TokenStream(response, rate)
        render.show(response, self.shell, mode=self.settings.render, rate=rate, plain=plain, quiet=self.settings.quiet,
                    remote_images=self.settings.remote_images, as_json=as_json, tinted=tinted)

    # -- the cell magic ---------------------------------------------------------------------------
    def _check_variable(self, typed: str | None) -> str | None:
        """The variable -o NAME stores into, read as Python reads names (NFKC: a pasted ligature like 'ﬁ' is 'fi');
        it must replace none of Python's builtins nor IPython's own."""
        if typed is None:
            return None
        name = prompts.python_name(typed)
        read = f" (Python reads it as {name!r})" if name != typed else ""
        if not name.isidentifier() or keyword.iskeyword(name):
            raise LlamaError(f"-o {typed}: {typed!r} is not a Python variable name{read}; give one like -o reply.")
        ipython = name in getattr(self.shell, "user_ns_hidden", {}) or _IPYTHON_NAMES.fullmatch(name)
        if ipython or hasattr(builtins, name) or (name.startswith("__") and name.endswith("__")):
            whose = "IPython's" if ipython else "Python's"
            raise LlamaError(f"-o {typed}{read} would replace {whose} own {name}; store the reply under another name.")
        return name

    def _schema(self, args: Any) -> Any:
        """The schema --schema NAME names (a notebook variable), checked; None without --schema."""
        if args.schema is None:
            return None
        if args.format not in ("json", "markdown"):
            raise LlamaError(f"--schema makes the reply JSON; use it with -f json, not -f {args.format}.")
        name = prompts.python_name(args.schema)
        if name not in self.shell.user_ns:
            raise LlamaError(f"--schema {args.schema}: there is no variable {name!r} in the notebook; define it first "
                             f"({WHAT}).")
        return as_schema(self.shell.user_ns[name])

    def _deliver_value(self, response: Any, out: str | None) -> None:
        """Store a schema reply's value in `out`; one line when its JSON is not complete (`out` then holds the text)."""
        try:
            value, problem = response.value(), None
        except LlamaError as e:
            value, problem = response.text, str(e).rstrip(".")
        if out is not None:
            self.shell.user_ns[out] = value
        if problem is not None:
            raise UsageError(inert_text(f"{problem}; {out + ' holds the raw reply (a str)' if out else 'the reply is kept in the chat'}."))

    def _request(self, args: Any, cell: str, schema: Any = None) -> Request:
        prompt = cell.strip()
        if not args.no_vars:
            prompt, missing = prompts.substitute(prompt, self.shell.user_ns)
            if missing:
                self.session.notify(f"Left {', '.join(missing)} as written: no such variable or cell "
                                    "(write {{ and }} for literal braces, or use --no-vars).")
        return Request(prompt, chat=args.chat, system=args.system, new=args.new, once=args.once,
                       cell_id=self.cell_id, options={n: getattr(args, n) for n in options.NAMES}, origin="magic",
                       schema=schema, logprobs=args.probs)

    def _choose(self, args: Any, cell: str) -> None:
        """%%llama --choices "a, b": the label and each choice's probability as bars; -o VAR stores the label."""
        from ct2_magics.core.choices import ChoiceReply
        from ct2_magics.notebook import choice_view

        reply = ChoiceReply(self.session, self._request(args, cell), choice_view.split_choices(args.choices))
        try:
            label = choice_view.show(reply, self.shell, mode=self.settings.render, plain=args.format == "text",
                                     quiet=self.settings.quiet)
        except KeyboardInterrupt:
            raise LlamaInterrupted("the choices were not scored; the chat is as it was.") from None
        if args.out is not None:
            self.shell.user_ns[args.out] = label

    def _deliver(self, reply: str, fmt: str, out: str | None) -> None:
        """Hand the finished reply to the notebook: offered as the next cell, parsed, stored in `out`."""
        value: Any = reply
        problem = None
        if fmt == "code":
            code = render.code_block(reply)
            if code is None:
                problem = "The reply has no ``` code block, so no cell was offered"
            else:
                self.shell.set_next_input(code, replace=False)
                value = code
        elif fmt == "json":
            try:
                value = render.json_value(reply)
            except ValueError as e:
                problem = f"The reply holds no complete JSON value ({e})"
        if out is not None:
            self.shell.user_ns[out] = value
        if problem is not None:
            kept = f"{out} holds the raw reply (a str)" if out else "the reply is kept in the chat"
            raise UsageError(f"{problem}; {kept}.")

    # -- line commands ----------------------------------------------------------------------------
    def _command(self, line: str) -> None:
        name, _, rest = line.strip().partition(" ")
        if not name:
            raise UsageError("Say what to do: %llama load MODEL, %llama status, ... (see %llama help); to ask, use %%llama in a cell.")
        if name == "system":  # the rest of the line is the prompt, as typed: no shell quoting rules
            return self._cmd_system(*system_line(rest.strip()))
        if name not in self.line_parsers:
            raise UsageError(f"Unknown command %llama {name}; commands: {', '.join(sorted([*self.line_parsers, 'system']))}. "
                             "To ask, use %%llama in a cell.")
        args = self.line_parsers[name].parse_args(split(rest))
        handler: Callable[[Any], None] = getattr(self, f"_cmd_{name}")
        handler(args)

    def _cmd_help(self, args: Any) -> None:
        print(HELP)

    def _cmd_load(self, args: Any) -> None:
        engine = self.session.load(args.model, device=args.device, compute_type=args.compute_type, revision=args.revision,
                                   file=args.file, quantization=args.quantization)
        self._say(f"Loaded {engine.name} on {engine.device} ({engine.compute_type}).")

    def _cmd_unload(self, args: Any) -> None:
        self._say("Model unloaded." if self.session.unload() else "No model was loaded.")

    def _cmd_status(self, args: Any) -> None:
        s = self.session.status()
        model = "no model loaded" if s["model"] is None else (
            f"{s['model']} on {s['device']} ({s['compute_type']}), context {s['context_length']} tokens")
        chats = ", ".join(f"{n} ({k} turn{'s' if k != 1 else ''})" for n, k in s["chats"].items()) or "none"
        self._say(f"Model: {model}\nChats: {chats}")

    def _cmd_history(self, args: Any) -> None:
        chat = self.session.chat(args.chat, create=False)
        render.show_transcript(transcript_sections(chat.turns, chat.system), self.shell, self.settings.render,
                               remote_images=self.settings.remote_images)

    def _cmd_reset(self, args: Any) -> None:
        self.session.reset(args.chat)
        self._say(f"Chat {args.chat!r} cleared.")

    def _cmd_undo(self, args: Any) -> None:
        turn = self.session.undo(args.chat)
        self._say(f"Removed the last exchange of chat {args.chat!r} ({turn.user[:60]!r}).")

    def _cmd_system(self, chat: str, clear: bool, text: str) -> None:
        if clear and text:
            raise LlamaError("%llama system --clear takes no text; to set a system prompt, leave --clear out.")
        if not clear and not text:
            current = self.session.chat(chat, create=False).system
            self._say(f"System prompt of chat {chat!r}: {current}" if current else
                      f"Chat {chat!r} has no system prompt; set one with %llama system TEXT.")
            return
        self.session.chat(chat).set_system(None if clear else text)
        self._say(f"System prompt of chat {chat!r} {'cleared' if clear else 'set'}.")

    def _cmd_chat(self, args: Any) -> None:
        from IPython.display import display

        from ct2_magics.notebook.panel import ChatPanel

        panel = ChatPanel(self.session, args.chat, side=args.side)
        display(panel)
        display(panel.note(), raw=True)  # under the panel: what to do where it cannot show (its kernel has gone)

    def _cmd_save(self, args: Any) -> None:
        from ct2_magics.notebook import chat_files, store

        _check_file_name(args.file)
        chats = [self.session.chat(args.chat, create=False)] if args.chat else list(self.session.chats)
        try:
            chat_files.write(args.file, chats, chat_files.notebook_of(self.shell))
        except OSError as e:
            raise LlamaError(f"Could not write {args.file} ({e.strerror or e}).") from None
        self._say(f"Saved {store.count(chats)} to {args.file}.")

    def _cmd_restore(self, args: Any) -> None:
        from ct2_magics.notebook import chat_files, store

        _check_file_name(args.file)
        try:
            saved = chat_files.read(args.file)
        except chat_files.Unreadable as e:
            raise LlamaError(f"Could not read {args.file} ({e}).") from None
        if args.chat:
            saved = [c for c in saved if c.name == args.chat.strip()]
            if not saved:
                raise LlamaError(f"{args.file} holds no chat named {args.chat!r}.")
        replaced = [c.name for c in saved if store.put(self.session.chats, c)]
        note = f" Replaced what chat {', '.join(map(repr, replaced))} held before." if replaced else ""
        self._say(f"Restored {store.count(saved)} from {args.file}.{note}")

    def _cmd_explain(self, args: Any) -> None:
        if self.last_error is None:
            raise UsageError("There is no error to explain yet; run a cell that fails, then %llama explain.")
        shell = self.shell
        report = prompts.error_report(self.last_error, shell.compile._filename_map, shell.history_manager.input_hist_raw)
        request = Request(prompts.explain_question(report), chat=args.chat or "explain", new=args.chat is None,
                          cell_id=self.cell_id, options={n: getattr(args, n) for n in options.NAMES},
                          instructions=prompts.EXPLAIN_INSTRUCTIONS, origin="magic")
        self._show(self.session.respond(request))

    def _cmd_convert(self, args: Any) -> None:
        from ct2_magics.models.convert_args import run_convert

        run_convert(args, bar=render.layer_bar)  # it imports its libraries whole first, Ctrl-C or not


def _check_file_name(name: str) -> None:
    if "\x00" in name:
        raise LlamaError("The file name holds a NUL character (\\x00); give a plain path.")
