"""%%llama in a real InteractiveShell on real tiny CTranslate2 models."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from IPython.core.error import UsageError

from helpers import html_text, plains, reference_greedy, reply_outputs, run, run_ok

SCRIPT = "नमस्ते दुनिया 🙂 สวัสดี 你好世界"


def test_load_ext_is_light_and_registers_magics():
    code = textwrap.dedent("""
        import sys, time
        from IPython.core.interactiveshell import InteractiveShell
        shell = InteractiveShell.instance()
        t = time.perf_counter()
        shell.run_line_magic("load_ext", "ct2_magics")
        heavy = [m for m in ("ctranslate2", "transformers", "torch") if m in sys.modules]
        print(heavy, "llama" in shell.magics_manager.magics["cell"], "llama" in shell.magics_manager.magics["line"])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[] True True"


def test_stream_grows_as_prefixes_and_matches_reference_decode(shell, demo_model):
    assert run(shell, "%llama load demo").success
    prompt = "Tell me about CTranslate2."
    assert run(shell, f"%%llama -t 0 -n 60\n{prompt}").success
    outs = reply_outputs(shell)
    assert len(outs) >= 2 and not outs[0]["update"] and all(o["update"] for o in outs[1:])
    texts = [html_text(o["data"]["text/html"]) for o in outs[1:]]
    final = texts[-1]
    expected = reference_greedy(demo_model, [{"role": "user", "content": prompt}], 60)
    cut = "\n\n[cut short: it reached the max tokens limit]"  # when the 60 tokens ran out before the model ended it
    assert outs[-1]["data"]["text/plain"] in (expected, expected + cut) and final
    assert "text/markdown" not in outs[-1]["data"]  # JupyterLab would render raw HTML in it
    for partial in texts[:-1]:
        assert final.startswith(partial)
    meta = outs[-1]["metadata"]["ct2_magics"]
    assert meta["model"] == "demo" and meta["device"] == "cpu" and meta["compute_type"].startswith("int8")
    assert meta["status"] in ("complete", "cut") and 0 < meta["reply_tokens"] <= 60
    assert meta["prompt_tokens"] > 5 and meta["settings"]["temperature"] == 0 and meta["settings"]["max_tokens"] == 60
    assert meta["time_to_first_token_s"] > 0 and meta["tokens_per_s"] > 0
    assert meta["settings"]["seed"] is None


def test_multilingual_reply_streams_without_replacement_characters(shell, script_model):
    shell.run_line_magic("llama", f"load {script_model(SCRIPT)}")
    assert run(shell, "%%llama -t 0 -n 100\nGreet me in four languages.").success
    outs = reply_outputs(shell)[1:]
    texts = [o["data"]["text/html"] for o in outs]
    assert outs[-1]["data"]["text/plain"] == SCRIPT and html_text(texts[-1]) == SCRIPT
    assert all("\ufffd" not in t for t in texts)
    from ct2_magics import llama

    assert llama.history()[-1] == {"role": "assistant", "content": SCRIPT}


def test_unclosed_code_fence_renders_as_code_while_streaming(shell, script_model, llama):
    script = "Look:\n\n```python\nprint(1)"
    shell.run_line_magic("llama", f"load {script_model(script)}")
    shell.run_line_magic("config", "LlamaSettings.updates_per_second = 100000")
    assert run(shell, "%%llama -t 0\ncode please").success
    texts = [o["data"]["text/html"] for o in reply_outputs(shell)[1:]]
    assert llama.history()[-1]["content"] == script
    assert '<pre class="ct2-code"><code>' in texts[-1] and "print" in texts[-1].split("<pre")[1]
    opened = [t for t in texts if "```" in html_text(t) or "<pre" in t]
    assert len(opened) >= 2 and all("<pre" in t and "```" not in html_text(t) for t in opened)


def test_followups_share_history_and_options(shell, llama):
    shell.run_line_magic("llama", "load demo")
    assert run(shell, '%%llama --system "You are terse." -n 5 --seed 1\nfirst').success
    assert run(shell, "%%llama -n 5\nsecond").success
    hist = llama.history()
    assert [m["role"] for m in hist] == ["system", "user", "assistant", "user", "assistant"]
    assert hist[0]["content"] == "You are terse." and hist[3]["content"] == "second"
    assert run(shell, "%%llama --once -n 5\naside").success
    assert len(llama.history()) == 5
    assert run(shell, "%%llama --chat other -n 5\nelsewhere").success
    assert len(llama.history("other")) == 2 and len(llama.history()) == 5
    assert run(shell, "%%llama --new -n 5\nfresh start").success
    assert [m["content"] for m in llama.history() if m["role"] == "user"] == ["fresh start"]
    assert llama.history()[0] == {"role": "system", "content": "You are terse."}


