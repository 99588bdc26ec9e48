"""Taking turns on the one model: a reply left unread, an interrupt in the display code, a model unloaded or
replaced under a waiting request, a chat changed while a reply streams. Nothing hangs, nothing is lost."""

from __future__ import annotations

import _thread
import contextlib
import threading
import time

import pytest
from helpers import no_hang, run, wait_for, wait_idle
from IPython.core.displaypub import CapturingDisplayPublisher

from ct2_magics.errors import LlamaError
from ct2_magics.notebook.render import with_mark

SCRIPT = "One two three four five six seven eight nine ten."





def leave_by_break(llama):
    for piece in llama.stream("go", max_tokens=400):
        return [piece]


def leave_by_next(llama):
    return [next(iter(llama.stream("go", max_tokens=400)))]


def leave_by_an_error_in_the_loop(llama):
    seen = []
    with contextlib.suppress(ZeroDivisionError):
        for piece in llama.stream("go", max_tokens=400):
            seen.append(piece)
            1 / 0
    return seen


KEPT: list = []


def leave_an_iterator_in_a_variable(llama):
    KEPT[:] = [iter(llama.stream("go", max_tokens=400))]  # alive, paused, and never read again
    return [next(KEPT[0])]


@pytest.mark.parametrize("leave", [leave_by_break, leave_by_next, leave_by_an_error_in_the_loop,
                                   leave_an_iterator_in_a_variable])
def test_a_stream_left_unfinished_gives_the_model_back(shell, llama, long_model, sigint, leave):
    llama.load(str(long_model))
    with no_hang(30.0):
        read = leave(llama)
        assert isinstance(llama.ask("next", chat="other", max_tokens=5), str)
        assert run(shell, "%%llama -n 5\nand a cell").success
    assert wait_idle(llama.generator)
    left = llama.chat().turns[0]
    assert left.status == "stopped" and left.assistant == "".join(read)  # what was read, and nothing else
    with no_hang(30.0):
        assert llama.unload()
    KEPT.clear()


def test_a_stream_kept_unread_on_one_thread_is_taken_back_for_another(llama, script_model):
    llama.load(str(script_model(SCRIPT)))
    kept = iter(llama.stream("go", temperature=0))
    first = next(kept)
    answers: list[str] = []
    worker = threading.Thread(target=lambda: answers.append(llama.ask("me too", chat="other", temperature=0)))
    started = time.perf_counter()
    worker.start()
    worker.join(30)
    assert not worker.is_alive() and answers == [SCRIPT]
    assert time.perf_counter() - started < 15  # taken back a couple of seconds after the other request came
    assert llama.chat().turns[0].status == "stopped" and llama.chat().turns[0].assistant == first
    assert list(kept) == []  # the paused reader ends quietly when it comes back


def test_a_reply_read_on_by_a_second_loop_goes_on_where_the_first_stopped(llama, script_model):
    llama.load(str(script_model(SCRIPT)))
    response = llama.stream("go", temperature=0)
    reader = iter(response)
    first = next(reader)
    assert "".join(response) == SCRIPT and first and SCRIPT.startswith(first)
    assert "".join(response) == SCRIPT  # a finished reply replays its text
    assert llama.history()[-1] == {"role": "assistant", "content": SCRIPT}


def test_a_reply_is_cheap_to_make_and_works_when_read(llama, monkeypatch):
    llama.settings.model = "demo"
    response = llama.stream("hello", max_tokens=3)
    assert llama.engine is None and response.status == "pending"  # nothing loaded, asked or recorded yet
    with pytest.raises(LlamaError, match="temperature must be"):
        llama.stream("hello", temperature=-1)  # checked when made
    assert llama.engine is None
    assert isinstance(response.consume(), str) and llama.engine.name == "demo"
    with llama.stream("again", max_tokens=400) as second:
        next(iter(second))
    assert second.status == "stopped" and llama.chat().turns[-1].status == "stopped"


