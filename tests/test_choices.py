"""Choices: labels from a list with their probabilities, through llama.ask / generate / map and %%llama --choices,
on real tiny models, checked against CTranslate2's score_batch computed here on ids built independently."""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from IPython.core.error import UsageError

from helpers import html_tags, html_text, run
from hostile import PAYLOADS, fill, unsafe_parts

from ct2_magics.errors import LlamaError

PROMPTS = ["Name a colour.", "What is 2+2?", "Write a haiku about rain.", "hi", "Tell me about the sea and the sky."]
CHOICES = ["blue", "the deep blue sea", "red", "seven"]


@pytest.fixture
def llama(llama):
    llama.settings.max_context = 8192
    llama.settings.batch_size = 16
    llama.settings.system = None
    return llama


def reference(model_dir: Path, prompts: list[str | list[dict[str, str]]], choices: list[str]) -> list[list[float]]:
    """Each choice's probability after each prompt, from scratch: the model's own tokenizer and chat template
    (transformers), CTranslate2's score_batch on prompt + the template's reply through its end of turn, softmax."""
    import ctranslate2
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    generator = ctranslate2.Generator(str(model_dir), device="cpu", intra_threads=1)
    end = tokenizer.convert_tokens_to_ids(json.loads((model_dir / "config.json").read_text())["eos_token"])

    def ids(messages: list[dict[str, str]], generation: bool) -> list[int]:
        out = tokenizer.apply_chat_template(messages, add_generation_prompt=generation, tokenize=True)
        return list(out["input_ids"] if hasattr(out, "keys") else out)

    table = []
    for prompt in prompts:  # a prompt, or the chat's messages up to the user's
        user = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        head = ids(user, True)
        scores = []
        for choice in choices:
            full = ids(user + [{"role": "assistant", "content": choice}], False)
            assert full[:len(head)] == head
            tail = full[len(head):full.index(end, len(head)) + 1]
            (result,) = generator.score_batch([tokenizer.convert_ids_to_tokens(head + tail)], max_input_length=0)
            scores.append(math.fsum(result.log_probs[-len(tail):]))
        top = max(scores)
        weights = [math.exp(s - top) for s in scores]
        table.append([w / sum(weights) for w in weights])
    return table


# -- what a choice's probability is ---------------------------------------------------------------
def test_probabilities_equal_score_batch_on_independently_built_ids(llama, demo_model):
    llama.load(str(demo_model))
    table = llama.generate(PROMPTS, choices=CHOICES, probs=True)
    expected = reference(demo_model, PROMPTS, CHOICES)
    assert list(table.columns) == ["label", *CHOICES]
    # In log space, where the demo's small probabilities (1e-19 here) still carry every digit of the score.
    got = np.log(table[CHOICES].to_numpy(dtype=float))
    assert abs(got - np.log(expected)).max() < 1e-6, (got, np.log(expected))
    assert len({round(float(v), 4) for v in got[:, 0]}) == len(PROMPTS)  # each row its own numbers: a shuffle would show
    for row, (_, line) in zip(expected, table.iterrows()):
        assert math.isclose(sum(line[CHOICES]), 1.0, abs_tol=1e-9)
        assert line["label"] == CHOICES[max(range(len(CHOICES)), key=row.__getitem__)]
    # ask gives the same numbers, one prompt at a time, and the labels match
    assert llama.ask(PROMPTS[0], choices=CHOICES, probs=True, once=True) == pytest.approx(dict(zip(CHOICES, expected[0])),
                                                                                         abs=1e-4)
    assert llama.generate(PROMPTS, choices=CHOICES) == list(table["label"])


