"""Exact constrained decoding on CTranslate2, which has no logits hook in Python (design and figures: BENCHMARKS.md,
"JSON that fits its schema").

llguidance says which tokens a schema allows next (a bitmask; forced runs, such as a key's name, come back as its
fast-forward tokens). Each reply decodes in rounds of `generate_batch` with the model's own sampler and KV cache: a
callback accepts each token the model picks while the mask allows it. The first pick the mask refuses stops that
reply's round; its step's logits (`return_logits_vocab`) give the token to write there instead, and the next round
re-reads prompt + reply. Greedy: when the model's argmax is allowed it is the argmax over allowed tokens; otherwise
that argmax is taken from the logits. Sampling: a sample of the model's distribution (temperature, top-k, top-p) that
is allowed is kept, a refused one is replaced by a draw from that distribution restricted to the allowed tokens,
which together is exactly that distribution restricted to them.
"""

from __future__ import annotations

import json
import math
import threading
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

from ct2_magics.core.decoding import host_row
from ct2_magics.core.options import Sampling
from ct2_magics.errors import LlamaError, first_line

# A round keeps every step's logits until it ends (CTranslate2 returns them all): at most this many bytes in all,
# so a long reply restarts now and then instead of holding its whole history of vocabularies.
ROUND_LOGITS_BYTES = 256 * 2**20
_tokenizers: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
CONTROL_MARK = "\ue000ct2-control:"  # a private-use prefix no text holds


def ll_tokenizer(engine: Any) -> Any:
    """llguidance's view of the engine's tokenizer (built once per loaded model: about a second for 49k tokens)."""
    tokenizer = _tokenizers.get(engine)
    if tokenizer is None:
        import llguidance

        ends = engine.tokenizer.convert_tokens_to_ids(engine.end_tokens)
        try:
            tokenizer = llguidance.LLTokenizer(_text_only(engine), n_vocab=engine.vocabulary_size, eos_token=ends)
        except ValueError as e:  # a tokenizer llguidance cannot read (e.g. a WordPiece decoder)
            raise LlamaError(f"schema= cannot use {engine.name}'s tokenizer ({first_line(e)}); use a model with a "
                             "byte-level BPE or SentencePiece tokenizer, or ask without schema=.") from None
        _tokenizers[engine] = tokenizer
    return tokenizer


