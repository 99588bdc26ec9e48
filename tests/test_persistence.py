"""Chats that survive a kernel restart: autosave per notebook, %llama save / restore, bad save files."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from helpers import kernel_execute, run, run_ok, wait_for
from IPython.core.error import UsageError

from ct2_magics.core import session as session_module
from ct2_magics.notebook import chat_files, store


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch) -> Path:
    """Save files go to a fresh directory; no notebook is known unless a test says so."""
    monkeypatch.setenv("CT2_MAGICS_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    return tmp_path / "data"


def open_notebook(shell, path: Path, fresh_kernel: bool = True) -> None:
    """Load the extension as a kernel running the notebook at `path` does (after a restart: a new session)."""
    shell.run_line_magic("unload_ext", "ct2_magics")
    if fresh_kernel:
        session_module.drop_session()
    shell.user_ns["__session__"] = str(path)
    shell.run_line_magic("load_ext", "ct2_magics")


@pytest.fixture
def notebook(shell, tmp_path):
    """The shell as the kernel of tmp_path/nb.ipynb, with the demo model loaded; returns this kernel's save file."""
    path = tmp_path / "nb.ipynb"
    open_notebook(shell, path)
    shell.run_line_magic("llama", "load demo")
    return chat_files.kernel_file(str(path), chat_files.KERNEL)


def saved(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def turns(data: dict, chat: str = "default") -> list[dict]:
    return data["chats"][chat]["turns"]


def one_line(text: str) -> str:
    assert text.count("\n") == 1 and "Traceback" not in text, text
    return text


def one_usage_line(capsys, result) -> str:
    assert isinstance(result.error_in_exec, UsageError)
    return one_line(capsys.readouterr().err)


# -- by hand --------------------------------------------------------------------------------------
def test_save_and_restore_by_hand(shell, llama, tmp_path, capsys):
    shell.run_line_magic("llama", "load demo")
    assert run(shell, "%%llama -n 3\nhello").success
    assert run(shell, "%%llama -n 3\nand again").success
    assert run(shell, "%%llama -n 3 --chat side -s 'Be brief.'\nside question").success
    before = {name: llama.history(name) for name in ("default", "side")}
    file = tmp_path / "my chats.json"
    capsys.readouterr()

    assert run(shell, f"%llama save '{file}'").success
    assert one_line(capsys.readouterr().out) == f"Saved 2 chats (3 turns) to {file}.\n"
    data = saved(file)
    assert data["version"] == 1 and data["notebook"] is None
    assert data["chats"]["side"]["system"] == "Be brief."
    assert set(turns(data)[0]) == {"user", "assistant", "status", "cell_id"}
    assert turns(data)[1]["user"] == "and again" and turns(data)[1]["status"] in ("complete", "cut")

    run_ok(shell, "%llama reset")
    capsys.readouterr()
    assert run(shell, f"%llama restore '{file}' --chat default").success
    assert one_line(capsys.readouterr().out) == f"Restored 1 chat (2 turns) from {file}.\n"
    assert llama.history() == before["default"]

    run_ok(shell, "%%llama -n 3 --chat side\nsomething else")
    capsys.readouterr()
    assert run(shell, f"%llama restore '{file}'").success
    out = one_line(capsys.readouterr().out)
    assert "Restored 2 chats (3 turns)" in out and "Replaced what chat 'default', 'side' held before." in out
    assert {name: llama.history(name) for name in ("default", "side")} == before

    assert run(shell, f"%llama save '{tmp_path / 'one.json'}' --chat side").success
    assert list(saved(tmp_path / "one.json")["chats"]) == ["side"]


def test_save_and_restore_mistakes_are_one_line(shell, llama, tmp_path, capsys):
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "good.json").write_text(json.dumps({"version": 1, "notebook": None, "chats": {}}))
    capsys.readouterr()
    assert "No such file" in one_usage_line(capsys, run(shell, f"%llama restore {tmp_path / 'missing.json'}"))
    assert "not valid JSON" in one_usage_line(capsys, run(shell, f"%llama restore {tmp_path / 'bad.json'}"))
    assert (tmp_path / "bad.json").exists()  # a file given by hand is never moved
    assert "no chat named 'x'" in one_usage_line(capsys, run(shell, f"%llama restore {tmp_path / 'good.json'} --chat x"))
    assert "no chat named 'x'" in one_usage_line(capsys, run(shell, f"%llama save {tmp_path / 'out.json'} --chat x"))
    (tmp_path / "a_file").write_text("")
    assert "Could not write" in one_usage_line(capsys, run(shell, f"%llama save {tmp_path / 'a_file' / 'out.json'}"))
    assert "required: file" in one_usage_line(capsys, run(shell, "%llama save"))


