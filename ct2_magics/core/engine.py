"""The kernel's one CTranslate2 Generator and tokenizer: loading, device and compute type, token streaming, stop."""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from ct2_magics.core.encoder import Encoder
from ct2_magics.core.device import choose_compute_type, choose_device, openmp_safe_threads
from ct2_magics.errors import LlamaError
from ct2_magics.models.modelfile import check_llama3_rope, read_json, read_vocabulary, remote_code, saved_compute_type
from ct2_magics.core.options import Sampling, model_defaults
from ct2_magics.core.prefix_cache import EXACT_ROWS, SPLIT_MIN_TOKENS, PrefixCache, give_memory_back, kv_bytes_per_token
from ct2_magics.models.quiet import quiet_libraries

# Below this size of model.bin, CPU decoding runs on one thread: such a model's steps are too small to
# split. Measured on 2 cores (BENCHMARKS.md, "Threads"): 1 thread decoded smollm2 int8 (129 MB) 1.5x
# and its float32 conversion (513 MB) 1.25x faster than 2; a 936 MB int8 model was even (0.95x).
SMALL_MODEL_BYTES = 640 * 2**20
# A batch on such a one-thread model runs on this many one-thread workers at most, one per core: measured on
# 2 cores (BENCHMARKS.md, Findings H), 64 smollm2 prompts decoded 2.2x faster on two one-thread workers than
# on one, and 2 threads on one worker were slower than 1 (each of its steps is too small to split).
MAX_BATCH_WORKERS = 4
# System prompts whose encoded block may go to CTranslate2 as a cached static_prompt (within the cache's budget).
MAX_CACHED_SYSTEM_PROMPTS = 4
_END_OF_TURN = ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|im_end|>", "<end_of_turn>")
# A short chat that every model must be able to template, encode and feed to its CTranslate2 vocabulary.
_SAMPLE_CHAT = [{"role": "user", "content": "Hello, world! 123"}, {"role": "assistant", "content": "Hi."},
                {"role": "user", "content": "Again?"}]


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


