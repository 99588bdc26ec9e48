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


# -- generate and map: each row watched as it is written -----------------------------------------------------------

ONCE, FOREVER = "\nSay it once:", "\nSay it forever:"
ANSWER = "Rome is the capital of Italy."


@pytest.fixture(scope="module")
def router_model(tmp_path_factory):
    """A tiny real model whose reply depends on how the prompt ends: ANSWER then the end of its turn after ONCE,
    LOOP over and over, never ending, after FOREVER."""
    from parrot import build_router

    return build_router(tmp_path_factory.mktemp("router") / "model", {ONCE: (ANSWER, False), FOREVER: (LOOP, True)})


def mixed_prompts(n: int) -> tuple[list[str], list[int]]:
    """n prompts of several lengths, every third one looping; and the positions of those."""
    prompts = [f"Question {'about Italy ' * (i % 4)}{i}.{FOREVER if i % 3 == 0 else ONCE}" for i in range(n)]
    return prompts, [i for i in range(n) if i % 3 == 0]


def tokens(llama, text: str) -> int:
    return len(llama.tokenizer.encode(text, add_special_tokens=False))


def test_generate_stops_the_rows_that_loop_and_says_so_in_one_line(llama, router_model, capsys):
    llama.load(str(router_model))
    prompts, looping = mixed_prompts(14)
    capsys.readouterr()
    # batch_size 3: several chunks, each split between the batch workers, so a row is watched at its own index.
    stopped = llama.generate(prompts, temperature=0, max_tokens=300, batch_size=3, progress=False)
    err = capsys.readouterr().err
    assert [e.position for e in llama.last_loops] == looping and llama.last_errors == []
    assert all(e.label == e.position and "fell into a loop" in e.reason for e in llama.last_loops)
    assert err.count("\n") == 1 and err.startswith("llama.generate: 5 of 14 items fell into a loop and were stopped "
                                                   "(items 0, 3, 6 and 2 more)")
    for i, reply in enumerate(stopped):
        if i in looping:
            assert reply.startswith(LOOP * 3) and tokens(llama, reply) < 150  # of the 300 it would run to
        else:
            assert reply == ANSWER
    # What a stopped row keeps is what a streamed reply keeps: the text up to where the loop was seen.
    reply = llama.stream(prompts[0], once=True, temperature=0, max_tokens=300)
    assert reply.consume() == stopped[0] and reply.status == "looping"

    llama.settings.stop_loops = False  # for replies that should repeat: every row runs on, to max_tokens
    ran_on = llama.generate(prompts, temperature=0, max_tokens=300, batch_size=3, progress=False)
    assert llama.last_loops == [] and [e.position for e in llama.last_cut] == looping
    assert capsys.readouterr().err.startswith("llama.generate: 5 of 14 replies reached max_tokens (300) and were cut")
    for i, (whole, cut) in enumerate(zip(ran_on, stopped)):
        if i in looping:
            assert whole.startswith(cut) and tokens(llama, whole) == 300
        else:
            assert whole == cut == ANSWER  # rows that never loop are the same either way


def test_map_reports_stopped_rows_by_label_and_errors_ignore_keeps_quiet(llama, router_model, capsys):
    pd = pytest.importorskip("pandas")
    llama.load(str(router_model))
    series = pd.Series([ONCE.strip(), FOREVER.strip(), None, ONCE.strip()], index=["a", "b", "c", "d"])
    capsys.readouterr()
    out = llama.map(series, "Question.\n{}", temperature=0, max_tokens=300)
    assert out["a"] == out["d"] == ANSWER and out["b"].startswith(LOOP * 3) and out["c"] is None
    assert [(e.label, e.position) for e in llama.last_loops] == [("b", 1)]
    assert [e.label for e in llama.last_errors] == ["c"]  # a stopped row is not a failure
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "1 of 4 items failed" in err[0]
    assert err[1].startswith("llama.map: 1 of 4 items fell into a loop and was stopped (item 'b')")
    llama.map(series, "Question.\n{}", temperature=0, max_tokens=300, errors="ignore")
    assert [e.label for e in llama.last_loops] == ["b"] and capsys.readouterr().err == ""


def test_replies_cut_at_max_tokens_are_listed_and_said_in_one_line(llama, router_model, capsys):
    pd = pytest.importorskip("pandas")
    llama.load(str(router_model))
    series = pd.Series([ONCE.strip(), FOREVER.strip(), ONCE.strip()], index=["a", "b", "c"])
    need = tokens(llama, ANSWER)
    capsys.readouterr()
    llama.settings.stop_loops = False
    out = llama.map(series, "Question.\n{}", temperature=0, max_tokens=need + 5)
    assert out["a"] == out["c"] == ANSWER and tokens(llama, out["b"]) == need + 5
    assert [(e.label, e.position) for e in llama.last_cut] == [("b", 1)] and llama.last_errors == []
    assert f"max_tokens ({need + 5})" in llama.last_cut[0].reason
    assert capsys.readouterr().err == (f"llama.map: 1 of 3 replies reached max_tokens ({need + 5}) and was cut short "
                                       "(item 'b'); raise max_tokens for whole replies; details in llama.last_cut.\n")
    short = llama.map(series, "Question.\n{}", temperature=0, max_tokens=2)  # every reply cut
    assert [e.label for e in llama.last_cut] == ["a", "b", "c"] and all(tokens(llama, r) == 2 for r in short)
    assert "3 of 3 replies reached max_tokens (2)" in capsys.readouterr().err
    llama.map(series, "Question.\n{}", temperature=0, max_tokens=2, errors="ignore")
    assert len(llama.last_cut) == 3 and capsys.readouterr().err == ""
    assert llama.generate(["hi"], temperature=0, max_tokens=300, schema={"type": "string"}) is not None
    assert llama.last_cut == []  # a schema row that runs out is a failure (no value), never a cut reply


def test_schema_rows_are_never_stopped_as_loops(llama, looping_model):
    """A schema's JSON must end: its rows run to the end or to max_tokens, however much they repeat."""
    llama.load(str(looping_model))
    reply = llama.stream("Italy?", once=True, temperature=0, max_tokens=300, schema={"type": "string"})
    text = reply.consume()
    assert reply.status == "cut" and LoopWatch().feed(text)  # it repeats itself, and runs on to max_tokens
    assert llama.generate(["Italy?"], temperature=0, max_tokens=300, schema={"type": "string"}) == [None]
    assert llama.last_loops == [] and "max_tokens (300) ran out" in llama.last_errors[0].reason


@pytest.mark.slow
def test_smollm2_map_stops_its_loops_and_leaves_the_other_rows_alone(llama, smollm2_float32):
    """On smollm2 in float32 (same greedy replies on every CPU): rows that loop stop early, the rest are unchanged."""
    llama.load(str(smollm2_float32))
    prompts = ["What is the capital of Italy?", "Write a short poem about the sea.", "Who wrote Romeo and Juliet?",
               "Make a table with two columns, animal and sound, for four animals.", "What is the capital of France?"]
    on = llama.map(prompts, temperature=0, max_tokens=256)
    looped = [e.position for e in llama.last_loops]
    llama.settings.stop_loops = False
    off = llama.map(prompts, temperature=0, max_tokens=256)
    assert len(looped) >= 2, [r[-80:] for r in off]
    for i, (a, b) in enumerate(zip(on, off)):
        if i in looped:
            assert b.startswith(a) and tokens(llama, a) < 200 and tokens(llama, b) >= 250
        else:
            assert a == b