# -- autosave -------------------------------------------------------------------------------------
def test_autosave_writes_after_each_change(notebook, shell, llama, data_dir, tmp_path):
    assert notebook.parent == data_dir / "chats" and notebook.name.startswith("nb-")
    assert not notebook.exists()
    assert run(shell, "%%llama -n 3\nfirst").success
    data = saved(notebook)
    assert data["version"] == 1 and data["notebook"] == str(tmp_path / "nb.ipynb")
    assert [t["user"] for t in turns(data)] == ["first"]
    assert run(shell, "%%llama -n 3\nsecond").success
    assert [t["assistant"] for t in turns(saved(notebook))] == [m["content"] for m in llama.history()[1::2]]

    assert run(shell, "%%llama -n 3 --chat later\na chat made after loading").success
    assert len(turns(saved(notebook), "later")) == 1
    run_ok(shell, "%llama system Answer in French.")
    assert saved(notebook)["chats"]["default"]["system"] == "Answer in French."
    run_ok(shell, "%llama undo")
    assert len(turns(saved(notebook))) == 1
    run_ok(shell, "%llama reset --chat later")
    assert turns(saved(notebook), "later") == []
    assert chat_files.notebook_files(str(tmp_path / "nb.ipynb")) == [notebook]
    assert not [p for p in notebook.parent.iterdir() if p.name.endswith(".tmp")]  # no temp file left behind


def test_reload_restores_the_notebooks_chats(notebook, shell, llama, tmp_path, capsys):
    run_ok(shell, "%%llama -n 3\nfirst")
    run_ok(shell, "%%llama -n 3 --chat side -s 'Be brief.'\nside")
    before = {name: llama.history(name) for name in ("default", "side")}
    capsys.readouterr()

    open_notebook(shell, tmp_path / "nb.ipynb")  # a restarted kernel: a new session, the same notebook
    assert one_line(capsys.readouterr().out) == "Restored 2 chats (2 turns) saved for this notebook.\n"
    assert {name: session_module.get_session().history(name) for name in ("default", "side")} == before

    shell.run_line_magic("reload_ext", "ct2_magics")  # the same session: its chats are kept, not doubled
    assert session_module.get_session().history() == before["default"]
    shell.run_line_magic("llama", "load demo")
    run_ok(shell, "%%llama -n 3\nafter the restart")
    assert len(turns(saved(notebook))) == 2  # restored chats go on saving

    open_notebook(shell, tmp_path / "other.ipynb")
    assert len(session_module.get_session().chats) == 0  # another notebook has its own chats


def test_unload_stops_saving(notebook, shell, llama):
    run_ok(shell, "%%llama -n 3\nfirst")
    shell.run_line_magic("unload_ext", "ct2_magics")
    llama.chat().reset()
    assert len(turns(saved(notebook))) == 1
    assert llama.chat().observers == 0 and llama.chats.on_new == []


def test_a_corrupt_file_is_set_aside_with_one_line(shell, tmp_path, capsys):
    path = tmp_path / "nb.ipynb"
    file = chat_files.notebook_file(str(path))
    file.parent.mkdir(parents=True)
    file.write_text('{"version": 1, "chats": {"default": {"turns": [{"user": "cut sh')
    capsys.readouterr()
    open_notebook(shell, path)
    line = one_line(capsys.readouterr().out)
    backups = list(file.parent.glob(f"{file.stem}.corrupt-*.json"))
    assert "Could not read this notebook's saved chats (not valid JSON" in line and str(backups[0]) in line
    assert backups[0].read_text().endswith("cut sh") and not file.exists()
    llama = session_module.get_session()
    assert len(llama.chats) == 0
    shell.run_line_magic("llama", "load demo")
    assert run(shell, "%%llama -n 3\nhello").success
    assert len(turns(saved(chat_files.kernel_file(str(path), chat_files.KERNEL)))) == 1 and backups[0].exists()