def test_a_whole_choice_outranks_one_that_only_begins_like_the_reply(llama, script_model):
    model = script_model("the blue sea")  # its greedy reply, then the end of its turn
    llama.load(str(model))
    choices = ["the", "the blue", "the blue sea and sky", "the blue sea", "blue sea"]
    from transformers import AutoTokenizer

    first = {AutoTokenizer.from_pretrained(str(model)).tokenize(c)[0] for c in choices[:4]}
    assert len(first) == 1  # the first four share their first token: by it alone, 'the' (listed first) would win
    probs = llama.ask("Where do whales live?", choices=choices, probs=True, once=True)
    assert max(probs, key=probs.get) == "the blue sea" and probs["the blue sea"] > 0.99
    assert probs == pytest.approx(dict(zip(choices, reference(model, ["Where do whales live?"], choices)[0])), abs=1e-6)


def test_multi_token_choices_that_share_their_start_are_told_apart(llama, script_model):
    llama.load(str(script_model("New York")))
    cities = ["New Jersey", "Newark", "New", "New York", "York"]
    table = llama.map(["Where is the Statue of Liberty?", "Which city never sleeps?"], "{}", choices=cities, probs=True)
    assert list(table["label"]) == ["New York", "New York"]
    assert (table["New York"] > 0.99).all()


# -- shapes: lists, Series, DataFrames, missing values -------------------------------------------------
def test_map_keeps_the_series_index_and_gives_none_and_nan_for_missing_items(llama, demo_model, capsys):
    pd = pytest.importorskip("pandas")
    llama.load(str(demo_model))
    items = pd.Series(["sunny", None, "cloudy", float("nan"), "  ", 42], index=[10, "b", 30, "d", "e", 60], name="sky")
    labels = llama.map(items, "Describe the weather: {}", choices=["rain", "sun"])
    assert isinstance(labels, pd.Series) and labels.name == "sky" and list(labels.index) == list(items.index)
    assert [v is None for v in labels] == [False, True, False, True, True, False]
    assert set(labels.dropna()) <= {"rain", "sun"}
    assert [(e.label, e.reason) for e in llama.last_errors] == [("b", "missing value"), ("d", "missing value"),
                                                                 ("e", "empty text")]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "3 of 6 items failed" in err  # one summary line

    table = llama.map(items, "Describe the weather: {}", choices=["rain", "sun"], probs=True)
    assert isinstance(table, pd.DataFrame) and list(table.index) == list(items.index)
    assert list(table.columns) == ["label", "rain", "sun"]
    assert table.loc[["b", "d", "e"], ["rain", "sun"]].isna().all().all() and table.loc[["b", "d", "e"], "label"].isna().all()
    answered = table.loc[[10, 30, 60]]
    assert ((answered["rain"] + answered["sun"]) - 1).abs().max() < 1e-12
    assert list(answered["label"]) == list(labels.loc[[10, 30, 60]])
    assert list(answered["label"]) == [("rain", "sun")[r["sun"] > r["rain"]] for _, r in answered.iterrows()]


def test_lists_give_lists_and_probs_a_table_on_a_range_index(llama, demo_model):
    pd = pytest.importorskip("pandas")
    llama.load(str(demo_model))
    labels = llama.map(["a", "b", "c"], "Pick: {}", choices=("x", "y"))
    assert isinstance(labels, list) and len(labels) == 3 and set(labels) <= {"x", "y"}
    table = llama.generate(["a", "b"], choices=["x", "y"], probs=True)
    assert isinstance(table, pd.DataFrame) and list(table.index) == [0, 1]
    empty = llama.map([], "{}", choices=["x", "y"], probs=True)
    assert list(empty.columns) == ["label", "x", "y"] and len(empty) == 0
    assert not any(c.turns for c in llama.chats)  # one-shot rows: no chat records them


def test_a_prompt_too_long_for_the_context_is_one_failed_row(llama, demo_model):
    llama.load(str(demo_model))
    llama.settings.max_context = 64
    labels = llama.map(["short", "long " * 200], "{}", choices=["x", "y"])
    assert labels[0] in ("x", "y") and labels[1] is None
    assert "the context less the longest choice" in llama.last_errors[0].reason


