"""llama-cpp-python, driven for the same jobs as ct2-magics: one greedy stream, a chat with prefix reuse, a batch.

A benchmark-only tool, never a dependency of ct2-magics. `Batched` uses llama.cpp's low-level API the way
its `batched` example does (one context, one sequence per prompt, one llama_decode per step for all of
them): llama-cpp-python's `Llama` object decodes one sequence at a time.
"""

from __future__ import annotations

import time
from typing import Any

# llama.cpp's own advice for this VM (see /work/shared/notes): a native build dies on AMX instructions.
INSTALL = ("llama-cpp-python is not installed; to compare with it: apt-get install cmake build-essential && "
           'CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON '
           '-DGGML_AVX512_VNNI=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" '
           "pip install llama-cpp-python==0.3.36 (a source build, ~6 min); drop the AVX512 flags on a CPU without them.")
GREEDY = {"top_k": 1, "top_p": 1.0, "min_p": 0.0, "temp": 0.0, "repeat_penalty": 1.0}


def available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def open_model(path: str, threads: int, n_ctx: int = 4096) -> Any:
    """A llama_cpp.Llama on `threads` threads for prompt and decode, quiet."""
    import llama_cpp

    return llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False)


def stream(llm: Any, ids: list[int], max_tokens: int, fresh: bool = True) -> dict[str, Any]:
    """Greedy reply to prompt ids; `fresh` empties the KV cache first, else the prompt's cached prefix is reused."""
    if fresh:
        llm.reset()
    eos = llm.token_eos()
    out: list[int] = []
    t0 = time.perf_counter()
    first = None
    for tok in llm.generate(ids, **GREEDY):
        if first is None:
            first = time.perf_counter() - t0
        if tok == eos:
            break
        llm.detokenize([tok])  # text per token, as a streaming front end needs (ct2-magics decodes per token too)
        out.append(tok)
        if len(out) >= max_tokens:
            break
    total = time.perf_counter() - t0
    n = len(out)
    return {"ttft_ms": (first or 0.0) * 1e3, "decode_tok_s": (n - 1) / (total - first) if n > 1 and first else 0.0,
            "tokens": n, "ids": out, "text": llm.detokenize(out).decode("utf-8", "replace")}


def loop(llm: Any, prompts: list[list[int]], max_tokens: int) -> list[str]:
    """One prompt after another on one Llama; each reuses the KV of the prefix it shares with the last (the system block)."""
    return [stream(llm, ids, max_tokens, fresh=False)["text"] for ids in prompts]


class Batched:
    """Greedy replies to many prompts decoded together: one sequence id per prompt in one llama.cpp context."""

    def __init__(self, path: str, threads: int, n_seq: int, per_seq: int, n_batch: int = 512) -> None:
        import llama_cpp as L

        self.L = L
        L.llama_backend_init()
        self.model = L.llama_model_load_from_file(path.encode(), L.llama_model_default_params())
        params = L.llama_context_default_params()
        params.n_ctx = n_seq * per_seq
        params.n_batch = params.n_ubatch = n_batch
        params.n_seq_max = n_seq
        params.n_threads = params.n_threads_batch = threads
        params.kv_unified = True
        self.ctx = L.llama_init_from_model(self.model, params)
        vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(vocab)
        self.eos = L.llama_vocab_eos(vocab)
        self.vocab = vocab
        self.n_batch, self.n_seq = n_batch, n_seq
        self.batch = L.llama_batch_init(max(n_batch, n_seq), 0, 1)

    def _add(self, token: int, pos: int, seq: int, logits: bool) -> int:
        b = self.batch
        i = b.n_tokens
        b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, 1, logits
        b.seq_id[i][0] = seq
        b.n_tokens = i + 1
        return i

    def _decode(self) -> None:
        if self.L.llama_decode(self.ctx, self.batch) != 0:
            raise RuntimeError("llama_decode failed (KV cache full?)")

    def _argmax(self, i: int) -> int:
        import numpy as np

        return int(np.ctypeslib.as_array(self.L.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,)).argmax())

    def generate(self, prompts: list[list[int]], max_tokens: int) -> list[str]:
        """Replies in input order (at most n_seq prompts)."""
        L = self.L
        L.llama_memory_clear(L.llama_get_memory(self.ctx), True)
        nxt: dict[int, int] = {}
        pending: list[tuple[int, int]] = []  # (seq, batch index of its last prompt token) in the current batch
        self.batch.n_tokens = 0
        for seq, ids in enumerate(prompts):  # prefill: whole prompts, packed into batches of n_batch tokens
            if self.batch.n_tokens + len(ids) > self.n_batch:
                self._decode()
                nxt.update({s: self._argmax(i) for s, i in pending})
                pending, self.batch.n_tokens = [], 0
            for pos, tok in enumerate(ids):
                last = self._add(tok, pos, seq, pos == len(ids) - 1)
            pending.append((seq, last))
        self._decode()
        nxt.update({s: self._argmax(i) for s, i in pending})
        out: list[list[int]] = [[] for _ in prompts]
        pos = [len(p) for p in prompts]
        active = [s for s in range(len(prompts))]
        while active:
            self.batch.n_tokens = 0
            index = {}
            for s in list(active):
                tok = nxt[s]
                if tok == self.eos or len(out[s]) >= max_tokens:
                    active.remove(s)
                    continue
                out[s].append(tok)
                index[s] = self._add(tok, pos[s], s, True)
                pos[s] += 1
            if not index:
                break
            self._decode()
            nxt.update({s: self._argmax(i) for s, i in index.items()})
        return [self._text(o) for o in out]

    def _text(self, ids: list[int]) -> str:
        import ctypes

        buf = ctypes.create_string_buffer(8 * len(ids) + 64)
        n = self.L.llama_detokenize(self.vocab, (self.L.llama_token * len(ids))(*ids), len(ids), buf, len(buf), False, False)
        return buf.raw[:max(n, 0)].decode("utf-8", "replace")

    def close(self) -> None:
        self.L.llama_batch_free(self.batch)
        self.L.llama_free(self.ctx)
        self.L.llama_model_free(self.model)