@pytest.mark.parametrize("content", [
    b"\xff\xfe not utf-8",
    b'{"version": 2, "notebook": null, "chats": {}}',
    b'{"version": 1, "chats": {"default": {"turns": [{"user": 1, "assistant": "a"}]}}}',
    b"[]",
    # well-formed JSON, malformed chats: wrong types, unknown fields, huge or broken text
    b'{"version": 1, "chats": {"default": {"system": 5, "turns": []}}}',
    b'{"version": 1, "chats": {"default": {"turns": [{"user": "u", "assistant": "a", "evil": "x"}]}}}',
    b'{"version": 1, "chats": {"default": {"turns": [], "colour": "red"}}}',
    b'{"version": 1, "chats": {}, "extra": true}',
    b'{"version": 1, "chats": {"default": {"turns": [{"user": "\\ud800", "assistant": "a"}]}}}',
    b'{"version": 1, "chats": {"default": {"turns": [{"user": "u", "assistant": "a", "status": "<b>done</b>"}]}}}',
    b'{"version": 1, "chats": {" ": {"turns": []}}}',
    b'{"version": 1, "chats": {"default": {"turns": [{"user": "u", "assistant": "a", "cell_id": ["x"]}]}}}',
    b'{"version": 1, "chats": {"default": {"turns": [{"user": "' + b"x" * 1_000_001 + b'", "assistant": "a"}]}}}',
], ids=lambda c: c[:60].decode("utf-8", "replace"))
def test_other_unreadable_files_are_set_aside_too(shell, tmp_path, capsys, content):
    path = tmp_path / "nb.ipynb"
    file = chat_files.notebook_file(str(path))
    file.parent.mkdir(parents=True)
    file.write_bytes(content)
    capsys.readouterr()
    open_notebook(shell, path)
    assert "Could not read this notebook's saved chats" in one_line(capsys.readouterr().out)
    assert [p.read_bytes() for p in file.parent.glob("*.json")] == [content]
    assert len(session_module.get_session().chats) == 0
    shell.run_line_magic("llama", "load demo")
    assert run(shell, "%%llama -n 2\nhello").success  # the next request works


def test_autosave_off_writes_nothing(notebook, shell, llama, tmp_path):
    llama.settings.autosave = False
    assert run(shell, "%%llama -n 3\nhello").success
    assert not notebook.parent.exists()

    llama.settings.autosave = True
    run_ok(shell, "%%llama -n 3\nsaved now")
    assert len(turns(saved(notebook))) == 2
    shell.config.LlamaSettings.autosave = False  # as from ipython_config.py: no restore, no saving
    open_notebook(shell, tmp_path / "nb.ipynb")
    shell.run_line_magic("llama", "load demo")
    assert len(session_module.get_session().chats) == 0
    run_ok(shell, "%%llama -n 3\nnot saved")
    assert len(turns(saved(notebook))) == 2


def test_an_unwritable_data_dir_warns_once(shell, tmp_path, monkeypatch, capsys):
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv("CT2_MAGICS_DATA", str(tmp_path / "a_file" / "data"))
    open_notebook(shell, tmp_path / "nb.ipynb")
    shell.run_line_magic("llama", "load demo")
    capsys.readouterr()
    assert run(shell, "%%llama -n 3\nhello").success
    line = one_line(capsys.readouterr().out)
    assert line.startswith("Could not save this notebook's chats") and "kept in memory only" in line
    assert run(shell, "%%llama -n 3\nagain").success
    assert "Could not save" not in capsys.readouterr().out
    assert len(session_module.get_session().chat().turns) == 2


def test_outside_a_notebook_nothing_is_saved(shell, llama, data_dir):
    shell.run_line_magic("llama", "load demo")
    assert run(shell, "%%llama -n 3\nhello").success
    assert not data_dir.exists()


