"""The storage types, one table: int16 refused alike by `%llama load`, `%llama convert` and `ct2-magics convert`;
one rule for the default (int8 into the cache, int8_float16 into a folder of your choice); help from the table."""

from __future__ import annotations

from pathlib import Path

import pytest
from IPython.core.error import UsageError

from ct2_magics.cli import main
from ct2_magics.models.modelfile import saved_compute_type
from ct2_magics.models.quantization import STORAGE_TYPES
from helpers import run
from tinymodels import Tiny, random_weights, train_tokenizer, write_gguf


@pytest.fixture(scope="module")
def gguf(tmp_path_factory) -> Path:
    tokenizer = train_tokenizer()
    shape = Tiny()
    return write_gguf(tmp_path_factory.mktemp("quant-src") / "tiny.gguf", shape,
                      random_weights(shape, tokenizer.get_vocab_size(), seed=5), tokenizer)


def _usage_line(capsys, result) -> str:
    err = capsys.readouterr().err
    assert isinstance(result.error_in_exec, UsageError)
    assert err.startswith("UsageError: ") and err.count("\n") == 1 and "Traceback" not in err
    return err.removeprefix("UsageError: ").strip()


def test_int16_is_refused_in_one_line_by_load_and_both_converts(shell, llama, gguf, tmp_path, capsys):
    capsys.readouterr()
    load = _usage_line(capsys, run(shell, f"%llama load {gguf} --quantization int16"))
    magic = _usage_line(capsys, run(shell, f"%llama convert {gguf} {tmp_path / 'out'} --quantization int16"))
    assert main(["convert", str(gguf), str(tmp_path / "out"), "--quantization", "INT16"]) == 2
    cli = capsys.readouterr().err
    assert cli.count("\n") == 1 and "Traceback" not in cli
    assert load == magic == cli.removeprefix("ct2-magics: error: ").strip()
    assert "int16" in load and "one scale" in load and "gibberish" in load
    assert llama.engine is None and not (tmp_path / "out").exists()


def test_the_default_is_int8_in_the_cache_and_int8_float16_in_a_folder(llama, gguf, tmp_path, capsys):
    assert main(["convert", str(gguf), str(tmp_path / "cli")]) == 0
    assert saved_compute_type(tmp_path / "cli") == "int8_float16"
    assert "int8_float16" in capsys.readouterr().out
    llama.load(str(gguf))
    # int8 keeps the other tensors in float32, which model.bin shows as int8_float32
    assert "-int8-" in llama.engine.model_dir.name and saved_compute_type(llama.engine.model_dir) == "int8_float32"


def test_convert_help_offers_the_table_and_names_the_default(capsys):
    assert main(["convert", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    offered = text.split("weight type: ", 1)[1].split(", or none", 1)[0]
    assert offered.startswith("int8_float16 (default), ")
    assert sorted(t.strip() for t in offered.replace(" (default)", "").split(",")) == sorted(STORAGE_TYPES)
    assert "int16" not in STORAGE_TYPES
