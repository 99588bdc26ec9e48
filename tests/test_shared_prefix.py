"""A batch reads what its prompts share once: llama.map and llama.generate cut every prompt where the call's prompts
stop agreeing (a few tokens early), send that prefix as CTranslate2's static prompt, cache it within
prefix_cache_mb, and give the same greedy replies whether the cache holds it or not (issue 22)."""

from __future__ import annotations

import pytest
from helpers import run, wait_for

EXAMPLES = [("cat", "animal", "a small furry pet that purrs"), ("apple", "food", "a sweet fruit that grows on trees"),
            ("hammer", "tool", "it drives nails into wood"), ("red", "colour", "the colour of blood and ripe tomatoes"),
            ("horse", "animal", "a large animal people ride"), ("bread", "food", "baked from flour, water and yeast"),
            ("saw", "tool", "it cuts wood with a toothed blade"), ("blue", "colour", "the colour of a clear sky")]
FEW_SHOT = ("Sort each word into one of four categories: animal, food, tool or colour. Answer with the category, then "
            "say why in a few words.\n\n" + "".join(f"Word: {w}\nCategory: {c}\nWhy: {y}.\n\n" for w, c, y in EXAMPLES)
            + "Word: {}\nCategory:")
WORDS = "dog rice drill yellow sheep soup pliers purple lion".split()
STORY = ("A lighthouse keeper on a small island kept a log of every ship that passed, the weather each morning, "
         "and the birds that rested on the rail. ") * 3


@pytest.fixture
def llama(llama):
    llama.settings.batch_size = 16
    llama.settings.system = None
    return llama


def cache(llama) -> dict:
    return llama.status()["prompt_cache"]


def batch_prefixes(llama) -> list[dict]:
    return [h for h in cache(llama)["held"] if h["use"] == "batch"]


def settle(llama) -> dict:
    assert wait_for(lambda: not cache(llama)["pending"], timeout=120), cache(llama)
    return cache(llama)


def test_a_few_shot_template_is_read_once_cached_across_calls_and_replies_stay_the_same(shell, llama, smollm2_int8):
    # int8 logits depend on where a prompt is cut (BENCHMARKS.md, Findings J): smollm2 int8 shows it, the demo does not.
    run(shell, "%config LlamaSettings.prefix_cache_mb = 0")  # cut at the same place, nothing cached
    llama.load("smollm2")
    uncached = llama.map(WORDS, FEW_SHOT, temperature=0, max_tokens=10)
    alone = llama.map(WORDS[:1], FEW_SHOT, temperature=0, max_tokens=10)
    assert cache(llama)["held"] == [] and cache(llama)["bytes"] == 0
    cut = cache(llama)["last_batch"]
    assert cut["static_tokens"] > 150 and not cut["cached"] and not cut["hit"]  # cut all the same
    run(shell, "%config LlamaSettings.prefix_cache_mb = 1024")
    first = llama.map(WORDS, FEW_SHOT, temperature=0, max_tokens=10)
    (held,) = batch_prefixes(llama)
    assert cache(llama)["last_batch"] == {"static_tokens": cut["static_tokens"], "cached": True, "hit": False}
    workers = llama.status()["batch_workers"]
    assert held["ready"] and held["hits"] == 0 and held["generator"] == ("batch" if workers > 1 else "stream")
    assert held["tokens"] > 150 and held["bytes"] == cache(llama)["bytes"] <= cache(llama)["limit"]
    second = llama.map(WORDS, FEW_SHOT, temperature=0, max_tokens=10)
    assert first == second == uncached
    assert cache(llama)["last_batch"] == {"static_tokens": cut["static_tokens"], "cached": True, "hit": True}
    assert len(set(first)) > 3  # the replies depend on the word, so a reply from the wrong prompt would show
    one = llama.map(WORDS[:1], FEW_SHOT, temperature=0, max_tokens=10)  # a call with one row: the same prefix
    assert one == alone
    (again,) = batch_prefixes(llama)
    assert again["tokens"] == held["tokens"] and again["hits"] == 2


def test_generate_finds_what_its_prompts_share_and_prompts_that_share_nothing_still_work(llama):
    llama.load("demo")
    questions = ["Who kept the log?", "What rested on the rail?", "Where was the lighthouse?", "hi"]
    shared = [f"{STORY}\n\nQuestion: {q}" for q in questions]
    replies = llama.generate(shared, temperature=0, max_tokens=8)
    (held,) = batch_prefixes(llama)
    assert held["tokens"] > 96 and held["ready"]
    # The demo model gives the same greedy tokens at every cut (Findings J), so a cut prompt answers as a whole one.
    assert replies == [llama.ask(p, once=True, temperature=0, max_tokens=8) for p in shared]
    unrelated = ["Name a colour.", "What is 2+2?", STORY, "Write a haiku about rain."]
    assert llama.generate(unrelated, temperature=0, max_tokens=8) == [
        llama.ask(p, once=True, temperature=0, max_tokens=8) for p in unrelated]
    assert len(batch_prefixes(llama)) == 1  # nothing new: these share only the chat template's header
    assert cache(llama)["last_batch"]["static_tokens"] == 0
    assert llama.generate([shared[0]], temperature=0, max_tokens=8) == replies[:1]  # one prompt shares nothing
    assert cache(llama)["last_batch"]["static_tokens"] == 0


def test_the_budget_holds_and_a_prefix_that_does_not_fit_is_made_room_for_in_idle_time(shell, llama):
    llama.load("demo")
    other = FEW_SHOT.replace("Sort each word", "Please sort every word")  # differs from its first words on
    plain = {t: llama.map(WORDS, t, temperature=0, max_tokens=6) for t in (FEW_SHOT, other)}
    mine, theirs = (h["bytes"] for h in batch_prefixes(llama))  # the demo counts 8 KiB a token
    assert mine == batch_prefixes(llama)[0]["tokens"] * 8 * 1024 and cache(llama)["bytes"] == mine + theirs
    # Room for one of them: the second call's prefix does not fit beside the first, so it runs cut but uncached...
    limit_mb = -(-max(mine, theirs) // 2**20)
    assert limit_mb * 2**20 < mine + theirs, "each prefix must fit alone in the budget, not both"
    run(shell, f"%config LlamaSettings.prefix_cache_mb = {limit_mb}")
    assert settle(llama)["bytes"] == 0  # the lower budget emptied the cache in idle time
    assert llama.map(WORDS, FEW_SHOT, temperature=0, max_tokens=6) == plain[FEW_SHOT]
    assert llama.map(WORDS, other, temperature=0, max_tokens=6) == plain[other]
    state = cache(llama)
    assert state["bytes"] == mine <= state["limit"] and len(state["held"]) == 1
    # ...and the cache is emptied in idle time, so the next call with that template caches it.
    emptied = settle(llama)
    assert emptied["bytes"] == 0 and emptied["clears"] == state["clears"] + 1
    assert llama.map(WORDS, other, temperature=0, max_tokens=6) == plain[other]
    assert cache(llama)["bytes"] == theirs and batch_prefixes(llama)[0]["ready"]
    # A budget below one prefix: cut, never cached, the same replies.
    run(shell, "%config LlamaSettings.prefix_cache_mb = 0")
    settle(llama)
    assert llama.map(WORDS, FEW_SHOT, temperature=0, max_tokens=6) == plain[FEW_SHOT]
    assert cache(llama)["held"] == []