class SlowDisplay(CapturingDisplayPublisher):
    """A front end that takes its time to show each update, so that a Ctrl-C lands in the display code."""

    def publish(self, *args, **kwargs):
        super().publish(*args, **kwargs)
        time.sleep(0.05)


def test_an_interrupt_in_the_display_code_keeps_the_turn_and_frees_the_model(shell, llama, long_model, sigint):
    shell.display_pub = SlowDisplay()
    llama.load(str(long_model))
    llama.settings.updates_per_second = 1000
    timer = threading.Timer(1.0, _thread.interrupt_main)
    timer.start()
    result = run(shell, "%%llama -n 3000\nWrite forever.")
    timer.join()
    assert isinstance(result.error_in_exec, KeyboardInterrupt)
    turn = llama.chat().turns[-1]
    shown = shell.display_pub.outputs[-1]["data"]["text/plain"]
    assert turn.status == "interrupted" and shown == with_mark(turn.assistant, "interrupted")  # the cell shows the turn
    with no_hang(30.0):
        assert run(shell, "%%llama -n 5\nnext").success


def test_a_request_waiting_when_the_model_is_unloaded_fails_in_one_line(llama, long_model):
    llama.load(str(long_model))
    outcomes: dict[str, object] = {}

    def ask(name: str) -> None:
        try:
            outcomes[name] = llama.ask("go", chat=name, max_tokens=3000)
        except LlamaError as e:
            outcomes[name] = e

    first = threading.Thread(target=ask, args=("first",))
    first.start()
    assert wait_for(lambda: llama.busy)
    second = threading.Thread(target=ask, args=("second",))
    second.start()
    time.sleep(0.3)  # queued behind the first
    assert llama.unload()
    first.join(10)
    second.join(10)
    assert llama.chat("first").turns[-1].status == "stopped"
    assert isinstance(outcomes["second"], LlamaError) and "unloaded while this request waited" in str(outcomes["second"])
    assert "\n" not in str(outcomes["second"]) and llama.chat("second").turns == []


def test_a_request_waiting_when_the_model_is_replaced_runs_on_the_new_one(llama, long_model, script_model):
    llama.load(str(long_model))
    replies: dict[str, str] = {}
    first = threading.Thread(target=lambda: replies.update(first=llama.ask("go", chat="first", max_tokens=3000)))
    first.start()
    assert wait_for(lambda: llama.busy)
    second = threading.Thread(target=lambda: replies.update(second=llama.ask("go", chat="second", temperature=0)))
    second.start()
    time.sleep(0.3)
    llama.load(str(script_model(SCRIPT)))
    first.join(10)
    second.join(30)
    assert llama.chat("first").turns[-1].status == "stopped"
    assert replies["second"] == SCRIPT  # asked of the model loaded while it waited


@pytest.mark.parametrize("change", ["reset", "undo"])
def test_rerunning_a_cell_while_another_thread_changes_its_chat_loses_nothing(shell, llama, long_model, change):
    shell.run_line_magic("llama", f"load {long_model}")
    for cell in ("a", "b", "c"):
        assert run(shell, f"%%llama -n 3\nquestion {cell}", cell_id=cell).success
    kept = list(llama.chat().turns)

    def meddle() -> None:
        assert wait_for(lambda: llama.busy)
        time.sleep(0.2)
        getattr(llama, change)()
        if change == "undo":
            llama.undo()  # two gone: the re-run cell's own turn and the one after it

    worker = threading.Thread(target=meddle)
    worker.start()
    result = run(shell, "%%llama -n 300\nquestion b again", cell_id="b")
    worker.join(10)
    assert result.success, result.error_in_exec
    users = [t.user for t in llama.chat().turns]
    assert users == (["question b again"] if change == "reset" else ["question a", "question b again"])
    assert kept[0] == llama.chat().turns[0] or change == "reset"

