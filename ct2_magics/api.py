"""`from ct2_magics import llama`: the kernel's model and chats from Python, a front end like the magic and the panel."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from ct2_magics.core.items import cut_summary, loop_summary, summary
from ct2_magics.core.response import Request, Response
from ct2_magics.core.session import Session, get_session
from ct2_magics.errors import LlamaError

if TYPE_CHECKING:
    from ct2_magics.core.conversation import Chat, Chats, Turn
    from ct2_magics.core.engine import Engine
    from ct2_magics.core.settings import LlamaSettings


class Llama:
    """Ask, stream, batch, and manage the model and the chats the magic and the panel share."""

    def __init__(self, session: Session) -> None:
        self.session = session

    # -- the model ----------------------------------------------------------------------------
    def load(self, model: str | None = None, *, device: str | None = None, compute_type: str | None = None,
             revision: str | None = None, file: str | None = None, quantization: str | None = None) -> Engine:
        """Load a model: smollm2, a .gguf file, a model folder, or a Hugging Face repo id (GGUF: file= picks one)."""
        if self.session.conversion_bar is None:  # from a script: a text bar while a model converts
            from ct2_magics.notebook.render import layer_bar

            self.session.conversion_bar = layer_bar
        return self.session.load(model, device=device, compute_type=compute_type, revision=revision, file=file,
                                 quantization=quantization)

    def unload(self) -> bool:
        """Stop every reply and free the model; False if none was loaded."""
        return self.session.unload()

    @property
    def engine(self) -> Engine | None:
        return self.session.engine

    @property
    def generator(self) -> Any:
        """The ctranslate2.Generator (None when no model is loaded)."""
        return self.session.generator

    @property
    def tokenizer(self) -> Any:
        """The transformers tokenizer (None when no model is loaded)."""
        return self.session.tokenizer

    @property
    def busy(self) -> bool:
        """Whether a reply or a batch holds the model now."""
        return self.session.busy

    @property
    def settings(self) -> LlamaSettings:
        return self.session.settings

    # -- asking ---------------------------------------------------------------------------------
    def stream(self, prompt: str, chat: str = "default", *, system: str | None = None, new: bool = False,
               once: bool = False, schema: Any = None, logprobs: int | None = None, **options: Any) -> Response:
        """A reply whose text pieces you iterate as they are written (checked now, asked when first read).

        schema: a JSON Schema dict, pydantic model, dataclass or TypedDict; the reply is JSON that fits it (reply.value()).
        logprobs=K: reply.tokens lists each token as it is written, with its probability and the K most probable
        tokens at its step (text, probability); "".join(t.text for t in reply.tokens) is the reply.
        """
        if "choices" in options or "probs" in options:
            raise LlamaError("A choice is scored, not streamed: use llama.ask(prompt, choices=[...]).")
        return self.session.respond(Request(prompt, chat=chat, system=system, new=new, once=once, options=options,
                                            schema=schema, logprobs=logprobs))

    def next_tokens(self, prompt: str, top: int = 10, chat: str | None = None, **options: Any) -> Any:
        """The `top` most probable next tokens and their probabilities: a DataFrame (token, prob), most probable first,
        shown in a notebook as a bar chart. Without chat, the prompt is text the model continues as written (no chat
        template); with chat=NAME, it is the next message in that chat and the tokens are the reply's first.
        temperature=, top_k=, top_p= add a `sampled` column: what sampling with them makes of the distribution."""
        from ct2_magics.core.next_token import NextTokens

        look = NextTokens(self.session, prompt, top, chat, **options)
        try:
            import pandas  # noqa: F401
        except ImportError:
            raise LlamaError("next_tokens returns a pandas DataFrame: pip install pandas.") from None
        from ct2_magics.notebook.token_view import next_tokens_frame

        return next_tokens_frame(look.result(), look.reshaped)

    def ask(self, prompt: str, chat: str = "default", *, schema: Any = None, choices: Any = None, probs: bool = False,
            **kwargs: Any) -> Any:
        """Ask and return the whole reply.

        schema=: its value (a dict, or an instance of the model or dataclass), JSON that fits the schema.
        choices=[...]: the most probable of these labels, each scored whole (with probs=True: {choice: probability});
        the chat records it as the reply. Sampling options do not apply then.
        """
        if kwargs.get("logprobs") is not None:
            raise LlamaError("ask returns text; for token probabilities use r = llama.stream(prompt, logprobs=5), then "
                             "r.consume() and r.tokens.")
        if choices is None and probs is False:
            reply = self.stream(prompt, chat, schema=schema, **kwargs)
            return reply.consume() if schema is None else reply.value()
        if schema is not None:
            raise LlamaError("Give choices= or schema=, not both: a reply is either one of the choices or JSON that fits "
                             "the schema.")
        from ct2_magics.core.choices import ChoiceReply

        return ChoiceReply(self.session, _request(prompt, chat, **kwargs), choices, probs).answer()

    def generate(self, prompts: Any, *, progress: bool | None = None, errors: str = "warn", **kwargs: Any) -> Any:
        """Answer many independent prompts in batches, in input order.

        Prompts that cannot be answered are None, listed in `last_errors` and summed up in one line (errors="warn"),
        or raise before anything is generated (errors="raise"), or stay quiet ("ignore"). progress: a bar (None: for
        a job of more than one batch). Options: system, batch_size, and the sampling options of `ask`; schema=
        (each reply is then a value that fits it); or choices=[...] (each reply one of them) and probs=True (a
        DataFrame: label, then each choice's probability).
        """
        with _Bar(progress, "llama.generate") as bar:
            result = self.session.generate(prompts, progress=bar, errors=errors, **kwargs)
        self._warn(errors, "llama.generate", len(result))
        return result

    def map(self, items: Any, template: str = "{}", *, cluster: Any = None, progress: bool | None = None,
            errors: str = "warn", **kwargs: Any) -> Any:
        """Fill `template` with each item and answer each, batched; a Series keeps its index.

        "Summarise: {}" puts the item at {}; missing, empty or non-text items are None. With `cluster=` a
        dask.distributed Client, or given a Dask Series, the cluster's workers answer (pip install "ct2-magics[dask]").
        With schema=, a DataFrame on the input's index, one typed column per top-level property. Other options as for
        `generate`.
        """
        with _Bar(progress, "llama.map") as bar:
            if (cluster is not None or type(items).__module__.startswith("dask")) and kwargs.get("schema") is not None:
                raise LlamaError("schema= runs in this kernel only for now; map without cluster= (compute a Dask Series first).")
            if cluster is not None or type(items).__module__.startswith("dask"):
                if kwargs.get("choices") is not None or kwargs.get("probs"):
                    raise LlamaError("choices are scored on this kernel's model, not on a cluster: leave out cluster= "
                                     "(for a Dask Series, .compute() it first).")
                from ct2_magics.cluster import map_on_cluster

                result = map_on_cluster(self.session, items, template, cluster, progress=bar, errors=errors, **kwargs)
            else:
                result = self.session.map(items, template, progress=bar, errors=errors, **kwargs)
        if not type(result).__module__.startswith("dask"):  # a lazy Dask Series has no rows to count yet
            self._warn(errors, "llama.map", len(result))
        return result

    def _warn(self, errors: str, what: str, total: int) -> None:
        lines = [summary(self.session.last_errors, total)] if errors == "warn" and self.session.last_errors else []
        if errors != "ignore" and self.session.last_loops:  # not failures: said unless errors="ignore" quiets all
            lines.append(loop_summary(self.session.last_loops, total))
        if errors != "ignore" and self.session.last_cut:
            lines.append(cut_summary(self.session.last_cut, total))
        if lines:
            from ct2_magics.notebook.markup import inert_text

            for line in lines:
                print(inert_text(f"{what}: {line}"), file=sys.stderr)

    @property
    def last_errors(self) -> list[Any]:
        """Why items of the last generate/map got no reply."""
        return self.session.last_errors

    @property
    def last_loops(self) -> list[Any]:
        """Items of the last generate/map whose replies fell into a loop and were stopped there (their text up to the
        loop is kept), with the span each repeated; LlamaSettings.stop_loops = False lets such replies run on."""
        return self.session.last_loops

    @property
    def last_cut(self) -> list[Any]:
        """Items of the last generate/map whose replies reached max_tokens: each reply is kept as far as it got."""
        return self.session.last_cut

    @property
    def last_result(self) -> Any:
        """What an interrupted generate/map had answered (None for the rows it had not)."""
        return self.session.last_result

    # -- chats ----------------------------------------------------------------------------------
    @property
    def chats(self) -> Chats:
        return self.session.chats

    def chat(self, name: str = "default", create: bool = True) -> Chat:
        return self.session.chat(name, create=create)

    def history(self, chat: str = "default") -> list[dict[str, str]]:
        """The chat as {'role', 'content'} messages, ready for a chat template."""
        return self.session.history(chat)

    def transcript(self, chat: str = "default") -> str:
        """The chat as readable plain text."""
        return self.session.transcript(chat)

    def reset(self, chat: str = "default") -> None:
        self.session.reset(chat)

    def undo(self, chat: str = "default") -> Turn:
        return self.session.undo(chat)

    def status(self) -> dict[str, Any]:
        return self.session.status()

    def panel(self, chat: str = "default", side: bool = False) -> Any:
        """A chat panel over `chat`, sharing this model and history; `side=True` opens it in JupyterLab's side area."""
        from ct2_magics.notebook.panel import ChatPanel

        return ChatPanel(self.session, chat, side=side)

    def __repr__(self) -> str:
        return repr(self.session)


def _request(prompt: str, chat: str, *, system: str | None = None, new: bool = False, once: bool = False,
             **options: Any) -> Request:
    return Request(prompt, chat=chat, system=system, new=new, once=once, options=options)


_BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_noinv_fmt}{postfix}]"


class _Bar:
    """A batch's progress as a tqdm bar: a widget in a notebook, text in a terminal. shown=None: for a long job."""

    def __init__(self, shown: bool | None, what: str) -> None:
        self.shown, self.what, self.bar = shown, what, None

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def start(self, total: int, unit: str, *, long: bool) -> None:
        if self.bar is None and (self.shown if self.shown is not None else long):
            from tqdm.auto import tqdm

            # "2.50 prompts/s", always as a rate (tqdm would write "2.50prompt/s", or "1.20s/prompt" when slower).
            self.bar = tqdm(total=total, desc=self.what, unit=f" {unit}s", dynamic_ncols=True, bar_format=_BAR_FORMAT)

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text)

    def close(self) -> None:
        bar, self.bar = self.bar, None
        if bar is not None:
            bar.close()


_facade: Llama | None = None


def get_llama() -> Llama:
    """The `llama` of this kernel, a view of the one session."""
    global _facade
    session = get_session()
    if _facade is None or _facade.session is not session:
        _facade = Llama(session)
    return _facade
