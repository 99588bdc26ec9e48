"""llama.generate and llama.map: batched one-shot prompts, in input order, with per-item errors."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from pathlib import Path

import pytest

from ct2_magics.errors import LlamaError

WORDS = "the sky robot lived house a def load blue in cat morning square trees people read".split()


@pytest.fixture(scope="module")
def continuation_model(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo weights with a chat template that ends at the user's text, so greedy replies depend on the prompt."""
    path = tmp_path_factory.mktemp("continuation") / "model"
    shutil.copytree(demo_model, path)
    config = json.loads((path / "tokenizer_config.json").read_text())
    config["chat_template"] = "{{ bos_token }}{{ messages[-1]['content'] }}"
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


def test_generate_matches_one_by_one_greedy_asks_on_the_demo(llama):
    llama.load("demo")
    prompts = ["Name a colour.", "What is 2+2?", "Write a haiku about rain.", "hi"]
    batched = llama.generate(prompts, temperature=0, max_tokens=8)
    assert batched == [llama.ask(p, once=True, temperature=0, max_tokens=8) for p in prompts]
    assert all(isinstance(r, str) and r for r in batched)
    assert not any(c.turns for c in llama.chats)  # one-shot: no chat records them


def test_results_come_back_in_input_order(llama, continuation_model):
    llama.load(str(continuation_model))
    prompts = [f"Once upon a time the {w}" if i % 2 else w for i, w in enumerate(WORDS * 2)]
    batched = llama.generate(prompts, temperature=0, max_tokens=8, batch_size=5)
    one_by_one = [llama.ask(p, once=True, temperature=0, max_tokens=8) for p in prompts]
    assert len(set(one_by_one)) > 5  # the replies differ, so a shuffled result would show
    assert batched == one_by_one


@pytest.mark.parametrize("size", [1, 3, 16])
def test_batch_size_does_not_change_greedy_output(llama, continuation_model, size):
    llama.load(str(continuation_model))
    prompts = [f"In the {w}" for w in WORDS]
    reference = llama.generate(prompts, temperature=0, max_tokens=8, batch_size=len(prompts))
    assert llama.generate(prompts, temperature=0, max_tokens=8, batch_size=size) == reference


def test_small_cpu_models_batch_on_a_one_thread_worker_per_core(llama, continuation_model):
    import os

    cores = len(os.sched_getaffinity(0))
    llama.load(str(continuation_model))
    status = llama.status()
    assert status["threads"] == 1 and status["batch_workers"] == min(4, cores)
    prompts = [f"Once upon a time the {w}" if i % 2 else w for i, w in enumerate(WORDS * 2)]
    workers = llama.generate(prompts, temperature=0, max_tokens=8, batch_size=3)
    llama.unload()
    llama.settings.threads = 1  # asked for: one Generator, one worker, as before
    llama.load(str(continuation_model))
    assert llama.status()["batch_workers"] == 1
    assert llama.generate(prompts, temperature=0, max_tokens=8, batch_size=3) == workers
    assert workers == [llama.ask(p, once=True, temperature=0, max_tokens=8) for p in prompts]


def test_batch_size_setting_is_a_traitlet(llama):
    from ct2_magics.core.settings import LlamaSettings

    assert LlamaSettings().batch_size == 16 and LlamaSettings.batch_size.metadata.get("config")
    llama.settings.batch_size = 2
    llama.load("demo")
    assert llama.generate(["a", "b", "c"], temperature=0, max_tokens=4) == [
        llama.ask(p, once=True, temperature=0, max_tokens=4) for p in "abc"
    ]
    with pytest.raises(LlamaError, match="batch_size"):
        llama.generate(["a"], batch_size=0)


def test_map_over_a_series_keeps_its_index_and_shows_progress(llama, capsys):
    pd = pytest.importorskip("pandas")
    llama.load("demo")
    index = [f"row{i}" for i in range(200)][::-1]
    reviews = pd.Series([f"Review {i}: fine product." for i in range(200)], index=index, name="review")
    started = time.perf_counter()
    out = llama.map(reviews, "Summarise in three words: {}", temperature=0, max_tokens=8)
    elapsed = time.perf_counter() - started
    assert isinstance(out, pd.Series) and list(out.index) == index and out.name == "review"
    assert out.notna().all() and llama.last_errors == []
    assert "200/200" in capsys.readouterr().err  # tqdm's text bar in a terminal
    print(f"map over 200 rows: {elapsed:.2f} s")


