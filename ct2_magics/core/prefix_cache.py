"""What CTranslate2's static-prompt cache holds for one model: which prefixes, and the memory each takes.

CTranslate2 keeps the decoder state (the K/V of every layer) of each `static_prompt` it was asked to
cache, keyed by the exact token sequence, with no size limit and no eviction: only unloading the model
empties it (OpenNMT/CTranslate2 #1409, #1450). This module counts what it holds, so that the engine
stays within a memory budget and clears the cache (unload + load) when it would not.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

# Pieces of fewer rows go through CTranslate2's int8 CPU GEMM (oneDNN) another way. Measured on SmolLM2
# int8 (AVX-512 VNNI), a 52-token prompt sent as static prompt + rest gave the whole prompt's greedy reply
# for every cut with >= 16 tokens before it and >= 17 after it, and for almost no cut with fewer. So a
# cached prefix is at least this long and stops this many tokens short of the message it serves. On long
# prompts even such cuts change near-tie tokens (BENCHMARKS.md, Findings): see SPLIT_MIN_TOKENS.
EXACT_ROWS = 16
# A prompt whose turn prefix (Engine.turn_prefix: the chat before the new message, less EXACT_ROWS tokens)
# has at least this many tokens is always sent split there, cached or not: int8 logits depend on where a
# prompt is split (measured: BENCHMARKS.md, Findings), so the split must not depend on what is cached.
SPLIT_MIN_TOKENS = 96


def kv_bytes_per_token(model_dir: str | Path, compute_type: str) -> int | None:
    """Bytes CTranslate2 caches per prompt token: layers x 2 (K, V) x heads kept x head size x bytes per value.

    Heads kept: for grouped-query attention (1 < KV heads < heads) CTranslate2 repeats the K/V heads up
    to the query heads before it stores them (layers/attention.cc, replicate_heads), so a GQA model
    caches heads, not KV heads: 3x the K/V size for SmolLM2 (9 heads, 3 KV heads), 4x for Llama 3.
    Only multi-query models (one KV head) keep one. None when model.bin does not say (then nothing is cached).
    """
    from ct2_magics.models.modelfile import read_index
    from ct2_magics.models.quantization import value_bytes

    try:
        index = read_index(model_dir)
    except (OSError, ValueError):
        return None

    def number(name: str) -> int | None:
        v = index.get(name)
        if v is None or v.data is None or v.shape != ():
            return None
        fmt = {"int8": "b", "int16": "h", "int32": "i"}.get(v.dtype)
        return int.from_bytes(v.data, "little", signed=True) if fmt else None

    layers = sum(1 for name in index if name.startswith("decoder/layer_") and name.endswith("/self_attention/linear_1/weight"))
    heads = number("decoder/num_heads")
    out = index.get("decoder/layer_0/self_attention/linear_1/weight")
    if not layers or not heads or out is None or len(out.shape) != 2:
        return None
    head_dim = number("decoder/layer_0/self_attention/head_dim") or out.shape[0] // heads
    multi_query = number("decoder/layer_0/self_attention/multi_query") == 1
    kept = 1 if multi_query else heads
    # CTranslate2 keeps the state in the decoder's output type.
    return layers * 2 * kept * head_dim * value_bytes(compute_type)


Key = tuple[str, tuple[int, ...]]  # (which Generator holds it: "stream" or "batch", the prefix's ids)


class PrefixCache:
    """The prefixes (token ids) CTranslate2 holds for one loaded model, their bytes, and the budget.

    A model may have two Generators (Engine: "stream" for replies and chats, "batch" for the batch workers when a
    small CPU model batches on one one-thread worker per core); each keeps its own cache, so a prefix is counted
    once per Generator that holds it. The workers of one Generator on one device share its cache (CTranslate2
    gives every replica the same model object, and the cache lives on the model: measured, BENCHMARKS.md
    Findings L), so a Generator's prefix is counted once, whatever its workers.
    """

    def __init__(self, bytes_per_token: int | None, limit: int) -> None:
        self.bytes_per_token = bytes_per_token
        self.limit = limit  # bytes; 0: cache nothing
        self._held: dict[Key, int] = {}  # counted, with their bytes, oldest first
        self._use: dict[Key, str] = {}  # what it serves: chat (a prefilled turn), system (a system block), batch
        self._hits: dict[Key, int] = {}  # requests (a reply, a batch) that read it from the cache
        self._ready: set[Key] = set()  # held and computed by CTranslate2
        self._lock = threading.Lock()  # status() reads from any thread
        self._unknown = False  # a prefill failed: what CTranslate2 kept is unknown until the next clear
        self.state = "idle"  # idle | prefilling | clearing (what the model's worker is doing with it)
        self.prefills = 0  # prefixes put into the cache in idle time
        self.clears = 0  # times the cache was emptied (unload + load)
        # The last batch (one chunk of llama.generate / llama.map): static prompt tokens, whether CTranslate2 was
        # asked to cache them, and whether they were read from the cache. Batches have no reply metadata.
        self.last_batch: dict[str, object] | None = None

    @property
    def used(self) -> int:
        with self._lock:
            return sum(self._held.values())

    @property
    def enabled(self) -> bool:
        return self.bytes_per_token is not None and self.limit > 0

    def size(self, tokens: int) -> int:
        return tokens * (self.bytes_per_token or 0)

    def holds(self, prefix: Sequence[int], place: str = "stream") -> bool:
        with self._lock:
            return (place, tuple(prefix)) in self._held

    def fits(self, prefix: Sequence[int], place: str = "stream") -> bool:
        """Whether `prefix` is held, or would be counted now beside what is held."""
        with self._lock:
            held = (place, tuple(prefix)) in self._held
            return held or (self.enabled and not self._unknown
                            and sum(self._held.values()) + self.size(len(prefix)) <= self.limit)

    def split(self, prompts: list[list[int]], candidates: Iterable[Sequence[int]], place: str = "stream") -> int:
        """Length of the first of `candidates` (system blocks) that begins every prompt, with EXACT_ROWS
        tokens or more in it and after it, and that is held or fits in the budget (then counted); 0: none.
        """
        if not self.enabled:
            return 0
        return next((len(c) for c in candidates if begins(c, prompts) and self.admit(c, place, "system")), 0)

    def ready(self, prefix: Sequence[int], place: str = "stream") -> bool:
        """Whether CTranslate2 has computed and cached `prefix` (a request that sends it reads it from the cache)."""
        with self._lock:
            return (place, tuple(prefix)) in self._ready

    def mark_ready(self, prefix: Sequence[int], place: str = "stream", *, hit: bool = False) -> None:
        """CTranslate2 has computed and kept `prefix`; hit: the request read it from the cache (counted in summary)."""
        key = (place, tuple(prefix))
        with self._lock:
            if key in self._held:
                self._ready.add(key)
                self._hits[key] += int(hit)

    def admit(self, prefix: Sequence[int], place: str = "stream", use: str = "chat") -> bool:
        """Count `prefix` as held if it is already held or fits in the budget now; False if it does not fit."""
        key = (place, tuple(prefix))
        with self._lock:
            if key in self._held:
                return True
            if not self.enabled or self._unknown or sum(self._held.values()) + self.size(len(key[1])) > self.limit:
                return False
            self._held[key] = self.size(len(key[1]))
            self._use[key], self._hits[key] = use, 0
            return True

    def prefill(self, generators: dict[str, Any], prefix: list[int], tokens: list[str], waiting: Callable[[], bool]) -> str:
        """Have CTranslate2 cache `prefix` (its tokens as strings) in the stream Generator; clear the cache first when
        it would not fit.

        The caller holds the model. Returns what happened: cached, held (already), off, too long (for
        the budget alone), cleared (emptied, and then a request was waiting), busy (CTranslate2 would not
        unload), or failed.
        """
        if not self.enabled or not prefix:
            return "off"
        if self.holds(prefix):
            return "held"
        if self.size(len(prefix)) > self.limit:
            return "too long"
        if not self.admit(prefix):
            if not self.clear(generators):
                return "busy"
            if waiting() or not self.admit(prefix):
                return "cleared"
        self.state = "prefilling"
        try:
            # CTranslate2 caches the static prompt's state, then decodes one step after a one-token prompt.
            generators["stream"].generate_batch([tokens[-1:]], static_prompt=tokens, cache_static_prompt=True,
                                                max_length=1, include_prompt_in_result=False)
        except (RuntimeError, ValueError):  # e.g. out of memory: what CTranslate2 kept is unknown, so clear next time
            self._unknown = True
            return "failed"
        finally:
            self.state = "idle"
        self.mark_ready(prefix)
        self.prefills += 1
        return "cached"

    def clear(self, generators: dict[str, Any]) -> bool:
        """Empty the caches of `generators` ({place: Generator}) the only way CTranslate2 allows: unload and load
        each model (the caller holds it, idle); False if one would not unload (its cache and count stay).

        On the CPU this reads model.bin again (from the page cache). `unload_model(to_cpu=True)` is no
        cheaper way: it does nothing on the CPU, and on a GPU the copy it keeps shares the cache object
        with the model (python/cpp/replica_pool.h; Model::clone copies the shared_ptr).
        """
        self.state = "clearing"
        emptied: list[str] = []
        try:
            for place, generator in generators.items():
                generator.unload_model()  # does nothing while CTranslate2 still runs a batch: then the cache stays
                if generator.model_is_loaded:
                    break
                emptied.append(place)
            return len(emptied) == len(generators)
        finally:
            if emptied:
                give_memory_back()
                for place in emptied:
                    generators[place].load_model()
                    self.forget(place)
            if emptied and len(emptied) == len(generators):
                self.clears += 1
            self.state = "idle"

    def forget(self, place: str | None = None) -> None:
        """The model was loaded again: CTranslate2 holds nothing now (in the Generator at `place`; None: in any)."""
        with self._lock:
            for key in [k for k in self._held if place is None or k[0] == place]:
                del self._held[key], self._use[key], self._hits[key]
                self._ready.discard(key)
            if place in (None, "stream"):  # where prefills run
                self._unknown = False

    def summary(self) -> dict[str, object]:
        """What the cache holds now: totals, each prefix (what it serves, where, tokens, bytes, hits), the budget,
        and what the worker does."""
        with self._lock:
            held = [{"use": self._use[k], "generator": k[0], "tokens": len(k[1]), "bytes": b, "ready": k in self._ready,
                     "hits": self._hits[k]} for k, b in self._held.items()]
        return {"prefixes": len(held), "tokens": sum(h["tokens"] for h in held), "bytes": sum(h["bytes"] for h in held),
                "limit": self.limit, "state": self.state, "prefills": self.prefills, "clears": self.clears,
                "held": held, "last_batch": self.last_batch}


def begins(prefix: Sequence[int], prompts: list[list[int]]) -> bool:
    """Whether `prefix` begins every prompt, with EXACT_ROWS tokens or more in it and more after it."""
    n, key = len(prefix), tuple(prefix)
    return n >= EXACT_ROWS and all(len(p) - n > EXACT_ROWS and tuple(p[:n]) == key for p in prompts)


def give_memory_back() -> None:
    """Return freed heap to the system: glibc keeps what CTranslate2 freed until malloc_trim (seen here)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)
    except OSError:  # not glibc: nothing to do
        pass
