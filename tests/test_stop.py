"""A kernel interrupt or a stop really ends decoding, and keeps the partial reply."""

from __future__ import annotations

import _thread
import threading
import time

from ct2_magics.notebook.render import with_mark
from helpers import wait_idle, reply_outputs, run


def test_interrupt_stops_decoding_and_keeps_the_partial_reply(shell, long_model, sigint, capsys):
    from ct2_magics import llama

    shell.run_line_magic("llama", f"load {long_model}")
    fired = threading.Event()

    def interrupt_when_streaming() -> None:
        while not llama.busy or len(reply_outputs(shell)) < 2:
            time.sleep(0.005)
        time.sleep(0.3)
        fired.set()
        _thread.interrupt_main()

    threading.Thread(target=interrupt_when_streaming, daemon=True).start()
    capsys.readouterr()
    result = run(shell, "%%llama -n 3000\nWrite forever.")
    assert fired.is_set() and isinstance(result.error_in_exec, KeyboardInterrupt)
    shown = capsys.readouterr()
    said = (shown.out + shown.err).strip().splitlines()
    assert said == ["KeyboardInterrupt: the reply stopped; what it wrote is kept in its chat, marked interrupted."]
    assert wait_idle(llama.generator, 1.0), "decoding went on after the interrupt"
    last = llama.chat().turns[-1]
    assert last.status == "interrupted" and 0 < len(last.assistant)
    final = reply_outputs(shell)[-1]
    assert final["data"]["text/plain"].endswith("[interrupted]")
    assert final["data"]["text/html"].endswith('<p class="ct2-end"><em>interrupted</em></p></div>')
    assert final["data"]["text/plain"] == with_mark(last.assistant, "interrupted")  # the cell shows the turn
    assert final["metadata"]["ct2_magics"]["status"] == "interrupted"
    assert final["metadata"]["ct2_magics"]["reply_tokens"] < 3000
    assert run(shell, "%%llama -n 5\nnext").success
    assert llama.chat().turns[-1].status == "cut"  # the long model never ends a reply: -n 5 cuts it


def test_closing_a_python_stream_stops_decoding(llama, long_model):
    llama.load(str(long_model))
    response = llama.stream("go on", max_tokens=3000)
    pieces = []
    for piece in response:
        pieces.append(piece)
        if len(pieces) == 10:
            break
    response.close()
    assert wait_idle(llama.generator)
    assert llama.chat().turns[-1].status == "stopped"
    assert llama.chat().turns[-1].assistant == "".join(pieces) == response.text
    assert list(response) == pieces  # a finished reply replays what it wrote
