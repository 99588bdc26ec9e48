"""The chat panel's logic, without a browser: a real shell, real tiny models, the widgets' synced state."""

from __future__ import annotations

import re
import time

import pytest
from helpers import html_text, reference_greedy, run, wait_for

from ct2_magics.notebook.render import with_mark

SCRIPT = "Hello from the panel. This reply streams in small pieces, one token at a time, and then it ends."
TOKENS = re.compile(r"(\d+) tokens · ([\d.]+) tokens/s")


@pytest.fixture
def panel(llama):
    """Make panels (llama.panel(...)); all are stopped and closed after the test."""
    made = []

    def make(chat: str = "default"):
        p = llama.panel(chat)
        made.append(p)
        return p

    yield make
    for p in made:
        p.stop()
        assert p.wait(10), "a panel's worker did not end"
        p.close()


def shown(p) -> list[tuple[str, str]]:
    """(role, visible text) of every message, from the sanitised HTML the front end gets (the widget's synced state)."""
    state = p.root.get_state()
    out = []
    for m in state["messages"] + state["pending"]:
        assert m["role"] in ("user", "assistant") and set(m) == {"role", "html", "text", "status"}  # HTML, never markdown
        out.append((m["role"], html_text(m["html"])))
    return out


def idle(generator) -> bool:
    return generator.num_active_batches == 0 and generator.num_queued_batches == 0


def test_send_streams_markdown_into_the_messages_and_records_the_turn(shell, llama, panel, script_model):
    llama.load(str(script_model(SCRIPT)))
    llama.settings.updates_per_second = 1000
    p = panel()
    assert "Ctrl+Enter" in p.status.value and p.input.placeholder == "Message…"
    assert [b.description for b in (p.send_button, p.stop_button, p.retry_button, p.undo_button,
                                    p.new_chat_button)] == ["Send", "Stop", "Retry", "Undo", "New chat"]
    p.temperature.value = "0"
    p.input.value = "Say hello."
    assert p.send()
    assert p.input.value == "" and p.send_button.disabled and not p.stop_button.disabled
    assert p.retry_button.disabled and p.undo_button.disabled and p.new_chat_button.disabled
    seen: list[str] = []
    p.root.observe(lambda change: seen.extend(html_text(m["html"]) for m in change["new"][1:]), "pending")
    p.root.observe(lambda change: seen.extend(html_text(m["html"]) for m in change["new"][-1:]), "messages")
    assert p.wait(30)
    assert shown(p) == [("user", "Say hello."), ("assistant", SCRIPT)]
    assert len(seen) >= 3 and seen[-1] == SCRIPT
    assert all(SCRIPT.startswith(text) for text in seen), "every update is a prefix of the reply"
    assert llama.history() == [{"role": "user", "content": "Say hello."}, {"role": "assistant", "content": SCRIPT}]
    tokens, rate = TOKENS.search(p.status.value).groups()
    assert int(tokens) > 10 and float(rate) > 0 and p.status.value.startswith(llama.engine.name)
    assert not p.send_button.disabled and p.stop_button.disabled and not p.undo_button.disabled
    bundle, _ = shell.display_formatter.format(p)  # what display(panel) sends
    assert "application/vnd.jupyter.widget-view+json" in bundle


def test_settings_reach_the_request(llama, panel, demo_model):
    llama.load("demo")
    p = panel()
    p.temperature.value, p.max_tokens.value = "0", "40"
    p.send("Tell me about CTranslate2.")
    assert p.wait(30)
    assert llama.chat().turns[-1].assistant == reference_greedy(demo_model, [{"role": "user", "content": "Tell me about CTranslate2."}], 40)
    p.max_tokens.value = "3"
    p.send("And more?")
    assert p.wait(30)
    assert 1 <= int(TOKENS.search(p.status.value).group(1)) <= 3
    p.max_tokens.value = p.temperature.value = ""  # empty means the model's defaults
    p.system_prompt.value = "You are terse."
    assert llama.chat().system == "You are terse."
    p.send("hi")
    assert p.wait(30) and llama.history()[0] == {"role": "system", "content": "You are terse."}
    llama.chat().set_system("Changed from a cell.")
    assert p.system_prompt.value == "Changed from a cell."


