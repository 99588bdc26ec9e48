"""What surprised a new user: the system prompt as typed, variable and chat names, {In[-1]}, models that fail
their checks, library noise, the restore notice, %llama explain's history, and the converter's arguments."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from IPython.core.error import UsageError

from ct2_magics.errors import LlamaError
from helpers import run, run_ok

ROOT = Path(__file__).resolve().parents[1]


def one_usage_line(capsys, result) -> str:
    err = capsys.readouterr().err
    assert isinstance(result.error_in_exec, UsageError), result.error_in_exec
    assert err.startswith("UsageError: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


# -- %llama system ----------------------------------------------------------------------------------
def test_the_system_prompt_is_the_rest_of_the_line_as_typed(shell, llama, capsys):
    assert run(shell, "%llama system You're a  terse   tutor.").success
    assert llama.chat().system == "You're a  terse   tutor."
    assert run(shell, "%llama system --chat side Say \"hi\" -- then stop.").success
    assert llama.chat("side").system == 'Say "hi" -- then stop.'
    assert run(shell, '%llama system "Answer in French."').success  # one pair of quotes around it is dropped
    assert llama.chat().system == "Answer in French."
    capsys.readouterr()
    assert run(shell, "%llama system").success  # nothing after it: show, never clear
    assert capsys.readouterr().out == "System prompt of chat 'default': Answer in French.\n"
    assert llama.chat().system == "Answer in French."
    assert run(shell, "%llama system --clear").success
    assert llama.chat().system is None
    assert run(shell, "%llama system").success
    assert "has no system prompt" in capsys.readouterr().out
    assert "takes no text" in one_usage_line(capsys, run(shell, "%llama system --clear Be kind."))


# -- names ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["__builtins__", "get_ipython", "In", "Out", "_", "_3", "_i2", "exit", "dict",
                                  "print", "__name__"])
def test_out_refuses_names_that_would_break_the_kernel(shell, llama, capsys, name):
    shell.run_line_magic("llama", "load demo")
    before = shell.user_ns.get(name, "absent")
    capsys.readouterr()
    err = one_usage_line(capsys, run(shell, f"%%llama -n 3 -o {name}\nhi"))
    assert f"-o {name} would replace" in err
    assert shell.user_ns.get(name, "absent") is before and len(llama.chats) == 0  # nothing was asked
    assert run(shell, "x = 1 + 1").success and run(shell, "%%llama -n 3 -o fine\nhi").success


def test_a_name_is_read_as_python_reads_it(shell, llama, capsys):
    # Pasted from a PDF: "ﬁ" is one character, a ligature; Python reads the name ﬁle as file (NFKC).
    shell.run_line_magic("llama", "load demo")
    assert run(shell, "%%llama -n 3 -o \ufb01le\nhi").success
    assert "\ufb01le" not in shell.user_ns and shell.user_ns["file"] == llama.history()[-1]["content"]
    assert run(shell, "copy = \ufb01le").success and shell.user_ns["copy"] == shell.user_ns["file"]
    capsys.readouterr()
    # a name Python reads as a builtin or a keyword is refused like the builtin or keyword itself
    err = one_usage_line(capsys, run(shell, "%%llama -n 3 -o \ufb01lter\nhi"))
    assert "(Python reads it as 'filter') would replace Python's own filter" in err
    err = one_usage_line(capsys, run(shell, "%%llama -n 3 -o \uff49\uff46\nhi"))  # fullwidth "if"
    assert "is not a Python variable name (Python reads it as 'if')" in err
    assert len(llama.chat().turns) == 1 and "filter" not in shell.user_ns  # nothing was asked
    # {name} in a prompt is the variable Python would read, too
    assert run(shell, "%%llama -n 3\nThe reply was: {\ufb01le}").success
    asked = [m["content"] for m in llama.history() if m["role"] == "user"][-1]
    assert asked == "The reply was: " + shell.user_ns["file"] and "Left" not in capsys.readouterr().out


def test_a_blank_chat_name_is_refused_everywhere(shell, llama, capsys, tmp_path):
    shell.run_line_magic("llama", "load demo")
    capsys.readouterr()
    assert "cannot be blank" in one_usage_line(capsys, run(shell, "%%llama -n 3 --chat ' '\nhi"))
    assert "cannot be blank" in one_usage_line(capsys, run(shell, "%llama history --chat ''"))
    assert len(llama.chats) == 0
    file = tmp_path / "blank.json"
    file.write_text(json.dumps({"version": 1, "notebook": None, "chats": {" ": {"system": "x", "turns": []}}}))
    assert "is blank" in one_usage_line(capsys, run(shell, f"%llama restore {file}"))
    assert len(llama.chats) == 0


# -- {In[-1]} and {Out[-1]} ------------------------------------------------------------------------
def test_negative_cell_numbers_count_back_from_this_cell(shell, llama, capsys):
    shell.run_line_magic("llama", "load demo")
    assert run(shell, "6 * 7").success
    capsys.readouterr()
    assert run(shell, "%%llama -n 2\nIn: {In[-1]} Out: {Out[-1]} none: {Out[-50]}").success
    asked = [m["content"] for m in llama.history() if m["role"] == "user"][-1]
    assert asked == "In: 6 * 7 Out: 42 none: {Out[-50]}"
    assert "Left {Out[-50]} as written" in capsys.readouterr().out


# -- models that fail their checks keep the loaded one ------------------------------------------------
def _copy(demo_model: Path, root: Path, name: str) -> Path:
    path = root / name
    shutil.copytree(demo_model, path)
    return path


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory, demo_model) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad-models")
    words = _copy(demo_model, root, "garbage-vocabulary")
    size = len(json.loads((words / "vocabulary.json").read_text()))
    (words / "vocabulary.json").write_text(json.dumps([f"w{i}" for i in range(size)]))
    shuffled = _copy(demo_model, root, "shuffled-vocabulary")  # the end tokens are there, the words are not in place
    tokens = json.loads((shuffled / "vocabulary.json").read_text())
    (shuffled / "vocabulary.json").write_text(json.dumps(tokens[:256][::-1] + tokens[256:]))
    unreadable = _copy(demo_model, root, "unreadable-vocabulary")
    (unreadable / "vocabulary.json").write_text("{not json")
    template = _copy(demo_model, root, "broken-template")
    config = json.loads((template / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for m in messages %}{{ m['content'] | no_such_filter }}{% endfor %}"
    (template / "tokenizer_config.json").write_text(json.dumps(config))
    return {"words": words, "shuffled": shuffled, "unreadable": unreadable, "template": template}


@pytest.mark.parametrize("kind, says", [
    ("words", "none of the tokens that end a reply"),
    ("shuffled", "the tokenizer and vocabulary.json disagree"),
    ("unreadable", "no readable vocabulary.json"),
    ("template", "The chat template of"),
])
def test_a_model_that_fails_its_checks_keeps_the_loaded_one(shell, llama, capsys, bad_models, kind, says):
    shell.run_line_magic("llama", "load demo")
    assert run(shell, "%%llama -n 3\nbefore").success
    generator = llama.generator
    capsys.readouterr()
    assert says in one_usage_line(capsys, run(shell, f"%llama load {bad_models[kind]}"))
    assert llama.generator is generator and generator.model_is_loaded and llama.engine.name == "demo"
    assert run(shell, "%%llama -n 3\nafter").success and llama.chat().turns[-1].status in ("complete", "cut")


# -- library noise --------------------------------------------------------------------------------
NOISY = """
import os, sys
sys.modules["torch"] = None  # as after the README's install, which brings no torch
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
shell.run_line_magic("load_ext", "ct2_magics")
print("-- load", file=sys.stderr, flush=True)
shell.run_line_magic("llama", "load " + sys.argv[1])
print("-- ask", file=sys.stderr, flush=True)
assert shell.run_cell("%%llama -n 5\\nhi").success
from ct2_magics import llama
assert len(llama.generate(["a", "b"], max_tokens=3, errors="ignore")) == 2  # (our own line on cut replies: quiet)
print("-- end", file=sys.stderr, flush=True)
"""


def test_loading_and_asking_print_nothing_from_the_libraries(tmp_path, demo_model):
    # The tokenizer that makes transformers talk: over 100,000 tokens and no transformers version in config.json
    # (its "incorrect regex pattern" notice), clean_up_tokenization_spaces (its BPE notice), and no torch.
    noisy = _copy(demo_model, tmp_path, "noisy")
    tokenizer = json.loads((noisy / "tokenizer.json").read_text())
    first = max(t["id"] for t in tokenizer["added_tokens"]) + 1
    tokenizer["added_tokens"] += [{"id": first + i, "content": f"<|reserved_{i}|>", "single_word": False, "lstrip": False,
                                   "rstrip": False, "normalized": False, "special": True} for i in range(100_001)]
    (noisy / "tokenizer.json").write_text(json.dumps(tokenizer))
    config = json.loads((noisy / "tokenizer_config.json").read_text())
    config["clean_up_tokenization_spaces"] = True
    (noisy / "tokenizer_config.json").write_text(json.dumps(config))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("TRANSFORMERS_VERBOSITY", None)
    done = subprocess.run([sys.executable, "-c", NOISY, str(noisy)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr == "-- load\n-- ask\n-- end\n"
    check = textwrap.dedent("""
        import logging, sys
        sys.modules["torch"] = None
        from ct2_magics import llama
        llama.load(sys.argv[1])
        print(logging.getLogger("transformers").getEffectiveLevel())
    """)
    level = subprocess.run([sys.executable, "-c", check, str(noisy)], capture_output=True, text=True, env=env,
                           timeout=600).stdout.split()
    assert level == [str(20 + 10)]  # WARNING: the user's own use of transformers keeps its usual notices


# -- reloading the extension ----------------------------------------------------------------------
def test_reloading_the_extension_restores_nothing_it_already_has(shell, llama, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("CT2_MAGICS_DATA", str(tmp_path / "data"))
    shell.run_line_magic("unload_ext", "ct2_magics")
    shell.user_ns["__session__"] = str(tmp_path / "nb.ipynb")
    shell.run_line_magic("load_ext", "ct2_magics")
    assert run(shell, "%llama system Be brief.").success  # a chat with a system prompt and no turns, saved
    capsys.readouterr()
    shell.run_line_magic("unload_ext", "ct2_magics")
    shell.run_line_magic("load_ext", "ct2_magics")
    assert "Restored" not in capsys.readouterr().out
    assert llama.chat().system == "Be brief."


# -- %llama explain ---------------------------------------------------------------------------------
def test_explain_history_shows_the_learners_question_not_the_instructions(shell, llama, monkeypatch):
    from ct2_magics.notebook.interpolate import EXPLAIN_INSTRUCTIONS

    shell.run_line_magic("llama", "load demo")
    assert not run(shell, "scores = [1, 2]\nscores[5]").success
    shell.display_pub.outputs.clear()
    assert run(shell, "%llama explain -n 5").success
    question = llama.history("explain")[0]["content"]
    assert "IndexError" in question and "scores[5]" in question and EXPLAIN_INSTRUCTIONS not in question
    sent = shell.display_pub.outputs[-1]["metadata"]["ct2_magics"]["prompt_tokens"]
    assert sent > len(llama.engine.prompt_ids([{"role": "user", "content": question}]))  # the model got them
    shell.display_pub.outputs.clear()
    run_ok(shell, "%llama history --chat explain")
    (shown,) = [o["data"]["text/plain"] for o in shell.display_pub.outputs]
    assert "scores[5]" in shown and EXPLAIN_INSTRUCTIONS not in shown


def test_explain_after_an_interrupt_explains_the_real_error(shell, llama, sigint):
    import _thread
    import threading

    shell.run_line_magic("llama", "load demo")
    assert not run(shell, "int('seven')").success
    threading.Timer(0.3, _thread.interrupt_main).start()
    assert isinstance(run(shell, "import time\ntime.sleep(5)").error_in_exec, KeyboardInterrupt)
    assert run(shell, "%llama explain -n 3").success
    assert "ValueError" in llama.history("explain")[0]["content"]


# -- one argument builder for the converter --------------------------------------------------------
@pytest.mark.parametrize("quantization, says", [("none", "does not exist"), ("int4", "unknown quantization")])
def test_the_magic_and_the_cli_read_convert_arguments_alike(shell, capsys, tmp_path, quantization, says):
    from ct2_magics.cli import main

    if quantization == "int4":  # the quantization is checked first, before the source
        source = tmp_path / "src"
        source.mkdir()
        (source / "config.json").write_text("{}")
    else:
        source = tmp_path / "missing"
    capsys.readouterr()
    magic = one_usage_line(capsys, run(shell, f"%llama convert {source} {tmp_path / 'out'} --quantization {quantization}"))
    assert main(["convert", str(source), str(tmp_path / "out"), "--quantization", quantization]) == 2
    cli = capsys.readouterr().err
    assert says in magic and says in cli
    assert magic.removeprefix("UsageError: ").strip() == cli.removeprefix("ct2-magics: error: ").strip()


def test_help_lists_every_sampling_option(shell, capsys):
    from ct2_magics.core.options import OPTIONS

    run_ok(shell, "%llama help")
    out = capsys.readouterr().out
    assert all(f"{'/'.join(o.flags)} {o.metavar}" in out for o in OPTIONS)
    assert "%llama system [--chat NAME] --clear" in out


def test_llama_error_for_a_path_object_is_fine(llama, demo_model):
    assert llama.load(demo_model).name == str(demo_model)
    with pytest.raises(LlamaError, match="device must be text"):
        llama.load("demo", device=1)


# -- numbers that depended on the machine's load ----------------------------------------------------
LOGITS = """
import json, sys
import numpy as np
from ct2_magics import llama
llama.settings.threads = 2
engine = llama.load(sys.argv[1])
vocab = json.load(open(sys.argv[1] + "/vocabulary.json"))
tokens = [vocab[i] for i in np.random.RandomState(0).randint(10, 1500, size=300)]
print(json.dumps({"notices": engine.notices, "logits": np.asarray(llama.generator.forward_batch([tokens]))[0][-20:].tolist()}))
"""


@pytest.mark.parametrize("openmp", [{"OMP_THREAD_LIMIT": "1"}, {"OMP_DYNAMIC": "true"}])
def test_an_openmp_that_gives_fewer_threads_than_asked_cannot_change_the_numbers(long_model, openmp):
    # CTranslate2 is wrong when OpenMP gives it fewer threads than it asked for (seen: logits off by 0.3, or
    # NaN); OMP_DYNAMIC does that by the load average, so only on a busy machine. The engine asks for what
    # it will get.
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])

    def logits(extra: dict) -> dict:
        done = subprocess.run([sys.executable, "-c", LOGITS, str(long_model)], capture_output=True, text=True,
                              env={**env, **extra}, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout)

    clean, squeezed = logits({}), logits(openmp)
    assert clean["notices"] == [] and len(squeezed["notices"]) == 1 and "thread" in squeezed["notices"][0]
    import numpy as np

    assert np.allclose(np.asarray(squeezed["logits"]), np.asarray(clean["logits"]), atol=1e-3, rtol=0)