# -- bad input: one line, nothing lost ----------------------------------------------------------------
BAD = [
    (dict(choices=[]), "two or more labels"),
    (dict(choices=["only"]), "two or more labels"),
    (dict(choices="yes, no"), "not one string"),
    (dict(choices={"yes": 1, "no": 0}), "not a dict"),
    (dict(choices=42), "got int"),
    (dict(choices=["yes", "no", "yes"]), "'yes' is listed twice"),
    (dict(choices=["yes", "yes "]), "the same but for spaces"),
    (dict(choices=["yes", "  "]), "Choice 2 is blank"),
    (dict(choices=["yes", None]), "Choice 2 (None) is not text"),
    (dict(choices=["yes", 3]), "Choice 2 (3) is not text (an int)"),
    (dict(choices=["yes", "\ud800"]), "lone surrogate"),
    (dict(probs=True), "pass the choices too"),
    (dict(choices=["yes", "no"], probs="yes"), "probs is True or False"),
    (dict(choices=["yes", "no"], temperature=0.5), "temperature does not apply to choices"),
    (dict(choices=["yes", "no"], max_tokens=5), "max_tokens does not apply to choices"),
    (dict(choices=["yes", "no"], seed=1), "seed does not apply to choices"),
]


@pytest.mark.parametrize("kwargs, says", BAD, ids=[b[1] for b in BAD])
def test_bad_choices_are_one_line_and_cost_nothing(llama, demo_model, kwargs, says):
    llama.load(str(demo_model))
    llama.ask("hello", temperature=0, max_tokens=3)
    before = llama.history()
    for call in (lambda: llama.ask("hi", **kwargs), lambda: llama.map(["a", "b"], "{}", **kwargs),
                 lambda: llama.generate(["a"], **kwargs)):
        with pytest.raises(LlamaError) as e:
            call()
        assert says in str(e.value) and "\n" not in str(e.value)
    assert llama.history() == before and llama.engine is not None and not llama.busy


def test_choices_named_like_the_label_column_on_a_cluster_or_streamed_are_refused(llama, demo_model):
    llama.load(str(demo_model))
    with pytest.raises(LlamaError, match="share its column with the label column"):
        llama.map(["a"], "{}", choices=["label", "other"], probs=True)
    assert llama.ask("hi", choices=["label", "other"], probs=True, once=True).keys() == {"label", "other"}  # a dict: fine
    with pytest.raises(LlamaError, match="not on a cluster"):
        llama.map(["a"], "{}", choices=["x", "y"], cluster=object())
    with pytest.raises(LlamaError, match="scored, not streamed"):
        llama.stream("hi", choices=["x", "y"])


# -- chats: the turn is kept as a normal ask keeps it ----------------------------------------------
def test_ask_with_choices_records_the_label_as_the_reply_unless_once(llama, demo_model):
    llama.load(str(demo_model))
    label = llama.ask("Sky colour?", choices=["blue", "green"], chat="quiz")
    assert llama.history("quiz") == [{"role": "user", "content": "Sky colour?"}, {"role": "assistant", "content": label}]
    probs = llama.ask("And grass?", choices=["blue", "green"], chat="quiz", probs=True)
    assert llama.history("quiz")[-1]["content"] == max(probs, key=probs.get)
    assert len(llama.chat("quiz").turns) == 2
    llama.ask("Once?", choices=["yes", "no"], chat="quiz", once=True)
    assert len(llama.chat("quiz").turns) == 2
    llama.ask("Fresh?", choices=["yes", "no"], chat="quiz", new=True, system="Answer briefly.")
    assert [m["role"] for m in llama.history("quiz")] == ["system", "user", "assistant"]


