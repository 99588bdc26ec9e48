"""The offline demo Llama model (random weights), built without torch, and the parts to build others like it."""

from __future__ import annotations

import shutil
import tempfile
import unicodedata
from pathlib import Path

import numpy as np

from ct2_magics.models.cache import cache_root, publish
from ct2_magics.models.spec import finish, new_spec
from ct2_magics.models.tokenizer_files import LLAMA3_SPLIT, write_tokenizer_files

DEMO_SUBDIR = "demo-v1"

BOS, END_OF_TEXT, EOT = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"
SPECIAL_TOKENS = (BOS, END_OF_TEXT, "<|start_header_id|>", "<|end_header_id|>", EOT, "<|eom_id|>",
                  "<|python_tag|>", "<|finetune_right_pad_id|>")  # fmt: skip
GENERATION_PROMPT = "<|start_header_id|>assistant<|end_header_id|>\n\n"
MODEL_FILES = ("model.bin", "config.json", "vocabulary.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "generation_config.json", "README.md")  # fmt: skip

# Llama 3's template without the date lines, so it needs no strftime_now or date_string.
CHAT_TEMPLATE = (
    "{{- bos_token }}{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
ROPE_BASE = 500000.0
# Low enough that sampling never picks the token, small enough to stay finite in float16.
FORBIDDEN_BIAS = -1e4
# Measured: with temperature 0.6 / top_p 0.9 replies have a median near 70 tokens (quartiles 30-150).
DEFAULT_EOT_BIAS = -1.0
# Share of each random layer in the residual stream, small so the corpus bigram stays readable.
LAYER_GAIN = 0.05


def demo_dir() -> Path:
    """Where the demo model lives, in ct2-magics' cache."""
    return cache_root() / DEMO_SUBDIR


def ensure_demo(path: Path | None = None) -> Path:
    """Build the demo model once (atomically, safe against racing processes) and return its directory."""
    target = Path(path) if path is not None else demo_dir()
    if _is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".building", dir=target.parent))
    try:
        staging.chmod(0o755)
        build_model(staging)
        publish(staging, target, _is_complete)
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
    chat_template: bool = True,
    max_position: int = 8192,
    eot_bias: float = DEFAULT_EOT_BIAS,
) -> Path:
    """Write a random Llama 3 style CTranslate2 model (a bigram model of the demo corpus) and its Hub files into path.

    int8 by default, as a converted Hub model is; None stores float32.
    """
    rng = np.random.default_rng(seed)
    tokenizer = train_tokenizer(vocab_merges)
    vocab = vocabulary(tokenizer)
    embeddings, projection, bias = _bigram_head(tokenizer, vocab, hidden)
    bias[vocab.index(EOT)] += eot_bias
    spec = decoder_spec(layers, heads, kv_heads, hidden, intermediate, LAYER_GAIN, rng)
    return save_model(path, spec, tokenizer, (embeddings, projection, bias), quantization=quantization,
                      chat_template=chat_template, max_position=max_position)


def vocabulary(tokenizer) -> list[str]:
    """The tokenizer's tokens by id."""
    return [tokenizer.id_to_token(i) for i in range(tokenizer.get_vocab_size())]


def save_model(path: Path | str, spec, tokenizer, head: tuple[np.ndarray, np.ndarray, np.ndarray], *,
               quantization: str | None, chat_template: bool = True, max_position: int = 8192) -> Path:
    """Give `spec` its embeddings, output projection and bias, save it with the tokenizer's Hub files, return path."""
    path = Path(path)
    spec.decoder.embeddings.weight, spec.decoder.projection.weight, spec.decoder.projection.bias = head
    vocab = vocabulary(tokenizer)
    finish(spec, path, vocab, bos=BOS, eos=EOT, unk="", norm_eps=1e-5, quantization=quantization)
    _write_hub_files(path, tokenizer, vocab, chat_template, max_position)
    return path


def _is_complete(path: Path) -> bool:
    """Whether path holds every file of a built model."""
    return all((path / name).is_file() for name in MODEL_FILES)


