"""What a hostile tester found in llama.map / llama.generate (issue 20): missing values of every kind, templates
checked like prompts, and an interrupt that stops a running batch at once and keeps the rows already answered."""

from __future__ import annotations

import decimal
import os
import signal
import threading
import time

import pytest

from ct2_magics.errors import LlamaError


def test_every_missing_value_pandas_knows_is_missing(llama, capsys):
    np = pytest.importorskip("numpy")
    pd = pytest.importorskip("pandas")
    llama.load("demo")
    greedy = {"temperature": 0, "max_tokens": 3}
    out = llama.map(np.array([1.5, np.nan], dtype=np.float32), "Q: {}", **greedy)
    assert out[0] is not None and out[1] is None
    assert [(e.position, e.reason) for e in llama.last_errors] == [(1, "missing value")]
    assert "1 of 2 items failed" in capsys.readouterr().err
    items = [decimal.Decimal("NaN"), pd.NA, pd.NaT, np.float16("nan"), np.longdouble("nan"), np.datetime64("NaT"),
             float("nan"), None, decimal.Decimal("2.5"), np.int64(3), "text"]
    out = llama.map(items, "Q: {}", **greedy)
    assert [o is None for o in out] == [True] * 8 + [False] * 3
    assert {e.reason for e in llama.last_errors} == {"missing value"} and len(llama.last_errors) == 8
    series = pd.Series([1.0, None, 3.0], index=["a", "b", "c"], dtype="Float64")  # pandas' own NA in a float column
    out = llama.map(series, "Q: {}", **greedy)
    assert list(out.index) == ["a", "b", "c"] and out["b"] is None and out["a"] is not None
    assert [e.label for e in llama.last_errors] == ["b"]


def test_a_template_with_a_lone_surrogate_is_one_line_with_its_position(llama):
    llama.load("demo")
    with pytest.raises(LlamaError) as error:
        llama.map(["x"], "Summarise \ud800: {}")
    assert str(error.value) == "The template holds an invalid character (a lone surrogate) at position 10; remove it."
    assert llama.map(["x"], "Summarise: {}", max_tokens=2)[0] is not None  # the session is fine


@pytest.mark.parametrize("call", ["generate", "map"])
def test_an_interrupt_stops_a_running_batch_at_once_and_keeps_the_answered_rows(llama, long_model, sigint, call):
    llama.load(str(long_model))  # its replies never end before max_tokens: every chunk runs to it
    llama.settings.batch_size = 2
    n = 2 * llama.status()["batch_workers"]  # rows one chunk takes: each batch worker takes batch_size
    items = [f"row {i}" for i in range(5 * n)]  # the same length: chunks of n, in input order
    tokens, one_chunk = 150, 0.0
    while one_chunk < 2.5:  # a chunk of a few seconds, whatever the machine's speed: time one at this max_tokens
        tokens *= 2
        began = time.monotonic()
        assert all(r is not None for r in getattr(llama, call)(items[:n], max_tokens=tokens, progress=False))
        one_chunk = time.monotonic() - began
    fired: dict[str, float] = {}

    def interrupt_inside_the_second_chunk() -> None:
        time.sleep(2.2 * one_chunk)  # after the first chunk, however the machine's load changes
        fired["at"] = time.monotonic()
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_inside_the_second_chunk, daemon=True).start()
    with pytest.raises(KeyboardInterrupt) as stopped:
        getattr(llama, call)(items, max_tokens=tokens, progress=False)
    took = time.monotonic() - fired["at"]
    # Before, the running batch finished first (seconds); now it stops within a step.
    assert took < one_chunk / 3, f"the interrupt took {took:.2f} s to stop a batch of {one_chunk:.1f} s"
    assert not llama.busy
    partial = llama.last_result
    done = sum(r is not None for r in partial)
    assert done in (n, 2 * n, 3 * n, 4 * n), done  # whole chunks, at least the first
    assert str(stopped.value) == (f"llama.{call} stopped: {done} of {5 * n} rows were answered; llama.last_result holds "
                                  "them (None for the rest).")
    assert [r is not None for r in partial] == [True] * done + [False] * (5 * n - done)
    assert [(e.position, e.reason) for e in llama.last_errors] == [(p, "not answered: interrupted") for p in range(done, 5 * n)]
    assert llama.ask("still there?", once=True, max_tokens=2)  # the model is free at once
