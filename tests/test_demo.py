"""The offline demo model and the tests' script ("parrot") models: files, tokenizer, generation, caching."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import ctranslate2  # noqa: E402

from ct2_magics.models import demo  # noqa: E402
from parrot import build_parrot  # noqa: E402

EOT = "<|eot_id|>"
SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", EOT,
            "<|eom_id|>", "<|python_tag|>", "<|finetune_right_pad_id|>")  # fmt: skip
FILES = ("model.bin", "config.json", "vocabulary.json", "tokenizer.json", "tokenizer_config.json",
         "special_tokens_map.json", "generation_config.json", "README.md")  # fmt: skip
WORLD = "नमस्ते दुनिया 🙂 สวัสดี 你好世界"
MARKDOWN = (
    "## Plan\n\n- read the file\n- count the words\n\n```python\nfrom pathlib import Path\n\n"
    "text = Path('notes.md').read_text()\nprint(len(text.split()))\n```\n\nThat prints the word count.\n"
)
CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello."}]


def load_tokenizer(path: Path):
    """The Hugging Face tokenizer of a model directory, loaded offline."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def prompt_tokens(tokenizer, messages: list[dict]) -> list[str]:
    """The token strings of a chat prompt that ends with the assistant header."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer.convert_ids_to_tokens(tokenizer(text, add_special_tokens=False)["input_ids"])


def is_partial(tokenizer, token: str) -> bool:
    """Whether a token's bytes alone are not complete UTF-8."""
    return "\ufffd" in tokenizer.backend_tokenizer.decoder.decode([token])


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo.build_model(tmp_path_factory.mktemp("demo") / "model")


@pytest.fixture(scope="module")
def tokenizer(model: Path):
    return load_tokenizer(model)


@pytest.fixture(scope="module")
def generator(model: Path) -> ctranslate2.Generator:
    return ctranslate2.Generator(str(model), device="cpu", compute_type="int8", intra_threads=2)