def test_save_files_are_named_per_notebook_path(tmp_path, monkeypatch):
    monkeypatch.setenv("CT2_MAGICS_DATA", str(tmp_path / "root"))
    a, b = chat_files.notebook_file("/x/Analysis (draft).ipynb"), chat_files.notebook_file("/y/Analysis (draft).ipynb")
    assert a != b and a.parent == b.parent == tmp_path / "root" / "chats"
    assert a.name.startswith("Analysis_draft-") and a.suffix == ".json"
    assert chat_files.notebook_file("/x/Analysis (draft).ipynb") == a

    class Shell:
        user_ns = {"__session__": "console-1-3b6a0f"}

    assert chat_files.notebook_of(Shell()) is None
    Shell.user_ns = {"__session__": "nb.ipynb"}
    assert chat_files.notebook_of(Shell()) == os.path.abspath("nb.ipynb")
    monkeypatch.delenv("CT2_MAGICS_DATA")
    assert "ct2-magics" in str(chat_files.data_root())


def test_saving_a_thousand_turn_chat_is_fast(tmp_path):
    from ct2_magics.core.conversation import Chat, Turn

    chat = Chat("long", system="Be helpful.",
                turns=[Turn("question %d " % i + "x" * 300, "answer %d " % i + "y" * 2000) for i in range(1000)])
    file = tmp_path / "long.json"
    chat_files.write(file, [chat])
    start = time.perf_counter()
    for _ in range(5):
        chat_files.write(file, [chat])
    per_save = (time.perf_counter() - start) / 5
    assert per_save < 0.5, per_save  # about 10 ms here; generous for busy CI machines
    assert chat_files.read(file)[0].turns == chat.turns


# -- %llama explain and other magics' usage errors --------------------------------------------------
def test_explain_skips_another_magics_usage_error(shell, llama, capsys):
    shell.run_line_magic("llama", "load demo")
    run(shell, "[1, 2, 3][10]")
    assert isinstance(run(shell, "%load_ext").error_in_exec, UsageError)  # not ours: %llama never ran
    assert run(shell, "%llama explain -n 3").success
    prompt = [m["content"] for m in llama.history("explain") if m["role"] == "user"][-1]
    assert "IndexError" in prompt


def test_load_and_unload_leave_the_shells_events_as_they_were(ipython):
    before = {name: list(fns) for name, fns in ipython.events.callbacks.items()}
    ipython.run_line_magic("load_ext", "ct2_magics")
    assert len(ipython.events.callbacks["post_run_cell"]) == len(before["post_run_cell"]) + 1
    ipython.run_line_magic("unload_ext", "ct2_magics")
    assert {name: list(fns) for name, fns in ipython.events.callbacks.items()} == before


# -- a real kernel, killed mid-reply --------------------------------------------------------------



def _start_kernel(env: dict):
    from jupyter_client import KernelManager

    km = KernelManager(kernel_name="python3")
    km.start_kernel(env=env)
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    return km, kc


def test_a_killed_kernel_gets_every_completed_turn_back(tmp_path, demo_model, long_model):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CT2_MAGICS_DATA": str(tmp_path / "data"),
           "CT2_MAGICS_CACHE": os.environ["CT2_MAGICS_CACHE"], "JPY_SESSION_NAME": str(tmp_path / "nb.ipynb")}
    history = "import json; from ct2_magics import llama; print(json.dumps(llama.history()))"
    km, kc = _start_kernel(env)
    try:
        kernel_execute(kc, "%load_ext ct2_magics")
        kernel_execute(kc, "%llama load demo")
        kernel_execute(kc, "%%llama -n 5\nHello there.")
        kernel_execute(kc, "%%llama -n 5\nTell me more.")
        before = json.loads(kernel_execute(kc, history))
        assert len(before) == 4

        kernel_execute(kc, f"%llama load {long_model}")  # a model that never ends a reply by itself
        msg_id = kc.execute("%%llama -n 3000\nNow a very long story.")
        deadline = time.monotonic() + 60
        streaming = False
        while not streaming and time.monotonic() < deadline:
            msg = kc.get_iopub_msg(timeout=60)
            streaming = msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "update_display_data"
        assert streaming
        km.signal_kernel(signal.SIGKILL)
        km.shutdown_kernel(now=True)
    finally:
        kc.stop_channels()
        if km.has_kernel:
            km.shutdown_kernel(now=True)

    km, kc = _start_kernel(env)
    try:
        assert kernel_execute(kc, "%load_ext ct2_magics") == "Restored 1 chat (2 turns) saved for this notebook.\n"
        assert json.loads(kernel_execute(kc, history)) == before
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


