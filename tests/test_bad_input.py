"""The catalogue of bad input: each is one clear line, no traceback, and nothing the user had is lost."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from IPython.core.error import UsageError

from helpers import run, run_ok


@pytest.fixture(scope="module")
def broken(tmp_path_factory, demo_model) -> dict[str, Path]:
    """Model directories that are wrong in one way each."""
    root = tmp_path_factory.mktemp("broken")
    no_tok = root / "no-tokenizer"
    no_tok.mkdir()
    for name in ("model.bin", "config.json", "vocabulary.json"):
        shutil.copy(demo_model / name, no_tok / name)
    corrupt = root / "corrupt"
    shutil.copytree(demo_model, corrupt)
    data = (demo_model / "model.bin").read_bytes()
    (corrupt / "model.bin").write_bytes(data[: len(data) // 3])
    not_model = root / "not-a-model"
    not_model.mkdir()
    (not_model / "notes.txt").write_text("hello")
    from ct2_magics.models.demo import build_model

    return {"no_tok": no_tok, "corrupt": corrupt, "not_model": not_model,
            "no_template": build_model(root / "no-template", chat_template=False)}


CATALOGUE = {
    # loading
    "missing path": "%llama load /no/such/dir",
    "directory that is not a model": "%llama load {not_model}",
    "model without tokenizer files": "%llama load {no_tok}",
    "truncated model.bin": "%llama load {corrupt}",
    "repo id offline and not cached": "%llama load nobody/no-such-model-xyz",
    "unknown device": "%llama load demo --device tpu",
    "cuda without a GPU": "%llama load demo --device cuda",
    "unsupported compute type": "%llama load demo --compute-type float16",
    "misspelled compute type": "%llama load demo --compute-type int8_flaot16",
    "load with no model name and unknown option": "%llama load --fast",
    # generation options
    "zero max tokens": "%%llama -n 0\nhi",
    "negative max tokens": "%%llama -n -3\nhi",
    "non-numeric max tokens": "%%llama -n many\nhi",
    "negative temperature": "%%llama -t -1\nhi",
    "non-numeric temperature": "%%llama -t warm\nhi",
    "top-p above one": "%%llama --top-p 1.5\nhi",
    "zero top-p": "%%llama --top-p 0\nhi",
    "negative top-k": "%%llama --top-k -2\nhi",
    "non-integer top-k": "%%llama --top-k 2.5\nhi",
    "unknown option": "%%llama --bogus\nhi",
    "unterminated quote": '%%llama -s "unterminated\nhi',
    # prompts
    "empty cell": "%%llama\n",
    "cell of whitespace": "%%llama\n   \n\t\n",
    "lone surrogate in prompt": "%%llama -n 3\nbad \ud800 text",
    "prompt larger than the context": "%%llama -n 3\n" + "word " * 3000,
    # chats and commands
    "unknown command": "%llama frobnicate",
    "bare %llama": "%llama",
    "history of an unknown chat": "%llama history --chat nowhere",
    "undo in an unknown chat": "%llama undo --chat nowhere",
    "undo on an empty chat": "%llama undo --chat empty",
}


@pytest.mark.parametrize("case", sorted(CATALOGUE))
def test_bad_input(shell, llama, capsys, broken, case):
    shell.run_line_magic("config", "LlamaSettings.max_context = 1024")
    shell.run_line_magic("llama", "load demo")
    run_ok(shell, "%%llama -n 3\nkeep me")
    llama.chat("empty")
    generator, before = llama.generator, {c.name: list(c.turns) for c in llama.chats}
    capsys.readouterr()
    result = run(shell, CATALOGUE[case].format(**{k: str(v) for k, v in broken.items()}))
    captured = capsys.readouterr()
    assert isinstance(result.error_in_exec, UsageError), captured
    err = captured.err
    assert err.startswith("UsageError: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert len(err) < 400, err
    assert llama.generator is generator and generator.model_is_loaded
    assert {c.name: list(c.turns) for c in llama.chats} == before
    assert run(shell, "%%llama -n 3\nstill works").success


def test_model_without_a_chat_template_is_refused_at_load(shell, llama, capsys, broken):
    shell.run_line_magic("llama", "load demo")
    generator = llama.generator
    capsys.readouterr()
    result = run(shell, f"%llama load {broken['no_template']}")
    err = capsys.readouterr().err
    assert isinstance(result.error_in_exec, UsageError) and "no chat template" in err and err.count("\n") == 1
    assert llama.generator is generator and generator.model_is_loaded and llama.engine.name == "demo"


def test_default_model_unreachable_before_any_load(shell, llama, capsys):
    shell.run_line_magic("config", "LlamaSettings.model = 'nobody/unreachable-model'")
    result = run(shell, "%%llama\nhello")
    err = capsys.readouterr().err
    assert isinstance(result.error_in_exec, UsageError) and "nobody/unreachable-model" in err and err.count("\n") == 1
    assert llama.generator is None and llama.chats.get("default").turns == []


def test_binary_junk_in_a_prompt_is_answered(shell, llama):
    shell.run_line_magic("llama", "load demo")
    assert run(shell, "%%llama -n 3\n\x00\x01\x02 junk \x7f\x1b[31m").success
    assert llama.history()[-2]["content"].startswith("\x00")


def test_python_api_errors_are_one_line_in_a_cell(shell, capsys):
    result = run(shell, "from ct2_magics import llama\nllama.history('nowhere')")
    err = capsys.readouterr().err
    assert result.error_in_exec is not None and err.strip().startswith("LlamaError: ") and err.count("\n") == 1


def test_a_failing_new_request_keeps_the_chat(shell, llama, capsys):
    shell.run_line_magic("llama", "load demo")
    shell.run_line_magic("config", "LlamaSettings.max_context = 256")
    run_ok(shell, '%%llama -s "Be kind." -n 3\nkeep me')
    before = list(llama.chat().turns)
    result = run(shell, '%%llama --new -s "Other." -n 3\n' + "word " * 2000)
    assert isinstance(result.error_in_exec, UsageError)
    assert llama.chat().turns == before and llama.chat().system == "Be kind."