def test_rerunning_a_cell_replaces_its_turn(shell, llama):
    shell.run_line_magic("llama", "load demo")
    run_ok(shell, "%%llama -n 4\nQ1", cell_id="cell-a")
    run_ok(shell, "%%llama -n 4\nQ2", cell_id="cell-b")
    run_ok(shell, "%%llama -n 4\nQ1 edited", cell_id="cell-a")
    users = [m["content"] for m in llama.history() if m["role"] == "user"]
    assert users == ["Q1 edited", "Q2"]


def test_undo_reset_system_and_history_commands(shell, llama, capsys):
    shell.run_line_magic("llama", "load demo")
    run_ok(shell, "%%llama -n 3\none")
    run_ok(shell, "%%llama -n 3\ntwo")
    run_ok(shell, "%llama undo")
    assert [m["content"] for m in llama.history() if m["role"] == "user"] == ["one"]
    run_ok(shell, '%llama system "Answer in French."')
    assert llama.history()[0] == {"role": "system", "content": "Answer in French."}
    shell.display_pub.outputs.clear()
    run_ok(shell, "%llama history")
    assert "You: one" in plains(shell)[-1]
    run_ok(shell, "%llama reset")
    assert llama.history() == [{"role": "system", "content": "Answer in French."}]
    run_ok(shell, "%llama status")
    out = capsys.readouterr().out
    assert "demo on cpu" in out and "default (0 turns)" in out


@pytest.mark.parametrize(
    "cell",
    [
        "%%llama -n 0\nhi",
        "%%llama -n -3\nhi",
        "%%llama -n abc\nhi",
        "%%llama -t -1\nhi",
        "%%llama --top-p 1.5\nhi",
        "%%llama --top-k -2\nhi",
        "%%llama --bogus\nhi",
        '%%llama -s "unterminated\nhi',
        "%%llama\n   \n",
        "%llama frobnicate",
        "%llama undo --chat nowhere",
        "%llama load /no/such/dir",
        "%llama load demo --device tpu",
        "%llama load demo --compute-type int4",
    ],
)
def test_bad_input_is_one_line_and_keeps_state(shell, llama, capsys, cell):
    shell.run_line_magic("llama", "load demo")
    run_ok(shell, "%%llama -n 3\nkeep me")
    generator, before = llama.generator, llama.history()
    capsys.readouterr()
    result = run(shell, cell)
    err = capsys.readouterr().err
    assert isinstance(result.error_in_exec, UsageError)
    assert err.startswith("UsageError: ") and err.count("\n") == 1 and "Traceback" not in err
    assert llama.generator is generator and llama.history() == before
    assert run(shell, "%%llama -n 3\nstill works").success


def test_unsupported_compute_type_lists_supported(shell, capsys):
    run(shell, "%llama load demo --compute-type float16")
    err = capsys.readouterr().err
    assert "not supported on cpu" in err and "int8" in err and "float32" in err


def test_int8_float16_model_falls_back_to_int8_on_cpu_with_a_notice(shell, tmp_path, capsys):
    from ct2_magics.models.demo import build_model

    path = build_model(tmp_path / "m", quantization="int8_float16")
    run_ok(shell, f"%llama load {path}")
    out = capsys.readouterr().out
    assert "stored as int8_float16" in out and "using int8" in out
    from ct2_magics import llama

    assert llama.generator.compute_type == "int8_float32"


def test_loading_the_same_model_is_a_no_op_and_another_replaces_it(shell, llama, long_model):
    shell.run_line_magic("llama", "load demo")
    first = llama.generator
    shell.run_line_magic("llama", "load demo")
    assert llama.generator is first
    shell.run_line_magic("llama", f"load {long_model}")
    assert llama.generator is not first and not first.model_is_loaded


def test_default_model_loads_when_none_is(shell, llama, monkeypatch):
    shell.run_line_magic("config", "LlamaSettings.model = 'demo'")
    assert llama.generator is None
    assert run(shell, "%%llama -n 3\nhello").success
    assert llama.engine.name == "demo"


