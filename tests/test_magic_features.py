"""%%llama --out / --format, {variable} prompts and %llama explain, in a real shell on real tiny models."""

from __future__ import annotations

import pytest
from IPython.core.error import UsageError

from ct2_magics.notebook.render import with_mark
from helpers import reply_outputs, run, run_ok

CODE_REPLY = "Here:\n```\n\nfound = 7\n```"  # the script models can replay only some texts; these build
JSON_REPLY = '{"id": 7}'
FENCED_JSON_REPLY = '```\n\n{"id": 7}\n```'
PROSE_REPLY = "Sorry, I cannot do that."
STRAY_FENCE_JSON_REPLY = '{"id": 7}\n```\nThat is the object you asked for.'  # issue 23: a closing fence, then prose


def one_usage_line(capsys, result) -> str:
    err = capsys.readouterr().err
    assert isinstance(result.error_in_exec, UsageError)
    assert err.startswith("UsageError: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def last_prompt(llama, chat: str = "default") -> str:
    return [m["content"] for m in llama.history(chat) if m["role"] == "user"][-1]


# -- --out and --format ---------------------------------------------------------------------------
def test_out_stores_the_exact_reply(shell, llama):
    shell.run_line_magic("llama", "load demo")
    assert run(shell, "%%llama -t 0 -n 30 -o reply\nTell me a story.").success
    reply = shell.user_ns["reply"]
    assert isinstance(reply, str) and reply
    assert reply == llama.history()[-1]["content"]
    assert reply_outputs(shell)[-1]["data"]["text/plain"] == reply


def test_out_must_be_a_variable_name(shell, llama, capsys):
    shell.run_line_magic("llama", "load demo")
    capsys.readouterr()
    one_usage_line(capsys, run(shell, "%%llama -n 3 -o not-a-name\nhi"))
    one_usage_line(capsys, run(shell, "%%llama -n 3 -f yaml\nhi"))
    assert len(llama.chats) == 0  # nothing was asked


def test_format_text_publishes_plain_text_only(shell, llama):
    shell.run_line_magic("llama", "load demo")
    llama.settings.updates_per_second = 100000  # every piece an update (set on this session only, not in shell.config)
    assert run(shell, "%%llama -t 0 -n 30 -f text\nhello").success
    outs = reply_outputs(shell)
    assert len(outs) >= 3  # the placeholder, updates while streaming, the final text
    assert all(set(o["data"]) == {"text/plain"} for o in outs)
    assert outs[-1]["data"]["text/plain"] == llama.history()[-1]["content"]


def test_format_code_offers_the_code_as_the_next_cell_without_running_it(shell, script_model):
    shell.run_line_magic("llama", f"load {script_model(CODE_REPLY)}")
    shell.rl_next_input = None
    shell.user_ns.pop("found", None)
    assert run(shell, "%%llama -t 0 -f code -o snippet\nSet found to 7.").success
    assert shell.rl_next_input == "found = 7"
    assert shell.user_ns["snippet"] == "found = 7"
    assert "found" not in shell.user_ns
    assert reply_outputs(shell)[-1]["data"]["text/plain"] == CODE_REPLY
    assert "<pre" in reply_outputs(shell)[-1]["data"]["text/html"]


def test_format_code_without_a_code_block_is_one_line(shell, script_model, llama, capsys):
    shell.run_line_magic("llama", f"load {script_model(PROSE_REPLY)}")
    shell.rl_next_input = None
    capsys.readouterr()
    err = one_usage_line(capsys, run(shell, "%%llama -t 0 -f code -o snippet\nWrite code."))
    assert "no ``` code block" in err
    assert shell.rl_next_input is None and shell.user_ns["snippet"] == PROSE_REPLY
    assert llama.history()[-1]["content"] == PROSE_REPLY


@pytest.mark.parametrize("reply", [JSON_REPLY, FENCED_JSON_REPLY, STRAY_FENCE_JSON_REPLY])
def test_format_json_stores_the_parsed_value(shell, script_model, reply):
    shell.run_line_magic("llama", f"load {script_model(reply)}")
    assert run(shell, "%%llama -t 0 -f json -o data\nGive me JSON.").success
    assert shell.user_ns["data"] == {"id": 7}


def test_format_json_with_a_non_json_reply_is_one_line_and_keeps_the_reply(shell, script_model, llama, capsys):
    shell.run_line_magic("llama", f"load {script_model(PROSE_REPLY)}")
    capsys.readouterr()
    err = one_usage_line(capsys, run(shell, "%%llama -t 0 -f json -o data\nGive me JSON."))
    assert err == (f"UsageError: The reply holds no complete JSON value (it has no {{ or [ and begins {PROSE_REPLY!r}); "
                   "data holds the raw reply (a str).\n")
    assert shell.user_ns["data"] == PROSE_REPLY
    assert llama.history()[-1] == {"role": "assistant", "content": PROSE_REPLY}
    assert reply_outputs(shell)[-1]["data"]["text/plain"] == PROSE_REPLY


# -- {variable} prompts ---------------------------------------------------------------------------
def test_variables_are_filled_and_nothing_is_evaluated(shell, llama, capsys):
    shell.run_line_magic("llama", "load demo")
    run_ok(shell, "x = 42\nnums = [1, 2]")
    cell = "%%llama -n 2\nx={x} nums={nums} {missing} {{x}} {x.__class__} {__import__('os')} {x!r} {nums[0]} {x:>5}"
    assert run(shell, cell).success
    assert last_prompt(llama) == "x=42 nums=[1, 2] {missing} {x} {x.__class__} {__import__('os')} {x!r} {nums[0]} {x:>5}"
    assert "{missing}" in capsys.readouterr().out  # a one-line notice names what was left as written


def test_in_and_out_refer_to_cells(shell, llama):
    shell.run_line_magic("llama", "load demo")
    run_ok(shell, "40 + 2")
    n = shell.execution_count - 1
    assert run(shell, f"%%llama -n 2\nIn: {{In[{n}]}} Out: {{Out[{n}]}} none: {{Out[{n + 1000}]}}").success
    assert last_prompt(llama) == f"In: 40 + 2 Out: 42 none: {{Out[{n + 1000}]}}"


def test_no_vars_sends_braces_as_written(shell, llama):
    shell.run_line_magic("llama", "load demo")
    run_ok(shell, "x = 42")
    assert run(shell, "%%llama -n 2 --no-vars\n{x} {{x}}").success
    assert last_prompt(llama) == "{x} {{x}}"


def test_tables_and_long_text_are_capped(shell, llama):
    shell.run_line_magic("llama", "load demo")
    run_ok(shell, "import pandas as pd\n"
                  "df = pd.DataFrame({f'c{i}': range(500) for i in range(30)})\n"
                  "doc = 'word ' * 2469")
    assert run(shell, "%%llama -n 2\nTable:\n{df}\nColumn:\n{df[c0]}\nDoc:\n{doc}").success
    prompt = last_prompt(llama)
    table = prompt.split("Column:")[0]
    assert "[500 rows x 30 columns]" in table and "..." in table and "499" in table
    assert len(table.splitlines()) < 30 and "c29" in table and "c15" not in table
    assert "{df[c0]}" in prompt  # item lookups are not done
    assert prompt.endswith("… [truncated, 12,345 characters in all]")
    assert len(prompt) < 4000 + 3000


# -- %llama explain -------------------------------------------------------------------------------
def test_explain_sends_the_error_and_its_cell_and_streams_a_reply(shell, llama):
    shell.run_line_magic("llama", "load demo")
    failing = "def ratio(a, b):\n    return a / b\n\nscores = [3, 4]\nratio(sum(scores), len(scores) - 2)"
    assert not run(shell, failing).success
    shell.display_pub.outputs.clear()
    assert run(shell, "%llama explain -n 20").success
    prompt = last_prompt(llama, "explain")
    assert "ZeroDivisionError" in prompt and "division by zero" in prompt
    assert failing in prompt and "return a / b" in prompt
    assert "interactiveshell" not in prompt  # IPython's own frames are left out
    outs = reply_outputs(shell)
    assert len(outs) >= 2
    turn = llama.chat("explain").turns[-1]  # the plain text ends with the reply's end mark (cut by -n 20)
    assert outs[-1]["data"]["text/plain"] == with_mark(llama.history("explain")[-1]["content"], turn.status)
    assert [c.name for c in llama.chats] == ["explain"]  # the default chat is untouched


def test_explain_starts_its_chat_afresh_or_adds_to_a_named_one(shell, llama):
    shell.run_line_magic("llama", "load demo")
    run(shell, "1 / 0")
    run_ok(shell, "%llama explain -n 3")
    run(shell, "int('seven')")
    run_ok(shell, "%llama explain -n 3")
    explain = llama.history("explain")
    assert len(explain) == 2 and "ValueError" in explain[0]["content"]
    run_ok(shell, "%%llama -n 3\nhello")
    run_ok(shell, "%llama explain -n 3 --chat default")
    assert len(llama.history()) == 4 and "ValueError" in llama.history()[2]["content"]


def test_explain_survives_a_usage_error_in_between(shell, llama, capsys):
    shell.run_line_magic("llama", "load demo")
    run(shell, "[1, 2, 3][10]")
    run(shell, "%llama explian")
    capsys.readouterr()
    assert run(shell, "%llama explain -n 3").success
    assert "IndexError" in last_prompt(llama, "explain")


def test_explain_a_syntax_error_shows_the_cell(shell, llama):
    shell.run_line_magic("llama", "load demo")
    run(shell, "if True print('hi')")
    assert run(shell, "%llama explain -n 3").success
    prompt = last_prompt(llama, "explain")
    assert "SyntaxError" in prompt and "if True print('hi')" in prompt


def test_explain_without_an_error_is_one_line(shell, llama, capsys):
    shell.run_line_magic("llama", "load demo")
    capsys.readouterr()
    err = one_usage_line(capsys, run(shell, "%llama explain"))
    assert "no error to explain" in err
    err = one_usage_line(capsys, run(shell, "%llama explain"))  # its own usage error is not explained
    assert "no error to explain" in err


def test_help_lists_the_new_options(shell, capsys):
    run_ok(shell, "%llama help")
    out = capsys.readouterr().out
    assert all(word in out for word in ("--out", "--format", "--no-vars", "{In[3]}", "%llama explain"))


# -- the pure parts -------------------------------------------------------------------------------
def test_substitute_and_compact():
    from ct2_magics.notebook.interpolate import compact, substitute

    ns = {"a": "A", "In": ["", "src"], "Out": {1: [1, 2]}}
    assert substitute("{a}{{a}}{{{a}}}{In[1]}{Out[1]}{In[9]}{b}{ a }", ns) == (
        "A{a}{A}src[1, 2]{In[9]}{b}{ a }", ["{In[9]}", "{b}"])
    assert substitute('[{"k": {"v": 1}}]', {}) == ('[{"k": {"v": 1}}]', [])

    class Broken:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    assert compact(Broken()) == "<Broken: cannot be shown (RuntimeError)>"
    text = compact(list(range(10_000)), limit=50)
    assert text.startswith("[0, 1, 2") and text.endswith("\n… [truncated, 58,890 characters in all]")
    assert len(text) < 100


def test_code_block_and_json_value():
    from ct2_magics.notebook.render import code_block, json_value

    assert code_block("a\n```python\nx = 1\n```\n```\ny\n```") == "x = 1"
    assert code_block("cut short:\n```python\nx = 1\ny = ") == "x = 1\ny = "
    assert code_block("````md\n```\ninner\n```\n````") == "```\ninner\n```"
    assert code_block("no code") is None
    assert json_value(' [1, {"a": null}]\n') == [1, {"a": None}]
    assert json_value('Sure:\n```json\n{"a": 1}\n```\nDone.') == {"a": 1}
    assert json_value('{"a": 1}\n```\nThat is the JSON you asked for.') == {"a": 1}
    assert json_value('Here it is: [1, 2], as asked. {"b": 2} is another.') == [1, 2]
    assert json_value("```json\n42\n```") == 42
    assert json_value('Sure! {not json} but ```\n{"c": [true]}\n```') == {"c": [True]}


@pytest.mark.parametrize("reply, says", [
    ("not json", "it has no { or [ and begins 'not json'"),
    ("Sure:\n\n" + "x" * 80, "it has no { or [ and begins 'Sure: xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx…'"),
    (" \n", "the reply is empty"),
    ('Here:\n```json\n{"a": 1, "b": ', "the object that starts on line 3 is unfinished: the reply ends inside it"),
    ('[1, 2,, 3]', "the array that starts on line 1 does not parse (Expecting value at line 1 column 7)"),
])
def test_json_value_says_what_it_found_on_one_line(reply, says):
    from ct2_magics.notebook.render import json_value

    with pytest.raises(ValueError) as e:
        json_value(reply)
    assert str(e.value) == says