def _text_only(engine: Any) -> str:
    """The tokenizer as JSON, its control tokens renamed so that no text can ever be tokenized into one.

    A tokenizer turns the text `<|eot_id|>` into the control token; llguidance tokenizes the text a schema forces
    (a key, a const, an enum value) with it, so a schema holding such text would write the control token, which ends
    the turn and vanishes from the reply. Renamed, they stay control tokens (never allowed in JSON) with their ids.
    """
    backend = getattr(engine.tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise LlamaError(f"schema= needs a fast (tokenizers) tokenizer; {engine.name}'s is a slow one.")
    data = json.loads(backend.to_str())
    data["padding"] = data["truncation"] = None
    vocab = data.get("model", {}).get("vocab")
    for token in data.get("added_tokens", []):
        if token.get("special"):
            text, token["content"] = token["content"], CONTROL_MARK + token["content"]
            if isinstance(vocab, dict) and vocab.get(text) == token["id"]:
                vocab[token["content"]] = vocab.pop(text)
    return json.dumps(data)


class Reply:
    """One reply being written under a schema: its tokens, its place in the grammar, and what ended it."""

    def __init__(self, engine: Any, schema: Any, prompt: list[int], budget: int, on_token: Callable[[int], None]) -> None:
        import llguidance

        self.matcher = llguidance.LLMatcher(ll_tokenizer(engine), schema.grammar(), log_level=0)
        if self.matcher.is_error():
            raise LlamaError(f"The schema cannot be used with {engine.name}: {self.matcher.get_error().splitlines()[0]}.")
        self.prompt, self.left, self.on_token = prompt, budget, on_token
        self.ends = set(engine.tokenizer.convert_tokens_to_ids(engine.end_tokens))
        added = getattr(engine.tokenizer, "added_tokens_decoder", {}) or {}
        self.controls = {i for i, t in added.items() if getattr(t, "special", False)} - self.ends
        self.vocabulary = engine.vocabulary_size
        self.ids: list[int] = []
        self.state = "running"  # running | refused (the model's pick was not allowed) | complete | length | failed
        self.restarts = 0
        self._bits: bytes | None = None  # the mask for the next token, computed once per position

    def _mask_bits(self) -> bytes:
        if self._bits is None:
            self._bits = self.matcher.compute_bitmask()
        return self._bits

    def allows(self, token: int) -> bool:
        """Whether the schema allows `token` next (an end token: when the JSON is complete)."""
        if token in self.ends:
            return self.matcher.is_accepting()
        bits = self._mask_bits()
        return 0 <= token < self.vocabulary and bool(bits[token >> 3] >> (token & 7) & 1)

    def mask(self) -> np.ndarray:
        allowed = np.unpackbits(np.frombuffer(self._mask_bits(), dtype=np.uint8), bitorder="little")[:self.vocabulary]
        allowed = allowed.astype(bool)
        allowed[list(self.ends)] = self.matcher.is_accepting()
        return allowed

    def take(self, token: int) -> None:
        """Write `token` (allowed); an end token completes the reply."""
        if token in self.ends:
            self.state = "complete"
            return
        if token in self.controls or not self.matcher.consume_token(token):  # JSON never holds a control token
            self.state = "failed"
            return
        self._bits = None
        self.ids.append(token)
        self.left -= 1
        self.on_token(token)
        if self.matcher.is_stopped():  # the JSON is closed: nothing may follow, so the reply ends without an end token
            self.state = "complete" if self.matcher.is_accepting() else "failed"
        elif self.left <= 0:
            self.state = "complete" if self.matcher.is_accepting() else "length"

    def fast_forward(self) -> None:
        """Write the tokens the schema forces (each the only token its mask allows), without asking the model."""
        if self.state == "refused":
            self.state = "running"
        if self.state == "running" and not self.matcher.is_stopped():
            for token in self.matcher.compute_ff_tokens():
                if self.state != "running":
                    break
                self.take(token)
        if self.state == "running" and self.matcher.is_stopped():
            self.state = "complete" if self.matcher.is_accepting() else "failed"

    def propose(self, token: int) -> bool:
        """The model picked `token` (CTranslate2's callback); True ends this reply's round."""
        if self.state != "running":
            return True
        if not self.allows(token):
            self.state = "refused"
            return True
        self.take(token)
        return self.state != "running"

    def replace(self, logits: np.ndarray, sampling: Sampling, rng: np.random.Generator) -> None:
        """Write the token the refused pick's step allows: greedy's argmax, or a draw, among allowed tokens."""
        allowed = self.mask()
        if not allowed.any():
            self.state = "failed"
            return
        self.take(pick(logits, allowed, sampling, rng))
        self.restarts += 1


def pick(logits: np.ndarray, allowed: np.ndarray, sampling: Sampling, rng: np.random.Generator) -> int:
    """Greedy: the most probable allowed token. Else a draw from the model's distribution (temperature, top-k, top-p)
    restricted to the allowed tokens; when the cuts leave none of them, from the tempered distribution over them."""
    z = np.asarray(logits, dtype=np.float64).reshape(-1)[:allowed.size]
    if sampling.temperature == 0:
        return int(np.argmax(np.where(allowed, z, -np.inf)))
    z = z / sampling.temperature
    keep = allowed & sampler_keeps(z, sampling.top_k, sampling.top_p)
    if not keep.any():
        keep = allowed
    weights = np.where(keep, np.exp(z - z[keep].max()), 0.0)
    return int(rng.choice(z.size, p=weights / weights.sum()))


def sampler_keeps(z: np.ndarray, top_k: int, top_p: float) -> np.ndarray:
    """The tokens CTranslate2's sampler may draw from: the top_k likeliest, then the fewest that hold top_p."""
    keep = np.ones(z.size, dtype=bool)
    if 0 < top_k < z.size:
        keep &= z >= np.partition(z, -top_k)[-top_k]
    if top_p < 1.0:
        order = np.argsort(-np.where(keep, z, -np.inf))
        probs = np.exp(z[order] - z[order[0]]) * keep[order]
        probs /= probs.sum()
        before = np.cumsum(probs) - probs  # what the likelier tokens hold: a token is kept while that is below top_p
        cut = np.zeros(z.size, dtype=bool)
        cut[order[(before < top_p) & (probs > 0)]] = True
        keep &= cut
    return keep


def decode(engine: Any, replies: list[Reply], sampling: Sampling, stop: threading.Event, *, split: int = 0,
           generator: Any = None, workers: int = 1) -> None:
    """Write every reply to the end (complete, out of max_tokens, or stopped), in rounds of generate_batch.

    split: the first `split` prompt ids go as CTranslate2's static prompt (a chat's turn prefix, see Engine.stream);
    0: a shared cached prefix or system block, as for a batch.
    """
    import ctranslate2

    generator = generator or engine.generator
    errors: list[BaseException] = []

    def propose(step: Any) -> bool:  # runs on CTranslate2's thread: an error there is handed back, never lost
        try:
            return stop.is_set() or active[step.batch_id].propose(step.token_id)
        except BaseException as e:
            errors.append(e)
            return True

    if sampling.seed is not None:
        ctranslate2.set_random_seed(sampling.seed)
    rng = np.random.default_rng(sampling.seed)
    options = {k: v for k, v in sampling.to_ct2(engine.vocabulary_size).items() if k != "max_length"}
    per_step = engine.vocabulary_size * 4
    while not stop.is_set():
        for reply in replies:
            reply.fast_forward()
        active = [r for r in replies if r.state == "running"]
        if not active:
            return
        tokens, static = ct2_prompts(engine, [r.prompt + r.ids for r in active], split)
        longest = max(len(t) for t in tokens) - min(len(t) for t in tokens)
        steps = max(1, min(max(r.left for r in active), ROUND_LOGITS_BYTES // (per_step * len(active)) - longest))
        before = [len(r.ids) for r in active]
        results = generator.generate_batch(
            tokens, max_length=steps, return_logits_vocab=True, include_prompt_in_result=False, end_token=engine.end_tokens,
            callback=propose, max_batch_size=math.ceil(len(tokens) / workers), **static, **options)
        if errors:
            raise errors[0]
        if static.get("cache_static_prompt"):
            engine.prefixes.mark_ready(active[0].prompt[:len(static["static_prompt"])])
        for reply, result, start in zip(active, results, before):
            if stop.is_set():
                return
            if reply.state == "refused":
                reply.replace(host_row(result.logits[0][-1], engine.vocabulary_size), sampling, rng)
            elif reply.state == "running" and len(reply.ids) == start:
                reply.state = "failed"  # the round wrote nothing and refused nothing: never loop on it
        del results, result  # their logits go before the next round's arrive


def ct2_prompts(engine: Any, prompts: list[list[int]], split: int) -> tuple[list[list[str]], dict[str, Any]]:
    """Token strings for CTranslate2 and its static-prompt arguments, cut as the engine cuts a chat or a batch."""
    if not split:
        return engine.ct2_inputs(prompts)
    head = prompts[0][:split]
    convert = engine.tokenizer.convert_ids_to_tokens
    return [convert(p[split:]) for p in prompts], {
        "static_prompt": convert(head), "cache_static_prompt": engine.prefixes.enabled and engine.prefixes.holds(head)}


def failure(reply: Reply, max_tokens: int) -> str | None:
    """Why a finished reply has no value (one line), or None when its JSON is complete."""
    if reply.state == "complete":
        return None
    if reply.state == "length":
        return (f"the JSON was not complete when max_tokens ({max_tokens}) ran out, so there is no value; raise "
                "max_tokens (-n) or ask for less")
    if reply.state == "failed":
        return "the schema allowed no token to go on with, so there is no value (does any value fit the schema?)"
    return "the reply was stopped before its JSON was complete, so there is no value"