def test_the_chat_so_far_is_part_of_the_prompt_a_choice_is_scored_after(llama, demo_model):
    llama.load(str(demo_model))
    reply = llama.ask("Where do whales live?", chat="c", temperature=0, max_tokens=6)
    in_chat = llama.ask("Again?", choices=CHOICES, chat="c", probs=True)
    alone = llama.ask("Again?", choices=CHOICES, once=True, probs=True)
    chat = [{"role": "user", "content": "Where do whales live?"}, {"role": "assistant", "content": reply},
            {"role": "user", "content": "Again?"}]
    expected = reference(demo_model, [chat, "Again?"], CHOICES)
    assert np.log(list(in_chat.values())) == pytest.approx(np.log(expected[0]), abs=1e-6)
    assert np.log(list(alone.values())) == pytest.approx(np.log(expected[1]), abs=1e-6)
    assert abs(np.log(list(in_chat.values())) - np.log(list(alone.values()))).max() > 1e-3  # the chat changed them


# -- stopping ------------------------------------------------------------------------------------------------
def test_an_interrupt_stops_a_scoring_map_between_batches_and_keeps_the_answered_rows(llama, long_model, sigint):
    llama.load(str(long_model))
    n = 16 * llama.status()["batch_workers"]  # rows one chunk takes (batch_size 16 for each batch worker)
    words, one_chunk = 20, 0.0
    while one_chunk < 1.5:  # a chunk of a second or more, whatever the machine's speed
        words *= 2
        items = [f"row {i} " + "and more words " * words for i in range(6 * n)]
        began = time.monotonic()
        llama.map(items[:n], "{}", choices=["yes", "no"], progress=False)
        one_chunk = time.monotonic() - began
    fired: dict[str, float] = {}

    def interrupt_inside_the_second_chunk() -> None:
        time.sleep(1.5 * one_chunk)
        fired["at"] = time.monotonic()
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_inside_the_second_chunk, daemon=True).start()
    with pytest.raises(KeyboardInterrupt, match="rows were answered"):
        llama.map(items, "{}", choices=["yes", "no"], progress=False)
    took = time.monotonic() - fired["at"]
    # score_batch cannot be stopped, so a chunk is scored a few batches a call: the interrupt waits for one call.
    assert took < one_chunk / 2, f"the interrupt took {took:.2f} s; a chunk takes {one_chunk:.2f} s"
    assert not llama.busy
    partial = llama.last_result
    done = sum(r is not None for r in partial)
    assert done in (n, 2 * n, 3 * n) and {r for r in partial if r is not None} <= {"yes", "no"}, done  # whole chunks
    assert llama.ask("still here?", choices=["yes", "no"], once=True) in ("yes", "no")


