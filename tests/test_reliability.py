"""Interrupts at random points, requests from several threads at once, and the context window."""

from __future__ import annotations

import os
import random
import time
import signal
import threading

import pytest

from helpers import wait_idle, run

SCRIPT = "Alpha beta gamma delta."


@pytest.mark.slow
def test_interrupts_at_fifty_random_points(shell, llama, long_model, sigint):
    shell.run_line_magic("llama", f"load {long_model}")
    rng = random.Random(1234)
    interrupted = 0
    for i in range(50):
        turns_before = list(llama.chat().turns)
        delay = rng.uniform(0.0, 0.25)
        timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT))
        result = None
        try:
            timer.start()  # inside the try: with a delay near 0 the signal can come before start() returns
            result = run(shell, "%%llama -n 400\nkeep talking")
            timer.join()
            time.sleep(0.05)  # a SIGINT sent just as the cell ended is handled here, inside the try
        except KeyboardInterrupt:  # landed in IPython's own code around the cell, or just after it
            timer.join()
        assert wait_idle(llama.generator, 0.5), f"decoding still running after interrupt {i} at {delay:.3f}s"
        turns = llama.chat().turns
        if result is None or isinstance(result.error_in_exec, KeyboardInterrupt):
            interrupted += 1
            assert turns[: len(turns_before)] == turns_before
            assert len(turns) - len(turns_before) in (0, 1)
            if len(turns) > len(turns_before):
                assert turns[-1].status == "interrupted" and turns[-1].user == "keep talking"
        else:
            assert result.success and turns[-1].status == "cut"  # the long model never ends: it reached -n 400
        assert not llama.busy
        if i % 10 == 9:
            llama.reset()
    assert interrupted >= 40
    assert run(shell, "%%llama -n 3\nafter all that").success
    assert llama.chat().turns[-1].status == "cut"  # a whole reply: it reached -n 3, no interrupt


def test_requests_from_many_threads_take_turns(shell, llama, script_model):
    llama.load(str(script_model(SCRIPT)))
    results: dict[str, str] = {}
    waited: list[bool] = []

    def ask(name: str) -> None:
        response = llama.stream("go", chat=name, temperature=0)
        response.on_waiting.append(waited.append)
        results[name] = response.consume()

    threads = [threading.Thread(target=ask, args=(f"t{i}",)) for i in range(4)]
    panel = llama.panel("from-panel")
    panel.temperature.value = "0"
    holder = llama.stream("hold the model", chat="holder", temperature=0)
    reader = iter(holder)
    first = next(reader)  # a reply that holds the model (read on this thread) until it is read on
    for t in threads:
        t.start()
    panel.send("go")  # the panel's worker thread, at the same time
    deadline = time.perf_counter() + 10
    while not waited and time.perf_counter() < deadline:
        time.sleep(0.01)
    assert first and not results  # everyone is queued behind it
    assert holder.consume() == SCRIPT  # reading it again goes on from where the reader was
    assert run(shell, "%%llama -t 0\ngo").success  # the magic on the main thread, at the same time
    for t in threads:
        t.join(timeout=30)
        assert not t.is_alive(), "deadlock"
    assert panel.wait(30)
    panel.close()
    assert results == {f"t{i}": SCRIPT for i in range(4)}
    assert llama.history("from-panel")[-1]["content"] == SCRIPT
    assert llama.history()[-1]["content"] == SCRIPT
    assert True in waited  # someone saw the model busy and said so


def test_the_oldest_turns_are_left_out_to_fit_the_context(shell, llama, capsys):
    shell.run_line_magic("llama", "load demo")
    shell.run_line_magic("config", "LlamaSettings.max_context = 200")
    llama.chat().set_system("Be brief.")
    for i in range(6):
        assert run(shell, f"%%llama -n 20\nquestion {i} " + "padding " * 8).success
    response = llama.stream("final question", max_tokens=20)
    response.consume()
    assert response.notices and "oldest exchange" in response.notices[0]
    assert len(response.prompt_ids) <= 200 - 20
    text = llama.tokenizer.decode(response.prompt_ids)
    assert "Be brief." in text and "final question" in text and "question 0" not in text
    assert len(llama.chat().turns) == 7  # nothing was deleted from the history


@pytest.mark.slow
def test_soak_many_short_turns_keeps_memory_bounded(llama):
    import resource

    llama.load("demo")
    llama.settings.max_context = 512

    def rss_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20

    for i in range(200):
        llama.ask(f"turn {i}", max_tokens=2, temperature=0)
    warm = rss_mb()
    for i in range(800):
        llama.ask(f"turn {i}", max_tokens=2, temperature=0)
    grown = rss_mb() - warm
    print(f"rss after 200 turns {warm:.0f} MB; growth over 800 more: {grown:.1f} MB")
    assert len(llama.chat().turns) == 1000
    assert grown < 50


@pytest.mark.slow
def test_loading_and_unloading_twenty_times_leaks_nothing_measurable(llama, long_model):
    def rss_mb() -> float:
        import resource

        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20

    for path in ("demo", str(long_model)) * 2:
        llama.load(path)
    llama.unload()
    base = rss_mb()
    for i in range(20):
        llama.load("demo" if i % 2 else str(long_model))
        llama.ask("hi", once=True, max_tokens=2)
    llama.unload()
    grown = rss_mb() - base
    print(f"rss growth over 20 load/unload cycles: {grown:.1f} MB")
    assert grown < 40
