"""The conversion cache: keyed by the source's identity, written atomically; and `convert` on GGUF and safetensors."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ct2_magics.cli import main
from helpers import run
from tinymodels import Tiny, random_weights, train_tokenizer, write_gguf, write_safetensors

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cache-src")
    tokenizer = train_tokenizer()
    shape = Tiny()
    weights = random_weights(shape, tokenizer.get_vocab_size(), seed=11)
    folder = root / "gguf-folder"
    folder.mkdir()
    for q in ("F32", "Q8_0"):
        write_gguf(folder / f"tiny.{q}.gguf", shape, weights, tokenizer, qtype=q)
    return {"gguf": write_gguf(root / "tiny.gguf", shape, weights, tokenizer), "folder": folder,
            "safetensors": write_safetensors(root / "st", shape, weights, tokenizer)}


def _load(llama, source: str) -> tuple[Path, list[str]]:
    lines: list[str] = []
    llama.session.notify = lines.append
    llama.unload()
    llama.load(source)
    return llama.engine.model_dir, [line for line in lines if line.startswith("Converted")]


def test_the_cache_entry_follows_the_source_identity(llama, tiny, tmp_path):
    first, converted = _load(llama, str(tiny["gguf"]))
    assert len(converted) == 1 and re.search(r"\(int8\) in \d+\.\d s: \d+\.\d [KMG]B in ", converted[0])
    again, converted = _load(llama, str(tiny["gguf"]))
    assert again == first and converted == []  # same file: no second conversion

    copy = tmp_path / "tiny.gguf"
    copy.write_bytes(tiny["gguf"].read_bytes())
    elsewhere, converted = _load(llama, str(copy))
    assert elsewhere != first and len(converted) == 1  # another path is another source
    os.utime(copy, ns=(time.time_ns(), time.time_ns() + 10**9))
    touched, converted = _load(llama, str(copy))
    assert touched not in (first, elsewhere) and len(converted) == 1  # so is a file changed in place


def test_storage_type_follows_quantization_or_compute_type(llama, tiny):
    llama.load(str(tiny["gguf"]), quantization="float32")
    assert llama.engine.compute_type == "float32" and "float32" in llama.engine.model_dir.name
    llama.load(str(tiny["gguf"]), compute_type="float32")
    assert "float32" in llama.engine.model_dir.name
    llama.load(str(tiny["gguf"]))
    assert "-int8-" in llama.engine.model_dir.name


def test_a_folder_of_ggufs_with_file(shell, llama, tiny):
    assert run(shell, f"%llama load {tiny['folder']} --file Q8_0").success
    assert llama.engine.model_dir.name.startswith("tiny.Q8_0.gguf-int8-")


CONVERT = """
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # a background process may ignore SIGINT otherwise
from ct2_magics.models import hub
print(hub.resolve(sys.argv[1], notify=print), flush=True)
"""


def _start(source: Path, cache: Path) -> subprocess.Popen:
    env = {**os.environ, "CT2_MAGICS_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", CONVERT, str(source)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_staging(cache: Path, proc: subprocess.Popen, timeout: float = 120) -> Path:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        staging = [p for p in (cache / "converted").glob(".*.converting") if (p / "tokenizer.json").exists()]
        if staging:
            return staging[0]
        time.sleep(0.01)
    raise AssertionError(f"no conversion under way (exit {proc.poll()}): {proc.stderr.read() if proc.stderr else ''}")


@pytest.mark.parametrize("how", ["interrupt", "kill"])
def test_an_interrupted_conversion_leaves_no_model_and_the_next_load_converts(how, smollm2_gguf, tmp_path, llama):
    cache = tmp_path / "cache"
    proc = _start(smollm2_gguf, cache)
    staging = _wait_for_staging(cache, proc)
    proc.send_signal(signal.SIGINT if how == "interrupt" else signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    done = [p for p in (cache / "converted").iterdir() if not p.name.startswith(".")]
    assert done == []  # no entry that could be taken for a finished model
    if how == "interrupt":
        assert not staging.exists()  # cleaned up on the way out
    proc = _start(smollm2_gguf, cache)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    model_dir = Path(out.strip().splitlines()[-1])
    assert (model_dir / "model.bin").is_file() and "Converted" in out
    assert not list((cache / "converted").glob(".*.converting"))  # what the killed process left is gone too


def test_cli_converts_a_gguf_without_torch(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["convert", str(tiny["gguf"]), str(out), "--quantization", "int8"]) == 0
    printed = capsys.readouterr().out
    assert "without torch" in printed and str(out) in printed
    assert {"model.bin", "tokenizer.json", "tokenizer_config.json", "vocabulary.json"} <= {p.name for p in out.iterdir()}


def test_cli_and_magic_take_the_same_arguments(shell, llama, tiny, tmp_path, capsys):
    assert main(["convert", str(tiny["folder"]), str(tmp_path / "a"), "--file", "Q8_0"]) == 0
    assert run(shell, f"%llama convert {tiny['folder']} {tmp_path / 'b'} --file Q8_0 --quantization none").success
    assert run(shell, f"%llama load {tmp_path / 'b'}").success and llama.engine.compute_type == "float32"
    assert main(["convert", str(tiny["safetensors"]), str(tmp_path / "c")]) == 0
    assert "without torch" in capsys.readouterr().out
    assert run(shell, f"%llama load {tmp_path / 'c'}").success
    assert run(shell, "%%llama -n 3\nhi").success


def test_a_conversion_shows_its_layers_where_a_front_end_asked_for_a_bar(shell, llama, tiny, tmp_path, capsys):
    from ct2_magics.models import hub

    layers = Tiny().layers + 1
    capsys.readouterr()
    hub.resolve(str(tiny["gguf"]), quantization="float32")  # the models layer alone draws nothing
    assert capsys.readouterr().err == ""
    assert run(shell, f"%llama load {tiny['gguf']} --quantization float16").success  # the magic's bar (text here)
    err = capsys.readouterr().err
    assert "Converting tiny" in err and f"/{layers} [" in err and "layer/s" in err
    assert main(["convert", str(tiny["gguf"]), str(tmp_path / "out"), "--quantization", "int8"]) == 0
    assert f"/{layers} [" in capsys.readouterr().err  # the console script's bar
