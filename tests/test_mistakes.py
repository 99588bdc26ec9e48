"""Ordinary mistakes, from every front end: one line that says what is wrong, the chat and the model untouched."""

from __future__ import annotations

import pytest
from IPython.core.error import UsageError

from ct2_magics.errors import LlamaError
from helpers import run

# (option, what is typed, the same value in Python, the line every front end gives)
BAD_VALUES = [
    ("temperature", "inf", float("inf"), "temperature must be a number >= 0 (0 means greedy); got inf."),
    ("temperature", "nan", float("nan"), "temperature must be a number >= 0 (0 means greedy); got nan."),
    ("temperature", "1e39", 1e39, "temperature must be a number >= 0 (0 means greedy); got 1e+39."),
    ("top_k", "99999999999999999999", 99999999999999999999,
     "top_k must be a whole number from 0 to 2147483647 (0 means no cut); got 99999999999999999999."),
    ("top_k", "2.5", 2.5, "top_k must be a whole number from 0 to 2147483647 (0 means no cut); got 2.5."),
    ("seed", "4294967296", 4294967296, "seed must be a whole number from 0 to 4294967295; got 4294967296."),
    ("repetition_penalty", "1e-300", 1e-300, "repetition_penalty must be a number > 0 (1 means none); got 1e-300."),
    ("top_p", "1e-320", 1e-320, "top_p must be a number > 0 and <= 1; got 1e-320."),
    ("max_tokens", "0", 0, "max_tokens must be a whole number from 1 to 2147483647; got 0."),
    ("temperature", "warm", "warm", "temperature must be a number >= 0 (0 means greedy); got 'warm'."),
]
FLAGS = {"temperature": "-t", "top_k": "--top-k", "top_p": "--top-p", "seed": "--seed",
         "repetition_penalty": "--repetition-penalty", "max_tokens": "-n"}


@pytest.fixture
def loaded(shell, llama):
    """The demo model and a chat with one turn, and a check that both are untouched at the end."""
    shell.run_line_magic("llama", "load demo")
    assert run(shell, "%%llama -n 3\nkeep me").success
    generator, before = llama.generator, {c.name: list(c.turns) for c in llama.chats}
    yield llama
    assert llama.generator is generator and generator.model_is_loaded
    assert {c.name: list(c.turns) for c in llama.chats} == before


