"""Script ("parrot") models for the tests: a tiny CTranslate2 model whose greedy reply is exactly a given text.

Built from ct2_magics.models.demo's parts (tokenizer, decoder spec, saving); only the tests need them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ct2_magics.models.demo import (EOT, FORBIDDEN_BIAS, GENERATION_PROMPT, ROPE_BASE, SPECIAL_TOKENS, decoder_spec,
                             emittable, save_model, train_tokenizer, vocabulary)

# How many earlier tokens pick the next one, and margins that survive the arithmetic.
PARROT_LAGS = 3
SCRIPT_MIN_HIDDEN = 512
SCRIPT_MARGIN = 60.0
ATTENTION_GAP = 30.0
GATE_GAIN = 80.0


def build_parrot(path: Path | str, script: str, *, hidden: int = 256, layers: int = 4, heads: int = 8,
                 kv_heads: int = 2, intermediate: int = 512, seed: int = 0, max_position: int = 8192,
                 chat_template: bool = True, loop: bool = False) -> Path:
    """Write a model that, after any chat prompt, greedily writes `script` and then ends its turn (loop=True: writes
    `script` again and again, never ending, as a small model fallen into a loop does).

    Stored as float32: its activations all sit at full scale, the worst case for oneDNN's int8 GEMM, which
    CTranslate2 uses on AMD CPUs and which saturates on AVX2 without VNNI (seen on an AMD EPYC Zen 3: every
    reply became the first token of the vocabulary).
    """
    return _build(path, [(GENERATION_PROMPT, script, loop)], hidden=hidden, layers=layers, heads=heads,
                  kv_heads=kv_heads, intermediate=intermediate, seed=seed, max_position=max_position,
                  chat_template=chat_template)


def build_router(path: Path | str, routes: dict[str, tuple[str, bool]], **options) -> Path:
    """A parrot whose reply depends on how the prompt ends: its chat template ends at the user's text, and a prompt
    that ends with a route's key (at least PARROT_LAGS + 1 tokens, after a line break) gets that route's script, once
    and then the end of its turn, or (loop True) over and over. Prompts that end otherwise get no defined reply."""
    path = _build(path, [(key, script, loop) for key, (script, loop) in routes.items()], chat_template=True, **options)
    config = json.loads((Path(path) / "tokenizer_config.json").read_text())
    config["chat_template"] = "{{ bos_token }}{{ messages[-1]['content'] }}"
    (Path(path) / "tokenizer_config.json").write_text(json.dumps(config))
    return path


def _build(path: Path | str, routes: list[tuple[str, str, bool]], *, hidden: int = 256, layers: int = 4, heads: int = 8,
           kv_heads: int = 2, intermediate: int = 512, seed: int = 0, max_position: int = 8192,
           chat_template: bool = True) -> Path:
    rng = np.random.default_rng(seed)
    tokenizer = train_tokenizer()
    vocab = vocabulary(tokenizer)
    chain, successors = _parrot_plan(tokenizer, vocab, routes)
    # Room for the parrot's slots and one FFN unit per context.
    hidden = max(hidden, SCRIPT_MIN_HIDDEN)
    intermediate = max(intermediate, -(-len(successors) // 64) * 64)
    spec = decoder_spec(layers, heads, kv_heads, hidden, intermediate, 0.0, rng)
    head = _program_parrot(spec, chain, successors, emittable(tokenizer, vocab), (heads, kv_heads, max_position), rng)
    return save_model(path, spec, tokenizer, head, quantization=None, chat_template=chat_template,
                      max_position=max_position)


def _parrot_plan(tokenizer, vocab: list[str], routes: list[tuple[str, str, bool]]) -> tuple[list[int], dict[tuple[int, ...], int]]:
    """The tokens a parrot walks through, and the successor of each context of PARROT_LAGS + 1 tokens, for each route
    (the prompt's end, the script, whether it loops: then the script twice and no end, so the contexts at its end
    lead back to its start)."""
    chain: list[int] = []
    successors: dict[tuple[int, ...], int] = {}
    for start, script, loop in routes:
        prompt = tokenizer.encode(start, add_special_tokens=False).ids
        body = tokenizer.encode(script, add_special_tokens=False).ids
        if not body or any(vocab[i] in SPECIAL_TOKENS for i in body):
            raise ValueError("script must be non-empty text without special tokens")
        if len(prompt) <= PARROT_LAGS:
            raise ValueError(f"a route's prompt end must be at least {PARROT_LAGS + 1} tokens")
        route = [*prompt, *body, *body] if loop else [*prompt, *body, vocab.index(EOT)]
        for end in range(len(prompt) - 1, len(route) - 1):
            context = tuple(route[end - PARROT_LAGS : end + 1])
            if successors.setdefault(context, route[end + 1]) != route[end + 1]:
                text = tokenizer.decode(list(context))
                raise ValueError(f"script repeats {text!r} with two different continuations; pick another script")
        chain += route
    return chain, successors


def _parrot_codes(chain: list[int], size: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Random +-1 codes for all tokens; the chain's codes differ pairwise in at least a quarter of places."""
    signs = np.array([-1.0, 1.0], dtype=np.float32)
    codes = rng.choice(signs, size=(size, width))
    chosen: list[np.ndarray] = []
    for token in dict.fromkeys(chain):
        for _ in range(1000):
            if not chosen or float(np.max(np.stack(chosen) @ codes[token])) <= width / 2:
                break
            codes[token] = rng.choice(signs, size=width)
        else:
            raise ValueError("script has too many distinct tokens for this hidden size")
        chosen.append(codes[token])
    return codes