def test_default_model_comes_from_the_environment(monkeypatch):
    from ct2_magics.core.settings import REFERENCE_MODEL, LlamaSettings

    monkeypatch.delenv("CT2_MAGICS_MODEL", raising=False)
    assert LlamaSettings().model == REFERENCE_MODEL
    monkeypatch.setenv("CT2_MAGICS_MODEL", "/models/mine")
    assert LlamaSettings().model == "/models/mine"


def test_unload_ext_frees_the_model_and_keeps_chats(shell, llama):
    shell.run_line_magic("llama", "load demo")
    run_ok(shell, "%%llama -n 3\nhello")
    generator = llama.generator
    shell.run_line_magic("unload_ext", "ct2_magics")
    assert llama.generator is None and not generator.model_is_loaded
    assert "llama" not in shell.magics_manager.magics["cell"]
    assert len(llama.history()) == 2


def test_terminal_shell_prints_plain_text(ipython, demo_model, capfd):
    ipython.run_line_magic("load_ext", "ct2_magics")
    ipython.run_line_magic("llama", "load demo")
    capfd.readouterr()
    run_ok(ipython, "%%llama -t 0 -n 20\nhello")
    out = capfd.readouterr().out
    from ct2_magics import llama

    assert llama.history()[-1]["content"] in out


def test_a_system_prompt_is_cached_and_changes_nothing(shell, llama, demo_model):
    shell.run_line_magic("llama", "load demo")
    # Long enough to be split off: a cached prefix has at least EXACT_ROWS tokens and leaves the last EXACT_ROWS.
    system = ("You are a careful statistician who answers briefly, names the test you would use, states its "
              "assumptions, and warns about small samples, outliers and multiple comparisons.")
    prompt = "What is a p-value?"
    assert run(shell, f'%%llama -s "{system}" -t 0 -n 40\n{prompt}').success
    messages = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
    assert llama.history()[-1]["content"] == reference_greedy(demo_model, messages, 40)
    shell.display_pub.outputs.clear()
    assert run(shell, f'%%llama -s "{system}" -t 0 -n 40 --once\n{prompt}').success  # the same prompt again
    meta = shell.display_pub.outputs[-1]["metadata"]["ct2_magics"]
    assert 0 < meta["cached_prompt_tokens"] < meta["prompt_tokens"]  # its system block came from the cache
    assert shell.display_pub.outputs[-1]["data"]["text/plain"] == llama.history()[-1]["content"]  # same reply
    batch = llama.generate([prompt, prompt + " Twice."], system=system, temperature=0, max_tokens=40)
    assert batch[0] == llama.history()[-1]["content"]


def test_cached_system_block_gives_the_same_scores_as_the_full_prompt(llama):
    llama.load("demo")
    engine = llama.engine
    system = "Be brief. Answer in one sentence, name one source, and say how sure you are, from one to five."
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "Tell me about tea."}]
    engine.register_system(system)
    ids = engine.prompt_ids(messages)
    (rest,), static = engine.ct2_inputs([ids])
    assert static and len(rest) < len(ids)
    full = engine.tokenizer.convert_ids_to_tokens(ids)
    a = [(s.token_id, s.log_prob) for s in engine.generator.generate_tokens(full, max_length=12, sampling_topk=1, return_log_prob=True)]
    b = [(s.token_id, s.log_prob) for s in engine.generator.generate_tokens(rest, max_length=12, sampling_topk=1, return_log_prob=True, **static)]
    assert [t for t, _ in a] == [t for t, _ in b]
    assert max(abs(x - y) for (_, x), (_, y) in zip(a, b)) < 1e-3


def test_a_model_folder_under_a_dot_cache_directory_loads(shell, llama, demo_model, tmp_path):
    import shutil

    folder = tmp_path / ".cache" / "models" / "mine"
    shutil.copytree(demo_model, folder)
    (folder / ".cache").mkdir()  # huggingface_hub's own bookkeeping inside a folder is skipped
    (folder / ".cache" / "model.bin.lock").write_text("")
    assert run(shell, f"%llama load {folder}").success
    assert llama.engine.model_dir == folder and run(shell, "%%llama -n 2\nhi").success


def test_load_then_unload_leaves_the_shell_as_it_was(ipython):
    before = list(ipython.configurables)
    for _ in range(2):
        ipython.run_line_magic("load_ext", "ct2_magics")
        ipython.run_line_magic("unload_ext", "ct2_magics")
    assert ipython.configurables == before  # no magics object (holding the session) left behind, however often
