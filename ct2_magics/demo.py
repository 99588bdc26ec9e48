"""An offline demo Llama model (random weights) and the tiny models the tests build, without torch."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import unicodedata
from pathlib import Path

import numpy as np

DEMO_NAME = "demo"
DEMO_SUBDIR = "demo-v1"
CACHE_ENV = "CT2_MAGICS_CACHE"

BOS = "<|begin_of_text|>"
END_OF_TEXT = "<|end_of_text|>"
EOT = "<|eot_id|>"
SPECIAL_TOKENS = (
    BOS,
    END_OF_TEXT,
    "<|start_header_id|>",
    "<|end_header_id|>",
    EOT,
    "<|eom_id|>",
    "<|python_tag|>",
    "<|finetune_right_pad_id|>",
)
GENERATION_PROMPT = "<|start_header_id|>assistant<|end_header_id|>\n\n"
MODEL_FILES = (
    "model.bin",
    "config.json",
    "vocabulary.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "README.md",
)

# Llama 3's pre-tokenizer split: punctuation keeps its trailing newlines, digits go in threes.
_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Llama 3's template without the date lines, so it needs no strftime_now or date_string.
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)
# Low enough that sampling never picks the token, small enough to stay finite in float16.
FORBIDDEN_BIAS = -1e4
DEFAULT_EOT_BIAS = -1.0
# Share of each random layer in the residual stream: the corpus bigram stays dominant.
LAYER_GAIN = 0.05
SCRIPT_MARGIN = 30.0
SCRIPT_MIN_HIDDEN = 512


def demo_dir() -> Path:
    """Where the demo model lives: the user cache, or $CT2_MAGICS_CACHE when set."""
    root = os.environ.get(CACHE_ENV)
    if not root:
        import platformdirs

        root = platformdirs.user_cache_dir("ct2-magics")
    return Path(root) / DEMO_SUBDIR


def ensure_demo(path: Path | None = None) -> Path:
    """Build the demo model once (atomically, race-safe) and return its directory."""
    target = Path(path) if path is not None else demo_dir()
    if _is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".building", dir=target.parent))
    try:
        build_model(staging)
        _publish(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def build_model(
    path: Path | str,
    *,
    hidden: int = 256,
    layers: int = 4,
    heads: int = 8,
    kv_heads: int = 2,
    intermediate: int = 512,
    vocab_merges: int = 1500,
    seed: int = 0,
    quantization: str | None = "int8",
    script: str | None = None,
    chat_template: bool = True,
    max_position: int = 8192,
    eot_bias: float = DEFAULT_EOT_BIAS,
) -> Path:
    """Write a random Llama 3 style CTranslate2 model plus its tokenizer files into path."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    tokenizer = _train_tokenizer(vocab_merges)
    vocab = [tokenizer.id_to_token(i) for i in range(tokenizer.get_vocab_size())]
    prompt_last = tokenizer.encode(GENERATION_PROMPT, add_special_tokens=False).ids[-1]
    if script is None:
        embeddings, projection, bias = _bigram_head(tokenizer, vocab, prompt_last, hidden, rng)
        bias[vocab.index(EOT)] += eot_bias
        gain = LAYER_GAIN
    else:
        hidden, embeddings, projection, bias = _script_head(tokenizer, vocab, prompt_last, script, hidden, rng)
        gain = 0.0
    spec = _decoder_spec(layers, heads, kv_heads, hidden, intermediate, gain, rng)
    spec.decoder.embeddings.weight = embeddings
    spec.decoder.projection.weight = projection
    spec.decoder.projection.bias = bias
    spec.register_vocabulary(vocab)
    spec.config.bos_token = BOS
    spec.config.eos_token = EOT
    spec.config.unk_token = ""
    spec.config.layer_norm_epsilon = 1e-5
    spec.validate()
    spec.optimize(quantization=quantization)
    path.mkdir(parents=True, exist_ok=True)
    spec.save(str(path))
    _write_hf_files(path, tokenizer, vocab, chat_template, max_position)
    return path


def _is_complete(path: Path) -> bool:
    """Whether path holds every file of a built model."""
    return all((path / name).is_file() for name in MODEL_FILES)