def test_stop_ends_decoding_at_once_and_keeps_the_partial_answer(llama, panel, long_model):
    llama.load(str(long_model))
    p = panel()
    p.max_tokens.value = "3000"
    p.send("Write forever.")
    updates: list[float] = []
    p.root.observe(lambda change: updates.append(time.perf_counter()), "pending")
    assert wait_for(lambda: len(llama.chat().turns) == 0 and len(shown(p)[-1][1]) > 40)
    time.sleep(1.0)
    started = time.perf_counter()
    p.stop()
    assert p.wait(2) and wait_for(lambda: idle(llama.generator), 1.0)
    stop_s = time.perf_counter() - started
    assert stop_s < 1.0, f"stopping took {stop_s:.2f}s"
    turn = llama.chat().turns[-1]
    assert turn.status == "stopped" and len(turn.assistant) > 40
    output = p.messages[-1]
    assert output["text"] == with_mark(turn.assistant, "stopped")
    assert shown(p)[-1][1].endswith(" stopped")  # the reply, then its end mark
    assert "stopped" in p.status.value and int(TOKENS.search(p.status.value).group(1)) < 3000
    assert not p.send_button.disabled and p.stop_button.disabled
    streaming = [t for t in updates if t < started]
    span = streaming[-1] - streaming[0]
    assert len(streaming) <= 15 * span + 3, f"{len(streaming)} updates in {span:.2f}s: not throttled"


def test_retry_undo_and_new_chat(llama, panel):
    llama.load("demo")
    p = panel()
    p.temperature.value, p.max_tokens.value = "0", "8"
    for text in ("first", "second"):
        p.send(text)
        assert p.wait(30)
    answer = llama.chat().turns[-1].assistant
    assert p.retry() and p.wait(30)
    assert [t.user for t in llama.chat().turns] == ["first", "second"]
    assert llama.chat().turns[-1].assistant == answer  # greedy: the same answer again
    p.undo()
    assert [t.user for t in llama.chat().turns] == ["first"] and [r for r, _ in shown(p)] == ["user", "assistant"]
    p.new_chat()
    assert llama.chat().turns == [] and shown(p) == []
    assert p.retry_button.disabled and p.undo_button.disabled and p.new_chat_button.disabled
    p.undo()
    assert "empty" in p.status.value and p.status.error


def test_the_panel_and_the_magic_share_one_conversation(shell, llama, panel):
    shell.run_line_magic("llama", "load demo")
    p = panel()
    assert run(shell, "%%llama -n 5\nfrom a cell").success
    assert [r for r, _ in shown(p)] == ["user", "assistant"] and shown(p)[0] == ("user", "from a cell")
    reply = p.messages[1]  # the demo's text may hold markdown: compare the plain text
    assert reply["text"] == with_mark(llama.chat().turns[0].assistant, llama.chat().turns[0].status)
    p.max_tokens.value = "5"
    p.send("from the panel")
    assert p.wait(30)
    assert run(shell, "%%llama -n 5\nand a follow-up").success
    users = [m["content"] for m in llama.history() if m["role"] == "user"]
    assert users == ["from a cell", "from the panel", "and a follow-up"]
    assert [text for role, text in shown(p) if role == "user"] == users
    data, _ = shell.display_formatter.format(p)  # `llama.panel()` as a cell's last line
    assert "application/vnd.jupyter.widget-view+json" in data
    shell.display_pub.outputs.clear()
    assert run(shell, "%llama chat --chat side").success
    out, _note = shell.display_pub.outputs  # the panel, then the line that explains it where it cannot show
    assert "application/vnd.jupyter.widget-view+json" in out["data"]
    assert "side" in [c.name for c in llama.chats]


def test_several_panels_update_together_and_closing_unsubscribes(llama, panel):
    llama.load("demo")
    one, two, other = panel(), panel(), panel("other")
    observers = llama.chat().observers
    one.max_tokens.value = "6"
    one.send("hi")
    assert one.wait(30)
    assert shown(two) == shown(one) and len(shown(one)) == 2 and shown(other) == []
    assert not two.undo_button.disabled
    two.close()
    assert llama.chat().observers == observers - 1
    one.root.close()  # closing the widget (e.g. from the front end) unsubscribes the panel too
    assert llama.chat().observers == observers - 2
    llama.ask("more", max_tokens=3)
    assert len(two.messages) == 2 and len(one.messages) == 2


