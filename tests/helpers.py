"""Small helpers for driving a real shell in tests."""

from __future__ import annotations

import _thread
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any


def run(shell: Any, source: str, cell_id: str | None = None) -> Any:
    """Run a cell the way a front end does, with an optional cell id."""
    return shell.run_cell(source, store_history=True, cell_id=cell_id)


def run_ok(shell: Any, source: str, cell_id: str | None = None) -> Any:
    """Run a cell that must succeed: its error, if any, is raised here (jupysql's TestingShell does this
    for every cell; a cell expected to fail is run with `run` and its error checked)."""
    result = run(shell, source, cell_id)
    result.raise_error()
    return result


def published(shell: Any) -> list[dict]:
    return list(shell.display_pub.outputs)


def html_text(html: str) -> str:
    """The visible text of an HTML fragment, whitespace runs as one space (what a reader sees)."""
    from html.parser import HTMLParser

    parts: list[str] = []
    skip = [0]

    class Text(HTMLParser):
        def handle_starttag(self, tag, attrs):
            skip[0] += tag == "style"

        def handle_endtag(self, tag):
            skip[0] -= tag == "style"

        def handle_data(self, data):
            if not skip[0]:
                parts.append(data)

    Text(convert_charrefs=True).feed(html)
    return " ".join("".join(parts).split())


def html_tags(html: str) -> list[tuple[str, dict[str, str]]]:
    """Every element of an HTML fragment as (tag, attributes), in document order."""
    from html.parser import HTMLParser

    found: list[tuple[str, dict[str, str]]] = []

    class Tags(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.append((tag, {k: v or "" for k, v in attrs}))

    Tags(convert_charrefs=True).feed(html)
    return found


def htmls(shell: Any) -> list[str]:
    """The text/html of every display and display update, in order."""
    return [o["data"]["text/html"] for o in shell.display_pub.outputs if "text/html" in o["data"]]


def plains(shell: Any) -> list[str]:
    """The text/plain of every display and display update that has one, in order."""
    return [o["data"]["text/plain"] for o in shell.display_pub.outputs if "text/plain" in o["data"]]


def reply_outputs(shell: Any) -> list[dict]:
    """Outputs that belong to the streamed reply (they all carry a display id)."""
    return [o for o in shell.display_pub.outputs if (o.get("transient") or {}).get("display_id")]


def reference_greedy(model_dir: Any, messages: list[dict], max_tokens: int) -> str:
    """What a bare greedy generate_batch writes for `messages`, with the model's end tokens."""
    import ctranslate2
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tok.encode(text, add_special_tokens=False)
    gen = ctranslate2.Generator(str(model_dir), device="cpu", compute_type="int8")
    end = [t for t in ("<|eot_id|>", "<|end_of_text|>", "<|eom_id|>") if t in tok.get_vocab()]
    res = gen.generate_batch([tok.convert_ids_to_tokens(ids)], max_length=max_tokens, sampling_topk=1,
                             end_token=end, include_prompt_in_result=False)
    return tok.decode(res[0].sequences_ids[0], skip_special_tokens=True)


def wait_idle(generator: Any, timeout: float = 2.0) -> bool:
    """True once CTranslate2 has no active or queued batch (decoding really stopped) within `timeout`."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if generator.num_active_batches == 0 and generator.num_queued_batches == 0:
            return True
        time.sleep(0.002)
    return False


def wait_for(predicate: Any, timeout: float = 10.0) -> bool:
    """True once predicate() is true, within `timeout` seconds."""
    deadline = time.perf_counter() + timeout
    while not predicate():
        if time.perf_counter() > deadline:
            return False
        time.sleep(0.005)
    return True


@contextlib.contextmanager
def no_hang(seconds: float) -> Iterator[None]:
    """Fail, instead of hanging the suite, if the block takes longer than `seconds`."""
    import pytest

    timer = threading.Timer(seconds, _thread.interrupt_main)
    timer.start()
    try:
        yield
    except KeyboardInterrupt:
        pytest.fail(f"still waiting after {seconds:.0f} s: the model was never handed back")
    finally:
        timer.cancel()


def kernel_execute(kc: Any, code: str, timeout: float = 120) -> str:
    """Run code in a real kernel (a jupyter_client KernelClient); its stdout; fail on an error."""
    out: list[str] = []

    def hook(msg: dict) -> None:
        if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
            out.append(msg["content"]["text"])

    reply = kc.execute_interactive(code, timeout=timeout, output_hook=hook)
    assert reply["content"]["status"] == "ok", reply["content"]
    return "".join(out)
