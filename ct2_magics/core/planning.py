"""Prompt planning: the chat template's ids for a prompt, and where a prompt is cut into CTranslate2's cached
static prompt (a registered system block, a chat's turn prefix, a prefilled chat, what a batch's prompts share)
and the rest."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from ct2_magics.core.options import spell
from ct2_magics.core.prefix_cache import EXACT_ROWS, SPLIT_MIN_TOKENS, begins
from ct2_magics.errors import LlamaError

# System prompts whose encoded block may go to CTranslate2 as a cached static_prompt (within the cache's budget).
MAX_CACHED_SYSTEM_PROMPTS = 4
# What an item is replaced with to find where a template's fixed text ends: two texts that differ from their
# first byte and that no template trims or escapes (private-use and supplementary-plane characters).
PROBES = ("\ue000", "\U00010000")


def shared_cut(prompts: Sequence[Sequence[int]]) -> int:
    """Where prompts that begin alike are cut into CTranslate2's static prompt and the rest; 0: not worth a cut.

    EXACT_ROWS tokens before the first position where their ids differ: the last shared ids may hold the
    first characters of an item merged into the template's text, and a cut that few rows from the end changes
    int8 replies (BENCHMARKS.md, Findings J). Only when that leaves SPLIT_MIN_TOKENS or more before the cut
    and more than EXACT_ROWS after it in every prompt (one prompt alone shares nothing with another).
    For choices and schemas too: pass the prompts (or prompt + choice ids) that will be scored together.
    """
    if not prompts:
        return 0
    common = len(os.path.commonprefix([list(p) for p in prompts]))  # any sequences: compares the least and greatest
    cut = common - EXACT_ROWS
    return cut if cut >= SPLIT_MIN_TOKENS and min(len(p) for p in prompts) - cut > EXACT_ROWS else 0


def context_window(settings: Any, engine: Any) -> int:
    """Tokens a prompt and its reply may take together: the model's context, or less if LlamaSettings.max_context says so."""
    return min(settings.max_context, engine.context_length)


def prompt_budget(settings: Any, engine: Any, max_tokens: int, *, origin: str | None = None) -> int:
    """Tokens left for the prompt once the reply's max_tokens is set aside.

    With `origin` (python | magic | panel), none left is a LlamaError in that front end's words.
    """
    context = context_window(settings, engine)
    budget = context - max_tokens
    if budget <= 0 and origin is not None:
        raise LlamaError(f"max_tokens ({max_tokens}) leaves no room for the prompt in a {context}-token context; "
                         f"lower {spell('max_tokens', origin)}.")
    return budget


