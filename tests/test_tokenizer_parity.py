"""The tokenizer built from a GGUF's metadata splits and merges text exactly as llama.cpp does.

Always on: tricky lines whose llama.cpp ids are stored in data/tokenizer_parity.json (made once by
data/make_tokenizer_parity.py). Where llama-cpp-python is installed, also against llama.cpp live, on
more text (this repository's README and notebooks).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tinymodels import Tiny, random_weights, write_gguf

DATA = json.loads((Path(__file__).parent / "data" / "tokenizer_parity.json").read_text(encoding="utf-8"))
ROOT = Path(__file__).resolve().parents[1]


def _tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


@pytest.fixture(scope="module")
def tiny_ggufs(tmp_path_factory) -> dict[str, Path]:
    """The tiny GGUFs of the data file, one per pre-tokenizer name, rebuilt from its stored vocabulary."""
    vocab = DATA["tiny_vocab"]
    vocab = (vocab["tokens"], vocab["merges"], vocab["types"])
    root = tmp_path_factory.mktemp("parity")
    shape = Tiny()
    weights = random_weights(shape, len(vocab[0]))
    return {pre: write_gguf(root / f"{pre}.gguf", shape, weights, vocab, arch=entry["arch"], pre=pre)
            for pre, entry in DATA["tiny"].items()}


@pytest.fixture(scope="module")
def tiny_tokenizers(tiny_ggufs) -> dict[str, object]:
    from ct2_magics.models import hub

    return {pre: _tokenizer(hub.resolve(str(path))) for pre, path in tiny_ggufs.items()}


def _mismatches(tokenizer, lines: list[str], expected: list[list[int]]) -> list[str]:
    """Lines our tokenizer encodes otherwise than llama.cpp with special=False (control-token strings as text)."""
    bad = []
    for line, want in zip(lines, expected):
        got = tokenizer.encode(line, add_special_tokens=False, split_special_tokens=True)
        if got != want:
            bad.append(f"{line!r}: ours {got} llama.cpp {want}")
    return bad


def test_smollm2_matches_llama_cpp_on_tricky_lines(smollm2_int8):
    tokenizer = _tokenizer(smollm2_int8)
    assert not _mismatches(tokenizer, DATA["lines"], DATA["smollm2"]["lines"])
    assert tokenizer.encode(DATA["special_lines"]["smollm2"], add_special_tokens=False) == DATA["smollm2"]["special"]
    for line in DATA["lines"]:
        assert tokenizer.decode(tokenizer.encode(line, add_special_tokens=False)) == line


@pytest.mark.parametrize("pre", sorted(DATA["tiny"]))
def test_pre_tokenizer_matches_llama_cpp_on_tricky_lines(pre, tiny_tokenizers):
    tokenizer = tiny_tokenizers[pre]
    assert not _mismatches(tokenizer, DATA["lines"], DATA["tiny"][pre]["lines"])
    assert tokenizer.encode(DATA["special_lines"]["tiny"], add_special_tokens=False) == DATA["tiny"][pre]["special"]


def test_the_pre_tokenizers_really_differ_on_these_lines():
    """The data would not catch a wrong split if every name tokenized the lines alike."""
    by_pre = {pre: entry["lines"] for pre, entry in DATA["tiny"].items()}
    pres = sorted(by_pre)
    for i, a in enumerate(pres):
        for b in pres[i + 1:]:
            assert by_pre[a] != by_pre[b], (a, b)


def test_unknown_pre_tokenizer_and_sentencepiece_are_one_line(tmp_path):
    from ct2_magics.errors import LlamaError
    from ct2_magics.models.gguf_model import GGUFModel
    from ct2_magics.models.tokenizer_files import build_tokenizer

    vocab = DATA["tiny_vocab"]
    shape = Tiny()
    path = write_gguf(tmp_path / "odd.gguf", shape, random_weights(shape, len(vocab["tokens"])),
                      (vocab["tokens"], vocab["merges"], vocab["types"]), pre="deepseek-coder")
    with pytest.raises(LlamaError, match="deepseek-coder.*llama-bpe") as info:
        build_tokenizer(GGUFModel(path).vocab())
    assert "\n" not in str(info.value)


def _more_text() -> list[str]:
    """Real prose, code and markdown: this repository's README and notebook cells, line by line and whole."""
    import nbformat

    texts = [(ROOT / "README.md").read_text(encoding="utf-8")]
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        texts += [cell.source for cell in nbformat.read(path, as_version=4).cells]
    return [line for text in texts for line in (text, *text.splitlines())] + DATA["lines"]


def test_live_against_llama_cpp(smollm2_gguf, smollm2_int8, tiny_ggufs, tiny_tokenizers):
    llama_cpp = pytest.importorskip("llama_cpp")
    lines = _more_text()
    pairs = [(smollm2_gguf, _tokenizer(smollm2_int8))] + [(tiny_ggufs[p], tiny_tokenizers[p]) for p in sorted(tiny_ggufs)]
    for path, ours in pairs:
        model = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
        expected = [model.tokenize(line.encode(), add_bos=False, special=False) for line in lines]
        bad = _mismatches(ours, lines, expected)
        assert not bad, f"{path.name}: {len(bad)} of {len(lines)} lines differ, e.g. {bad[:3]}"
