"""The Python API: `from ct2_magics import llama` is the same session the magic uses."""

from __future__ import annotations

import pytest

from ct2_magics.errors import LlamaError
from helpers import run


def test_api_and_magic_share_one_session(shell):
    from ct2_magics import llama

    llama.load("demo")
    assert run(shell, "%%llama -n 4\nfrom the magic").success
    reply = llama.ask("from python", max_tokens=4, temperature=0)
    assert isinstance(reply, str)
    hist = llama.history()
    assert [m["content"] for m in hist if m["role"] == "user"] == ["from the magic", "from python"]
    assert hist[-1]["content"] == reply
    assert llama.tokenizer is not None and llama.generator.model_is_loaded


def test_stream_yields_pieces_that_join_to_the_reply(llama):
    llama.load("demo")
    pieces = list(llama.stream("hi", chat="s", temperature=0, max_tokens=30))
    assert pieces and "".join(pieces) == llama.history("s")[-1]["content"]


def test_greedy_is_reproducible_and_sampling_varies(llama):
    llama.load("demo")
    a = llama.ask("hi", once=True, temperature=0, max_tokens=30)
    assert a == llama.ask("hi", once=True, temperature=0, max_tokens=30)
    samples = {llama.ask("hi", once=True, temperature=1.5, top_k=0, max_tokens=30) for _ in range(4)}
    assert len(samples) > 1


def test_reset_and_errors(llama):
    llama.load("demo")
    llama.ask("x", max_tokens=2)
    llama.reset()
    assert llama.history() == []
    with pytest.raises(LlamaError, match="no chat named"):
        llama.history("missing")
    with pytest.raises(LlamaError, match="Unknown setting"):
        llama.ask("x", temprature=0.1)
    with pytest.raises(LlamaError, match="empty"):
        llama.undo()


def test_generation_config_gives_defaults_and_explicit_options_win(llama):
    from ct2_magics.core.options import resolve

    llama.load("demo")
    s = resolve({}, llama.settings, llama.engine.defaults)
    assert (s.temperature, s.top_p) == (0.6, 0.9)  # the demo's generation_config.json
    llama.settings.temperature = 0.2
    assert resolve({}, llama.settings, llama.engine.defaults).temperature == 0.2
    assert resolve({"temperature": 0}, llama.settings, llama.engine.defaults).temperature == 0


def test_end_tokens_include_eot_and_generation_config_ids(llama):
    llama.load("demo")
    assert {"<|eot_id|>", "<|end_of_text|>"} <= set(llama.engine.end_tokens)


def test_a_prompt_that_fits_is_templated_once_and_a_new_template_is_not_served_stale(llama, monkeypatch):
    llama.load("demo")
    llama.ask("first", max_tokens=3, temperature=0)
    tokenizer = llama.tokenizer
    calls = []
    real = tokenizer.apply_chat_template
    monkeypatch.setattr(tokenizer, "apply_chat_template", lambda *a, **k: calls.append(a) or real(*a, **k))
    llama.ask("second", max_tokens=3, temperature=0)
    assert len(calls) == 1  # fitting the chat counted the very prompt that was then sent
    messages = llama.history() + [{"role": "user", "content": "third"}]
    before = llama.engine.prompt_ids(messages)
    monkeypatch.setattr(tokenizer, "chat_template", tokenizer.chat_template.replace("<|eot_id|>", "<|eom_id|>"))
    after = llama.engine.prompt_ids(messages)
    eot, eom = tokenizer.convert_tokens_to_ids(["<|eot_id|>", "<|eom_id|>"])
    assert before.count(eot) == after.count(eom) > 0 and eom not in before