def train_tokenizer(vocab_merges: int = 1500):
    """Train a byte-level BPE on the built-in corpus, then append the Llama 3 special tokens."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from ct2_magics.models._demo_corpus import DOCUMENTS

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=256 + vocab_merges, initial_alphabet=alphabet, show_progress=False)
    tokenizer.train_from_iterator(list(DOCUMENTS), trainer)
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS}:1 $B:1", special_tokens=[(BOS, tokenizer.token_to_id(BOS))]
    )
    return tokenizer


def emittable(tokenizer, vocab: list[str]) -> np.ndarray:
    """Mask of the tokens generated text may hold: complete, printable UTF-8 pieces and <|eot_id|>."""

    def printable(token: str) -> bool:
        # The corpus holds no U+FFFD, so one in a decoded token means its UTF-8 is cut.
        text = tokenizer.decoder.decode([token])
        return "\ufffd" not in text and not any(unicodedata.category(c) == "Cc" and c not in "\n\t" for c in text)

    return np.array([token == EOT or (token not in SPECIAL_TOKENS and printable(token)) for token in vocab])


def _bigram_head(tokenizer, vocab: list[str], hidden: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Embeddings, projection and bias that make the model a bigram model of the corpus."""
    from ct2_magics.models._demo_corpus import DOCUMENTS

    size, eot = len(vocab), vocab.index(EOT)
    start = tokenizer.encode(GENERATION_PROMPT, add_special_tokens=False).ids[-1]
    counts = np.zeros((size, size))
    for document in DOCUMENTS:
        ids = [start, *tokenizer.encode(document, add_special_tokens=False).ids, eot]
        np.add.at(counts, (ids[:-1], ids[1:]), 1.0)
    # The hidden - 1 most frequent tokens get a one-hot row each; all others share the last row.
    row_of = np.full(size, hidden - 1)
    row_of[np.argsort(-counts.sum(axis=1), kind="stable")[: hidden - 1]] = np.arange(min(hidden - 1, size))
    rows = np.zeros((hidden, size))
    np.add.at(rows, row_of, counts)
    allowed = emittable(tokenizer, vocab)
    unigram = (counts.sum(axis=0) + 0.05) * allowed
    unigram /= unigram.sum()
    # Mixing in the unigram keeps unseen pairs possible but unlikely.
    logp = np.log((rows[:, allowed] + 2.0 * unigram[allowed]) / (rows.sum(axis=1, keepdims=True) + 2.0))
    centre = logp.mean(axis=0)
    embeddings = np.zeros((size, hidden), dtype=np.float32)
    embeddings[np.arange(size), row_of] = np.sqrt(hidden)  # RMS 1, like a trained model's residual stream
    projection = np.zeros((size, hidden), dtype=np.float32)
    projection[allowed] = ((logp - centre) / np.sqrt(hidden)).T
    bias = np.full(size, FORBIDDEN_BIAS, dtype=np.float32)
    bias[allowed] = centre
    return embeddings, projection, bias


def decoder_spec(layers: int, heads: int, kv_heads: int, hidden: int, intermediate: int, gain: float, rng):
    """A Llama-architecture decoder spec with random layers whose outputs are scaled by gain."""
    if hidden % heads or (hidden // heads) % 2 or heads % kv_heads:
        raise ValueError(f"hidden={hidden}, heads={heads}, kv_heads={kv_heads} do not give even head sizes")
    spec = new_spec(layers, heads, kv_heads, rope_theta=ROPE_BASE)
    spec.decoder.layer_norm.gamma = np.ones(hidden, dtype=np.float32)

    def dense(rows: int, cols: int, scale: float = 1.0) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * (scale / np.sqrt(cols))).astype(np.float32)

    for layer in spec.decoder.layer:
        layer.self_attention.layer_norm.gamma = np.ones(hidden, dtype=np.float32)
        layer.self_attention.linear[0].weight = dense((heads + 2 * kv_heads) * (hidden // heads), hidden)
        layer.self_attention.linear[1].weight = dense(hidden, hidden, gain)
        layer.ffn.layer_norm.gamma = np.ones(hidden, dtype=np.float32)
        layer.ffn.linear_0.weight = dense(intermediate, hidden)
        layer.ffn.linear_0_noact.weight = dense(intermediate, hidden)
        layer.ffn.linear_1.weight = dense(hidden, intermediate, gain)
    return spec


def _write_hub_files(path: Path, tokenizer, vocab: list[str], chat_template: bool, max_position: int) -> None:
    """Write the tokenizer, generation config and README that a converted Hub repo carries."""
    ids = {token: vocab.index(token) for token in (END_OF_TEXT, EOT)}
    write_tokenizer_files(path, tokenizer, bos=BOS, eos=EOT, chat_template=CHAT_TEMPLATE if chat_template else None,
                          max_length=max_position, end_ids=[ids[END_OF_TEXT], ids[EOT]],
                          generation={"do_sample": True, "temperature": 0.6, "top_p": 0.9})
    (path / "README.md").write_text(
        "# ct2-magics demo model\n\nA tiny Llama 3 style model in CTranslate2 format with **random weights**,\n"
        "built locally by `ct2_magics.models.demo`. Its replies mean nothing: it exists for offline demos and tests.\n",
        encoding="utf-8",
    )