def _publish(staging: Path, target: Path) -> None:
    """Move a finished build into place; a complete model someone else published wins."""
    for _ in range(2):
        try:
            os.rename(staging, target)
            return
        except OSError:
            if _is_complete(target):
                return
            # A stale, half-deleted directory: move it aside, then retry.
            stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".stale", dir=target.parent))
            try:
                os.rename(target, stale / "old")
            except OSError:
                pass
            shutil.rmtree(stale, ignore_errors=True)
    os.rename(staging, target)


def _train_tokenizer(vocab_merges: int):
    """Train a byte-level BPE on the built-in corpus and append the Llama 3 special tokens."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from ._demo_corpus import DOCUMENTS

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=256 + vocab_merges,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(DOCUMENTS), trainer)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS}:1 $B:1", special_tokens=[(BOS, bos_id)]
    )
    return tokenizer


def _byte_decoder() -> dict[str, int]:
    """Map GPT-2 byte-level characters back to the bytes they stand for."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {byte: chr(byte) for byte in printable}
    for extra, byte in enumerate(b for b in range(256) if b not in chars):
        chars[byte] = chr(256 + extra)
    return {char: byte for byte, char in chars.items()}


def token_text(token: str) -> str | None:
    """The text of a byte-level token when its bytes are complete, printable UTF-8, else None."""
    decoder = _byte_decoder()
    try:
        text = bytes(decoder[char] for char in token).decode("utf-8")
    except (KeyError, UnicodeDecodeError):
        return None
    if any(unicodedata.category(char) == "Cc" and char not in "\n\t" for char in text):
        return None
    return text


def _emittable(vocab: list[str]) -> np.ndarray:
    """Mask of the tokens demo text may contain: complete UTF-8 pieces and <|eot_id|>."""
    return np.array([tok == EOT or (tok not in SPECIAL_TOKENS and token_text(tok) is not None) for tok in vocab])


def _bigram_head(tokenizer, vocab: list[str], prompt_last: int, hidden: int, rng: np.random.Generator):
    """Embeddings, projection and bias whose product is a low-rank corpus bigram model."""
    from ._demo_corpus import DOCUMENTS

    size, eot = len(vocab), vocab.index(EOT)
    counts = np.zeros((size, size), dtype=np.float64)
    for document in DOCUMENTS:
        ids = [prompt_last, *tokenizer.encode(document, add_special_tokens=False).ids, eot]
        np.add.at(counts, (ids[:-1], ids[1:]), 1.0)
    allowed = _emittable(vocab)
    unigram = (counts.sum(axis=0) + 0.05) * allowed
    unigram /= unigram.sum()
    # Interpolating with the unigram keeps unseen pairs possible but unlikely.
    logp = np.log((counts[:, allowed] + 2.0 * unigram[allowed]) / (counts.sum(axis=1, keepdims=True) + 2.0))
    centre = logp.mean(axis=0)
    u, s, vt = np.linalg.svd((logp - centre).astype(np.float32), full_matrices=False)
    rank = min(hidden - 1, len(s))
    core = u[:, :rank] * s[:rank]
    norms = np.einsum("ij,ij->i", core, core)
    # An extra coordinate gives every row the same norm, so RMS norm scales all logits alike.
    radius = float(norms.max()) * 1.0001
    embeddings = np.zeros((size, hidden), dtype=np.float32)
    embeddings[:, :rank] = core
    embeddings[:, rank] = np.sqrt(radius - norms)
    scale = np.sqrt(hidden / radius)
    embeddings *= scale
    projection = np.zeros((size, hidden), dtype=np.float32)
    projection[allowed, :rank] = vt[:rank].T / scale
    bias = np.full(size, FORBIDDEN_BIAS, dtype=np.float32)
    bias[allowed] = centre
    del rng  # the bigram is fixed by the corpus; randomness lives in the layers
    return embeddings, projection, bias


