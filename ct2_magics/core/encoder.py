"""A chat as prompt token ids: the model's chat template (in transformers' sandbox), with message text encoded as text.

A tokenizer turns every `<|eot_id|>` or `<|im_start|>` it finds in a string into the control token,
so a prompt built by rendering the template and encoding the result lets a user's message (or a
document pasted into it) close its own turn and open a forged system turn. Here only the control
tokens the template itself wrote are control tokens; the same strings inside a message are
ordinary text. A chat with no such strings is encoded exactly as before (one pass over the string).
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

from ct2_magics.errors import LlamaError
from ct2_magics.models.quiet import quiet_libraries

Message = dict[str, str]
_SENTINEL = "\ue000ct2m{}\ue001"  # private-use characters: no template trims or escapes them
_SENTINELS = re.compile("\ue000ct2m(\\d+)\ue001")


class Encoder:
    """Encodes chats for one tokenizer; `name` is the model's, for error lines."""

    def __init__(self, tokenizer: Any, name: str) -> None:
        self.tokenizer = tokenizer
        self.name = name
        specials = [t for t in getattr(tokenizer, "all_special_tokens", []) if t]
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        specials += [t.content for t in added.values() if getattr(t, "special", False) and t.content]
        self.specials = sorted(set(specials), key=len, reverse=True)
        # Longest first, as the tokenizer itself matches them.
        self._special_re = re.compile("|".join(map(re.escape, self.specials))) if self.specials else None
        self._plain: Any = None  # a copy of the fast tokenizer that reads control-token strings as text
        self._rendered = False  # library notices come with a template's first use; later ones need no muting

    def render(self, messages: list[Message], add_generation_prompt: bool = True) -> str:
        """The chat template applied to `messages`; a template that fails (or trips the sandbox) is one line."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise LlamaError(f"{self.name} has no chat template (tokenizer_config.json or chat_template.jinja); "
                             "it is not a chat model.")
        try:
            # transformers renders chat templates in jinja2's ImmutableSandboxedEnvironment. Muting its
            # loggers costs more than a short render (logging clears its caches), so only the first time.
            with quiet_libraries() if not self._rendered else contextlib.nullcontext():
                text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                                          tokenize=False)
            self._rendered = True
        except Exception as e:  # jinja2's SecurityError, TemplateError, or the template's own raise_exception
            first = " ".join(str(e).split())[:200] or type(e).__name__
            raise LlamaError(f"The chat template of {self.name} failed ({type(e).__name__}: {first}); "
                             "the model's chat_template is broken or unsafe: use another model.") from None
        if not isinstance(text, str):
            raise LlamaError(f"The chat template of {self.name} did not produce text; use another model.")
        return text

    def encode(self, messages: list[Message], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of the rendered chat; control-token strings inside messages stay text."""
        text = self.render(messages, add_generation_prompt)
        if self._special_re is None or not any(self._special_re.search(m["content"]) for m in messages):
            return self._encode(text)
        spans = self._content_spans(messages, add_generation_prompt, text)
        ids: list[int] = []
        start = 0
        for m in self._special_re.finditer(text):
            if any(a <= m.start() < b for a, b in spans):
                continue  # written by the user: text
            ids += self._plain_encode(text[start:m.start()])
            ids += self._encode(m.group(0))
            start = m.end()
        return ids + self._plain_encode(text[start:])

    def _encode(self, text: str) -> list[int]:
        if not text:
            return []
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:  # the fast tokenizer itself: no transformers notices, no logging cost
            return list(backend.encode(text, add_special_tokens=False).ids)
        with quiet_libraries():
            return list(self.tokenizer.encode(text, add_special_tokens=False))

    def _plain_encode(self, text: str) -> list[int]:
        """Encode `text` reading control-token strings as text (the pieces between the template's own tokens)."""
        if not text:
            return []
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:  # a slow tokenizer: transformers' own switch
            with quiet_libraries():
                return list(self.tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True))
        if self._plain is None:
            from tokenizers import Tokenizer

            plain = Tokenizer.from_str(backend.to_str())
            plain.encode_special_tokens = True
            self._plain = plain
        return list(self._plain.encode(text, add_special_tokens=False).ids)

    def _content_spans(self, messages: list[Message], add_generation_prompt: bool, text: str) -> list[tuple[int, int]]:
        """Where each message's text lies in the rendered `text`, found by rendering placeholders in its place."""
        marked = self.render([{**m, "content": _SENTINEL.format(i)} for i, m in enumerate(messages)],
                             add_generation_prompt)
        parts = _SENTINELS.split(marked)  # template text, index, template text, index, ...
        order = [int(i) for i in parts[1::2]]
        if sorted(order) != list(range(len(messages))):
            raise self._unplaceable()
        spans, pos = [], 0
        for k, index in enumerate(order):
            before, after = parts[2 * k], parts[2 * k + 2]
            if not text.startswith(before, pos):
                raise self._unplaceable()
            pos += len(before)
            content = messages[index]["content"]
            for shown in (content, content.strip()):  # templates write the text as it is, or trimmed
                end = pos + len(shown)
                if text.startswith(shown, pos) and _continues(text, end, after, parts, k):
                    spans.append((pos, end))
                    pos = end
                    break
            else:
                raise self._unplaceable()
        return spans

    def _unplaceable(self) -> LlamaError:
        return LlamaError(f"A message holds control-token text such as {self.specials[0]!r}, and the chat template "
                          f"of {self.name} changes message text, so it cannot be kept as text; remove it.")


def _continues(text: str, end: int, after: str, parts: list[str], k: int) -> bool:
    # The template text after this message must follow; for the last message it must end the prompt.
    if 2 * k + 3 >= len(parts):
        return text[end:] == after
    return text.startswith(after, end)
