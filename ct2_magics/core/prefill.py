"""A next chat turn that costs only its new tokens: after a reply, while the user reads, the chat so far is
prefilled into CTranslate2's static-prompt cache, and the next prompt sends that prefix as its static prompt.
A batch call's shared prefix is cached by the call itself; here the cache is emptied for it in idle time.

The prefill runs on the model owner's worker at the lowest priority (ModelOwner.when_idle): never while a
request holds or waits for the model, and a request that comes meanwhile waits for the rest of that one
prefill (CTranslate2 cannot stop one half way).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ct2_magics.core.context import Context
from ct2_magics.core.options import resolve
from ct2_magics.core.planning import PROBES, prompt_budget
from ct2_magics.core.prefix_cache import SPLIT_MIN_TOKENS
from ct2_magics.errors import LlamaError

if TYPE_CHECKING:
    from ct2_magics.core.conversation import Chat, Turn
    from ct2_magics.core.engine import Engine
    from ct2_magics.core.items import Rows

# The model must be idle this long first: cells run one after another (Run All, a loop of llama.ask) start
# within milliseconds of the reply before, so they never wait for a prefill they would not use.
PREFILL_AFTER_S = 0.5
MB = 2**20


def watch(session: Context) -> None:
    """Prefill a chat's next turn after each complete reply, and empty the cache in idle time when prefix_cache_mb
    drops below what it holds."""
    session.settings.observe(lambda change: _new_limit(session, change["new"]), names=["prefix_cache_mb"])
    session.chats.on_record.append(lambda chat, turn: _recorded(session, chat, turn))


def _recorded(session: Context, chat: Chat, turn: Turn) -> None:
    if turn.status in ("complete", "cut"):
        schedule(session, chat.name)  # read the chat so far into the cache while the user reads
    else:  # a stopped or looping reply is often undone or asked again: no prefill, not even one pending from before
        session.owner.drop_idle(("prefill", chat.name))


def schedule(session: Context, chat: str) -> None:
    """Prefill `chat`'s next turn once the model is idle (replacing a prefill that has not started).

    Called when a reply is recorded. After an undo the prefix prefilled before the undone turn serves, if
    it is still held; after a reset or a new system prompt, the system block is cached at its first use.
    """
    settings = session.settings
    if settings.prefill and settings.prefix_cache_mb > 0 and session.engine is not None:
        session.owner.when_idle(lambda engine, waiting: warm(session, engine, chat, waiting), after=PREFILL_AFTER_S,
                                key=("prefill", chat))


def warm(session: Context, engine: Engine, chat: str, waiting: Callable[[], bool]) -> str:
    """Prefill the prompt of `chat`'s next turn up to the new user message; what happened (see Engine.prefill)."""
    engine.clear_cache(over_budget=True)  # a lower prefix_cache_mb whose own job this one replaced
    if not session.settings.prefill:
        return "off"
    try:
        messages = session.chats.get(chat, create=False).messages()
        prefix = engine.turn_prefix(messages)
    except LlamaError:  # the chat is gone, or its template fails: the request will say so itself
        return "no prefix"
    if len(prefix) < SPLIT_MIN_TOKENS:
        return "short"  # the next request would not split there (see SPLIT_MIN_TOKENS)
    sampling = resolve({}, session.settings, engine.defaults)
    if len(prefix) >= prompt_budget(session.settings, engine, sampling.max_tokens):
        return "too long for the context"  # the next request leaves turns out, so this prefix would not be used
    if waiting():
        return "waiting"
    return engine.prefill(prefix, waiting)


def share(session: Context, engine: Engine, rows: Rows, head: list[dict[str, str]], prompts: list[list[int]]) -> None:
    """Have a batch call's chunks cut at what its prompts share (Engine.share_prefix: with a template, what the
    template writes before its item). Should that prefix not fit beside what the cache holds, the cache is
    emptied in idle time after the call, so the next call with the same template finds it cached."""
    if not prompts:
        return
    probes = None if rows.template is None else [head + [{"role": "user", "content": rows.fill(p)}] for p in PROBES]
    prefix = engine.share_prefix(prompts, probes)
    size = engine.prefixes.size(len(prefix))
    if prefix and engine.prefixes.enabled and size <= engine.prefixes.limit and not engine.prefixes.fits(prefix, engine.batch_place):
        session.owner.when_idle(lambda engine, waiting: engine.clear_cache(room=len(prefix)), after=PREFILL_AFTER_S)


def _new_limit(session: Context, mb: int) -> None:
    engine = session.engine
    if engine is None:
        return
    engine.prefixes.limit = mb * MB
    if engine.prefixes.used > engine.prefixes.limit:
        session.owner.when_idle(lambda engine, waiting: engine.clear_cache(over_budget=True), after=0.0)