class PromptPlanning:
    """Engine's prompt side (a mixin: it uses the engine's tokenizer, encoder and prefix cache)."""

    tokenizer: Any
    encoder: Any
    prefixes: Any
    generator: Any
    wait_idle: Callable[..., bool]

    def _init_planning(self) -> None:
        self._system_blocks: dict[str, list[int]] = {}
        self._last_prompt: tuple[Any, list[int]] | None = None  # (template and messages, their ids)
        self._turn_prefixes: dict[Any, list[int]] = {}  # (template and history) -> turn_prefix
        self._shared: list[int] = []  # the last batch call's shared prefix (share_prefix)

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of the chat template applied to `messages`, ready for the assistant's turn (message text stays text)."""
        # Fitting the chat to the context counts the very prompt that is then sent: encode it once.
        key = (getattr(self.tokenizer, "chat_template", None), tuple((m["role"], m["content"]) for m in messages))
        last = self._last_prompt
        if last is not None and last[0] == key:
            return list(last[1])
        ids = self.encoder.encode(messages)
        self._last_prompt = (key, ids)
        return list(ids)

    def register_system(self, system: str | None) -> None:
        """Let prompts that start with this system prompt's block reuse its cached encoding (a few at most)."""
        if not system or system in self._system_blocks or len(self._system_blocks) >= MAX_CACHED_SYSTEM_PROMPTS:
            return
        block = self.encoder.encode([{"role": "system", "content": system}], add_generation_prompt=False)
        self._system_blocks[system] = block[:-EXACT_ROWS]  # see EXACT_ROWS: the rest keeps its last rows

    def share_prefix(self, prompts: list[list[int]], probes: list[list[dict[str, str]]] | None = None) -> list[int]:
        """What every prompt of a batch call begins with (shared_cut), which its chunks are cut at; [] when too short.

        probes: the call's messages with PROBES as items (llama.map's template): the cut then ends before
        the template puts its item, so it is the same in every call with that template, one row or many.
        Kept for the call's chunks whether or not the cache can hold it (they are cut there either way), until
        the next call: a call's cut depends on its own prompts only, never on earlier calls or on the cache.
        """
        ids = [self.encoder.encode(m) for m in probes or []] + prompts
        n = shared_cut(ids)
        self._shared = ids[0][:n] if n else []
        return list(self._shared)

    def _static_split(self, prompts: list[list[int]], place: str = "stream") -> int:
        """Length of the held prefix (or registered system block) every prompt begins with; 0 when none."""
        return self.prefixes.split(prompts, self._system_blocks.values(), place)

    def ct2_inputs(self, prompts: list[list[int]], place: str = "stream",
                     batch: bool = False) -> tuple[list[list[str]], dict[str, Any]]:
        """Token strings for CTranslate2, with a shared prefix as its static prompt, cached when the budget allows.

        batch: the call's shared prefix (share_prefix), cut there whether the cache holds it or not (two batch
        calls that run at once from two threads: the chunks of the older one are cut as if it shared nothing);
        else, as for a single prompt, a system block that fits in the cache (for a prefilled chat or an earlier
        turn's prefix, Engine.stream cuts at chat_split). `place`: the Generator that will run them ("stream" or
        "batch"), whose cache is counted. Replies are the same whichever it is.
        """
        prefix = self._shared
        if batch and prefix and begins(prefix, prompts):
            n, cache = len(prefix), self.prefixes.admit(prefix, place, "batch")
        else:
            n, cache = self._static_split(prompts, place), True
        tokens = [self.tokenizer.convert_ids_to_tokens(p[n:]) for p in prompts]
        if not n:
            return tokens, {}
        return tokens, {"static_prompt": self.tokenizer.convert_ids_to_tokens(prompts[0][:n]), "cache_static_prompt": cache}

    def turn_prefix(self, history: list[dict[str, str]]) -> list[int]:
        """The ids every prompt that adds one user message to `history` begins with, less the last EXACT_ROWS.

        Found as what two prompts share whose new messages differ from their first byte, so it holds the
        next user header as the template and tokenizer write it. The last few are kept (a prefill, then
        the request that uses it, ask for the same history).
        """
        key = (getattr(self.tokenizer, "chat_template", None), tuple((m["role"], m["content"]) for m in history))
        if key not in self._turn_prefixes:
            probe = self.encoder.encode(history + [{"role": "user", "content": "\ue000"}])
            other = self.encoder.encode(history + [{"role": "user", "content": "\U00010000"}])
            n = next((i for i, (x, y) in enumerate(zip(probe, other)) if x != y), min(len(probe), len(other)))
            while len(self._turn_prefixes) >= 4:
                self._turn_prefixes.pop(next(iter(self._turn_prefixes)))
            self._turn_prefixes[key] = probe[:n - EXACT_ROWS] if n >= 2 * EXACT_ROWS else []
        return list(self._turn_prefixes[key])

    def chat_split(self, history: list[dict[str, str]], prompt_ids: list[int]) -> int:
        """Where a prompt (history + one new user message) is cut into CTranslate2's static prompt and the rest.

        At its turn prefix when that has SPLIT_MIN_TOKENS or more, whether it is cached or not, so the reply
        does not depend on what the cache holds; else 0 (Engine.stream then uses a cached system block).
        """
        if len(prompt_ids) < SPLIT_MIN_TOKENS + EXACT_ROWS:
            return 0  # too short for any turn prefix to qualify: no need to template the probes
        prefix = self.turn_prefix(history)
        n = len(prefix)
        ok = n >= SPLIT_MIN_TOKENS and len(prompt_ids) - n > EXACT_ROWS and prompt_ids[:n] == prefix
        return n if ok else 0

    def prefill(self, prefix: list[int], waiting: Callable[[], bool] = lambda: False) -> str:
        """Put `prefix` into CTranslate2's static-prompt cache (the caller holds the model); see PrefixCache.prefill."""
        if self.generator is None:
            return "off"
        self.wait_idle()
        return self.prefixes.prefill(self.generators(), prefix, self.tokenizer.convert_ids_to_tokens(prefix), waiting)

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        return len(self.prompt_ids(messages))