def test_progress_false_and_short_jobs_show_no_bar(llama, capsys):
    llama.load("demo")
    llama.map(["a", "b", "c"] * 10, "{}", max_tokens=4, batch_size=4, progress=False)
    llama.map(["a", "b"], "{}", max_tokens=4)  # one batch: no bar by default
    assert "prompts/s" not in capsys.readouterr().err  # the bar's rate, as a shown bar writes it (below)
    llama.map(["a"], max_tokens=4, progress=True)
    err = capsys.readouterr().err
    assert "1/1" in err and re.search(r"\d prompts/s\]", err)  # "27.09 prompts/s", never "27.09prompt/s"


def test_templates(llama):
    llama.load("demo")
    from ct2_magics.core.items import template_filler as _template_filler

    assert _template_filler("Summarise: {}")("x") == "Summarise: x"
    assert _template_filler("Translate to French:")("x") == "Translate to French:\n\nx"
    assert _template_filler('Reply as {{"label": ...}} for: {}')("x") == 'Reply as {"label": ...} for: x'
    with pytest.raises(LlamaError, match='field {"label"}.*double literal braces'):
        llama.map(["x"], 'JSON {"label": 1} for: {}')
    pd = pytest.importorskip("pandas")
    with pytest.raises(LlamaError, match="whole DataFrame"):
        llama.map(pd.DataFrame({"a": ["x"]}), "{}")


def test_a_bad_item_does_not_lose_the_others(llama, capsys):
    pd = pytest.importorskip("pandas")
    llama.load("demo")
    llama.settings.max_context = 256
    items = pd.Series(["short", "word " * 2000, None, float("nan"), 7, "", {"a": 1}, "also short", "bad \ud800"],
                      index=list("abcdefghi"))
    out = llama.map(items, "Summarise: {}", temperature=0, max_tokens=8)
    assert list(out.index) == list("abcdefghi")
    assert [v is not None for v in out] == [True, False, False, False, True, False, False, True, False]
    errors = {e.label: e.reason for e in llama.last_errors}
    assert set(errors) == set("bcdfgi")
    assert errors["b"].startswith("prompt is ") and "the context allows 248" in errors["b"]
    assert errors["c"] == errors["d"] == "missing value" and "dict" in errors["g"] and "surrogate" in errors["i"]
    lines = capsys.readouterr().err.strip().splitlines()
    warning = next(line for line in lines if "failed" in line)  # rows cut at max_tokens have a line of their own
    assert warning.startswith("llama.map: 6 of 9 items failed") and "last_errors" in warning
    with pytest.raises(LlamaError, match="nothing was generated"):
        llama.generate(["ok", None], errors="raise", max_tokens=4)
    assert llama.generate(["ok", None], errors="ignore", max_tokens=4)[1] is None
    assert "failed" not in capsys.readouterr().err


def test_whole_call_errors_are_one_line(llama):
    llama.load("demo")
    with pytest.raises(LlamaError, match="list of prompts"):
        llama.generate("one prompt")
    with pytest.raises(LlamaError, match="Unknown setting"):
        llama.generate(["a"], temprature=0)
    with pytest.raises(LlamaError, match="no room"):
        llama.generate(["a"], max_tokens=10_000)
    assert llama.generate([]) == [] and llama.map([], "{}") == []


def test_generate_waits_for_a_stream_that_holds_the_model(llama, long_model):
    llama.load(str(long_model))
    response = llama.stream("Write forever.", once=True, max_tokens=3000)
    first = threading.Event()

    def stream() -> None:
        for _ in response:
            first.set()

    streamer = threading.Thread(target=stream, daemon=True)
    streamer.start()
    assert first.wait(10)
    result: dict[str, object] = {}
    worker = threading.Thread(target=lambda: result.update(out=llama.generate(["a", "b"], temperature=0, max_tokens=4)))
    worker.start()
    worker.join(0.5)
    assert worker.is_alive() and "out" not in result  # its turn has not come
    response.stop()
    streamer.join(5)
    worker.join(10)
    assert response.status == "stopped"
    assert not worker.is_alive()
    out = result["out"]
    assert isinstance(out, list) and len(out) == 2 and all(isinstance(r, str) for r in out)
