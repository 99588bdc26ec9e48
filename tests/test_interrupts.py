"""Ctrl-C pressed two or three times in quick succession during a reply, and Ctrl-C during a first load (issue 20,
items 1 and 4): the model is free at once, every later request works, and so does every later load."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import random
import shutil
import signal
import sys
import threading
import time

import pytest
from helpers import kernel_execute, no_hang, run

STORY = "Tell me a long story."


# -- pressing Ctrl-C ------------------------------------------------------------------------------
def _press() -> None:
    os.kill(os.getpid(), signal.SIGINT)


def interrupted(action, first: float, gaps: list[float], then=_press) -> None:
    """Run action() while a thread presses Ctrl-C after `first` seconds, then once more after each gap (the later
    ones through `then`); every KeyboardInterrupt that reaches this frame is absorbed, the last one included."""

    def presses() -> None:
        time.sleep(first)
        _press()
        for gap in gaps:
            time.sleep(gap)
            then()

    sender = threading.Thread(target=presses, daemon=True)
    stage = 0
    while True:
        try:
            if stage == 0:
                stage = 1
                sender.start()  # inside the try: a first press near 0 s can come before start() returns
            if stage == 1:
                stage = 2
                action()
            sender.join()
            time.sleep(0.05)  # a press sent just before the thread ended lands here at the latest
            return
        except KeyboardInterrupt:
            continue





def presses(rng: random.Random) -> tuple[float, list[float]]:
    """When the first press comes (anywhere from the request's start into its decoding), and 1 or 2 gaps of 0-20 ms."""
    return rng.uniform(0.0, 0.4), [rng.uniform(0.0, 0.02) for _ in range(rng.choice((1, 2)))]


# -- item 1, in this process ------------------------------------------------------------------------
RUNS = 12


def test_quick_double_and_triple_interrupts_of_a_stream_leave_the_model_free(llama, long_model, sigint):
    llama.load(str(long_model))
    rng = random.Random(2001)
    for i in range(RUNS):
        first, gaps = presses(rng)
        interrupted(lambda: llama.stream(STORY, new=True, max_tokens=2500).consume(), first, gaps)
        assert not llama.busy, f"run {i} (first press at {first:.3f} s, gaps {gaps}): the model is still held"
        turns = llama.chat().turns
        assert len(turns) <= 1 and all(t.status == "interrupted" for t in turns), (i, turns)
    with no_hang(15.0):
        assert isinstance(llama.ask("And now?", new=True, max_tokens=5), str)
    assert llama.chat().turns[-1].status in ("complete", "cut")  # cut: it reached max_tokens, as asked


def test_quick_double_and_triple_interrupts_of_a_cell_leave_the_model_free(shell, llama, long_model, sigint):
    shell.run_line_magic("llama", f"load {long_model}")
    rng = random.Random(2002)
    for i in range(RUNS):
        first, gaps = presses(rng)
        interrupted(lambda: run(shell, f"%%llama --new -n 2500\n{STORY}"), first, gaps)
        assert not llama.busy, f"run {i} (first press at {first:.3f} s, gaps {gaps}): the model is still held"
        assert all(t.status == "interrupted" for t in llama.chat().turns), i
    with no_hang(15.0):
        assert run(shell, "%%llama --new -n 5\nAnd now?").success
        assert llama.unload()


def test_quick_double_and_triple_interrupts_of_a_batch_job_leave_the_model_free(llama, long_model, sigint):
    llama.load(str(long_model))
    rng = random.Random(2008)
    for i in range(4):
        first, gaps = presses(rng)
        interrupted(lambda: llama.generate(["One.", "Two.", "Three.", "Four."], batch_size=1, max_tokens=60,
                                           progress=False), first, gaps)
        assert not llama.busy, f"run {i} (first press at {first:.3f} s, gaps {gaps}): the model is still held"
    with no_hang(15.0):
        assert isinstance(llama.ask("And now?", new=True, max_tokens=5), str)


def test_an_interrupt_no_handler_sees_still_frees_the_model(llama, long_model, sigint):
    """A Ctrl-C, then a KeyboardInterrupt raised without any signal (by a trace function) at a random line of the
    package's code that runs next, while the reply is being stopped: no Ctrl-C guard can hold that one, and it may
    land in the hand-back itself. The owner must then take the model back from the turn that was left."""
    llama.load(str(long_model))
    countdown = [0]

    def tracer(frame, event, arg):
        if countdown[0] and event == "line" and frame.f_globals.get("__name__", "").startswith("ct2_magics."):
            countdown[0] -= 1
            if not countdown[0]:
                raise KeyboardInterrupt
        return tracer

    rng = random.Random(2003)
    previous = sys.gettrace()
    try:
        for i in range(RUNS):
            sys.settrace(tracer)  # again each time: Python unsets a trace function that raised
            first, lines = rng.uniform(0.05, 0.4), rng.randint(1, 80)
            interrupted(lambda: llama.stream(STORY, new=True, max_tokens=2500).consume(), first, [0.0],
                        then=lambda lines=lines: countdown.__setitem__(0, lines))
            countdown[0] = 0
            assert not llama.busy, f"run {i} (first press at {first:.3f} s, then at line {lines}): the model is held"
    finally:
        sys.settrace(previous)
    with no_hang(15.0):
        assert isinstance(llama.ask("And now?", new=True, max_tokens=5), str)


# -- real kernels -----------------------------------------------------------------------------------
def _start_kernel():
    from jupyter_client import KernelManager

    km = KernelManager(kernel_name="python3")
    km.start_kernel(env={**os.environ, "HF_HUB_OFFLINE": "1"})
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    return km, kc


@contextlib.contextmanager
def kernel():
    km, kc = _start_kernel()
    try:
        yield km, kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)





