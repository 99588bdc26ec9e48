"""The next chat turn costs only its new tokens: the chat so far is prefilled in idle time into CTranslate2's
static-prompt cache, and replies stay the same greedy tokens with and without it."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from helpers import run, run_ok, wait_for

SYSTEM = ("You are a careful statistician who answers briefly, names the test you would use, states its "
          "assumptions, and warns about small samples, outliers and multiple comparisons.")
LONG = " ".join([SYSTEM] * 4)  # a turn prefix long enough to be split off (SPLIT_MIN_TOKENS) from the first turn
QUESTIONS = ["Tell me about tea and how it is grown in the hills.", "Why is the sky blue on a clear day?",
             "What is a p-value, and when would you use one?", "How do I read a CSV file with a date column?",
             "Name three rivers in Europe.", "What is a hash map, briefly?"]


def cache(llama) -> dict:
    return llama.status()["prompt_cache"]


def settle(llama) -> dict:
    """Wait until no idle-time work is scheduled or running; the cache's state then."""
    assert wait_for(lambda: not cache(llama)["pending"], timeout=120), cache(llama)
    return cache(llama)


def chat_turns(llama, questions, *, pause: bool, chat: str = "default", tokens: int = 24) -> list[dict]:
    """Ask each question in turn (waiting for the prefill between turns if `pause`); each reply's text and metadata."""
    out = []
    for q in questions:
        r = llama.stream(q, chat, temperature=0, max_tokens=tokens)
        r.consume()
        out.append({"text": r.text, **r.metadata()})
        if pause:
            settle(llama)
    return out


def conversation(llama, *, pause: bool) -> list[str]:
    """A chat that also goes through undo, a new system prompt and a reset."""
    llama.reset()
    llama.chat().set_system(LONG)  # a reset keeps the system prompt
    texts = [t["text"] for t in chat_turns(llama, QUESTIONS[:3], pause=pause)]
    llama.undo()
    texts += [t["text"] for t in chat_turns(llama, QUESTIONS[3:5], pause=pause)]
    llama.chat().set_system(SYSTEM)
    texts += [t["text"] for t in chat_turns(llama, QUESTIONS[:2], pause=pause)]
    llama.reset()
    texts += [t["text"] for t in chat_turns(llama, QUESTIONS[4:], pause=pause)]
    return texts


def test_replies_are_the_same_with_and_without_the_cache(shell, llama):
    run_ok(shell, "%config LlamaSettings.prefix_cache_mb = 0")  # nothing cached at all: the plain prompt every turn
    llama.load("demo")
    plain = conversation(llama, pause=False)
    assert cache(llama)["prefixes"] == 0 and cache(llama)["prefills"] == 0
    run_ok(shell, "%config LlamaSettings.prefix_cache_mb = 1024")
    assert conversation(llama, pause=True) == plain  # prefilled while "reading"
    assert cache(llama)["prefills"] >= 5
    llama.unload()
    llama.load("demo")  # an empty cache, and turns sent back to back: no prefill starts
    assert conversation(llama, pause=False) == plain
    assert cache(llama)["prefills"] == 0


def test_a_real_model_gives_the_same_greedy_replies_with_and_without_the_cache(shell, llama, smollm2_int8):
    # int8 logits depend on where a prompt is split (BENCHMARKS.md, Findings): the demo model hides that, smollm2 not.
    run_ok(shell, "%config LlamaSettings.prefix_cache_mb = 0")
    llama.load("smollm2")
    llama.chat().set_system(SYSTEM)
    plain = chat_turns(llama, QUESTIONS, pause=False, tokens=40)
    llama.reset()
    run_ok(shell, "%config LlamaSettings.prefix_cache_mb = 1024")
    cached = chat_turns(llama, QUESTIONS, pause=True, tokens=40)
    assert [t["text"] for t in cached] == [t["text"] for t in plain]
    assert all(t["cached_prompt_tokens"] > 0 for t in cached[2:]) and cache(llama)["prefills"] >= 4


def test_after_a_pause_the_next_turn_reads_only_its_new_tokens(llama):
    llama.load("demo")
    llama.chat().set_system(LONG)
    first, second, third = chat_turns(llama, QUESTIONS[:3], pause=True)
    assert first["cached_prompt_tokens"] == 0  # nothing to reuse yet
    for turn in (second, third):
        assert turn["cached_prompt_tokens"] > 0
        # What is read anew: the new message, its headers, and the EXACT_ROWS (16) tokens left out of the prefix.
        assert turn["prompt_tokens"] - turn["cached_prompt_tokens"] < 16 + 30
    assert third["cached_prompt_tokens"] > second["cached_prompt_tokens"] + second["reply_tokens"]
    state = cache(llama)
    assert state["prefills"] == 3 and state["state"] == "idle" and state["error"] is None


def test_a_reply_stopped_before_the_prefill_began_cancels_it(llama):
    llama.load("demo")
    llama.chat().set_system(LONG)
    chat_turns(llama, QUESTIONS[:1], pause=True)
    before = settle(llama)["prefills"]
    llama.ask(QUESTIONS[1], temperature=0, max_tokens=8)  # complete: its prefill is scheduled (after 0.5 s idle)
    with llama.stream(QUESTIONS[2], temperature=0, max_tokens=400) as reply:  # asked at once, then stopped
        next(iter(reply))
    assert reply.status == "stopped"
    state = settle(llama)
    assert state["prefills"] == before  # no prefill after a stopped reply, not even the one pending from before
    chat_turns(llama, QUESTIONS[3:4], pause=True)
    assert settle(llama)["prefills"] == before + 1  # a complete reply schedules one again


