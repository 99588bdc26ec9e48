"""Transformers folders in safetensors (Llama 3.x with llama3 RoPE scaling, Qwen2) load without torch.

Tiny random models are written with safetensors.numpy. The converted logits are checked against an
exact float64 numpy forward pass always, and against transformers itself where torch is installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import run
from tinymodels import Tiny, ct2_logits, llama3_factors, random_weights, reference_logits, train_tokenizer, write_safetensors

ROOT = Path(__file__).resolve().parents[1]
LLAMA3 = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
SHAPES = {
    "llama3": ("llama", Tiny(theta=500000.0, llama3=LLAMA3)),
    "qwen2": ("qwen2", Tiny(theta=1000000.0, qkv_bias=True, tied=True, eps=1e-6)),
}
POSITIONS = 300  # long enough for llama3 scaling (original context 64) to change the logits


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer()


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tokenizer) -> dict[str, tuple[Path, Tiny, dict]]:
    root = tmp_path_factory.mktemp("safetensors")
    out = {}
    for name, (arch, shape) in SHAPES.items():
        weights = random_weights(shape, tokenizer.get_vocab_size(), seed=len(name))
        out[name] = (write_safetensors(root / name, shape, weights, tokenizer, arch=arch), shape, weights)
    return out


@pytest.fixture(scope="module")
def converted(folders) -> dict[str, Path]:
    from ct2_magics.models import hub

    return {name: hub.resolve(str(folder), quantization="float32") for name, (folder, _, _) in folders.items()}


@pytest.fixture(scope="module")
def ids(tokenizer) -> list[int]:
    return np.random.default_rng(7).integers(0, tokenizer.get_vocab_size() - 3, POSITIONS).tolist()


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_converted_logits_match_an_exact_forward_pass(name, folders, converted, ids):
    _, shape, weights = folders[name]
    exact = reference_logits(weights, shape, ids, factors=llama3_factors(shape))
    ours = ct2_logits(converted[name], ids)
    print(f"{name}: max abs difference {np.abs(ours - exact).max():.2e}")
    assert np.abs(ours - exact).max() < 1e-3
    if shape.llama3:  # the scaling matters over these positions, so the check above would catch its loss
        plain = reference_logits(weights, shape, ids)
        assert np.abs(plain - exact).max() > 0.1


@pytest.mark.torch
@pytest.mark.parametrize("name", sorted(SHAPES))
def test_converted_logits_match_transformers(name, folders, converted, ids):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    folder = folders[name][0]
    model = AutoModelForCausalLM.from_pretrained(str(folder), trust_remote_code=False, dtype=torch.float32).eval()
    with torch.no_grad():
        reference = model(torch.tensor([ids])).logits[0].double().numpy()
    ours = ct2_logits(converted[name], ids)
    print(f"{name}: max abs difference to transformers {np.abs(ours - reference).max():.2e}")
    assert np.abs(ours - reference).max() < 1e-3


def test_conversion_needs_no_torch(folders, tmp_path):
    """In a process where `import torch` fails, %llama load converts and answers."""
    folder = folders["llama3"][0]
    script = (
        "import sys; sys.modules['torch'] = None\n"
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "shell = InteractiveShell.instance(); shell.run_line_magic('load_ext', 'ct2_magics')\n"
        f"assert shell.run_cell('%llama load {folder}').success\n"
        "assert shell.run_cell('%%llama -n 4\\nhello').success\n"
        "print('torch' in sys.modules and sys.modules['torch'] is not None)\n"
    )
    env = {**os.environ, "CT2_MAGICS_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("False")
    assert "Converted" in done.stdout


def test_load_keeps_tokenizer_template_and_generation_defaults(shell, llama, folders):
    folder = folders["qwen2"][0]
    assert run(shell, f"%llama load {folder}").success
    engine = llama.engine
    assert engine.defaults["temperature"] == 0.3
    assert "<|eot_id|>" in engine.end_tokens
    assert {"tokenizer.json", "tokenizer_config.json", "generation_config.json"} <= {p.name for p in engine.model_dir.iterdir()}
    assert run(shell, "%%llama -n 5\nhi").success


def test_bfloat16_checkpoint(tmp_path, tokenizer):
    import ml_dtypes

    from ct2_magics.models import hub

    shape = Tiny()
    weights = random_weights(shape, tokenizer.get_vocab_size(), seed=3)
    folder = write_safetensors(tmp_path / "bf16", shape, weights, tokenizer, dtype="bfloat16")
    rounded = {k: v.astype(ml_dtypes.bfloat16).astype(np.float32) for k, v in weights.items()}
    ids = list(range(40))
    ours = ct2_logits(hub.resolve(str(folder), quantization="float32"), ids)
    assert np.abs(ours - reference_logits(rounded, shape, ids)).max() < 1e-3


def test_sharded_checkpoint(tmp_path, tokenizer, folders):
    from safetensors.numpy import save_file

    from ct2_magics.models import hub

    folder, shape, weights = folders["llama3"]
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        (sharded / name).write_bytes((folder / name).read_bytes())
    names = sorted(weights)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in halves.items():
        save_file({k: weights[k] for k in keys}, str(sharded / file))
    index = {"metadata": {}, "weight_map": {k: file for file, keys in halves.items() for k in keys}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    ids = list(range(64))
    ours = ct2_logits(hub.resolve(str(sharded), quantization="float32"), ids)
    assert np.abs(ours - reference_logits(weights, shape, ids, factors=llama3_factors(shape))).max() < 1e-3
