"""What the model weighed: each token's probability and the alternatives it passed over (`logprobs=K`, `--probs`),
and the distribution of the next token after a prompt (`next_tokens`).

A probability here is the model's own: the softmax of the step's logits (CTranslate2's `return_logits_vocab`), before
temperature, top-k and top-p reshape it for sampling (`sampled` shows what they make of it). CTranslate2's
`generate_tokens` does not return logits, so a reply with token probabilities decodes with `generate_batch` and a
callback on its worker thread, which reduces each step's vocabulary to its K most probable tokens at once; the
reading thread turns ids into text. `generate_batch` keeps every step's logits until it returns, so a long reply
decodes in rounds of at most ROUND_LOGITS_BYTES of them, each round re-reading the reply so far.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from ct2_magics.core.constrained import ROUND_LOGITS_BYTES, ct2_prompts, sampler_keeps
from ct2_magics.core.decoding import Stats, host_row
from ct2_magics.core.options import Sampling
from ct2_magics.core.worker_stream import WorkerStream
from ct2_magics.errors import LlamaError

MAX_ALTERNATIVES = 20  # the most alternatives a step keeps: a tooltip's worth


@dataclass(frozen=True)
class TokenProb:
    """One token of a reply: the text it added (\"\" while a character is still incomplete), the model's probability
    of it at its step, the `alternatives` at that step: (text, probability) pairs, most probable first, and `rank`,
    where the chosen token stands among them (0: the most probable; None: below them, a sampled long shot)."""

    text: str
    prob: float
    alternatives: tuple[tuple[str, float], ...]
    rank: int | None = None

    def __repr__(self) -> str:
        return f"TokenProb({self.text!r}, {self.prob:.3f}, alternatives={len(self.alternatives)})"


def checked_k(k: Any, name: str = "logprobs") -> int | None:
    """The number of alternatives asked for (1..MAX_ALTERNATIVES), None for none; LlamaError in one line otherwise."""
    if k is None or k is False:
        return None
    if k is True:
        return 5
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_ALTERNATIVES:
        raise LlamaError(f"{name} is the number of alternatives to keep at each token, 1 to {MAX_ALTERNATIVES} "
                         f"(e.g. {name}=5); got {k!r}.")
    return int(k)


def probabilities(logits: np.ndarray) -> np.ndarray:
    """softmax"""
    weights = np.exp(logits - logits.max())
    return weights / weights.sum()


def top(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ids of the k most probable tokens, most probable first, and their probabilities."""
    k = min(k, probs.size)
    ids = np.argpartition(-probs, k - 1)[:k]
    ids = ids[np.argsort(-probs[ids], kind="stable")]
    return ids, probs[ids]


def sampled(logits: np.ndarray, sampling: Sampling) -> np.ndarray:
    """The distribution the sampler draws from: temperature, then top-k, then top-p (greedy: all on the argmax)."""
    if sampling.temperature == 0:
        out = np.zeros(logits.size)
        out[int(np.argmax(logits))] = 1.0
        return out
    z = logits / sampling.temperature
    keep = sampler_keeps(z, sampling.top_k, sampling.top_p)
    weights = np.where(keep, np.exp(z - z[keep].max()), 0.0)
    return weights / weights.sum()


class TokenTexts:
    """Text of a candidate token where it would stand: after the token before it (so a leading space shows, even
    with tokenizers that drop it at the start of a text); end-of-turn and other control tokens by name in brackets."""

    def __init__(self, engine: Any) -> None:
        tokenizer = engine.tokenizer
        self._backend = getattr(tokenizer, "backend_tokenizer", None)
        self._tokenizer = tokenizer
        self.ends = set(tokenizer.convert_tokens_to_ids(engine.end_tokens))
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        self.controls = {i: str(getattr(t, "content", t)) for i, t in added.items() if getattr(t, "special", False)}

    def _decode(self, ids: list[int]) -> str:
        if self._backend is not None:
            return self._backend.decode(ids, skip_special_tokens=False)
        return self._tokenizer.decode(ids, skip_special_tokens=False)

    def texts(self, tokens: Any, before: int | None) -> list[str]:
        """The text of each of `tokens` where it would stand after `before` (the token written last; None: none)."""
        plain = before is None or before in self.controls or before in self.ends
        head = "" if plain else self._decode([before])
        return [self._text(int(token), before, head, plain) for token in tokens]

    def _text(self, token: int, before: Any, head: str, plain: bool) -> str:
        if token in self.ends:
            return "[end of reply]"
        if token in self.controls:
            return f"[{self.controls[token]}]"
        if plain:
            return self._decode([token])
        both = self._decode([before, token])
        return both[len(head):] if both.startswith(head) else self._decode([token])


class ProbStream(WorkerStream):
    """Text pieces of one reply as they are written, each token's TokenProb appended to `tokens` (decoded on a worker
    thread: generate_batch's callback reduces each step to its top K)."""

    thread_name = "ct2-magics reply with probabilities"

    def __init__(self, engine: Any, prompt_ids: list[int], sampling: Sampling, stats: Stats, stop: threading.Event,
                 k: int, tokens: list[TokenProb], *, split: int = 0) -> None:
        self.sampling, self.k, self.tokens, self.split = sampling, k, tokens, split
        self.names = TokenTexts(engine)
        self.ended = False
        self._before: int | None = None
        super().__init__(engine, prompt_ids, stats, stop)

    def work(self) -> None:
        """Rounds of generate_batch until the reply ends, max_tokens runs out, or `stop` is set."""
        import ctranslate2

        engine, sampling, vocabulary = self.engine, self.sampling, self.engine.vocabulary_size
        reply: list[int] = []
        errors: list[BaseException] = []

        def on_step(step: Any) -> bool:  # CTranslate2's thread: an error is handed back, never lost
            try:
                if self.stop.is_set():
                    return True
                probs = probabilities(host_row(step.logits, vocabulary))
                ids, chances = top(probs, self.k)
                token = int(step.token_id)
                self.put((token, float(probs[token]) if token < probs.size else 0.0, ids, chances))
                if token in self.names.ends:
                    self.ended = True
                    return True
                reply.append(token)
                return False
            except BaseException as e:
                errors.append(e)
                return True

        if sampling.seed is not None:
            ctranslate2.set_random_seed(sampling.seed)
        options = {k: v for k, v in sampling.to_ct2(vocabulary).items() if k != "max_length"}
        per_round = max(16, ROUND_LOGITS_BYTES // (vocabulary * 4))
        while not (self.stop.is_set() or self.ended or errors) and len(reply) < sampling.max_tokens:
            tokens, static = ct2_prompts(engine, [self.prompt + reply], self.split)
            steps = min(per_round, sampling.max_tokens - len(reply))
            results = engine.generator.generate_batch(
                tokens, max_length=steps, return_logits_vocab=True, include_prompt_in_result=False,
                end_token=engine.end_tokens, callback=on_step, **static, **options)
            if static.get("cache_static_prompt"):
                engine.prefixes.mark_ready(self.prompt[:len(static["static_prompt"])])
            if len(results[0].sequences_ids[0]) < steps and not self.stop.is_set():
                self.ended = True  # a round shorter than asked, not stopped: the model ended the reply
            del results
        if errors:
            raise errors[0]

    def token(self, step: Any) -> int | None:
        return None if step[0] in self.names.ends else step[0]

    def took(self, step: Any, piece: str) -> None:
        token, prob, ids, chances = step
        alternatives = tuple(zip(self.names.texts(ids, self._before), map(float, chances)))
        where = np.flatnonzero(ids == token)
        self.tokens.append(TokenProb(piece, prob, alternatives, int(where[0]) if where.size else None))
        self._before = token

    def finish(self) -> str:
        return "interrupted" if self.stop.is_set() else "stop" if self.ended else "length"


def next_distribution(engine: Any, prompt_ids: list[int], split: int = 0) -> np.ndarray:
    """The model's distribution over the vocabulary for the token after `prompt_ids` (one step of generate_batch)."""
    seen: list[np.ndarray] = []

    def on_step(step: Any) -> bool:
        seen.append(host_row(step.logits, engine.vocabulary_size))
        return True

    tokens, static = ct2_prompts(engine, [prompt_ids], split)
    engine.generator.generate_batch(tokens, max_length=1, return_logits_vocab=True, include_prompt_in_result=False,
                                    end_token=[], callback=on_step, sampling_topk=1, **static)
    if not seen:
        raise LlamaError("The model returned no distribution for the next token; try another prompt.")
    return seen[0]
