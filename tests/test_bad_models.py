"""Bad model files for the GGUF and safetensors loaders: each is one line, and the loaded model stays."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from IPython.core.error import UsageError

from helpers import run, run_ok
from tinymodels import Tiny, random_weights, train_tokenizer, vocab_of, write_gguf, write_safetensors


@pytest.fixture(scope="module")
def bad(tmp_path_factory, demo_model) -> dict[str, Path]:
    import gguf

    root = tmp_path_factory.mktemp("bad-models")
    tokenizer = train_tokenizer()
    vocab = vocab_of(tokenizer)
    shape = Tiny()
    weights = random_weights(shape, len(vocab[0]))
    good = write_gguf(root / "good.gguf", shape, weights, vocab)
    data = good.read_bytes()
    (root / "truncated.gguf").write_bytes(data[: len(data) // 2])
    (root / "header-only.gguf").write_bytes(data[:200])
    (root / "notes.gguf").write_text("these are my notes, not a model")
    write_gguf(root / "gemma.gguf", shape, weights, vocab, arch="gemma2")
    # A tensor in a type the gguf package cannot dequantize (Q8_1: 40 bytes per block of 32 values).
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_1]
    q81 = np.zeros((shape.intermediate, shape.hidden // block * size), dtype=np.uint8)
    odd = {k: v for k, v in weights.items() if k != "model.layers.0.mlp.up_proj.weight"}
    write_gguf(root / "q8_1.gguf", shape, odd, vocab,
               extra_tensors={"blk.0.ffn_up.weight": (q81, gguf.GGMLQuantizationType.Q8_1)})
    write_gguf(root / "sentencepiece.gguf", shape, weights, vocab, tokenizer_model="llama")
    st = root / "gemma-st"
    write_safetensors(st, shape, weights, tokenizer)
    config = json.loads((st / "config.json").read_text())
    config["architectures"] = ["GemmaForCausalLM"]
    (st / "config.json").write_text(json.dumps(config))
    broken_st = write_safetensors(root / "broken-st", shape, weights, tokenizer)
    (broken_st / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")
    pickles = root / "pickles"
    pickles.mkdir()
    (pickles / "config.json").write_text(json.dumps(config | {"architectures": ["LlamaForCausalLM"]}))
    (pickles / "pytorch_model.bin").write_bytes(b"pickle")
    several = root / "several"
    several.mkdir()
    for q in ("F32", "Q8_0"):
        shutil.copy(good, several / f"m.{q}.gguf")
    return {"good": good, "truncated": root / "truncated.gguf", "header_only": root / "header-only.gguf",
            "notes": root / "notes.gguf", "gemma": root / "gemma.gguf", "q8_1": root / "q8_1.gguf",
            "spm": root / "sentencepiece.gguf", "gemma_st": st, "broken_st": broken_st, "pickles": pickles,
            "several": several, "demo": demo_model}


CATALOGUE = {
    "truncated GGUF": ("%llama load {truncated}", "not a complete GGUF"),
    "GGUF cut inside its header": ("%llama load {header_only}", "not a complete GGUF"),
    "a text file named .gguf": ("%llama load {notes}", "not a GGUF file"),
    "GGUF of an unsupported architecture": ("%llama load {gemma}", "gemma2.*llama and qwen2"),
    "GGUF quantization gguf cannot dequantize": ("%llama load {q8_1}", "Q8_1"),
    "GGUF with a SentencePiece tokenizer": ("%llama load {spm}", "SentencePiece"),
    "safetensors of an unsupported architecture": ("%llama load {gemma_st}", "GemmaForCausalLM.*LlamaForCausalLM"),
    "unreadable safetensors file": ("%llama load {broken_st}", "safetensors"),
    "folder with pickled weights only": ("%llama load {pickles}", "pickled"),
    "folder of several GGUFs without --file": ("%llama load {several}", "--file"),
    "--file names a missing quantization": ("%llama load {several} --file Q2_K", "Q8_0"),
    "--file on a file": ("%llama load {good} --file Q8_0", "already a file"),
    "--quantization on a converted model": ("%llama load {demo} --quantization float16", "converted already"),
    "unknown --quantization": ("%llama load {good} --quantization int4", "int4.*int8"),
    "--revision on a local file": ("%llama load {good} --revision main", "revision"),
}


@pytest.mark.parametrize("case", sorted(CATALOGUE))
def test_bad_model(shell, llama, capsys, bad, case):
    line, expected = CATALOGUE[case]
    shell.run_line_magic("llama", "load demo")
    run_ok(shell, "%%llama -n 3\nkeep me")
    generator, before = llama.generator, list(llama.chat().turns)
    capsys.readouterr()
    result = run(shell, line.format(**{k: str(v) for k, v in bad.items()}))
    err = capsys.readouterr().err
    assert isinstance(result.error_in_exec, UsageError), err
    assert err.startswith("UsageError: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert re.search(expected, err), err
    assert llama.generator is generator and generator.model_is_loaded and llama.engine.name == "demo"
    assert list(llama.chat().turns) == before
    assert run(shell, "%%llama -n 3\nstill works").success


def test_a_good_gguf_from_the_same_writer_loads(shell, llama, bad):
    """The bad files above differ from a loadable one in the one way each names."""
    assert run(shell, f"%llama load {bad['good']}").success
    assert run(shell, "%%llama -n 3\nhi").success


@pytest.fixture
def tiny_disk(tmp_path):
    """A 2 MB filesystem (tmpfs), where the converted cache cannot fit; skipped where mounting is not allowed."""
    mount = tmp_path / "tiny-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_not_enough_disk_is_one_line_and_leaves_nothing(shell, llama, capsys, tiny_disk, monkeypatch, smollm2_gguf):
    shell.run_line_magic("llama", "load demo")
    generator = llama.generator
    monkeypatch.setenv("CT2_MAGICS_CACHE", str(tiny_disk))
    capsys.readouterr()
    result = run(shell, f"%llama load {smollm2_gguf}")
    err = capsys.readouterr().err
    assert isinstance(result.error_in_exec, UsageError) and err.count("\n") == 1 and "Not enough disk" in err, err
    assert llama.generator is generator and generator.model_is_loaded
    assert not [p for p in tiny_disk.rglob("*") if p.is_file()]