# -- store.put goes through the chat ---------------------------------------------------------------
def test_restoring_a_chat_is_one_change_under_its_lock(llama):
    import threading

    from ct2_magics.core.conversation import Chat, Turn

    chat = llama.chat()
    chat.set_system("old")
    chat.record(Turn("old question", "old answer"))
    told: list[list[dict]] = []
    chat.observe(lambda c: told.append(c.messages()))
    seen: list[list[dict]] = []

    def turns():  # a reader looks at the chat while the new turns are still being read
        yield Turn("new question", "new answer")
        reader = threading.Thread(target=lambda: seen.append(chat.messages()))
        reader.start()
        reader.join(0.5)
        yield Turn("another", "one")

    old = [{"role": "system", "content": "old"}, *Turn("old question", "old answer").messages()]
    new = [{"role": "system", "content": "new"}, *Turn("new question", "new answer").messages(),
           *Turn("another", "one").messages()]
    assert store.put(llama.chats, Chat("default", system="new", turns=turns())) == 1
    assert wait_for(lambda: seen)
    assert seen[0] in (old, new)  # never the new system prompt with the old turns
    assert chat.messages() == new and told == [new]  # observers were told once, of the whole change


# -- two kernels on one notebook ------------------------------------------------------------------
def test_two_real_kernels_on_one_notebook_keep_both_conversations(tmp_path, demo_model):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CT2_MAGICS_DATA": str(tmp_path / "data"),
           "CT2_MAGICS_CACHE": os.environ["CT2_MAGICS_CACHE"], "JPY_SESSION_NAME": str(tmp_path / "nb.ipynb")}
    chats = "import json; from ct2_magics import llama; print(json.dumps({c.name: llama.history(c.name) for c in llama.chats}))"
    (km_a, a), (km_b, b) = _start_kernel(env), _start_kernel(env)
    try:
        assert kernel_execute(a, "%load_ext ct2_magics") == ""
        kernel_execute(a, "%llama load demo")
        kernel_execute(a, "%%llama -n 5\nFrom A, first.")
        warning = kernel_execute(b, "%load_ext ct2_magics")  # the same notebook, open a second time
        assert one_line(warning).startswith("Another kernel is running this notebook")
        kernel_execute(b, "%llama load demo")
        kernel_execute(b, "%%llama -n 5\nFrom B.")
        kernel_execute(a, "%%llama -n 5\nFrom A, second.")
        in_a, in_b = json.loads(kernel_execute(a, chats)), json.loads(kernel_execute(b, chats))
        assert [len(in_a["default"]), len(in_b["default"])] == [4, 2]  # neither kernel took the other's turns
    finally:
        for km, kc in ((km_a, a), (km_b, b)):
            kc.stop_channels()
            km.shutdown_kernel(now=True)

    km, kc = _start_kernel(env)  # both restarted: every turn comes back, each conversation as it was
    try:
        assert kernel_execute(kc, "%load_ext ct2_magics") == ("Restored 2 chats (3 turns) saved for this notebook; another "
                                                       "kernel's chat 'default' came back as 'default-2'.\n")
        assert json.loads(kernel_execute(kc, chats)) == {"default": in_a["default"], "default-2": in_b["default"]}
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    km, kc = _start_kernel(env)  # and once more: the same chats, no turn twice
    try:
        assert kernel_execute(kc, "%load_ext ct2_magics") == "Restored 2 chats (3 turns) saved for this notebook.\n"
        assert json.loads(kernel_execute(kc, chats)) == {"default": in_a["default"], "default-2": in_b["default"]}
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


class Kernel:
    """A kernel's part in saving, in this process: its own session and AutoSaver, on a notebook path."""

    def __init__(self, notebook: Path, name: str) -> None:
        from ct2_magics.core.session import Session

        self.session = Session()
        self.lines: list[str] = []
        self.session.notify = self.lines.append
        self.saver = store.AutoSaver(self.session, str(notebook), kernel=name)
        self.back = self.saver.restore()
        self.saver.start()

    def ask(self, text: str, chat: str = "default") -> None:
        from ct2_magics.core.conversation import Turn

        self.session.chat(chat).record(Turn(text, f"reply to {text}"))

    def history(self) -> dict[str, list[str]]:
        return {c.name: [t.user for t in c.turns] for c in self.session.chats}

    def exit(self) -> None:
        self.saver.close()  # as when its process ends: its save file may be taken over