def _script_head(tokenizer, vocab: list[str], prompt_last: int, script: str, hidden: int, rng: np.random.Generator):
    """Hidden size, embeddings, projection and bias of a bigram chain that replays script."""
    chain = [prompt_last, *tokenizer.encode(script, add_special_tokens=False).ids, vocab.index(EOT)]
    successor: dict[int, int] = {}
    for current, following in zip(chain, chain[1:]):
        if successor.setdefault(current, following) != following:
            raise ValueError(
                f"script needs token {vocab[current]!r} ({token_text(vocab[current])!r}) to be followed by both "
                f"{vocab[successor[current]]!r} and {vocab[following]!r}; pick another script"
            )
    keys = list(successor)
    hidden = max(hidden, SCRIPT_MIN_HIDDEN, -(-(len(keys) + 1) // 64) * 64)
    embeddings = rng.standard_normal((len(vocab), hidden)).astype(np.float32)
    # Orthonormal embeddings for the chain, so each step's logit is exactly the margin or zero.
    basis, _ = np.linalg.qr(rng.standard_normal((hidden, len(keys))))
    embeddings[keys] = (basis.T * np.sqrt(hidden)).astype(np.float32)
    projection = np.zeros((len(vocab), hidden), dtype=np.float32)
    for current, following in successor.items():
        projection[following] += embeddings[current] * (SCRIPT_MARGIN / hidden)
    bias = np.where(_emittable(vocab), 0.0, FORBIDDEN_BIAS).astype(np.float32)
    bias[chain] = 0.0
    return hidden, embeddings, projection, bias


def _decoder_spec(layers: int, heads: int, kv_heads: int, hidden: int, intermediate: int, gain: float, rng):
    """A Llama-architecture decoder spec with random layers whose outputs are scaled by gain."""
    from ctranslate2.specs import common_spec, transformer_spec

    if hidden % heads or (hidden // heads) % 2 or heads % kv_heads:
        raise ValueError(f"hidden={hidden}, heads={heads}, kv_heads={kv_heads} do not make even head sizes")
    spec = transformer_spec.TransformerDecoderModelSpec.from_config(
        layers,
        heads,
        pre_norm=True,
        activation=common_spec.Activation.SWISH,
        ffn_glu=True,
        rms_norm=True,
        rotary_dim=0,
        rotary_interleave=False,
        rotary_base=500000.0,
        num_heads_kv=None if kv_heads == heads else kv_heads,
    )
    decoder = spec.decoder
    decoder.scale_embeddings = False
    decoder.layer_norm.gamma = np.ones(hidden, dtype=np.float32)
    qkv_rows = (heads + 2 * kv_heads) * (hidden // heads)

    def dense(rows: int, cols: int, scale: float = 1.0) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * (scale / np.sqrt(cols))).astype(np.float32)

    for layer in decoder.layer:
        layer.self_attention.layer_norm.gamma = np.ones(hidden, dtype=np.float32)
        layer.self_attention.linear[0].weight = dense(qkv_rows, hidden)
        layer.self_attention.linear[1].weight = dense(hidden, hidden, gain)
        layer.ffn.layer_norm.gamma = np.ones(hidden, dtype=np.float32)
        layer.ffn.linear_0.weight = dense(intermediate, hidden)
        layer.ffn.linear_0_noact.weight = dense(intermediate, hidden)
        layer.ffn.linear_1.weight = dense(hidden, intermediate, gain)
    return spec


def _write_hf_files(path: Path, tokenizer, vocab: list[str], chat_template: bool, max_position: int) -> None:
    """Write the tokenizer, generation config and README that a converted Hub repo carries."""
    tokenizer.save(str(path / "tokenizer.json"))
    ids = {token: vocab.index(token) for token in SPECIAL_TOKENS}
    added = {
        str(ids[token]): {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for token in SPECIAL_TOKENS
    }
    config = {
        "added_tokens_decoder": added,
        "bos_token": BOS,
        "clean_up_tokenization_spaces": False,
        "eos_token": EOT,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": max_position,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    if chat_template:
        config["chat_template"] = CHAT_TEMPLATE
    generation = {
        "bos_token_id": ids[BOS],
        "eos_token_id": [ids[END_OF_TEXT], ids[EOT]],
        "do_sample": True,
        "temperature": 0.6,
        "top_p": 0.9,
    }
    _write_json(path / "tokenizer_config.json", config)
    _write_json(path / "special_tokens_map.json", {"bos_token": BOS, "eos_token": EOT})
    _write_json(path / "generation_config.json", generation)
    (path / "README.md").write_text(
        "# ct2-magics demo model\n\n"
        "A tiny Llama 3 style model in CTranslate2 format with **random weights**, built locally by\n"
        "`ct2_magics.demo`. Its replies mean nothing: it exists for offline demos and tests.\n",
        encoding="utf-8",
    )


def _write_json(path: Path, data: dict) -> None:
    """Write data as stable, indented UTF-8 JSON."""
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")