def test_the_off_switch(shell, llama):
    run_ok(shell, "%config LlamaSettings.prefill = False")
    llama.load("demo")
    turns = chat_turns(llama, QUESTIONS[:3], pause=True)
    assert [t["cached_prompt_tokens"] for t in turns] == [0, 0, 0]
    assert cache(llama)["prefills"] == 0 and cache(llama)["prefixes"] == 0
    run_ok(shell, "%config LlamaSettings.prefill = True")
    later = chat_turns(llama, QUESTIONS[3:5], pause=True)
    assert later[1]["cached_prompt_tokens"] > 0 and cache(llama)["prefills"] == 2


def test_the_cache_stays_within_its_budget_and_is_emptied_in_idle_time(shell, llama):
    run_ok(shell, "%config LlamaSettings.prefix_cache_mb = 0")
    llama.load("demo")
    plain = [t["text"] for t in chat_turns(llama, QUESTIONS, pause=False)]
    llama.reset()
    run_ok(shell, "%config LlamaSettings.prefix_cache_mb = 2")  # the demo caches 8 KiB a token: 256 tokens
    limit = cache(llama)["limit"]
    assert limit == 2 * 2**20
    seen = []
    for q in QUESTIONS:
        r = llama.stream(q, temperature=0, max_tokens=24)
        r.consume()
        seen.append((r.text, r.metadata()["cached_prompt_tokens"], settle(llama)))
    assert [text for text, _, _ in seen] == plain
    assert all(state["bytes"] <= limit for _, _, state in seen)
    assert seen[-1][2]["clears"] >= 1  # a prefix that did not fit emptied the cache first
    assert any(cached > 0 for _, cached, _ in seen[1:])
    # Lowering the budget below what is held empties the cache in idle time; the model still answers the same.
    run_ok(shell, "%config LlamaSettings.prefix_cache_mb = 1024")
    llama.reset()
    llama.chat().set_system(LONG)
    chat_turns(llama, QUESTIONS[:3], pause=True)
    held = cache(llama)
    assert held["bytes"] > limit
    run_ok(shell, "%config LlamaSettings.prefix_cache_mb = 2")
    emptied = settle(llama)
    assert emptied["bytes"] == 0 and emptied["prefixes"] == 0 and emptied["clears"] == held["clears"] + 1
    llama.reset()
    llama.chat().set_system(None)
    assert [t["text"] for t in chat_turns(llama, QUESTIONS[:2], pause=False)] == plain[:2]


def test_a_request_waits_only_for_the_prefill_that_runs_and_none_starts_while_one_runs(llama, long_model):
    llama.load(str(long_model))
    llama.chat().set_system(" ".join([SYSTEM] * 24))  # ~1,000 tokens: a prefill that lasts long enough to see
    llama.ask(QUESTIONS[0], temperature=0, max_tokens=4)
    assert wait_for(lambda: cache(llama)["state"] == "prefilling", timeout=120)
    r = llama.stream(QUESTIONS[1], temperature=0, max_tokens=12)
    during = []
    for _piece in r:
        during.append(cache(llama))
        if len(during) == 2:
            llama.settings.prefix_cache_mb = 1  # below what is held: schedules emptying the cache in idle time
            time.sleep(0.7)  # longer than a prefill waits for idle time: only the running reply holds it back
    meta = r.metadata()
    assert len(during) >= 3 and all(s["prefills"] == 1 and s["state"] == "idle" for s in during)  # one, then us
    assert meta["cached_prompt_tokens"] > 900  # it used what that prefill cached
    assert all(s["pending"] and s["clears"] == 0 and s["bytes"] > 2**20 for s in during[2:])  # not while we run
    state = settle(llama)
    assert state["clears"] == 1 and state["bytes"] <= 2**20 and state["prefills"] == 1  # then emptied, in idle time


def test_unload_and_a_failing_load_while_a_prefill_is_scheduled(shell, llama, demo_model, tmp_path: Path):
    llama.load("demo")
    llama.chat().set_system(LONG)
    first = chat_turns(llama, QUESTIONS[:2], pause=False)
    assert cache(llama)["pending"]
    assert run(shell, "%llama unload").success
    assert llama.status()["prompt_cache"] is None
    llama.reset()
    llama.load("demo")
    assert [t["text"] for t in chat_turns(llama, QUESTIONS[:2], pause=False)] == [t["text"] for t in first]
    assert cache(llama)["pending"]
    corrupt = tmp_path / "corrupt"
    shutil.copytree(demo_model, corrupt)
    data = (corrupt / "model.bin").read_bytes()
    (corrupt / "model.bin").write_bytes(data[: len(data) // 3])
    assert not run(shell, f"%llama load {corrupt}").success  # one line (a LlamaError); the old weights are loaded again
    assert llama.engine is not None and llama.engine.name == "demo"
    state = settle(llama)
    assert state["error"] is None
    third = llama.stream(QUESTIONS[2], temperature=0, max_tokens=24)
    third.consume()
    assert third.metadata()["cached_prompt_tokens"] > 0
    llama.undo()
    run_ok(shell, "%config LlamaSettings.prefix_cache_mb = 0")
    assert llama.ask(QUESTIONS[2], temperature=0, max_tokens=24) == third.text


@pytest.mark.parametrize("system", [None, SYSTEM])
def test_a_batch_after_prefills_gives_the_same_replies(llama, system):
    llama.load("demo")
    before = llama.generate(QUESTIONS, system=system, temperature=0, max_tokens=12)
    chat_turns(llama, QUESTIONS[:3], pause=True)
    assert llama.generate(QUESTIONS, system=system, temperature=0, max_tokens=12) == before