def one_usage_line(capsys, result) -> str:
    err = capsys.readouterr().err
    assert isinstance(result.error_in_exec, UsageError), result.error_in_exec
    assert err.startswith("UsageError: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err[len("UsageError: "):].strip()


@pytest.mark.parametrize("name, text, value, line", BAD_VALUES, ids=[f"{n}={t}" for n, t, _, _ in BAD_VALUES])
def test_a_bad_value_gets_the_same_line_from_every_front_end(shell, loaded, capsys, caplog, name, text, value, line):
    llama = loaded
    capsys.readouterr()
    assert one_usage_line(capsys, run(shell, f"%%llama {FLAGS[name]} {text}\nhi")) == line
    with pytest.raises(LlamaError) as api:
        llama.ask("hi", **{name: value})
    assert str(api.value) == line
    panel = llama.panel()
    getattr(panel, name).value = text
    assert not panel.send("hi") and panel.status.value == line  # and no junk turn: `loaded` checks
    panel.close()
    typed = f"float('{text}')" if text in ("inf", "nan") else repr(value)
    shell.run_line_magic("config", f"LlamaSettings.{name} = {typed}")
    assert getattr(llama.settings, name) is None
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == ["LlamaSettings." + line]  # %config's
    with pytest.raises(LlamaError) as setting:
        setattr(llama.settings, name, value)
    assert str(setting.value) == "LlamaSettings." + line


@pytest.mark.parametrize("setting, value, says", [
    ("threads", "-3", "threads must be a whole number from 0 to 1024; got -3."),
    ("max_context", "0", "max_context must be a whole number from 16"),
    ("batch_size", "0", "batch_size must be a whole number from 1"),
    ("updates_per_second", "float('inf')", "updates_per_second must be a number > 0; got inf."),
    ("system", "'bad \\ud800 text'", "holds an invalid character (a lone surrogate)"),
])
def test_a_bad_setting_is_one_line_and_keeps_the_old_value(shell, loaded, caplog, setting, value, says):
    llama = loaded
    before = getattr(llama.settings, setting)
    assert run(shell, f"%config LlamaSettings.{setting} = {value}").success
    (line,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]  # %config shows it as one line
    assert says in line and "\n" not in line, line
    assert getattr(llama.settings, setting) == before
    assert run(shell, "%%llama -n 3\nstill works").success
    llama.undo()


@pytest.mark.parametrize("code, says", [
    ("llama.ask(None)", "The prompt must be text (a str); got NoneType."),
    ("llama.ask(123)", "The prompt must be text (a str); got int."),
    ("llama.ask('hi', chat=123)", "A chat's name is text, like 'notes'; got 123."),
    ("llama.ask('hi', chat='  ')", "A chat's name cannot be blank"),
    ("llama.ask('hi', system=7)", "The system prompt must be text"),
    ("llama.generate(None)", "generate takes a list of prompts or a pandas Series; got NoneType."),
    ("llama.generate(['hi'], system=1)", "The system prompt must be text"),
    ("llama.load(123)", "The model (a directory, a Hub repo id, or demo) must be text; got 123."),
    ("llama.map({'a': 'x'})", "map takes a list of items or a pandas Series, not a dict (for a dict, pass"),
    ("llama.map(dict)", "map takes a list of items or a pandas Series, not a type (for a dict, pass"),
    ("llama.map('text')", "a single string would be asked letter by letter"),
    ("llama.map(42)", "map takes a list of items or a pandas Series; got int."),
    ("llama.chat().set_system('bad \\ud800')", "holds an invalid character (a lone surrogate)"),
])
def test_python_api_mistakes_are_one_line(shell, loaded, capsys, code, says):
    capsys.readouterr()
    result = run(shell, f"from ct2_magics import llama\n{code}")
    err = capsys.readouterr().err
    assert isinstance(result.error_in_exec, LlamaError), result.error_in_exec
    assert err.startswith("LlamaError: ") and says in err and err.count("\n") == 1, err


@pytest.mark.parametrize("typed, meant", [
    ("%%llama --temprature 0\nhi", "--temperature"),
    ("%%llama --max-tokns=3\nhi", "--max-tokens"),
    ("%%llama --top_p 0.5\nhi", "--top-p"),
    ("%llama load demo --devce cpu", "--device"),
])
def test_a_misspelt_option_names_the_one_meant(shell, loaded, capsys, typed, meant):
    capsys.readouterr()
    line = one_usage_line(capsys, run(shell, typed))
    assert line.startswith("unrecognized arguments: ") and line.endswith(f"(did you mean {meant}?)")


def test_an_unknown_option_like_none_is_refused_without_a_guess(shell, loaded, capsys):
    capsys.readouterr()
    assert one_usage_line(capsys, run(shell, "%%llama --zzz\nhi")) == "unrecognized arguments: --zzz"


def test_a_huge_batch_size_is_just_a_big_batch(loaded):
    assert loaded.generate(["hi", "there"], batch_size=2**40, max_tokens=3, temperature=0) == [
        loaded.ask(p, once=True, max_tokens=3, temperature=0) for p in ("hi", "there")]


def test_a_file_name_with_a_nul_byte_is_one_line(shell, loaded, capsys, tmp_path):
    capsys.readouterr()
    for command in ("save", "restore"):
        assert "NUL character" in one_usage_line(capsys, run(shell, f"%llama {command} {tmp_path}/a\x00b.json"))


def test_a_top_k_above_the_vocabulary_is_no_cut(loaded):
    assert isinstance(loaded.ask("hi", once=True, top_k=10**6, max_tokens=3), str)