# -- the magic --------------------------------------------------------------------------------------------
def test_the_magic_shows_the_label_and_bars_and_stores_the_label(shell, llama, script_model):
    shell.run_line_magic("llama", f"load {script_model('the blue sea')}")
    assert run(shell, '%%llama --choices "red, the blue sea, green" -o where\nWhere do whales live?').success
    assert shell.user_ns["where"] == "the blue sea"
    assert llama.history()[-1] == {"role": "assistant", "content": "the blue sea"}
    out = shell.display_pub.outputs[-1]
    html, plain = out["data"]["text/html"], out["data"]["text/plain"]
    assert unsafe_parts(html) == []
    cells = [html_text(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", html)]
    assert html_text(html).startswith("the blue sea") and cells[0::3] == ["red", "the blue sea", "green"]
    assert cells[2::3] == ["0.0%", "100.0%", "0.0%"] and cells[4] == "█" * 20 and cells[1] == cells[7] == ""
    assert plain.splitlines()[0] == "the blue sea" and "█" * 19 in plain
    assert [t for t, _ in html_tags(html)].count("tr") == 3
    probabilities = out["metadata"]["ct2_magics"]["choices"]
    assert list(probabilities) == ["red", "the blue sea", "green"] and probabilities["the blue sea"] > 0.99


def test_the_magic_with_once_keeps_nothing_and_text_format_is_plain(shell, llama, demo_model):
    shell.run_line_magic("llama", f"load {demo_model}")
    assert run(shell, '%%llama --choices "a, b" --once -f text -o picked\nhi').success
    assert shell.user_ns["picked"] in ("a", "b") and len(llama.chats) == 0
    assert set(shell.display_pub.outputs[-1]["data"]) == {"text/plain"}


# Choices as the magic's line can hold them: one line, no commas (they separate the labels).
LINE_PAYLOADS = [fill(p).replace(",", ";").strip() for p in PAYLOADS if "\n" not in p and "\r" not in p]


@pytest.mark.parametrize("choice", LINE_PAYLOADS)
def test_hostile_choices_show_as_text(shell, llama, demo_model, choice):
    shell.run_line_magic("llama", f"load {demo_model}")
    assert run(shell, f"%%llama --choices {shlex.quote(choice + ', plain')} --once\nhi").success
    out = shell.display_pub.outputs[-1]
    html = out["data"]["text/html"]
    assert unsafe_parts(html) == []
    assert " ".join(choice.split()) in html_text(html)  # shown as the text it is
    assert list(out["metadata"]["ct2_magics"]["choices"]) == [choice, "plain"]


def test_control_characters_in_choices_are_shown_visibly():
    from ct2_magics.notebook import choice_view

    choice = "\x1b[2J\x1b[31mred\r over \x07"
    probabilities = {choice: 0.25, "plain": 0.75}
    for shown in (choice_view.chart_text("plain", probabilities), html_text(choice_view.chart_html("plain", probabilities))):
        assert "\x1b" not in shown and "\r" not in shown and "\x07" not in shown and "\u241b[31mred" in shown
    assert unsafe_parts(choice_view.chart_html(choice, probabilities)) == []


def test_magic_mistakes_are_one_line(shell, llama, demo_model, capsys):
    shell.run_line_magic("llama", f"load {demo_model}")
    for line, says in [('--choices "a, b" -t 0.5', "-t does not apply to choices"),
                       ('--choices "a,,b"', "label 2 is blank"), ('--choices "a"', "two or more labels"),
                       ('--choices ""', "two or more labels"), ('--choices "a, a"', "listed twice"),
                       ('--choices "a, b" -f json', "-f json reads a written reply")]:
        capsys.readouterr()
        result = run(shell, f"%%llama {line}\nhi")
        err = capsys.readouterr().err
        assert isinstance(result.error_in_exec, UsageError) and says in err and err.count("\n") == 1, (line, err)
    assert len(llama.chats) == 0


# -- a real model: labels an analysis can use ------------------------------------------------------------------
CITIES = {"Sao Paulo": "Brazil", "Manaus": "Brazil", "Fortaleza": "Brazil", "Novosibirsk": "Russia",
          "Saratov": "Russia", "Yekaterinburg": "Russia", "Broken Hill": "Australia", "Adelaide": "Australia",
          "Hobart": "Australia", "Catamarca": "Argentina", "Mendoza": "Argentina", "Salta": "Argentina"}


def test_on_smollm2_choices_beat_labels_read_out_of_free_text(llama, smollm2_float32):
    import re

    llama.load(str(smollm2_float32))
    countries = sorted(set(CITIES.values()))
    template = "In which country is the city of {}? Answer with the country's name only."
    free = llama.map(list(CITIES), template, temperature=0, max_tokens=16)

    def read(reply: str) -> str | None:  # what an analyst would do by hand: the one country the reply names
        named = [c for c in countries if re.search(rf"\b{c}\b", reply, re.IGNORECASE)]
        return named[0] if len(named) == 1 else None

    read_free = [read(r) for r in free]
    chosen = llama.map(list(CITIES), template, choices=countries)
    gold = list(CITIES.values())
    right_free = sum(a == b for a, b in zip(read_free, gold))
    right_chosen = sum(a == b for a, b in zip(chosen, gold))
    assert all(c in countries for c in chosen)  # every row usable
    assert right_chosen >= 7 and right_chosen > right_free + 2, (chosen, free)  # chance: 3 of 12