@pytest.fixture(scope="module", params=[WORLD, MARKDOWN], ids=["world", "markdown"])
def parrot(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    return request.param, build_parrot(tmp_path_factory.mktemp("parrot") / "model", request.param)


def sample(generator: ctranslate2.Generator, tokens: list[str], **options) -> list[int]:
    """One reply sampled the way generation_config.json asks, ending with <|eot_id|> when it ends."""
    options = {"max_length": 400, "sampling_topk": 0, "sampling_topp": 0.9, "sampling_temperature": 0.6} | options
    result = generator.generate_batch(
        [tokens], end_token=EOT, return_end_token=True, include_prompt_in_result=False, **options
    )
    return result[0].sequences_ids[0]


def test_directory_holds_what_a_converted_hub_repo_holds(model: Path) -> None:
    assert set(FILES) <= {p.name for p in model.iterdir()}
    config = json.loads((model / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert (config["bos_token"], config["eos_token"]) == ("<|begin_of_text|>", EOT)
    assert config["model_max_length"] == 8192
    assert "strftime_now" not in config["chat_template"] and "date_string" not in config["chat_template"]
    vocab = json.loads((model / "vocabulary.json").read_text(encoding="utf-8"))
    generation = json.loads((model / "generation_config.json").read_text(encoding="utf-8"))
    assert generation["eos_token_id"] == [vocab.index("<|end_of_text|>"), vocab.index(EOT)]
    assert generation["bos_token_id"] == vocab.index("<|begin_of_text|>")
    assert (generation["do_sample"], generation["temperature"], generation["top_p"]) == (True, 0.6, 0.9)
    ct2_config = json.loads((model / "config.json").read_text(encoding="utf-8"))
    assert (ct2_config["bos_token"], ct2_config["eos_token"]) == ("<|begin_of_text|>", EOT)
    assert "random" in (model / "README.md").read_text(encoding="utf-8")


def test_tokenizer_ids_are_the_generator_vocabulary(model: Path, tokenizer, generator) -> None:
    vocab = json.loads((model / "vocabulary.json").read_text(encoding="utf-8"))
    assert vocab == tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    assert set(SPECIALS) <= set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab())
    for step in generator.generate_tokens(prompt_tokens(tokenizer, CHAT), max_length=40, end_token=EOT):
        assert tokenizer.convert_ids_to_tokens(step.token_id) == step.token


def test_chat_template_is_llama3(tokenizer) -> None:
    text = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nSay hello.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_model_without_chat_template(tmp_path: Path) -> None:
    path = demo.build_model(tmp_path / "model", chat_template=False, max_position=512)
    config = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert "chat_template" not in config and config["model_max_length"] == 512


def test_vocabulary_has_partial_utf8_pieces(tokenizer) -> None:
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    merged_partials = [t for t in tokens if len(t) > 1 and t not in SPECIALS and is_partial(tokenizer, t)]
    assert len(merged_partials) >= 10
    assert len(tokenizer.encode(WORLD, add_special_tokens=False)) < len(WORLD.encode("utf-8")) // 2


def test_sampled_replies_are_clean_text_and_end(tokenizer, generator) -> None:
    eot = tokenizer.convert_tokens_to_ids(EOT)
    ended = 0
    for _ in range(12):
        ids = sample(generator, prompt_tokens(tokenizer, CHAT))
        ended += ids[-1] == eot
        body = ids[:-1] if ids[-1] == eot else ids
        tokens = tokenizer.convert_ids_to_tokens(body)
        assert not set(tokens) & set(SPECIALS)
        assert not any(is_partial(tokenizer, token) for token in tokens)
        assert "\ufffd" not in tokenizer.decode(body)
    assert ended >= 9


def test_negative_eot_bias_never_ends(tmp_path: Path) -> None:
    path = demo.build_model(tmp_path / "model", eot_bias=-1e4)
    tokenizer = load_tokenizer(path)
    generator = ctranslate2.Generator(str(path), device="cpu", compute_type="int8")
    for _ in range(3):
        ids = sample(generator, prompt_tokens(tokenizer, CHAT), max_length=300)
        assert len(ids) == 300 and tokenizer.convert_tokens_to_ids(EOT) not in ids


def test_parrot_replays_its_script_after_any_prompt(parrot: tuple[str, Path]) -> None:
    script, path = parrot
    tokenizer = load_tokenizer(path)
    generator = ctranslate2.Generator(str(path), device="cpu", compute_type="default")  # as stored: float32
    expected = tokenizer.encode(script, add_special_tokens=False)
    long_turn = {"role": "user", "content": "Tell me more.\n\n" + script * 3}
    follow_up = [*CHAT, {"role": "assistant", "content": "ok"}, long_turn]
    conversations = (CHAT, [{"role": "user", "content": "hi"}], follow_up)
    for messages in conversations:
        tokens = prompt_tokens(tokenizer, messages)
        ids = sample(generator, tokens, sampling_topk=1, max_length=len(expected) + 20)
        assert ids == [*expected, tokenizer.convert_tokens_to_ids(EOT)]
        assert tokenizer.decode(ids[:-1]) == script
    tokens = prompt_tokens(tokenizer, CHAT)
    steps = list(generator.generate_tokens(tokens, max_length=len(expected) + 20, end_token=EOT))
    assert [s.token_id for s in steps[:-1]] == expected
    assert steps[-1].token == EOT and steps[-1].is_last


def test_parrot_refuses_an_ambiguous_script(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="two different continuations"):
        build_parrot(tmp_path / "model", "x a b c d e, x a b c d f")


def test_same_seed_builds_the_same_model(model: Path, tokenizer, tmp_path: Path) -> None:
    again = demo.build_model(tmp_path / "model")
    for name in ("vocabulary.json", "tokenizer.json", "model.bin"):
        assert (again / name).read_bytes() == (model / name).read_bytes()
    tokens = prompt_tokens(tokenizer, CHAT)
    replies = []
    for path in (model, again):
        # CTranslate2 seeds a worker thread's sampler when it first samples: use a fresh Generator.
        ctranslate2.set_random_seed(1234)
        generator = ctranslate2.Generator(str(path), device="cpu", compute_type="int8")
        replies.append((sample(generator, tokens), sample(generator, tokens, sampling_topk=1)))
    assert replies[0] == replies[1]
    assert tokenizer.decode(replies[0][0]) == tokenizer.decode(replies[1][0])


def test_ensure_demo_builds_once_in_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CT2_MAGICS_CACHE", str(tmp_path / "cache"))
    assert demo.demo_dir() == tmp_path / "cache" / "demo-v1"
    path = demo.ensure_demo()
    assert path == demo.demo_dir() and set(FILES) <= {p.name for p in path.iterdir()}
    stamp = (path / "model.bin").stat().st_mtime_ns
    monkeypatch.setattr(demo, "build_model", lambda *a, **k: pytest.fail("rebuilt an existing demo"))
    assert demo.ensure_demo() == path
    assert (path / "model.bin").stat().st_mtime_ns == stamp
    assert [p.name for p in path.parent.iterdir()] == ["demo-v1"]


def test_ensure_demo_survives_a_race(tmp_path: Path) -> None:
    target = tmp_path / "shared" / "demo-v1"
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(demo.ensure_demo(target))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [target] * 3
    assert [p.name for p in target.parent.iterdir()] == ["demo-v1"]
    ctranslate2.Generator(str(target), device="cpu", compute_type="int8")