def _program_parrot(spec, chain: list[int], successors: dict, allowed: np.ndarray, shape: tuple[int, int, int], rng):
    """Set layer 0 to read the last PARROT_LAGS + 1 tokens and write their successor; return the head."""
    first = spec.decoder.layer[0]
    heads, kv_heads, max_position = shape
    units, hidden = first.ffn.linear_0.weight.shape
    width = hidden // heads  # each slot of the residual stream is one head wide
    if heads < PARROT_LAGS + 2:
        raise ValueError(f"script models need at least {PARROT_LAGS + 2} heads")
    slot = [slice(i * width, (i + 1) * width) for i in range(PARROT_LAGS + 2)]  # current, lags..., output
    codes = _parrot_codes(chain, len(allowed), width, rng)
    embeddings = np.zeros((len(allowed), hidden), dtype=np.float32)
    embeddings[:, slot[0]] = codes
    # Attention: constant queries and keys (biases) whose RoPE score peaks exactly `lag` tokens back.
    theta = ROPE_BASE ** (-np.arange(0, width, 2) / width)
    offsets = np.arange(-max_position, PARROT_LAGS + 1)
    worst = (1 - np.cos(np.outer(offsets[offsets != 0], theta))).sum(axis=1).min()
    sharp = np.sqrt(ATTENTION_GAP * np.sqrt(width) / worst)
    qkv = np.zeros(((heads + 2 * kv_heads) * width, hidden), dtype=np.float32)
    qkv_bias = np.zeros(qkv.shape[0], dtype=np.float32)
    out = np.zeros((hidden, heads * width), dtype=np.float32)
    for lag in range(1, PARROT_LAGS + 1):
        q = (lag - 1) * width
        k = (heads + (lag - 1) // (heads // kv_heads)) * width
        v = k + kv_heads * width
        qkv_bias[q : q + width] = sharp * np.concatenate([np.cos(lag * theta), -np.sin(lag * theta)])
        qkv_bias[k : k + width // 2] = sharp
        qkv[v : v + width, slot[0]] = np.eye(width)
        out[slot[lag], q : q + width] = np.eye(width) * np.sqrt(width / hidden)
    first.self_attention.linear[0].weight, first.self_attention.linear[0].bias = qkv, qkv_bias
    first.self_attention.linear[1].weight = out
    # FFN: one unit per context, on only when all its codes match, writing the successor's code.
    match = PARROT_LAGS + 1
    gate = np.zeros((units, hidden), dtype=np.float32)
    gate_bias = np.full(units, -GATE_GAIN * match, dtype=np.float32)
    down = np.zeros((hidden, units), dtype=np.float32)
    for unit, (context, following) in enumerate(successors.items()):
        for lag, token in enumerate(reversed(context)):
            gate[unit, slot[lag]] = codes[token] * GATE_GAIN / np.sqrt(width * hidden / match)
        gate_bias[unit] = -GATE_GAIN * (match - 0.25)
        down[slot[-1], unit] = codes[following] / _silu(0.25 * GATE_GAIN)
    first.ffn.linear_0.weight, first.ffn.linear_0.bias = gate, gate_bias
    first.ffn.linear_0_noact.weight = np.zeros((units, hidden), dtype=np.float32)
    first.ffn.linear_0_noact.bias = np.ones(units, dtype=np.float32)
    first.ffn.linear_1.weight = down
    projection = np.zeros((len(allowed), hidden), dtype=np.float32)
    for token in set(successors.values()):
        projection[token, slot[-1]] = codes[token] * SCRIPT_MARGIN / np.sqrt(width * hidden / (match + 1))
    bias = np.where(allowed, 0.0, FORBIDDEN_BIAS).astype(np.float32)
    bias[chain] = 0.0
    return embeddings, projection, bias


def _silu(value: float) -> float:
    """SiLU (swish) of a scalar."""
    return float(value / (1.0 + np.exp(-value)))
