"""The kernel's one loaded model: a CTranslate2 Generator and its tokenizer, checked in full before the loaded one
is freed. Its prompt side is core/planning.py, its decoding core/decoding.py."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ct2_magics.core.decoding import Decoding, IncrementalDecoder, Stats
from ct2_magics.core.device import choose_compute_type, choose_device, openmp_safe_threads
from ct2_magics.core.encoder import Encoder
from ct2_magics.core.options import model_defaults
from ct2_magics.core.planning import PromptPlanning
from ct2_magics.core.prefix_cache import PrefixCache, give_memory_back, kv_bytes_per_token
from ct2_magics.errors import LlamaError, first_line
from ct2_magics.models.modelfile import check_llama3_rope, read_json, read_vocabulary, remote_code, saved_compute_type
from ct2_magics.models.quiet import quiet_libraries

__all__ = ["Engine", "IncrementalDecoder", "Stats", "load_tokenizer"]

# Below this size of model.bin, CPU decoding runs on one thread: such a model's steps are too small to
# split. Measured on 2 cores (BENCHMARKS.md, "Threads"): 1 thread decoded smollm2 int8 (129 MB) 1.5x
# and its float32 conversion (513 MB) 1.25x faster than 2; a 936 MB int8 model was even (0.95x).
SMALL_MODEL_BYTES = 640 * 2**20
# A batch on such a one-thread model runs on this many one-thread workers at most, one per core: measured on
# 2 cores (BENCHMARKS.md, Findings H), 64 smollm2 prompts decoded 2.2x faster on two one-thread workers than
# on one, and 2 threads on one worker were slower than 1 (each of its steps is too small to split).
MAX_BATCH_WORKERS = 4
_END_OF_TURN = ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|im_end|>", "<end_of_turn>")
# A short chat that every model must be able to template, encode and feed to its CTranslate2 vocabulary.
_SAMPLE_CHAT = [{"role": "user", "content": "Hello, world! 123"}, {"role": "assistant", "content": "Hi."},
                {"role": "user", "content": "Again?"}]


class Engine(PromptPlanning, Decoding):
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
        self._init_planning()
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
        # their own (made at the first batch), with its own static-prompt cache (its workers share it: BENCHMARKS.md
        # Findings L); the streaming Generator keeps one worker of its own and its own cache.
        self.batch_workers = min(MAX_BATCH_WORKERS, _cores()) if small and threads == 1 else 1
        self._compute_type = chosen
        self._batcher: Any = None
        try:
            self.generator = ctranslate2.Generator(
                str(self.model_dir), device=self.device, compute_type=chosen, intra_threads=threads
            )
        except (RuntimeError, ValueError, OSError) as e:
            raise LlamaError(f"Could not load {self.model_dir}/model.bin ({first_line(e)}); download or convert it again.") from None
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

    def reload(self) -> None:
        """Load the weights again after unload_model() (a failed replacement): CTranslate2's cache is empty then."""
        if self.generator is not None:
            self.generator.load_model()
            self.prefixes.forget("stream")  # the batch workers' Generator was not unloaded: its cache stays

    def clear_cache(self, *, over_budget: bool = False, room: int = 0) -> None:
        """Empty CTranslate2's static-prompt caches, both Generators' (unload and load; the caller holds the model).

        over_budget: only if it holds more than its budget (which a lower prefix_cache_mb can make it);
        room: only if a prefix of that many tokens would not fit beside what it holds (and fits alone).
        """
        p = self.prefixes
        if room and (p.used + p.size(room) <= p.limit or p.size(room) > p.limit):
            return
        if self.generator is not None and (not over_budget or p.used > p.limit):
            self.wait_idle()
            p.clear(self.generators())

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
            raise LlamaError(f"Could not load the tokenizer in {model_dir} ({first_line(e)}); copy the original model's "
                             "tokenizer files there.") from None