def test_a_busy_model_shows_waiting_then_answers(llama, panel, long_model):
    llama.load(str(long_model))
    first, second = panel(), panel("other")
    first.max_tokens.value, second.max_tokens.value = "3000", "5"
    first.send("Write forever.")
    assert wait_for(lambda: llama.busy and len(shown(first)[-1][1]) > 5)
    second.send("My turn?")
    assert wait_for(lambda: second.status.value == "waiting for the model…")
    assert shown(second)[-1] == ("assistant", "waiting for the model…")
    first.stop()
    assert first.wait(5) and second.wait(30)
    assert llama.chat("other").turns[-1].status in ("complete", "cut") and TOKENS.search(second.status.value)


def from_page(p, action, **content):
    """What the page sends for a press: a custom message on the widget's comm, as the kernel receives it."""
    data = {"method": "custom", "content": {"action": action, "seq": 1, **content} if action is not None else "junk"}
    p.root.comm.handle_msg({"content": {"data": data}, "buffers": []})


def test_the_page_sends_the_typed_text_and_the_presses_as_messages(llama, panel):
    llama.load("demo")
    p = panel()
    p.input.value = "put back after a failed send"
    hostile = "typed <img src=x onerror=alert(1)> **text**"
    from_page(p, "send", text=hostile, options={"max_tokens": "4", "bogus": "9"}, system="Be brief.")
    assert p.busy and p.input.value == ""  # what the kernel put in the input box is gone: the page sent its own
    assert p.wait(30)
    assert llama.chat().turns[-1].user == hostile and llama.chat().system == "Be brief."
    assert p.max_tokens.value == "4" and 1 <= int(TOKENS.search(p.status.value).group(1)) <= 4
    user_html = p.messages[0]["html"]
    assert "<img" not in user_html and "&lt;img" in user_html and "<strong>text</strong>" in user_html
    from_page(p, "retry", options={"max_tokens": "2"}, system="Be brief.")
    assert p.wait(30) and len(llama.chat().turns) == 1 and int(TOKENS.search(p.status.value).group(1)) <= 2
    from_page(p, "new_chat")
    assert llama.chat().turns == [] and p.root.cleared == 1
    from_page(p, "undo_new_chat")
    assert [t.user for t in llama.chat().turns] == [hostile]
    from_page(p, "undo")
    assert llama.chat().turns == [] and shown(p) == []
    from_page(p, "send", text="   ")
    assert not p.busy and p.status.value == "Type a message first." and p.status.error
    for junk in ("no such action", None):  # ignored: nothing happens, nothing raises
        from_page(p, junk)
    assert p.status.value == "Type a message first." and llama.chat().turns == []


def test_new_chat_can_be_undone_right_after(shell, llama, panel):
    shell.run_line_magic("llama", "load demo")
    p, other = panel(), panel()
    assert run(shell, "%%llama -n 4\nfrom a cell", cell_id="c1").success
    p.max_tokens.value = "4"
    p.send("from the panel")
    assert p.wait(30)
    before = list(llama.chat().turns)
    assert p.undo_new_chat_button.disabled and p.root.cleared == 0
    p.new_chat_button.click()
    assert llama.chat().turns == [] and shown(p) == [] and shown(other) == []
    assert "2 exchanges cleared" in p.status.value and not p.undo_new_chat_button.disabled
    p.undo_new_chat_button.click()
    assert llama.chat().turns == before and llama.chat().turns[0].cell_id == "c1"  # the cell's turn too
    assert [role for role, _ in shown(p)] == ["user", "assistant"] * 2 and shown(other) == shown(p)
    assert p.undo_new_chat_button.disabled and p.status.value == "Brought back 2 exchanges."
    # Once the chat moves on, what New chat cleared is gone for good: one line says so.
    p.new_chat()
    assert run(shell, "%%llama -n 4\nstarting afresh").success
    assert p.undo_new_chat_button.disabled and p.root.cleared == 0
    assert not p.undo_new_chat() and p.status.error and "no New chat to undo" in p.status.value
    assert [t.user for t in llama.chat().turns] == ["starting afresh"]


