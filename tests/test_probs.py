"""What the model weighed: `llama.stream(logprobs=K)` records, `llama.next_tokens`, and `%%llama --probs`, on real
tiny models, checked against distributions computed here with CTranslate2's forward_batch on independently built ids."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from IPython.core.error import UsageError

from helpers import html_tags, html_text, run
from hostile import PAYLOADS, fill

from ct2_magics.errors import LlamaError

QUESTION = "Tell me about the sea and the sky."


def forward_probs(model_dir: Path, ids: list[int]) -> np.ndarray:
    """softmax of CTranslate2's forward_batch at every position of `ids` (float64), built here from scratch."""
    import ctranslate2
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    generator = ctranslate2.Generator(str(model_dir), device="cpu", intra_threads=1)
    logits = np.array(generator.forward_batch([tokenizer.convert_ids_to_tokens(ids)]))[0].astype(np.float64)
    size = len(tokenizer)
    logits = logits[:, :size]
    weights = np.exp(logits - logits.max(axis=1, keepdims=True))
    return weights / weights.sum(axis=1, keepdims=True)


def chat_ids(model_dir: Path, text: str) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    out = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@pytest.fixture
def llama(llama):
    llama.settings.system = None
    return llama


def test_each_token_has_the_probability_the_model_gave_it_and_its_alternatives(llama, demo_model):
    from transformers import AutoTokenizer

    llama.load(str(demo_model))
    reply = llama.stream(QUESTION, once=True, logprobs=4, temperature=0, max_tokens=24)
    text = reply.consume()
    assert "".join(t.text for t in reply.tokens) == text and len(reply.tokens) == reply.metadata()["reply_tokens"]
    # The same greedy reply, decoded here one forward_batch at a time over the whole sequence so far.
    ids = chat_ids(demo_model, QUESTION)
    start = len(ids)
    for token in reply.tokens:
        expected = forward_probs(demo_model, ids)[-1]
        assert len(token.alternatives) == 4 and token.rank == 0  # greedy: the chosen token is the most probable
        assert token.prob == pytest.approx(expected.max(), rel=1e-4)
        assert [p for _, p in token.alternatives] == pytest.approx(sorted(expected, reverse=True)[:4], rel=1e-4, abs=1e-9)
        assert token.alternatives[0][1] == token.prob
        ids.append(int(expected.argmax()))
    assert AutoTokenizer.from_pretrained(str(demo_model)).decode(ids[start:]) == text
    assert len({round(t.prob, 6) for t in reply.tokens}) > 3  # each step its own numbers


def test_the_reply_is_the_same_with_and_without_probabilities(llama, smollm2_int8):
    llama.load(str(smollm2_int8))
    for question in ("What is the capital of France?", "Write a short poem about the sea."):
        plain = llama.ask(question, once=True, temperature=0, max_tokens=40)
        weighed = llama.stream(question, once=True, temperature=0, max_tokens=40, logprobs=3)
        assert weighed.consume() == plain
        assert weighed.status in ("complete", "cut", "looping")


def test_a_long_reply_decodes_in_rounds_and_stays_the_same(llama, demo_model, monkeypatch):
    from ct2_magics.core import weighing

    llama.load(str(demo_model))
    whole = llama.stream(QUESTION, once=True, logprobs=2, temperature=0, max_tokens=60)
    whole.consume()
    monkeypatch.setattr(weighing, "ROUND_LOGITS_BYTES", 1)  # rounds of 16 steps: the reply is re-read 3 times
    rounds = llama.stream(QUESTION, once=True, logprobs=2, temperature=0, max_tokens=60)
    assert rounds.consume() == whole.text and whole.stats.reply_tokens > 32
    assert [t.prob for t in rounds.tokens] == pytest.approx([t.prob for t in whole.tokens], rel=1e-4)
    assert rounds.status == whole.status


def test_sampled_tokens_keep_their_rank_and_the_cut_shows(llama, smollm2_int8):
    llama.load(str(smollm2_int8))
    reply = llama.stream("Write a story about a dragon.", once=True, logprobs=3, temperature=1.5, top_k=0, top_p=1.0,
                         seed=7, max_tokens=60)
    reply.consume()
    assert reply.status == "cut" and len(reply.tokens) == 60
    ranks = [t.rank for t in reply.tokens]
    assert any(r is None or r > 0 for r in ranks)  # at temperature 1.5 some picks are not the model's first
    for token in reply.tokens:
        if token.rank is not None:
            assert token.alternatives[token.rank][1] == pytest.approx(token.prob)
        else:
            assert token.prob <= token.alternatives[-1][1]


