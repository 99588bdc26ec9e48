"""Decoding: streaming one reply token by token and decoding independent prompts in batches, both stoppable
within a step; text pieces that never split a multi-byte character."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ct2_magics.core.loops import BatchWatch
from ct2_magics.core.options import Sampling
from ct2_magics.models.quiet import quiet_libraries


@dataclass
class Stats:
    """What one generation did, filled in while it streams."""

    prompt_tokens: int = 0
    reply_tokens: int = 0
    started: float = field(default_factory=time.perf_counter)
    first_token_s: float | None = None
    cached_tokens: int = 0  # prompt tokens whose K/V came from CTranslate2's static-prompt cache
    elapsed_s: float = 0.0
    finish: str = "running"  # stop | length | interrupted

    @property
    def tokens_per_s(self) -> float:
        decode = self.elapsed_s - (self.first_token_s or 0.0)
        return (self.reply_tokens - 1) / decode if self.reply_tokens > 1 and decode > 0 else 0.0


def host_row(logits: Any, vocabulary: int) -> Any:
    """One step's logits as a float64 numpy row on the host (a GPU's StorageView is copied over first)."""
    import numpy as np

    try:
        row = np.asarray(logits, dtype=np.float64)
    except (TypeError, ValueError, RuntimeError):  # a CUDA StorageView has no array interface on the host
        import ctranslate2

        host = logits.to(ctranslate2.DataType.float32).to_device(ctranslate2.Device.cpu)
        row = np.asarray(host, dtype=np.float64)
    return row.reshape(-1)[:vocabulary]


class IncrementalDecoder:
    """Turns token ids into text deltas without splitting multi-byte characters."""

    def __init__(self, tokenizer: Any) -> None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._tokenizer = tokenizer
        self._backend = backend
        if backend is not None:
            from tokenizers.decoders import DecodeStream

            self._stream = DecodeStream(skip_special_tokens=True)
        self._ids: list[int] = []
        self._emitted = ""

    def step(self, token_id: int) -> str:
        if self._backend is not None:
            return self._stream.step(self._backend, token_id) or ""
        # Slow tokenizers: decode the whole reply and hold back an unfinished character.
        self._ids.append(token_id)
        with quiet_libraries():
            text = self._tokenizer.decode(self._ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        delta, self._emitted = text[len(self._emitted):], text
        return delta


class Decoding:
    """Engine's decoding side (a mixin: it uses the engine's generator, tokenizer, end tokens and prompt planning)."""

    generator: Any
    tokenizer: Any
    end_tokens: list[str]
    vocabulary_size: int
    batch_workers: int
    prefixes: Any

    def stream(self, prompt_ids: list[int], sampling: Sampling, stats: Stats, stop: threading.Event, *,
               split: int = 0) -> Iterator[str]:
        """Yield text pieces of the reply; setting `stop` (or closing this iterator) ends decoding within a step.

        split: send the first `split` ids as CTranslate2's static prompt (Engine.chat_split), read from its
        cache when a prefill put them there; 0: a registered system block, if one begins the prompt.

        The caller holds the model (ModelOwner.turn), which waits for the decoder to go idle before the next use.
        """
        import ctranslate2

        stats.prompt_tokens = len(prompt_ids)
        stats.started = time.perf_counter()
        decoder = IncrementalDecoder(self.tokenizer)
        if split:
            tokens = [self.tokenizer.convert_ids_to_tokens(prompt_ids[split:])]
            static = {"static_prompt": self.tokenizer.convert_ids_to_tokens(prompt_ids[:split]),
                      "cache_static_prompt": self.prefixes.enabled and self.prefixes.holds(prompt_ids[:split])}
        else:
            tokens, static = self.ct2_inputs([prompt_ids])
        prefix = prompt_ids[:len(static.get("static_prompt", ()))]
        stats.cached_tokens = len(prefix) if prefix and self.prefixes.ready(prefix) else 0
        hit = stats.cached_tokens > 0
        (tokens,) = tokens
        if sampling.seed is not None:
            # CTranslate2 seeds each worker thread once, at its first sample (OpenNMT/CTranslate2#1757),
            # so this makes sampling reproducible only on a freshly loaded model.
            ctranslate2.set_random_seed(sampling.seed)
        # The callback is what really stops the decoder: a KeyboardInterrupt raised while this
        # thread waits inside the iterator would otherwise leave decoding running in the background.
        steps = self.generator.generate_tokens(
            tokens, end_token=self.end_tokens, callback=lambda _step: stop.is_set(), **static,
            **sampling.to_ct2(self.vocabulary_size),
        )
        try:
            for step in steps:
                if prefix and static["cache_static_prompt"]:
                    self.prefixes.mark_ready(prefix, hit=hit)  # CTranslate2 has computed and kept it by its first step
                    prefix = []
                if step.token in self.end_tokens:
                    stats.finish = "stop"
                    break
                stats.reply_tokens += 1
                now = time.perf_counter() - stats.started
                if stats.first_token_s is None:
                    stats.first_token_s = now
                stats.elapsed_s = now
                piece = decoder.step(step.token_id)
                if piece:
                    yield piece
            else:
                stats.finish = "interrupted" if stop.is_set() else "length"
        except BaseException:
            stats.finish = "interrupted"
            raise
        finally:
            stop.set()
            steps.close()
            stats.elapsed_s = time.perf_counter() - stats.started

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until the decoder has really finished its last step (the next request must not queue behind it)."""
        deadline = time.perf_counter() + timeout
        for g in (self.generator, self._batcher):
            while g is not None and (g.num_active_batches or g.num_queued_batches):
                if time.perf_counter() > deadline:
                    return False
                time.sleep(0.0005)
        return True

    def generators(self) -> dict[str, Any]:
        """The loaded Generators, each with its own static-prompt cache: "stream", and "batch" once made."""
        return {place: g for place, g in (("stream", self.generator), ("batch", self._batcher)) if g is not None}

    @property
    def batch_place(self) -> str:
        """Which Generator batches run on (see batch_generator): "batch" for one-thread workers, else "stream"."""
        return "batch" if self.batch_workers > 1 else "stream"

    def batch_generator(self) -> Any:
        """The Generator batches run on: the streaming one, or (batch_workers > 1) one with a one-thread worker per core."""
        if self.batch_workers > 1 and self._batcher is None:
            import ctranslate2

            try:
                self._batcher = ctranslate2.Generator(str(self.model_dir), device=self.device, intra_threads=1,
                                                      compute_type=self._compute_type, inter_threads=self.batch_workers)
            except (RuntimeError, ValueError, OSError):  # e.g. model.bin deleted since the load: use the loaded one
                self.batch_workers = 1
        return self._batcher or self.generator

    def generate_batch(self, prompts: list[list[int]], sampling: Sampling, stop: threading.Event,
                       loops: dict[int, str] | None = None) -> list[list[int]]:
        """Reply token ids for independent prompts, decoded together, in input order; `stop` ends them within a step.

        loops: when given, each reply is watched as it is written (core/loops.py) and stopped once it falls into a
        loop, keeping its text up to there as a streamed reply does; each reply stopped so is added to it, by its
        index in `prompts`, with the repeated span.
        """
        import ctranslate2

        if sampling.seed is not None:
            ctranslate2.set_random_seed(sampling.seed)
        generator = self.batch_generator()
        place = "stream" if generator is self.generator else "batch"
        # Cut at what the call's prompts share (share_prefix) or at a system block, whether it is cached or not.
        tokens, static = self.ct2_inputs(prompts, place, batch=True)
        prefix = prompts[0][:len(static.get("static_prompt", ()))]
        hit = bool(prefix) and self.prefixes.ready(prefix, place)
        self.prefixes.last_batch = {"static_tokens": len(prefix), "cached": bool(static.get("cache_static_prompt")),
                                    "hit": hit}
        # One batch per worker; CTranslate2 runs them at once and returns the results in input order. Should the
        # workers fail to load, the same batches take turns on the loaded Generator (same batches, same replies).
        per_batch = math.ceil(len(tokens) / self.batch_workers)
        end_ids = set(self.tokenizer.convert_tokens_to_ids(self.end_tokens))
        watch = None if loops is None else BatchWatch(len(prompts), lambda: IncrementalDecoder(self.tokenizer).step, end_ids)
        errors: list[BaseException] = []

        def callback(step: Any) -> bool:  # on CTranslate2's thread: an error there is handed back, never lost
            try:
                return stop.is_set() or (watch is not None and watch(step))
            except BaseException as e:
                errors.append(e)
                return True

        results = generator.generate_batch(
            tokens, max_batch_size=per_batch, end_token=self.end_tokens, include_prompt_in_result=False,
            callback=callback, **static, **sampling.to_ct2(self.vocabulary_size),
        )
        if errors:
            raise errors[0]
        if static.get("cache_static_prompt"):
            self.prefixes.mark_ready(prefix, place, hit=hit)
        replies = [[i for i in r.sequences_ids[0] if i not in end_ids] for r in results]
        if watch is not None and loops is not None:
            for row, (kept, span) in watch.stopped.items():
                replies[row] = replies[row][:kept]  # the tokens the watch read, whether or not CTranslate2 kept its last
                loops[row] = span
        return replies

    def decode(self, ids: list[int]) -> str:
        with quiet_libraries():  # e.g. the clean_up_tokenization_spaces notice, on a model's first decode
            return self.tokenizer.decode(ids, skip_special_tokens=True)

    def score_batch(self, sequences: list[list[int]], tokens_per_batch: int) -> list[list[float]]:
        """log P(token | the tokens before it) for every token of each sequence but the first, in input order:
        CTranslate2's score_batch over whole sequences (max_input_length=0), on the batch workers, at most
        `tokens_per_batch` tokens (padding included) in each batch a worker runs."""
        results = self.batch_generator().score_batch(
            [self.tokenizer.convert_ids_to_tokens(s) for s in sequences], max_batch_size=tokens_per_batch,
            batch_type="tokens", max_input_length=0)
        return [list(r.log_probs) for r in results]
