"""Tokenizer files beside a converted model: built with `tokenizers` from a GGUF's vocabulary, written for AutoTokenizer."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ct2_magics.errors import LlamaError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

# llama.cpp's token types (llama_token_type): control tokens are special, user-defined ones are matched in text.
CONTROL, USER_DEFINED = 3, 4
# Split patterns per tokenizer.ggml.pre, as in llama.cpp's llama-vocab.cpp (there adapted for its own regex engine;
# these are the originals from the models' tokenizer.json, which the `tokenizers` library reads as written).
# Llama 3's (also the demo model's): punctuation keeps its trailing newlines, digits go in threes.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")  # fmt: skip
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")  # fmt: skip
# tokenizer.ggml.pre names -> (family, whether llama.cpp adds BOS when the file does not say).
PRE_TOKENIZERS = {
    "llama3": ("llama3", True), "llama-v3": ("llama3", True), "llama-bpe": ("llama3", True),
    "qwen2": ("qwen2", False),
    "smollm": ("digits", False), "starcoder": ("digits", False), "refact": ("digits", False),
    "gpt-2": ("gpt2", False), "gpt2": ("gpt2", False), "olmo": ("gpt2", False), "mpt": ("gpt2", False),
}  # fmt: skip


@dataclass(frozen=True)
class Vocab:
    """What a GGUF says about its tokenizer (tokenizer.ggml.* and tokenizer.chat_template)."""

    model: str
    pre: str
    tokens: list[str]
    types: list[int]
    merges: list[str]
    bos: int | None
    eos: int | None
    eot: int | None
    eom: int | None
    unk: int | None
    pad: int | None
    add_bos: bool | None
    chat_template: str | None


def build_tokenizer(vocab: Vocab, name: str = "this GGUF") -> Tokenizer:
    """A byte-level BPE tokenizer that splits text as llama.cpp does for the GGUF's pre-tokenizer name."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    if vocab.model != "gpt2":
        kind = "SentencePiece (Llama 2, Mistral, TinyLlama)" if vocab.model == "llama" else repr(vocab.model)
        raise LlamaError(f"{name} uses a {kind} tokenizer; this loader builds byte-level BPE tokenizers only "
                         "(Llama 3.x, SmolLM2, Qwen2.5). Load the model's transformers repo instead.")
    if vocab.pre not in PRE_TOKENIZERS:
        raise LlamaError(f"{name} names the pre-tokenizer {vocab.pre!r}; this loader knows "
                         f"{', '.join(sorted(PRE_TOKENIZERS))}.")
    family, default_bos = PRE_TOKENIZERS[vocab.pre]
    ids = {token: i for i, token in enumerate(vocab.tokens)}
    merges = [tuple(m.split(" ", 1)) for m in vocab.merges]
    # llama.cpp looks a Llama 3 word up whole before merging (ignore_merges), as its tokenizer.json says.
    tokenizer = Tokenizer(models.BPE(ids, merges, ignore_merges=family == "llama3"))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=family in ("gpt2", "digits"))
    if family in ("llama3", "qwen2"):
        split = pre_tokenizers.Split(Regex(LLAMA3_SPLIT if family == "llama3" else QWEN2_SPLIT), behavior="isolated")
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([split, byte_level])
    elif family == "digits":
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tokenizer.pre_tokenizer = byte_level
    tokenizer.decoder = decoders.ByteLevel()
    for kind, add in ((CONTROL, tokenizer.add_special_tokens), (USER_DEFINED, tokenizer.add_tokens)):
        add([AddedToken(vocab.tokens[i], special=kind == CONTROL, normalized=False)
             for i, t in enumerate(vocab.types) if t == kind])
    add_bos = vocab.add_bos if vocab.add_bos is not None else default_bos
    if add_bos and vocab.bos is not None:
        bos = vocab.tokens[vocab.bos]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1", special_tokens=[(bos, vocab.bos)])
    else:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer


def write_tokenizer_files(path: Path, tokenizer: Tokenizer, *, bos: str | None, eos: str, unk: str | None = None,
                          pad: str | None = None, chat_template: str | None = None, max_length: int = 0,
                          end_ids: list[int] | None = None, generation: dict[str, Any] | None = None) -> None:
    """tokenizer.json, tokenizer_config.json, special_tokens_map.json and generation_config.json, as on the Hub.

    Written by hand rather than by transformers' save_pretrained, so transformers 4.x and 5.x both load them.
    """
    tokenizer.save(str(path / "tokenizer.json"))
    flags = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    decoder = {str(i): {"content": t.content, **flags, "special": t.special}
               for i, t in sorted(tokenizer.get_added_tokens_decoder().items())}
    special = {k: v for k, v in (("bos_token", bos), ("eos_token", eos), ("unk_token", unk), ("pad_token", pad)) if v}
    config: dict[str, Any] = {
        "added_tokens_decoder": decoder, **special, "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"], "model_max_length": max_length or 8192,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }  # fmt: skip
    if chat_template:
        config["chat_template"] = chat_template
    ids = {name: tokenizer.token_to_id(token) for name, token in special.items()}
    ends = list(dict.fromkeys([i for i in (end_ids or [ids["eos_token"]]) if i is not None]))
    gen = {"eos_token_id": ends if len(ends) > 1 else ends[0], **(generation or {})}
    if bos:
        gen["bos_token_id"] = ids["bos_token"]
    write_json(path / "tokenizer_config.json", config)
    write_json(path / "special_tokens_map.json", special)
    write_json(path / "generation_config.json", gen)


def gguf_tokenizer_files(path: Path, vocab: Vocab, *, context: int, generation: dict[str, Any], name: str) -> dict[str, str]:
    """Write the tokenizer files of a GGUF model into `path`; return its special tokens for CTranslate2's config."""
    tokenizer = build_tokenizer(vocab, name)

    def token(i: int | None) -> str | None:
        return vocab.tokens[i] if i is not None and 0 <= i < len(vocab.tokens) else None

    eos = token(vocab.eot) or token(vocab.eos)
    if eos is None:
        raise LlamaError(f"{name} names no end-of-text token (tokenizer.ggml.eos_token_id); it cannot end a reply.")
    write_tokenizer_files(path, tokenizer, bos=token(vocab.bos), eos=eos, unk=token(vocab.unk), pad=token(vocab.pad),
                          chat_template=vocab.chat_template, max_length=context,
                          end_ids=[vocab.eos, vocab.eot, vocab.eom], generation=generation)
    return {"bos": token(vocab.bos) or eos, "eos": eos, "unk": token(vocab.unk) or ""}


def write_json(path: Path, data: dict) -> None:
    """Write data as stable, indented UTF-8 JSON."""
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")