def test_saved_notebooks_keep_readable_text_and_a_line_explains_a_missing_panel(shell, llama, panel):
    shell.run_line_magic("llama", "load demo")
    assert run(shell, "%%llama -n 4\nWhat is <b>this</b>?\x1b[31m").success
    shell.display_pub.outputs.clear()
    assert run(shell, "%llama chat").success
    widget, note = shell.display_pub.outputs
    assert "application/vnd.jupyter.widget-view+json" in widget["data"]
    plain = widget["data"]["text/plain"]  # what a saved notebook shows where widgets are not drawn
    assert plain.startswith("[ct2-magics chat panel, chat 'default': it needs a running kernel; run this cell")
    assert "\nYou: What is <b>this</b>?␛[31m\nLlama: " in plain and "object at 0x" not in plain
    assert "model not found" in note["data"]["text/plain"] and "run this cell again" in note["data"]["text/plain"]
    p = panel()
    html = p.note()["text/html"]
    assert f'data-ct2-note="{p.root.note_id}"' in html and len(p.root.note_id) == 32  # the panel hides its own note
    assert html_text(html) == p.note()["text/plain"]


def test_side_opens_the_panel_in_the_side_area(shell, llama):
    shell.display_pub.outputs.clear()
    assert run(shell, "%llama chat --side --chat notes").success
    widget, note = shell.display_pub.outputs  # in the cell, the page shows one line (or the panel, with no side area)
    assert "application/vnd.jupyter.widget-view+json" in widget["data"] and "model not found" in note["data"]["text/plain"]
    p = llama.panel("notes", side=True)
    assert p.root.side and not llama.panel("notes").root.side
    (shown_there,) = p.sidecar.outputs
    assert shown_there["data"]["application/vnd.jupyter.widget-view+json"]["model_id"] == p.root.model_id
    assert p.sidecar.title == "Chat: notes" and p.sidecar.anchor == "right" and p.root.sidecar_id == p.sidecar.model_id
    p.close()
    assert p.sidecar.comm is None and p.root.comm is None  # closing the panel closes its side area too


def test_errors_show_one_line_and_keep_the_history(shell, llama, panel, monkeypatch):
    shell.run_line_magic("config", "LlamaSettings.model = '/no/such/dir'")
    p = panel()
    assert "/no/such/dir" in p.status.value
    p.input.value = "hello?"
    p.send()
    assert p.wait(30)
    assert "No such directory: /no/such/dir" in p.status.value and "\n" not in p.status.value
    assert p.status.error and p.input.value == "hello?" and shown(p) == []

    llama.load("demo")
    p.max_tokens.value = "5"
    p.send()
    assert p.wait(30) and not p.status.error and len(llama.chat().turns) == 1
    p.temperature.value = "warm"
    assert not p.send("bad setting")  # refused at once, as %%llama -t warm and llama.ask(temperature="warm") are
    assert p.status.value == "temperature must be a number >= 0 (0 means greedy); got 'warm'."
    assert not p.retry() and p.wait(30)  # a refused retry puts the exchange back
    assert [t.user for t in llama.chat().turns] == ["hello?"] and len(shown(p)) == 2
    p.temperature.value = ""

    def broken(prompt_ids, sampling, stats, stop, **where):
        yield "partial "
        raise RuntimeError("the decoder failed\nwith a long story")

    monkeypatch.setattr(llama.engine, "stream", broken)
    p.send("boom")
    assert p.wait(30)
    assert p.status.value == "RuntimeError: the decoder failed with a long story"
    assert llama.chat().turns[-1].status == "interrupted" and llama.chat().turns[-1].assistant == "partial "
    assert shown(p)[-1] == ("assistant", "partial interrupted")


def test_unloading_while_the_panel_streams_stops_it_first(shell, llama, long_model):
    import time

    llama.load(str(long_model))
    panel = llama.panel()
    panel.max_tokens.value = "3000"
    panel.send("write forever")
    deadline = time.perf_counter() + 10
    while not llama.busy and time.perf_counter() < deadline:
        time.sleep(0.01)
    started = time.perf_counter()
    llama.unload()
    assert time.perf_counter() - started < 2
    assert panel.wait(5)
    assert llama.chat().turns[-1].status == "stopped"
    panel.close()