def test_kernels_writing_at_once_keep_their_own_turns(tmp_path):
    nb = tmp_path / "nb.ipynb"
    a = Kernel(nb, "a")
    a.ask("a1")
    b = Kernel(nb, "b")  # opened while a runs: told so, and a's chats stay a's
    assert b.back == [] and len(b.lines) == 1 and b.lines[0].startswith("Another kernel is running this notebook")
    b.ask("b1")
    a.ask("a2")
    b.ask("b2", chat="side")
    assert a.history() == {"default": ["a1", "a2"]} and b.history() == {"default": ["b1"], "side": ["b2"]}
    b.exit()
    time.sleep(0.05)  # file times are coarse (a clock tick): c's save comes clearly after a's last one

    c = Kernel(nb, "c")  # a still runs: c takes over b's chats only, and says a runs
    assert c.history() == {"default": ["b1"], "side": ["b2"]} and c.saver.renamed == {}
    assert len(c.lines) == 1 and c.lines[0].startswith("Another kernel is running this notebook")
    a.exit()
    c.exit()

    d = Kernel(nb, "d")  # the newest writer keeps the names; a name already taken gets a suffix
    assert d.history() == {"default": ["b1"], "side": ["b2"], "default-2": ["a1", "a2"]}
    assert d.saver.renamed == {"default-2": "default"} and d.lines == []
    assert chat_files.notebook_files(str(nb)) == [d.saver.path]  # the files taken over are gone: no turn comes back twice
    d.exit()
    e = Kernel(nb, "e")
    assert e.history() == d.history() and e.saver.renamed == {}


def test_a_crash_mid_write_or_mid_takeover_loses_nothing_and_doubles_nothing(tmp_path):
    nb = tmp_path / "nb.ipynb"
    a, b = Kernel(nb, "a"), Kernel(nb, "b")
    a.ask("a1")
    time.sleep(0.05)  # file times are coarse: b wrote last, so b's chat keeps its name
    b.ask("b1")
    a.exit()
    b.exit()
    # a died while writing its file again: the half-written temporary file next to it is not a save file
    half = a.saver.path.with_name(f".{a.saver.path.name}.x1y2.tmp")
    half.write_text('{"version": 1, "chats": {"default": {"turns": [{"user": "a2", "assis')
    kept = {p: p.read_bytes() for p in chat_files.notebook_files(str(nb))}

    c = Kernel(nb, "c")
    assert c.history() == {"default": ["b1"], "default-2": ["a1"]} and c.saver.renamed == {"default-2": "default"}
    assert not half.exists() and chat_files.notebook_files(str(nb)) == [c.saver.path]
    c.exit()
    for path, data in kept.items():  # as if c had died after saving what it took over, before removing the old files
        path.write_bytes(data)
    d = Kernel(nb, "d")
    assert d.history() == c.history()  # each turn once
    assert chat_files.notebook_files(str(nb)) == [d.saver.path]


def test_an_unreadable_file_of_one_kernel_is_set_aside_and_the_others_come_back(tmp_path):
    nb = tmp_path / "nb.ipynb"
    a, b = Kernel(nb, "a"), Kernel(nb, "b")
    a.ask("a1")
    b.ask("b1")
    a.exit()
    b.exit()
    a.saver.path.write_text("")  # a power cut after the rename, before the data reached the disk
    c = Kernel(nb, "c")
    assert c.history() == {"default": ["b1"]}
    assert len(c.lines) == 1 and c.lines[0].startswith("Could not read this notebook's saved chats (not valid JSON")
    backup = Path(c.lines[0].split("kept the file as ")[1].split("; ")[0])
    assert backup.exists() and backup.read_text() == "" and backup not in chat_files.notebook_files(str(nb))
    c.exit()
    d = Kernel(nb, "d")  # the file set aside stays aside: it is neither read again nor reported again
    assert d.history() == {"default": ["b1"]} and d.lines == [] and backup.exists()