class Engine:
    """One loaded model: a ctranslate2.Generator, its tokenizer, end tokens and generation defaults."""

    def __init__(self, model_dir: Path, *, name: str, device: str = "auto", compute_type: str = "auto", threads: int = 0,
                 cache_limit: int = 0, make_room: Callable[[], None] = lambda: None) -> None:
        """Check everything cheap first, then call make_room() (free the old model), then load the weights.

        cache_limit: bytes CTranslate2's static-prompt cache may hold (system blocks, prefilled chats); 0: none.
        """
        import ctranslate2

        self.name = name
        self.requested = (device, compute_type)
        self.model_dir = Path(model_dir)
        self.device = choose_device(device)
        self.saved_type = saved_compute_type(self.model_dir)
        chosen, notice = choose_compute_type(compute_type, self.device, self.saved_type)
        self.notices: list[str] = [n for n in (notice, check_llama3_rope(self.model_dir)) if n]
        self.tokenizer = load_tokenizer(self.model_dir)
        self.encoder = Encoder(self.tokenizer, name)
        self._system_blocks: dict[str, list[int]] = {}
        self._last_prompt: tuple[Any, list[int]] | None = None  # (template and messages, their ids)
        self._turn_prefixes: dict[Any, list[int]] = {}  # (template and history) -> Engine.turn_prefix
        # Everything a request needs is checked before the loaded model is freed: one that fails here costs nothing.
        vocabulary = read_vocabulary(self.model_dir)
        if not vocabulary:
            raise LlamaError(f"{self.model_dir} has no readable vocabulary.json (or vocabulary.txt); convert the model again.")
        self.vocabulary_size = len(vocabulary)
        gen_config = read_json(self.model_dir / "generation_config.json")
        self.end_tokens = self._end_tokens(gen_config, set(vocabulary))
        self._check_template(vocabulary)
        self.defaults = model_defaults(gen_config)
        self.context_length = self._context_length()
        make_room()
        small = threads == 0 and self.device == "cpu" and (self.model_dir / "model.bin").stat().st_size < SMALL_MODEL_BYTES
        threads = 1 if small else threads
        if self.device == "cpu":
            threads, notice = openmp_safe_threads(threads)
            self.notices += [notice] if notice else []
        self.threads = threads  # 0: CTranslate2's default (OMP_NUM_THREADS or min(4, cores))
        # Batches of a model ct2-magics put on one thread run on one one-thread worker per core, in a Generator of
        # their own (made at the first batch): one Generator's workers each keep their own static-prompt cache, so
        # the streaming Generator keeps one worker and its cache hits.
        self.batch_workers = min(MAX_BATCH_WORKERS, _cores()) if small and threads == 1 else 1
        self._compute_type = chosen
        self._batcher: Any = None
        try:
            self.generator = ctranslate2.Generator(
                str(self.model_dir), device=self.device, compute_type=chosen, intra_threads=threads
            )
        except (RuntimeError, ValueError, OSError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise LlamaError(f"Could not load {self.model_dir}/model.bin ({first}); download or convert it again.") from None
        self.compute_type = self.generator.compute_type
        self.prefixes = PrefixCache(kv_bytes_per_token(self.model_dir, self.compute_type), cache_limit)

    def _end_tokens(self, gen_config: dict, vocabulary: set[str]) -> list[str]:
        """The tokens that end a reply; only those CTranslate2's vocabulary has (it refuses others at every request)."""
        ids = gen_config.get("eos_token_id")
        ids = list(ids) if isinstance(ids, list) else [ids]
        ids.append(self.tokenizer.eos_token_id)
        vocab = self.tokenizer.get_vocab()
        tokens = {t for t in self.tokenizer.convert_ids_to_tokens([i for i in ids if isinstance(i, int)])}
        tokens |= {t for t in _END_OF_TURN if t in vocab}
        found = sorted(t for t in tokens if t and t in vocabulary)
        if not found:
            wanted = ", ".join(sorted(t for t in tokens if t)) or "none named"
            raise LlamaError(f"{self.model_dir}/vocabulary.json has none of the tokens that end a reply ({wanted}); "
                             "its tokenizer files belong to another model: copy the right ones there.")
        return found

    def _check_template(self, vocabulary: list[str]) -> None:
        """A short chat templates, encodes, and gives the same tokens in the tokenizer and in vocabulary.json."""
        ids = self.prompt_ids(_SAMPLE_CHAT)
        tokens = self.tokenizer.convert_ids_to_tokens(ids)
        for i, token in zip(ids, tokens):
            theirs = vocabulary[i] if 0 <= i < len(vocabulary) else None
            if theirs != token:
                raise LlamaError(f"{self.model_dir}: the tokenizer and vocabulary.json disagree (token {i} is {token!r} "
                                 f"in one, {theirs!r} in the other); copy the tokenizer files that belong to this model.")

    def _context_length(self) -> int:
        limit = getattr(self.tokenizer, "model_max_length", 0) or 0
        return int(limit) if 0 < limit < 10**7 else 8192

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

    def reload(self) -> None:
        """Load the weights again after unload_model() (a failed replacement): CTranslate2's cache is empty then."""
        if self.generator is not None:
            self.generator.load_model()
            self.prefixes.forget()

    def clear_cache(self, *, over_budget: bool = False) -> None:
        """Empty CTranslate2's static-prompt cache (unload and load the model; the caller holds it).

        over_budget: only if it holds more than its budget (which a lower prefix_cache_mb can make it).
        """
        if self.generator is not None and (not over_budget or self.prefixes.used > self.prefixes.limit):
            self.wait_idle()
            self.prefixes.clear(self.generator)

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        return len(self.prompt_ids(messages))

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
            tokens, static = self._ct2_prompts([prompt_ids])
        prefix = prompt_ids[:len(static.get("static_prompt", ()))]
        stats.cached_tokens = len(prefix) if prefix and self.prefixes.ready(prefix) else 0
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
                    self.prefixes.mark_ready(prefix)  # CTranslate2 has computed and kept it by its first step
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

    def _batch_generator(self) -> Any:
        """The Generator batches run on: the streaming one, or (batch_workers > 1) one with a one-thread worker per core."""
        if self.batch_workers > 1 and self._batcher is None:
            import ctranslate2

            try:
                self._batcher = ctranslate2.Generator(str(self.model_dir), device=self.device, intra_threads=1,
                                                      compute_type=self._compute_type, inter_threads=self.batch_workers)
            except (RuntimeError, ValueError, OSError):  # e.g. model.bin deleted since the load: use the loaded one
                self.batch_workers = 1
        return self._batcher or self.generator

    def generate_batch(self, prompts: list[list[int]], sampling: Sampling, stop: threading.Event) -> list[list[int]]:
        """Reply token ids for independent prompts, decoded together, in input order; `stop` ends them within a step."""
        import ctranslate2

        if sampling.seed is not None:
            ctranslate2.set_random_seed(sampling.seed)
        tokens, static = self._ct2_prompts(prompts)
        # One batch per worker; CTranslate2 runs them at once and returns the results in input order. Should the
        # workers fail to load, the same batches take turns on the loaded Generator (same batches, same replies).
        per_batch = math.ceil(len(tokens) / self.batch_workers)
        results = self._batch_generator().generate_batch(
            tokens, max_batch_size=per_batch, end_token=self.end_tokens, include_prompt_in_result=False,
            callback=lambda _step: stop.is_set(), **static, **sampling.to_ct2(self.vocabulary_size),
        )
        if static:
            self.prefixes.mark_ready(prompts[0][:len(static["static_prompt"])])
        end_ids = set(self.tokenizer.convert_tokens_to_ids(self.end_tokens))
        return [[i for i in r.sequences_ids[0] if i not in end_ids] for r in results]

    def decode(self, ids: list[int]) -> str:
        with quiet_libraries():  # e.g. the clean_up_tokenization_spaces notice, on a model's first decode
            return self.tokenizer.decode(ids, skip_special_tokens=True)

    def close(self) -> None:
        """Free the model's memory."""
        self.wait_idle()
        generator, self.generator = self.generator, None
        batcher, self._batcher = self._batcher, None
        for g in (generator, batcher):
            if g is not None:
                g.unload_model()
        del generator, batcher
        give_memory_back()


def _cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def load_tokenizer(model_dir: Path) -> Any:
    """The model's own tokenizer and chat template, through transformers, quietly; never the model's own code."""
    code = remote_code(model_dir)
    if code is not None:
        raise LlamaError(f"{model_dir} asks to run its own Python code ({code}); ct2-magics never runs code from a "
                         "model, so it was not loaded. Use a model whose tokenizer is a plain tokenizer.json.")
    with quiet_libraries():
        from ct2_magics.models.libraries import tokenizer_class  # AutoTokenizer, or without torch what it would pick

        loader = tokenizer_class(model_dir)
        try:
            return loader.from_pretrained(str(model_dir), local_files_only=True, trust_remote_code=False)
        except Exception as e:  # transformers raises many types for broken tokenizer files
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise LlamaError(f"Could not load the tokenizer in {model_dir} ({first}); copy the original model's tokenizer files there.") from None