def test_stopping_a_weighed_reply_keeps_what_it_wrote_and_the_model(llama, long_model):
    llama.load(str(long_model))
    reply = llama.stream(QUESTION, logprobs=5, temperature=0, max_tokens=400)
    pieces = []
    for piece in reply:
        pieces.append(piece)
        if len(pieces) == 5:
            break
    reply.close()
    assert reply.status == "stopped" and "".join(t.text for t in reply.tokens).startswith("".join(pieces))
    assert llama.history()[-1]["content"] == reply.text
    assert not llama.busy and llama.ask("hi", once=True, max_tokens=4) is not None


@pytest.mark.parametrize("kwargs, says", [
    ({"logprobs": 0}, "logprobs is the number of alternatives"), ({"logprobs": 21}, "1 to 20"),
    ({"logprobs": "5"}, "got '5'"), ({"logprobs": 2.5}, "got 2.5"),
    ({"logprobs": 3, "schema": {"type": "object"}}, "leave out the schema"),
])
def test_bad_logprobs_are_one_line(llama, demo_model, kwargs, says):
    llama.load(str(demo_model))
    with pytest.raises(LlamaError, match=re.escape(says)) as caught:
        llama.stream("hi", **kwargs)
    assert "\n" not in str(caught.value) and len(llama.chats) == 0
    with pytest.raises(LlamaError, match="llama.stream"):
        llama.ask("hi", logprobs=5)


