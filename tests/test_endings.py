"""How a reply ended, when the model did not end it: a loop stopped (core/loops.py), max_tokens reached. Each is
marked in the cell, in `%llama history`, in the reply's status (API) and in saved chats."""

from __future__ import annotations

import pytest

from ct2_magics.core.loops import LoopWatch
from helpers import html_text, htmls, reply_outputs, run_ok

LOOP = "il Coriobella, "  # what smollm2 (int8, greedy) answers "What is the capital of Italy?" with, until max_tokens
COUNT = "One, two, three, four, five, six, seven, eight, nine, ten."


@pytest.fixture(scope="module")
def looping_model(tmp_path_factory):
    """A tiny real model that writes LOOP over and over and never ends its reply."""
    from parrot import build_parrot

    return build_parrot(tmp_path_factory.mktemp("loop") / "model", LOOP, loop=True)


def test_a_looping_reply_is_stopped_and_marked_in_the_cell_and_the_history(shell, llama, looping_model, tmp_path):
    run_ok(shell, f"%llama load {looping_model}")
    run_ok(shell, "%%llama -t 0\nWhat is the capital of Italy?")
    final = reply_outputs(shell)[-1]
    status = final["metadata"]["ct2_magics"]
    assert status["status"] == "looping" and status["reply_tokens"] < 200  # of the 512 it would have run to
    assert final["data"]["text/plain"].endswith("\n\n[stopped: it was repeating itself (a loop)]")
    assert html_text(final["data"]["text/html"]).endswith("stopped: it was repeating itself (a loop)")
    turn = llama.chat().turns[-1]
    assert turn.status == "looping" and turn.assistant.startswith(LOOP * 3) and len(turn.assistant) < 400
    run_ok(shell, "%llama history")
    assert f"Llama [stopped: repeating itself]: {LOOP}" in html_text(htmls(shell)[-1])
    # Saved and restored, the turn keeps its mark.
    run_ok(shell, f"%llama save {tmp_path}/chats.json")
    llama.reset()
    run_ok(shell, f"%llama restore {tmp_path}/chats.json")
    assert [t.status for t in llama.chat().turns] == ["looping"]


def test_every_front_end_gets_the_loop_stop_and_it_can_be_turned_off(llama, looping_model):
    llama.load(str(looping_model))
    reply = llama.stream("Again?", once=True, temperature=0, max_tokens=300)
    assert reply.consume().startswith(LOOP) and reply.status == "looping" and reply.stats.reply_tokens < 200
    llama.settings.stop_loops = False  # for replies that should repeat
    reply = llama.stream("Again?", once=True, temperature=0, max_tokens=300)
    reply.consume()
    assert reply.status == "cut" and reply.stats.reply_tokens == 300


def test_a_reply_cut_by_max_tokens_is_marked_in_the_cell_and_the_history(shell, llama, script_model):
    run_ok(shell, f"%llama load {script_model(COUNT)}")
    run_ok(shell, "%%llama -t 0 -n 4\nCount to ten.")
    final = reply_outputs(shell)[-1]
    assert final["metadata"]["ct2_magics"]["status"] == "cut" and final["metadata"]["ct2_magics"]["reply_tokens"] == 4
    cut = llama.chat().turns[-1].assistant
    assert COUNT.startswith(cut) and cut != COUNT
    assert final["data"]["text/plain"] == f"{cut}\n\n[cut short: it reached the max tokens limit]"
    assert html_text(final["data"]["text/html"]) == f"{cut} cut short: it reached the max tokens limit"
    run_ok(shell, "%%llama -t 0\nCount to ten, all of it.")  # room enough: the model ends it, no mark
    final = reply_outputs(shell)[-1]
    assert final["metadata"]["ct2_magics"]["status"] == "complete" and final["data"]["text/plain"] == COUNT
    assert [t.status for t in llama.chat().turns] == ["cut", "complete"]
    run_ok(shell, "%llama history")
    text = html_text(htmls(shell)[-1])
    assert f"Llama [cut short]: {cut} You:" in text and f"Llama: {COUNT}" in text


@pytest.mark.parametrize("text", [
    "Roses are red,\nviolets are blue,\n" * 2,  # a refrain, twice
    "| a | b |\n|---|---|\n" + "".join(f"| {i} | {i * i} |\n" for i in range(40)),  # a long table
    "=" * 80 + "\nTitle\n" + "-" * 80,  # rules under a title
    "0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0",  # a row of zeros in a matrix
    "I will not talk in class. " * 5,  # asked for five times
    "ha" * 40,  # laughter, 80 characters
    "x = [\n" + "    0,\n" * 11 + "]",  # eleven equal lines
])
def test_the_loop_rule_leaves_ordinary_repetition_alone(text):
    watch = LoopWatch()
    assert not any(watch.feed(text[i:i + 3]) for i in range(0, len(text), 3))


@pytest.mark.parametrize("span, most", [
    (", il Coriobella", 260),  # 3 copies would do, but fewer than 200 characters: 14 copies
    ("|\n", 30),  # a table that became lines of "|": 12 lines
    ("| Fish | Whistle |\n", 240),  # the same table row, 12 times
    ("They make food for animals too. ", 240),  # a sentence
    ("The ocean is vast and deep, and the sea is wide and free, and the waves roll on and on without end. " * 1, 320),
])
def test_the_loop_rule_stops_a_span_written_over_and_over(span, most):
    watch = LoopWatch()
    text = "Sure! Here is the answer.\n" + span * 40
    fed = next(i + 3 for i in range(0, len(text), 3) if watch.feed(text[i:i + 3]))
    assert fed - len("Sure! Here is the answer.\n") <= most and watch.span is not None


@pytest.mark.slow
def test_smollm2_greedy_loops_are_stopped_long_before_max_tokens(llama, smollm2_float32):
    """On smollm2 in float32 (same greedy replies on every CPU), prompts that fall into a loop stop early."""
    llama.load(str(smollm2_float32))
    prompts = ["Make a table with two columns, animal and sound, for four animals.", "Write a short poem about the sea.",
               "What is the capital of Italy?", "Write a limerick about a cat who loves coffee."]
    replies = [llama.stream(p, once=True, temperature=0) for p in prompts]
    for reply in replies:
        reply.consume()
    looped = [r for r in replies if r.status == "looping"]
    assert len(looped) >= 2, [(r.status, r.text[-80:]) for r in replies]
    assert all(r.stats.reply_tokens < 256 for r in looped)
    assert all(r.status in ("complete", "looping") for r in replies)  # none ran on to the 512-token limit