def reply_to(kc, msg_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        reply = kc.get_shell_msg(timeout=max(0.1, deadline - time.monotonic()))
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply["content"]


def wait_for_iopub(kc, msg_id: str, kind: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        msg = kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == kind:
            return


def one_line(reply: dict) -> bool:
    return len(reply.get("traceback", [])) == 1 and "\n" not in reply["traceback"][0]


KERNEL_ROUNDS = 10


def test_quick_double_and_triple_interrupts_in_a_real_kernel_leave_the_model_free(long_model):
    rng = random.Random(2004)
    with kernel() as (km, kc):
        kernel_execute(kc, f"%load_ext ct2_magics\n%llama load {long_model}\nfrom ct2_magics import llama")
        for i in range(KERNEL_ROUNDS):
            msg_id = kc.execute(f"%%llama --new -n 2500\n{STORY}", stop_on_error=False)
            wait_for_iopub(kc, msg_id, "update_display_data")  # the reply is streaming
            time.sleep(rng.uniform(0.0, 0.3))
            km.interrupt_kernel()
            for _ in range(rng.choice((1, 2))):
                time.sleep(rng.uniform(0.0, 0.02))
                km.interrupt_kernel()
            reply = reply_to(kc, msg_id, timeout=30)
            # one line, and never lost: a Ctrl-C landing in ipykernel's own code after the cell loses its reply
            assert reply["status"] == "error" and reply["ename"] == "LlamaInterrupted" and one_line(reply), i
            time.sleep(0.1)  # between cells the kernel ignores Ctrl-C: a late one must not land in the next cell
            assert kernel_execute(kc, "print(llama.busy, llama.chat().turns[-1].status)") == "False interrupted\n", i
        assert kernel_execute(kc, "print(type(llama.ask('And now?', new=True, max_tokens=5)).__name__)", timeout=30) == "str\n"


# -- item 4: a first load interrupted while it imports its libraries ------------------------------
LIBRARIES = ("numpy", "torch", "transformers", "tokenizers", "ctranslate2", "huggingface_hub")
# Presses Ctrl-C as the n-th module (named prefix...) that is not imported yet starts importing: an interrupt right
# inside an import, wherever the machine's speed puts it.
TRIP = """
import os, signal, sys
class _Trip:
    def __init__(self, prefix, n):
        self.prefix, self.n = prefix, n
    def find_spec(self, name, path=None, target=None):
        if name.startswith(self.prefix):
            self.n -= 1
            if self.n == 0:
                os.kill(os.getpid(), signal.SIGINT)
        return None
sys.meta_path.insert(0, _Trip({prefix!r}, {n}))
"""
UNTRIP = "import sys; sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != '_Trip']"


def load_interrupted_then_again(model: str, interrupt) -> dict:
    """In a fresh kernel: %load_ext (nothing heavy imported), a first `%llama load model` that `interrupt(km, kc, line)`
    cuts short (its reply), then a second load and a question, which must work. Its first reply."""
    with kernel() as (km, kc):
        heavy = f"import sys; print(sorted(m for m in {LIBRARIES!r} if m in sys.modules))"
        assert kernel_execute(kc, f"%load_ext ct2_magics\n{heavy}") == "[]\n"  # %load_ext stays light
        first = interrupt(km, kc, f"%llama load {model}")
        assert first["status"] == "ok" or (first["ename"] == "LlamaInterrupted" and one_line(first)), first
        kernel_execute(kc, UNTRIP)
        assert kernel_execute(kc, f"%llama load {model}", timeout=60).endswith(" on cpu (int8_float32).\n")
        asked = "from ct2_magics import llama; print(type(llama.ask('Hello', max_tokens=3)).__name__, 'torch' in sys.modules)"
        first["after"] = kernel_execute(kc, asked, timeout=60)
        assert first["after"].startswith("str ")
        return first


def trip_at(n: int, prefix: str = ""):
    def interrupt(km, kc, line: str) -> dict:
        code = TRIP.format(prefix=prefix, n=n) + f"\nget_ipython().run_line_magic('llama', {line[7:]!r})"
        return reply_to(kc, kc.execute(code, stop_on_error=False), timeout=120)
    return interrupt


def after(seconds: float):
    def interrupt(km, kc, line: str) -> dict:
        msg_id = kc.execute(line, stop_on_error=False)
        wait_for_iopub(kc, msg_id, "execute_input")
        time.sleep(seconds)
        km.interrupt_kernel()
        return reply_to(kc, msg_id, timeout=120)
    return interrupt


HELD = "the load stopped once its libraries were imported"


def test_a_first_load_interrupted_inside_an_import_leaves_loading_working(demo_model):
    n = random.Random(2005).randint(20, 400)  # a demo load imports ~550 modules that a fresh kernel lacks
    first = load_interrupted_then_again(str(demo_model), trip_at(n))
    assert first["status"] == "error", f"the press at import {n} came after the load"
    assert first["after"] == "str False\n"  # its tokenizer loads without AutoTokenizer, so torch stays out


@pytest.fixture(scope="module")
def auto_tokenizer_model(demo_model, tmp_path_factory) -> str:
    """The demo model with a tokenizer_config.json naming LlamaTokenizerFast: it loads through AutoTokenizer."""
    path = tmp_path_factory.mktemp("auto") / "model"
    shutil.copytree(demo_model, path)
    config = json.loads((path / "tokenizer_config.json").read_text())
    (path / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "LlamaTokenizerFast"}))
    return str(path)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_a_first_load_interrupted_inside_torch_leaves_loading_working(auto_tokenizer_model):
    # AutoTokenizer imports transformers' configuration_utils, which imports torch (~750 modules) when installed
    n = random.Random(2009).randint(20, 600)
    first = load_interrupted_then_again(auto_tokenizer_model, trip_at(n, "torch."))
    assert first["status"] == "error" and first["evalue"].startswith(HELD), first
    assert first["after"] == "str True\n"


@pytest.mark.slow
@pytest.mark.parametrize("n", random.Random(2006).sample(range(1, 800), 6))
def test_a_first_load_interrupted_at_random_imports_leaves_loading_working(demo_model, n):
    load_interrupted_then_again(str(demo_model), trip_at(n))


@pytest.mark.slow
@pytest.mark.parametrize("seconds", [round(random.Random(2007 + i).uniform(0.03, 3.0), 3) for i in range(6)])
def test_a_first_load_interrupted_at_random_times_leaves_loading_working(auto_tokenizer_model, seconds):
    load_interrupted_then_again(auto_tokenizer_model, after(seconds))