# -- next_tokens -----------------------------------------------------------------------------------------------
def test_next_tokens_is_the_distribution_after_the_text_as_written(llama, demo_model):
    from transformers import AutoTokenizer

    llama.load(str(demo_model))
    table = llama.next_tokens("The capital of France is", top=10)
    assert list(table.columns) == ["token", "prob"] and len(table) == 10
    ids = AutoTokenizer.from_pretrained(str(demo_model)).encode("The capital of France is")
    expected = forward_probs(demo_model, ids)[-1]
    assert list(table["prob"]) == pytest.approx(sorted(expected, reverse=True)[:10], rel=1e-4, abs=1e-9)
    assert list(table["prob"]) == sorted(table["prob"], reverse=True) and table["prob"].sum() <= 1 + 1e-9
    html = table._repr_html_()
    cells = [html_text(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", html)]
    token = table["token"][0]
    assert cells[0] == token.replace(" ", "\u2423") and cells[1].startswith("█") and cells[2] == f"{table['prob'][0]:.1%}"
    assert len(llama.chats) == 0  # nothing recorded
    assert type(table.head(3)).__name__ == "DataFrame"  # what you do with it is a plain DataFrame


def test_next_tokens_in_a_chat_reads_the_chat_and_records_nothing(llama, demo_model):
    llama.load(str(demo_model))
    llama.ask("Name a colour.", max_tokens=6)
    before = llama.history()
    in_chat = llama.next_tokens("And another?", top=5, chat="default")
    alone = llama.next_tokens("And another?", top=5)
    assert llama.history() == before
    assert list(in_chat["prob"]) != pytest.approx(list(alone["prob"]))


def test_sampling_options_show_what_they_cut(llama, demo_model):
    llama.load(str(demo_model))
    greedy = llama.next_tokens("Once upon a time", top=5, temperature=0)
    assert list(greedy["sampled"]) == [1.0, 0.0, 0.0, 0.0, 0.0]
    two = llama.next_tokens("Once upon a time", top=5, temperature=1.0, top_k=2)
    assert (two["sampled"][:2] > 0).all() and (two["sampled"][2:] == 0).all()
    assert math.isclose(two["sampled"][:2].sum(), 1.0, rel_tol=1e-9)
    assert two["sampled"][0] == pytest.approx(two["prob"][0] / two["prob"][:2].sum())
    hot = llama.next_tokens("Once upon a time", top=5, temperature=2.0)
    assert hot["sampled"][0] < hot["prob"][0]  # temperature above 1 flattens the distribution


@pytest.mark.parametrize("kwargs, says", [
    ({"top": 0}, "top is how many tokens"), ({"top": "10"}, "top is how many"),
    ({"chat": "default", "system": "Be brief."}, "system= is the chat's own"),
    ({"max_tokens": 5}, "max_tokens does not apply"),
])
def test_bad_next_tokens_requests_are_one_line(llama, demo_model, kwargs, says):
    llama.load(str(demo_model))
    with pytest.raises(LlamaError, match=re.escape(says)) as caught:
        llama.next_tokens("hi", **kwargs)
    assert "\n" not in str(caught.value)


# -- %%llama --probs -----------------------------------------------------------------------------------------------
def test_the_magic_tints_each_token_and_lists_the_alternatives_in_its_tooltip(shell, llama, script_model):
    reply = "The sea is deep.\nThe sky is <b>wide</b> & blue."
    shell.run_line_magic("llama", f"load {script_model(reply)}")
    assert run(shell, "%%llama --probs 3 -t 0 -o said\nDescribe the sea and the sky.").success
    assert shell.user_ns["said"] == reply and llama.history()[-1]["content"] == reply
    out = shell.display_pub.outputs[-1]
    html = out["data"]["text/html"]
    assert out["data"]["text/plain"] == reply
    tags = html_tags(html.split("</style>", 1)[1])
    spans = [a for t, a in tags if t == "span" and "title" in a]
    assert {t for t, _ in tags} <= {"div", "span", "p"} and "b" not in {t for t, _ in tags}
    assert all(set(a) <= {"class", "title"} for _, a in tags)
    assert all(re.fullmatch(r"ct2-p[0-4]", a["class"]) for a in spans)
    shown = html_text(html.split("</style>", 1)[1].split('<div class="ct2-tokens">', 1)[1])
    assert shown.replace("\u21b5", "") == " ".join(reply.split())  # the reply as text; line breaks marked
    first = spans[0]["title"].splitlines()
    assert first[1] == "At this step:" and first[2].endswith("\u2190 chosen") and len(first) == 5
    assert any(a["title"].startswith("\u2423<  ") for a in spans)  # markup is text in the tooltip too, spaces shown


def test_magic_mistakes_with_probs_are_one_line(shell, llama, demo_model, capsys):
    shell.run_line_magic("llama", f"load {demo_model}")
    for line, says in [("--probs 0", "--probs is the number of alternatives"), ("--probs 30", "1 to 20"),
                       ("--probs -f json", "--probs shows the reply's tokens tinted"),
                       ('--probs --choices "a, b"', "Give --choices or --probs"),
                       ("--probs x", "invalid int value")]:
        capsys.readouterr()
        result = run(shell, f"%%llama {line}\nhi")
        err = capsys.readouterr().err
        assert isinstance(result.error_in_exec, UsageError) and says in err and err.count("\n") == 1, (line, err)
    assert len(llama.chats) == 0


@pytest.mark.parametrize("payload", [fill(p) for p in PAYLOADS[:12]] + ["\x1b[31mred\r\x07"])
def test_hostile_tokens_stay_text_in_the_view_and_its_tooltips(payload):
    from ct2_magics.core.weighing import TokenProb
    from ct2_magics.notebook.token_view import STYLE, tokens_html

    tokens = [TokenProb(payload, 0.5, ((payload, 0.5), ('"><img src=x onerror=alert(1)>', 0.2)), 0),
              TokenProb(" after", 0.05, ((" before", 0.6), ("</span><script>x</script>", 0.3)), None)]
    html = tokens_html(tokens, status="cut")
    assert html.startswith(STYLE) and html.count("<style>") == 1
    tags = html_tags(html[len(STYLE):])
    assert {t for t, _ in tags} <= {"div", "span", "p"} and all(set(a) <= {"class", "title"} for _, a in tags)
    assert "\x1b" not in html and "\r" not in html and "\x07" not in html
    titles = [a["title"] for _, a in tags if "title" in a]
    assert 'onerror=alert(1)>' in titles[0] and "below the top 2" in titles[1]
    assert html_text(html).endswith("cut short: it reached the max tokens limit")


def test_a_notebook_keeps_the_tinted_reply_and_a_plain_fallback(shell, llama, script_model):
    shell.run_line_magic("llama", f"load {script_model('Paris.')}")
    assert run(shell, "%%llama --probs\nCapital of France?").success
    final = shell.display_pub.outputs[-1]
    assert set(final["data"]) == {"text/html", "text/plain"} and json.dumps(final["metadata"])
    assert final["metadata"]["ct2_magics"]["status"] == "complete"
