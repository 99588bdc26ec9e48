"""Prompt planning: the chat template's ids for a prompt, and where a prompt is cut into CTranslate2's cached
static prompt (a registered system block, a chat's turn prefix, a prefilled chat) and the rest."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ct2_magics.core.options import spell
from ct2_magics.core.prefix_cache import EXACT_ROWS, SPLIT_MIN_TOKENS
from ct2_magics.errors import LlamaError

# System prompts whose encoded block may go to CTranslate2 as a cached static_prompt (within the cache's budget).
MAX_CACHED_SYSTEM_PROMPTS = 4


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

    def _static_split(self, prompts: list[list[int]]) -> int:
        """Length of the held prefix (or registered system block) every prompt begins with; 0 when none."""
        return self.prefixes.split(prompts, self._system_blocks.values())

    def _ct2_prompts(self, prompts: list[list[int]]) -> tuple[list[list[str]], dict[str, Any]]:
        """Token strings for CTranslate2, with a shared cached prefix (PrefixCache.split) as its static prompt.

        A prefilled chat, an earlier turn's own prefix or a system block: replies are the same whichever it is.
        """
        n = self._static_split(prompts)
        tokens = [self.tokenizer.convert_ids_to_tokens(p[n:]) for p in prompts]
        if not n:
            return tokens, {}
        return tokens, {"static_prompt": self.tokenizer.convert_ids_to_tokens(prompts[0][:n]), "cache_static_prompt": True}

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
        return self.prefixes.prefill(self.generator, prefix, self.tokenizer.convert_ids_to_tokens(prefix), waiting)

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        return len(self.prompt_ids(messages))
